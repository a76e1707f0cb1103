//! An NFS export spoken in user space, as NFSv3 or as NFSv4.1 (`?vers=4.1`, what EFS speaks):
//! no kernel mount, no root needed (unless the server insists on a privileged port), one
//! pool of `nconnect` connections per agent with many requests in flight.
//!
//! It keeps the local tree's protocol, over the wire: entries are written under a temporary
//! name in their directory (`.ferry-tmp-…`) with UNSTABLE writes, get their metadata, are
//! made durable by COMMIT (whose write verifier proves the server did not restart in between),
//! are read back from the server (there is no client cache to answer instead) and renamed into
//! place. Metadata operations are synchronous on an NFS server (RFC 1813 §3.3, RFC 8881
//! §18), so published names need no flush of their own.
//!
//! The backend is written once; what differs between the versions is in [`wire`].
//!
//! What it does not carry: extended attributes and ACLs (NFSv3 has no such calls; NFSv4
//! ACLs are not copied yet), holes in what it reads (no SEEK_DATA: a sparse source is read
//! whole, zeros included), and over NFSv3 times before 1970 or after 2106 (32-bit unsigned
//! seconds).

pub mod retry;
pub mod rpc;
pub mod url;
pub mod v4;
pub mod wire;

use std::collections::HashMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ferry_common::error::{ErrorKind, FerryError};
use ferry_common::model::EntryKind;
use ferry_common::paths;
use futures::future::join_all;
use nfs3_client::nfs3_types::mount::dirpath;
use nfs3_client::nfs3_types::xdr_codec::Opaque;
use nfs3_client::{MountClient, PortmapperClient};

use self::rpc::{Conn, Pool};
use self::url::{NfsUrl, Version};
use self::wire::{Attr, Cond, Fail, Fh, Node, Opened, SetAttrs, Wire};
use super::{
    source_changed, temp_name, version_temp_name, Capabilities, Completed, Durable, Limits, Listed, Location, Meta, Page, Profile, Sink, Source, Special,
    Staged, Target, Token, Xattrs, TEMP_PREFIX,
};

/// What an NFS export holds: a POSIX tree without extended attributes.
pub fn profile() -> Profile {
    Profile {
        capabilities: Capabilities {
            hard_links: true,
            holes: false,
            xattrs: false,
            special_files: true,
            ownership: true,
            ns_times: true,
            // Not every server sets them (nfs-ganesha's VFS backend answers a SETATTR of a
            // symlink's times with success and keeps its time of creation).
            symlink_times: false,
            dir_markers: true,
            atomic_rename: true,
            stored_checksum: false,
            server_side_copy: false,
            complete_listing: true,
            cheap_stat: false,
            object_tags: false,
        },
        limits: Limits { max_name_bytes: Some(255), ..Limits::default() },
    }
}

/// How long a looked-up directory handle is trusted (see the local tree's `HANDLE_TTL`).
const HANDLE_TTL: Duration = Duration::from_secs(2);
const MAX_HANDLES: usize = 4096;
/// Largest READ and WRITE, whatever the server offers: larger ones only add latency.
const MAX_TRANSFER: u32 = 1 << 20;

/// A file handle and its attributes.
#[derive(Clone, Debug)]
struct Found {
    fh: Fh,
    attr: Attr,
}

impl From<(Fh, Attr)> for Found {
    fn from((fh, attr): (Fh, Attr)) -> Found {
        Found { fh, attr }
    }
}

fn type_bits(kind: EntryKind) -> u32 {
    match kind {
        EntryKind::Dir => libc::S_IFDIR,
        EntryKind::Symlink => libc::S_IFLNK,
        EntryKind::Fifo => libc::S_IFIFO,
        EntryKind::Socket => libc::S_IFSOCK,
        EntryKind::CharDev => libc::S_IFCHR,
        EntryKind::BlockDev => libc::S_IFBLK,
        EntryKind::File | EntryKind::HardLink => libc::S_IFREG,
    }
}

fn meta_of(a: &Attr) -> Meta {
    let kind = a.kind;
    Meta {
        kind: Some(kind),
        size: if kind == EntryKind::File { a.size } else { 0 },
        mtime: a.mtime,
        atime: Some(a.atime),
        mode: Some(type_bits(kind) | a.mode),
        uid: Some(a.uid),
        gid: Some(a.gid),
        rdev: if matches!(kind, EntryKind::CharDev | EntryKind::BlockDev) { libc::makedev(a.rdev.0, a.rdev.1) } else { 0 },
        links: Some((a.fsid, a.fileid, a.nlink as u64)),
        ..Meta::default()
    }
}

/// An NFS export (or a directory in one) as a [`Location`].
pub struct NfsLocation {
    /// How the location is named in messages: its URL, or the `efs://` it was resolved from.
    shown: String,
    /// Runs the connections' I/O; shut down in the background on drop (see `S3Location`).
    runtime: Option<tokio::runtime::Runtime>,
    wire: Wire,
    /// The mounted export's root (NFSv4.1: the server's root).
    export: Fh,
    /// The location's directory below the export (`a/b`, or empty).
    base: Vec<u8>,
    dirs: Mutex<HashMap<Vec<u8>, (Fh, Instant)>>,
    /// Distinguishes this process's temporary names (see the local tree).
    nonce: String,
    rsize: u32,
    wsize: u32,
    /// The write verifier each temporary file's UNSTABLE writes were answered with: COMMIT
    /// must answer the same, or the server restarted and may have lost them.
    verifiers: Mutex<HashMap<Vec<u8>, [u8; 8]>>,
    /// The handle of each staged temporary file, by (entry, temporary name): committing a
    /// small file then costs no LOOKUP before its COMMIT and its read-back.
    staged: Mutex<HashMap<StagedKey, StagedFile>>,
    /// Content is made durable before it is published (`--no-fsync` turns it off): a small
    /// file then goes in one FILE_SYNC WRITE and needs no COMMIT.
    fsync: bool,
    /// The credentials are root's: owners can be set (unless the export squashes root).
    owner_settable: bool,
}

impl Drop for NfsLocation {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            // An NFSv4.1 session is ended at once, so the server frees its state now rather
            // than at lease expiry (not from inside another runtime, where blocking panics).
            if matches!(self.wire, Wire::V4(_)) && tokio::runtime::Handle::try_current().is_err() {
                rt.block_on(async { tokio::time::timeout(Duration::from_secs(2), self.wire.shutdown()).await.ok() });
            }
            rt.shutdown_background();
        }
    }
}

/// Why the export could not be opened, as one line naming the location and the fix.
fn open_error(shown: &str, kind: ErrorKind, what: impl std::fmt::Display) -> FerryError {
    FerryError::new(kind, format!("{shown}: {what}"))
}

impl NfsLocation {
    /// Mounts the export named by `uri` (NFSv3: the longest leading part of its path the
    /// server exports) and opens the connection pool. The directory below the export need
    /// not exist yet; `stat(b"")` says whether it does.
    pub fn open(uri: &str, fsync: bool) -> Result<NfsLocation, FerryError> {
        let url = NfsUrl::parse(uri).map_err(FerryError::config)?;
        let shown = url.display();
        NfsLocation::open_url(url, shown, fsync)
    }

    /// Opens a parsed URL; `shown` names it in messages.
    pub fn open_url(url: NfsUrl, shown: String, fsync: bool) -> Result<NfsLocation, FerryError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("ferry-nfs")
            .enable_all()
            .build()
            .map_err(|e| FerryError::new(ErrorKind::Other, format!("cannot start the NFS client's runtime: {e}")))?;
        let ip = (url.host.as_str(), 0)
            .to_socket_addrs()
            .ok()
            .and_then(|mut a| a.next())
            .ok_or_else(|| open_error(&shown, ErrorKind::Config, format_args!("cannot resolve the host '{}' (check the name)", url.host)))?
            .ip();
        // SAFETY: geteuid and getegid cannot fail.
        let (euid, egid) = unsafe { (libc::geteuid(), libc::getegid()) };
        let (uid, gid) = (url.uid.unwrap_or(euid), url.gid.unwrap_or(egid));
        let (wire, export, base, (rsize, wsize)) = std::thread::scope(|s| {
            s.spawn(|| runtime.block_on(connect(&url, &shown, ip, euid == 0, uid, gid)))
                .join()
                .unwrap_or_else(|_| Err(open_error(&shown, ErrorKind::Other, "mounting failed")))
        })?;
        Ok(NfsLocation {
            shown,
            runtime: Some(runtime),
            wire,
            export,
            base,
            dirs: Mutex::new(HashMap::new()),
            nonce: format!("{:08x}", rand::random::<u32>()),
            rsize: rsize.clamp(4096, MAX_TRANSFER),
            wsize: wsize.clamp(4096, MAX_TRANSFER),
            verifiers: Mutex::new(HashMap::new()),
            staged: Mutex::new(HashMap::new()),
            fsync,
            owner_settable: uid == 0,
        })
    }

    /// The protocol spoken: `NFSv3` or `NFSv4.1`.
    pub fn version(&self) -> &'static str {
        self.wire.version()
    }

    fn block<F: std::future::Future>(&self, f: F) -> F::Output {
        self.runtime.as_ref().expect("present until drop").block_on(f)
    }

    /// The path below the export of `rel`.
    fn full(&self, rel: &[u8]) -> Vec<u8> {
        match (self.base.is_empty(), rel.is_empty()) {
            (true, _) => rel.to_vec(),
            (false, true) => self.base.clone(),
            (false, false) => paths::child(&self.base, rel),
        }
    }

    /// One line naming the entry, the operation and what went wrong.
    fn fail(&self, op: &str, rel: &[u8], f: Fail) -> FerryError {
        let what = self.describe(rel);
        match f {
            Fail::Status { code, .. } if code.cond() == Cond::ReadOnly => FerryError::new(
                ErrorKind::PermissionDenied,
                format!("cannot {op} {what}: the export is read-only (export it read-write, or choose another destination)"),
            ),
            Fail::Status { code, .. } => FerryError::new(code.kind(), format!("cannot {op} {what}: {code}")),
            Fail::Unreachable(why) => FerryError::new(ErrorKind::Unavailable, format!("cannot {op} {what}: {why}")),
            Fail::Refused(why) => FerryError::new(ErrorKind::PermissionDenied, format!("cannot {op} {what}: {why}")),
        }
    }

    fn vanished(&self, rel: &[u8]) -> FerryError {
        FerryError::new(ErrorKind::Unavailable, format!("the directory of {} vanished while it was written", self.describe(rel)))
    }

    async fn lookup(&self, dir: &Fh, name: &[u8]) -> Result<Option<Found>, Fail> {
        Ok(self.wire.lookup(dir, name).await?.map(Found::from))
    }

    fn cached(&self, full: &[u8]) -> Option<Fh> {
        let dirs = self.dirs.lock().unwrap_or_else(|p| p.into_inner());
        dirs.get(full).filter(|(_, at)| at.elapsed() < HANDLE_TTL).map(|(fh, _)| fh.clone())
    }

    fn remember(&self, full: &[u8], fh: &Fh) {
        let mut dirs = self.dirs.lock().unwrap_or_else(|p| p.into_inner());
        if dirs.len() >= MAX_HANDLES {
            dirs.clear();
        }
        dirs.insert(full.to_vec(), (fh.clone(), Instant::now()));
    }

    /// Forgets `full` and everything below it.
    fn forget(&self, full: &[u8]) {
        let mut dirs = self.dirs.lock().unwrap_or_else(|p| p.into_inner());
        dirs.retain(|k, _| !(full.is_empty() || k.as_slice() == full || (k.starts_with(full) && k.get(full.len()) == Some(&b'/'))));
    }

    /// The handle of directory `full` (below the export). With `create`, missing directories
    /// are made owner-only, and a non-directory in the way is removed, as the local tree does.
    /// `None` when it is missing and `create` is off.
    async fn dir(&self, full: &[u8], create: bool) -> Result<Option<Fh>, Fail> {
        if full.is_empty() {
            return Ok(Some(self.export.clone()));
        }
        if let Some(fh) = self.cached(full) {
            return Ok(Some(fh));
        }
        // Walk down from the deepest cached ancestor.
        let comps: Vec<&[u8]> = full.split(|&b| b == b'/').collect();
        let mut depth = comps.len();
        let mut fh = self.export.clone();
        while depth > 0 {
            let prefix = &full[..comps[..depth].iter().map(|c| c.len()).sum::<usize>() + depth - 1];
            if let Some(f) = self.cached(prefix) {
                fh = f;
                break;
            }
            depth -= 1;
        }
        for i in depth..comps.len() {
            let name = comps[i];
            let prefix = &full[..comps[..=i].iter().map(|c| c.len()).sum::<usize>() + i];
            fh = match self.lookup(&fh, name).await? {
                Some(found) if found.attr.kind == EntryKind::Dir => found.fh,
                Some(_) if create => {
                    self.remove_tree(&fh, name).await?;
                    self.mkdir(&fh, name).await?
                }
                Some(_) => return Ok(None),
                None if create => self.mkdir(&fh, name).await?,
                None => return Ok(None),
            };
            self.remember(prefix, &fh);
        }
        Ok(Some(fh))
    }

    async fn mkdir(&self, parent: &Fh, name: &[u8]) -> Result<Fh, Fail> {
        match self.wire.mkdir(parent, name, 0o700).await {
            Ok(Some(fh)) => Ok(fh),
            // Made by someone else meanwhile, or by our own first send: use it if a directory.
            Ok(None) => self.lookup(parent, name).await?.filter(|f| f.attr.kind == EntryKind::Dir).map(|f| f.fh).ok_or_else(|| self.no_dir()),
            Err(f) if f.is(Cond::Exist) => match self.lookup(parent, name).await? {
                Some(found) if found.attr.kind == EntryKind::Dir => Ok(found.fh),
                _ => Err(f),
            },
            Err(e) => Err(e),
        }
    }

    /// A directory that was made is not there as one.
    fn no_dir(&self) -> Fail {
        Fail::Unreachable("a directory just made is not there (another client replaced it); it is made again".into())
    }

    /// The handle of `rel`'s directory and `rel`'s own name.
    async fn parent(&self, rel: &[u8], create: bool) -> Result<Option<(Fh, Vec<u8>)>, FerryError> {
        let (parent, name) = paths::split(rel);
        match self.dir(&self.full(parent), create).await {
            Ok(Some(fh)) => Ok(Some((fh, name.to_vec()))),
            Ok(None) => Ok(None),
            Err(f) => Err(self.fail(if create { "create directory" } else { "open directory" }, parent, f)),
        }
    }

    /// The entry `rel`, looked up.
    async fn find(&self, rel: &[u8]) -> Result<Option<Found>, FerryError> {
        let full = self.full(rel);
        if full.is_empty() {
            let attr = self.wire.getattr(&self.export).await.map_err(|f| self.fail("stat", rel, f))?;
            return Ok(Some(Found { fh: self.export.clone(), attr }));
        }
        let (parent, name) = paths::split(&full);
        let Some(dir) = self.dir(parent, false).await.map_err(|f| self.fail("open directory", rel, f))? else {
            return Ok(None);
        };
        self.lookup(&dir, name).await.map_err(|f| self.fail("look up", rel, f))
    }

    /// Every name in a directory (without attributes where the protocol allows), `.` and
    /// `..` left out.
    async fn names(&self, dir: &Fh) -> Result<Vec<Vec<u8>>, Fail> {
        let mut out = Vec::new();
        let (mut cookie, mut verf) = (0, [0; 8]);
        loop {
            let page = self.wire.readdir(dir, cookie, verf, false).await?;
            if page.entries.is_empty() && !page.eof {
                return Err(Fail::Unreachable("the server returned an empty directory page".into()));
            }
            for e in page.entries {
                cookie = e.cookie;
                if e.name != b"." && e.name != b".." {
                    out.push(e.name);
                }
            }
            verf = page.verf;
            if page.eof {
                return Ok(out);
            }
        }
    }

    /// Removes `name` in `dir`, a directory with everything below it. Returns how many
    /// non-directory entries went.
    fn remove_tree<'a>(&'a self, dir: &'a Fh, name: &'a [u8]) -> futures::future::BoxFuture<'a, Result<u64, Fail>> {
        Box::pin(async move {
            let Some(found) = self.lookup(dir, name).await? else {
                return Ok(0);
            };
            if found.attr.kind != EntryKind::Dir {
                return match self.wire.remove(dir, name).await {
                    Ok(()) => Ok(1),
                    Err(f) if f.is(Cond::NoEnt) => Ok(0),
                    Err(e) => Err(e),
                };
            }
            let mut removed = 0;
            // Batches, so a huge directory never needs all its names at once; a name listed
            // again after removals is simply gone.
            loop {
                let names = self.names(&found.fh).await?;
                if names.is_empty() {
                    break;
                }
                for n in names.iter().take(4096) {
                    removed += self.remove_tree(&found.fh, n).await?;
                }
            }
            match self.wire.rmdir(dir, name).await {
                Ok(()) => Ok(removed),
                Err(f) if f.is(Cond::NoEnt) => Ok(removed),
                Err(e) => Err(e),
            }
        })
    }

    /// Owner, mode and times of an entry, in as few SETATTRs as correctness allows: a chown
    /// clears set-id bits, so mode then comes in a second call; times always ride with the
    /// last, because every other change touches them.
    /// With `close`, the file is closed by the last SETATTR's round trip (see
    /// [`Wire::setattr_and_close`]).
    async fn apply_meta(&self, fh: &Fh, meta: &Meta, default_mode: u32, rel: &[u8], close: Option<&Opened>) -> Result<(), FerryError> {
        let owner = match (self.owner_settable, meta.uid, meta.gid) {
            (true, Some(u), Some(g)) => Some((u, g)),
            _ => None,
        };
        let symlink = meta.kind() == EntryKind::Symlink;
        let mode = if symlink { None } else { Some(meta.perm().unwrap_or(default_mode)) };
        let mut last = SetAttrs { mode, atime: Some(meta.atime.unwrap_or(meta.mtime)), mtime: Some(meta.mtime), ..SetAttrs::default() };
        // Only root may give a file away: a refusal of a SETATTR carrying an owner, sent with
        // root's credentials, is root squash.
        let owner_refused = |op: &str, f: Fail| {
            if f.is(Cond::Access) {
                FerryError::new(
                    ErrorKind::PermissionDenied,
                    format!(
                        "cannot {op} {}: the server refused (the export squashes root: export it with no_root_squash, or copy without owners)",
                        self.describe(rel)
                    ),
                )
            } else {
                self.fail(op, rel, f)
            }
        };
        if let Some((u, g)) = owner {
            let set_owner = SetAttrs { uid: Some(u), gid: Some(g), ..SetAttrs::default() };
            if mode.is_some_and(|m| m & 0o6000 != 0) {
                self.wire.setattr(fh, &set_owner, None).await.map_err(|f| owner_refused("set owner of", f))?;
            } else {
                last.uid = set_owner.uid;
                last.gid = set_owner.gid;
            }
        }
        let set = match close {
            Some(open) => self.wire.setattr_and_close(fh, &last, open).await,
            None => self.wire.setattr(fh, &last, None).await,
        };
        match owner {
            Some(_) => set.map_err(|f| owner_refused("set owner and metadata of", f)),
            None => set.map_err(|f| self.fail("set metadata on", rel, f)),
        }
    }

    /// Renames a finished temporary entry over `rel`'s name; a directory in the way goes first.
    async fn rename_into_place(&self, dir: &Fh, temp: &[u8], rel: &[u8]) -> Result<(), FerryError> {
        let (_, name) = paths::split(rel);
        match self.wire.rename(dir, temp, name).await {
            Ok(()) => Ok(()),
            Err(f) if f.is(Cond::Exist) || f.is(Cond::NotEmpty) || f.is(Cond::IsDir) => {
                self.remove_tree(dir, name).await.map_err(|f| self.fail("remove", rel, f))?;
                self.forget(&self.full(rel));
                self.wire.rename(dir, temp, name).await.map_err(|f| self.fail("rename into place", rel, f))
            }
            // The first send was carried out and its answer lost: the temporary name is gone.
            Err(f) if f.is(Cond::NoEnt) && f.resent() && self.lookup(dir, temp).await.ok().flatten().is_none() => Ok(()),
            Err(f) => Err(self.fail("rename into place", rel, f)),
        }
    }

    /// Fills `buf` from `pos` of a file, in READs of the server's size sent side by side.
    async fn read_exact(&self, fh: &Fh, pos: u64, buf: &mut [u8]) -> Result<Result<(), u64>, Fail> {
        let rsize = self.rsize as usize;
        let reads = buf.chunks_mut(rsize).enumerate().map(|(i, piece)| self.read_piece(fh, pos + (i * rsize) as u64, piece));
        for r in join_all(reads).await {
            if let Err(short) = r? {
                return Ok(Err(short));
            }
        }
        Ok(Ok(()))
    }

    /// One piece: `Err(offset)` at the end of the file before the piece is full.
    async fn read_piece(&self, fh: &Fh, pos: u64, piece: &mut [u8]) -> Result<Result<(), u64>, Fail> {
        let mut done = 0;
        while done < piece.len() {
            let offset = pos + done as u64;
            let n = self.wire.read(fh, offset, &mut piece[done..]).await?;
            done += n;
            if n == 0 {
                return Ok(Err(offset));
            }
        }
        Ok(Ok(()))
    }

    /// Writes `data` at `pos`, in WRITEs of the server's size sent side by side, and checks
    /// that every answer carries the same write verifier.
    async fn write_all(&self, file: &Opened, pos: u64, data: &[u8], sync: bool) -> Result<[u8; 8], Fail> {
        let wsize = self.wsize as usize;
        let writes = data.chunks(wsize).enumerate().map(|(i, piece)| async move {
            let mut done = 0;
            let mut verf = None;
            while done < piece.len() {
                let offset = pos + (i * wsize + done) as u64;
                let rest = &piece[done..];
                let (count, v) = self.wire.write(file, offset, rest, sync).await?;
                if count == 0 {
                    return Err(Fail::Unreachable("the server wrote nothing of a WRITE".into()));
                }
                done += (count as usize).min(rest.len());
                verf = Some(v);
            }
            Ok(verf)
        });
        let mut verf = None;
        for r in join_all(writes).await {
            if let Some(v) = r? {
                if verf.is_some_and(|old| old != v) {
                    return Err(restarted());
                }
                verf = Some(v);
            }
        }
        Ok(verf.unwrap_or_default())
    }

    /// Records the verifier of UNSTABLE writes to `fh`; a different one than before means the
    /// server restarted and may have dropped the earlier ones.
    fn note_verifier(&self, fh: &Fh, verf: [u8; 8]) -> Result<(), Fail> {
        let mut v = self.verifiers.lock().unwrap_or_else(|p| p.into_inner());
        match v.insert(fh.0.clone(), verf) {
            Some(old) if old != verf => Err(restarted()),
            _ => Ok(()),
        }
    }

    async fn commit_file(&self, fh: &Fh) -> Result<(), Fail> {
        let verf = self.wire.commit(fh).await?;
        let expected = self.verifiers.lock().unwrap_or_else(|p| p.into_inner()).remove(&fh.0);
        match expected {
            Some(v) if v != verf => Err(restarted()),
            _ => Ok(()),
        }
    }

    /// Remembers the handle of a staged temporary file (see `staged`).
    fn stage(&self, rel: &[u8], temp: &[u8], file: StagedFile) {
        let mut staged = self.staged.lock().unwrap_or_else(|p| p.into_inner());
        // Staged entries are committed or discarded within their batch; a bound keeps
        // those of failed batches from piling up.
        if staged.len() >= 1 << 16 {
            staged.clear();
        }
        staged.insert((rel.to_vec(), temp.to_vec()), file);
    }

    fn unstage(&self, rel: &[u8], temp: &[u8]) {
        self.staged.lock().unwrap_or_else(|p| p.into_inner()).remove(&(rel.to_vec(), temp.to_vec()));
    }

    /// The handle of a staged entry's temporary file, and whether its content is durable
    /// already.
    async fn staged_fh(&self, staged: &Staged, temp: &[u8]) -> Result<StagedFile, FerryError> {
        if let Some(file) = self.staged.lock().unwrap_or_else(|p| p.into_inner()).get(&(staged.rel.clone(), temp.to_vec())) {
            return Ok(file.clone());
        }
        let (dir, _) = self.parent(&staged.rel, false).await?.ok_or_else(|| self.vanished(&staged.rel))?;
        match self.lookup(&dir, temp).await.map_err(|f| self.fail("look up", &staged.rel, f))? {
            Some(f) => Ok(StagedFile { fh: f.fh, durable: false }),
            None => {
                Err(FerryError::new(ErrorKind::Unavailable, format!("the temporary file of {} vanished before it was committed", self.describe(&staged.rel))))
            }
        }
    }

    /// Removes a temporary entry, whatever happens (the sweep of a later run finds debris).
    async fn remove_quietly(&self, dir: &Fh, temp: &[u8]) {
        let _ = self.wire.remove(dir, temp).await;
    }
}

/// A COMMIT or WRITE answered with another verifier: the server restarted in between.
fn restarted() -> Fail {
    Fail::Unreachable("the server restarted while the file was written (its write verifier changed), so it is written again".into())
}

/// What opening an export yields: the connection, the export's root, the path below it, and
/// the largest READ and WRITE.
type Connected = (Wire, Fh, Vec<u8>, (u32, u32));

/// Connects to the server in the URL's version.
async fn connect(url: &NfsUrl, shown: &str, ip: std::net::IpAddr, privileged: bool, uid: u32, gid: u32) -> Result<Connected, FerryError> {
    match url.version {
        Version::V3 => {
            let cred = rpc::credential(uid, gid);
            let (export, base, nfs_port) = mount(url, shown, ip, privileged, &cred).await?;
            let pool = Pool::new(SocketAddr::new(ip, nfs_port), privileged, cred, url.connections, url.timeout);
            let wire = Wire::V3(pool);
            let sizes = wire.io_sizes(&export).await;
            let sizes = sizes.map_err(|f| open_error(shown, ErrorKind::Unavailable, format_args!("cannot reach the NFS service: {}", fail_text(f))))?;
            Ok((wire, export, base, sizes))
        }
        Version::V41 => {
            let addr = SocketAddr::new(ip, url.nfs_port.unwrap_or(2049));
            let limit = Duration::from_secs(10).min(url.timeout);
            let cfg = wire::config4(addr, uid, gid, url.connections, url.timeout);
            // Opening is not retried for the whole outage window: a server that is not there
            // is a mistake to report now.
            let client = match tokio::time::timeout(limit.max(Duration::from_secs(5)) * 2, v4::client::Client::connect(cfg)).await {
                Ok(Ok(c)) => c,
                Ok(Err(e)) => {
                    return Err(open_error(shown, ErrorKind::Unavailable, format_args!("cannot open an NFSv4.1 session with {addr}: {e}")));
                }
                Err(_) => {
                    return Err(open_error(
                        shown,
                        ErrorKind::Unavailable,
                        format_args!("cannot reach the NFSv4.1 service at {addr} (timed out); check the host and port, and that the NFS server runs"),
                    ))
                }
            };
            let root = client.root();
            let limits = client.limits();
            let base: Vec<u8> = url.path.strip_prefix(b"/").unwrap_or(&url.path).to_vec();
            let wire = Wire::V4(client);
            // The first component is the export in the server's namespace: one that is not
            // there gets its own line, with what the server does export.
            if let Some(first) = base.split(|&b| b == b'/').next().filter(|c| url.export_in_path && !c.is_empty()) {
                match wire.lookup(&root, first).await {
                    Ok(Some(_)) => {}
                    Ok(None) => {
                        let mut names = Vec::new();
                        let (mut cookie, mut verf) = (0, [0; 8]);
                        while let Ok(page) = wire.readdir(&root, cookie, verf, false).await {
                            names.extend(page.entries.iter().map(|e| String::from_utf8_lossy(&e.name).into_owned()));
                            (cookie, verf) = (page.entries.last().map_or(cookie, |e| e.cookie), page.verf);
                            if page.eof || page.entries.is_empty() || names.len() > 100 {
                                break;
                            }
                        }
                        let listed = if names.is_empty() { String::new() } else { format!("; it exports /{}", names.join(", /")) };
                        wire.shutdown().await;
                        return Err(open_error(
                            shown,
                            ErrorKind::NotFound,
                            format_args!(
                                "the server has no such export /{} for this host: it is not exported, or the export's client list leaves this host out (check the path, which NFSv4 takes in the server's pseudo namespace, and the export's clients){listed}",
                                String::from_utf8_lossy(first)
                            ),
                        ));
                    }
                    Err(f) if f.is(Cond::Access) => {
                        wire.shutdown().await;
                        return Err(open_error(
                            shown,
                            ErrorKind::PermissionDenied,
                            format_args!(
                                "the server denies access to the export /{} (check the export's client list, security flavour and credentials, or ?uid=/?gid=)",
                                String::from_utf8_lossy(first)
                            ),
                        ));
                    }
                    Err(f) => {
                        wire.shutdown().await;
                        return Err(open_error(shown, ErrorKind::Unavailable, format_args!("cannot look up the export: {}", fail_text(f))));
                    }
                }
            }
            Ok((wire, root, base, limits))
        }
    }
}

/// A failure as text, for messages about the export as a whole.
fn fail_text(f: Fail) -> String {
    match f {
        Fail::Status { code, .. } => code.to_string(),
        Fail::Unreachable(why) | Fail::Refused(why) => why,
    }
}

/// Mounts the longest leading part of the URL's path that the server exports (NFSv3).
/// Returns the export's root handle, the rest of the path, and the NFS port.
async fn mount(
    url: &NfsUrl,
    shown: &str,
    ip: std::net::IpAddr,
    privileged: bool,
    cred: &nfs3_client::nfs3_types::rpc::opaque_auth<'static>,
) -> Result<(Fh, Vec<u8>, u16), FerryError> {
    let limit = Duration::from_secs(10).min(url.timeout);
    let unreachable = |what: String, e: &dyn std::fmt::Display| {
        open_error(shown, ErrorKind::Unavailable, format_args!("cannot reach the {what} ({e}); check the host and port, and that the NFS server runs"))
    };
    let connect = |port: u16, what: String| async move {
        match tokio::time::timeout(limit, rpc::connect(SocketAddr::new(ip, port), privileged)).await {
            Ok(Ok(s)) => Ok(Conn(s)),
            Ok(Err(e)) => Err(unreachable(what, &e)),
            Err(_) => Err(unreachable(what, &"timed out")),
        }
    };
    let (nfs_port, mount_port) = match (url.nfs_port, url.mount_port) {
        (Some(n), Some(m)) => (n, m),
        (n, m) => {
            let what = format!("portmapper at {ip}:111");
            let hint = "give the ports as ?nfsport=N&mountport=N";
            let mut pm = PortmapperClient::new(connect(111, format!("{what}; {hint}")).await?);
            let mut ports = [n, m];
            let programs = [
                (nfs3_client::nfs3_types::nfs3::PROGRAM, nfs3_client::nfs3_types::nfs3::VERSION, "NFSv3"),
                (nfs3_client::nfs3_types::mount::PROGRAM, nfs3_client::nfs3_types::mount::VERSION, "MOUNT"),
            ];
            for (port, (prog, vers, name)) in ports.iter_mut().zip(programs) {
                if port.is_some() {
                    continue;
                }
                *port = Some(match tokio::time::timeout(limit, pm.getport(prog, vers)).await {
                    Ok(Ok(p)) => p,
                    Ok(Err(e)) => {
                        return Err(open_error(shown, ErrorKind::Unavailable, format_args!("the {what} does not know the {name} service ({e}); {hint}")))
                    }
                    Err(_) => return Err(open_error(shown, ErrorKind::Unavailable, format_args!("the {what} did not answer; {hint}"))),
                });
            }
            let [Some(n), Some(m)] = ports else { unreachable!("both ports were filled in") };
            (n, m)
        }
    };
    let conn = connect(mount_port, format!("MOUNT service at {ip}:{mount_port}")).await?;
    let mut mnt = MountClient::new_with_auth(conn, cred.clone(), Default::default());
    let comps: Vec<&[u8]> = url.path.split(|&b| b == b'/').filter(|c| !c.is_empty()).collect();
    let mut denied = None;
    for n in (1..=comps.len()).rev() {
        let export: Vec<u8> = comps[..n].iter().flat_map(|c| [b"/".as_slice(), c].concat()).collect();
        let answer = tokio::time::timeout(limit, mnt.mnt(dirpath(Opaque::borrowed(&export)))).await;
        match answer {
            Ok(Ok(ok)) => {
                let base = comps[n..].join(&b'/');
                return Ok((Fh(ok.fhandle.0.into_owned()), base, nfs_port));
            }
            Ok(Err(nfs3_client::error::Error::MountError(e))) => {
                use nfs3_client::nfs3_types::mount::mountstat3::*;
                if matches!(e, MNT3ERR_ACCES | MNT3ERR_PERM) {
                    denied.get_or_insert(String::from_utf8_lossy(&export).into_owned());
                }
            }
            Ok(Err(e)) => return Err(unreachable(format!("MOUNT service at {ip}:{mount_port}"), &e)),
            Err(_) => return Err(unreachable(format!("MOUNT service at {ip}:{mount_port}"), &"timed out")),
        }
    }
    let exports: Option<Vec<Vec<u8>>> = match tokio::time::timeout(limit, mnt.export()).await {
        Ok(Ok(list)) => Some(list.into_inner().iter().map(|e| e.ex_dir.0.to_vec()).collect()),
        _ => None,
    };
    let listed = match &exports {
        Some(list) if !list.is_empty() => {
            format!("; it exports {}", list.iter().map(|e| String::from_utf8_lossy(e).into_owned()).collect::<Vec<_>>().join(", "))
        }
        _ => String::new(),
    };
    // Servers answer ACCES for a path they do not export as well (ganesha does), and list
    // only the exports this host may mount: a listed export was refused for other reasons
    // (security flavour, credentials); an unlisted one may not exist or may leave this host
    // out of its client list, and the message says both.
    let exported = |e: &Vec<u8>| url.path.starts_with(e) && matches!(url.path.get(e.len()), None | Some(b'/'));
    let listed_and_denied = denied.as_ref().filter(|_| exports.as_ref().is_some_and(|list| list.iter().any(exported)));
    Err(match (listed_and_denied, denied.is_some()) {
        (Some(export), _) => open_error(
            shown,
            ErrorKind::PermissionDenied,
            format_args!("the server denies access to the export {export} (check the export's security flavour and credentials, or ?uid=/?gid=){listed}"),
        ),
        (None, true) => open_error(
            shown,
            ErrorKind::NotFound,
            format_args!("the server has no such export for this host: it is not exported, or the export's client list leaves this host out (check the path and the export's clients){listed}"),
        ),
        (None, false) => open_error(shown, ErrorKind::NotFound, format_args!("the server has no such export (check the path){listed}")),
    })
}

impl Location for NfsLocation {
    fn describe(&self, rel: &[u8]) -> String {
        if rel.is_empty() {
            self.shown.clone()
        } else {
            format!("{}/{}", self.shown.trim_end_matches('/'), paths::display(rel))
        }
    }

    fn capabilities(&self) -> Capabilities {
        profile().capabilities
    }

    fn limits(&self) -> Limits {
        profile().limits
    }

    fn list(&self, dir: &[u8], resume: Option<&[u8]>, max: usize) -> Result<Page, FerryError> {
        self.block(async {
            let Some(fh) = self.dir(&self.full(dir), false).await.map_err(|f| self.fail("open directory", dir, f))? else {
                return Ok(Page::default());
            };
            let (mut cookie, mut verf) = match resume {
                Some(r) if r.len() == 16 => (u64::from_le_bytes(r[..8].try_into().expect("8 bytes")), r[8..].try_into().expect("8 bytes")),
                _ => (0, [0; 8]),
            };
            let mut page = Page::default();
            loop {
                let r = self.wire.readdir(&fh, cookie, verf, true).await.map_err(|f| self.fail("list", dir, f))?;
                verf = r.verf;
                let eof = r.eof;
                if r.entries.is_empty() && !eof {
                    return Err(FerryError::new(ErrorKind::Unavailable, format!("cannot list {}: the server returned an empty page", self.describe(dir))));
                }
                let last = r.entries.len();
                for (i, e) in r.entries.into_iter().enumerate() {
                    cookie = e.cookie;
                    let name = e.name.as_slice();
                    if name == b"." || name == b".." || name.starts_with(TEMP_PREFIX) {
                        continue;
                    }
                    let attr = match (e.attr, e.fh) {
                        (Some(a), _) => a,
                        (None, Some(h)) => self.wire.getattr(&h).await.map_err(|f| self.fail("stat", &paths::child(dir, name), f))?,
                        (None, None) => match self.lookup(&fh, name).await.map_err(|f| self.fail("stat", &paths::child(dir, name), f))? {
                            Some(found) => found.attr,
                            None => continue, // removed while listing
                        },
                    };
                    let mut cursor = cookie.to_le_bytes().to_vec();
                    cursor.extend_from_slice(&verf);
                    page.entries.push(Listed { name: name.to_vec(), meta: meta_of(&attr), complete: true, cursor: cursor.clone() });
                    if page.entries.len() >= max && !(eof && i + 1 == last) {
                        page.resume = Some(cursor);
                        return Ok(page);
                    }
                }
                if eof {
                    return Ok(page);
                }
            }
        })
    }

    fn stat(&self, rel: &[u8]) -> Result<Option<Meta>, FerryError> {
        self.block(async {
            let Some(found) = self.find(rel).await? else {
                return Ok(None);
            };
            let mut m = meta_of(&found.attr);
            if m.kind() == EntryKind::Symlink {
                m.link_target = Some(self.wire.readlink(&found.fh).await.map_err(|f| self.fail("read link", rel, f))?);
            }
            Ok(Some(m))
        })
    }

    fn stat_dir(&self, rel: &[u8]) -> Result<Option<Meta>, FerryError> {
        self.stat(rel)
    }

    fn xattrs(&self, _rel: &[u8]) -> Result<Xattrs, FerryError> {
        Ok(Vec::new())
    }

    fn tags(&self, _rel: &[u8]) -> Result<Option<String>, FerryError> {
        Ok(None)
    }

    fn open(&self, rel: &[u8], _from: u64) -> Result<Box<dyn Source + '_>, FerryError> {
        let found = self.block(self.find(rel))?.ok_or_else(|| source_changed(self.describe(rel), "it was removed"))?;
        if found.attr.kind != EntryKind::File {
            return Err(source_changed(self.describe(rel), "it is no longer a regular file"));
        }
        Ok(Box::new(NfsSource { loc: self, rel: rel.to_vec(), fh: found.fh, meta: meta_of(&found.attr) }))
    }

    fn create(&self, rel: &[u8], target: Target<'_>, meta: &Meta, xattrs: &Xattrs) -> Result<Box<dyn Sink + '_>, FerryError> {
        let _ = xattrs; // Not carried (see the module's documentation).
        self.block(async {
            match target {
                Target::File { size, resume } => {
                    let (dir, name) = self.parent(rel, true).await?.ok_or_else(|| self.vanished(rel))?;
                    let temp = match resume {
                        Some(version) => version_temp_name(version, &name),
                        None => temp_name(&self.nonce, &name),
                    };
                    let mut sink = NfsSink {
                        loc: self,
                        rel: rel.to_vec(),
                        dir,
                        file: None,
                        temp,
                        start: 0,
                        len: size,
                        resumed: 0,
                        written_end: 0,
                        meta: Some(meta.clone()),
                        durable: false,
                    };
                    // A file that fits one WRITE has nothing worth resuming, and its CREATE
                    // (UNCHECKED) truncates any debris: no LOOKUP for it.
                    let found =
                        if size <= self.wsize as u64 { None } else { self.lookup(&sink.dir, &sink.temp).await.map_err(|f| self.fail("look up", rel, f))? };
                    match found {
                        Some(f) if resume.is_some() && f.attr.kind == EntryKind::File && f.attr.size <= size => {
                            sink.resumed = f.attr.size;
                            sink.written_end = f.attr.size;
                            sink.file = Some(self.wire.open_write(&f.fh).await.map_err(|f| self.fail("open", rel, f))?);
                        }
                        Some(_) => {
                            self.remove_tree(&sink.dir, &sink.temp).await.map_err(|f| self.fail("remove", rel, f))?;
                        }
                        None => {}
                    }
                    Ok(Box::new(sink) as Box<dyn Sink + '_>)
                }
                Target::Part { upload, offset, len, .. } => {
                    super::check_tree_upload(rel, upload, || self.describe(rel))?;
                    let (dir, _) = self.parent(rel, false).await?.ok_or_else(|| self.vanished(rel))?;
                    let fh = self
                        .lookup(&dir, upload.as_bytes())
                        .await
                        .map_err(|f| self.fail("look up", rel, f))?
                        .ok_or_else(|| FerryError::new(ErrorKind::Unavailable, format!("the multipart write of {} vanished", self.describe(rel))))?;
                    let file = self.wire.open_write(&fh.fh).await.map_err(|f| self.fail("open", rel, f))?;
                    let sink = NfsSink {
                        loc: self,
                        rel: rel.to_vec(),
                        dir,
                        file: Some(file),
                        temp: upload.as_bytes().to_vec(),
                        start: offset,
                        len,
                        resumed: 0,
                        written_end: 0,
                        meta: None,
                        durable: false,
                    };
                    Ok(Box::new(sink) as Box<dyn Sink + '_>)
                }
            }
        })
    }

    fn make(&self, rel: &[u8], special: &Special, meta: &Meta, _xattrs: &Xattrs) -> Result<Staged, FerryError> {
        self.block(async {
            let (dir, name) = self.parent(rel, true).await?.ok_or_else(|| self.vanished(rel))?;
            let temp = temp_name(&format!("s{}", self.nonce), &name);
            let _ = self.remove_tree(&dir, &temp).await;
            let made = match special {
                Special::Symlink { target } => self.wire.symlink(&dir, &temp, target, (meta.atime.unwrap_or(meta.mtime), meta.mtime)).await,
                Special::Node => {
                    let mode = meta.mode.unwrap_or(libc::S_IFIFO | 0o644);
                    let (major, minor) = (libc::major(meta.rdev), libc::minor(meta.rdev));
                    let node = match mode & libc::S_IFMT {
                        libc::S_IFCHR => Node::Char(major, minor),
                        libc::S_IFBLK => Node::Block(major, minor),
                        libc::S_IFSOCK => Node::Socket,
                        _ => Node::Fifo,
                    };
                    self.wire.mknod(&dir, &temp, node, 0o600).await
                }
            };
            let fh = match made {
                Ok(Some(fh)) => fh,
                Ok(None) => self.lookup(&dir, &temp).await.ok().flatten().map(|f| f.fh).ok_or_else(|| self.vanished(rel))?,
                Err(f) => {
                    let mut err = self.fail(if matches!(special, Special::Symlink { .. }) { "create symlink" } else { "create special file" }, rel, f);
                    if matches!(err.kind, ErrorKind::PermissionDenied) && matches!(special, Special::Node) {
                        err.kind = ErrorKind::Unsupported;
                    }
                    return Err(err);
                }
            };
            if let Err(e) = self.apply_meta(&fh, meta, 0o644, rel, None).await {
                self.remove_quietly(&dir, &temp).await;
                return Err(e);
            }
            Ok(Staged { rel: rel.to_vec(), kind: meta.kind(), size: 0, crc32c: None, token: Token::Temp(temp), part_tags: Vec::new(), resumed: 0 })
        })
    }

    fn ensure_dir(&self, rel: &[u8]) -> Result<(), FerryError> {
        self.block(self.dir(&self.full(rel), true)).map(|_| ()).map_err(|f| self.fail("create directory", rel, f))
    }

    fn set_meta(&self, rel: &[u8], meta: &Meta, _xattrs: Option<&Xattrs>) -> Result<(), FerryError> {
        self.block(async {
            let fh = if meta.kind() == EntryKind::Dir {
                self.dir(&self.full(rel), true).await.map_err(|f| self.fail("open directory", rel, f))?.ok_or_else(|| self.vanished(rel))?
            } else {
                self.find(rel).await?.ok_or_else(|| self.vanished(rel))?.fh
            };
            let default = if meta.kind() == EntryKind::Dir { 0o755 } else { 0o644 };
            self.apply_meta(&fh, meta, default, rel, None).await
        })
    }

    fn link(&self, target: &[u8], rel: &[u8]) -> Result<bool, FerryError> {
        self.block(async {
            let missing =
                || FerryError::new(ErrorKind::NotFound, format!("cannot link {}: its first path {} was not copied", self.describe(rel), self.describe(target)));
            let t = self.find(target).await?.ok_or_else(missing)?;
            let (ldir, lname) = self.parent(rel, true).await?.ok_or_else(|| self.vanished(rel))?;
            if let Some(existing) = self.lookup(&ldir, &lname).await.map_err(|f| self.fail("look up", rel, f))? {
                if (existing.attr.fsid, existing.attr.fileid) == (t.attr.fsid, t.attr.fileid) {
                    return Ok(false);
                }
            }
            let temp = temp_name(&format!("l{}", self.nonce), &lname);
            let _ = self.remove_tree(&ldir, &temp).await;
            match self.wire.link(&t.fh, &ldir, &temp).await {
                Ok(()) => {}
                Err(f) if f.is(Cond::Exist) && f.resent() => {}
                Err(f) => return Err(self.fail("create hard link", rel, f)),
            }
            if let Err(e) = self.rename_into_place(&ldir, &temp, rel).await {
                self.remove_quietly(&ldir, &temp).await;
                return Err(e);
            }
            Ok(true)
        })
    }

    /// Content: one COMMIT per staged file, side by side; each answers the write verifier its
    /// writes got, or the file is written again. Names: NFSv3 makes namespace changes durable
    /// before it answers them.
    fn sync(&self, staged: &[Staged], what: Durable) -> Result<(), FerryError> {
        if what == Durable::Names {
            return Ok(());
        }
        self.block(async {
            let commits =
                staged.iter().filter(|s| s.kind == EntryKind::File).filter_map(|s| super::temp_of(s).map(|(t, _, _)| (s, t))).map(|(s, temp)| async move {
                    let file = self.staged_fh(s, temp).await?;
                    if file.durable {
                        return Ok(());
                    }
                    self.commit_file(&file.fh).await.map_err(|f| self.fail("flush", &s.rel, f))
                });
            join_all(commits).await.into_iter().collect::<Result<Vec<()>, FerryError>>().map(|_| ())
        })
    }

    fn check(&self, staged: &Staged, buf: &mut Vec<u8>) -> Result<Option<String>, FerryError> {
        let (Some(want), Some((temp, offset, len))) = (staged.crc32c, super::temp_of(staged)) else {
            return Ok(None);
        };
        if len == 0 {
            return Ok(None);
        }
        let fh = self.block(self.staged_fh(staged, temp))?.fh;
        let meta = Meta { size: offset + len, ..Meta::default() };
        let mut src = NfsSource { loc: self, rel: staged.rel.clone(), fh, meta };
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
        self.unstage(&staged.rel, temp);
        self.block(async {
            let (dir, _) = self.parent(&staged.rel, false).await?.ok_or_else(|| self.vanished(&staged.rel))?;
            self.rename_into_place(&dir, temp, &staged.rel).await
        })
    }

    fn discard(&self, staged: &Staged) {
        if let Token::Temp(temp) = &staged.token {
            self.unstage(&staged.rel, temp);
            self.block(async {
                if let Ok(Some((dir, _))) = self.parent(&staged.rel, false).await {
                    self.remove_quietly(&dir, temp).await;
                }
            });
        }
    }

    fn remove(&self, rels: &[Vec<u8>]) -> Vec<Result<u64, FerryError>> {
        self.block(async {
            let mut out = Vec::with_capacity(rels.len());
            for rel in rels {
                let one = async {
                    let Some((dir, name)) = self.parent(rel, false).await? else {
                        return Ok(0);
                    };
                    let n = self.remove_tree(&dir, &name).await.map_err(|f| self.fail("remove", rel, f))?;
                    self.forget(&self.full(rel));
                    Ok(n)
                };
                out.push(one.await);
            }
            out
        })
    }

    fn sweep(&self, dir: &[u8]) -> Result<(), FerryError> {
        self.block(async {
            let Some(fh) = self.dir(&self.full(dir), false).await.map_err(|f| self.fail("open directory", dir, f))? else {
                return Ok(());
            };
            let names = self.names(&fh).await.map_err(|f| self.fail("list", dir, f))?;
            for name in names.into_iter().filter(|n| n.starts_with(TEMP_PREFIX)) {
                self.remove_tree(&fh, &name).await.map_err(|f| self.fail("remove temporary file in", dir, f))?;
            }
            Ok(())
        })
    }

    fn create_multipart(&self, rel: &[u8], size: u64, _meta: &Meta) -> Result<String, FerryError> {
        self.block(async {
            let (dir, _) = self.parent(rel, true).await?.ok_or_else(|| self.vanished(rel))?;
            let temp = temp_name("parts", rel);
            let file = self.wire.create(&dir, &temp, 0o600, Some(size)).await.map_err(|f| self.fail("create", rel, f))?;
            self.wire.close(&file).await.map_err(|f| self.fail("create", rel, f))?;
            Ok(String::from_utf8_lossy(&temp).into_owned())
        })
    }

    fn complete_multipart(&self, rel: &[u8], upload: &str, done: &Completed<'_>) -> Result<Staged, FerryError> {
        let Completed { size, meta, .. } = *done;
        super::check_tree_upload(rel, upload, || self.describe(rel))?;
        self.block(async {
            let (dir, _) = self.parent(rel, false).await?.ok_or_else(|| self.vanished(rel))?;
            let fh = self.lookup(&dir, upload.as_bytes()).await.map_err(|f| self.fail("look up", rel, f))?.ok_or_else(|| self.vanished(rel))?.fh;
            self.wire.setattr(&fh, &SetAttrs { size: Some(size), ..SetAttrs::default() }, None).await.map_err(|f| self.fail("write", rel, f))?;
            self.apply_meta(&fh, meta, 0o644, rel, None).await?;
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
        self.block(async {
            if let Some((dir, _)) = self.parent(rel, false).await? {
                match self.wire.remove(&dir, upload.as_bytes()).await {
                    Ok(()) => {}
                    Err(f) if f.is(Cond::NoEnt) => {}
                    Err(f) => return Err(self.fail("remove temporary file of", rel, f)),
                }
            }
            Ok(())
        })
    }
}

/// A staged temporary file's key: (entry, temporary name).
type StagedKey = (Vec<u8>, Vec<u8>);

/// A staged temporary file: its handle, and whether its content is durable already.
#[derive(Clone, Debug)]
struct StagedFile {
    fh: Fh,
    durable: bool,
}

/// A regular file open for reading: its handle and attributes.
struct NfsSource<'a> {
    loc: &'a NfsLocation,
    rel: Vec<u8>,
    fh: Fh,
    meta: Meta,
}

impl Source for NfsSource<'_> {
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
        match self.loc.block(self.loc.read_exact(&self.fh, pos, buf)) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(source_changed(self.loc.describe(&self.rel), "it shrank")),
            Err(f) if f.is(Cond::Stale) => Err(source_changed(self.loc.describe(&self.rel), "it was removed")),
            Err(f) => Err(self.loc.fail("read", &self.rel, f)),
        }
    }

    fn unchanged(&mut self) -> Result<bool, FerryError> {
        let a = self.loc.block(self.loc.wire.getattr(&self.fh)).map_err(|f| self.loc.fail("stat", &self.rel, f))?;
        Ok(a.size == self.meta.size && a.mtime == self.meta.mtime)
    }
}

/// A temporary file being written: a whole file, or one range of a multipart write.
struct NfsSink<'a> {
    loc: &'a NfsLocation,
    rel: Vec<u8>,
    dir: Fh,
    /// Created (and opened) at the first write (see the local tree's sink); closed when
    /// the sink is finished or aborted.
    file: Option<Opened>,
    temp: Vec<u8>,
    start: u64,
    len: u64,
    resumed: u64,
    /// The end of the furthest byte written: when it is the file's size, no SETATTR of the
    /// size is needed.
    written_end: u64,
    /// A whole file's metadata, applied when it is finished; `None` for a part.
    meta: Option<Meta>,
    /// Its content went in one FILE_SYNC WRITE: nothing to COMMIT.
    durable: bool,
}

impl NfsSink<'_> {
    async fn file(&mut self) -> Result<Opened, FerryError> {
        if let Some(file) = &self.file {
            return Ok(file.clone());
        }
        let file = self.loc.wire.create(&self.dir, &self.temp, 0o600, None).await.map_err(|f| self.loc.fail("create", &self.rel, f))?;
        Ok(self.file.insert(file).clone())
    }
}

impl Sink for NfsSink<'_> {
    fn resumed(&self) -> u64 {
        self.resumed
    }

    fn crc_resumed(&mut self, buf: &mut Vec<u8>) -> Result<u32, FerryError> {
        let fh = self.file.as_ref().map(|f| f.fh.clone()).ok_or_else(|| self.loc.vanished(&self.rel))?;
        let meta = Meta { size: self.start + self.resumed, ..Meta::default() };
        let mut src = NfsSource { loc: self.loc, rel: self.rel.clone(), fh, meta };
        super::crc_of(&mut src, self.start, self.resumed, buf)
    }

    fn write_at(&mut self, pos: u64, data: &[u8], _crc32c: u32) -> Result<(), FerryError> {
        let loc = self.loc;
        loc.block(async {
            let file = self.file().await?;
            // A whole small file in one WRITE: FILE_SYNC makes it durable on the way, and
            // saves the COMMIT (and its verifier bookkeeping) per file.
            let whole = loc.fsync && self.meta.is_some() && pos == 0 && data.len() as u64 == self.len && data.len() <= loc.wsize as usize;
            let verf = loc.write_all(&file, pos, data, whole).await.map_err(|f| loc.fail("write", &self.rel, f))?;
            self.durable = whole;
            if !whole {
                loc.note_verifier(&file.fh, verf).map_err(|f| loc.fail("write", &self.rel, f))?;
            }
            self.written_end = self.written_end.max(pos + data.len() as u64);
            Ok(())
        })
    }

    fn finish(mut self: Box<Self>, crc32c: u32) -> Result<Staged, FerryError> {
        let loc = self.loc;
        let done = loc.block(async {
            let file = self.file().await?;
            if let Some(meta) = &self.meta {
                if self.written_end != self.len {
                    let size = SetAttrs { size: Some(self.len), ..SetAttrs::default() };
                    loc.wire.setattr(&file.fh, &size, Some(&file)).await.map_err(|f| loc.fail("write", &self.rel, f))?;
                }
                // The last SETATTR closes the file too.
                return loc.apply_meta(&file.fh, meta, 0o644, &self.rel, Some(&file)).await;
            }
            loc.wire.close(&file).await.map_err(|f| loc.fail("write", &self.rel, f))
        });
        let token =
            if self.meta.is_some() { Token::Temp(self.temp.clone()) } else { Token::Range { temp: self.temp.clone(), offset: self.start, len: self.len } };
        if let Err(e) = done {
            self.abort();
            return Err(e);
        }
        if let Some(file) = self.file.take() {
            // An empty file has no content to flush: CREATE is durable when answered.
            let durable = self.durable || (self.len == 0 && self.meta.is_some());
            loc.stage(&self.rel, &self.temp, StagedFile { fh: file.fh, durable });
        }
        Ok(Staged { rel: self.rel, kind: EntryKind::File, size: self.len, crc32c: Some(crc32c), token, part_tags: Vec::new(), resumed: 0 })
    }

    fn abort(self: Box<Self>) {
        let loc = self.loc;
        loc.block(async {
            if let Some(file) = &self.file {
                let _ = loc.wire.close(file).await;
            }
            if self.meta.is_some() {
                loc.remove_quietly(&self.dir, &self.temp).await;
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_common::model::Timestamp;

    #[test]
    fn attributes_map_to_meta_with_type_bits_devices_and_link_identity() {
        let a = Attr {
            kind: EntryKind::CharDev,
            mode: 0o620,
            nlink: 1,
            uid: 5,
            gid: 6,
            size: 0,
            rdev: (4, 64),
            fsid: 9,
            fileid: 77,
            atime: Timestamp { sec: 1, nsec: 2 },
            mtime: Timestamp { sec: 3, nsec: 4 },
        };
        let m = meta_of(&a);
        assert_eq!(m.kind(), EntryKind::CharDev);
        assert_eq!(m.mode, Some(libc::S_IFCHR | 0o620));
        assert_eq!(m.rdev, libc::makedev(4, 64));
        assert_eq!(m.links, Some((9, 77, 1)));
        assert_eq!((m.mtime, m.atime), (Timestamp { sec: 3, nsec: 4 }, Some(Timestamp { sec: 1, nsec: 2 })));
    }
}
