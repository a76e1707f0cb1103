//! The servers of these tests: the suite's shared nfs-ganesha for operations that leave it
//! as it was, and a private one (ports 12449/12448) for the tests that stop or kill it.

use std::path::PathBuf;

use ferry_common::testing::NfsServer;
use ferry_worker::location::nfs::v4::client::{Client, Config};
use ferry_worker::location::nfs::v4::proto::Fh;

/// The shared server (started by the first test of the suite that asks).
pub fn shared() -> &'static NfsServer {
    NfsServer::shared().expect("nfs-ganesha is installed (apt-get install nfs-ganesha nfs-ganesha-vfs rpcbind)")
}

/// A server of one test's own, stopped when it is dropped.
pub fn private_server() -> NfsServer {
    NfsServer::private(12449, 12448).expect("nfs-ganesha is installed (apt-get install nfs-ganesha nfs-ganesha-vfs rpcbind)")
}

/// A name of this test binary's own in the shared export.
pub fn unique(name: &str) -> String {
    format!("v4-{name}-{}", std::process::id())
}

pub fn config_at(server: &NfsServer) -> Config {
    // Every test server exports its directory at the NFSv4 pseudo path /export.
    Config::new(format!("127.0.0.1:{}", server.nfs_port).parse().unwrap(), "/export")
}

pub fn config() -> Config {
    config_at(shared())
}

pub async fn client() -> Client {
    Client::connect(config()).await.expect("connect")
}

/// A fresh directory for one test in the shared export: its handle and its path on disk.
pub async fn scratch(c: &Client, name: &str) -> (Fh, PathBuf) {
    scratch_in(c, shared(), &unique(name)).await
}

/// A fresh directory `name` in `server`'s export (removed first if a previous run left it).
pub async fn scratch_in(c: &Client, server: &NfsServer, name: &str) -> (Fh, PathBuf) {
    let disk = server.export.join(name);
    let _ = std::fs::remove_dir_all(&disk);
    let fh = c.mkdir(&c.root(), name.as_bytes(), 0o755).await.expect("mkdir scratch");
    (fh, disk)
}

/// Sends `sig` (`-STOP`, `-CONT`) to `server`'s ganesha.
pub fn signal(server: &NfsServer, sig: &str) {
    signal_pid(server.pid().expect("the server runs"), sig);
}

pub fn signal_pid(pid: i32, sig: &str) {
    assert!(std::process::Command::new("kill").arg(sig).arg(pid.to_string()).status().unwrap().success());
}
