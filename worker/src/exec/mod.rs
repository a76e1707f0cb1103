//! What a worker does with each kind of shard.
//!
//! The functions here are synchronous and do blocking file I/O: callers run them on the
//! blocking pool, never on an actor's thread. Each returns an [`Outcome`], which the queue
//! commits in the shard's completion transaction.

pub mod context;
pub mod object;
pub mod plan;
pub mod scan;
pub mod transfer;
pub mod verify;

use ferry_common::error::FerryError;
use ferry_common::model::{
    Counters, EntryKind, EntryStatus, Failure, RelPath, ReportEntry, ShardBody, ShardResult, MAX_FAILURES_PER_RESULT,
};

pub use context::ExecContext;

/// The result of running one shard.
#[derive(Debug, Default)]
pub struct Outcome {
    pub result: ShardResult,
    /// Report lines, released once the completion commits.
    pub report: Vec<ReportEntry>,
    /// New shards to queue in the completion transaction.
    pub emit: Vec<ShardBody>,
    /// Entries that failed for a transient reason, to try again as a new attempt.
    pub retry: Option<ShardBody>,
    /// The last transient error, carried with the retry.
    pub retry_error: Option<String>,
    /// The worker lost its lease midway: drop the shard without completing it.
    pub abandoned: bool,
}

impl Outcome {
    pub fn counters(&mut self) -> &mut Counters {
        &mut self.result.counters
    }

    fn push_failure(&mut self, path: &[u8], reason: &str) {
        if self.result.failures.len() < MAX_FAILURES_PER_RESULT {
            self.result.failures.push(Failure { path: path.to_vec(), reason: reason.to_string() });
        }
    }

    /// Records one entry's final outcome: the counter and the report line.
    pub fn record(&mut self, path: RelPath, kind: EntryKind, status: EntryStatus, size: u64, crc: Option<u32>, reason: Option<String>) {
        let c = &mut self.result.counters;
        match status {
            EntryStatus::Transferred => {
                c.files_transferred += 1;
                c.bytes_transferred += size;
            }
            EntryStatus::Skipped => c.files_skipped += 1,
            EntryStatus::Deleted => c.files_deleted += 1,
            EntryStatus::Verified => {
                c.files_verified += 1;
                c.bytes_verified += size;
            }
            EntryStatus::Failed => {
                c.files_failed += 1;
                self.push_failure(&path, reason.as_deref().unwrap_or("failed"));
            }
        }
        self.report.push(ReportEntry { path, kind, status, reason, size, crc32c: crc });
    }

    /// A difference found by verification. It is reported as failed, but counted apart from
    /// transfer failures so that every entry is still accounted for exactly once.
    pub fn mismatch(&mut self, path: RelPath, kind: EntryKind, size: u64, reason: String) {
        self.result.counters.files_mismatched += 1;
        self.push_failure(&path, &reason);
        self.report.push(ReportEntry { path, kind, status: EntryStatus::Failed, reason: Some(reason), size, crc32c: None });
    }

    pub fn fail(&mut self, path: RelPath, kind: EntryKind, size: u64, err: &FerryError) {
        self.record(path, kind, EntryStatus::Failed, size, None, Some(err.to_string()));
    }
}
