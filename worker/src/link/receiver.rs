//! The writer's side of one link stream, as a plain state machine: frames in, frames out.
//! The QUIC driver ([`super::quic`]) and the in-process wire ([`super::wire::LocalWire`]) feed it
//! the same way, so every decision here is tested without a network.
//!
//! Write protocol, the same as the local path's:
//! - a file is written under a temporary name in its destination directory. The name is derived
//!   from the path, size and mtime, so a reader that reconnects finds its partial file again;
//! - each chunk is checked against its CRC32C before it is written. The whole-file CRC is
//!   combined from the chunk CRCs and compared with END's;
//! - metadata is applied after the content;
//! - on FLUSH: one `syncfs` makes the finished files durable, each is read back and checked
//!   against its CRC, renamed into place, and a second `syncfs` makes the renames durable.
//!   Only then is each file acknowledged.
//!
//! Paths are confined to the destination root: headers carry only safe relative paths
//! (checked by the decoder), and directories are opened one component at a time with
//! `O_NOFOLLOW`, so a symlink at the destination never leads a write out of the root.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::Arc;

use ferry_common::crc;
use ferry_common::model::{OverwriteMode, Timestamp, TransferMode, VerifyMode};
use ferry_common::paths;

use super::frame::{entry_kind, status, Code, FileHeader, Frame, ProtocolError, MAX_OPEN_FILES};
use crate::exec::transfer::{corrupt_first_byte, crc_range, owner_to_set, set_meta_at, set_meta_fd};
use crate::exec::ExecContext;
use crate::storage::local::{remove_tree_at, sys};

/// A file checkpoint: a file this large gets its written prefix flushed and acknowledged
/// every this many bytes, so a reader knows how much a dead connection leaves done.
const CHECKPOINT_BYTES: u64 = 256 << 20;
/// Bad chunks tolerated per file before the writer gives up on it.
const MAX_BAD_CHUNKS: u32 = 8;

/// One announced entry whose data is still arriving.
struct Incoming {
    header: FileHeader,
    dir: OwnedFd,
    temp: Vec<u8>,
    /// The open temporary file (regular files only).
    fd: Option<OwnedFd>,
    /// The next byte expected; everything before it is written and CRC-checked.
    offset: u64,
    /// CRC32C of `[0, offset)`.
    crc: u32,
    /// A bad chunk was answered with RESEND_FROM: drop chunks until one starts at `offset`.
    resending: bool,
    bad_chunks: u32,
    since_checkpoint: u64,
    /// For a stripe: its key in [`STRIPE_WRITTEN`].
    stripe_key: Option<Vec<u8>>,
}

/// A finished entry under its temporary name, waiting for FLUSH.
struct Staged {
    header: FileHeader,
    dir: OwnedFd,
    temp: Vec<u8>,
    crc: u32,
    /// The offset its ACK OK carries: the file's size, or the end of its stripe.
    ack_offset: u64,
    /// False for a stripe whose file other stripes still complete: FLUSH only makes it
    /// durable. The stripe that completes the file renames it.
    rename: bool,
}

/// Stripes of files being received, by execution, path and source identity: the CRC and
/// length of each finished stripe. The last stripe to finish completes the file.
static STRIPES: std::sync::Mutex<BTreeMap<Vec<u8>, Vec<Option<(u32, u64)>>>> = std::sync::Mutex::new(BTreeMap::new());

/// How far each unfinished stripe has been written into its shared temporary file, by
/// directory, temporary name and stripe index. A stripe cannot resume from the file's length
/// as a whole file does (its siblings write further on, and holes read as zeros), so a stream
/// that reconnects after a cut resumes its stripe from here. The bytes are reread for their
/// CRC before the resume, and the stripe's CRC at END covers them. Kept in memory: after a
/// writer restart, stripes start again from their range's start. An entry lives until its
/// stripe ends, so there is at most one per stripe in flight or abandoned mid-way.
static STRIPE_WRITTEN: std::sync::Mutex<BTreeMap<Vec<u8>, u64>> = std::sync::Mutex::new(BTreeMap::new());

fn stripe_written(key: &[u8]) -> Option<u64> {
    STRIPE_WRITTEN.lock().unwrap_or_else(|p| p.into_inner()).get(key).copied()
}

fn set_stripe_written(key: &[u8], offset: Option<u64>) {
    let mut all = STRIPE_WRITTEN.lock().unwrap_or_else(|p| p.into_inner());
    // Called for every chunk of a stripe: the key is copied only when it is first recorded.
    match (offset, all.get_mut(key)) {
        (Some(o), Some(written)) => *written = o,
        (Some(o), None) => {
            all.insert(key.to_vec(), o);
        }
        (None, _) => {
            all.remove(key);
        }
    }
}

impl Incoming {
    /// Identifies the directory (device and inode) for the stripe registry's key.
    fn dir_key(&self) -> Vec<u8> {
        let st = sys::fstat(self.dir.as_raw_fd()).ok();
        let (dev, ino) = st.map_or((0, 0), |st| (st.st_dev, st.st_ino));
        format!("{dev}:{ino}/").into_bytes()
    }

    /// Where this stream's bytes of the file end.
    fn end(&self) -> u64 {
        self.header.stripe.map_or(self.header.size, |s| s.start + s.len)
    }
    fn start(&self) -> u64 {
        self.header.stripe.map_or(0, |s| s.start)
    }
}

/// What the writer did, for its logs and metrics.
#[derive(Debug, Default, Clone)]
pub struct ReceiverStats {
    pub files_written: u64,
    pub bytes_written: u64,
    pub bytes_resumed: u64,
    pub chunks_rejected: u64,
    pub entries_current: u64,
}

pub struct Receiver {
    ctx: Arc<ExecContext>,
    open: HashMap<u64, Incoming>,
    staged: Vec<Staged>,
    buf: Vec<u8>,
    /// Files this stream is writing: id → key in [`WRITING`].
    held: HashMap<u64, Vec<u8>>,
    pub stats: ReceiverStats,
}

/// Files being written by any stream of this process (execution id, NUL, path). A reader that
/// reconnects while its old stream is still draining here must not write the same temporary
/// file from two streams: the second waits until the first lets go (see [`RELEASE_WAIT`]).
static WRITING: std::sync::Mutex<BTreeSet<Vec<u8>>> = std::sync::Mutex::new(BTreeSet::new());

/// How long a HEADER waits for another stream of this agent to let go of the same file before
/// it is refused. After a link cut the old stream holds its files until this side notices the
/// connection is gone (the 8 s idle timeout) and drops it, while the reader has already
/// reconnected; refusing at once made the reader spend its attempts within those seconds
/// (found by `ferry-load chaos`).
const RELEASE_WAIT: std::time::Duration = std::time::Duration::from_secs(20);

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

fn writing() -> std::sync::MutexGuard<'static, BTreeSet<Vec<u8>>> {
    WRITING.lock().unwrap_or_else(|p| p.into_inner())
}

impl Drop for Receiver {
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

fn ack(id: u64, offset: u64, status: u8) -> Frame {
    Frame::Ack { id, offset, status }
}

fn perr(code: Code, detail: impl Into<String>) -> ProtocolError {
    ProtocolError { code, detail: detail.into() }
}

fn mtime(h: &FileHeader) -> Timestamp {
    Timestamp { sec: h.mtime_sec, nsec: h.mtime_nsec }
}

fn atime(h: &FileHeader) -> Timestamp {
    Timestamp { sec: h.atime_sec, nsec: h.atime_nsec }
}

fn mode_kind(h: &FileHeader) -> u32 {
    match h.kind {
        entry_kind::SYMLINK => libc::S_IFLNK,
        entry_kind::FIFO => libc::S_IFIFO,
        entry_kind::SOCKET => libc::S_IFSOCK,
        entry_kind::CHAR_DEVICE => libc::S_IFCHR,
        entry_kind::BLOCK_DEVICE => libc::S_IFBLK,
        _ => libc::S_IFREG,
    }
}

impl Receiver {
    /// `ctx` must have the destination open (this agent can reach it).
    pub fn new(ctx: Arc<ExecContext>) -> Self {
        let chunk = ctx.options().limits.chunk_size as usize;
        Receiver { ctx, open: HashMap::new(), staged: Vec::new(), buf: vec![0; chunk.max(64 << 10)], held: HashMap::new(), stats: ReceiverStats::default() }
    }

    /// Lets go of the files whose answer in `replies` is final (in place, current, refused).
    fn release_settled(&mut self, replies: &[Frame]) {
        for r in replies {
            let id = match r {
                Frame::Reject { id, .. } | Frame::Ack { id, .. } => *id,
                _ => continue,
            };
            if self.open.contains_key(&id) || self.staged.iter().any(|s| s.header.id == id) {
                continue; // still ours: a checkpoint, or a refusal of a duplicate id
            }
            if let Some(key) = self.held.remove(&id) {
                writing().remove(&key);
            }
        }
    }

    /// Handles one frame from the reader. `Err` ends the stream with that code.
    pub fn handle(&mut self, frame: Frame) -> Result<Vec<Frame>, ProtocolError> {
        if self.ctx.fence().is_err() {
            return Err(perr(Code::Io, "this writer lost its cluster lease; reconnect to another writer"));
        }
        let replies = match frame {
            Frame::Header(h) => vec![self.header(h)],
            Frame::Chunk { id, offset, crc32c, compressed, raw_len, data } => self.chunk(id, offset, crc32c, compressed, raw_len, data)?,
            Frame::End { id, size, crc32c } => self.end(id, size, crc32c)?,
            Frame::Flush => self.flush(),
            Frame::Hello(_) => return Err(perr(Code::OutOfOrder, "HELLO after the stream started")),
            Frame::Ack { .. } | Frame::Reject { .. } => return Err(perr(Code::OutOfOrder, "ACK and REJECT travel from writer to reader")),
            Frame::Error { code, message } => return Err(perr(Code::from_u16(code).unwrap_or(Code::Malformed), format!("reader ended the stream: {message}"))),
        };
        self.release_settled(&replies);
        Ok(replies)
    }

    fn header(&mut self, h: FileHeader) -> Frame {
        let id = h.id;
        if self.open.contains_key(&id) || self.staged.iter().any(|s| s.header.id == id) {
            return reject(id, Code::Malformed, format!("file id {id} is already in use on this stream"));
        }
        if self.open.len() + self.staged.len() >= MAX_OPEN_FILES {
            return reject(id, Code::Limit, format!("more than {MAX_OPEN_FILES} files open on one stream; send FLUSH and wait for acknowledgements"));
        }
        let mut key = self.ctx.spec.id.as_bytes().to_vec();
        key.push(0);
        key.extend_from_slice(&h.path);
        if let Some(st) = &h.stripe {
            key.extend_from_slice(format!("\0stripe{}", st.index).as_bytes());
        }
        if !claim_writing(&key, RELEASE_WAIT) {
            return reject(id, Code::Limit, format!("{} is still being written by another stream of this agent after {} s (a reconnect while the old stream drains); try again", paths::display(&h.path), RELEASE_WAIT.as_secs()));
        }
        self.held.insert(id, key);
        let ctx = self.ctx.clone();
        let dst = match ctx.dst() {
            Ok(d) => d,
            Err(e) => return reject(id, Code::Io, e.to_string()),
        };
        let (parent, name) = paths::split(&h.path);
        let dir = match dst.ensure_dir(parent) {
            Ok(fd) => fd,
            Err(e) => return reject(id, Code::Io, dst.error("create directory", parent, &e).to_string()),
        };
        match self.unchanged(dir.as_raw_fd(), name, &h) {
            Ok(true) => {
                self.stats.entries_current += 1;
                return ack(id, h.size, status::CURRENT);
            }
            Ok(false) => {}
            Err(e) => return reject(id, Code::Io, dst.error("stat", &h.path, &e).to_string()),
        }
        // The identity of the source version is part of the name: a partial file of another
        // version is never resumed.
        let identity = format!("link{:08x}", crc32c::crc32c(format!("{}:{}.{}:{}", h.size, h.mtime_sec, h.mtime_nsec, h.mode).as_bytes()));
        let temp = self.ctx.temp_with(&identity, name);
        let mut incoming = Incoming { header: h, dir, temp, fd: None, offset: 0, crc: 0, resending: false, bad_chunks: 0, since_checkpoint: 0, stripe_key: None };
        if let Some(st) = incoming.header.stripe {
            let mut key = incoming.dir_key();
            key.extend_from_slice(&incoming.temp);
            key.extend_from_slice(format!("\0{}", st.index).as_bytes());
            incoming.stripe_key = Some(key);
            if let Err(e) = self.open_shared_temp(&mut incoming) {
                return reject(id, Code::Io, dst.error("create", &incoming.header.path, &e).to_string());
            }
        } else if incoming.header.kind == entry_kind::FILE {
            if let Err(e) = self.open_temp(&mut incoming) {
                let _ = sys::unlink_at(incoming.dir.as_raw_fd(), &incoming.temp, false);
                return reject(id, Code::Io, dst.error("create", &incoming.header.path, &e).to_string());
            }
        }
        let resume_at = incoming.offset;
        self.stats.bytes_resumed += resume_at - incoming.start();
        self.open.insert(id, incoming);
        ack(id, resume_at, status::RESUME_AT)
    }

    /// Opens the temporary file, keeping a prefix left by an earlier connection. The prefix is
    /// reread for its CRC; if it was damaged, the whole-file CRC at END catches it and the
    /// file is sent again from the start.
    fn open_temp(&mut self, f: &mut Incoming) -> std::io::Result<()> {
        let dir = f.dir.as_raw_fd();
        if let Some(st) = sys::lstat_at(dir, &f.temp)? {
            let len = st.st_size as u64;
            if st.st_mode & libc::S_IFMT == libc::S_IFREG && len <= f.header.size {
                let fd = sys::open_at(dir, &f.temp, libc::O_RDWR | libc::O_NOFOLLOW, 0)?;
                f.crc = crc_range(fd.as_raw_fd(), 0, len, &mut self.buf)?;
                f.offset = len;
                f.fd = Some(fd);
                return Ok(());
            }
            remove_tree_at(dir, &f.temp)?;
        }
        f.fd = Some(sys::open_at(dir, &f.temp, libc::O_RDWR | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW, 0o600)?);
        Ok(())
    }

    /// A stripe writes its range into the temporary file its sibling stripes share. It
    /// resumes where an earlier stream of this agent left it ([`STRIPE_WRITTEN`]), and
    /// otherwise starts at its range's beginning.
    fn open_shared_temp(&mut self, f: &mut Incoming) -> std::io::Result<()> {
        let dir = f.dir.as_raw_fd();
        let existing = sys::lstat_at(dir, &f.temp)?;
        if existing.is_some_and(|st| st.st_mode & libc::S_IFMT != libc::S_IFREG) {
            remove_tree_at(dir, &f.temp)?;
        }
        let fd = sys::open_at(dir, &f.temp, libc::O_RDWR | libc::O_CREAT | libc::O_NOFOLLOW, 0o600)?;
        f.offset = f.start();
        f.crc = 0;
        let key = f.stripe_key.as_deref().unwrap_or_default();
        let written = stripe_written(key).filter(|&w| existing.is_some_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFREG && st.st_size as u64 >= w) && w > f.start() && w <= f.end());
        if let Some(w) = written {
            f.crc = crc_range(fd.as_raw_fd(), f.start(), w - f.start(), &mut self.buf)?;
            f.offset = w;
        } else {
            set_stripe_written(key, None);
        }
        f.fd = Some(fd);
        Ok(())
    }

    /// The destination already holds this entry, per TransferMode and OverwriteMode (the same
    /// rules as the local scan's).
    fn unchanged(&mut self, dir: RawFd, name: &[u8], h: &FileHeader) -> std::io::Result<bool> {
        let opts = self.ctx.options();
        let Some(d) = sys::lstat_at(dir, name)? else { return Ok(false) };
        if opts.overwrite == OverwriteMode::Never {
            return Ok(true);
        }
        if opts.transfer_mode == TransferMode::All || d.st_mode & libc::S_IFMT != mode_kind(h) {
            return Ok(false);
        }
        let same_mtime = sys::mtime(&d) == mtime(h);
        let same = match h.kind {
            entry_kind::FILE => {
                if d.st_size as u64 != h.size {
                    false
                } else if let Some(want) = h.crc32c {
                    let fd = sys::open_read_noatime(dir, name)?;
                    crc_range(fd.as_raw_fd(), 0, h.size, &mut self.buf)? == want
                } else {
                    same_mtime
                }
            }
            entry_kind::SYMLINK => sys::readlink_at(dir, name)? == h.target && same_mtime,
            entry_kind::CHAR_DEVICE | entry_kind::BLOCK_DEVICE => d.st_rdev == h.rdev && same_mtime,
            _ => same_mtime,
        };
        let owner = self.ctx.is_root && opts.preserve_owner;
        Ok(same && d.st_mode == h.mode && (!owner || (d.st_uid == h.uid && d.st_gid == h.gid)))
    }

    #[allow(clippy::too_many_arguments)]
    fn chunk(&mut self, id: u64, offset: u64, crc32c: u32, compressed: bool, raw_len: u32, data: Vec<u8>) -> Result<Vec<Frame>, ProtocolError> {
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
            return Err(perr(Code::Malformed, format!("CHUNK ends at {} past the end of its file or stripe, {}", offset + raw_len as u64, f.end())));
        }
        // Damaged compressed data may not even inflate: that is a bad chunk like any other.
        let raw = if compressed {
            match zstd::bulk::decompress(&data, raw_len as usize) {
                Ok(r) if r.len() == raw_len as usize => Some(r),
                _ => None,
            }
        } else {
            Some(data)
        };
        let got = raw.as_deref().map(crc32c::crc32c);
        if got != Some(crc32c) {
            f.bad_chunks += 1;
            self.stats.chunks_rejected += 1;
            tracing::warn!(file = %paths::display(&f.header.path), offset, "chunk failed its CRC32C; asking for it again");
            if f.bad_chunks > MAX_BAD_CHUNKS {
                let f = self.open.remove(&id).expect("present");
                return Ok(vec![reject(id, Code::CrcMismatch, format!("{} chunks of {} failed their CRC32C", f.bad_chunks, paths::display(&f.header.path)))]);
            }
            f.resending = true;
            return Ok(vec![ack(id, f.offset, status::RESEND_FROM)]);
        }
        let (raw, got) = (raw.expect("checked above"), crc32c);
        let fd = f.fd.as_ref().expect("files have an open temp").as_raw_fd();
        if let Err(e) = sys::pwrite_all(fd, &raw, offset) {
            let path = f.header.path.clone();
            let f = self.open.remove(&id).expect("present");
            let _ = sys::unlink_at(f.dir.as_raw_fd(), &f.temp, false);
            let msg = self.ctx.dst().map(|d| d.error("write", &path, &e).to_string()).unwrap_or_else(|e| e.to_string());
            return Ok(vec![reject(id, Code::Io, msg)]);
        }
        let n = raw.len() as u64;
        f.crc = crc::combine(f.crc, got, n);
        f.offset += n;
        if let Some(key) = &f.stripe_key {
            set_stripe_written(key, Some(f.offset));
        }
        f.since_checkpoint += n;
        self.stats.bytes_written += n;
        if f.since_checkpoint >= CHECKPOINT_BYTES && f.offset < f.end() {
            f.since_checkpoint = 0;
            if sys::fdatasync(fd).is_ok() {
                return Ok(vec![ack(id, f.offset, status::OK)]);
            }
        }
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
            // The chunks each matched, so the prefix kept from an earlier connection was
            // damaged: start the file over.
            tracing::warn!(file = %paths::display(&f.header.path), "whole-file CRC32C mismatch; asking for the file again");
            f.bad_chunks += 1;
            if f.bad_chunks > MAX_BAD_CHUNKS {
                let f = self.open.remove(&id).expect("present");
                return Ok(vec![reject(id, Code::CrcMismatch, format!("{} failed its whole-file CRC32C", paths::display(&f.header.path)))]);
            }
            if let (Some(fd), None) = (&f.fd, f.header.stripe) {
                let _ = sys::ftruncate(fd.as_raw_fd(), 0);
            }
            f.offset = f.start();
            f.crc = 0;
            f.resending = true;
            if let Some(key) = &f.stripe_key {
                set_stripe_written(key, None);
            }
            return Ok(vec![ack(id, f.offset, status::RESEND_FROM)]);
        }
        let f = self.open.remove(&id).expect("present");
        let mut whole_crc = crc32c;
        if let Some(key) = &f.stripe_key {
            set_stripe_written(key, None);
        }
        if let Some(st) = f.header.stripe {
            // Record this stripe; unless it completes the file, FLUSH only makes it durable.
            let mut key = f.dir_key();
            key.extend_from_slice(&f.temp);
            let mut all = STRIPES.lock().unwrap_or_else(|p| p.into_inner());
            let set = all.entry(key.clone()).or_insert_with(|| vec![None; st.count as usize]);
            if set.len() != st.count as usize {
                *set = vec![None; st.count as usize];
            }
            set[st.index as usize] = Some((crc32c, st.len));
            if set.iter().any(Option::is_none) {
                self.staged.push(Staged { ack_offset: f.end(), header: f.header, dir: f.dir, temp: f.temp, crc: crc32c, rename: false });
                return Ok(Vec::new());
            }
            whole_crc = set.iter().flatten().fold(0u32, |acc, &(c, len)| crc::combine(acc, c, len));
            all.remove(&key);
        }
        match self.finish_entry(&f) {
            Ok(()) => {
                self.staged.push(Staged { ack_offset: f.end(), header: f.header, dir: f.dir, temp: f.temp, crc: whole_crc, rename: true });
                Ok(Vec::new())
            }
            Err(e) => {
                let _ = sys::unlink_at(f.dir.as_raw_fd(), &f.temp, false);
                let msg = self.ctx.dst().map(|d| d.error("finish", &f.header.path, &e).to_string()).unwrap_or_else(|e| e.to_string());
                Ok(vec![reject(id, Code::Io, msg)])
            }
        }
    }

    /// Creates non-file entries under their temporary name and applies metadata after the
    /// content, as the local path does ([`set_meta_fd`], [`set_meta_at`]).
    fn finish_entry(&self, f: &Incoming) -> std::io::Result<()> {
        let h = &f.header;
        let dir = f.dir.as_raw_fd();
        let owner = owner_to_set(&self.ctx, h.uid, h.gid);
        let xattrs = h.xattrs.iter().map(|(k, v)| (k.as_slice(), v.as_slice()));
        if let Some(fd) = &f.fd {
            let fd = fd.as_raw_fd();
            sys::ftruncate(fd, h.size)?;
            if self.ctx.hooks.corrupt.as_deref() == Some(h.path.as_slice()) && h.size > 0 {
                corrupt_first_byte(fd);
            }
            return set_meta_fd(fd, xattrs, owner, h.mode, atime(h), mtime(h));
        }
        let _ = remove_tree_at(dir, &f.temp);
        match h.kind {
            entry_kind::SYMLINK => sys::symlink_at(&h.target, dir, &f.temp)?,
            _ => sys::mknod_at(dir, &f.temp, h.mode, h.rdev)?,
        }
        set_meta_at(dir, &f.temp, h.kind == entry_kind::SYMLINK, xattrs, owner, h.mode, atime(h), mtime(h))
    }

    /// Makes the staged entries durable, checks them at rest, renames them into place, makes
    /// the renames durable, and only then acknowledges them.
    fn flush(&mut self) -> Vec<Frame> {
        let staged = std::mem::take(&mut self.staged);
        if staged.is_empty() {
            return Vec::new();
        }
        let mut replies = Vec::with_capacity(staged.len());
        let Ok(dst) = self.ctx.dst() else { return replies };
        let fsync = self.ctx.options().fsync;
        if fsync {
            if let Err(e) = sys::syncfs(dst.root_fd()) {
                let msg = dst.error("flush", b"", &e).to_string();
                for s in &staged {
                    let _ = sys::unlink_at(s.dir.as_raw_fd(), &s.temp, false);
                    replies.push(reject(s.header.id, Code::Io, msg.clone()));
                }
                return replies;
            }
        }
        let verify = self.ctx.options().verify != VerifyMode::None;
        let mut done = Vec::with_capacity(staged.len());
        for s in staged {
            let h = &s.header;
            let dir = s.dir.as_raw_fd();
            let (_, name) = paths::split(&h.path);
            if !s.rename {
                done.push(ack(h.id, s.ack_offset, status::OK));
                continue;
            }
            if verify && h.kind == entry_kind::FILE {
                let read_back = sys::open_read_noatime(dir, &s.temp).and_then(|fd| crc_range(fd.as_raw_fd(), 0, h.size, &mut self.buf));
                match read_back {
                    Ok(got) if got == s.crc => {}
                    Ok(got) => {
                        let _ = sys::unlink_at(dir, &s.temp, false);
                        replies.push(reject(h.id, Code::CrcMismatch, format!("CRC32C mismatch after writing {}: source {:08x}, destination {got:08x}", dst.display_path(&h.path).display(), s.crc)));
                        continue;
                    }
                    Err(e) => {
                        replies.push(reject(h.id, Code::Io, dst.error("read back", &h.path, &e).to_string()));
                        continue;
                    }
                }
            }
            let renamed = match sys::rename_at(dir, &s.temp, dir, name) {
                Err(e) if matches!(e.raw_os_error(), Some(libc::EISDIR) | Some(libc::ENOTEMPTY) | Some(libc::EEXIST)) => {
                    remove_tree_at(dir, name).and_then(|_| sys::rename_at(dir, &s.temp, dir, name))
                }
                other => other,
            };
            match renamed {
                Ok(()) => {
                    self.stats.files_written += 1;
                    done.push(ack(h.id, s.ack_offset, if h.stripe.is_some() { status::COMPLETE } else { status::OK }));
                }
                Err(e) => replies.push(reject(h.id, Code::Io, dst.error("rename into place", &h.path, &e).to_string())),
            }
        }
        if fsync && !done.is_empty() {
            if let Err(e) = sys::syncfs(dst.root_fd()) {
                let msg = dst.error("flush renames", b"", &e).to_string();
                for d in done.drain(..) {
                    if let Frame::Ack { id, .. } = d {
                        replies.push(reject(id, Code::Io, msg.clone()));
                    }
                }
            }
        }
        replies.extend(done);
        replies
    }
}
