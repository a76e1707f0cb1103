//! Directory metadata (Settle and DirMeta shards), set after everything inside the directory
//! was written (writing into a directory changes its mtime): a Settle shard as soon as every
//! shard that writes into its directories is done, a DirMeta shard at the end of the Transfer
//! and Links stages. They run where the destination is reached and need nothing of the
//! source: the scan captured each directory's metadata.

use ferry_common::error::{ErrorKind, FerryError};
use ferry_common::model::{DirMeta, EntryKind, EntryStatus};

use super::decide;
use super::{ExecContext, Line, Outcome};
use crate::location::{Durable, Location, Meta, Staged, Token, Xattrs};

fn known(id: u32) -> Option<u32> {
    (id != u32::MAX).then_some(id)
}

/// What the directory should look like at the destination.
fn wanted(ctx: &ExecContext, d: &DirMeta) -> Meta {
    let owner = ctx.keeps_owner();
    Meta {
        kind: Some(EntryKind::Dir),
        mtime: d.mtime,
        atime: Some(d.atime),
        mode: Some(d.mode),
        uid: known(d.uid).filter(|_| owner),
        gid: known(d.gid).filter(|_| owner),
        ..Meta::default()
    }
}

/// Sets one directory's metadata; returns why it was skipped, if it was.
fn apply(ctx: &ExecContext, dst: &dyn Location, d: &DirMeta) -> Result<Option<String>, FerryError> {
    // Every shard that writes into the directory is finished by now: what temporary debris is
    // left (workers that died, interrupted runs) goes before the directory's times are set.
    dst.sweep(&d.path)?;
    let want = wanted(ctx, d);
    let xattrs: Option<Xattrs> = d.xattrs.as_ref().filter(|_| dst.capabilities().xattrs).map(|x| x.iter().map(|(k, v)| (k.to_vec(), v.to_vec())).collect());
    if let Some(cur) = dst.stat_dir(&d.path)? {
        let owner = ctx.keeps_owner() && dst.capabilities().ownership;
        let same_xattrs = match &xattrs {
            Some(x) => dst.xattrs(&d.path)? == *x,
            None => true,
        };
        if cur.kind() == EntryKind::Dir && !decide::dir_differs(&want, &cur, owner) && same_xattrs {
            return Ok(Some("unchanged".into()));
        }
    }
    dst.set_meta(&d.path, &want, xattrs.as_ref())?;
    Ok(None)
}

pub fn run_dirmeta(ctx: &ExecContext, dirs: Vec<DirMeta>) -> Outcome {
    let mut out = Outcome::default();
    let dst = match ctx.dst() {
        Ok(d) => d.as_ref(),
        Err(e) => {
            out.fail_shard(&e);
            return out;
        }
    };
    let mut set = Vec::new();
    for d in dirs {
        if ctx.fence().is_err() {
            out.abandoned = true;
            return out;
        }
        // The root is not an entry of the report: its failure fails the shard.
        let is_root = d.path.is_empty();
        let line = |status| Line::new(d.path.clone(), EntryKind::Dir, status).mtime(d.mtime);
        if ctx.options().dry_run {
            if !is_root {
                out.record(line(EntryStatus::Skipped).reason("dry run"));
            }
            continue;
        }
        if let Some(r) = (!is_root).then(|| dst.limits().refusal(&dst.capabilities(), &d.path, EntryKind::Dir, 0)).flatten() {
            out.record(line(EntryStatus::Skipped).reason(format!("destination cannot hold it: {}", r.message)).code(r.code));
            continue;
        }
        let result = match apply(ctx, dst, &d) {
            Err(err) if err.kind == ErrorKind::Unsupported => Ok(Some(format!("destination cannot hold it: {}", err.message))),
            other => other,
        };
        match (result, is_root) {
            (Err(err), true) => out.fail_shard(&err),
            (_, true) => {}
            (Ok(None), false) => {
                out.record(line(EntryStatus::Transferred));
                set.push(Staged {
                    rel: d.path.clone(),
                    kind: EntryKind::Dir,
                    size: 0,
                    crc32c: None,
                    token: Token::Placed { etag: None },
                    part_tags: Vec::new(),
                    resumed: 0,
                });
            }
            (Ok(Some(reason)), false) => out.record(line(EntryStatus::Skipped).reason(reason)),
            (Err(err), false) => out.fail(line(EntryStatus::Failed), &err),
        }
    }
    if ctx.options().fsync && !set.is_empty() {
        if let Err(e) = dst.sync(&set, Durable::Names) {
            out.fail_shard(&e);
        }
    }
    out
}
