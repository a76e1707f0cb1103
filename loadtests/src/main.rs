//! `ferry-load`: dataset generator and benchmark runner for ferry.
//!
//!   ferry-load gen PROFILE DIR --seed N [--files N] [--dirs N] ...
//!   ferry-load bench SCENARIO [--runs N] [--out DIR] [--ferry PATH] [--data DIR] [--tiny]
//!   ferry-load digest DIR
//!   ferry-load wan up|selftest|cleanup [--delay 25ms --loss 0.5% --rate 1gbit ...]
//!   ferry-load store-bench [--shards N] [--claimers N]
//!   ferry-load chaos [--workers 3 --seed N --faults kill-worker,cut-link,... | --schedule ...] [--tiny]
//!   ferry-load scale [--entries 10000000 --workers 2 --tools ferry,ferry-embedded,rsync,fpart]
//!   ferry-load synth [--files 100000000 --per-dir 1000 --fanout 10 --size 0 --workers 2]
//!   ferry-load link-bench [--large-files N --large-size SIZE --small-files N] [--wan-delay 25ms --wan-loss 0.5% --wan-rate 500mbit] [--tools ...]
//!
//! Exit codes: 0 success, 1 failure (including a benchmarked tool failing or
//! producing a wrong copy), 2 usage error.

use clap::{Args, Parser, Subcommand};
use ferry_loadtests::bench::{self, BenchOptions, Scenario};
use ferry_loadtests::gen::{self, DatasetSpec, GenConfig, Profile, ShapeOptions};
use ferry_loadtests::size::{format_bytes, format_secs, parse_size};
use ferry_loadtests::util::say;
use ferry_loadtests::{report, tree, Error, Result};
use std::path::PathBuf;

#[derive(Parser)]
#[command(name = "ferry-load", version, about = "Dataset generator and benchmark runner for ferry")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Generate a deterministic dataset (same seed => byte-identical tree).
    Gen(GenArgs),
    /// Benchmark ferry against cp, rsync, rclone and fpsync.
    Bench(BenchArgs),
    /// Print entry counts and a content digest of a tree (compare two
    /// generations, or a source with its copy).
    Digest {
        /// Directory to digest.
        dir: PathBuf,
    },
    /// User-space WAN link emulator between two network namespaces.
    Wan(ferry_loadtests::wan::cli::WanArgs),
    /// Claims plus completions per second through the Store (MemStore and a real etcd).
    StoreBench {
        /// Shards to queue and drain.
        #[arg(long, default_value_t = 2000)]
        shards: usize,
        /// Concurrent claimers.
        #[arg(long, default_value_t = 16)]
        claimers: usize,
    },
    /// ferry's QUIC agent link against rsync (daemon, ssh) and one TLS-over-TCP stream, on
    /// loopback or through the WAN emulator (needs root, etcd, and the release binaries).
    LinkBench(LinkBenchArgs),
    /// ferry's user-space NFSv3 client against libnfs's nfs-cp (driven by xargs -P), both
    /// directions, small files, on a private nfs-ganesha (needs root and nfs-ganesha).
    NfsBench(NfsBenchArgs),
    /// Fault injection during a cluster copy (kill workers, cut links, restart the
    /// coordinator and etcd), then an independent check that nothing was lost.
    Chaos(ChaosArgs),
    /// Preparing a very large tree (10,000,000 entries by default): ferry's dry run on a
    /// cluster and embedded, rsync -n and fpart, with entries/s, peak RSS and peak etcd keys.
    Scale(ScaleArgs),
    /// The whole pipeline on a generated tree into a destination that keeps nothing
    /// (synthetic:// to null://, scale tests only), on a local cluster.
    Synth(SynthArgs),
    /// (used by link-bench) receive one TLS stream of files into DIR.
    #[command(hide = true)]
    TlsSink {
        #[arg(long)]
        listen: String,
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        tls: PathBuf,
    },
    /// (used by link-bench) send DIR's files over one TLS stream.
    #[command(hide = true)]
    TlsSend {
        #[arg(long)]
        connect: String,
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        tls: PathBuf,
    },
}

/// Dataset shape; every option defaults per profile.
#[derive(Args, Clone, Default)]
struct ShapeArgs {
    /// Number of files (small: 50000, large: 4, mixed: 10000 small ones,
    /// meta: 100000).
    #[arg(long)]
    files: Option<u64>,
    /// Leaf directories the small files are spread over (nested two levels).
    #[arg(long)]
    dirs: Option<u64>,
    /// Smallest small-file size, e.g. 0, 4K (sizes are uniform in min..=max).
    #[arg(long, value_parser = parse_size)]
    min_size: Option<u64>,
    /// Largest small-file size, e.g. 64KiB.
    #[arg(long, value_parser = parse_size)]
    max_size: Option<u64>,
    /// Size of each large file, e.g. 512MiB.
    #[arg(long, value_parser = parse_size)]
    file_size: Option<u64>,
    /// Number of large files in the mixed profile (default 2).
    #[arg(long)]
    large_files: Option<u64>,
    /// Files per directory in the meta profile (default 1000).
    #[arg(long)]
    files_per_dir: Option<u64>,
}

impl From<ShapeArgs> for ShapeOptions {
    fn from(a: ShapeArgs) -> Self {
        ShapeOptions {
            files: a.files,
            dirs: a.dirs,
            min_size: a.min_size,
            max_size: a.max_size,
            file_size: a.file_size,
            large_files: a.large_files,
            files_per_dir: a.files_per_dir,
        }
    }
}

#[derive(Args)]
struct GenArgs {
    /// Dataset profile.
    #[arg(value_enum)]
    profile: Profile,
    /// Target directory (created; must be absent or empty).
    dir: PathBuf,
    /// Seed: the whole tree is a function of profile, options and seed.
    #[arg(long)]
    seed: u64,
    #[command(flatten)]
    shape: ShapeArgs,
    /// Writer threads (default: number of cores).
    #[arg(long)]
    threads: Option<usize>,
    /// No progress output.
    #[arg(long, short)]
    quiet: bool,
}

/// Every scenario of the kit. The first five run through the interleaving runner of
/// `bench.rs`; the others run the same tools through `link-bench` and `scale` with the
/// issue's presets, so one command names every scenario.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum BenchScenario {
    LocalSmall,
    LocalLarge,
    S3Small,
    S3Large,
    /// Embedded ferry and clusters of 1, 2 and 4 workers against fpsync -n 2 and -n 4.
    Cluster,
    /// Agent link between two namespaces on a veth pair: ferry, one TLS stream, rsync daemon
    /// and over ssh; 2 x 512 MiB + 2,000 small files.
    Lan,
    /// 50 ms RTT, 0.5 % loss, 1 Gbit/s through the WAN emulator: ferry against rsync on TCP
    /// bbr and cubic; 64 MiB + 1,000 small files.
    Wan50,
    /// 150 ms RTT, 1 % loss, 1 Gbit/s: the same tools; 16 MiB + 300 small files.
    Wan150,
    /// Preparing a 10,000,000-entry tree (see `ferry-load scale`).
    Scale,
}

#[derive(Args)]
struct BenchArgs {
    /// Scenario to run.
    #[arg(value_enum)]
    scenario: BenchScenario,
    /// Timed runs per tool [default: 5; lan, wan50, wan150 and scale: 1].
    #[arg(long)]
    runs: Option<usize>,
    /// Untimed warm-up rounds of every tool before the timed runs.
    #[arg(long, default_value_t = 1)]
    warmup: usize,
    /// Results directory [default: loadtests/results].
    #[arg(long)]
    out: Option<PathBuf>,
    /// ferry binary [default: $FERRY_BIN, else target/release/ferry].
    #[arg(long)]
    ferry: Option<PathBuf>,
    /// An earlier ferry binary to run interleaved with --ferry as ferry-baseline (local
    /// scenarios): a before/after comparison from one run.
    #[arg(long)]
    baseline: Option<PathBuf>,
    /// Also run ferry-traced (local scenarios): ferry exporting traces over OTLP/HTTP to a real
    /// receiver, interleaved with ferry (needs PyPI's opentelemetry-proto).
    #[arg(long)]
    traces: bool,
    /// Work directory for the dataset and copies; put it on the filesystem
    /// to measure [default: target/ferry-load].
    #[arg(long)]
    data: Option<PathBuf>,
    /// CI-sized dataset: local-small 500 files in 10 dirs, local-large 4 x 8 MiB, s3-small 200
    /// files, s3-large 2 x 40 MiB.
    #[arg(long)]
    tiny: bool,
    /// Dataset seed.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Only these tools, comma-separated (e.g. ferry,rsync).
    #[arg(long, value_delimiter = ',')]
    tools: Option<Vec<String>>,
    /// Dataset generation threads (default: number of cores).
    #[arg(long)]
    threads: Option<usize>,
    #[command(flatten)]
    shape: ShapeArgs,
}

fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

fn threads(t: Option<usize>) -> Result<usize> {
    match t {
        Some(0) => Err(Error::usage("--threads must be at least 1")),
        Some(n) => Ok(n),
        None => Ok(default_threads()),
    }
}

fn cmd_gen(a: GenArgs) -> Result<i32> {
    let spec = DatasetSpec::resolve(a.profile, &a.shape.into())?;
    let cfg = GenConfig { threads: threads(a.threads)?, progress: !a.quiet, sync: false };
    if !a.quiet {
        eprintln!("generating {} (seed {}) into {}", spec.describe(), a.seed, a.dir.display());
    }
    let s = gen::generate(&spec, a.seed, &a.dir, &cfg)?;
    for w in &s.warnings {
        eprintln!("warning: {w}");
    }
    say(format!(
        "{}: {} files, {} dirs, {} symlinks, {} special, {} in {} ({}/s)",
        a.dir.display(),
        s.stats.files,
        s.stats.dirs,
        s.stats.symlinks,
        s.stats.other,
        format_bytes(s.stats.bytes),
        format_secs(s.elapsed_s),
        format_bytes((s.stats.bytes as f64 / s.elapsed_s.max(1e-9)) as u64)
    ));
    Ok(0)
}

fn cmd_bench(a: BenchArgs) -> Result<i32> {
    let scenario = match a.scenario {
        BenchScenario::LocalSmall => Scenario::LocalSmall,
        BenchScenario::LocalLarge => Scenario::LocalLarge,
        BenchScenario::S3Small => Scenario::S3Small,
        BenchScenario::S3Large => Scenario::S3Large,
        BenchScenario::Cluster => Scenario::Cluster,
        other => return bench_preset(other, a),
    };
    let opts = BenchOptions {
        scenario,
        runs: a.runs.unwrap_or(5),
        warmup: a.warmup,
        out: a.out,
        ferry: a.ferry,
        data: a.data,
        tiny: a.tiny,
        shape: a.shape.into(),
        seed: a.seed,
        tools: a.tools,
        threads: threads(a.threads)?,
        helper: None,
        baseline: a.baseline,
        traces: a.traces,
    };
    let o = bench::run_bench(&opts)?;
    say("");
    say(report::render_table(&o.report));
    say(format!("results: {}", o.json.display()));
    say(format!("chart:   {}", o.svg.display()));
    if !o.ok {
        eprintln!("ferry-load: a tool failed or produced a copy that differs from the source (see above)");
        return Ok(1);
    }
    Ok(0)
}

/// The link and scale scenarios under `bench`, with the presets BENCHMARKS.md reports.
fn bench_preset(scenario: BenchScenario, a: BenchArgs) -> Result<i32> {
    use std::time::Duration;
    let ws = ferry_loadtests::util::workspace_root();
    let bin_dir = match &a.ferry {
        Some(f) => f.parent().map(PathBuf::from).unwrap_or_default(),
        None => ferry_loadtests::util::target_dir(&ws).join("release"),
    };
    let out_dir = a.out.clone().unwrap_or_else(|| ws.join("loadtests/results"));
    std::fs::create_dir_all(&out_dir).map_err(|e| Error::run(format!("{}: {e}", out_dir.display())))?;
    let name = match scenario {
        BenchScenario::Lan => "lan",
        BenchScenario::Wan50 => "wan50",
        BenchScenario::Wan150 => "wan150",
        _ => "scale",
    };
    let out = out_dir.join(format!("{name}{}-{}.json", if a.tiny { "-tiny" } else { "" }, ferry_loadtests::util::utc_timestamp().0));
    let runs = a.runs.unwrap_or(1).max(1);
    let data = a.data.clone().unwrap_or_else(|| PathBuf::from("/var/tmp/ferry-load"));
    if scenario == BenchScenario::Scale {
        let o = ferry_loadtests::scale::ScaleOptions {
            entries: a.shape.files.unwrap_or(if a.tiny { 20_000 } else { 10_000_000 }),
            files_per_dir: a.shape.files_per_dir.unwrap_or(1000),
            workers: 2,
            tools: a.tools.unwrap_or_else(|| ferry_loadtests::scale::TOOLS.iter().map(|t| t.to_string()).collect()),
            runs,
            bin_dir,
            data: data.join("scale"),
            keep: false,
            out: Some(out),
        };
        let results = ferry_loadtests::scale::run(&o)?;
        return Ok(if results.iter().all(|r| r.exit_code == Some(0)) { 0 } else { 1 });
    }
    // (large files, large size, small files, WAN (one-way delay, loss), tools, tiny tools)
    let (large, size, small, wan, tools, tiny_tools): (u64, u64, u64, Option<(u64, f64)>, &str, &str) = match scenario {
        BenchScenario::Lan => (2, 512 << 20, 2000, None, "tls-tcp,ferry,rsync-daemon,rsync-ssh", "ferry,tls-tcp,rsync-daemon"),
        BenchScenario::Wan50 => (1, 64 << 20, 1000, Some((25, 0.005)), "ferry,rsync-daemon@bbr,rsync-daemon@cubic", "ferry,rsync-daemon@bbr"),
        _ => (1, 16 << 20, 300, Some((75, 0.01)), "ferry,rsync-daemon@bbr,rsync-daemon@cubic", "ferry"),
    };
    let (large, size, small) = if a.tiny { (1, 8 << 20, 50) } else { (large, size, small) };
    let tools = a.tools.unwrap_or_else(|| (if a.tiny { tiny_tools } else { tools }).split(',').map(str::to_string).collect());
    let o = ferry_loadtests::linkbench::LinkBenchOptions {
        data: data.join(format!("link-{large}x{size}-{small}")),
        work: data.join("link-work"),
        large_files: large,
        large_size: size,
        small_files: small,
        tools,
        wan: wan.map(|(ms, loss)| ferry_loadtests::wan::WanConfig { delay: Duration::from_millis(ms), loss, rate_bps: 1_000_000_000, ..Default::default() }),
        lan: scenario == BenchScenario::Lan,
        lan_mtu: 1500,
        bin_dir,
        // `--baseline DIR/ferry`: that build's ferry-worker sits next to it.
        baseline_bin_dir: a.baseline.as_ref().and_then(|b| b.parent()).map(std::path::Path::to_path_buf),
        out: Some(out),
        repeat: runs as u32,
    };
    let results = ferry_loadtests::linkbench::run(&o)?;
    Ok(if results.len() == o.tools.len() * o.repeat as usize { 0 } else { 1 })
}

fn cmd_digest(dir: PathBuf) -> Result<i32> {
    if !dir.is_dir() {
        return Err(Error::usage(format!("{} is not a directory", dir.display())));
    }
    let (st, h) = tree::digest(&dir)?;
    say(format!("{:016x}  {} files, {} dirs, {} symlinks, {} special, {}", h, st.files, st.dirs, st.symlinks, st.other, format_bytes(st.bytes)));
    Ok(0)
}

fn cmd_store_bench(shards: usize, claimers: usize) -> Result<i32> {
    let results = ferry_loadtests::storebench::run(shards, claimers).map_err(Error::Run)?;
    println!("{:<10} {:>7} {:>9} {:>9} {:>14}", "store", "shards", "claimers", "seconds", "claims+completions/s");
    for r in &results {
        println!("{:<10} {:>7} {:>9} {:>9.2} {:>14.0}", r.store, r.shards, r.claimers, r.elapsed.as_secs_f64(), r.ops_per_sec());
    }
    Ok(0)
}

#[derive(Args)]
struct LinkBenchArgs {
    /// Source data directory (generated once, reused while its shape matches).
    #[arg(long, default_value = "/var/tmp/ferry-linkbench/src")]
    data: PathBuf,
    /// Scratch directory: destination, certificates, logs, etcd.
    #[arg(long, default_value = "/var/tmp/ferry-linkbench/work")]
    work: PathBuf,
    #[arg(long, default_value_t = 4)]
    large_files: u64,
    #[arg(long, default_value = "1GiB", value_parser = parse_size)]
    large_size: u64,
    #[arg(long, default_value_t = 0)]
    small_files: u64,
    /// Tools in order, comma-separated: ferry[-variant[+variant]], rsync-daemon, rsync-ssh,
    /// tls-tcp; `@cubic`/`@bbr` sets TCP congestion control for that run. Variants: cubic,
    /// newreno, mtuN (path MTU discovery no higher than N, e.g. mtu1452 for Ethernet, mtu8972
    /// for jumbo frames), nogso, nogro, 2conn, nosync, compress.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "tls-tcp,ferry,ferry-mtu1452,ferry-mtu8972,ferry-nogso,ferry-nogro,ferry-2conn,ferry-nosync,rsync-daemon,rsync-ssh"
    )]
    tools: Vec<String>,
    /// One-way delay of the emulated WAN (RTT is twice this); without it, loopback.
    #[arg(long, value_parser = ferry_loadtests::wan::parse_duration)]
    wan_delay: Option<std::time::Duration>,
    #[arg(long, value_parser = ferry_loadtests::wan::parse_loss, default_value = "0")]
    wan_loss: f64,
    /// Run the two sides in two network namespaces on a veth pair (a LAN between two hosts)
    /// instead of on loopback.
    #[arg(long)]
    lan: bool,
    /// MTU of the LAN pair: 1500 (Ethernet) or 9000 (jumbo frames).
    #[arg(long, default_value_t = 1500, value_parser = clap::value_parser!(u32).range(1280..=65535))]
    lan_mtu: u32,
    #[arg(long, value_parser = ferry_loadtests::wan::parse_rate, default_value = "500mbit")]
    wan_rate: u64,
    /// Directory with the release `ferry` and `ferry-worker` binaries.
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Directory with an earlier build's `ferry` and `ferry-worker`, run as the
    /// `ferry-baseline[-variant]` tools (own etcd and coordinator) for a before/after
    /// comparison in one interleaved run.
    #[arg(long)]
    baseline_bin_dir: Option<PathBuf>,
    /// Write the results as JSON here.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Rounds: every tool runs once per round, in a rotated order (A/B interleaving, so drift
    /// in the machine's state does not favour one tool); medians are reported.
    #[arg(long, default_value_t = 1)]
    repeat: u32,
}

fn cmd_link_bench(a: LinkBenchArgs) -> Result<i32> {
    let ws = ferry_loadtests::util::workspace_root();
    let bin_dir = a.bin_dir.unwrap_or_else(|| ferry_loadtests::util::target_dir(&ws).join("release"));
    let wan = a.wan_delay.map(|delay| ferry_loadtests::wan::WanConfig { delay, loss: a.wan_loss, rate_bps: a.wan_rate, ..Default::default() });
    let o = ferry_loadtests::linkbench::LinkBenchOptions {
        data: a.data,
        work: a.work,
        large_files: a.large_files,
        large_size: a.large_size,
        small_files: a.small_files,
        tools: a.tools,
        wan,
        lan: a.lan,
        lan_mtu: a.lan_mtu,
        bin_dir,
        baseline_bin_dir: a.baseline_bin_dir,
        out: a.out,
        repeat: a.repeat.max(1),
    };
    let runs = ferry_loadtests::linkbench::run(&o)?;
    Ok(if runs.len() == o.tools.len() * o.repeat as usize { 0 } else { 1 })
}

#[derive(Args)]
struct NfsBenchArgs {
    /// Source data directory (generated when missing: small files of 0-64 KiB).
    #[arg(long, default_value = "/var/tmp/ferry-nfsbench/src")]
    data: PathBuf,
    #[arg(long, default_value_t = 20_000)]
    files: u64,
    #[arg(long, default_value_t = 200)]
    dirs: u64,
    /// Scratch directory on the same disk: the server's export and the local destinations.
    #[arg(long, default_value = "/var/tmp/ferry-nfsbench/work")]
    work: PathBuf,
    /// Tools in order, comma-separated: ferry-to-nfs, ferry-from-nfs (NFSv3), ferry41-to-nfs,
    /// ferry41-from-nfs (NFSv4.1), nfs-cp-to-nfs-pN, nfs-cp-from-nfs-pN (N nfs-cp processes
    /// at a time).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "ferry-to-nfs,ferry41-to-nfs,nfs-cp-to-nfs-p8,nfs-cp-to-nfs-p32,ferry-from-nfs,ferry41-from-nfs,nfs-cp-from-nfs-p8,nfs-cp-from-nfs-p32"
    )]
    tools: Vec<String>,
    /// Directory of the release binaries (default: the workspace's target/release).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    #[arg(long, default_value_t = 3)]
    repeat: u32,
    /// Write the runs and medians as JSON here.
    #[arg(long)]
    out: Option<PathBuf>,
}

fn cmd_nfs_bench(a: NfsBenchArgs) -> Result<i32> {
    let ws = ferry_loadtests::util::workspace_root();
    let o = ferry_loadtests::nfsbench::NfsBenchOptions {
        data: a.data,
        files: a.files,
        dirs: a.dirs,
        work: a.work,
        bin_dir: a.bin_dir.unwrap_or_else(|| ferry_loadtests::util::target_dir(&ws).join("release")),
        tools: a.tools,
        repeat: a.repeat.max(1),
        out: a.out,
    };
    let runs = ferry_loadtests::nfsbench::run(&o)?;
    Ok(if runs.len() == o.tools.len() * o.repeat as usize { 0 } else { 1 })
}

#[derive(Args)]
struct ScaleArgs {
    /// Files in the tree (empty files; directories come on top).
    #[arg(long, default_value_t = 10_000_000)]
    entries: u64,
    #[arg(long, default_value_t = 1000)]
    files_per_dir: u64,
    /// Workers of ferry's cluster.
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Tools, comma-separated: ferry, ferry-embedded, rsync, fpart.
    #[arg(long, value_delimiter = ',', default_value = "ferry,ferry-embedded,rsync,fpart")]
    tools: Vec<String>,
    /// Rounds of every tool (interleaved).
    #[arg(long, default_value_t = 1)]
    runs: usize,
    /// Directory with the release `ferry` and `ferry-worker` binaries.
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Where the tree is generated (needs one free inode per entry).
    #[arg(long, default_value = "/var/tmp/ferry-scale")]
    data: PathBuf,
    /// Keep the tree for the next run instead of deleting it.
    #[arg(long)]
    keep: bool,
    /// Write the results as JSON here.
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Args)]
struct SynthArgs {
    /// Files in the generated tree.
    #[arg(long, default_value_t = 100_000_000)]
    files: u64,
    /// Files per directory.
    #[arg(long, default_value_t = 1000)]
    per_dir: u64,
    /// Subdirectories per directory.
    #[arg(long, default_value_t = 10)]
    fanout: u64,
    /// File size in bytes, or a range MIN-MAX.
    #[arg(long, default_value = "0")]
    size: String,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Workers of ferry's cluster.
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Movers per worker.
    #[arg(long, default_value_t = 8)]
    movers: usize,
    /// Directory with the release `ferry` and `ferry-worker` binaries.
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Scratch space for etcd and the logs.
    #[arg(long, default_value = "/var/tmp/ferry-synth")]
    work: PathBuf,
    /// Write the results as JSON here (and the memory chart next to it, as SVG).
    #[arg(long)]
    out: Option<PathBuf>,
}

fn cmd_synth(a: SynthArgs) -> Result<i32> {
    let ws = ferry_loadtests::util::workspace_root();
    let bin_dir = a.bin_dir.unwrap_or_else(|| ferry_loadtests::util::target_dir(&ws).join("release"));
    let o = ferry_loadtests::synth::SynthOptions {
        source: format!("synthetic://files={}&per-dir={}&fanout={}&size={}&seed={}", a.files, a.per_dir, a.fanout, a.size, a.seed),
        workers: a.workers,
        movers: a.movers,
        bin_dir,
        work: a.work,
        out: a.out,
    };
    let run = ferry_loadtests::synth::run(&o)?;
    Ok(if ferry_loadtests::synth::passed(&run) { 0 } else { 1 })
}

fn cmd_scale(a: ScaleArgs) -> Result<i32> {
    if a.runs == 0 || a.entries == 0 || a.files_per_dir == 0 || a.workers == 0 {
        return Err(Error::usage("--runs, --entries, --files-per-dir and --workers must be at least 1"));
    }
    let ws = ferry_loadtests::util::workspace_root();
    let bin_dir = a.bin_dir.unwrap_or_else(|| ferry_loadtests::util::target_dir(&ws).join("release"));
    let o = ferry_loadtests::scale::ScaleOptions {
        entries: a.entries,
        files_per_dir: a.files_per_dir,
        workers: a.workers,
        tools: a.tools,
        runs: a.runs,
        bin_dir,
        data: a.data,
        keep: a.keep,
        out: a.out,
    };
    let runs = ferry_loadtests::scale::run(&o)?;
    Ok(if runs.iter().all(|r| r.exit_code == Some(0)) { 0 } else { 1 })
}

#[derive(Args)]
struct ChaosArgs {
    /// Workers; each runs in its own network namespace.
    #[arg(long, default_value_t = 3)]
    workers: usize,
    /// Seed of the fault plan and of the dataset: a run is reproduced by its seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Fault kinds to draw from, comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "kill-worker,cut-link,restart-coordinator,restart-etcd,isolate-worker,stop-etcd,kill-coordinator-and-worker"
    )]
    faults: Vec<String>,
    /// Faults to inject (every kind at least once when this allows) [default: 8, --tiny 4].
    #[arg(long)]
    count: Option<usize>,
    /// The faults fall between 10 % and 90 % of this window from the start of the copy; the
    /// link rate is set so the copy takes about this long [default: 60s, --tiny 24s].
    #[arg(long, value_parser = ferry_loadtests::wan::parse_duration)]
    window: Option<std::time::Duration>,
    /// Faults by hand instead of from the seed: AT:KIND[:WORKER][:DOWN],... e.g.
    /// 5s:kill-worker:2:3s,12s:cut-link:1:10s,20s:restart-etcd:3s,25s:restart-coordinator.
    #[arg(long)]
    schedule: Option<String>,
    /// Run the workers on the host's network (no root needed; cut-link is then unavailable).
    #[arg(long)]
    no_netns: bool,
    /// Copy without agent-to-agent links (every worker reads and writes directly).
    #[arg(long)]
    no_links: bool,
    /// Rate per agent that moves data, e.g. 20M (bytes/s) [default: sized to the window].
    #[arg(long, value_parser = ferry_loadtests::wan::parse_rate)]
    bwlimit: Option<u64>,
    /// CI-sized: 400 small files and one 24 MiB file, 4 faults in a 24 s window.
    #[arg(long)]
    tiny: bool,
    #[command(flatten)]
    shape: ShapeArgs,
    /// Where the generated source tree is kept (reused while its shape and seed match).
    #[arg(long, default_value = "/var/tmp/ferry-chaos/data")]
    data: PathBuf,
    /// Scratch: destination, logs, report, etcd (emptied at the start).
    #[arg(long, default_value = "/var/tmp/ferry-chaos/work")]
    work: PathBuf,
    /// Directory with the release `ferry` and `ferry-worker` binaries.
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// The copy must end within this after the start, or it counts as hung.
    #[arg(long, default_value = "600s", value_parser = ferry_loadtests::wan::parse_duration)]
    timeout: std::time::Duration,
    /// How long a worker's lease lives (seconds): a killed worker's shards return after it.
    #[arg(long, default_value_t = 10)]
    lease_ttl: u64,
    /// Write the outcome as JSON here.
    #[arg(long)]
    out: Option<PathBuf>,
}

fn cmd_chaos(a: ChaosArgs) -> Result<i32> {
    use ferry_loadtests::chaos::{self, FaultKind};
    let ws = ferry_loadtests::util::workspace_root();
    let bin_dir = a.bin_dir.unwrap_or_else(|| ferry_loadtests::util::target_dir(&ws).join("release"));
    let dataset = chaos::default_dataset(a.tiny, &a.shape.into())?;
    let window = a.window.unwrap_or(std::time::Duration::from_secs(if a.tiny { 24 } else { 60 }));
    let kinds = a.faults.iter().map(|k| FaultKind::parse(k)).collect::<Result<Vec<_>>>()?;
    let netns = !a.no_netns;
    let kinds: Vec<FaultKind> = if netns { kinds } else { kinds.into_iter().filter(|k| !k.needs_netns()).collect() };
    let faults = match &a.schedule {
        Some(s) => chaos::parse_schedule(s, a.workers)?,
        None => chaos::plan(a.seed, &kinds, a.count.unwrap_or(if a.tiny { 4 } else { 8 }), window, a.workers),
    };
    let links = !a.no_links;
    if links && a.workers < 2 {
        return Err(Error::usage("links need at least 2 workers (one reads, one writes); use --workers 2 or --no-links"));
    }
    // Every agent that moves data gets this rate: the readers over links, every worker without.
    let movers = if links { a.workers.div_ceil(2) } else { a.workers } as u64;
    let bwlimit = a.bwlimit.or_else(|| Some((dataset.max_bytes() / window.as_secs().max(1) / movers).max(1 << 20)));
    let o = chaos::ChaosOptions {
        workers: a.workers,
        seed: a.seed,
        faults,
        netns,
        links,
        bwlimit,
        dataset,
        data: a.data,
        work: a.work,
        bin_dir,
        timeout: a.timeout,
        out: a.out,
        lease_ttl_s: a.lease_ttl,
    };
    let outcome = chaos::run(&o)?;
    Ok(if outcome.passed() { 0 } else { 1 })
}

fn main() {
    // The bench runner re-executes this binary as a small measuring helper
    // (see `bench::measure_main`); intercept that before clap so the helper
    // stays tiny and out of `--help`.
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args.get(1).is_some_and(|a| a == bench::MEASURE_ARG) {
        std::process::exit(bench::measure_main(&args[2..]));
    }
    let cli = Cli::parse();
    let r = match cli.cmd {
        Cmd::Gen(a) => cmd_gen(a),
        Cmd::Bench(a) => cmd_bench(a),
        Cmd::Digest { dir } => cmd_digest(dir),
        Cmd::Wan(a) => ferry_loadtests::wan::cli::run(a),
        Cmd::StoreBench { shards, claimers } => cmd_store_bench(shards, claimers),
        Cmd::LinkBench(a) => cmd_link_bench(a),
        Cmd::NfsBench(a) => cmd_nfs_bench(a),
        Cmd::Chaos(a) => cmd_chaos(a),
        Cmd::Scale(a) => cmd_scale(a),
        Cmd::Synth(a) => cmd_synth(a),
        Cmd::TlsSink { listen, dir, tls } => ferry_loadtests::linkbench::tls_sink(&listen, &dir, &tls).map(|_| 0),
        Cmd::TlsSend { connect, dir, tls } => ferry_loadtests::linkbench::tls_send(&connect, &dir, &tls).map(|_| 0),
    };
    match r {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("ferry-load: {e}");
            std::process::exit(e.exit_code());
        }
    }
}
