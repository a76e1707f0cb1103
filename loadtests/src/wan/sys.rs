//! OS plumbing for the emulator: network namespaces (via `ip` and `setns`),
//! TUN devices, sysctls, the monotonic clock and signal-driven cleanup.

use crate::error::{Error, Result};
use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

/// Where `ip netns add` bind-mounts named namespaces.
pub const NETNS_DIR: &str = "/var/run/netns";

/// Monotonic clock in nanoseconds (CLOCK_MONOTONIC, the clock `Instant` and
/// `ppoll` use).
#[inline]
pub fn now_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: ts is a valid out-pointer; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

pub fn is_root() -> bool {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() == 0 }
}

fn os_err(what: impl std::fmt::Display) -> Error {
    Error::run(format!("{what}: {}", io::Error::last_os_error()))
}

/// Run `ip ARGS...`, turning a non-zero exit into an error carrying its
/// stderr.
pub fn ip<I, S>(args: I) -> Result<()>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let args: Vec<std::ffi::OsString> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
    let out = Command::new("ip").args(&args).stdin(std::process::Stdio::null()).output().map_err(|e| Error::run(format!("run ip (iproute2): {e}")))?;
    if out.status.success() {
        Ok(())
    } else {
        let shown: Vec<String> = args.iter().map(|a| a.to_string_lossy().into_owned()).collect();
        Err(Error::run(format!("ip {}: {}", shown.join(" "), String::from_utf8_lossy(&out.stderr).trim())))
    }
}

pub fn netns_path(ns: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(ns)
}

pub fn netns_exists(ns: &str) -> bool {
    netns_path(ns).exists()
}

/// Names of all named namespaces (entries of /var/run/netns).
pub fn list_netns() -> Vec<String> {
    let mut v: Vec<String> =
        std::fs::read_dir(NETNS_DIR).map(|rd| rd.flatten().filter_map(|e| e.file_name().to_str().map(str::to_owned)).collect()).unwrap_or_default();
    v.sort();
    v
}

/// `ip netns add` is not safe to run concurrently the very first time (it
/// sets up the shared /var/run/netns mount); serialise it within the process.
static NETNS_LOCK: Mutex<()> = Mutex::new(());

pub fn netns_add(ns: &str) -> Result<()> {
    let _g = NETNS_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    ip(["netns", "add", ns])
}

/// Delete a named namespace; absent is fine. Falls back to unmounting and
/// unlinking by hand if `ip netns del` fails (e.g. iproute2 vanished).
pub fn netns_del(ns: &str) -> Result<()> {
    let _g = NETNS_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    if !netns_exists(ns) {
        return Ok(());
    }
    let r = ip(["netns", "del", ns]);
    if r.is_err() && netns_exists(ns) {
        let p = netns_path(ns);
        if let Ok(c) = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()) {
            // SAFETY: c is a valid NUL-terminated path.
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        }
        let _ = std::fs::remove_file(&p);
    }
    if netns_exists(ns) {
        return r.and(Err(Error::run(format!("namespace {ns} still exists"))));
    }
    Ok(())
}

/// Run `f` on a fresh thread that has joined namespace `ns`. Sockets and file
/// descriptors created by `f` belong to that namespace and stay usable from
/// any thread afterwards (a socket's namespace is fixed at creation). A panic
/// in `f` is propagated.
pub fn in_netns<T, F>(ns: &str, f: F) -> Result<T>
where
    T: Send,
    F: FnOnce() -> T + Send,
{
    let path = netns_path(ns);
    let file = File::open(&path).map_err(|e| Error::run(format!("open {}: {e}", path.display())))?;
    std::thread::scope(|s| {
        let h = std::thread::Builder::new()
            .name(format!("netns-{ns}"))
            .spawn_scoped(s, move || -> Result<T> {
                // SAFETY: file is an open nsfs descriptor; CLONE_NEWNET only
                // changes this thread's network namespace.
                if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(os_err(format!("setns into {ns}")));
                }
                drop(file);
                Ok(f())
            })
            .map_err(|e| Error::run(format!("spawn thread: {e}")))?;
        match h.join() {
            Ok(r) => r,
            Err(p) => std::panic::resume_unwind(p),
        }
    })
}

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const IFF_TUN: libc::c_short = 0x0001;
const IFF_NO_PI: libc::c_short = 0x1000;

#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// Create TUN device `ifname` (IFF_TUN | IFF_NO_PI, non-persistent) inside
/// namespace `ns` and return its non-blocking fd. The device disappears when
/// the fd is closed, so a crashed emulator leaves no device behind.
pub fn open_tun_in(ns: &str, ifname: &str) -> Result<OwnedFd> {
    if ifname.len() >= libc::IFNAMSIZ {
        return Err(Error::usage(format!("interface name {ifname:?} too long")));
    }
    let ifname = ifname.to_owned();
    in_netns(ns, move || -> Result<OwnedFd> {
        // SAFETY: constant NUL-terminated path.
        let fd = unsafe { libc::open(c"/dev/net/tun".as_ptr(), libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC) };
        if fd < 0 {
            return Err(os_err("open /dev/net/tun"));
        }
        // SAFETY: fd was just opened and is owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let mut req = IfReq { name: [0; libc::IFNAMSIZ], flags: IFF_TUN | IFF_NO_PI, _pad: [0; 22] };
        req.name[..ifname.len()].copy_from_slice(ifname.as_bytes());
        // SAFETY: req is a properly laid out struct ifreq for TUNSETIFF.
        if unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETIFF as _, &mut req) } < 0 {
            return Err(os_err(format!("TUNSETIFF {ifname}")));
        }
        Ok(fd)
    })?
}

/// Read a sysctl of the *calling thread's* network namespace (for
/// `net.*` keys) or the global one. `key` uses dots: `net.ipv4.tcp_congestion_control`.
pub fn sysctl_read(key: &str) -> Result<String> {
    let p = sysctl_path(key);
    std::fs::read_to_string(&p).map(|s| s.trim().to_owned()).map_err(|e| Error::run(format!("read {}: {e}", p.display())))
}

pub fn sysctl_write(key: &str, value: &str) -> Result<()> {
    let p = sysctl_path(key);
    std::fs::write(&p, value).map_err(|e| Error::run(format!("write {} = {value}: {e}", p.display())))
}

fn sysctl_path(key: &str) -> PathBuf {
    Path::new("/proc/sys").join(key.replace('.', "/"))
}

/// Set a `net.*` sysctl inside namespace `ns`.
pub fn sysctl_write_in(ns: &str, key: &str, value: &str) -> Result<()> {
    in_netns(ns, || sysctl_write(key, value))?
}

pub fn sysctl_read_in(ns: &str, key: &str) -> Result<String> {
    in_netns(ns, || sysctl_read(key))?
}

/// Restores the root namespace's default TCP congestion control when dropped
/// (also during a panic). See [`super::WanLink::start_with_congestion`].
pub struct RootCongestionGuard {
    saved: String,
}

pub const CC_KEY: &str = "net.ipv4.tcp_congestion_control";

impl RootCongestionGuard {
    /// Switch the root namespace default to `algo`, remembering the old value.
    pub fn set(algo: &str) -> Result<RootCongestionGuard> {
        let saved = sysctl_read(CC_KEY)?;
        let avail = sysctl_read("net.ipv4.tcp_available_congestion_control").unwrap_or_default();
        if !avail.split_whitespace().any(|a| a == algo) {
            // Writing loads the module if it exists; only fail if that fails.
            sysctl_write(CC_KEY, algo).map_err(|e| Error::run(format!("congestion control {algo:?} not available (have: {avail}): {e}")))?;
        } else {
            sysctl_write(CC_KEY, algo)?;
        }
        Ok(RootCongestionGuard { saved })
    }
}

impl Drop for RootCongestionGuard {
    fn drop(&mut self) {
        if let Err(e) = sysctl_write(CC_KEY, &self.saved) {
            eprintln!("ferry-load wan: failed to restore {CC_KEY} = {}: {e}", self.saved);
        }
    }
}

/// Serialises root-sysctl changes with namespace creation in this process.
pub static CC_LOCK: Mutex<()> = Mutex::new(());

/// Make the calling thread's timers precise (the default 50 µs slack would
/// blur the rate limiter's pacing of small packets).
pub fn set_timer_slack_ns(ns: u64) {
    // SAFETY: PR_SET_TIMERSLACK takes an unsigned long value.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, ns as libc::c_ulong, 0, 0, 0) };
}

pub fn eventfd() -> Result<OwnedFd> {
    // SAFETY: plain syscall.
    let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
    if fd < 0 {
        return Err(os_err("eventfd"));
    }
    // SAFETY: fd is fresh and owned here.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

pub fn eventfd_signal(fd: &OwnedFd) {
    let one: u64 = 1;
    // SAFETY: writes 8 bytes from a valid u64.
    unsafe { libc::write(fd.as_raw_fd(), &one as *const u64 as *const libc::c_void, 8) };
}

pub fn eventfd_drain(fd: libc::c_int) {
    let mut v: u64 = 0;
    // SAFETY: reads 8 bytes into a valid u64.
    unsafe { libc::read(fd, &mut v as *mut u64 as *mut libc::c_void, 8) };
}

// ---------------------------------------------------------------------------
// Namespace bookkeeping: live namespaces of this process (for signal-time
// cleanup) and stale ones of dead processes.

static LIVE: Mutex<Vec<String>> = Mutex::new(Vec::new());

pub fn register(ns: &str) {
    LIVE.lock().unwrap_or_else(|e| e.into_inner()).push(ns.to_owned());
}

pub fn unregister(ns: &str) {
    LIVE.lock().unwrap_or_else(|e| e.into_inner()).retain(|n| n != ns);
}

/// Delete every namespace a live link of this process created. For signal
/// handlers and emergency exits; normal code relies on `WanLink`'s `Drop`.
pub fn cleanup_registered() {
    let names: Vec<String> = LIVE.lock().unwrap_or_else(|e| e.into_inner()).clone();
    for n in names {
        let _ = netns_del(&n);
        unregister(&n);
    }
}

/// The pid embedded in a default namespace name `fwan-a-<pid>-<n>`.
pub fn default_name_pid(ns: &str) -> Option<u32> {
    let rest = ns.strip_prefix("fwan-a-").or_else(|| ns.strip_prefix("fwan-b-"))?;
    let (pid, n) = rest.split_once('-')?;
    n.parse::<u64>().ok()?;
    pid.parse().ok()
}

/// Delete default-named namespaces left behind by processes that no longer
/// exist (a SIGKILLed test, say). Returns the names removed.
pub fn sweep_stale() -> Vec<String> {
    let mut removed = Vec::new();
    for ns in list_netns() {
        if let Some(pid) = default_name_pid(&ns) {
            if !Path::new(&format!("/proc/{pid}")).exists() && netns_del(&ns).is_ok() {
                removed.push(ns);
            }
        }
    }
    removed
}

// ---------------------------------------------------------------------------
// Signals: SIGINT/SIGTERM/SIGHUP are blocked in every thread and received by
// one dedicated thread with sigwait, so cleanup runs in ordinary code (able
// to spawn `ip`) instead of an async-signal handler.

fn term_sigset() -> libc::sigset_t {
    // SAFETY: sigset manipulation on a local, initialised by sigemptyset.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGHUP);
        set
    }
}

/// Block the termination signals in the calling thread; threads spawned
/// afterwards inherit the mask. Call first thing, before any thread exists.
pub fn block_term_signals() {
    let set = term_sigset();
    // SAFETY: valid set; old mask not needed.
    unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
}

/// Spawn the thread that waits for a termination signal and then calls
/// `on_signal(signo)`. Requires [`block_term_signals`] to have run first.
pub fn spawn_signal_thread<F: FnOnce(i32) + Send + 'static>(on_signal: F) {
    std::thread::Builder::new()
        .name("wan-signals".into())
        .spawn(move || {
            let set = term_sigset();
            let mut sig: libc::c_int = 0;
            // SAFETY: valid set and out-pointer.
            let rc = unsafe { libc::sigwait(&set, &mut sig) };
            if rc == 0 {
                on_signal(sig);
            }
        })
        .expect("spawn signal thread");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_names() {
        assert_eq!(default_name_pid("fwan-a-123-0"), Some(123));
        assert_eq!(default_name_pid("fwan-b-77-12"), Some(77));
        assert_eq!(default_name_pid("fwan-c-77-12"), None);
        assert_eq!(default_name_pid("fwan-a-77"), None);
        assert_eq!(default_name_pid("mylink-a"), None);
    }
}
