//! Benchmark result types (serialized to JSON as-is), the console table and
//! a hand-written SVG bar chart.

use crate::gen::DatasetSpec;
use crate::size::{format_bytes, format_secs};
use crate::stats::{describe_speedup, Summary};
use crate::tree::TreeStats;
use serde::Serialize;
use std::fmt::Write as _;

#[derive(Clone, Debug, Serialize)]
pub struct BenchReport {
    /// Bump when fields change meaning.
    pub schema: u32,
    pub scenario: String,
    pub tiny: bool,
    pub started_at: String,
    pub runs: usize,
    /// Untimed rounds before the timed runs.
    pub warmup: usize,
    pub dataset: DatasetInfo,
    pub host: HostInfo,
    pub git: Option<GitInfo>,
    /// How the numbers were taken, in words (kept next to the numbers so a
    /// JSON file read months later explains itself).
    pub method: Vec<String>,
    pub tools: Vec<ToolResult>,
    pub comparisons: Vec<Comparison>,
}

#[derive(Clone, Debug, Serialize)]
pub struct DatasetInfo {
    pub description: String,
    pub spec: DatasetSpec,
    pub seed: u64,
    pub key: String,
    pub src: String,
    pub stats: TreeStats,
}

#[derive(Clone, Debug, Serialize)]
pub struct HostInfo {
    pub cores: usize,
    pub cpu: Option<String>,
    pub mem_total_kib: Option<u64>,
    pub kernel: Option<String>,
    pub fs_type: Option<String>,
    pub data_dir: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct GitInfo {
    pub commit: String,
    pub dirty: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Skipped,
    Failed,
}

#[derive(Clone, Debug, Serialize)]
pub struct ToolResult {
    pub name: String,
    /// The command line as run (SRC/DST substituted).
    pub command: Vec<String>,
    pub version: Option<String>,
    pub status: Status,
    /// Why a tool was skipped or failed.
    pub reason: Option<String>,
    pub runs: Vec<RunResult>,
    /// Over successful runs only.
    pub wall_s: Option<Summary>,
    pub cpu_s: Option<Summary>,
    pub max_rss_kib: Option<Summary>,
    /// Destination vs source after the tool's first run.
    pub sanity: Option<Sanity>,
}

impl ToolResult {
    pub fn is_ferry(&self) -> bool {
        self.name == "ferry" || self.name.starts_with("ferry-")
    }

    fn sane(&self) -> bool {
        self.sanity.as_ref().is_none_or(|s| s.ok)
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct RunResult {
    pub run: usize,
    /// Tool plus the final sync: the headline number.
    pub wall_s: f64,
    pub tool_wall_s: f64,
    pub sync_s: f64,
    pub user_s: f64,
    pub sys_s: f64,
    pub cpu_s: f64,
    pub max_rss_kib: u64,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Sanity {
    pub ok: bool,
    pub expected: TreeStats,
    pub actual: TreeStats,
    pub message: Option<String>,
}

impl Sanity {
    pub fn compare(expected: TreeStats, actual: TreeStats) -> Self {
        let mut diffs = Vec::new();
        let mut cmp = |what: &str, e: u64, a: u64| {
            if e != a {
                diffs.push(format!("{what} {a} (expected {e})"));
            }
        };
        cmp("files", expected.files, actual.files);
        cmp("dirs", expected.dirs, actual.dirs);
        cmp("symlinks", expected.symlinks, actual.symlinks);
        cmp("special files", expected.other, actual.other);
        cmp("bytes", expected.bytes, actual.bytes);
        Sanity { ok: diffs.is_empty(), expected, actual, message: (!diffs.is_empty()).then(|| format!("destination differs: {}", diffs.join(", "))) }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Comparison {
    pub ferry: String,
    pub peer: String,
    /// peer median wall / ferry median wall: "ferry is X× faster".
    pub wall_speedup: Option<f64>,
    pub ferry_wall_median_s: f64,
    pub peer_wall_median_s: f64,
    /// peer / ferry; above 1 means ferry used less.
    pub cpu_peer_over_ferry: Option<f64>,
    pub rss_peer_over_ferry: Option<f64>,
    pub summary: String,
    /// Set when either side failed its sanity check.
    pub caveat: Option<String>,
}

/// Pairwise comparisons of every successful ferry variant with every
/// successful peer.
pub fn compare(tools: &[ToolResult]) -> Vec<Comparison> {
    let ok = |t: &&ToolResult| t.status == Status::Ok && t.wall_s.is_some();
    let mut out = Vec::new();
    for f in tools.iter().filter(ok).filter(|t| t.is_ferry()) {
        for p in tools.iter().filter(ok).filter(|t| !t.is_ferry()) {
            let (Some(fw), Some(pw)) = (f.wall_s, p.wall_s) else {
                continue;
            };
            let speedup = crate::stats::ratio(pw.median, fw.median);
            let med = |s: Option<Summary>| s.map(|s| s.median);
            let cpu = med(p.cpu_s).zip(med(f.cpu_s)).and_then(|(p, f)| crate::stats::ratio(p, f));
            let rss = med(p.max_rss_kib).zip(med(f.max_rss_kib)).and_then(|(p, f)| crate::stats::ratio(p, f));
            let mut summary = format!(
                "{} is {}: wall {} vs {}",
                f.name,
                speedup.map_or_else(|| format!("not comparable with {}", p.name), |s| describe_speedup(s, &p.name)),
                format_secs(fw.median),
                format_secs(pw.median)
            );
            if let (Some(fc), Some(pc)) = (f.cpu_s, p.cpu_s) {
                let _ = write!(summary, ", CPU {} vs {}", format_secs(fc.median), format_secs(pc.median));
            }
            if let (Some(fr), Some(pr)) = (f.max_rss_kib, p.max_rss_kib) {
                let _ = write!(summary, ", peak RSS {} vs {}", format_bytes(fr.median as u64 * 1024), format_bytes(pr.median as u64 * 1024));
            }
            let caveat = (!f.sane() || !p.sane()).then(|| "a destination failed the sanity check; this comparison is not valid".to_string());
            out.push(Comparison {
                ferry: f.name.clone(),
                peer: p.name.clone(),
                wall_speedup: speedup,
                ferry_wall_median_s: fw.median,
                peer_wall_median_s: pw.median,
                cpu_peer_over_ferry: cpu,
                rss_peer_over_ferry: rss,
                summary,
                caveat,
            });
        }
    }
    out
}

/// The console table plus comparison lines.
pub fn render_table(r: &BenchReport) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{}{}: {} (seed {}), {} files, {} dirs, {}",
        r.scenario,
        if r.tiny { " (tiny)" } else { "" },
        r.dataset.description,
        r.dataset.seed,
        r.dataset.stats.files,
        r.dataset.stats.dirs,
        format_bytes(r.dataset.stats.bytes)
    );
    let _ = writeln!(s, "{} runs per tool (after {} warm-up), interleaved; wall time includes a final sync; median [min – max]\n", r.runs, r.warmup);
    let _ = writeln!(s, "{:<18} {:>10} {:>23} {:>10} {:>11}  check", "tool", "wall", "[min – max]", "CPU", "peak RSS");
    for t in &r.tools {
        match (t.status, t.wall_s) {
            (Status::Skipped, _) => {
                let _ = writeln!(s, "{:<18} skipped: {}", t.name, t.reason.as_deref().unwrap_or(""));
            }
            (_, Some(w)) => {
                let check = match (&t.sanity, t.status) {
                    (_, Status::Failed) => "FAILED".to_string(),
                    (Some(x), _) if !x.ok => "MISMATCH".to_string(),
                    (Some(_), _) => "ok".to_string(),
                    (None, _) => "-".to_string(),
                };
                let _ = writeln!(
                    s,
                    "{:<18} {:>10} {:>23} {:>10} {:>11}  {}",
                    t.name,
                    format_secs(w.median),
                    format!("[{} – {}]", format_secs(w.min), format_secs(w.max)),
                    t.cpu_s.map_or("-".into(), |c| format_secs(c.median)),
                    t.max_rss_kib.map_or("-".into(), |m| format_bytes(m.median as u64 * 1024)),
                    check
                );
            }
            (_, None) => {
                let _ = writeln!(s, "{:<18} FAILED: {}", t.name, t.reason.as_deref().unwrap_or("no successful run"));
            }
        }
    }
    for t in &r.tools {
        if let Some(m) = t.sanity.as_ref().and_then(|x| x.message.as_ref()) {
            let _ = writeln!(s, "\n!!! {}: {m}", t.name);
        }
        if t.status == Status::Failed {
            if let Some(reason) = &t.reason {
                let _ = writeln!(s, "\n!!! {} failed: {reason}", t.name);
            }
        }
    }
    if !r.comparisons.is_empty() {
        let _ = writeln!(s);
        for c in &r.comparisons {
            let _ = writeln!(s, "{}", c.summary);
            if let Some(cv) = &c.caveat {
                let _ = writeln!(s, "    !!! {cv}");
            }
        }
    }
    s
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// A "nice" axis step (1, 2 or 5 x 10^k) giving at most ~6 ticks up to `max`.
pub fn nice_step(max: f64) -> f64 {
    if !(max > 0.0 && max.is_finite()) {
        return 1.0;
    }
    let raw = max / 5.0;
    let mag = 10f64.powf(raw.log10().floor());
    for m in [1.0, 2.0, 5.0, 10.0] {
        if m * mag >= raw {
            return m * mag;
        }
    }
    10.0 * mag
}

/// One bar of a chart: a tool's median with its min–max whisker.
pub struct Bar {
    pub name: String,
    pub median: f64,
    pub min: f64,
    pub max: f64,
    /// ferry's bars are blue, peers grey.
    pub ferry: bool,
    /// Failed or wrong copies are red.
    pub failed: bool,
}

/// Horizontal bars of median wall time per tool with min–max whiskers.
pub fn render_svg(r: &BenchReport) -> String {
    let bars: Vec<Bar> = r
        .tools
        .iter()
        .filter_map(|t| {
            let w = t.wall_s?;
            Some(Bar { name: t.name.clone(), median: w.median, min: w.min, max: w.max, ferry: t.is_ferry(), failed: t.status != Status::Ok || !t.sane() })
        })
        .collect();
    let title = format!("{}{} — median wall time incl. sync, {} runs (lower is better)", r.scenario, if r.tiny { " (tiny)" } else { "" }, r.runs);
    let subtitle = format!(
        "{} · {} files · {} · {} cores · {}",
        r.dataset.description,
        r.dataset.stats.files,
        format_bytes(r.dataset.stats.bytes),
        r.host.cores,
        r.host.fs_type.as_deref().unwrap_or("?")
    );
    render_bars(&title, &subtitle, &bars)
}

/// A bar chart in seconds (lower is better): the chart of every `ferry-load` runner.
pub fn render_bars(title: &str, subtitle: &str, rows: &[Bar]) -> String {
    let (left, bar_w, right, top, row_h) = (150.0, 520.0, 130.0, 70.0, 34.0);
    let width = left + bar_w + right;
    let height = top + row_h * rows.len().max(1) as f64 + 50.0;
    let max = rows.iter().map(|b| b.max).fold(0.0, f64::max);
    let step = nice_step(max);
    let axis_max = if max > 0.0 { (max / step).ceil() * step } else { 1.0 };
    let x = |v: f64| left + v / axis_max * bar_w;

    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="13">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(s, r#"<text x="10" y="22" font-size="15" font-weight="bold">{}</text>"#, xml_escape(title));
    let _ = writeln!(s, r##"<text x="10" y="42" fill="#555">{}</text>"##, xml_escape(subtitle));
    // Grid and tick labels.
    let axis_y = top + row_h * rows.len().max(1) as f64;
    let mut v = 0.0;
    while v <= axis_max + step * 1e-9 {
        let xv = x(v);
        let _ = writeln!(
            s,
            r##"<line x1="{xv:.1}" y1="{top}" x2="{xv:.1}" y2="{axis_y}" stroke="#ddd"/><text x="{xv:.1}" y="{:.1}" text-anchor="middle" fill="#555">{}</text>"##,
            axis_y + 18.0,
            trim_num(v)
        );
        v += step;
    }
    let _ = writeln!(s, r##"<text x="{:.1}" y="{:.1}" text-anchor="middle" fill="#555">seconds</text>"##, left + bar_w / 2.0, axis_y + 38.0);
    for (i, b) in rows.iter().enumerate() {
        let y = top + row_h * i as f64;
        let colour = if b.failed {
            "#d9534f"
        } else if b.ferry {
            "#2b7bb9"
        } else {
            "#9a9a9a"
        };
        let mid = y + row_h / 2.0;
        let _ = writeln!(s, r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#, left - 8.0, mid + 4.0, xml_escape(&b.name));
        let _ =
            writeln!(s, r#"<rect x="{left}" y="{:.1}" width="{:.1}" height="{:.1}" fill="{colour}"/>"#, y + 6.0, (x(b.median) - left).max(0.5), row_h - 12.0);
        // Whisker: min–max across runs.
        let (x0, x1) = (x(b.min), x(b.max));
        let _ = writeln!(
            s,
            r#"<path d="M{x0:.1} {mid:.1} H{x1:.1} M{x0:.1} {:.1} V{:.1} M{x1:.1} {:.1} V{:.1}" stroke="black" fill="none"/>"#,
            mid - 5.0,
            mid + 5.0,
            mid - 5.0,
            mid + 5.0
        );
        let _ = writeln!(s, r#"<text x="{:.1}" y="{:.1}">{}</text>"#, x1.max(x(b.median)) + 6.0, mid + 4.0, xml_escape(&format_secs(b.median)));
    }
    if rows.is_empty() {
        let _ = writeln!(s, r#"<text x="{left}" y="{:.1}">no successful runs</text>"#, top + row_h / 2.0);
    }
    s.push_str("</svg>\n");
    s
}

fn trim_num(v: f64) -> String {
    let t = format!("{v:.3}");
    t.trim_end_matches('0').trim_end_matches('.').to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::summarize;

    fn tool(name: &str, walls: &[f64], status: Status) -> ToolResult {
        ToolResult {
            name: name.into(),
            command: vec![name.into()],
            version: None,
            status,
            reason: None,
            runs: vec![],
            wall_s: summarize(walls),
            cpu_s: summarize(&[1.0]),
            max_rss_kib: summarize(&[2048.0]),
            sanity: None,
        }
    }

    #[test]
    fn comparisons_pair_ferry_variants_with_peers() {
        let tools = vec![
            tool("ferry", &[2.0, 1.0, 3.0], Status::Ok),
            tool("ferry-verify-none", &[1.0], Status::Ok),
            tool("rsync", &[4.0, 4.0, 5.0], Status::Ok),
            tool("cp", &[1.0], Status::Skipped),
            tool("rclone", &[], Status::Failed),
        ];
        let c = compare(&tools);
        assert_eq!(c.len(), 2);
        assert_eq!((c[0].ferry.as_str(), c[0].peer.as_str()), ("ferry", "rsync"));
        assert_eq!(c[0].wall_speedup, Some(2.0));
        assert_eq!(c[1].wall_speedup, Some(4.0));
        assert!(c[0].summary.starts_with("ferry is 2.00× faster than rsync"));
    }

    #[test]
    fn sanity_reports_differences() {
        let e = TreeStats { files: 3, dirs: 1, bytes: 10, ..Default::default() };
        assert!(Sanity::compare(e, e).ok);
        let a = TreeStats { files: 2, ..e };
        let s = Sanity::compare(e, a);
        assert!(!s.ok);
        assert_eq!(s.message.as_deref(), Some("destination differs: files 2 (expected 3)"));
    }

    #[test]
    fn nice_steps() {
        assert_eq!(nice_step(10.0), 2.0);
        assert_eq!(nice_step(3.3), 1.0);
        assert_eq!(nice_step(0.9), 0.2);
        assert_eq!(nice_step(0.0), 1.0);
        assert_eq!(trim_num(2.5), "2.5");
        assert_eq!(trim_num(2.0), "2");
    }
}
