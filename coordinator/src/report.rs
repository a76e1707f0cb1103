//! Task reports and the summary.
//!
//! The report is JSON Lines: one `{"type":"entry",...}` line per entry as shards complete, then
//! one `{"type":"summary",...}` line. Writing happens on a dedicated sync actor thread so the
//! actors that move data never block on the report file.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;

use actix::prelude::*;
use ferry_common::model::{Counters, Execution, ReportEntry};
use ferry_common::paths;
use ferry_worker::report::{ReportSink, ShardTag};

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

/// Writes the report file. Runs in a SyncArbiter thread: file writes block.
pub struct ReportWriter {
    path: PathBuf,
    out: Option<BufWriter<File>>,
    error: Option<String>,
}

impl ReportWriter {
    /// Creates (truncates) the report file up front, so a bad path fails before any copying.
    pub fn create(path: PathBuf) -> Result<Self, String> {
        let file = File::create(&path).map_err(|e| format!("cannot write report {}: {e} (choose a writable path for --report)", path.display()))?;
        Ok(ReportWriter { path, out: Some(BufWriter::with_capacity(256 * 1024, file)), error: None })
    }

    fn write_line(&mut self, value: &serde_json::Value) {
        if let Some(out) = self.out.as_mut() {
            let r = serde_json::to_writer(&mut *out, value).map_err(std::io::Error::from).and_then(|_| out.write_all(b"\n"));
            if let Err(e) = r {
                self.error = Some(format!("cannot write report {}: {e}", self.path.display()));
                self.out = None;
            }
        }
    }
}

impl Actor for ReportWriter {
    type Context = SyncContext<Self>;
}

#[derive(Message)]
#[rtype(result = "()")]
pub struct Lines(pub Vec<ReportEntry>);

impl Handler<Lines> for ReportWriter {
    type Result = ();
    fn handle(&mut self, msg: Lines, _: &mut SyncContext<Self>) {
        for e in &msg.0 {
            self.write_line(&e.to_json());
        }
    }
}

/// Writes the summary line, flushes and syncs; answers with an error if any write failed.
#[derive(Message)]
#[rtype(result = "Result<(), String>")]
pub struct Finish(pub serde_json::Value);

impl Handler<Finish> for ReportWriter {
    type Result = Result<(), String>;
    fn handle(&mut self, msg: Finish, _: &mut SyncContext<Self>) -> Result<(), String> {
        self.write_line(&msg.0);
        if let Some(mut out) = self.out.take() {
            let r = out.flush().and_then(|_| out.get_ref().sync_all());
            if let Err(e) = r {
                self.error = Some(format!("cannot write report {}: {e}", self.path.display()));
            }
        }
        match self.error.take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// The movers' view of the report writer.
pub struct ActorSink(pub Addr<ReportWriter>);

impl ReportSink for ActorSink {
    fn record(&self, _tag: &ShardTag, entries: Vec<ReportEntry>) {
        self.0.do_send(Lines(entries));
    }
}
