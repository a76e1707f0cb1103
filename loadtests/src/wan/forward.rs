//! The forwarder: one thread moving raw IP packets between the two TUN fds.
//!
//! Per direction, a packet read at time `t` goes through
//!
//! 1. the **rate limiter** (if a rate is set): a virtual bottleneck link that
//!    is busy until `link_free`. The packet starts transmitting at
//!    `max(t, link_free)` and finishes `len * 8 / rate` later. Packets whose
//!    start lies in the future are "waiting in the queue"; if `queue_pkts`
//!    (or `queue_bytes`) are already waiting, the packet is dropped (drop-tail);
//! 2. **random loss** with probability `loss` (seeded xorshift, so the
//!    decision for the n-th packet of a direction is reproducible);
//! 3. the **delay line**: release time = finish + delay ± jitter, kept in a
//!    min-heap; without `reorder` the release time is clamped to be no
//!    earlier than the previous packet's.
//!
//! The loop sleeps in `ppoll` with a nanosecond timeout until the earliest
//! release time or until a TUN fd is readable, reads up to [`BATCH`] packets
//! per fd per wakeup (non-blocking), and writes every due packet. Each write
//! injects the packet into the peer namespace's stack (the kernel processes it
//! on this thread), so the ceiling measured by `wan selftest` includes that.

use super::config::WanConfig;
use super::sys::{eventfd_drain, now_ns, set_timer_slack_ns};
use crate::rng::{mix, XorShift64Star};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Packets read from one fd per wakeup before the other fd and the delay line
/// get a turn.
pub const BATCH: usize = 256;
/// Upper bound on packets held in one direction's delay line (about 100 MB of
/// 1500-byte packets); beyond it packets are dropped and counted as overflow.
pub const MAX_INFLIGHT: usize = 65_536;

/// Counters of one direction, as seen from outside the forwarder.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DirStats {
    /// Packets / bytes read from the source TUN.
    pub rx_pkts: u64,
    pub rx_bytes: u64,
    /// Packets / bytes written to the destination TUN.
    pub tx_pkts: u64,
    pub tx_bytes: u64,
    /// Dropped by random loss.
    pub lost: u64,
    /// Dropped because the rate limiter's queue was full (drop-tail).
    pub queue_drops: u64,
    /// Dropped because the delay line hit [`MAX_INFLIGHT`].
    pub overflow_drops: u64,
    /// Writes to the destination TUN that failed.
    pub write_errors: u64,
    /// Current number of packets waiting for the rate limiter (gauge).
    pub queued: u64,
    /// Current number of packets in the delay line (gauge).
    pub in_flight: u64,
}

impl DirStats {
    /// Counter differences `self - earlier` (gauges are taken from `self`).
    pub fn since(&self, earlier: &DirStats) -> DirStats {
        DirStats {
            rx_pkts: self.rx_pkts - earlier.rx_pkts,
            rx_bytes: self.rx_bytes - earlier.rx_bytes,
            tx_pkts: self.tx_pkts - earlier.tx_pkts,
            tx_bytes: self.tx_bytes - earlier.tx_bytes,
            lost: self.lost - earlier.lost,
            queue_drops: self.queue_drops - earlier.queue_drops,
            overflow_drops: self.overflow_drops - earlier.overflow_drops,
            write_errors: self.write_errors - earlier.write_errors,
            queued: self.queued,
            in_flight: self.in_flight,
        }
    }
}

/// Counters of both directions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LinkStats {
    pub a_to_b: DirStats,
    pub b_to_a: DirStats,
}

impl LinkStats {
    pub fn since(&self, earlier: &LinkStats) -> LinkStats {
        LinkStats { a_to_b: self.a_to_b.since(&earlier.a_to_b), b_to_a: self.b_to_a.since(&earlier.b_to_a) }
    }
}

#[derive(Default)]
pub(crate) struct DirCounters {
    v: [AtomicU64; 10],
}

impl DirCounters {
    fn publish(&self, s: &DirStats) {
        let vals = [s.rx_pkts, s.rx_bytes, s.tx_pkts, s.tx_bytes, s.lost, s.queue_drops, s.overflow_drops, s.write_errors, s.queued, s.in_flight];
        for (a, v) in self.v.iter().zip(vals) {
            a.store(v, Ordering::Relaxed);
        }
    }

    pub(crate) fn load(&self) -> DirStats {
        let g = |i: usize| self.v[i].load(Ordering::Relaxed);
        DirStats {
            rx_pkts: g(0),
            rx_bytes: g(1),
            tx_pkts: g(2),
            tx_bytes: g(3),
            lost: g(4),
            queue_drops: g(5),
            overflow_drops: g(6),
            write_errors: g(7),
            queued: g(8),
            in_flight: g(9),
        }
    }
}

/// State shared between the forwarder thread and the `WanLink` handle.
pub(crate) struct Shared {
    pub stop: AtomicBool,
    pub pending: Mutex<Option<WanConfig>>,
    pub wake: OwnedFd,
    pub stats: [DirCounters; 2],
    /// Kernel thread id of the forwarder (0 until it runs), for CPU accounting.
    pub tid: AtomicU64,
}

/// Shaping parameters in the forwarder's units.
#[derive(Clone, Debug)]
struct Params {
    delay_ns: u64,
    jitter_ns: u64,
    /// Loss threshold on a uniform u64 (`u64::MAX` with `drop_all`).
    loss_threshold: u64,
    drop_all: bool,
    rate_bps: u64,
    queue_pkts: usize,
    queue_bytes: u64,
    reorder: bool,
    seed: u64,
}

impl Params {
    fn from(c: &WanConfig) -> Params {
        let loss = c.loss.clamp(0.0, 1.0);
        Params {
            delay_ns: c.delay.as_nanos() as u64,
            jitter_ns: c.jitter.as_nanos() as u64,
            loss_threshold: (loss * 18_446_744_073_709_551_616.0) as u64,
            drop_all: loss >= 1.0,
            rate_bps: c.rate_bps,
            queue_pkts: c.queue_pkts.max(1),
            queue_bytes: c.queue_bytes,
            reorder: c.reorder,
            seed: c.seed,
        }
    }

    #[inline]
    fn tx_ns(&self, len: usize) -> u64 {
        ((len as u128 * 8 * 1_000_000_000) / self.rate_bps as u128) as u64
    }
}

struct Pending {
    release: u64,
    seq: u64,
    len: usize,
    buf: Box<[u8]>,
}

impl PartialEq for Pending {
    fn eq(&self, o: &Self) -> bool {
        (self.release, self.seq) == (o.release, o.seq)
    }
}
impl Eq for Pending {}
impl PartialOrd for Pending {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Pending {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.release, self.seq).cmp(&(o.release, o.seq))
    }
}

struct Dir {
    src: RawFd,
    dst: RawFd,
    loss_rng: XorShift64Star,
    jitter_rng: XorShift64Star,
    link_free: u64,
    backlog: VecDeque<(u64, u32)>,
    backlog_bytes: u64,
    line: BinaryHeap<Reverse<Pending>>,
    last_release: u64,
    seq: u64,
    st: DirStats,
}

impl Dir {
    fn new(src: RawFd, dst: RawFd, seed: u64, index: u64) -> Dir {
        Dir {
            src,
            dst,
            loss_rng: XorShift64Star::new(mix(seed, index * 2)),
            jitter_rng: XorShift64Star::new(mix(seed, index * 2 + 1)),
            link_free: 0,
            backlog: VecDeque::new(),
            backlog_bytes: 0,
            line: BinaryHeap::new(),
            last_release: 0,
            seq: 0,
            st: DirStats::default(),
        }
    }

    fn reseed(&mut self, seed: u64, index: u64) {
        self.loss_rng = XorShift64Star::new(mix(seed, index * 2));
        self.jitter_rng = XorShift64Star::new(mix(seed, index * 2 + 1));
    }

    /// Read up to BATCH packets from `src`; returns true if the batch was
    /// full (more may be waiting).
    fn read_batch(&mut self, p: &Params, pool: &mut Pool) -> bool {
        let t = now_ns();
        for _ in 0..BATCH {
            let mut buf = pool.get();
            // SAFETY: buf is a valid writable buffer of buf.len() bytes.
            let n = unsafe { libc::read(self.src, buf.as_mut_ptr() as *mut libc::c_void, buf.len()) };
            if n <= 0 {
                pool.put(buf);
                return false;
            }
            self.admit(t, buf, n as usize, p, pool);
        }
        true
    }

    #[inline]
    fn admit(&mut self, t: u64, buf: Box<[u8]>, len: usize, p: &Params, pool: &mut Pool) {
        self.st.rx_pkts += 1;
        self.st.rx_bytes += len as u64;
        let depart = if p.rate_bps > 0 {
            while let Some(&(start, l)) = self.backlog.front() {
                if start > t {
                    break;
                }
                self.backlog.pop_front();
                self.backlog_bytes -= l as u64;
            }
            if self.backlog.len() >= p.queue_pkts || (p.queue_bytes > 0 && self.backlog_bytes + len as u64 > p.queue_bytes) {
                self.st.queue_drops += 1;
                pool.put(buf);
                return;
            }
            let start = t.max(self.link_free);
            let finish = start + p.tx_ns(len);
            self.link_free = finish;
            if start > t {
                self.backlog.push_back((start, len as u32));
                self.backlog_bytes += len as u64;
            }
            finish
        } else {
            t
        };
        if p.drop_all || (p.loss_threshold > 0 && self.loss_rng.next_u64() < p.loss_threshold) {
            self.st.lost += 1;
            pool.put(buf);
            return;
        }
        let mut release = depart + p.delay_ns;
        if p.jitter_ns > 0 {
            let span = 2 * p.jitter_ns + 1;
            let off = self.jitter_rng.next_u64() % span;
            release = (release + off).saturating_sub(p.jitter_ns).max(depart);
        }
        if !p.reorder {
            release = release.max(self.last_release);
            self.last_release = release;
        }
        if self.line.len() >= MAX_INFLIGHT {
            self.st.overflow_drops += 1;
            pool.put(buf);
            return;
        }
        self.seq += 1;
        self.line.push(Reverse(Pending { release, seq: self.seq, len, buf }));
    }

    /// Write every packet due at `now`.
    fn release(&mut self, now: u64, pool: &mut Pool) {
        while let Some(Reverse(top)) = self.line.peek() {
            if top.release > now {
                break;
            }
            let Reverse(pk) = self.line.pop().expect("peeked");
            // SAFETY: pk.buf holds pk.len initialised bytes.
            let n = unsafe { libc::write(self.dst, pk.buf.as_ptr() as *const libc::c_void, pk.len) };
            if n == pk.len as isize {
                self.st.tx_pkts += 1;
                self.st.tx_bytes += pk.len as u64;
            } else {
                self.st.write_errors += 1;
            }
            pool.put(pk.buf);
        }
    }

    fn next_release(&self) -> Option<u64> {
        self.line.peek().map(|Reverse(p)| p.release)
    }

    fn gauges(&mut self, now: u64) {
        let waiting = self.backlog.iter().filter(|(s, _)| *s > now).count();
        self.st.queued = waiting as u64;
        self.st.in_flight = self.line.len() as u64;
    }
}

/// Free buffers kept for reuse (about 6 MB at MTU 1500); bursts beyond that
/// allocate and free.
const POOL_KEEP: usize = 4096;

/// Recycled packet buffers (each `mtu + 64` bytes).
struct Pool {
    free: Vec<Box<[u8]>>,
    size: usize,
}

impl Pool {
    #[inline]
    fn get(&mut self) -> Box<[u8]> {
        self.free.pop().unwrap_or_else(|| vec![0u8; self.size].into_boxed_slice())
    }
    #[inline]
    fn put(&mut self, b: Box<[u8]>) {
        if self.free.len() < POOL_KEEP {
            self.free.push(b);
        }
    }
}

/// Body of the forwarder thread. Returns when `shared.stop` is set (and the
/// eventfd signalled); the TUN fds are closed on return, which removes the
/// devices.
pub(crate) fn run(tun_a: OwnedFd, tun_b: OwnedFd, cfg: WanConfig, shared: Arc<Shared>) {
    set_timer_slack_ns(1_000);
    // SAFETY: gettid cannot fail.
    shared.tid.store(unsafe { libc::gettid() } as u64, Ordering::Relaxed);
    let mut p = Params::from(&cfg);
    let mut pool = Pool { free: Vec::new(), size: cfg.mtu as usize + 64 };
    let mut dirs = [Dir::new(tun_a.as_raw_fd(), tun_b.as_raw_fd(), p.seed, 0), Dir::new(tun_b.as_raw_fd(), tun_a.as_raw_fd(), p.seed, 1)];
    let wake = shared.wake.as_raw_fd();
    let mut fds = [
        libc::pollfd { fd: tun_a.as_raw_fd(), events: libc::POLLIN, revents: 0 },
        libc::pollfd { fd: tun_b.as_raw_fd(), events: libc::POLLIN, revents: 0 },
        libc::pollfd { fd: wake, events: libc::POLLIN, revents: 0 },
    ];
    let mut last_gauge = 0u64;
    loop {
        let now = now_ns();
        for d in dirs.iter_mut() {
            d.release(now, &mut pool);
        }
        if now.saturating_sub(last_gauge) > 10_000_000 {
            last_gauge = now;
            for d in dirs.iter_mut() {
                d.gauges(now);
            }
        }
        for (d, c) in dirs.iter().zip(shared.stats.iter()) {
            c.publish(&d.st);
        }
        if shared.stop.load(Ordering::Acquire) {
            break;
        }
        let next = dirs.iter().filter_map(Dir::next_release).min();
        let wait_ns = match next {
            Some(t) => t.saturating_sub(now_ns()).min(1_000_000_000),
            None => 1_000_000_000,
        };
        let ts = libc::timespec { tv_sec: (wait_ns / 1_000_000_000) as libc::time_t, tv_nsec: (wait_ns % 1_000_000_000) as libc::c_long };
        for f in fds.iter_mut() {
            f.revents = 0;
        }
        // SAFETY: fds is a valid array of 3 pollfds; ts a valid timespec.
        let rc = unsafe { libc::ppoll(fds.as_mut_ptr(), 3, &ts, std::ptr::null()) };
        if rc <= 0 {
            continue;
        }
        if fds[2].revents != 0 {
            eventfd_drain(wake);
            let new = shared.pending.lock().unwrap_or_else(|e| e.into_inner()).take();
            if let Some(c) = new {
                let np = Params::from(&c);
                if np.seed != p.seed {
                    for (i, d) in dirs.iter_mut().enumerate() {
                        d.reseed(np.seed, i as u64);
                    }
                }
                if np.rate_bps == 0 {
                    for d in dirs.iter_mut() {
                        d.backlog.clear();
                        d.backlog_bytes = 0;
                        d.link_free = 0;
                    }
                }
                p = np;
            }
        }
        // Keep reading while either side still has a full batch pending, but
        // release due packets in between (top of the loop).
        for (i, d) in dirs.iter_mut().enumerate() {
            if fds[i].revents & (libc::POLLIN | libc::POLLERR) != 0 {
                d.read_batch(&p, &mut pool);
            }
        }
    }
    for (d, c) in dirs.iter_mut().zip(shared.stats.iter()) {
        d.gauges(now_ns());
        c.publish(&d.st);
    }
    drop(tun_a);
    drop(tun_b);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn params(c: WanConfig) -> Params {
        Params::from(&c)
    }

    fn pool() -> Pool {
        Pool { free: Vec::new(), size: 1564 }
    }

    #[test]
    fn rate_limiter_spaces_packets_and_drops_tail() {
        let p = params(WanConfig {
            rate_bps: 8_000_000, // 1 byte per µs
            queue_pkts: 2,
            ..WanConfig::default()
        });
        let mut d = Dir::new(-1, -1, 1, 0);
        let mut pl = pool();
        // Four 1000-byte packets at t=0: one transmits, two wait, one dropped.
        for _ in 0..4 {
            let b = pl.get();
            d.admit(0, b, 1000, &p, &mut pl);
        }
        assert_eq!(d.st.queue_drops, 1);
        let rel: Vec<u64> = {
            let mut v: Vec<u64> = d.line.iter().map(|Reverse(x)| x.release).collect();
            v.sort();
            v
        };
        assert_eq!(rel, vec![1_000_000, 2_000_000, 3_000_000]);
        // At t = 1.5 ms the first waiting packet has started: room for one.
        let b = pl.get();
        d.admit(1_500_000, b, 1000, &p, &mut pl);
        assert_eq!(d.st.queue_drops, 1);
        let b = pl.get();
        d.admit(1_500_000, b, 1000, &p, &mut pl);
        assert_eq!(d.st.queue_drops, 2);
    }

    #[test]
    fn loss_is_seeded_and_close_to_p() {
        let c = WanConfig { loss: 0.05, ..WanConfig::default() };
        let run = |c: &WanConfig| {
            let p = params(c.clone());
            let mut d = Dir::new(-1, -1, c.seed, 0);
            let mut pl = pool();
            for i in 0..100_000u64 {
                let b = pl.get();
                d.admit(i, b, 100, &p, &mut pl);
                d.line.clear();
            }
            d.st.lost
        };
        let a = run(&c);
        assert_eq!(a, run(&c));
        assert!((4_700..=5_300).contains(&a), "{a}");
    }

    #[test]
    fn jitter_without_reorder_is_monotonic() {
        let p = params(WanConfig { delay: Duration::from_millis(10), jitter: Duration::from_millis(5), ..WanConfig::default() });
        let mut d = Dir::new(-1, -1, 3, 0);
        let mut pl = pool();
        for i in 0..1000u64 {
            let b = pl.get();
            d.admit(i * 100_000, b, 100, &p, &mut pl);
        }
        let mut last = 0;
        let mut seqs = Vec::new();
        while let Some(Reverse(x)) = d.line.pop() {
            assert!(x.release >= last);
            assert!(x.release >= 5_000_000);
            last = x.release;
            seqs.push(x.seq);
        }
        let mut sorted = seqs.clone();
        sorted.sort();
        assert_eq!(seqs, sorted);
    }
}
