//! What the NFS backend asks of a server, spoken as NFSv3 (through [`super::rpc`]) or as
//! NFSv4.1 (through [`super::v4`]). The backend is written once against [`Wire`]; the two
//! versions differ only here:
//! - NFSv4.1 writes under an open stateid: [`Wire::create`] and [`Wire::open_write`] open the
//!   file, [`Wire::close`] closes it. NFSv3 has no open state.
//! - NFSv4.1 reads with the anonymous stateid (RFC 8881 §8.2.3): a file read once needs no
//!   OPEN and CLOSE around it.
//! - NFSv4.1 names owners with strings: ferry sends and reads numeric ones ("1000").
//! - NFSv4.1 loses its open state when the server restarts; a write then fails with a lost
//!   state ([`Cond::LostState`]), which, like a changed write verifier, makes the file be
//!   written again.
//!
//! Statuses are kept as the server sent them ([`Code`]), for messages, and classified into
//! the few conditions the backend acts on ([`Cond`]).

use std::fmt;

use ferry_common::error::ErrorKind;
use ferry_common::model::{EntryKind, Timestamp};
use nfs3_client::nfs3_types::nfs3::*;
use nfs3_client::nfs3_types::xdr_codec::Opaque;

use super::rpc::{self, rpc, Pool};
use super::v4::attr::{self as attr4, Kind};
use super::v4::client::{self as client4, Client, NodeKind, Open};
use super::v4::error::{nfsstat4::*, status_name, Error as Error4};
use super::v4::proto::{Stable, Stateid};

/// A file handle of either version: opaque bytes.
pub use super::v4::proto::Fh;

/// READDIR(PLUS) sizes: bytes of names per reply, and bytes of reply with attributes.
const DIRCOUNT: u32 = 32 << 10;
const MAXCOUNT: u32 = 256 << 10;

/// The attributes the backend uses, from either version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attr {
    pub kind: EntryKind,
    /// The 12 permission bits.
    pub mode: u32,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    /// Major and minor of a device.
    pub rdev: (u32, u32),
    /// The file system: NFSv4's 128-bit fsid folded into 64 bits.
    pub fsid: u64,
    pub fileid: u64,
    pub atime: Timestamp,
    pub mtime: Timestamp,
}

/// Attributes to set; `None` leaves one as it is.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SetAttrs {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<Timestamp>,
    pub mtime: Option<Timestamp>,
}

/// A status as the server sent it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Code {
    V3(nfsstat3),
    V4(u32),
}

/// What the backend does something about; every other status is reported by its name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cond {
    NoEnt,
    Exist,
    NotEmpty,
    IsDir,
    /// PERM or ACCES: with root's credentials on a SETATTR of an owner, root squash.
    Access,
    ReadOnly,
    Stale,
    /// The open state is gone (server restart, lease expiry): open again.
    LostState,
    TooSmall,
    Other,
}

impl Code {
    pub fn cond(self) -> Cond {
        match self {
            Code::V3(s) => {
                use nfsstat3::*;
                match s {
                    NFS3ERR_NOENT => Cond::NoEnt,
                    NFS3ERR_EXIST => Cond::Exist,
                    NFS3ERR_NOTEMPTY => Cond::NotEmpty,
                    NFS3ERR_ISDIR => Cond::IsDir,
                    NFS3ERR_ACCES | NFS3ERR_PERM => Cond::Access,
                    NFS3ERR_ROFS => Cond::ReadOnly,
                    NFS3ERR_STALE => Cond::Stale,
                    NFS3ERR_TOOSMALL => Cond::TooSmall,
                    _ => Cond::Other,
                }
            }
            Code::V4(c) => match c {
                NFS4ERR_NOENT => Cond::NoEnt,
                NFS4ERR_EXIST => Cond::Exist,
                NFS4ERR_NOTEMPTY => Cond::NotEmpty,
                NFS4ERR_ISDIR => Cond::IsDir,
                NFS4ERR_ACCESS | NFS4ERR_PERM => Cond::Access,
                NFS4ERR_ROFS => Cond::ReadOnly,
                NFS4ERR_STALE | NFS4ERR_FHEXPIRED => Cond::Stale,
                NFS4ERR_BAD_STATEID | NFS4ERR_STALE_STATEID | NFS4ERR_EXPIRED | NFS4ERR_ADMIN_REVOKED | NFS4ERR_OLD_STATEID => Cond::LostState,
                NFS4ERR_TOOSMALL => Cond::TooSmall,
                _ => Cond::Other,
            },
        }
    }

    /// How the engine treats it: retried (`Unavailable`), reported, or skipped.
    pub fn kind(self) -> ErrorKind {
        match self {
            Code::V3(s) => {
                use nfsstat3::*;
                match s {
                    NFS3ERR_NOENT => ErrorKind::NotFound,
                    NFS3ERR_PERM | NFS3ERR_ACCES | NFS3ERR_ROFS => ErrorKind::PermissionDenied,
                    NFS3ERR_EXIST | NFS3ERR_NOTEMPTY => ErrorKind::AlreadyExists,
                    NFS3ERR_NOSPC | NFS3ERR_DQUOT => ErrorKind::NoSpace,
                    NFS3ERR_IO | NFS3ERR_STALE | NFS3ERR_BADHANDLE | NFS3ERR_SERVERFAULT | NFS3ERR_JUKEBOX | NFS3ERR_NXIO | NFS3ERR_BAD_COOKIE => {
                        ErrorKind::Unavailable
                    }
                    NFS3ERR_NOTSUPP | NFS3ERR_NAMETOOLONG | NFS3ERR_FBIG | NFS3ERR_BADTYPE | NFS3ERR_XDEV | NFS3ERR_MLINK => ErrorKind::Unsupported,
                    _ => ErrorKind::Other,
                }
            }
            Code::V4(c) => match c {
                NFS4ERR_NOENT => ErrorKind::NotFound,
                NFS4ERR_PERM | NFS4ERR_ACCESS | NFS4ERR_ROFS | NFS4ERR_WRONGSEC => ErrorKind::PermissionDenied,
                NFS4ERR_EXIST | NFS4ERR_NOTEMPTY => ErrorKind::AlreadyExists,
                NFS4ERR_NOSPC | NFS4ERR_DQUOT => ErrorKind::NoSpace,
                NFS4ERR_IO
                | NFS4ERR_NXIO
                | NFS4ERR_STALE
                | NFS4ERR_FHEXPIRED
                | NFS4ERR_BADHANDLE
                | NFS4ERR_SERVERFAULT
                | NFS4ERR_DELAY
                | NFS4ERR_GRACE
                | NFS4ERR_BAD_COOKIE
                | NFS4ERR_BAD_STATEID
                | NFS4ERR_STALE_STATEID
                | NFS4ERR_OLD_STATEID
                | NFS4ERR_EXPIRED
                | NFS4ERR_ADMIN_REVOKED
                | NFS4ERR_BADSESSION
                | NFS4ERR_DEADSESSION
                | NFS4ERR_STALE_CLIENTID
                | NFS4ERR_RESOURCE
                | NFS4ERR_MOVED => ErrorKind::Unavailable,
                NFS4ERR_NOTSUPP | NFS4ERR_ATTRNOTSUPP | NFS4ERR_NAMETOOLONG | NFS4ERR_FBIG | NFS4ERR_BADTYPE | NFS4ERR_XDEV | NFS4ERR_MLINK
                | NFS4ERR_BADOWNER | NFS4ERR_BADCHAR | NFS4ERR_BADNAME => ErrorKind::Unsupported,
                _ => ErrorKind::Other,
            },
        }
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Code::V3(s) => write!(f, "{s}"),
            Code::V4(c) => write!(f, "{}", status_name(*c)),
        }
    }
}

/// Why a call failed.
#[derive(Clone, Debug)]
pub enum Fail {
    /// The server answered with `code`. `resent`: the request went out more than once, so a
    /// non-idempotent call failing with EXIST or NOENT may have succeeded the first time.
    Status { code: Code, resent: bool },
    /// No answer within the outage window.
    Unreachable(String),
    /// The server refused the credentials or the protocol.
    Refused(String),
}

impl Fail {
    pub fn is(&self, cond: Cond) -> bool {
        matches!(self, Fail::Status { code, .. } if code.cond() == cond)
    }

    pub fn resent(&self) -> bool {
        matches!(self, Fail::Status { resent: true, .. })
    }

    /// A status this backend makes up (an empty page, a zero-byte write).
    fn made_up(code: Code) -> Fail {
        Fail::Status { code, resent: false }
    }
}

impl From<rpc::Fail> for Fail {
    fn from(f: rpc::Fail) -> Fail {
        match f {
            rpc::Fail::Status { status, resent } => Fail::Status { code: Code::V3(status), resent },
            rpc::Fail::Unreachable(why) => Fail::Unreachable(why),
            rpc::Fail::Refused(why) => Fail::Refused(why),
        }
    }
}

impl From<Error4> for Fail {
    fn from(e: Error4) -> Fail {
        match e {
            Error4::Status { code, resent, .. } => Fail::Status { code: Code::V4(code), resent },
            Error4::Unreachable(why) => Fail::Unreachable(why),
            Error4::Refused(why) => Fail::Refused(why),
            // A reply that does not parse is a transport failure the retry did not cure.
            e @ Error4::Protocol(_) => Fail::Unreachable(e.to_string()),
        }
    }
}

/// One directory entry; `fh` and `attr` are `None` when the server left them out.
#[derive(Clone, Debug)]
pub struct DirEntry {
    pub name: Vec<u8>,
    pub cookie: u64,
    pub fh: Option<Fh>,
    pub attr: Option<Attr>,
}

/// One page of a directory.
#[derive(Clone, Debug, Default)]
pub struct DirPage {
    pub entries: Vec<DirEntry>,
    pub verf: [u8; 8],
    pub eof: bool,
}

/// A file open for writing: NFSv4.1 writes under its open stateid.
#[derive(Clone, Debug)]
pub struct Opened {
    pub fh: Fh,
    state: Option<Open>,
}

impl Opened {
    fn stateid(&self) -> Stateid {
        self.state.as_ref().map_or(Stateid::ANONYMOUS, |o| o.stateid)
    }
}

/// A special file for [`Wire::mknod`].
#[derive(Clone, Copy, Debug)]
pub enum Node {
    Fifo,
    Socket,
    Char(u32, u32),
    Block(u32, u32),
}

/// The connection to one server, in one of the two versions.
pub enum Wire {
    V3(Pool),
    V4(Client),
}

fn fh3(fh: &Fh) -> nfs_fh3 {
    nfs_fh3 { data: Opaque::owned(fh.0.clone()) }
}

fn from_fh3(fh: nfs_fh3) -> Fh {
    Fh(fh.data.to_vec())
}

fn dirop(dir: &Fh, name: &[u8]) -> diropargs3<'static> {
    diropargs3 { dir: fh3(dir), name: filename3::from(name.to_vec()) }
}

fn time3(t: Timestamp) -> nfstime3 {
    // NFSv3 times are unsigned 32-bit seconds: before 1970 and after 2106 are clamped.
    nfstime3 { seconds: t.sec.clamp(0, u32::MAX as i64) as u32, nseconds: t.nsec }
}

fn kind3(t: ftype3) -> EntryKind {
    match t {
        ftype3::NF3REG => EntryKind::File,
        ftype3::NF3DIR => EntryKind::Dir,
        ftype3::NF3LNK => EntryKind::Symlink,
        ftype3::NF3FIFO => EntryKind::Fifo,
        ftype3::NF3SOCK => EntryKind::Socket,
        ftype3::NF3CHR => EntryKind::CharDev,
        ftype3::NF3BLK => EntryKind::BlockDev,
    }
}

pub fn attr3(a: &fattr3) -> Attr {
    Attr {
        kind: kind3(a.type_),
        mode: a.mode & 0o7777,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        size: a.size,
        rdev: (a.rdev.specdata1, a.rdev.specdata2),
        fsid: a.fsid,
        fileid: a.fileid,
        atime: Timestamp { sec: a.atime.seconds as i64, nsec: a.atime.nseconds },
        mtime: Timestamp { sec: a.mtime.seconds as i64, nsec: a.mtime.nseconds },
    }
}

pub fn attr4(a: &attr4::Attr) -> Attr {
    Attr {
        kind: match a.kind {
            Kind::Reg => EntryKind::File,
            Kind::Dir => EntryKind::Dir,
            Kind::Symlink => EntryKind::Symlink,
            Kind::Fifo => EntryKind::Fifo,
            Kind::Socket => EntryKind::Socket,
            Kind::Char => EntryKind::CharDev,
            Kind::Block => EntryKind::BlockDev,
        },
        mode: a.mode & 0o7777,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        size: a.size,
        rdev: a.rdev,
        fsid: a.fsid.0 ^ a.fsid.1.rotate_left(32),
        fileid: a.fileid,
        atime: Timestamp { sec: a.atime.0, nsec: a.atime.1 },
        mtime: Timestamp { sec: a.mtime.0, nsec: a.mtime.1 },
    }
}

fn sattr3(s: &SetAttrs) -> sattr3 {
    let opt = |v: Option<u32>| v.map_or(Nfs3Option::None, Nfs3Option::Some);
    sattr3 {
        mode: opt(s.mode),
        uid: opt(s.uid),
        gid: opt(s.gid),
        size: s.size.map_or(Nfs3Option::None, Nfs3Option::Some),
        atime: s.atime.map_or(set_atime::DONT_CHANGE, |t| set_atime::SET_TO_CLIENT_TIME(time3(t))),
        mtime: s.mtime.map_or(set_mtime::DONT_CHANGE, |t| set_mtime::SET_TO_CLIENT_TIME(time3(t))),
    }
}

fn setattrs4(s: &SetAttrs) -> attr4::SetAttrs {
    attr4::SetAttrs {
        mode: s.mode,
        uid: s.uid,
        gid: s.gid,
        size: s.size,
        atime: s.atime.map(|t| (t.sec, t.nsec)),
        mtime: s.mtime.map(|t| (t.sec, t.nsec)),
        ..attr4::SetAttrs::default()
    }
}

impl Wire {
    pub fn version(&self) -> &'static str {
        match self {
            Wire::V3(_) => "NFSv3",
            Wire::V4(_) => "NFSv4.1",
        }
    }

    /// The largest READ and WRITE the server prefers (NFSv3: FSINFO of the export's root;
    /// NFSv4.1: the export's maxread and maxwrite, capped by the session).
    pub async fn io_sizes(&self, root: &Fh) -> Result<(u32, u32), Fail> {
        match self {
            Wire::V3(pool) => {
                let info = rpc!(pool, "FSINFO", |c| c.fsinfo(&FSINFO3args { fsroot: fh3(root) }))?;
                Ok((info.rtpref.max(info.rtmax), info.wtpref.max(info.wtmax)))
            }
            Wire::V4(c) => Ok(c.limits()),
        }
    }

    pub async fn getattr(&self, fh: &Fh) -> Result<Attr, Fail> {
        match self {
            Wire::V3(pool) => Ok(attr3(&rpc!(pool, "GETATTR", |c| c.getattr(&GETATTR3args { object: fh3(fh) }))?.obj_attributes)),
            Wire::V4(c) => Ok(attr4(&c.getattr(fh).await?)),
        }
    }

    /// `name` in `dir`; `None` if there is none.
    pub async fn lookup(&self, dir: &Fh, name: &[u8]) -> Result<Option<(Fh, Attr)>, Fail> {
        match self {
            Wire::V3(pool) => match rpc!(pool, "LOOKUP", |c| c.lookup(&LOOKUP3args { what: dirop(dir, name) })) {
                Ok(r) => {
                    let fh = from_fh3(r.object);
                    let attr = match r.obj_attributes {
                        Nfs3Option::Some(a) => attr3(&a),
                        Nfs3Option::None => self.getattr(&fh).await?,
                    };
                    Ok(Some((fh, attr)))
                }
                Err(rpc::Fail::Status { status: nfsstat3::NFS3ERR_NOENT, .. }) => Ok(None),
                Err(e) => Err(e.into()),
            },
            Wire::V4(c) => Ok(c.lookup(dir, name).await?.map(|(fh, a)| (fh, attr4(&a)))),
        }
    }

    /// Makes a directory; its handle when the server gave one.
    pub async fn mkdir(&self, dir: &Fh, name: &[u8], mode: u32) -> Result<Option<Fh>, Fail> {
        match self {
            Wire::V3(pool) => {
                let attributes = sattr3 { mode: Nfs3Option::Some(mode), ..sattr3::default() };
                let r = rpc!(pool, "MKDIR", |c| c.mkdir(&MKDIR3args { where_: dirop(dir, name), attributes: attributes.clone() }))?;
                Ok(match r.obj {
                    Nfs3Option::Some(fh) => Some(from_fh3(fh)),
                    Nfs3Option::None => None,
                })
            }
            Wire::V4(c) => Ok(Some(c.mkdir(dir, name, mode).await?)),
        }
    }

    /// One page of a directory from `cookie`; with `attrs`, each entry's handle and
    /// attributes too (READDIRPLUS in NFSv3; NFSv4.1 always sends them).
    pub async fn readdir(&self, dir: &Fh, cookie: u64, verf: [u8; 8], attrs: bool) -> Result<DirPage, Fail> {
        match self {
            Wire::V3(pool) if attrs => {
                let r = rpc!(pool, "READDIRPLUS", |c| c.readdirplus(&READDIRPLUS3args {
                    dir: fh3(dir),
                    cookie,
                    cookieverf: cookieverf3(verf),
                    dircount: DIRCOUNT,
                    maxcount: MAXCOUNT,
                }))?;
                let entries = r
                    .reply
                    .entries
                    .into_inner()
                    .into_iter()
                    .map(|e| DirEntry {
                        name: e.name.as_ref().to_vec(),
                        cookie: e.cookie,
                        fh: match e.name_handle {
                            Nfs3Option::Some(h) => Some(from_fh3(h)),
                            Nfs3Option::None => None,
                        },
                        attr: match e.name_attributes {
                            Nfs3Option::Some(a) => Some(attr3(&a)),
                            Nfs3Option::None => None,
                        },
                    })
                    .collect();
                Ok(DirPage { entries, verf: r.cookieverf.0, eof: r.reply.eof })
            }
            Wire::V3(pool) => {
                let r = rpc!(pool, "READDIR", |c| c.readdir(&READDIR3args { dir: fh3(dir), cookie, cookieverf: cookieverf3(verf), count: DIRCOUNT }))?;
                let entries = r
                    .reply
                    .entries
                    .into_inner()
                    .into_iter()
                    .map(|e| DirEntry { name: e.name.as_ref().to_vec(), cookie: e.cookie, fh: None, attr: None })
                    .collect();
                Ok(DirPage { entries, verf: r.cookieverf.0, eof: r.reply.eof })
            }
            Wire::V4(c) => {
                let page = c.readdir(dir, cookie, verf, MAXCOUNT).await?;
                let entries =
                    page.entries.into_iter().map(|e| DirEntry { name: e.name, cookie: e.cookie, fh: e.fh, attr: e.attr.as_ref().map(attr4) }).collect();
                Ok(DirPage { entries, verf: page.verf, eof: page.eof })
            }
        }
    }

    /// Removes a non-directory.
    pub async fn remove(&self, dir: &Fh, name: &[u8]) -> Result<(), Fail> {
        match self {
            Wire::V3(pool) => rpc!(pool, "REMOVE", |c| c.remove(&REMOVE3args { object: dirop(dir, name) })).map(|_| ()).map_err(Fail::from),
            Wire::V4(c) => c.remove(dir, name).await.map_err(Fail::from),
        }
    }

    /// Removes an empty directory.
    pub async fn rmdir(&self, dir: &Fh, name: &[u8]) -> Result<(), Fail> {
        match self {
            Wire::V3(pool) => rpc!(pool, "RMDIR", |c| c.rmdir(&RMDIR3args { object: dirop(dir, name) })).map(|_| ()).map_err(Fail::from),
            Wire::V4(c) => c.remove(dir, name).await.map_err(Fail::from),
        }
    }

    /// Sets attributes; a size change of an open file goes under its open state.
    pub async fn setattr(&self, fh: &Fh, attrs: &SetAttrs, open: Option<&Opened>) -> Result<(), Fail> {
        match self {
            Wire::V3(pool) => {
                let new_attributes = sattr3(attrs);
                rpc!(pool, "SETATTR", |c| c.setattr(&SETATTR3args { object: fh3(fh), new_attributes: new_attributes.clone(), guard: Nfs3Option::None }))
                    .map(|_| ())
                    .map_err(Fail::from)
            }
            Wire::V4(c) => {
                let stateid = open.map_or(Stateid::ANONYMOUS, Opened::stateid);
                c.setattr(fh, &stateid, &setattrs4(attrs)).await.map_err(Fail::from)
            }
        }
    }

    /// Sets attributes of `fh`, then closes `open` (NFSv4.1: both in one round trip). On
    /// failure `open` may still be open: close it.
    pub async fn setattr_and_close(&self, fh: &Fh, attrs: &SetAttrs, open: &Opened) -> Result<(), Fail> {
        match (self, &open.state) {
            (Wire::V4(c), Some(state)) if state.fh == *fh => match c.setattr_and_close(state, &setattrs4(attrs)).await {
                Err(e) if Fail::from(e.clone()).is(Cond::LostState) => self.setattr(fh, attrs, None).await,
                r => r.map_err(Fail::from),
            },
            _ => {
                self.setattr(fh, attrs, None).await?;
                self.close(open).await
            }
        }
    }

    /// Renames `from` over `to`, both in `dir`.
    pub async fn rename(&self, dir: &Fh, from: &[u8], to: &[u8]) -> Result<(), Fail> {
        match self {
            Wire::V3(pool) => rpc!(pool, "RENAME", |c| c.rename(&RENAME3args { from: dirop(dir, from), to: dirop(dir, to) })).map(|_| ()).map_err(Fail::from),
            Wire::V4(c) => c.rename(dir, from, dir, to).await.map_err(Fail::from),
        }
    }

    /// Creates (or truncates: a retried create, or debris of an attempt not resumed) a
    /// regular file and opens it for writing.
    pub async fn create(&self, dir: &Fh, name: &[u8], mode: u32, size: Option<u64>) -> Result<Opened, Fail> {
        match self {
            Wire::V3(pool) => {
                let attrs = sattr3 { mode: Nfs3Option::Some(mode), size: size.map_or(Nfs3Option::None, Nfs3Option::Some), ..sattr3::default() };
                let r = rpc!(pool, "CREATE", |c| c.create(&CREATE3args { where_: dirop(dir, name), how: createhow3::UNCHECKED(attrs.clone()) }))?;
                let fh = match r.obj {
                    Nfs3Option::Some(fh) => from_fh3(fh),
                    Nfs3Option::None => self.lookup(dir, name).await?.map(|(fh, _)| fh).ok_or(Fail::made_up(Code::V3(nfsstat3::NFS3ERR_NOENT)))?,
                };
                Ok(Opened { fh, state: None })
            }
            Wire::V4(c) => {
                // Temporary names are new, so a guarded OPEN usually makes the file in one
                // round trip. One that exists (debris, or our own first send) is opened
                // unchecked, which keeps its content: it is truncated then.
                let (open, existed) = match c.create_file(dir, name, mode, true).await {
                    Ok(open) => (open, false),
                    Err(e) if e.is(NFS4ERR_EXIST) => (c.create_file(dir, name, mode, false).await?, true),
                    Err(e) => return Err(e.into()),
                };
                let opened = Opened { fh: open.fh.clone(), state: Some(open) };
                let size = size.unwrap_or(0);
                if existed || size > 0 {
                    let sized = SetAttrs { size: Some(size), ..SetAttrs::default() };
                    if let Err(e) = self.setattr(&opened.fh, &sized, Some(&opened)).await {
                        let _ = self.close(&opened).await;
                        return Err(e);
                    }
                }
                Ok(opened)
            }
        }
    }

    /// Opens an existing file for writing (a resumed or multipart write).
    pub async fn open_write(&self, fh: &Fh) -> Result<Opened, Fail> {
        match self {
            Wire::V3(_) => Ok(Opened { fh: fh.clone(), state: None }),
            Wire::V4(c) => {
                let open = c.open_fh(fh, true).await?;
                Ok(Opened { fh: open.fh.clone(), state: Some(open) })
            }
        }
    }

    /// Closes what [`Wire::create`] or [`Wire::open_write`] opened.
    pub async fn close(&self, opened: &Opened) -> Result<(), Fail> {
        match (self, &opened.state) {
            (Wire::V4(c), Some(open)) => match c.close(open).await {
                // Gone with a server restart: nothing is left to close.
                Err(e) if Fail::from(e.clone()).is(Cond::LostState) => Ok(()),
                r => r.map_err(Fail::from),
            },
            _ => Ok(()),
        }
    }

    /// Reads into `buf` from `offset`; how many bytes came (0 at the end of the file).
    pub async fn read(&self, fh: &Fh, offset: u64, buf: &mut [u8]) -> Result<usize, Fail> {
        let count = buf.len().min(u32::MAX as usize) as u32;
        let data = match self {
            Wire::V3(pool) => {
                let r = rpc!(pool, "READ", |c| c.read(&READ3args { file: fh3(fh), offset, count }))?;
                let n = r.data.len().min(buf.len());
                buf[..n].copy_from_slice(&r.data.as_ref()[..n]);
                return Ok(n);
            }
            Wire::V4(c) => c.read(fh, &Stateid::ANONYMOUS, offset, count).await?.0,
        };
        let n = data.len().min(buf.len());
        buf[..n].copy_from_slice(&data[..n]);
        Ok(n)
    }

    /// Writes `data` at `offset` (FILE_SYNC with `sync`, else UNSTABLE): how many bytes the
    /// server took, and its write verifier.
    pub async fn write(&self, file: &Opened, offset: u64, data: &[u8], sync: bool) -> Result<(u32, [u8; 8]), Fail> {
        match self {
            Wire::V3(pool) => {
                let stable = if sync { stable_how::FILE_SYNC } else { stable_how::UNSTABLE };
                let r = rpc!(pool, "WRITE", |c| c.write(&WRITE3args {
                    file: fh3(&file.fh),
                    offset,
                    count: data.len() as u32,
                    stable,
                    data: Opaque::borrowed(data)
                }))?;
                Ok((r.count, r.verf.0))
            }
            Wire::V4(c) => {
                let stable = if sync { Stable::FileSync } else { Stable::Unstable };
                let (count, _, verf) = c.write(&file.fh, &file.stateid(), offset, data, stable).await?;
                Ok((count, verf))
            }
        }
    }

    /// Makes a file's unstable writes durable: the write verifier.
    pub async fn commit(&self, fh: &Fh) -> Result<[u8; 8], Fail> {
        match self {
            Wire::V3(pool) => Ok(rpc!(pool, "COMMIT", |c| c.commit(&COMMIT3args { file: fh3(fh), offset: 0, count: 0 }))?.verf.0),
            Wire::V4(c) => Ok(c.commit(fh).await?),
        }
    }

    pub async fn readlink(&self, fh: &Fh) -> Result<Vec<u8>, Fail> {
        match self {
            Wire::V3(pool) => Ok(rpc!(pool, "READLINK", |c| c.readlink(&READLINK3args { symlink: fh3(fh) }))?.data.as_ref().to_vec()),
            Wire::V4(c) => Ok(c.readlink(fh).await?),
        }
    }

    /// Makes a symlink; `times` (access, modification) ride along where the protocol lets
    /// them (NFSv3: some servers, ganesha among them, ignore a later SETATTR of a symlink's
    /// times but honour them here).
    pub async fn symlink(&self, dir: &Fh, name: &[u8], target: &[u8], times: (Timestamp, Timestamp)) -> Result<Option<Fh>, Fail> {
        match self {
            Wire::V3(pool) => {
                let r = rpc!(pool, "SYMLINK", |c| c.symlink(&SYMLINK3args {
                    where_: dirop(dir, name),
                    symlink: symlinkdata3 {
                        symlink_attributes: sattr3(&SetAttrs { atime: Some(times.0), mtime: Some(times.1), ..SetAttrs::default() }),
                        symlink_data: nfspath3::from(target.to_vec()),
                    },
                }))?;
                Ok(match r.obj {
                    Nfs3Option::Some(fh) => Some(from_fh3(fh)),
                    Nfs3Option::None => None,
                })
            }
            Wire::V4(c) => Ok(Some(c.symlink(dir, name, target, 0o777).await?)),
        }
    }

    /// Makes a FIFO, socket or device node.
    pub async fn mknod(&self, dir: &Fh, name: &[u8], node: Node, mode: u32) -> Result<Option<Fh>, Fail> {
        match self {
            Wire::V3(pool) => {
                let attrs = sattr3 { mode: Nfs3Option::Some(mode), ..sattr3::default() };
                let dev = |major, minor| devicedata3 { dev_attributes: attrs.clone(), spec: specdata3 { specdata1: major, specdata2: minor } };
                // Made afresh for each send: the arguments are not `Clone`.
                let what = || match node {
                    Node::Char(major, minor) => mknoddata3::NF3CHR(dev(major, minor)),
                    Node::Block(major, minor) => mknoddata3::NF3BLK(dev(major, minor)),
                    Node::Socket => mknoddata3::NF3SOCK(attrs.clone()),
                    Node::Fifo => mknoddata3::NF3FIFO(attrs.clone()),
                };
                let r = rpc!(pool, "MKNOD", |c| c.mknod(&MKNOD3args { where_: dirop(dir, name), what: what() }))?;
                Ok(match r.obj {
                    Nfs3Option::Some(fh) => Some(from_fh3(fh)),
                    Nfs3Option::None => None,
                })
            }
            Wire::V4(c) => {
                let (kind, rdev) = match node {
                    Node::Char(major, minor) => (NodeKind::Char, (major, minor)),
                    Node::Block(major, minor) => (NodeKind::Block, (major, minor)),
                    Node::Socket => (NodeKind::Socket, (0, 0)),
                    Node::Fifo => (NodeKind::Fifo, (0, 0)),
                };
                Ok(Some(c.mknod(dir, name, kind, rdev, mode).await?))
            }
        }
    }

    /// A hard link `dir/name` to `file`.
    pub async fn link(&self, file: &Fh, dir: &Fh, name: &[u8]) -> Result<(), Fail> {
        match self {
            Wire::V3(pool) => rpc!(pool, "LINK", |c| c.link(&LINK3args { file: fh3(file), link: dirop(dir, name) })).map(|_| ()).map_err(Fail::from),
            Wire::V4(c) => c.link(file, dir, name).await.map_err(Fail::from),
        }
    }

    /// Ends the NFSv4.1 session at once, instead of at lease expiry.
    pub async fn shutdown(&self) {
        if let Wire::V4(c) = self {
            c.shutdown().await;
        }
    }
}

/// The config of an NFSv4.1 connection (see [`client4::Config`]).
pub fn config4(addr: std::net::SocketAddr, uid: u32, gid: u32, connections: usize, timeout: std::time::Duration) -> client4::Config {
    let mut cfg = client4::Config::new(addr, "/");
    cfg.cred = super::v4::rpc::AuthSys::new(uid, gid);
    cfg.nconnect = connections;
    cfg.slots = 64;
    cfg.timeout = timeout;
    cfg.outage = rpc::OUTAGE;
    cfg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_versions_classify_what_the_backend_acts_on() {
        assert_eq!(Code::V3(nfsstat3::NFS3ERR_NOENT).cond(), Cond::NoEnt);
        assert_eq!(Code::V4(NFS4ERR_NOENT).cond(), Cond::NoEnt);
        assert_eq!(Code::V3(nfsstat3::NFS3ERR_PERM).cond(), Cond::Access);
        assert_eq!(Code::V4(NFS4ERR_ACCESS).cond(), Cond::Access);
        assert_eq!(Code::V4(NFS4ERR_STALE_STATEID).cond(), Cond::LostState);
        assert!(Code::V4(NFS4ERR_BAD_STATEID).kind().is_transient(), "a lost open state makes the file be written again");
        assert!(Code::V3(nfsstat3::NFS3ERR_STALE).kind().is_transient());
        assert!(!Code::V4(NFS4ERR_ACCESS).kind().is_transient());
        assert_eq!(Code::V4(NFS4ERR_DQUOT).kind(), ErrorKind::NoSpace);
        assert_eq!(Code::V3(nfsstat3::NFS3ERR_NOSPC).kind(), ErrorKind::NoSpace);
        assert_eq!(Code::V4(NFS4ERR_ROFS).to_string(), "NFS4ERR_ROFS");
    }

    #[test]
    fn times_outside_nfsv3_range_are_clamped_not_wrapped() {
        assert_eq!(time3(Timestamp { sec: -5, nsec: 1 }).seconds, 0);
        assert_eq!(time3(Timestamp { sec: 1 << 40, nsec: 1 }).seconds, u32::MAX);
    }

    #[test]
    fn nfsv4_attributes_fold_the_fsid_and_keep_times_before_1970() {
        let a = attr4::Attr {
            kind: Kind::Char,
            mode: 0o100620,
            nlink: 1,
            uid: 5,
            gid: 6,
            owner: b"5".to_vec(),
            owner_group: b"6".to_vec(),
            size: 0,
            used: 0,
            rdev: (4, 64),
            fsid: (1, 2),
            fileid: 77,
            atime: (-3, 2),
            mtime: (3, 4),
            ctime: (0, 0),
        };
        let m = attr4(&a);
        assert_eq!((m.kind, m.mode, m.rdev, m.fileid), (EntryKind::CharDev, 0o620, (4, 64), 77));
        assert_ne!(m.fsid, attr4(&attr4::Attr { fsid: (2, 1), ..a.clone() }).fsid);
        assert_eq!(m.atime, Timestamp { sec: -3, nsec: 2 });
    }
}
