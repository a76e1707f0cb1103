//! File attributes (fattr4): the bitmap, decoding of the attributes this client asks for,
//! and encoding of the ones it sets.

use super::error::{Error, Result};
use super::xdr::{Dec, Enc};

pub const SUPPORTED_ATTRS: u32 = 0;
pub const TYPE: u32 = 1;
pub const CHANGE: u32 = 3;
pub const SIZE: u32 = 4;
pub const FSID: u32 = 8;
pub const LEASE_TIME: u32 = 10;
pub const RDATTR_ERROR: u32 = 11;
pub const ACL: u32 = 12;
pub const FILEHANDLE: u32 = 19;
pub const FILEID: u32 = 20;
pub const MAXREAD: u32 = 30;
pub const MAXWRITE: u32 = 31;
pub const MODE: u32 = 33;
pub const NUMLINKS: u32 = 35;
pub const OWNER: u32 = 36;
pub const OWNER_GROUP: u32 = 37;
pub const RAWDEV: u32 = 41;
pub const SPACE_USED: u32 = 45;
pub const TIME_ACCESS: u32 = 47;
pub const TIME_ACCESS_SET: u32 = 48;
pub const TIME_METADATA: u32 = 52;
pub const TIME_MODIFY: u32 = 53;
pub const TIME_MODIFY_SET: u32 = 54;

/// The largest file handle (NFS4_FHSIZE).
pub const FHSIZE: usize = 128;
/// The largest owner string, name or symlink target accepted from a server.
pub const MAX_NAME: usize = 4096;

/// A set of attribute numbers (bitmap4).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Bitmap(pub Vec<u32>);

impl Bitmap {
    pub fn of(bits: &[u32]) -> Bitmap {
        let mut b = Bitmap::default();
        for &n in bits {
            b.set(n);
        }
        b
    }
    pub fn set(&mut self, n: u32) {
        let w = (n / 32) as usize;
        if self.0.len() <= w {
            self.0.resize(w + 1, 0);
        }
        self.0[w] |= 1 << (n % 32);
    }
    pub fn has(&self, n: u32) -> bool {
        self.0.get((n / 32) as usize).is_some_and(|w| w & (1 << (n % 32)) != 0)
    }
    pub fn and(&self, other: &Bitmap) -> Bitmap {
        Bitmap(self.0.iter().zip(other.0.iter()).map(|(a, b)| a & b).collect())
    }
    /// The attribute numbers, in increasing order (the order of their values on the wire).
    pub fn bits(&self) -> impl Iterator<Item = u32> + '_ {
        self.0.iter().enumerate().flat_map(|(w, &v)| (0..32).filter(move |b| v & (1 << b) != 0).map(move |b| w as u32 * 32 + b))
    }
    pub fn encode(&self, e: &mut Enc) {
        let n = self.0.iter().rposition(|&w| w != 0).map_or(0, |i| i + 1);
        e.u32(n as u32);
        for w in &self.0[..n] {
            e.u32(*w);
        }
    }
    pub fn decode(d: &mut Dec) -> Result<Bitmap> {
        let n = d.count(8, 4, "a bitmap")?;
        let mut v = Vec::with_capacity(n);
        for _ in 0..n {
            v.push(d.u32("a bitmap")?);
        }
        Ok(Bitmap(v))
    }
}

/// The kind of a file (nfs_ftype4).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    Reg,
    Dir,
    Block,
    Char,
    Symlink,
    Socket,
    Fifo,
}

impl Kind {
    pub fn from_wire(v: u32) -> Option<Kind> {
        Some(match v {
            1 => Kind::Reg,
            2 => Kind::Dir,
            3 => Kind::Block,
            4 => Kind::Char,
            5 => Kind::Symlink,
            6 => Kind::Socket,
            7 => Kind::Fifo,
            _ => return None,
        })
    }
    pub fn to_wire(self) -> u32 {
        match self {
            Kind::Reg => 1,
            Kind::Dir => 2,
            Kind::Block => 3,
            Kind::Char => 4,
            Kind::Symlink => 5,
            Kind::Socket => 6,
            Kind::Fifo => 7,
        }
    }
}

/// The attributes of a file. Attributes the server does not support are zero or empty.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attr {
    pub kind: Kind,
    /// The 12 permission bits (07777).
    pub mode: u32,
    pub nlink: u32,
    /// From a numeric owner ("1000" or "1000@domain"); 65534 (nobody) when the owner is a
    /// name. `owner` has the string as the server sent it.
    pub uid: u32,
    pub gid: u32,
    pub owner: Vec<u8>,
    pub owner_group: Vec<u8>,
    pub size: u64,
    pub used: u64,
    /// Major and minor device numbers of a block or character device.
    pub rdev: (u32, u32),
    pub fsid: (u64, u64),
    pub fileid: u64,
    /// Seconds since 1970 (negative before) and nanoseconds.
    pub atime: (i64, u32),
    pub mtime: (i64, u32),
    pub ctime: (i64, u32),
}

/// The uid or gid of an owner string: "1000", "1000@domain"; "root" is 0.
pub fn numeric_owner(s: &[u8]) -> Option<u32> {
    let id = s.split(|&c| c == b'@').next().unwrap_or_default();
    if id == b"root" {
        return Some(0);
    }
    if id.is_empty() || id.len() > 10 || !id.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(id).ok()?.parse().ok()
}

/// Everything decoded from one fattr4, each attribute only if it was present.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Raw {
    pub supported: Option<Bitmap>,
    pub kind: Option<u32>,
    pub change: Option<u64>,
    pub size: Option<u64>,
    pub fsid: Option<(u64, u64)>,
    pub lease_time: Option<u32>,
    pub rdattr_error: Option<u32>,
    pub acl: Option<Vec<Ace>>,
    pub filehandle: Option<Vec<u8>>,
    pub fileid: Option<u64>,
    pub maxread: Option<u64>,
    pub maxwrite: Option<u64>,
    pub mode: Option<u32>,
    pub nlink: Option<u32>,
    pub owner: Option<Vec<u8>>,
    pub owner_group: Option<Vec<u8>>,
    pub rawdev: Option<(u32, u32)>,
    pub used: Option<u64>,
    pub atime: Option<(i64, u32)>,
    pub ctime: Option<(i64, u32)>,
    pub mtime: Option<(i64, u32)>,
}

/// An NFSv4 access control entry (nfsace4), as on the wire.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ace {
    pub kind: u32,
    pub flag: u32,
    pub access_mask: u32,
    pub who: Vec<u8>,
}

fn time(d: &mut Dec, what: &str) -> Result<(i64, u32)> {
    let s = d.i64(what)?;
    let ns = d.u32(what)?;
    if ns >= 1_000_000_000 {
        return Err(Error::Protocol(format!("{what} has {ns} nanoseconds")));
    }
    Ok((s, ns))
}

impl Raw {
    /// Decodes a fattr4 (bitmap and opaque value list). An attribute this client does not
    /// know is an error: its length is unknown, so the rest cannot be read.
    pub fn decode(d: &mut Dec) -> Result<Raw> {
        let bits = Bitmap::decode(d)?;
        let vals = d.opaque(super::rpc::MAX_RECORD, "attribute values")?;
        let mut v = Dec::new(vals);
        let mut r = Raw::default();
        for bit in bits.bits() {
            match bit {
                SUPPORTED_ATTRS => r.supported = Some(Bitmap::decode(&mut v)?),
                TYPE => r.kind = Some(v.u32("type")?),
                CHANGE => r.change = Some(v.u64("change")?),
                SIZE => r.size = Some(v.u64("size")?),
                FSID => r.fsid = Some((v.u64("fsid")?, v.u64("fsid")?)),
                LEASE_TIME => r.lease_time = Some(v.u32("lease_time")?),
                RDATTR_ERROR => r.rdattr_error = Some(v.u32("rdattr_error")?),
                ACL => {
                    let n = v.count(1 << 16, 16, "acl")?;
                    let mut acl = Vec::with_capacity(n);
                    for _ in 0..n {
                        acl.push(Ace { kind: v.u32("ace")?, flag: v.u32("ace")?, access_mask: v.u32("ace")?, who: v.opaque(MAX_NAME, "ace who")?.to_vec() });
                    }
                    r.acl = Some(acl);
                }
                FILEHANDLE => r.filehandle = Some(v.opaque(FHSIZE, "filehandle")?.to_vec()),
                FILEID => r.fileid = Some(v.u64("fileid")?),
                MAXREAD => r.maxread = Some(v.u64("maxread")?),
                MAXWRITE => r.maxwrite = Some(v.u64("maxwrite")?),
                MODE => r.mode = Some(v.u32("mode")? & 0o7777),
                NUMLINKS => r.nlink = Some(v.u32("numlinks")?),
                OWNER => r.owner = Some(v.opaque(MAX_NAME, "owner")?.to_vec()),
                OWNER_GROUP => r.owner_group = Some(v.opaque(MAX_NAME, "owner_group")?.to_vec()),
                RAWDEV => r.rawdev = Some((v.u32("rawdev")?, v.u32("rawdev")?)),
                SPACE_USED => r.used = Some(v.u64("space_used")?),
                TIME_ACCESS => r.atime = Some(time(&mut v, "time_access")?),
                TIME_METADATA => r.ctime = Some(time(&mut v, "time_metadata")?),
                TIME_MODIFY => r.mtime = Some(time(&mut v, "time_modify")?),
                n => return Err(Error::Protocol(format!("the server sent attribute {n}, which was not asked for"))),
            }
        }
        Ok(r)
    }

    /// The attributes of a file, if the type is present (it is a mandatory attribute).
    pub fn attr(&self) -> Result<Attr> {
        let kind = self.kind.ok_or_else(|| Error::Protocol("the server sent attributes without the file type".into()))?;
        let kind = Kind::from_wire(kind).ok_or_else(|| Error::Protocol(format!("unknown file type {kind}")))?;
        let owner = self.owner.clone().unwrap_or_default();
        let owner_group = self.owner_group.clone().unwrap_or_default();
        Ok(Attr {
            kind,
            mode: self.mode.unwrap_or(0),
            nlink: self.nlink.unwrap_or(1),
            uid: numeric_owner(&owner).unwrap_or(65534),
            gid: numeric_owner(&owner_group).unwrap_or(65534),
            owner,
            owner_group,
            size: self.size.unwrap_or(0),
            used: self.used.unwrap_or(0),
            rdev: self.rawdev.unwrap_or((0, 0)),
            fsid: self.fsid.unwrap_or((0, 0)),
            fileid: self.fileid.unwrap_or(0),
            atime: self.atime.unwrap_or((0, 0)),
            mtime: self.mtime.unwrap_or((0, 0)),
            ctime: self.ctime.unwrap_or((0, 0)),
        })
    }
}

/// The attributes a stat wants (filtered by what the server supports).
pub fn wanted() -> Bitmap {
    Bitmap::of(&[TYPE, SIZE, FSID, FILEID, MODE, NUMLINKS, OWNER, OWNER_GROUP, RAWDEV, SPACE_USED, TIME_ACCESS, TIME_METADATA, TIME_MODIFY])
}

/// Attributes to set; `None` leaves one alone.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SetAttrs {
    pub mode: Option<u32>,
    /// Sent as the owner string "uid" unless `owner` is given.
    pub uid: Option<u32>,
    /// Sent as the owner_group string "gid" unless `owner_group` is given.
    pub gid: Option<u32>,
    pub owner: Option<Vec<u8>>,
    pub owner_group: Option<Vec<u8>>,
    pub size: Option<u64>,
    /// Set to this time (SET_TO_CLIENT_TIME4): seconds since 1970, nanoseconds.
    pub atime: Option<(i64, u32)>,
    pub mtime: Option<(i64, u32)>,
    /// A raw ACL (FATTR4_ACL).
    pub acl: Option<Vec<Ace>>,
}

impl SetAttrs {
    /// Encodes a fattr4.
    pub fn encode(&self, e: &mut Enc) {
        let mut bits = Bitmap::default();
        let mut v = Enc::new();
        if let Some(size) = self.size {
            bits.set(SIZE);
            v.u64(size);
        }
        if let Some(acl) = &self.acl {
            bits.set(ACL);
            v.u32(acl.len() as u32);
            for a in acl {
                v.u32(a.kind).u32(a.flag).u32(a.access_mask).opaque(&a.who);
            }
        }
        if let Some(mode) = self.mode {
            bits.set(MODE);
            v.u32(mode & 0o7777);
        }
        let owner = self.owner.clone().or_else(|| self.uid.map(|u| u.to_string().into_bytes()));
        if let Some(o) = owner {
            bits.set(OWNER);
            v.opaque(&o);
        }
        let group = self.owner_group.clone().or_else(|| self.gid.map(|g| g.to_string().into_bytes()));
        if let Some(g) = group {
            bits.set(OWNER_GROUP);
            v.opaque(&g);
        }
        if let Some((s, ns)) = self.atime {
            bits.set(TIME_ACCESS_SET);
            v.u32(1).i64(s).u32(ns); // SET_TO_CLIENT_TIME4
        }
        if let Some((s, ns)) = self.mtime {
            bits.set(TIME_MODIFY_SET);
            v.u32(1).i64(s).u32(ns);
        }
        bits.encode(e);
        e.opaque(&v.buf);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners() {
        assert_eq!(numeric_owner(b"1000"), Some(1000));
        assert_eq!(numeric_owner(b"1000@example.com"), Some(1000));
        assert_eq!(numeric_owner(b"root"), Some(0));
        assert_eq!(numeric_owner(b"alice@x"), None);
        assert_eq!(numeric_owner(b"99999999999"), None);
        assert_eq!(numeric_owner(b""), None);
    }

    #[test]
    fn bitmap_order_and_setattr_encoding() {
        let b = Bitmap::of(&[54, 1, 33]);
        assert_eq!(b.bits().collect::<Vec<_>>(), vec![1, 33, 54]);
        let s = SetAttrs { mode: Some(0o644), uid: Some(7), mtime: Some((-1, 5)), ..Default::default() };
        let mut e = Enc::new();
        s.encode(&mut e);
        let mut d = Dec::new(&e.buf);
        let bits = Bitmap::decode(&mut d).unwrap();
        assert_eq!(bits.bits().collect::<Vec<_>>(), vec![MODE, OWNER, TIME_MODIFY_SET]);
        let mut v = Dec::new(d.opaque(1000, "v").unwrap());
        assert_eq!(v.u32("").unwrap(), 0o644);
        assert_eq!(v.opaque(10, "").unwrap(), b"7");
        assert_eq!(v.u32("").unwrap(), 1, "SET_TO_CLIENT_TIME4 is 1");
        assert_eq!(v.i64("").unwrap(), -1);
        assert_eq!(v.u32("").unwrap(), 5);
    }
}
