//! etcd holds only the frontier: a million-file execution keeps a bounded number of keys.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ferry_common::store::{EtcdStore, Store};
use ferry_common::testing::{make_empty_tree, EtcdServer};

struct Children(Vec<Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn worker_bin() -> PathBuf {
    let p = Path::new(env!("CARGO_BIN_EXE_ferry")).with_file_name("ferry-worker");
    assert!(p.exists(), "{} is missing: build the workspace (cargo build --workspace)", p.display());
    p
}

fn dir_size(p: &Path) -> u64 {
    let mut total = 0;
    if let Ok(rd) = std::fs::read_dir(p) {
        for e in rd.flatten() {
            let m = e.metadata().unwrap();
            total += if m.is_dir() { dir_size(&e.path()) } else { m.len() };
        }
    }
    total
}

/// Runs `ferry copy --etcd` from `src` to `dst` on a cluster of a coordinator and two workers,
/// sampling the keys in etcd every 100 ms. Returns the CLI's output, the peak key count and the
/// cluster's processes (still running), and fails with their log tails when the copy fails.
fn copy_on_cluster(etcd: &EtcdServer, dir: &Path, src: &std::ffi::OsStr, dst: &std::ffi::OsStr) -> (std::process::Output, usize, Children) {
    let log = |name: &str| std::fs::File::create(dir.join(format!("{name}.log"))).unwrap();
    let mut kids = Children(Vec::new());
    kids.0.push(
        Command::new(env!("CARGO_BIN_EXE_ferry"))
            .args(["coordinator", "--etcd", &etcd.endpoint, "--name", "c1"])
            .stdout(Stdio::null())
            .stderr(log("c1"))
            .spawn()
            .unwrap(),
    );
    for w in ["w1", "w2"] {
        kids.0.push(
            Command::new(worker_bin()).args(["--etcd", &etcd.endpoint, "--name", w, "--movers", "6"]).stdout(Stdio::null()).stderr(log(w)).spawn().unwrap(),
        );
    }
    // Sample the key count while the execution runs.
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let store = rt.block_on(EtcdStore::connect(std::slice::from_ref(&etcd.endpoint))).unwrap();
    let peak = Arc::new(AtomicUsize::new(0));
    let running = Arc::new(AtomicBool::new(true));
    let sampler = {
        let (peak, running) = (peak.clone(), running.clone());
        let handle = rt.handle().clone();
        std::thread::spawn(move || {
            while running.load(Ordering::Relaxed) {
                if let Ok(n) = handle.block_on(store.total_keys()) {
                    peak.fetch_max(n, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    let out = Command::new(env!("CARGO_BIN_EXE_ferry")).args(["copy", "--no-progress", "--json", "--etcd", &etcd.endpoint]).arg(src).arg(dst).output().unwrap();
    running.store(false, Ordering::Relaxed);
    sampler.join().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let tails: String = ["c1", "w1", "w2"]
        .iter()
        .map(|n| {
            let text = std::fs::read_to_string(dir.join(format!("{n}.log"))).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            format!("--- {n}.log (last 20 lines)\n{}\n", lines[lines.len().saturating_sub(20)..].join("\n"))
        })
        .collect();
    assert_eq!(out.status.code(), Some(0), "cluster copy failed: {stderr}\n{}\n{tails}", String::from_utf8_lossy(&out.stdout));
    let peak = peak.load(Ordering::Relaxed);
    (out, peak, kids)
}

/// Many small directories were the worst shape: one waiting directory-metadata key per scan
/// page (about one per 16 directories) and a breadth-first scan frontier, so 40,000
/// directories of 10 files held about 2,500 keys. Directory metadata now settles as soon as
/// the directory's own writes are done, and found directories stay in the scan page's
/// continuation while the queue is full, so the peak is set by configuration (see
/// docs/store-layout.md): here, with 2 workers of 6 movers, a few hundred.
#[test]
fn many_small_directories_keep_the_keys_in_etcd_bounded_by_configuration() {
    let Some(etcd) = EtcdServer::start() else {
        return;
    };
    let tmp = tempfile::Builder::new().prefix("ferry-cluster-scale-").tempdir_in("/var/tmp").unwrap();
    let src = "synthetic://files=400000&per-dir=10&fanout=10&size=0-64";
    let (out, peak, _cluster) = copy_on_cluster(&etcd, tmp.path(), src.as_ref(), "null://".as_ref());
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["status"], "SUCCESS", "{summary}");
    assert_eq!(summary["counters"]["files_transferred"], 400_000 + 40_000 - 1, "every file and directory, each once");
    let db = std::fs::metadata(etcd.data_dir.join("member/snap/db")).map(|m| m.len()).unwrap_or(0);
    eprintln!("439,999 entries in 40,000 directories: peak {peak} keys in etcd; etcd database file {} MiB", db >> 20);
    assert!(peak <= 600, "peak {peak} keys: the frontier must be set by configuration, not by the number of directories");
}

#[test]
fn a_million_file_execution_keeps_a_bounded_number_of_keys_in_etcd() {
    let Some(etcd) = EtcdServer::start() else {
        return;
    };
    let tmp = tempfile::Builder::new().prefix("ferry-cluster-scale-").tempdir_in("/var/tmp").unwrap();
    let src = tmp.path().join("src");
    make_empty_tree(&src, 1000, 1000);
    let dst = tmp.path().join("dst");
    let (out, peak, _cluster) = copy_on_cluster(&etcd, tmp.path(), src.as_os_str(), dst.as_os_str());
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["counters"]["files_transferred"], 1_000_000 + 1000 + 10);

    let data = dir_size(&etcd.data_dir.join("member"));
    let db = std::fs::metadata(etcd.data_dir.join("member/snap/db")).map(|m| m.len()).unwrap_or(0);
    eprintln!("1,001,010 entries: peak {peak} keys in etcd; etcd database file {} MiB, data dir (with WAL) {} MiB", db >> 20, data >> 20);
    // Queue backpressure (transfer, scan and Settle shards), claims and unfolded results: a few
    // hundred keys, never per file.
    assert!(peak < 600, "peak {peak} keys: etcd must hold only the frontier, not per-file state");
    let exec = summary["execution"].as_str().unwrap().to_string();
    let (left, events, agents, logs) = rt.block_on(async {
        let s = EtcdStore::connect(std::slice::from_ref(&etcd.endpoint)).await.unwrap();
        let events = s.count(&ferry_common::keys::events()).await.unwrap();
        let agents = s.count(&ferry_common::keys::agent_records()).await.unwrap();
        // The execution's keys but its record: its log streams and chunks.
        let logs = s.count(&ferry_common::keys::ExecKeys::new(&exec).all()).await.unwrap().saturating_sub(1);
        (s.total_keys().await.unwrap() - events - agents - logs, events, agents, logs)
    });
    // What outlives the run: the execution record, its index entry, the worker registrations,
    // one health record per agent, the execution's log lines (a few chunks per agent, bounded
    // by size), and one event per phase change (kept for the history period).
    eprintln!("left after the run: {left} keys, {events} events, {agents} agent records, {logs} log keys");
    assert!(left <= 5, "{left} keys besides events, agent records and logs left after the execution finished");
    assert!(agents <= 3, "{agents} agent records: one per agent");
    assert!(logs <= 64, "{logs} log keys: a few chunks per agent, never per file");
    assert!(events <= 8, "{events} events: one per phase change, never per file");
}
