//! The shard engine: every shard kind, written once against [`crate::location::Location`].
//!
//! - [`scan`] lists a source directory page and plans the work; [`plan`] bins it into
//!   shards (pure); [`decide`] is the one "unchanged?" rule (pure).
//! - [`transfer`] moves a transfer shard's entries: [`read`] (the reader) hands them to a
//!   writer through a [`crate::transport::Connector`], in-process or over a QUIC link;
//!   [`write`] (the writer) applies them to the destination and commits them with the one
//!   commit protocol, [`crate::location::commit`].
//! - [`parts`] writes the ranges of a large file and commits it; [`prune`], [`links`],
//!   [`dirmeta`] and [`verify`] are the other shard kinds.
//! - [`dest`] is what shards on a reader need of the destination: the destination itself,
//!   or a writer agent's answers over a link.
//!
//! The functions here are synchronous and block: callers run them on the blocking pool.
//! Each returns an [`Outcome`], which the queue commits in the shard's completion
//! transaction.

pub mod context;
pub mod decide;
pub mod dest;
pub mod dirmeta;
pub mod hooks;
pub mod links;
pub mod owners;
pub mod parts;
pub mod plan;
pub mod prune;
pub mod read;
pub mod scan;
pub mod transfer;
pub mod verify;
pub mod write;

use ferry_common::error::FerryError;
use ferry_common::model::{Counters, Entry, EntryKind, EntryStatus, Failure, RelPath, ReportEntry, ShardBody, ShardResult, Timestamp, MAX_FAILURES_PER_RESULT};

pub use context::ExecContext;

/// The result of running one shard.
#[derive(Debug, Default)]
pub struct Outcome {
    pub result: ShardResult,
    /// Report lines, committed with the completion.
    pub report: Vec<ReportEntry>,
    /// New shards to queue in the completion transaction.
    pub emit: Vec<ShardBody>,
    /// Entries that failed for a transient reason, to try again as a new attempt.
    pub retry: Option<ShardBody>,
    /// The last transient error, carried with the retry.
    pub retry_error: Option<String>,
    /// When the retry may run, and since when its work fails.
    pub retry_at: Option<crate::retry::RetryAt>,
    /// The worker lost its lease midway: drop the shard without completing it.
    pub abandoned: bool,
}

/// One report line being built.
#[derive(Clone, Debug)]
pub struct Line(ReportEntry);

impl Line {
    pub fn new(path: RelPath, kind: EntryKind, status: EntryStatus) -> Line {
        Line(ReportEntry { path, kind, status, reason: None, code: None, size: 0, crc32c: None, mtime: None, at_ms: 0 })
    }

    /// A line about a listed entry: its path, kind, size and mtime.
    pub fn of(entry: &Entry, status: EntryStatus) -> Line {
        let size = if entry.kind == EntryKind::File { entry.size } else { 0 };
        Line::new(entry.path.clone(), entry.kind, status).size(size).mtime(entry.mtime)
    }

    pub fn size(mut self, size: u64) -> Self {
        self.0.size = size;
        self
    }
    pub fn crc(mut self, crc: Option<u32>) -> Self {
        self.0.crc32c = crc;
        self
    }
    pub fn mtime(mut self, mtime: Timestamp) -> Self {
        self.0.mtime = Some(mtime);
        self
    }
    pub fn reason(mut self, reason: impl Into<String>) -> Self {
        self.0.reason = Some(reason.into());
        self
    }
    pub fn note(mut self, note: Option<String>) -> Self {
        self.0.reason = note;
        self
    }
    pub fn code(mut self, code: &str) -> Self {
        self.0.code = Some(code.to_string());
        self
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
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
    pub fn record(&mut self, line: Line) {
        let mut e = line.0;
        let c = &mut self.result.counters;
        match e.status {
            EntryStatus::Transferred => {
                c.files_transferred += 1;
                c.bytes_transferred += e.size;
            }
            EntryStatus::Skipped => c.files_skipped += 1,
            EntryStatus::Deleted => c.files_deleted += 1,
            EntryStatus::Verified => {
                c.files_verified += 1;
                c.bytes_verified += e.size;
            }
            EntryStatus::Failed => {
                c.files_failed += 1;
                let reason = e.reason.clone().unwrap_or_else(|| "failed".into());
                self.push_failure(&e.path, &reason);
            }
        }
        e.at_ms = now_ms();
        self.report.push(e);
    }

    /// Records a failure: the line with the error's message and stable code.
    pub fn fail(&mut self, line: Line, err: &FerryError) {
        let line = Line(ReportEntry { status: EntryStatus::Failed, ..line.0 });
        self.record(line.reason(err.to_string()).code(err.kind.code()));
    }

    /// A difference found by verification. It is reported as failed, but counted apart from
    /// transfer failures so that every entry is still accounted for exactly once.
    pub fn mismatch(&mut self, path: RelPath, kind: EntryKind, size: u64, reason: String) {
        self.result.counters.files_mismatched += 1;
        self.push_failure(&path, &reason);
        let mut e = Line::new(path, kind, EntryStatus::Failed).size(size).reason(reason).code("MISMATCH").0;
        e.at_ms = now_ms();
        self.report.push(e);
    }

    /// A failure that belongs to no entry (a flush after renames, the root's metadata): it
    /// fails the execution without a report line.
    pub fn fail_shard(&mut self, err: &FerryError) {
        self.result.failures.push(Failure { path: Vec::new(), reason: err.to_string() });
    }
}

/// Collects entries that failed for a transient reason, to retry as a new attempt, as
/// [`crate::retry::RetryPolicy`] decides for each error.
pub struct Retries {
    policy: crate::retry::RetryPolicy,
    tries: crate::retry::Tries,
    entries: Vec<Entry>,
    last_error: Option<String>,
    at: Option<crate::retry::RetryAt>,
}

impl Retries {
    pub fn new(ctx: &ExecContext, tries: crate::retry::Tries) -> Self {
        let policy = crate::retry::RetryPolicy::from_limits(&ctx.options().limits);
        Retries { policy, tries, entries: Vec::new(), last_error: None, at: None }
    }

    /// Keeps `entry` for another attempt if the policy says so; reports it failed otherwise.
    pub fn fail(&mut self, out: &mut Outcome, entry: Entry, err: FerryError) {
        let now = ferry_common::schedule::now_ms();
        match self.policy.decide(err.kind, self.tries, now, crate::retry::jitter()) {
            crate::retry::Verdict::Retry(at) => {
                self.last_error = Some(err.to_string());
                self.entries.push(entry);
                // The shard's retry waits for the longest of its entries' delays.
                self.at = Some(match self.at {
                    Some(prev) => crate::retry::RetryAt { not_before_ms: prev.not_before_ms.max(at.not_before_ms), ..prev },
                    None => at,
                });
            }
            crate::retry::Verdict::Fail(why) => {
                let err = if why.is_empty() { err } else { FerryError::new(err.kind, format!("{} ({why})", err.message)) };
                out.fail(Line::of(&entry, EntryStatus::Failed), &err);
            }
        }
    }

    pub fn finish(self, out: &mut Outcome) {
        if !self.entries.is_empty() {
            out.retry = Some(ShardBody::Transfer { entries: self.entries });
            out.retry_error = self.last_error;
            out.retry_at = self.at;
        }
    }
}

/// Every entry of a dry run is reported as what would be done.
pub fn dry_run(entries: Vec<Entry>, what: &str) -> Outcome {
    let mut out = Outcome::default();
    for e in entries {
        out.record(Line::of(&e, EntryStatus::Skipped).reason(format!("dry run: would {what}")));
    }
    out
}
