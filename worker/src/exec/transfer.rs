//! Transfer-stage shards: copy files, links and special files; write and commit parts of large
//! files; prune; create hard links; set directory metadata.
//!
//! The write protocol for every entry is the same: create it under a temporary name in its
//! destination directory, finish it completely (data, CRC, metadata), make it durable, and only
//! then rename it into place. A crash at any moment leaves either the old entry or the complete
//! new one under the final name, plus temporary debris that the next run removes.
//!
//! Durability is batched per shard: all files of a shard are written, then one `syncfs` makes
//! them durable together, then they are read back and verified, renamed, and a second `syncfs`
//! makes the renames durable before the shard is reported done.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use ferry_common::crc;
use ferry_common::error::{ErrorKind, FerryError};
use ferry_common::model::{
    DirMeta, Timestamp, Entry, EntryKind, EntryStatus, LinkEntry, PartSet, ScanDir, ShardBody, VerifyMode,
};
use ferry_common::paths;

use super::context::{ExecContext, TEMP_PREFIX};
use super::Outcome;
use crate::storage::local::{kind_of, remove_tree_at, sys, DirCache, LocalTree};
use crate::link::rate::RateLimiter;

/// A file written under its temporary name, waiting for the shard's flush and verification.
struct Pending {
    entry: Entry,
    crc: u32,
}

/// Collects entries that failed for a transient reason, to retry as a new attempt.
pub(crate) struct Retries<'a> {
    ctx: &'a ExecContext,
    attempt: u32,
    entries: Vec<Entry>,
    last_error: Option<String>,
}

impl<'a> Retries<'a> {
    pub(crate) fn new(ctx: &'a ExecContext, attempt: u32) -> Self {
        Retries { ctx, attempt, entries: Vec::new(), last_error: None }
    }

    /// Retries transient failures while attempts remain; reports the rest as failed.
    pub(crate) fn fail(&mut self, out: &mut Outcome, entry: Entry, err: FerryError) {
        if err.kind.is_transient() && self.attempt < self.ctx.options().limits.max_attempts {
            self.last_error = Some(err.to_string());
            self.entries.push(entry);
        } else {
            let reason = if err.kind.is_transient() {
                format!("{err} (gave up after {} attempts)", self.attempt)
            } else {
                err.to_string()
            };
            out.record(entry.path, entry.kind, EntryStatus::Failed, entry.size, None, Some(reason));
        }
    }

    pub(crate) fn finish(self, out: &mut Outcome) {
        if !self.entries.is_empty() {
            out.retry = Some(ShardBody::Transfer { entries: self.entries });
            out.retry_error = self.last_error;
        }
    }
}

pub(crate) fn source_changed(tree: &LocalTree, rel: &[u8], what: &str) -> FerryError {
    FerryError::new(ErrorKind::SourceChanged, format!("source changed while it was read: {} ({what})", tree.display_path(rel).display()))
}

/// Unlinks a temporary name, ignoring "already gone".
fn remove_temp(dir: RawFd, temp: &[u8]) {
    let _ = sys::unlink_at(dir, temp, false);
}

/// CRC32C of `[start, start+len)` of an open file, skipping holes without reading them.
pub fn crc_range(fd: RawFd, start: u64, len: u64, buf: &mut [u8]) -> std::io::Result<u32> {
    let mut acc = 0u32;
    let end = start + len;
    let mut pos = start;
    while pos < end {
        let data = sys::seek_data(fd, pos)?.unwrap_or(end).min(end);
        if data > pos {
            acc = crc::combine(acc, crc::zeros(data - pos), data - pos);
            pos = data;
            continue;
        }
        let hole = sys::seek_hole(fd, pos)?.min(end);
        while pos < hole {
            let want = ((hole - pos) as usize).min(buf.len());
            let n = sys::pread(fd, &mut buf[..want], pos)?;
            if n == 0 {
                return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "file is shorter than expected"));
            }
            acc = crc::extend(acc, &buf[..n]);
            pos += n as u64;
        }
    }
    Ok(acc)
}

/// Copies `[start, start+len)` from `src` to the same offsets of `dst`, computing the CRC32C
/// as the bytes stream past. Holes in a sparse source are not written, so they stay holes.
#[allow(clippy::too_many_arguments)] // the two fds and the range are the call; the rest are its tools
fn copy_range(src: RawFd, dst: RawFd, start: u64, len: u64, sparse: bool, buf: &mut [u8], rate: &RateLimiter, on_first_chunk: &mut dyn FnMut()) -> std::io::Result<u32> {
    let mut acc = 0u32;
    let end = start + len;
    let mut pos = start;
    while pos < end {
        let data_end = if sparse {
            let data = sys::seek_data(src, pos)?.unwrap_or(end).min(end);
            if data > pos {
                acc = crc::combine(acc, crc::zeros(data - pos), data - pos);
                pos = data;
                continue;
            }
            sys::seek_hole(src, pos)?.min(end)
        } else {
            end
        };
        while pos < data_end {
            let want = ((data_end - pos) as usize).min(buf.len());
            let n = sys::pread(src, &mut buf[..want], pos)?;
            if n == 0 {
                return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "source is shorter than when it was opened"));
            }
            acc = crc::extend(acc, &buf[..n]);
            rate.take(n as u64);
            sys::pwrite_all(dst, &buf[..n], pos)?;
            pos += n as u64;
            on_first_chunk();
        }
    }
    Ok(acc)
}

fn is_sparse(st: &libc::stat) -> bool {
    (st.st_blocks as u64) * 512 < st.st_size as u64
}

/// Sets extended attributes, owner, mode and times on an open destination file, in that
/// order: chown clears set-id bits, so mode comes after it, and times come last because every
/// other change touches ctime/mtime. Shared by the local path and the link's writer.
pub(crate) fn set_meta_fd<'x>(fd: RawFd, xattrs: impl IntoIterator<Item = (&'x [u8], &'x [u8])>, owner: Option<(u32, u32)>, mode: u32, atime: Timestamp, mtime: Timestamp) -> std::io::Result<()> {
    for (k, v) in xattrs {
        sys::fsetxattr(fd, k, v)?;
    }
    if let Some((uid, gid)) = owner {
        sys::fchown(fd, uid, gid)?;
    }
    sys::fchmod(fd, mode)?;
    sys::futimens(fd, atime, mtime)
}

/// Same for an entry that cannot be opened (symlink, FIFO, socket, device), by name. Linux
/// refuses user.* xattrs on symlinks and a symlink has no mode of its own, so a symlink gets
/// only its owner and times.
#[allow(clippy::too_many_arguments)]
pub(crate) fn set_meta_at<'x>(dir: RawFd, name: &[u8], is_symlink: bool, xattrs: impl IntoIterator<Item = (&'x [u8], &'x [u8])>, owner: Option<(u32, u32)>, mode: u32, atime: Timestamp, mtime: Timestamp) -> std::io::Result<()> {
    if !is_symlink {
        for (k, v) in xattrs {
            sys::lsetxattr_at(dir, name, k, v)?;
        }
    }
    if let Some((uid, gid)) = owner {
        sys::lchown_at(dir, name, uid, gid)?;
    }
    if !is_symlink {
        sys::chmod_at(dir, name, mode)?;
    }
    sys::utimens_at_nofollow(dir, name, atime, mtime)
}

/// The owner to set, when ferry runs as root and preserves owners.
pub(crate) fn owner_to_set(ctx: &ExecContext, uid: u32, gid: u32) -> Option<(u32, u32)> {
    (ctx.is_root && ctx.options().preserve_owner).then_some((uid, gid))
}

/// The source's metadata onto an open destination file.
fn apply_meta_fd(ctx: &ExecContext, src_xattrs: &[(Vec<u8>, Vec<u8>)], st: &libc::stat, dst: RawFd) -> std::io::Result<()> {
    let xattrs = src_xattrs.iter().map(|(k, v)| (k.as_slice(), v.as_slice()));
    set_meta_fd(dst, xattrs, owner_to_set(ctx, st.st_uid, st.st_gid), st.st_mode, sys::atime(st), sys::mtime(st))
}

/// The source's metadata onto an entry that cannot be opened, by name.
fn apply_meta_at(ctx: &ExecContext, kind: EntryKind, src_dir: RawFd, name: &[u8], st: &libc::stat, dst_dir: RawFd, dst_name: &[u8]) -> std::io::Result<()> {
    let is_symlink = kind == EntryKind::Symlink;
    let xattrs = if is_symlink { Vec::new() } else { sys::lxattrs_at(src_dir, name)? };
    let xattrs = xattrs.iter().map(|(k, v)| (k.as_slice(), v.as_slice()));
    set_meta_at(dst_dir, dst_name, is_symlink, xattrs, owner_to_set(ctx, st.st_uid, st.st_gid), st.st_mode, sys::atime(st), sys::mtime(st))
}

/// Renames a finished temporary entry over its final name. A directory in the way (the source
/// now has a file there) is removed first.
fn rename_into_place(dst: &LocalTree, dir: RawFd, temp: &[u8], name: &[u8], rel: &[u8]) -> Result<(), FerryError> {
    match sys::rename_at(dir, temp, dir, name) {
        Ok(()) => Ok(()),
        Err(e) if matches!(e.raw_os_error(), Some(libc::EISDIR) | Some(libc::ENOTEMPTY) | Some(libc::EEXIST)) => {
            remove_tree_at(dir, name).map_err(|e| dst.error("remove", rel, &e))?;
            sys::rename_at(dir, temp, dir, name).map_err(|e| dst.error("rename into place", rel, &e))
        }
        Err(e) => Err(dst.error("rename into place", rel, &e)),
    }
}

pub struct Buffers {
    pub data: Vec<u8>,
    /// Object-store transfers: one whole object or part, up to `plan::object_part_size`;
    /// grown on first use, so local-only movers never hold it.
    pub object: Vec<u8>,
}

impl Buffers {
    pub fn new(chunk: usize) -> Self {
        Buffers { data: vec![0u8; chunk], object: Vec::new() }
    }
}

/// Runs a Transfer shard.
pub fn run_transfer(ctx: &ExecContext, entries: Vec<Entry>, attempt: u32, bufs: &mut Buffers) -> Outcome {
    let mut out = Outcome::default();
    if ctx.options().dry_run {
        for e in entries {
            out.record(e.path, e.kind, EntryStatus::Skipped, e.size, None, Some("dry run: would copy".into()));
        }
        return out;
    }
    let dst = match ctx.dst() {
        Ok(d) => d,
        Err(err) => {
            for e in entries {
                out.fail(e.path, e.kind, e.size, &err);
            }
            return out;
        }
    };
    let mut retries = Retries::new(ctx, attempt);
    let (mut src_dirs, mut dst_dirs) = (DirCache::default(), DirCache::default());
    let mut pending: Vec<Pending> = Vec::new();
    for entry in entries {
        if ctx.fence().is_err() {
            out.abandoned = true;
            return out;
        }
        let (parent, name) = paths::split(&entry.path);
        let dirs = src_dirs
            .get(ctx.src(), parent)
            .map_err(|e| ctx.src().error("open directory", parent, &e))
            .and_then(|s| dst_dirs.get(dst, parent).map(|d| (s, d)).map_err(|e| dst.error("open directory", parent, &e)));
        let (src_dir, dst_dir) = match dirs {
            Ok(d) => d,
            Err(err) => {
                retries.fail(&mut out, entry, err);
                continue;
            }
        };
        let name = name.to_vec();
        let result = match entry.kind {
            EntryKind::File => copy_file(ctx, dst, src_dir, dst_dir, &name, &entry, bufs).map(|r| r.map(|crc| pending.push(Pending { entry: entry.clone(), crc }))),
            _ => copy_other(ctx, dst, src_dir, dst_dir, &name, &entry).map(|()| {
                out.record(entry.path.clone(), entry.kind, EntryStatus::Transferred, 0, None, None);
                Some(())
            }),
        };
        match result {
            Ok(Some(())) => {}
            Ok(None) => out.record(entry.path, entry.kind, EntryStatus::Skipped, entry.size, None, Some("unchanged (CRC32C)".into())),
            Err(err) if err.kind == ErrorKind::Unsupported && entry.kind.is_special() => {
                out.record(entry.path, entry.kind, EntryStatus::Skipped, 0, None, Some(format!("destination cannot hold it: {}", err.message)))
            }
            Err(err) => retries.fail(&mut out, entry, err),
        }
    }
    let others_written = out.counters().files_transferred > 0;
    let renamed = finish_pending(ctx, dst, pending, &mut dst_dirs, &mut retries, &mut out, bufs);
    if out.abandoned {
        return out;
    }
    if ctx.options().fsync && (renamed > 0 || others_written) {
        flush_or_report(dst, &mut out, "flush renames");
    }
    retries.finish(&mut out);
    out
}

/// Makes everything written so far durable. A failure here means the entries are in place
/// but maybe not durable: the shard reports it rather than claim success.
fn flush_or_report(dst: &LocalTree, out: &mut Outcome, what: &str) {
    if let Err(e) = sys::syncfs(dst.root_fd()) {
        let err = dst.error(what, b"", &e);
        out.result.failures.push(ferry_common::model::Failure { path: Vec::new(), reason: err.to_string() });
    }
}

/// Flush, verify and rename: the shard-level durability protocol (the caller flushes the
/// renames). Returns how many files were renamed into place.
fn finish_pending(ctx: &ExecContext, dst: &LocalTree, pending: Vec<Pending>, dst_dirs: &mut DirCache, retries: &mut Retries, out: &mut Outcome, bufs: &mut Buffers) -> usize {
    if pending.is_empty() {
        return 0;
    }
    let fsync = ctx.options().fsync;
    if fsync {
        if let Err(e) = sys::syncfs(dst.root_fd()) {
            let err = dst.error("flush", b"", &e);
            for p in pending {
                retries.fail(out, p.entry, err.clone());
            }
            return 0;
        }
    }
    let verify = ctx.options().verify != VerifyMode::None;
    let mut renamed = 0;
    for p in pending {
        if ctx.fence().is_err() {
            out.abandoned = true;
            return renamed;
        }
        let (parent, name) = paths::split(&p.entry.path);
        let temp = ctx.temp_name(name);
        let mut step = || -> Result<(), FerryError> {
            let dir = dst_dirs.get(dst, parent).map_err(|e| dst.error("open directory", parent, &e))?;
            if verify {
                // O_NOATIME: reading back must not undo the atime just set from the source.
                let fd = sys::open_read_noatime(dir, &temp).map_err(|e| dst.error("read back", &p.entry.path, &e))?;
                let got = crc_range(fd.as_raw_fd(), 0, p.entry.size, &mut bufs.data).map_err(|e| dst.error("read back", &p.entry.path, &e))?;
                if got != p.crc {
                    remove_temp(dir, &temp);
                    return Err(FerryError::new(
                        ErrorKind::Corrupt,
                        format!("CRC32C mismatch after writing {}: source {:08x}, destination {:08x}", dst.display_path(&p.entry.path).display(), p.crc, got),
                    ));
                }
            }
            rename_into_place(dst, dir, &temp, name, &p.entry.path)
        };
        match step() {
            Ok(()) => {
                renamed += 1;
                if verify {
                    out.counters().files_verified += 1;
                    out.counters().bytes_verified += p.entry.size;
                }
                out.counters().bytes_written += p.entry.size;
                out.record(p.entry.path, EntryKind::File, EntryStatus::Transferred, p.entry.size, Some(p.crc), None);
            }
            Err(err) => retries.fail(out, p.entry, err),
        }
    }
    renamed
}

/// Copies one regular file to its temporary name. `Ok(None)` means a checksum comparison
/// found it unchanged.
fn copy_file(ctx: &ExecContext, dst: &LocalTree, src_dir: RawFd, dst_dir: RawFd, name: &[u8], entry: &Entry, bufs: &mut Buffers) -> Result<Option<u32>, FerryError> {
    let rel = &entry.path;
    let sfd = sys::open_read_noatime(src_dir, name).map_err(|e| ctx.src().error("open", rel, &e))?;
    let st0 = sys::fstat(sfd.as_raw_fd()).map_err(|e| ctx.src().error("stat", rel, &e))?;
    if kind_of(&st0) != EntryKind::File {
        return Err(source_changed(ctx.src(), rel, "no longer a regular file"));
    }
    let size = st0.st_size as u64;
    if entry.compare_checksum {
        if let Some(same) = same_content(ctx, dst, sfd.as_raw_fd(), dst_dir, name, entry, size, bufs)? {
            if same {
                // Same bytes: only the metadata may need refreshing, in place.
                let dfd = sys::open_at(dst_dir, name, libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK, 0).map_err(|e| dst.error("open", rel, &e))?;
                let xattrs = sys::fxattrs(sfd.as_raw_fd()).map_err(|e| ctx.src().error("read xattrs of", rel, &e))?;
                apply_meta_fd(ctx, &xattrs, &st0, dfd.as_raw_fd()).map_err(|e| dst.error("set metadata on", rel, &e))?;
                return Ok(None);
            }
        }
    }
    let temp = ctx.temp_name(name);
    remove_temp(dst_dir, &temp);
    // Read-write so the test hook can flip a byte in place.
    let dfd = sys::open_at(dst_dir, &temp, libc::O_RDWR | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW, 0o600)
        .map_err(|e| dst.error("create", rel, &e))?;
    let result = (|| {
        let hook_change = ctx.hooks.source_change.as_deref() == Some(rel.as_slice());
        let mut on_chunk = || {
            if hook_change {
                append_to_source(ctx.src(), rel);
            }
        };
        let crc = copy_range(sfd.as_raw_fd(), dfd.as_raw_fd(), 0, size, is_sparse(&st0), &mut bufs.data, &ctx.rate, &mut on_chunk)
            .map_err(|e| if e.kind() == std::io::ErrorKind::UnexpectedEof { source_changed(ctx.src(), rel, "it shrank") } else { ctx.src().error("copy", rel, &e) })?;
        sys::ftruncate(dfd.as_raw_fd(), size).map_err(|e| dst.error("write", rel, &e))?;
        let st1 = sys::fstat(sfd.as_raw_fd()).map_err(|e| ctx.src().error("stat", rel, &e))?;
        if st1.st_size != st0.st_size || sys::mtime(&st1) != sys::mtime(&st0) {
            return Err(source_changed(ctx.src(), rel, "size or mtime changed"));
        }
        if ctx.hooks.corrupt.as_deref() == Some(rel.as_slice()) && size > 0 {
            corrupt_first_byte(dfd.as_raw_fd());
        }
        let xattrs = sys::fxattrs(sfd.as_raw_fd()).map_err(|e| ctx.src().error("read xattrs of", rel, &e))?;
        apply_meta_fd(ctx, &xattrs, &st0, dfd.as_raw_fd()).map_err(|e| dst.error("set metadata on", rel, &e))?;
        Ok(crc)
    })();
    if result.is_err() {
        remove_temp(dst_dir, &temp);
    }
    result.map(Some)
}

/// `Some(true)` when the destination has the same CRC32C as the source.
#[allow(clippy::too_many_arguments)]
fn same_content(ctx: &ExecContext, dst: &LocalTree, sfd: RawFd, dst_dir: RawFd, name: &[u8], entry: &Entry, size: u64, bufs: &mut Buffers) -> Result<Option<bool>, FerryError> {
    let dfd = match sys::open_read_noatime(dst_dir, name) {
        Ok(fd) => fd,
        Err(_) => return Ok(None),
    };
    let dst_size = sys::fstat(dfd.as_raw_fd()).map_err(|e| dst.error("stat", &entry.path, &e))?.st_size as u64;
    if dst_size != size {
        return Ok(Some(false));
    }
    let a = crc_range(sfd, 0, size, &mut bufs.data).map_err(|e| ctx.src().error("read", &entry.path, &e))?;
    let b = crc_range(dfd.as_raw_fd(), 0, size, &mut bufs.data).map_err(|e| dst.error("read", &entry.path, &e))?;
    Ok(Some(a == b))
}

/// The `FERRY_TEST_CORRUPT` hook: flips the first byte of a written file.
pub(crate) fn corrupt_first_byte(fd: RawFd) {
    let mut b = [0u8; 1];
    if sys::pread(fd, &mut b, 0).unwrap_or(0) == 1 {
        b[0] ^= 0xFF;
        let _ = sys::pwrite_all(fd, &b, 0);
    }
}

fn append_to_source(src: &LocalTree, rel: &[u8]) {
    use std::io::Write;
    if let Ok(mut f) = std::fs::OpenOptions::new().append(true).open(src.display_path(rel)) {
        let _ = f.write_all(b"changed");
    }
}

/// Symlinks and special files: created under the temporary name, finished, renamed.
fn copy_other(ctx: &ExecContext, dst: &LocalTree, src_dir: RawFd, dst_dir: RawFd, name: &[u8], entry: &Entry) -> Result<(), FerryError> {
    let rel = &entry.path;
    let st = sys::lstat_at(src_dir, name)
        .map_err(|e| ctx.src().error("stat", rel, &e))?
        .ok_or_else(|| source_changed(ctx.src(), rel, "it was removed"))?;
    if kind_of(&st) != entry.kind {
        return Err(source_changed(ctx.src(), rel, "its type changed"));
    }
    let temp = ctx.temp_name(name);
    remove_temp(dst_dir, &temp);
    match entry.kind {
        EntryKind::Symlink => {
            let target = sys::readlink_at(src_dir, name).map_err(|e| ctx.src().error("read link", rel, &e))?;
            sys::symlink_at(&target, dst_dir, &temp).map_err(|e| dst.error("create symlink", rel, &e))?;
        }
        _ => {
            // Never opened: a FIFO would block, a device would be read.
            sys::mknod_at(dst_dir, &temp, st.st_mode, st.st_rdev).map_err(|e| {
                let mut err = dst.error("create special file", rel, &e);
                if matches!(err.kind, ErrorKind::PermissionDenied | ErrorKind::Unsupported) {
                    err.kind = ErrorKind::Unsupported;
                }
                err
            })?;
        }
    }
    let done = apply_meta_at(ctx, entry.kind, src_dir, name, &st, dst_dir, &temp)
        .map_err(|e| dst.error("set metadata on", rel, &e))
        .and_then(|()| rename_into_place(dst, dst_dir, &temp, name, rel));
    if done.is_err() {
        remove_temp(dst_dir, &temp);
    }
    done
}

/// Writes one part of a large file into the file's shared temporary name. Returns the part's
/// CRC32C, verified by reading the part back when verification is on.
pub fn run_part(ctx: &ExecContext, file: &Entry, offset: u64, len: u64, bufs: &mut Buffers) -> Result<u32, FerryError> {
    let dst = ctx.dst()?;
    let rel = &file.path;
    let (parent, name) = paths::split(rel);
    let src_dir = ctx.src().open_dir(parent).map_err(|e| ctx.src().error("open directory", parent, &e))?;
    let dst_dir = dst.open_dir(parent).map_err(|e| dst.error("open directory", parent, &e))?;
    let sfd = sys::open_read_noatime(src_dir.as_raw_fd(), name).map_err(|e| ctx.src().error("open", rel, &e))?;
    let check_unchanged = |sfd: RawFd| -> Result<libc::stat, FerryError> {
        let st = sys::fstat(sfd).map_err(|e| ctx.src().error("stat", rel, &e))?;
        // Parts are read at different times, so each checks against what the scan saw.
        if st.st_size as u64 != file.size || sys::mtime(&st) != file.mtime {
            return Err(source_changed(ctx.src(), rel, "size or mtime differs from the listing"));
        }
        Ok(st)
    };
    let st0 = check_unchanged(sfd.as_raw_fd())?;
    ctx.fence()?;
    let temp = ctx.part_temp_name(name);
    let dfd = sys::open_at(dst_dir.as_raw_fd(), &temp, libc::O_RDWR | libc::O_CREAT | libc::O_NOFOLLOW, 0o600)
        .map_err(|e| dst.error("create", rel, &e))?;
    let crc = copy_range(sfd.as_raw_fd(), dfd.as_raw_fd(), offset, len, is_sparse(&st0), &mut bufs.data, &ctx.rate, &mut || {})
        .map_err(|e| if e.kind() == std::io::ErrorKind::UnexpectedEof { source_changed(ctx.src(), rel, "it shrank") } else { ctx.src().error("copy", rel, &e) })?;
    check_unchanged(sfd.as_raw_fd())?;
    if ctx.hooks.corrupt.as_deref() == Some(rel.as_slice()) && offset == 0 {
        corrupt_first_byte(dfd.as_raw_fd());
    }
    if ctx.options().fsync {
        sys::fdatasync(dfd.as_raw_fd()).map_err(|e| dst.error("flush", rel, &e))?;
    }
    if ctx.options().verify != VerifyMode::None {
        let rfd = sys::open_read_noatime(dst_dir.as_raw_fd(), &temp).map_err(|e| dst.error("read back", rel, &e))?;
        let got = crc_range(rfd.as_raw_fd(), offset, len, &mut bufs.data).map_err(|e| dst.error("read back", rel, &e))?;
        if got != crc {
            return Err(FerryError::new(
                ErrorKind::Corrupt,
                format!("CRC32C mismatch after writing bytes {offset}..{} of {}: source {crc:08x}, destination {got:08x}", offset + len, dst.display_path(rel).display()),
            ));
        }
    }
    Ok(crc)
}

/// Finishes a large file once every part is accounted for: checks the source is unchanged,
/// sets metadata, makes it durable and renames it into place.
pub fn run_commit(ctx: &ExecContext, file: &Entry, parts: &PartSet, part_failure: Option<&str>) -> Outcome {
    let mut out = Outcome::default();
    let result = (|| -> Result<u32, FerryError> {
        let dst = ctx.dst()?;
        let rel = &file.path;
        let (parent, name) = paths::split(rel);
        let dst_dir = dst.open_dir(parent).map_err(|e| dst.error("open directory", parent, &e))?;
        let temp = ctx.part_temp_name(name);
        if let Some(reason) = part_failure {
            remove_temp(dst_dir.as_raw_fd(), &temp);
            return Err(FerryError::new(ErrorKind::Other, reason.to_string()));
        }
        let finish = || -> Result<u32, FerryError> {
            let src_dir = ctx.src().open_dir(parent).map_err(|e| ctx.src().error("open directory", parent, &e))?;
            let sfd = sys::open_read_noatime(src_dir.as_raw_fd(), name).map_err(|e| ctx.src().error("open", rel, &e))?;
            let st = sys::fstat(sfd.as_raw_fd()).map_err(|e| ctx.src().error("stat", rel, &e))?;
            if st.st_size as u64 != file.size || sys::mtime(&st) != file.mtime {
                return Err(source_changed(ctx.src(), rel, "size or mtime differs from the listing"));
            }
            let dfd = sys::open_at(dst_dir.as_raw_fd(), &temp, libc::O_WRONLY | libc::O_NOFOLLOW, 0).map_err(|e| dst.error("open", rel, &e))?;
            sys::ftruncate(dfd.as_raw_fd(), file.size).map_err(|e| dst.error("write", rel, &e))?;
            let xattrs = sys::fxattrs(sfd.as_raw_fd()).map_err(|e| ctx.src().error("read xattrs of", rel, &e))?;
            apply_meta_fd(ctx, &xattrs, &st, dfd.as_raw_fd()).map_err(|e| dst.error("set metadata on", rel, &e))?;
            if ctx.options().fsync {
                sys::fdatasync(dfd.as_raw_fd()).map_err(|e| dst.error("flush", rel, &e))?;
            }
            ctx.fence()?;
            rename_into_place(dst, dst_dir.as_raw_fd(), &temp, name, rel)?;
            if ctx.options().fsync {
                sys::fdatasync(dst_dir.as_raw_fd()).map_err(|e| dst.error("flush directory of", rel, &e))?;
            }
            Ok(parts.combined_crc())
        };
        let r = finish();
        if matches!(&r, Err(e) if e.kind != ErrorKind::LeaseLost) {
            remove_temp(dst_dir.as_raw_fd(), &temp);
        }
        r
    })();
    match result {
        Err(err) if err.kind == ErrorKind::LeaseLost => out.abandoned = true,
        Ok(crc) => {
            let c = out.counters();
            c.bytes_written += file.size;
            if ctx.options().verify != VerifyMode::None {
                c.files_verified += 1;
                c.bytes_verified += file.size;
            }
            out.record(file.path.clone(), EntryKind::File, EntryStatus::Transferred, file.size, Some(crc), None);
        }
        Err(err) => out.fail(file.path.clone(), EntryKind::File, file.size, &err),
    }
    out
}

/// Prune shard: removes debris from interrupted runs and, for `sync`, what the destination
/// has and the source does not. Excluded paths at the destination are left alone.
pub fn run_prune(ctx: &ExecContext, dir: &ScanDir) -> Result<Outcome, FerryError> {
    let mut out = Outcome::default();
    let dst = ctx.dst()?;
    let remove = ctx.options().remove_deleted;
    let dst_fd = match dst.open_dir(&dir.path) {
        Ok(fd) => fd,
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(out),
        Err(e) => return Err(dst.error("open directory", &dir.path, &e)),
    };
    let src_fd: Option<OwnedFd> = match ctx.src().open_dir(&dir.path) {
        Ok(fd) => Some(fd),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => None,
        Err(e) => return Err(ctx.src().error("open directory", &dir.path, &e)),
    };
    let mut reader = sys::DirReader::new(dst_fd, None).map_err(|e| dst.error("list", &dir.path, &e))?;
    let dfd = reader.fd();
    while let Some(raw) = reader.next_entry().map_err(|e| dst.error("list", &dir.path, &e))? {
        let rel = paths::child(&dir.path, &raw.name);
        if raw.name.starts_with(TEMP_PREFIX) {
            if !ctx.is_own_temp(&raw.name) && !ctx.options().dry_run {
                ctx.fence()?;
                remove_tree_at(dfd, &raw.name).map_err(|e| dst.error("remove stale temporary", &rel, &e))?;
            }
            continue;
        }
        if !remove {
            continue;
        }
        let in_source = match &src_fd {
            Some(s) => sys::lstat_at(s.as_raw_fd(), &raw.name).map_err(|e| ctx.src().error("stat", &rel, &e))?.is_some(),
            None => false,
        };
        if in_source {
            continue;
        }
        let st = match sys::lstat_at(dfd, &raw.name) {
            Ok(Some(st)) => st,
            _ => continue,
        };
        let kind = kind_of(&st);
        if !ctx.matcher.covers(&rel, kind == EntryKind::Dir, dir.included) {
            continue;
        }
        if ctx.options().dry_run {
            // Not prepared by any scan: count it here so every reported entry is accounted for.
            out.counters().files_prepared += 1;
            out.record(rel, kind, EntryStatus::Skipped, 0, None, Some("dry run: would delete".into()));
            continue;
        }
        ctx.fence()?;
        match remove_tree_at(dfd, &raw.name) {
            Ok(n) => {
                // A removed directory counts the files inside it; the report names the top.
                out.counters().files_deleted += n.saturating_sub(1);
                let reason = (kind == EntryKind::Dir).then(|| format!("removed with {n} entries below it"));
                out.record(rel, kind, EntryStatus::Deleted, st.st_size as u64 * (kind == EntryKind::File) as u64, None, reason);
            }
            Err(e) => out.fail(rel.clone(), kind, 0, &dst.error("remove", &rel, &e)),
        }
    }
    if ctx.options().fsync && out.counters().files_deleted > 0 {
        flush_or_report(dst, &mut out, "flush deletions");
    }
    Ok(out)
}

/// Links shard: each path becomes a hard link to the first path of its set.
pub fn run_links(ctx: &ExecContext, links: Vec<LinkEntry>) -> Outcome {
    let mut out = Outcome::default();
    for link in links {
        if ctx.fence().is_err() {
            out.abandoned = true;
            return out;
        }
        if ctx.options().dry_run {
            out.record(link.path, EntryKind::HardLink, EntryStatus::Skipped, link.size, None, Some("dry run: would link".into()));
            continue;
        }
        match make_link(ctx, &link) {
            Ok(true) => out.record(link.path, EntryKind::HardLink, EntryStatus::Transferred, link.size, None, None),
            Ok(false) => out.record(link.path, EntryKind::HardLink, EntryStatus::Skipped, link.size, None, Some("unchanged (already linked)".into())),
            Err(err) => out.fail(link.path, EntryKind::HardLink, link.size, &err),
        }
    }
    if ctx.options().fsync && out.counters().files_transferred > 0 {
        if let Ok(dst) = ctx.dst() {
            flush_or_report(dst, &mut out, "flush hard links");
        }
    }
    out
}

fn make_link(ctx: &ExecContext, link: &LinkEntry) -> Result<bool, FerryError> {
    let dst = ctx.dst()?;
    let (tparent, tname) = paths::split(&link.target);
    let (lparent, lname) = paths::split(&link.path);
    let tdir = dst.open_dir(tparent).map_err(|e| dst.error("open directory", tparent, &e))?;
    let ldir = dst.open_dir(lparent).map_err(|e| dst.error("open directory", lparent, &e))?;
    let target = sys::lstat_at(tdir.as_raw_fd(), tname).map_err(|e| dst.error("stat", &link.target, &e))?.ok_or_else(|| {
        FerryError::new(ErrorKind::NotFound, format!("cannot link {}: its first path {} was not copied", dst.display_path(&link.path).display(), dst.display_path(&link.target).display()))
    })?;
    if let Some(existing) = sys::lstat_at(ldir.as_raw_fd(), lname).map_err(|e| dst.error("stat", &link.path, &e))? {
        if existing.st_ino == target.st_ino && existing.st_dev == target.st_dev {
            return Ok(false);
        }
    }
    let temp = ctx.temp_name(lname);
    remove_temp(ldir.as_raw_fd(), &temp);
    sys::link_at(tdir.as_raw_fd(), tname, ldir.as_raw_fd(), &temp).map_err(|e| dst.error("create hard link", &link.path, &e))?;
    rename_into_place(dst, ldir.as_raw_fd(), &temp, lname, &link.path).inspect_err(|_| remove_temp(ldir.as_raw_fd(), &temp))?;
    Ok(true)
}

/// DirMeta shard: directory metadata, applied after everything inside was written (writing
/// into a directory changes its mtime).
pub fn run_dirmeta(ctx: &ExecContext, dirs: Vec<DirMeta>) -> Outcome {
    let mut out = dirmeta_each(ctx, dirs, |d| apply_dir_meta(ctx, d).map(|changed| (!changed).then(|| "unchanged".to_string())));
    if ctx.options().fsync && !ctx.options().dry_run && !out.abandoned {
        if let Ok(dst) = ctx.dst() {
            flush_or_report(dst, &mut out, "flush directory metadata");
        }
    }
    out
}

/// The DirMeta shard loop shared by every destination: fencing, dry run, and accounting.
/// `apply` sets one directory's metadata and returns why it was skipped, if it was; the root
/// is not an entry of the report, so its failure goes to the shard's failures.
pub(crate) fn dirmeta_each(ctx: &ExecContext, dirs: Vec<DirMeta>, mut apply: impl FnMut(&DirMeta) -> Result<Option<String>, FerryError>) -> Outcome {
    let mut out = Outcome::default();
    for d in dirs {
        if ctx.fence().is_err() {
            out.abandoned = true;
            return out;
        }
        let is_root = d.path.is_empty();
        if ctx.options().dry_run {
            if !is_root {
                out.record(d.path, EntryKind::Dir, EntryStatus::Skipped, 0, None, Some("dry run".into()));
            }
            continue;
        }
        let result = apply(&d);
        if is_root {
            if let Err(err) = result {
                out.result.failures.push(ferry_common::model::Failure { path: Vec::new(), reason: err.to_string() });
            }
            continue;
        }
        match result {
            Ok(None) => out.record(d.path, EntryKind::Dir, EntryStatus::Transferred, 0, None, None),
            Ok(Some(reason)) => out.record(d.path, EntryKind::Dir, EntryStatus::Skipped, 0, None, Some(reason)),
            Err(err) => out.fail(d.path, EntryKind::Dir, 0, &err),
        }
    }
    out
}

/// Removes this execution's temporary files left in a directory by workers that died or lost
/// their lease. Every transfer of the execution is finished by the directory-metadata stage,
/// so whatever temporary name remains is debris, and it must go before the directory's times
/// are set.
fn remove_execution_temps(ctx: &ExecContext, dst: &LocalTree, fd: RawFd, rel: &[u8]) -> Result<(), FerryError> {
    let dup = sys::open_dir_at(fd, b".").map_err(|e| dst.error("list", rel, &e))?;
    let mut reader = sys::DirReader::new(dup, None).map_err(|e| dst.error("list", rel, &e))?;
    let mut debris = Vec::new();
    while let Some(raw) = reader.next_entry().map_err(|e| dst.error("list", rel, &e))? {
        if ctx.is_own_temp(&raw.name) {
            debris.push(raw.name);
        }
    }
    for name in debris {
        remove_tree_at(fd, &name).map_err(|e| dst.error("remove temporary file in", rel, &e))?;
    }
    Ok(())
}

fn apply_dir_meta(ctx: &ExecContext, d: &DirMeta) -> Result<bool, FerryError> {
    let dst = ctx.dst()?;
    // A link writer creates directories as files arrive; an empty one arrives only here.
    let opened = if ctx.src_if_reached().is_none() { dst.ensure_dir(&d.path) } else { dst.open_dir(&d.path) };
    let fd = opened.map_err(|e| dst.error("open directory", &d.path, &e))?;
    remove_execution_temps(ctx, dst, fd.as_raw_fd(), &d.path)?;
    let cur = sys::fstat(fd.as_raw_fd()).map_err(|e| dst.error("stat", &d.path, &e))?;
    let owner = ctx.is_root && ctx.options().preserve_owner;
    // An agent that does not reach the source (a link writer) keeps the directory's xattrs.
    let src_xattrs = match ctx.src_if_reached().map(|s| (s, s.open_dir(&d.path))) {
        Some((src, Ok(sfd))) => Some(sys::fxattrs(sfd.as_raw_fd()).map_err(|e| src.error("read xattrs of", &d.path, &e))?),
        Some((_, Err(_))) => Some(Vec::new()),
        None => None,
    };
    let dst_xattrs = sys::fxattrs(fd.as_raw_fd()).map_err(|e| dst.error("read xattrs of", &d.path, &e))?;
    let same = cur.st_mode == d.mode
        && (!owner || (cur.st_uid == d.uid && cur.st_gid == d.gid))
        && sys::mtime(&cur) == d.mtime
        && src_xattrs.as_ref().is_none_or(|x| *x == dst_xattrs);
    if same {
        return Ok(false);
    }
    if let Some(src_xattrs) = &src_xattrs {
        for (k, _) in &dst_xattrs {
            if !src_xattrs.iter().any(|(sk, _)| sk == k) {
                let _ = sys::fremovexattr(fd.as_raw_fd(), k);
            }
        }
        for (k, v) in src_xattrs {
            sys::fsetxattr(fd.as_raw_fd(), k, v).map_err(|e| dst.error("set xattr on", &d.path, &e))?;
        }
    }
    if owner {
        sys::fchown(fd.as_raw_fd(), d.uid, d.gid).map_err(|e| dst.error("chown", &d.path, &e))?;
    }
    sys::fchmod(fd.as_raw_fd(), d.mode).map_err(|e| dst.error("chmod", &d.path, &e))?;
    sys::futimens(fd.as_raw_fd(), d.atime, d.mtime).map_err(|e| dst.error("set times on", &d.path, &e))?;
    Ok(true)
}
