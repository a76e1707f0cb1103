//! Locations: where data lives. One trait, [`Location`], that every backend implements
//! (`local/`, `s3/`; NFS, SMB and EFS come next), and one conformance suite
//! ([`conformance`]) that every backend passes against a real server.
//!
//! The shards in [`crate::engine`] are written once against this trait. They never ask which
//! backend they talk to: they consult [`Capabilities`] and [`Limits`]. Each backend keeps its
//! own fast path inside (the local one uses cached directory handles, `*at()` calls,
//! SEEK_DATA and one `syncfs` per batch).

pub mod conformance;
pub mod efs;
pub mod empty;
pub mod local;
pub mod nfs;
pub mod s3;
pub mod smb;
pub mod synthetic;

use std::sync::Arc;

use ferry_common::error::{ErrorKind, FerryError};
use ferry_common::model::{EntryKind, ExecutionSpec, Timestamp};

/// What a location can hold and do. Shards branch on these, never on the backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capabilities {
    /// Several names may share one file (`link(2)`).
    pub hard_links: bool,
    /// Sparse files: reads report holes ([`Source::data`]) and writes may leave them.
    pub holes: bool,
    /// Extended attributes are kept: `user.*`, POSIX ACLs, and as root `trusted.*` and
    /// `security.*` (see `local::sys::copied_xattr`).
    pub xattrs: bool,
    /// FIFOs, sockets and device nodes can be created.
    pub special_files: bool,
    /// Owner and group are kept (and set when ferry runs privileged).
    pub ownership: bool,
    /// Times are kept to the nanosecond.
    pub ns_times: bool,
    /// A symlink's own times are kept.
    pub symlink_times: bool,
    /// Directories are entries with metadata of their own, and empty ones survive.
    pub dir_markers: bool,
    /// Writes are staged under a temporary name and renamed into place, so a read-back can
    /// happen before the entry is visible. Without it an entry is visible once written.
    pub atomic_rename: bool,
    /// The location stores a CRC32C of each entry and vouches for it: verification asks for
    /// it instead of reading the content back.
    pub stored_checksum: bool,
    /// Copies within the location can be made by the server, without the bytes passing by.
    pub server_side_copy: bool,
    /// A listing carries full metadata: comparing needs no `stat` per entry.
    pub complete_listing: bool,
    /// A `stat` is a system call, not a network request: per-entry lookups are cheap.
    pub cheap_stat: bool,
    /// Entries carry object tags (ObjectTags PRESERVE reads and writes them).
    pub object_tags: bool,
}

/// What names and sizes a location can hold. Checked before any request is made
/// ([`Limits::refusal`]), so what a destination cannot hold is reported with a stable code
/// instead of failing on the server.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Limits {
    /// Longest name of one component, in bytes.
    pub max_name_bytes: Option<usize>,
    /// Longest relative path below the location's root, in bytes (S3: 1,024 bytes of key
    /// minus the URI's prefix).
    pub max_path_bytes: Option<usize>,
    /// Names must be valid UTF-8.
    pub utf8_names: bool,
    /// Largest file.
    pub max_file_bytes: Option<u64>,
    /// A multipart write is made of parts of at least this many bytes, each but the last of
    /// one size; `None` when ranges can be any size.
    pub part_unit_min: Option<u64>,
    /// Most parts one multipart write may have.
    pub max_parts: Option<u64>,
}

impl Limits {
    /// The size every part of a `size`-byte multipart write must be a multiple of (but the
    /// last): at least `part_unit_min`, and large enough in whole MiB that the write stays
    /// within `max_parts`. `None` when any range will do.
    pub fn part_unit(&self, size: u64) -> Option<u64> {
        let min = self.part_unit_min?;
        let needed = self.max_parts.map_or(0, |max| size.div_ceil(max).div_ceil(1 << 20) << 20);
        Some(min.max(needed))
    }
}

/// Why a destination cannot hold an entry: a stable code for reports and a message naming the
/// limit and the fix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub code: &'static str,
    pub message: String,
}

impl Limits {
    /// Why an entry at `rel` of `kind` and `size` bytes cannot be held here, if it cannot.
    pub fn refusal(&self, caps: &Capabilities, rel: &[u8], kind: EntryKind, size: u64) -> Option<Refusal> {
        let shown = ferry_common::paths::display(rel);
        if self.utf8_names && std::str::from_utf8(rel).is_err() {
            return Some(Refusal {
                code: "NAME_NOT_UTF8",
                message: format!("{shown}: the destination's names must be UTF-8 and this one is not (rename it, or exclude it)"),
            });
        }
        if let Some(max) = self.max_path_bytes {
            if rel.len() > max {
                return Some(Refusal {
                    code: "PATH_TOO_LONG",
                    message: format!(
                        "{shown}: the path is {} bytes and the destination holds at most {max} (S3 keys are limited to 1,024 bytes with the prefix; shorten the path, or exclude it)",
                        rel.len()
                    ),
                });
            }
        }
        if let Some(max) = self.max_name_bytes {
            if rel.split(|&b| b == b'/').any(|c| c.len() > max) {
                return Some(Refusal {
                    code: "NAME_TOO_LONG",
                    message: format!("{shown}: a name is longer than the destination's {max} bytes (rename it, or exclude it)"),
                });
            }
        }
        if let (Some(max), EntryKind::File) = (self.max_file_bytes, kind) {
            if size > max {
                return Some(Refusal {
                    code: "FILE_TOO_LARGE",
                    message: format!("{shown}: {size} bytes is more than the destination's largest file, {max} bytes"),
                });
            }
        }
        if kind.is_special() && !caps.special_files {
            return Some(Refusal {
                code: "SPECIAL_FILE",
                message: format!("the destination cannot hold a {} (use --no-specials to skip them without a report line each)", kind.as_str()),
            });
        }
        None
    }
}

/// Extended attributes as (name, value) pairs (POSIX ACLs among them, as
/// `system.posix_acl_access` and `system.posix_acl_default`).
pub type Xattrs = Vec<(Vec<u8>, Vec<u8>)>;

/// What a location knows about one entry. Fields a backend cannot know are `None`.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct Meta {
    pub kind: Option<EntryKind>,
    pub size: u64,
    pub mtime: Timestamp,
    pub atime: Option<Timestamp>,
    /// The full `st_mode`, file-type bits included.
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    /// Device number of a device node.
    pub rdev: u64,
    /// (device, inode, link count) where names can share a file.
    pub links: Option<(u64, u64, u64)>,
    /// A whole-content CRC32C the location stores and vouches for (S3's checksum).
    pub crc32c: Option<u32>,
    /// The object was uploaded in parts. Some S3-compatible stores report a checksum for it
    /// that is not the whole content's CRC32C, so a mismatch is settled by reading it back.
    pub multipart: bool,
    /// Symlinks: the target (filled in by `stat`; by `list` only where it is free).
    #[serde(with = "serde_bytes")]
    pub link_target: Option<Vec<u8>>,
    /// The store's entity tag (S3's ETag, quotes removed).
    pub etag: Option<String>,
    /// Object tags as a URL-encoded query (`k=v&k2=v2`), written with the entry.
    pub tags: Option<String>,
}

impl Meta {
    pub fn kind(&self) -> EntryKind {
        self.kind.unwrap_or(EntryKind::File)
    }

    /// The permission bits, where known.
    pub fn perm(&self) -> Option<u32> {
        self.mode.map(|m| m & 0o7777)
    }
}

/// One listed name. `complete` is false when the listing carries only size and time (an
/// object listing): a comparison that needs owner, mode or the exact mtime must `stat`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listed {
    pub name: Vec<u8>,
    pub meta: Meta,
    pub complete: bool,
    /// Pass this as `resume` to continue the listing right after this entry.
    pub cursor: Vec<u8>,
}

/// One page of a directory listing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Page {
    pub entries: Vec<Listed>,
    /// Pass this back as `resume` to continue; `None` when the directory is exhausted.
    pub resume: Option<Vec<u8>>,
}

/// An entry other than a regular file or directory, created whole by [`Location::make`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Special {
    Symlink {
        target: Vec<u8>,
    },
    /// A FIFO, socket or device node: `mode` carries its type, `rdev` its device number.
    Node,
}

/// What [`Location::create`] opens a sink for.
#[derive(Clone, Copy, Debug)]
pub enum Target<'a> {
    /// A whole file of `size` bytes. With `resume`, a partial file an interrupted attempt of
    /// the same source version left is kept and written on from its end ([`Sink::resumed`]);
    /// `resume` names that version.
    File { size: u64, resume: Option<&'a str> },
    /// Bytes `[offset, offset + len)` of a multipart write `upload` of a `size`-byte file.
    Part { upload: &'a str, offset: u64, len: u64, size: u64 },
}

/// Where a staged entry waits until [`Location::publish`]. Backend-private: each backend
/// creates and reads only its own variants.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Token {
    /// Written under this temporary name in the entry's directory.
    Temp(Vec<u8>),
    /// Bytes `[offset, offset + len)` written into the temporary file of a multipart write.
    Range { temp: Vec<u8>, offset: u64, len: u64 },
    /// In place already (an object store's PUT): `etag` is what the stored entry should
    /// carry if it holds exactly the bytes sent, when the store's tags are MD5s.
    Placed { etag: Option<String> },
    /// Parts stored in an object store's multipart upload.
    Parts,
}

/// An entry written and not yet committed (see [`crate::engine::commit`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Staged {
    pub rel: Vec<u8>,
    pub kind: EntryKind,
    /// Bytes of content (a part: of its range).
    pub size: u64,
    /// The content's CRC32C as computed at the source; `check` compares what is at rest.
    pub crc32c: Option<u32>,
    pub token: Token,
    /// (part number, MD5 hex) of object parts stored, for the multipart's expected ETag.
    pub part_tags: Vec<(u32, String)>,
    /// Bytes the location already held from an interrupted attempt and kept while this
    /// content was written (an object store's stored parts); bytes a sink reported as
    /// [`Sink::resumed`] up front are not counted again.
    pub resumed: u64,
}

/// A finished multipart write, as it is completed: `crc32c` is the whole content's CRC
/// (S3's FULL_OBJECT checksum), combined from the parts'; `part_tags` the (part number, MD5)
/// the writers recorded, for stores that list parts without them.
#[derive(Clone, Copy, Debug)]
pub struct Completed<'a> {
    pub size: u64,
    pub meta: &'a Meta,
    pub xattrs: &'a Xattrs,
    pub crc32c: u32,
    pub part_tags: &'a [(u32, String)],
}

/// A part already stored in an unfinished multipart write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredPart {
    pub number: u32,
    pub size: u64,
    /// The part's CRC32C when the store reports it.
    pub crc32c: Option<u32>,
    /// The store's tag for the part (an MD5 hex digest on most S3 implementations).
    pub etag: String,
}

/// Which durability [`Location::sync`] makes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durable {
    /// The staged content and metadata.
    Content,
    /// The names published for them.
    Names,
}

/// A location: a tree of entries addressed by relative paths (`a/b/c`: no `.` or `..`, no
/// leading or doubled `/`; see `ferry_common::paths`). Methods block: callers run them on the
/// blocking pool.
///
/// # Contract
/// - `list(dir)` returns every direct child of `dir` exactly once across its pages, with
///   directories as `EntryKind::Dir`, and never ferry's own temporary or marker names.
///   Listing a directory that does not exist returns an empty page.
/// - `stat` returns `None` for a missing entry and otherwise everything the location keeps
///   (a symlink's target included).
/// - Writing an entry is staging it, then committing it (`sync`, `check`, `publish`, `sync`,
///   driven by [`crate::engine::commit`]). Readers of the location see the old entry or the
///   complete new one, never a partial one; metadata is in place when the content appears.
///   Parent directories are created as needed. A staged entry that is never published
///   leaves at most temporary debris that `sweep` removes.
/// - Large content is written as a multipart write: ranges in any order, by any process,
///   rewritten at will; nothing is visible until `complete_multipart` is committed, and
///   `abort_multipart` leaves nothing.
/// - `Source::read_at` returns exactly the bytes asked for, or fails.
/// - `remove` deletes entries (a directory with everything below it) and ignores missing ones.
/// - What `capabilities` declares, the location does; what it does not declare, shards never
///   ask of it.
///
/// # Errors
/// Every error names the path or key, the operation and the fix, and carries an
/// [`ErrorKind`]: `Unavailable` and `Corrupt` are worth retrying, `Unsupported` means the
/// location cannot hold the entry, the rest are permanent.
pub trait Location: Send + Sync {
    /// The URI of `rel`, for messages.
    fn describe(&self, rel: &[u8]) -> String;
    fn capabilities(&self) -> Capabilities;
    fn limits(&self) -> Limits;

    fn list(&self, dir: &[u8], resume: Option<&[u8]>, max: usize) -> Result<Page, FerryError>;
    fn stat(&self, rel: &[u8]) -> Result<Option<Meta>, FerryError>;
    /// `stat` for a name known to be a directory (listed as one), which an object store
    /// answers from the directory's marker rather than an object of that name.
    fn stat_dir(&self, rel: &[u8]) -> Result<Option<Meta>, FerryError>;
    /// The entry's extended attributes (empty without the `xattrs` capability).
    fn xattrs(&self, rel: &[u8]) -> Result<Xattrs, FerryError>;
    /// The entry's object tags, where the location keeps tags.
    fn tags(&self, rel: &[u8]) -> Result<Option<String>, FerryError>;
    /// Opens a regular file for reading from byte `from` on (reads before it may cost a new
    /// request).
    fn open(&self, rel: &[u8], from: u64) -> Result<Box<dyn Source + '_>, FerryError>;

    /// Opens a sink for a file's content, or a range of a multipart write. `meta` and
    /// `xattrs` are applied when the content is finished, before anything is visible.
    fn create(&self, rel: &[u8], target: Target<'_>, meta: &Meta, xattrs: &Xattrs) -> Result<Box<dyn Sink + '_>, FerryError>;
    /// Stages a symlink, FIFO, socket or device node with its metadata.
    fn make(&self, rel: &[u8], special: &Special, meta: &Meta, xattrs: &Xattrs) -> Result<Staged, FerryError>;
    /// Makes sure directory `rel` (and its parents) exists. New directories are owner-only
    /// until `set_meta` gives them their mode; where directories are not entries, a no-op.
    fn ensure_dir(&self, rel: &[u8]) -> Result<(), FerryError>;
    /// Sets metadata on an existing entry in place (a directory's, after its contents; or a
    /// file whose content is current). `xattrs`: the full set to keep, or `None` to leave
    /// them alone.
    fn set_meta(&self, rel: &[u8], meta: &Meta, xattrs: Option<&Xattrs>) -> Result<(), FerryError>;
    /// Makes `rel` a hard link to `target` (replacing what is there); `false` when it already
    /// was one. Only with the `hard_links` capability.
    fn link(&self, target: &[u8], rel: &[u8]) -> Result<bool, FerryError>;

    /// Makes staged content (or the published names) durable.
    fn sync(&self, staged: &[Staged], what: Durable) -> Result<(), FerryError>;
    /// Checks a staged entry at rest against its CRC32C: by reading it back, or by what the
    /// location stores. Returns a note for the report when a weaker check had to do.
    fn check(&self, staged: &Staged, buf: &mut Vec<u8>) -> Result<Option<String>, FerryError>;
    /// Puts a staged entry in place under its final name.
    fn publish(&self, staged: &Staged) -> Result<(), FerryError>;
    /// Drops a staged entry that will not be published.
    fn discard(&self, staged: &Staged);

    /// Deletes entries; returns how many non-directory entries went (for counting).
    fn remove(&self, rels: &[Vec<u8>]) -> Vec<Result<u64, FerryError>>;
    /// Removes ferry's temporary debris in `dir` (interrupted runs', and this execution's
    /// own once nothing of it is written there any more).
    fn sweep(&self, dir: &[u8]) -> Result<(), FerryError>;

    /// Starts a multipart write of `size` bytes and returns its id.
    fn create_multipart(&self, rel: &[u8], size: u64, meta: &Meta) -> Result<String, FerryError>;
    /// Ids of unfinished multipart writes to `rel`, oldest first. A file tree (local, NFS,
    /// SMB) cannot tell which ranges of a temporary file were written: it reports none, the
    /// default, so they are written again.
    fn pending_multiparts(&self, _rel: &[u8]) -> Result<Vec<String>, FerryError> {
        Ok(Vec::new())
    }
    /// The parts of multipart write `upload` that are stored; none by default (see above).
    fn list_parts(&self, _rel: &[u8], _upload: &str) -> Result<Vec<StoredPart>, FerryError> {
        Ok(Vec::new())
    }
    /// Stages the finished multipart write as one entry, as `done` describes it. The staged
    /// entry's `crc32c` is what [`commit`] reads back at rest; a backend whose parts were each
    /// read back when committed may leave it `None`.
    fn complete_multipart(&self, rel: &[u8], upload: &str, done: &Completed<'_>) -> Result<Staged, FerryError>;
    fn abort_multipart(&self, rel: &[u8], upload: &str) -> Result<(), FerryError>;
}

/// An open entry being read.
pub trait Source: Send {
    /// The entry as it was when opened.
    fn meta(&self) -> &Meta;
    /// The entry's extended attributes, read from the open handle.
    fn xattrs(&mut self) -> Result<Xattrs, FerryError>;
    /// The next data region `[start, end)` at or after `pos`, or `None` when only a hole is
    /// left. Without the `holes` capability, `[pos, size)`.
    fn data(&mut self, pos: u64) -> Result<Option<(u64, u64)>, FerryError>;
    /// Fills `buf` from `pos`. A source that is shorter than that changed while it was read.
    fn read_at(&mut self, pos: u64, buf: &mut [u8]) -> Result<(), FerryError>;
    /// Whether size and mtime are still what they were when opened.
    fn unchanged(&mut self) -> Result<bool, FerryError>;
}

/// Content being written, from [`Location::create`].
pub trait Sink: Send {
    /// Bytes (from the target's start) kept from an interrupted attempt; writing resumes there.
    fn resumed(&self) -> u64;
    /// CRC32C of the kept bytes, read back.
    fn crc_resumed(&mut self, buf: &mut Vec<u8>) -> Result<u32, FerryError>;
    /// Writes `data` at `pos` (absolute in the file); `crc32c` is the CRC of `data` as the
    /// source read it, which a location that checks uploads sends along. Ranges never written
    /// stay holes where the location has them, and read as zeros.
    fn write_at(&mut self, pos: u64, data: &[u8], crc32c: u32) -> Result<(), FerryError>;
    /// The content is complete and its CRC32C is `crc32c`: stage it for commit.
    fn finish(self: Box<Self>, crc32c: u32) -> Result<Staged, FerryError>;
    /// Drops what was written.
    fn abort(self: Box<Self>);
}

pub type SharedLocation = Arc<dyn Location>;

/// Convenience built on the core trait. Kept apart so that wrappers and new backends cannot
/// inherit a wrong default.
pub trait LocationExt: Location {
    /// Every name of `dir`, or `None` past `cap` names.
    fn list_all(&self, dir: &[u8], cap: usize) -> Result<Option<Vec<Listed>>, FerryError> {
        let mut out = Vec::new();
        let mut resume: Option<Vec<u8>> = None;
        loop {
            let page = self.list(dir, resume.as_deref(), 4096)?;
            out.extend(page.entries);
            if out.len() > cap {
                return Ok(None);
            }
            match page.resume {
                Some(r) => resume = Some(r),
                None => return Ok(Some(out)),
            }
        }
    }

    /// The CRC32C of a file's whole content: the one the location stores where it vouches
    /// for it, else by reading (holes are not read). Returns the CRC and whether it was read.
    fn checksum(&self, rel: &[u8], meta: &Meta, buf: &mut Vec<u8>) -> Result<(u32, bool), FerryError> {
        if let (Some(c), false) = (meta.crc32c, meta.multipart) {
            return Ok((c, false));
        }
        let mut src = self.open(rel, 0)?;
        let size = src.meta().size;
        crc_of(src.as_mut(), 0, size, buf).map(|c| (c, true))
    }
}

impl<T: Location + ?Sized> LocationExt for T {}

/// CRC32C of `[start, start + len)` of a source, skipping holes without reading them.
pub fn crc_of(src: &mut dyn Source, start: u64, len: u64, buf: &mut Vec<u8>) -> Result<u32, FerryError> {
    use ferry_common::crc;
    // As large as the content needs, up to 1 MiB: small files keep small buffers.
    let want = (len.min(1 << 20) as usize).max(64 << 10);
    if buf.len() < want {
        buf.resize(want, 0);
    }
    let end = start + len;
    let mut acc = 0u32;
    let mut pos = start;
    while pos < end {
        let (data, data_end) = src.data(pos)?.map(|(s, e)| (s.min(end), e.min(end))).unwrap_or((end, end));
        if data > pos {
            acc = crc::combine(acc, crc::zeros(data - pos), data - pos);
            pos = data;
            continue;
        }
        while pos < data_end {
            let n = ((data_end - pos) as usize).min(buf.len());
            src.read_at(pos, &mut buf[..n])?;
            acc = crc::extend(acc, &buf[..n]);
            pos += n as u64;
        }
    }
    Ok(acc)
}

/// The error for an entry that changed while it was read.
pub fn source_changed(what: impl std::fmt::Display, why: &str) -> FerryError {
    FerryError::new(ErrorKind::SourceChanged, format!("source changed while it was read: {what} ({why})"))
}

/// The scheme-level description of a location, known without opening it: an agent that does
/// not reach the destination still plans for what it can hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Profile {
    pub capabilities: Capabilities,
    pub limits: Limits,
}

/// Whether a location URI names an object store rather than a POSIX tree. Only the CLI's
/// argument checks and the opener use it; shards consult [`Profile`] instead.
pub fn is_object_uri(uri: &str) -> bool {
    uri.starts_with("s3://")
}

/// Whether a location URI names an NFS export, spoken in user space.
pub fn is_nfs_uri(uri: &str) -> bool {
    uri.starts_with("nfs://")
}

/// Whether a location URI names an Amazon EFS file system by its ID.
pub fn is_efs_uri(uri: &str) -> bool {
    uri.starts_with("efs://")
}

/// Whether a location URI names an SMB share, spoken in user space.
pub fn is_smb_uri(uri: &str) -> bool {
    uri.starts_with("smb://")
}

/// Whether a location URI names a tree on this host's own file system (or a kernel mount).
pub fn is_local_uri(uri: &str) -> bool {
    !is_object_uri(uri) && !is_nfs_uri(uri) && !is_efs_uri(uri) && !is_smb_uri(uri) && !is_test_uri(uri)
}

/// Whether a location URI names one of the scale-test locations (`synthetic://`, `null://`;
/// see [`synthetic`]), which are for testing only.
pub fn is_test_uri(uri: &str) -> bool {
    synthetic::is_synthetic_uri(uri) || synthetic::is_null_uri(uri)
}

/// What the location behind `uri` can hold.
pub fn profile(uri: &str) -> Result<Profile, FerryError> {
    if is_object_uri(uri) {
        let url = s3::S3Url::parse(uri).map_err(FerryError::config)?;
        Ok(s3::profile(&url))
    } else if is_nfs_uri(uri) || is_efs_uri(uri) {
        Ok(nfs::profile())
    } else if is_smb_uri(uri) {
        Ok(smb::profile())
    } else if is_test_uri(uri) {
        Ok(synthetic::profile())
    } else {
        Ok(local::profile())
    }
}

/// Opens the location behind a URI for an execution.
pub fn open(uri: &str, spec: &ExecutionSpec) -> Result<SharedLocation, FerryError> {
    if is_object_uri(uri) {
        Ok(Arc::new(s3::S3Location::open(uri, &spec.s3)?))
    } else if is_nfs_uri(uri) {
        Ok(Arc::new(nfs::NfsLocation::open(uri, spec.options.fsync)?))
    } else if is_efs_uri(uri) {
        efs::open(uri, &spec.s3, spec.options.fsync)
    } else if is_smb_uri(uri) {
        Ok(Arc::new(smb::open(uri, spec)?))
    } else if synthetic::is_synthetic_uri(uri) {
        Ok(Arc::new(synthetic::Synthetic::open(uri)?))
    } else if synthetic::is_null_uri(uri) {
        Ok(Arc::new(synthetic::Null::open(uri)?))
    } else {
        Ok(Arc::new(local::LocalLocation::open(&local_path(uri), &spec.id)?))
    }
}

/// `file:///x` and `/x` both name the local path `/x`.
pub fn local_path(uri: &str) -> std::path::PathBuf {
    std::path::PathBuf::from(uri.strip_prefix("file://").unwrap_or(uri))
}

/// Every temporary name ferry creates starts with this; source entries with it are ignored.
pub const TEMP_PREFIX: &[u8] = b".ferry-tmp-";

/// A short, fixed-length hash of a name, so temporary names fit even beside 255-byte names.
fn name_hash(name: &[u8]) -> String {
    let h = ((crc32c::crc32c(name) as u64) << 32) | crc32c::crc32c_append(0x2545_f491, name) as u64;
    format!("{h:016x}")
}

/// The temporary name, in the same directory, under which `name` is written: `tag` says
/// whose it is (a process's nonce, a source version, a multipart write), so debris of an
/// interrupted attempt is found again by the attempt that can use it.
pub(crate) fn temp_name(tag: &str, name: &[u8]) -> Vec<u8> {
    let mut t = TEMP_PREFIX.to_vec();
    t.extend_from_slice(format!("{tag}-{}", name_hash(name)).as_bytes());
    t
}

/// Checks a multipart write id that arrived from a reader, for the tree backends (local,
/// NFS, SMB), whose id is the temporary file's name: it must be the one they give `rel`
/// (`temp_name("parts", rel)`), or a reader could name any file (`../../etc/shadow`) to be
/// written, truncated or removed.
pub(crate) fn check_tree_upload(rel: &[u8], upload: &str, describe: impl FnOnce() -> String) -> Result<(), FerryError> {
    if upload.as_bytes() != temp_name("parts", rel).as_slice() {
        return Err(FerryError::new(
            ErrorKind::PermissionDenied,
            format!("multipart write {upload:?} is not one of {} (a reader sent an id this destination never gave)", describe()),
        ));
    }
    Ok(())
}

/// The temporary name of a whole file named after the source `version` it holds, so only a
/// partial file of that same version is resumed.
pub(crate) fn version_temp_name(version: &str, name: &[u8]) -> Vec<u8> {
    temp_name(&format!("v{:08x}", crc32c::crc32c(version.as_bytes())), name)
}

/// The temporary file a staged entry was written to, and the range of it that holds the
/// entry's content: what `sync` flushes and `check` reads back, for tree backends.
pub(crate) fn temp_of(staged: &Staged) -> Option<(&[u8], u64, u64)> {
    match &staged.token {
        Token::Temp(t) => Some((t, 0, staged.size)),
        Token::Range { temp, offset, len } => Some((temp, *offset, *len)),
        _ => None,
    }
}

/// How [`commit`] treats a batch: `--no-fsync` and `--verify none` reach every destination
/// through here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CommitOptions {
    /// Make content durable before it is published, and names after.
    pub fsync: bool,
    /// Check each entry at rest against its CRC32C before it is published.
    pub verify: bool,
}

/// The one commit protocol, for every destination: make the staged batch durable, check each
/// entry at rest against the CRC32C the source read, publish it under its final name, and
/// make the names durable. One result per entry, in order: `Ok(note)` once it is in place
/// (the note says how it was verified when that was weaker than a CRC32C), or the error.
/// An entry that fails its check is discarded, never published.
pub fn commit(loc: &dyn Location, staged: Vec<Staged>, opts: CommitOptions, buf: &mut Vec<u8>) -> Vec<Result<Option<String>, FerryError>> {
    if staged.is_empty() {
        return Vec::new();
    }
    if opts.fsync {
        if let Err(e) = loc.sync(&staged, Durable::Content) {
            for s in &staged {
                loc.discard(s);
            }
            return staged.iter().map(|_| Err(e.clone())).collect();
        }
    }
    let mut results = Vec::with_capacity(staged.len());
    let mut published = Vec::with_capacity(staged.len());
    for s in staged {
        let checked = if opts.verify { loc.check(&s, buf) } else { Ok(None) };
        let done = checked.and_then(|note| loc.publish(&s).map(|()| note));
        match done {
            Ok(note) => {
                results.push(Ok(note));
                published.push(s);
            }
            Err(e) => {
                loc.discard(&s);
                results.push(Err(e));
            }
        }
    }
    if opts.fsync {
        if let Err(e) = loc.sync(&published, Durable::Names) {
            // In place, but maybe not durable: the entry is reported, not claimed done.
            return results.into_iter().map(|r| r.and(Err(e.clone()))).collect();
        }
    }
    results
}

/// Writes one whole file from memory and commits it (reports, tests, small objects).
pub fn put_file(loc: &dyn Location, rel: &[u8], data: &[u8], meta: &Meta, opts: CommitOptions) -> Result<Option<String>, FerryError> {
    let crc = crc32c::crc32c(data);
    let mut sink = loc.create(rel, Target::File { size: data.len() as u64, resume: None }, meta, &Vec::new())?;
    let mut pos = 0;
    for piece in data.chunks(4 << 20) {
        if let Err(e) = sink.write_at(pos, piece, crc32c::crc32c(piece)) {
            sink.abort();
            return Err(e);
        }
        pos += piece.len() as u64;
    }
    let staged = sink.finish(crc)?;
    let mut buf = Vec::new();
    commit(loc, vec![staged], opts, &mut buf).pop().unwrap_or(Ok(None))
}
