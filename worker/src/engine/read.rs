//! The reader: sends a batch of entries (or one range of a large file) from the source to a
//! writer over any [`Wire`], and collects the answers. Synchronous; runs on the blocking pool.
//!
//! Exchange for one batch (docs/protocol.md, "Exchange"):
//! 1. HELLO, then a HEADER for every entry not yet settled: one round trip per batch, not per
//!    file, which is where rsync loses on small files over long links.
//! 2. Each HEADER is answered: RESUME_AT k (send from byte k), CURRENT (already there) or
//!    REJECT.
//! 3. CHUNKs (and HOLEs, where the source has holes) and END for each entry to send, then
//!    FLUSH; the writer answers DONE per entry once it is durable, checked and in place.
//!
//! A RESEND_FROM (a chunk failed its CRC) rewinds to that offset. When the wire goes down,
//! [`send_batch`] returns [`LinkError::Down`] with the settled entries recorded in the
//! [`Batch`]; calling it again on a new stream resumes the rest, each from the offset the
//! writer reports.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use ferry_common::crc;
use ferry_common::error::{ErrorKind, FerryError};
use ferry_common::model::{Counters, Entry, EntryKind, Timestamp};

use super::ExecContext;
use crate::location::{crc_of, source_changed, LocationExt, Source};
use crate::rate::RateLimiter;
use crate::transport::frame::{entry_kind, status, Code, FileHeader, Frame, Hello, PartTarget, MAX_XATTR_BYTES};
use crate::transport::wire::{refused, LinkError, Wire};

/// How long a reader waits for the writer's answers before it declares the link down. A dead
/// connection is noticed sooner, by QUIC's idle timeout; this covers a live connection whose
/// writer makes no progress (answers after a FLUSH of large files take a read-back each).
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(600);

/// How one entry of a batch ended.
#[derive(Debug, Clone)]
pub enum Settled {
    /// In place (a range: stored), with how it was verified when that was weaker than a
    /// CRC32C at rest, bytes an earlier attempt had stored, and object part tags.
    Transferred {
        crc: u32,
        note: Option<String>,
        resumed: u64,
        tags: Vec<(u32, String)>,
    },
    Current,
    Failed(FerryError),
}

/// Per-agent sending settings.
pub struct SendSettings<'a> {
    pub agent: &'a str,
    /// zstd per chunk, only across a link.
    pub compress: bool,
    pub rate: &'a RateLimiter,
}

/// One shard's entries and what has become of them, kept across reconnects.
pub struct Batch {
    pub entries: Vec<Entry>,
    pub settled: Vec<Option<Settled>>,
    /// What the link did for this batch: `bytes_resumed` (bytes a writer already had from an
    /// earlier connection), `chunks_resent` (sent again after the writer found them damaged)
    /// and `bytes_compressed` (saved by compression).
    pub counters: Counters,
    /// Set when this batch is one range of its single (large) file.
    pub part: Option<PartTarget>,
    /// What the source file looked like when its range was read (for the part set).
    pub source: Option<crate::location::Meta>,
    pub source_xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    corrupted_once: bool,
}

impl Batch {
    pub fn new(entries: Vec<Entry>) -> Self {
        let n = entries.len();
        Batch { entries, settled: vec![None; n], counters: Counters::default(), part: None, source: None, source_xattrs: Vec::new(), corrupted_once: false }
    }

    /// One range of a large file.
    pub fn range(file: Entry, part: PartTarget) -> Self {
        Batch { part: Some(part), ..Batch::new(vec![file]) }
    }

    pub fn is_settled(&self) -> bool {
        self.settled.iter().all(Option::is_some)
    }

    fn settle(&mut self, id: u64, s: Settled) {
        if let Some(slot) = self.settled.get_mut(id as usize) {
            if slot.is_none() {
                *slot = Some(s);
            }
        }
    }
}

/// What the reader knows of an announced entry.
struct Announced<'a> {
    size: u64,
    mtime: Timestamp,
    /// The byte range this stream sends: the whole file, or its range.
    start: u64,
    end: u64,
    /// CRC32C of `[start, end)` once sent.
    crc: u32,
    /// The source, when announcing it opened it (see [`HeldSource`]).
    source: Option<HeldSource<'a>>,
}

/// Sources held open between their HEADER and their data, across every reader of the
/// process. Where opening is cheap (a local tree), the header is read from the open file: one
/// `fstat` and one `flistxattr` on the descriptor instead of a stat by name, an xattr listing by
/// path and a later open. The budget keeps batches of thousands of entries from holding a
/// descriptor each; past it, entries are opened when their data is sent.
static HELD_SOURCES: AtomicUsize = AtomicUsize::new(0);

fn held_budget() -> usize {
    static BUDGET: OnceLock<usize> = OnceLock::new();
    *BUDGET.get_or_init(|| {
        let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        // SAFETY: getrlimit writes into the struct it is given.
        let soft = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0 { lim.rlim_cur as usize } else { 1024 };
        (soft / 4).clamp(64, 8192)
    })
}

/// A place in the budget, given back when dropped.
struct Slot;

impl Slot {
    fn reserve() -> Option<Slot> {
        HELD_SOURCES.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < held_budget()).then_some(n + 1)).ok().map(|_| Slot)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        HELD_SOURCES.fetch_sub(1, Ordering::AcqRel);
    }
}

struct HeldSource<'a> {
    source: Box<dyn Source + 'a>,
    _slot: Slot,
}

/// The error for a REJECT from the writer, of the kind the writer's error had, so that it is
/// retried (damaged data, a busy or failing writer) or failed at once (a full or read-only
/// destination) as it would be in process.
fn rejected(code: u16, message: String) -> FerryError {
    let kind = match Code::from_u16(code) {
        Some(Code::CrcMismatch) => ErrorKind::Corrupt,
        Some(Code::Limit) => ErrorKind::Unavailable,
        Some(Code::UnsafePath) => ErrorKind::Config,
        Some(Code::NoSpace) => ErrorKind::NoSpace,
        Some(Code::Denied) => ErrorKind::PermissionDenied,
        Some(Code::NotFound) => ErrorKind::NotFound,
        _ if message.contains("destination cannot hold") || message.contains("[SPECIAL_FILE]") || message.contains("_TOO_") || message.contains("NOT_UTF8") => {
            ErrorKind::Unsupported
        }
        _ => ErrorKind::Other,
    };
    // The writer's message ends with its kind's hint; ours would repeat it.
    let message = message.strip_suffix(&format!(" ({})", kind.hint())).unwrap_or(&message);
    FerryError::new(kind, format!("destination agent: {message}"))
}

fn header_kind(kind: EntryKind) -> Option<u8> {
    Some(match kind {
        EntryKind::File => entry_kind::FILE,
        EntryKind::Symlink => entry_kind::SYMLINK,
        EntryKind::Fifo => entry_kind::FIFO,
        EntryKind::Socket => entry_kind::SOCKET,
        EntryKind::CharDev => entry_kind::CHAR_DEVICE,
        EntryKind::BlockDev => entry_kind::BLOCK_DEVICE,
        EntryKind::Dir | EntryKind::HardLink => return None,
    })
}

struct Sender<'a, 'w> {
    ctx: &'a ExecContext,
    settings: &'a SendSettings<'a>,
    wire: &'w mut dyn Wire,
    batch: &'a mut Batch,
    buf: &'a mut Vec<u8>,
    announced: HashMap<u64, Announced<'a>>,
    /// Ended, waiting for DONE.
    awaiting: HashSet<u64>,
    /// Ranges to send again: (id, from).
    redo: VecDeque<(u64, u64)>,
}

/// What an incoming frame asks of the entry being sent.
enum Rewind {
    None,
    To(u64),
}

/// Sends the unsettled entries of `batch` over `wire`. `Ok` when every entry is settled.
pub fn send_batch(ctx: &ExecContext, settings: &SendSettings, wire: &mut dyn Wire, batch: &mut Batch, buf: &mut Vec<u8>) -> Result<(), LinkError> {
    // Over a link, the writer's span of this stream is a child of this one (its HELLO carries it).
    let span = tracing::debug_span!("send_batch", otel.name = "send batch", entries = batch.entries.len());
    let _in = span.enter();
    let mut s = Sender { ctx, settings, wire, batch, buf, announced: HashMap::new(), awaiting: HashSet::new(), redo: VecDeque::new() };
    s.run()
}

impl<'a> Sender<'a, '_> {
    fn run(&mut self) -> Result<(), LinkError> {
        let trace = ferry_common::traces::current_traceparent();
        self.wire.send(Frame::Hello(Hello { exec: self.ctx.spec.id.clone(), agent: self.settings.agent.to_string(), trace }))?;
        let pending: Vec<u64> = (0..self.batch.entries.len() as u64).filter(|&i| self.batch.settled[i as usize].is_none()).collect();
        for &id in &pending {
            match self.header(id) {
                Ok((h, a)) => {
                    self.wire.send(Frame::Header(h))?;
                    self.announced.insert(id, a);
                }
                Err(e) => self.batch.settle(id, Settled::Failed(e)),
            }
        }
        let mut to_send = Vec::new();
        let mut unanswered: HashSet<u64> = self.announced.keys().copied().collect();
        while !unanswered.is_empty() {
            let frame = self
                .wire
                .recv(Some(ANSWER_TIMEOUT))?
                .ok_or_else(|| LinkError::Down(format!("no answer from the writer within {} s", ANSWER_TIMEOUT.as_secs())))?;
            match frame {
                Frame::Ack { id, offset, status: status::RESUME_AT } if unanswered.remove(&id) => to_send.push((id, offset)),
                Frame::Ack { id, status: status::CURRENT, .. } if unanswered.remove(&id) => self.settle_unsent(id, Settled::Current),
                Frame::Reject { id, code, message } if unanswered.remove(&id) => self.settle_unsent(id, Settled::Failed(rejected(code, message))),
                other => self.unexpected(other)?,
            }
        }
        for (id, from) in to_send {
            self.batch.counters.bytes_resumed += from.saturating_sub(self.announced.get(&id).map_or(0, |a| a.start));
            self.send_entry(id, from)?;
        }
        self.wire.send(Frame::Flush)?;
        while !self.awaiting.is_empty() || !self.redo.is_empty() {
            if let Some((id, from)) = self.redo.pop_front() {
                self.send_entry(id, from)?;
                if self.redo.is_empty() {
                    self.wire.send(Frame::Flush)?;
                }
                continue;
            }
            let frame = self
                .wire
                .recv(Some(ANSWER_TIMEOUT))?
                .ok_or_else(|| LinkError::Down(format!("no answer from the writer within {} s", ANSWER_TIMEOUT.as_secs())))?;
            self.event(frame, None)?;
        }
        Ok(())
    }

    fn unexpected(&mut self, frame: Frame) -> Result<(), LinkError> {
        match frame {
            Frame::Error { code, message } => Err(refused(code, message)),
            // Late answers for entries already settled are harmless.
            other @ (Frame::Ack { .. } | Frame::Reject { .. } | Frame::Done(_)) => self.event(other, None).map(|_| ()),
            other => Err(refused(Code::OutOfOrder as u16, format!("unexpected frame from the writer: {other:?}"))),
        }
    }

    /// Applies one frame from the writer; `current` is the entry being sent, if any.
    fn event(&mut self, frame: Frame, current: Option<u64>) -> Result<Rewind, LinkError> {
        match frame {
            Frame::Done(d) => {
                if self.awaiting.contains(&d.id) && self.announced.get(&d.id).map(|a| a.end) == Some(d.end) {
                    self.awaiting.remove(&d.id);
                    let crc = self.announced[&d.id].crc;
                    self.batch.counters.bytes_resumed += d.resumed;
                    self.batch.settle(d.id, Settled::Transferred { crc, note: d.note, resumed: d.resumed, tags: d.tags });
                }
            }
            Frame::Ack { id, offset, status: status::RESEND_FROM } => {
                self.batch.counters.chunks_resent += 1;
                if current == Some(id) {
                    return Ok(Rewind::To(offset));
                }
                self.awaiting.remove(&id);
                self.redo.push_back((id, offset));
            }
            Frame::Reject { id, code, message } => {
                self.awaiting.remove(&id);
                self.redo.retain(|(r, _)| *r != id);
                self.batch.settle(id, Settled::Failed(rejected(code, message)));
            }
            Frame::Error { code, message } => return Err(refused(code, message)),
            Frame::Ack { .. } => {}
            other => return Err(refused(Code::OutOfOrder as u16, format!("unexpected frame from the writer: {other:?}"))),
        }
        Ok(Rewind::None)
    }

    /// The HEADER for entry `id`, from a fresh look at the source.
    /// Settles an entry whose data will not be sent, closing its source if it was held.
    fn settle_unsent(&mut self, id: u64, s: Settled) {
        if let Some(a) = self.announced.get_mut(&id) {
            a.source = None;
        }
        self.batch.settle(id, s);
    }

    fn header(&mut self, id: u64) -> Result<(FileHeader, Announced<'a>), FerryError> {
        let ctx = self.ctx;
        let src = ctx.src()?;
        let rel = self.batch.entries[id as usize].path.clone();
        let rel = &rel;
        let listed = self.batch.entries[id as usize].kind;
        let mut held = None;
        if listed == EntryKind::File && src.capabilities().cheap_stat {
            if let Some(slot) = Slot::reserve() {
                held = Some(HeldSource { source: src.open(rel, 0)?, _slot: slot });
            }
        }
        let meta = match &held {
            Some(h) => h.source.meta().clone(),
            None => src.stat(rel)?.ok_or_else(|| source_changed(src.describe(rel), "it was removed"))?,
        };
        let kind = meta.kind();
        let Some(hk) = header_kind(kind) else {
            return Err(source_changed(src.describe(rel), "it became a directory"));
        };
        // An object listing shows a symlink as an object: the stat says what it is.
        let listed_as_object = listed == EntryKind::File && kind == EntryKind::Symlink && !src.capabilities().complete_listing;
        if kind != listed && !listed_as_object {
            return Err(source_changed(src.describe(rel), "its type changed"));
        }
        if listed_as_object {
            self.batch.entries[id as usize].kind = kind;
        }
        let entry = &self.batch.entries[id as usize];
        let size = if kind == EntryKind::File { meta.size } else { 0 };
        let crc32c =
            if kind == EntryKind::File && entry.compare_checksum && self.batch.part.is_none() { Some(src.checksum(rel, &meta, self.buf)?.0) } else { None };
        // Linux refuses user.* xattrs on symlinks, so they carry none.
        let xattrs = match &mut held {
            _ if !ctx.keeps_xattrs() || kind == EntryKind::Symlink => Vec::new(),
            Some(h) => h.source.xattrs()?,
            None => src.xattrs(rel)?,
        };
        if xattrs.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>() > MAX_XATTR_BYTES {
            return Err(FerryError::new(
                ErrorKind::Unsupported,
                format!("{}: extended attributes above {} KiB cannot be carried yet (exclude the file)", src.describe(rel), MAX_XATTR_BYTES >> 10),
            ));
        }
        let tags = if ctx.carries_tags() && kind == EntryKind::File { src.tags(rel)? } else { None };
        let (mt, at) = (meta.mtime, meta.atime.unwrap_or(meta.mtime));
        let (start, end) = self.batch.part.as_ref().map_or((0, size), |p| (p.offset, p.offset + p.len));
        if end > size {
            return Err(source_changed(src.describe(rel), "it shrank"));
        }
        if self.batch.part.is_some() {
            self.batch.source = Some(crate::location::Meta { tags: tags.clone(), ..meta.clone() });
            self.batch.source_xattrs = xattrs.clone();
        }
        let h = FileHeader {
            id,
            path: rel.clone(),
            size,
            mode: meta.mode.unwrap_or(match kind {
                EntryKind::Symlink => libc::S_IFLNK | 0o777,
                _ => libc::S_IFREG | 0o644,
            }),
            uid: meta.uid.unwrap_or(0),
            gid: meta.gid.unwrap_or(0),
            owner: ctx.keeps_owner() && meta.uid.is_some() && meta.gid.is_some(),
            mtime_sec: mt.sec,
            mtime_nsec: mt.nsec,
            atime_sec: at.sec,
            atime_nsec: at.nsec,
            kind: hk,
            target: meta.link_target.clone().filter(|_| kind == EntryKind::Symlink).unwrap_or_default(),
            rdev: meta.rdev,
            crc32c,
            part: self.batch.part.clone(),
            decided: entry.decided(),
            tags,
            xattrs: xattrs.into_iter().map(|(k, v)| (serde_bytes::ByteBuf::from(k), serde_bytes::ByteBuf::from(v))).collect(),
        };
        Ok((h, Announced { size, mtime: mt, start, end, crc: 0, source: held }))
    }

    /// Sends entry `id` from byte `from`, then END. A source that changed meanwhile settles the
    /// entry as failed (retried by the shard) and sends no END, so the writer never puts it in
    /// place.
    fn send_entry(&mut self, id: u64, from: u64) -> Result<(), LinkError> {
        if self.batch.settled[id as usize].is_some() {
            return Ok(());
        }
        let entry = self.batch.entries[id as usize].clone();
        // Nothing to read: the header's fresh look at the source is all there is to check.
        if entry.kind != EntryKind::File || self.announced.get(&id).is_some_and(|a| a.end == a.start) {
            let end = self.announced.get(&id).map_or(0, |a| a.end);
            self.wire.send(Frame::End { id, size: end, crc32c: 0 })?;
            self.awaiting.insert(id);
            return Ok(());
        }
        match self.send_file(id, &entry, from)? {
            Ok(crc) => {
                if let Some(a) = self.announced.get_mut(&id) {
                    a.crc = crc;
                }
                self.awaiting.insert(id);
            }
            Err(e) => self.batch.settle(id, Settled::Failed(e)),
        }
        Ok(())
    }

    fn send_file(&mut self, id: u64, entry: &Entry, from: u64) -> Result<Result<u32, FerryError>, LinkError> {
        let ctx = self.ctx;
        let src = match ctx.src() {
            Ok(s) => s,
            Err(e) => return Ok(Err(e)),
        };
        let rel = &entry.path;
        let Some(a) = self.announced.get(&id) else {
            return Ok(Err(source_changed(src.describe(rel), "not announced")));
        };
        let (size, mtime, start, end) = (a.size, a.mtime, a.start, a.end);
        let held = self.announced.get_mut(&id).and_then(|a| a.source.take());
        let mut source = match held.map(|h| Ok(h.source)).unwrap_or_else(|| src.open(rel, from.clamp(start, end))) {
            Ok(s) => s,
            Err(e) => return Ok(Err(e)),
        };
        if source.meta().size != size || source.meta().mtime != mtime {
            return Ok(Err(source_changed(src.describe(rel), "size or mtime changed")));
        }
        let mut pos = from.clamp(start, end);
        let mut acc = match prefix_crc(source.as_mut(), start, pos, self.buf) {
            Ok(c) => c,
            Err(e) => return Ok(Err(e)),
        };
        let chunk = (ctx.options().limits.chunk_size as usize).clamp(4096, crate::transport::frame::MAX_CHUNK);
        let mut compress = self.settings.compress;
        let changes_source = ctx.hooks.changes_source(rel);
        while pos < end {
            while let Some(frame) = self.wire.recv(None)? {
                if let Rewind::To(x) = self.event(frame, Some(id))? {
                    pos = x.clamp(start, end);
                    acc = match prefix_crc(source.as_mut(), start, pos, self.buf) {
                        Ok(c) => c,
                        Err(e) => return Ok(Err(e)),
                    };
                }
            }
            if self.batch.settled[id as usize].is_some() {
                return Ok(Err(FerryError::new(ErrorKind::Other, "rejected by the writer")));
            }
            let (data_start, data_end) = match source.data(pos) {
                Ok(Some((s, e))) => (s.min(end), e.min(end)),
                Ok(None) => (end, end),
                Err(e) => return Ok(Err(e)),
            };
            if data_start > pos {
                let len = data_start - pos;
                self.wire.send(Frame::Hole { id, offset: pos, len })?;
                acc = crc::combine(acc, crc::zeros(len), len);
                pos = data_start;
                continue;
            }
            let n = ((data_end - pos) as usize).min(chunk);
            let mut raw = self.wire.buffer(n);
            if let Err(e) = source.read_at(pos, &mut raw) {
                return Ok(Err(e));
            }
            if changes_source {
                append_to_source(&src.describe(rel));
            }
            let c = crc32c::crc32c(&raw);
            self.settings.rate.take(n as u64);
            let mut data = raw;
            let mut compressed = false;
            if compress {
                match zstd::bulk::compress(&data, 1) {
                    // Worth it only when it saves at least 1/32 of the chunk.
                    Ok(z) if z.len() < n - n / 32 => {
                        self.batch.counters.bytes_compressed += (n - z.len()) as u64;
                        compressed = true;
                        data = z;
                    }
                    // Data that does not compress (media, archives, encrypted) is sent raw
                    // for the rest of the file, so no more CPU goes into trying.
                    _ => compress = false,
                }
            }
            if !self.batch.corrupted_once && ctx.hooks.corrupts_chunk(rel) && !data.is_empty() {
                self.batch.corrupted_once = true;
                data[0] ^= 0xFF;
            }
            self.wire.send(Frame::Chunk { id, offset: pos, crc32c: c, compressed, raw_len: n as u32, data })?;
            // Combining costs more than a small file's whole copy: the first chunk is the CRC.
            acc = if pos == start { c } else { crc::combine(acc, c, n as u64) };
            pos += n as u64;
        }
        if !source.unchanged().unwrap_or(false) {
            return Ok(Err(source_changed(src.describe(rel), "size or mtime changed")));
        }
        self.wire.send(Frame::End { id, size: end, crc32c: acc })?;
        Ok(Ok(acc))
    }
}

/// CRC32C of `[start, pos)` of the source: what the writer already has of this range.
fn prefix_crc(source: &mut dyn Source, start: u64, pos: u64, buf: &mut Vec<u8>) -> Result<u32, FerryError> {
    if pos <= start {
        return Ok(0);
    }
    crc_of(source, start, pos - start, buf)
}

/// The `FERRY_TEST_SOURCE_CHANGE` hook: the source file grows while it is read.
fn append_to_source(path: &str) {
    use std::io::Write;
    if let Ok(mut f) = std::fs::OpenOptions::new().append(true).open(path) {
        let _ = f.write_all(b"changed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer's error reaches the reader with its kind, so that it is retried or failed as
    /// it would be in process, and with its hint once.
    #[test]
    fn a_rejected_entry_keeps_the_writers_error_kind_and_one_hint() {
        for kind in [ErrorKind::NoSpace, ErrorKind::PermissionDenied, ErrorKind::NotFound, ErrorKind::Unavailable, ErrorKind::Corrupt] {
            let Frame::Reject { code, message, .. } = crate::engine::write::reject_for(7, &FerryError::new(kind, "cannot write /d/x")) else {
                panic!("a REJECT")
            };
            let e = rejected(code, message);
            assert_eq!(e.kind, kind);
            assert_eq!(e.to_string(), format!("destination agent: cannot write /d/x ({})", kind.hint()));
        }
        // A writer error of another kind, or a code this reader does not know, is an I/O
        // failure that is not retried.
        assert_eq!(rejected(99, "x".into()).kind, ErrorKind::Other);
    }
}
