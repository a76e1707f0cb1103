//! Scan shards: list source directories, compare with the destination, and plan the work.
//!
//! A scan shard lists a batch of directories, up to a budget of entries. When the budget runs
//! out in the middle of a directory, the rest continues in a new scan shard that resumes where
//! the listing stopped (a readdir cookie, or the last key of an object listing), so a
//! directory of millions of entries is listed in bounded pages and no process ever holds the
//! whole tree.
//!
//! Listing and comparing block ([`list_page`]); hard-link resolution needs the Store and
//! happens in the async driver; turning the page into shards is pure
//! ([`ListedPage::into_bodies`]).

use ferry_common::error::{ErrorKind, FerryError};
use ferry_common::model::{DirMeta, Entry, EntryKind, EntryStatus, LinkEntry, OverwriteMode, ScanDir, ShardBody, TransferMode};
use ferry_common::paths;

use super::decide::{self, Rules, Verdict};
use super::dest::Dest;
use super::plan::{plan_scans, Binner};
use super::{ExecContext, Line, Outcome};
use crate::location::{Listed, Location, Meta};

/// A regular file with more than one link: the Store decides which path is copied and which
/// become links.
#[derive(Debug)]
pub struct LinkCandidate {
    pub dev: u64,
    pub ino: u64,
    pub entry: Entry,
    /// Why the first path could be skipped, decided before the role is known: a link set
    /// must be resolved even when unchanged, or a new second path would become a copy.
    pub unchanged: Option<&'static str>,
}

#[derive(Debug, Default)]
pub struct ListedPage {
    pub outcome: Outcome,
    pub entries: Vec<Entry>,
    pub link_candidates: Vec<LinkCandidate>,
    pub subdirs: Vec<ScanDir>,
    /// Metadata of the directories whose listing ended in this page.
    pub dirmeta: Vec<DirMeta>,
    /// Of those, the ones an earlier page made hard links in (they wait for the Links stage).
    pub dirmeta_after_links: Vec<DirMeta>,
    pub prunes: Vec<ScanDir>,
    /// Directories left for a continuation shard (the first may carry where to resume).
    pub rest: Vec<ScanDir>,
}

/// Most subdirectories one page hands on before it stops, to bound the completion size.
const MAX_SUBDIRS_PER_PAGE: usize = 512;
/// Most large files (each several part shards) one page plans.
const MAX_PARTS_PER_PAGE: usize = 64;
/// Most bytes of report lines one page carries with its result.
const MAX_REPORT_BYTES_PER_PAGE: usize = 512 << 10;

/// Where a directory's listing stands in this page.
struct Budget {
    entries: usize,
    listed: usize,
    big_files: usize,
    report_bytes: usize,
}

impl Budget {
    fn spent(&self, page: &ListedPage) -> bool {
        self.listed >= self.entries
            || page.subdirs.len() >= MAX_SUBDIRS_PER_PAGE
            || self.big_files >= MAX_PARTS_PER_PAGE
            || self.report_bytes >= MAX_REPORT_BYTES_PER_PAGE
    }
}

/// Lists directories from `dirs` until the page budget is used up. `dest` is the
/// destination as this agent sees it (in-process, or through a writer agent).
pub fn list_page(ctx: &ExecContext, dest: &dyn Dest, dirs: &[ScanDir]) -> Result<ListedPage, FerryError> {
    let mut page = ListedPage::default();
    let mut budget = Budget { entries: ctx.options().limits.scan_page_entries as usize, listed: 0, big_files: 0, report_bytes: 0 };
    for (i, dir) in dirs.iter().enumerate() {
        if budget.spent(&page) {
            page.rest.extend_from_slice(&dirs[i..]);
            break;
        }
        if let Some(resume) = list_dir(ctx, dest, dir, &mut page, &mut budget)? {
            page.rest.push(resume);
            page.rest.extend_from_slice(&dirs[i + 1..]);
            break;
        }
    }
    // The subdirectories found are made at the destination now, by the page that listed
    // their parent, in listing order and owner-only: making one changes its parent's mtime,
    // so it must happen before the parent's metadata can be set (by this page's Settle shard).
    let made: Vec<Vec<u8>> = page.subdirs.iter().map(|d| d.path.clone()).collect();
    if !made.is_empty() && !ctx.options().dry_run {
        for r in dest.ensure_dirs(&made) {
            r?;
        }
    }
    Ok(page)
}

/// A source directory's metadata, to be set at the destination once its entries are; `None`
/// when it vanished since its parent listed it.
fn dir_meta(ctx: &ExecContext, src: &dyn Location, path: &[u8]) -> Result<Option<DirMeta>, FerryError> {
    let Some(m) = src.stat_dir(path)? else {
        if path.is_empty() {
            return Err(FerryError::new(ErrorKind::NotFound, format!("source {} does not exist (check the location)", src.describe(b""))));
        }
        return Ok(None);
    };
    let xattrs = if ctx.keeps_xattrs() {
        Some(src.xattrs(path)?.into_iter().map(|(k, v)| (serde_bytes::ByteBuf::from(k), serde_bytes::ByteBuf::from(v))).collect())
    } else {
        None
    };
    Ok(Some(DirMeta {
        path: path.to_vec(),
        mode: m.mode.unwrap_or(libc::S_IFDIR | 0o755),
        uid: m.uid.unwrap_or(u32::MAX),
        gid: m.gid.unwrap_or(u32::MAX),
        atime: m.atime.unwrap_or(m.mtime),
        mtime: m.mtime,
        xattrs,
    }))
}

/// The first listing page of a directory: its metadata and its prune. `None` when the
/// directory vanished since its parent listed it.
fn begin_dir(ctx: &ExecContext, src: &dyn Location, dir: &ScanDir, page: &mut ListedPage) -> Result<Option<DirMeta>, FerryError> {
    let Some(meta) = dir_meta(ctx, src, &dir.path)? else {
        return Ok(None);
    };
    if ctx.options().remove_deleted {
        if dir.path.is_empty() && !ctx.options().allow_empty_source && src.list(b"", None, 1)?.entries.is_empty() {
            return Err(FerryError::new(
                ErrorKind::Config,
                format!(
                    "source {} is empty: sync would delete everything at the destination (check that it is mounted and named right; pass --allow-empty-source, or the task option AllowEmptySource, if that is what you want)",
                    src.describe(b"")
                ),
            ));
        }
        page.prunes.push(ScanDir { path: dir.path.clone(), cookie: None, after: None, included: dir.included, links: false });
    }
    Ok(Some(meta))
}

/// Lists one directory; returns where to resume if the budget ran out inside it.
fn list_dir(ctx: &ExecContext, dest: &dyn Dest, dir: &ScanDir, page: &mut ListedPage, budget: &mut Budget) -> Result<Option<ScanDir>, FerryError> {
    let src = ctx.src()?;
    let resume = dir.after.clone().or_else(|| dir.cookie.map(|c| c.to_le_bytes().to_vec()));
    let begun = match resume {
        None => match begin_dir(ctx, src, dir, page)? {
            Some(meta) => Some(meta),
            None => return Ok(None),
        },
        Some(_) => None,
    };
    let room = budget.entries.saturating_sub(budget.listed).max(1);
    let listing = match src.list(&dir.path, resume.as_deref(), room) {
        Ok(l) => l,
        Err(e) if e.kind == ErrorKind::NotFound && !dir.path.is_empty() => return Ok(None),
        Err(e) => return Err(e),
    };
    // What the destination holds of this page, in one lookup (one round trip across a link).
    let compare = ctx.options().transfer_mode == TransferMode::Changed || ctx.options().overwrite == OverwriteMode::Never;
    let names: Vec<Vec<u8>> = listing.entries.iter().filter(|l| l.meta.kind() != EntryKind::Dir).map(|l| l.name.clone()).collect();
    let mut found = if compare { dest.lookup(&dir.path, &names)?.into_iter() } else { vec![None; names.len()].into_iter() };
    let rules = Rules::new(ctx.options(), ctx.keeps_owner(), &ctx.dst_profile.capabilities);
    let count = listing.entries.len();
    let mut next = listing.resume;
    for (i, l) in listing.entries.into_iter().enumerate() {
        budget.listed += 1;
        let there = if l.meta.kind() == EntryKind::Dir { None } else { found.next().flatten() };
        let cursor = l.cursor.clone();
        plan_entry(ctx, src, dest, dir, l, there, rules, page, budget)?;
        if budget.spent(page) && i + 1 < count {
            next = Some(cursor);
            break;
        }
    }
    if next.is_none() {
        // The listing ends in this page, so every shard that writes into the directory is
        // planned by now (the directory's metadata waits for them, see `ShardBody::Settle`).
        // A directory listed over several pages is looked up again: its first page's view
        // is not carried along.
        let meta = match begun {
            Some(m) => Some(m),
            None => dir_meta(ctx, src, &dir.path)?,
        };
        match meta {
            Some(m) if dir.links => page.dirmeta_after_links.push(m),
            Some(m) => page.dirmeta.push(m),
            None => {}
        }
    }
    Ok(next.map(|r| ScanDir { path: dir.path.clone(), cookie: None, after: Some(r), included: dir.included, links: dir.links }))
}

/// Plans one listed entry: a subdirectory to scan, a skip, a hard-link candidate, or an entry
/// to move.
#[allow(clippy::too_many_arguments)]
fn plan_entry(
    ctx: &ExecContext,
    src: &dyn Location,
    dest: &dyn Dest,
    dir: &ScanDir,
    l: Listed,
    there: Option<(Meta, bool)>,
    rules: Rules,
    page: &mut ListedPage,
    budget: &mut Budget,
) -> Result<(), FerryError> {
    let opts = ctx.options();
    let rel = paths::child(&dir.path, &l.name);
    let kind = l.meta.kind();
    let out_line = |page: &mut ListedPage, budget: &mut Budget, line: Line| {
        budget.report_bytes += rel.len() + 96;
        page.outcome.record(line);
    };
    if !paths::is_safe_relative(&rel) || l.name.contains(&b'/') {
        page.outcome.counters().files_prepared += 1;
        let line = Line::new(rel.clone(), kind, EntryStatus::Failed)
            .reason("the name is not a safe relative path ('.', '..' or an empty component); rename it")
            .code("UNSAFE_PATH");
        out_line(page, budget, line);
        return Ok(());
    }
    if kind == EntryKind::Dir {
        let Some(included) = ctx.matcher.scan_dir(&rel, dir.included) else {
            return Ok(());
        };
        page.outcome.counters().files_prepared += 1;
        page.subdirs.push(ScanDir { path: rel, cookie: None, after: None, included, links: false });
        return Ok(());
    }
    if !ctx.matcher.file_selected(&rel, dir.included) {
        return Ok(());
    }
    let size = if kind == EntryKind::File { l.meta.size } else { 0 };
    let c = page.outcome.counters();
    c.files_prepared += 1;
    c.bytes_prepared += size;
    let mut entry = Entry { path: rel.clone(), kind, size, mtime: l.meta.mtime, compare_checksum: false, check_dest: false };
    if kind.is_special() && !opts.preserve_devices {
        out_line(page, budget, Line::of(&entry, EntryStatus::Skipped).reason("special file skipped (--no-specials)").code("SPECIALS_SKIPPED"));
        return Ok(());
    }
    let dst = ctx.dst_profile;
    if let Some(r) = dst.limits.refusal(&dst.capabilities, &rel, kind, size) {
        out_line(page, budget, Line::of(&entry, EntryStatus::Skipped).reason(format!("destination cannot hold it: {}", r.message)).code(r.code));
        return Ok(());
    }
    // A symlink's target decides whether it changed, and a local listing leaves it unread. A
    // large file becomes part shards, which check the source's size and mtime as listed: an
    // object listing's time is the store's, so it is looked up.
    let (mut src_meta, mut src_complete) = (l.meta, l.complete);
    let big = kind == EntryKind::File && size >= opts.limits.part_threshold;
    if (kind == EntryKind::Symlink && src_meta.link_target.is_none() && there.is_some()) || (big && !src_complete) {
        if let Some(m) = src.stat(&rel)? {
            (src_meta, src_complete) = (m, true);
            entry.mtime = src_meta.mtime;
        }
    }
    let unchanged = match decide::verdict((&src_meta, src_complete), there.as_ref().map(|(m, c)| (m, *c)), rules) {
        Verdict::Copy => None,
        Verdict::Skip(reason) => Some(reason),
        Verdict::CompareContent => {
            entry.compare_checksum = true;
            None
        }
        Verdict::NeedMeta if kind == EntryKind::File && size >= opts.limits.part_threshold => {
            // Large files become part shards, which copy without comparing: decide here.
            let full = dest.stat_many(std::slice::from_ref(&rel)).pop().unwrap_or(Ok(None))?;
            match decide::verdict((&src_meta, src_complete), full.as_ref().map(|m| (m, true)), rules) {
                Verdict::Skip(reason) => Some(reason),
                _ => None,
            }
        }
        Verdict::NeedMeta => {
            entry.check_dest = true;
            None
        }
    };
    let linked = src_meta.links.filter(|&(_, _, n)| n > 1 && kind == EntryKind::File && ctx.src_profile.capabilities.hard_links && dst.capabilities.hard_links);
    if let Some((dev, ino, _)) = linked {
        page.link_candidates.push(LinkCandidate { dev, ino, entry, unchanged });
        return Ok(());
    }
    if let Some(reason) = unchanged {
        out_line(page, budget, Line::of(&entry, EntryStatus::Skipped).reason(reason));
        return Ok(());
    }
    if kind == EntryKind::File && size >= opts.limits.part_threshold {
        budget.big_files += 1;
    }
    page.entries.push(entry);
    Ok(())
}

/// How a hard-link candidate was resolved through the Store.
pub enum LinkRole {
    /// This path is the first of its set and is copied.
    First,
    /// Another path was copied first; this one becomes a link to it.
    LinkTo(Vec<u8>),
}

/// Whether a directory's metadata can be set as soon as its own entries are in place. One
/// that takes its owner's read, write or search permission away waits for the end of the
/// Transfer stage: set early, it could keep a non-root agent out of the directories below.
fn settles_early(d: &DirMeta) -> bool {
    d.mode & 0o700 == 0o700
}

impl ListedPage {
    /// Turns the page into shard bodies (pure). `roles` is parallel to `link_candidates`;
    /// `scan_room` is how many more scan shards the queue takes before found directories are
    /// kept in the page's continuation instead (see [`plan_scans`]).
    pub fn into_bodies(self, ctx: &ExecContext, shard_id: &str, roles: Vec<LinkRole>, scan_room: usize) -> Outcome {
        let mut out = self.outcome;
        let mut binner = Binner::new(&ctx.options().limits, ctx.dst_profile.limits, shard_id);
        for entry in self.entries {
            binner.push(entry);
        }
        // Hard links are made in the Links stage: the directories they are made in settle then.
        let mut linked_dirs = std::collections::HashSet::new();
        for (cand, role) in self.link_candidates.into_iter().zip(roles) {
            match role {
                LinkRole::First => match cand.unchanged {
                    Some(reason) => out.record(Line::of(&cand.entry, EntryStatus::Skipped).reason(reason)),
                    None => binner.push(cand.entry),
                },
                LinkRole::LinkTo(target) => {
                    linked_dirs.insert(paths::split(&cand.entry.path).0.to_vec());
                    binner.push_link(LinkEntry { path: cand.entry.path, target, size: cand.entry.size });
                }
            }
        }
        out.emit = binner.finish();
        for p in self.prunes {
            out.emit.push(ShardBody::Prune { dir: p });
        }
        let mut late = self.dirmeta_after_links;
        let mut early = Vec::new();
        for d in self.dirmeta {
            if settles_early(&d) && !linked_dirs.contains(&d.path) {
                early.push(d);
            } else {
                late.push(d);
            }
        }
        let mut rest = self.rest;
        // Only the first can be a directory whose listing goes on in the next page.
        if let Some(first) = rest.first_mut().filter(|f| linked_dirs.contains(&f.path)) {
            first.links = true;
        }
        if !early.is_empty() {
            out.emit.push(ShardBody::Settle { dirs: early });
        }
        if !late.is_empty() {
            out.emit.push(ShardBody::DirMeta { dirs: late });
        }
        out.emit.extend(plan_scans(self.subdirs, rest, scan_room));
        out
    }
}
