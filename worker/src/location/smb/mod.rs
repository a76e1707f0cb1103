//! An SMB 2/3 share spoken in user space (`smb://[DOMAIN;]USER@HOST[:PORT]/SHARE[/PATH]`):
//! NTLM logon, signing, SMB 3 encryption when the server or the share asks for it, on the
//! `smb` crate (smb-rs). One connection per location, its requests pipelined (see
//! [`share::Share`]); the sync [`Location`] calls block on the location's own runtime.
//!
//! It keeps the local tree's protocol over the wire: a file is created under a temporary name
//! in its directory (`.ferry-tmp-…`), written, given its metadata through the same handle
//! (after the content, so the server's own write-time update cannot undo it), flushed, read
//! back, and renamed over its final name (samba and NTFS keep times across a rename).
//!
//! # What travels, and how
//! - Times: last-write (ferry's mtime), last-access and creation, to 100 ns (FILETIME).
//! - POSIX metadata ferry needs and SMB lacks is kept in one SMB extended attribute (EA),
//!   [`POSIX_EA`] (`v1 MODE MTIME_SEC MTIME_NSEC`, octal mode with its file-type bits): the
//!   permission bits, symlinks (stored, as on S3, as a small file holding the target), and
//!   the mtime's nanoseconds beyond FILETIME's 100 ns. It is trusted only while the entry's
//!   last-write time still agrees with it, so an edit through another client wins.
//! - SMB-only metadata travels SMB → SMB as reserved pseudo extended attributes that only
//!   this backend produces and consumes ([`XATTR_ATTRIBUTES`], [`XATTR_CREATED`],
//!   [`XATTR_SD`]): DOS attributes, creation time, and the security descriptor's parts that
//!   [`SecurityDescriptorCopy`] selects. They are produced only when both ends of the
//!   execution are SMB ([`SmbLocation::open`]'s `carry`), so no other backend ever sees them:
//!   SMB → local carries content, mtime and atime (and the mode and symlinks ferry stored),
//!   not the creation time, DOS attributes or security descriptors, which POSIX trees do not
//!   hold. Other backends' extended attributes are not kept on SMB (no `xattrs`
//!   capability then).
//!
//! What SMB here cannot hold: hard links, FIFOs, sockets and devices, holes (a sparse source
//! is written whole), owners as POSIX ids, names with `\ : * ? " < > |` or longer than 255
//! UTF-16 units.

pub mod error;
pub mod info;
pub mod share;
pub mod url;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use ferry_common::error::{ErrorKind, FerryError};
use ferry_common::model::{EntryKind, SecurityDescriptorCopy, SmbOptions, Timestamp};
use ferry_common::paths;

use self::error::Error;
use self::info::{attr, Basic, Info, SdFlags, WinTime};
use self::share::{Encryption, NewFile, Reader, Share};
use self::url::SmbUrl;
use super::{
    source_changed, temp_name, version_temp_name, Capabilities, Completed, Durable, Limits, Listed, Location, Meta, Page, Profile, Sink, Source, Special,
    Staged, Target, Token, Xattrs, TEMP_PREFIX,
};

/// The SMB EA holding what POSIX trees need and SMB lacks (see the module's documentation).
pub const POSIX_EA: &str = "ferry.posix";
/// Pseudo extended attribute: the DOS attributes (`FILE_ATTRIBUTE_*`, 8 hex digits).
pub const XATTR_ATTRIBUTES: &[u8] = b"ferry.smb.attributes";
/// Pseudo extended attribute: the creation time (FILETIME, decimal).
pub const XATTR_CREATED: &[u8] = b"ferry.smb.created";
/// Pseudo extended attribute: the security descriptor (self-relative bytes), with the parts
/// that `--smb-security-descriptor` selects.
pub const XATTR_SD: &[u8] = b"ferry.smb.sd";

/// Where the password comes from when no file is given.
pub const PASSWORD_ENV: &str = "FERRY_SMB_PASSWORD";

/// What an SMB share holds.
pub fn profile() -> Profile {
    Profile { capabilities: capabilities(true), limits: limits() }
}

fn capabilities(carry: bool) -> Capabilities {
    Capabilities {
        hard_links: false,
        holes: false,
        // Only the pseudo extended attributes of SMB-only metadata, SMB → SMB.
        xattrs: carry,
        special_files: false,
        ownership: false,
        // 100 ns on the wire; the nanoseconds beyond are kept in the POSIX EA.
        ns_times: true,
        symlink_times: true,
        dir_markers: true,
        atomic_rename: true,
        stored_checksum: false,
        server_side_copy: false,
        complete_listing: true,
        cheap_stat: false,
        object_tags: false,
    }
}

fn limits() -> Limits {
    // Names are limited to 255 UTF-16 units, which `Limits` cannot say in bytes: the
    // location refuses longer ones itself (`SmbLocation::path`), before any request.
    Limits { utf8_names: true, ..Limits::default() }
}

/// The password: from `file` (which must be mode 0600 or stricter), else from
/// `FERRY_SMB_PASSWORD`. Never from the URL or the command line.
pub fn password(file: Option<&str>) -> Result<String, FerryError> {
    if let Some(f) = file {
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(f).map_err(|e| FerryError::config(format!("--smb-password-file {f}: {e} (check the path)")))?;
        if meta.permissions().mode() & 0o077 != 0 {
            return Err(FerryError::config(format!(
                "--smb-password-file {f} is readable by others (mode {:o}): chmod 600 {f}",
                meta.permissions().mode() & 0o777
            )));
        }
        let text = std::fs::read_to_string(f).map_err(|e| FerryError::config(format!("--smb-password-file {f}: {e}")))?;
        let pw = text.strip_suffix('\n').map(|t| t.strip_suffix('\r').unwrap_or(t)).unwrap_or(&text);
        if pw.is_empty() {
            return Err(FerryError::config(format!("--smb-password-file {f} is empty (write the password in it)")));
        }
        return Ok(pw.to_string());
    }
    match std::env::var(PASSWORD_ENV) {
        Ok(p) if !p.is_empty() => Ok(p),
        _ => Err(FerryError::config(format!(
            "no SMB password: set {PASSWORD_ENV} or give --smb-password-file FILE (mode 0600); passwords never go in the URL or on the command line"
        ))),
    }
}

/// The security-descriptor parts a [`SecurityDescriptorCopy`] selects.
pub fn sd_flags(c: SecurityDescriptorCopy) -> SdFlags {
    match c {
        SecurityDescriptorCopy::None => SdFlags::NONE,
        SecurityDescriptorCopy::OwnerDacl => SdFlags::OWNER_DACL,
        SecurityDescriptorCopy::OwnerDaclSacl => SdFlags::OWNER_DACL_SACL,
    }
}

fn kind_of(e: &Error) -> ErrorKind {
    match e {
        Error::LogonFailure { .. } | Error::AccessDenied { .. } | Error::PrivilegeNotHeld { .. } => ErrorKind::PermissionDenied,
        Error::BadShare { .. } | Error::NotFound { .. } => ErrorKind::NotFound,
        Error::Exists { .. } | Error::NotEmpty { .. } => ErrorKind::AlreadyExists,
        Error::Unreachable { .. } => ErrorKind::Unavailable,
        Error::WrongType { .. } => ErrorKind::Other,
        Error::Other(s) if s.contains("DiskFull") || s.contains("QuotaExceeded") => ErrorKind::NoSpace,
        Error::Other(s) if s.contains("ObjectNameInvalid") || s.contains("NotSupported") => ErrorKind::Unsupported,
        Error::Other(_) => ErrorKind::Other,
    }
}

fn win_time(t: Timestamp) -> WinTime {
    WinTime::from_unix(t.sec, t.nsec.min(999_999_999)).unwrap_or(WinTime(1))
}

fn timestamp(t: WinTime) -> Timestamp {
    let (sec, nsec) = t.unix();
    Timestamp { sec, nsec }
}

/// What the POSIX EA holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Posix {
    mode: u32,
    mtime: Timestamp,
}

fn posix_value(meta: &Meta, kind: EntryKind) -> Vec<u8> {
    let type_bits = match kind {
        EntryKind::Dir => libc::S_IFDIR,
        EntryKind::Symlink => libc::S_IFLNK,
        _ => libc::S_IFREG,
    };
    let perm = meta.perm().unwrap_or(match kind {
        EntryKind::Dir => 0o755,
        EntryKind::Symlink => 0o777,
        _ => 0o644,
    });
    format!("v1 {:o} {} {}", type_bits | perm, meta.mtime.sec, meta.mtime.nsec).into_bytes()
}

fn parse_posix(v: &[u8]) -> Option<Posix> {
    let text = std::str::from_utf8(v).ok()?.trim_end_matches('\0');
    let mut it = text.split(' ');
    if it.next()? != "v1" {
        return None;
    }
    let mode = u32::from_str_radix(it.next()?, 8).ok()?;
    let sec = it.next()?.parse().ok()?;
    let nsec: u32 = it.next()?.parse().ok().filter(|n| *n < 1_000_000_000)?;
    Some(Posix { mode, mtime: Timestamp { sec, nsec } })
}

/// The entry as ferry sees it, from the SMB information and the POSIX EA (trusted while the
/// last-write time agrees with its mtime).
fn meta_of(info: &Info, ea: Option<&[u8]>) -> Meta {
    let mut m = Meta {
        kind: Some(if info.is_dir { EntryKind::Dir } else { EntryKind::File }),
        size: info.size,
        mtime: timestamp(info.last_write),
        atime: Some(timestamp(info.last_access)),
        ..Meta::default()
    };
    if let Some(p) = ea.and_then(parse_posix).filter(|p| win_time(p.mtime) == info.last_write) {
        m.mtime = p.mtime;
        let kind = match p.mode & libc::S_IFMT {
            libc::S_IFLNK if !info.is_dir => EntryKind::Symlink,
            _ => m.kind(),
        };
        let type_bits = match kind {
            EntryKind::Dir => libc::S_IFDIR,
            EntryKind::Symlink => libc::S_IFLNK,
            _ => libc::S_IFREG,
        };
        m.kind = Some(kind);
        m.mode = Some(type_bits | (p.mode & 0o7777));
        if kind == EntryKind::Symlink {
            m.size = 0;
        }
    }
    m
}

/// Why a name cannot be held on SMB, checked before any request.
fn name_refusal(name: &str) -> Option<&'static str> {
    if name.chars().any(|c| matches!(c, '\\' | ':' | '*' | '?' | '"' | '<' | '>' | '|') || (c as u32) < 0x20) {
        Some("SMB names cannot hold \\ : * ? \" < > | or control characters (rename it, or exclude it)")
    } else if name.encode_utf16().count() > 255 {
        Some("SMB names hold at most 255 UTF-16 units (rename it, or exclude it)")
    } else {
        None
    }
}

/// Runs `f` on the location's runtime. Callers normally run on the blocking pool; one that
/// runs inside a runtime (an opener or a drop in async code) gets a thread of its own, as
/// tokio cannot block a thread that drives tasks.
fn block_on<F: std::future::Future + Send>(rt: &tokio::runtime::Runtime, f: F) -> F::Output
where
    F::Output: Send,
{
    if tokio::runtime::Handle::try_current().is_ok() {
        std::thread::scope(|s| s.spawn(|| rt.block_on(f)).join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
    } else {
        rt.block_on(f)
    }
}

/// A staged temporary file's key: (entry, temporary name).
type StagedKey = (Vec<u8>, Vec<u8>);

/// An SMB share (or a directory in one) as a [`Location`].
pub struct SmbLocation {
    url: SmbUrl,
    /// Runs the connection's I/O; shut down in the background on drop.
    runtime: Option<tokio::runtime::Runtime>,
    share: Option<Share>,
    /// Directories known to exist (share-relative paths).
    dirs: Mutex<HashSet<String>>,
    /// Distinguishes this process's temporary names.
    nonce: String,
    /// The security-descriptor parts carried SMB → SMB.
    sd: SdFlags,
    /// SMB-only metadata is carried as pseudo extended attributes (both ends are SMB).
    carry: bool,
    /// Staged temporary files, still open, by (entry, temporary name): flushed, read back and
    /// renamed through the handle that wrote them.
    staged: Mutex<HashMap<StagedKey, Arc<NewFile>>>,
}

impl Drop for SmbLocation {
    fn drop(&mut self) {
        let staged: Vec<Arc<NewFile>> = self.staged.lock().map(|mut s| s.drain().map(|(_, f)| f).collect()).unwrap_or_default();
        if let Some(rt) = self.runtime.take() {
            let share = self.share.take();
            block_on(&rt, async {
                for f in staged {
                    let _ = f.close().await;
                }
                if let Some(s) = share {
                    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), s.close()).await;
                }
            });
            rt.shutdown_background();
        }
    }
}

impl SmbLocation {
    /// Connects to the share named by `uri` as its user, with the password from
    /// [`password`]. `carry`: SMB-only metadata travels as pseudo extended attributes (set
    /// when both ends of the execution are SMB). The directory below the share need not
    /// exist yet; `stat(b"")` says whether it does.
    pub fn open(uri: &str, opts: &SmbOptions, carry: bool) -> Result<SmbLocation, FerryError> {
        let url = SmbUrl::parse(uri).map_err(FerryError::config)?;
        let pw = password(opts.password_file.as_deref()).map_err(|e| FerryError::new(e.kind, format!("{}: {}", url.display(), e.message)))?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("ferry-smb")
            .enable_all()
            .build()
            .map_err(|e| FerryError::new(ErrorKind::Other, format!("cannot start the SMB client's runtime: {e}")))?;
        let connect = Share::connect(&url.host, url.port, &url.share, url.domain.as_deref(), &url.user, &pw, Encryption::IfServerAsks);
        let share = block_on(&runtime, async { tokio::time::timeout(std::time::Duration::from_secs(30), connect).await });
        let share = match share {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                runtime.shutdown_background();
                return Err(FerryError::new(
                    if kind_of(&e) == ErrorKind::Unavailable { ErrorKind::Unavailable } else { ErrorKind::Config },
                    format!("{}: {e}", url.display()),
                ));
            }
            Err(_) => {
                runtime.shutdown_background();
                return Err(FerryError::new(
                    ErrorKind::Unavailable,
                    format!("{}: the SMB server did not answer within 30 s (check the host, the port and firewalls)", url.display()),
                ));
            }
        };
        Ok(SmbLocation {
            url,
            runtime: Some(runtime),
            share: Some(share),
            dirs: Mutex::new(HashSet::new()),
            nonce: format!("{:08x}", rand::random::<u32>()),
            sd: sd_flags(opts.security_descriptor_copy),
            carry,
            staged: Mutex::new(HashMap::new()),
        })
    }

    fn block<F: std::future::Future + Send>(&self, f: F) -> F::Output
    where
        F::Output: Send,
    {
        block_on(self.runtime.as_ref().expect("present until drop"), f)
    }

    fn share(&self) -> &Share {
        self.share.as_ref().expect("present until drop")
    }

    /// The share-relative path of `rel`, refused before any request when SMB cannot hold it.
    fn path(&self, rel: &[u8]) -> Result<String, FerryError> {
        let rel_str = std::str::from_utf8(rel).map_err(|_| {
            FerryError::new(ErrorKind::Unsupported, format!("{}: SMB names must be UTF-8 and this one is not (rename it, or exclude it)", paths::display(rel)))
        })?;
        for name in rel_str.split('/').filter(|n| !n.is_empty()) {
            if let Some(why) = name_refusal(name) {
                return Err(FerryError::new(ErrorKind::Unsupported, format!("{}: {why}", self.describe(rel))));
            }
        }
        Ok(match (self.url.path.is_empty(), rel_str.is_empty()) {
            (true, _) => rel_str.to_string(),
            (false, true) => self.url.path.clone(),
            (false, false) => format!("{}/{rel_str}", self.url.path),
        })
    }

    /// One line naming the entry, the operation and what went wrong.
    fn fail(&self, op: &str, rel: &[u8], e: Error) -> FerryError {
        FerryError::new(kind_of(&e), format!("cannot {op} {}: {e}", self.describe(rel)))
    }

    /// Creates directory `full` and its parents as needed; a file in the way is removed.
    async fn mkdirs(&self, full: &str) -> Result<(), Error> {
        if full.is_empty() || self.dirs.lock().map(|d| d.contains(full)).unwrap_or(false) {
            return Ok(());
        }
        let mut prefix = String::new();
        for name in full.split('/') {
            if !prefix.is_empty() {
                prefix.push('/');
            }
            prefix.push_str(name);
            if self.dirs.lock().map(|d| d.contains(&prefix)).unwrap_or(false) {
                continue;
            }
            match self.share().mkdir(&prefix).await {
                Ok(()) => {}
                Err(Error::Exists { .. }) => match self.share().stat(&prefix).await? {
                    Some(i) if i.is_dir => {}
                    Some(_) => {
                        self.remove_tree(&prefix).await?;
                        self.share().mkdir(&prefix).await?;
                    }
                    None => self.share().mkdir(&prefix).await?,
                },
                Err(e) => return Err(e),
            }
            if let Ok(mut d) = self.dirs.lock() {
                if d.len() > 1 << 16 {
                    d.clear();
                }
                d.insert(prefix.clone());
            }
        }
        Ok(())
    }

    fn forget_dirs(&self, full: &str) {
        if let Ok(mut d) = self.dirs.lock() {
            d.retain(|k| !(full.is_empty() || k == full || (k.starts_with(full) && k.as_bytes().get(full.len()) == Some(&b'/'))));
        }
    }

    /// Removes a file, clearing its read-only attribute when that is what refuses.
    async fn remove_file(&self, full: &str) -> Result<(), Error> {
        match self.share().remove_file(full).await {
            Err(Error::AccessDenied { .. }) => {
                let Some(i) = self.share().stat(full).await? else {
                    return Ok(());
                };
                if !i.readonly() {
                    return self.share().remove_file(full).await;
                }
                self.share().set_basic(full, &Basic { attributes: Some(i.attributes & !attr::READONLY & attr::SETTABLE), ..Basic::default() }).await?;
                self.share().remove_file(full).await
            }
            Err(Error::NotFound { .. }) => Ok(()),
            other => other,
        }
    }

    /// Removes `full`, a directory with everything below it; returns how many files went.
    fn remove_tree<'a>(&'a self, full: &'a str) -> futures::future::BoxFuture<'a, Result<u64, Error>> {
        Box::pin(async move {
            let Some(info) = self.share().stat(full).await? else {
                return Ok(0);
            };
            if !info.is_dir {
                self.remove_file(full).await?;
                return Ok(1);
            }
            let mut n = 0;
            for (name, i) in self.share().list(full).await? {
                let child = format!("{full}/{name}");
                if i.is_dir {
                    n += self.remove_tree(&child).await?;
                } else {
                    self.remove_file(&child).await?;
                    n += 1;
                }
            }
            match self.share().remove_dir(full).await {
                Ok(()) | Err(Error::NotFound { .. }) => {}
                Err(Error::AccessDenied { .. }) if info.readonly() => {
                    let b = Basic { attributes: Some(info.attributes & !attr::READONLY & attr::SETTABLE), ..Basic::default() };
                    self.share().set_basic(full, &b).await?;
                    self.share().remove_dir(full).await?;
                }
                Err(e) => return Err(e),
            }
            self.forget_dirs(full);
            Ok(n)
        })
    }

    async fn stat_full(&self, full: &str) -> Result<Option<Meta>, Error> {
        let Some((info, ea)) = self.share().stat_ea(full, POSIX_EA).await? else {
            return Ok(None);
        };
        let mut m = meta_of(&info, ea.as_deref());
        if m.kind() == EntryKind::Symlink {
            let mut buf = vec![0u8; info.size.min(64 << 10) as usize];
            let n = self.share().read_at(full, 0, &mut buf).await?;
            buf.truncate(n);
            m.link_target = Some(buf);
        }
        Ok(Some(m))
    }

    /// The pseudo extended attributes of `full` (SMB → SMB only).
    async fn pseudo_xattrs(&self, full: &str) -> Result<Xattrs, Error> {
        if !self.carry {
            return Ok(Vec::new());
        }
        let Some(info) = self.share().stat(full).await? else {
            return Ok(Vec::new());
        };
        let mut x = vec![
            (XATTR_ATTRIBUTES.to_vec(), format!("{:08x}", info.attributes & attr::SETTABLE).into_bytes()),
            (XATTR_CREATED.to_vec(), info.creation.0.to_string().into_bytes()),
        ];
        if !self.sd.is_empty() {
            x.push((XATTR_SD.to_vec(), self.share().get_sd(full, self.sd).await?));
        }
        Ok(x)
    }

    /// What the pseudo extended attributes ask for: attributes, creation time, SD.
    fn wanted(&self, xattrs: Option<&Xattrs>) -> (Option<u32>, Option<WinTime>, Option<Vec<u8>>) {
        let (mut a, mut c, mut sd) = (None, None, None);
        if !self.carry {
            return (a, c, sd);
        }
        for (k, v) in xattrs.into_iter().flatten() {
            let text = || std::str::from_utf8(v).ok();
            match k.as_slice() {
                XATTR_ATTRIBUTES => a = text().and_then(|t| u32::from_str_radix(t, 16).ok()),
                XATTR_CREATED => c = text().and_then(|t| t.parse().ok()).map(WinTime),
                XATTR_SD if !self.sd.is_empty() && !v.is_empty() => sd = Some(v.clone()),
                _ => {}
            }
        }
        (a, c, sd)
    }

    fn basic(&self, meta: &Meta, attributes: Option<u32>, created: Option<WinTime>) -> Basic {
        Basic {
            creation: created,
            last_access: Some(win_time(meta.atime.unwrap_or(meta.mtime))),
            last_write: Some(win_time(meta.mtime)),
            change: None,
            attributes: attributes.map(|a| a & attr::SETTABLE),
        }
    }

    /// Metadata on an open staged file, after its content: the POSIX EA, the security
    /// descriptor, then times and attributes (last, as every other change touches them).
    async fn apply_to_file(&self, f: &NewFile, meta: &Meta, kind: EntryKind, xattrs: &Xattrs) -> Result<(), Error> {
        let (attributes, created, sd) = self.wanted(Some(xattrs));
        f.set_ea(POSIX_EA, &posix_value(meta, kind)).await?;
        if let Some(sd) = sd {
            self.set_sd_parts(&f.path(), &sd, Some(f)).await?;
        }
        f.set_basic(&self.basic(meta, attributes, created)).await
    }

    /// Writes the security descriptor's selected parts: owner and DACL through `f` when
    /// given, a SACL by path (it needs ACCESS_SYSTEM_SECURITY on the handle).
    async fn set_sd_parts(&self, full: &str, sd: &[u8], f: Option<&NewFile>) -> Result<(), Error> {
        let main = SdFlags { sacl: false, ..self.sd };
        match f {
            Some(f) => f.set_sd(sd, main).await?,
            None => self.share().set_sd(full, sd, main).await?,
        }
        if self.sd.sacl {
            self.share().set_sd(full, sd, SdFlags { sacl: true, ..SdFlags::NONE }).await?;
        }
        Ok(())
    }

    /// Renames a staged temporary file over `rel`'s name through its handle, a directory in
    /// the way removed first; then closes it.
    async fn rename_into_place(&self, f: &NewFile, rel: &[u8]) -> Result<(), FerryError> {
        let to = self.path(rel)?;
        match f.rename(&to, true).await {
            Ok(()) => {}
            Err(e) => match self.share().stat(&to).await {
                Ok(Some(i)) if i.is_dir => {
                    self.remove_tree(&to).await.map_err(|e| self.fail("remove", rel, e))?;
                    f.rename(&to, true).await.map_err(|e| self.fail("rename into place", rel, e))?;
                }
                _ => {
                    let _ = f.delete_on_close().await;
                    let _ = f.close().await;
                    return Err(self.fail("rename into place", rel, e));
                }
            },
        }
        f.close().await.map_err(|e| self.fail("close", rel, e))
    }

    fn stage(&self, rel: &[u8], temp: &[u8], f: Arc<NewFile>) {
        if let Ok(mut s) = self.staged.lock() {
            s.insert((rel.to_vec(), temp.to_vec()), f);
        }
    }

    fn unstage(&self, rel: &[u8], temp: &[u8]) -> Option<Arc<NewFile>> {
        self.staged.lock().ok().and_then(|mut s| s.remove(&(rel.to_vec(), temp.to_vec())))
    }

    fn staged_file(&self, rel: &[u8], temp: &[u8]) -> Option<Arc<NewFile>> {
        self.staged.lock().ok().and_then(|s| s.get(&(rel.to_vec(), temp.to_vec())).cloned())
    }

    /// The temporary file's share-relative path, beside `rel`.
    fn temp_path(&self, rel: &[u8], temp: &[u8]) -> Result<String, FerryError> {
        let (parent, _) = paths::split(rel);
        let dir = self.path(parent)?;
        let temp = std::str::from_utf8(temp).map_err(|_| FerryError::new(ErrorKind::Other, "a temporary name is not UTF-8"))?;
        Ok(if dir.is_empty() { temp.to_string() } else { format!("{dir}/{temp}") })
    }

    /// Opens a new sink's temporary file, its parents made; debris of the same name goes,
    /// unless it is a partial file of the same source version (`resume`), which is kept.
    async fn open_temp(&self, rel: &[u8], temp_full: &str, size: u64, resume: bool) -> Result<(NewFile, u64), FerryError> {
        let (parent, _) = paths::split(rel);
        let dir = self.path(parent)?;
        self.mkdirs(&dir).await.map_err(|e| self.fail("create directory", parent, e))?;
        match self.share().stat(temp_full).await.map_err(|e| self.fail("look up", rel, e))? {
            Some(i) if resume && !i.is_dir && i.size <= size && !i.readonly() => {
                let f = self.share().open_write(temp_full).await.map_err(|e| self.fail("open", rel, e))?;
                return Ok((f, i.size));
            }
            Some(_) => {
                self.remove_tree(temp_full).await.map_err(|e| self.fail("remove", rel, e))?;
            }
            None => {}
        }
        let f = self.share().create_new(temp_full).await.map_err(|e| self.fail("create", rel, e))?;
        Ok((f, 0))
    }
}

impl Location for SmbLocation {
    fn describe(&self, rel: &[u8]) -> String {
        if rel.is_empty() {
            self.url.display()
        } else {
            format!("{}/{}", self.url.display(), paths::display(rel))
        }
    }

    fn capabilities(&self) -> Capabilities {
        capabilities(self.carry)
    }

    fn limits(&self) -> Limits {
        limits()
    }

    /// Listed sorted by name, so a page resumes after the last name it returned. Entries that
    /// carry ferry's POSIX EA are looked up one by one (their mode, symlink and nanoseconds
    /// are not in a listing); the others are complete as listed.
    fn list(&self, dir: &[u8], resume: Option<&[u8]>, max: usize) -> Result<Page, FerryError> {
        let full = self.path(dir)?;
        self.block(async {
            let listed = match self.share().list(&full).await {
                Ok(l) => l,
                Err(Error::NotFound { .. }) | Err(Error::WrongType { .. }) => return Ok(Page::default()),
                Err(e) => return Err(self.fail("list", dir, e)),
            };
            let mut names: Vec<(String, Info)> =
                listed.into_iter().filter(|(n, _)| !n.as_bytes().starts_with(TEMP_PREFIX)).filter(|(n, _)| resume.is_none_or(|r| n.as_bytes() > r)).collect();
            names.sort_by(|a, b| a.0.cmp(&b.0));
            let more = names.len() > max.max(1);
            names.truncate(max.max(1));
            let mut page = Page::default();
            let child = |n: &str| if full.is_empty() { n.to_string() } else { format!("{full}/{n}") };
            let metas = futures::future::join_all(names.iter().map(|(n, i)| {
                let path = child(n);
                async move {
                    if i.ea_size == 0 {
                        return Ok(Some(meta_of(i, None)));
                    }
                    self.stat_full(&path).await
                }
            }))
            .await;
            for ((name, _), m) in names.iter().zip(metas) {
                let Some(meta) = m.map_err(|e| self.fail("stat", &paths::child(dir, name.as_bytes()), e))? else {
                    continue; // removed while listing
                };
                page.entries.push(Listed { name: name.as_bytes().to_vec(), meta, complete: true, cursor: name.as_bytes().to_vec() });
            }
            if more {
                page.resume = names.last().map(|(n, _)| n.as_bytes().to_vec());
            }
            Ok(page)
        })
    }

    fn stat(&self, rel: &[u8]) -> Result<Option<Meta>, FerryError> {
        let full = self.path(rel)?;
        self.block(self.stat_full(&full)).or_else(|e| match e {
            Error::WrongType { .. } => Ok(None),
            e => Err(self.fail("stat", rel, e)),
        })
    }

    fn stat_dir(&self, rel: &[u8]) -> Result<Option<Meta>, FerryError> {
        self.stat(rel)
    }

    fn xattrs(&self, rel: &[u8]) -> Result<Xattrs, FerryError> {
        let full = self.path(rel)?;
        self.block(self.pseudo_xattrs(&full)).map_err(|e| self.fail("read the security descriptor and attributes of", rel, e))
    }

    fn tags(&self, _rel: &[u8]) -> Result<Option<String>, FerryError> {
        Ok(None)
    }

    fn open(&self, rel: &[u8], _from: u64) -> Result<Box<dyn Source + '_>, FerryError> {
        let full = self.path(rel)?;
        self.block(async {
            let meta = match self.stat_full(&full).await {
                Ok(Some(m)) if m.kind() == EntryKind::File => m,
                Ok(Some(_)) | Err(Error::WrongType { .. }) => return Err(source_changed(self.describe(rel), "it is no longer a regular file")),
                Ok(None) => return Err(source_changed(self.describe(rel), "it was removed")),
                Err(e) => return Err(self.fail("stat", rel, e)),
            };
            let reader = match self.share().open_read(&full).await {
                Ok(r) => r,
                Err(Error::NotFound { .. }) => return Err(source_changed(self.describe(rel), "it was removed")),
                Err(e) => return Err(self.fail("open", rel, e)),
            };
            let last_write = win_time(meta.mtime);
            Ok(Box::new(SmbSource { loc: self, rel: rel.to_vec(), full, reader: Some(reader), meta, last_write }) as Box<dyn Source + '_>)
        })
    }

    fn create(&self, rel: &[u8], target: Target<'_>, meta: &Meta, xattrs: &Xattrs) -> Result<Box<dyn Sink + '_>, FerryError> {
        let (_, name) = paths::split(rel);
        match target {
            Target::File { size, resume } => {
                let temp = match resume {
                    Some(version) => version_temp_name(version, name),
                    None => temp_name(&self.nonce, name),
                };
                self.path(rel)?;
                let temp_full = self.temp_path(rel, &temp)?;
                let (file, kept) = self.block(self.open_temp(rel, &temp_full, size, resume.is_some()))?;
                Ok(Box::new(SmbSink {
                    loc: self,
                    rel: rel.to_vec(),
                    temp,
                    file: Some(Arc::new(file)),
                    start: 0,
                    len: size,
                    resumed: kept,
                    written_end: kept,
                    whole: Some((meta.clone(), xattrs.clone())),
                }))
            }
            Target::Part { upload, offset, len, .. } => {
                super::check_tree_upload(rel, upload, || self.describe(rel))?;
                let temp_full = self.temp_path(rel, upload.as_bytes())?;
                let file = self.block(self.share().open_write(&temp_full)).map_err(|e| match e {
                    Error::NotFound { .. } => FerryError::new(ErrorKind::Unavailable, format!("the multipart write of {} vanished", self.describe(rel))),
                    e => self.fail("open", rel, e),
                })?;
                Ok(Box::new(SmbSink {
                    loc: self,
                    rel: rel.to_vec(),
                    temp: upload.as_bytes().to_vec(),
                    file: Some(Arc::new(file)),
                    start: offset,
                    len,
                    resumed: 0,
                    written_end: 0,
                    whole: None,
                }))
            }
        }
    }

    /// Symlinks only, stored as a file holding the target with a symlink's mode in the POSIX
    /// EA (as S3 stores them). FIFOs, sockets and devices cannot be held.
    fn make(&self, rel: &[u8], special: &Special, meta: &Meta, xattrs: &Xattrs) -> Result<Staged, FerryError> {
        let Special::Symlink { target } = special else {
            return Err(FerryError::new(
                ErrorKind::Unsupported,
                format!("{}: an SMB share cannot hold a {} (use --no-specials to skip them)", self.describe(rel), meta.kind().as_str()),
            ));
        };
        let (_, name) = paths::split(rel);
        let temp = temp_name(&format!("s{}", self.nonce), name);
        self.path(rel)?;
        let temp_full = self.temp_path(rel, &temp)?;
        self.block(async {
            let (f, _) = self.open_temp(rel, &temp_full, 0, false).await?;
            let done = async {
                f.write_at(0, target).await?;
                self.apply_to_file(&f, meta, EntryKind::Symlink, xattrs).await
            }
            .await;
            if let Err(e) = done {
                let _ = f.delete_on_close().await;
                let _ = f.close().await;
                return Err(self.fail("create symlink", rel, e));
            }
            self.stage(rel, &temp, Arc::new(f));
            Ok(Staged {
                rel: rel.to_vec(),
                kind: EntryKind::Symlink,
                size: 0,
                crc32c: None,
                token: Token::Temp(temp.clone()),
                part_tags: Vec::new(),
                resumed: 0,
            })
        })
    }

    fn ensure_dir(&self, rel: &[u8]) -> Result<(), FerryError> {
        let full = self.path(rel)?;
        self.block(self.mkdirs(&full)).map_err(|e| self.fail("create directory", rel, e))
    }

    fn set_meta(&self, rel: &[u8], meta: &Meta, xattrs: Option<&Xattrs>) -> Result<(), FerryError> {
        let full = self.path(rel)?;
        let kind = meta.kind();
        self.block(async {
            if kind == EntryKind::Dir {
                self.mkdirs(&full).await.map_err(|e| self.fail("create directory", rel, e))?;
            }
            let (attributes, created, sd) = self.wanted(xattrs);
            let done = async {
                self.share().set_ea(&full, POSIX_EA, &posix_value(meta, kind)).await?;
                if let Some(sd) = sd {
                    self.set_sd_parts(&full, &sd, None).await?;
                }
                self.share().set_basic(&full, &self.basic(meta, attributes, created)).await
            };
            done.await.map_err(|e| self.fail("set metadata on", rel, e))
        })
    }

    fn link(&self, _target: &[u8], rel: &[u8]) -> Result<bool, FerryError> {
        Err(FerryError::new(ErrorKind::Unsupported, format!("{}: hard links are not made on SMB shares", self.describe(rel))))
    }

    /// Content: an SMB2 FLUSH per staged file (samba: fsync). Names: the server carries out a
    /// rename before it answers.
    fn sync(&self, staged: &[Staged], what: Durable) -> Result<(), FerryError> {
        if what == Durable::Names {
            return Ok(());
        }
        self.block(async {
            let flushes = staged.iter().filter_map(|s| super::temp_of(s).map(|(t, _, _)| (s, t))).map(|(s, temp)| async move {
                match self.staged_file(&s.rel, temp) {
                    Some(f) => f.flush().await.map_err(|e| self.fail("flush", &s.rel, e)),
                    None => {
                        let path = self.temp_path(&s.rel, temp)?;
                        let f = self.share().open_write(&path).await.map_err(|e| self.fail("open", &s.rel, e))?;
                        let done = f.flush().await;
                        let _ = f.close().await;
                        done.map_err(|e| self.fail("flush", &s.rel, e))
                    }
                }
            });
            futures::future::join_all(flushes).await.into_iter().collect::<Result<Vec<()>, FerryError>>().map(|_| ())
        })
    }

    fn check(&self, staged: &Staged, buf: &mut Vec<u8>) -> Result<Option<String>, FerryError> {
        let (Some(want), Some((temp, offset, len))) = (staged.crc32c, super::temp_of(staged)) else {
            return Ok(None);
        };
        if len == 0 {
            return Ok(None);
        }
        // Read back through a handle of its own: smb-rs reads no further than the size the
        // file had when its handle was opened, which for the writing handle is 0.
        let path = self.temp_path(&staged.rel, temp)?;
        let reader = self.block(self.share().open_read(&path)).map_err(|e| self.fail("open for reading back", &staged.rel, e))?;
        let mut src = StagedReader { loc: self, rel: staged.rel.clone(), via: ReadVia::Reader(reader), meta: Meta { size: offset + len, ..Meta::default() } };
        let got = super::crc_of(&mut src, offset, len, buf);
        if let ReadVia::Reader(r) = &src.via {
            let _ = self.block(r.close());
        }
        let got = got?;
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
        let file = match self.unstage(&staged.rel, temp) {
            Some(f) => f,
            None => {
                let path = self.temp_path(&staged.rel, temp)?;
                Arc::new(self.block(self.share().open_write(&path)).map_err(|e| self.fail("open", &staged.rel, e))?)
            }
        };
        self.block(self.rename_into_place(&file, &staged.rel))
    }

    fn discard(&self, staged: &Staged) {
        if let Token::Temp(temp) = &staged.token {
            let file = self.unstage(&staged.rel, temp);
            let path = self.temp_path(&staged.rel, temp);
            self.block(async {
                if let Some(f) = file {
                    let _ = f.close().await;
                }
                if let Ok(p) = path {
                    let _ = self.remove_file(&p).await;
                }
            });
        }
    }

    fn remove(&self, rels: &[Vec<u8>]) -> Vec<Result<u64, FerryError>> {
        rels.iter()
            .map(|rel| {
                let full = self.path(rel)?;
                self.block(self.remove_tree(&full)).map_err(|e| self.fail("remove", rel, e))
            })
            .collect()
    }

    fn sweep(&self, dir: &[u8]) -> Result<(), FerryError> {
        let full = self.path(dir)?;
        let staged: HashSet<Vec<u8>> = self.staged.lock().map(|s| s.keys().map(|(_, t)| t.clone()).collect()).unwrap_or_default();
        self.block(async {
            let listed = match self.share().list(&full).await {
                Ok(l) => l,
                Err(Error::NotFound { .. }) | Err(Error::WrongType { .. }) => return Ok(()),
                Err(e) => return Err(self.fail("list", dir, e)),
            };
            for (name, _) in listed.into_iter().filter(|(n, _)| n.as_bytes().starts_with(TEMP_PREFIX) && !staged.contains(n.as_bytes())) {
                let path = if full.is_empty() { name.clone() } else { format!("{full}/{name}") };
                self.remove_tree(&path).await.map_err(|e| self.fail("remove temporary file in", dir, e))?;
            }
            Ok(())
        })
    }

    fn create_multipart(&self, rel: &[u8], size: u64, _meta: &Meta) -> Result<String, FerryError> {
        let temp = temp_name("parts", rel);
        self.path(rel)?;
        let temp_full = self.temp_path(rel, &temp)?;
        self.block(async {
            let (f, _) = self.open_temp(rel, &temp_full, size, false).await?;
            let done = f.set_len(size).await;
            let closed = f.close().await;
            done.and(closed).map_err(|e| self.fail("create", rel, e))?;
            Ok(String::from_utf8_lossy(&temp).into_owned())
        })
    }

    fn complete_multipart(&self, rel: &[u8], upload: &str, done: &Completed<'_>) -> Result<Staged, FerryError> {
        let Completed { size, meta, xattrs, .. } = *done;
        super::check_tree_upload(rel, upload, || self.describe(rel))?;
        let temp_full = self.temp_path(rel, upload.as_bytes())?;
        self.block(async {
            let f = self.share().open_write(&temp_full).await.map_err(|e| self.fail("open", rel, e))?;
            let applied = async {
                f.set_len(size).await?;
                self.apply_to_file(&f, meta, EntryKind::File, xattrs).await
            }
            .await;
            if let Err(e) = applied {
                let _ = f.close().await;
                return Err(self.fail("set metadata on", rel, e));
            }
            self.stage(rel, upload.as_bytes(), Arc::new(f));
            // Each part's range was read back when it was committed (see the local tree).
            Ok(Staged {
                rel: rel.to_vec(),
                kind: EntryKind::File,
                size,
                crc32c: None,
                token: Token::Temp(upload.as_bytes().to_vec()),
                part_tags: Vec::new(),
                resumed: 0,
            })
        })
    }

    fn abort_multipart(&self, rel: &[u8], upload: &str) -> Result<(), FerryError> {
        super::check_tree_upload(rel, upload, || self.describe(rel))?;
        let temp_full = self.temp_path(rel, upload.as_bytes())?;
        if let Some(f) = self.unstage(rel, upload.as_bytes()) {
            let _ = self.block(f.close());
        }
        self.block(self.remove_file(&temp_full)).map_err(|e| self.fail("remove temporary file of", rel, e))
    }
}

/// A regular file open for reading.
struct SmbSource<'a> {
    loc: &'a SmbLocation,
    rel: Vec<u8>,
    full: String,
    reader: Option<Reader>,
    meta: Meta,
    last_write: WinTime,
}

impl Drop for SmbSource<'_> {
    fn drop(&mut self) {
        if let Some(r) = self.reader.take() {
            let loc = self.loc;
            loc.block(async move {
                let _ = r.close().await;
            });
        }
    }
}

impl Source for SmbSource<'_> {
    fn meta(&self) -> &Meta {
        &self.meta
    }

    fn xattrs(&mut self) -> Result<Xattrs, FerryError> {
        self.loc.block(self.loc.pseudo_xattrs(&self.full)).map_err(|e| self.loc.fail("read the security descriptor and attributes of", &self.rel, e))
    }

    fn data(&mut self, pos: u64) -> Result<Option<(u64, u64)>, FerryError> {
        Ok((pos < self.meta.size).then_some((pos, self.meta.size)))
    }

    fn read_at(&mut self, pos: u64, buf: &mut [u8]) -> Result<(), FerryError> {
        let reader = self.reader.as_ref().expect("open until drop");
        match self.loc.block(reader.read_at(pos, buf)) {
            Ok(n) if n == buf.len() => Ok(()),
            Ok(_) => Err(source_changed(self.loc.describe(&self.rel), "it shrank")),
            Err(e) => Err(self.loc.fail("read", &self.rel, e)),
        }
    }

    fn unchanged(&mut self) -> Result<bool, FerryError> {
        let reader = self.reader.as_ref().expect("open until drop");
        let i = self.loc.block(reader.info()).map_err(|e| self.loc.fail("stat", &self.rel, e))?;
        Ok(i.size == self.meta.size && i.last_write == self.last_write)
    }
}

/// A staged file read back: through a handle of its own, or (the kept bytes of a resumed
/// file) through the handle that writes it.
struct StagedReader<'a> {
    loc: &'a SmbLocation,
    rel: Vec<u8>,
    via: ReadVia,
    meta: Meta,
}

enum ReadVia {
    Reader(Reader),
    Writer(Arc<NewFile>),
}

impl Source for StagedReader<'_> {
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
        let read = match &self.via {
            ReadVia::Reader(r) => self.loc.block(r.read_at(pos, buf)),
            ReadVia::Writer(f) => self.loc.block(f.read_at(pos, buf)),
        };
        match read {
            Ok(n) if n == buf.len() => Ok(()),
            Ok(n) => Err(FerryError::new(ErrorKind::Corrupt, format!("{} is {} bytes short after writing", self.loc.describe(&self.rel), buf.len() - n))),
            Err(e) => Err(self.loc.fail("read back", &self.rel, e)),
        }
    }

    fn unchanged(&mut self) -> Result<bool, FerryError> {
        Ok(true)
    }
}

/// A temporary file being written: a whole file, or one range of a multipart write.
struct SmbSink<'a> {
    loc: &'a SmbLocation,
    rel: Vec<u8>,
    temp: Vec<u8>,
    /// Open until finished, aborted or dropped (then closed, and left for `sweep`).
    file: Option<Arc<NewFile>>,
    start: u64,
    len: u64,
    resumed: u64,
    written_end: u64,
    /// A whole file's metadata and extended attributes; `None` for a part.
    whole: Option<(Meta, Xattrs)>,
}

impl Drop for SmbSink<'_> {
    fn drop(&mut self) {
        if let Some(f) = self.file.take() {
            self.loc.block(async move {
                let _ = f.close().await;
            });
        }
    }
}

impl Sink for SmbSink<'_> {
    fn resumed(&self) -> u64 {
        self.resumed
    }

    fn crc_resumed(&mut self, buf: &mut Vec<u8>) -> Result<u32, FerryError> {
        let file = self.file.clone().expect("open until finished");
        let mut src = StagedReader {
            loc: self.loc,
            rel: self.rel.clone(),
            via: ReadVia::Writer(file),
            meta: Meta { size: self.start + self.resumed, ..Meta::default() },
        };
        super::crc_of(&mut src, self.start, self.resumed, buf)
    }

    fn write_at(&mut self, pos: u64, data: &[u8], _crc32c: u32) -> Result<(), FerryError> {
        let file = self.file.as_ref().expect("open until finished");
        self.loc.block(file.write_at(pos, data)).map_err(|e| self.loc.fail("write", &self.rel, e))?;
        self.written_end = self.written_end.max(pos + data.len() as u64);
        Ok(())
    }

    fn finish(mut self: Box<Self>, crc32c: u32) -> Result<Staged, FerryError> {
        let loc = self.loc;
        let file = self.file.take().expect("open until finished");
        let whole = self.whole.take();
        let done = loc.block(async {
            if let Some((meta, xattrs)) = &whole {
                if self.written_end != self.len {
                    file.set_len(self.len).await?;
                }
                loc.apply_to_file(&file, meta, EntryKind::File, xattrs).await?;
            }
            Ok::<(), Error>(())
        });
        if let Err(e) = done {
            loc.block(async {
                let _ = file.delete_on_close().await;
                let _ = file.close().await;
            });
            return Err(loc.fail("write", &self.rel, e));
        }
        let token = match whole {
            Some(_) => {
                loc.stage(&self.rel, &self.temp, file);
                Token::Temp(self.temp.clone())
            }
            None => {
                loc.block(file.close()).map_err(|e| loc.fail("close", &self.rel, e))?;
                Token::Range { temp: self.temp.clone(), offset: self.start, len: self.len }
            }
        };
        Ok(Staged { rel: self.rel.clone(), kind: EntryKind::File, size: self.len, crc32c: Some(crc32c), token, part_tags: Vec::new(), resumed: 0 })
    }

    fn abort(mut self: Box<Self>) {
        if let Some(f) = self.file.take() {
            let whole = self.whole.is_some();
            self.loc.block(async move {
                if whole {
                    let _ = f.delete_on_close().await;
                }
                let _ = f.close().await;
            });
        }
    }
}

/// Opens the location behind an `smb://` URI for an execution: SMB-only metadata is carried
/// when both of its ends are SMB.
pub fn open(uri: &str, spec: &ferry_common::model::ExecutionSpec) -> Result<SmbLocation, FerryError> {
    let carry = super::is_smb_uri(&spec.source) && super::is_smb_uri(&spec.destination);
    SmbLocation::open(uri, &spec.options.smb, carry)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_posix_ea_round_trips_and_is_trusted_only_while_the_write_time_agrees() {
        let meta = Meta { mtime: Timestamp { sec: 1_700_000_000, nsec: 123_456_789 }, mode: Some(libc::S_IFREG | 0o640), ..Meta::default() };
        let v = posix_value(&meta, EntryKind::File);
        assert_eq!(parse_posix(&v), Some(Posix { mode: libc::S_IFREG | 0o640, mtime: meta.mtime }));
        let info = Info {
            is_dir: false,
            size: 5,
            allocation_size: 0,
            creation: WinTime(1),
            last_access: win_time(meta.mtime),
            last_write: win_time(meta.mtime),
            change: WinTime(1),
            attributes: attr::ARCHIVE,
            file_id: 0,
            nlink: None,
            ea_size: 1,
        };
        let m = meta_of(&info, Some(&v));
        assert_eq!((m.mtime, m.perm(), m.kind()), (meta.mtime, Some(0o640), EntryKind::File));
        // Written by another client since: its write time wins and the EA is ignored.
        let later = Info { last_write: WinTime(info.last_write.0 + 10), ..info.clone() };
        let m = meta_of(&later, Some(&v));
        assert_eq!((m.mtime.nsec, m.perm()), (123_456_700 + 1_000, None));
        let link = posix_value(&Meta { mtime: meta.mtime, ..Meta::default() }, EntryKind::Symlink);
        assert_eq!(meta_of(&info, Some(&link)).kind(), EntryKind::Symlink);
        assert_eq!(parse_posix(b"v2 1 2 3"), None);
    }

    #[test]
    fn names_smb_cannot_hold_are_refused() {
        assert!(name_refusal("a:b").is_some());
        assert!(name_refusal("what?").is_some());
        assert!(name_refusal(&"n".repeat(256)).is_some());
        assert!(name_refusal(&"日".repeat(255)).is_none(), "255 UTF-16 units, 765 bytes");
        assert!(name_refusal("Grüße 😀.txt").is_none());
    }

    #[test]
    fn password_files_must_be_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("pw");
        std::fs::write(&f, "s3cret\n").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = password(Some(f.to_str().unwrap())).unwrap_err();
        assert!(e.message.contains("chmod 600") && !e.message.contains("s3cret"), "{}", e.message);
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(password(Some(f.to_str().unwrap())).unwrap(), "s3cret");
    }
}
