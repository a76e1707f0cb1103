//! Cluster mode end to end: a real etcd, `ferry coordinator` daemons, `ferry-worker` agents and
//! `ferry copy --etcd`, with faults injected while an execution runs (a worker killed, the
//! leader killed, etcd down for a while, a worker frozen past its lease).
//!
//! Every test starts its own etcd and processes; every child is SIGKILLed when the test ends,
//! panicking or not, and every wait is bounded. The heavy tests take a lock so that they run one
//! after another even under the default parallel test runner: on a small machine several
//! clusters at once would starve each other's lease keep-alives.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use ferry_common::testing::EtcdServer;
use rand::{Rng, SeedableRng};
use serde_json::Value;
use support::*;

/// Upper bound for any one wait (a copy to finish, a log line to appear...).
const WAIT: Duration = Duration::from_secs(180);

/// Serialises the heavy tests (see the module comment).
static HEAVY: Mutex<()> = Mutex::new(());

fn heavy() -> MutexGuard<'static, ()> {
    HEAVY.lock().unwrap_or_else(|e| e.into_inner())
}

fn ferry_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_ferry"))
}

fn worker_bin() -> PathBuf {
    let p = Path::new(env!("CARGO_BIN_EXE_ferry")).with_file_name("ferry-worker");
    assert!(
        p.exists(),
        "{} does not exist: build the whole workspace first (`cargo build --workspace`, with --release \
         when testing with --release), or run `cargo test --workspace`",
        p.display()
    );
    p
}

// ---------------------------------------------------------------------------------------------
// Processes

/// One child process with its stderr (and stdout) in files.
struct Proc {
    name: String,
    child: Child,
    pid: u32,
    stderr: PathBuf,
    stdout: PathBuf,
    status: Option<ExitStatus>,
}

/// etcd plus every process a test started. Dropping it SIGKILLs every child (first) and then
/// etcd.
struct Cluster {
    procs: Vec<Proc>,
    logs: PathBuf,
    etcd: EtcdServer,
}

type Id = usize;

impl Cluster {
    /// `None` when etcd is not installed (outside CI only; under CI=true that panics).
    fn start(logs: PathBuf) -> Option<Cluster> {
        fs::create_dir_all(&logs).unwrap();
        let Some(etcd) = EtcdServer::start() else {
            eprintln!("skipping: etcd is not installed (apt-get install etcd-server)");
            return None;
        };
        Some(Cluster { procs: Vec::new(), logs, etcd })
    }

    fn url(&self) -> String {
        self.etcd.endpoint.clone()
    }

    fn spawn(&mut self, name: &str, program: &Path, args: &[&std::ffi::OsStr]) -> Id {
        let stderr = self.logs.join(format!("{name}.stderr"));
        let stdout = self.logs.join(format!("{name}.stdout"));
        let mut cmd = Command::new(program);
        // FERRY_TEST_LOG sets the daemons' RUST_LOG, for chasing a failure; the test's own
        // RUST_LOG is not passed on, as it would change what the assertions read.
        match std::env::var("FERRY_TEST_LOG") {
            Ok(filter) => cmd.env("RUST_LOG", filter),
            Err(_) => cmd.env_remove("RUST_LOG"),
        };
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(File::create(&stdout).unwrap())
            .stderr(File::create(&stderr).unwrap())
            .env_remove("FERRY_TEST_CORRUPT")
            .env_remove("FERRY_TEST_SOURCE_CHANGE")
            // Its own process group: a Ctrl-C at the terminal goes to the test only.
            .process_group(0);
        let child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {} ({name}): {e}", program.display()));
        let pid = child.id();
        self.procs.push(Proc { name: name.to_string(), child, pid, stderr, stdout, status: None });
        self.procs.len() - 1
    }

    fn coordinator(&mut self, name: &str) -> Id {
        let url = self.url();
        let args: Vec<std::ffi::OsString> = vec!["coordinator".into(), "--etcd".into(), url.into(), "--name".into(), name.into()];
        let refs: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
        self.spawn(name, &ferry_bin(), &refs)
    }

    fn worker(&mut self, name: &str, movers: u32, lease_ttl: u32) -> Id {
        let url = self.url();
        let args: Vec<std::ffi::OsString> = vec![
            "--etcd".into(),
            url.into(),
            "--name".into(),
            name.into(),
            "--movers".into(),
            movers.to_string().into(),
            "--lease-ttl".into(),
            lease_ttl.to_string().into(),
        ];
        let refs: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
        self.spawn(name, &worker_bin(), &refs)
    }

    /// `ferry copy --etcd URL SRC DST --report REPORT --json --no-progress`.
    fn copy(&mut self, src: &Path, dst: &Path, report: &Path) -> Id {
        let url = self.url();
        let args: Vec<&std::ffi::OsStr> = vec![
            "copy".as_ref(),
            "--etcd".as_ref(),
            url.as_ref(),
            src.as_os_str(),
            dst.as_os_str(),
            "--report".as_ref(),
            report.as_os_str(),
            "--json".as_ref(),
            "--no-progress".as_ref(),
        ];
        self.spawn("copy", &ferry_bin(), &args)
    }

    fn pid(&self, id: Id) -> u32 {
        self.procs[id].pid
    }

    fn name(&self, id: Id) -> &str {
        &self.procs[id].name
    }

    fn log(&self, id: Id) -> String {
        fs::read(&self.procs[id].stderr).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default()
    }

    fn stdout(&self, id: Id) -> String {
        fs::read(&self.procs[id].stdout).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default()
    }

    /// The last few KB of every process's stderr, for assertion messages.
    fn tails(&self) -> String {
        let mut s = String::new();
        for p in &self.procs {
            s += &format!("\n===== {} (pid {}) stderr, last lines =====\n{}", p.name, p.pid, tail(&p.stderr, 2500));
        }
        s + &format!("\n(full logs are kept in {} when the test fails)", self.kept_logs().display())
    }

    /// Where the logs are copied when the test fails, or always with FERRY_TEST_KEEP_LOGS set
    /// (the scratch directory is removed).
    fn kept_logs(&self) -> PathBuf {
        let test = std::thread::current().name().unwrap_or("test").replace("::", "-");
        std::env::temp_dir().join(format!("ferry-cluster-logs-{test}-{}", std::process::id()))
    }

    /// Whether the process is still running (reaped children and zombies count as gone).
    fn running(&mut self, id: Id) -> bool {
        let p = &mut self.procs[id];
        if p.status.is_some() {
            return false;
        }
        match p.child.try_wait() {
            Ok(Some(st)) => {
                p.status = Some(st);
                false
            }
            Ok(None) => unsafe { libc::kill(p.pid as libc::pid_t, 0) == 0 },
            Err(_) => false,
        }
    }

    fn wait_exit(&mut self, id: Id, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if !self.running(id) {
                if let Some(st) = self.procs[id].status {
                    return st;
                }
                panic!("{} vanished without an exit status{}", self.name(id), self.tails());
            }
            if Instant::now() > deadline {
                panic!("{} did not exit within {timeout:?} (hang?){}", self.name(id), self.tails());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn signal(&self, id: Id, sig: libc::c_int) {
        let rc = unsafe { libc::kill(self.pid(id) as libc::pid_t, sig) };
        assert_eq!(rc, 0, "kill({}, {sig}) failed: {}", self.pid(id), std::io::Error::last_os_error());
    }

    /// SIGKILL and reap.
    fn kill(&mut self, id: Id) {
        let p = &mut self.procs[id];
        if p.status.is_none() {
            let _ = p.child.kill();
            p.status = p.child.wait().ok();
        }
    }

    /// Waits until `id`'s stderr contains `needle`.
    fn wait_log(&mut self, id: Id, needle: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self.log(id).contains(needle) {
            if Instant::now() > deadline {
                panic!("{} did not log {needle:?} within {timeout:?}{}", self.name(id), self.tails());
            }
            if !self.running(id) {
                panic!("{} exited ({:?}) before logging {needle:?}{}", self.name(id), self.procs[id].status, self.tails());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// No process wrote a panic message.
    fn assert_no_panics(&self) {
        for p in &self.procs {
            let log = tail(&p.stderr, usize::MAX);
            for bad in ["panicked", "stack backtrace"] {
                assert!(!log.contains(bad), "{} logged {bad:?}:{}", p.name, self.tails());
            }
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for p in &mut self.procs {
            if p.status.is_none() {
                // SIGKILL works on stopped processes too.
                let _ = p.child.kill();
                let _ = p.child.wait();
            }
        }
        if std::thread::panicking() || std::env::var_os("FERRY_TEST_KEEP_LOGS").is_some() {
            let keep = self.kept_logs();
            if fs::create_dir_all(&keep).is_ok() {
                for p in &self.procs {
                    for f in [&p.stderr, &p.stdout] {
                        if let Some(name) = f.file_name() {
                            let _ = fs::copy(f, keep.join(name));
                        }
                    }
                }
                eprintln!("logs of every process kept in {}", keep.display());
            }
        }
        // `etcd` is dropped after this body: it is killed and its data removed.
    }
}

fn tail(path: &Path, max: usize) -> String {
    let Ok(mut f) = File::open(path) else {
        return String::from("(no log)");
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let max = max.min(usize::MAX / 2) as u64;
    if len > max {
        let _ = f.seek(SeekFrom::Start(len - max));
    }
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    strip_ansi(&String::from_utf8_lossy(&buf))
}

/// Removes the colour escapes of the text log format.
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(ch) = chars.next() {
        if ch == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(ch);
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Trees

/// `files` small files (0..=8 KiB of random bytes) spread over `dirs` directories in groups of
/// 20, built by two threads.
fn build_many_files(root: &Path, files: usize, dirs: usize) {
    let pool = std::sync::Arc::new(random_bytes(16 * MIB as usize));
    std::thread::scope(|s| {
        for part in 0..2usize {
            let pool = pool.clone();
            s.spawn(move || {
                let mut rng = rand::rngs::StdRng::seed_from_u64(0xfe44 + part as u64);
                for d in (part..dirs).step_by(2) {
                    let dir = root.join(format!("g{:02}", d / 20)).join(format!("d{d:03}"));
                    fs::create_dir_all(&dir).unwrap();
                    let mut f = d;
                    while f < files {
                        let len = rng.gen_range(0..=8 * KIB as usize);
                        let off = rng.gen_range(0..pool.len() - len);
                        fs::write(dir.join(format!("f{f:05}")), &pool[off..off + len]).unwrap();
                        f += dirs;
                    }
                }
            });
        }
    });
}

/// Regular files below `root` (temporary files not counted), stopping at `limit`.
fn count_files(root: &Path, limit: usize) -> usize {
    let mut n = 0;
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(e.path()),
                Ok(t) if t.is_file() && !e.file_name().as_bytes().starts_with(TEMP_PREFIX) => {
                    n += 1;
                    if n >= limit {
                        return n;
                    }
                }
                _ => {}
            }
        }
    }
    n
}

/// ferry temporary files below `root` that process `pid` holds open right now.
fn open_temp_files(pid: u32, root: &Path) -> Vec<PathBuf> {
    let Ok(rd) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    rd.flatten()
        .filter_map(|e| fs::read_link(e.path()).ok())
        .filter(|p| p.starts_with(root) && p.file_name().is_some_and(|n| n.as_bytes().starts_with(TEMP_PREFIX)))
        .collect()
}

/// Kind, size, mode and mtime (with nanoseconds) of every entry below `root`, and of `root`.
fn picture(root: &Path) -> BTreeMap<PathBuf, String> {
    use std::os::unix::fs::MetadataExt;
    std::iter::once(PathBuf::new())
        .chain(walk_tolerant(root))
        .filter_map(|rel| {
            let m = fs::symlink_metadata(root.join(&rel)).ok()?;
            Some((rel, format!("{} size={} mode={:o} mtime={}.{:09}", kind_of(&m), m.len(), m.mode(), m.mtime(), m.mtime_nsec())))
        })
        .collect()
}

/// What differs between two pictures of a tree.
fn picture_changes(before: &BTreeMap<PathBuf, String>, after: &BTreeMap<PathBuf, String>) -> Vec<String> {
    let mut out = Vec::new();
    for (rel, b) in before {
        let shown = if rel.as_os_str().is_empty() { ".".to_string() } else { escape_rel(rel) };
        match after.get(rel) {
            None => out.push(format!("{shown:?}: removed (was {b})")),
            Some(a) if a != b => out.push(format!("{shown:?}: {b}  ->  {a}")),
            _ => {}
        }
    }
    for (rel, a) in after {
        if !before.contains_key(rel) {
            out.push(format!("{:?}: created ({a})", escape_rel(rel)));
        }
    }
    out.truncate(40);
    out
}

/// Waits until the copy is visibly under way: `min_files` files at the destination. Panics if
/// the copy ends first (the fault would then test nothing).
fn wait_for_progress(c: &mut Cluster, copy: Id, dst: &Path, min_files: usize) {
    let deadline = Instant::now() + WAIT;
    loop {
        if count_files(dst, min_files) >= min_files {
            return;
        }
        if !c.running(copy) {
            panic!(
                "the copy ended before {min_files} files reached the destination, so no fault was injected \
                 mid-copy (exit {:?})\nstdout: {}{}",
                c.procs[copy].status,
                c.stdout(copy),
                c.tails()
            );
        }
        assert!(Instant::now() < deadline, "no progress at the destination within {WAIT:?}{}", c.tails());
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------------------------------------
// Checking the outcome

/// Waits for the copy, asserts exit 0 and status SUCCESS with no failures; returns the JSON.
fn assert_copy_succeeded(c: &mut Cluster, copy: Id) -> Value {
    let st = c.wait_exit(copy, WAIT);
    let out = c.stdout(copy);
    let describe = |c: &Cluster| format!("exit {st:?}\n--- copy stdout ---\n{out}\n--- copy stderr ---\n{}{}", c.log(copy), c.tails());
    assert_eq!(st.code(), Some(0), "ferry copy --etcd did not succeed\n{}", describe(c));
    let json: Value = serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("ferry copy --json did not print one JSON object ({e})\n{}", describe(c)));
    assert_eq!(json["status"], "SUCCESS", "{}", describe(c));
    assert_summary_shape(&json);
    assert_eq!(counter(&json, "files_failed"), 0, "{}", describe(c));
    json
}

/// The destination is an exact copy: rsync sees no difference, and the destination holds no
/// entry that the source lacks (rsync without --delete does not list those) besides ferry's
/// temporary files, which `assert_no_debris` reports separately.
fn assert_same_tree(src: &Path, dst: &Path, c: &Cluster) {
    let diff = compare_trees(src, dst);
    assert!(
        diff.is_empty(),
        "rsync sees {} differences between source and destination:\n{}{}",
        diff.len(),
        diff.iter().take(80).cloned().collect::<Vec<_>>().join("\n"),
        c.tails()
    );
    let src_set: BTreeSet<PathBuf> = walk(src).into_iter().collect();
    let extra: Vec<String> = walk(dst).into_iter().filter(|p| !src_set.contains(p) && !is_temp_name(p)).map(|p| escape_rel(&p)).take(80).collect();
    assert!(extra.is_empty(), "the destination holds entries the source does not have: {extra:?}{}", c.tails());
}

/// No temporary file is left in the destination once the copy has ended (checked last, so
/// that the other checks report first).
fn assert_no_debris(dst: &Path, c: &Cluster) {
    let left: Vec<(String, u64)> = walk(dst)
        .into_iter()
        .filter(|p| is_temp_name(p))
        .map(|p| {
            let len = fs::symlink_metadata(dst.join(&p)).map(|m| m.len()).unwrap_or(0);
            (escape_rel(&p), len)
        })
        .collect();
    let dirs: BTreeSet<String> = left.iter().map(|(p, _)| Path::new(p).parent().map(|d| d.display().to_string()).unwrap_or_default()).collect();
    let bytes: u64 = left.iter().map(|(_, n)| n).sum();
    assert!(
        left.is_empty(),
        "{} temporary files ({bytes} bytes) remain in the destination after a successful copy, in {dirs:?}; first ones: {:?}{}",
        left.len(),
        &left[..left.len().min(10)],
        c.tails()
    );
}

/// Every entry below `src` (directories included, the root excluded) appears exactly once in the
/// merged report, with the right kind and a successful status; no duplicates, nothing else; the
/// summary line (checked last by `read_report`) agrees with the --json output.
fn assert_report_exactly_once(report: &Path, src: &Path, json: &Value, c: &Cluster) {
    let rep = read_report(report);
    // "verified" is what a transferred file that was read back may say (as in embedded mode).
    let (mut problems, _, expected) = report_problems(&rep, src, &["transferred", "verified", "skipped"]);
    let n = problems.len();
    problems.truncate(60);
    assert!(
        problems.is_empty(),
        "the merged report does not account for every entry exactly once ({n} problems, {} entries for {} source entries):\n{}{}",
        rep.entries.len(),
        expected,
        problems.join("\n"),
        c.tails()
    );
    assert_eq!(rep.summary["status"], "SUCCESS", "report summary: {}", rep.summary);
    assert_eq!(rep.summary["execution"], json["execution"], "report summary and --json name different executions");
    assert_eq!(rep.summary["counters"], json["counters"], "report summary and --json disagree");
}

/// Starts etcd, one coordinator (waiting until it leads) and workers (waiting until each has
/// registered).
fn cluster_with(logs: PathBuf, workers: &[&str], movers: u32, lease_ttl: u32) -> Option<(Cluster, Id, Vec<Id>)> {
    let mut c = Cluster::start(logs)?;
    let co = c.coordinator("c1");
    c.wait_log(co, "LeaderElected", Duration::from_secs(60));
    let ws: Vec<Id> = workers.iter().map(|w| c.worker(w, movers, lease_ttl)).collect();
    for &w in &ws {
        c.wait_log(w, "WorkerRegistered", Duration::from_secs(60));
    }
    Some((c, co, ws))
}

struct Paths {
    _tmp: tempfile::TempDir,
    src: PathBuf,
    dst: PathBuf,
    report: PathBuf,
    logs: PathBuf,
}

/// Progress notes with the time since the test started (shown with --nocapture).
macro_rules! note {
    ($t0:expr, $($arg:tt)*) => { eprintln!("[{:>7.1}s] {}", $t0.elapsed().as_secs_f64(), format!($($arg)*)) };
}

fn paths() -> Paths {
    let tmp = scratch();
    // Canonical, so that paths read back from /proc compare equal.
    let root = fs::canonicalize(tmp.path()).unwrap();
    Paths { src: root.join("src"), dst: root.join("dst"), report: root.join("report.jsonl"), logs: root.join("logs"), _tmp: tmp }
}

/// What every failure scenario must end with: the destination equals the source, the report
/// lists every entry exactly once, no process panicked, and no temporary file is left.
fn assert_exact_result(p: &Paths, json: &Value, c: &Cluster, t0: Instant) {
    assert_same_tree(&p.src, &p.dst, c);
    note!(t0, "trees compared");
    assert_report_exactly_once(&p.report, &p.src, json, c);
    note!(t0, "report checked");
    c.assert_no_panics();
    assert_no_debris(&p.dst, c);
}

// ---------------------------------------------------------------------------------------------
// Tests

#[test]
fn killed_worker_shards_are_reclaimed() {
    let _serial = heavy();
    let t0 = Instant::now();
    let p = paths();
    build_many_files(&p.src, 20_000, 200);
    build_tricky_tree(&p.src.join("tricky"));
    let Some((mut c, _co, ws)) = cluster_with(p.logs.clone(), &["w1", "w2", "w3"], 4, 3) else {
        return;
    };

    note!(t0, "tree built, cluster up; starting the copy");
    let started = Instant::now();
    let copy = c.copy(&p.src, &p.dst, &p.report);
    wait_for_progress(&mut c, copy, &p.dst, 100);

    // Kill a worker that is writing a file right now (so it surely holds a shard); failing to
    // catch one within 3 s, kill the first.
    let mut victim = None;
    let look_until = Instant::now() + Duration::from_secs(3);
    while victim.is_none() && Instant::now() < look_until && c.running(copy) {
        victim = ws.iter().copied().find(|&w| !open_temp_files(c.pid(w), &p.dst).is_empty());
        if victim.is_none() {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    let mid_file = victim.is_some();
    let victim = victim.unwrap_or(ws[0]);
    assert!(c.running(copy), "the copy ended before a worker could be killed (tree too small?){}", c.tails());
    let why = if mid_file { "caught writing a file" } else { "none caught writing" };
    note!(t0, "killing {} after {:?} ({why})", c.name(victim), started.elapsed());
    c.kill(victim);

    let json = assert_copy_succeeded(&mut c, copy);
    note!(t0, "copy finished after {:?}: {}", started.elapsed(), json["counters"]);
    assert_exact_result(&p, &json, &c, t0);
}

#[test]
fn leader_failover_carries_on() {
    let _serial = heavy();
    let t0 = Instant::now();
    let p = paths();
    build_many_files(&p.src, 20_000, 200);
    let Some(mut c) = Cluster::start(p.logs.clone()) else {
        return;
    };
    let c1 = c.coordinator("c1");
    c.wait_log(c1, "LeaderElected", Duration::from_secs(60));
    let c2 = c.coordinator("c2");
    c.wait_log(c2, "standing by", Duration::from_secs(60));
    let ws = [c.worker("w1", 4, 3), c.worker("w2", 4, 3)];
    for w in ws {
        c.wait_log(w, "WorkerRegistered", Duration::from_secs(60));
    }

    note!(t0, "tree built, cluster up; starting the copy");
    let started = Instant::now();
    let copy = c.copy(&p.src, &p.dst, &p.report);
    wait_for_progress(&mut c, copy, &p.dst, 100);
    assert!(c.log(c1).contains("LeaderElected"), "c1 should lead{}", c.tails());
    assert!(!c.log(c2).contains("LeaderElected"), "c2 should stand by{}", c.tails());
    assert!(c.running(copy), "the copy ended before the leader could be killed{}", c.tails());
    note!(t0, "killing leader c1 after {:?}", started.elapsed());
    c.kill(c1);

    let json = assert_copy_succeeded(&mut c, copy);
    note!(t0, "copy finished after {:?}: {}", started.elapsed(), json["counters"]);
    let c2_log = c.log(c2);
    assert!(
        c2_log.contains("LeaderElected") && c2_log.contains("ExecutionResumed"),
        "c2 never took over and resumed the execution, yet the copy finished?{}",
        c.tails()
    );
    assert_exact_result(&p, &json, &c, t0);
}

#[test]
fn etcd_outage_is_survived() {
    let _serial = heavy();
    let t0 = Instant::now();
    let p = paths();
    build_many_files(&p.src, 20_000, 200);
    let Some((mut c, co, ws)) = cluster_with(p.logs.clone(), &["w1", "w2"], 4, 3) else {
        return;
    };

    note!(t0, "tree built, cluster up; starting the copy");
    let started = Instant::now();
    let copy = c.copy(&p.src, &p.dst, &p.report);
    wait_for_progress(&mut c, copy, &p.dst, 100);
    assert!(c.running(copy), "the copy ended before etcd could be stopped{}", c.tails());
    note!(t0, "stopping etcd after {:?}", started.elapsed());
    c.etcd.stop();
    std::thread::sleep(Duration::from_secs(10));
    c.etcd.restart();
    note!(t0, "etcd restarted after {:?}", started.elapsed());

    let json = assert_copy_succeeded(&mut c, copy);
    note!(t0, "copy finished after {:?}: {}", started.elapsed(), json["counters"]);
    assert_same_tree(&p.src, &p.dst, &c);
    note!(t0, "trees compared");
    assert_report_exactly_once(&p.report, &p.src, &json, &c);
    note!(t0, "report checked");
    for w in ws {
        assert!(c.running(w), "worker {} did not survive the etcd outage (status {:?}){}", c.name(w), c.procs[w].status, c.tails());
    }
    assert!(c.running(co), "the coordinator did not survive the etcd outage (status {:?}){}", c.procs[co].status, c.tails());
    c.assert_no_panics();
    assert_no_debris(&p.dst, &c);
}

#[test]
fn stalled_worker_cannot_commit_after_its_lease_expires() {
    let _serial = heavy();
    let t0 = Instant::now();
    let p = paths();
    build_many_files(&p.src, 20_000, 200);
    for i in 0..4 {
        write_file(&p.src.join("big").join(format!("big{i}")), &random_bytes(64 * MIB as usize));
    }
    let Some((mut c, _co, ws)) = cluster_with(p.logs.clone(), &["w1", "w2"], 4, 3) else {
        return;
    };

    note!(t0, "tree built, cluster up; starting the copy");
    let started = Instant::now();
    let copy = c.copy(&p.src, &p.dst, &p.report);
    // Freeze a worker in the middle of a shard: while it holds a temporary file open.
    let deadline = Instant::now() + WAIT;
    let (stalled, held) = loop {
        if let Some((w, files)) = ws.iter().map(|&w| (w, open_temp_files(c.pid(w), &p.dst))).find(|(_, f)| !f.is_empty()) {
            c.signal(w, libc::SIGSTOP);
            break (w, files);
        }
        assert!(c.running(copy), "the copy ended before any worker was seen writing a temporary file{}", c.tails());
        assert!(Instant::now() < deadline, "no worker wrote a temporary file within {WAIT:?}{}", c.tails());
        std::thread::sleep(Duration::from_millis(2));
    };
    let other = *ws.iter().find(|&&w| w != stalled).unwrap();
    note!(t0, "SIGSTOP {} after {:?}, holding {held:?}", c.name(stalled), started.elapsed());
    // Frozen past its lease. Should the rest of the cluster finish the copy meanwhile, take a
    // picture of the destination while the frozen worker cannot touch it, so that any change it
    // makes once resumed can be told apart.
    let resume_at = Instant::now() + Duration::from_secs(8);
    let mut picture_at_end = None;
    while Instant::now() < resume_at {
        if picture_at_end.is_none() && !c.running(copy) {
            picture_at_end = Some(picture(&p.dst));
            note!(t0, "the copy ended while {} was frozen", c.name(stalled));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    c.signal(stalled, libc::SIGCONT);
    note!(t0, "SIGCONT {} after {:?}", c.name(stalled), started.elapsed());

    let json = assert_copy_succeeded(&mut c, copy);
    note!(t0, "copy finished after {:?}: {}", started.elapsed(), json["counters"]);

    // The stalled worker must notice that its claims are gone.
    let noticed = |log: &str| log.contains("completion refused") || log.contains("lease lost");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !noticed(&c.log(stalled)) && Instant::now() < deadline && c.running(stalled) {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        noticed(&c.log(stalled)),
        "{} was frozen for 8 s (lease TTL 3 s) while holding {held:?}, yet never logged \
         \"completion refused\" or \"lease lost\"{}",
        c.name(stalled),
        c.tails()
    );
    // Let it drop whatever it was writing before comparing trees.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !open_temp_files(c.pid(stalled), &p.dst).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(c.running(stalled), "{} died after being resumed{}", c.name(stalled), c.tails());
    assert!(c.running(other), "{} died{}", c.name(other), c.tails());
    if let Some(before) = picture_at_end {
        let changes = picture_changes(&before, &picture(&p.dst));
        assert!(
            changes.is_empty(),
            "after the copy had ended (SUCCESS) while {} was frozen, the resumed worker, whose claims \
             were gone, still changed the destination:\n{}{}",
            c.name(stalled),
            changes.join("\n"),
            c.tails()
        );
    }

    assert_exact_result(&p, &json, &c, t0);
}

#[test]
fn unreachable_etcd_is_a_usage_error() {
    let tmp = scratch();
    let src = tmp.path().join("src");
    write_file(&src.join("a.txt"), b"a\n");
    let dst = tmp.path().join("dst");
    let url = "http://127.0.0.1:9";
    let want = format!("ferry: error: cannot reach etcd at {url}");
    let runs = [
        Ferry::bare().arg("copy").arg("--etcd").arg(url).arg(&src).arg(&dst).arg("--no-progress"),
        Ferry::bare().arg("copy").arg("--etcd").arg(url).arg(&src).arg(&dst).arg("--json").arg("--no-progress"),
        Ferry::bare().args(["workers", "--etcd", url]),
        Ferry::bare().args(["exec", "list", "--etcd", url]),
    ];
    for f in runs {
        let out = f.timeout(Duration::from_secs(120)).run();
        out.assert_code(2);
        let lines: Vec<&str> = out.stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "expected exactly one stderr line\n{}", out.describe());
        assert!(lines[0].starts_with(&want), "expected a line starting with {want:?}\n{}", out.describe());
        assert!(out.stdout.trim().is_empty(), "nothing belongs on stdout\n{}", out.describe());
    }
    assert!(!dst.exists(), "a usage error must not create the destination");
}

#[test]
fn workers_and_exec_commands_list_the_cluster() {
    let t0 = Instant::now();
    let p = paths();
    for i in 0..50 {
        write_file(&p.src.join(format!("d{}", i % 5)).join(format!("f{i}")), &random_bytes(i * 100));
    }
    let Some((mut c, _co, _ws)) = cluster_with(p.logs.clone(), &["w1", "w2"], 2, 3) else {
        return;
    };
    let url = c.url();

    // Both workers are listed.
    let out = Ferry::bare().args(["workers", "--etcd", &url, "--json"]).timeout(Duration::from_secs(60)).run();
    out.assert_code(0);
    let v: Value = serde_json::from_str(out.stdout.trim()).unwrap_or_else(|e| panic!("not JSON ({e})\n{}", out.describe()));
    let mut names: Vec<&str> = v
        .as_array()
        .unwrap_or_else(|| panic!("not an array\n{}", out.describe()))
        .iter()
        .map(|w| w["name"].as_str().unwrap_or_else(|| panic!("worker without a name\n{}", out.describe())))
        .collect();
    names.sort();
    assert_eq!(names, ["w1", "w2"], "{}", out.describe());

    // A copy, then the execution as `exec list` and `exec describe` show it.
    let copy = c.copy(&p.src, &p.dst, &p.report);
    let json = assert_copy_succeeded(&mut c, copy);
    let id = json["execution"].as_str().unwrap().to_string();
    assert_same_tree(&p.src, &p.dst, &c);
    note!(t0, "trees compared");
    assert_report_exactly_once(&p.report, &p.src, &json, &c);
    note!(t0, "report checked");

    let out = Ferry::bare().args(["exec", "list", "--etcd", &url, "--json"]).timeout(Duration::from_secs(60)).run();
    out.assert_code(0);
    let list: Value = serde_json::from_str(out.stdout.trim()).unwrap_or_else(|e| panic!("not JSON ({e})\n{}", out.describe()));
    let found: Vec<&Value> =
        list.as_array().unwrap_or_else(|| panic!("not an array\n{}", out.describe())).iter().filter(|e| e["execution"] == id.as_str()).collect();
    assert_eq!(found.len(), 1, "execution {id} should be listed once\n{}", out.describe());
    assert_eq!(found[0]["status"], "SUCCESS", "{}", out.describe());

    let out = Ferry::bare().args(["exec", "describe", &id, "--etcd", &url, "--json"]).timeout(Duration::from_secs(60)).run();
    out.assert_code(0);
    let d = out.json();
    assert_eq!(d["execution"], id.as_str(), "{}", out.describe());
    assert_eq!(d["status"], "SUCCESS", "{}", out.describe());
    assert_eq!(d["counters"], json["counters"], "describe and the copy's --json disagree\n{}", out.describe());

    // Cancelling a finished execution is refused.
    let out = Ferry::bare().args(["exec", "cancel", &id, "--etcd", &url]).timeout(Duration::from_secs(60)).run();
    out.assert_code(2);
    assert!(out.stderr.contains("already ended"), "{}", out.describe());

    // An unknown execution is a usage error too.
    let out = Ferry::bare().args(["exec", "describe", "no-such-exec", "--etcd", &url]).timeout(Duration::from_secs(60)).run();
    out.assert_code(2);
    c.assert_no_panics();
    assert_no_debris(&p.dst, &c);
}

#[test]
fn sigterm_makes_a_worker_finish_its_shards_and_leave() {
    let _serial = heavy();
    let t0 = Instant::now();
    let p = paths();
    build_many_files(&p.src, 20_000, 200);
    let Some((mut c, _co, ws)) = cluster_with(p.logs.clone(), &["w1"], 4, 10) else {
        return;
    };
    let url = c.url();
    let copy = c.copy(&p.src, &p.dst, &p.report);
    wait_for_progress(&mut c, copy, &p.dst, 100);
    assert!(c.running(copy), "the copy ended before the worker could be stopped{}", c.tails());

    // SIGTERM: stop claiming, finish the shards held, revoke the lease, exit 0. It must not
    // wait for its 10 s lease to run out, nor leave claims behind.
    note!(t0, "sending SIGTERM to w1");
    c.signal(ws[0], libc::SIGTERM);
    let status = c.wait_exit(ws[0], Duration::from_secs(60));
    assert_eq!(status.code(), Some(0), "a worker stopped with SIGTERM exits 0{}", c.tails());
    let log = c.log(ws[0]);
    assert!(log.contains("finishing held shards"), "w1 should say it finishes its shards{}", c.tails());
    let out = Ferry::bare().args(["workers", "--etcd", &url, "--json"]).timeout(Duration::from_secs(60)).run();
    out.assert_code(0);
    assert_eq!(out.stdout.trim(), "[]", "a worker that left is no longer registered\n{}", out.describe());

    // Another worker finishes the execution; nothing w1 did is lost or done twice.
    note!(t0, "starting w2");
    let w2 = c.worker("w2", 4, 10);
    c.wait_log(w2, "WorkerRegistered", Duration::from_secs(60));
    let json = assert_copy_succeeded(&mut c, copy);
    assert_exact_result(&p, &json, &c, t0);
}
