//! Reading and writing objects: one streamed GET per object, and uploads that buffer one
//! object or one part at a time.

use std::collections::HashMap;

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::ChecksumMode;
use bytes::Bytes;
use ferry_common::crc;
use ferry_common::error::{ErrorKind, FerryError};
use ferry_common::model::EntryKind;

use super::error::classify;
use super::{etag, object_meta, S3Location, OBJECT_PART_MIN};
use crate::location::{source_changed, Meta, Sink, Source, Staged, StoredPart, Target, Token, Xattrs};

/// An object being read: one GET, streamed. A read anywhere but where the stream stands
/// starts a ranged GET there, pinned to the object's ETag, so a replaced object is noticed.
pub(super) struct S3Source<'a> {
    loc: &'a S3Location,
    key: String,
    meta: Meta,
    body: Option<ByteStream>,
    /// The offset of the first byte of `pending` (then of the stream).
    pos: u64,
    pending: Bytes,
}

impl<'a> S3Source<'a> {
    pub(super) fn open(loc: &'a S3Location, rel: &[u8], from: u64) -> Result<Self, FerryError> {
        let key = loc.key(rel)?;
        let mut src = S3Source { loc, key, meta: Meta::default(), body: None, pos: from, pending: Bytes::new() };
        src.meta = src.get(from, None)?;
        Ok(src)
    }

    fn target(&self) -> String {
        self.loc.target(&self.key)
    }

    /// Starts the stream at `from`: the whole object (with its stored checksum) from 0, or a
    /// ranged GET.
    fn get(&mut self, from: u64, if_match: Option<&str>) -> Result<Meta, FerryError> {
        let loc = self.loc;
        let mut req = loc.client.get_object().bucket(&loc.url.bucket).key(&self.key).checksum_mode(ChecksumMode::Enabled);
        if from > 0 {
            req = req.range(format!("bytes={from}-"));
        }
        if let Some(tag) = if_match {
            req = req.if_match(format!("\"{tag}\""));
        }
        let out = match loc.block(req.send()) {
            Ok(out) => out,
            Err(e) => {
                let err = classify("read", &self.target(), &e);
                return Err(match err.kind {
                    ErrorKind::NotFound => source_changed(self.target(), "it was removed"),
                    ErrorKind::SourceChanged => source_changed(self.target(), "it was replaced"),
                    _ if e.raw_response().map(|r| r.status().as_u16()) == Some(416) => source_changed(self.target(), "it shrank"),
                    _ => err,
                });
            }
        };
        let total = match out.content_range().and_then(|r| r.rsplit_once('/')).and_then(|(_, t)| t.parse::<u64>().ok()) {
            Some(t) => t,
            None => out.content_length().unwrap_or(0).max(0) as u64 + from,
        };
        let mut m = object_meta(&self.key, Some(total as i64), out.metadata(), out.last_modified(), out.checksum_type(), out.checksum_crc32_c(), out.e_tag());
        if from > 0 {
            // A range carries no whole-object checksum.
            m.crc32c = None;
        }
        self.body = Some(out.body);
        self.pos = from;
        self.pending = Bytes::new();
        Ok(m)
    }
}

impl Source for S3Source<'_> {
    fn meta(&self) -> &Meta {
        &self.meta
    }

    fn xattrs(&mut self) -> Result<Xattrs, FerryError> {
        Ok(Vec::new())
    }

    fn data(&mut self, pos: u64) -> Result<Option<(u64, u64)>, FerryError> {
        Ok((pos < self.meta.size).then_some((pos, self.meta.size)))
    }

    fn read_at(&mut self, pos: u64, buf: &mut [u8]) -> Result<(), FerryError> {
        if buf.is_empty() {
            return Ok(());
        }
        if self.body.is_none() || pos != self.pos {
            let tag = self.meta.etag.clone();
            self.get(pos, tag.as_deref())?;
        }
        let mut done = 0;
        while done < buf.len() {
            if self.pending.is_empty() {
                let body = self.body.as_mut().expect("set above");
                let next = self
                    .loc
                    .block(body.try_next())
                    .map_err(|e| FerryError::new(ErrorKind::Unavailable, format!("cannot read {}: {e}", self.loc.target(&self.key))))?;
                match next {
                    Some(chunk) => self.pending = chunk,
                    None => {
                        self.body = None;
                        return Err(source_changed(self.target(), &format!("got {} of {} bytes", pos + done as u64, self.meta.size)));
                    }
                }
            }
            let n = self.pending.len().min(buf.len() - done);
            buf[done..done + n].copy_from_slice(&self.pending.split_to(n));
            done += n;
            self.pos += n as u64;
        }
        Ok(())
    }

    /// An object cannot change under a GET; a ranged re-read is pinned to its ETag.
    fn unchanged(&mut self) -> Result<bool, FerryError> {
        Ok(true)
    }
}

/// How a sink's bytes reach the store.
enum Upload {
    /// One PUT when finished.
    Whole,
    /// Parts of a multipart upload this sink started, completed when finished.
    Own { upload: String },
    /// Parts of someone else's upload (a part shard); the commit completes it.
    Shared { upload: String, stored: HashMap<u32, StoredPart> },
}

/// An object (or a range of one) being written: bytes are gathered into one piece (the whole
/// object, or one part) and uploaded when the piece is full, with the CRC32C the source's
/// chunks add up to, so the store checks exactly the bytes the source read.
pub(super) struct S3Sink<'a> {
    loc: &'a S3Location,
    rel: Vec<u8>,
    key: String,
    meta: Meta,
    upload: Upload,
    /// The bytes of the piece being gathered, from `piece_start`.
    piece: Vec<u8>,
    piece_crc: u32,
    piece_start: u64,
    /// Bytes per piece (part size, or the whole object).
    unit: u64,
    /// Where this sink's range starts and ends.
    start: u64,
    end: u64,
    tags: Vec<(u32, String)>,
    resumed: u64,
}

impl<'a> S3Sink<'a> {
    pub(super) fn create(loc: &'a S3Location, rel: &[u8], target: Target<'_>, meta: &Meta) -> Result<Self, FerryError> {
        let key = loc.key(rel)?;
        let limits = super::profile(&loc.url).limits;
        let (upload, unit, start, end) = match target {
            Target::File { size, .. } if size <= OBJECT_PART_MIN => (Upload::Whole, size.max(1), 0, size),
            Target::File { size, .. } => {
                let unit = limits.part_unit(size).unwrap_or(OBJECT_PART_MIN);
                (Upload::Own { upload: loc.start_multipart(&key, meta)? }, unit, 0, size)
            }
            Target::Part { upload, offset, len, size } => {
                let unit = limits.part_unit(size).unwrap_or(OBJECT_PART_MIN);
                if offset % unit != 0 {
                    return Err(FerryError::new(
                        ErrorKind::Other,
                        format!("a part of {} starts at {offset}, not on a {unit}-byte part boundary", loc.target(&key)),
                    ));
                }
                let stored = match loc.list_parts_of(&key, upload) {
                    Ok(parts) => parts.into_iter().map(|p| (p.number, p)).collect(),
                    // The upload is gone (aborted, or expired by a lifecycle rule): the commit
                    // starts the file over.
                    Err(e) if e.kind == ErrorKind::NotFound => {
                        return Err(FerryError::new(ErrorKind::Unavailable, format!("the multipart upload of {} vanished", loc.target(&key))));
                    }
                    Err(e) => return Err(e),
                };
                (Upload::Shared { upload: upload.to_string(), stored }, unit, offset, offset + len)
            }
        };
        let capacity = unit.min(end - start) as usize;
        Ok(S3Sink {
            loc,
            rel: rel.to_vec(),
            key,
            meta: meta.clone(),
            upload,
            piece: Vec::with_capacity(capacity),
            piece_crc: 0,
            piece_start: start,
            unit,
            start,
            end,
            tags: Vec::new(),
            resumed: 0,
        })
    }

    fn upload_id(&self) -> Option<&str> {
        match &self.upload {
            Upload::Whole => None,
            Upload::Own { upload } | Upload::Shared { upload, .. } => Some(upload),
        }
    }

    /// Appends bytes whose CRC is `crc` to the piece.
    fn gather(&mut self, data: &[u8], crc: u32) {
        self.piece_crc = if self.piece.is_empty() { crc } else { crc::combine(self.piece_crc, crc, data.len() as u64) };
        self.piece.extend_from_slice(data);
    }

    /// The gathered bytes are the ones the source read: their CRC32C is the one the source's
    /// chunks add up to. Checked here, before a store that does not verify checksums on
    /// arrival could keep damaged bytes.
    fn check_piece(&self) -> Result<(), FerryError> {
        let got = crc32c::crc32c(&self.piece);
        let want = if self.piece.is_empty() { 0 } else { self.piece_crc };
        if got != want {
            return Err(FerryError::new(
                ErrorKind::Corrupt,
                format!(
                    "bytes for {} at {} do not match the CRC32C checksum the source read ({want:08x}, got {got:08x})",
                    self.loc.target(&self.key),
                    self.piece_start
                ),
            ));
        }
        Ok(())
    }

    /// Uploads the gathered piece as one part, unless an interrupted run stored exactly these
    /// bytes under its number already.
    fn upload_piece(&mut self) -> Result<(), FerryError> {
        let Some(upload) = self.upload_id().map(str::to_string) else {
            return Ok(());
        };
        self.check_piece()?;
        let number = (self.piece_start / self.unit) as u32 + 1;
        let len = self.piece.len() as u64;
        let kept = match &self.upload {
            Upload::Shared { stored, .. } => stored.get(&number).filter(|p| p.size == len && stored_part_matches(p, &self.piece, self.piece_crc)).cloned(),
            _ => None,
        };
        let tag = match kept {
            Some(p) => {
                self.resumed += len;
                Some(p.etag.to_ascii_lowercase()).filter(|t| etag::is_md5(t)).or_else(|| Some(etag::md5_hex(&self.piece)))
            }
            None => {
                let body = std::mem::replace(&mut self.piece, Vec::with_capacity(self.unit.min(self.end - self.start) as usize));
                self.loc.put_part(&self.key, &upload, number, body, self.piece_crc)?
            }
        };
        if let Some(t) = tag {
            self.tags.push((number, t));
        }
        self.piece.clear();
        self.piece_start += len;
        Ok(())
    }

    fn written_end(&self) -> u64 {
        self.piece_start + self.piece.len() as u64
    }
}

/// Whether a part already stored holds exactly these bytes: by its CRC32C when the store
/// reports one, else by its ETag, the MD5 of the part on S3 and most compatibles.
fn stored_part_matches(p: &StoredPart, data: &[u8], crc: u32) -> bool {
    match p.crc32c {
        Some(c) => c == crc,
        None => etag::is_md5(&p.etag) && etag::md5_hex(data) == p.etag.to_ascii_lowercase(),
    }
}

impl Sink for S3Sink<'_> {
    fn resumed(&self) -> u64 {
        0
    }

    fn crc_resumed(&mut self, _buf: &mut Vec<u8>) -> Result<u32, FerryError> {
        Ok(0)
    }

    fn write_at(&mut self, pos: u64, data: &[u8], crc32c: u32) -> Result<(), FerryError> {
        if pos < self.written_end() || pos + data.len() as u64 > self.end {
            return Err(FerryError::new(
                ErrorKind::Other,
                format!("write of {} at {pos} out of order for {} (written up to {})", data.len(), self.loc.target(&self.key), self.written_end()),
            ));
        }
        // A gap is a hole at the source: zeros here.
        while self.written_end() < pos {
            let n = (pos - self.written_end()).min(1 << 20);
            self.write_at(self.written_end(), &vec![0u8; n as usize], crc::zeros(n))?;
        }
        let (mut data, mut crc) = (data, crc32c);
        loop {
            let room = (self.unit - self.piece.len() as u64) as usize;
            if data.len() <= room {
                self.gather(data, crc);
                if self.piece.len() as u64 == self.unit && !matches!(self.upload, Upload::Whole) {
                    self.upload_piece()?;
                }
                return Ok(());
            }
            // The chunk straddles two parts: each half gets its own CRC, and together they
            // must still make the chunk's.
            let (a, b) = data.split_at(room);
            let (ca, cb) = (crc32c::crc32c(a), crc32c::crc32c(b));
            if crc::combine(ca, cb, b.len() as u64) != crc {
                return Err(FerryError::new(
                    ErrorKind::Corrupt,
                    format!("bytes for {} at {pos} do not match the CRC32C the source read", self.loc.target(&self.key)),
                ));
            }
            self.gather(a, ca);
            self.upload_piece()?;
            (data, crc) = (b, cb);
        }
    }

    fn finish(mut self: Box<Self>, crc32c: u32) -> Result<Staged, FerryError> {
        if self.written_end() < self.end {
            let end = self.end;
            self.write_at(end, &[], 0)?;
        }
        let result = (|| -> Result<Token, FerryError> {
            match &self.upload {
                Upload::Whole => {
                    self.check_piece()?;
                    if self.piece_crc != crc32c && !self.piece.is_empty() {
                        return Err(FerryError::new(
                            ErrorKind::Corrupt,
                            format!("the chunks of {} add up to CRC32C {:08x}, not the file's {crc32c:08x}", self.loc.target(&self.key), self.piece_crc),
                        ));
                    }
                    let body = std::mem::take(&mut self.piece);
                    let tag = self.loc.put_object(&self.key, body, &self.meta, EntryKind::File, crc32c)?;
                    Ok(Token::Placed { etag: Some(tag) })
                }
                Upload::Own { upload } => {
                    let upload = upload.clone();
                    if !self.piece.is_empty() || self.tags.is_empty() {
                        self.upload_piece()?;
                    }
                    let tag = self.loc.complete(&self.key, &upload, self.end, crc32c, &self.tags)?;
                    Ok(Token::Placed { etag: tag })
                }
                Upload::Shared { .. } => {
                    if !self.piece.is_empty() {
                        self.upload_piece()?;
                    }
                    Ok(Token::Parts)
                }
            }
        })();
        let token = match result {
            Ok(t) => t,
            Err(e) => {
                if let Upload::Own { upload } = &self.upload {
                    // A failed upload is aborted: no invisible parts are left to pay for.
                    let _ = self.loc.abort_upload(&self.key, upload);
                }
                return Err(e);
            }
        };
        let size = self.end - self.start;
        Ok(Staged {
            rel: std::mem::take(&mut self.rel),
            kind: EntryKind::File,
            size,
            crc32c: Some(crc32c),
            token,
            part_tags: std::mem::take(&mut self.tags),
            resumed: self.resumed,
        })
    }

    fn abort(self: Box<Self>) {
        if let Upload::Own { upload } = &self.upload {
            let _ = self.loc.abort_upload(&self.key, upload);
        }
    }
}
