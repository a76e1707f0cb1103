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
        let bin = etcd_binary()?;
        let data_dir = std::env::temp_dir().join(format!("ferry-etcd-{}-{}", std::process::id(), free_port()));
        let mut server = EtcdServer { child: None, endpoint: String::new(), data_dir, client_port: free_port(), peer_port: free_port() };
        server.endpoint = format!("http://127.0.0.1:{}", server.client_port);
        server.spawn(&bin);
        Some(server)
    }

    fn spawn(&mut self, bin: &std::path::Path) {
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let child = Command::new(bin)
            .arg("--name")
            .arg("ferry-test")
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--listen-client-urls")
            .arg(&self.endpoint)
            .arg("--advertise-client-urls")
            .arg(&self.endpoint)
            .arg("--listen-peer-urls")
            .arg(&peer)
            .arg("--initial-advertise-peer-urls")
            .arg(&peer)
            .arg("--initial-cluster")
            .arg(format!("ferry-test={peer}"))
            .arg("--log-level")
            .arg("error")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start etcd");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", self.client_port)).is_err() {
            assert!(Instant::now() < deadline, "etcd did not start listening within 20 s");
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
        self.spawn(&bin);
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.data_dir);
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
