//! Verify shards: compare source and destination directories entry by entry, content by
//! CRC32C. Used by `ferry verify` and by POINT_IN_TIME_CONSISTENT at the end of a transfer.

use std::os::fd::{AsRawFd, RawFd};

use ferry_common::error::FerryError;
use ferry_common::model::{EntryKind, EntryStatus, Mode, ScanDir};
use ferry_common::paths;

use super::context::{ExecContext, TEMP_PREFIX};
use super::plan::scan_bodies;
use super::transfer::{crc_range, Buffers};
use super::Outcome;
use crate::storage::local::{kind_of, sys};

/// What differs between a source entry and its destination copy, if anything.
fn difference(ctx: &ExecContext, src_dir: RawFd, dst_dir: RawFd, name: &[u8], s: &libc::stat, d: &libc::stat, bufs: &mut Buffers) -> Result<Option<String>, FerryError> {
    let rel = name; // for messages only the name matters here; callers add the path
    let (ks, kd) = (kind_of(s), kind_of(d));
    if ks != kd {
        return Ok(Some(format!("type differs: {} at the source, {} at the destination", ks.as_str(), kd.as_str())));
    }
    if ks != EntryKind::Symlink && s.st_mode != d.st_mode {
        return Ok(Some(format!("permissions differ: {:o} vs {:o}", s.st_mode & 0o7777, d.st_mode & 0o7777)));
    }
    if ctx.is_root && ctx.options().preserve_owner && (s.st_uid, s.st_gid) != (d.st_uid, d.st_gid) {
        return Ok(Some(format!("owner differs: {}:{} vs {}:{}", s.st_uid, s.st_gid, d.st_uid, d.st_gid)));
    }
    if ks != EntryKind::Dir && sys::mtime(s) != sys::mtime(d) {
        return Ok(Some("mtime differs".into()));
    }
    match ks {
        EntryKind::File => {
            if s.st_size != d.st_size {
                return Ok(Some(format!("size differs: {} vs {}", s.st_size, d.st_size)));
            }
            let sfd = sys::open_read_noatime(src_dir, name).map_err(|e| ctx.src().error("open", rel, &e))?;
            let dst = ctx.dst()?;
            let dfd = sys::open_read_noatime(dst_dir, name).map_err(|e| dst.error("open", rel, &e))?;
            let a = crc_range(sfd.as_raw_fd(), 0, s.st_size as u64, &mut bufs.data).map_err(|e| ctx.src().error("read", rel, &e))?;
            let b = crc_range(dfd.as_raw_fd(), 0, d.st_size as u64, &mut bufs.data).map_err(|e| dst.error("read", rel, &e))?;
            if a != b {
                return Ok(Some(format!("content differs: CRC32C {a:08x} at the source, {b:08x} at the destination")));
            }
        }
        EntryKind::Symlink => {
            let a = sys::readlink_at(src_dir, name).map_err(|e| ctx.src().error("read link", rel, &e))?;
            let b = sys::readlink_at(dst_dir, name).map_err(|e| ctx.src().error("read link", rel, &e))?;
            if a != b {
                return Ok(Some("symlink target differs".into()));
            }
        }
        EntryKind::CharDev | EntryKind::BlockDev if s.st_rdev != d.st_rdev => {
            return Ok(Some("device number differs".into()));
        }
        _ => {}
    }
    Ok(None)
}

/// Runs a Verify shard; subdirectories become child Verify shards.
pub fn run_verify(ctx: &ExecContext, dirs: &[ScanDir], bufs: &mut Buffers) -> Result<Outcome, FerryError> {
    let mut out = Outcome::default();
    let report_all = ctx.spec.mode == Mode::Verify;
    let check_extras = matches!(ctx.spec.mode, Mode::Verify | Mode::Sync);
    let dst = ctx.dst()?;
    let mut subdirs = Vec::new();
    for dir in dirs {
        let src_fd = ctx.src().open_dir(&dir.path).map_err(|e| ctx.src().error("open directory", &dir.path, &e))?;
        let dst_fd = match dst.open_dir(&dir.path) {
            Ok(fd) => fd,
            Err(e) => {
                out.mismatch(dir.path.clone(), EntryKind::Dir, 0, format!("missing at the destination ({e})"));
                continue;
            }
        };
        let (sfd, dfd) = (src_fd.as_raw_fd(), dst_fd.as_raw_fd());
        let mut reader = sys::DirReader::new(sys::open_dir_at(sfd, b".").map_err(|e| ctx.src().error("list", &dir.path, &e))?, None)
            .map_err(|e| ctx.src().error("list", &dir.path, &e))?;
        while let Some(raw) = reader.next_entry().map_err(|e| ctx.src().error("list", &dir.path, &e))? {
            if raw.name.starts_with(TEMP_PREFIX) {
                continue;
            }
            let rel = paths::child(&dir.path, &raw.name);
            let Some(s) = sys::lstat_at(sfd, &raw.name).map_err(|e| ctx.src().error("stat", &rel, &e))? else { continue };
            let kind = kind_of(&s);
            let included = if kind == EntryKind::Dir {
                let Some(included) = ctx.matcher.scan_dir(&rel, dir.included) else { continue };
                included
            } else {
                if !ctx.matcher.file_selected(&rel, dir.included) {
                    continue;
                }
                if kind.is_special() && !ctx.options().preserve_devices {
                    continue;
                }
                false
            };
            if report_all {
                out.counters().files_prepared += 1;
                out.counters().bytes_prepared += if kind == EntryKind::File { s.st_size as u64 } else { 0 };
            }
            let size = if kind == EntryKind::File { s.st_size as u64 } else { 0 };
            let diff = match sys::lstat_at(dfd, &raw.name).map_err(|e| dst.error("stat", &rel, &e))? {
                None => Some("missing at the destination".to_string()),
                Some(d) => difference(ctx, sfd, dfd, &raw.name, &s, &d, bufs)
                    .map_err(|e| FerryError::new(e.kind, format!("{} ({})", e.message, paths::display(&rel))))?,
            };
            match diff {
                Some(reason) => out.mismatch(rel.clone(), kind, size, reason),
                None if report_all => out.record(rel.clone(), kind, EntryStatus::Verified, size, None, None),
                None => {}
            }
            if kind == EntryKind::Dir {
                subdirs.push(ScanDir { path: rel, cookie: None, after: None, included });
            }
        }
        if check_extras {
            let mut dreader = sys::DirReader::new(sys::open_dir_at(dfd, b".").map_err(|e| dst.error("list", &dir.path, &e))?, None)
                .map_err(|e| dst.error("list", &dir.path, &e))?;
            while let Some(raw) = dreader.next_entry().map_err(|e| dst.error("list", &dir.path, &e))? {
                if raw.name.starts_with(TEMP_PREFIX) {
                    continue;
                }
                let rel = paths::child(&dir.path, &raw.name);
                if sys::lstat_at(sfd, &raw.name).map_err(|e| ctx.src().error("stat", &rel, &e))?.is_some() {
                    continue;
                }
                let Some(d) = sys::lstat_at(dfd, &raw.name).map_err(|e| dst.error("stat", &rel, &e))? else { continue };
                let kind = kind_of(&d);
                if ctx.matcher.covers(&rel, kind == EntryKind::Dir, dir.included) {
                    out.mismatch(rel, kind, 0, "only at the destination".into());
                }
            }
        }
    }
    out.emit = scan_bodies(subdirs).into_iter().map(|b| match b {
        ferry_common::model::ShardBody::Scan { dirs } => ferry_common::model::ShardBody::Verify { dirs },
        other => other,
    }).collect();
    Ok(out)
}
