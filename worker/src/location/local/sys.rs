//! Thin, safe wrappers over the POSIX `*at` calls the local backend needs.
//!
//! Everything works relative to directory handles, never through full paths: paths of any
//! depth exceed PATH_MAX otherwise, and walking with `O_NOFOLLOW` is what keeps a writer inside
//! its root when a directory on the way is swapped for a symlink.

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use ferry_common::model::Timestamp;

fn cstr(name: &[u8]) -> io::Result<CString> {
    CString::new(name).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "name contains a NUL byte"))
}

fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn retry_eintr<F: FnMut() -> libc::ssize_t>(mut f: F) -> io::Result<usize> {
    loop {
        let r = f();
        if r >= 0 {
            return Ok(r as usize);
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINTR) {
            return Err(e);
        }
    }
}

pub fn open_at(dir: RawFd, name: &[u8], flags: libc::c_int, mode: libc::mode_t) -> io::Result<OwnedFd> {
    let c = cstr(name)?;
    let fd = check(unsafe { libc::openat(dir, c.as_ptr(), flags | libc::O_CLOEXEC, mode as libc::c_uint) })?;
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Opens a directory without following a symlink at `name`.
pub fn open_dir_at(dir: RawFd, name: &[u8]) -> io::Result<OwnedFd> {
    open_at(dir, name, libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW, 0)
}

pub fn open_root(path: &std::path::Path) -> io::Result<OwnedFd> {
    use std::os::unix::ffi::OsStrExt;
    open_at(libc::AT_FDCWD, path.as_os_str().as_bytes(), libc::O_RDONLY | libc::O_DIRECTORY, 0)
}

/// Opens a source file for reading without following symlinks and, where permitted, without
/// touching its atime (O_NOATIME is refused with EPERM for files we do not own as non-root).
pub fn open_read_noatime(dir: RawFd, name: &[u8]) -> io::Result<OwnedFd> {
    let flags = libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK;
    match open_at(dir, name, flags | libc::O_NOATIME, 0) {
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => open_at(dir, name, flags, 0),
        other => other,
    }
}

pub fn fstat(fd: RawFd) -> io::Result<libc::stat> {
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    check(unsafe { libc::fstat(fd, &mut st) })?;
    Ok(st)
}

/// lstat relative to a directory; `Ok(None)` when absent.
pub fn lstat_at(dir: RawFd, name: &[u8]) -> io::Result<Option<libc::stat>> {
    let c = cstr(name)?;
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    match check(unsafe { libc::fstatat(dir, c.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW) }) {
        Ok(_) => Ok(Some(st)),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

pub fn mtime(st: &libc::stat) -> Timestamp {
    Timestamp { sec: st.st_mtime, nsec: st.st_mtime_nsec as u32 }
}
pub fn atime(st: &libc::stat) -> Timestamp {
    Timestamp { sec: st.st_atime, nsec: st.st_atime_nsec as u32 }
}

pub fn pread(fd: RawFd, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    retry_eintr(|| unsafe { libc::pread(fd, buf.as_mut_ptr().cast(), buf.len(), offset as libc::off_t) })
}

pub fn pwrite_all(fd: RawFd, mut buf: &[u8], mut offset: u64) -> io::Result<()> {
    while !buf.is_empty() {
        let n = retry_eintr(|| unsafe { libc::pwrite(fd, buf.as_ptr().cast(), buf.len(), offset as libc::off_t) })?;
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::WriteZero, "write returned 0"));
        }
        buf = &buf[n..];
        offset += n as u64;
    }
    Ok(())
}

/// Next data region at or after `offset` (SEEK_DATA), `None` past the last one.
pub fn seek_data(fd: RawFd, offset: u64) -> io::Result<Option<u64>> {
    let r = unsafe { libc::lseek(fd, offset as libc::off_t, libc::SEEK_DATA) };
    if r < 0 {
        let e = io::Error::last_os_error();
        return if e.raw_os_error() == Some(libc::ENXIO) { Ok(None) } else { Err(e) };
    }
    Ok(Some(r as u64))
}

pub fn seek_hole(fd: RawFd, offset: u64) -> io::Result<u64> {
    let r = unsafe { libc::lseek(fd, offset as libc::off_t, libc::SEEK_HOLE) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(r as u64)
}

/// Takes a write lock on bytes `[start, start + len)` of the open file description `fd`
/// (`len` 0: to the end of the file, however long) without waiting: `Ok(false)` when another
/// description holds an overlapping lock. Open-file-description locks belong to that one open,
/// not to the process, so two sinks of one agent exclude each other as two agents do, and the
/// lock goes when the descriptor closes, also when its process dies.
pub fn try_lock_range(fd: RawFd, start: u64, len: u64) -> io::Result<bool> {
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = libc::F_WRLCK as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = start as libc::off_t;
    fl.l_len = len as libc::off_t;
    match check(unsafe { libc::fcntl(fd, libc::F_OFD_SETLK, &fl) }) {
        Ok(_) => Ok(true),
        Err(e) if matches!(e.raw_os_error(), Some(libc::EAGAIN) | Some(libc::EACCES)) => Ok(false),
        Err(e) => Err(e),
    }
}

pub fn ftruncate(fd: RawFd, len: u64) -> io::Result<()> {
    check(unsafe { libc::ftruncate(fd, len as libc::off_t) }).map(|_| ())
}

pub fn fchown(fd: RawFd, uid: u32, gid: u32) -> io::Result<()> {
    check(unsafe { libc::fchown(fd, uid, gid) }).map(|_| ())
}
pub fn fchmod(fd: RawFd, mode: u32) -> io::Result<()> {
    check(unsafe { libc::fchmod(fd, mode & 0o7777) }).map(|_| ())
}

fn timespecs(atime: Timestamp, mtime: Timestamp) -> [libc::timespec; 2] {
    [libc::timespec { tv_sec: atime.sec, tv_nsec: atime.nsec as _ }, libc::timespec { tv_sec: mtime.sec, tv_nsec: mtime.nsec as _ }]
}

pub fn futimens(fd: RawFd, atime: Timestamp, mtime: Timestamp) -> io::Result<()> {
    let ts = timespecs(atime, mtime);
    check(unsafe { libc::futimens(fd, ts.as_ptr()) }).map(|_| ())
}

/// Sets times on `name` itself, not on what a symlink points to.
pub fn utimens_at_nofollow(dir: RawFd, name: &[u8], atime: Timestamp, mtime: Timestamp) -> io::Result<()> {
    let c = cstr(name)?;
    let ts = timespecs(atime, mtime);
    check(unsafe { libc::utimensat(dir, c.as_ptr(), ts.as_ptr(), libc::AT_SYMLINK_NOFOLLOW) }).map(|_| ())
}

pub fn lchown_at(dir: RawFd, name: &[u8], uid: u32, gid: u32) -> io::Result<()> {
    let c = cstr(name)?;
    check(unsafe { libc::fchownat(dir, c.as_ptr(), uid, gid, libc::AT_SYMLINK_NOFOLLOW) }).map(|_| ())
}

/// Sets the mode of `name` itself, never of what a symlink there points to: an entry
/// swapped for a symlink (by another user of a shared directory, between its creation and
/// this call) must not hand its mode to the link's target.
///
/// `fchmodat(AT_SYMLINK_NOFOLLOW)` is no answer on Linux: the kernel's own call has no
/// flags until fchmodat2 (6.6), and older C libraries refuse the flag (ENOTSUP). `fchmod`
/// cannot open a FIFO (it would block) or a device (it would be opened). So: open the entry
/// with `O_PATH | O_NOFOLLOW`, which opens nothing but a handle to that very inode (a
/// symlink's own, never its target), refuse a symlink, and `chmod` the handle through
/// `/proc/self/fd`, which names exactly that inode: what glibc does for the flag itself.
pub fn chmod_at(dir: RawFd, name: &[u8], mode: u32) -> io::Result<()> {
    let fd = open_at(dir, name, libc::O_PATH | libc::O_NOFOLLOW, 0)?;
    let st = fstat(fd.as_raw_fd())?;
    if st.st_mode & libc::S_IFMT == libc::S_IFLNK {
        return Err(io::Error::new(io::ErrorKind::Unsupported, "is a symlink, whose mode is not set"));
    }
    let path = cstr(format!("/proc/self/fd/{}", fd.as_raw_fd()).as_bytes())?;
    check(unsafe { libc::chmod(path.as_ptr(), mode & 0o7777) }).map(|_| ())
}

/// Opens a temporary file to write into (read-write, never following a symlink, never
/// blocking on a FIFO): only a regular file with no other name and, with `owner`, owned by
/// this user. Anything else at a predictable temporary name may have been put there by
/// another local user (a hard link to a file of theirs, or of root's), and is refused with
/// EPERM. A multipart write's shared file is opened without `owner`: on an NFS mount with
/// root squashing, what root creates belongs to nobody; that file was created exclusively
/// or checked with `owner` when the write started.
pub fn open_temp(dir: RawFd, name: &[u8], owner: bool) -> io::Result<OwnedFd> {
    let fd = open_at(dir, name, libc::O_RDWR | libc::O_NOFOLLOW | libc::O_NONBLOCK, 0)?;
    let st = fstat(fd.as_raw_fd())?;
    let linked_once = st.st_mode & libc::S_IFMT == libc::S_IFREG && st.st_nlink == 1;
    if !linked_once || (owner && !is_own_temp(&st)) {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "a temporary name holds something ferry did not create (not a regular file of this user with one link)",
        ));
    }
    Ok(fd)
}

/// Whether a stat describes a temporary file this process may have made: a regular file
/// owned by this user with no other name.
pub fn is_own_temp(st: &libc::stat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFREG && st.st_uid == unsafe { libc::geteuid() } && st.st_nlink == 1
}

pub fn mkdir_at(dir: RawFd, name: &[u8], mode: u32) -> io::Result<()> {
    let c = cstr(name)?;
    check(unsafe { libc::mkdirat(dir, c.as_ptr(), mode) }).map(|_| ())
}

pub fn mknod_at(dir: RawFd, name: &[u8], mode: u32, rdev: u64) -> io::Result<()> {
    let c = cstr(name)?;
    check(unsafe { libc::mknodat(dir, c.as_ptr(), mode, rdev) }).map(|_| ())
}

pub fn symlink_at(target: &[u8], dir: RawFd, name: &[u8]) -> io::Result<()> {
    let (t, c) = (cstr(target)?, cstr(name)?);
    check(unsafe { libc::symlinkat(t.as_ptr(), dir, c.as_ptr()) }).map(|_| ())
}

pub fn readlink_at(dir: RawFd, name: &[u8]) -> io::Result<Vec<u8>> {
    let c = cstr(name)?;
    let mut buf = vec![0u8; 4096];
    let n = retry_eintr(|| unsafe { libc::readlinkat(dir, c.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) })?;
    buf.truncate(n);
    Ok(buf)
}

pub fn link_at(old_dir: RawFd, old: &[u8], new_dir: RawFd, new: &[u8]) -> io::Result<()> {
    let (o, n) = (cstr(old)?, cstr(new)?);
    check(unsafe { libc::linkat(old_dir, o.as_ptr(), new_dir, n.as_ptr(), 0) }).map(|_| ())
}

pub fn rename_at(old_dir: RawFd, old: &[u8], new_dir: RawFd, new: &[u8]) -> io::Result<()> {
    let (o, n) = (cstr(old)?, cstr(new)?);
    check(unsafe { libc::renameat(old_dir, o.as_ptr(), new_dir, n.as_ptr()) }).map(|_| ())
}

pub fn unlink_at(dir: RawFd, name: &[u8], is_dir: bool) -> io::Result<()> {
    let c = cstr(name)?;
    let flags = if is_dir { libc::AT_REMOVEDIR } else { 0 };
    check(unsafe { libc::unlinkat(dir, c.as_ptr(), flags) }).map(|_| ())
}

pub fn syncfs(fd: RawFd) -> io::Result<()> {
    check(unsafe { libc::syncfs(fd) }).map(|_| ())
}

pub fn fdatasync(fd: RawFd) -> io::Result<()> {
    check(unsafe { libc::fdatasync(fd) }).map(|_| ())
}

/// Whether an extended attribute is copied: `user.*` and the POSIX ACLs always;
/// `trusted.*` and `security.*` when running as root, the only one who may set them (and
/// read `trusted.*`). Other `system.*` names are the file system's own business.
pub fn copied_xattr(name: &[u8], root: bool) -> bool {
    name.starts_with(b"user.")
        || name == b"system.posix_acl_access"
        || name == b"system.posix_acl_default"
        || (root && (name.starts_with(b"trusted.") || name.starts_with(b"security.")))
}

/// The extended attributes of an open file or directory that are copied ([`copied_xattr`]),
/// as (name, value) pairs.
pub fn fxattrs(fd: RawFd) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
    xattrs_with(
        |buf| unsafe { libc::flistxattr(fd, buf.as_mut_ptr().cast(), buf.len()) },
        |name, buf| unsafe { libc::fgetxattr(fd, name.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) },
    )
}

/// Like [`fxattrs`] for a path under a directory, without following a final symlink.
pub fn lxattrs_at(dir: RawFd, name: &[u8]) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let path = proc_path(dir, name)?;
    xattrs_with(
        |buf| unsafe { libc::llistxattr(path.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) },
        |n, buf| unsafe { libc::lgetxattr(path.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) },
    )
}

fn proc_path(dir: RawFd, name: &[u8]) -> io::Result<CString> {
    let mut p = format!("/proc/self/fd/{dir}/").into_bytes();
    p.extend_from_slice(name);
    cstr(&p)
}

fn xattrs_with(list: impl Fn(&mut [u8]) -> libc::ssize_t, get: impl Fn(&CStr, &mut [u8]) -> libc::ssize_t) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let mut names = vec![0u8; 1024];
    let n = loop {
        let r = list(&mut names);
        if r >= 0 {
            break r as usize;
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::ERANGE) => names.resize(names.len() * 4, 0),
            Some(libc::ENOTSUP) => return Ok(Vec::new()),
            _ => return Err(e),
        }
    };
    let mut out = Vec::new();
    let root = is_root();
    for name in names[..n].split(|&b| b == 0).filter(|s| copied_xattr(s, root)) {
        let cname = cstr(name)?;
        let mut value = vec![0u8; 256];
        loop {
            let r = get(&cname, &mut value);
            if r >= 0 {
                value.truncate(r as usize);
                break;
            }
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::ERANGE) => value.resize(value.len() * 4, 0),
                Some(libc::ENODATA) => {
                    value.clear();
                    break;
                }
                _ => return Err(e),
            }
        }
        out.push((name.to_vec(), value));
    }
    Ok(out)
}

pub fn fsetxattr(fd: RawFd, name: &[u8], value: &[u8]) -> io::Result<()> {
    let c = cstr(name)?;
    check(unsafe { libc::fsetxattr(fd, c.as_ptr(), value.as_ptr().cast(), value.len(), 0) }).map(|_| ())
}

pub fn lsetxattr_at(dir: RawFd, name: &[u8], key: &[u8], value: &[u8]) -> io::Result<()> {
    let path = proc_path(dir, name)?;
    let c = cstr(key)?;
    check(unsafe { libc::lsetxattr(path.as_ptr(), c.as_ptr(), value.as_ptr().cast(), value.len(), 0) }).map(|_| ())
}

pub fn fremovexattr(fd: RawFd, name: &[u8]) -> io::Result<()> {
    let c = cstr(name)?;
    check(unsafe { libc::fremovexattr(fd, c.as_ptr()) }).map(|_| ())
}

/// One directory entry from [`DirReader`], with the cookie that resumes right after it.
pub struct RawDirEntry {
    pub name: Vec<u8>,
    pub d_type: u8,
    pub cookie: i64,
}

/// A streaming directory reader that can resume from a cookie (telldir/seekdir), so a huge
/// directory is listed in pages with bounded memory.
pub struct DirReader {
    dirp: *mut libc::DIR,
}

// SAFETY: the DIR stream is owned exclusively by this value and only used through &mut self.
unsafe impl Send for DirReader {}

impl DirReader {
    /// Takes ownership of `fd`.
    pub fn new(fd: OwnedFd, resume: Option<i64>) -> io::Result<Self> {
        use std::os::fd::IntoRawFd;
        let raw = fd.into_raw_fd();
        let dirp = unsafe { libc::fdopendir(raw) };
        if dirp.is_null() {
            let e = io::Error::last_os_error();
            unsafe { libc::close(raw) };
            return Err(e);
        }
        if let Some(cookie) = resume {
            unsafe { libc::seekdir(dirp, cookie as libc::c_long) };
        }
        Ok(DirReader { dirp })
    }

    pub fn fd(&self) -> RawFd {
        unsafe { libc::dirfd(self.dirp) }
    }

    /// The next entry other than `.` and `..`, or `None` at the end.
    pub fn next_entry(&mut self) -> io::Result<Option<RawDirEntry>> {
        loop {
            unsafe { *libc::__errno_location() = 0 };
            let ent = unsafe { libc::readdir64(self.dirp) };
            if ent.is_null() {
                let errno = unsafe { *libc::__errno_location() };
                return if errno == 0 { Ok(None) } else { Err(io::Error::from_raw_os_error(errno)) };
            }
            let ent = unsafe { &*ent };
            let name = unsafe { CStr::from_ptr(ent.d_name.as_ptr()) }.to_bytes();
            if name == b"." || name == b".." {
                continue;
            }
            return Ok(Some(RawDirEntry { name: name.to_vec(), d_type: ent.d_type, cookie: ent.d_off }));
        }
    }
}

impl Drop for DirReader {
    fn drop(&mut self) {
        unsafe { libc::closedir(self.dirp) };
    }
}

impl AsRawFd for DirReader {
    fn as_raw_fd(&self) -> RawFd {
        self.fd()
    }
}

pub fn is_root() -> bool {
    unsafe { libc::geteuid() == 0 }
}

/// Runs one of the reentrant user/group database calls, growing its string buffer while it
/// answers ERANGE (NSS backends such as LDAP can return long entries). `call` returns the
/// call's result code and what it found.
fn nss_lookup<T>(mut call: impl FnMut(&mut [libc::c_char]) -> (libc::c_int, Option<T>)) -> Option<T> {
    let mut buf = vec![0 as libc::c_char; 1024];
    loop {
        match call(&mut buf) {
            (0, found) => return found,
            (libc::ERANGE, _) if buf.len() < (1 << 20) => buf.resize(buf.len() * 4, 0),
            _ => return None,
        }
    }
}

fn owned_name(p: *const libc::c_char) -> String {
    // SAFETY: the database call filled `p` with a NUL-terminated string inside its buffer.
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

/// This host's name for user `uid` (the passwd database, through NSS).
pub fn user_name(uid: u32) -> Option<String> {
    nss_lookup(|buf| {
        let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
        let mut out = std::ptr::null_mut();
        let rc = unsafe { libc::getpwuid_r(uid, &mut pw, buf.as_mut_ptr(), buf.len(), &mut out) };
        (rc, (!out.is_null()).then(|| owned_name(pw.pw_name)))
    })
}

/// This host's name for group `gid`.
pub fn group_name(gid: u32) -> Option<String> {
    nss_lookup(|buf| {
        let mut gr: libc::group = unsafe { std::mem::zeroed() };
        let mut out = std::ptr::null_mut();
        let rc = unsafe { libc::getgrgid_r(gid, &mut gr, buf.as_mut_ptr(), buf.len(), &mut out) };
        (rc, (!out.is_null()).then(|| owned_name(gr.gr_name)))
    })
}

/// This host's uid for user `name`.
pub fn user_id(name: &str) -> Option<u32> {
    let cname = CString::new(name).ok()?;
    nss_lookup(|buf| {
        let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
        let mut out = std::ptr::null_mut();
        let rc = unsafe { libc::getpwnam_r(cname.as_ptr(), &mut pw, buf.as_mut_ptr(), buf.len(), &mut out) };
        (rc, (!out.is_null()).then_some(pw.pw_uid))
    })
}

/// This host's gid for group `name`.
pub fn group_id(name: &str) -> Option<u32> {
    let cname = CString::new(name).ok()?;
    nss_lookup(|buf| {
        let mut gr: libc::group = unsafe { std::mem::zeroed() };
        let mut out = std::ptr::null_mut();
        let rc = unsafe { libc::getgrnam_r(cname.as_ptr(), &mut gr, buf.as_mut_ptr(), buf.len(), &mut out) };
        (rc, (!out.is_null()).then_some(gr.gr_gid))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn chmod_at_never_changes_a_symlinks_target() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target");
        std::fs::write(&target, b"x").unwrap();
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::os::unix::fs::symlink(&target, dir.path().join("entry")).unwrap();
        let fd = open_root(dir.path()).unwrap();
        assert!(chmod_at(fd.as_raw_fd(), b"entry", 0o4777).is_err(), "a symlink in place of the entry is refused");
        assert_eq!(std::fs::metadata(&target).unwrap().permissions().mode() & 0o7777, 0o600, "the target kept its mode");
        // A FIFO (never opened) and a file still get theirs.
        let fifo = CString::new(dir.path().join("fifo").to_str().unwrap()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        chmod_at(fd.as_raw_fd(), b"fifo", 0o640).unwrap();
        chmod_at(fd.as_raw_fd(), b"target", 0o644).unwrap();
        assert_eq!(std::fs::symlink_metadata(dir.path().join("fifo")).unwrap().permissions().mode() & 0o7777, 0o640);
        assert_eq!(std::fs::metadata(&target).unwrap().permissions().mode() & 0o7777, 0o644);
    }

    #[test]
    fn a_temporary_name_holding_what_ferry_did_not_create_is_not_opened() {
        let dir = tempfile::tempdir().unwrap();
        let fd = open_root(dir.path()).unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"precious").unwrap();
        std::os::unix::fs::symlink(&victim, dir.path().join(".ferry-tmp-link")).unwrap();
        std::fs::hard_link(&victim, dir.path().join(".ferry-tmp-hard")).unwrap();
        for name in [&b".ferry-tmp-link"[..], b".ferry-tmp-hard"] {
            assert!(open_temp(fd.as_raw_fd(), name, false).is_err(), "{}", String::from_utf8_lossy(name));
        }
        std::fs::write(dir.path().join(".ferry-tmp-theirs"), b"partial").unwrap();
        std::os::unix::fs::chown(dir.path().join(".ferry-tmp-theirs"), Some(4242), Some(4242)).unwrap();
        assert!(open_temp(fd.as_raw_fd(), b".ferry-tmp-theirs", true).is_err(), "another user's file");
        std::fs::write(dir.path().join(".ferry-tmp-mine"), b"partial").unwrap();
        open_temp(fd.as_raw_fd(), b".ferry-tmp-mine", true).unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
    }
}
