//! Test support shared by every crate's integration tests: a real etcd server on loopback.
//!
//! Tests start their own etcd (Debian's `etcd-server` package) on free loopback ports with a
//! temporary data directory, so `cargo test` needs no server set up by hand. Under `CI=true`
//! a missing etcd binary is a failure, never a skip.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct EtcdServer {
    child: Option<Child>,
    pub endpoint: String,
    pub data_dir: PathBuf,
    client_port: u16,
    peer_port: u16,
    extra: Option<String>,
    tls: Option<EtcdTls>,
}

/// An etcd serving clients over TLS only: `cert`/`key` (PEM) are its own, and clients must
/// present a certificate signed by `client_ca` (`--client-cert-auth`).
#[derive(Clone, Debug)]
pub struct EtcdTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: PathBuf,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free loopback port")
}

/// The etcd binary, or `None` outside CI when it is not installed.
pub fn etcd_binary() -> Option<PathBuf> {
    for p in ["/usr/bin/etcd", "/usr/local/bin/etcd"] {
        if std::path::Path::new(p).exists() {
            return Some(PathBuf::from(p));
        }
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("etcd is not installed; .ci/run installs Debian's etcd-server (under CI=true no test skips for lack of a server)");
    }
    None
}

impl EtcdServer {
    /// Starts etcd and waits until it answers. `None` when etcd is not installed (outside CI).
    pub fn start() -> Option<EtcdServer> {
        Self::start_also_on(None)
    }

    /// Like [`EtcdServer::start`], also listening on `ip` (an address of this host that
    /// agents in network namespaces reach); [`EtcdServer::endpoint_on`] names it.
    pub fn start_also_on(ip: Option<&str>) -> Option<EtcdServer> {
        let bin = etcd_binary()?;
        // A port found free can be taken before etcd binds it (by another test's etcd, or as
        // the source port of a connection): etcd then exits, and a fresh set of ports is tried.
        let mut why = String::new();
        for _ in 0..3 {
            let data_dir = std::env::temp_dir().join(format!("ferry-etcd-{}-{}", std::process::id(), free_port()));
            let mut server = EtcdServer {
                child: None,
                endpoint: String::new(),
                data_dir,
                client_port: free_port(),
                peer_port: free_port(),
                extra: ip.map(str::to_string),
                tls: None,
            };
            server.endpoint = format!("http://127.0.0.1:{}", server.client_port);
            match server.spawn(&bin) {
                Ok(()) => return Some(server),
                Err(e) => why = e,
            }
        }
        panic!("{why}")
    }

    /// Like [`EtcdServer::start`], serving clients over TLS ([`EtcdTls`]) on loopback port
    /// `client_port`, at `https://127.0.0.1:{client_port}`.
    pub fn start_tls(client_port: u16, peer_port: u16, tls: EtcdTls) -> Option<EtcdServer> {
        let bin = etcd_binary()?;
        let data_dir = std::env::temp_dir().join(format!("ferry-etcd-{}-{client_port}", std::process::id()));
        let endpoint = format!("https://127.0.0.1:{client_port}");
        let mut server = EtcdServer { child: None, endpoint, data_dir, client_port, peer_port, extra: None, tls: Some(tls) };
        server.spawn(&bin).unwrap_or_else(|e| panic!("{e}"));
        Some(server)
    }

    /// The client URL on another address given to [`EtcdServer::start_also_on`].
    pub fn endpoint_on(&self, ip: &str) -> String {
        format!("http://{ip}:{}", self.client_port)
    }

    /// Starts etcd and waits until it listens; an etcd that exits (a port taken) or does not
    /// listen within 20 s is an error that quotes its log.
    fn spawn(&mut self, bin: &std::path::Path) -> Result<(), String> {
        let log_path = self.data_dir.with_extension("log");
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&log_path).map_err(|e| format!("cannot open {}: {e}", log_path.display()))?;
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let mut cmd = Command::new(bin);
        if let Some(tls) = &self.tls {
            cmd.arg("--cert-file").arg(&tls.cert).arg("--key-file").arg(&tls.key).arg("--client-cert-auth").arg("--trusted-ca-file").arg(&tls.client_ca);
        }
        let child = cmd
            .arg("--name")
            .arg("ferry-test")
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--listen-client-urls")
            .arg(match &self.extra {
                Some(ip) => format!("{},{}", self.endpoint, self.endpoint_on(ip)),
                None => self.endpoint.clone(),
            })
            .arg("--advertise-client-urls")
            .arg(&self.endpoint)
            .arg("--listen-peer-urls")
            .arg(&peer)
            .arg("--initial-advertise-peer-urls")
            .arg(&peer)
            .arg("--initial-cluster")
            .arg(format!("ferry-test={peer}"))
            // As deploy/ runs it: raft entries are kept in memory until a snapshot, and a
            // completion can carry a few hundred KiB, so etcd's default (100,000) held GiBs.
            .arg("--snapshot-count")
            .arg("10000")
            .arg("--log-level")
            .arg("error")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start etcd");
        let child = self.child.insert(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        let failed = |what: String| {
            let text = std::fs::read_to_string(&log_path).unwrap_or_default();
            let tail = &text[text.len().saturating_sub(2000)..];
            format!("{what} (its log, {}: {tail})", log_path.display())
        };
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(failed(format!("etcd exited at start with {status}: a port may have been taken")));
            }
            if std::net::TcpStream::connect(("127.0.0.1", self.client_port)).is_ok() {
                // Something listens there; that it is this etcd shows in it staying up.
                std::thread::sleep(Duration::from_millis(50));
                if let Ok(Some(status)) = child.try_wait() {
                    return Err(failed(format!("etcd exited at start with {status}: its port is someone else's")));
                }
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(failed("etcd did not start listening within 20 s".to_string()));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops etcd (SIGKILL), keeping its data, as an outage would.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same ports and data.
    pub fn restart(&mut self) {
        self.stop();
        let bin = etcd_binary().expect("etcd installed");
        self.spawn(&bin).unwrap_or_else(|e| panic!("{e}"));
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// `etcdctl snapshot save FILE`: the backup step of docs/operations.md.
    pub fn snapshot(&self, file: &std::path::Path) {
        let out = Command::new(etcdctl_binary())
            .env("ETCDCTL_API", "3")
            .args(["--endpoints", &self.endpoint, "snapshot", "save"])
            .arg(file)
            .output()
            .expect("run etcdctl");
        assert!(out.status.success(), "etcdctl snapshot save failed: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// Loses etcd (SIGKILL and its data directory removed), then restores `snapshot` into a new
    /// data directory with `etcdctl snapshot restore` and starts etcd on it: the restore step of
    /// docs/operations.md.
    pub fn lose_and_restore(&mut self, snapshot: &std::path::Path) {
        self.stop();
        std::fs::remove_dir_all(&self.data_dir).expect("remove etcd's data directory");
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let out = Command::new(etcdctl_binary())
            .env("ETCDCTL_API", "3")
            .arg("snapshot")
            .arg("restore")
            .arg(snapshot)
            .args(["--name", "ferry-test", "--initial-cluster", &format!("ferry-test={peer}"), "--initial-advertise-peer-urls", &peer])
            .arg("--data-dir")
            .arg(&self.data_dir)
            .output()
            .expect("run etcdctl");
        assert!(out.status.success(), "etcdctl snapshot restore failed: {}", String::from_utf8_lossy(&out.stderr));
        let bin = etcd_binary().expect("etcd installed");
        self.spawn(&bin).unwrap_or_else(|e| panic!("{e}"));
    }
}

/// etcd's own client (Debian's `etcd-client` package), for the backup and restore tests.
pub fn etcdctl_binary() -> PathBuf {
    for p in ["/usr/bin/etcdctl", "/usr/local/bin/etcdctl"] {
        if std::path::Path::new(p).exists() {
            return PathBuf::from(p);
        }
    }
    panic!("etcdctl is not installed; .ci/run installs Debian's etcd-client");
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.data_dir);
        let _ = std::fs::remove_file(self.data_dir.with_extension("log"));
    }
}

/// Creates `dirs` directories of `files_per_dir` empty files under `root` (as `gNN/dNNNN/fNNNN`),
/// on two threads: the shape of the million-file scale tests.
pub fn make_empty_tree(root: &std::path::Path, dirs: usize, files_per_dir: usize) {
    std::thread::scope(|s| {
        for part in 0..2 {
            s.spawn(move || {
                for d in (part..dirs).step_by(2) {
                    let dir = root.join(format!("g{:02}", d / 100)).join(format!("d{d:04}"));
                    std::fs::create_dir_all(&dir).expect("create test directory");
                    for f in 0..files_per_dir {
                        std::fs::File::create(dir.join(format!("f{f:04}"))).expect("create test file");
                    }
                }
            });
        }
    });
}

/// Which S3-compatible server a test runs against. Both are real servers, started on loopback:
/// `s3s-fs` (crates.io; checks SigV4 and CRC32C on PUT) and `moto` (PyPI; full multipart).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum S3Flavor {
    S3sFs,
    Moto,
}

/// A throwaway S3-compatible server with one bucket, `ferry-test`.
pub struct S3Server {
    child: Child,
    pub flavor: S3Flavor,
    pub endpoint: String,
    pub bucket: String,
    pub access_key: String,
    pub secret_key: String,
    _root: Option<tempfile_dir::Dir>,
}

/// A temporary directory removed on drop (common has no tempfile dependency).
mod tempfile_dir {
    pub struct Dir(pub std::path::PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

fn find_program(name: &str) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH").map(|p| std::env::split_paths(&p).collect()).unwrap_or_default();
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(PathBuf::from(&home).join(".cargo/bin"));
        dirs.push(PathBuf::from(&home).join(".local/bin"));
    }
    dirs.into_iter().map(|d| d.join(name)).find(|p| p.is_file())
}

impl S3Server {
    /// Starts the server and creates the bucket. `None` when the server is not installed,
    /// outside CI; under `CI=true` that is a failure.
    pub fn start(flavor: S3Flavor) -> Option<S3Server> {
        Self::start_at(flavor, "127.0.0.1")
    }

    /// [`S3Server::start`] listening on `host` (an address of this machine, such as a bridge
    /// that test hosts in network namespaces reach).
    pub fn start_at(flavor: S3Flavor, host: &str) -> Option<S3Server> {
        Self::start_at_port(flavor, host, free_port())
    }

    /// [`S3Server::start_at`] on a chosen port: in a fresh network namespace every port is
    /// free, so two private servers at two test sites can share one endpoint URL.
    pub fn start_at_port(flavor: S3Flavor, host: &str, port: u16) -> Option<S3Server> {
        let (prog, hint) = match flavor {
            S3Flavor::S3sFs => ("s3s-fs", "cargo install s3s-fs@0.14.1 --features binary --locked"),
            S3Flavor::Moto => ("moto_server", "pip install 'moto[server]>=5.2.5'"),
        };
        let Some(bin) = find_program(prog) else {
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("{prog} is not installed ({hint}; .ci/run installs it, and under CI=true no test skips for lack of a server)");
            }
            eprintln!("skipping: {prog} is not installed ({hint})");
            return None;
        };
        let (access_key, secret_key) = ("ferrytestkey".to_string(), "ferrytestsecret0123456789".to_string());
        let bucket = "ferry-test".to_string();
        let (child, root) = match flavor {
            S3Flavor::S3sFs => {
                static SERVERS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
                let n = SERVERS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let root = std::env::temp_dir().join(format!("ferry-s3s-{}-{port}-{n}", std::process::id()));
                std::fs::create_dir_all(root.join(&bucket)).expect("create the s3s-fs root");
                let child = Command::new(bin)
                    .args(["--host", host, "--port", &port.to_string(), "--access-key", &access_key, "--secret-key", &secret_key])
                    .arg(&root)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("start s3s-fs");
                (child, Some(tempfile_dir::Dir(root)))
            }
            S3Flavor::Moto => {
                let child = Command::new(bin)
                    .args(["-H", host, "-p", &port.to_string()])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("start moto_server");
                (child, None)
            }
        };
        let server = S3Server { child, flavor, endpoint: format!("http://{host}:{port}"), bucket, access_key, secret_key, _root: root };
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect((host, port)).is_err() {
            assert!(Instant::now() < deadline, "{prog} did not start listening on port {port}");
            std::thread::sleep(Duration::from_millis(50));
        }
        if flavor == S3Flavor::Moto {
            // moto checks no signatures: a bare PUT creates the bucket. Its socket listens a
            // moment before the app answers (a connection then closes with no reply), so
            // the PUT is retried for a while.
            use std::io::{Read, Write};
            let mut resp = String::new();
            while !resp.starts_with("HTTP/1.1 200") {
                assert!(Instant::now() < deadline, "moto refused to create the bucket: {resp:?}");
                std::thread::sleep(Duration::from_millis(100));
                resp.clear();
                if let Ok(mut s) = std::net::TcpStream::connect((host, port)) {
                    let put = format!("PUT /{} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n", server.bucket);
                    if s.write_all(put.as_bytes()).is_ok() {
                        let _ = s.read_to_string(&mut resp);
                    }
                }
            }
        }
        Some(server)
    }

    /// Environment for a process that should reach this server through the AWS chain.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID", self.access_key.clone()),
            ("AWS_SECRET_ACCESS_KEY", self.secret_key.clone()),
            ("AWS_REGION", "us-east-1".to_string()),
            ("AWS_EC2_METADATA_DISABLED", "true".to_string()),
        ]
    }

    /// Sets [`S3Server::env`] in this process (tests that call the library directly).
    pub fn export_env(&self) {
        for (k, v) in self.env() {
            std::env::set_var(k, v);
        }
    }

    /// A fresh, empty prefix URI for one test.
    pub fn uri(&self, prefix: &str) -> String {
        format!("s3://{}/{prefix}", self.bucket)
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A real NFS server for the NFS backend's tests: nfs-ganesha (Debian's `nfs-ganesha` and
/// `nfs-ganesha-vfs`) exporting a directory of this machine over NFSv3 and NFSv4.1 on
/// loopback, with explicit ports so no portmapper is consulted (rpcbind still runs: ganesha
/// will not start without it). Needs root, as ganesha's VFS backend does.
pub struct NfsServer {
    /// The exported directory, on this machine's disk: tests check results there with
    /// independent tools.
    pub export: PathBuf,
    pub nfs_port: u16,
    pub mount_port: u16,
    root: PathBuf,
    /// Private servers are stopped on drop; the shared one outlives the test binary so the
    /// next binary reuses it (.ci/run stops it at the end).
    private: bool,
}

/// ganesha.nfsd, or `None` outside CI when it is not installed.
fn ganesha_binary() -> Option<PathBuf> {
    if let Some(p) = find_program("ganesha.nfsd").or_else(|| Some(PathBuf::from("/usr/bin/ganesha.nfsd")).filter(|p| p.exists())) {
        return Some(p);
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("nfs-ganesha is not installed; .ci/run installs nfs-ganesha, nfs-ganesha-vfs and rpcbind (under CI=true no test skips for lack of a server)");
    }
    eprintln!("skipping: nfs-ganesha is not installed (apt-get install nfs-ganesha nfs-ganesha-vfs rpcbind)");
    None
}

impl NfsServer {
    /// The one server every NFS test of the suite shares (ports 12049/12048, export under
    /// /var/tmp/ferry-test-nfs), started by the first test that asks. Each test works in its
    /// own directory of the export ([`NfsServer::fresh`]).
    pub fn shared() -> Option<&'static NfsServer> {
        static SHARED: std::sync::OnceLock<Option<NfsServer>> = std::sync::OnceLock::new();
        SHARED
            .get_or_init(|| {
                ganesha_binary()?;
                let server = NfsServer::at(PathBuf::from("/var/tmp/ferry-test-nfs"), 12049, 12048, false);
                if std::net::TcpStream::connect(("127.0.0.1", server.nfs_port)).is_err() {
                    server.start();
                }
                Some(server)
            })
            .as_ref()
    }

    /// A server of this test's own (stopped on drop), which it may stop and start.
    pub fn private(nfs_port: u16, mount_port: u16) -> Option<NfsServer> {
        Self::private_at(std::env::temp_dir().join(format!("ferry-nfs-{}-{nfs_port}", std::process::id())), nfs_port, mount_port)
    }

    /// [`NfsServer::private`] with its export and state under `root` (a benchmark puts it on
    /// the disk it measures). `root` is removed on drop.
    pub fn private_at(root: PathBuf, nfs_port: u16, mount_port: u16) -> Option<NfsServer> {
        ganesha_binary()?;
        let server = NfsServer::at(root, nfs_port, mount_port, true);
        server.start();
        Some(server)
    }

    fn at(root: PathBuf, nfs_port: u16, mount_port: u16, private: bool) -> NfsServer {
        NfsServer { export: root.join("export"), nfs_port, mount_port, root, private }
    }

    /// Starts ganesha (and rpcbind if it is not running) and waits until both services
    /// accept connections.
    pub fn start(&self) {
        let bin = ganesha_binary().expect("ganesha is installed");
        // One start at a time on this machine: each ganesha re-registers NFS and MOUNT with
        // rpcbind, and two doing it at once make one fail ("Cannot register NFS V3") and exit.
        let lock = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open("/tmp/ferry-ganesha-start.lock").expect("open the start lock");
        // SAFETY: flock on a descriptor this function owns; released when `lock` is closed.
        assert_eq!(unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&lock), libc::LOCK_EX) }, 0, "lock the ganesha start lock");
        std::fs::create_dir_all(&self.export).expect("create the export directory");
        std::fs::create_dir_all(self.root.join("v4recov")).expect("create ganesha's recovery directory");
        // More exports for refusals: one that squashes root (writable by anyone, so only
        // setting an owner fails), one that is read-only, and one whose client list leaves
        // this host out.
        for (dir, mode) in [("squashed", 0o777), ("readonly", 0o755), ("denied", 0o755)] {
            let p = self.root.join(dir);
            std::fs::create_dir_all(&p).expect("create an export directory");
            std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(mode)).expect("chmod an export directory");
        }
        if std::net::TcpStream::connect(("127.0.0.1", 111)).is_err() {
            let _ = Command::new("rpcbind").arg("-w").status();
        }
        let conf = format!(
            "NFS_CORE_PARAM {{ Protocols=3,4; NFS_Port={}; MNT_Port={}; Enable_NLM=false; Enable_RQUOTA=false; Bind_addr=127.0.0.1; }}\n\
             NFSV4 {{ Graceless=true; RecoveryBackend=fs; RecoveryRoot={}; Only_Numeric_Owners=true; }}\n\
             EXPORT {{ Export_Id=1; Path={}; Pseudo=/export; Access_Type=RW; Squash=No_Root_Squash; SecType=sys; Protocols=3,4; Transports=TCP; FSAL {{ Name=VFS; }} }}\n\
             EXPORT {{ Export_Id=2; Path={}; Pseudo=/squashed; Access_Type=RW; Squash=Root_Squash; SecType=sys; Protocols=3,4; Transports=TCP; FSAL {{ Name=VFS; }} }}\n\
             EXPORT {{ Export_Id=3; Path={}; Pseudo=/readonly; Access_Type=RO; Squash=No_Root_Squash; SecType=sys; Protocols=3,4; Transports=TCP; FSAL {{ Name=VFS; }} }}\n\
             EXPORT {{ Export_Id=4; Path={}; Pseudo=/denied; Access_Type=None; Squash=No_Root_Squash; SecType=sys; Protocols=3,4; Transports=TCP; CLIENT {{ Clients=192.0.2.1; Access_Type=RW; }} FSAL {{ Name=VFS; }} }}\n",
            self.nfs_port,
            self.mount_port,
            self.root.join("v4recov").display(),
            self.export.display(),
            self.root.join("squashed").display(),
            self.root.join("readonly").display(),
            self.root.join("denied").display()
        );
        std::fs::write(self.root.join("ganesha.conf"), conf).expect("write ganesha.conf");
        // Started by a shell that exits at once, so ganesha belongs to init, not to this test:
        // the shared server outlives the binary, and a stopped one leaves no zombie behind.
        let q = |p: PathBuf| format!("'{}'", p.display());
        let line = format!(
            "{} -F -f {} -L {} -p {} </dev/null >/dev/null 2>&1 &",
            q(bin),
            q(self.root.join("ganesha.conf")),
            q(self.root.join("ganesha.log")),
            q(self.root.join("ganesha.pid"))
        );
        let started = Command::new("sh").arg("-c").arg(line).status().expect("run sh");
        assert!(started.success(), "cannot start ganesha.nfsd");
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(("127.0.0.1", self.nfs_port)).is_err() || std::net::TcpStream::connect(("127.0.0.1", self.mount_port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "ganesha did not start listening on ports {}/{}; see {}",
                self.nfs_port,
                self.mount_port,
                self.root.join("ganesha.log").display()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The pid of the running ganesha.
    pub fn pid(&self) -> Option<i32> {
        std::fs::read_to_string(self.root.join("ganesha.pid")).ok()?.trim().parse().ok()
    }

    /// Stops ganesha (SIGKILL: a crash, not a clean shutdown) and waits until it is gone.
    pub fn stop(&self) {
        let Ok(pid) = std::fs::read_to_string(self.root.join("ganesha.pid")) else {
            return;
        };
        let Ok(pid) = pid.trim().parse::<i32>() else {
            return;
        };
        // SAFETY: kill(2) on the pid ganesha wrote for itself.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::path::Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = std::fs::remove_file(self.root.join("ganesha.pid"));
    }

    /// [`NfsServer::fresh`] with its NFSv4.1 URI.
    pub fn fresh41(&self, name: &str) -> (PathBuf, String) {
        let (dir, _) = self.fresh(name);
        let rel = dir.file_name().expect("a test directory has a name").to_string_lossy().into_owned();
        (dir, self.uri41(&rel))
    }

    /// A fresh, empty directory of the export for one test: its path on disk and its URI.
    pub fn fresh(&self, name: &str) -> (PathBuf, String) {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let rel = format!("{name}-{}-{n}", std::process::id());
        let dir = self.export.join(&rel);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create a test directory in the export");
        let uri = self.uri(&rel);
        (dir, uri)
    }

    /// The URI of `rel` in the export that squashes root (`squashed`), the read-only one
    /// (`readonly`) or the one this host is not a client of (`denied`).
    pub fn refusing_uri(&self, export: &str, rel: &str) -> String {
        format!("nfs://127.0.0.1{}/{rel}?nfsport={}&mountport={}", self.root.join(export).display(), self.nfs_port, self.mount_port)
    }

    /// The NFSv4.1 URI of `rel` in the export (`/export` in the server's pseudo namespace).
    pub fn uri41(&self, rel: &str) -> String {
        format!("nfs://127.0.0.1:{}/export/{rel}?vers=4.1", self.nfs_port)
    }

    /// The URI of `rel` in the export.
    pub fn uri(&self, rel: &str) -> String {
        format!("nfs://127.0.0.1{}/{rel}?nfsport={}&mountport={}", self.export.display(), self.nfs_port, self.mount_port)
    }
}

impl Drop for NfsServer {
    fn drop(&mut self) {
        if self.private {
            self.stop();
            let _ = std::fs::remove_dir_all(&self.root);
        }
    }
}

/// A Store for tests of what a Store outage does to its callers: it passes every request to
/// `inner`, counts requests by operation, and loses the answer of the transactions that
/// `lose` picks after applying them, as an etcd that goes down between committing a
/// transaction and answering it does.
pub struct LossyStore {
    inner: crate::store::SharedStore,
    counts: std::sync::Mutex<std::collections::BTreeMap<&'static str, u64>>,
    /// Every request's first key (or prefix), in order.
    keys: std::sync::Mutex<Vec<Vec<u8>>>,
    #[allow(clippy::type_complexity)]
    lose: std::sync::Mutex<Option<Box<dyn FnMut(&crate::store::Txn) -> bool + Send>>>,
}

impl LossyStore {
    pub fn new(inner: crate::store::SharedStore) -> Self {
        LossyStore { inner, counts: Default::default(), keys: Default::default(), lose: Default::default() }
    }

    /// From now on, a transaction for which `pick` answers true is applied, then answered
    /// with `Unavailable`.
    pub fn lose_answers(&self, pick: impl FnMut(&crate::store::Txn) -> bool + Send + 'static) {
        *self.lose.lock().unwrap_or_else(|e| e.into_inner()) = Some(Box::new(pick));
    }

    /// Requests made so far, by operation (get, range, count, put, delete, txn, watch, ...).
    pub fn counts(&self) -> std::collections::BTreeMap<&'static str, u64> {
        self.counts.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Requests made so far whose key (or prefix, or first compared key) starts with `prefix`.
    pub fn requests_under(&self, prefix: &[u8]) -> usize {
        self.keys.lock().unwrap_or_else(|e| e.into_inner()).iter().filter(|k| k.starts_with(prefix)).count()
    }

    fn tally(&self, op: &'static str) {
        *self.counts.lock().unwrap_or_else(|e| e.into_inner()).entry(op).or_default() += 1;
    }

    fn record(&self, op: &'static str, key: &[u8]) {
        self.tally(op);
        self.keys.lock().unwrap_or_else(|e| e.into_inner()).push(key.to_vec());
    }
}

#[async_trait::async_trait]
impl crate::store::Store for LossyStore {
    async fn get(&self, key: &[u8]) -> Result<Option<crate::store::KeyValue>, crate::store::StoreError> {
        self.record("get", key);
        self.inner.get(key).await
    }
    async fn range(&self, prefix: &[u8], opts: crate::store::RangeOptions) -> Result<crate::store::RangeResult, crate::store::StoreError> {
        self.record("range", prefix);
        self.inner.range(prefix, opts).await
    }
    async fn count(&self, prefix: &[u8]) -> Result<usize, crate::store::StoreError> {
        self.record("count", prefix);
        self.inner.count(prefix).await
    }
    async fn put(&self, key: &[u8], value: Vec<u8>, lease: Option<crate::store::LeaseId>) -> Result<crate::store::Revision, crate::store::StoreError> {
        self.record("put", key);
        self.inner.put(key, value, lease).await
    }
    async fn delete(&self, key: &[u8]) -> Result<usize, crate::store::StoreError> {
        self.record("delete", key);
        self.inner.delete(key).await
    }
    async fn delete_prefix(&self, prefix: &[u8]) -> Result<usize, crate::store::StoreError> {
        self.record("delete_prefix", prefix);
        self.inner.delete_prefix(prefix).await
    }
    async fn txn(&self, txn: crate::store::Txn) -> Result<crate::store::TxnResult, crate::store::StoreError> {
        let first = txn.compares.first().map(|c| c.key.clone()).unwrap_or_default();
        self.record("txn", &first);
        let lost = self.lose.lock().unwrap_or_else(|e| e.into_inner()).as_mut().is_some_and(|pick| pick(&txn));
        let r = self.inner.txn(txn).await;
        if lost && r.is_ok() {
            return Err(crate::store::StoreError::Unavailable("the answer was lost (LossyStore)".into()));
        }
        r
    }
    async fn lease_grant(&self, ttl: Duration) -> Result<crate::store::LeaseId, crate::store::StoreError> {
        self.tally("lease_grant");
        self.inner.lease_grant(ttl).await
    }
    async fn lease_keep_alive(&self, lease: crate::store::LeaseId) -> Result<(), crate::store::StoreError> {
        self.tally("lease_keep_alive");
        self.inner.lease_keep_alive(lease).await
    }
    async fn lease_revoke(&self, lease: crate::store::LeaseId) -> Result<(), crate::store::StoreError> {
        self.tally("lease_revoke");
        self.inner.lease_revoke(lease).await
    }
    async fn watch(&self, prefix: &[u8], from_revision: crate::store::Revision) -> Result<crate::store::WatchStream, crate::store::StoreError> {
        self.record("watch", prefix);
        self.inner.watch(prefix, from_revision).await
    }
    async fn compact(&self, revision: crate::store::Revision) -> Result<(), crate::store::StoreError> {
        self.tally("compact");
        self.inner.compact(revision).await
    }
}
