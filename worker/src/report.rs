//! Where per-entry report lines go.
//!
//! Two delivery rules, chosen by the sink:
//! - after commit (embedded mode): lines are handed over only once the shard's completion
//!   committed, so a shard that runs twice is reported once;
//! - before commit (cluster mode): a worker may die between its commit and its write, so lines
//!   are written first, tagged with the shard attempt and the holder, and the final merge keeps
//!   only the lines whose (attempt, holder) the coordinator saw committed.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use ferry_common::model::ReportEntry;

/// Identifies one attempt of one shard by one holder.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ShardTag {
    /// `{shard id}@{attempt}`, the same as the shard's done key.
    pub shard: String,
    /// `{worker}#{lease}`.
    pub holder: String,
}

pub trait ReportSink: Send + Sync + 'static {
    /// True when lines must be recorded before the completion commits.
    fn before_commit(&self) -> bool {
        false
    }
    fn record(&self, tag: &ShardTag, entries: Vec<ReportEntry>);
}

/// LogLevel: BASIC logs failed entries, TRANSFER every entry, OFF none; the report itself is
/// unaffected.
pub struct LoggingSink {
    pub inner: std::sync::Arc<dyn ReportSink>,
    pub execution: String,
    pub every_entry: bool,
}

impl ReportSink for LoggingSink {
    fn before_commit(&self) -> bool {
        self.inner.before_commit()
    }

    fn record(&self, tag: &ShardTag, entries: Vec<ReportEntry>) {
        for e in &entries {
            let path = ferry_common::paths::display(&e.path);
            match (&e.reason, e.status) {
                (Some(reason), ferry_common::model::EntryStatus::Failed) => {
                    tracing::warn!(execution = %self.execution, path = %path, reason = %reason, "EntryFailed")
                }
                _ if self.every_entry => tracing::info!(execution = %self.execution, path = %path, status = e.status.as_str(), size = e.size, "Entry"),
                _ => {}
            }
        }
        self.inner.record(tag, entries);
    }
}

/// Wraps `sink` so the execution's LogLevel is honoured.
pub fn with_log_level(sink: std::sync::Arc<dyn ReportSink>, spec: &ferry_common::model::ExecutionSpec) -> std::sync::Arc<dyn ReportSink> {
    use ferry_common::task::LogLevelOpt;
    match spec.log_level {
        Some(LogLevelOpt::Off) => sink,
        level => std::sync::Arc::new(LoggingSink { inner: sink, execution: spec.id.clone(), every_entry: level == Some(LogLevelOpt::Transfer) }),
    }
}

/// Discards entries (counters still travel through the Store).
pub struct NullSink;

impl ReportSink for NullSink {
    fn record(&self, _tag: &ShardTag, _entries: Vec<ReportEntry>) {}
}

/// Cluster mode: appends tagged JSON lines to this worker's file in the report directory.
pub struct FileSink {
    path: PathBuf,
    out: Mutex<Option<BufWriter<File>>>,
}

/// File name of one worker's report lines for one execution.
pub fn worker_report_file(dir: &Path, exec: &str, holder: &str) -> PathBuf {
    let safe: String = holder.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).collect();
    dir.join(format!("{exec}.entries.{safe}.jsonl"))
}

impl FileSink {
    pub fn open(dir: &Path, exec: &str, holder: &str) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let path = worker_report_file(dir, exec, holder);
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        Ok(FileSink { path, out: Mutex::new(Some(BufWriter::with_capacity(256 * 1024, file))) })
    }
}

impl ReportSink for FileSink {
    fn before_commit(&self) -> bool {
        true
    }

    fn record(&self, tag: &ShardTag, entries: Vec<ReportEntry>) {
        let mut guard = self.out.lock().unwrap_or_else(|e| e.into_inner());
        let Some(out) = guard.as_mut() else { return };
        let mut write = || -> std::io::Result<()> {
            for e in &entries {
                let mut v = e.to_json();
                v["shard"] = serde_json::Value::String(tag.shard.clone());
                v["holder"] = serde_json::Value::String(tag.holder.clone());
                serde_json::to_writer(&mut *out, &v)?;
                out.write_all(b"\n")?;
            }
            // Reaches the kernel before the commit, so a killed worker loses no committed line.
            out.flush()
        };
        if let Err(e) = write() {
            tracing::error!(path = %self.path.display(), error = %e, "cannot write report lines; the report will be incomplete");
            *guard = None;
        }
    }
}
