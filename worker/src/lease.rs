//! What a worker knows locally about its own lease.
//!
//! etcd counts the TTL from when it received a keep-alive, so the lease is certainly valid
//! until `sent + TTL` of the last answered keep-alive. A process that was stopped (SIGSTOP, a
//! long GC-like pause, a frozen VM) finds the monotonic clock past that point when it resumes,
//! and must not touch the destination until a keep-alive says whether the lease survived.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ferry_common::error::{ErrorKind, FerryError};

pub struct LeaseClock {
    ttl: Duration,
    valid_until: Mutex<Instant>,
    lost: AtomicBool,
}

/// Safety margin under the TTL, for clock rate differences between hosts.
const MARGIN_PERCENT: u32 = 10;

impl LeaseClock {
    pub fn new(ttl: Duration, granted_at: Instant) -> Self {
        LeaseClock { ttl, valid_until: Mutex::new(granted_at + Self::usable(ttl)), lost: AtomicBool::new(false) }
    }

    fn usable(ttl: Duration) -> Duration {
        ttl * (100 - MARGIN_PERCENT) / 100
    }

    /// A keep-alive sent at `sent` was answered: the lease holds until `sent + TTL`.
    pub fn renewed(&self, sent: Instant) {
        let mut until = self.valid_until.lock().unwrap_or_else(|e| e.into_inner());
        *until = (*until).max(sent + Self::usable(self.ttl));
    }

    pub fn mark_lost(&self) {
        self.lost.store(true, Ordering::Relaxed);
    }

    pub fn is_lost(&self) -> bool {
        self.lost.load(Ordering::Relaxed)
    }

    pub fn is_valid_now(&self) -> bool {
        !self.is_lost() && Instant::now() < *self.valid_until.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Blocks (this runs on blocking threads) until the lease is known valid or known lost.
    pub fn wait_valid(&self) -> Result<(), FerryError> {
        loop {
            if self.is_lost() {
                return Err(FerryError::new(ErrorKind::LeaseLost, "this worker's lease expired; its shard belongs to another worker now"));
            }
            if self.is_valid_now() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_is_valid_only_until_its_last_renewal_plus_ttl() {
        let t0 = Instant::now() - Duration::from_secs(60);
        let clock = LeaseClock::new(Duration::from_secs(10), t0);
        assert!(!clock.is_valid_now(), "a lease not renewed for 60 s of a 10 s TTL is in doubt");
        clock.renewed(Instant::now());
        assert!(clock.is_valid_now());
        assert!(clock.wait_valid().is_ok());
        clock.mark_lost();
        assert_eq!(clock.wait_valid().unwrap_err().kind, ErrorKind::LeaseLost);
    }
}
