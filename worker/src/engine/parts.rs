//! Large files, in parts: each part shard sends one range of the file into the file's
//! multipart write (one shared by every part, recorded in the Store), from whichever reader
//! agent claims it; the commit shard, on an agent that reaches the destination, completes
//! the write with the whole file's CRC32C (combined from the parts') and its metadata, and
//! commits it like any other entry.

use ferry_common::error::{ErrorKind, FerryError};
use ferry_common::model::{Entry, EntryKind, EntryStatus, FileMeta, PartSet};

use super::read::{Batch, SendSettings, Settled};
use super::transfer::{send_with_retries, Abandoned};
use super::{ExecContext, Line, Outcome};
use crate::location::{commit, source_changed, Completed, Meta, Xattrs};
use crate::transport::frame::PartTarget;
use crate::transport::Connector;

/// What one part shard did.
pub struct PartDone {
    /// CRC32C of the range.
    pub crc: u32,
    /// What the link did: bytes an interrupted run had stored already and that were kept,
    /// chunks sent again, bytes saved by compression.
    pub counters: ferry_common::model::Counters,
    /// (part number, MD5) of each object part stored, where the store's tags are MD5s.
    pub tags: Vec<(u32, String)>,
    /// The source file's metadata as this part read it, for the commit.
    pub source: Option<FileMeta>,
}

/// The metadata a file's parts travel with, from what the source reported.
pub fn file_meta(ctx: &ExecContext, meta: &Meta, xattrs: Vec<(Vec<u8>, Vec<u8>)>) -> FileMeta {
    FileMeta {
        mode: meta.mode.unwrap_or(libc::S_IFREG | 0o644),
        owner: if ctx.keeps_owner() { meta.uid.zip(meta.gid) } else { None },
        atime: meta.atime.unwrap_or(meta.mtime),
        mtime: meta.mtime,
        xattrs: xattrs.into_iter().map(|(k, v)| (serde_bytes::ByteBuf::from(k), serde_bytes::ByteBuf::from(v))).collect(),
        tags: meta.tags.clone(),
    }
}

/// The file's metadata a multipart write starts with (where the store takes it at the start).
pub fn upload_meta(ctx: &ExecContext, file: &Entry) -> Result<Meta, FerryError> {
    let src = ctx.src()?;
    let mut meta = src.stat(&file.path)?.ok_or_else(|| source_changed(src.describe(&file.path), "it was removed"))?;
    if meta.size != file.size || meta.mtime != file.mtime {
        return Err(source_changed(src.describe(&file.path), "size or mtime differs from the listing"));
    }
    if !ctx.keeps_owner() {
        (meta.uid, meta.gid) = (None, None);
    }
    if ctx.carries_tags() {
        meta.tags = src.tags(&file.path)?;
    }
    Ok(meta)
}

/// Runs a part shard: sends the range `part` of `file` into its multipart write.
pub fn run_part(
    ctx: &ExecContext,
    connector: &dyn Connector,
    settings: &SendSettings,
    file: &Entry,
    part: PartTarget,
    buf: &mut Vec<u8>,
) -> Result<PartDone, FerryError> {
    let mut batch = Batch::range(file.clone(), part);
    let last_error = send_with_retries(ctx, connector, settings, &mut batch, buf)
        .map_err(|Abandoned| FerryError::new(ErrorKind::LeaseLost, "this worker's lease expired while it sent a part"))?;
    let source = batch.source.take().map(|m| file_meta(ctx, &m, std::mem::take(&mut batch.source_xattrs)));
    match batch.settled.pop().flatten() {
        Some(Settled::Transferred { crc, tags, .. }) => Ok(PartDone { crc, counters: batch.counters, tags, source }),
        Some(Settled::Current) => Err(FerryError::new(ErrorKind::Other, "a writer answered a part as current")),
        Some(Settled::Failed(e)) => Err(e),
        None => Err(last_error.unwrap_or_else(|| FerryError::new(ErrorKind::Unavailable, "the link gave up"))),
    }
}

/// The metadata to complete a file with: what its parts recorded, else the source's.
fn commit_meta(ctx: &ExecContext, file: &Entry, set: &PartSet) -> Result<(Meta, Xattrs), FerryError> {
    if let Some(m) = &set.source {
        let meta = Meta {
            kind: Some(EntryKind::File),
            size: file.size,
            mtime: m.mtime,
            atime: Some(m.atime),
            mode: Some(m.mode),
            uid: m.owner.map(|o| o.0),
            gid: m.owner.map(|o| o.1),
            tags: m.tags.clone(),
            ..Meta::default()
        };
        return Ok((meta, m.xattrs.iter().map(|(k, v)| (k.to_vec(), v.to_vec())).collect()));
    }
    let meta = upload_meta(ctx, file)?;
    let xattrs = if ctx.keeps_xattrs() { ctx.src()?.xattrs(&file.path)? } else { Vec::new() };
    Ok((meta, xattrs))
}

/// Finishes a large file once every part is accounted for: checks the source is unchanged
/// (where this agent reaches it), completes the multipart write, removes other unfinished
/// writes of the same name (debris of interrupted runs), and commits it.
pub fn run_commit(ctx: &ExecContext, file: &Entry, set: &PartSet, part_failure: Option<&str>, buf: &mut Vec<u8>) -> Outcome {
    let mut out = Outcome::default();
    let rel = &file.path;
    let result = (|| -> Result<(u32, Option<String>), FerryError> {
        let dst = ctx.dst()?.as_ref();
        if let Some(reason) = part_failure {
            if let Some(upload) = &set.upload_id {
                let _ = dst.abort_multipart(rel, upload);
            }
            return Err(FerryError::new(ErrorKind::Other, reason.to_string()));
        }
        let upload =
            set.upload_id.clone().ok_or_else(|| FerryError::new(ErrorKind::Other, format!("no multipart write was recorded for {}", dst.describe(rel))))?;
        let mut finish = || -> Result<(u32, Option<String>), FerryError> {
            if let Ok(src) = ctx.src() {
                match src.stat(rel)? {
                    Some(m) if m.size == file.size && m.mtime == file.mtime => {
                        // A store that keeps the source's CRC32C vouches for what was read.
                        if let (Some(stored), false) = (m.crc32c, m.multipart) {
                            if stored != set.combined_crc() {
                                return Err(FerryError::new(
                                    ErrorKind::Corrupt,
                                    format!("read {} with CRC32C {:08x}, but the source stores {stored:08x}", src.describe(rel), set.combined_crc()),
                                ));
                            }
                        }
                    }
                    _ => return Err(source_changed(src.describe(rel), "size or mtime differs from the listing")),
                }
            }
            let (meta, xattrs) = commit_meta(ctx, file, set)?;
            let crc = set.combined_crc();
            ctx.fence()?;
            let done = Completed { size: file.size, meta: &meta, xattrs: &xattrs, crc32c: crc, part_tags: &set.part_tags };
            let staged = dst.complete_multipart(rel, &upload, &done)?;
            for stale in dst.pending_multiparts(rel)? {
                dst.abort_multipart(rel, &stale)?;
            }
            let note = commit(dst, vec![staged], ctx.commit_options(), buf).pop().unwrap_or(Ok(None))?;
            Ok((crc, note))
        };
        let r = finish();
        if matches!(&r, Err(e) if e.kind != ErrorKind::LeaseLost) {
            let _ = dst.abort_multipart(rel, &upload);
        }
        r
    })();
    match result {
        Err(err) if err.kind == ErrorKind::LeaseLost => out.abandoned = true,
        Ok((crc, note)) => {
            // The parts counted their bytes where they were written; the file counts here.
            metrics::counter!(ferry_common::metrics::WORKER_FILES, "direction" => "write", "outcome" => "transferred").increment(1);
            let verify = ctx.commit_options().verify;
            let c = out.counters();
            c.bytes_written += file.size;
            if verify {
                c.files_verified += 1;
                c.bytes_verified += file.size;
            }
            out.record(Line::of(file, EntryStatus::Transferred).crc(Some(crc)).note(note));
        }
        Err(err) => out.fail(Line::of(file, EntryStatus::Failed), &err),
    }
    out
}
