//! Scan shards: list source directories, compare with the destination, and emit the work.
//!
//! A scan shard lists a batch of directories, up to a budget of entries. When the budget runs
//! out in the middle of a directory, the rest continues in a new scan shard that resumes from
//! the readdir cookie, so a directory of millions of entries is listed in bounded pages and no
//! process ever holds the whole tree.
//!
//! Listing is blocking ([`list_page`]); hard-link resolution needs the Store and happens in the
//! async driver; turning the page into shards is pure ([`ListedPage::into_bodies`]).

use std::os::fd::{AsRawFd, RawFd};

use ferry_common::error::FerryError;
use ferry_common::model::{
    DirMeta, Entry, EntryKind, EntryStatus, LinkEntry, OverwriteMode, ScanDir,
    ShardBody, TransferMode,
};
use ferry_common::paths;

use super::context::{ExecContext, TEMP_PREFIX};
use super::plan::{scan_bodies, Binner};
use super::Outcome;
use crate::storage::local::{kind_of, remove_tree_at, sys};

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
    pub dirmeta: Vec<DirMeta>,
    pub prunes: Vec<ScanDir>,
    /// Directories left for a continuation shard (the first may carry a resume cookie).
    pub rest: Vec<ScanDir>,
}

/// Most subdirectories one page hands on before it stops, to bound the completion size.
const MAX_SUBDIRS_PER_PAGE: usize = 512;
/// Most part shards one page plans.
const MAX_PARTS_PER_PAGE: usize = 64;

fn same_mtime(a: &libc::stat, b: &libc::stat) -> bool {
    a.st_mtime == b.st_mtime && a.st_mtime_nsec == b.st_mtime_nsec
}

/// Lists directories from `dirs` until the page budget is used up.
pub fn list_page(ctx: &ExecContext, dirs: &[ScanDir]) -> Result<ListedPage, FerryError> {
    let budget = ctx.options().limits.scan_page_entries as usize;
    let mut page = ListedPage::default();
    let mut listed = 0usize;
    let mut big_files = 0usize;
    for (i, dir) in dirs.iter().enumerate() {
        let over = listed >= budget || page.subdirs.len() >= MAX_SUBDIRS_PER_PAGE || big_files >= MAX_PARTS_PER_PAGE;
        if over {
            page.rest.extend_from_slice(&dirs[i..]);
            break;
        }
        match list_dir(ctx, dir, &mut page, &mut listed, &mut big_files, budget)? {
            None => {}
            Some(cookie) => {
                page.rest.push(ScanDir { path: dir.path.clone(), cookie: Some(cookie), after: None, included: dir.included });
                page.rest.extend_from_slice(&dirs[i + 1..]);
                break;
            }
        }
    }
    Ok(page)
}

/// Opens (creating if needed) the destination directory for `rel`. Returns `None` in dry-run
/// when it does not exist.
fn prepare_dst_dir(ctx: &ExecContext, rel: &[u8]) -> Result<Option<std::os::fd::OwnedFd>, FerryError> {
    let Some(dst) = ctx.dst.as_ref() else { return Ok(None) };
    match dst.open_dir(rel) {
        Ok(fd) => return Ok(Some(fd)),
        Err(_) if ctx.options().dry_run => return Ok(None),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) || e.raw_os_error() == Some(libc::ENOTDIR) || e.raw_os_error() == Some(libc::ELOOP) => {}
        Err(e) => return Err(dst.error("open directory", rel, &e)),
    }
    ctx.fence()?;
    let (parent, name) = paths::split(rel);
    let pfd = dst.open_dir(parent).map_err(|e| dst.error("open directory", parent, &e))?;
    // Something else (a file, a symlink) is in the way of a directory: it goes, as rsync does.
    if let Some(st) = sys::lstat_at(pfd.as_raw_fd(), name).map_err(|e| dst.error("stat", rel, &e))? {
        if st.st_mode & libc::S_IFMT != libc::S_IFDIR {
            remove_tree_at(pfd.as_raw_fd(), name).map_err(|e| dst.error("remove", rel, &e))?;
        }
    }
    // Owner-only until the DirMeta stage sets the real mode after the contents are written.
    match sys::mkdir_at(pfd.as_raw_fd(), name, 0o700) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(dst.error("create directory", rel, &e)),
    }
    dst.open_dir(rel).map(Some).map_err(|e| dst.error("open directory", rel, &e))
}

/// Lists one directory; returns the resume cookie if the budget ran out inside it.
fn list_dir(
    ctx: &ExecContext,
    dir: &ScanDir,
    page: &mut ListedPage,
    listed: &mut usize,
    big_files: &mut usize,
    budget: usize,
) -> Result<Option<i64>, FerryError> {
    let opts = ctx.options();
    let src_fd = match ctx.src().open_dir(&dir.path) {
        Ok(fd) => fd,
        // The directory vanished since its parent listed it: nothing to copy.
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) && !dir.path.is_empty() => return Ok(None),
        Err(e) => return Err(ctx.src().error("open directory", &dir.path, &e)),
    };
    let dst_fd = prepare_dst_dir(ctx, &dir.path)?;
    if dir.cookie.is_none() {
        let st = sys::fstat(src_fd.as_raw_fd()).map_err(|e| ctx.src().error("stat", &dir.path, &e))?;
        page.dirmeta.push(DirMeta {
            path: dir.path.clone(),
            mode: st.st_mode,
            uid: st.st_uid,
            gid: st.st_gid,
            atime: sys::atime(&st),
            mtime: sys::mtime(&st),
        });
        if dst_fd.is_some() {
            page.prunes.push(ScanDir { path: dir.path.clone(), cookie: None, after: None, included: dir.included });
        }
    }
    let mut reader = sys::DirReader::new(src_fd, dir.cookie).map_err(|e| ctx.src().error("list", &dir.path, &e))?;
    let src_dir = reader.fd();
    let dst_dir = dst_fd.as_ref().map(|fd| fd.as_raw_fd());
    // Where the next readdir continues: the d_off of the last entry handled (0 = start).
    let mut resume_at = dir.cookie.unwrap_or(0);
    loop {
        if *listed >= budget || page.subdirs.len() >= MAX_SUBDIRS_PER_PAGE || *big_files >= MAX_PARTS_PER_PAGE {
            return Ok(Some(resume_at));
        }
        let Some(raw) = reader.next_entry().map_err(|e| ctx.src().error("list", &dir.path, &e))? else { break };
        resume_at = raw.cookie;
        if raw.name.starts_with(TEMP_PREFIX) {
            continue;
        }
        *listed += 1;
        let rel = paths::child(&dir.path, &raw.name);
        let st = match sys::lstat_at(src_dir, &raw.name) {
            Ok(Some(st)) => st,
            Ok(None) => continue, // deleted while listing
            Err(e) => {
                page.outcome.counters().files_prepared += 1;
                page.outcome.fail(rel.clone(), EntryKind::File, 0, &ctx.src().error("stat", &rel, &e));
                continue;
            }
        };
        let kind = kind_of(&st);
        if kind == EntryKind::Dir {
            let Some(included) = ctx.matcher.scan_dir(&rel, dir.included) else { continue };
            page.outcome.counters().files_prepared += 1;
            page.subdirs.push(ScanDir { path: rel, cookie: None, after: None, included });
            continue;
        }
        if !ctx.matcher.file_selected(&rel, dir.included) {
            continue;
        }
        let size = if kind == EntryKind::File { st.st_size as u64 } else { 0 };
        let c = page.outcome.counters();
        c.files_prepared += 1;
        c.bytes_prepared += size;
        if kind.is_special() && !opts.preserve_devices {
            page.outcome.record(rel, kind, EntryStatus::Skipped, 0, None, Some("special file skipped (--no-specials)".into()));
            continue;
        }
        let mut entry = Entry { path: rel, kind, size, mtime: sys::mtime(&st), compare_checksum: false, check_dest: false };
        let unchanged = match dst_dir {
            Some(dst_dir) => unchanged_reason(ctx, src_dir, dst_dir, &raw.name, &st, &mut entry)?,
            None => None,
        };
        if kind == EntryKind::File && st.st_nlink > 1 {
            page.link_candidates.push(LinkCandidate { dev: st.st_dev, ino: st.st_ino, entry, unchanged });
            continue;
        }
        if let Some(reason) = unchanged {
            page.outcome.record(entry.path, kind, EntryStatus::Skipped, size, None, Some(reason.into()));
            continue;
        }
        if kind == EntryKind::File && size >= opts.limits.part_threshold {
            *big_files += 1;
        }
        page.entries.push(entry);
    }
    Ok(None)
}

/// Decides whether an entry can be skipped, per TransferMode and OverwriteMode. May flag a
/// file for a checksum comparison instead.
fn unchanged_reason(
    ctx: &ExecContext,
    src_dir: RawFd,
    dst_dir: RawFd,
    name: &[u8],
    src: &libc::stat,
    entry: &mut Entry,
) -> Result<Option<&'static str>, FerryError> {
    let opts = ctx.options();
    let dst = ctx.dst()?;
    let Some(d) = sys::lstat_at(dst_dir, name).map_err(|e| dst.error("stat", &entry.path, &e))? else {
        return Ok(None);
    };
    if opts.overwrite == OverwriteMode::Never {
        return Ok(Some("exists at the destination (OverwriteMode NEVER)"));
    }
    if opts.transfer_mode == TransferMode::All {
        return Ok(None);
    }
    if kind_of(&d) != entry.kind {
        return Ok(None);
    }
    let unchanged = match entry.kind {
        EntryKind::File => {
            if d.st_size != src.st_size {
                false
            } else if opts.checksum {
                entry.compare_checksum = true;
                return Ok(None);
            } else {
                same_mtime(src, &d)
            }
        }
        EntryKind::Symlink => {
            let a = sys::readlink_at(src_dir, name).map_err(|e| ctx.src().error("read link", &entry.path, &e))?;
            let b = sys::readlink_at(dst_dir, name).map_err(|e| dst.error("read link", &entry.path, &e))?;
            a == b && same_mtime(src, &d)
        }
        EntryKind::CharDev | EntryKind::BlockDev => src.st_rdev == d.st_rdev && same_mtime(src, &d),
        _ => same_mtime(src, &d),
    };
    let meta_same = d.st_mode == src.st_mode && (!opts.preserve_owner || !ctx.is_root || (d.st_uid == src.st_uid && d.st_gid == src.st_gid));
    Ok((unchanged && meta_same).then_some(if opts.checksum { "unchanged" } else { "unchanged (size and mtime)" }))
}

/// How a hard-link candidate was resolved through the Store.
pub enum LinkRole {
    /// This path is the first of its set and is copied.
    First,
    /// Another path was copied first; this one becomes a link to it.
    LinkTo(Vec<u8>),
}

impl ListedPage {
    /// Turns the page into shard bodies (pure). `roles` is parallel to `link_candidates`.
    pub fn into_bodies(self, ctx: &ExecContext, shard_id: &str, roles: Vec<LinkRole>) -> Outcome {
        let limits = &ctx.options().limits;
        let mut out = self.outcome;
        let mut binner = Binner::new(limits, shard_id);
        for entry in self.entries {
            binner.push(entry);
        }
        for (cand, role) in self.link_candidates.into_iter().zip(roles) {
            match role {
                LinkRole::First => match cand.unchanged {
                    Some(reason) => {
                        let e = cand.entry;
                        out.record(e.path, e.kind, EntryStatus::Skipped, e.size, None, Some(reason.into()));
                    }
                    None => binner.push(cand.entry),
                },
                LinkRole::LinkTo(target) => binner.push_link(LinkEntry { path: cand.entry.path, target, size: cand.entry.size }),
            }
        }
        out.emit = binner.finish();
        for p in self.prunes {
            out.emit.push(ShardBody::Prune { dir: p });
        }
        out.emit.extend(scan_bodies(self.subdirs));
        if !self.dirmeta.is_empty() {
            out.emit.push(ShardBody::DirMeta { dirs: self.dirmeta });
        }
        if !self.rest.is_empty() {
            out.emit.push(ShardBody::Scan { dirs: self.rest });
        }
        out
    }
}
