//! The local POSIX location: a directory tree on a local disk or on an NFS, SMB or EFS mount.
//!
//! The fast path stays inside this backend:
//! - every access goes through directory handles opened component by component with
//!   `O_NOFOLLOW` ([`Handles`]), so paths of any depth work, a symlink inside the tree is
//!   never followed, and consecutive entries of one directory cost no walk;
//! - reads skip holes with SEEK_DATA/SEEK_HOLE and writes leave them;
//! - a batch of staged files is made durable by one `syncfs`, not one flush per file.
//!
//! Writes go to a temporary name in the entry's directory (`.ferry-tmp-…`), get their metadata,
//! and are renamed into place by `publish`. Whole files are named after the source version
//! they hold, so an interrupted attempt's partial file is found again and written on.

pub mod sys;

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferry_common::error::{ErrorKind, FerryError};
use ferry_common::model::{EntryKind, Timestamp};
use ferry_common::paths;

use super::{
    source_changed, Capabilities, Completed, Durable, Limits, Listed, Location, Meta, Page, Profile, Sink, Source, Special, Staged, Target, Token, Xattrs,
    TEMP_PREFIX,
};
use super::{temp_name, version_temp_name};

/// What a POSIX tree holds: everything, to the nanosecond.
pub fn profile() -> Profile {
    Profile {
        capabilities: Capabilities {
            hard_links: true,
            holes: true,
            xattrs: true,
            special_files: true,
            ownership: true,
            ns_times: true,
            symlink_times: true,
            dir_markers: true,
            atomic_rename: true,
            stored_checksum: false,
            server_side_copy: false,
            complete_listing: true,
            cheap_stat: true,
            object_tags: false,
        },
        limits: Limits { max_name_bytes: Some(255), ..Limits::default() },
    }
}

/// The kind of entry a stat describes.
pub fn kind_of(st: &libc::stat) -> EntryKind {
    match st.st_mode & libc::S_IFMT {
        libc::S_IFDIR => EntryKind::Dir,
        libc::S_IFLNK => EntryKind::Symlink,
        libc::S_IFIFO => EntryKind::Fifo,
        libc::S_IFSOCK => EntryKind::Socket,
        libc::S_IFCHR => EntryKind::CharDev,
        libc::S_IFBLK => EntryKind::BlockDev,
        _ => EntryKind::File,
    }
}

fn meta_of(st: &libc::stat) -> Meta {
    let kind = kind_of(st);
    Meta {
        kind: Some(kind),
        size: if kind == EntryKind::File { st.st_size as u64 } else { 0 },
        mtime: sys::mtime(st),
        atime: Some(sys::atime(st)),
        mode: Some(st.st_mode),
        uid: Some(st.st_uid),
        gid: Some(st.st_gid),
        rdev: if matches!(kind, EntryKind::CharDev | EntryKind::BlockDev) { st.st_rdev } else { 0 },
        links: Some((st.st_dev, st.st_ino, st.st_nlink)),
        ..Meta::default()
    }
}

/// The file type `mknod` makes for a special file's kind.
fn node_type(kind: EntryKind) -> Option<u32> {
    Some(match kind {
        EntryKind::Fifo => libc::S_IFIFO,
        EntryKind::Socket => libc::S_IFSOCK,
        EntryKind::CharDev => libc::S_IFCHR,
        EntryKind::BlockDev => libc::S_IFBLK,
        _ => return None,
    })
}

/// Removes `name` under `dir`, recursively for directories. Returns how many non-directory
/// entries were removed (what `sync` reports as deleted).
///
/// Iterative, with one directory open at a time: a destination may hold a chain of any
/// depth (100,000 directories deep overflowed the stack of a recursive walk, and holding a
/// descriptor per level runs out of them). It goes down by name with `O_NOFOLLOW` and back
/// up through `..`, which must be the very directory it came from (device and inode), or it
/// stops: a directory moved meanwhile must not lead it out of the tree.
pub fn remove_tree_at(dir: RawFd, name: &[u8]) -> io::Result<u64> {
    let Some(st) = sys::lstat_at(dir, name)? else {
        return Ok(0);
    };
    if st.st_mode & libc::S_IFMT != libc::S_IFDIR {
        sys::unlink_at(dir, name, false)?;
        return Ok(1);
    }
    /// A directory on the way down: its name in its parent, its identity, and where its
    /// listing goes on after the subdirectory being removed.
    struct Level {
        name: Vec<u8>,
        id: (u64, u64),
        resume: Option<i64>,
    }
    let id_of = |fd: RawFd| sys::fstat(fd).map(|st| (st.st_dev, st.st_ino));
    let mut cur = sys::open_dir_at(dir, name)?;
    let mut levels = vec![Level { name: name.to_vec(), id: id_of(cur.as_raw_fd())?, resume: None }];
    let mut removed = 0;
    while let Some(top) = levels.last_mut() {
        let resumed = top.resume.take();
        let mut reader = sys::DirReader::new(sys::open_dir_at(cur.as_raw_fd(), b".")?, resumed)?;
        let mut down = None;
        while let Some(e) = reader.next_entry()? {
            if matches!(e.d_type, libc::DT_DIR | libc::DT_UNKNOWN) {
                match sys::lstat_at(reader.fd(), &e.name)? {
                    None => continue,
                    Some(s) if s.st_mode & libc::S_IFMT == libc::S_IFDIR => {
                        down = Some((e.name, e.cookie));
                        break;
                    }
                    Some(_) => {}
                }
            }
            match sys::unlink_at(reader.fd(), &e.name, false) {
                Ok(()) => removed += 1,
                Err(err) if err.raw_os_error() == Some(libc::ENOENT) => {}
                Err(err) => return Err(err),
            }
        }
        drop(reader);
        if let Some((child, cookie)) = down {
            top.resume = Some(cookie);
            let fd = sys::open_dir_at(cur.as_raw_fd(), &child)?;
            levels.push(Level { name: child, id: id_of(fd.as_raw_fd())?, resume: None });
            cur = fd;
            continue;
        }
        if resumed.is_some() {
            // Removals may shift where a listing resumes on some file systems: the
            // directory counts as empty only after a pass from its start.
            continue;
        }
        let Some(done) = levels.pop() else { break };
        let Some(parent_level) = levels.last() else {
            drop(cur);
            sys::unlink_at(dir, &done.name, true)?;
            return Ok(removed);
        };
        let parent = sys::open_at(cur.as_raw_fd(), b"..", libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW, 0)?;
        if id_of(parent.as_raw_fd())? != parent_level.id {
            return Err(io::Error::other(format!("a directory above {} was moved while it was removed; run again", paths::display(&done.name))));
        }
        sys::unlink_at(parent.as_raw_fd(), &done.name, true)?;
        cur = parent;
    }
    Ok(removed)
}

/// How long a cached directory handle is trusted. Consecutive entries of a shard share their
/// directory, so even a short life saves nearly every walk; a short one also bounds how long
/// a directory renamed away by someone else keeps receiving writes.
const HANDLE_TTL: Duration = Duration::from_secs(1);
/// Handles kept at most; the cache starts over when full.
const MAX_HANDLES: usize = 1024;

/// A directory handle and when it was opened.
type Handle = (Arc<OwnedFd>, Instant);

/// Open directory handles by relative path, shared by every mover of the execution.
struct Handles {
    root: Arc<OwnedFd>,
    cached: Mutex<HashMap<Vec<u8>, Handle>>,
}

impl Handles {
    fn lookup(&self, rel: &[u8]) -> Option<Arc<OwnedFd>> {
        let cached = self.cached.lock().unwrap_or_else(|p| p.into_inner());
        cached.get(rel).filter(|(_, at)| at.elapsed() < HANDLE_TTL).map(|(fd, _)| fd.clone())
    }

    /// Directory `rel`, opened without following a symlink anywhere on the way. With
    /// `create`, missing directories are made (owner-only until their metadata is set), and a
    /// file or symlink in the way of one is removed, as rsync does: the entry itself, never
    /// what a symlink points to, so nothing outside the tree is touched.
    fn dir(&self, rel: &[u8], create: bool) -> io::Result<Arc<OwnedFd>> {
        if rel.is_empty() {
            return Ok(self.root.clone());
        }
        if let Some(fd) = self.lookup(rel) {
            return Ok(fd);
        }
        let (parent, name) = paths::split(rel);
        let pfd = self.dir(parent, create)?;
        let fd = match sys::open_dir_at(pfd.as_raw_fd(), name) {
            Ok(fd) => fd,
            Err(e) if create && matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::ENOTDIR) | Some(libc::ELOOP)) => {
                if e.raw_os_error() != Some(libc::ENOENT) {
                    remove_tree_at(pfd.as_raw_fd(), name)?;
                }
                match sys::mkdir_at(pfd.as_raw_fd(), name, 0o700) {
                    Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(e),
                    _ => {}
                }
                sys::open_dir_at(pfd.as_raw_fd(), name)?
            }
            Err(e) => return Err(e),
        };
        let fd = Arc::new(fd);
        let mut cached = self.cached.lock().unwrap_or_else(|p| p.into_inner());
        if cached.len() >= MAX_HANDLES {
            cached.clear();
        }
        cached.insert(rel.to_vec(), (fd.clone(), Instant::now()));
        Ok(fd)
    }

    /// Forgets `rel` and everything below it (removed or replaced by this process).
    fn forget(&self, rel: &[u8]) {
        let mut cached = self.cached.lock().unwrap_or_else(|p| p.into_inner());
        cached.retain(|k, _| !(k.as_slice() == rel || (k.starts_with(rel) && k.get(rel.len()) == Some(&b'/')) || rel.is_empty()));
    }
}

/// An entry's directory handle and its name in it.
type Parent = (Arc<OwnedFd>, Vec<u8>);

/// A local tree as a [`Location`].
pub struct LocalLocation {
    root: PathBuf,
    dirs: Handles,
    /// Distinguishes this process's temporary names of entries made whole (symlinks, nodes,
    /// links) from another worker's running the same shard: the execution's hash, then a
    /// random half (see [`execution_nonce`]).
    nonce: String,
    /// The execution's half of every worker's nonce: what a sweep recognises as its own
    /// execution's debris, whichever worker (perhaps one killed since) left it.
    execution: String,
    is_root: bool,
    /// Temporary files this value created and has not published or dropped (directory,
    /// NUL, name): [`Location::sweep`] removes them at once, other temporaries only when stale.
    temps: Mutex<std::collections::HashSet<Vec<u8>>>,
}

/// How long a temporary file of ferry's shape must have been left untouched (its ctime,
/// which no one can set back) before a sweep takes it for debris. Another execution writing
/// to the same destination touches its temporaries as it writes them.
const STALE_TEMP: Duration = Duration::from_secs(15 * 60);

fn is_hex(s: &[u8]) -> bool {
    s.iter().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
}

/// The TAG of `name` when it is exactly a temporary name ferry makes ([`temp_name`]):
/// `.ferry-tmp-TAG-HASH`, TAG one of `parts`, a process's nonce (16 hex digits; 8 before
/// 0.9), or `v`, `s` or `l` and 8 or 16 hex digits, HASH 16 hex digits. A user's
/// `.ferry-tmp-notes` is not one.
fn temp_tag(name: &[u8]) -> Option<&[u8]> {
    let rest = name.strip_prefix(TEMP_PREFIX)?;
    let dash = rest.iter().rposition(|&b| b == b'-')?;
    let (tag, hash) = (&rest[..dash], &rest[dash + 1..]);
    let nonce = |t: &[u8]| matches!(t.len(), 8 | 16) && is_hex(t);
    let tag_ok = tag == b"parts" || nonce(tag) || (matches!(tag.first(), Some(b'v' | b's' | b'l')) && nonce(&tag[1..]));
    (tag_ok && hash.len() == 16 && is_hex(hash)).then_some(tag)
}

/// Whether `name` is exactly a temporary name ferry makes (see [`temp_tag`]).
pub fn is_temp_name(name: &[u8]) -> bool {
    temp_tag(name).is_some()
}

/// A process's nonce for temporary names in execution `exec`: the execution's hash, then a
/// random half. Workers of one execution never share a name (two may run one shard when a
/// stalled one outlives its lease), yet a sweep knows every worker's debris as its
/// execution's.
fn execution_nonce(exec: &str) -> (String, String) {
    let execution = format!("{:08x}", crc32c::crc32c(exec.as_bytes()));
    (format!("{execution}{:08x}", rand::random::<u32>()), execution)
}

/// Whether the temporary `name` was made by a worker of the execution whose hash is
/// `execution` (a process nonce or an `s`/`l` entry's, never a resumable `v` or `parts` file,
/// which the next attempt picks up by name).
fn made_in_execution(name: &[u8], execution: &str) -> bool {
    let Some(tag) = temp_tag(name) else {
        return false;
    };
    let nonce = match tag.first() {
        Some(b's' | b'l') => &tag[1..],
        _ => tag,
    };
    nonce.len() == 16 && nonce.starts_with(execution.as_bytes())
}

impl LocalLocation {
    /// Opens the tree at `root` for execution `exec`, whose workers' temporary names it
    /// recognises (see [`execution_nonce`]).
    pub fn open(root: &Path, exec: &str) -> Result<Self, FerryError> {
        let root_fd = sys::open_root(root).map_err(|e| FerryError::io("open directory", root, &e))?;
        let (nonce, execution) = execution_nonce(exec);
        Ok(LocalLocation {
            root: root.to_path_buf(),
            dirs: Handles { root: Arc::new(root_fd), cached: Mutex::new(HashMap::new()) },
            nonce,
            execution,
            is_root: sys::is_root(),
            temps: Mutex::new(std::collections::HashSet::new()),
        })
    }

    fn temp_key(dir: &[u8], temp: &[u8]) -> Vec<u8> {
        [dir, b"\0", temp].concat()
    }

    /// Notes (or, with `live` false, forgets) a temporary file of `rel` made by this value.
    fn note_temp(&self, rel: &[u8], temp: &[u8], live: bool) {
        let key = Self::temp_key(paths::split(rel).0, temp);
        let mut temps = self.temps.lock().unwrap_or_else(|p| p.into_inner());
        if live {
            temps.insert(key);
        } else {
            temps.remove(&key);
        }
    }

    fn err(&self, op: &str, rel: &[u8], e: &io::Error) -> FerryError {
        FerryError::io(op, &paths::join(&self.root, rel), e)
    }

    /// The handle of `rel`'s directory and `rel`'s own name; `None` when the directory is not
    /// there (and `create` is off).
    fn parent(&self, rel: &[u8], create: bool) -> Result<Option<Parent>, FerryError> {
        let (parent, name) = paths::split(rel);
        match self.dirs.dir(parent, create) {
            Ok(fd) => Ok(Some((fd, name.to_vec()))),
            Err(e) if !create && matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::ENOTDIR) | Some(libc::ELOOP)) => Ok(None),
            Err(e) => Err(self.err(if create { "create directory" } else { "open directory" }, parent, &e)),
        }
    }

    fn vanished(&self, rel: &[u8]) -> FerryError {
        FerryError::new(ErrorKind::Unavailable, format!("the directory of {} vanished while it was written", self.describe(rel)))
    }

    /// The owner to set: only a privileged process can, and only when the entry has one.
    fn owner(&self, meta: &Meta) -> Option<(u32, u32)> {
        match (self.is_root, meta.uid, meta.gid) {
            (true, Some(u), Some(g)) => Some((u, g)),
            _ => None,
        }
    }

    /// The multipart temporary name of `rel`: deterministic, so every process writing a part
    /// of the same file writes into the same temporary file.
    fn part_temp(rel: &[u8]) -> Vec<u8> {
        temp_name("parts", rel)
    }

    /// A multipart write's id is its temporary file's name, and arrives from readers: it
    /// must be the one [`Self::part_temp`] gives `rel`, or a reader could name any file
    /// (`../../etc/shadow`) to be written, truncated or removed.
    fn check_upload(&self, rel: &[u8], upload: &str) -> Result<(), FerryError> {
        super::check_tree_upload(rel, upload, || self.describe(rel))
    }

    /// Renames a finished temporary entry over `name`; a directory in the way goes first.
    fn rename_into_place(&self, dir: RawFd, temp: &[u8], rel: &[u8]) -> Result<(), FerryError> {
        let (_, name) = paths::split(rel);
        match sys::rename_at(dir, temp, dir, name) {
            Ok(()) => Ok(()),
            Err(e) if matches!(e.raw_os_error(), Some(libc::EISDIR) | Some(libc::ENOTEMPTY) | Some(libc::EEXIST)) => {
                remove_tree_at(dir, name).map_err(|e| self.err("remove", rel, &e))?;
                self.dirs.forget(rel);
                sys::rename_at(dir, temp, dir, name).map_err(|e| self.err("rename into place", rel, &e))
            }
            Err(e) => Err(self.err("rename into place", rel, &e)),
        }
    }

    fn open_file_sink(&self, rel: &[u8], size: u64, resume: Option<&str>, meta: &Meta, xattrs: &Xattrs) -> Result<LocalSink<'_>, FerryError> {
        let (dir, name) = self.parent(rel, true)?.ok_or_else(|| self.vanished(rel))?;
        let d = dir.as_raw_fd();
        // Named after the source version, so only a partial file of the same version resumes.
        let temp = match resume {
            Some(version) => version_temp_name(version, &name),
            None => temp_name(&self.nonce, &name),
        };
        let mut resumed = 0;
        match sys::lstat_at(d, &temp).map_err(|e| self.err("stat", rel, &e))? {
            // Only a partial file that can be ours is written on: see [`sys::open_temp`].
            Some(st) if resume.is_some() && sys::is_own_temp(&st) && st.st_size as u64 <= size => resumed = st.st_size as u64,
            Some(_) => {
                remove_tree_at(d, &temp).map_err(|e| self.err("remove", rel, &e))?;
            }
            None => {}
        }
        self.note_temp(rel, &temp, true);
        Ok(LocalSink { loc: self, rel: rel.to_vec(), dir, fd: None, temp, start: 0, len: size, resumed, meta: Some((meta.clone(), xattrs.clone())) })
    }

    /// Sets owner, extended attributes, mode and times on an open entry, in that order:
    /// chown clears set-id bits and `security.capability`, so both come after it (an ACL
    /// set before the mode agrees with it: the mode is the source's, made from the same
    /// ACL), and times come last because every other change touches them.
    fn apply_meta_fd(&self, fd: RawFd, meta: &Meta, xattrs: Option<&Xattrs>, default_mode: u32) -> io::Result<()> {
        if let Some(x) = xattrs {
            let current = sys::fxattrs(fd)?;
            for (k, _) in &current {
                if !x.iter().any(|(n, _)| n == k) {
                    let _ = sys::fremovexattr(fd, k);
                }
            }
            Self::set_meta_fd(self.owner(meta), fd, meta, x, default_mode)
        } else {
            Self::set_meta_fd(self.owner(meta), fd, meta, &Vec::new(), default_mode)
        }
    }

    /// [`Self::apply_meta_fd`] on a file that has no extended attributes yet (a new
    /// temporary file): nothing to remove first.
    fn set_meta_fd(owner: Option<(u32, u32)>, fd: RawFd, meta: &Meta, xattrs: &Xattrs, default_mode: u32) -> io::Result<()> {
        if let Some((u, g)) = owner {
            sys::fchown(fd, u, g)?;
        }
        for (k, v) in xattrs {
            sys::fsetxattr(fd, k, v)?;
        }
        sys::fchmod(fd, meta.perm().unwrap_or(default_mode))?;
        sys::futimens(fd, meta.atime.unwrap_or(meta.mtime), meta.mtime)
    }

    /// The same for an entry that cannot be opened (symlink, FIFO, socket, device), by name.
    /// Linux refuses `user.*` xattrs on symlinks and a symlink has no mode of its own, so a
    /// symlink gets only its owner and times.
    fn apply_meta_at(&self, dir: RawFd, name: &[u8], meta: &Meta, xattrs: &Xattrs) -> io::Result<()> {
        let symlink = meta.kind() == EntryKind::Symlink;
        if let Some((u, g)) = self.owner(meta) {
            sys::lchown_at(dir, name, u, g)?;
        }
        if !symlink {
            for (k, v) in xattrs {
                sys::lsetxattr_at(dir, name, k, v)?;
            }
        }
        if !symlink {
            sys::chmod_at(dir, name, meta.perm().unwrap_or(0o644))?;
        }
        sys::utimens_at_nofollow(dir, name, meta.atime.unwrap_or(meta.mtime), meta.mtime)
    }
}

impl Location for LocalLocation {
    fn describe(&self, rel: &[u8]) -> String {
        paths::join(&self.root, rel).display().to_string()
    }

    fn capabilities(&self) -> Capabilities {
        profile().capabilities
    }

    fn limits(&self) -> Limits {
        profile().limits
    }

    fn list(&self, dir: &[u8], resume: Option<&[u8]>, max: usize) -> Result<Page, FerryError> {
        let fd = match self.dirs.dir(dir, false) {
            Ok(fd) => fd,
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::ENOTDIR) | Some(libc::ELOOP)) => return Ok(Page::default()),
            Err(e) => return Err(self.err("open directory", dir, &e)),
        };
        let own = sys::open_dir_at(fd.as_raw_fd(), b".").map_err(|e| self.err("list", dir, &e))?;
        let cookie = resume.and_then(|r| r.try_into().ok()).map(i64::from_le_bytes);
        let mut reader = sys::DirReader::new(own, cookie).map_err(|e| self.err("list", dir, &e))?;
        let mut page = Page::default();
        while let Some(raw) = reader.next_entry().map_err(|e| self.err("list", dir, &e))? {
            if raw.name.starts_with(TEMP_PREFIX) {
                continue;
            }
            let Some(st) = sys::lstat_at(reader.fd(), &raw.name).map_err(|e| self.err("stat", &paths::child(dir, &raw.name), &e))? else {
                continue; // removed while listing
            };
            page.entries.push(Listed { name: raw.name, meta: meta_of(&st), complete: true, cursor: raw.cookie.to_le_bytes().to_vec() });
            if page.entries.len() >= max {
                page.resume = Some(raw.cookie.to_le_bytes().to_vec());
                break;
            }
        }
        Ok(page)
    }

    fn stat(&self, rel: &[u8]) -> Result<Option<Meta>, FerryError> {
        if rel.is_empty() {
            return sys::fstat(self.dirs.root.as_raw_fd()).map(|st| Some(meta_of(&st))).map_err(|e| self.err("stat", rel, &e));
        }
        let Some((dir, name)) = self.parent(rel, false)? else {
            return Ok(None);
        };
        let Some(st) = sys::lstat_at(dir.as_raw_fd(), &name).map_err(|e| self.err("stat", rel, &e))? else {
            return Ok(None);
        };
        let mut m = meta_of(&st);
        if m.kind() == EntryKind::Symlink {
            m.link_target = Some(sys::readlink_at(dir.as_raw_fd(), &name).map_err(|e| self.err("read link", rel, &e))?);
        }
        Ok(Some(m))
    }

    fn stat_dir(&self, rel: &[u8]) -> Result<Option<Meta>, FerryError> {
        self.stat(rel)
    }

    fn xattrs(&self, rel: &[u8]) -> Result<Xattrs, FerryError> {
        if rel.is_empty() {
            return sys::fxattrs(self.dirs.root.as_raw_fd()).map_err(|e| self.err("read xattrs of", rel, &e));
        }
        let Some((dir, name)) = self.parent(rel, false)? else {
            return Ok(Vec::new());
        };
        // Not followed: a symlink's own attributes, and Linux keeps no `user.*` ones there.
        match sys::lxattrs_at(dir.as_raw_fd(), &name) {
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(Vec::new()),
            other => other.map_err(|e| self.err("read xattrs of", rel, &e)),
        }
    }

    fn tags(&self, _rel: &[u8]) -> Result<Option<String>, FerryError> {
        Ok(None)
    }

    fn open(&self, rel: &[u8], _from: u64) -> Result<Box<dyn Source + '_>, FerryError> {
        let (dir, name) = self.parent(rel, false)?.ok_or_else(|| source_changed(self.describe(rel), "its directory was removed"))?;
        let fd = match sys::open_read_noatime(dir.as_raw_fd(), &name) {
            Ok(fd) => fd,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Err(source_changed(self.describe(rel), "it was removed")),
            Err(e) if e.raw_os_error() == Some(libc::ELOOP) => return Err(source_changed(self.describe(rel), "it became a symlink")),
            Err(e) => return Err(self.err("open", rel, &e)),
        };
        let st = sys::fstat(fd.as_raw_fd()).map_err(|e| self.err("stat", rel, &e))?;
        if kind_of(&st) != EntryKind::File {
            return Err(source_changed(self.describe(rel), "it is no longer a regular file"));
        }
        let sparse = (st.st_blocks as u64) * 512 < st.st_size as u64;
        Ok(Box::new(LocalSource { loc: self, rel: rel.to_vec(), fd, meta: meta_of(&st), sparse }))
    }

    fn create(&self, rel: &[u8], target: Target<'_>, meta: &Meta, xattrs: &Xattrs) -> Result<Box<dyn Sink + '_>, FerryError> {
        match target {
            Target::File { size, resume } => Ok(Box::new(self.open_file_sink(rel, size, resume, meta, xattrs)?)),
            Target::Part { upload, offset, len, .. } => {
                self.check_upload(rel, upload)?;
                let (dir, _) = self.parent(rel, false)?.ok_or_else(|| self.vanished(rel))?;
                Ok(Box::new(LocalSink {
                    loc: self,
                    rel: rel.to_vec(),
                    dir,
                    fd: None,
                    temp: upload.as_bytes().to_vec(),
                    start: offset,
                    len,
                    resumed: 0,
                    meta: None,
                }))
            }
        }
    }

    fn make(&self, rel: &[u8], special: &Special, meta: &Meta, xattrs: &Xattrs) -> Result<Staged, FerryError> {
        let (dir, name) = self.parent(rel, true)?.ok_or_else(|| self.vanished(rel))?;
        let d = dir.as_raw_fd();
        let temp = temp_name(&format!("s{}", self.nonce), &name);
        let _ = remove_tree_at(d, &temp);
        let made = match special {
            Special::Symlink { target } => sys::symlink_at(target, d, &temp).map_err(|e| self.err("create symlink", rel, &e)),
            // Never opened: a FIFO would block, a device would be read.
            // The node's type comes from its kind, never from a mode that may say otherwise:
            // a "FIFO" must not become a block device.
            Special::Node => node_type(meta.kind())
                .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, format!("a {} is not a special file", meta.kind().as_str())))
                .and_then(|t| {
                    let rdev = if matches!(meta.kind(), EntryKind::CharDev | EntryKind::BlockDev) { meta.rdev } else { 0 };
                    sys::mknod_at(d, &temp, t | meta.perm().unwrap_or(0o644), rdev)
                })
                .map_err(|e| {
                    let mut err = self.err("create special file", rel, &e);
                    if matches!(err.kind, ErrorKind::PermissionDenied | ErrorKind::Unsupported) {
                        err.kind = ErrorKind::Unsupported;
                    }
                    err
                }),
        };
        let done = made.and_then(|()| self.apply_meta_at(d, &temp, meta, xattrs).map_err(|e| self.err("set metadata on", rel, &e)));
        if let Err(e) = done {
            let _ = sys::unlink_at(d, &temp, false);
            return Err(e);
        }
        Ok(Staged { rel: rel.to_vec(), kind: meta.kind(), size: 0, crc32c: None, token: Token::Temp(temp), part_tags: Vec::new(), resumed: 0 })
    }

    fn ensure_dir(&self, rel: &[u8]) -> Result<(), FerryError> {
        self.dirs.dir(rel, true).map(|_| ()).map_err(|e| self.err("create directory", rel, &e))
    }

    fn set_meta(&self, rel: &[u8], meta: &Meta, xattrs: Option<&Xattrs>) -> Result<(), FerryError> {
        match meta.kind() {
            EntryKind::Dir => {
                let fd = self.dirs.dir(rel, true).map_err(|e| self.err("open directory", rel, &e))?;
                self.apply_meta_fd(fd.as_raw_fd(), meta, xattrs, 0o755).map_err(|e| self.err("set metadata on", rel, &e))
            }
            EntryKind::File => {
                let (dir, name) = self.parent(rel, false)?.ok_or_else(|| self.vanished(rel))?;
                let fd =
                    sys::open_at(dir.as_raw_fd(), &name, libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK, 0).map_err(|e| self.err("open", rel, &e))?;
                self.apply_meta_fd(fd.as_raw_fd(), meta, xattrs, 0o644).map_err(|e| self.err("set metadata on", rel, &e))
            }
            _ => {
                let (dir, name) = self.parent(rel, false)?.ok_or_else(|| self.vanished(rel))?;
                self.apply_meta_at(dir.as_raw_fd(), &name, meta, xattrs.unwrap_or(&Vec::new())).map_err(|e| self.err("set metadata on", rel, &e))
            }
        }
    }

    fn link(&self, target: &[u8], rel: &[u8]) -> Result<bool, FerryError> {
        let missing =
            || FerryError::new(ErrorKind::NotFound, format!("cannot link {}: its first path {} was not copied", self.describe(rel), self.describe(target)));
        let (tdir, tname) = self.parent(target, false)?.ok_or_else(missing)?;
        let t = sys::lstat_at(tdir.as_raw_fd(), &tname).map_err(|e| self.err("stat", target, &e))?.ok_or_else(missing)?;
        // The link's directory may hold nothing else, so nothing created it yet.
        let (ldir, lname) = self.parent(rel, true)?.ok_or_else(|| self.vanished(rel))?;
        if let Some(existing) = sys::lstat_at(ldir.as_raw_fd(), &lname).map_err(|e| self.err("stat", rel, &e))? {
            if (existing.st_dev, existing.st_ino) == (t.st_dev, t.st_ino) {
                return Ok(false);
            }
        }
        let temp = temp_name(&format!("l{}", self.nonce), &lname);
        let _ = sys::unlink_at(ldir.as_raw_fd(), &temp, false);
        sys::link_at(tdir.as_raw_fd(), &tname, ldir.as_raw_fd(), &temp).map_err(|e| self.err("create hard link", rel, &e))?;
        self.rename_into_place(ldir.as_raw_fd(), &temp, rel).inspect_err(|_| {
            let _ = sys::unlink_at(ldir.as_raw_fd(), &temp, false);
        })?;
        Ok(true)
    }

    /// A few entries are flushed one by one (a large file, its directory); a batch by one
    /// `syncfs`, which costs about the same as a single flush.
    fn sync(&self, staged: &[Staged], what: Durable) -> Result<(), FerryError> {
        const ONE_BY_ONE: usize = 2;
        if staged.is_empty() {
            return Ok(());
        }
        // A directory's own metadata, or a symlink or node made whole, has no content to
        // flush by itself: one `syncfs` covers them.
        if staged.len() > ONE_BY_ONE || staged.iter().any(|s| s.kind != EntryKind::File) {
            let op = if what == Durable::Content { "flush" } else { "flush renames" };
            return sys::syncfs(self.dirs.root.as_raw_fd()).map_err(|e| self.err(op, b"", &e));
        }
        for s in staged {
            let (dir, name) = self.parent(&s.rel, false)?.ok_or_else(|| self.vanished(&s.rel))?;
            let flushed = match (what, super::temp_of(s)) {
                (Durable::Content, Some((temp, _, _))) => {
                    sys::open_at(dir.as_raw_fd(), temp, libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK, 0).and_then(|fd| sys::fdatasync(fd.as_raw_fd()))
                }
                (Durable::Content, None) => Ok(()),
                (Durable::Names, _) => sys::fdatasync(dir.as_raw_fd()),
            };
            flushed.map_err(|e| {
                self.err(if what == Durable::Content { "flush" } else { "flush the directory of" }, if what == Durable::Content { &s.rel } else { &name }, &e)
            })?;
        }
        Ok(())
    }

    fn check(&self, staged: &Staged, buf: &mut Vec<u8>) -> Result<Option<String>, FerryError> {
        let (Some(want), Some((temp, offset, len))) = (staged.crc32c, super::temp_of(staged)) else {
            return Ok(None);
        };
        if len == 0 {
            // Nothing to read back: the length was set with the metadata.
            return Ok(None);
        }
        let (dir, _) = self.parent(&staged.rel, false)?.ok_or_else(|| self.vanished(&staged.rel))?;
        // O_NOATIME: reading back must not undo the atime just set from the source.
        let fd = sys::open_read_noatime(dir.as_raw_fd(), temp).map_err(|e| self.err("read back", &staged.rel, &e))?;
        let meta = Meta { size: offset + len, ..Meta::default() };
        let mut src = LocalSource { loc: self, rel: staged.rel.clone(), fd, meta, sparse: true };
        let got = super::crc_of(&mut src, offset, len, buf)?;
        if got != want {
            let what = if matches!(staged.token, Token::Range { .. }) { format!("bytes {offset}..{} of ", offset + len) } else { String::new() };
            return Err(FerryError::new(
                ErrorKind::Corrupt,
                format!("CRC32C mismatch after writing {what}{}: source {want:08x}, destination {got:08x}", self.describe(&staged.rel)),
            ));
        }
        Ok(None)
    }

    fn publish(&self, staged: &Staged) -> Result<(), FerryError> {
        let Token::Temp(temp) = &staged.token else {
            return Ok(());
        };
        let (dir, _) = self.parent(&staged.rel, false)?.ok_or_else(|| self.vanished(&staged.rel))?;
        self.rename_into_place(dir.as_raw_fd(), temp, &staged.rel)?;
        self.note_temp(&staged.rel, temp, false);
        Ok(())
    }

    fn discard(&self, staged: &Staged) {
        if let (Token::Temp(temp), Ok(Some((dir, _)))) = (&staged.token, self.parent(&staged.rel, false)) {
            let _ = sys::unlink_at(dir.as_raw_fd(), temp, false);
            self.note_temp(&staged.rel, temp, false);
        }
    }

    fn remove(&self, rels: &[Vec<u8>]) -> Vec<Result<u64, FerryError>> {
        rels.iter()
            .map(|rel| {
                let Some((dir, name)) = self.parent(rel, false)? else {
                    return Ok(0);
                };
                let n = remove_tree_at(dir.as_raw_fd(), &name).map_err(|e| self.err("remove", rel, &e))?;
                self.dirs.forget(rel);
                Ok(n)
            })
            .collect()
    }

    fn sweep(&self, dir: &[u8]) -> Result<(), FerryError> {
        let fd = match self.dirs.dir(dir, false) {
            Ok(fd) => fd,
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::ENOTDIR)) => return Ok(()),
            Err(e) => return Err(self.err("open directory", dir, &e)),
        };
        let own = sys::open_dir_at(fd.as_raw_fd(), b".").map_err(|e| self.err("list", dir, &e))?;
        let mut reader = sys::DirReader::new(own, None).map_err(|e| self.err("list", dir, &e))?;
        // Only what is provably ferry's debris goes: a name of ferry's exact shape, not a
        // directory, and either made by this value, or by any worker of this execution (all
        // its transfers into `dir` are over when it sweeps; a killed worker's entry may carry
        // the source's owner), or owned by this user and untouched for [`STALE_TEMP`]. A
        // user's own `.ferry-tmp-…` entry (any mode, copy included) and another execution's
        // temporary file in the middle of being written both stay.
        let mut debris = Vec::new();
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs() as i64;
        while let Some(raw) = reader.next_entry().map_err(|e| self.err("list", dir, &e))? {
            if !is_temp_name(&raw.name) {
                continue;
            }
            let Some(st) = sys::lstat_at(reader.fd(), &raw.name).map_err(|e| self.err("stat", dir, &e))? else {
                continue;
            };
            if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
                continue;
            }
            let ours = st.st_uid == unsafe { libc::geteuid() };
            let made_here = self.temps.lock().unwrap_or_else(|p| p.into_inner()).contains(&Self::temp_key(dir, &raw.name));
            let this_execution = made_in_execution(&raw.name, &self.execution);
            let stale = now.saturating_sub(st.st_ctime) >= STALE_TEMP.as_secs() as i64;
            if (ours && made_here) || this_execution || (ours && stale) {
                debris.push(raw.name);
            }
        }
        for name in debris {
            sys::unlink_at(fd.as_raw_fd(), &name, false).map_err(|e| self.err("remove temporary file in", dir, &e))?;
            self.temps.lock().unwrap_or_else(|p| p.into_inner()).remove(&Self::temp_key(dir, &name));
        }
        Ok(())
    }

    fn create_multipart(&self, rel: &[u8], size: u64, _meta: &Meta) -> Result<String, FerryError> {
        let (dir, _) = self.parent(rel, true)?.ok_or_else(|| self.vanished(rel))?;
        let d = dir.as_raw_fd();
        let temp = Self::part_temp(rel);
        // The name is predictable: what is there is kept only when it is our own temporary
        // file; anything else goes, and the file is created exclusively.
        // Every part shard of the file may ask at once: one creates it, the others find it.
        let create = || sys::open_at(d, &temp, libc::O_RDWR | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW, 0o600);
        let mut tries = 0;
        let fd = loop {
            tries += 1;
            let created = match sys::open_temp(d, &temp, true) {
                Ok(fd) => break fd,
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => create(),
                Err(_) => remove_tree_at(d, &temp).and_then(|_| create()),
            };
            match created {
                Ok(fd) => break fd,
                Err(e) if e.raw_os_error() == Some(libc::EEXIST) && tries < 5 => continue,
                Err(e) => return Err(self.err("create", rel, &e)),
            }
        };
        sys::ftruncate(fd.as_raw_fd(), size).map_err(|e| self.err("create", rel, &e))?;
        self.note_temp(rel, &temp, true);
        Ok(String::from_utf8_lossy(&temp).into_owned())
    }

    fn complete_multipart(&self, rel: &[u8], upload: &str, done: &Completed<'_>) -> Result<Staged, FerryError> {
        let Completed { size, meta, xattrs, .. } = *done;
        self.check_upload(rel, upload)?;
        let (dir, _) = self.parent(rel, false)?.ok_or_else(|| self.vanished(rel))?;
        let fd = sys::open_temp(dir.as_raw_fd(), upload.as_bytes(), false).map_err(|e| self.err("open", rel, &e))?;
        // Every part's writer holds a lock on its range while its descriptor is open: a writer
        // that stalled past its lease still holds one, and the file is not finished under it.
        if !lock_range_patiently(fd.as_raw_fd(), 0, 0).map_err(|e| self.err("lock", rel, &e))? {
            return Err(FerryError::new(
                ErrorKind::Unavailable,
                format!("a writer of a part of {} still has it open (a stalled agent?): completing it later", self.describe(rel)),
            ));
        }
        sys::ftruncate(fd.as_raw_fd(), size).map_err(|e| self.err("write", rel, &e))?;
        self.apply_meta_fd(fd.as_raw_fd(), meta, Some(xattrs), 0o644).map_err(|e| self.err("set metadata on", rel, &e))?;
        Ok(Staged {
            rel: rel.to_vec(),
            kind: EntryKind::File,
            size,
            // Nothing left to read back: the file is exactly its parts, and each part's range
            // was read back and checked when it was committed. A second whole-file pass would
            // double the reads of every large file.
            crc32c: None,
            token: Token::Temp(upload.as_bytes().to_vec()),
            part_tags: Vec::new(),
            resumed: 0,
        })
    }

    fn abort_multipart(&self, rel: &[u8], upload: &str) -> Result<(), FerryError> {
        self.check_upload(rel, upload)?;
        if let Some((dir, _)) = self.parent(rel, false)? {
            match sys::unlink_at(dir.as_raw_fd(), upload.as_bytes(), false) {
                Err(e) if e.raw_os_error() != Some(libc::ENOENT) => return Err(self.err("remove temporary file of", rel, &e)),
                _ => {}
            }
        }
        Ok(())
    }
}

/// A regular file open for reading.
struct LocalSource<'a> {
    loc: &'a LocalLocation,
    rel: Vec<u8>,
    fd: OwnedFd,
    meta: Meta,
    /// Fewer blocks than bytes: worth asking where the holes are.
    sparse: bool,
}

impl Source for LocalSource<'_> {
    fn meta(&self) -> &Meta {
        &self.meta
    }

    fn xattrs(&mut self) -> Result<Xattrs, FerryError> {
        sys::fxattrs(self.fd.as_raw_fd()).map_err(|e| self.loc.err("read xattrs of", &self.rel, &e))
    }

    fn data(&mut self, pos: u64) -> Result<Option<(u64, u64)>, FerryError> {
        let size = self.meta.size;
        if pos >= size {
            return Ok(None);
        }
        if !self.sparse {
            return Ok(Some((pos, size)));
        }
        let fd = self.fd.as_raw_fd();
        let err = |e: io::Error| self.loc.err("read", &self.rel, &e);
        let Some(start) = sys::seek_data(fd, pos).map_err(err)? else {
            return Ok(None);
        };
        if start >= size {
            return Ok(None);
        }
        let end = sys::seek_hole(fd, start).map_err(err)?.min(size);
        Ok(Some((start, end)))
    }

    fn read_at(&mut self, pos: u64, buf: &mut [u8]) -> Result<(), FerryError> {
        let mut done = 0;
        while done < buf.len() {
            let n = sys::pread(self.fd.as_raw_fd(), &mut buf[done..], pos + done as u64).map_err(|e| self.loc.err("read", &self.rel, &e))?;
            if n == 0 {
                return Err(source_changed(self.loc.describe(&self.rel), "it shrank"));
            }
            done += n;
        }
        Ok(())
    }

    fn unchanged(&mut self) -> Result<bool, FerryError> {
        let st = sys::fstat(self.fd.as_raw_fd()).map_err(|e| self.loc.err("stat", &self.rel, &e))?;
        Ok(st.st_size as u64 == self.meta.size && sys::mtime(&st) == self.meta.mtime)
    }
}

/// How long a part's writer, or the commit, waits for a range another open holds. A writer
/// cut off from its reader keeps its stream, and the range, until the link's idle timeout
/// ends it; a reconnecting reader must not lose an attempt to that.
#[cfg(not(test))]
const RANGE_WAIT: std::time::Duration = std::time::Duration::from_secs(30);
#[cfg(test)]
const RANGE_WAIT: std::time::Duration = std::time::Duration::from_millis(300);

fn lock_range_patiently(fd: RawFd, start: u64, len: u64) -> std::io::Result<bool> {
    let deadline = std::time::Instant::now() + RANGE_WAIT;
    loop {
        if sys::try_lock_range(fd, start, len)? {
            return Ok(true);
        }
        if std::time::Instant::now() >= deadline {
            return Ok(false);
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// A temporary file being written: a whole file, or one range of a multipart write.
struct LocalSink<'a> {
    loc: &'a LocalLocation,
    rel: Vec<u8>,
    dir: Arc<OwnedFd>,
    /// Opened at the first write (or when finished): a batch announces all its entries
    /// before any data, and a descriptor held for each would run into the process's limit.
    fd: Option<OwnedFd>,
    temp: Vec<u8>,
    /// The range this sink writes.
    start: u64,
    len: u64,
    resumed: u64,
    /// A whole file's metadata, applied when it is finished; `None` for a part.
    meta: Option<(Meta, Xattrs)>,
}

impl LocalSink<'_> {
    /// The temporary file: a whole file is created (or written on, when resumed); a part's
    /// shared file must be there already.
    fn file(&mut self) -> Result<RawFd, FerryError> {
        if let Some(fd) = &self.fd {
            return Ok(fd.as_raw_fd());
        }
        let d = self.dir.as_raw_fd();
        let opened = match (&self.meta, self.resumed) {
            (Some(_), 0) => sys::open_at(d, &self.temp, libc::O_RDWR | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW, 0o600).or_else(|e| {
                // Debris of an attempt of this process that was not resumed: replaced.
                if e.raw_os_error() != Some(libc::EEXIST) {
                    return Err(e);
                }
                remove_tree_at(d, &self.temp)?;
                sys::open_at(d, &self.temp, libc::O_RDWR | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW, 0o600)
            }),
            // A resumed file (checked again: the name may have changed hands since), or a
            // multipart write's shared file.
            (meta, _) => sys::open_temp(d, &self.temp, meta.is_some()),
        };
        let fd = opened.map_err(|e| match (e.raw_os_error(), &self.meta) {
            (Some(libc::ENOENT), None) => FerryError::new(ErrorKind::Unavailable, format!("the multipart write of {} vanished", self.loc.describe(&self.rel))),
            _ => self.loc.err("create", &self.rel, &e),
        })?;
        // A part's range is written by one open at a time, and the file is completed only when
        // no range is held: a writer that stalled past its lease with this range open keeps it
        // until it resumes, finds its lease gone and closes; only then may the part be
        // written again, whole, and the file be finished. So no stale write lands after.
        if self.meta.is_none() && !lock_range_patiently(fd.as_raw_fd(), self.start, self.len.max(1)).map_err(|e| self.loc.err("lock", &self.rel, &e))? {
            return Err(FerryError::new(
                ErrorKind::Unavailable,
                format!(
                    "bytes {}..{} of {} are still being written by another writer (a stalled agent?): retrying",
                    self.start,
                    self.start + self.len,
                    self.loc.describe(&self.rel)
                ),
            ));
        }
        Ok(self.fd.insert(fd).as_raw_fd())
    }
}

impl Sink for LocalSink<'_> {
    fn resumed(&self) -> u64 {
        self.resumed
    }

    fn crc_resumed(&mut self, buf: &mut Vec<u8>) -> Result<u32, FerryError> {
        let fd = sys::open_read_noatime(self.dir.as_raw_fd(), &self.temp).map_err(|e| self.loc.err("read back", &self.rel, &e))?;
        let meta = Meta { size: self.start + self.resumed, ..Meta::default() };
        let mut src = LocalSource { loc: self.loc, rel: self.rel.clone(), fd, meta, sparse: true };
        super::crc_of(&mut src, self.start, self.resumed, buf)
    }

    fn write_at(&mut self, pos: u64, data: &[u8], _crc32c: u32) -> Result<(), FerryError> {
        let fd = self.file()?;
        sys::pwrite_all(fd, data, pos).map_err(|e| self.loc.err("write", &self.rel, &e))
    }

    fn finish(mut self: Box<Self>, crc32c: u32) -> Result<Staged, FerryError> {
        let fd = match self.file() {
            Ok(fd) => fd,
            Err(e) => {
                self.abort();
                return Err(e);
            }
        };
        let s = *self;
        let done = match &s.meta {
            Some((meta, xattrs)) => sys::ftruncate(fd, s.len)
                .map_err(|e| s.loc.err("write", &s.rel, &e))
                .and_then(|()| LocalLocation::set_meta_fd(s.loc.owner(meta), fd, meta, xattrs, 0o644).map_err(|e| s.loc.err("set metadata on", &s.rel, &e))),
            None => Ok(()),
        };
        let token = if s.meta.is_some() { Token::Temp(s.temp.clone()) } else { Token::Range { temp: s.temp.clone(), offset: s.start, len: s.len } };
        if let Err(e) = done {
            if s.meta.is_some() {
                let _ = sys::unlink_at(s.dir.as_raw_fd(), &s.temp, false);
            }
            return Err(e);
        }
        Ok(Staged { rel: s.rel, kind: EntryKind::File, size: s.len, crc32c: Some(crc32c), token, part_tags: Vec::new(), resumed: 0 })
    }

    fn abort(self: Box<Self>) {
        if self.meta.is_some() {
            let _ = sys::unlink_at(self.dir.as_raw_fd(), &self.temp, false);
            self.loc.note_temp(&self.rel, &self.temp, false);
        }
    }
}

/// Now, as a timestamp (for entries written without a source, such as reports).
pub fn now() -> Timestamp {
    let d = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    Timestamp { sec: d.as_secs() as i64, nsec: d.subsec_nanos() }
}

/// Multipart writes on a local destination: range fencing between part writers, and the race
/// of part shards opening one upload at once.
#[cfg(test)]
mod multipart_tests {
    use super::*;
    use crate::location::{Completed, Location, Target};

    #[test]
    fn a_part_writer_that_still_holds_its_range_keeps_the_file_from_being_finished_and_its_range_from_a_second_writer() {
        let dir = tempfile::tempdir().unwrap();
        let loc = LocalLocation::open(dir.path(), "t").unwrap();
        let meta = Meta { size: 20, ..Meta::default() };
        let upload = loc.create_multipart(b"big", 20, &meta).unwrap();
        let part = |offset| Target::Part { upload: &upload, offset, len: 10, size: 20 };
        // The first writer of bytes 0..10 stalls with its range open (past its lease, say).
        let mut stalled = loc.create(b"big", part(0), &meta, &Vec::new()).unwrap();
        stalled.write_at(0, &[1; 10], 0).unwrap();
        let mut other = loc.create(b"big", part(10), &meta, &Vec::new()).unwrap();
        other.write_at(10, &[2; 10], 0).unwrap();
        other.finish(0).unwrap();
        // The part is given to another writer: it may not write that range yet.
        let mut second = loc.create(b"big", part(0), &meta, &Vec::new()).unwrap();
        let e = second.write_at(0, &[3; 10], 0).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Unavailable, "{e}");
        // Nor is the file finished under the stalled writer.
        let done = Completed { size: 20, meta: &meta, xattrs: &Vec::new(), crc32c: 0, part_tags: &[] };
        let e = loc.complete_multipart(b"big", &upload, &done).expect_err("refused while a range is held");
        assert_eq!(e.kind, ErrorKind::Unavailable, "{e}");
        // The stalled writer gives up (its lease is gone): its range is free, the part is
        // written again, whole, and the file can be finished.
        stalled.abort();
        let mut again = loc.create(b"big", part(0), &meta, &Vec::new()).unwrap();
        again.write_at(0, &[3; 10], 0).unwrap();
        again.finish(0).unwrap();
        loc.complete_multipart(b"big", &upload, &done).unwrap();
    }

    #[test]
    fn part_shards_that_open_one_multipart_write_at_once_all_get_it() {
        let dir = tempfile::tempdir().unwrap();
        let loc = LocalLocation::open(dir.path(), "t").unwrap();
        let meta = Meta { size: 1 << 20, ..Meta::default() };
        for round in 0..20 {
            let rel = format!("f{round}");
            let ids: Vec<_> = std::thread::scope(|s| {
                let handles: Vec<_> = (0..4).map(|_| s.spawn(|| loc.create_multipart(rel.as_bytes(), 1 << 20, &meta))).collect();
                handles.into_iter().map(|h| h.join().unwrap()).collect()
            });
            for id in &ids {
                assert_eq!(id.as_ref().map_err(|e| e.to_string()), ids[0].as_ref().map_err(|e| e.to_string()), "round {round}");
            }
            assert!(ids[0].is_ok(), "{:?}", ids[0]);
        }
    }
}

/// The directory sweep after an execution's transfers: what it takes for debris.
#[cfg(test)]
mod sweep_tests {
    use super::*;
    use crate::location::{Location, Special};

    fn temps(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> =
            std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).filter(|n| is_temp_name(n.as_bytes())).collect();
        names.sort();
        names
    }

    #[test]
    fn a_killed_workers_entries_go_with_the_sweep_of_its_execution_and_another_executions_stay() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("d")).unwrap();
        // As root the staged symlink carries the source's owner, as a killed worker's would.
        let owner = sys::is_root().then_some(4242);
        let meta = Meta { kind: Some(EntryKind::Symlink), uid: owner, gid: owner, ..Meta::default() };
        let link = Special::Symlink { target: b"../t".to_vec() };
        let killed = LocalLocation::open(dir.path(), "exec-1").unwrap();
        let other_execution = LocalLocation::open(dir.path(), "exec-2").unwrap();
        // Staged and never published: the worker died between the two.
        let _ = killed.make(b"d/l", &link, &meta, &Vec::new()).unwrap();
        let _ = other_execution.make(b"d/m", &link, &meta, &Vec::new()).unwrap();
        std::fs::write(dir.path().join("d/.ferry-tmp-notes"), b"the user's").unwrap();
        assert_eq!(temps(&dir.path().join("d")).len(), 2, "both staged entries are there");

        let survivor = LocalLocation::open(dir.path(), "exec-1").unwrap();
        survivor.sweep(b"d").unwrap();
        let left = temps(&dir.path().join("d"));
        assert_eq!(left.len(), 1, "only the other execution's entry is left: {left:?}");
        assert!(made_in_execution(left[0].as_bytes(), &other_execution.execution), "{left:?}");
        assert!(dir.path().join("d/.ferry-tmp-notes").exists(), "a user's file of a name ferry does not make stays");
    }

    #[test]
    fn temporary_names_of_earlier_releases_are_still_recognised_but_not_as_this_executions() {
        let (nonce, execution) = execution_nonce("e");
        for tag in ["0123abcd", "s0123abcd", "l0123abcd", "v0123abcd", "parts", nonce.as_str(), &format!("s{nonce}")] {
            let name = format!(".ferry-tmp-{tag}-0123456789abcdef");
            assert!(is_temp_name(name.as_bytes()), "{name}");
            assert_eq!(made_in_execution(name.as_bytes(), &execution), tag.contains(&nonce), "{name}");
        }
        for not_ours in [".ferry-tmp-notes", ".ferry-tmp-x0123abcd-0123456789abcdef", ".ferry-tmp-0123abc-0123456789abcdef", ".ferry-tmp-0123abcd-0123"] {
            assert!(!is_temp_name(not_ours.as_bytes()), "{not_ours}");
        }
    }
}
