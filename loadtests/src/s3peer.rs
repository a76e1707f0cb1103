//! A throw-away S3 server for the `s3-*` bench scenarios: `s3s-fs` on
//! loopback, on a free port, over a fresh root directory.
//!
//! `s3s-fs` maps bucket `B` to the directory `ROOT/B` and object `K` to the
//! file `ROOT/B/K`; it keeps per-object sidecars (`.bucket-….object-….json`)
//! and in-flight multipart parts as dot-files directly under `ROOT`. So the
//! objects a run uploaded to `s3://bench/P/` can be counted with a plain
//! directory walk of `ROOT/bench/P`, and a run's data is removed by deleting
//! that directory plus the dot-files.
//!
//! The server is killed when the [`S3Server`] is dropped, so an error (or a
//! panic) anywhere in the scenario does not leave it running.

use crate::error::{at, Context, Error, Result};
use crate::util;
use std::fs::{self, File};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Bucket every scenario uploads into.
pub const BUCKET: &str = "bench";
/// Fixed, fake credentials: the server only listens on loopback.
pub const ACCESS_KEY: &str = "ferrybench";
pub const SECRET_KEY: &str = "ferrybenchsecret";
pub const REGION: &str = "us-east-1";
/// Environment variable naming the `s3s-fs` binary explicitly.
pub const BIN_ENV: &str = "S3S_FS_BIN";

/// Locate `s3s-fs`: `$S3S_FS_BIN`, then PATH, then `~/.cargo/bin` (where
/// `cargo install s3s-fs --features binary` puts it). `Err` says why not.
pub fn find_s3s_fs() -> std::result::Result<PathBuf, String> {
    if let Some(p) = std::env::var_os(BIN_ENV).filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        return if util::is_executable(&p) { Ok(p) } else { Err(format!("{BIN_ENV}={} is not an executable", p.display())) };
    }
    if let Some(p) = util::find_in_path("s3s-fs") {
        return Ok(p);
    }
    if let Some(home) = std::env::var_os("HOME") {
        let p = PathBuf::from(home).join(".cargo/bin/s3s-fs");
        if util::is_executable(&p) {
            return Ok(p);
        }
    }
    Err(format!("s3s-fs is not installed (not in ${BIN_ENV}, PATH or ~/.cargo/bin); install it with `cargo install s3s-fs --features binary`"))
}

/// A running `s3s-fs`; killed (and its root removed) on drop.
pub struct S3Server {
    child: Option<Child>,
    pub port: u16,
    pub root: PathBuf,
    pub log: PathBuf,
}

impl S3Server {
    /// Start `program` over a fresh `root` (removed first, then created with
    /// the bucket directory) and wait until it accepts connections.
    pub fn start(program: &Path, root: &Path, log: &Path) -> Result<S3Server> {
        util::remove_tree(root)?;
        let bucket = root.join(BUCKET);
        fs::create_dir_all(&bucket).ctx(|| at("create directory", &bucket))?;
        // Ask the kernel for a free port; s3s-fs binds it right after. The
        // tiny race with another process is caught by the readiness check
        // (s3s-fs exits when the bind fails).
        let port =
            TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).and_then(|l| l.local_addr()).map(|a| a.port()).ctx(|| "find a free loopback port".to_string())?;
        let out = File::create(log).ctx(|| at("create log", log))?;
        let err = out.try_clone().ctx(|| at("open log", log))?;
        let child = Command::new(program)
            .arg("--host")
            .arg("127.0.0.1")
            .arg("--port")
            .arg(port.to_string())
            .arg("--access-key")
            .arg(ACCESS_KEY)
            .arg("--secret-key")
            .arg(SECRET_KEY)
            .arg(root)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .ctx(|| at("start", program))?;
        let mut server = S3Server { child: Some(child), port, root: root.to_path_buf(), log: log.to_path_buf() };
        server.wait_ready(Duration::from_secs(15))?;
        Ok(server)
    }

    fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    self.child = None;
                    return Err(Error::run(format!(
                        "s3s-fs exited with {status} before accepting connections; log {}:\n{}",
                        self.log.display(),
                        fs::read_to_string(&self.log).unwrap_or_default()
                    )));
                }
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(Error::run(format!("s3s-fs did not accept connections on {addr} within {timeout:?}; log {}", self.log.display())));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Directory holding the objects under `s3://bench/<prefix>/`.
    pub fn prefix_dir(&self, prefix: &str) -> PathBuf {
        self.root.join(BUCKET).join(prefix)
    }

    /// Remove every object (and s3s-fs's sidecar/part files) by replacing
    /// the root directory with a fresh one holding an empty bucket: the next
    /// run starts from scratch and the disk use stays at one copy.
    ///
    /// Replaced, not emptied: s3s-fs keeps two sidecar files per object
    /// directly in the root, and an ext4 directory that once held 20,000
    /// entries stays that big after they are deleted, which slowed every
    /// later run's requests down. s3s-fs resolves paths per request
    /// (nothing is held open), so swapping the directory under it is safe.
    pub fn clear(&self) -> Result<()> {
        util::remove_tree(&self.root)?;
        let bucket = self.root.join(BUCKET);
        fs::create_dir_all(&bucket).ctx(|| at("create directory", &bucket))
    }

    /// CPU seconds (user+sys) the server has used so far, from
    /// `/proc/PID/stat`; `None` when unavailable.
    pub fn cpu_s(&self) -> Option<f64> {
        util::process_cpu_seconds(self.pid()?, false)
    }

    /// Peak RSS so far (VmHWM), in KiB.
    pub fn peak_rss_kib(&self) -> Option<u64> {
        let status = fs::read_to_string(format!("/proc/{}/status", self.pid()?)).ok()?;
        status.lines().find(|l| l.starts_with("VmHWM:"))?.split_whitespace().nth(1)?.parse().ok()
    }

    /// Still running?
    pub fn alive(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = util::remove_tree(&self.root);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_cpu_is_readable() {
        let c = util::process_cpu_seconds(std::process::id(), true).expect("/proc/self/stat");
        assert!(c >= 0.0);
    }
}
