//! The local tree behind the [`Location`] trait, for executions whose other side is an object
//! store. Every write goes to a temporary name, is flushed and checked against the source's
//! CRC32C, gets its metadata, and only then is renamed into place.

use std::os::fd::{AsRawFd, OwnedFd};

use ferry_common::error::{ErrorKind, FerryError};
use ferry_common::model::EntryKind;
use ferry_common::paths;

use super::{kind_of, remove_tree_at, sys, LocalTree};
use crate::exec::context::TEMP_PREFIX;
use crate::storage::{Content, Listed, Location, Meta, Page, Staged, StoredPart};

/// A local tree as a [`Location`]. Temporary names carry the execution id, so the next run can
/// tell debris of other runs from its own work in progress.
pub struct LocalLocation {
    tree: LocalTree,
    temp_prefix: Vec<u8>,
    is_root: bool,
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
        crc32c: None,
        multipart: false,
        link_target: None,
        etag: None,
        tags: None,
    }
}

impl LocalLocation {
    pub fn open(root: &std::path::Path, exec_id: &str) -> Result<Self, FerryError> {
        let mut temp_prefix = TEMP_PREFIX.to_vec();
        temp_prefix.extend_from_slice(exec_id.as_bytes());
        temp_prefix.push(b'-');
        Ok(LocalLocation { tree: LocalTree::open(root)?, temp_prefix, is_root: sys::is_root() })
    }

    fn err(&self, op: &str, rel: &[u8], e: &std::io::Error) -> FerryError {
        self.tree.error(op, rel, e)
    }

    /// Opens the parent directory of `rel`, creating missing directories on the way.
    fn parent_dir(&self, rel: &[u8], create: bool) -> Result<Option<OwnedFd>, FerryError> {
        let (parent, _) = paths::split(rel);
        let mut fd = sys::open_dir_at(self.tree.root_fd(), b".").map_err(|e| self.err("open directory", b"", &e))?;
        if parent.is_empty() {
            return Ok(Some(fd));
        }
        for comp in parent.split(|&b| b == b'/') {
            let next = match sys::open_dir_at(fd.as_raw_fd(), comp) {
                Ok(next) => next,
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) && create => {
                    match sys::mkdir_at(fd.as_raw_fd(), comp, 0o755) {
                        Ok(()) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                        Err(e) => return Err(self.err("create directory", parent, &e)),
                    }
                    sys::open_dir_at(fd.as_raw_fd(), comp).map_err(|e| self.err("open directory", parent, &e))?
                }
                Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::ENOTDIR)) => return Ok(None),
                Err(e) => return Err(self.err("open directory", parent, &e)),
            };
            fd = next;
        }
        Ok(Some(fd))
    }

    fn temp_name(&self, tag: &str) -> Vec<u8> {
        let mut t = self.temp_prefix.clone();
        t.extend_from_slice(tag.as_bytes());
        t
    }

    /// The multipart temporary name of `rel`: deterministic, so every process writing a part
    /// of the same file writes into the same temporary file.
    fn part_temp(&self, rel: &[u8]) -> Vec<u8> {
        let h = ((crc32c::crc32c(rel) as u64) << 32) | crc32c::crc32c_append(0x2545_f491, rel) as u64;
        self.temp_name(&format!("mp-{h:016x}"))
    }

    /// Owner, mode and times onto an open file, in the order that keeps each one.
    fn apply_meta_fd(&self, fd: i32, meta: &Meta, default_mode: u32) -> std::io::Result<()> {
        if let (true, Some(uid), Some(gid)) = (self.is_root, meta.uid, meta.gid) {
            sys::fchown(fd, uid, gid)?;
        }
        sys::fchmod(fd, meta.mode.map(|m| m & 0o7777).unwrap_or(default_mode))?;
        sys::futimens(fd, meta.atime.unwrap_or(meta.mtime), meta.mtime)
    }

    /// Renames a finished temporary entry over `name`; a directory in the way goes first.
    fn rename_into_place(&self, dir: i32, temp: &[u8], name: &[u8], rel: &[u8]) -> Result<(), FerryError> {
        match sys::rename_at(dir, temp, dir, name) {
            Ok(()) => Ok(()),
            Err(e) if matches!(e.raw_os_error(), Some(libc::EISDIR) | Some(libc::ENOTEMPTY) | Some(libc::EEXIST)) => {
                remove_tree_at(dir, name).map_err(|e| self.err("remove", rel, &e))?;
                sys::rename_at(dir, temp, dir, name).map_err(|e| self.err("rename into place", rel, &e))
            }
            Err(e) => Err(self.err("rename into place", rel, &e)),
        }
    }

    /// Flushes a written temporary file and checks its bytes against the source's CRC.
    fn flush_and_check(&self, fd: i32, rel: &[u8], size: u64, crc: Option<u32>) -> Result<(), FerryError> {
        sys::fdatasync(fd).map_err(|e| self.err("flush", rel, &e))?;
        if let Some(want) = crc {
            let mut buf = vec![0u8; (size as usize).clamp(1, 1 << 20)];
            let got = crate::exec::transfer::crc_range(fd, 0, size, &mut buf).map_err(|e| self.err("read back", rel, &e))?;
            if got != want {
                return Err(FerryError::new(
                    ErrorKind::Corrupt,
                    format!("CRC32C mismatch after writing {}: source {want:08x}, destination {got:08x}", self.describe(rel)),
                ));
            }
        }
        Ok(())
    }
}

impl Location for LocalLocation {
    fn describe(&self, rel: &[u8]) -> String {
        self.tree.display_path(rel).display().to_string()
    }

    fn is_object_store(&self) -> bool {
        false
    }

    fn list(&self, dir: &[u8], resume: Option<&[u8]>, max: usize) -> Result<Page, FerryError> {
        let fd = match self.tree.open_dir(dir) {
            Ok(fd) => fd,
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::ENOTDIR)) => return Ok(Page::default()),
            Err(e) => return Err(self.err("open directory", dir, &e)),
        };
        let cookie = resume.and_then(|r| r.try_into().ok()).map(i64::from_le_bytes);
        let mut reader = sys::DirReader::new(fd, cookie).map_err(|e| self.err("list", dir, &e))?;
        let mut page = Page::default();
        while let Some(raw) = reader.next_entry().map_err(|e| self.err("list", dir, &e))? {
            if raw.name.starts_with(TEMP_PREFIX) {
                continue;
            }
            let Some(st) = sys::lstat_at(reader.fd(), &raw.name).map_err(|e| self.err("stat", &paths::child(dir, &raw.name), &e))? else {
                continue;
            };
            page.entries.push(Listed { name: raw.name, meta: meta_of(&st), complete: true });
            if page.entries.len() >= max {
                page.resume = Some(raw.cookie.to_le_bytes().to_vec());
                break;
            }
        }
        Ok(page)
    }

    fn stat(&self, rel: &[u8]) -> Result<Option<Meta>, FerryError> {
        let (_, name) = paths::split(rel);
        let st = if rel.is_empty() {
            Some(sys::fstat(self.tree.root_fd()).map_err(|e| self.err("stat", rel, &e))?)
        } else {
            let Some(dir) = self.parent_dir(rel, false)? else { return Ok(None) };
            let st = sys::lstat_at(dir.as_raw_fd(), name).map_err(|e| self.err("stat", rel, &e))?;
            match st {
                Some(st) if kind_of(&st) == EntryKind::Symlink => {
                    let mut m = meta_of(&st);
                    m.link_target = Some(sys::readlink_at(dir.as_raw_fd(), name).map_err(|e| self.err("read link", rel, &e))?);
                    return Ok(Some(m));
                }
                other => other,
            }
        };
        Ok(st.map(|st| meta_of(&st)))
    }

    fn read(&self, rel: &[u8], offset: u64, len: u64, buf: &mut Vec<u8>) -> Result<(), FerryError> {
        let (_, name) = paths::split(rel);
        let dir = self.parent_dir(rel, false)?.ok_or_else(|| FerryError::new(ErrorKind::NotFound, format!("{} no longer exists", self.describe(rel))))?;
        let fd = sys::open_read_noatime(dir.as_raw_fd(), name).map_err(|e| self.err("open", rel, &e))?;
        buf.clear();
        buf.resize(len as usize, 0);
        let mut done = 0usize;
        while done < buf.len() {
            let n = sys::pread(fd.as_raw_fd(), &mut buf[done..], offset + done as u64).map_err(|e| self.err("read", rel, &e))?;
            if n == 0 {
                return Err(FerryError::new(ErrorKind::SourceChanged, format!("source changed while it was read: {} (it shrank)", self.describe(rel))));
            }
            done += n;
        }
        Ok(())
    }

    fn stage(&self, rel: &[u8], content: Content<'_>, meta: &Meta, crc32c: Option<u32>) -> Result<Staged, FerryError> {
        let (_, name) = paths::split(rel);
        let dir = self.parent_dir(rel, true)?.expect("created above");
        let dfd = dir.as_raw_fd();
        if let Content::Dir = content {
            let done = Staged { rel: rel.to_vec(), temp: None, size: 0, crc32c: None };
            if rel.is_empty() {
                self.apply_meta_fd(self.tree.root_fd(), meta, 0o755).map_err(|e| self.err("set metadata on", rel, &e))?;
                return Ok(done);
            }
            // A directory is made in place: its contents go in before and after it, so there is
            // nothing to swap atomically; only something else in its way is removed.
            match sys::lstat_at(dfd, name).map_err(|e| self.err("stat", rel, &e))? {
                Some(st) if kind_of(&st) == EntryKind::Dir => {}
                Some(_) => {
                    remove_tree_at(dfd, name).map_err(|e| self.err("remove", rel, &e))?;
                    sys::mkdir_at(dfd, name, 0o700).map_err(|e| self.err("create directory", rel, &e))?;
                }
                None => sys::mkdir_at(dfd, name, 0o700).map_err(|e| self.err("create directory", rel, &e))?,
            }
            let fd = sys::open_dir_at(dfd, name).map_err(|e| self.err("open directory", rel, &e))?;
            self.apply_meta_fd(fd.as_raw_fd(), meta, 0o755).map_err(|e| self.err("set metadata on", rel, &e))?;
            return Ok(done);
        }
        let temp = self.temp_name(&format!("{:016x}", rand::random::<u64>()));
        let content_kind = if matches!(content, Content::Symlink(_)) { EntryKind::Symlink } else { EntryKind::File };
        let mut size = 0;
        let result = (|| {
            match content {
                Content::Symlink(target) => {
                    sys::symlink_at(target, dfd, &temp).map_err(|e| self.err("create symlink", rel, &e))?;
                    if let (true, Some(uid), Some(gid)) = (self.is_root, meta.uid, meta.gid) {
                        sys::lchown_at(dfd, &temp, uid, gid).map_err(|e| self.err("chown", rel, &e))?;
                    }
                    sys::utimens_at_nofollow(dfd, &temp, meta.atime.unwrap_or(meta.mtime), meta.mtime).map_err(|e| self.err("set times on", rel, &e))
                }
                Content::File(data) => {
                    size = data.len() as u64;
                    let fd = sys::open_at(dfd, &temp, libc::O_RDWR | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW, 0o600)
                        .map_err(|e| self.err("create", rel, &e))?;
                    sys::pwrite_all(fd.as_raw_fd(), data, 0).map_err(|e| self.err("write", rel, &e))?;
                    self.apply_meta_fd(fd.as_raw_fd(), meta, 0o644).map_err(|e| self.err("set metadata on", rel, &e))
                }
                Content::Dir => unreachable!("handled above"),
            }
        })();
        // A symlink has no content to read back; its target went in whole with symlink(2).
        let crc32c = if matches!(content_kind, EntryKind::Symlink) { None } else { crc32c };
        match result {
            Ok(()) => Ok(Staged { rel: rel.to_vec(), temp: Some(temp), size, crc32c }),
            Err(e) => {
                let _ = sys::unlink_at(dfd, &temp, false);
                Err(e)
            }
        }
    }

    /// One flush makes every staged file durable; each is then checked against its CRC and
    /// renamed into place, and a second flush makes the renames durable.
    fn commit(&self, staged: Vec<Staged>) -> Vec<Result<(), FerryError>> {
        if staged.iter().any(|s| s.temp.is_some()) {
            if let Err(e) = sys::syncfs(self.tree.root_fd()) {
                let err = self.err("flush", b"", &e);
                return staged.iter().map(|_| Err(err.clone())).collect();
            }
        }
        let mut results = Vec::with_capacity(staged.len());
        let mut renamed = false;
        for s in &staged {
            let Some(temp) = &s.temp else {
                results.push(Ok(()));
                continue;
            };
            let (_, name) = paths::split(&s.rel);
            let r = (|| {
                let dir = self.parent_dir(&s.rel, false)?.ok_or_else(|| FerryError::new(ErrorKind::NotFound, format!("the directory of {} vanished", self.describe(&s.rel))))?;
                let dfd = dir.as_raw_fd();
                if let Some(want) = s.crc32c {
                    // O_NOATIME: reading back must not undo the atime just set from the source.
                    let fd = sys::open_read_noatime(dfd, temp).map_err(|e| self.err("read back", &s.rel, &e))?;
                    let mut buf = vec![0u8; (s.size as usize).clamp(1, 1 << 20)];
                    let got = crate::exec::transfer::crc_range(fd.as_raw_fd(), 0, s.size, &mut buf).map_err(|e| self.err("read back", &s.rel, &e))?;
                    if got != want {
                        let _ = sys::unlink_at(dfd, temp, false);
                        return Err(FerryError::new(
                            ErrorKind::Corrupt,
                            format!("CRC32C mismatch after writing {}: source {want:08x}, destination {got:08x}", self.describe(&s.rel)),
                        ));
                    }
                }
                self.rename_into_place(dfd, temp, name, &s.rel).inspect_err(|_| {
                    let _ = sys::unlink_at(dfd, temp, false);
                })
            })();
            renamed |= r.is_ok();
            results.push(r);
        }
        if renamed {
            if let Err(e) = sys::syncfs(self.tree.root_fd()) {
                let err = self.err("flush renames", b"", &e);
                return results.into_iter().map(|r| r.and(Err(err.clone()))).collect();
            }
        }
        results
    }

    fn create_multipart(&self, rel: &[u8], size: u64, _meta: &Meta) -> Result<String, FerryError> {
        let dir = self.parent_dir(rel, true)?.expect("created above");
        let temp = self.part_temp(rel);
        let fd = sys::open_at(dir.as_raw_fd(), &temp, libc::O_WRONLY | libc::O_CREAT | libc::O_NOFOLLOW, 0o600).map_err(|e| self.err("create", rel, &e))?;
        sys::ftruncate(fd.as_raw_fd(), size).map_err(|e| self.err("create", rel, &e))?;
        Ok(String::from_utf8_lossy(&temp).into_owned())
    }

    /// A local tree cannot tell which parts of a temporary file were written: none are
    /// reported, so the caller rewrites them.
    fn pending_multiparts(&self, _rel: &[u8]) -> Result<Vec<String>, FerryError> {
        Ok(Vec::new())
    }

    fn put_part(&self, rel: &[u8], upload: &str, _number: u32, offset: u64, data: &[u8], crc32c: u32) -> Result<Option<String>, FerryError> {
        let dir = self.parent_dir(rel, false)?.ok_or_else(|| FerryError::new(ErrorKind::NotFound, format!("the directory of {} vanished", self.describe(rel))))?;
        let fd = sys::open_at(dir.as_raw_fd(), upload.as_bytes(), libc::O_RDWR | libc::O_NOFOLLOW, 0).map_err(|e| self.err("open", rel, &e))?;
        sys::pwrite_all(fd.as_raw_fd(), data, offset).map_err(|e| self.err("write", rel, &e))?;
        sys::fdatasync(fd.as_raw_fd()).map_err(|e| self.err("flush", rel, &e))?;
        let mut back = vec![0u8; data.len().max(1)];
        let got = crate::exec::transfer::crc_range(fd.as_raw_fd(), offset, data.len() as u64, &mut back).map_err(|e| self.err("read back", rel, &e))?;
        if got != crc32c {
            return Err(FerryError::new(ErrorKind::Corrupt, format!("CRC32C mismatch after writing a part of {}", self.describe(rel))));
        }
        Ok(None)
    }

    fn list_parts(&self, _rel: &[u8], _upload: &str) -> Result<Vec<StoredPart>, FerryError> {
        Ok(Vec::new())
    }

    fn complete_multipart(&self, rel: &[u8], upload: &str, _parts: &[u32], size: u64, meta: &Meta, crc32c: u32) -> Result<Option<String>, FerryError> {
        let (_, name) = paths::split(rel);
        let dir = self.parent_dir(rel, false)?.ok_or_else(|| FerryError::new(ErrorKind::NotFound, format!("the directory of {} vanished", self.describe(rel))))?;
        let fd = sys::open_at(dir.as_raw_fd(), upload.as_bytes(), libc::O_RDWR | libc::O_NOFOLLOW, 0).map_err(|e| self.err("open", rel, &e))?;
        sys::ftruncate(fd.as_raw_fd(), size).map_err(|e| self.err("write", rel, &e))?;
        self.apply_meta_fd(fd.as_raw_fd(), meta, 0o644).map_err(|e| self.err("set metadata on", rel, &e))?;
        self.flush_and_check(fd.as_raw_fd(), rel, size, Some(crc32c))?;
        self.rename_into_place(dir.as_raw_fd(), upload.as_bytes(), name, rel)?;
        sys::fdatasync(dir.as_raw_fd()).map_err(|e| self.err("flush directory of", rel, &e))?;
        Ok(None)
    }

    fn abort_multipart(&self, rel: &[u8], upload: &str) -> Result<(), FerryError> {
        if let Some(dir) = self.parent_dir(rel, false)? {
            match sys::unlink_at(dir.as_raw_fd(), upload.as_bytes(), false) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
                Err(e) => return Err(self.err("remove temporary file of", rel, &e)),
            }
        }
        Ok(())
    }

    fn remove(&self, rels: &[Vec<u8>]) -> Vec<Result<u64, FerryError>> {
        rels.iter()
            .map(|rel| {
                let (_, name) = paths::split(rel);
                match self.parent_dir(rel, false)? {
                    None => Ok(0),
                    Some(dir) => remove_tree_at(dir.as_raw_fd(), name).map_err(|e| self.err("remove", rel, &e)),
                }
            })
            .collect()
    }
}
