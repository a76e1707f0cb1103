//! The benchmark runner: make (or reuse) a dataset, run each tool several
//! times interleaved, measure wall/CPU/RSS, sanity-check the copies, report.
//!
//! Method, and why:
//! * Runs are interleaved (ferry, cp, rsync, ..., ferry, cp, ...) so slow
//!   drift (thermal, background writeback) spreads over all tools instead of
//!   penalising whichever ran last.
//! * The destination is removed before every run and `sync(2)` is called
//!   (untimed) so the deletion's and the previous run's dirty pages are not
//!   flushed on the next tool's clock.
//! * The timed span is the tool *plus* a final `sync(2)`: a tool that returns
//!   while its data still sits in the page cache has not finished the job.
//! * The page cache is not dropped (that needs root and measures the disk,
//!   not the tool); instead the source is read once before the first run so
//!   every tool starts equally warm.
//! * CPU and peak RSS come from `wait4(2)` on the tool's pid: CPU includes
//!   all descendants it waited for; ru_maxrss is the largest single process
//!   of that tree (not a sum), in KiB.

use crate::error::{at, Context, Error, Result};
use crate::gen::{self, DatasetSpec, GenConfig, Profile, ShapeOptions, GENERATOR_VERSION};
use crate::report::{
    self, BenchReport, DatasetInfo, GitInfo, HostInfo, RunResult, Sanity, Status, ToolResult,
};
use crate::size::{format_bytes, format_secs};
use crate::stats::summarize;
use crate::tree::{self, TreeStats};
use crate::util::{self, say};
use clap::ValueEnum;
use serde::{Deserialize, Serialize};
use std::ffi::{OsStr, OsString};
use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    /// Many small files (small profile): per-file overhead.
    LocalSmall,
    /// A few big files (large profile): streaming throughput.
    LocalLarge,
}

impl Scenario {
    pub fn name(self) -> &'static str {
        match self {
            Scenario::LocalSmall => "local-small",
            Scenario::LocalLarge => "local-large",
        }
    }

    pub fn profile(self) -> Profile {
        match self {
            Scenario::LocalSmall => Profile::Small,
            Scenario::LocalLarge => Profile::Large,
        }
    }

    /// Tools run in this scenario, in run order.
    pub fn tools(self) -> &'static [&'static str] {
        match self {
            Scenario::LocalSmall => &["ferry", "cp", "rsync", "rclone", "fpsync", "tar-pipe"],
            // Without verification ferry does what cp does; with it, it reads
            // everything back. Both matter for large files.
            Scenario::LocalLarge => &[
                "ferry",
                "ferry-verify-none",
                "cp",
                "rsync",
                "rclone",
                "fpsync",
                "tar-pipe",
            ],
        }
    }

    /// `--tiny` shape: small enough for CI (seconds, not minutes).
    fn tiny_shape(self) -> ShapeOptions {
        match self {
            Scenario::LocalSmall => ShapeOptions {
                files: Some(500),
                dirs: Some(10),
                ..ShapeOptions::default()
            },
            Scenario::LocalLarge => ShapeOptions {
                files: Some(4),
                file_size: Some(8 << 20),
                ..ShapeOptions::default()
            },
        }
    }
}

#[derive(Clone, Debug)]
pub struct BenchOptions {
    pub scenario: Scenario,
    pub runs: usize,
    /// Untimed rounds of every tool before the timed runs.
    pub warmup: usize,
    /// Results directory (default `<workspace>/loadtests/results`).
    pub out: Option<PathBuf>,
    /// ferry binary (default `$FERRY_BIN`, then `<target>/release/ferry`).
    pub ferry: Option<PathBuf>,
    /// Work directory for datasets and destinations (default
    /// `<target>/ferry-load`); must be on the filesystem you want to measure.
    pub data: Option<PathBuf>,
    pub tiny: bool,
    /// Explicit shape options; override `tiny` and the profile defaults.
    pub shape: ShapeOptions,
    pub seed: u64,
    /// Subset of `Scenario::tools()`; `None` = all.
    pub tools: Option<Vec<String>>,
    pub threads: usize,
    /// A ferry-load binary used as the measuring helper (see
    /// `measure_main`); `None` = this executable (`/proc/self/exe`).
    pub helper: Option<PathBuf>,
}

pub struct BenchOutcome {
    pub report: BenchReport,
    pub json: PathBuf,
    pub svg: PathBuf,
    /// False when a tool failed or a destination did not match the source.
    pub ok: bool,
}

/// Cached dataset description, written after a generation completes (its
/// presence is what marks the dataset as complete).
#[derive(Debug, Serialize, Deserialize)]
struct Manifest {
    generator_version: u32,
    seed: u64,
    spec: DatasetSpec,
    stats: TreeStats,
}

/// Resolve the dataset a scenario uses: profile defaults, then `--tiny`,
/// then explicit options. Invalid combinations are usage errors.
pub fn scenario_spec(scenario: Scenario, tiny: bool, shape: &ShapeOptions) -> Result<DatasetSpec> {
    let base = if tiny {
        scenario.tiny_shape()
    } else {
        ShapeOptions::default()
    };
    let merged = ShapeOptions {
        files: shape.files.or(base.files),
        dirs: shape.dirs.or(base.dirs),
        min_size: shape.min_size.or(base.min_size),
        max_size: shape.max_size.or(base.max_size),
        file_size: shape.file_size.or(base.file_size),
        large_files: shape.large_files.or(base.large_files),
        files_per_dir: shape.files_per_dir.or(base.files_per_dir),
    };
    DatasetSpec::resolve(scenario.profile(), &merged)
}

struct ToolDef {
    name: &'static str,
    /// The executable, or why the tool is skipped.
    program: std::result::Result<PathBuf, String>,
    args: Vec<OsString>,
    version_args: &'static [&'static str],
}

fn with_suffix(p: &Path, suffix: &str) -> OsString {
    let mut s = p.as_os_str().to_os_string();
    s.push(suffix);
    s
}

fn os(s: &str) -> OsString {
    OsString::from(s)
}

fn installed(name: &str) -> std::result::Result<PathBuf, String> {
    util::find_in_path(name).ok_or_else(|| format!("{name} is not installed (not found in PATH)"))
}

/// The command line of every tool. `src` and `dst` are absolute (fpsync
/// insists on it).
fn tool_defs(
    ferry: &std::result::Result<PathBuf, String>,
    src: &Path,
    dst: &Path,
    fpsync_tmp: &Path,
) -> Vec<ToolDef> {
    vec![
        ToolDef {
            name: "ferry",
            program: ferry.clone(),
            args: vec![os("copy"), src.into(), dst.into()],
            version_args: &["--version"],
        },
        ToolDef {
            name: "ferry-verify-none",
            program: ferry.clone(),
            args: vec![
                os("copy"),
                os("--verify"),
                os("none"),
                src.into(),
                dst.into(),
            ],
            version_args: &["--version"],
        },
        ToolDef {
            name: "cp",
            program: installed("cp"),
            // `SRC/.` copies the contents whether or not DST exists.
            args: vec![os("-a"), with_suffix(src, "/."), dst.into()],
            version_args: &["--version"],
        },
        ToolDef {
            name: "rsync",
            program: installed("rsync"),
            args: vec![os("-a"), with_suffix(src, "/"), with_suffix(dst, "/")],
            version_args: &["--version"],
        },
        ToolDef {
            name: "rclone",
            program: installed("rclone"),
            // --links: copy symlinks as symlinks (as the others do);
            // --create-empty-src-dirs: rclone skips empty dirs otherwise;
            // --transfers/--checkers 8: rclone's usual tuning for local
            // copies (defaults are 4/8); --config "": in-memory config, no
            // "config file not found" notice and no dependence on ~/.config.
            args: vec![
                os("copy"),
                os("--links"),
                os("--create-empty-src-dirs"),
                os("--transfers"),
                os("8"),
                os("--checkers"),
                os("8"),
                os("--config"),
                os(""),
                src.into(),
                dst.into(),
            ],
            version_args: &["version"],
        },
        ToolDef {
            name: "fpsync",
            program: installed("fpsync"),
            // -n 2: one rsync per core; -t: keep fpsync's queue/log dir
            // inside our work dir (cleared between runs) instead of the
            // shared /tmp/fpsync.
            args: vec![
                os("-n"),
                os("2"),
                os("-t"),
                fpsync_tmp.into(),
                with_suffix(src, "/"),
                with_suffix(dst, "/"),
            ],
            version_args: &["-V"],
        },
        ToolDef {
            name: "tar-pipe",
            // The classic `tar c | tar x` pipe, with permissions and owners (GNU tar keeps
            // owners when run as root), symlinks as links and hard links as links.
            program: installed("tar").and_then(|_| installed("sh")),
            args: vec![
                os("-c"),
                os("mkdir -p \"$2\" && tar -C \"$1\" -cf - . | tar -C \"$2\" -xpf -"),
                os("tar-pipe"),
                src.into(),
                dst.into(),
            ],
            version_args: &["-c", "tar --version"],
        },
    ]
}

fn ferry_program(explicit: Option<&Path>, ws: &Path) -> std::result::Result<PathBuf, String> {
    let (path, origin) = match (explicit, std::env::var_os("FERRY_BIN")) {
        (Some(p), _) => (p.to_path_buf(), "--ferry"),
        (None, Some(p)) if !p.is_empty() => (PathBuf::from(p), "FERRY_BIN"),
        _ => (
            util::target_dir(ws).join("release/ferry"),
            "default location",
        ),
    };
    if util::is_executable(&path) {
        Ok(path)
    } else {
        Err(format!(
            "ferry binary not found at {} ({origin}); build it with `cargo build --release -p ferry-coordinator`, or pass --ferry PATH / set FERRY_BIN",
            path.display()
        ))
    }
}

/// First line of `program args` output that looks like a version.
fn tool_version(program: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .ok()?;
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    text.lines()
        .map(str::trim)
        .find(|l| {
            l.chars().any(|c| c.is_ascii_digit())
                && !l.to_ascii_lowercase().contains("illegal")
                && !l.to_ascii_lowercase().contains("usage")
        })
        .map(str::to_string)
}

/// Outcome of one timed run.
#[derive(Debug)]
pub struct Measured {
    pub result: RunResult,
    pub success: bool,
}

/// Wait for `pid` with wait4 to get its rusage (std's `Child::wait` drops it).
fn wait_rusage(pid: libc::pid_t) -> io::Result<(libc::c_int, libc::rusage)> {
    let mut status: libc::c_int = 0;
    // SAFETY: rusage is plain old data; wait4 fills it on success.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: valid pointers to live locals.
        let r = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
        if r == pid {
            return Ok((status, ru));
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

fn tv_secs(tv: libc::timeval) -> f64 {
    tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6
}

fn sync_all() {
    // SAFETY: sync(2) has no arguments and no failure mode.
    unsafe { libc::sync() };
}

/// First argument that turns `ferry-load` into the measuring helper (handled
/// in main.rs before clap, so it never shows in `--help`).
pub const MEASURE_ARG: &str = "__measure";

/// What the helper reports about the tool it ran.
#[derive(Debug, Serialize, Deserialize)]
struct Measurement {
    exit_code: Option<i32>,
    signal: Option<i32>,
    wall_s: f64,
    user_s: f64,
    sys_s: f64,
    max_rss_kib: u64,
    /// Set when the tool could not be started at all.
    error: Option<String>,
}

/// Helper entry point: `ferry-load __measure REPORT PROGRAM [ARGS...]`.
///
/// Why a helper: a child's ru_maxrss starts from the *peak* RSS of whatever
/// process it was forked from (on exec Linux records the old mm's high-water
/// mark, and with vfork that is the parent's). Spawned straight from the
/// runner, every tool would inherit the runner's peak (dataset generation
/// buffers, ...). A freshly exec'd helper has a ~2 MiB peak, so that is the
/// floor instead. The helper also times the tool itself, so its own start-up
/// is not billed to the tool. Returns the tool's exit code (128+signal).
pub fn measure_main(args: &[OsString]) -> i32 {
    let [report, program, rest @ ..] = args else {
        eprintln!("usage: ferry-load {MEASURE_ARG} REPORT PROGRAM [ARGS...]");
        return 2;
    };
    let start = Instant::now();
    let m = match Command::new(program).args(rest).spawn() {
        Err(e) => Measurement {
            exit_code: None,
            signal: None,
            wall_s: 0.0,
            user_s: 0.0,
            sys_s: 0.0,
            max_rss_kib: 0,
            error: Some(e.to_string()),
        },
        Ok(child) => match wait_rusage(child.id() as libc::pid_t) {
            Err(e) => Measurement {
                exit_code: None,
                signal: None,
                wall_s: start.elapsed().as_secs_f64(),
                user_s: 0.0,
                sys_s: 0.0,
                max_rss_kib: 0,
                error: Some(format!("wait4: {e}")),
            },
            Ok((status, ru)) => {
                let wall_s = start.elapsed().as_secs_f64();
                let (exit_code, signal) = if libc::WIFEXITED(status) {
                    (Some(libc::WEXITSTATUS(status)), None)
                } else if libc::WIFSIGNALED(status) {
                    (None, Some(libc::WTERMSIG(status)))
                } else {
                    (None, None)
                };
                Measurement {
                    exit_code,
                    signal,
                    wall_s,
                    user_s: tv_secs(ru.ru_utime),
                    sys_s: tv_secs(ru.ru_stime),
                    max_rss_kib: ru.ru_maxrss.max(0) as u64,
                    error: None,
                }
            }
        },
    };
    let code = match (&m.error, m.exit_code, m.signal) {
        (Some(_), _, _) => 127,
        (None, Some(c), _) => c,
        (None, None, Some(s)) => 128 + s,
        _ => 1,
    };
    let written = serde_json::to_vec(&m)
        .map_err(io::Error::other)
        .and_then(|j| fs::write(report, j));
    if let Err(e) = written {
        eprintln!("ferry-load {MEASURE_ARG}: write {report:?}: {e}");
        return 125;
    }
    code
}

/// Run one command through the measuring helper (`helper` is a ferry-load
/// binary; normally `/proc/self/exe`), output to `log`, then time a sync.
pub fn timed_run(
    helper: &Path,
    program: &Path,
    args: &[OsString],
    log: &Path,
    run: usize,
) -> Result<Measured> {
    let report = log.with_extension("rusage.json");
    util::remove_tree(&report)?;
    let out = File::create(log).ctx(|| at("create log", log))?;
    let err = out.try_clone().ctx(|| at("open log", log))?;
    let status = Command::new(helper)
        .arg(MEASURE_ARG)
        .arg(&report)
        .arg(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .status()
        .ctx(|| at("start measuring helper", helper))?;
    let sync_start = Instant::now();
    sync_all();
    let sync_s = sync_start.elapsed().as_secs_f64();
    let m: Measurement = fs::read(&report)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or_else(|| {
            Error::run(format!(
                "measuring helper {} exited with {status} without a report (see {})",
                helper.display(),
                log.display()
            ))
        })?;
    if let Some(e) = m.error {
        return Err(Error::run(format!("{}: {e}", at("start", program))));
    }
    Ok(Measured {
        success: m.exit_code == Some(0),
        result: RunResult {
            run,
            wall_s: m.wall_s + sync_s,
            tool_wall_s: m.wall_s,
            sync_s,
            user_s: m.user_s,
            sys_s: m.sys_s,
            cpu_s: m.user_s + m.sys_s,
            max_rss_kib: m.max_rss_kib,
            exit_code: m.exit_code,
            signal: m.signal,
        },
    })
}

/// Last `n` lines of a log, for failure messages.
fn log_tail(log: &Path, n: usize) -> String {
    let Ok(mut f) = File::open(log) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(8192)));
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn read_manifest(path: &Path) -> Option<Manifest> {
    serde_json::from_slice(&fs::read(path).ok()?).ok()
}

/// Reuse the cached dataset when its manifest matches, otherwise (re)generate.
fn ensure_dataset(
    spec: &DatasetSpec,
    seed: u64,
    ds_dir: &Path,
    threads: usize,
) -> Result<TreeStats> {
    let src = ds_dir.join("src");
    let manifest_path = ds_dir.join("manifest.json");
    if let Some(m) = read_manifest(&manifest_path) {
        if m.generator_version == GENERATOR_VERSION
            && m.seed == seed
            && &m.spec == spec
            && src.is_dir()
        {
            say(format!("dataset: reusing {}", src.display()));
            return Ok(m.stats);
        }
    }
    // Remove the manifest first: an interrupted generation must not look
    // complete next time.
    util::remove_tree(&manifest_path)?;
    util::remove_tree(&src)?;
    say(format!(
        "dataset: generating {} into {}",
        spec.describe(),
        src.display()
    ));
    let cfg = GenConfig {
        threads,
        progress: true,
        sync: true,
    };
    let summary = gen::generate(spec, seed, &src, &cfg)?;
    say(format!(
        "dataset: {} files, {} dirs, {} in {}",
        summary.stats.files,
        summary.stats.dirs,
        format_bytes(summary.stats.bytes),
        format_secs(summary.elapsed_s)
    ));
    let m = Manifest {
        generator_version: GENERATOR_VERSION,
        seed,
        spec: spec.clone(),
        stats: summary.stats,
    };
    let json =
        serde_json::to_vec_pretty(&m).map_err(|e| Error::run(format!("encode manifest: {e}")))?;
    fs::write(&manifest_path, json).ctx(|| at("write", &manifest_path))?;
    Ok(summary.stats)
}

fn git_info(ws: &Path) -> Option<GitInfo> {
    let run = |args: &[&str]| -> Option<String> {
        let o = Command::new("git")
            .arg("-C")
            .arg(ws)
            .args(args)
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .ok()?;
        o.status
            .success()
            .then(|| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let commit = run(&["rev-parse", "HEAD"])?;
    let dirty =
        run(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
    Some(GitInfo { commit, dirty })
}

fn host_info(data_dir: &Path) -> HostInfo {
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string());
    let meminfo = fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_total_kib = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok());
    HostInfo {
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        cpu,
        mem_total_kib,
        kernel: util::kernel(),
        fs_type: util::fs_type(data_dir),
        data_dir: data_dir.display().to_string(),
    }
}

fn display_cmd(program: &Path, args: &[OsString]) -> Vec<String> {
    std::iter::once(program.as_os_str())
        .chain(args.iter().map(OsString::as_os_str))
        .map(|a: &OsStr| {
            let s = a.to_string_lossy().into_owned();
            if s.is_empty() || a.as_bytes().iter().any(|b| b.is_ascii_whitespace()) {
                format!("{s:?}")
            } else {
                s
            }
        })
        .collect()
}

/// Per-tool state during the run loop.
struct Active {
    def: ToolDef,
    result: ToolResult,
}

pub fn run_bench(opts: &BenchOptions) -> Result<BenchOutcome> {
    if opts.runs == 0 {
        return Err(Error::usage("--runs must be at least 1"));
    }
    let scenario = opts.scenario;
    let spec = scenario_spec(scenario, opts.tiny, &opts.shape)?;
    let available = scenario.tools();
    let selected: Vec<&'static str> = match &opts.tools {
        None => available.to_vec(),
        Some(list) => {
            let mut v = Vec::new();
            for name in list {
                match available.iter().find(|t| **t == name.as_str()) {
                    Some(t) if !v.contains(t) => v.push(*t),
                    Some(_) => {}
                    None => {
                        return Err(Error::usage(format!(
                            "unknown tool {name:?} for {} (choose from: {})",
                            scenario.name(),
                            available.join(", ")
                        )))
                    }
                }
            }
            v
        }
    };

    let ws = util::workspace_root();
    let data_root = match &opts.data {
        Some(d) => d.clone(),
        None => util::target_dir(&ws).join("ferry-load"),
    };
    fs::create_dir_all(&data_root).ctx(|| at("create directory", &data_root))?;
    let data_root = data_root.canonicalize().ctx(|| at("resolve", &data_root))?;
    let key = spec.key(opts.seed);
    let ds_dir = data_root.join(&key);
    fs::create_dir_all(&ds_dir).ctx(|| at("create directory", &ds_dir))?;
    let src = ds_dir.join("src");
    let dst = ds_dir.join("dst");
    let logs = ds_dir.join("logs");
    let fpsync_tmp = ds_dir.join("fpsync-tmp");
    fs::create_dir_all(&logs).ctx(|| at("create directory", &logs))?;
    // A destination left over from an interrupted run would be counted
    // against the free space and confuse the first sanity check.
    util::remove_tree(&dst)?;

    let expected = ensure_dataset(&spec, opts.seed, &ds_dir, opts.threads)?;
    let free = util::free_bytes(&ds_dir)?;
    let need = expected.bytes + (64 << 20);
    if free < need {
        return Err(Error::run(format!(
            "not enough free space in {} for a copy: need {}, {} available",
            ds_dir.display(),
            format_bytes(need),
            format_bytes(free)
        )));
    }
    say("dataset: reading source once to warm the page cache");
    let seen = tree::warm(&src)?;
    if seen != expected {
        return Err(Error::run(format!(
            "dataset {} does not match its manifest (found {seen:?}, expected {expected:?}); delete {} and rerun",
            src.display(),
            ds_dir.display()
        )));
    }

    let ferry = ferry_program(opts.ferry.as_deref(), &ws);
    let helper = opts
        .helper
        .clone()
        .unwrap_or_else(|| PathBuf::from("/proc/self/exe"));
    let (stamp, started_at) = util::utc_timestamp();
    let mut tools: Vec<Active> = tool_defs(&ferry, &src, &dst, &fpsync_tmp)
        .into_iter()
        .filter(|d| selected.contains(&d.name))
        .map(|def| {
            let (status, reason, command, version) = match &def.program {
                Ok(p) => (
                    Status::Ok,
                    None,
                    display_cmd(p, &def.args),
                    tool_version(p, def.version_args),
                ),
                Err(why) => (Status::Skipped, Some(why.clone()), vec![], None),
            };
            if let Some(why) = &reason {
                say(format!("{}: skipped: {why}", def.name));
            }
            Active {
                result: ToolResult {
                    name: def.name.to_string(),
                    command,
                    version,
                    status,
                    reason,
                    runs: Vec::new(),
                    wall_s: None,
                    cpu_s: None,
                    max_rss_kib: None,
                    sanity: None,
                },
                def,
            }
        })
        .collect();

    // Warm-up rounds first (untimed, unreported): the first copy on a fresh
    // machine also pays for first-touch page-cache memory and for loading
    // each tool's binary, and that must not land on whichever tool is first.
    let rounds = opts.warmup + opts.runs;
    for round in 1..=rounds {
        let warm = round <= opts.warmup;
        let (run, label) = if warm {
            (0, format!("warmup {round}/{}", opts.warmup))
        } else {
            let r = round - opts.warmup;
            (r, format!("run {r}/{}", opts.runs))
        };
        for t in tools.iter_mut().filter(|t| t.result.status == Status::Ok) {
            let Ok(program) = t.def.program.clone() else {
                continue;
            };
            util::remove_tree(&dst)?;
            util::remove_tree(&fpsync_tmp)?;
            sync_all();
            let log = logs.join(if warm {
                format!("{}-warmup{round}.log", t.def.name)
            } else {
                format!("{}-run{run}.log", t.def.name)
            });
            let m = match timed_run(&helper, &program, &t.def.args, &log, run) {
                Ok(m) => m,
                Err(e) => {
                    say(format!("{label} {}: FAILED to run: {e}", t.def.name));
                    t.result.status = Status::Failed;
                    t.result.reason = Some(e.to_string());
                    continue;
                }
            };
            let r = &m.result;
            say(format!(
                "{label} {:<18} {:>10} (tool {}, sync {}; cpu {}; rss {})",
                t.def.name,
                format_secs(r.wall_s),
                format_secs(r.tool_wall_s),
                format_secs(r.sync_s),
                format_secs(r.cpu_s),
                format_bytes(r.max_rss_kib * 1024)
            ));
            if !m.success {
                let how = match (r.exit_code, r.signal) {
                    (Some(c), _) => format!("exit code {c}"),
                    (_, Some(s)) => format!("killed by signal {s}"),
                    _ => "abnormal exit".into(),
                };
                let tail = log_tail(&log, 15);
                say(format!(
                    "!!! {} failed on {label} ({how}); log {}:\n{tail}",
                    t.def.name,
                    log.display()
                ));
                t.result.status = Status::Failed;
                t.result.reason = Some(format!("{how} on {label}; see {}", log.display()));
            }
            if !warm {
                t.result.runs.push(m.result);
            }
            if !m.success {
                continue;
            }
            // The first successful copy of each tool (the warm-up one, if
            // any) is checked against the source.
            if t.result.sanity.is_none() {
                let actual = tree::scan(&dst).unwrap_or_default();
                let s = Sanity::compare(expected, actual);
                if let Some(msg) = &s.message {
                    say(format!("!!! {}: {msg}", t.def.name));
                }
                t.result.sanity = Some(s);
            }
        }
    }
    util::remove_tree(&dst)?;
    util::remove_tree(&fpsync_tmp)?;

    let mut results: Vec<ToolResult> = tools.into_iter().map(|t| t.result).collect();
    for t in &mut results {
        let ok_runs: Vec<&RunResult> = t.runs.iter().filter(|r| r.exit_code == Some(0)).collect();
        let col =
            |f: fn(&RunResult) -> f64| summarize(&ok_runs.iter().map(|r| f(r)).collect::<Vec<_>>());
        t.wall_s = col(|r| r.wall_s);
        t.cpu_s = col(|r| r.cpu_s);
        t.max_rss_kib = col(|r| r.max_rss_kib as f64);
    }
    let comparisons = report::compare(&results);
    let ok = results
        .iter()
        .all(|t| t.status != Status::Failed && t.sanity.as_ref().is_none_or(|s| s.ok));

    let report = BenchReport {
        schema: 1,
        scenario: scenario.name().to_string(),
        tiny: opts.tiny,
        started_at,
        runs: opts.runs,
        warmup: opts.warmup,
        dataset: DatasetInfo {
            description: spec.describe(),
            spec: spec.clone(),
            seed: opts.seed,
            key,
            src: src.display().to_string(),
            stats: expected,
        },
        host: host_info(&data_root),
        git: git_info(&ws),
        method: vec![
            "runs interleaved across tools (A B C A B C ...), after `warmup` untimed rounds".into(),
            "destination removed and sync(2) called, untimed, before each run".into(),
            "wall_s = tool wall time + a final sync(2); tool_wall_s and sync_s split it".into(),
            "page cache not dropped; the source is read once before the first run".into(),
            "cpu_s = user+sys of the tool and its waited-for descendants (wait4)".into(),
            "max_rss_kib = ru_maxrss from wait4: the largest single process in the tool's tree; tools are started from a fresh ~2 MiB helper process because a child inherits its parent's peak RSS".into(),
            "sanity: destination file/dir/symlink counts and total bytes vs source, after each tool's first run (warm-up included)".into(),
            "statistics over successful runs: median, min, max".into(),
        ],
        tools: results,
        comparisons,
    };

    let out_dir = match &opts.out {
        Some(d) => d.clone(),
        None => ws.join("loadtests/results"),
    };
    fs::create_dir_all(&out_dir).ctx(|| at("create directory", &out_dir))?;
    let stem = format!(
        "{}{}-{stamp}",
        scenario.name(),
        if opts.tiny { "-tiny" } else { "" }
    );
    let json = out_dir.join(format!("{stem}.json"));
    let svg = out_dir.join(format!("{stem}.svg"));
    let mut text = serde_json::to_string_pretty(&report)
        .map_err(|e| Error::run(format!("encode results: {e}")))?;
    text.push('\n');
    fs::write(&json, text).ctx(|| at("write", &json))?;
    fs::write(&svg, report::render_svg(&report)).ctx(|| at("write", &svg))?;
    Ok(BenchOutcome {
        report,
        json,
        svg,
        ok,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiny_and_overrides() {
        let s = scenario_spec(Scenario::LocalSmall, true, &ShapeOptions::default()).unwrap();
        match s {
            DatasetSpec::Small(s) => assert_eq!((s.files, s.dirs, s.max_size), (500, 10, 64 << 10)),
            other => panic!("{other:?}"),
        }
        let o = ShapeOptions {
            files: Some(7),
            ..ShapeOptions::default()
        };
        match scenario_spec(Scenario::LocalLarge, true, &o).unwrap() {
            DatasetSpec::Large(l) => assert_eq!((l.files, l.file_size), (7, 8 << 20)),
            other => panic!("{other:?}"),
        }
        let bad = ShapeOptions {
            dirs: Some(3),
            ..ShapeOptions::default()
        };
        assert_eq!(
            scenario_spec(Scenario::LocalLarge, false, &bad)
                .unwrap_err()
                .exit_code(),
            2
        );
    }
}
