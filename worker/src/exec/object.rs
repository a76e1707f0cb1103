//! Shards of executions with an object store on either side, run through the [`Location`]
//! trait: local → S3, S3 → local and S3 → S3.
//!
//! The shapes match the local path: scans list one directory page and emit transfer, part,
//! prune and directory-metadata shards; transfers write each entry whole (the location makes
//! the write atomic); large files go as multipart uploads whose parts are part shards, spread
//! over every mover of every worker, and completed by a commit shard with the FULL_OBJECT
//! CRC32C combined from the part CRCs.
//!
//! What an object store cannot hold is reported, not silently dropped: hard links become
//! independent copies, special files are skipped with a reason, and names that are not UTF-8
//! fail with a reason.

use std::collections::{HashMap, HashSet};

use ferry_common::error::{ErrorKind, FerryError};
use ferry_common::model::{
    DirMeta, Entry, EntryKind, EntryStatus, Mode, OverwriteMode, PartSet, ScanDir, TransferMode, VerifyMode,
};
use ferry_common::paths;

use super::context::{ExecContext, ObjectPair};
use super::plan::{object_part_size, scan_bodies, Binner, OBJECT_PART_MIN};
use super::scan::ListedPage;
use super::transfer::{dirmeta_each, Buffers, Retries};
use super::Outcome;
use crate::storage::s3::etag;
use crate::storage::{Content, Location, Meta, Staged, StoredPart};

/// Most names of one destination directory held to compare a source page against; a larger
/// directory is compared entry by entry instead.
const DEST_LISTING_CAP: usize = 100_000;

/// Whole destination directory listings are kept only below this many names.
const PRUNE_SOURCE_CAP: usize = 1_000_000;

fn unknown_id(v: Option<u32>) -> u32 {
    v.unwrap_or(u32::MAX)
}

fn known_id(v: u32) -> Option<u32> {
    (v != u32::MAX).then_some(v)
}

fn dst(pair: &ObjectPair) -> Result<&dyn Location, FerryError> {
    pair.dst.as_deref().ok_or_else(|| FerryError::config("destination does not exist (dry run)"))
}

/// Lists every name of `dir` at `loc`, or `None` past `cap` names.
fn list_all(loc: &dyn Location, dir: &[u8], cap: usize) -> Result<Option<HashMap<Vec<u8>, Meta>>, FerryError> {
    let mut out = HashMap::new();
    let mut resume: Option<Vec<u8>> = None;
    loop {
        let page = loc.list(dir, resume.as_deref(), 4096)?;
        for l in page.entries {
            out.insert(l.name, l.meta);
        }
        if out.len() > cap {
            return Ok(None);
        }
        match page.resume {
            Some(r) => resume = Some(r),
            None => return Ok(Some(out)),
        }
    }
}

/// Lists source directories from `dirs` until the page budget is used up (see
/// `scan::list_page`, whose page shape this fills).
pub fn list_page(ctx: &ExecContext, pair: &ObjectPair, dirs: &[ScanDir]) -> Result<ListedPage, FerryError> {
    let budget = ctx.options().limits.scan_page_entries as usize;
    let mut page = ListedPage::default();
    let mut listed = 0usize;
    for (i, dir) in dirs.iter().enumerate() {
        if listed >= budget || page.subdirs.len() >= 512 {
            page.rest.extend_from_slice(&dirs[i..]);
            break;
        }
        if let Some(after) = list_dir(ctx, pair, dir, &mut page, &mut listed, budget)? {
            page.rest.push(ScanDir { path: dir.path.clone(), cookie: None, after: Some(after), included: dir.included });
            page.rest.extend_from_slice(&dirs[i + 1..]);
            break;
        }
    }
    Ok(page)
}

fn list_dir(ctx: &ExecContext, pair: &ObjectPair, dir: &ScanDir, page: &mut ListedPage, listed: &mut usize, budget: usize) -> Result<Option<Vec<u8>>, FerryError> {
    let opts = ctx.options();
    let first_page = dir.after.is_none();
    if first_page {
        let Some(m) = pair.src.stat_dir(&dir.path)? else {
            if dir.path.is_empty() {
                return Err(FerryError::new(ErrorKind::NotFound, format!("source {} does not exist (check the location)", pair.src.describe(b""))));
            }
            return Ok(None); // vanished since its parent was listed
        };
        page.dirmeta.push(DirMeta {
            path: dir.path.clone(),
            mode: m.mode.unwrap_or(libc::S_IFDIR | 0o755),
            uid: unknown_id(m.uid),
            gid: unknown_id(m.gid),
            atime: m.atime.unwrap_or(m.mtime),
            mtime: m.mtime,
        });
        if let (Some(d), false) = (&pair.dst, opts.dry_run) {
            let missing = || d.stat_dir(&dir.path).map(|m| m.is_none_or(|m| m.kind() != EntryKind::Dir));
            if !d.is_object_store() && !dir.path.is_empty() && missing()? {
                // Made now, owner-only, as the local path does: creating it later (at the
                // DirMeta stage, for an empty directory) would change its parent's mtime
                // after the parent's metadata was set.
                let placeholder = Meta { kind: Some(EntryKind::Dir), mtime: m.mtime, mode: Some(libc::S_IFDIR | 0o700), ..Meta::default() };
                d.put(&dir.path, Content::Dir, &placeholder, None)?;
            }
        }
        if pair.dst.is_some() && opts.remove_deleted {
            page.prunes.push(ScanDir { path: dir.path.clone(), cookie: None, after: None, included: dir.included });
        }
    }
    // Names at the destination, to decide what changed without a request per file. A huge
    // directory's continuation pages compare entry by entry instead (`check_dest`).
    let compare = opts.transfer_mode == TransferMode::Changed || opts.overwrite == OverwriteMode::Never;
    let existing = match (&pair.dst, compare && first_page) {
        (Some(d), true) => match list_all(d.as_ref(), &dir.path, DEST_LISTING_CAP) {
            // The destination cannot even name this directory (a non-UTF-8 name on S3): its
            // entries are each reported as skipped when they are written.
            Err(e) if e.kind == ErrorKind::Unsupported => Some(HashMap::new()),
            other => other?,
        },
        _ => None,
    };
    let dest_unknown = pair.dst.is_some() && compare && existing.is_none();
    let listing = pair.src.list(&dir.path, dir.after.as_deref(), budget.saturating_sub(*listed).max(1))?;
    let dst_is_object = pair.dst.as_ref().is_some_and(|d| d.is_object_store());
    for l in listing.entries {
        *listed += 1;
        let rel = paths::child(&dir.path, &l.name);
        let kind = l.meta.kind();
        if !paths::is_safe_relative(&rel) || l.name.contains(&b'/') {
            page.outcome.counters().files_prepared += 1;
            page.outcome.record(rel, kind, EntryStatus::Failed, 0, None, Some("the object key is not a safe relative path ('.', '..' or an empty component); rename the object".into()));
            continue;
        }
        if kind == EntryKind::Dir {
            let Some(included) = ctx.matcher.scan_dir(&rel, dir.included) else { continue };
            page.outcome.counters().files_prepared += 1;
            page.subdirs.push(ScanDir { path: rel, cookie: None, after: None, included });
            continue;
        }
        if !ctx.matcher.file_selected(&rel, dir.included) {
            continue;
        }
        let size = l.meta.size;
        let c = page.outcome.counters();
        c.files_prepared += 1;
        c.bytes_prepared += size;
        if kind.is_special() {
            let reason = if !opts.preserve_devices {
                "special file skipped (--no-specials)".to_string()
            } else if dst_is_object {
                format!("an object store cannot hold a {}", kind.as_str())
            } else {
                format!("{} skipped", kind.as_str())
            };
            page.outcome.record(rel, kind, EntryStatus::Skipped, 0, None, Some(reason));
            continue;
        }
        let mut entry = Entry { path: rel, kind, size, mtime: l.meta.mtime, compare_checksum: false, check_dest: dest_unknown };
        if let Some(existing) = &existing {
            if let Some(d) = existing.get(&l.name) {
                if opts.overwrite == OverwriteMode::Never {
                    page.outcome.record(entry.path, kind, EntryStatus::Skipped, size, None, Some("exists at the destination (OverwriteMode NEVER)".into()));
                    continue;
                }
                // Listings give sizes, not full metadata: a same-size entry is compared in the
                // transfer shard, spread over the movers.
                let same_kind = (d.kind() == EntryKind::Dir) == (kind == EntryKind::Dir);
                entry.check_dest = opts.transfer_mode == TransferMode::Changed && same_kind && (d.size == size || kind == EntryKind::Symlink || d.kind() == EntryKind::Symlink);
                entry.compare_checksum = entry.check_dest && opts.checksum;
            }
        }
        if entry.check_dest && !entry.compare_checksum && size >= opts.limits.part_threshold {
            // Large files become part shards, which copy without comparing: decide here.
            if let (Some(s), Some(d)) = (pair.src.stat(&entry.path)?, pair.dst.as_ref().map(|d| d.stat(&entry.path)).transpose()?.flatten()) {
                if let Some(reason) = unchanged_reason(ctx, &s, &d, None, None) {
                    page.outcome.record(entry.path, kind, EntryStatus::Skipped, size, None, Some(reason.into()));
                    continue;
                }
            }
        }
        page.entries.push(entry);
    }
    Ok(listing.resume)
}

/// Why an entry whose destination exists needs no copy, if it does not.
fn unchanged_reason(ctx: &ExecContext, src: &Meta, dst: &Meta, src_crc: Option<u32>, dst_crc: Option<u32>) -> Option<&'static str> {
    if ctx.options().overwrite == OverwriteMode::Never {
        return Some("exists at the destination (OverwriteMode NEVER)");
    }
    // Sizes of symlinks differ between stores (the target's length on S3, 0 here).
    let size_differs = src.kind() == EntryKind::File && src.size != dst.size;
    if ctx.options().transfer_mode == TransferMode::All || src.kind() != dst.kind() || size_differs {
        return None;
    }
    if src.kind() == EntryKind::Symlink && src.link_target != dst.link_target {
        return None;
    }
    if ctx.options().checksum {
        return (src_crc.is_some() && src_crc == dst_crc).then_some("unchanged (CRC32C)");
    }
    let perm = |m: &Meta| m.mode.map(|m| m & 0o7777);
    let mode_same = perm(src).is_none() || perm(dst).is_none() || perm(src) == perm(dst);
    (src.mtime == dst.mtime && mode_same).then_some("unchanged (size and mtime)")
}

/// The CRC32C of a whole entry, from what the location stores or by reading it. Returns the
/// CRC and whether it had to be read.
fn content_crc(loc: &dyn Location, rel: &[u8], meta: &Meta, buf: &mut Vec<u8>) -> Result<(u32, bool), FerryError> {
    if let Some(c) = meta.crc32c {
        return Ok((c, false));
    }
    read_crc(loc, rel, meta.size, buf).map(|c| (c, true))
}

fn read_crc(loc: &dyn Location, rel: &[u8], size: u64, buf: &mut Vec<u8>) -> Result<u32, FerryError> {
    let mut crc = 0u32;
    let mut pos = 0u64;
    while pos < size {
        let n = (size - pos).min(OBJECT_PART_MIN);
        loc.read(rel, pos, n, buf)?;
        crc = ferry_common::crc::extend(crc, buf);
        pos += n;
    }
    Ok(crc)
}

/// What a store's stored entry is checked against, besides the source's CRC32C.
pub enum Expected<'a> {
    /// A single upload of these bytes: the ETag should be their MD5.
    Bytes(&'a [u8]),
    /// A multipart upload whose parts' MD5s were checked as they were stored: the ETag should
    /// be this (see [`etag::multipart`]).
    Tag(Option<String>),
}

/// Checks what was written against the source: the store's own CRC32C when it keeps one, else
/// its MD5 ETag (no download either way), else by reading it back. Returns the report note
/// when it could not use the CRC32C.
fn verify_written(loc: &dyn Location, rel: &[u8], size: u64, want: u32, expected: Expected<'_>, buf: &mut Vec<u8>) -> Result<Option<String>, FerryError> {
    if !loc.is_object_store() {
        // Local writes are read back and checked before they are renamed into place.
        return Ok(None);
    }
    let m = loc.stat(rel)?.ok_or_else(|| FerryError::new(ErrorKind::Unavailable, format!("{} is missing right after it was written", loc.describe(rel))))?;
    if m.size != size {
        return Err(FerryError::new(ErrorKind::Corrupt, format!("{} holds {} bytes after writing {size}", loc.describe(rel), m.size)));
    }
    match m.crc32c {
        Some(c) if c == want => return Ok(None),
        Some(_) if !m.multipart => {
            return Err(FerryError::new(ErrorKind::Corrupt, format!("stored CRC32C of {} differs from the source's {want:08x}", loc.describe(rel))));
        }
        _ => {}
    }
    let stored_tag = m.etag.as_deref().map(str::to_ascii_lowercase);
    let expected_tag = match expected {
        Expected::Bytes(data) => Some(etag::md5_hex(data)),
        Expected::Tag(t) => t,
    };
    if let (Some(stored), Some(expected)) = (&stored_tag, &expected_tag) {
        if stored == expected {
            return Ok(Some("verified by MD5 ETag: the store keeps no whole-object CRC32C".into()));
        }
        if etag::is_md5(stored) || stored.contains('-') && !m.multipart {
            return Err(FerryError::new(ErrorKind::Corrupt, format!("stored ETag of {} is {stored}, expected {expected} from the source", loc.describe(rel))));
        }
    }
    let got = read_crc(loc, rel, size, buf)?;
    if got != want {
        return Err(FerryError::new(ErrorKind::Corrupt, format!("CRC32C mismatch after writing {}: source {want:08x}, destination {got:08x}", loc.describe(rel))));
    }
    Ok(Some("verified by reading back: the store keeps neither a CRC32C nor an MD5 ETag".into()))
}

/// Runs a Transfer shard.
pub fn run_transfer(ctx: &ExecContext, pair: &ObjectPair, entries: Vec<Entry>, attempt: u32, bufs: &mut Buffers) -> Outcome {
    let mut out = Outcome::default();
    if ctx.options().dry_run {
        for e in entries {
            out.record(e.path, e.kind, EntryStatus::Skipped, e.size, None, Some("dry run: would copy".into()));
        }
        return out;
    }
    let mut retries = Retries::new(ctx, attempt);
    // Written but not yet in place: committed together, so a file system flushes once per
    // shard rather than once per file.
    let mut staged: Vec<Staged> = Vec::new();
    let mut written: Vec<(Entry, Written)> = Vec::new();
    for entry in entries {
        if ctx.fence().is_err() {
            out.abandoned = true;
            return out;
        }
        match copy_entry(ctx, pair, &entry, bufs, &mut out) {
            Ok(None) => {}
            Ok(Some((s, w))) => {
                staged.push(s);
                written.push((entry, w));
            }
            Err(err) if err.kind == ErrorKind::LeaseLost => {
                out.abandoned = true;
                return out;
            }
            Err(err) if err.kind == ErrorKind::Unsupported => {
                out.record(entry.path, entry.kind, EntryStatus::Skipped, entry.size, None, Some(format!("destination cannot hold it: {}", err.message)))
            }
            Err(err) => retries.fail(&mut out, entry, err),
        }
    }
    if !staged.is_empty() {
        if ctx.fence().is_err() {
            out.abandoned = true;
            return out;
        }
        let results = match pair.dst.as_deref() {
            Some(d) => d.commit(staged),
            None => Vec::new(),
        };
        for ((entry, w), result) in written.into_iter().zip(results) {
            match result {
                Ok(()) => {
                    if w.kind == EntryKind::File {
                        let c = out.counters();
                        c.bytes_written += w.size;
                        if ctx.options().verify != VerifyMode::None {
                            c.files_verified += 1;
                            c.bytes_verified += w.size;
                        }
                    }
                    out.record(entry.path, w.kind, EntryStatus::Transferred, w.size, w.crc, w.note);
                }
                Err(err) => retries.fail(&mut out, entry, err),
            }
        }
    }
    retries.finish(&mut out);
    out
}

/// An entry staged at the destination, with what its report line will say once committed.
struct Written {
    kind: EntryKind,
    size: u64,
    crc: Option<u32>,
    note: Option<String>,
}

/// Copies one entry, up to staging it at the destination. `None`: nothing to write (it was
/// found unchanged and recorded as skipped).
fn copy_entry(ctx: &ExecContext, pair: &ObjectPair, entry: &Entry, bufs: &mut Buffers, out: &mut Outcome) -> Result<Option<(Staged, Written)>, FerryError> {
    let dst = dst(pair)?;
    let rel = &entry.path;
    // A new small object is fetched with its metadata in one request; anything to compare
    // first is only stat'ed, so an unchanged entry is never downloaded.
    let fetch = pair.src.is_object_store() && !entry.check_dest && entry.size <= OBJECT_PART_MIN;
    let found = if fetch { pair.src.fetch(rel, OBJECT_PART_MIN, &mut bufs.object)? } else { pair.src.stat(rel)? };
    let fetched = fetch && found.as_ref().is_some_and(|m| m.kind() == EntryKind::File && m.size <= OBJECT_PART_MIN);
    let mut src_meta = found.ok_or_else(|| FerryError::new(ErrorKind::SourceChanged, format!("source changed while it was read: {} (it was removed)", pair.src.describe(rel))))?;
    let kind = src_meta.kind();
    if ctx.spec.s3.preserve_tags && pair.src.is_object_store() && dst.is_object_store() {
        src_meta.tags = pair.src.tags(rel)?;
    }
    if kind.is_special() {
        return Err(FerryError::new(ErrorKind::Unsupported, format!("an object store cannot hold a {}", kind.as_str())));
    }
    let buf = &mut bufs.object;
    if entry.check_dest {
        if let Some(dm) = dst.stat(rel)? {
            let (src_crc, dst_crc) = if ctx.options().checksum && kind == EntryKind::File && dm.size == src_meta.size {
                (Some(content_crc(pair.src.as_ref(), rel, &src_meta, buf)?.0), Some(content_crc(dst, rel, &dm, buf)?.0))
            } else {
                (None, None)
            };
            if let Some(reason) = unchanged_reason(ctx, &src_meta, &dm, src_crc, dst_crc) {
                out.record(rel.clone(), kind, EntryStatus::Skipped, src_meta.size, None, Some(reason.into()));
                return Ok(None);
            }
        }
    }
    ctx.fence()?;
    if kind == EntryKind::Symlink {
        let target = src_meta.link_target.clone().unwrap_or_default();
        let staged = dst.stage(rel, Content::Symlink(&target), &src_meta, Some(crc32c::crc32c(&target)))?;
        return Ok(Some((staged, Written { kind, size: 0, crc: None, note: None })));
    }
    let size = src_meta.size;
    if size > OBJECT_PART_MIN {
        let (crc, tag) = upload_whole_multipart(ctx, pair, rel, &src_meta, buf)?;
        let note = verify_if_asked(ctx, dst, rel, size, crc, Expected::Tag(tag), buf)?;
        let done = Staged { rel: rel.clone(), temp: None, size, crc32c: Some(crc) };
        return Ok(Some((done, Written { kind: EntryKind::File, size, crc: Some(crc), note })));
    }
    if !fetched {
        pair.src.read(rel, 0, size, buf)?;
    }
    // BytesPerSecond: the body is in memory; it waits here before it is sent.
    ctx.rate.take(size);
    let crc = crc32c::crc32c(buf);
    check_source_unchanged(pair, rel, &src_meta)?;
    check_against_stored(pair.src.as_ref(), rel, &src_meta, crc)?;
    let corrupt = ctx.hooks.corrupt.as_deref() == Some(rel.as_slice()) && !buf.is_empty();
    if corrupt {
        // Test hook: what arrives is not what was read. The store (or the checks below) must
        // catch it.
        buf[0] ^= 0xff;
    }
    let staged = dst.stage(rel, Content::File(buf), &src_meta, Some(crc));
    if corrupt {
        buf[0] ^= 0xff; // the source's bytes again, for the checks below
    }
    let staged = staged?;
    let data = std::mem::take(buf);
    let note = verify_if_asked(ctx, dst, rel, size, crc, Expected::Bytes(&data), buf);
    *buf = data;
    Ok(Some((staged, Written { kind: EntryKind::File, size, crc: Some(crc), note: note? })))
}

fn verify_if_asked(ctx: &ExecContext, dst: &dyn Location, rel: &[u8], size: u64, crc: u32, expected: Expected<'_>, buf: &mut Vec<u8>) -> Result<Option<String>, FerryError> {
    if ctx.options().verify == VerifyMode::None {
        return Ok(None);
    }
    verify_written(dst, rel, size, crc, expected, buf)
}

/// A file that changed while it was read must not be accepted silently.
fn check_source_unchanged(pair: &ObjectPair, rel: &[u8], before: &Meta) -> Result<(), FerryError> {
    if pair.src.is_object_store() {
        // Reads of an object return exactly the listed length or fail; an object replaced
        // mid-read is caught by the size check and the verification.
        return Ok(());
    }
    let now = pair.src.stat(rel)?;
    match now {
        Some(m) if m.size == before.size && m.mtime == before.mtime => Ok(()),
        _ => Err(FerryError::new(ErrorKind::SourceChanged, format!("source changed while it was read: {} (size or mtime changed)", pair.src.describe(rel)))),
    }
}

/// An object store that keeps the source's CRC32C vouches for what was read: a read that
/// disagrees was damaged on the way and is retried.
fn check_against_stored(src: &dyn Location, rel: &[u8], meta: &Meta, crc: u32) -> Result<(), FerryError> {
    match meta.crc32c {
        Some(stored) if !meta.multipart && stored != crc => Err(FerryError::new(
            ErrorKind::Corrupt,
            format!("read {} with CRC32C {crc:08x}, but the source stores {stored:08x}", src.describe(rel)),
        )),
        _ => Ok(()),
    }
}

/// A file above the single-request size but below the part-shard threshold: uploaded in parts
/// by this mover, one part buffered at a time.
fn upload_whole_multipart(ctx: &ExecContext, pair: &ObjectPair, rel: &[u8], meta: &Meta, buf: &mut Vec<u8>) -> Result<(u32, Option<String>), FerryError> {
    let dst = dst(pair)?;
    let size = meta.size;
    let sub = object_part_size(size);
    let upload = dst.create_multipart(rel, size, meta)?;
    let result = (|| {
        let mut crc = 0u32;
        let mut numbers = Vec::new();
        let mut tags = Vec::new();
        let mut pos = 0u64;
        while pos < size {
            ctx.fence()?;
            let n = (size - pos).min(sub);
            pair.src.read(rel, pos, n, buf)?;
            ctx.rate.take(n);
            let part_crc = crc32c::crc32c(buf);
            let number = (pos / sub) as u32 + 1;
            let tag = dst.put_part(rel, &upload, number, pos, buf, part_crc)?;
            check_part_tag(dst, rel, number, tag.clone(), buf)?;
            tags.push(tag.unwrap_or_default());
            crc = if pos == 0 { part_crc } else { ferry_common::crc::combine(crc, part_crc, n) };
            numbers.push(number);
            pos += n;
        }
        check_source_unchanged(pair, rel, meta)?;
        check_against_stored(pair.src.as_ref(), rel, meta, crc)?;
        let tag = dst.complete_multipart(rel, &upload, &numbers, size, meta, crc)?;
        Ok((crc, tag.or_else(|| etag::multipart(&tags))))
    })();
    if result.is_err() {
        // A failed upload is aborted: no invisible parts are left to pay for.
        let _ = dst.abort_multipart(rel, &upload);
    }
    result
}

/// The multipart upload of a large file, shared by its part shards: the one recorded in the
/// part set, or else an unfinished upload an interrupted run left (resumed), or a new one.
/// Returns the id and whether this call created it (and must abort it if another wins).
pub fn find_or_create_upload(pair: &ObjectPair, file: &Entry, preserve_tags: bool) -> Result<(String, bool), FerryError> {
    let dst = dst(pair)?;
    if let Some(id) = dst.pending_multiparts(&file.path)?.pop() {
        return Ok((id, false));
    }
    let mut meta = pair.src.stat(&file.path)?.ok_or_else(|| FerryError::new(ErrorKind::SourceChanged, format!("source changed while it was read: {} (it was removed)", pair.src.describe(&file.path))))?;
    if preserve_tags && pair.src.is_object_store() && dst.is_object_store() {
        meta.tags = pair.src.tags(&file.path)?;
    }
    Ok((dst.create_multipart(&file.path, file.size, &meta)?, true))
}

/// What one part shard did: the CRC of its byte range, and how much an earlier run had
/// already uploaded.
pub struct PartDone {
    pub crc: u32,
    pub bytes_resumed: u64,
    /// (part number, MD5) of each part stored, where the store's tags are MD5s.
    pub tags: Vec<(u32, String)>,
}

/// Whether a part already stored holds exactly these bytes: by its CRC32C when the store
/// reports one, else by its ETag, which is the MD5 of the part on S3 and most compatibles.
fn stored_part_matches(p: &StoredPart, data: &[u8], crc: u32) -> bool {
    if p.size != data.len() as u64 {
        return false;
    }
    match p.crc32c {
        Some(c) => c == crc,
        None => etag::is_md5(&p.etag) && etag::md5_hex(data) == p.etag.to_ascii_lowercase(),
    }
}

/// Checks the tag a store gave for a part it just stored against the bytes sent, where the
/// tag is an MD5 (the CRC32C sent with the part is checked by the store itself).
fn check_part_tag(dst: &dyn Location, rel: &[u8], number: u32, tag: Option<String>, data: &[u8]) -> Result<(), FerryError> {
    match tag {
        Some(t) if etag::is_md5(&t) && etag::md5_hex(data) != t.to_ascii_lowercase() => Err(FerryError::new(
            ErrorKind::Corrupt,
            format!("part {number} of {} was stored with MD5 {t}, not the MD5 of the bytes sent", dst.describe(rel)),
        )),
        _ => Ok(()),
    }
}

/// Runs a Part shard: uploads `[offset, offset + len)` as whole object parts, keeping parts
/// an interrupted run already stored when they hold the same bytes.
pub fn run_part(ctx: &ExecContext, pair: &ObjectPair, file: &Entry, offset: u64, len: u64, upload: &str, bufs: &mut Buffers) -> Result<PartDone, FerryError> {
    let dst = dst(pair)?;
    let rel = &file.path;
    let sub = object_part_size(file.size).min(Binner::part_size(&ctx.options().limits, file.size));
    let stored: HashMap<u32, StoredPart> = match dst.list_parts(rel, upload) {
        Ok(parts) => parts.into_iter().map(|p| (p.number, p)).collect(),
        Err(e) if e.kind == ErrorKind::NotFound => {
            // The upload is gone (aborted, or expired by a lifecycle rule): the commit starts
            // the file over.
            return Err(FerryError::new(ErrorKind::Unavailable, format!("the multipart upload of {} vanished", dst.describe(rel))));
        }
        Err(e) => return Err(e),
    };
    let src_meta = pair.src.stat(rel)?;
    if !matches!(&src_meta, Some(m) if m.size == file.size && (pair.src.is_object_store() || m.mtime == file.mtime)) {
        return Err(FerryError::new(ErrorKind::SourceChanged, format!("source changed while it was read: {} (size or mtime differs from the listing)", pair.src.describe(rel))));
    }
    let buf = &mut bufs.object;
    let mut done = PartDone { crc: 0, bytes_resumed: 0, tags: Vec::new() };
    let mut pos = offset;
    while pos < offset + len {
        ctx.fence()?;
        let n = (offset + len - pos).min(sub);
        pair.src.read(rel, pos, n, buf)?;
        ctx.rate.take(n);
        let part_crc = crc32c::crc32c(buf);
        let number = (pos / sub) as u32 + 1;
        if ctx.hooks.corrupt.as_deref() == Some(rel.as_slice()) && pos == 0 && !stored.contains_key(&number) {
            let mut bad = buf.clone();
            bad[0] ^= 0xff;
            // The store must refuse a part whose bytes do not match their CRC32C.
            dst.put_part(rel, upload, number, pos, &bad, part_crc)?;
        }
        let tag = match stored.get(&number) {
            Some(p) if stored_part_matches(p, buf, part_crc) => {
                done.bytes_resumed += n;
                Some(p.etag.clone()).filter(|t| etag::is_md5(t)).or_else(|| Some(etag::md5_hex(buf)))
            }
            _ => {
                let tag = dst.put_part(rel, upload, number, pos, buf, part_crc)?;
                check_part_tag(dst, rel, number, tag.clone(), buf)?;
                tag
            }
        };
        if let Some(t) = tag.filter(|t| etag::is_md5(t)) {
            done.tags.push((number, t.to_ascii_lowercase()));
        }
        done.crc = if pos == offset { part_crc } else { ferry_common::crc::combine(done.crc, part_crc, n) };
        pos += n;
    }
    Ok(done)
}

/// Finishes a large file once every part shard is done: completes the upload with the whole
/// file's CRC32C, removes other unfinished uploads of the same name (debris of interrupted
/// runs), and verifies.
pub fn run_commit(ctx: &ExecContext, pair: &ObjectPair, file: &Entry, parts: &PartSet, part_failure: Option<&str>, bufs: &mut Buffers) -> Outcome {
    let mut out = Outcome::default();
    let result = (|| -> Result<(u32, Option<String>), FerryError> {
        let dst = dst(pair)?;
        let rel = &file.path;
        let upload = parts.upload_id.clone().ok_or_else(|| FerryError::new(ErrorKind::Other, format!("no multipart upload was recorded for {}", dst.describe(rel))))?;
        if let Some(reason) = part_failure {
            let _ = dst.abort_multipart(rel, &upload);
            return Err(FerryError::new(ErrorKind::Other, reason.to_string()));
        }
        let mut finish = || -> Result<(u32, Option<String>), FerryError> {
            let meta = pair.src.stat(rel)?;
            let meta = match meta {
                Some(m) if m.size == file.size && (pair.src.is_object_store() || m.mtime == file.mtime) => m,
                _ => return Err(FerryError::new(ErrorKind::SourceChanged, format!("source changed while it was read: {} (size or mtime differs from the listing)", pair.src.describe(rel)))),
            };
            let sub = object_part_size(file.size).min(Binner::part_size(&ctx.options().limits, file.size));
            let numbers: Vec<u32> = (1..=file.size.div_ceil(sub) as u32).collect();
            let crc = parts.combined_crc();
            check_against_stored(pair.src.as_ref(), rel, &meta, crc)?;
            ctx.fence()?;
            let tag = dst.complete_multipart(rel, &upload, &numbers, file.size, &meta, crc)?.or_else(|| {
                // The store lists parts without their tags (s3s-fs): use the ones the part
                // shards recorded, when every part's is there.
                let mut recorded = parts.part_tags.clone();
                recorded.sort();
                recorded.dedup_by_key(|(n, _)| *n);
                let complete = recorded.iter().map(|(n, _)| *n).eq(numbers.iter().copied());
                complete.then(|| etag::multipart(&recorded.into_iter().map(|(_, t)| t).collect::<Vec<_>>())).flatten()
            });
            if dst.is_object_store() {
                for stale in dst.pending_multiparts(rel)? {
                    dst.abort_multipart(rel, &stale)?;
                }
            }
            let note = verify_if_asked(ctx, dst, rel, file.size, crc, Expected::Tag(tag), &mut bufs.object)?;
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
            let c = out.counters();
            c.bytes_written += file.size;
            if ctx.options().verify != VerifyMode::None {
                c.files_verified += 1;
                c.bytes_verified += file.size;
            }
            out.record(file.path.clone(), EntryKind::File, EntryStatus::Transferred, file.size, Some(crc), note);
        }
        Err(err) => out.fail(file.path.clone(), EntryKind::File, file.size, &err),
    }
    out
}

/// Prune shard (sync): deletes what the destination directory has and the source does not,
/// in batches (DeleteObjects on S3). Excluded paths are left alone.
pub fn run_prune(ctx: &ExecContext, pair: &ObjectPair, dir: &ScanDir) -> Result<Outcome, FerryError> {
    let mut out = Outcome::default();
    let dst = dst(pair)?;
    if !ctx.options().remove_deleted {
        return Ok(out);
    }
    let source: HashSet<Vec<u8>> = match list_all(pair.src.as_ref(), &dir.path, PRUNE_SOURCE_CAP)? {
        Some(m) => m.into_keys().collect(),
        None => return Err(FerryError::new(ErrorKind::Other, format!("{} has more than {PRUNE_SOURCE_CAP} entries: sync cannot compare it in one shard", pair.src.describe(&dir.path)))),
    };
    let mut batch: Vec<(Vec<u8>, EntryKind, u64)> = Vec::new();
    let mut resume: Option<Vec<u8>> = None;
    loop {
        let page = match dst.list(&dir.path, resume.as_deref(), 1000) {
            // A directory the destination cannot name holds nothing there to delete.
            Err(e) if e.kind == ErrorKind::Unsupported => return Ok(out),
            other => other?,
        };
        for l in page.entries {
            if source.contains(&l.name) {
                continue;
            }
            let rel = paths::child(&dir.path, &l.name);
            let kind = l.meta.kind();
            if ctx.matcher.covers(&rel, kind == EntryKind::Dir, dir.included) {
                batch.push((rel, kind, l.meta.size));
            }
        }
        if batch.len() >= 1000 || page.resume.is_none() {
            delete_batch(ctx, dst, std::mem::take(&mut batch), &mut out)?;
        }
        match page.resume {
            Some(r) => resume = Some(r),
            None => break,
        }
    }
    Ok(out)
}

fn delete_batch(ctx: &ExecContext, dst: &dyn Location, batch: Vec<(Vec<u8>, EntryKind, u64)>, out: &mut Outcome) -> Result<(), FerryError> {
    if batch.is_empty() {
        return Ok(());
    }
    if ctx.options().dry_run {
        for (rel, kind, _) in batch {
            out.counters().files_prepared += 1;
            out.record(rel, kind, EntryStatus::Skipped, 0, None, Some("dry run: would delete".into()));
        }
        return Ok(());
    }
    ctx.fence()?;
    let rels: Vec<Vec<u8>> = batch.iter().map(|(r, _, _)| r.clone()).collect();
    for ((rel, kind, size), result) in batch.into_iter().zip(dst.remove(&rels)) {
        match result {
            Ok(n) => {
                out.counters().files_deleted += n.saturating_sub(1);
                let reason = (kind == EntryKind::Dir).then(|| format!("removed with {n} entries below it"));
                out.record(rel, kind, EntryStatus::Deleted, if kind == EntryKind::File { size } else { 0 }, None, reason);
            }
            Err(e) => out.fail(rel, kind, 0, &e),
        }
    }
    Ok(())
}

/// DirMeta shard: directory metadata after the contents (a `dir/` marker object on S3, which
/// also keeps empty directories).
pub fn run_dirmeta(ctx: &ExecContext, pair: &ObjectPair, dirs: Vec<DirMeta>) -> Outcome {
    let apply = |d: &DirMeta| -> Result<Option<String>, FerryError> {
        let dst = dst(pair)?;
        let keep_owner = dst.is_object_store() || ctx.is_root && ctx.options().preserve_owner;
        let meta = Meta {
            kind: Some(EntryKind::Dir),
            mtime: d.mtime,
            atime: Some(d.atime),
            mode: Some(d.mode),
            uid: known_id(d.uid).filter(|_| keep_owner),
            gid: known_id(d.gid).filter(|_| keep_owner),
            ..Meta::default()
        };
        if let Some(cur) = dst.stat_dir(&d.path)? {
            let same_owner = !keep_owner || dst.is_object_store() || (meta.uid.is_none() || cur.uid == meta.uid) && (meta.gid.is_none() || cur.gid == meta.gid);
            if cur.mtime == meta.mtime && cur.mode.map(|m| m & 0o7777) == meta.mode.map(|m| m & 0o7777) && same_owner {
                return Ok(Some("unchanged".into()));
            }
        }
        dst.put(&d.path, Content::Dir, &meta, None)?;
        Ok(None)
    };
    dirmeta_each(ctx, dirs, |d| match apply(d) {
        Err(err) if err.kind == ErrorKind::Unsupported => Ok(Some(format!("destination cannot hold it: {}", err.message))),
        other => other,
    })
}

/// Verify shard: compares source and destination directories entry by entry, content by
/// CRC32C (the store's own checksum where it has one). Subdirectories become child shards.
pub fn run_verify(ctx: &ExecContext, pair: &ObjectPair, dirs: &[ScanDir], bufs: &mut Buffers) -> Result<Outcome, FerryError> {
    let mut out = Outcome::default();
    let dst = dst(pair)?;
    let report_all = ctx.spec.mode == Mode::Verify;
    let check_extras = matches!(ctx.spec.mode, Mode::Verify | Mode::Sync);
    let mut subdirs = Vec::new();
    for dir in dirs {
        let Some(src_names) = list_all(pair.src.as_ref(), &dir.path, PRUNE_SOURCE_CAP)? else {
            return Err(FerryError::new(ErrorKind::Other, format!("{} is too large to verify in one shard", pair.src.describe(&dir.path))));
        };
        let dst_names = match list_all(dst, &dir.path, PRUNE_SOURCE_CAP) {
            Err(e) if e.kind == ErrorKind::Unsupported => HashMap::new(),
            other => other?.unwrap_or_default(),
        };
        let mut names: Vec<&Vec<u8>> = src_names.keys().collect();
        names.sort();
        for name in names {
            let rel = paths::child(&dir.path, name);
            let listed = &src_names[name];
            if listed.kind() == EntryKind::Dir {
                let Some(included) = ctx.matcher.scan_dir(&rel, dir.included) else { continue };
                if report_all {
                    out.counters().files_prepared += 1;
                    match dst_names.get(name) {
                        Some(d) if d.kind() == EntryKind::Dir => out.record(rel.clone(), EntryKind::Dir, EntryStatus::Verified, 0, None, None),
                        _ => out.mismatch(rel.clone(), EntryKind::Dir, 0, "missing at the destination".into()),
                    }
                }
                subdirs.push(ScanDir { path: rel, cookie: None, after: None, included });
                continue;
            }
            if !ctx.matcher.file_selected(&rel, dir.included) || listed.kind().is_special() {
                continue;
            }
            if report_all {
                out.counters().files_prepared += 1;
                out.counters().bytes_prepared += listed.size;
            }
            let diff = (|| -> Result<Option<String>, FerryError> {
                if !dst_names.contains_key(name) {
                    return Ok(Some("missing at the destination".into()));
                }
                let s = pair.src.stat(&rel)?.ok_or_else(|| FerryError::new(ErrorKind::SourceChanged, "removed from the source during verification"))?;
                let Some(d) = dst.stat(&rel)? else { return Ok(Some("missing at the destination".into())) };
                if s.kind() != d.kind() {
                    return Ok(Some(format!("type differs: {} at the source, {} at the destination", s.kind().as_str(), d.kind().as_str())));
                }
                if s.mtime != d.mtime {
                    return Ok(Some("mtime differs".into()));
                }
                if s.kind() == EntryKind::Symlink {
                    return Ok((s.link_target != d.link_target).then(|| "symlink target differs".into()));
                }
                if s.size != d.size {
                    return Ok(Some(format!("size differs: {} vs {}", s.size, d.size)));
                }
                let (a, _) = content_crc(pair.src.as_ref(), &rel, &s, &mut bufs.object)?;
                let (b, read) = content_crc(dst, &rel, &d, &mut bufs.object)?;
                if a != b && !read && d.multipart {
                    // The store's multipart checksum is not a whole-object CRC: read it.
                    let b = read_crc(dst, &rel, d.size, &mut bufs.object)?;
                    return Ok((a != b).then(|| format!("content differs: CRC32C {a:08x} at the source, {b:08x} at the destination")));
                }
                Ok((a != b).then(|| format!("content differs: CRC32C {a:08x} at the source, {b:08x} at the destination")))
            })();
            match diff {
                Ok(None) if report_all => out.record(rel, listed.kind(), EntryStatus::Verified, listed.size, None, None),
                Ok(None) => {}
                Ok(Some(reason)) => out.mismatch(rel, listed.kind(), listed.size, reason),
                Err(e) => out.mismatch(rel, listed.kind(), listed.size, e.to_string()),
            }
        }
        if check_extras {
            let mut extras: Vec<&Vec<u8>> = dst_names.keys().filter(|n| !src_names.contains_key(*n)).collect();
            extras.sort();
            for name in extras {
                let rel = paths::child(&dir.path, name);
                let kind = dst_names[name].kind();
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
