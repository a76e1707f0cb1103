//! Where per-entry report lines go. Entries are handed over only after the shard's
//! completion transaction succeeded, so a shard that runs twice is reported once.

use ferry_common::model::ReportEntry;

pub trait ReportSink: Send + Sync + 'static {
    fn record(&self, entries: Vec<ReportEntry>);
}

/// Discards entries (counters still travel through the Store).
pub struct NullSink;

impl ReportSink for NullSink {
    fn record(&self, _entries: Vec<ReportEntry>) {}
}
