//! Task reports and the summary.
//!
//! The report is JSON Lines: one `{"type":"entry",...}` line per entry as results are folded,
//! then one `{"type":"summary",...}` line. The lines travel with the shard results through the
//! Store; the coordinator alone writes them, so agents share no directory.

use std::fs::File;
use std::path::{Path, PathBuf};

use ferry_common::model::{Counters, Execution, ReportEntry};
use ferry_common::paths;

/// The end-of-run summary, printed with `--json` and written as the report's last line.
pub fn summary_json(exec: &Execution) -> serde_json::Value {
    let c: &Counters = &exec.counters;
    let duration = exec.finished_unix_ms.unwrap_or_else(crate::driver::now_ms).saturating_sub(exec.started_unix_ms) as f64 / 1000.0;
    serde_json::json!({
        "type": "summary",
        "execution": exec.spec.id,
        "mode": exec.spec.mode.as_str(),
        "source": exec.spec.source,
        "destination": exec.spec.destination,
        "status": exec.phase.as_str(),
        "error": exec.error,
        "duration_secs": duration,
        "counters": {
            "files_prepared": c.files_prepared,
            "bytes_prepared": c.bytes_prepared,
            "files_transferred": c.files_transferred,
            "bytes_transferred": c.bytes_transferred,
            "bytes_written": c.bytes_written,
            "files_skipped": c.files_skipped,
            "files_deleted": c.files_deleted,
            "files_verified": c.files_verified,
            "bytes_verified": c.bytes_verified,
            "files_failed": c.files_failed,
            "files_mismatched": c.files_mismatched,
            "bytes_compressed": c.bytes_compressed,
            "shard_retries": c.shard_retries,
            "bytes_resumed": c.bytes_resumed,
            "chunks_resent": c.chunks_resent,
        },
        "failures": exec.failures.iter().map(|f| serde_json::json!({
            "path": paths::display(&f.path),
            "reason": f.reason,
        })).collect::<Vec<_>>(),
    })
}

/// An execution's report, written only by the coordinator: one JSON line per entry as
/// results are folded, then the summary. It is cut back to the length the execution record
/// says was folded whenever it is opened, so a coordinator that takes over (or a fold that did
/// not commit) never leaves a line twice.
pub struct ReportFile {
    path: PathBuf,
    file: File,
    len: u64,
}

impl ReportFile {
    /// Opens (creating) the report at `path`, cut back to `committed` bytes.
    pub fn open(path: &Path, committed: u64) -> std::io::Result<ReportFile> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let file = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(path)?;
        let len = file.metadata()?.len().min(committed);
        file.set_len(len)?;
        Ok(ReportFile { path: path.to_path_buf(), file, len })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn write(&mut self, text: &[u8]) -> std::io::Result<u64> {
        use std::os::unix::fs::FileExt;
        self.file.write_all_at(text, self.len)?;
        self.file.sync_data()?;
        self.len += text.len() as u64;
        Ok(self.len)
    }

    /// Appends entry lines and makes them durable; returns the report's new length.
    pub fn append(&mut self, entries: &[ReportEntry]) -> std::io::Result<u64> {
        let mut text = Vec::with_capacity(entries.len() * 160);
        for e in entries {
            serde_json::to_writer(&mut text, &e.to_json())?;
            text.push(b'\n');
        }
        self.write(&text)
    }

    /// Appends the summary line; returns the report's final length.
    pub fn finish(&mut self, summary: &serde_json::Value) -> std::io::Result<u64> {
        let mut text = serde_json::to_vec(summary)?;
        text.push(b'\n');
        self.write(&text)
    }

    /// Cuts off what was appended past `len` (a fold that did not commit).
    pub fn cut(&mut self, len: u64) {
        if len < self.len && self.file.set_len(len).is_ok() {
            self.len = len;
        }
    }
}

/// Checks up front that a report can be written at `path`, so a bad path fails before any
/// copying.
pub fn check_writable(path: &Path) -> Result<(), String> {
    std::fs::File::create(path).map(|_| ()).map_err(|e| format!("cannot write report {}: {e} (choose a writable path for --report)", path.display()))
}
