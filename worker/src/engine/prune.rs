//! Prune shards (`sync`): delete what a destination directory holds and the source does
//! not, in batches. Excluded paths at the destination are left alone.

use std::collections::HashSet;

use ferry_common::error::{ErrorKind, FerryError};
use ferry_common::model::{EntryKind, EntryStatus, ScanDir};
use ferry_common::paths;

use super::dest::Dest;
use super::{ExecContext, Line, Outcome};
use crate::location::LocationExt;

/// Most names of a source directory held to tell what the destination has extra, where the
/// source cannot answer a `stat` cheaply.
const SOURCE_NAMES_CAP: usize = 1_000_000;
/// Deletions sent together (one DeleteObjects on S3).
const DELETE_BATCH: usize = 1000;

/// How the source answers "do you have this name?".
enum SourceNames {
    /// A `stat` each (a local tree).
    Stat,
    Set(HashSet<Vec<u8>>),
}

pub fn run_prune(ctx: &ExecContext, dest: &dyn Dest, dir: &ScanDir) -> Result<Outcome, FerryError> {
    let mut out = Outcome::default();
    if !ctx.options().remove_deleted {
        return Ok(out);
    }
    let src = ctx.src()?;
    let names = if src.capabilities().cheap_stat {
        SourceNames::Stat
    } else {
        match src.list_all(&dir.path, SOURCE_NAMES_CAP)? {
            Some(listed) => SourceNames::Set(listed.into_iter().map(|l| l.name).collect()),
            None => {
                return Err(FerryError::new(
                    ErrorKind::Other,
                    format!("{} has more than {SOURCE_NAMES_CAP} entries: sync cannot compare it in one shard", src.describe(&dir.path)),
                ))
            }
        }
    };
    let mut batch: Vec<(Vec<u8>, EntryKind, u64)> = Vec::new();
    let mut resume: Option<Vec<u8>> = None;
    loop {
        let page = match dest.list(&dir.path, resume.as_deref(), DELETE_BATCH) {
            // A directory the destination cannot name holds nothing there to delete.
            Err(e) if e.kind == ErrorKind::Unsupported => return Ok(out),
            other => other?,
        };
        for l in page.entries {
            let rel = paths::child(&dir.path, &l.name);
            let in_source = match &names {
                SourceNames::Stat => src.stat(&rel)?.is_some(),
                SourceNames::Set(set) => set.contains(&l.name),
            };
            let kind = l.meta.kind();
            if !in_source && ctx.matcher.covers(&rel, kind == EntryKind::Dir, dir.included) {
                batch.push((rel, kind, l.meta.size));
            }
        }
        if batch.len() >= DELETE_BATCH || page.resume.is_none() {
            delete_batch(ctx, dest, std::mem::take(&mut batch), &mut out)?;
        }
        match page.resume {
            Some(r) => resume = Some(r),
            None => return Ok(out),
        }
    }
}

fn delete_batch(ctx: &ExecContext, dest: &dyn Dest, batch: Vec<(Vec<u8>, EntryKind, u64)>, out: &mut Outcome) -> Result<(), FerryError> {
    if batch.is_empty() {
        return Ok(());
    }
    if ctx.options().dry_run {
        for (rel, kind, _) in batch {
            // Not prepared by any scan: counted here so every reported entry is accounted for.
            out.counters().files_prepared += 1;
            out.record(Line::new(rel, kind, EntryStatus::Skipped).reason("dry run: would delete"));
        }
        return Ok(());
    }
    ctx.fence()?;
    let rels: Vec<Vec<u8>> = batch.iter().map(|(r, _, _)| r.clone()).collect();
    for ((rel, kind, size), result) in batch.into_iter().zip(dest.remove(&rels)) {
        match result {
            Ok(n) => {
                // A removed directory counts the files inside it; the report names the top.
                out.counters().files_deleted += n.saturating_sub(1);
                let mut line = Line::new(rel, kind, EntryStatus::Deleted).size(if kind == EntryKind::File { size } else { 0 });
                if kind == EntryKind::Dir {
                    line = line.reason(format!("removed with {n} entries below it"));
                }
                out.record(line);
            }
            Err(e) => out.fail(Line::new(rel, kind, EntryStatus::Failed), &e),
        }
    }
    Ok(())
}
