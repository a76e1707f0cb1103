//! The writer: applies one stream's frames to the destination, whatever backend it is. The
//! same code serves a reader in the same process ([`crate::transport::wire::LocalWire`]) and
//! readers at other sites (`crate::transport::link::quic`), so every decision here is tested
//! without a network. A plain state machine: frames in, frames out.
//!
//! For each entry:
//! - HEADER: the entry is checked against the destination's limits and, unless the reader
//!   decided already, compared with what the destination holds ([`super::decide`]): CURRENT
//!   when it holds it. Otherwise a sink is opened; a file named after its source version
//!   keeps what an interrupted attempt wrote, and RESUME_AT says from where to send.
//! - CHUNK: checked against its CRC32C (unless the reader is in-process) and written; HOLE:
//!   nothing is written, the range stays a hole where the destination keeps holes.
//! - END: the whole CRC32C, combined from the chunks', must be the reader's; the entry is
//!   finished with its metadata (after the content) and staged.
//! - FLUSH: the staged entries go through the one commit protocol
//!   ([`crate::location::commit`]: durable, checked at rest, published, names durable) and
//!   each is answered DONE, or REJECT.
//!
//! REQUESTs ask of the destination what a reader at another site cannot see (listings,
//! lookups, checksums, removals, multipart writes); each is answered by one RESPONSE.
//!
//! Paths are confined to the destination root: frames carry only safe relative paths
//! (checked by the decoder), and every backend resolves them below its root without
//! following symlinks.

use std::collections::{BTreeSet, HashMap};

use ferry_common::crc;
use ferry_common::error::{ErrorKind, FerryError};
use ferry_common::metrics as m;
use ferry_common::model::{EntryKind, Timestamp};
use ferry_common::paths;

use super::decide::{self, Rules, Verdict};
use super::dest::{self, Dest};
use super::ExecContext;
use crate::location::{commit, Location, LocationExt, Meta, Sink, Special, Staged, Target, Xattrs};
use crate::transport::frame::{self, entry_kind, status, Code, Done, FileHeader, Frame, ProtocolError, Request, Response, MAX_OPEN_FILES};

/// Bad chunks tolerated per file before the writer gives up on it.
const MAX_BAD_CHUNKS: u32 = 8;

/// One announced entry whose data is still arriving.
struct Incoming<'a> {
    header: FileHeader,
    meta: Meta,
    xattrs: Xattrs,
    /// Files and ranges: where the bytes go.
    sink: Option<Box<dyn Sink + 'a>>,
    /// The next byte expected; everything before it is written and CRC-checked.
    offset: u64,
    /// CRC32C of `[start, offset)`.
    crc: u32,
    /// A bad chunk was answered with RESEND_FROM: drop chunks until one starts at `offset`.
    resending: bool,
    bad_chunks: u32,
}

impl Incoming<'_> {
    fn start(&self) -> u64 {
        self.header.part.as_ref().map_or(0, |p| p.offset)
    }
    fn end(&self) -> u64 {
        self.header.part.as_ref().map_or(self.header.size, |p| p.offset + p.len)
    }
}

/// What the writer did, for its logs and metrics.
#[derive(Debug, Default, Clone)]
pub struct WriterStats {
    pub files_written: u64,
    pub bytes_written: u64,
    pub bytes_resumed: u64,
    pub chunks_rejected: u64,
    pub entries_current: u64,
}

pub struct Writer<'a> {
    ctx: &'a ExecContext,
    dst: &'a dyn Location,
    rules: Rules,
    /// Chunks from another process are checked against their CRC32C on arrival; an
    /// in-process reader's need no second look before the read-back at rest.
    check_chunks: bool,
    open: HashMap<u64, Incoming<'a>>,
    /// (id, end, is a part's range, staged entry).
    staged: Vec<(u64, u64, bool, Staged)>,
    buf: Vec<u8>,
    /// Entries this stream is writing: id → key in [`WRITING`].
    held: HashMap<u64, Vec<u8>>,
    pub stats: WriterStats,
}

/// Entries being written by any stream of this process (execution id, NUL, path, range). A
/// reader that reconnects while its old stream is still draining here must not write the
/// same temporary file from two streams: the second waits until the first lets go.
static WRITING: std::sync::Mutex<BTreeSet<Vec<u8>>> = std::sync::Mutex::new(BTreeSet::new());

/// How long a HEADER waits for another stream of this agent to let go of the same entry
/// before it is refused. After a link cut the old stream holds its entries until this side
/// notices the connection is gone (the 8 s idle timeout) and drops it, while the reader has
/// already reconnected (found by `ferry-load chaos`).
const RELEASE_WAIT: std::time::Duration = std::time::Duration::from_secs(20);

fn writing() -> std::sync::MutexGuard<'static, BTreeSet<Vec<u8>>> {
    WRITING.lock().unwrap_or_else(|p| p.into_inner())
}

/// Claims `key` in [`WRITING`], waiting up to `wait` for another stream to release it.
fn claim_writing(key: &[u8], wait: std::time::Duration) -> bool {
    let deadline = std::time::Instant::now() + wait;
    loop {
        if writing().insert(key.to_vec()) {
            return true;
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

impl Drop for Writer<'_> {
    fn drop(&mut self) {
        let mut w = writing();
        for key in self.held.values() {
            w.remove(key);
        }
    }
}

fn reject(id: u64, code: Code, message: impl Into<String>) -> Frame {
    Frame::Reject { id, code: code as u16, message: message.into() }
}

/// The REJECT for entry `id` that failed with `e`, its code telling the reader its kind.
pub(crate) fn reject_for(id: u64, e: &FerryError) -> Frame {
    let code = match e.kind {
        ErrorKind::Corrupt => Code::CrcMismatch,
        ErrorKind::Unavailable => Code::Limit,
        ErrorKind::NoSpace => Code::NoSpace,
        ErrorKind::PermissionDenied => Code::Denied,
        ErrorKind::NotFound => Code::NotFound,
        _ => Code::Io,
    };
    reject(id, code, e.to_string())
}

fn ack(id: u64, offset: u64, status: u8) -> Frame {
    Frame::Ack { id, offset, status }
}

fn perr(code: Code, detail: impl Into<String>) -> ProtocolError {
    ProtocolError { code, detail: detail.into() }
}

pub fn kind_of_header(kind: u8) -> EntryKind {
    match kind {
        entry_kind::SYMLINK => EntryKind::Symlink,
        entry_kind::FIFO => EntryKind::Fifo,
        entry_kind::SOCKET => EntryKind::Socket,
        entry_kind::CHAR_DEVICE => EntryKind::CharDev,
        entry_kind::BLOCK_DEVICE => EntryKind::BlockDev,
        _ => EntryKind::File,
    }
}

/// The entry a header describes, as the destination should hold it. The file type comes
/// from the kind alone (checked against the mode by [`frame::check_header`]); owner and
/// set-id bits only when this execution keeps owners, whatever the reader says.
fn meta_of(h: &FileHeader, keeps_owner: bool) -> Meta {
    let kind = kind_of_header(h.kind);
    let owner = h.owner && keeps_owner;
    let perm = h.mode & 0o7777 & if owner { 0o7777 } else { !(libc::S_ISUID | libc::S_ISGID) };
    Meta {
        kind: Some(kind),
        size: h.size,
        mtime: Timestamp { sec: h.mtime_sec, nsec: h.mtime_nsec },
        atime: Some(Timestamp { sec: h.atime_sec, nsec: h.atime_nsec }),
        mode: Some(frame::type_bits(h.kind).unwrap_or(libc::S_IFREG) | perm),
        uid: owner.then_some(h.uid),
        gid: owner.then_some(h.gid),
        rdev: if matches!(kind, EntryKind::CharDev | EntryKind::BlockDev) { h.rdev } else { 0 },
        link_target: (kind == EntryKind::Symlink).then(|| h.target.clone()),
        tags: h.tags.clone(),
        ..Meta::default()
    }
}

impl<'a> Writer<'a> {
    /// `ctx` must reach the destination. `check_chunks`: the reader is another process.
    pub fn new(ctx: &'a ExecContext, check_chunks: bool) -> Result<Self, FerryError> {
        let dst = ctx.dst()?.as_ref();
        let rules = Rules::new(ctx.options(), ctx.keeps_owner() && dst.capabilities().ownership, &dst.capabilities());
        Ok(Writer {
            ctx,
            dst,
            rules,
            check_chunks,
            open: HashMap::new(),
            staged: Vec::new(),
            // Grown on first use to what the read-backs need.
            buf: Vec::new(),
            held: HashMap::new(),
            stats: WriterStats::default(),
        })
    }

    /// Lets go of the entries whose answer in `replies` is final (in place, current, refused).
    fn release_settled(&mut self, replies: &[Frame]) {
        for r in replies {
            let id = match r {
                Frame::Reject { id, .. } | Frame::Ack { id, status: status::CURRENT, .. } => *id,
                Frame::Done(d) => d.id,
                _ => continue,
            };
            if self.open.contains_key(&id) || self.staged.iter().any(|(i, _, _, _)| *i == id) {
                continue; // still ours: a refusal of a duplicate id
            }
            if let Some(key) = self.held.remove(&id) {
                writing().remove(&key);
            }
        }
    }

    /// Handles one frame from the reader. `Err` ends the stream with that code.
    pub fn handle(&mut self, frame: Frame) -> Result<Vec<Frame>, ProtocolError> {
        if let Frame::Chunk { id, offset, crc32c, compressed, raw_len, data } = frame {
            return self.chunk(id, offset, crc32c, compressed, raw_len, &data);
        }
        if self.ctx.fence().is_err() {
            return Err(perr(Code::LeaseLost, "this writer lost its cluster lease; it rejoins, or another writer takes over: reconnect"));
        }
        let replies = match frame {
            Frame::Header(h) => vec![self.header(h)?],
            Frame::Hole { id, offset, len } => self.hole(id, offset, len)?,
            Frame::End { id, size, crc32c } => self.end(id, size, crc32c)?,
            Frame::Flush => self.flush(),
            Frame::Request(r) => vec![Frame::Response(self.request(r))],
            Frame::Hello(_) => return Err(perr(Code::OutOfOrder, "HELLO after the stream started")),
            Frame::Chunk { id, .. } => return Err(perr(Code::OutOfOrder, format!("CHUNK for file id {id} taken for another frame"))),
            Frame::Ack { .. } | Frame::Reject { .. } | Frame::Done(_) | Frame::Response(_) => {
                return Err(perr(Code::OutOfOrder, "ACK, DONE, REJECT and RESPONSE travel from writer to reader"))
            }
            Frame::Error { code, message } => return Err(perr(Code::from_u16(code).unwrap_or(Code::Malformed), format!("reader ended the stream: {message}"))),
        };
        self.release_settled(&replies);
        Ok(replies)
    }

    /// `Err` for a header no honest reader sends: it ends the stream.
    fn header(&mut self, h: FileHeader) -> Result<Frame, ProtocolError> {
        // Decoded frames were checked already; an in-process reader's are checked here.
        frame::check_header(&h)?;
        let id = h.id;
        if !matches!(h.kind, entry_kind::FILE | entry_kind::SYMLINK) && !self.ctx.options().preserve_devices {
            return Err(perr(Code::Malformed, format!("HEADER for special file {} while this execution does not preserve devices", paths::display(&h.path))));
        }
        Ok(self.header_checked(h, id))
    }

    fn header_checked(&mut self, h: FileHeader, id: u64) -> Frame {
        if self.open.contains_key(&id) || self.staged.iter().any(|(i, _, _, _)| *i == id) {
            return reject(id, Code::Malformed, format!("file id {id} is already in use on this stream"));
        }
        if self.open.len() + self.staged.len() >= MAX_OPEN_FILES {
            return reject(id, Code::Limit, format!("more than {MAX_OPEN_FILES} files open on one stream; send FLUSH and wait for answers"));
        }
        let mut key = self.ctx.spec.id.as_bytes().to_vec();
        key.push(0);
        key.extend_from_slice(&h.path);
        if let Some(p) = &h.part {
            key.extend_from_slice(format!("\0{}", p.offset).as_bytes());
        }
        if !claim_writing(&key, RELEASE_WAIT) {
            return reject(
                id,
                Code::Limit,
                format!(
                    "{} is still being written by another stream of this agent after {} s (a reconnect while the old stream drains); try again",
                    paths::display(&h.path),
                    RELEASE_WAIT.as_secs()
                ),
            );
        }
        self.held.insert(id, key);
        let mut meta = meta_of(&h, self.ctx.keeps_owner());
        if let Some(r) = self.dst.limits().refusal(&self.dst.capabilities(), &h.path, meta.kind(), h.size) {
            return reject(id, Code::Io, FerryError::new(ErrorKind::Unsupported, format!("[{}] {}", r.code, r.message)).to_string());
        }
        let xattrs: Xattrs = if self.dst.capabilities().xattrs { h.xattrs.iter().map(|(k, v)| (k.to_vec(), v.to_vec())).collect() } else { Vec::new() };
        if h.part.is_none() && !h.decided {
            match self.holds_already(&h, &meta, &xattrs) {
                Ok(true) => {
                    self.stats.entries_current += 1;
                    return ack(id, h.size, status::CURRENT);
                }
                Ok(false) => {}
                Err(e) => return reject_for(id, &e),
            }
        }
        if !self.dst.capabilities().ownership {
            (meta.uid, meta.gid) = (None, None);
        }
        let mut f = Incoming { header: h, meta, xattrs, sink: None, offset: 0, crc: 0, resending: false, bad_chunks: 0 };
        f.offset = f.start();
        if f.header.kind == entry_kind::FILE {
            match self.open_sink(&f) {
                Ok(mut sink) => {
                    let kept = sink.resumed();
                    if kept > 0 {
                        match sink.crc_resumed(&mut self.buf) {
                            Ok(c) => (f.offset, f.crc) = (f.start() + kept, c),
                            Err(e) => {
                                sink.abort();
                                return reject_for(id, &e);
                            }
                        }
                    }
                    f.sink = Some(sink);
                }
                Err(e) => return reject_for(id, &e),
            }
        }
        let resume_at = f.offset;
        self.stats.bytes_resumed += resume_at - f.start();
        self.open.insert(id, f);
        ack(id, resume_at, status::RESUME_AT)
    }

    fn open_sink(&self, f: &Incoming<'a>) -> Result<Box<dyn Sink + 'a>, FerryError> {
        let h = &f.header;
        // The source version is part of the name: a partial file of another version is
        // never resumed.
        let version = format!("{}:{}.{}:{}", h.size, h.mtime_sec, h.mtime_nsec, h.mode);
        let target = match &h.part {
            Some(p) => Target::Part { upload: &p.upload, offset: p.offset, len: p.len, size: h.size },
            None => Target::File { size: h.size, resume: Some(&version) },
        };
        self.dst.create(&h.path, target, &f.meta, &f.xattrs)
    }

    /// Whether the destination holds the entry already (TransferMode, OverwriteMode and the
    /// same rule as the scan's). Same content with other metadata is refreshed in place where
    /// the destination can.
    fn holds_already(&mut self, h: &FileHeader, meta: &Meta, xattrs: &Xattrs) -> Result<bool, FerryError> {
        let current = self.dst.stat(&h.path)?;
        match decide::verdict((meta, true), current.as_ref().map(|m| (m, true)), self.rules) {
            Verdict::Copy | Verdict::NeedMeta => Ok(false),
            Verdict::Skip(_) => Ok(true),
            Verdict::CompareContent => {
                let (Some(cur), Some(want)) = (current, h.crc32c) else {
                    return Ok(false);
                };
                let (got, _) = self.dst.checksum(&h.path, &cur, &mut self.buf)?;
                match decide::after_content(meta, &cur, got == want, self.rules) {
                    Verdict::Skip(_) => Ok(true),
                    Verdict::CompareContent => match self.dst.set_meta(&h.path, meta, self.dst.capabilities().xattrs.then_some(xattrs)) {
                        Ok(()) => Ok(true),
                        Err(e) if e.kind == ErrorKind::Unsupported => Ok(false),
                        Err(e) => Err(e),
                    },
                    _ => Ok(false),
                }
            }
        }
    }

    /// Removes open entry `id`: a protocol error, never a panic, when there is none.
    fn take(&mut self, id: u64) -> Result<Incoming<'a>, ProtocolError> {
        self.open.remove(&id).ok_or_else(|| perr(Code::OutOfOrder, format!("file id {id} has no open HEADER")))
    }

    /// A CHUNK, given its data by reference (an in-process wire keeps the buffer).
    #[allow(clippy::too_many_arguments)]
    pub fn chunk(&mut self, id: u64, offset: u64, crc32c: u32, compressed: bool, raw_len: u32, data: &[u8]) -> Result<Vec<Frame>, ProtocolError> {
        if self.ctx.fence().is_err() {
            return Err(perr(Code::LeaseLost, "this writer lost its cluster lease; it rejoins, or another writer takes over: reconnect"));
        }
        let hooks_corrupt = self.ctx.hooks.corrupts(self.open.get(&id).map_or(&[][..], |f| &f.header.path[..]));
        let Some(f) = self.open.get_mut(&id) else {
            return Err(perr(Code::OutOfOrder, format!("CHUNK for file id {id}, which has no open HEADER")));
        };
        if offset != f.offset {
            if f.resending {
                return Ok(Vec::new()); // sent before the reader saw RESEND_FROM
            }
            return Err(perr(Code::OutOfOrder, format!("CHUNK at {offset} for file id {id}, expected {}", f.offset)));
        }
        f.resending = false;
        if offset + raw_len as u64 > f.end() {
            return Err(perr(Code::Malformed, format!("CHUNK ends at {} past the end of its file or range, {}", offset + raw_len as u64, f.end())));
        }
        // Damaged compressed data may not even inflate: that is a bad chunk like any other.
        let inflated;
        let raw: Option<&[u8]> = if compressed {
            inflated = zstd::bulk::decompress(data, raw_len as usize).ok().filter(|r| r.len() == raw_len as usize);
            inflated.as_deref()
        } else {
            Some(data)
        };
        let good = raw.filter(|r| !self.check_chunks || crc32c::crc32c(r) == crc32c);
        let Some(raw) = good else {
            f.bad_chunks += 1;
            self.stats.chunks_rejected += 1;
            tracing::warn!(file = %paths::display(&f.header.path), offset, "chunk failed its CRC32C; asking for it again");
            if f.bad_chunks > MAX_BAD_CHUNKS {
                let f = self.take(id)?;
                if let Some(s) = f.sink {
                    s.abort();
                }
                return Ok(vec![reject(id, Code::CrcMismatch, format!("{} chunks of {} failed their CRC32C", f.bad_chunks, paths::display(&f.header.path)))]);
            }
            f.resending = true;
            return Ok(vec![ack(id, f.offset, status::RESEND_FROM)]);
        };
        let sink = f.sink.as_mut().ok_or_else(|| perr(Code::OutOfOrder, format!("CHUNK for entry id {id}, which holds no data")))?;
        let written = if hooks_corrupt && offset == 0 && !raw.is_empty() {
            // Test hook: what reaches the destination is not what was read (the CRC is the
            // source's), so the destination's checks must catch it.
            let mut bad = raw.to_vec();
            bad[0] ^= 0xff;
            sink.write_at(offset, &bad, crc32c)
        } else {
            sink.write_at(offset, raw, crc32c)
        };
        if let Err(e) = written {
            let f = self.take(id)?;
            if let Some(s) = f.sink {
                s.abort();
            }
            return Ok(vec![reject_for(id, &e)]);
        }
        let n = raw.len() as u64;
        // Combining costs more than a small file's whole copy: the first chunk is the CRC.
        f.crc = if f.offset == f.start() { crc32c } else { crc::combine(f.crc, crc32c, n) };
        f.offset += n;
        self.stats.bytes_written += n;
        Ok(Vec::new())
    }

    fn hole(&mut self, id: u64, offset: u64, len: u64) -> Result<Vec<Frame>, ProtocolError> {
        let Some(f) = self.open.get_mut(&id) else {
            return Err(perr(Code::OutOfOrder, format!("HOLE for file id {id}, which has no open HEADER")));
        };
        if f.resending {
            return Ok(Vec::new());
        }
        if offset != f.offset || offset.checked_add(len).is_none_or(|e| e > f.end()) || f.sink.is_none() {
            return Err(perr(Code::OutOfOrder, format!("HOLE [{offset}+{len}) for file id {id}, expected one at {} within {}", f.offset, f.end())));
        }
        f.crc = crc::combine(f.crc, crc::zeros(len), len);
        f.offset += len;
        Ok(Vec::new())
    }

    fn end(&mut self, id: u64, size: u64, crc32c: u32) -> Result<Vec<Frame>, ProtocolError> {
        let Some(f) = self.open.get_mut(&id) else {
            return Err(perr(Code::OutOfOrder, format!("END for file id {id}, which has no open HEADER")));
        };
        if f.resending {
            return Ok(Vec::new()); // the reader will resend the bad range and END again
        }
        if size != f.end() || f.offset != size {
            return Err(perr(Code::Malformed, format!("END at {size} for file id {id}, which has {} of {} bytes", f.offset, f.end())));
        }
        if f.header.kind == entry_kind::FILE && f.crc != crc32c {
            // The chunks each matched, so the bytes kept from an earlier attempt were
            // damaged: start the entry over.
            tracing::warn!(file = %paths::display(&f.header.path), "whole-file CRC32C mismatch; asking for the file again");
            f.bad_chunks += 1;
            let f = self.take(id)?;
            if let Some(s) = f.sink {
                s.abort();
            }
            if f.bad_chunks > MAX_BAD_CHUNKS {
                return Ok(vec![reject(id, Code::CrcMismatch, format!("{} failed its whole-file CRC32C", paths::display(&f.header.path)))]);
            }
            let mut again = Incoming { sink: None, offset: 0, crc: 0, resending: true, ..f };
            again.offset = again.start();
            match self.open_sink(&again) {
                Ok(s) => again.sink = Some(s),
                Err(e) => return Ok(vec![reject_for(id, &e)]),
            }
            let from = again.offset;
            self.open.insert(id, again);
            return Ok(vec![ack(id, from, status::RESEND_FROM)]);
        }
        let f = self.take(id)?;
        let end = f.end();
        let part = f.header.part.is_some();
        let staged = match f.sink {
            Some(sink) => sink.finish(crc32c),
            None => {
                let special = if f.header.kind == entry_kind::SYMLINK { Special::Symlink { target: f.header.target.clone() } } else { Special::Node };
                self.dst.make(&f.header.path, &special, &f.meta, &f.xattrs)
            }
        };
        match staged {
            Ok(s) => {
                self.staged.push((id, end, part, s));
                Ok(Vec::new())
            }
            Err(e) => Ok(vec![reject_for(id, &e)]),
        }
    }

    /// Commits the staged entries and answers each: DONE once it is durable, checked at rest
    /// and in place, or REJECT.
    fn flush(&mut self) -> Vec<Frame> {
        let staged = std::mem::take(&mut self.staged);
        let (ids, staged): (Vec<(u64, u64, bool)>, Vec<Staged>) = staged.into_iter().map(|(id, end, part, s)| ((id, end, part), s)).unzip();
        let sizes: Vec<u64> = staged.iter().map(|s| s.size).collect();
        // What each answer carries besides the result: bytes kept, part tags, whether a file.
        type Extras = (u64, Vec<(u32, String)>, bool);
        let extras: Vec<Extras> = staged.iter().map(|s| (s.resumed, s.part_tags.clone(), s.kind == EntryKind::File)).collect();
        let results = commit(self.dst, staged, self.ctx.commit_options(), &mut self.buf);
        let mut replies = Vec::with_capacity(ids.len());
        let (mut files, mut bytes) = (0u64, 0u64);
        for ((((id, end, part), (resumed, tags, file)), size), result) in ids.into_iter().zip(extras).zip(sizes).zip(results) {
            match result {
                Ok(note) => {
                    self.stats.files_written += u64::from(file);
                    // A part's range counts its bytes; its file counts once, at the commit.
                    files += u64::from(!part);
                    bytes += size;
                    replies.push(Frame::Done(Done { id, end, note, resumed, tags }));
                }
                Err(e) => replies.push(reject_for(id, &e)),
            }
        }
        if files > 0 {
            metrics::counter!(m::WORKER_FILES, "direction" => "write", "outcome" => "transferred").increment(files);
        }
        if bytes > 0 {
            metrics::counter!(m::WORKER_BYTES, "direction" => "write", "outcome" => "transferred").increment(bytes);
        }
        replies
    }

    /// Answers a reader's question about the destination.
    fn request(&mut self, r: Request) -> Response {
        let direct = dest::Direct(self.dst);
        let rels = |v: Vec<serde_bytes::ByteBuf>| -> Vec<Vec<u8>> { v.into_iter().map(|b| b.into_vec()).collect() };
        let answered = match r {
            Request::List { dir, resume, max } => direct.list(&dir, resume.as_deref(), (max as usize).clamp(1, crate::transport::frame::MAX_BATCH)).map(|p| {
                Response::Page { entries: p.entries.into_iter().map(|l| (serde_bytes::ByteBuf::from(l.name), l.meta, l.complete)).collect(), resume: p.resume }
            }),
            Request::Lookup { dir, names } => direct.lookup(&dir, &rels(names)).map(Response::Found),
            Request::Stat { rels: r } => Ok(Response::Metas(direct.stat_many(&rels(r)))),
            Request::Checksums { rels: r } => Ok(Response::Checksums(direct.checksums(&rels(r)))),
            Request::Remove { rels: r } => {
                if let Err(e) = self.ctx.fence() {
                    return Response::Failed(e);
                }
                Ok(Response::Removed(direct.remove(&rels(r))))
            }
            Request::EnsureDirs { rels: r } => {
                if let Err(e) = self.ctx.fence() {
                    return Response::Failed(e);
                }
                Ok(Response::Made(direct.ensure_dirs(&rels(r))))
            }
            Request::OpenUpload { rel, size, meta } => direct.open_upload(&rel, size, &meta).map(|(id, created)| Response::Upload { id, created }),
            Request::AbortUpload { rel, upload } => direct.abort_upload(&rel, &upload).map(|()| Response::Aborted),
            Request::UserIds { names } => direct.owner_ids(&names, &[]).map(|(ids, _)| Response::Ids(ids)),
            Request::GroupIds { names } => direct.owner_ids(&[], &names).map(|(_, ids)| Response::Ids(ids)),
        };
        answered.unwrap_or_else(Response::Failed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_id_bits_and_owner_travel_only_when_owners_are_kept() {
        // What an S3 object's metadata (or any reader) may claim.
        let h = FileHeader { path: b"prog".to_vec(), mode: libc::S_IFREG | 0o6755, owner: true, uid: 0, gid: 0, ..FileHeader::default() };
        let kept = meta_of(&h, true);
        assert_eq!((kept.mode, kept.uid, kept.gid), (Some(libc::S_IFREG | 0o6755), Some(0), Some(0)));
        let dropped = meta_of(&h, false);
        assert_eq!((dropped.mode, dropped.uid, dropped.gid), (Some(libc::S_IFREG | 0o755), None, None));
        // The type comes from the kind; a device number only with a device.
        let fifo = FileHeader { kind: entry_kind::FIFO, mode: 0o644, rdev: 7, ..h };
        assert_eq!((meta_of(&fifo, true).mode, meta_of(&fifo, true).rdev), (Some(libc::S_IFIFO | 0o644), 0));
    }
}
