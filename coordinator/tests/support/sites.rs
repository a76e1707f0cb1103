//! Test hosts at "sites": network namespaces on a bridge, each running one `ferry-worker`
//! agent, with etcd, a coordinator and the cluster CA in the host namespace. What a fleet at
//! two sites looks like, on one machine (tests may only talk to loopback or to namespaces they
//! create themselves).

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ferry_common::testing::EtcdServer;

use super::Ferry;

/// A binary built next to `ferry` (`ferry-worker`, ...).
pub fn bin(name: &str) -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_ferry")).with_file_name(name)
}

pub fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(out.status.success(), "ip {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// True when namespaces can be made (root and iproute2). Outside CI a test may skip without
/// them; under `CI=true` their absence fails the test.
pub fn have_root_and_ip() -> bool {
    let root = unsafe { libc::geteuid() } == 0;
    let ip = Command::new("ip").arg("-V").output().is_ok_and(|o| o.status.success());
    if !(root && ip) {
        assert!(std::env::var("CI").as_deref() != Ok("true"), "CI must run as root with iproute2 installed");
        eprintln!("skipping: needs root and iproute2");
        return false;
    }
    true
}

/// One test host: a namespace with a veth on the bridge.
pub struct Site {
    pub ns: String,
    /// The host-side end of its veth (set it down to cut the site off).
    pub host_if: String,
    pub addr: String,
}

/// A bridge and one namespace per site, removed on drop.
pub struct Sites {
    bridge: String,
    pub host_ip: String,
    pub sites: Vec<Site>,
}

impl Sites {
    /// `count` namespaces on a fresh bridge. Names and the subnet derive from the process id
    /// and a counter, so that test binaries (and tests in one binary) running at once do not
    /// collide.
    pub fn create(count: usize) -> Sites {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tag = (std::process::id() % 1000) * 10 + n % 10;
        let subnet = (std::process::id() * 7 + n * 53) % 250 + 1;
        let bridge = format!("fybr{tag}");
        let host_ip = format!("10.78.{subnet}.1");
        ip(&["link", "add", &bridge, "type", "bridge"]);
        let mut sites = Sites { bridge: bridge.clone(), host_ip: host_ip.clone(), sites: Vec::new() };
        ip(&["addr", "add", &format!("{host_ip}/24"), "dev", &bridge]);
        ip(&["link", "set", &bridge, "up"]);
        for i in 0..count {
            let ns = format!("fy-{tag}-{i}");
            let (host_if, ns_if) = (format!("fy{tag}h{i}"), format!("fy{tag}n{i}"));
            let addr = format!("10.78.{subnet}.{}", 11 + i);
            ip(&["netns", "add", &ns]);
            sites.sites.push(Site { ns: ns.clone(), host_if: host_if.clone(), addr: addr.clone() });
            ip(&["link", "add", &host_if, "type", "veth", "peer", "name", &ns_if]);
            ip(&["link", "set", &ns_if, "netns", &ns]);
            ip(&["link", "set", &host_if, "master", &bridge, "up"]);
            ip(&["-n", &ns, "addr", "add", &format!("{addr}/24"), "dev", &ns_if]);
            ip(&["-n", &ns, "link", "set", &ns_if, "up"]);
            ip(&["-n", &ns, "link", "set", "lo", "up"]);
        }
        sites
    }
}

impl Drop for Sites {
    fn drop(&mut self) {
        for s in &self.sites {
            let _ = Command::new("ip").args(["link", "del", &s.host_if]).status();
            let _ = Command::new("ip").args(["netns", "del", &s.ns]).status();
        }
        let _ = Command::new("ip").args(["link", "del", &self.bridge]).status();
    }
}

/// Runs `f` on a thread that has joined network namespace `ns`: sockets it opens and
/// processes it starts live there (namespaces are per thread, and a child inherits its
/// spawning thread's). Used to start a server that only that site can reach.
pub fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            let handle = File::open(format!("/run/netns/{ns}")).unwrap_or_else(|e| panic!("open namespace {ns}: {e}"));
            let rc = unsafe { libc::setns(handle.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns {ns}: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .expect("the namespace thread panicked")
    })
}

/// Child processes killed (and reaped) on drop.
#[derive(Default)]
pub struct Procs(pub Vec<Child>);

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// One agent of a [`Fleet`]: its name, the label locations are bound to, and extra
/// environment (credentials, log levels, test hooks).
pub struct AgentSpec {
    pub name: String,
    pub label: String,
    pub env: Vec<(String, String)>,
    /// Users and groups this agent's host has: (passwd, group) files mounted over
    /// /etc/passwd and /etc/group in its own mount namespace, as on another host.
    pub user_db: Option<(PathBuf, PathBuf)>,
    /// Runs in the host's namespace, not its site's: it alone reaches servers on the host's
    /// loopback (a test NFS server), and listens for links on the bridge address.
    pub on_host: bool,
    /// Extra `ferry-worker` arguments.
    pub args: Vec<String>,
}

impl AgentSpec {
    pub fn new(name: &str, label: &str) -> AgentSpec {
        AgentSpec { name: name.into(), label: label.into(), env: Vec::new(), user_db: None, on_host: false, args: Vec::new() }
    }

    pub fn on_host(mut self) -> AgentSpec {
        self.on_host = true;
        self
    }

    pub fn user_db(mut self, passwd: PathBuf, group: PathBuf) -> AgentSpec {
        self.user_db = Some((passwd, group));
        self
    }

    pub fn env(mut self, k: &str, v: &str) -> AgentSpec {
        self.env.push((k.into(), v.into()));
        self
    }

    pub fn arg(mut self, a: &str) -> AgentSpec {
        self.args.push(a.into());
        self
    }
}

/// etcd, a coordinator and the CA in the host namespace; one enrolled agent per site, each
/// listening for QUIC links on its site's address. Everything stops on drop.
pub struct Fleet {
    procs: Procs,
    pub etcd: EtcdServer,
    pub sites: Sites,
    pub work: tempfile::TempDir,
    pub logs: PathBuf,
    names: Vec<String>,
}

impl Fleet {
    /// Starts the fleet (agent `i` at site `i`) and waits until every agent is online.
    /// `None` when etcd is not installed outside CI.
    pub fn start(agents: Vec<AgentSpec>) -> Option<Fleet> {
        Self::start_with_env(agents, &[])
    }

    /// [`Fleet::start`] with `env` set for the coordinator and every agent; `{host_ip}` in a
    /// value becomes the host's address on the sites' bridge (what the agents reach it by).
    pub fn start_with_env(agents: Vec<AgentSpec>, env: &[(&str, &str)]) -> Option<Fleet> {
        let sites = Sites::create(agents.len());
        let env: Vec<(String, String)> = env.iter().map(|(k, v)| (k.to_string(), v.replace("{host_ip}", &sites.host_ip))).collect();
        let etcd = EtcdServer::start_also_on(Some(&sites.host_ip))?;
        let work = super::scratch();
        let logs = work.path().join("logs");
        std::fs::create_dir_all(&logs).unwrap();
        let ca = work.path().join("ca");
        let mut fleet = Fleet { procs: Procs::default(), etcd, sites, logs, names: Vec::new(), work };
        Ferry::bare().args(["ca", "init", "--ca-dir"]).arg(&ca).run().assert_code(0);
        let coordinator_log = File::create(fleet.logs.join("coordinator.log")).unwrap();
        let ferry = bin("ferry");
        fleet.procs.0.push(
            Command::new(&ferry)
                .args(["coordinator", "--name", "c1", "--etcd", &fleet.etcd.endpoint])
                .envs(env.iter().cloned())
                .stderr(coordinator_log)
                .spawn()
                .unwrap(),
        );
        // The CA holder signs enrollments as the agents ask.
        fleet
            .procs
            .0
            .push(Command::new(&ferry).args(["ca", "serve", "--etcd", &fleet.etcd.endpoint, "--ca-dir"]).arg(&ca).stderr(Stdio::null()).spawn().unwrap());
        let endpoint = fleet.etcd.endpoint_on(&fleet.sites.host_ip);
        for (i, agent) in agents.iter().enumerate() {
            let token = Ferry::bare()
                .args(["ca", "token", "--ttl", "5m", "--etcd", &fleet.etcd.endpoint, "--name", &agent.name, "--labels", &agent.label, "--ca-dir"])
                .arg(&ca)
                .run();
            token.assert_code(0);
            let site = &fleet.sites.sites[i];
            let log = File::create(fleet.logs.join(format!("{}.log", agent.name))).unwrap();
            let mut cmd = Command::new("ip");
            let listen = if agent.on_host { fleet.sites.host_ip.clone() } else { site.addr.clone() };
            if agent.on_host {
                cmd = Command::new("env");
            } else {
                cmd.args(["netns", "exec", &site.ns]);
            }
            if let Some((passwd, group)) = &agent.user_db {
                cmd.args([
                    "unshare",
                    "--mount",
                    "--propagation",
                    "private",
                    "sh",
                    "-c",
                    "mount --bind \"$1\" /etc/passwd && mount --bind \"$2\" /etc/group && shift 2 && exec \"$@\"",
                    "sh",
                ]);
                cmd.arg(passwd).arg(group);
            }
            cmd.arg(bin("ferry-worker"));
            // The bridge address is off loopback: plaintext there is a test's choice.
            cmd.args(["--etcd", &endpoint, "--insecure-etcd", "--name", &agent.name, "--labels", &agent.label, "--lease-ttl", "30", "--movers", "4"]);
            cmd.arg("--tls-dir").arg(fleet.work.path().join(format!("tls-{i}")));
            cmd.env("FERRY_ENROLL_TOKEN", token.stdout.trim());
            cmd.args(["--link-listen", &format!("{listen}:7400")]);
            cmd.args(&agent.args);
            cmd.envs(env.iter().cloned());
            cmd.envs(agent.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
            fleet.procs.0.push(cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(log).spawn().unwrap());
            fleet.names.push(agent.name.clone());
        }
        fleet.wait_online();
        Some(fleet)
    }

    fn wait_online(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let out = Ferry::bare().args(["workers", "--json", "--etcd", &self.etcd.endpoint]).run();
            if out.code == Some(0) && out.stdout.matches("\"ONLINE\"").count() == self.names.len() {
                return;
            }
            assert!(Instant::now() < deadline, "agents did not register: {}\n{}", out.stdout, self.agent_logs());
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// `ferry SUB SRC DST --no-progress --etcd ...`: a run submitted to this fleet.
    pub fn ferry(&self, sub: &str, src: impl AsRef<std::ffi::OsStr>, dst: impl AsRef<std::ffi::OsStr>) -> Ferry {
        Ferry::new(sub, src, dst).args(["--etcd", &self.etcd.endpoint])
    }

    /// One agent's stderr so far.
    pub fn agent_log(&self, name: &str) -> String {
        std::fs::read_to_string(self.logs.join(format!("{name}.log"))).unwrap_or_default()
    }

    /// Every agent's and the coordinator's log, for failure messages.
    pub fn agent_logs(&self) -> String {
        let mut all = String::new();
        for name in self.names.iter().map(String::as_str).chain(["coordinator"]) {
            let log = self.agent_log(name);
            let tail = &log.as_bytes()[log.len().saturating_sub(6000)..];
            all += &format!("--- {name} (last 6000 bytes) ---\n{}\n", String::from_utf8_lossy(tail));
        }
        all
    }
}
