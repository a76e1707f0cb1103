//! What an agent does with a shard's report lines: it logs them as the execution's LogLevel
//! asks, and sends the ones its report wants to the coordinator with the shard's result, in
//! the completion transaction. No agent writes a report file: only the coordinator does, so
//! agents at different sites share no directory.

use ferry_common::model::{EntryStatus, ExecutionSpec, ReportChunk, ReportEntry};
use ferry_common::task::LogLevelOpt;

/// Most bytes of report lines in one Store value (the Store refuses values above 256 KiB).
const CHUNK_BYTES: usize = 192 << 10;

/// Logs entries per LogLevel: OFF logs nothing, BASIC (and ad-hoc runs) failed entries,
/// TRANSFER every entry. The report itself is unaffected.
pub fn log_entries(spec: &ExecutionSpec, entries: &[ReportEntry]) {
    let every = match spec.log_level {
        Some(LogLevelOpt::Off) => return,
        level => level == Some(LogLevelOpt::Transfer),
    };
    for e in entries {
        let path = ferry_common::paths::display(&e.path);
        match (&e.reason, e.status) {
            (Some(reason), EntryStatus::Failed) => {
                tracing::warn!(execution = %spec.id, path = %path, reason = %reason, "EntryFailed")
            }
            _ if every => {
                tracing::info!(execution = %spec.id, path = %path, status = e.status.as_str(), size = e.size, "Entry")
            }
            _ => {}
        }
    }
}

/// The lines the execution's report wants, cut into Store-sized chunks.
pub fn chunks(spec: &ExecutionSpec, entries: Vec<ReportEntry>) -> Vec<ReportChunk> {
    let mut out = Vec::new();
    let mut current = ReportChunk::default();
    let mut bytes = 0;
    for e in entries.into_iter().filter(|e| spec.report_lines.wants(e.status)) {
        let size = e.path.len() + e.reason.as_ref().map_or(0, String::len) + 64;
        if bytes + size > CHUNK_BYTES && !current.entries.is_empty() {
            out.push(std::mem::take(&mut current));
            bytes = 0;
        }
        bytes += size;
        current.entries.push(e);
    }
    if !current.entries.is_empty() {
        out.push(current);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_common::model::{EntryKind, ReportLines};

    fn entry(i: usize, status: EntryStatus) -> ReportEntry {
        ReportEntry {
            path: format!("dir/{i:06}-{}", "x".repeat(200)).into_bytes(),
            kind: EntryKind::File,
            status,
            reason: None,
            code: None,
            size: 1,
            crc32c: None,
            mtime: None,
            at_ms: 0,
        }
    }

    #[test]
    fn chunks_fit_store_values_and_keep_only_what_the_report_wants() {
        let mut spec = ferry_common::model::ExecutionSpec::new("e", ferry_common::model::Mode::Copy, "/a", "/b", Default::default());
        spec.report_lines = ReportLines::All;
        let lines: Vec<ReportEntry> = (0..5000).map(|i| entry(i, if i % 10 == 0 { EntryStatus::Failed } else { EntryStatus::Transferred })).collect();
        let all = chunks(&spec, lines.clone());
        assert_eq!(all.iter().map(|c| c.entries.len()).sum::<usize>(), 5000);
        for c in &all {
            assert!(ferry_common::codec::encode(c).unwrap().len() < ferry_common::store::MAX_VALUE_BYTES, "a chunk fits one Store value");
        }
        spec.report_lines = ReportLines::Errors;
        assert_eq!(chunks(&spec, lines.clone()).iter().map(|c| c.entries.len()).sum::<usize>(), 500);
        spec.report_lines = ReportLines::None;
        assert!(chunks(&spec, lines).is_empty());
    }
}
