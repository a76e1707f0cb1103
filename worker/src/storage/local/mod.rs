//! The local POSIX location: a directory tree on a local disk or on an NFS, SMB or EFS mount.
//!
//! All access goes through directory handles opened component by component with
//! `O_NOFOLLOW`, so paths of any depth work and a symlink inside the tree is never followed.

pub mod location;
pub mod sys;

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

use ferry_common::error::FerryError;
use ferry_common::paths;

/// A rooted tree. Cheap to share: the root handle is opened once per execution.
pub struct LocalTree {
    root: PathBuf,
    root_fd: OwnedFd,
}

impl LocalTree {
    pub fn open(root: &Path) -> Result<Self, FerryError> {
        let root_fd = sys::open_root(root).map_err(|e| FerryError::io("open directory", root, &e))?;
        Ok(LocalTree { root: root.to_path_buf(), root_fd })
    }

    pub fn root_fd(&self) -> RawFd {
        self.root_fd.as_raw_fd()
    }

    /// Full path for messages only; never used for I/O.
    pub fn display_path(&self, rel: &[u8]) -> PathBuf {
        paths::join(&self.root, rel)
    }

    /// Opens directory `rel` without following symlinks anywhere along the way.
    pub fn open_dir(&self, rel: &[u8]) -> io::Result<OwnedFd> {
        let mut fd = sys::open_dir_at(self.root_fd(), b".")?;
        if rel.is_empty() {
            return Ok(fd);
        }
        for comp in rel.split(|&b| b == b'/') {
            fd = sys::open_dir_at(fd.as_raw_fd(), comp)?;
        }
        Ok(fd)
    }

    /// Opens directory `rel`, creating what is missing (owner-only until the DirMeta stage
    /// sets the real mode). A file or symlink in the way of a directory goes, as rsync does:
    /// the entry itself is removed, never what a symlink points to, so nothing outside the
    /// tree is touched.
    pub fn ensure_dir(&self, rel: &[u8]) -> io::Result<OwnedFd> {
        let mut fd = sys::open_dir_at(self.root_fd(), b".")?;
        if rel.is_empty() {
            return Ok(fd);
        }
        for comp in rel.split(|&b| b == b'/') {
            fd = match sys::open_dir_at(fd.as_raw_fd(), comp) {
                Ok(sub) => sub,
                Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::ENOTDIR) | Some(libc::ELOOP)) => {
                    if e.raw_os_error() != Some(libc::ENOENT) {
                        remove_tree_at(fd.as_raw_fd(), comp)?;
                    }
                    match sys::mkdir_at(fd.as_raw_fd(), comp, 0o700) {
                        Ok(()) => {}
                        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                        Err(e) => return Err(e),
                    }
                    sys::open_dir_at(fd.as_raw_fd(), comp)?
                }
                Err(e) => return Err(e),
            };
        }
        Ok(fd)
    }

    pub fn error(&self, op: &str, rel: &[u8], err: &io::Error) -> FerryError {
        FerryError::io(op, &self.display_path(rel), err)
    }
}

/// Keeps the most recently used directory handle: shards are binned by directory, so
/// consecutive entries nearly always share their parent and the walk happens once.
#[derive(Default)]
pub struct DirCache {
    current: Option<(Vec<u8>, OwnedFd)>,
}

impl DirCache {
    pub fn get(&mut self, tree: &LocalTree, rel_dir: &[u8]) -> io::Result<RawFd> {
        if !matches!(&self.current, Some((p, _)) if p.as_slice() == rel_dir) {
            let fd = tree.open_dir(rel_dir)?;
            self.current = Some((rel_dir.to_vec(), fd));
        }
        Ok(self.current.as_ref().map(|(_, fd)| fd.as_raw_fd()).expect("set above"))
    }

}

/// The kind of entry a stat describes.
pub fn kind_of(st: &libc::stat) -> ferry_common::model::EntryKind {
    use ferry_common::model::EntryKind;
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

/// Removes `name` under `dir`, recursively for directories. Returns how many non-directory
/// entries were removed (what `sync` reports as deleted).
pub fn remove_tree_at(dir: RawFd, name: &[u8]) -> io::Result<u64> {
    let Some(st) = sys::lstat_at(dir, name)? else { return Ok(0) };
    if st.st_mode & libc::S_IFMT != libc::S_IFDIR {
        sys::unlink_at(dir, name, false)?;
        return Ok(1);
    }
    let sub = sys::open_dir_at(dir, name)?;
    let mut removed = 0;
    let mut reader = sys::DirReader::new(sub, None)?;
    let mut names = Vec::new();
    while let Some(e) = reader.next_entry()? {
        names.push(e.name);
        // Delete in batches so huge directories do not need all names in memory.
        if names.len() == 4096 {
            for n in names.drain(..) {
                removed += remove_tree_at(reader.fd(), &n)?;
            }
        }
    }
    for n in names {
        removed += remove_tree_at(reader.fd(), &n)?;
    }
    drop(reader);
    sys::unlink_at(dir, name, true)?;
    Ok(removed)
}
