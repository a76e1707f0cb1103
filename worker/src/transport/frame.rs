//! The reader-to-writer wire format: frames on a stream, between agents over QUIC or inside
//! one process. docs/protocol.md is the specification; this file is its only encoder and
//! decoder, and the two must agree.
//!
//! A stream starts with a preamble (`FRYL`, version, flags) from each side. Then frames:
//!
//! ```text
//! +--------+-----------------+------------------+
//! | type u8| length u32 (BE) | payload (length) |
//! +--------+-----------------+------------------+
//! ```
//!
//! The decoder checks the type and the length against that type's limit before it waits for
//! the payload, so a hostile length never makes a receiver buffer more than the limit. It never
//! panics: every malformed input is a [`ProtocolError`] with a wire error code.

use serde::{Deserialize, Serialize};

use ferry_common::paths;

pub const MAGIC: &[u8; 4] = b"FRYL";
pub const VERSION: u16 = 2;
pub const PREAMBLE_LEN: usize = 8;
/// type (1) + length (4).
pub const FRAME_HEADER_LEN: usize = 5;

/// Largest chunk of file data in one frame (raw, before compression).
pub const MAX_CHUNK: usize = 4 << 20;
/// Largest encoded file header.
pub const MAX_HEADER: usize = 64 << 10;
/// Longest relative path a header may carry.
pub const MAX_PATH: usize = 4096;
/// Longest error message.
pub const MAX_MESSAGE: usize = 1024;
/// Largest encoded HELLO.
pub const MAX_HELLO: usize = 1024;
/// Largest encoded REQUEST.
pub const MAX_REQUEST: usize = 1 << 20;
/// Largest encoded RESPONSE, and DONE.
pub const MAX_RESPONSE: usize = 8 << 20;
/// Most files a reader may have announced and not yet seen acknowledged on one stream.
pub const MAX_OPEN_FILES: usize = 4096;

const CHUNK_FIXED: usize = 8 + 4 + 1 + 4;

/// Frame type bytes.
pub mod kind {
    pub const HEADER: u8 = 0x01;
    pub const CHUNK: u8 = 0x02;
    pub const END: u8 = 0x03;
    pub const ACK: u8 = 0x04;
    pub const ERROR: u8 = 0x05;
    pub const HELLO: u8 = 0x06;
    pub const FLUSH: u8 = 0x07;
    pub const REJECT: u8 = 0x08;
    pub const HOLE: u8 = 0x09;
    pub const DONE: u8 = 0x0a;
    pub const REQUEST: u8 = 0x0b;
    pub const RESPONSE: u8 = 0x0c;
}

/// Error codes carried by ERROR frames, and what a receiver reports for bad input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u16)]
pub enum Code {
    BadVersion = 1,
    Malformed = 2,
    TooLarge = 3,
    UnsafePath = 4,
    CrcMismatch = 5,
    Io = 6,
    UnknownType = 7,
    OutOfOrder = 8,
    Limit = 9,
    UnknownExecution = 10,
    LeaseLost = 11,
    /// The peer's certificate does not allow it this stream: not an agent the execution
    /// reads its source through, or revoked.
    Forbidden = 12,
    /// The destination is full (or over quota): the entry fails with NO_SPACE.
    NoSpace = 13,
    /// The destination refused the write (permissions, a read-only file system).
    Denied = 14,
    /// What the write needed is gone at the destination (a parent removed meanwhile).
    NotFound = 15,
}

impl Code {
    pub fn from_u16(v: u16) -> Option<Code> {
        Some(match v {
            1 => Code::BadVersion,
            2 => Code::Malformed,
            3 => Code::TooLarge,
            4 => Code::UnsafePath,
            5 => Code::CrcMismatch,
            6 => Code::Io,
            7 => Code::UnknownType,
            8 => Code::OutOfOrder,
            9 => Code::Limit,
            10 => Code::UnknownExecution,
            11 => Code::LeaseLost,
            12 => Code::Forbidden,
            13 => Code::NoSpace,
            14 => Code::Denied,
            15 => Code::NotFound,
            _ => return None,
        })
    }

    /// The writer is joining the execution, or rejoining the cluster after its lease
    /// expired: a reader waits and reconnects as for a link that is down, without spending
    /// an attempt.
    pub fn is_transient(self) -> bool {
        matches!(self, Code::UnknownExecution | Code::LeaseLost)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{code:?}: {detail}")]
pub struct ProtocolError {
    pub code: Code,
    pub detail: String,
}

fn err(code: Code, detail: impl Into<String>) -> ProtocolError {
    ProtocolError { code, detail: detail.into() }
}

/// The first frame on a stream: which execution the files belong to. The writer takes the
/// destination root and the options from that execution's record in the Store, never from
/// the reader.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub exec: String,
    /// The reader agent's name, for logs.
    pub agent: String,
    /// The W3C `traceparent` of the reader's span, so the writer's span of this stream joins
    /// the execution's trace. Absent when traces are off (and from earlier releases).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace: Option<String>,
}

/// Entry kinds a HEADER can carry.
pub mod entry_kind {
    pub const FILE: u8 = 0;
    pub const SYMLINK: u8 = 1;
    pub const FIFO: u8 = 2;
    pub const SOCKET: u8 = 3;
    pub const CHAR_DEVICE: u8 = 4;
    pub const BLOCK_DEVICE: u8 = 5;
}

/// What the reader tells the writer about a file before its bytes (msgpack map).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileHeader {
    /// Names the file on this stream in CHUNK, END and ACK frames.
    pub id: u64,
    /// Relative to the destination root; checked with [`paths::is_safe_relative`].
    #[serde(with = "serde_bytes")]
    pub path: Vec<u8>,
    pub size: u64,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime_sec: i64,
    pub mtime_nsec: u32,
    pub atime_sec: i64,
    pub atime_nsec: u32,
    /// [`entry_kind`]; only files have data.
    #[serde(default)]
    pub kind: u8,
    /// A symlink's target (opaque bytes: the writer never follows it).
    #[serde(default, with = "serde_bytes")]
    pub target: Vec<u8>,
    /// Device number of a device node.
    #[serde(default)]
    pub rdev: u64,
    /// The source file's CRC32C, sent when the execution compares by checksum so the writer
    /// can tell an unchanged destination file without receiving it.
    #[serde(default)]
    pub crc32c: Option<u32>,
    /// Set when this entry is a range of a large file written in parts: the bytes
    /// `[offset, offset + len)` of multipart write `upload`.
    #[serde(default)]
    pub part: Option<PartTarget>,
    /// The reader decided the entry must be written (it compared with the destination
    /// already): the writer skips its own comparison.
    #[serde(default)]
    pub decided: bool,
    /// Owner and group are to be kept (`uid` and `gid` are the source's).
    #[serde(default)]
    pub owner: bool,
    /// Object tags to write with the entry (ObjectTags PRESERVE).
    #[serde(default)]
    pub tags: Option<String>,
    /// Extended attributes (name, value), applied before owner, mode and times. Their total
    /// size is at most [`MAX_XATTR_BYTES`].
    #[serde(default)]
    pub xattrs: Vec<(serde_bytes::ByteBuf, serde_bytes::ByteBuf)>,
}

/// Most bytes of extended attributes (names and values) one HEADER carries.
pub const MAX_XATTR_BYTES: usize = 48 << 10;

/// A range of a large file, written into a multipart write that other streams (from other
/// readers, too) write the other ranges of.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartTarget {
    pub upload: String,
    pub offset: u64,
    pub len: u64,
}

/// Longest multipart write id.
pub const MAX_UPLOAD_ID: usize = 1024;

/// ACK status values.
pub mod status {
    /// The answer to a HEADER: resume sending at `offset` (the entry's or range's start:
    /// from the beginning).
    pub const RESUME_AT: u8 = 1;
    /// A chunk failed its CRC: resend from `offset`.
    pub const RESEND_FROM: u8 = 2;
    /// The answer to a HEADER: the destination already holds this entry unchanged; send
    /// nothing more for it.
    pub const CURRENT: u8 = 3;
}

/// The writer's final answer for an entry (msgpack map): durable, checked at rest, and in
/// place (a range: stored in its multipart write).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Done {
    pub id: u64,
    /// The end offset of what was written: the file's size, or the range's end.
    pub end: u64,
    /// How it was verified, when that was weaker than a CRC32C at rest.
    #[serde(default)]
    pub note: Option<String>,
    /// Bytes an interrupted attempt had stored already and that were kept.
    #[serde(default)]
    pub resumed: u64,
    /// (part number, MD5 hex) of object parts stored for a range.
    #[serde(default)]
    pub tags: Vec<(u32, String)>,
}

/// Questions a reader asks of the destination through a writer agent, one RESPONSE each
/// (msgpack). Every path is checked to be a safe relative path before it is used.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// One page of directory `dir`.
    List {
        #[serde(with = "serde_bytes")]
        dir: Vec<u8>,
        #[serde(default, with = "serde_bytes")]
        resume: Option<Vec<u8>>,
        max: u32,
    },
    /// Metadata of names in a directory (see `engine::dest::Dest::lookup`).
    Lookup {
        #[serde(with = "serde_bytes")]
        dir: Vec<u8>,
        names: Vec<serde_bytes::ByteBuf>,
    },
    Stat {
        rels: Vec<serde_bytes::ByteBuf>,
    },
    /// Content CRC32C of files, as stored or read at the destination.
    Checksums {
        rels: Vec<serde_bytes::ByteBuf>,
    },
    Remove {
        rels: Vec<serde_bytes::ByteBuf>,
    },
    /// Make sure directories exist (owner-only until their metadata is set).
    EnsureDirs {
        rels: Vec<serde_bytes::ByteBuf>,
    },
    /// Find the unfinished multipart write of a file, or start one.
    OpenUpload {
        #[serde(with = "serde_bytes")]
        rel: Vec<u8>,
        size: u64,
        meta: crate::location::Meta,
    },
    AbortUpload {
        #[serde(with = "serde_bytes")]
        rel: Vec<u8>,
        upload: String,
    },
    /// The destination host's uids of these user names (owners carried by name).
    UserIds {
        names: Vec<String>,
    },
    /// The destination host's gids of these group names.
    GroupIds {
        names: Vec<String>,
    },
}

/// Longest user or group name a request carries (Linux allows 32; NSS backends more).
pub const MAX_OWNER_NAME: usize = 256;

/// Most names, paths or results one REQUEST or RESPONSE carries.
pub const MAX_BATCH: usize = 1024;

/// An error as it crosses the wire.
pub type WireResult<T> = Result<T, ferry_common::error::FerryError>;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    Page {
        entries: Vec<(serde_bytes::ByteBuf, crate::location::Meta, bool)>,
        #[serde(default, with = "serde_bytes")]
        resume: Option<Vec<u8>>,
    },
    Found(Vec<Option<(crate::location::Meta, bool)>>),
    Metas(Vec<WireResult<Option<crate::location::Meta>>>),
    Checksums(Vec<WireResult<u32>>),
    Removed(Vec<WireResult<u64>>),
    Made(Vec<WireResult<()>>),
    Upload {
        id: String,
        created: bool,
    },
    Aborted,
    /// Ids of the names asked for, in order (`None`: unknown there).
    Ids(Vec<Option<u32>>),
    /// The request failed as a whole.
    Failed(ferry_common::error::FerryError),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    Header(FileHeader),
    /// `crc32c` covers the raw bytes; `compressed` data is zstd and inflates to `raw_len`.
    Chunk {
        id: u64,
        offset: u64,
        crc32c: u32,
        compressed: bool,
        raw_len: u32,
        data: Vec<u8>,
    },
    End {
        id: u64,
        size: u64,
        crc32c: u32,
    },
    Ack {
        id: u64,
        offset: u64,
        status: u8,
    },
    Error {
        code: u16,
        message: String,
    },
    Hello(Hello),
    /// Make every finished file durable, rename it into place and acknowledge it.
    Flush,
    /// The writer could not take this one entry (the stream goes on).
    Reject {
        id: u64,
        code: u16,
        message: String,
    },
    /// `[offset, offset + len)` of the entry is a hole at the source: zeros, never sent.
    Hole {
        id: u64,
        offset: u64,
        len: u64,
    },
    Done(Done),
    Request(Request),
    Response(Response),
}

pub fn encode_preamble() -> [u8; PREAMBLE_LEN] {
    let mut p = [0u8; PREAMBLE_LEN];
    p[..4].copy_from_slice(MAGIC);
    p[4..6].copy_from_slice(&VERSION.to_be_bytes());
    p
}

/// Checks a peer's preamble; returns its version.
pub fn decode_preamble(p: &[u8; PREAMBLE_LEN]) -> Result<u16, ProtocolError> {
    if &p[..4] != MAGIC {
        return Err(err(Code::Malformed, "not a ferry link stream (bad magic)"));
    }
    let v = u16::from_be_bytes([p[4], p[5]]);
    if v != VERSION {
        return Err(err(Code::BadVersion, format!("peer speaks link protocol version {v}, this agent speaks {VERSION} (upgrade the older agent)")));
    }
    Ok(v)
}

/// Appends the encoding of `frame` to `out`.
pub fn encode(frame: &Frame, out: &mut Vec<u8>) -> Result<(), ProtocolError> {
    let start = out.len();
    let ty = match frame {
        Frame::Header(_) => kind::HEADER,
        Frame::Chunk { .. } => kind::CHUNK,
        Frame::End { .. } => kind::END,
        Frame::Ack { .. } => kind::ACK,
        Frame::Error { .. } => kind::ERROR,
        Frame::Hello(_) => kind::HELLO,
        Frame::Flush => kind::FLUSH,
        Frame::Reject { .. } => kind::REJECT,
        Frame::Hole { .. } => kind::HOLE,
        Frame::Done(_) => kind::DONE,
        Frame::Request(_) => kind::REQUEST,
        Frame::Response(_) => kind::RESPONSE,
    };
    out.push(ty);
    out.extend_from_slice(&[0; 4]);
    match frame {
        Frame::Header(h) => {
            check_header(h)?;
            rmp_serde::encode::write_named(out, h).map_err(|e| err(Code::Malformed, e.to_string()))?;
        }
        Frame::Chunk { id, offset, crc32c, compressed, raw_len, data } => {
            out.truncate(start);
            out.extend_from_slice(&encode_chunk_head(*id, *offset, *crc32c, *compressed, *raw_len, data.len())?);
            out.extend_from_slice(data);
            return Ok(());
        }
        Frame::End { id, size, crc32c } => {
            out.extend_from_slice(&id.to_be_bytes());
            out.extend_from_slice(&size.to_be_bytes());
            out.extend_from_slice(&crc32c.to_be_bytes());
        }
        Frame::Ack { id, offset, status } => {
            out.extend_from_slice(&id.to_be_bytes());
            out.extend_from_slice(&offset.to_be_bytes());
            out.push(*status);
        }
        Frame::Error { code, message } => {
            out.extend_from_slice(&code.to_be_bytes());
            out.extend_from_slice(truncated(message));
        }
        Frame::Hello(h) => {
            rmp_serde::encode::write_named(out, h).map_err(|e| err(Code::Malformed, e.to_string()))?;
            if out.len() - start - FRAME_HEADER_LEN > MAX_HELLO {
                return Err(err(Code::TooLarge, "hello frame above its limit"));
            }
        }
        Frame::Flush => {}
        Frame::Reject { id, code, message } => {
            out.extend_from_slice(&id.to_be_bytes());
            out.extend_from_slice(&code.to_be_bytes());
            out.extend_from_slice(truncated(message));
        }
        Frame::Hole { id, offset, len } => {
            out.extend_from_slice(&id.to_be_bytes());
            out.extend_from_slice(&offset.to_be_bytes());
            out.extend_from_slice(&len.to_be_bytes());
        }
        Frame::Done(d) => msgpack(out, start, d, MAX_RESPONSE)?,
        Frame::Request(r) => {
            check_request(r)?;
            msgpack(out, start, r, MAX_REQUEST)?
        }
        Frame::Response(r) => msgpack(out, start, r, MAX_RESPONSE)?,
    }
    let len = (out.len() - start - FRAME_HEADER_LEN) as u32;
    out[start + 1..start + FRAME_HEADER_LEN].copy_from_slice(&len.to_be_bytes());
    Ok(())
}

/// Appends `value` as a msgpack map, refusing it above `max` bytes.
fn msgpack<T: Serialize>(out: &mut Vec<u8>, start: usize, value: &T, max: usize) -> Result<(), ProtocolError> {
    rmp_serde::encode::write_named(out, value).map_err(|e| err(Code::Malformed, e.to_string()))?;
    if out.len() - start - FRAME_HEADER_LEN > max {
        return Err(err(Code::TooLarge, format!("frame above its limit of {max} bytes")));
    }
    Ok(())
}

/// Bytes of a CHUNK frame before its data: frame type, length, and the fixed fields.
pub const CHUNK_HEAD_LEN: usize = FRAME_HEADER_LEN + 8 + CHUNK_FIXED;

/// Everything of a CHUNK frame but its data, so a sender can hand the data to the transport
/// without copying it (the frame is this head followed by `data_len` bytes).
pub fn encode_chunk_head(id: u64, offset: u64, crc32c: u32, compressed: bool, raw_len: u32, data_len: usize) -> Result<[u8; CHUNK_HEAD_LEN], ProtocolError> {
    if data_len > MAX_CHUNK || raw_len as usize > MAX_CHUNK {
        return Err(err(Code::TooLarge, format!("chunk of {} bytes (limit {MAX_CHUNK})", data_len.max(raw_len as usize))));
    }
    let mut h = [0u8; CHUNK_HEAD_LEN];
    h[0] = kind::CHUNK;
    h[1..5].copy_from_slice(&((8 + CHUNK_FIXED + data_len) as u32).to_be_bytes());
    h[5..13].copy_from_slice(&id.to_be_bytes());
    h[13..21].copy_from_slice(&offset.to_be_bytes());
    h[21..25].copy_from_slice(&crc32c.to_be_bytes());
    h[25] = u8::from(compressed);
    h[26..30].copy_from_slice(&raw_len.to_be_bytes());
    Ok(h)
}

/// The fixed fields of a CHUNK payload (its first 25 bytes), checked against the data length
/// that follows. Shared by [`decode`] and by readers that receive the data into its own buffer.
pub struct ChunkFields {
    pub id: u64,
    pub offset: u64,
    pub crc32c: u32,
    pub compressed: bool,
    pub raw_len: u32,
}

pub fn decode_chunk_fields(fixed: &[u8], data_len: usize) -> Result<ChunkFields, ProtocolError> {
    if fixed.len() < 8 + CHUNK_FIXED {
        return Err(err(Code::Malformed, "chunk frame shorter than its fixed fields"));
    }
    let compressed = match fixed[20] {
        0 => false,
        1 => true,
        f => return Err(err(Code::Malformed, format!("unknown chunk flags {f:#04x}"))),
    };
    let raw_len = be_u32(&fixed[21..25]);
    if raw_len as usize > MAX_CHUNK || (!compressed && raw_len as usize != data_len) {
        return Err(err(Code::Malformed, format!("chunk raw length {raw_len} does not fit its {data_len} data bytes")));
    }
    Ok(ChunkFields { id: be_u64(&fixed[0..8]), offset: be_u64(&fixed[8..16]), crc32c: be_u32(&fixed[16..20]), compressed, raw_len })
}

/// Checks a frame's type and length (its first five bytes) against the type's limit; returns
/// the payload length. A reader calls this before it waits for or buffers the payload.
pub fn check_frame_header(head: &[u8; FRAME_HEADER_LEN]) -> Result<usize, ProtocolError> {
    let len = be_u32(&head[1..5]) as usize;
    let max = limit(head[0])?;
    if len > max {
        return Err(err(Code::TooLarge, format!("frame type {:#04x} of {len} bytes (limit {max})", head[0])));
    }
    Ok(len)
}

/// At most [`MAX_MESSAGE`] bytes of `message`, cut at a character boundary.
fn truncated(message: &str) -> &[u8] {
    let mut end = message.len().min(MAX_MESSAGE);
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    &message.as_bytes()[..end]
}

/// Most payload bytes a frame of type `ty` may carry.
fn limit(ty: u8) -> Result<usize, ProtocolError> {
    Ok(match ty {
        kind::HEADER => MAX_HEADER,
        // The chunk's id comes first: 8 more bytes than the fixed fields below.
        kind::CHUNK => 8 + CHUNK_FIXED + MAX_CHUNK,
        kind::END => 20,
        kind::ACK => 17,
        kind::ERROR => 2 + MAX_MESSAGE,
        kind::HELLO => MAX_HELLO,
        kind::FLUSH => 0,
        kind::REJECT => 8 + 2 + MAX_MESSAGE,
        kind::HOLE => 24,
        kind::DONE | kind::RESPONSE => MAX_RESPONSE,
        kind::REQUEST => MAX_REQUEST,
        other => return Err(err(Code::UnknownType, format!("unknown frame type {other:#04x}"))),
    })
}

pub fn check_header(h: &FileHeader) -> Result<(), ProtocolError> {
    if h.path.is_empty() || h.path.len() > MAX_PATH || !paths::is_safe_relative(&h.path) {
        return Err(err(Code::UnsafePath, format!("path {:?} is not a safe relative path of at most {MAX_PATH} bytes", paths::display(&h.path))));
    }
    if h.mtime_nsec >= 1_000_000_000 || h.atime_nsec >= 1_000_000_000 {
        return Err(err(Code::Malformed, "nanoseconds out of range"));
    }
    if h.kind > entry_kind::BLOCK_DEVICE {
        return Err(err(Code::Malformed, format!("unknown entry kind {}", h.kind)));
    }
    if h.target.len() > MAX_PATH || (h.kind == entry_kind::SYMLINK) == h.target.is_empty() || h.target.contains(&0) {
        return Err(err(Code::Malformed, "a symlink needs a target of 1 to 4,096 bytes without NUL, and only a symlink has one"));
    }
    if h.kind != entry_kind::FILE && h.size != 0 {
        return Err(err(Code::Malformed, "only a regular file has a size"));
    }
    check_kind_mode(h)?;
    if h.xattrs.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>() > MAX_XATTR_BYTES || h.xattrs.iter().any(|(k, _)| k.is_empty() || k.contains(&0)) {
        return Err(err(Code::TooLarge, format!("extended attributes above {MAX_XATTR_BYTES} bytes, or an empty or NUL-containing name")));
    }
    if let Some(p) = &h.part {
        let fits = p.offset.checked_add(p.len).is_some_and(|end| end <= h.size);
        if h.kind != entry_kind::FILE || p.len == 0 || !fits || p.upload.is_empty() || p.upload.len() > MAX_UPLOAD_ID {
            return Err(err(Code::Malformed, format!("range [{}+{}) of upload {:?} does not fit a file of {} bytes", p.offset, p.len, p.upload, h.size)));
        }
    }
    Ok(())
}

/// The file-type bits (`S_IFMT`) an entry kind stands for.
pub fn type_bits(kind: u8) -> Option<u32> {
    Some(match kind {
        entry_kind::FILE => libc::S_IFREG,
        entry_kind::SYMLINK => libc::S_IFLNK,
        entry_kind::FIFO => libc::S_IFIFO,
        entry_kind::SOCKET => libc::S_IFSOCK,
        entry_kind::CHAR_DEVICE => libc::S_IFCHR,
        entry_kind::BLOCK_DEVICE => libc::S_IFBLK,
        _ => return None,
    })
}

/// A header's kind and the file type in its mode agree (a mode without type bits takes the
/// kind's), and only a device node carries a device number. The writer makes nodes from the
/// kind, so a FIFO whose mode says "block device" must never reach `mknod`.
pub fn check_kind_mode(h: &FileHeader) -> Result<(), ProtocolError> {
    let Some(want) = type_bits(h.kind) else {
        return Err(err(Code::Malformed, format!("unknown entry kind {}", h.kind)));
    };
    let got = h.mode & libc::S_IFMT;
    if got != 0 && got != want {
        return Err(err(Code::Malformed, format!("entry kind {} does not match the file type {got:o} in its mode {:o}", h.kind, h.mode)));
    }
    if h.mode & !(libc::S_IFMT | 0o7777) != 0 {
        return Err(err(Code::Malformed, format!("mode {:o} has bits outside the file type and permissions", h.mode)));
    }
    let device = matches!(h.kind, entry_kind::CHAR_DEVICE | entry_kind::BLOCK_DEVICE);
    if !device && h.rdev != 0 {
        return Err(err(Code::Malformed, "only a device node has a device number"));
    }
    Ok(())
}

fn safe(rel: &[u8]) -> bool {
    rel.len() <= MAX_PATH && paths::is_safe_relative(rel)
}

/// Every path a request names is a safe relative path, and batches are bounded.
fn check_request(r: &Request) -> Result<(), ProtocolError> {
    let unsafe_path = |p: &[u8]| err(Code::UnsafePath, format!("path {:?} is not a safe relative path of at most {MAX_PATH} bytes", paths::display(p)));
    let batch = |rels: &[serde_bytes::ByteBuf]| -> Result<(), ProtocolError> {
        if rels.len() > MAX_BATCH {
            return Err(err(Code::Limit, format!("{} paths in one request (limit {MAX_BATCH})", rels.len())));
        }
        match rels.iter().find(|r| r.is_empty() || !safe(r)) {
            Some(bad) => Err(unsafe_path(bad)),
            None => Ok(()),
        }
    };
    match r {
        Request::List { dir, .. } if !safe(dir) => Err(unsafe_path(dir)),
        Request::Lookup { dir, names } => {
            if !safe(dir) {
                return Err(unsafe_path(dir));
            }
            if names.len() > MAX_BATCH || names.iter().any(|n| n.is_empty() || n.contains(&b'/') || n.as_slice() == b"." || n.as_slice() == b"..") {
                return Err(err(Code::UnsafePath, "a name in a lookup is empty, '.', '..', contains '/', or there are too many"));
            }
            Ok(())
        }
        Request::Stat { rels } | Request::Checksums { rels } | Request::Remove { rels } | Request::EnsureDirs { rels } => batch(rels),
        Request::OpenUpload { rel, .. } | Request::AbortUpload { rel, .. } if rel.is_empty() || !safe(rel) => Err(unsafe_path(rel)),
        Request::UserIds { names } | Request::GroupIds { names } => {
            if names.len() > MAX_BATCH || names.iter().any(|n| n.is_empty() || n.len() > MAX_OWNER_NAME || n.contains('\0')) {
                return Err(err(
                    Code::Limit,
                    format!("an owner name is empty, longer than {MAX_OWNER_NAME} bytes or holds NUL, or there are over {MAX_BATCH}"),
                ));
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

fn be_u64(b: &[u8]) -> u64 {
    u64::from_be_bytes(b[..8].try_into().expect("8 bytes"))
}

fn be_u32(b: &[u8]) -> u32 {
    u32::from_be_bytes(b[..4].try_into().expect("4 bytes"))
}

/// Decodes one frame from the front of `buf`. `Ok(None)`: more bytes are needed (and will
/// fit the limits); `Ok(Some((frame, used)))`: a frame and how many bytes it took.
pub fn decode(buf: &[u8]) -> Result<Option<(Frame, usize)>, ProtocolError> {
    if buf.len() < FRAME_HEADER_LEN {
        return Ok(None);
    }
    let ty = buf[0];
    let len = check_frame_header(buf[..FRAME_HEADER_LEN].try_into().expect("5 bytes"))?;
    let Some(p) = buf.get(FRAME_HEADER_LEN..FRAME_HEADER_LEN + len) else {
        return Ok(None);
    };
    let exact = |n: usize| {
        if len == n {
            Ok(())
        } else {
            Err(err(Code::Malformed, format!("frame type {ty:#04x} must be {n} bytes, got {len}")))
        }
    };
    let frame = match ty {
        kind::HEADER => {
            let h: FileHeader = rmp_serde::from_slice(p).map_err(|e| err(Code::Malformed, format!("file header: {e}")))?;
            check_header(&h)?;
            Frame::Header(h)
        }
        kind::CHUNK => {
            let f = decode_chunk_fields(p, len.saturating_sub(8 + CHUNK_FIXED))?;
            Frame::Chunk { id: f.id, offset: f.offset, crc32c: f.crc32c, compressed: f.compressed, raw_len: f.raw_len, data: p[8 + CHUNK_FIXED..].to_vec() }
        }
        kind::END => {
            exact(20)?;
            Frame::End { id: be_u64(&p[0..8]), size: be_u64(&p[8..16]), crc32c: be_u32(&p[16..20]) }
        }
        kind::ACK => {
            exact(17)?;
            Frame::Ack { id: be_u64(&p[0..8]), offset: be_u64(&p[8..16]), status: p[16] }
        }
        kind::ERROR => {
            if len < 2 {
                return Err(err(Code::Malformed, "error frame without a code"));
            }
            let message = String::from_utf8_lossy(&p[2..]).into_owned();
            Frame::Error { code: u16::from_be_bytes([p[0], p[1]]), message }
        }
        kind::HELLO => {
            let h: Hello = rmp_serde::from_slice(p).map_err(|e| err(Code::Malformed, format!("hello: {e}")))?;
            Frame::Hello(h)
        }
        kind::FLUSH => Frame::Flush,
        kind::HOLE => {
            exact(24)?;
            Frame::Hole { id: be_u64(&p[0..8]), offset: be_u64(&p[8..16]), len: be_u64(&p[16..24]) }
        }
        kind::DONE => Frame::Done(rmp_serde::from_slice(p).map_err(|e| err(Code::Malformed, format!("done: {e}")))?),
        kind::REQUEST => {
            let r: Request = rmp_serde::from_slice(p).map_err(|e| err(Code::Malformed, format!("request: {e}")))?;
            check_request(&r)?;
            Frame::Request(r)
        }
        kind::RESPONSE => Frame::Response(rmp_serde::from_slice(p).map_err(|e| err(Code::Malformed, format!("response: {e}")))?),
        kind::REJECT => {
            if len < 10 {
                return Err(err(Code::Malformed, "reject frame shorter than its fixed fields"));
            }
            let message = String::from_utf8_lossy(&p[10..]).into_owned();
            Frame::Reject { id: be_u64(&p[0..8]), code: u16::from_be_bytes([p[8], p[9]]), message }
        }
        _ => unreachable!("limit() refused unknown types"),
    };
    Ok(Some((frame, FRAME_HEADER_LEN + len)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn header(path: &[u8]) -> FileHeader {
        FileHeader {
            id: 7,
            path: path.to_vec(),
            size: 10,
            mode: 0o100644,
            uid: 1,
            gid: 2,
            mtime_sec: -3,
            mtime_nsec: 4,
            atime_sec: 5,
            atime_nsec: 6,
            ..Default::default()
        }
    }

    fn round_trip(f: &Frame) {
        let mut buf = Vec::new();
        encode(f, &mut buf).unwrap();
        let (back, used) = decode(&buf).unwrap().expect("a whole frame");
        assert_eq!((&back, used), (f, buf.len()));
        for cut in 0..buf.len() {
            assert_eq!(decode(&buf[..cut]).unwrap(), None, "a truncated frame asks for more bytes");
        }
    }

    #[test]
    fn every_frame_type_round_trips() {
        round_trip(&Frame::Header(header(b"a/b/c\xff")));
        round_trip(&Frame::Chunk { id: 1, offset: 1 << 40, crc32c: 0xdead_beef, compressed: false, raw_len: 3, data: b"abc".to_vec() });
        round_trip(&Frame::Chunk { id: 1, offset: 0, crc32c: 1, compressed: true, raw_len: 4096, data: vec![9; 20] });
        round_trip(&Frame::End { id: 2, size: 99, crc32c: 5 });
        round_trip(&Frame::Ack { id: 2, offset: 64, status: status::RESUME_AT });
        round_trip(&Frame::Error { code: Code::CrcMismatch as u16, message: "chunk at 0 failed its CRC32C".into() });
        round_trip(&Frame::Header(FileHeader {
            kind: entry_kind::SYMLINK,
            target: b"../elsewhere".to_vec(),
            size: 0,
            mode: 0o120777,
            crc32c: Some(3),
            ..header(b"l")
        }));
        round_trip(&Frame::Hello(Hello { exec: "e1".into(), agent: "w1".into(), trace: None }));
        round_trip(&Frame::Hello(Hello {
            exec: "e1".into(),
            agent: "w1".into(),
            trace: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into()),
        }));
        let part = |offset, len| Some(PartTarget { upload: "u1".into(), offset, len });
        round_trip(&Frame::Header(FileHeader { size: 100, part: part(50, 50), decided: true, ..header(b"big") }));
        let mut buf = Vec::new();
        let bad = FileHeader { size: 100, part: part(90, 20), ..header(b"big") };
        assert_eq!(encode(&Frame::Header(bad), &mut buf).unwrap_err().code, Code::Malformed);
        round_trip(&Frame::Hole { id: 3, offset: 4096, len: 1 << 30 });
        round_trip(&Frame::Done(Done { id: 3, end: 99, note: Some("verified by MD5 ETag".into()), resumed: 4, tags: vec![(1, "ab".into())] }));
        round_trip(&Frame::Request(Request::Lookup { dir: b"a/b".to_vec(), names: vec![serde_bytes::ByteBuf::from(b"c".to_vec())] }));
        round_trip(&Frame::Request(Request::UserIds { names: vec!["alice".into(), "bob".into()] }));
        round_trip(&Frame::Request(Request::GroupIds { names: vec!["staff".into()] }));
        round_trip(&Frame::Response(Response::Ids(vec![Some(1000), None])));
        round_trip(&Frame::Response(Response::Checksums(vec![Ok(7), Err(ferry_common::error::FerryError::config("x"))])));
        round_trip(&Frame::Flush);
        round_trip(&Frame::Reject { id: 9, code: Code::Io as u16, message: "permission denied".into() });
        for code in [
            Code::BadVersion,
            Code::Malformed,
            Code::TooLarge,
            Code::UnsafePath,
            Code::CrcMismatch,
            Code::Io,
            Code::UnknownType,
            Code::OutOfOrder,
            Code::Limit,
            Code::UnknownExecution,
            Code::LeaseLost,
        ] {
            assert_eq!(Code::from_u16(code as u16), Some(code));
        }
        assert_eq!(Code::from_u16(0), None);
    }

    #[test]
    fn requests_naming_hostile_paths_are_refused_both_ways() {
        let bad = serde_bytes::ByteBuf::from(b"../etc".to_vec());
        for r in [
            Request::Remove { rels: vec![bad.clone()] },
            Request::List { dir: b"/abs".to_vec(), resume: None, max: 1 },
            Request::Lookup { dir: Vec::new(), names: vec![serde_bytes::ByteBuf::from(b"a/b".to_vec())] },
        ] {
            let mut buf = Vec::new();
            assert_eq!(encode(&Frame::Request(r.clone()), &mut buf).unwrap_err().code, Code::UnsafePath, "{r:?}");
            let mut raw = vec![kind::REQUEST, 0, 0, 0, 0];
            rmp_serde::encode::write_named(&mut raw, &r).unwrap();
            let len = (raw.len() - FRAME_HEADER_LEN) as u32;
            raw[1..5].copy_from_slice(&len.to_be_bytes());
            assert_eq!(decode(&raw).unwrap_err().code, Code::UnsafePath, "{r:?}");
        }
    }

    #[test]
    fn owner_name_requests_are_bounded() {
        for names in [vec![String::new()], vec!["x".repeat(MAX_OWNER_NAME + 1)], vec!["a\0b".into()], vec!["u".into(); MAX_BATCH + 1]] {
            let r = Request::UserIds { names };
            let mut buf = Vec::new();
            assert_eq!(encode(&Frame::Request(r), &mut buf).unwrap_err().code, Code::Limit);
        }
    }

    #[test]
    fn hostile_paths_are_refused_both_ways() {
        for bad in [&b"../x"[..], b"/etc/passwd", b"a/../../b", b"a//b", b"", b"a/./b", b"nul\0byte"] {
            let mut buf = Vec::new();
            assert_eq!(encode(&Frame::Header(header(bad)), &mut buf).unwrap_err().code, Code::UnsafePath, "{bad:?}");
            // A peer that skips the check on its side is refused on ours.
            let mut raw = vec![kind::HEADER, 0, 0, 0, 0];
            rmp_serde::encode::write_named(&mut raw, &header(bad)).unwrap();
            let len = (raw.len() - FRAME_HEADER_LEN) as u32;
            raw[1..5].copy_from_slice(&len.to_be_bytes());
            assert_eq!(decode(&raw).unwrap_err().code, Code::UnsafePath, "{bad:?}");
        }
    }

    #[test]
    fn oversized_and_unknown_frames_are_refused_before_their_payload_arrives() {
        let mut huge = vec![kind::CHUNK];
        huge.extend_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(decode(&huge).unwrap_err().code, Code::TooLarge);
        assert_eq!(decode(&[0x7f, 0, 0, 0, 0]).unwrap_err().code, Code::UnknownType);
        assert_eq!(decode(&[kind::ACK, 0, 0, 0, 3, 1, 2, 3]).unwrap_err().code, Code::Malformed);
        let p = encode_preamble();
        assert_eq!(decode_preamble(&p), Ok(VERSION));
        let mut old = p;
        old[5] = 9;
        assert_eq!(decode_preamble(&old).unwrap_err().code, Code::BadVersion);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4096))]

        /// Any bytes at all: an error, a request for more, or a frame that fits the input.
        #[test]
        fn the_decoder_never_panics_or_overreads(bytes in proptest::collection::vec(any::<u8>(), 0..512), ty in 0u8..14) {
            let mut input = bytes;
            if !input.is_empty() {
                input[0] = ty;
            }
            if let Ok(Some((_, used))) = decode(&input) {
                prop_assert!(used <= input.len());
            }
        }

        #[test]
        fn chunks_round_trip(id: u64, offset: u64, crc: u32, data in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let f = Frame::Chunk { id, offset, crc32c: crc, compressed: false, raw_len: data.len() as u32, data };
            let mut buf = Vec::new();
            encode(&f, &mut buf).unwrap();
            prop_assert_eq!(decode(&buf).unwrap(), Some((f, buf.len())));
        }

        #[test]
        fn headers_round_trip(path in "[a-z]{1,8}(/[a-z0-9._-]{1,8}){0,5}", size: u64, perm in 0u32..0o10000, sec: i64, nsec in 0u32..1_000_000_000) {
            let mode = libc::S_IFREG | perm;
            prop_assume!(paths::is_safe_relative(path.as_bytes()));
            let h = FileHeader { id: 1, path: path.into_bytes(), size, mode, uid: 0, gid: 0, mtime_sec: sec, mtime_nsec: nsec, atime_sec: sec, atime_nsec: nsec, ..Default::default() };
            let f = Frame::Header(h);
            let mut buf = Vec::new();
            encode(&f, &mut buf).unwrap();
            prop_assert_eq!(decode(&buf).unwrap(), Some((f, buf.len())));
        }
    }
}
