//! A whole ferry cluster on this host, driven from Rust: a real etcd, one coordinator and N
//! `ferry-worker` processes, optionally each in its own network namespace behind a bridge
//! (the way separate hosts reach etcd and each other over a network).
//!
//! The chaos runner and the cluster scenarios use it to kill, cut and restart the parts one
//! at a time. Everything it creates (processes, namespaces, veth pairs, the bridge, etcd's
//! data) is removed when it is dropped, also when the run fails half-way.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use ferry_common::testing::EtcdServer;

use crate::error::{Error, Result};

#[derive(Clone, Debug)]
pub struct ClusterOptions {
    pub workers: usize,
    /// One network namespace per worker (needs root and iproute2); without it the workers
    /// share the host's network and links cannot be cut.
    pub netns: bool,
    pub movers: usize,
    /// Agent-to-agent QUIC links: odd workers are labelled `onprem` (readers), even ones
    /// `cloud` (writers), each with a certificate from a fresh cluster CA.
    pub links: bool,
    /// Lease TTL of each worker, in seconds: how long a dead worker's shards stay claimed.
    pub lease_ttl_s: u64,
    pub bin_dir: PathBuf,
    /// Logs, certificates and the CA live here.
    pub work: PathBuf,
}

struct Worker {
    name: String,
    netns: Option<String>,
    host_veth: Option<String>,
    addr: String,
    child: Option<Child>,
    labels: &'static str,
    starts: u32,
}

/// The bridge and namespaces; deleted on drop.
struct Net {
    bridge: String,
    host_ip: String,
    subnet: String,
    namespaces: Vec<String>,
}

impl Drop for Net {
    fn drop(&mut self) {
        for ns in &self.namespaces {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        let _ = Command::new("ip").args(["link", "del", &self.bridge]).status();
    }
}

pub struct LocalCluster {
    o: ClusterOptions,
    // Field order is drop order: processes first, then etcd, then the network.
    coordinator: Option<Child>,
    workers: Vec<Worker>,
    etcd: EtcdServer,
    net: Option<Net>,
}

fn run_err(msg: impl Into<String>) -> Error {
    Error::run(msg.into())
}

/// Runs `ip ARGS`, with its stderr in the error (shared with the LAN pair).
pub(crate) fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip").args(args).output().map_err(|e| run_err(format!("ip {}: {e} (apt-get install iproute2)", args.join(" "))))?;
    if !out.status.success() {
        return Err(run_err(format!("ip {} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim())));
    }
    Ok(())
}

/// The pid in a name this harness gives (`fl{pid}-w{i}`, `flbr{pid}`), if it is one.
fn owner_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix("flbr").or_else(|| name.strip_prefix("fl").and_then(|r| r.split_once("-w").map(|(pid, _)| pid)))?;
    rest.parse().ok()
}

/// Removes namespaces and bridges of runs whose process is gone (killed before its Drop ran).
fn sweep_stale() -> Vec<String> {
    let alive = |pid: u32| Path::new(&format!("/proc/{pid}")).exists();
    let mut removed = Vec::new();
    let namespaces =
        std::fs::read_dir("/run/netns").map(|rd| rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect::<Vec<_>>()).unwrap_or_default();
    for ns in namespaces {
        if owner_pid(&ns).is_some_and(|p| !alive(p)) && ip(&["netns", "del", &ns]).is_ok() {
            removed.push(format!("namespace {ns}"));
        }
    }
    let links = std::fs::read_dir("/sys/class/net")
        .map(|rd| rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect::<Vec<_>>())
        .unwrap_or_default();
    for link in links {
        if link.starts_with("flbr") && owner_pid(&link).is_some_and(|p| !alive(p)) && ip(&["link", "del", &link]).is_ok() {
            removed.push(format!("bridge {link}"));
        }
    }
    removed
}

/// Whether `child` is a process that still runs.
fn running(child: &mut Option<Child>) -> bool {
    child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
}

/// Kills a child with SIGKILL, as a crash or a pulled plug would.
fn kill_hard(child: &mut Option<Child>) {
    if let Some(mut c) = child.take() {
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// A memory field of a live process's `/proc/PID/status` (`VmHWM`, `VmRSS`, ...), in bytes.
pub fn status_bytes(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.strip_prefix(field).is_some_and(|rest| rest.starts_with(':')))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Peak resident set size of a live process (`VmHWM`), in bytes.
pub fn peak_rss(pid: u32) -> Option<u64> {
    status_bytes(pid, "VmHWM")
}

impl LocalCluster {
    pub fn start(o: ClusterOptions) -> Result<LocalCluster> {
        if o.workers == 0 {
            return Err(Error::usage("a cluster needs at least one worker (--workers 1 or more)"));
        }
        for bin in ["ferry", "ferry-worker"] {
            if !o.bin_dir.join(bin).is_file() {
                return Err(Error::usage(format!(
                    "{} is missing: build it (cargo build --release --workspace) or pass --bin-dir",
                    o.bin_dir.join(bin).display()
                )));
            }
        }
        if ferry_common::testing::etcd_binary().is_none() {
            return Err(Error::usage("etcd is not installed: apt-get install etcd-server"));
        }
        std::fs::create_dir_all(&o.work).map_err(|e| run_err(format!("{}: {e}", o.work.display())))?;
        // Names carry the owner's pid, so two runs (or a deploy/local-cluster) never collide
        // and leftovers of a run that was killed can be told apart and removed.
        let tag = std::process::id();
        let net = if o.netns {
            if unsafe { libc::geteuid() } != 0 {
                return Err(Error::usage("network namespaces need root (run as root, or without them)"));
            }
            for stale in sweep_stale() {
                crate::util::say(format!("cluster: removed {stale}, left by a run that was killed"));
            }
            let octet = 1 + std::process::id() % 250;
            let net = Net { bridge: format!("flbr{tag}"), host_ip: format!("10.79.{octet}.1"), subnet: format!("10.79.{octet}"), namespaces: Vec::new() };
            ip(&["link", "add", &net.bridge, "type", "bridge"])?;
            ip(&["addr", "add", &format!("{}/24", net.host_ip), "dev", &net.bridge])?;
            ip(&["link", "set", &net.bridge, "up"])?;
            Some(net)
        } else {
            None
        };
        let etcd = EtcdServer::start_also_on(net.as_ref().map(|n| n.host_ip.as_str()))
            .ok_or_else(|| Error::usage("etcd is not installed: apt-get install etcd-server"))?;
        let mut c = LocalCluster { o: o.clone(), coordinator: None, workers: Vec::new(), etcd, net };
        if o.links {
            c.issue_certificates()?;
        }
        c.start_coordinator()?;
        for i in 1..=o.workers {
            let name = format!("w{i}");
            let (netns, host_veth, addr) = match &mut c.net {
                Some(net) => {
                    let ns = format!("fl{tag}-w{i}");
                    let (host, inner) = (format!("fl{tag}w{i}h"), format!("fl{tag}w{i}n"));
                    let addr = format!("{}.{}", net.subnet, 10 + i);
                    ip(&["netns", "add", &ns])?;
                    net.namespaces.push(ns.clone());
                    ip(&["link", "add", &host, "type", "veth", "peer", "name", &inner])?;
                    ip(&["link", "set", &inner, "netns", &ns])?;
                    ip(&["link", "set", &host, "master", &net.bridge, "up"])?;
                    ip(&["-n", &ns, "addr", "add", &format!("{addr}/24"), "dev", &inner])?;
                    ip(&["-n", &ns, "link", "set", &inner, "up"])?;
                    ip(&["-n", &ns, "link", "set", "lo", "up"])?;
                    ip(&["-n", &ns, "route", "add", "default", "via", &net.host_ip])?;
                    (Some(ns), Some(host), addr)
                }
                None => (None, None, "127.0.0.1".to_string()),
            };
            let labels = if i % 2 == 1 { "onprem" } else { "cloud" };
            c.workers.push(Worker { name, netns, host_veth, addr, child: None, labels, starts: 0 });
            c.start_worker(i - 1)?;
        }
        c.wait_for_workers(Duration::from_secs(30))?;
        Ok(c)
    }

    /// etcd's client URL as seen from the host.
    pub fn endpoint(&self) -> &str {
        &self.etcd.endpoint
    }

    pub fn workers(&self) -> usize {
        self.workers.len()
    }

    pub fn can_cut_links(&self) -> bool {
        self.net.is_some()
    }

    pub fn worker_name(&self, i: usize) -> &str {
        &self.workers[i].name
    }

    fn log(&self, name: &str) -> Result<std::fs::File> {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.o.work.join(format!("{name}.log")))
            .map_err(|e| run_err(format!("{}: {e}", self.o.work.display())))
    }

    fn issue_certificates(&self) -> Result<()> {
        use ferry_worker::transport::link::pki;
        let ca_dir = self.o.work.join("ca");
        let _ = std::fs::remove_dir_all(&ca_dir);
        pki::init_ca(&ca_dir).map_err(|e| run_err(e.to_string()))?;
        let ca = pki::Ca::load(&ca_dir).map_err(|e| run_err(e.to_string()))?;
        for i in 1..=self.o.workers {
            let dir = self.o.work.join(format!("tls-w{i}"));
            let _ = std::fs::remove_dir_all(&dir);
            pki::Identity::issue(&ca, &format!("w{i}"), &[(if i % 2 == 1 { "onprem" } else { "cloud" }).to_string()], 2)
                .and_then(|id| id.save(&dir))
                .map_err(|e| run_err(e.to_string()))?;
        }
        Ok(())
    }

    /// Starts the coordinator unless it runs already.
    pub fn start_coordinator(&mut self) -> Result<()> {
        if running(&mut self.coordinator) {
            return Ok(());
        }
        let log = self.log("coordinator")?;
        let child = Command::new(self.o.bin_dir.join("ferry"))
            .args(["coordinator", "--name", "c1", "--etcd", &self.etcd.endpoint])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| run_err(format!("ferry coordinator: {e}")))?;
        self.coordinator = Some(child);
        Ok(())
    }

    /// SIGKILL of the coordinator; [`LocalCluster::start_coordinator`] brings it back.
    pub fn kill_coordinator(&mut self) {
        kill_hard(&mut self.coordinator);
    }

    /// Starts worker `i` unless it runs already.
    pub fn start_worker(&mut self, i: usize) -> Result<()> {
        if running(&mut self.workers[i].child) {
            return Ok(());
        }
        let endpoint = match &self.net {
            Some(n) => self.etcd.endpoint_on(&n.host_ip),
            None => self.etcd.endpoint.clone(),
        };
        let log = self.log(&self.workers[i].name)?;
        let w = &self.workers[i];
        let worker_bin = self.o.bin_dir.join("ferry-worker");
        let mut cmd = match &w.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(&worker_bin);
                c
            }
            None => Command::new(&worker_bin),
        };
        // In namespaces the endpoint is the bridge address, off loopback: plaintext by choice.
        cmd.args([
            "--etcd",
            &endpoint,
            "--insecure-etcd",
            "--name",
            &w.name,
            "--movers",
            &self.o.movers.to_string(),
            "--lease-ttl",
            &self.o.lease_ttl_s.to_string(),
        ]);
        if self.o.links {
            // Without namespaces every worker shares 127.0.0.1, so each gets its own port.
            let port = if w.netns.is_some() { 7420 } else { 7420 + i };
            cmd.args(["--labels", w.labels, "--link-listen", &format!("{}:{port}", w.addr)]).arg("--tls-dir").arg(self.o.work.join(format!("tls-{}", w.name)));
        }
        let child = cmd.stdout(Stdio::null()).stderr(log).spawn().map_err(|e| run_err(format!("ferry-worker {}: {e}", w.name)))?;
        let w = &mut self.workers[i];
        w.child = Some(child);
        w.starts += 1;
        Ok(())
    }

    /// SIGKILL of worker `i`; [`LocalCluster::start_worker`] brings it back.
    pub fn kill_worker(&mut self, i: usize) {
        kill_hard(&mut self.workers[i].child);
    }

    /// Takes worker `i`'s network down (host side of its veth): it loses etcd and its peers,
    /// while its process keeps running, as in a partition.
    pub fn cut_link(&self, i: usize) -> Result<()> {
        match &self.workers[i].host_veth {
            Some(v) => ip(&["link", "set", v, "down"]),
            None => Err(Error::usage("links can only be cut between network namespaces (needs root; drop --no-netns)")),
        }
    }

    pub fn heal_link(&self, i: usize) -> Result<()> {
        match &self.workers[i].host_veth {
            Some(v) => ip(&["link", "set", v, "up"]),
            None => Ok(()),
        }
    }

    /// SIGKILL of etcd, keeping its data.
    pub fn kill_etcd(&mut self) {
        self.etcd.stop();
    }

    /// etcd again on the same ports and data (a stopped or killed one is killed first).
    pub fn start_etcd(&mut self) {
        self.etcd.restart();
    }

    /// Sends `signal` to etcd (SIGSTOP freezes it with its connections open, SIGCONT thaws
    /// it); nothing when etcd is not running.
    pub fn signal_etcd(&self, signal: i32) {
        if let Some(pid) = self.etcd.pid() {
            // SAFETY: kill(2) on the pid of etcd, a child of this process.
            unsafe { libc::kill(pid as i32, signal) };
        }
    }

    /// Cuts worker `i` from etcd but not from its link peers: a blackhole route to etcd's
    /// address (the bridge's) in the worker's namespace, while the other workers, on the same
    /// bridge, stay reachable.
    pub fn isolate_worker(&self, i: usize) -> Result<()> {
        match (&self.workers[i].netns, &self.net) {
            (Some(ns), Some(net)) => ip(&["-n", ns, "route", "replace", "blackhole", &format!("{}/32", net.host_ip)]),
            _ => Err(Error::usage("a worker can only be cut from etcd in a network namespace (needs root; drop --no-netns)")),
        }
    }

    pub fn rejoin_worker(&self, i: usize) -> Result<()> {
        match (&self.workers[i].netns, &self.net) {
            (Some(ns), Some(net)) => ip(&["-n", ns, "route", "del", "blackhole", &format!("{}/32", net.host_ip)]),
            _ => Ok(()),
        }
    }

    /// Waits until every worker has registered in etcd.
    pub fn wait_for_workers(&self, limit: Duration) -> Result<()> {
        let deadline = std::time::Instant::now() + limit;
        loop {
            let out = Command::new(self.o.bin_dir.join("ferry")).args(["workers", "--json", "--etcd", &self.etcd.endpoint]).stderr(Stdio::null()).output();
            let online = out.ok().and_then(|o| serde_json::from_slice::<Vec<serde_json::Value>>(&o.stdout).ok()).map_or(0, |v| v.len());
            if online >= self.workers.len() {
                return Ok(());
            }
            if std::time::Instant::now() > deadline {
                return Err(run_err(format!(
                    "only {online} of {} workers registered within {limit:?}; see the logs in {}",
                    self.workers.len(),
                    self.o.work.display()
                )));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Worker processes that exited on their own (not killed by us): name and status.
    pub fn exited_workers(&mut self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for w in &mut self.workers {
            if let Some(c) = &mut w.child {
                if let Ok(Some(st)) = c.try_wait() {
                    out.push((w.name.clone(), st.to_string()));
                }
            }
        }
        out
    }

    /// Peak RSS of the live workers and the coordinator, by name.
    pub fn peak_rss(&self) -> Vec<(String, u64)> {
        let mut out: Vec<(String, u64)> = self.workers.iter().filter_map(|w| Some((w.name.clone(), peak_rss(w.child.as_ref()?.id())?))).collect();
        if let Some(rss) = self.coordinator.as_ref().and_then(|c| peak_rss(c.id())) {
            out.push(("coordinator".into(), rss));
        }
        out
    }

    /// The live processes by name: the workers, the coordinator and etcd.
    pub fn pids(&self) -> Vec<(String, u32)> {
        let mut out: Vec<(String, u32)> = self.workers.iter().filter_map(|w| Some((w.name.clone(), w.child.as_ref()?.id()))).collect();
        out.extend(self.coordinator.as_ref().map(|c| ("coordinator".to_string(), c.id())));
        out.extend(self.etcd.pid().map(|p| ("etcd".to_string(), p)));
        out
    }

    /// User+system CPU seconds used so far by etcd, the coordinator and the live workers.
    pub fn cpu_seconds(&self) -> f64 {
        let pids = self.workers.iter().filter_map(|w| w.child.as_ref().map(|c| c.id())).chain(self.coordinator.as_ref().map(|c| c.id())).chain(self.etcd.pid());
        pids.filter_map(|p| crate::util::process_cpu_seconds(p, true)).sum()
    }

    /// A handle that counts the keys in this cluster's etcd.
    pub fn key_counter(&self) -> Result<KeyCounter> {
        KeyCounter::new(&self.etcd.endpoint)
    }

    pub fn etcd_data_dir(&self) -> &Path {
        &self.etcd.data_dir
    }

    /// How many times each worker was started (1 = never restarted).
    pub fn starts(&self) -> Vec<(String, u32)> {
        self.workers.iter().map(|w| (w.name.clone(), w.starts)).collect()
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        // SIGTERM first: a worker finishes what it holds and leaves no half-written names.
        for w in &self.workers {
            if let Some(c) = &w.child {
                unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            }
        }
        if let Some(c) = &self.coordinator {
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        }
        std::thread::sleep(Duration::from_millis(500));
        for w in &mut self.workers {
            kill_hard(&mut w.child);
        }
        kill_hard(&mut self.coordinator);
    }
}

/// Counts the keys in an etcd (the "etcd holds only the frontier" measure), reconnecting after
/// an outage.
pub struct KeyCounter {
    rt: tokio::runtime::Runtime,
    endpoint: String,
    store: Option<ferry_common::store::EtcdStore>,
}

impl KeyCounter {
    pub fn new(endpoint: &str) -> Result<KeyCounter> {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| run_err(format!("tokio runtime: {e}")))?;
        Ok(KeyCounter { rt, endpoint: endpoint.to_string(), store: None })
    }

    /// Keys right now, or `None` while etcd does not answer.
    pub fn count(&mut self) -> Option<usize> {
        use ferry_common::store::Store;
        if self.store.is_none() {
            self.store = self.rt.block_on(ferry_common::store::EtcdStore::connect(std::slice::from_ref(&self.endpoint))).ok();
        }
        let store = self.store.as_ref()?;
        let n = self.rt.block_on(async { tokio::time::timeout(Duration::from_secs(2), store.total_keys()).await });
        match n {
            Ok(Ok(n)) => Some(n),
            _ => {
                self.store = None;
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_our_names_carry_an_owner() {
        assert_eq!(super::owner_pid("fl4242-w3"), Some(4242));
        assert_eq!(super::owner_pid("flbr77"), Some(77));
        for other in ["ferry-w1", "ferry-br0", "fl-w1", "flbrx", "ferry-lan1-a", "flannel"] {
            assert_eq!(super::owner_pid(other), None, "{other}");
        }
    }
}
