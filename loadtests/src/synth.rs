//! `ferry-load synth`: ferry's whole pipeline (scan pages, sharding through etcd, claims,
//! transfer, commit and directory metadata) on a generated tree far larger than this disk
//! could hold, into a destination that checks every byte's CRC32C and keeps nothing.
//!
//! The source is `synthetic://` and the destination `null://` (worker/src/location/synthetic.rs,
//! for scale tests only): no file system is behind either, so what is measured is ferry and
//! etcd. Every 500 ms the kit samples the keys in etcd, the size of etcd's database file and the
//! resident memory of every process, and charts memory over time: it must stay flat however many
//! entries pass.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferry_worker::location::synthetic::SynthTree;

use crate::bench::timed_run;
use crate::cluster::{ClusterOptions, LocalCluster};
use crate::error::{Error, Result};
use crate::size::format_bytes;
use crate::util::say;

#[derive(Clone, Debug)]
pub struct SynthOptions {
    /// The `synthetic://` URI of the tree.
    pub source: String,
    pub workers: usize,
    pub movers: usize,
    pub bin_dir: PathBuf,
    pub work: PathBuf,
    pub out: Option<PathBuf>,
}

/// One sample of the run.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Sample {
    pub t_s: f64,
    pub keys: Option<usize>,
    pub db_bytes: u64,
    /// Resident memory (`VmRSS`) of each process, by name.
    pub rss: Vec<(String, u64)>,
    /// CPU seconds each process used so far.
    pub cpu_s: Vec<(String, f64)>,
}

#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct SynthRun {
    pub source: String,
    pub entries: u64,
    pub files: u64,
    pub dirs: u64,
    pub workers: usize,
    pub movers: usize,
    pub seconds: f64,
    pub entries_per_s: f64,
    /// CPU of every process: the CLI, etcd, the coordinator and the workers.
    pub cpu_s: f64,
    pub cli_peak_rss_bytes: u64,
    /// `VmHWM` of each cluster process at the end.
    pub peak_rss_bytes: Vec<(String, u64)>,
    pub peak_keys: usize,
    pub peak_db_bytes: u64,
    pub exit_code: Option<i32>,
    /// Entries ferry reported transferred, and failed.
    pub transferred: u64,
    pub failed: u64,
    pub status: String,
    pub samples: Vec<Sample>,
}

fn run_err(msg: impl Into<String>) -> Error {
    Error::run(msg.into())
}

/// The size of etcd's database file (its backend, which compaction does not shrink).
fn db_bytes(data_dir: &Path) -> u64 {
    std::fs::metadata(data_dir.join("member/snap/db")).map(|m| m.len()).unwrap_or(0)
}

pub fn run(o: &SynthOptions) -> Result<SynthRun> {
    let tree = SynthTree::parse(&o.source).map_err(|e| Error::usage(e.message))?;
    let (files, dirs, entries) = (tree.files, tree.dirs(), tree.entries());
    say(format!("synth: {files} files in {dirs} directories ({entries} entries) from {}", o.source));
    crate::util::remove_tree(&o.work)?;
    std::fs::create_dir_all(&o.work).map_err(|e| run_err(format!("{}: {e}", o.work.display())))?;
    let cluster = LocalCluster::start(ClusterOptions {
        workers: o.workers,
        netns: false,
        movers: o.movers,
        links: false,
        lease_ttl_s: 10,
        bin_dir: o.bin_dir.clone(),
        work: o.work.join("cluster"),
    })?;
    let samples = Arc::new(Mutex::new(Vec::<Sample>::new()));
    let running = Arc::new(AtomicBool::new(true));
    let sampler = {
        let (samples, running) = (samples.clone(), running.clone());
        let mut counter = cluster.key_counter()?;
        let pids = cluster.pids();
        let data_dir = cluster.etcd_data_dir().to_path_buf();
        let start = Instant::now();
        std::thread::spawn(move || {
            while running.load(Ordering::Relaxed) {
                let s = Sample {
                    t_s: start.elapsed().as_secs_f64(),
                    keys: counter.count(),
                    db_bytes: db_bytes(&data_dir),
                    rss: pids.iter().filter_map(|(n, p)| Some((n.clone(), crate::cluster::status_bytes(*p, "VmRSS")?))).collect(),
                    cpu_s: pids.iter().filter_map(|(n, p)| Some((n.clone(), crate::util::process_cpu_seconds(*p, false)?))).collect(),
                };
                samples.lock().unwrap_or_else(|e| e.into_inner()).push(s);
                std::thread::sleep(Duration::from_millis(500));
            }
        })
    };
    let cpu0 = cluster.cpu_seconds();
    let log = o.work.join("ferry.log");
    let args: Vec<OsString> = ["copy", "--no-progress", "--json", "--etcd", cluster.endpoint(), &o.source, "null://"].iter().map(OsString::from).collect();
    let measured = timed_run(Path::new("/proc/self/exe"), &o.bin_dir.join("ferry"), &args, &log, 1);
    running.store(false, Ordering::Relaxed);
    let _ = sampler.join();
    let m = measured?;
    let samples = std::mem::take(&mut *samples.lock().unwrap_or_else(|e| e.into_inner()));
    let summary = std::fs::read_to_string(&log).unwrap_or_default();
    let json: serde_json::Value = summary.lines().rev().find_map(|l| serde_json::from_str(l).ok()).unwrap_or_default();
    let counter = |k: &str| json["counters"][k].as_u64().unwrap_or(0);
    let run = SynthRun {
        source: o.source.clone(),
        entries,
        files,
        dirs,
        workers: o.workers,
        movers: o.movers,
        seconds: m.result.tool_wall_s,
        entries_per_s: entries as f64 / m.result.tool_wall_s.max(1e-9),
        cpu_s: m.result.cpu_s + (cluster.cpu_seconds() - cpu0).max(0.0),
        cli_peak_rss_bytes: m.result.max_rss_kib * 1024,
        peak_rss_bytes: cluster.peak_rss(),
        peak_keys: samples.iter().filter_map(|s| s.keys).max().unwrap_or(0),
        peak_db_bytes: samples.iter().map(|s| s.db_bytes).max().unwrap_or(0),
        exit_code: m.result.exit_code,
        transferred: counter("files_transferred"),
        failed: counter("files_failed"),
        status: json["status"].as_str().unwrap_or("no summary").to_string(),
        samples,
    };
    let cpu = run.samples.last().map(|s| s.cpu_s.iter().map(|(n, c)| format!("{n} {c:.1} s")).collect::<Vec<_>>().join(", ")).unwrap_or_default();
    let rss = run.peak_rss_bytes.iter().map(|(n, b)| format!("{n} {}", format_bytes(*b))).collect::<Vec<_>>().join(", ");
    say(format!(
        "synth: {} in {:.1} s: {:.0} entries/s, CPU {:.1} s ({cpu}); peak keys {}, etcd db {}; peak RSS {rss}, CLI {}; {} transferred, {} failed",
        run.status,
        run.seconds,
        run.entries_per_s,
        run.cpu_s,
        run.peak_keys,
        format_bytes(run.peak_db_bytes),
        format_bytes(run.cli_peak_rss_bytes),
        run.transferred,
        run.failed
    ));
    if let Some(out) = &o.out {
        std::fs::write(out, serde_json::to_string_pretty(&run).expect("serializable")).map_err(|e| run_err(format!("{}: {e}", out.display())))?;
        let svg = out.with_extension("svg");
        std::fs::write(&svg, render_memory(&run)).map_err(|e| run_err(format!("{}: {e}", svg.display())))?;
        say(format!("results: {} and {}", out.display(), svg.display()));
    }
    Ok(run)
}

/// Whether the run copied every entry exactly and nothing failed.
pub fn passed(r: &SynthRun) -> bool {
    r.exit_code == Some(0) && r.status == "SUCCESS" && r.failed == 0 && r.transferred == r.entries
}

/// Memory of every process over the run (MiB), and the keys in etcd, as an SVG line chart.
pub fn render_memory(r: &SynthRun) -> String {
    let (w, h, left, top, bottom) = (860.0, 420.0, 70.0, 60.0, 50.0);
    let (plot_w, plot_h) = (w - left - 160.0, h - top - bottom);
    let t_max = r.samples.last().map_or(1.0, |s| s.t_s).max(1.0);
    let mut names: Vec<String> = Vec::new();
    for s in &r.samples {
        for (n, _) in &s.rss {
            if !names.contains(n) {
                names.push(n.clone());
            }
        }
    }
    let mib_max = r.samples.iter().flat_map(|s| s.rss.iter().map(|(_, b)| *b as f64 / 1048576.0)).fold(1.0, f64::max);
    let y_max = crate::report::nice_step(mib_max) * (mib_max / crate::report::nice_step(mib_max)).ceil();
    let x = |t: f64| left + t / t_max * plot_w;
    let y = |v: f64| top + plot_h - v / y_max * plot_h;
    let colors = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"];
    let mut svg = format!(
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12"><rect width="100%" height="100%" fill="white"/><text x="{left}" y="24" font-size="15">synth — resident memory over the run ({} entries, {:.0} entries/s)</text><text x="{left}" y="42" fill="#555">{}; peak etcd keys {}</text>"##,
        r.entries,
        r.entries_per_s,
        xml_escape(&r.source),
        r.peak_keys
    );
    for i in 0..=4 {
        let v = y_max * i as f64 / 4.0;
        let (x1, yv, xl, yl) = (left + plot_w, y(v), left - 6.0, y(v) + 4.0);
        svg += &format!(
            r##"<line x1="{left}" x2="{x1}" y1="{yv:.1}" y2="{yv:.1}" stroke="#ddd"/><text x="{xl}" y="{yl:.1}" text-anchor="end">{v:.0} MiB</text>"##
        );
    }
    svg += &format!(r#"<text x="{:.1}" y="{}" text-anchor="middle">seconds (0–{t_max:.0})</text>"#, left + plot_w / 2.0, h - 12.0);
    for (i, name) in names.iter().enumerate() {
        let color = colors[i % colors.len()];
        let points: Vec<String> = r
            .samples
            .iter()
            .filter_map(|s| s.rss.iter().find(|(n, _)| n == name).map(|(_, b)| format!("{:.1},{:.1}", x(s.t_s), y(*b as f64 / 1048576.0))))
            .collect();
        svg += &format!(r#"<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{}"/>"#, points.join(" "));
        svg += &format!(r#"<text x="{:.1}" y="{:.1}" fill="{color}">{}</text>"#, left + plot_w + 10.0, top + 16.0 * i as f64, xml_escape(name));
    }
    svg + "</svg>"
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}
