//! BytesPerSecond: one token bucket per agent, shared by every stream the agent sends on. The
//! rate can change while transfers run; the next chunk waits under the new rate.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A rate of 0 means unlimited.
pub struct RateLimiter {
    rate: AtomicU64,
    /// Tokens available (bytes, may go negative: a chunk larger than the burst borrows) and
    /// when they were last topped up.
    state: Mutex<(f64, Instant)>,
}

/// Burst: this many seconds of the rate may be sent at once.
const BURST_SECONDS: f64 = 0.25;

impl Default for RateLimiter {
    /// Unlimited.
    fn default() -> Self {
        RateLimiter::new(0)
    }
}

impl RateLimiter {
    pub fn new(bytes_per_second: u64) -> Self {
        RateLimiter { rate: AtomicU64::new(bytes_per_second), state: Mutex::new((0.0, Instant::now())) }
    }

    pub fn set_rate(&self, bytes_per_second: u64) {
        self.rate.store(bytes_per_second, Ordering::Relaxed);
    }

    pub fn rate(&self) -> u64 {
        self.rate.load(Ordering::Relaxed)
    }

    /// How long a sender must wait before it may send `n` bytes, and takes them. Pure, so the
    /// accounting is testable without sleeping.
    pub fn reserve_at(&self, n: u64, now: Instant) -> Duration {
        let rate = self.rate() as f64;
        if rate <= 0.0 {
            return Duration::ZERO;
        }
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let elapsed = now.saturating_duration_since(st.1).as_secs_f64();
        st.0 = (st.0 + elapsed * rate).min(rate * BURST_SECONDS);
        st.1 = now;
        st.0 -= n as f64;
        if st.0 >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-st.0 / rate)
        }
    }

    /// Blocks the calling (blocking-pool) thread until `n` bytes may be sent.
    pub fn take(&self, n: u64) {
        let wait = self.reserve_at(n, Instant::now());
        if !wait.is_zero() {
            metrics::counter!(ferry_common::metrics::THROTTLED_BYTES).increment(n);
            metrics::histogram!(ferry_common::metrics::THROTTLE_WAIT).record(wait.as_secs_f64());
            std::thread::sleep(wait);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_add_up_to_the_rate() {
        let r = RateLimiter::new(1_000_000);
        let t0 = Instant::now();
        // 10 MB at 1 MB/s: the waits, taken back to back, add up to about 10 s minus the burst.
        let mut clock = t0;
        for _ in 0..10 {
            let w = r.reserve_at(1_000_000, clock);
            clock += w;
        }
        let total = clock.duration_since(t0).as_secs_f64();
        assert!((9.0..=10.0).contains(&total), "{total}");
    }

    #[test]
    fn zero_is_unlimited_and_the_rate_can_change() {
        let r = RateLimiter::new(0);
        assert_eq!(r.reserve_at(1 << 30, Instant::now()), Duration::ZERO);
        r.set_rate(1000);
        let now = Instant::now();
        assert!(r.reserve_at(2000, now) >= Duration::from_millis(1500));
    }
}
