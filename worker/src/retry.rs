//! When a failure is tried again, and when it is given up: one plain policy for whole shards
//! (the mover) and for single entries (the engine's [`crate::engine::Retries`]).
//!
//! - A permanent error (not found, permission denied, bad input, no space, ...) fails the
//!   entry at once with its code: trying again cannot change the answer.
//! - An outage (timeouts, 5xx, resets, a link or the Store down: [`ErrorKind::Unavailable`])
//!   is tried again with exponential backoff and jitter for as long as the failure is younger
//!   than the retry window, however many attempts that takes. A server that is back within
//!   the window costs a delay, not failed entries.
//! - An integrity failure ([`ErrorKind::Corrupt`]: a checksum mismatch) is worth a few fresh
//!   reads, not a window's worth: it is given up after `max_attempts`.
//!
//! The delay travels with the retried shard as a not-before time, so whichever mover claims it
//! next waits the rest of it; the window is measured from the first failure, which travels too.

use std::time::Duration;

use ferry_common::error::ErrorKind;
use ferry_common::model::{Limits, Shard};

/// How a shard (or the entries it retries) has failed so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tries {
    /// This run's attempt, from 1.
    pub attempt: u32,
    /// When the first transient failure of this work happened (Unix ms), if one did.
    pub failing_since_ms: Option<u64>,
}

impl Tries {
    /// A first attempt that has not failed yet.
    pub const FIRST: Tries = Tries { attempt: 1, failing_since_ms: None };

    pub fn of(shard: &Shard) -> Tries {
        Tries { attempt: shard.attempt, failing_since_ms: shard.failing_since_ms }
    }
}

/// When a retried shard may run, and since when its work has been failing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryAt {
    pub not_before_ms: u64,
    pub failing_since_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Try again, not before this.
    Retry(RetryAt),
    /// Report it failed; the text says why it was not tried again (empty for a permanent
    /// error, whose own message says it all).
    Fail(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// The delay after the first failure; it doubles with each attempt.
    pub first_delay: Duration,
    /// The longest delay between two attempts.
    pub max_delay: Duration,
    /// How long an outage is waited out, from the first failure.
    pub window: Duration,
    /// Attempts for integrity failures.
    pub max_attempts: u32,
}

impl RetryPolicy {
    pub fn from_limits(limits: &Limits) -> RetryPolicy {
        RetryPolicy {
            first_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(30),
            window: Duration::from_secs(limits.retry_window_secs),
            max_attempts: limits.max_attempts,
        }
    }

    /// What to do after `tries` ended in an error of `kind` at `now_ms`. `jitter` in [0, 1)
    /// spreads the retries of many shards that failed together (the delay is scaled into its
    /// upper half, so it never collapses to nothing).
    pub fn decide(&self, kind: ErrorKind, tries: Tries, now_ms: u64, jitter: f64) -> Verdict {
        let since = tries.failing_since_ms.unwrap_or(now_ms).min(now_ms);
        let retry = || {
            let doublings = tries.attempt.saturating_sub(1).min(20);
            let full = self.first_delay.saturating_mul(1 << doublings).min(self.max_delay);
            let delay = full.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0));
            Verdict::Retry(RetryAt { not_before_ms: now_ms + delay.as_millis() as u64, failing_since_ms: since })
        };
        match kind {
            ErrorKind::Unavailable => {
                let failing_for = Duration::from_millis(now_ms - since);
                if failing_for < self.window {
                    retry()
                } else {
                    Verdict::Fail(format!("still failing after {} s and {} attempts", failing_for.as_secs(), tries.attempt))
                }
            }
            ErrorKind::Corrupt if tries.attempt < self.max_attempts => retry(),
            ErrorKind::Corrupt => Verdict::Fail(format!("gave up after {} attempts", tries.attempt)),
            _ => Verdict::Fail(String::new()),
        }
    }

    /// How long a claimed shard still waits before it runs, at most `max_delay` (a not-before
    /// time set by another host's clock is not trusted beyond that).
    pub fn wait_before(&self, shard: &Shard, now_ms: u64) -> Duration {
        let ms = shard.not_before_ms.unwrap_or(0).saturating_sub(now_ms);
        Duration::from_millis(ms).min(self.max_delay)
    }
}

/// A jitter draw for [`RetryPolicy::decide`].
pub fn jitter() -> f64 {
    rand::random::<f64>()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy { first_delay: Duration::from_millis(500), max_delay: Duration::from_secs(30), window: Duration::from_secs(600), max_attempts: 3 }
    }

    fn at(v: Verdict) -> RetryAt {
        match v {
            Verdict::Retry(at) => at,
            Verdict::Fail(why) => panic!("expected a retry, got a failure: {why}"),
        }
    }

    #[test]
    fn an_outage_is_retried_with_growing_jittered_delays_until_the_window_closes() {
        let p = policy();
        let now = 1_000_000;
        let first = at(p.decide(ErrorKind::Unavailable, Tries { attempt: 1, failing_since_ms: None }, now, 0.0));
        assert_eq!(first, RetryAt { not_before_ms: now + 250, failing_since_ms: now });
        let top = at(p.decide(ErrorKind::Unavailable, Tries { attempt: 1, failing_since_ms: None }, now, 0.999_999));
        assert!((now + 499..=now + 500).contains(&top.not_before_ms));
        // The delay doubles, up to the cap; the first failure's time is kept.
        let fourth = at(p.decide(ErrorKind::Unavailable, Tries { attempt: 4, failing_since_ms: Some(now - 5_000) }, now, 0.0));
        assert_eq!(fourth, RetryAt { not_before_ms: now + 2_000, failing_since_ms: now - 5_000 });
        let late = at(p.decide(ErrorKind::Unavailable, Tries { attempt: 40, failing_since_ms: Some(now - 60_000) }, now, 0.999_999));
        assert!(late.not_before_ms <= now + 30_000 && late.not_before_ms > now + 29_000, "{late:?}");
        // Many attempts inside the window are fine; past it, the entry fails with the reason.
        assert!(matches!(p.decide(ErrorKind::Unavailable, Tries { attempt: 25, failing_since_ms: Some(now - 599_000) }, now, 0.5), Verdict::Retry(_)));
        let Verdict::Fail(why) = p.decide(ErrorKind::Unavailable, Tries { attempt: 26, failing_since_ms: Some(now - 600_000) }, now, 0.5) else {
            panic!("the window is closed")
        };
        assert_eq!(why, "still failing after 600 s and 26 attempts");
    }

    #[test]
    fn permanent_errors_fail_at_once_and_integrity_failures_after_a_few_attempts() {
        let p = policy();
        for kind in [ErrorKind::NotFound, ErrorKind::PermissionDenied, ErrorKind::Config, ErrorKind::NoSpace, ErrorKind::Unsupported, ErrorKind::Other] {
            assert_eq!(p.decide(kind, Tries { attempt: 1, failing_since_ms: None }, 5, 0.5), Verdict::Fail(String::new()), "{kind:?}");
        }
        assert!(matches!(p.decide(ErrorKind::Corrupt, Tries { attempt: 2, failing_since_ms: None }, 5, 0.5), Verdict::Retry(_)));
        assert_eq!(p.decide(ErrorKind::Corrupt, Tries { attempt: 3, failing_since_ms: None }, 5, 0.5), Verdict::Fail("gave up after 3 attempts".into()));
    }

    #[test]
    fn a_claimed_shard_waits_out_its_delay_but_never_more_than_the_cap() {
        let p = policy();
        let mut shard = Shard::new("s".into(), ferry_common::model::ShardBody::Transfer { entries: vec![] });
        assert_eq!(p.wait_before(&shard, 1_000), Duration::ZERO);
        shard.not_before_ms = Some(1_700);
        assert_eq!(p.wait_before(&shard, 1_000), Duration::from_millis(700));
        assert_eq!(p.wait_before(&shard, 2_000), Duration::ZERO);
        shard.not_before_ms = Some(10_000_000);
        assert_eq!(p.wait_before(&shard, 1_000), Duration::from_secs(30));
    }
}
