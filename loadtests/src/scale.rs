//! `ferry-load scale`: how ferry prepares a very large tree (10,000,000 entries by default),
//! next to the peers' own preparation step on the same tree, in one run.
//!
//! The tree holds empty files (the `meta` profile): the work measured is per entry, not per
//! byte, and a copy of 10 million inodes would not fit next to the source on most disks. So
//! every tool runs its planning pass only:
//! - `ferry`: `ferry copy --dry-run --etcd` on a local cluster (etcd, a coordinator, N
//!   workers): the scan, the sharding into manifests through etcd, and every shard's compare
//!   against the (empty) destination, reported per file;
//! - `ferry-embedded`: the same dry run in one process, without etcd;
//! - `rsync`: `rsync -an --stats` (builds and compares its whole file list);
//! - `fpart`: `fpart -f 1000 -o /dev/null` (fpsync's partitioning pass).
//!
//! Reported per tool: wall time, entries per second, CPU, the peak RSS of the submitting
//! process and, for the cluster, of each worker and the coordinator, and the peak number of
//! keys in etcd (sampled every 250 ms), which must stay at the frontier, not grow with the
//! tree.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::bench::timed_run;
use crate::cluster::{ClusterOptions, LocalCluster};
use crate::error::{Error, Result};
use crate::gen::{DatasetSpec, Profile, ShapeOptions};
use crate::size::format_bytes;
use crate::util::say;

pub const TOOLS: [&str; 4] = ["ferry", "ferry-embedded", "rsync", "fpart"];

#[derive(Clone, Debug)]
pub struct ScaleOptions {
    pub entries: u64,
    pub files_per_dir: u64,
    pub workers: usize,
    pub tools: Vec<String>,
    pub runs: usize,
    pub bin_dir: PathBuf,
    /// The tree and the scratch space live here.
    pub data: PathBuf,
    /// Keep the generated tree for the next run (otherwise it is deleted at the end).
    pub keep: bool,
    pub out: Option<PathBuf>,
}

#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct ScaleRun {
    pub tool: String,
    pub run: usize,
    pub seconds: f64,
    pub entries_per_s: f64,
    pub cpu_s: f64,
    /// The submitting process (for `ferry`, the CLI; the workers are below).
    pub peak_rss_bytes: u64,
    pub worker_peak_rss_bytes: Vec<(String, u64)>,
    pub peak_etcd_keys: Option<usize>,
    pub exit_code: Option<i32>,
    pub note: String,
}

fn run_err(msg: impl Into<String>) -> Error {
    Error::run(msg.into())
}

fn os(s: &str) -> OsString {
    OsString::from(s)
}

pub fn run(o: &ScaleOptions) -> Result<Vec<ScaleRun>> {
    for t in &o.tools {
        if !TOOLS.contains(&t.as_str()) {
            return Err(Error::usage(format!("unknown tool {t:?} for scale (choose from: {})", TOOLS.join(", "))));
        }
    }
    let spec = DatasetSpec::resolve(Profile::Meta, &ShapeOptions { files: Some(o.entries), files_per_dir: Some(o.files_per_dir), ..Default::default() })?;
    let ds_dir = o.data.join(spec.key(0));
    std::fs::create_dir_all(&ds_dir).map_err(|e| run_err(format!("{}: {e}", ds_dir.display())))?;
    let stats = crate::bench::ensure_dataset(&spec, 0, &ds_dir, std::thread::available_parallelism().map_or(2, |n| n.get()))?;
    let src = ds_dir.join("src");
    let entries = stats.files + stats.dirs;
    say(format!("scale: {} files in {} directories ({entries} entries) at {}", stats.files, stats.dirs, src.display()));
    let dst = ds_dir.join("dst-never-written");
    let logs = ds_dir.join("logs");
    std::fs::create_dir_all(&logs).map_err(|e| run_err(e.to_string()))?;
    let helper = PathBuf::from("/proc/self/exe");
    let ferry = o.bin_dir.join("ferry");
    let mut results = Vec::new();
    for run in 1..=o.runs {
        for tool in &o.tools {
            let log = logs.join(format!("{tool}-run{run}.log"));
            let r = match tool.as_str() {
                "ferry" => run_cluster(o, &helper, &ferry, &src, &dst, &log, &ds_dir, run),
                "ferry-embedded" => measure(
                    &helper,
                    tool,
                    &ferry,
                    &[os("copy"), os("--dry-run"), os("--no-progress"), os("--json"), src.clone().into(), dst.clone().into()],
                    &log,
                    run,
                ),
                "rsync" => match crate::util::find_in_path("rsync") {
                    Some(p) => measure(
                        &helper,
                        tool,
                        &p,
                        &[os("-an"), os("--stats"), format!("{}/", src.display()).into(), format!("{}/", dst.display()).into()],
                        &log,
                        run,
                    ),
                    None => Err(run_err("rsync is not installed (apt-get install rsync)")),
                },
                "fpart" => match crate::util::find_in_path("fpart") {
                    Some(p) => measure(&helper, tool, &p, &[os("-f"), os("1000"), os("-o"), os("/dev/null"), src.clone().into()], &log, run),
                    None => Err(run_err("fpart is not installed (apt-get install fpart)")),
                },
                _ => unreachable!("checked above"),
            };
            match r {
                Ok(mut r) => {
                    r.entries_per_s = entries as f64 / r.seconds.max(1e-9);
                    let workers = r.worker_peak_rss_bytes.iter().map(|(n, b)| format!("{n} {}", format_bytes(*b))).collect::<Vec<_>>().join(", ");
                    say(format!(
                        "  run {run} {tool:<15} {:>9.1} s {:>10.0} entries/s  cpu {:>7.1} s  rss {:>10}{}{}{}",
                        r.seconds,
                        r.entries_per_s,
                        r.cpu_s,
                        format_bytes(r.peak_rss_bytes),
                        if workers.is_empty() { String::new() } else { format!("  [{workers}]") },
                        r.peak_etcd_keys.map(|k| format!("  peak etcd keys {k}")).unwrap_or_default(),
                        if r.exit_code == Some(0) { String::new() } else { format!("  FAILED (exit {:?}; log {})", r.exit_code, log.display()) }
                    ));
                    results.push(r);
                }
                Err(e) => say(format!("  run {run} {tool:<15} skipped: {e}")),
            }
        }
    }
    if let Some(out) = &o.out {
        let doc = serde_json::json!({ "entries": entries, "files": stats.files, "dirs": stats.dirs, "files_per_dir": o.files_per_dir, "workers": o.workers, "runs": results });
        std::fs::write(out, serde_json::to_string_pretty(&doc).expect("serializable")).map_err(|e| run_err(format!("{}: {e}", out.display())))?;
        let bars: Vec<crate::report::Bar> = o
            .tools
            .iter()
            .filter_map(|t| {
                let secs: Vec<f64> = results.iter().filter(|r| &r.tool == t).map(|r| r.seconds).collect();
                let s = crate::stats::summarize(&secs)?;
                let failed = results.iter().any(|r| &r.tool == t && r.exit_code != Some(0));
                Some(crate::report::Bar { name: t.clone(), median: s.median, min: s.min, max: s.max, ferry: t.starts_with("ferry"), failed })
            })
            .collect();
        let title = format!("scale — preparing {entries} entries, median seconds (lower is better)");
        let subtitle = format!("{} empty files, {} per directory; dry runs; ferry's cluster has {} workers", stats.files, o.files_per_dir, o.workers);
        let svg = out.with_extension("svg");
        std::fs::write(&svg, crate::report::render_bars(&title, &subtitle, &bars)).map_err(|e| run_err(format!("{}: {e}", svg.display())))?;
        say(format!("results: {}", out.display()));
    }
    if !o.keep {
        say(format!("scale: removing {}", ds_dir.display()));
        crate::util::remove_tree(&ds_dir)?;
    }
    Ok(results)
}

fn measure(helper: &Path, tool: &str, program: &Path, args: &[OsString], log: &Path, run: usize) -> Result<ScaleRun> {
    let m = timed_run(helper, program, args, log, run)?;
    Ok(ScaleRun {
        tool: tool.into(),
        run,
        seconds: m.result.tool_wall_s,
        cpu_s: m.result.cpu_s,
        peak_rss_bytes: m.result.max_rss_kib * 1024,
        exit_code: m.result.exit_code,
        note: "dry run".into(),
        ..Default::default()
    })
}

/// A fresh cluster per run, so the workers' peak RSS belongs to this run alone.
#[allow(clippy::too_many_arguments)]
fn run_cluster(o: &ScaleOptions, helper: &Path, ferry: &Path, src: &Path, dst: &Path, log: &Path, ds_dir: &Path, run: usize) -> Result<ScaleRun> {
    let cluster = LocalCluster::start(ClusterOptions {
        workers: o.workers,
        netns: false,
        movers: 8,
        links: false,
        lease_ttl_s: 10,
        bin_dir: o.bin_dir.clone(),
        work: ds_dir.join(format!("cluster-run{run}")),
    })?;
    let peak = Arc::new(AtomicUsize::new(0));
    let running = Arc::new(AtomicBool::new(true));
    let sampler = {
        let (peak, running) = (peak.clone(), running.clone());
        let mut counter = cluster.key_counter()?;
        std::thread::spawn(move || {
            while running.load(Ordering::Relaxed) {
                if let Some(n) = counter.count() {
                    peak.fetch_max(n, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(250));
            }
        })
    };
    let cpu0 = cluster.cpu_seconds();
    let args = [os("copy"), os("--dry-run"), os("--no-progress"), os("--json"), os("--etcd"), os(cluster.endpoint()), src.into(), dst.into()];
    let measured = measure(helper, "ferry", ferry, &args, log, run);
    running.store(false, Ordering::Relaxed);
    let _ = sampler.join();
    let mut r = measured?;
    r.cpu_s += (cluster.cpu_seconds() - cpu0).max(0.0);
    r.worker_peak_rss_bytes = cluster.peak_rss();
    r.peak_etcd_keys = Some(peak.load(Ordering::Relaxed));
    r.note = format!("dry run on a cluster of {} workers; CPU includes etcd, the coordinator and the workers", o.workers);
    Ok(r)
}
