//! The reader's side of a link stream: sends one Transfer shard's entries to a writer and
//! collects the acknowledgements. Synchronous; runs on the blocking pool over any [`Wire`].
//!
//! Exchange for one batch (docs/protocol.md, "Exchange"):
//! 1. HELLO, then a HEADER for every entry not yet settled: one round trip per batch, not per
//!    file, which is where rsync loses on small files over long links.
//! 2. Each HEADER is answered: RESUME_AT k (send from byte k), CURRENT (already there) or
//!    REJECT.
//! 3. CHUNKs and END for each entry to send, then FLUSH; the writer answers ACK OK per entry
//!    once it is durable, checked and in place.
//!
//! A RESEND_FROM (a chunk failed its CRC) rewinds to that offset. When the wire goes down,
//! [`send_batch`] returns [`LinkError::Down`] with the settled entries recorded in the
//! [`Batch`]; calling it again on a new stream resumes the rest, each from the offset the
//! writer reports.

use std::collections::{HashMap, HashSet, VecDeque};
use std::os::fd::AsRawFd;
use std::time::Duration;

use ferry_common::crc;
use ferry_common::error::{ErrorKind, FerryError};
use ferry_common::model::{Counters, Entry, EntryKind};
use ferry_common::paths;

use super::frame::{entry_kind, status, Code, FileHeader, Frame, Hello, Stripe};
use super::rate::RateLimiter;
use super::wire::{refused, LinkError, Wire};
use crate::exec::transfer::{crc_range, source_changed, Buffers};
use crate::exec::ExecContext;
use crate::storage::local::{kind_of, sys, DirCache};

/// How long a reader waits for the writer's answers before it declares the link down. A dead
/// connection is noticed sooner, by QUIC's idle timeout; this covers a live connection whose
/// writer makes no progress (answers after a FLUSH of large files take a read-back each).
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(600);

/// How one entry of a batch ended.
#[derive(Debug, Clone)]
pub enum Settled {
    Transferred { crc: u32 },
    Current,
    Failed(FerryError),
}

/// Per-agent sending settings.
pub struct SendSettings<'a> {
    pub agent: &'a str,
    pub compress: bool,
    pub rate: &'a RateLimiter,
    /// Stripes per large file (1: one stream per file).
    pub max_stripes: u64,
}

/// One shard's entries and what has become of them, kept across reconnects.
pub struct Batch {
    pub entries: Vec<Entry>,
    pub settled: Vec<Option<Settled>>,
    /// What the link did for this batch: `bytes_resumed` (bytes a writer already had from an
    /// earlier connection), `chunks_resent` (sent again after the writer found them damaged)
    /// and `bytes_compressed` (saved by compression).
    pub counters: Counters,
    /// Set when this batch is one stripe of its single (large) file.
    pub stripe: Option<Stripe>,
    /// A stripe batch saw its file complete at the writer (COMPLETE, or CURRENT).
    pub completed_file: bool,
    corrupted_once: bool,
}

impl Batch {
    pub fn new(entries: Vec<Entry>) -> Self {
        let n = entries.len();
        Batch { entries, settled: vec![None; n], counters: Counters::default(), stripe: None, completed_file: false, corrupted_once: false }
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
struct Announced {
    size: u64,
    mtime: ferry_common::model::Timestamp,
    /// The byte range this stream sends: the whole file, or its stripe.
    start: u64,
    end: u64,
    /// CRC32C of `[start, end)` once sent.
    crc: u32,
}

/// The error for a REJECT from the writer; damaged data is worth another attempt.
fn rejected(code: u16, message: String) -> FerryError {
    let kind = match Code::from_u16(code) {
        Some(Code::CrcMismatch) => ErrorKind::Corrupt,
        Some(Code::Limit) => ErrorKind::Unavailable,
        Some(Code::UnsafePath) => ErrorKind::Config,
        _ => ErrorKind::Other,
    };
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
    bufs: &'a mut Buffers,
    src_dirs: DirCache,
    announced: HashMap<u64, Announced>,
    /// Ended, waiting for ACK OK.
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
pub fn send_batch(ctx: &ExecContext, settings: &SendSettings, wire: &mut dyn Wire, batch: &mut Batch, bufs: &mut Buffers) -> Result<(), LinkError> {
    let mut s = Sender { ctx, settings, wire, batch, bufs, src_dirs: DirCache::default(), announced: HashMap::new(), awaiting: HashSet::new(), redo: VecDeque::new() };
    s.run()
}

impl Sender<'_, '_> {
    fn run(&mut self) -> Result<(), LinkError> {
        self.wire.send(Frame::Hello(Hello { exec: self.ctx.spec.id.clone(), agent: self.settings.agent.to_string() }))?;
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
            let frame = self.wire.recv(Some(ANSWER_TIMEOUT))?.ok_or_else(|| LinkError::Down(format!("no answer from the writer within {} s", ANSWER_TIMEOUT.as_secs())))?;
            match frame {
                Frame::Ack { id, offset, status: status::RESUME_AT } if unanswered.remove(&id) => to_send.push((id, offset)),
                Frame::Ack { id, status: status::CURRENT, .. } if unanswered.remove(&id) => {
                    self.batch.completed_file = true;
                    self.batch.settle(id, Settled::Current)
                }
                Frame::Reject { id, code, message } if unanswered.remove(&id) => self.batch.settle(id, Settled::Failed(rejected(code, message))),
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
            let frame = self.wire.recv(Some(ANSWER_TIMEOUT))?.ok_or_else(|| LinkError::Down(format!("no acknowledgement from the writer within {} s", ANSWER_TIMEOUT.as_secs())))?;
            self.event(frame, None)?;
        }
        Ok(())
    }

    fn unexpected(&mut self, frame: Frame) -> Result<(), LinkError> {
        match frame {
            Frame::Error { code, message } => Err(refused(code, message)),
            other => {
                // Late answers for entries already settled (a progress ACK, say) are harmless.
                if let Frame::Ack { .. } | Frame::Reject { .. } = other {
                    return self.event(other, None).map(|_| ());
                }
                Err(refused(Code::OutOfOrder as u16, format!("unexpected frame from the writer: {other:?}")))
            }
        }
    }

    /// Applies one frame from the writer; `current` is the entry being sent, if any.
    fn event(&mut self, frame: Frame, current: Option<u64>) -> Result<Rewind, LinkError> {
        match frame {
            Frame::Ack { id, offset, status: st @ (status::OK | status::COMPLETE) } => {
                if self.awaiting.contains(&id) && self.announced.get(&id).map(|a| a.end) == Some(offset) {
                    self.batch.completed_file |= st == status::COMPLETE;
                    self.awaiting.remove(&id);
                    let crc = self.announced[&id].crc;
                    self.batch.settle(id, Settled::Transferred { crc });
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

    /// The HEADER for entry `id`, from a fresh stat of the source.
    fn header(&mut self, id: u64) -> Result<(FileHeader, Announced), FerryError> {
        let ctx = self.ctx;
        let entry = &self.batch.entries[id as usize];
        let src = ctx.src();
        let (parent, name) = paths::split(&entry.path);
        let dir = self.src_dirs.get(src, parent).map_err(|e| src.error("open directory", parent, &e))?;
        let st = sys::lstat_at(dir, name).map_err(|e| src.error("stat", &entry.path, &e))?.ok_or_else(|| source_changed(src, &entry.path, "it was removed"))?;
        let kind = kind_of(&st);
        let Some(hk) = header_kind(kind) else {
            return Err(source_changed(src, &entry.path, "it became a directory"));
        };
        if kind != entry.kind {
            return Err(source_changed(src, &entry.path, "its type changed"));
        }
        let size = if kind == EntryKind::File { st.st_size as u64 } else { 0 };
        let target = if kind == EntryKind::Symlink { sys::readlink_at(dir, name).map_err(|e| src.error("read link", &entry.path, &e))? } else { Vec::new() };
        let crc32c = if kind == EntryKind::File && ctx.options().checksum {
            let fd = sys::open_read_noatime(dir, name).map_err(|e| src.error("open", &entry.path, &e))?;
            Some(crc_range(fd.as_raw_fd(), 0, size, &mut self.bufs.data).map_err(|e| src.error("read", &entry.path, &e))?)
        } else {
            None
        };
        // Linux refuses user.* xattrs on symlinks, so they carry none (as on the local path).
        let xattrs = if kind == EntryKind::Symlink { Vec::new() } else { sys::lxattrs_at(dir, name).map_err(|e| src.error("read xattrs of", &entry.path, &e))? };
        if xattrs.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>() > super::frame::MAX_XATTR_BYTES {
            return Err(FerryError::new(ErrorKind::Unsupported, format!("{}: extended attributes above {} KiB cannot cross an agent link yet (exclude the file, or copy it where one agent reaches both sides)", src.display_path(&entry.path).display(), super::frame::MAX_XATTR_BYTES >> 10)));
        }
        let xattrs = xattrs.into_iter().map(|(k, v)| (serde_bytes::ByteBuf::from(k), serde_bytes::ByteBuf::from(v))).collect();
        let (mt, at) = (sys::mtime(&st), sys::atime(&st));
        let h = FileHeader {
            id,
            path: entry.path.clone(),
            size,
            mode: st.st_mode,
            uid: st.st_uid,
            gid: st.st_gid,
            mtime_sec: mt.sec,
            mtime_nsec: mt.nsec,
            atime_sec: at.sec,
            atime_nsec: at.nsec,
            kind: hk,
            target,
            rdev: st.st_rdev,
            crc32c,
            stripe: self.batch.stripe,
            xattrs,
        };
        let (start, end) = self.batch.stripe.map_or((0, size), |s| (s.start, s.start + s.len));
        if end > size {
            return Err(source_changed(src, &entry.path, "it shrank"));
        }
        Ok((h, Announced { size, mtime: mt, start, end, crc: 0 }))
    }

    /// Sends entry `id` from byte `from`, then END. A source that changed meanwhile settles the
    /// entry as failed (retried by the shard) and sends no END, so the writer never renames it.
    fn send_entry(&mut self, id: u64, from: u64) -> Result<(), LinkError> {
        if self.batch.settled[id as usize].is_some() {
            return Ok(());
        }
        let entry = self.batch.entries[id as usize].clone();
        if entry.kind != EntryKind::File {
            self.wire.send(Frame::End { id, size: 0, crc32c: 0 })?;
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
        let src = ctx.src();
        let rel = &entry.path;
        let (parent, name) = paths::split(rel);
        let (size, mtime, start, end) = match self.announced.get(&id) {
            Some(a) => (a.size, a.mtime, a.start, a.end),
            None => return Ok(Err(source_changed(src, rel, "not announced"))),
        };
        let opened = self
            .src_dirs
            .get(src, parent)
            .and_then(|dir| sys::open_read_noatime(dir, name))
            .map_err(|e| src.error("open", rel, &e));
        let fd = match opened {
            Ok(fd) => fd,
            Err(e) => return Ok(Err(e)),
        };
        let unchanged = |fd: i32| sys::fstat(fd).map(|st| st.st_size as u64 == size && sys::mtime(&st) == mtime).unwrap_or(false);
        if !unchanged(fd.as_raw_fd()) {
            return Ok(Err(source_changed(src, rel, "size or mtime changed")));
        }
        let chunk = self.bufs.data.len().min(super::frame::MAX_CHUNK);
        let mut pos = from.clamp(start, end);
        let mut acc = match self.prefix_crc(fd.as_raw_fd(), start, pos, rel) {
            Ok(c) => c,
            Err(e) => return Ok(Err(e)),
        };
        let mut compress = self.settings.compress;
        while pos < end {
            while let Some(frame) = self.wire.recv(None)? {
                if let Rewind::To(x) = self.event(frame, Some(id))? {
                    pos = x.clamp(start, end);
                    acc = match self.prefix_crc(fd.as_raw_fd(), start, pos, rel) {
                        Ok(c) => c,
                        Err(e) => return Ok(Err(e)),
                    };
                }
            }
            if self.batch.settled[id as usize].is_some() {
                return Ok(Err(FerryError::new(ErrorKind::Other, "rejected by the writer")));
            }
            let n = ((end - pos) as usize).min(chunk);
            // A fresh buffer per chunk: it is handed to the transport, not copied.
            let mut raw = vec![0u8; n];
            match sys::pread(fd.as_raw_fd(), &mut raw, pos) {
                Ok(got) if got == n => {}
                Ok(_) => return Ok(Err(source_changed(src, rel, "it shrank"))),
                Err(e) => return Ok(Err(src.error("read", rel, &e))),
            }
            let c = crc32c::crc32c(&raw);
            self.settings.rate.take(n as u64);
            let mut compressed = false;
            let mut data = None;
            if compress {
                match zstd::bulk::compress(&raw, 1) {
                    // Worth it only when it saves at least 1/32 of the chunk.
                    Ok(z) if z.len() < n - n / 32 => {
                        self.batch.counters.bytes_compressed += (n - z.len()) as u64;
                        compressed = true;
                        data = Some(z);
                    }
                    // Data that does not compress (media, archives, encrypted) is sent raw
                    // for the rest of the file, so no more CPU goes into trying.
                    _ => compress = false,
                }
            }
            let mut data = data.unwrap_or(raw);
            if !self.batch.corrupted_once && ctx.hooks.corrupt_chunk.as_deref() == Some(rel.as_slice()) && !data.is_empty() {
                self.batch.corrupted_once = true;
                data[0] ^= 0xFF;
            }
            self.wire.send(Frame::Chunk { id, offset: pos, crc32c: c, compressed, raw_len: n as u32, data })?;
            acc = crc::combine(acc, c, n as u64);
            pos += n as u64;
        }
        if !unchanged(fd.as_raw_fd()) {
            return Ok(Err(source_changed(src, rel, "size or mtime changed")));
        }
        self.wire.send(Frame::End { id, size: end, crc32c: acc })?;
        Ok(Ok(acc))
    }

    /// CRC32C of `[start, pos)` of the source: what the writer already has of this range.
    fn prefix_crc(&mut self, fd: i32, start: u64, pos: u64, rel: &[u8]) -> Result<u32, FerryError> {
        if pos <= start {
            return Ok(0);
        }
        crc_range(fd, start, pos - start, &mut self.bufs.data).map_err(|e| self.ctx.src().error("read", rel, &e))
    }
}
