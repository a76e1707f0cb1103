//! User-space WAN link emulator (this kernel has no netem qdisc).
//!
//! [`WanLink::start`] creates two network namespaces, `A` and `B`, each with
//! a point-to-point TUN device `wan0` (A: 10.201.0.1, B: 10.201.0.2), and a
//! forwarder thread (see [`forward`]) that moves raw IP packets between the
//! two TUN fds with the configured one-way delay, jitter, random loss, rate
//! limit and drop-tail queue. Anything run inside the namespaces
//! (`ip netns exec NS ...`, or sockets created by a thread that joined the
//! namespace, see [`WanLink::in_a`]) talks over the emulated link; TCP and
//! UDP alike, since whole IP packets are forwarded.
//!
//! ```no_run
//! use ferry_loadtests::wan::{WanConfig, WanLink};
//! use std::time::Duration;
//! let link = WanLink::start(WanConfig {
//!     delay: Duration::from_millis(25),
//!     loss: 0.005,
//!     rate_bps: 100_000_000,
//!     ..WanConfig::default()
//! })?;
//! let mut cmd = link.command_in_b("ferry-worker");
//! // ... run a server in B, a client in A against link.addr_b() ...
//! drop(link); // forwarder stopped, namespaces deleted
//! # Ok::<(), ferry_loadtests::Error>(())
//! ```
//!
//! Cleanup: dropping the link (also while unwinding from a panic) stops the
//! forwarder and deletes both namespaces; the TUN devices vanish with their
//! fds. The CLI additionally deletes the namespaces on SIGINT/SIGTERM/SIGHUP,
//! and every `start` first sweeps default-named namespaces whose owning
//! process is gone (e.g. after a SIGKILL).
//!
//! Requires root (CAP_NET_ADMIN + CAP_SYS_ADMIN), `/dev/net/tun` and `ip`
//! from iproute2.

pub mod cli;
pub mod config;
pub mod forward;
pub mod measure;
pub mod sys;

pub use config::{parse_duration, parse_loss, parse_rate, WanConfig};
pub use forward::{DirStats, LinkStats};

use crate::error::{Error, Result};
use forward::{DirCounters, Shared};
use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// Address of the TUN device in namespace A.
pub const ADDR_A: Ipv4Addr = Ipv4Addr::new(10, 201, 0, 1);
/// Address of the TUN device in namespace B.
pub const ADDR_B: Ipv4Addr = Ipv4Addr::new(10, 201, 0, 2);
/// Name of the TUN device in both namespaces.
pub const IFNAME: &str = "wan0";

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A running emulated link. Dropping it tears everything down.
pub struct WanLink {
    ns_a: String,
    ns_b: String,
    config: Mutex<WanConfig>,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

/// Deletes namespaces created so far if `start` fails half-way.
struct NsGuard(Vec<String>);

impl Drop for NsGuard {
    fn drop(&mut self) {
        for n in self.0.drain(..) {
            let _ = sys::netns_del(&n);
            sys::unregister(&n);
        }
    }
}

impl WanLink {
    /// Create the namespaces and TUN devices and start the forwarder.
    pub fn start(config: WanConfig) -> Result<WanLink> {
        Self::start_inner(config, None)
    }

    /// Like [`start`](Self::start), but the namespaces are created while the
    /// root namespace's default TCP congestion control
    /// (`net.ipv4.tcp_congestion_control`) is temporarily set to `algo`, so
    /// they inherit it (a new namespace copies the root default at creation).
    /// The previous root value is restored as soon as the namespaces exist,
    /// also on error or panic (a drop guard). Only a process killed by
    /// SIGKILL in those few milliseconds could leave it changed. Other
    /// processes creating namespaces or connections in the root namespace
    /// during that window would see `algo` too.
    ///
    /// If the kernel did not propagate the value (older kernels), it is set
    /// inside both namespaces directly. Setting [`WanConfig::congestion`]
    /// does only the latter and never touches the root namespace.
    pub fn start_with_congestion(config: WanConfig, algo: &str) -> Result<WanLink> {
        if algo.is_empty() || !algo.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(Error::usage(format!("invalid congestion control {algo:?}")));
        }
        Self::start_inner(config, Some(algo))
    }

    fn start_inner(config: WanConfig, root_cc: Option<&str>) -> Result<WanLink> {
        config.validate().map_err(Error::usage)?;
        if !sys::is_root() {
            return Err(Error::run("the WAN emulator needs root (network namespaces and TUN devices)"));
        }
        for n in sys::sweep_stale() {
            eprintln!("ferry-load wan: removed stale namespace {n}");
        }
        let (ns_a, ns_b) = match &config.name {
            Some(n) => (format!("{n}-a"), format!("{n}-b")),
            None => {
                let pid = std::process::id();
                let k = COUNTER.fetch_add(1, Ordering::Relaxed);
                (format!("fwan-a-{pid}-{k}"), format!("fwan-b-{pid}-{k}"))
            }
        };
        for n in [&ns_a, &ns_b] {
            if sys::netns_exists(n) {
                return Err(Error::run(format!(
                    "namespace {n} already exists (another `ferry-load wan up --name` running? \
                     remove it with `ip netns del {n}`)"
                )));
            }
        }
        let mut guard = NsGuard(Vec::new());
        {
            let _lock = sys::CC_LOCK.lock().unwrap_or_else(|e| e.into_inner());
            let _cc = match root_cc {
                Some(a) => Some(sys::RootCongestionGuard::set(a)?),
                None => None,
            };
            for n in [&ns_a, &ns_b] {
                sys::netns_add(n)?;
                sys::register(n);
                guard.0.push(n.clone());
            }
            // _cc dropped here: root value restored.
        }
        let want_cc = config.congestion.clone().or(root_cc.map(str::to_owned));
        for n in [&ns_a, &ns_b] {
            // No IPv6: keeps router solicitations / MLD reports off the link
            // so only the traffic under test consumes loss-RNG draws.
            for k in ["net.ipv6.conf.all.disable_ipv6", "net.ipv6.conf.default.disable_ipv6"] {
                let _ = sys::sysctl_write_in(n, k, "1");
            }
            if let Some(cc) = &want_cc {
                let cur = sys::sysctl_read_in(n, sys::CC_KEY).unwrap_or_default();
                if &cur != cc {
                    sys::sysctl_write_in(n, sys::CC_KEY, cc)?;
                }
            }
        }
        let tun_a = sys::open_tun_in(&ns_a, IFNAME)?;
        let tun_b = sys::open_tun_in(&ns_b, IFNAME)?;
        let mtu = config.mtu.to_string();
        for (n, local, peer) in [(&ns_a, ADDR_A, ADDR_B), (&ns_b, ADDR_B, ADDR_A)] {
            sys::ip(["-n", n, "link", "set", "lo", "up"])?;
            sys::ip(["-n", n, "link", "set", IFNAME, "mtu", &mtu, "txqueuelen", "4096", "up"])?;
            sys::ip(["-n", n, "addr", "add", &local.to_string(), "peer", &format!("{peer}/32"), "dev", IFNAME])?;
        }
        let shared = Arc::new(Shared {
            stop: AtomicBool::new(false),
            pending: Mutex::new(None),
            wake: sys::eventfd()?,
            stats: [DirCounters::default(), DirCounters::default()],
            tid: AtomicU64::new(0),
        });
        let thread = {
            let shared = shared.clone();
            let cfg = config.clone();
            std::thread::Builder::new()
                .name(format!("wan-fwd-{ns_a}"))
                .spawn(move || forward::run(tun_a, tun_b, cfg, shared))
                .map_err(|e| Error::run(format!("spawn forwarder: {e}")))?
        };
        guard.0.clear(); // the link owns the namespaces from here on
        Ok(WanLink { ns_a, ns_b, config: Mutex::new(config), shared, thread: Some(thread) })
    }

    /// Namespace of side A (address [`ADDR_A`]).
    pub fn ns_a(&self) -> &str {
        &self.ns_a
    }

    /// Namespace of side B (address [`ADDR_B`]).
    pub fn ns_b(&self) -> &str {
        &self.ns_b
    }

    pub fn addr_a(&self) -> Ipv4Addr {
        ADDR_A
    }

    pub fn addr_b(&self) -> Ipv4Addr {
        ADDR_B
    }

    /// The current configuration.
    pub fn config(&self) -> WanConfig {
        self.config.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Change delay, jitter, loss, rate, queue, seed or reorder while
    /// running; applies to packets read from now on (packets already in the
    /// delay line keep their release time). `name`, `mtu` and `congestion`
    /// cannot change and are ignored.
    pub fn set_config(&self, mut config: WanConfig) -> Result<()> {
        let mut cur = self.config.lock().unwrap_or_else(|e| e.into_inner());
        config.name = cur.name.clone();
        config.mtu = cur.mtu;
        config.congestion = cur.congestion.clone();
        config.validate().map_err(Error::usage)?;
        *self.shared.pending.lock().unwrap_or_else(|e| e.into_inner()) = Some(config.clone());
        sys::eventfd_signal(&self.shared.wake);
        *cur = config;
        Ok(())
    }

    /// Forwarder counters (published by the forwarder every loop iteration).
    pub fn stats(&self) -> LinkStats {
        LinkStats { a_to_b: self.shared.stats[0].load(), b_to_a: self.shared.stats[1].load() }
    }

    /// CPU time (user + system) the forwarder thread has used so far, in
    /// seconds; `None` if it is not running or /proc is unavailable.
    pub fn forwarder_cpu_secs(&self) -> Option<f64> {
        let tid = self.shared.tid.load(Ordering::Relaxed);
        if tid == 0 || !self.is_running() {
            return None;
        }
        let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).ok()?;
        // Fields after the parenthesised command name; utime and stime are
        // fields 14 and 15 (1-based) of the whole line.
        let rest = &stat[stat.rfind(')')? + 2..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        Some(ticks / hz.max(1.0))
    }

    /// Run `f` on a thread inside namespace A; sockets it creates live in A.
    pub fn in_a<T: Send, F: FnOnce() -> T + Send>(&self, f: F) -> Result<T> {
        sys::in_netns(&self.ns_a, f)
    }

    /// Run `f` on a thread inside namespace B.
    pub fn in_b<T: Send, F: FnOnce() -> T + Send>(&self, f: F) -> Result<T> {
        sys::in_netns(&self.ns_b, f)
    }

    /// `ip netns exec <ns_a> program`: add arguments and spawn.
    pub fn command_in_a(&self, program: &str) -> Command {
        ns_command(&self.ns_a, program)
    }

    /// `ip netns exec <ns_b> program`.
    pub fn command_in_b(&self, program: &str) -> Command {
        ns_command(&self.ns_b, program)
    }

    /// Whether the forwarder thread is still running.
    pub fn is_running(&self) -> bool {
        self.thread.as_ref().is_some_and(|t| !t.is_finished())
    }

    /// Tear down now, reporting failures (Drop does the same silently).
    pub fn close(mut self) -> Result<()> {
        self.teardown()
    }

    fn teardown(&mut self) -> Result<()> {
        self.shared.stop.store(true, Ordering::Release);
        sys::eventfd_signal(&self.shared.wake);
        if let Some(t) = self.thread.take() {
            // The forwarder wakes on the eventfd (and at least once a second).
            let _ = t.join();
        }
        let mut res = Ok(());
        for n in [&self.ns_a, &self.ns_b] {
            if let Err(e) = sys::netns_del(n) {
                res = Err(e);
            }
            sys::unregister(n);
        }
        res
    }
}

impl Drop for WanLink {
    fn drop(&mut self) {
        if let Err(e) = self.teardown() {
            eprintln!("ferry-load wan: teardown: {e}");
        }
    }
}

/// `ip netns exec NS program`.
pub fn ns_command(ns: &str, program: &str) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns, program]);
    c
}
