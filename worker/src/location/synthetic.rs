//! For scale tests only: a source tree described by parameters and generated on the fly
//! (`synthetic://`), and a destination that checks what it receives and keeps nothing
//! (`null://`). With them the real planning, claim, transfer and commit path runs on 10^8
//! entries on a host whose disk could not hold such a tree, and what is measured is ferry,
//! not a file system.
//!
//! Neither is meant for users' data and neither is in the user documentation.
//!
//! `synthetic://files=N&per-dir=K&fanout=F&size=S[-MAX]&seed=X` is a tree of `N` files, `K`
//! per directory, in `ceil(N / K)` directories that form a complete `F`-ary tree numbered
//! breadth-first (directory 0 is the root; the children of `i` are `i·F+1 ..= i·F+F`).
//! Directory `i` holds files `f0 ..` and subdirectories `d0 ..`. Every byte, size and time
//! follows from the parameters, so two agents see the same tree and a rerun sees the same
//! content.

use ferry_common::crc;
use ferry_common::error::{ErrorKind, FerryError};
use ferry_common::model::{EntryKind, Timestamp};

use super::{Capabilities, Completed, Durable, Limits, Listed, Location, Meta, Page, Profile, Sink, Source, Special, Staged, Target, Token, Xattrs};

pub const SYNTHETIC_SCHEME: &str = "synthetic://";
pub const NULL_SCHEME: &str = "null://";

/// Every entry's mtime: a fixed moment, so reruns compare equal.
const EPOCH: i64 = 1_700_000_000;

/// The parameters of a synthetic tree.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SynthTree {
    pub files: u64,
    pub per_dir: u64,
    pub fanout: u64,
    pub size_min: u64,
    pub size_max: u64,
    pub seed: u64,
}

/// One name of a synthetic tree.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Node {
    Dir(u64),
    File { dir: u64, index: u64 },
}

fn mix(mut x: u64) -> u64 {
    // splitmix64: cheap, and every input bit reaches every output bit.
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

impl SynthTree {
    /// Parses `synthetic://files=..&per-dir=..&fanout=..&size=..&seed=..` (`,` also separates).
    pub fn parse(uri: &str) -> Result<Self, FerryError> {
        let bad = |why: String| {
            FerryError::config(format!("{uri}: {why} (a synthetic tree is synthetic://files=N&per-dir=K&fanout=F&size=S[-MAX]&seed=X; testing only)"))
        };
        let rest = uri.strip_prefix(SYNTHETIC_SCHEME).ok_or_else(|| bad("not a synthetic:// location".into()))?;
        let mut t = SynthTree { files: 1000, per_dir: 100, fanout: 10, size_min: 0, size_max: 0, seed: 1 };
        for pair in rest.trim_matches('/').trim_start_matches('?').split(['&', ',']).filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').ok_or_else(|| bad(format!("{pair:?} is not key=value")))?;
            let num = |s: &str| s.replace('_', "").parse::<u64>().map_err(|_| bad(format!("{k}={s} is not a whole number")));
            match k {
                "files" => t.files = num(v)?,
                "per-dir" => t.per_dir = num(v)?,
                "fanout" => t.fanout = num(v)?,
                "seed" => t.seed = num(v)?,
                "size" => match v.split_once('-') {
                    Some((a, b)) => (t.size_min, t.size_max) = (num(a)?, num(b)?),
                    None => (t.size_min, t.size_max) = (num(v)?, num(v)?),
                },
                _ => return Err(bad(format!("unknown parameter {k:?}"))),
            }
        }
        if t.per_dir == 0 || t.fanout == 0 || t.size_max < t.size_min {
            return Err(bad("per-dir and fanout must be at least 1, and size's MAX at least its minimum".into()));
        }
        Ok(t)
    }

    pub fn dirs(&self) -> u64 {
        self.files.div_ceil(self.per_dir).max(1)
    }

    /// Every entry below the root: files and directories.
    pub fn entries(&self) -> u64 {
        self.files + self.dirs() - 1
    }

    fn children(&self, dir: u64) -> std::ops::Range<u64> {
        let first = dir.saturating_mul(self.fanout).saturating_add(1).min(self.dirs());
        first..first.saturating_add(self.fanout).min(self.dirs())
    }

    fn files_in(&self, dir: u64) -> u64 {
        self.files.saturating_sub(dir.saturating_mul(self.per_dir)).min(self.per_dir)
    }

    fn resolve(&self, rel: &[u8]) -> Option<Node> {
        let mut dir = 0u64;
        let mut parts = rel.split(|&b| b == b'/').filter(|c| !c.is_empty()).peekable();
        while let Some(c) = parts.next() {
            let n: u64 = std::str::from_utf8(&c[1..]).ok()?.parse().ok()?;
            match c.first()? {
                b'd' if n < self.fanout => {
                    let child = self.children(dir).start.checked_add(n)?;
                    if !self.children(dir).contains(&child) {
                        return None;
                    }
                    dir = child;
                }
                b'f' if parts.peek().is_none() && n < self.files_in(dir) => return Some(Node::File { dir, index: n }),
                _ => return None,
            }
        }
        Some(Node::Dir(dir))
    }

    fn file_key(&self, dir: u64, index: u64) -> u64 {
        mix(self.seed ^ mix(dir.wrapping_mul(0x1_0000_0001) ^ index))
    }

    fn file_meta(&self, dir: u64, index: u64) -> Meta {
        let key = self.file_key(dir, index);
        let span = self.size_max - self.size_min;
        let size = self.size_min + if span == 0 { 0 } else { key % (span + 1) };
        Meta {
            kind: Some(EntryKind::File),
            size,
            mtime: Timestamp { sec: EPOCH + (key % 1_000_000) as i64, nsec: (key >> 40) as u32 % 1_000_000_000 },
            mode: Some(libc::S_IFREG | 0o644),
            ..Meta::default()
        }
    }

    fn dir_meta() -> Meta {
        Meta { kind: Some(EntryKind::Dir), mtime: Timestamp { sec: EPOCH, nsec: 0 }, mode: Some(libc::S_IFDIR | 0o755), ..Meta::default() }
    }

    /// Fills `buf` with the bytes of file `key` from `pos` on.
    fn fill(key: u64, pos: u64, buf: &mut [u8]) {
        let mut at = 0usize;
        let mut word = pos / 8;
        let mut skip = (pos % 8) as usize;
        while at < buf.len() {
            let bytes = mix(key ^ word).to_le_bytes();
            let n = (8 - skip).min(buf.len() - at);
            buf[at..at + n].copy_from_slice(&bytes[skip..skip + n]);
            at += n;
            skip = 0;
            word += 1;
        }
    }
}

/// Whether a location URI names a synthetic tree (scale tests).
pub fn is_synthetic_uri(uri: &str) -> bool {
    uri.starts_with(SYNTHETIC_SCHEME)
}

/// Whether a location URI names the null destination (scale tests).
pub fn is_null_uri(uri: &str) -> bool {
    uri.starts_with(NULL_SCHEME)
}

/// Checks a scale-test URI without opening anything.
pub fn check(uri: &str) -> Result<(), FerryError> {
    if is_synthetic_uri(uri) {
        SynthTree::parse(uri).map(drop)
    } else {
        Null::open(uri).map(drop)
    }
}

/// Both keep every kind of metadata a file tree has, so every comparison and metadata step runs.
pub fn profile() -> Profile {
    Profile {
        capabilities: Capabilities {
            hard_links: false,
            holes: false,
            xattrs: true,
            special_files: true,
            ownership: true,
            ns_times: true,
            symlink_times: true,
            dir_markers: true,
            atomic_rename: false,
            stored_checksum: false,
            server_side_copy: false,
            complete_listing: true,
            cheap_stat: true,
            object_tags: false,
        },
        limits: Limits::default(),
    }
}

fn read_only(what: String) -> FerryError {
    FerryError::new(
        ErrorKind::Config,
        format!("{what} is a synthetic source and cannot be written (synthetic:// is for scale tests; write to null:// or a real location)"),
    )
}

/// The generated source tree.
pub struct Synthetic {
    uri: String,
    tree: SynthTree,
}

impl Synthetic {
    pub fn open(uri: &str) -> Result<Self, FerryError> {
        Ok(Synthetic { uri: uri.to_string(), tree: SynthTree::parse(uri)? })
    }

    fn meta_of(&self, node: Node) -> Meta {
        match node {
            Node::Dir(_) => SynthTree::dir_meta(),
            Node::File { dir, index } => self.tree.file_meta(dir, index),
        }
    }
}

struct SynthSource {
    key: u64,
    meta: Meta,
}

impl Source for SynthSource {
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
        if pos + buf.len() as u64 > self.meta.size {
            return Err(super::source_changed(format!("synthetic file {:016x}", self.key), "read past its end"));
        }
        SynthTree::fill(self.key, pos, buf);
        Ok(())
    }
    fn unchanged(&mut self) -> Result<bool, FerryError> {
        Ok(true)
    }
}

impl Location for Synthetic {
    fn describe(&self, rel: &[u8]) -> String {
        format!("{}/{}", self.uri.trim_end_matches('/'), ferry_common::paths::display(rel))
    }
    fn capabilities(&self) -> Capabilities {
        profile().capabilities
    }
    fn limits(&self) -> Limits {
        profile().limits
    }
    fn list(&self, dir: &[u8], resume: Option<&[u8]>, max: usize) -> Result<Page, FerryError> {
        let Some(Node::Dir(d)) = self.tree.resolve(dir) else {
            return Ok(Page::default());
        };
        let subdirs = self.tree.children(d);
        let total = (subdirs.end - subdirs.start) + self.tree.files_in(d);
        let start = match resume {
            Some(r) => std::str::from_utf8(r).ok().and_then(|s| s.parse::<u64>().ok()).ok_or_else(|| {
                FerryError::new(
                    ErrorKind::Corrupt,
                    format!("{}: listing cursor {:?} is not one this location gave", self.describe(dir), String::from_utf8_lossy(r)),
                )
            })?,
            None => 0,
        };
        let end = total.min(start.saturating_add(max.max(1) as u64));
        let nsub = subdirs.end - subdirs.start;
        let entries = (start..end)
            .map(|i| {
                let (name, meta) =
                    if i < nsub { (format!("d{i}"), SynthTree::dir_meta()) } else { (format!("f{}", i - nsub), self.tree.file_meta(d, i - nsub)) };
                Listed { name: name.into_bytes(), meta, complete: true, cursor: (i + 1).to_string().into_bytes() }
            })
            .collect();
        Ok(Page { entries, resume: (end < total).then(|| end.to_string().into_bytes()) })
    }
    fn stat(&self, rel: &[u8]) -> Result<Option<Meta>, FerryError> {
        Ok(self.tree.resolve(rel).map(|n| self.meta_of(n)))
    }
    fn stat_dir(&self, rel: &[u8]) -> Result<Option<Meta>, FerryError> {
        Ok(self.tree.resolve(rel).filter(|n| matches!(n, Node::Dir(_))).map(|n| self.meta_of(n)))
    }
    fn xattrs(&self, _rel: &[u8]) -> Result<Xattrs, FerryError> {
        Ok(Vec::new())
    }
    fn tags(&self, _rel: &[u8]) -> Result<Option<String>, FerryError> {
        Ok(None)
    }
    fn open(&self, rel: &[u8], _from: u64) -> Result<Box<dyn Source + '_>, FerryError> {
        match self.tree.resolve(rel) {
            Some(Node::File { dir, index }) => Ok(Box::new(SynthSource { key: self.tree.file_key(dir, index), meta: self.tree.file_meta(dir, index) })),
            _ => Err(FerryError::new(ErrorKind::NotFound, format!("{} is not a file of this synthetic tree", self.describe(rel)))),
        }
    }
    fn create(&self, rel: &[u8], _target: Target<'_>, _meta: &Meta, _xattrs: &Xattrs) -> Result<Box<dyn Sink + '_>, FerryError> {
        Err(read_only(self.describe(rel)))
    }
    fn make(&self, rel: &[u8], _special: &Special, _meta: &Meta, _xattrs: &Xattrs) -> Result<Staged, FerryError> {
        Err(read_only(self.describe(rel)))
    }
    fn ensure_dir(&self, rel: &[u8]) -> Result<(), FerryError> {
        Err(read_only(self.describe(rel)))
    }
    fn set_meta(&self, rel: &[u8], _meta: &Meta, _xattrs: Option<&Xattrs>) -> Result<(), FerryError> {
        Err(read_only(self.describe(rel)))
    }
    fn link(&self, _target: &[u8], rel: &[u8]) -> Result<bool, FerryError> {
        Err(read_only(self.describe(rel)))
    }
    fn sync(&self, _staged: &[Staged], _what: Durable) -> Result<(), FerryError> {
        Ok(())
    }
    fn check(&self, staged: &Staged, _buf: &mut Vec<u8>) -> Result<Option<String>, FerryError> {
        Err(read_only(self.describe(&staged.rel)))
    }
    fn publish(&self, staged: &Staged) -> Result<(), FerryError> {
        Err(read_only(self.describe(&staged.rel)))
    }
    fn discard(&self, _staged: &Staged) {}
    fn remove(&self, rels: &[Vec<u8>]) -> Vec<Result<u64, FerryError>> {
        rels.iter().map(|r| Err(read_only(self.describe(r)))).collect()
    }
    fn sweep(&self, _dir: &[u8]) -> Result<(), FerryError> {
        Ok(())
    }
    fn create_multipart(&self, rel: &[u8], _size: u64, _meta: &Meta) -> Result<String, FerryError> {
        Err(read_only(self.describe(rel)))
    }
    fn complete_multipart(&self, rel: &[u8], _upload: &str, _done: &Completed<'_>) -> Result<Staged, FerryError> {
        Err(read_only(self.describe(rel)))
    }
    fn abort_multipart(&self, _rel: &[u8], _upload: &str) -> Result<(), FerryError> {
        Ok(())
    }
}

/// The destination that keeps nothing. Every write's bytes are checked against the CRC32C
/// the source computed, piece by piece and whole, so a scale run still proves the data path
/// carried the right bytes; then they are dropped. It holds nothing, so every run copies all.
pub struct Null {
    uri: String,
}

impl Null {
    pub fn open(uri: &str) -> Result<Self, FerryError> {
        Ok(Null { uri: uri.trim_end_matches('/').to_string() })
    }
}

/// A write into the null destination: the CRC of each piece, to be combined in order.
struct NullSink {
    describe: String,
    /// The target's first byte and length (a part's range, or the whole file).
    start: u64,
    len: u64,
    pieces: Vec<(u64, u64, u32)>,
    rel: Vec<u8>,
}

impl Sink for NullSink {
    fn resumed(&self) -> u64 {
        0
    }
    fn crc_resumed(&mut self, _buf: &mut Vec<u8>) -> Result<u32, FerryError> {
        Ok(0)
    }
    fn write_at(&mut self, pos: u64, data: &[u8], crc32c: u32) -> Result<(), FerryError> {
        let got = crc::extend(0, data);
        if got != crc32c {
            return Err(FerryError::new(
                ErrorKind::Corrupt,
                format!("{}: {} bytes at {pos} arrived with CRC32C {got:08x}, the source sent {crc32c:08x}", self.describe, data.len()),
            ));
        }
        if pos < self.start || pos + data.len() as u64 > self.start + self.len {
            return Err(FerryError::new(ErrorKind::Corrupt, format!("{}: a write at {pos} falls outside the target's range", self.describe)));
        }
        self.pieces.push((pos, data.len() as u64, got));
        Ok(())
    }
    fn finish(mut self: Box<Self>, crc32c: u32) -> Result<Staged, FerryError> {
        // Unwritten ranges read as zeros, as a sparse file's holes do.
        self.pieces.sort_unstable_by_key(|p| p.0);
        let (mut acc, mut at) = (0u32, self.start);
        for &(pos, len, c) in &self.pieces {
            if pos < at {
                return Err(FerryError::new(ErrorKind::Corrupt, format!("{}: two writes overlap at {pos}", self.describe)));
            }
            acc = crc::combine(acc, crc::zeros(pos - at), pos - at);
            acc = crc::combine(acc, c, len);
            at = pos + len;
        }
        let end = self.start + self.len;
        acc = crc::combine(acc, crc::zeros(end - at), end - at);
        if acc != crc32c {
            return Err(FerryError::new(ErrorKind::Corrupt, format!("{}: the content's CRC32C is {acc:08x}, the source's {crc32c:08x}", self.describe)));
        }
        Ok(Staged {
            rel: std::mem::take(&mut self.rel),
            kind: EntryKind::File,
            size: self.len,
            crc32c: Some(crc32c),
            token: Token::Placed { etag: None },
            part_tags: Vec::new(),
            resumed: 0,
        })
    }
    fn abort(self: Box<Self>) {}
}

fn placed(rel: &[u8], kind: EntryKind) -> Staged {
    Staged { rel: rel.to_vec(), kind, size: 0, crc32c: None, token: Token::Placed { etag: None }, part_tags: Vec::new(), resumed: 0 }
}

impl Location for Null {
    fn describe(&self, rel: &[u8]) -> String {
        format!("{}/{}", self.uri, ferry_common::paths::display(rel))
    }
    fn capabilities(&self) -> Capabilities {
        profile().capabilities
    }
    fn limits(&self) -> Limits {
        profile().limits
    }
    fn list(&self, _dir: &[u8], _resume: Option<&[u8]>, _max: usize) -> Result<Page, FerryError> {
        Ok(Page::default())
    }
    fn stat(&self, _rel: &[u8]) -> Result<Option<Meta>, FerryError> {
        Ok(None)
    }
    fn stat_dir(&self, rel: &[u8]) -> Result<Option<Meta>, FerryError> {
        // The root exists (a copy from null:// copies nothing); nothing else does.
        Ok(rel.is_empty().then(SynthTree::dir_meta))
    }
    fn xattrs(&self, _rel: &[u8]) -> Result<Xattrs, FerryError> {
        Ok(Vec::new())
    }
    fn tags(&self, _rel: &[u8]) -> Result<Option<String>, FerryError> {
        Ok(None)
    }
    fn open(&self, rel: &[u8], _from: u64) -> Result<Box<dyn Source + '_>, FerryError> {
        Err(FerryError::new(ErrorKind::NotFound, format!("{} does not exist (null:// keeps nothing)", self.describe(rel))))
    }
    fn create(&self, rel: &[u8], target: Target<'_>, _meta: &Meta, _xattrs: &Xattrs) -> Result<Box<dyn Sink + '_>, FerryError> {
        let (start, len) = match target {
            Target::File { size, .. } => (0, size),
            Target::Part { offset, len, .. } => (offset, len),
        };
        Ok(Box::new(NullSink { describe: self.describe(rel), start, len, pieces: Vec::new(), rel: rel.to_vec() }))
    }
    fn make(&self, rel: &[u8], _special: &Special, meta: &Meta, _xattrs: &Xattrs) -> Result<Staged, FerryError> {
        Ok(placed(rel, meta.kind()))
    }
    fn ensure_dir(&self, _rel: &[u8]) -> Result<(), FerryError> {
        Ok(())
    }
    fn set_meta(&self, _rel: &[u8], _meta: &Meta, _xattrs: Option<&Xattrs>) -> Result<(), FerryError> {
        Ok(())
    }
    fn link(&self, _target: &[u8], _rel: &[u8]) -> Result<bool, FerryError> {
        Ok(true)
    }
    fn sync(&self, _staged: &[Staged], _what: Durable) -> Result<(), FerryError> {
        Ok(())
    }
    fn check(&self, _staged: &Staged, _buf: &mut Vec<u8>) -> Result<Option<String>, FerryError> {
        // Checked as it arrived (`NullSink::finish`): nothing is at rest to read back.
        Ok(None)
    }
    fn publish(&self, _staged: &Staged) -> Result<(), FerryError> {
        Ok(())
    }
    fn discard(&self, _staged: &Staged) {}
    fn remove(&self, rels: &[Vec<u8>]) -> Vec<Result<u64, FerryError>> {
        rels.iter().map(|_| Ok(0)).collect()
    }
    fn sweep(&self, _dir: &[u8]) -> Result<(), FerryError> {
        Ok(())
    }
    fn create_multipart(&self, rel: &[u8], _size: u64, _meta: &Meta) -> Result<String, FerryError> {
        Ok(format!("null-{:08x}", crc32c::crc32c(rel)))
    }
    fn complete_multipart(&self, rel: &[u8], _upload: &str, done: &Completed<'_>) -> Result<Staged, FerryError> {
        Ok(Staged { size: done.size, crc32c: Some(done.crc32c), ..placed(rel, EntryKind::File) })
    }
    fn abort_multipart(&self, _rel: &[u8], _upload: &str) -> Result<(), FerryError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::location::LocationExt;

    fn tree(uri: &str) -> Synthetic {
        Synthetic::open(uri).unwrap()
    }

    /// Walks the whole tree through `list`, in small pages, and counts what it finds.
    fn walk(loc: &Synthetic, page: usize) -> (u64, u64, u64) {
        let (mut files, mut dirs, mut bytes) = (0, 0, 0);
        let mut todo = vec![Vec::new()];
        while let Some(dir) = todo.pop() {
            let mut resume: Option<Vec<u8>> = None;
            loop {
                let p = loc.list(&dir, resume.as_deref(), page).unwrap();
                for l in &p.entries {
                    let rel = ferry_common::paths::child(&dir, &l.name);
                    assert_eq!(loc.stat(&rel).unwrap().as_ref(), Some(&l.meta), "stat agrees with list for {}", String::from_utf8_lossy(&rel));
                    if l.meta.kind() == EntryKind::Dir {
                        dirs += 1;
                        todo.push(rel);
                    } else {
                        files += 1;
                        bytes += l.meta.size;
                    }
                }
                match p.resume {
                    Some(r) => resume = Some(r),
                    None => break,
                }
            }
        }
        (files, dirs, bytes)
    }

    #[test]
    fn the_tree_holds_exactly_what_its_parameters_say() {
        for (uri, files, dirs) in [
            ("synthetic://files=1000&per-dir=10&fanout=3&seed=7", 1000, 100),
            ("synthetic://files=1001,per-dir=10,fanout=10", 1001, 101),
            ("synthetic://files=5&per-dir=100&fanout=4", 5, 1),
            ("synthetic://files=0", 0, 1),
        ] {
            let loc = tree(uri);
            let (f, d, _) = walk(&loc, 7);
            assert_eq!((f, d + 1), (files, dirs), "{uri}");
            assert_eq!(loc.tree.entries(), f + d, "{uri}");
        }
    }

    #[test]
    fn content_is_deterministic_and_matches_any_read_offset() {
        let loc = tree("synthetic://files=20&per-dir=5&fanout=2&size=1-5000&seed=3");
        let (_, _, bytes) = walk(&loc, 3);
        assert!(bytes > 0);
        let rel = b"d1/f2";
        let meta = loc.stat(rel).unwrap().unwrap();
        let mut whole = vec![0u8; meta.size as usize];
        loc.open(rel, 0).unwrap().read_at(0, &mut whole).unwrap();
        for start in [0usize, 1, 7, 8, 13] {
            let mut piece = vec![0u8; whole.len() - start];
            loc.open(rel, 0).unwrap().read_at(start as u64, &mut piece).unwrap();
            assert_eq!(piece, whole[start..], "from {start}");
        }
        let mut buf = Vec::new();
        assert_eq!(loc.checksum(rel, &meta, &mut buf).unwrap().0, crc32c::crc32c(&whole));
        assert_eq!(tree("synthetic://files=20&per-dir=5&fanout=2&size=1-5000&seed=3").stat(rel).unwrap(), Some(meta.clone()));
        assert_ne!(tree("synthetic://files=20&per-dir=5&fanout=2&size=1-5000&seed=4").stat(rel).unwrap(), Some(meta));
    }

    #[test]
    fn names_outside_the_tree_do_not_exist() {
        let loc = tree("synthetic://files=25&per-dir=10&fanout=2");
        for rel in [&b"d2"[..], b"f10", b"d0/d0", b"d1/f5", b"x", b"d0/f1/f1", b"d"] {
            assert_eq!(loc.stat(rel).unwrap(), None, "{}", String::from_utf8_lossy(rel));
        }
        assert!(loc.stat(b"d1/f4").unwrap().is_some());
        assert!(loc.create(b"f0", Target::File { size: 1, resume: None }, &Meta::default(), &Vec::new()).is_err());
    }

    #[test]
    fn bad_parameters_are_one_line_errors_that_show_the_form() {
        for uri in ["synthetic://files=x", "synthetic://per-dir=0", "synthetic://colour=red", "synthetic://size=9-1", "synthetic://files"] {
            let e = Synthetic::open(uri).err().expect(uri).message;
            assert!(e.contains("synthetic://files=N") && !e.contains('\n'), "{e}");
        }
    }

    #[test]
    fn the_null_destination_accepts_right_bytes_and_refuses_wrong_ones() {
        let null = Null::open("null://").unwrap();
        let data: Vec<u8> = (0..10_000u32).map(|i| (i * 7) as u8).collect();
        let meta = Meta { kind: Some(EntryKind::File), size: data.len() as u64, ..Meta::default() };
        let opts = crate::location::CommitOptions { fsync: true, verify: true };
        crate::location::put_file(&null, b"a/b", &data, &meta, opts).unwrap();
        // Holes read as zeros: a file written in two pieces with a gap between them.
        let mut sink = null.create(b"h", Target::File { size: 30, resume: None }, &meta, &Vec::new()).unwrap();
        sink.write_at(20, &[1; 10], crc32c::crc32c(&[1; 10])).unwrap();
        sink.write_at(0, &[2; 5], crc32c::crc32c(&[2; 5])).unwrap();
        let mut whole = vec![2u8; 5];
        whole.extend([0u8; 15]);
        whole.extend([1u8; 10]);
        sink.finish(crc32c::crc32c(&whole)).unwrap();
        // A piece damaged on the way, and a whole that is not what the source read.
        let mut sink = null.create(b"c", Target::File { size: 4, resume: None }, &meta, &Vec::new()).unwrap();
        let e = sink.write_at(0, b"abcd", crc32c::crc32c(b"abce")).err().unwrap();
        assert_eq!(e.kind, ErrorKind::Corrupt);
        let mut sink = null.create(b"c", Target::File { size: 4, resume: None }, &meta, &Vec::new()).unwrap();
        sink.write_at(0, b"abcd", crc32c::crc32c(b"abcd")).unwrap();
        assert_eq!(sink.finish(crc32c::crc32c(b"abce")).err().unwrap().kind, ErrorKind::Corrupt);
        assert_eq!(null.stat(b"a/b").unwrap(), None, "it keeps nothing");
    }
}
