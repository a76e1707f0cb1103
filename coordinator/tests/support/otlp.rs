//! A real OTLP/HTTP trace receiver for tests (otlp_receiver.py: PyPI's opentelemetry-proto
//! decoding `/v1/traces`), with the spans it decoded as JSON values.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The receiver process, killed on drop.
pub struct OtlpReceiver {
    child: Child,
    out: PathBuf,
    _dir: tempfile::TempDir,
    pub port: u16,
}

impl OtlpReceiver {
    /// Listens on `host` (`0.0.0.0` for agents in network namespaces), on a free port.
    pub fn start(host: &str) -> OtlpReceiver {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("spans.jsonl");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/otlp_receiver.py");
        let child = Command::new("python3").arg(script).args([host, "0"]).arg(&out).stdout(Stdio::null()).stderr(Stdio::inherit()).spawn().unwrap();
        let mut receiver = OtlpReceiver { child, out, _dir: dir, port: 0 };
        let port_file = receiver.out.with_extension("jsonl.port");
        let deadline = Instant::now() + Duration::from_secs(30);
        while receiver.port == 0 {
            match std::fs::read_to_string(&port_file) {
                Ok(p) => receiver.port = p.trim().parse().unwrap(),
                Err(_) => {
                    assert!(Instant::now() < deadline, "the OTLP receiver did not start (is PyPI's opentelemetry-proto installed? .ci/run installs it)");
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
        receiver
    }

    /// Every span decoded so far.
    pub fn spans(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.out).unwrap_or_default().lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
    }

    /// Keeps the decoded spans where a failing test can be read later.
    pub fn keep_for_failure(&self, name: &str) -> PathBuf {
        let kept = std::env::temp_dir().join(name);
        let _ = std::fs::copy(&self.out, &kept);
        kept
    }
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
