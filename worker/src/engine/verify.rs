//! Verify shards: compare source and destination directories entry by entry, content by
//! CRC32C (what a store keeps, where it vouches for it). Used by `ferry verify` and by
//! POINT_IN_TIME_CONSISTENT at the end of a transfer. The destination is reached in-process
//! or through a writer agent, a directory at a time.

use std::collections::HashMap;

use ferry_common::error::{ErrorKind, FerryError};
use ferry_common::model::{EntryKind, EntryStatus, Mode, ScanDir, ShardBody};
use ferry_common::paths;

use super::decide;
use super::dest::Dest;
use super::plan::scan_bodies;
use super::{ExecContext, Line, Outcome};
use crate::location::{Listed, Location, LocationExt, Meta};

/// Most names of one directory compared in one shard.
const VERIFY_CAP: usize = 1_000_000;

/// Every name of a directory at the destination, by name.
fn dest_names(dest: &dyn Dest, dir: &[u8]) -> Result<HashMap<Vec<u8>, (Meta, bool)>, FerryError> {
    let mut out = HashMap::new();
    let mut resume: Option<Vec<u8>> = None;
    loop {
        let page = match dest.list(dir, resume.as_deref(), 1000) {
            // The destination cannot even name this directory (a non-UTF-8 name on S3).
            Err(e) if e.kind == ErrorKind::Unsupported => return Ok(out),
            other => other?,
        };
        out.extend(page.entries.into_iter().map(|l| (l.name, (l.meta, l.complete))));
        if out.len() > VERIFY_CAP {
            return Err(FerryError::new(ErrorKind::Other, format!("{} is too large to verify in one shard", dest.describe(dir))));
        }
        match page.resume {
            Some(r) => resume = Some(r),
            None => return Ok(out),
        }
    }
}

/// An entry of the directory being verified.
struct Pair {
    rel: Vec<u8>,
    src: Meta,
    dst: Option<Meta>,
}

/// The source's full metadata of a listed entry.
fn full(src: &dyn Location, rel: &[u8], l: Listed) -> Result<Meta, FerryError> {
    if l.complete && l.meta.kind() != EntryKind::Symlink {
        return Ok(l.meta);
    }
    src.stat(rel)?.ok_or_else(|| FerryError::new(ErrorKind::SourceChanged, format!("{} was removed from the source during verification", src.describe(rel))))
}

pub fn run_verify(ctx: &ExecContext, dest: &dyn Dest, dirs: &[ScanDir], buf: &mut Vec<u8>) -> Result<Outcome, FerryError> {
    let src = ctx.src()?;
    let mut out = Outcome::default();
    let report_all = ctx.spec.mode == Mode::Verify;
    let check_extras = matches!(ctx.spec.mode, Mode::Verify | Mode::Sync);
    let owner = ctx.keeps_owner();
    let rules = decide::Rules::new(ctx.options(), owner, &ctx.dst_profile.capabilities);
    let mut subdirs = Vec::new();
    for dir in dirs {
        let Some(mut listed) = src.list_all(&dir.path, VERIFY_CAP)? else {
            return Err(FerryError::new(ErrorKind::Other, format!("{} is too large to verify in one shard", src.describe(&dir.path))));
        };
        listed.sort_by(|a, b| a.name.cmp(&b.name));
        let mut at_dest = dest_names(dest, &dir.path)?;
        let mut pairs = Vec::new();
        for l in listed {
            let name = l.name.clone();
            let rel = paths::child(&dir.path, &name);
            let kind = l.meta.kind();
            let there = at_dest.remove(&name);
            // What the destination cannot hold was skipped, with its code, by the scan; a
            // verify run names it the same way, and never counts it as missing.
            let refused = ctx.dst_profile.limits.refusal(&ctx.dst_profile.capabilities, &rel, kind, l.meta.size);
            if kind == EntryKind::Dir {
                let Some(included) = ctx.matcher.scan_dir(&rel, dir.included) else {
                    continue;
                };
                if report_all {
                    out.counters().files_prepared += 1;
                }
                if let Some(r) = refused {
                    if report_all {
                        out.record(
                            Line::new(rel.clone(), EntryKind::Dir, EntryStatus::Skipped)
                                .reason(format!("destination cannot hold it: {}", r.message))
                                .code(r.code),
                        );
                    }
                    subdirs.push(ScanDir { path: rel, cookie: None, after: None, included, links: false });
                    continue;
                }
                let diff = match &there {
                    Some((d, _)) if d.kind() != EntryKind::Dir => Some(format!("type differs: dir at the source, {} at the destination", d.kind().as_str())),
                    // Where the listing carries a directory's metadata, it is compared too.
                    Some((d, true)) if l.complete => decide::difference(&l.meta, d, rules),
                    Some(_) => None,
                    None => Some("missing at the destination".into()),
                };
                match diff {
                    Some(reason) => out.mismatch(rel.clone(), EntryKind::Dir, 0, reason),
                    None if report_all => out.record(Line::new(rel.clone(), EntryKind::Dir, EntryStatus::Verified)),
                    None => {}
                }
                subdirs.push(ScanDir { path: rel, cookie: None, after: None, included, links: false });
                continue;
            }
            if !ctx.matcher.file_selected(&rel, dir.included) || kind.is_special() && !ctx.options().preserve_devices {
                continue;
            }
            if report_all {
                out.counters().files_prepared += 1;
                out.counters().bytes_prepared += l.meta.size;
            }
            if let Some(r) = refused {
                if report_all {
                    out.record(Line::new(rel, kind, EntryStatus::Skipped).reason(format!("destination cannot hold it: {}", r.message)).code(r.code));
                }
                continue;
            }
            let complete = there.as_ref().is_some_and(|(m, c)| *c && m.kind() != EntryKind::Symlink);
            let dst = there.map(|(m, _)| m);
            match full(src, &rel, l) {
                Ok(s) => pairs.push((Pair { rel, src: s, dst }, complete)),
                Err(e) => out.mismatch(rel, kind, 0, e.to_string()),
            }
        }
        compare(src, dest, pairs, rules, report_all, &mut out, buf);
        if check_extras {
            let mut extras: Vec<(Vec<u8>, EntryKind)> = at_dest.into_iter().map(|(n, (m, _))| (n, m.kind())).collect();
            extras.sort_by(|a, b| a.0.cmp(&b.0));
            for (name, kind) in extras {
                let rel = paths::child(&dir.path, &name);
                if ctx.matcher.covers(&rel, kind == EntryKind::Dir, dir.included) {
                    out.mismatch(rel, kind, 0, "only at the destination".into());
                }
            }
        }
    }
    out.emit = scan_bodies(subdirs)
        .into_iter()
        .map(|b| match b {
            ShardBody::Scan { dirs } => ShardBody::Verify { dirs },
            other => other,
        })
        .collect();
    Ok(out)
}

/// Compares the entries of one directory: metadata first (the destination's is looked up
/// where its listing did not carry all of it), then the content of files that agree on it.
fn compare(src: &dyn Location, dest: &dyn Dest, pairs: Vec<(Pair, bool)>, rules: decide::Rules, report_all: bool, out: &mut Outcome, buf: &mut Vec<u8>) {
    let incomplete: Vec<Vec<u8>> = pairs.iter().filter(|(p, complete)| p.dst.is_some() && !complete).map(|(p, _)| p.rel.clone()).collect();
    let mut looked_up: HashMap<Vec<u8>, Result<Option<Meta>, FerryError>> = incomplete.iter().cloned().zip(dest.stat_many(&incomplete)).collect();
    let mut content = Vec::new();
    for (mut p, complete) in pairs {
        if p.dst.is_some() && !complete {
            match looked_up.remove(&p.rel) {
                Some(Ok(m)) => p.dst = m,
                Some(Err(e)) => {
                    out.mismatch(p.rel, p.src.kind(), p.src.size, e.to_string());
                    continue;
                }
                None => {}
            }
        }
        let diff = match &p.dst {
            None => Some("missing at the destination".to_string()),
            Some(d) => decide::difference(&p.src, d, rules),
        };
        match diff {
            Some(reason) => out.mismatch(p.rel, p.src.kind(), p.src.size, reason),
            None if p.src.kind() == EntryKind::File => content.push(p),
            None if report_all => out.record(Line::new(p.rel, p.src.kind(), EntryStatus::Verified).mtime(p.src.mtime)),
            None => {}
        }
    }
    let rels: Vec<Vec<u8>> = content.iter().map(|p| p.rel.clone()).collect();
    let theirs = dest.checksums(&rels);
    for (p, theirs) in content.into_iter().zip(theirs) {
        let ours = src.checksum(&p.rel, &p.src, buf).map(|(c, _)| c);
        match (ours, theirs) {
            (Ok(a), Ok(b)) if a == b => {
                if report_all {
                    out.record(Line::new(p.rel, EntryKind::File, EntryStatus::Verified).size(p.src.size).crc(Some(a)).mtime(p.src.mtime));
                }
            }
            (Ok(a), Ok(b)) => {
                out.mismatch(p.rel, EntryKind::File, p.src.size, format!("content differs: CRC32C {a:08x} at the source, {b:08x} at the destination"))
            }
            (Err(e), _) | (_, Err(e)) => out.mismatch(p.rel, EntryKind::File, p.src.size, e.to_string()),
        }
    }
}
