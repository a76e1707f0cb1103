//! An agent's vital signs, for `ferry agent list` and the console: bytes moved, throughput
//! and recent failures. Movers feed [`Vitals`]; the heartbeat ([`crate::agent`]) writes them
//! to the Store as an [`AgentRecord`] that outlives the agent.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use ferry_common::model::{AgentError, AGENT_RECENT_ERRORS};

/// How often an agent rewrites its [`ferry_common::model::AgentRecord`].
pub const HEARTBEAT: std::time::Duration = std::time::Duration::from_secs(10);

/// Longest message an [`AgentError`] keeps: a record is rewritten every heartbeat.
const MESSAGE_CAP: usize = 300;

#[derive(Default)]
pub struct Vitals {
    bytes: AtomicU64,
    errors: Mutex<VecDeque<AgentError>>,
}

impl Vitals {
    /// `n` bytes were moved (read for a peer, or written).
    pub fn moved(&self, n: u64) {
        self.bytes.fetch_add(n, Ordering::Relaxed);
    }

    pub fn bytes_total(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Keeps a failure; only the last [`AGENT_RECENT_ERRORS`] are kept.
    pub fn failed(&self, unix_ms: u64, execution: &str, code: &str, message: &str) {
        let mut message = message.to_string();
        if message.len() > MESSAGE_CAP {
            let mut cut = MESSAGE_CAP;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
            message.push('…');
        }
        let mut errors = self.errors.lock().unwrap_or_else(|p| p.into_inner());
        if errors.len() == AGENT_RECENT_ERRORS {
            errors.pop_front();
        }
        errors.push_back(AgentError { unix_ms, execution: execution.to_string(), code: code.to_string(), message });
    }

    /// The kept failures, oldest first.
    pub fn recent_errors(&self) -> Vec<AgentError> {
        self.errors.lock().unwrap_or_else(|p| p.into_inner()).iter().cloned().collect()
    }
}

/// Bytes per second between two heartbeats, from the running total.
#[derive(Default)]
pub struct Throughput {
    last: Option<(u64, u64)>,
}

impl Throughput {
    /// The rate since the previous sample (0 for the first one, or when the clock did not
    /// move forward).
    pub fn sample(&mut self, now_ms: u64, total: u64) -> u64 {
        let rate = match self.last {
            Some((then, before)) if now_ms > then => total.saturating_sub(before).saturating_mul(1000) / (now_ms - then),
            _ => 0,
        };
        self.last = Some((now_ms, total));
        rate
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throughput_is_the_rate_over_the_last_interval() {
        let mut t = Throughput::default();
        assert_eq!(t.sample(1_000, 0), 0, "nothing to compare the first sample with");
        assert_eq!(t.sample(11_000, 100_000_000), 10_000_000);
        assert_eq!(t.sample(21_000, 100_000_000), 0, "idle");
        assert_eq!(t.sample(21_000, 200_000_000), 0, "no time passed: no rate rather than a division by zero");
        assert_eq!(t.sample(22_000, 201_000_000), 1_000_000);
    }

    #[test]
    fn only_the_last_errors_are_kept_and_long_messages_are_cut_on_a_character() {
        let v = Vitals::default();
        for i in 0..(AGENT_RECENT_ERRORS as u64 + 5) {
            v.failed(i, "e1", "IO", &format!("failure {i}"));
        }
        let kept = v.recent_errors();
        assert_eq!(kept.len(), AGENT_RECENT_ERRORS);
        assert_eq!(kept.first().unwrap().message, "failure 5");
        assert_eq!(kept.last().unwrap().message, format!("failure {}", AGENT_RECENT_ERRORS + 4));
        v.failed(99, "e1", "IO", &"é".repeat(400));
        let long = v.recent_errors().pop().unwrap().message;
        assert!(long.len() <= MESSAGE_CAP + '…'.len_utf8() && long.ends_with('…'), "{long}");
    }
}
