//! `ferry-load chaos`: fault injection during a cluster copy, then an independent check that
//! nothing was lost.
//!
//! A [`LocalCluster`] (etcd, a coordinator, N workers, each worker in its own network
//! namespace) copies a generated tree with `ferry copy --etcd`. While it runs, the runner
//! kills workers, cuts their links, restarts the coordinator and restarts etcd, following a
//! [`plan`] drawn from a seed (or a schedule given by hand). At the end it compares the
//! destination with the source using rsync in checksum mode (not ferry's own code), and reads
//! ferry's task report: every source file must be reported once, and none as failed.
//!
//! The plan is plain data, so a failing run is reproduced exactly by its seed.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};

use crate::cluster::{ClusterOptions, LocalCluster};
use crate::error::{Error, Result};
use crate::gen::{DatasetSpec, Profile, ShapeOptions};
use crate::util::say;

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FaultKind {
    /// SIGKILL a worker, start it again after the down time.
    KillWorker,
    /// Take a worker's network down for the down time (its process keeps running).
    CutLink,
    /// SIGKILL the coordinator, start a new one after the down time.
    RestartCoordinator,
    /// SIGKILL etcd, start it again on the same data after the down time.
    RestartEtcd,
    /// Cut a worker from etcd (a blackhole route to etcd's address in its namespace) while it
    /// still reaches its link peers: its lease lapses while its streams may still flow.
    IsolateWorker,
    /// SIGSTOP etcd for the down time, then SIGCONT: connections stay open and nothing
    /// answers, unlike a restart, which refuses them.
    StopEtcd,
    /// SIGKILL the coordinator and a worker at the same moment; both come back after the
    /// down time.
    KillCoordinatorAndWorker,
}

impl FaultKind {
    pub const ALL: [FaultKind; 7] = [
        FaultKind::KillWorker,
        FaultKind::CutLink,
        FaultKind::RestartCoordinator,
        FaultKind::RestartEtcd,
        FaultKind::IsolateWorker,
        FaultKind::StopEtcd,
        FaultKind::KillCoordinatorAndWorker,
    ];

    pub fn name(self) -> &'static str {
        match self {
            FaultKind::KillWorker => "kill-worker",
            FaultKind::CutLink => "cut-link",
            FaultKind::RestartCoordinator => "restart-coordinator",
            FaultKind::RestartEtcd => "restart-etcd",
            FaultKind::IsolateWorker => "isolate-worker",
            FaultKind::StopEtcd => "stop-etcd",
            FaultKind::KillCoordinatorAndWorker => "kill-coordinator-and-worker",
        }
    }

    pub fn parse(s: &str) -> Result<FaultKind> {
        FaultKind::ALL.into_iter().find(|k| k.name() == s).ok_or_else(|| {
            let names: Vec<&str> = FaultKind::ALL.iter().map(|k| k.name()).collect();
            Error::usage(format!("unknown fault {s:?} ({})", names.join(", ")))
        })
    }

    fn targets_worker(self) -> bool {
        matches!(self, FaultKind::KillWorker | FaultKind::CutLink | FaultKind::IsolateWorker | FaultKind::KillCoordinatorAndWorker)
    }

    /// Faults that need each worker in a network namespace of its own.
    pub fn needs_netns(self) -> bool {
        matches!(self, FaultKind::CutLink | FaultKind::IsolateWorker)
    }

    /// The range the down time is drawn from. Cuts reach past the 8 s link idle timeout and
    /// past a worker's lease, so both the link's resume and the lease's fencing are exercised.
    fn down_range_ms(self) -> (u64, u64) {
        match self {
            FaultKind::KillWorker => (500, 5_000),
            FaultKind::CutLink => (3_000, 15_000),
            FaultKind::RestartCoordinator => (200, 3_000),
            FaultKind::RestartEtcd => (1_000, 6_000),
            FaultKind::IsolateWorker => (3_000, 15_000),
            FaultKind::StopEtcd => (1_000, 8_000),
            FaultKind::KillCoordinatorAndWorker => (500, 4_000),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Fault {
    /// When to inject, from the start of the copy. A fault whose time has come while the
    /// previous one still runs starts right after it.
    pub at: Duration,
    pub kind: FaultKind,
    /// Worker index (0-based) for worker faults.
    pub worker: Option<usize>,
    /// How long the part stays down (killed, cut, stopped).
    pub down: Duration,
}

impl Fault {
    pub fn describe(&self) -> String {
        let who = self.worker.map(|w| format!(" w{}", w + 1)).unwrap_or_default();
        format!("{}{} for {:.1} s", self.kind.name(), who, self.down.as_secs_f64())
    }
}

/// `count` faults drawn from `kinds` by `seed`, spread over `window` (between 10 % and 90 %
/// of it, so the copy has started and has not yet finished). Every kind appears at least once
/// when `count >= kinds.len()`. The same arguments always give the same plan.
pub fn plan(seed: u64, kinds: &[FaultKind], count: usize, window: Duration, workers: usize) -> Vec<Fault> {
    if kinds.is_empty() || count == 0 {
        return Vec::new();
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut chosen: Vec<FaultKind> = (0..count).map(|i| if i < kinds.len() { kinds[i] } else { kinds[rng.gen_range(0..kinds.len())] }).collect();
    // Shuffle (Fisher-Yates) so the guaranteed kinds do not always come first.
    for i in (1..chosen.len()).rev() {
        chosen.swap(i, rng.gen_range(0..=i));
    }
    let window_ms = window.as_millis() as u64;
    let mut times: Vec<u64> = (0..count).map(|_| rng.gen_range(window_ms / 10..=window_ms * 9 / 10)).collect();
    times.sort_unstable();
    let mut faults: Vec<Fault> = chosen
        .into_iter()
        .zip(times)
        .map(|(kind, at)| {
            let (lo, hi) = kind.down_range_ms();
            Fault {
                at: Duration::from_millis(at),
                kind,
                worker: kind.targets_worker().then(|| rng.gen_range(0..workers.max(1))),
                down: Duration::from_millis(rng.gen_range(lo..=hi)),
            }
        })
        .collect();
    // Faults overlap: every other one starts while the one before it is still down (half way
    // into its down time), and the rest fall where the draw put them, which overlaps too when
    // the gaps are short. Real bad weeks do not wait for one thing to heal before the next.
    for i in (1..faults.len()).step_by(2) {
        let prev = &faults[i - 1];
        faults[i].at = prev.at + prev.down / 2;
    }
    faults.sort_by_key(|f| f.at);
    faults
}

/// Pairs of faults (indices into `faults`) whose down times overlap.
pub fn overlaps(faults: &[Fault]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    for (i, a) in faults.iter().enumerate() {
        for (j, b) in faults.iter().enumerate().skip(i + 1) {
            if b.at < a.at + a.down && a.at < b.at + b.down {
                out.push((i, j));
            }
        }
    }
    out
}

/// A hand-written schedule: `AT:KIND[:WORKER][:DOWN]`, comma-separated, e.g.
/// `5s:kill-worker:2,12s:cut-link:1:10s,20s:restart-etcd:3s` (workers count from 1).
pub fn parse_schedule(text: &str, workers: usize) -> Result<Vec<Fault>> {
    let mut out = Vec::new();
    for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let bad = |why: &str| Error::usage(format!("bad --schedule item {item:?}: {why} (write AT:KIND[:WORKER][:DOWN], e.g. 5s:kill-worker:2:3s)"));
        let mut parts = item.split(':');
        let at = crate::wan::parse_duration(parts.next().unwrap_or("")).map_err(|e| bad(&e))?;
        let kind = FaultKind::parse(parts.next().ok_or_else(|| bad("no fault kind"))?)?;
        let mut worker = None;
        let mut down = None;
        for p in parts {
            if let Ok(n) = p.parse::<usize>() {
                if !kind.targets_worker() {
                    return Err(bad("only worker faults (kill-worker, cut-link, isolate-worker, kill-coordinator-and-worker) take a worker"));
                }
                if n == 0 || n > workers {
                    return Err(bad(&format!("worker {n} does not exist (1..={workers})")));
                }
                worker = Some(n - 1);
            } else {
                down = Some(crate::wan::parse_duration(p).map_err(|e| bad(&e))?);
            }
        }
        if kind.targets_worker() && worker.is_none() {
            worker = Some(0);
        }
        let (lo, hi) = kind.down_range_ms();
        out.push(Fault { at, kind, worker, down: down.unwrap_or(Duration::from_millis((lo + hi) / 2)) });
    }
    out.sort_by_key(|f| f.at);
    Ok(out)
}

#[derive(Clone, Debug)]
pub struct ChaosOptions {
    pub workers: usize,
    pub seed: u64,
    pub faults: Vec<Fault>,
    pub netns: bool,
    pub links: bool,
    /// Rate per agent, so the copy lasts long enough for the faults to land.
    pub bwlimit: Option<u64>,
    pub dataset: DatasetSpec,
    pub data: PathBuf,
    pub work: PathBuf,
    pub bin_dir: PathBuf,
    /// The copy must end within this; otherwise it counts as hung (a failure).
    pub timeout: Duration,
    pub out: Option<PathBuf>,
    pub lease_ttl_s: u64,
}

/// The dataset chaos runs use unless told otherwise: small files for many shards, and large
/// files above the 256 MiB part threshold so parts and resumes are hit too.
pub fn default_dataset(tiny: bool, shape: &ShapeOptions) -> Result<DatasetSpec> {
    let mut s = shape.clone();
    if tiny {
        s.files.get_or_insert(400);
        s.dirs.get_or_insert(8);
        s.large_files.get_or_insert(1);
        s.file_size.get_or_insert(24 << 20);
    } else {
        s.files.get_or_insert(5_000);
        s.dirs.get_or_insert(50);
        s.large_files.get_or_insert(2);
        s.file_size.get_or_insert(300 << 20);
    }
    DatasetSpec::resolve(Profile::Mixed, &s)
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct Injected {
    pub fault: Fault,
    /// When it actually started, from the start of the copy; `None`: the copy had ended.
    pub started_s: Option<f64>,
    pub error: Option<String>,
}

#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Check {
    /// What did the comparing (e.g. "rsync -rlpcn --delete").
    pub tool: String,
    pub source_files: u64,
    pub missing: Vec<String>,
    pub differ: Vec<String>,
    /// Entries at the destination that the source lacks (leftover temporary files).
    pub extra: Vec<String>,
    pub report_entries: u64,
    pub report_failed: Vec<String>,
    pub report_missing: u64,
    pub report_duplicated: u64,
    pub report_error: Option<String>,
}

impl Check {
    pub fn lost_nothing(&self) -> bool {
        self.missing.is_empty() && self.differ.is_empty() && self.extra.is_empty()
    }
    pub fn report_ok(&self) -> bool {
        self.report_error.is_none() && self.report_failed.is_empty() && self.report_missing == 0 && self.report_duplicated == 0
    }
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct ChaosOutcome {
    pub seed: u64,
    /// Pairs of injected faults that were down at the same time.
    pub overlapping: usize,
    pub workers: usize,
    pub links: bool,
    pub injected: Vec<Injected>,
    pub copy_exit: Option<i32>,
    pub copy_phase: Option<String>,
    pub copy_seconds: f64,
    pub hung: bool,
    /// Workers that exited by themselves (a crash, not one of our kills).
    pub crashed_workers: Vec<(String, String)>,
    pub check: Check,
}

impl ChaosOutcome {
    pub fn passed(&self) -> bool {
        !self.hung && self.copy_exit == Some(0) && self.check.lost_nothing() && self.check.report_ok() && self.crashed_workers.is_empty()
    }
}

fn run_err(msg: impl Into<String>) -> Error {
    Error::run(msg.into())
}

pub fn run(o: &ChaosOptions) -> Result<ChaosOutcome> {
    let stats = crate::bench::ensure_dataset(&o.dataset, o.seed, &o.data, std::thread::available_parallelism().map_or(2, |n| n.get()))?;
    let src = o.data.join("src");
    let dst = o.work.join("dst");
    let _ = std::fs::remove_dir_all(&o.work);
    std::fs::create_dir_all(&o.work).map_err(|e| run_err(format!("{}: {e}", o.work.display())))?;
    let mut cluster = LocalCluster::start(ClusterOptions {
        workers: o.workers,
        netns: o.netns,
        movers: 4,
        links: o.links,
        lease_ttl_s: o.lease_ttl_s,
        bin_dir: o.bin_dir.clone(),
        work: o.work.clone(),
    })?;
    if let Some(f) = o.faults.iter().find(|f| f.kind.needs_netns() && !cluster.can_cut_links()) {
        return Err(Error::usage(format!("{} faults need network namespaces (run as root, without --no-netns)", f.kind.name())));
    }
    say(format!(
        "chaos: {} files ({}), {} workers{}, seed {}; plan:",
        stats.files,
        crate::size::format_bytes(stats.bytes),
        o.workers,
        if o.links { " over QUIC links (odd workers read, even ones write)" } else { "" },
        o.seed
    ));
    for f in &o.faults {
        say(format!("  t={:>6.1}s  {}", f.at.as_secs_f64(), f.describe()));
    }

    let report = o.work.join("report.jsonl");
    let mut copy = Command::new(o.bin_dir.join("ferry"));
    copy.args(["copy", "--no-progress", "--json", "--etcd", cluster.endpoint()]).arg("--report").arg(&report);
    if o.links {
        copy.args(["--source-agents", "onprem", "--destination-agents", "cloud"]);
    }
    if let Some(rate) = o.bwlimit {
        copy.args(["--bwlimit", &rate.to_string()]);
    }
    copy.arg(&src).arg(&dst);
    let stdout = std::fs::File::create(o.work.join("copy.json")).map_err(|e| run_err(e.to_string()))?;
    let stderr = std::fs::File::create(o.work.join("copy.log")).map_err(|e| run_err(e.to_string()))?;
    let t0 = Instant::now();
    let mut child = copy.stdout(stdout).stderr(stderr).spawn().map_err(|e| run_err(format!("ferry copy: {e}")))?;
    // Each fault begins at its time and ends after its down time, whatever else is under way,
    // so faults overlap as the plan has them.
    let mut steps: Vec<(Duration, usize, bool)> = o.faults.iter().enumerate().flat_map(|(i, f)| [(f.at, i, true), (f.at + f.down, i, false)]).collect();
    steps.sort_by_key(|&(at, i, begin)| (at, !begin, i));
    let mut injected: Vec<Injected> = o.faults.iter().map(|f| Injected { fault: f.clone(), started_s: None, error: None }).collect();
    let mut exit = None;
    for (at, i, begin) in steps {
        let fault = &o.faults[i];
        if begin {
            while exit.is_none() && t0.elapsed() < at {
                exit = child.try_wait().map_err(|e| run_err(e.to_string()))?;
                std::thread::sleep(Duration::from_millis(50));
            }
            if exit.is_some() {
                continue;
            }
            let started = t0.elapsed().as_secs_f64();
            say(format!("  t={started:>6.1}s  begin {}", fault.describe()));
            injected[i].started_s = Some(started);
            if let Err(e) = begin_fault(&mut cluster, fault) {
                say(format!("            failed to inject: {e}"));
                injected[i].error = Some(e.to_string());
            }
        } else {
            if injected[i].started_s.is_none() {
                continue;
            }
            // Whatever happened to the copy, what a fault took down comes back.
            while t0.elapsed() < at {
                if exit.is_none() {
                    exit = child.try_wait().map_err(|e| run_err(e.to_string()))?;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            say(format!("  t={:>6.1}s  end   {}", t0.elapsed().as_secs_f64(), fault.describe()));
            if let Err(e) = end_fault(&mut cluster, fault) {
                say(format!("            failed to heal: {e}"));
                injected[i].error.get_or_insert(e.to_string());
            }
        }
    }
    let deadline = t0 + o.timeout;
    while exit.is_none() && Instant::now() < deadline {
        exit = child.try_wait().map_err(|e| run_err(e.to_string()))?;
        std::thread::sleep(Duration::from_millis(100));
    }
    let hung = exit.is_none();
    if hung {
        let _ = child.kill();
        let _ = child.wait();
        say(format!("chaos: the copy did not end within {:?}: counted as HUNG", o.timeout));
    }
    let copy_seconds = t0.elapsed().as_secs_f64();
    let crashed_workers = cluster.exited_workers();
    let summary: Option<serde_json::Value> = std::fs::read(o.work.join("copy.json")).ok().and_then(|b| serde_json::from_slice(&b).ok());
    let copy_phase = summary.as_ref().and_then(|s| s["phase"].as_str().or(s["status"].as_str()).map(str::to_string));
    drop(cluster);

    let mut check = compare_trees(&src, &dst)?;
    check.source_files = stats.files;
    check_report(&report, &src, &mut check);
    let started: Vec<Fault> = injected.iter().filter(|i| i.started_s.is_some()).map(|i| i.fault.clone()).collect();
    let outcome = ChaosOutcome {
        seed: o.seed,
        overlapping: overlaps(&started).len(),
        workers: o.workers,
        links: o.links,
        injected,
        copy_exit: exit.and_then(|s| s.code()),
        copy_phase,
        copy_seconds,
        hung,
        crashed_workers,
        check,
    };
    print_outcome(&outcome, &o.work);
    if let Some(out) = &o.out {
        if let Some(dir) = out.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        std::fs::write(out, serde_json::to_string_pretty(&outcome).expect("serializable")).map_err(|e| run_err(format!("{}: {e}", out.display())))?;
    }
    Ok(outcome)
}

/// Takes down what `f` names. Faults may overlap, so each step works whatever state the
/// part is in (a killed worker killed again, etcd stopped while it restarts).
fn begin_fault(c: &mut LocalCluster, f: &Fault) -> Result<()> {
    let w = f.worker.unwrap_or(0);
    match f.kind {
        FaultKind::KillWorker => c.kill_worker(w),
        FaultKind::CutLink => c.cut_link(w)?,
        FaultKind::RestartCoordinator => c.kill_coordinator(),
        FaultKind::RestartEtcd => c.kill_etcd(),
        FaultKind::IsolateWorker => c.isolate_worker(w)?,
        FaultKind::StopEtcd => c.signal_etcd(libc::SIGSTOP),
        FaultKind::KillCoordinatorAndWorker => {
            c.kill_coordinator();
            c.kill_worker(w);
        }
    }
    Ok(())
}

/// Brings back what [`begin_fault`] took down.
fn end_fault(c: &mut LocalCluster, f: &Fault) -> Result<()> {
    let w = f.worker.unwrap_or(0);
    match f.kind {
        FaultKind::KillWorker => c.start_worker(w),
        FaultKind::CutLink => c.heal_link(w),
        FaultKind::RestartCoordinator => c.start_coordinator(),
        FaultKind::RestartEtcd => {
            c.start_etcd();
            Ok(())
        }
        FaultKind::IsolateWorker => c.rejoin_worker(w),
        FaultKind::StopEtcd => {
            c.signal_etcd(libc::SIGCONT);
            Ok(())
        }
        FaultKind::KillCoordinatorAndWorker => {
            c.start_coordinator()?;
            c.start_worker(w)
        }
    }
}

/// Compares with rsync in checksum mode (`-c`: MD5 of every file on both sides, not ferry's
/// CRC32C), dry run, with `--delete` so leftovers at the destination show up too. Without
/// rsync, `diff -r` does the comparing.
pub fn compare_trees(src: &Path, dst: &Path) -> Result<Check> {
    let mut check = Check::default();
    if !dst.is_dir() {
        check.tool = "none: the destination does not exist".into();
        check.missing.push("(the whole tree)".into());
        return Ok(check);
    }
    if crate::util::find_in_path("rsync").is_some() {
        check.tool = "rsync -rlpcn --delete".into();
        let out = Command::new("rsync")
            .args(["-rlpcn", "--delete", "--out-format=%i %n"])
            .arg(format!("{}/", src.display()))
            .arg(format!("{}/", dst.display()))
            .stderr(Stdio::piped())
            .output()
            .map_err(|e| run_err(format!("rsync: {e}")))?;
        if !out.status.success() {
            return Err(run_err(format!("rsync could not compare the trees: {}", String::from_utf8_lossy(&out.stderr).trim())));
        }
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let Some((flags, name)) = line.split_once(' ') else {
                continue;
            };
            let name = name.trim_start().to_string();
            if flags == "*deleting" {
                check.extra.push(name);
            } else if flags.contains("+++++") {
                check.missing.push(name);
            } else {
                check.differ.push(format!("{name} ({flags})"));
            }
        }
    } else {
        check.tool = "diff -r --no-dereference".into();
        let out = Command::new("diff").args(["-rq", "--no-dereference"]).arg(src).arg(dst).output().map_err(|e| run_err(format!("diff: {e}")))?;
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            if let Some(rest) = line.strip_prefix(&format!("Only in {}", src.display())) {
                check.missing.push(rest.trim_start_matches([':', '/', ' ']).to_string());
            } else if line.starts_with(&format!("Only in {}", dst.display())) {
                check.extra.push(line.to_string());
            } else {
                check.differ.push(line.to_string());
            }
        }
    }
    Ok(check)
}

/// Every regular file of the source appears in ferry's report exactly once, and nothing is
/// reported as failed.
fn check_report(report: &Path, src: &Path, check: &mut Check) {
    let text = match std::fs::read_to_string(report) {
        Ok(t) => t,
        Err(e) => {
            check.report_error = Some(format!("cannot read {}: {e}", report.display()));
            return;
        }
    };
    let mut seen = std::collections::HashMap::<String, u32>::new();
    for line in text.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            check.report_error = Some(format!("a report line is not JSON: {line:.120}"));
            return;
        };
        if v["type"] != "entry" {
            continue;
        }
        check.report_entries += 1;
        let path = v["path"].as_str().unwrap_or_default().to_string();
        if v["status"] == "failed" {
            check.report_failed.push(format!("{path}: {}", v["reason"].as_str().unwrap_or("")));
        }
        if v["kind"] == "file" {
            *seen.entry(path).or_default() += 1;
        }
    }
    check.report_duplicated = seen.values().filter(|&&n| n > 1).count() as u64;
    for (path, _) in crate::tree::regular_files(src) {
        let rel = path.strip_prefix(src).expect("under src").to_string_lossy().into_owned();
        if !seen.contains_key(&rel) {
            check.report_missing += 1;
        }
    }
}

fn print_outcome(o: &ChaosOutcome, work: &Path) {
    say("chaos: injected");
    for i in &o.injected {
        match (i.started_s, &i.error) {
            (Some(t), None) => say(format!("  t={t:>6.1}s  {}", i.fault.describe())),
            (Some(t), Some(e)) => say(format!("  t={t:>6.1}s  {} (FAILED TO INJECT: {e})", i.fault.describe())),
            (None, _) => say(format!("  (not injected: the copy had ended)  {}", i.fault.describe())),
        }
    }
    say(format!("chaos: {} pairs of faults overlapped", o.overlapping));
    say(format!(
        "chaos: copy {} after {:.1} s{}",
        if o.hung { "HUNG".to_string() } else { format!("exited {}", o.copy_exit.map(|c| c.to_string()).unwrap_or_else(|| "by a signal".into())) },
        o.copy_seconds,
        o.copy_phase.as_ref().map(|p| format!(", phase {p}")).unwrap_or_default()
    ));
    for (name, st) in &o.crashed_workers {
        say(format!("chaos: worker {name} exited by itself ({st}): see {}/{name}.log", work.display()));
    }
    let c = &o.check;
    say(format!(
        "chaos: {}: {} source files; {} missing, {} differ, {} extra at the destination",
        c.tool,
        c.source_files,
        c.missing.len(),
        c.differ.len(),
        c.extra.len()
    ));
    for (what, list) in [("missing", &c.missing), ("differs", &c.differ), ("extra", &c.extra)] {
        for p in list.iter().take(10) {
            say(format!("  {what}: {p}"));
        }
    }
    match &c.report_error {
        Some(e) => say(format!("chaos: report: {e}")),
        None => say(format!(
            "chaos: report: {} entries; {} failed, {} source files not reported, {} reported twice",
            c.report_entries,
            c.report_failed.len(),
            c.report_missing,
            c.report_duplicated
        )),
    }
    for f in c.report_failed.iter().take(10) {
        say(format!("  failed: {f}"));
    }
    say(format!(
        "chaos: {}",
        if o.passed() {
            "PASSED: nothing lost, the copy succeeded and the report is complete"
        } else if !c.lost_nothing() {
            "FAILED: the destination does not match the source"
        } else {
            "FAILED: nothing was lost, but the run did not end cleanly (see above)"
        }
    ));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_are_deterministic_cover_every_kind_overlap_and_stay_in_the_window() {
        let window = Duration::from_secs(60);
        let a = plan(7, &FaultKind::ALL, 8, window, 3);
        assert_eq!(a, plan(7, &FaultKind::ALL, 8, window, 3), "same seed, same plan");
        assert_ne!(a, plan(8, &FaultKind::ALL, 8, window, 3), "another seed, another plan");
        assert_eq!(a.len(), 8);
        for k in FaultKind::ALL {
            assert!(a.iter().any(|f| f.kind == k), "{k:?} missing from {a:?}");
        }
        assert!(a.windows(2).all(|w| w[0].at <= w[1].at), "sorted by time");
        for f in &a {
            // A fault set to overlap the one before it may start up to half of the longest
            // down time (15 s) after 90 % of the window.
            assert!(f.at >= Duration::from_secs(6) && f.at <= Duration::from_millis(54_000 + 7_500), "{f:?} outside the window");
            assert_eq!(f.worker.is_some(), f.kind.targets_worker());
            assert!(f.worker.is_none_or(|w| w < 3));
            let (lo, hi) = f.kind.down_range_ms();
            assert!((lo..=hi).contains(&(f.down.as_millis() as u64)));
        }
        for seed in 1..=20 {
            let p = plan(seed, &FaultKind::ALL, 8, window, 3);
            assert!(overlaps(&p).len() >= 4, "seed {seed}: every other fault overlaps the one before it: {p:?}");
        }
        assert!(plan(1, &[], 3, window, 3).is_empty());
    }

    #[test]
    fn schedules_parse_and_refuse_nonsense() {
        let s = parse_schedule("12s:cut-link:2:10s, 5s:kill-worker,20s:restart-etcd:3s", 3).unwrap();
        assert_eq!(s.len(), 3);
        assert_eq!((s[0].at, s[0].kind, s[0].worker), (Duration::from_secs(5), FaultKind::KillWorker, Some(0)));
        assert_eq!((s[1].kind, s[1].worker, s[1].down), (FaultKind::CutLink, Some(1), Duration::from_secs(10)));
        assert_eq!((s[2].kind, s[2].worker, s[2].down), (FaultKind::RestartEtcd, None, Duration::from_secs(3)));
        for bad in ["5s:explode", "5s:kill-worker:4", "5s:restart-etcd:1", "soon:kill-worker", "5s"] {
            assert!(matches!(parse_schedule(bad, 3), Err(Error::Usage(_))), "{bad} accepted");
        }
    }

    #[test]
    fn rsync_comparison_names_missing_differing_and_extra_files() {
        let tmp = tempfile::tempdir().unwrap();
        let (src, dst) = (tmp.path().join("s"), tmp.path().join("d"));
        for d in [&src, &dst] {
            std::fs::create_dir_all(d.join("sub")).unwrap();
            std::fs::write(d.join("same"), b"x").unwrap();
        }
        std::fs::write(src.join("sub/gone"), b"data").unwrap();
        std::fs::write(src.join("changed"), b"aaaa").unwrap();
        // Same size and the same mtime would fool a quick check; -c does not.
        std::fs::write(dst.join("changed"), b"aaab").unwrap();
        let mtime = std::fs::metadata(src.join("changed")).unwrap().modified().unwrap();
        std::fs::File::options().write(true).open(dst.join("changed")).unwrap().set_modified(mtime).unwrap();
        std::fs::write(dst.join(".ferry-tmp-left"), b"").unwrap();
        let c = compare_trees(&src, &dst).unwrap();
        assert_eq!(c.missing, vec!["sub/gone".to_string()], "{c:?}");
        assert_eq!(c.differ.len(), 1, "{c:?}");
        assert!(c.differ[0].starts_with("changed "), "{c:?}");
        assert_eq!(c.extra, vec![".ferry-tmp-left".to_string()], "{c:?}");
        assert!(!c.lost_nothing());
        std::fs::remove_dir_all(&dst).unwrap();
        assert!(!compare_trees(&src, &dst).unwrap().lost_nothing(), "a missing destination loses everything");
    }
}
