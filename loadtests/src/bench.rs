//! The benchmark runner: make (or reuse) a dataset, run each tool several
//! times interleaved, measure wall/CPU/RSS, sanity-check the copies, report.
//!
//! Method, and why:
//! * Runs are interleaved, one run of every tool per round, with the order
//!   rotated each round, so slow drift (thermal, background writeback) and the
//!   cost of following a particular tool spread over all tools instead of
//!   penalising whichever always ran last or after the heaviest.
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
use crate::report::{self, BenchReport, DatasetInfo, GitInfo, HostInfo, RunResult, Sanity, Status, ToolResult};
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

#[path = "s3peer.rs"]
pub mod s3peer;
use s3peer::S3Server;

/// Placeholder in an S3 tool's arguments, replaced by the run's own prefix
/// (`<tool>-<run>`, `<tool>-w<n>` for warm-ups) so every run uploads into an
/// empty prefix.
pub const PREFIX_TOKEN: &str = "@PREFIX@";

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    /// Many small files (small profile): per-file overhead.
    LocalSmall,
    /// A few big files (large profile): streaming throughput.
    LocalLarge,
    /// Local → S3 (s3s-fs on loopback), 10,000 files of 4–64 KiB: per-object
    /// request overhead.
    S3Small,
    /// Local → S3 (s3s-fs on loopback), 4 files of 512 MiB: upload
    /// throughput (multipart).
    S3Large,
    /// Cluster mode with 1, 2 and 4 workers on this host (etcd, a coordinator and
    /// `ferry-worker`s) against embedded ferry and fpsync with 2 and 4 rsyncs: the scaling
    /// curve, 20,000 small files.
    Cluster,
}

impl Scenario {
    pub fn name(self) -> &'static str {
        match self {
            Scenario::LocalSmall => "local-small",
            Scenario::LocalLarge => "local-large",
            Scenario::S3Small => "s3-small",
            Scenario::S3Large => "s3-large",
            Scenario::Cluster => "cluster",
        }
    }

    /// Uploads to an S3 server started by the scenario (see `s3peer`).
    pub fn is_s3(self) -> bool {
        matches!(self, Scenario::S3Small | Scenario::S3Large)
    }

    pub fn profile(self) -> Profile {
        match self {
            Scenario::LocalSmall | Scenario::S3Small | Scenario::Cluster => Profile::Small,
            Scenario::LocalLarge | Scenario::S3Large => Profile::Large,
        }
    }

    /// Tools run in this scenario, in run order.
    pub fn tools(self) -> &'static [&'static str] {
        match self {
            Scenario::LocalSmall => &["ferry", "cp", "rsync", "rsync-daemon", "rclone", "fpsync", "tar-pipe"],
            // Without verification ferry does what cp does; with it, it reads
            // everything back. Both matter for large files.
            Scenario::LocalLarge => &["ferry", "ferry-verify-none", "cp", "rsync", "rclone", "fpsync", "tar-pipe"],
            // Object-store peers only: rclone's S3 backend.
            Scenario::S3Small | Scenario::S3Large => &["ferry", "rclone"],
            Scenario::Cluster => &["ferry", "ferry-cluster-1", "ferry-cluster-2", "ferry-cluster-4", "fpsync", "fpsync-4"],
        }
    }

    /// Full-size shape (what the scenario measures without `--tiny`); empty
    /// options mean the profile defaults.
    fn full_shape(self) -> ShapeOptions {
        match self {
            Scenario::LocalSmall | Scenario::LocalLarge => ShapeOptions::default(),
            Scenario::S3Small => {
                ShapeOptions { files: Some(10_000), dirs: Some(100), min_size: Some(4 << 10), max_size: Some(64 << 10), ..ShapeOptions::default() }
            }
            Scenario::S3Large => ShapeOptions { files: Some(4), file_size: Some(512 << 20), ..ShapeOptions::default() },
            Scenario::Cluster => ShapeOptions { files: Some(20_000), dirs: Some(200), ..ShapeOptions::default() },
        }
    }

    /// `--tiny` shape: small enough for CI (seconds, not minutes).
    fn tiny_shape(self) -> ShapeOptions {
        match self {
            Scenario::LocalSmall => ShapeOptions { files: Some(500), dirs: Some(10), ..ShapeOptions::default() },
            Scenario::LocalLarge => ShapeOptions { files: Some(4), file_size: Some(8 << 20), ..ShapeOptions::default() },
            Scenario::S3Small => {
                ShapeOptions { files: Some(200), dirs: Some(10), min_size: Some(4 << 10), max_size: Some(64 << 10), ..ShapeOptions::default() }
            }
            // Big enough to take the multipart path of both tools (rclone's
            // default cutoff is 200 MiB, so it uploads these in one PUT).
            Scenario::S3Large => ShapeOptions { files: Some(2), file_size: Some(40 << 20), ..ShapeOptions::default() },
            Scenario::Cluster => ShapeOptions { files: Some(300), dirs: Some(6), ..ShapeOptions::default() },
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
    /// An earlier ferry binary, run interleaved with `ferry` as `ferry-baseline` (and
    /// `ferry-baseline-verify-none`), so a before/after comparison comes from one run.
    pub baseline: Option<PathBuf>,
    /// Also run `ferry-traced` (local scenarios): ferry exporting its traces over OTLP/HTTP
    /// to a real receiver (coordinator/tests/support/otlp_receiver.py), interleaved with
    /// `ferry`, so the exporter's cost comes from one run.
    pub traces: bool,
}

/// An OTLP/HTTP receiver for `ferry-traced`, stopped on drop.
struct OtlpReceiver {
    child: std::process::Child,
    spans: PathBuf,
    endpoint: String,
}

impl OtlpReceiver {
    fn start(ws: &Path, logs: &Path) -> Result<OtlpReceiver> {
        let script = ws.join("coordinator/tests/support/otlp_receiver.py");
        let spans = logs.join("spans.jsonl");
        let port_file = logs.join("spans.jsonl.port");
        let _ = fs::remove_file(&spans);
        let _ = fs::remove_file(&port_file);
        let child = Command::new("python3")
            .arg(&script)
            .args(["127.0.0.1", "0"])
            .arg(&spans)
            .stdin(Stdio::null())
            .spawn()
            .map_err(|e| Error::run(format!("cannot start the OTLP receiver {}: {e}", script.display())))?;
        let mut receiver = OtlpReceiver { child, spans, endpoint: String::new() };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while receiver.endpoint.is_empty() {
            match fs::read_to_string(&port_file) {
                Ok(port) => receiver.endpoint = format!("http://127.0.0.1:{}", port.trim()),
                Err(_) if std::time::Instant::now() < deadline => std::thread::sleep(std::time::Duration::from_millis(100)),
                Err(_) => return Err(Error::run("the OTLP receiver did not start (python3 -m pip install opentelemetry-proto)")),
            }
        }
        Ok(receiver)
    }

    fn spans_received(&self) -> usize {
        fs::read_to_string(&self.spans).map(|s| s.lines().count()).unwrap_or(0)
    }
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The baseline's tools, named after the ferry tools they shadow.
const BASELINE_TOOLS: [(&str, &str); 2] = [("ferry", "ferry-baseline"), ("ferry-verify-none", "ferry-baseline-verify-none")];

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
    let base = if tiny { scenario.tiny_shape() } else { scenario.full_shape() };
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
    /// Extra environment for the tool (S3 credentials, rclone remote).
    env: Vec<(OsString, OsString)>,
    /// Variables removed from the tool's environment.
    env_remove: &'static [&'static str],
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
fn tool_defs(ferry: &std::result::Result<PathBuf, String>, src: &Path, dst: &Path, fpsync_tmp: &Path) -> Vec<ToolDef> {
    vec![
        ToolDef {
            name: "ferry",
            program: ferry.clone(),
            args: vec![os("copy"), src.into(), dst.into()],
            version_args: &["--version"],
            env: vec![],
            env_remove: &[],
        },
        ToolDef {
            name: "ferry-verify-none",
            program: ferry.clone(),
            args: vec![os("copy"), os("--verify"), os("none"), src.into(), dst.into()],
            version_args: &["--version"],
            env: vec![],
            env_remove: &[],
        },
        ToolDef {
            name: "cp",
            program: installed("cp"),
            // `SRC/.` copies the contents whether or not DST exists.
            args: vec![os("-a"), with_suffix(src, "/."), dst.into()],
            version_args: &["--version"],
            env: vec![],
            env_remove: &[],
        },
        ToolDef {
            name: "rsync",
            program: installed("rsync"),
            args: vec![os("-a"), with_suffix(src, "/"), with_suffix(dst, "/")],
            version_args: &["--version"],
            env: vec![],
            env_remove: &[],
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
            env: vec![],
            env_remove: &[],
        },
        ToolDef {
            name: "fpsync",
            program: installed("fpsync"),
            // -n 2: one rsync per core; -t: keep fpsync's queue/log dir
            // inside our work dir (cleared between runs) instead of the
            // shared /tmp/fpsync.
            args: vec![os("-n"), os("2"), os("-t"), fpsync_tmp.into(), with_suffix(src, "/"), with_suffix(dst, "/")],
            version_args: &["-V"],
            env: vec![],
            env_remove: &[],
        },
        ToolDef {
            name: "fpsync-4",
            // The cluster scenario's widest peer: 4 rsync jobs, like 4 ferry workers.
            program: installed("fpsync"),
            args: vec![os("-n"), os("4"), os("-t"), fpsync_tmp.into(), with_suffix(src, "/"), with_suffix(dst, "/")],
            version_args: &["-V"],
            env: vec![],
            env_remove: &[],
        },
        ToolDef {
            name: "tar-pipe",
            // The classic `tar c | tar x` pipe, with permissions and owners (GNU tar keeps
            // owners when run as root), symlinks as links and hard links as links.
            program: installed("tar").and_then(|_| installed("sh")),
            args: vec![os("-c"), os("mkdir -p \"$2\" && tar -C \"$1\" -cf - . | tar -C \"$2\" -xpf -"), os("tar-pipe"), src.into(), dst.into()],
            version_args: &["-c", "tar --version"],
            env: vec![],
            env_remove: &[],
        },
        ToolDef {
            name: "rsync-daemon",
            // rsync over its own daemon protocol on loopback TCP, as between two hosts without
            // ssh. The daemon is started and stopped inside the timed command (a few ms), on a
            // port of its own, writing as root so owners are kept like the other peers.
            program: installed("rsync").and_then(|_| installed("sh")),
            args: vec![os("-c"), os(RSYNC_DAEMON_SCRIPT), os("rsync-daemon"), src.into(), dst.into()],
            version_args: &["-c", "rsync --version"],
            env: vec![],
            env_remove: &[],
        },
    ]
}

/// Cluster sizes of the cluster scenario, with their tool names.
const CLUSTER_TOOLS: [(usize, &str); 3] = [(1, "ferry-cluster-1"), (2, "ferry-cluster-2"), (4, "ferry-cluster-4")];

/// Starts one cluster per selected cluster size, all idle until their tool's turn. Their
/// etcd, coordinator and workers are not in the CPU and RSS columns (only the submitting
/// `ferry copy` is); the workers' peak RSS is printed at the end.
fn start_clusters(ferry: &std::result::Result<PathBuf, String>, selected: &[&str], work: &Path) -> Result<Vec<(usize, crate::cluster::LocalCluster)>> {
    let Ok(ferry) = ferry else {
        return Ok(Vec::new());
    };
    let bin_dir = ferry.parent().unwrap_or(Path::new(".")).to_path_buf();
    let mut out = Vec::new();
    for (workers, name) in CLUSTER_TOOLS {
        if !selected.contains(&name) {
            continue;
        }
        say(format!("cluster: starting etcd, a coordinator and {workers} worker(s) for {name}"));
        let c = crate::cluster::LocalCluster::start(crate::cluster::ClusterOptions {
            workers,
            netns: false,
            movers: 8,
            links: false,
            lease_ttl_s: 10,
            bin_dir: bin_dir.clone(),
            work: work.join(name),
        })?;
        out.push((workers, c));
    }
    Ok(out)
}

fn cluster_tool_defs(ferry: &std::result::Result<PathBuf, String>, src: &Path, dst: &Path, clusters: &[(usize, crate::cluster::LocalCluster)]) -> Vec<ToolDef> {
    CLUSTER_TOOLS
        .iter()
        .map(|&(workers, name)| {
            let cluster = clusters.iter().find(|(n, _)| *n == workers).map(|(_, c)| c);
            ToolDef {
                name,
                program: match cluster {
                    Some(_) => ferry.clone(),
                    None => Err(ferry.clone().err().unwrap_or_else(|| "its cluster did not start".into())),
                },
                args: vec![os("copy"), os("--no-progress"), os("--etcd"), os(cluster.map_or("", |c| c.endpoint())), src.into(), dst.into()],
                version_args: &["--version"],
                env: vec![],
                env_remove: &[],
            }
        })
        .collect()
}

/// `sh -c` script for the rsync-daemon peer: `$1` is the source, `$2` the destination.
const RSYNC_DAEMON_SCRIPT: &str = r#"set -e
work=$(mktemp -d)
trap 'kill "$(cat "$work/pid" 2>/dev/null)" 2>/dev/null || true; rm -rf "$work"' EXIT
mkdir -p "$2"
port=$(( 20000 + $$ % 30000 ))
printf 'uid = root\ngid = root\nuse chroot = no\nmunge symlinks = no\npid file = %s/pid\n[dst]\npath = %s\nread only = no\n' "$work" "$2" > "$work/conf"
rsync --daemon --config="$work/conf" --address=127.0.0.1 --port="$port"
i=0
until rsync "rsync://127.0.0.1:$port/" >/dev/null 2>&1; do
  i=$((i + 1)); [ "$i" -lt 200 ] || { echo "rsync daemon did not start on port $port" >&2; exit 1; }
  sleep 0.02
done
rsync -a "$1/" "rsync://127.0.0.1:$port/dst/"
"#;

/// The S3 scenarios' command lines: local `src` to `s3://bench/@PREFIX@` on
/// the s3s-fs at `endpoint`, same concurrency for both (8 parallel uploads).
fn s3_tool_defs(ferry: &std::result::Result<PathBuf, String>, src: &Path, endpoint: &str) -> Vec<ToolDef> {
    let pairs = |v: &[(&str, &str)]| -> Vec<(OsString, OsString)> { v.iter().map(|(k, val)| (os(k), os(val))).collect() };
    // Credentials and endpoint come only from here: no profile, token or CA
    // bundle of the machine may leak in (rclone refuses to start at all when
    // AWS_CA_BUNDLE is set, "LoadCustomCABundleError ... unsupported
    // transport"; the endpoint is plain http anyway).
    const SCRUB: &[&str] =
        &["AWS_CA_BUNDLE", "AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "RCLONE_CONFIG"];
    vec![
        ToolDef {
            name: "ferry",
            program: ferry.clone(),
            args: vec![
                os("copy"),
                os("--no-progress"),
                os("--movers"),
                os("8"),
                os("--endpoint-url"),
                os(endpoint),
                src.into(),
                os(&format!("s3://{}/{PREFIX_TOKEN}", s3peer::BUCKET)),
            ],
            version_args: &["--version"],
            env: pairs(&[
                ("AWS_ACCESS_KEY_ID", s3peer::ACCESS_KEY),
                ("AWS_SECRET_ACCESS_KEY", s3peer::SECRET_KEY),
                ("AWS_REGION", s3peer::REGION),
                ("AWS_EC2_METADATA_DISABLED", "true"),
            ]),
            env_remove: SCRUB,
        },
        ToolDef {
            name: "rclone",
            program: installed("rclone"),
            // An env-var remote named "bench" (no config file: --config "");
            // --transfers/--checkers 8 as ferry's --movers 8. Everything else
            // is rclone's S3 default (multipart above 200 MiB, 5 MiB chunks,
            // 4 parts in flight per file, MD5 of every upload).
            args: vec![
                os("copy"),
                os("--transfers"),
                os("8"),
                os("--checkers"),
                os("8"),
                os("--config"),
                os(""),
                src.into(),
                os(&format!("bench:{}/{PREFIX_TOKEN}", s3peer::BUCKET)),
            ],
            version_args: &["version"],
            env: pairs(&[
                ("RCLONE_CONFIG_BENCH_TYPE", "s3"),
                ("RCLONE_CONFIG_BENCH_PROVIDER", "Other"),
                ("RCLONE_CONFIG_BENCH_ACCESS_KEY_ID", s3peer::ACCESS_KEY),
                ("RCLONE_CONFIG_BENCH_SECRET_ACCESS_KEY", s3peer::SECRET_KEY),
                ("RCLONE_CONFIG_BENCH_ENDPOINT", endpoint),
                ("RCLONE_CONFIG_BENCH_FORCE_PATH_STYLE", "true"),
                ("RCLONE_CONFIG_BENCH_REGION", s3peer::REGION),
            ]),
            env_remove: SCRUB,
        },
    ]
}

/// `args` with the S3 prefix placeholder replaced by `prefix`.
fn with_prefix(args: &[OsString], prefix: &str) -> Vec<OsString> {
    args.iter()
        .map(|a| match a.to_str() {
            Some(s) if s.contains(PREFIX_TOKEN) => OsString::from(s.replace(PREFIX_TOKEN, prefix)),
            _ => a.clone(),
        })
        .collect()
}

fn ferry_program(explicit: Option<&Path>, ws: &Path) -> std::result::Result<PathBuf, String> {
    let (path, origin) = match (explicit, std::env::var_os("FERRY_BIN")) {
        (Some(p), _) => (p.to_path_buf(), "--ferry"),
        (None, Some(p)) if !p.is_empty() => (PathBuf::from(p), "FERRY_BIN"),
        _ => (util::target_dir(ws).join("release/ferry"), "default location"),
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
    let out = Command::new(program).args(args).stdin(Stdio::null()).output().ok()?;
    let text = format!("{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    text.lines()
        .map(str::trim)
        .find(|l| l.chars().any(|c| c.is_ascii_digit()) && !l.to_ascii_lowercase().contains("illegal") && !l.to_ascii_lowercase().contains("usage"))
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
        Err(e) => Measurement { exit_code: None, signal: None, wall_s: 0.0, user_s: 0.0, sys_s: 0.0, max_rss_kib: 0, error: Some(e.to_string()) },
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
    let written = serde_json::to_vec(&m).map_err(io::Error::other).and_then(|j| fs::write(report, j));
    if let Err(e) = written {
        eprintln!("ferry-load {MEASURE_ARG}: write {report:?}: {e}");
        return 125;
    }
    code
}

/// Run one command through the measuring helper (`helper` is a ferry-load
/// binary; normally `/proc/self/exe`), output to `log`, then time a sync.
pub fn timed_run(helper: &Path, program: &Path, args: &[OsString], log: &Path, run: usize) -> Result<Measured> {
    timed_run_env(helper, program, args, &[], &[], log, run)
}

/// [`timed_run`] with extra (`env`) and removed (`env_remove`) environment
/// variables for the tool (the helper passes its environment on).
pub fn timed_run_env(
    helper: &Path,
    program: &Path,
    args: &[OsString],
    env: &[(OsString, OsString)],
    env_remove: &[&str],
    log: &Path,
    run: usize,
) -> Result<Measured> {
    let report = log.with_extension("rusage.json");
    util::remove_tree(&report)?;
    let out = File::create(log).ctx(|| at("create log", log))?;
    let err = out.try_clone().ctx(|| at("open log", log))?;
    let mut cmd = Command::new(helper);
    for k in env_remove {
        cmd.env_remove(k);
    }
    cmd.envs(env.iter().map(|(k, v)| (k, v)));
    let status = cmd
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
        .ok_or_else(|| Error::run(format!("measuring helper {} exited with {status} without a report (see {})", helper.display(), log.display())))?;
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
pub fn ensure_dataset(spec: &DatasetSpec, seed: u64, ds_dir: &Path, threads: usize) -> Result<TreeStats> {
    let src = ds_dir.join("src");
    let manifest_path = ds_dir.join("manifest.json");
    if let Some(m) = read_manifest(&manifest_path) {
        if m.generator_version == GENERATOR_VERSION && m.seed == seed && &m.spec == spec && src.is_dir() {
            say(format!("dataset: reusing {}", src.display()));
            return Ok(m.stats);
        }
    }
    // Remove the manifest first: an interrupted generation must not look
    // complete next time.
    util::remove_tree(&manifest_path)?;
    util::remove_tree(&src)?;
    say(format!("dataset: generating {} into {}", spec.describe(), src.display()));
    let cfg = GenConfig { threads, progress: true, sync: true };
    let summary = gen::generate(spec, seed, &src, &cfg)?;
    say(format!(
        "dataset: {} files, {} dirs, {} in {}",
        summary.stats.files,
        summary.stats.dirs,
        format_bytes(summary.stats.bytes),
        format_secs(summary.elapsed_s)
    ));
    let m = Manifest { generator_version: GENERATOR_VERSION, seed, spec: spec.clone(), stats: summary.stats };
    let json = serde_json::to_vec_pretty(&m).map_err(|e| Error::run(format!("encode manifest: {e}")))?;
    fs::write(&manifest_path, json).ctx(|| at("write", &manifest_path))?;
    Ok(summary.stats)
}

fn git_info(ws: &Path) -> Option<GitInfo> {
    let run = |args: &[&str]| -> Option<String> {
        let o = Command::new("git").arg("-C").arg(ws).args(args).stdin(Stdio::null()).stderr(Stdio::null()).output().ok()?;
        o.status.success().then(|| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let commit = run(&["rev-parse", "HEAD"])?;
    let dirty = run(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
    Some(GitInfo { commit, dirty })
}

fn host_info(data_dir: &Path) -> HostInfo {
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo.lines().find(|l| l.starts_with("model name")).and_then(|l| l.split_once(':')).map(|(_, v)| v.trim().to_string());
    let meminfo = fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_total_kib = meminfo.lines().find(|l| l.starts_with("MemTotal:")).and_then(|l| l.split_whitespace().nth(1)).and_then(|v| v.parse().ok());
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
    let started = util::utc_timestamp();
    let mut available = scenario.tools().to_vec();
    if opts.baseline.is_some() {
        for (of, name) in BASELINE_TOOLS {
            if let Some(i) = available.iter().position(|t| *t == of) {
                available.insert(i + 1, name);
            }
        }
    }
    if opts.traces && !scenario.is_s3() && scenario != Scenario::Cluster {
        if let Some(i) = available.iter().position(|t| *t == "ferry") {
            available.insert(i + 1, "ferry-traced");
        }
    }
    let selected: Vec<&'static str> = match &opts.tools {
        None => available.to_vec(),
        Some(list) => {
            let mut v = Vec::new();
            for name in list {
                match available.iter().find(|t| **t == name.as_str()) {
                    Some(t) if !v.contains(t) => v.push(*t),
                    Some(_) => {}
                    None => return Err(Error::usage(format!("unknown tool {name:?} for {} (choose from: {})", scenario.name(), available.join(", ")))),
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

    // The S3 scenarios need their server; without it they are skipped (like
    // a missing peer), and there is no point generating their dataset.
    let s3s_fs = scenario.is_s3().then(s3peer::find_s3s_fs);
    if let Some(Err(why)) = &s3s_fs {
        say(format!("{}: skipped: {why}", scenario.name()));
        return finish(opts, &ws, &data_root, &spec, key, &src, TreeStats::default(), skipped_tools(&selected, why), None, started);
    }

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
    let helper = opts.helper.clone().unwrap_or_else(|| PathBuf::from("/proc/self/exe"));
    // Started here, killed when `server` drops (also on every early return).
    let mut server = match &s3s_fs {
        Some(Ok(program)) => {
            let root = ds_dir.join("s3-root");
            let log = logs.join("s3s-fs.log");
            let srv = S3Server::start(program, &root, &log)?;
            say(format!("s3: {} serving {} on {} (log {})", program.display(), root.display(), srv.endpoint(), log.display()));
            Some((srv, program.clone()))
        }
        _ => None,
    };
    let receiver = if selected.contains(&"ferry-traced") { Some(OtlpReceiver::start(&ws, &logs)?) } else { None };
    let clusters = if scenario == Scenario::Cluster { start_clusters(&ferry, &selected, &ds_dir.join("clusters"))? } else { Vec::new() };
    let defs = match &server {
        Some((srv, _)) => s3_tool_defs(&ferry, &src, &srv.endpoint()),
        None => {
            let mut defs = tool_defs(&ferry, &src, &dst, &fpsync_tmp);
            if let Some(receiver) = receiver.as_ref().filter(|_| selected.contains(&"ferry-traced")) {
                let traced = tool_defs(&ferry, &src, &dst, &fpsync_tmp).into_iter().find(|d| d.name == "ferry").map(|d| ToolDef {
                    name: "ferry-traced",
                    env: vec![("OTEL_EXPORTER_OTLP_ENDPOINT".into(), receiver.endpoint.clone().into())],
                    ..d
                });
                defs.extend(traced);
            }
            if let Some(baseline) = &opts.baseline {
                let program =
                    if util::is_executable(baseline) { Ok(baseline.clone()) } else { Err(format!("baseline binary {} is not executable", baseline.display())) };
                let shadows: Vec<ToolDef> = tool_defs(&program, &src, &dst, &fpsync_tmp)
                    .into_iter()
                    .filter_map(|d| BASELINE_TOOLS.iter().find(|(of, _)| *of == d.name).map(|(_, name)| ToolDef { name, ..d }))
                    .collect();
                defs.extend(shadows);
            }
            defs.extend(cluster_tool_defs(&ferry, &src, &dst, &clusters));
            defs
        }
    };
    let mut server_runs: Vec<ServerRun> = Vec::new();
    let mut tools: Vec<Active> = defs
        .into_iter()
        .filter(|d| selected.contains(&d.name))
        .map(|def| {
            let (status, reason, command, version) = match &def.program {
                Ok(p) => (Status::Ok, None, display_cmd(p, &def.args), tool_version(p, def.version_args)),
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
        // Round r starts at tool r: every tool takes every position, and follows every other
        // tool, in turn (what the previous run left behind, such as a tree being deleted in
        // the background, would otherwise always land on the same tool).
        let n = tools.len();
        for i in 0..n {
            let t = &mut tools[(i + round - 1) % n];
            if t.result.status != Status::Ok {
                continue;
            }
            let Ok(program) = t.def.program.clone() else {
                continue;
            };
            util::remove_tree(&dst)?;
            util::remove_tree(&fpsync_tmp)?;
            // S3: empty the bucket (the previous run's objects and s3s-fs's
            // sidecars), then upload into a prefix no run used before.
            let prefix = if warm { format!("{}-w{round}", t.def.name) } else { format!("{}-{run}", t.def.name) };
            if let Some((srv, _)) = &server {
                srv.clear()?;
            }
            sync_all();
            let log = logs.join(if warm { format!("{}-warmup{round}.log", t.def.name) } else { format!("{}-run{run}.log", t.def.name) });
            let args = with_prefix(&t.def.args, &prefix);
            let server_cpu0 = server.as_ref().and_then(|(s, _)| s.cpu_s());
            let cluster = CLUSTER_TOOLS.iter().find(|(_, n)| *n == t.def.name).and_then(|(w, _)| clusters.iter().find(|(n, _)| n == w)).map(|(_, c)| c);
            let cluster_cpu0 = cluster.map(|c| c.cpu_seconds());
            let mut measured = timed_run_env(&helper, &program, &args, &t.def.env, t.def.env_remove, &log, run);
            // A cluster run's CPU is the submitting client's plus what etcd, the coordinator
            // and the workers used meanwhile (idle clusters cost a little too, so this errs high).
            if let (Ok(m), Some(c), Some(before)) = (measured.as_mut(), cluster, cluster_cpu0) {
                m.result.cpu_s += (c.cpu_seconds() - before).max(0.0);
            }
            let server_cpu = server.as_ref().and_then(|(s, _)| s.cpu_s()).zip(server_cpu0).map(|(b, a)| b - a);
            if let Some((srv, _)) = server.as_mut() {
                if !srv.alive() {
                    return Err(Error::run(format!("s3s-fs died during {label} of {}; log {}", t.def.name, srv.log.display())));
                }
            }
            let m = match measured {
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
                "{label} {:<18} {:>10} (tool {}, sync {}; cpu {}; rss {}{})",
                t.def.name,
                format_secs(r.wall_s),
                format_secs(r.tool_wall_s),
                format_secs(r.sync_s),
                format_secs(r.cpu_s),
                format_bytes(r.max_rss_kib * 1024),
                server_cpu.map_or(String::new(), |c| format!("; s3s-fs cpu {}", format_secs(c)))
            ));
            if !m.success {
                let how = match (r.exit_code, r.signal) {
                    (Some(c), _) => format!("exit code {c}"),
                    (_, Some(s)) => format!("killed by signal {s}"),
                    _ => "abnormal exit".into(),
                };
                let tail = log_tail(&log, 15);
                say(format!("!!! {} failed on {label} ({how}); log {}:\n{tail}", t.def.name, log.display()));
                t.result.status = Status::Failed;
                t.result.reason = Some(format!("{how} on {label}; see {}", log.display()));
            }
            // S3: every successful run is checked (object count and bytes
            // under its prefix), before its time may count: a tool that
            // "succeeds" without uploading everything must not look fast.
            if let (true, Some((srv, _))) = (m.success, &server) {
                let s = s3_sanity(expected, &srv.prefix_dir(&prefix));
                if !s.ok {
                    let msg = s.message.clone().unwrap_or_default();
                    say(format!("!!! {} on {label}: s3://{}/{prefix}: {msg}", t.def.name, s3peer::BUCKET));
                    t.result.status = Status::Failed;
                    t.result.reason = Some(format!("{label}: exit code 0 but s3://{}/{prefix} {msg}; see {}", s3peer::BUCKET, log.display()));
                    t.result.sanity = Some(s);
                    // Not recorded as a time.
                    continue;
                }
                if t.result.sanity.is_none() {
                    t.result.sanity = Some(s);
                }
                server_runs.push(ServerRun { tool: t.def.name.to_string(), run, cpu_s: server_cpu });
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
    for (workers, c) in &clusters {
        let rss: Vec<String> = c.peak_rss().iter().map(|(name, b)| format!("{name} {}", format_bytes(*b))).collect();
        say(format!("cluster of {workers}: peak RSS {}", rss.join(", ")));
    }
    drop(clusters);
    if let Some(r) = receiver {
        // Proof that ferry-traced exported: the receiver decoded its spans.
        say(format!("ferry-traced: the OTLP receiver decoded {} spans", r.spans_received()));
    }
    let server_info = server.take().map(|(srv, program)| {
        let info = server_info(&srv, &program, server_runs);
        drop(srv); // kill it and remove its root now, not after the report
        info
    });

    let results: Vec<ToolResult> = tools.into_iter().map(|t| t.result).collect();
    finish(opts, &ws, &data_root, &spec, key, &src, expected, results, server_info, started)
}

/// One run's server-side cost (S3 scenarios).
#[derive(Debug, Serialize)]
struct ServerRun {
    tool: String,
    /// 0 = warm-up.
    run: usize,
    /// s3s-fs user+sys CPU seconds during the run (including the final sync).
    cpu_s: Option<f64>,
}

/// The `s3_server` object added to an S3 scenario's JSON report.
#[derive(Debug, Serialize)]
struct ServerInfo {
    program: String,
    version: Option<String>,
    endpoint: String,
    /// Peak RSS of s3s-fs over the whole scenario.
    peak_rss_kib: Option<u64>,
    /// Median s3s-fs CPU per timed run, by tool.
    cpu_s_median: Vec<(String, f64)>,
    runs: Vec<ServerRun>,
}

fn server_info(srv: &S3Server, program: &Path, runs: Vec<ServerRun>) -> ServerInfo {
    let mut names: Vec<String> = Vec::new();
    for r in &runs {
        if !names.contains(&r.tool) {
            names.push(r.tool.clone());
        }
    }
    let cpu_s_median = names
        .into_iter()
        .filter_map(|n| {
            let v: Vec<f64> = runs.iter().filter(|r| r.tool == n && r.run > 0).filter_map(|r| r.cpu_s).collect();
            summarize(&v).map(|s| (n, s.median))
        })
        .collect();
    ServerInfo {
        program: program.display().to_string(),
        version: tool_version(program, &["--version"]),
        endpoint: srv.endpoint(),
        peak_rss_kib: srv.peak_rss_kib(),
        cpu_s_median,
        runs,
    }
}

/// Objects under an S3 prefix (files below its directory in the s3s-fs
/// root) against the source: same count, same total size.
fn s3_sanity(expected: TreeStats, prefix_dir: &Path) -> Sanity {
    let want = TreeStats { files: expected.files, bytes: expected.bytes, ..TreeStats::default() };
    let got = match tree::scan(prefix_dir) {
        // Directories are s3s-fs's rendering of key prefixes, not objects.
        Ok(st) => TreeStats { dirs: 0, ..st },
        Err(_) => TreeStats::default(),
    };
    let mut s = Sanity::compare(want, got);
    if let Some(m) = s.message.as_mut() {
        *m = m.replace("destination differs", "objects under the prefix differ");
    }
    s
}

/// How the S3 scenarios' numbers were taken (the report's `method`).
fn s3_method() -> Vec<String> {
    [
        "local → S3: the scenario starts s3s-fs on 127.0.0.1 (free port, fresh root dir under the work dir) and kills it at the end; both tools and the server share the machine's cores",
        "runs interleaved across tools in a rotated order (A B C, B C A, ...), after `warmup` untimed rounds",
        "before each run, untimed: every object and s3s-fs sidecar file of the previous run is deleted, then sync(2); each run uploads into its own fresh prefix s3://bench/<tool>-<run> (warm-ups: <tool>-w<n>)",
        "ferry: copy --no-progress --movers 8 (default verification); rclone: copy --transfers 8 --checkers 8 with an env-var S3 remote (provider Other, path style)",
        "wall_s = tool wall time + a final sync(2) (which flushes what s3s-fs wrote); tool_wall_s and sync_s split it",
        "page cache not dropped; the source is read once before the first run",
        "cpu_s = user+sys of the tool and its waited-for descendants (wait4); the server's CPU per run is reported separately under s3_server (from /proc/PID/stat)",
        "max_rss_kib = ru_maxrss from wait4 (the tool only, not the server)",
        "sanity: after every successful run, the object count and total bytes under the run's prefix must equal the source's file count and bytes; a run that fails this is reported as a failure, never as a time",
        "statistics over successful runs: median, min, max",
    ]
    .into_iter()
    .map(String::from)
    .collect()
}

/// Every selected tool marked skipped for `why`.
fn skipped_tools(selected: &[&str], why: &str) -> Vec<ToolResult> {
    selected
        .iter()
        .map(|name| ToolResult {
            name: name.to_string(),
            command: vec![],
            version: None,
            status: Status::Skipped,
            reason: Some(why.to_string()),
            runs: Vec::new(),
            wall_s: None,
            cpu_s: None,
            max_rss_kib: None,
            sanity: None,
        })
        .collect()
}

/// Summaries, comparisons, report files.
#[allow(clippy::too_many_arguments)]
fn finish(
    opts: &BenchOptions,
    ws: &Path,
    data_root: &Path,
    spec: &DatasetSpec,
    key: String,
    src: &Path,
    expected: TreeStats,
    mut results: Vec<ToolResult>,
    server: Option<ServerInfo>,
    (stamp, started_at): (String, String),
) -> Result<BenchOutcome> {
    let scenario = opts.scenario;
    for t in &mut results {
        let ok_runs: Vec<&RunResult> = t.runs.iter().filter(|r| r.exit_code == Some(0)).collect();
        let col = |f: fn(&RunResult) -> f64| summarize(&ok_runs.iter().map(|r| f(r)).collect::<Vec<_>>());
        t.wall_s = col(|r| r.wall_s);
        t.cpu_s = col(|r| r.cpu_s);
        t.max_rss_kib = col(|r| r.max_rss_kib as f64);
    }
    let comparisons = report::compare(&results);
    let ok = results.iter().all(|t| t.status != Status::Failed && t.sanity.as_ref().is_none_or(|s| s.ok));

    let report = BenchReport {
        schema: 1,
        scenario: scenario.name().to_string(),
        tiny: opts.tiny,
        started_at,
        runs: opts.runs,
        warmup: opts.warmup,
        dataset: DatasetInfo { description: spec.describe(), spec: spec.clone(), seed: opts.seed, key, src: src.display().to_string(), stats: expected },
        host: host_info(data_root),
        git: git_info(ws),
        method: if scenario.is_s3() {
            s3_method()
        } else {
            vec![
            "runs interleaved across tools in a rotated order (A B C, B C A, ...), after `warmup` untimed rounds".into(),
            "destination removed and sync(2) called, untimed, before each run".into(),
            "wall_s = tool wall time + a final sync(2); tool_wall_s and sync_s split it".into(),
            "page cache not dropped; the source is read once before the first run".into(),
            "cpu_s = user+sys of the tool and its waited-for descendants (wait4)".into(),
            "max_rss_kib = ru_maxrss from wait4: the largest single process in the tool's tree; tools are started from a fresh ~2 MiB helper process because a child inherits its parent's peak RSS".into(),
            "sanity: destination file/dir/symlink counts and total bytes vs source, after each tool's first run (warm-up included)".into(),
            "statistics over successful runs: median, min, max".into(),
        ]
        },
        tools: results,
        comparisons,
    };

    let out_dir = match &opts.out {
        Some(d) => d.clone(),
        None => ws.join("loadtests/results"),
    };
    fs::create_dir_all(&out_dir).ctx(|| at("create directory", &out_dir))?;
    let stem = format!("{}{}-{stamp}", scenario.name(), if opts.tiny { "-tiny" } else { "" });
    let json = out_dir.join(format!("{stem}.json"));
    let svg = out_dir.join(format!("{stem}.svg"));
    // The S3 server's own cost rides along as an extra top-level object
    // (the shared report types stay as they are).
    let mut value = serde_json::to_value(&report).map_err(|e| Error::run(format!("encode results: {e}")))?;
    if let (Some(info), Some(obj)) = (&server, value.as_object_mut()) {
        let v = serde_json::to_value(info).map_err(|e| Error::run(format!("encode results: {e}")))?;
        obj.insert("s3_server".into(), v);
    }
    if let Some(info) = &server {
        let med: Vec<String> = info.cpu_s_median.iter().map(|(t, c)| format!("{t} {}", format_secs(*c))).collect();
        say(format!(
            "s3s-fs CPU per timed run (median): {}; s3s-fs peak RSS {}",
            if med.is_empty() { "-".to_string() } else { med.join(", ") },
            info.peak_rss_kib.map_or("-".to_string(), |k| format_bytes(k * 1024))
        ));
    }
    let mut text = serde_json::to_string_pretty(&value).map_err(|e| Error::run(format!("encode results: {e}")))?;
    text.push('\n');
    fs::write(&json, text).ctx(|| at("write", &json))?;
    fs::write(&svg, report::render_svg(&report)).ctx(|| at("write", &svg))?;
    Ok(BenchOutcome { report, json, svg, ok })
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
        let o = ShapeOptions { files: Some(7), ..ShapeOptions::default() };
        match scenario_spec(Scenario::LocalLarge, true, &o).unwrap() {
            DatasetSpec::Large(l) => assert_eq!((l.files, l.file_size), (7, 8 << 20)),
            other => panic!("{other:?}"),
        }
        let bad = ShapeOptions { dirs: Some(3), ..ShapeOptions::default() };
        assert_eq!(scenario_spec(Scenario::LocalLarge, false, &bad).unwrap_err().exit_code(), 2);
    }

    #[test]
    fn s3_scenario_specs() {
        let none = ShapeOptions::default();
        let small = |tiny| match scenario_spec(Scenario::S3Small, tiny, &none).unwrap() {
            DatasetSpec::Small(s) => (s.files, s.dirs, s.min_size, s.max_size),
            other => panic!("{other:?}"),
        };
        assert_eq!(small(false), (10_000, 100, 4 << 10, 64 << 10));
        assert_eq!(small(true), (200, 10, 4 << 10, 64 << 10));
        let large = |tiny, o: &ShapeOptions| match scenario_spec(Scenario::S3Large, tiny, o).unwrap() {
            DatasetSpec::Large(l) => (l.files, l.file_size),
            other => panic!("{other:?}"),
        };
        assert_eq!(large(false, &none), (4, 512 << 20));
        assert_eq!(large(true, &none), (2, 40 << 20));
        // Explicit options still win over the scenario's shape.
        let o = ShapeOptions { file_size: Some(1 << 20), ..ShapeOptions::default() };
        assert_eq!(large(true, &o), (2, 1 << 20));
        // Local scenarios keep the profile defaults at full size.
        match scenario_spec(Scenario::LocalSmall, false, &none).unwrap() {
            DatasetSpec::Small(s) => assert_eq!(s, gen::SMALL_DEFAULT),
            other => panic!("{other:?}"),
        }
        for sc in [Scenario::S3Small, Scenario::S3Large] {
            assert!(sc.is_s3());
            assert_eq!(sc.tools(), &["ferry", "rclone"]);
        }
        assert!(!Scenario::LocalSmall.is_s3());
        assert_eq!(Scenario::S3Small.name(), "s3-small");
        assert_eq!(Scenario::S3Large.name(), "s3-large");
    }

    #[test]
    fn s3_commands_use_fresh_prefixes_and_same_concurrency() {
        let ferry = Ok(PathBuf::from("/bin/true"));
        let defs = s3_tool_defs(&ferry, Path::new("/data/src"), "http://127.0.0.1:9");
        let names: Vec<&str> = defs.iter().map(|d| d.name).collect();
        assert_eq!(names, ["ferry", "rclone"]);
        let args = |d: &ToolDef, prefix: &str| -> Vec<String> { with_prefix(&d.args, prefix).iter().map(|a| a.to_string_lossy().into_owned()).collect() };
        assert_eq!(
            args(&defs[0], "ferry-1"),
            ["copy", "--no-progress", "--movers", "8", "--endpoint-url", "http://127.0.0.1:9", "/data/src", "s3://bench/ferry-1"]
        );
        let r = args(&defs[1], "rclone-w1");
        assert_eq!(r.last().unwrap(), "bench:bench/rclone-w1");
        assert!(r.windows(2).any(|w| w == ["--transfers", "8"]));
        assert!(r.windows(2).any(|w| w == ["--checkers", "8"]));
        let env = |d: &ToolDef, k: &str| d.env.iter().find(|(n, _)| n == k).map(|(_, v)| v.to_string_lossy().into_owned());
        assert_eq!(env(&defs[1], "RCLONE_CONFIG_BENCH_ENDPOINT").as_deref(), Some("http://127.0.0.1:9"));
        assert_eq!(env(&defs[0], "AWS_ACCESS_KEY_ID").as_deref(), Some(s3peer::ACCESS_KEY));
        assert!(defs.iter().all(|d| d.env_remove.contains(&"AWS_CA_BUNDLE")));
    }

    #[test]
    fn s3_sanity_counts_objects_and_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("bench/ferry-1");
        fs::create_dir_all(p.join("a/b")).unwrap();
        fs::write(p.join("a/b/x"), b"12345").unwrap();
        fs::write(p.join("y"), b"678").unwrap();
        let want = TreeStats { files: 2, dirs: 5, bytes: 8, ..TreeStats::default() };
        assert!(s3_sanity(want, &p).ok);
        let s = s3_sanity(TreeStats { files: 3, ..want }, &p);
        assert!(!s.ok);
        assert!(s.message.unwrap().contains("files 2 (expected 3)"));
        // A prefix that was never written is a failure, not an empty success.
        assert!(!s3_sanity(want, &dir.path().join("bench/none")).ok);
    }
}
