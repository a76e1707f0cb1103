//! The terminal progress line and the human summary.

use std::io::Write;
use std::time::Instant;

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

/// Redraws one status line on stderr: phase, files and bytes done out of prepared, rate, ETA.
pub struct Progress {
    started: Instant,
    enabled: bool,
    drawn: bool,
    last_draw: Option<Instant>,
}

/// Redraws at most this often, however often the caller updates.
const REDRAW: std::time::Duration = std::time::Duration::from_millis(150);

impl Progress {
    pub fn new(enabled: bool) -> Self {
        Progress { started: Instant::now(), enabled, drawn: false, last_draw: None }
    }

    pub fn update(&mut self, exec: &Execution) {
        if !self.enabled || self.last_draw.is_some_and(|t| t.elapsed() < REDRAW) {
            return;
        }
        self.last_draw = Some(Instant::now());
        let c = &exec.counters;
        let elapsed = self.started.elapsed().as_secs_f64().max(0.001);
        let done_files = c.files_transferred + c.files_skipped + c.files_failed;
        let rate = c.bytes_transferred as f64 / elapsed;
        let eta = if exec.listing_done && rate > 0.0 {
            let left = c.bytes_prepared.saturating_sub(c.bytes_transferred) as f64;
            hms(left / rate)
        } else {
            "-".to_string()
        };
        let phase = if exec.phase == Phase::Preparing { "PREPARING+TRANSFERRING" } else { exec.phase.as_str() };
        let line = format!(
            "{phase}  files {done_files}/{}{}  bytes {}/{}  {}/s  ETA {eta}",
            c.files_prepared,
            if exec.listing_done { "" } else { "+" },
            human_bytes(c.bytes_transferred),
            human_bytes(c.bytes_prepared),
            human_bytes(rate as u64),
        );
        let mut err = std::io::stderr().lock();
        let _ = write!(err, "\r\x1b[2K{line}");
        let _ = err.flush();
        self.drawn = true;
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
