//! The retry accounting both NFS clients (v3 in [`super::rpc`], v4.1 in [`super::v4`]) give
//! each call: how long the server has been unreachable, the backoff between attempts, and
//! whether the request went out more than once (which non-idempotent calls must know).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// The server gave no answer for the whole outage window; converts into each client's error.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unreachable(pub String);

pub struct Retry {
    op: &'static str,
    addr: SocketAddr,
    since: Option<Instant>,
    sends: u32,
    backoff: Duration,
    /// How long the server may stay unreachable before the call fails.
    pub window: Duration,
}

impl Retry {
    pub fn new(op: &'static str, addr: SocketAddr, window: Duration) -> Retry {
        Retry { op, addr, since: None, sends: 0, backoff: Duration::from_millis(100), window }
    }

    pub fn sent(&mut self) {
        self.sends += 1;
    }

    pub fn resent(&self) -> bool {
        self.sends > 1
    }

    /// The request (or the connection for it) failed in transport, or the server asked to
    /// come back later: waits before the next attempt, or gives up once the server has been
    /// unreachable for the window.
    pub async fn failed(&mut self, why: &str) -> Result<(), Unreachable> {
        let since = *self.since.get_or_insert_with(Instant::now);
        if since.elapsed() >= self.window {
            return Err(Unreachable(format!("{} to {} got no answer for {} s ({why})", self.op, self.addr, self.window.as_secs())));
        }
        tokio::time::sleep(self.backoff).await;
        self.backoff = (self.backoff * 2).min(Duration::from_secs(2));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn transport_failures_are_retried_until_the_outage_window_ends() {
        let mut r = Retry::new("READ", "127.0.0.1:2049".parse().unwrap(), Duration::from_secs(2));
        r.sent();
        let start = Instant::now();
        let mut waits = 0;
        let err = loop {
            match r.failed("connection refused").await {
                Ok(()) => waits += 1,
                Err(e) => break e,
            }
        };
        assert!((3..=8).contains(&waits), "backs off and keeps trying: {waits}");
        assert!(start.elapsed() >= r.window);
        assert!(err.0.contains("READ to 127.0.0.1:2049") && err.0.contains("connection refused"), "{}", err.0);
    }

    #[test]
    fn a_resend_is_reported_so_non_idempotent_calls_can_check() {
        let mut r = Retry::new("RENAME", "127.0.0.1:2049".parse().unwrap(), Duration::from_secs(1));
        r.sent();
        assert!(!r.resent());
        r.sent();
        assert!(r.resent());
    }
}
