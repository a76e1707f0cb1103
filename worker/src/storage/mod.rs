//! Storage locations. Each backend lives in `storage/<name>/`.
//!
//! Local-to-local executions use the local tree's directory handles directly (hard links,
//! holes, xattrs, special files). Any execution with an object store on either side goes
//! through the [`Location`] trait, which both backends implement and which one conformance
//! suite ([`conformance`]) checks.

pub mod conformance;
pub mod local;
pub mod s3;

use std::sync::Arc;

use ferry_common::error::FerryError;
use ferry_common::model::{EntryKind, ExecutionSpec, Timestamp};

/// What a location knows about one entry. Fields a backend cannot know are `None`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Meta {
    pub kind: Option<EntryKind>,
    pub size: u64,
    pub mtime: Timestamp,
    pub atime: Option<Timestamp>,
    /// The full `st_mode`, file-type bits included.
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    /// A whole-content CRC32C the location stores and vouches for (S3's checksum). `None`
    /// when it has none: verification then reads the content back.
    pub crc32c: Option<u32>,
    /// The object was uploaded in parts. Some S3-compatible stores report a checksum for it
    /// that is not the whole content's CRC32C, so a mismatch is settled by reading it back.
    pub multipart: bool,
    /// Symlinks: the target (filled in by `stat`, not by `list`).
    pub link_target: Option<Vec<u8>>,
    /// The store's entity tag (S3's ETag, quotes removed): the MD5 of the content for a single
    /// upload, `md5-of-part-md5s-N` for a multipart one, on S3 and most compatibles.
    pub etag: Option<String>,
    /// Object tags as a URL-encoded query (`k=v&k2=v2`), to write with the entry
    /// (ObjectTags PRESERVE); only `tags` reads them.
    pub tags: Option<String>,
}

impl Meta {
    pub fn kind(&self) -> EntryKind {
        self.kind.unwrap_or(EntryKind::File)
    }
}

/// One listed name. `complete` is false when the listing carries only size and time (an
/// object listing), so a comparison that needs owner, mode or the exact mtime must `stat`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listed {
    pub name: Vec<u8>,
    pub meta: Meta,
    pub complete: bool,
}

/// One page of a directory listing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Page {
    pub entries: Vec<Listed>,
    /// Pass this back as `resume` to continue; `None` when the directory is exhausted.
    pub resume: Option<Vec<u8>>,
}

/// What to write.
pub enum Content<'a> {
    File(&'a [u8]),
    Symlink(&'a [u8]),
    Dir,
}

/// An entry written by [`Location::stage`] and not yet committed.
#[derive(Debug)]
pub struct Staged {
    pub rel: Vec<u8>,
    /// Where a file system wrote it; `None` when the entry is in place already.
    pub temp: Option<Vec<u8>>,
    pub size: u64,
    pub crc32c: Option<u32>,
}

/// A part already stored in an unfinished large write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredPart {
    pub number: u32,
    pub size: u64,
    /// The part's CRC32C when the store reports it.
    pub crc32c: Option<u32>,
    /// The store's tag for the part (an MD5 hex digest on most S3 implementations).
    pub etag: String,
}

/// A location: a tree of entries addressed by relative paths (`a/b/c`, no `.` or `..`, no
/// leading or doubled `/`; see `ferry_common::paths`).
///
/// The contract, checked by [`conformance::run_location_suite`] for every backend:
/// - `list(dir)` returns every direct child of `dir` exactly once across its pages, with
///   directories as `EntryKind::Dir`, and never ferry's own temporary or marker names.
///   Listing a directory that does not exist returns an empty page.
/// - `stat` returns `None` for a missing entry and full metadata otherwise.
/// - `put` is atomic: readers see the old entry or the complete new one, never a partial
///   one, and the metadata is in place when the content appears. Parent directories are
///   created as needed.
/// - Large content is written as numbered parts of a multipart write, then completed. Parts
///   may be written in any order, by any process, and rewritten; `list_parts` shows what is
///   stored; nothing is visible until `complete_multipart`; `abort_multipart` leaves nothing.
/// - `read` returns exactly the bytes asked for, or fails.
/// - `remove` deletes entries (a directory with everything below it) and ignores missing ones.
///
/// Methods block: callers run them on the blocking pool.
pub trait Location: Send + Sync {
    /// The location URI of `rel`, for messages.
    fn describe(&self, rel: &[u8]) -> String;
    /// Whether `stat` returns owner, mode and times (POSIX trees) or only what an object store
    /// keeps in user metadata.
    fn is_object_store(&self) -> bool;
    fn list(&self, dir: &[u8], resume: Option<&[u8]>, max: usize) -> Result<Page, FerryError>;
    fn stat(&self, rel: &[u8]) -> Result<Option<Meta>, FerryError>;
    /// The entry's object tags; `None` where the location has no tags.
    fn tags(&self, _rel: &[u8]) -> Result<Option<String>, FerryError> {
        Ok(None)
    }
    /// `stat` for a name known to be a directory (listed as one), which an object store
    /// answers without looking for an object of that name.
    fn stat_dir(&self, rel: &[u8]) -> Result<Option<Meta>, FerryError> {
        self.stat(rel)
    }
    /// `stat` plus, for a file of at most `max` bytes, its whole content in `buf` (emptied
    /// otherwise). An object store answers both with one request.
    fn fetch(&self, rel: &[u8], max: u64, buf: &mut Vec<u8>) -> Result<Option<Meta>, FerryError> {
        buf.clear();
        let meta = self.stat(rel)?;
        if let Some(m) = &meta {
            if m.kind() == EntryKind::File && m.size <= max {
                self.read(rel, 0, m.size, buf)?;
            }
        }
        Ok(meta)
    }
    /// Reads `[offset, offset + len)` of a file into `buf` (replacing its contents).
    fn read(&self, rel: &[u8], offset: u64, len: u64, buf: &mut Vec<u8>) -> Result<(), FerryError>;
    /// Writes a whole entry with its metadata so that [`Location::commit`] can put it in
    /// place. `crc32c` is the content's CRC, computed at the source: a store that checks it
    /// refuses a mismatch. A store whose writes are atomic and durable by themselves (S3)
    /// writes the entry in place at once; a file system writes a temporary name, so that many
    /// entries can be made durable by one flush instead of one per file.
    fn stage(&self, rel: &[u8], content: Content<'_>, meta: &Meta, crc32c: Option<u32>) -> Result<Staged, FerryError>;
    /// Makes staged entries durable and visible; one result per entry, in order.
    fn commit(&self, staged: Vec<Staged>) -> Vec<Result<(), FerryError>>;
    /// Writes one whole entry: `stage`, then `commit`.
    fn put(&self, rel: &[u8], content: Content<'_>, meta: &Meta, crc32c: Option<u32>) -> Result<(), FerryError> {
        let staged = self.stage(rel, content, meta, crc32c)?;
        self.commit(vec![staged]).pop().unwrap_or(Ok(()))
    }
    /// Starts a multipart write of `size` bytes and returns its id.
    fn create_multipart(&self, rel: &[u8], size: u64, meta: &Meta) -> Result<String, FerryError>;
    /// Ids of unfinished multipart writes to `rel`, oldest first.
    fn pending_multiparts(&self, rel: &[u8]) -> Result<Vec<String>, FerryError>;
    /// Stores one part; returns the store's tag for what it stored (S3: the part's MD5), when
    /// it gives one.
    fn put_part(&self, rel: &[u8], upload: &str, number: u32, offset: u64, data: &[u8], crc32c: u32) -> Result<Option<String>, FerryError>;
    fn list_parts(&self, rel: &[u8], upload: &str) -> Result<Vec<StoredPart>, FerryError>;
    /// Makes the parts `1..=parts` (numbers given) visible as one entry with `meta`;
    /// `crc32c` is the whole content's CRC (S3's FULL_OBJECT checksum). Returns the tag the
    /// entry carries if it holds exactly those parts (S3: the MD5 of the part MD5s, `-N`).
    fn complete_multipart(&self, rel: &[u8], upload: &str, parts: &[u32], size: u64, meta: &Meta, crc32c: u32) -> Result<Option<String>, FerryError>;
    fn abort_multipart(&self, rel: &[u8], upload: &str) -> Result<(), FerryError>;
    /// Deletes entries; returns how many non-directory entries went (for counting).
    fn remove(&self, rels: &[Vec<u8>]) -> Vec<Result<u64, FerryError>>;
}

pub type SharedLocation = Arc<dyn Location>;

/// Whether a location URI names an object store rather than a POSIX tree.
pub fn is_object_uri(uri: &str) -> bool {
    uri.starts_with("s3://")
}

/// Opens the location behind a URI for an execution.
pub fn open(uri: &str, spec: &ExecutionSpec) -> Result<SharedLocation, FerryError> {
    if is_object_uri(uri) {
        Ok(Arc::new(s3::S3Location::open(uri, &spec.s3)?))
    } else {
        Ok(Arc::new(local::location::LocalLocation::open(&crate::exec::context::local_path(uri), &spec.id)?))
    }
}
