//! The terminal progress line and the human summary.

use std::io::Write;
use std::time::{Duration, Instant};

use ferry_common::model::{Execution, Phase};
use ferry_common::paths;

pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

fn hms(secs: f64) -> String {
    let s = secs.max(0.0) as u64;
    format!("{}:{:02}:{:02}", s / 3600, (s / 60) % 60, s % 60)
}

/// What a progress display needs of an execution, from the Store's record (`ferry copy`) or
/// the API's view (`ferry task start --wait`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Snapshot {
    pub phase: String,
    /// Listing is complete: the prepared totals are final, so a percentage and an ETA mean
    /// something.
    pub listing_done: bool,
    pub files_done: u64,
    pub files_prepared: u64,
    pub bytes_done: u64,
    pub bytes_prepared: u64,
}

impl Snapshot {
    pub fn of(exec: &Execution) -> Snapshot {
        let c = &exec.counters;
        Snapshot {
            // Listing and transfers overlap: PREPARING is both.
            phase: if exec.phase == Phase::Preparing { "PREPARING+TRANSFERRING".into() } else { exec.phase.as_str().into() },
            listing_done: exec.listing_done,
            files_done: c.files_transferred + c.files_skipped + c.files_failed,
            files_prepared: c.files_prepared,
            bytes_done: c.bytes_transferred,
            bytes_prepared: c.bytes_prepared,
        }
    }

    /// From an `ExecutionView` (the API's JSON).
    pub fn of_view(v: &serde_json::Value) -> Snapshot {
        let n = |k: &str| v["Counters"][k].as_u64().unwrap_or(0);
        let phase = v["Status"].as_str().unwrap_or("").to_string();
        Snapshot {
            listing_done: !matches!(phase.as_str(), "QUEUED" | "LAUNCHING" | "PREPARING"),
            phase,
            files_done: n("FilesTransferred") + n("FilesSkipped") + n("FilesFailed"),
            files_prepared: n("FilesPrepared"),
            bytes_done: n("BytesTransferred"),
            bytes_prepared: n("BytesPrepared"),
        }
    }
}

/// The transfer rate over the last [`Meter::WINDOW`]: what the link does now, not the average
/// since a start that may have spent minutes listing.
#[derive(Default)]
pub struct Meter {
    samples: std::collections::VecDeque<(Duration, u64)>,
}

impl Meter {
    const WINDOW: Duration = Duration::from_secs(5);

    /// `bytes` done at `at` (time since the start).
    pub fn push(&mut self, at: Duration, bytes: u64) {
        self.samples.push_back((at, bytes));
        // Keep one sample at or before the window's start, so the window is always spanned.
        while self.samples.len() > 2 && at.saturating_sub(self.samples[1].0) >= Self::WINDOW {
            self.samples.pop_front();
        }
    }

    /// Bytes per second across the kept samples; 0 before two samples a moment apart.
    pub fn rate(&self) -> f64 {
        match (self.samples.front(), self.samples.back()) {
            (Some(&(t0, b0)), Some(&(t1, b1))) if t1 > t0 => b1.saturating_sub(b0) as f64 / (t1 - t0).as_secs_f64(),
            _ => 0.0,
        }
    }
}

/// How progress is shown: a bar redrawn in place on a terminal, a plain line every
/// [`LINE_EVERY`] into a log, or nothing (`--no-progress`, `--json`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Style {
    Bar,
    Lines,
    Off,
}

impl Style {
    /// Bar when stderr is a terminal, plain lines when it is not, nothing unless `wanted`.
    pub fn for_stderr(wanted: bool) -> Style {
        use std::io::IsTerminal;
        match (wanted, std::io::stderr().is_terminal()) {
            (false, _) => Style::Off,
            (true, true) => Style::Bar,
            (true, false) => Style::Lines,
        }
    }
}

/// A plain progress line goes to a log this often.
const LINE_EVERY: Duration = Duration::from_secs(10);
/// The bar is redrawn at most this often, however often the caller updates.
const REDRAW: Duration = Duration::from_millis(150);
const BAR_WIDTH: usize = 24;

/// The bar, or the plain line, for `snap` at transfer rate `rate`: pure, so what users see
/// is tested without a terminal.
pub fn render(style: Style, snap: &Snapshot, rate: f64) -> String {
    let open = if snap.listing_done { "" } else { "+" };
    let eta = if snap.listing_done && rate > 0.0 { hms(snap.bytes_prepared.saturating_sub(snap.bytes_done) as f64 / rate) } else { "-".to_string() };
    let (done, total) = if snap.bytes_prepared > 0 { (snap.bytes_done, snap.bytes_prepared) } else { (snap.files_done, snap.files_prepared) };
    let fraction = if total == 0 { 0.0 } else { (done as f64 / total as f64).min(1.0) };
    let counts = format!(
        "{}/{}{open}  {}/s  ETA {eta}  files {}/{}{open}",
        human_bytes(snap.bytes_done),
        human_bytes(snap.bytes_prepared),
        human_bytes(rate as u64),
        snap.files_done,
        snap.files_prepared
    );
    match style {
        Style::Bar => {
            let filled = (fraction * BAR_WIDTH as f64).round() as usize;
            // Until listing ends the total grows: no percentage that would only go back.
            let percent = if snap.listing_done { format!("{:>3}%", (fraction * 100.0).floor() as u64) } else { "  ?%".to_string() };
            format!("[{}{}] {percent}  {counts}  {}", "#".repeat(filled), ".".repeat(BAR_WIDTH - filled), snap.phase)
        }
        Style::Lines | Style::Off => format!("ferry: {}  {counts}", snap.phase),
    }
}

/// Shows an execution's progress on stderr in the chosen [`Style`].
pub struct Progress {
    started: Instant,
    style: Style,
    drawn: bool,
    last_draw: Option<Instant>,
    meter: Meter,
}

impl Progress {
    pub fn new(style: Style) -> Self {
        Progress { started: Instant::now(), style, drawn: false, last_draw: None, meter: Meter::default() }
    }

    pub fn update(&mut self, exec: &Execution) {
        self.show(&Snapshot::of(exec));
    }

    pub fn show(&mut self, snap: &Snapshot) {
        if self.style == Style::Off {
            return;
        }
        let now = Instant::now();
        self.meter.push(now - self.started, snap.bytes_done);
        let due = match (self.style, self.last_draw) {
            (Style::Bar, Some(t)) => now - t >= REDRAW,
            // The first plain line only after LINE_EVERY: a short run logs nothing extra.
            (Style::Lines, last) => now - last.unwrap_or(self.started) >= LINE_EVERY,
            _ => true,
        };
        if !due {
            return;
        }
        self.last_draw = Some(now);
        let line = render(self.style, snap, self.meter.rate());
        let mut err = std::io::stderr().lock();
        if self.style == Style::Bar {
            let _ = write!(err, "\r\x1b[2K{line}");
            self.drawn = true;
        } else {
            let _ = writeln!(err, "{line}");
        }
        let _ = err.flush();
    }

    pub fn clear(&mut self) {
        if self.drawn {
            let _ = write!(std::io::stderr(), "\r\x1b[2K");
            self.drawn = false;
        }
    }
}

/// The final summary for people.
pub fn print_summary(exec: &Execution) {
    let c = &exec.counters;
    let secs = exec.finished_unix_ms.unwrap_or(exec.started_unix_ms).saturating_sub(exec.started_unix_ms) as f64 / 1000.0;
    let rate = if secs > 0.0 { c.bytes_transferred as f64 / secs } else { 0.0 };
    println!("ferry {}: {} in {secs:.1}s", exec.spec.mode.as_str(), exec.phase.as_str());
    println!(
        "  files: {} prepared, {} transferred, {} skipped, {} deleted, {} failed",
        c.files_prepared, c.files_transferred, c.files_skipped, c.files_deleted, c.files_failed
    );
    println!(
        "  bytes: {} transferred ({}/s), {} verified in {} files",
        human_bytes(c.bytes_transferred),
        human_bytes(rate as u64),
        human_bytes(c.bytes_verified),
        c.files_verified
    );
    if c.files_mismatched > 0 {
        println!("  differences: {}", c.files_mismatched);
    }
    if c.bytes_resumed > 0 {
        println!("  resumed: {} already at the destination from an interrupted transfer", human_bytes(c.bytes_resumed));
    }
    if c.chunks_resent > 0 {
        println!("  resent:  {} link chunks that arrived damaged", c.chunks_resent);
    }
    if let Some(e) = &exec.error {
        println!("  error: {e}");
    }
    for f in &exec.failures {
        let path = if f.path.is_empty() { ".".to_string() } else { paths::display(&f.path) };
        println!("  failed: {path}: {}", f.reason);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(listing_done: bool, bytes_done: u64, bytes_prepared: u64) -> Snapshot {
        Snapshot { phase: "TRANSFERRING".into(), listing_done, files_done: 3, files_prepared: 10, bytes_done, bytes_prepared }
    }

    #[test]
    fn the_bar_fills_with_bytes_and_gives_an_eta_only_once_the_total_is_known() {
        let line = render(Style::Bar, &snap(true, 512 << 20, 1 << 30), 64.0 * 1048576.0);
        assert_eq!(line, "[############............]  50%  512.0 MiB/1.0 GiB  64.0 MiB/s  ETA 0:00:08  files 3/10  TRANSFERRING");
        let listing = render(Style::Bar, &snap(false, 512 << 20, 1 << 30), 64.0 * 1048576.0);
        assert!(listing.contains("  ?%") && listing.contains("ETA -") && listing.contains("files 3/10+"), "{listing}");
        let stalled = render(Style::Bar, &snap(true, 512 << 20, 1 << 30), 0.0);
        assert!(stalled.contains("ETA -"), "no ETA from a zero rate: {stalled}");
        let files_only = render(Style::Bar, &Snapshot { files_done: 5, files_prepared: 10, listing_done: true, ..Snapshot::default() }, 0.0);
        assert!(files_only.starts_with("[############............]  50%"), "empty files count by number: {files_only}");
        let done = render(Style::Bar, &snap(true, 2 << 30, 1 << 30), 1.0);
        assert!(done.starts_with(&format!("[{}] 100%", "#".repeat(BAR_WIDTH))), "never past full: {done}");
    }

    #[test]
    fn a_log_gets_plain_lines_without_terminal_codes() {
        let line = render(Style::Lines, &snap(true, 1 << 20, 2 << 20), 1048576.0);
        assert_eq!(line, "ferry: TRANSFERRING  1.0 MiB/2.0 MiB  1.0 MiB/s  ETA 0:00:01  files 3/10");
        assert!(!line.contains('\x1b') && !line.contains('\r'));
    }

    #[test]
    fn the_rate_is_over_the_last_seconds_not_since_the_start() {
        let mut m = Meter::default();
        assert_eq!(m.rate(), 0.0);
        let s = Duration::from_secs;
        // A minute of listing moves nothing, then 10 MB/s.
        m.push(s(0), 0);
        m.push(s(60), 0);
        for t in 61..=70 {
            m.push(s(t), (t - 60) * 10_000_000);
        }
        assert!((m.rate() - 10_000_000.0).abs() < 1.0, "{}", m.rate());
        assert!(m.samples.len() <= 7, "only the window is kept: {}", m.samples.len());
    }

    #[test]
    fn the_api_view_gives_the_same_snapshot() {
        let v = serde_json::json!({"Status": "PREPARING", "Counters": {"FilesTransferred": 2, "FilesSkipped": 1, "FilesFailed": 1, "FilesPrepared": 9, "BytesTransferred": 5, "BytesPrepared": 7}});
        let got = Snapshot::of_view(&v);
        assert_eq!(got, Snapshot { phase: "PREPARING".into(), listing_done: false, files_done: 4, files_prepared: 9, bytes_done: 5, bytes_prepared: 7 });
        assert!(Snapshot::of_view(&serde_json::json!({"Status": "TRANSFERRING"})).listing_done);
    }
}
