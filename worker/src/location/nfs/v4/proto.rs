//! NFSv4.1 COMPOUND encoding (the operations this client uses) and reply decoding. Every
//! decoder bounds every length and returns `Error::Protocol` on malformed input.

use super::attr::{Bitmap, Raw, SetAttrs, FHSIZE, MAX_NAME};
use super::error::{Error, Result};
use super::xdr::{Dec, Enc};

pub const NFS_PROGRAM: u32 = 100003;
pub const NFS_V4: u32 = 4;
pub const PROC_COMPOUND: u32 = 1;
pub const MINOR_VERSION: u32 = 1;

pub const OP_CLOSE: u32 = 4;
pub const OP_COMMIT: u32 = 5;
pub const OP_CREATE: u32 = 6;
pub const OP_GETATTR: u32 = 9;
pub const OP_GETFH: u32 = 10;
pub const OP_LINK: u32 = 11;
pub const OP_LOOKUP: u32 = 15;
pub const OP_OPEN: u32 = 18;
pub const OP_PUTFH: u32 = 22;
pub const OP_PUTROOTFH: u32 = 24;
pub const OP_READ: u32 = 25;
pub const OP_READDIR: u32 = 26;
pub const OP_READLINK: u32 = 27;
pub const OP_REMOVE: u32 = 28;
pub const OP_RENAME: u32 = 29;
pub const OP_SAVEFH: u32 = 32;
pub const OP_SETATTR: u32 = 34;
pub const OP_WRITE: u32 = 38;
pub const OP_BIND_CONN_TO_SESSION: u32 = 41;
pub const OP_EXCHANGE_ID: u32 = 42;
pub const OP_CREATE_SESSION: u32 = 43;
pub const OP_DESTROY_SESSION: u32 = 44;
pub const OP_SEQUENCE: u32 = 53;
pub const OP_DESTROY_CLIENTID: u32 = 57;
pub const OP_RECLAIM_COMPLETE: u32 = 58;

/// A file handle.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Fh(pub Vec<u8>);

/// A stateid4.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Stateid {
    pub seqid: u32,
    pub other: [u8; 12],
}

impl Stateid {
    /// The anonymous stateid (all zeros): I/O without an open.
    pub const ANONYMOUS: Stateid = Stateid { seqid: 0, other: [0; 12] };
    /// The READ bypass stateid (all ones).
    pub const BYPASS: Stateid = Stateid { seqid: u32::MAX, other: [0xff; 12] };

    fn encode(&self, e: &mut Enc) {
        e.u32(self.seqid).fixed(&self.other);
    }
    fn decode(d: &mut Dec) -> Result<Stateid> {
        Ok(Stateid { seqid: d.u32("a stateid")?, other: d.array("a stateid")? })
    }
}

/// How WRITE data is to be made stable (stable_how4).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stable {
    Unstable,
    DataSync,
    FileSync,
}

impl Stable {
    fn from_wire(v: u32) -> Result<Stable> {
        Ok(match v {
            0 => Stable::Unstable,
            1 => Stable::DataSync,
            2 => Stable::FileSync,
            _ => return Err(Error::Protocol(format!("unknown stable_how4 {v}"))),
        })
    }
}

/// A special file's kind for [`Ops::create`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CreateKind<'a> {
    Dir,
    Symlink(&'a [u8]),
    Block(u32, u32),
    Char(u32, u32),
    Fifo,
    Socket,
}

/// How OPEN creates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpenHow {
    NoCreate,
    Unchecked,
    Guarded,
}

/// What OPEN is opening.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Claim<'a> {
    /// A name in the current directory.
    Null(&'a [u8]),
    /// The current file handle.
    Fh,
}

pub const SHARE_ACCESS_READ: u32 = 1;
pub const SHARE_ACCESS_BOTH: u32 = 3;
pub const WANT_NO_DELEG: u32 = 0x0400;
pub const OPEN4_RESULT_CONFIRM: u32 = 2;

/// The operations of one COMPOUND (without its SEQUENCE, which is added per send).
#[derive(Clone, Debug, Default)]
pub struct Ops {
    pub enc: Enc,
    pub count: u32,
    /// The operations, for error messages.
    pub names: Vec<&'static str>,
}

impl Ops {
    pub fn new() -> Ops {
        Ops::default()
    }
    fn op(&mut self, op: u32, name: &'static str) -> &mut Enc {
        self.count += 1;
        self.names.push(name);
        self.enc.u32(op);
        &mut self.enc
    }
    pub fn putfh(&mut self, fh: &Fh) -> &mut Self {
        self.op(OP_PUTFH, "PUTFH").opaque(&fh.0);
        self
    }
    pub fn putrootfh(&mut self) -> &mut Self {
        self.op(OP_PUTROOTFH, "PUTROOTFH");
        self
    }
    pub fn lookup(&mut self, name: &[u8]) -> &mut Self {
        self.op(OP_LOOKUP, "LOOKUP").opaque(name);
        self
    }
    pub fn getfh(&mut self) -> &mut Self {
        self.op(OP_GETFH, "GETFH");
        self
    }
    pub fn savefh(&mut self) -> &mut Self {
        self.op(OP_SAVEFH, "SAVEFH");
        self
    }
    pub fn getattr(&mut self, bits: &Bitmap) -> &mut Self {
        bits.encode(self.op(OP_GETATTR, "GETATTR"));
        self
    }
    pub fn open(&mut self, owner_clientid: u64, owner: &[u8], access: u32, how: OpenHow, mode: u32, claim: Claim) -> &mut Self {
        let e = self.op(OP_OPEN, "OPEN");
        e.u32(0).u32(access).u32(0); // seqid (ignored in 4.1), share_access, share_deny NONE
        e.u64(owner_clientid).opaque(owner);
        match how {
            OpenHow::NoCreate => {
                e.u32(0);
            }
            OpenHow::Unchecked | OpenHow::Guarded => {
                e.u32(1).u32(if how == OpenHow::Guarded { 1 } else { 0 });
                SetAttrs { mode: Some(mode), ..Default::default() }.encode(e);
            }
        }
        match claim {
            Claim::Null(name) => {
                e.u32(0).opaque(name);
            }
            Claim::Fh => {
                e.u32(4);
            }
        }
        self
    }
    pub fn close(&mut self, stateid: &Stateid) -> &mut Self {
        let e = self.op(OP_CLOSE, "CLOSE");
        e.u32(0);
        stateid.encode(e);
        self
    }
    pub fn read(&mut self, stateid: &Stateid, offset: u64, count: u32) -> &mut Self {
        let e = self.op(OP_READ, "READ");
        stateid.encode(e);
        e.u64(offset).u32(count);
        self
    }
    pub fn write(&mut self, stateid: &Stateid, offset: u64, stable: Stable, data: &[u8]) -> &mut Self {
        let e = self.op(OP_WRITE, "WRITE");
        stateid.encode(e);
        e.u64(offset).u32(stable as u32).opaque(data);
        self
    }
    pub fn commit(&mut self, offset: u64, count: u32) -> &mut Self {
        self.op(OP_COMMIT, "COMMIT").u64(offset).u32(count);
        self
    }
    pub fn readdir(&mut self, cookie: u64, verf: [u8; 8], dircount: u32, maxcount: u32, bits: &Bitmap) -> &mut Self {
        let e = self.op(OP_READDIR, "READDIR");
        e.u64(cookie).fixed(&verf).u32(dircount).u32(maxcount);
        bits.encode(e);
        self
    }
    pub fn setattr(&mut self, stateid: &Stateid, attrs: &SetAttrs) -> &mut Self {
        let e = self.op(OP_SETATTR, "SETATTR");
        stateid.encode(e);
        attrs.encode(e);
        self
    }
    pub fn create(&mut self, kind: &CreateKind, name: &[u8], mode: u32) -> &mut Self {
        let e = self.op(OP_CREATE, "CREATE");
        match kind {
            CreateKind::Dir => {
                e.u32(2);
            }
            CreateKind::Symlink(target) => {
                e.u32(5).opaque(target);
            }
            CreateKind::Block(ma, mi) => {
                e.u32(3).u32(*ma).u32(*mi);
            }
            CreateKind::Char(ma, mi) => {
                e.u32(4).u32(*ma).u32(*mi);
            }
            CreateKind::Socket => {
                e.u32(6);
            }
            CreateKind::Fifo => {
                e.u32(7);
            }
        }
        e.opaque(name);
        SetAttrs { mode: Some(mode), ..Default::default() }.encode(e);
        self
    }
    pub fn link(&mut self, name: &[u8]) -> &mut Self {
        self.op(OP_LINK, "LINK").opaque(name);
        self
    }
    pub fn readlink(&mut self) -> &mut Self {
        self.op(OP_READLINK, "READLINK");
        self
    }
    pub fn remove(&mut self, name: &[u8]) -> &mut Self {
        self.op(OP_REMOVE, "REMOVE").opaque(name);
        self
    }
    pub fn rename(&mut self, from: &[u8], to: &[u8]) -> &mut Self {
        self.op(OP_RENAME, "RENAME").opaque(from).opaque(to);
        self
    }
    pub fn reclaim_complete(&mut self) -> &mut Self {
        self.op(OP_RECLAIM_COMPLETE, "RECLAIM_COMPLETE").bool(false);
        self
    }
}

/// Encodes COMPOUND4args: tag, minor version 1, the operations (after an optional SEQUENCE).
pub fn compound(seq: Option<&SequenceArgs>, ops: &Ops) -> Vec<u8> {
    let mut e = Enc { buf: Vec::with_capacity(ops.enc.buf.len() + 64) };
    e.opaque(b"").u32(MINOR_VERSION).u32(ops.count + seq.is_some() as u32);
    if let Some(s) = seq {
        e.u32(OP_SEQUENCE).fixed(&s.session).u32(s.seqid).u32(s.slot).u32(s.highest_slot).bool(s.cache_this);
    }
    e.buf.extend_from_slice(&ops.enc.buf);
    e.buf
}

/// SEQUENCE4args.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SequenceArgs {
    pub session: [u8; 16],
    pub seqid: u32,
    pub slot: u32,
    pub highest_slot: u32,
    pub cache_this: bool,
}

/// SEQUENCE4resok.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SequenceRes {
    pub session: [u8; 16],
    pub seqid: u32,
    pub slot: u32,
    pub highest_slot: u32,
    pub target_highest_slot: u32,
    pub status_flags: u32,
}

/// A READDIR entry as decoded: cookie, name, attributes.
pub type RawEntry = (u64, Vec<u8>, Raw);

/// A COMPOUND4res being read, one operation result after the other.
pub struct Reply<'a> {
    pub d: Dec<'a>,
    pub status: u32,
    left: usize,
}

impl<'a> Reply<'a> {
    pub fn parse(buf: &'a [u8]) -> Result<Reply<'a>> {
        let mut d = Dec::new(buf);
        let status = d.u32("the compound status")?;
        d.opaque(MAX_NAME, "the compound tag")?;
        let left = d.count(1024, 8, "the results")?;
        Ok(Reply { d, status, left })
    }

    /// Whether another operation result follows.
    pub fn more(&self) -> bool {
        self.left > 0
    }

    /// Reads the next result's operation number and status: `Ok` if the operation
    /// succeeded (its result body follows), a `Status` error if it failed.
    pub fn op(&mut self, op: u32, name: &'static str) -> Result<()> {
        if self.left == 0 {
            // The server stopped before this operation: the compound status says why.
            let code = if self.status == 0 { super::error::nfsstat4::NFS4ERR_SERVERFAULT } else { self.status };
            return Err(Error::Status { code, op: name, resent: false });
        }
        self.left -= 1;
        let got = self.d.u32("an operation number")?;
        if got != op {
            if got == 10044 {
                let code = self.d.u32("a status")?;
                return Err(Error::Status { code, op: name, resent: false });
            }
            return Err(Error::Protocol(format!("expected the result of {name} ({op}), got operation {got}")));
        }
        match self.d.u32("a status")? {
            0 => Ok(()),
            code => Err(Error::Status { code, op: name, resent: false }),
        }
    }

    /// Reads a result that has no body (PUTFH, SAVEFH, RECLAIM_COMPLETE, ...).
    pub fn done(&mut self, op: u32, name: &'static str) -> Result<()> {
        self.op(op, name)
    }
    pub fn sequence(&mut self) -> Result<SequenceRes> {
        self.op(OP_SEQUENCE, "SEQUENCE")?;
        let d = &mut self.d;
        Ok(SequenceRes {
            session: d.array("SEQUENCE")?,
            seqid: d.u32("SEQUENCE")?,
            slot: d.u32("SEQUENCE")?,
            highest_slot: d.u32("SEQUENCE")?,
            target_highest_slot: d.u32("SEQUENCE")?,
            status_flags: d.u32("SEQUENCE")?,
        })
    }
    pub fn getfh(&mut self) -> Result<Fh> {
        self.op(OP_GETFH, "GETFH")?;
        Ok(Fh(self.d.opaque(FHSIZE, "a file handle")?.to_vec()))
    }
    pub fn getattr(&mut self) -> Result<Raw> {
        self.op(OP_GETATTR, "GETATTR")?;
        Raw::decode(&mut self.d)
    }
    fn change_info(&mut self) -> Result<()> {
        self.d.bool("change_info")?;
        self.d.u64("change_info")?;
        self.d.u64("change_info")?;
        Ok(())
    }
    /// OPEN4resok: the stateid, after checking that no confirmation is asked for.
    pub fn open(&mut self) -> Result<Stateid> {
        self.op(OP_OPEN, "OPEN")?;
        let stateid = Stateid::decode(&mut self.d)?;
        self.change_info()?;
        let rflags = self.d.u32("OPEN rflags")?;
        Bitmap::decode(&mut self.d)?;
        let d = &mut self.d;
        match d.u32("the delegation type")? {
            0 => {}
            t @ (1 | 2) => {
                // A delegation we did not want (there is no back channel to recall it): it is
                // read past and left to expire.
                Stateid::decode(d)?;
                d.bool("the delegation")?;
                if t == 2 {
                    match d.u32("the space limit")? {
                        1 => {
                            d.u64("the space limit")?;
                        }
                        2 => {
                            d.u32("the space limit")?;
                            d.u32("the space limit")?;
                        }
                        l => return Err(Error::Protocol(format!("unknown space limit {l}"))),
                    }
                }
                d.u32("the ace")?;
                d.u32("the ace")?;
                d.u32("the ace")?;
                d.opaque(MAX_NAME, "the ace")?;
            }
            3 => {
                if let 7 | 8 = d.u32("why no delegation")? {
                    d.bool("why no delegation")?;
                }
            }
            t => return Err(Error::Protocol(format!("unknown delegation type {t}"))),
        }
        if rflags & OPEN4_RESULT_CONFIRM != 0 {
            return Err(Error::Protocol("the server asked for OPEN_CONFIRM, which NFSv4.1 does not have".into()));
        }
        Ok(stateid)
    }
    pub fn close(&mut self) -> Result<Stateid> {
        self.op(OP_CLOSE, "CLOSE")?;
        Stateid::decode(&mut self.d)
    }
    /// READ4resok: the data (at most `max` bytes) and eof.
    pub fn read(&mut self, max: usize) -> Result<(Vec<u8>, bool)> {
        self.op(OP_READ, "READ")?;
        let eof = self.d.bool("READ eof")?;
        let data = self.d.opaque(max, "READ data")?.to_vec();
        Ok((data, eof))
    }
    pub fn write(&mut self) -> Result<(u32, Stable, [u8; 8])> {
        self.op(OP_WRITE, "WRITE")?;
        let count = self.d.u32("WRITE count")?;
        let committed = Stable::from_wire(self.d.u32("WRITE committed")?)?;
        Ok((count, committed, self.d.array("WRITE verifier")?))
    }
    pub fn commit(&mut self) -> Result<[u8; 8]> {
        self.op(OP_COMMIT, "COMMIT")?;
        self.d.array("COMMIT verifier")
    }
    /// READDIR4resok: the cookie verifier, the entries (cookie, name, attributes), eof.
    pub fn readdir(&mut self) -> Result<([u8; 8], Vec<RawEntry>, bool)> {
        self.op(OP_READDIR, "READDIR")?;
        let verf = self.d.array("the cookie verifier")?;
        let mut entries = Vec::new();
        while self.d.bool("a directory entry")? {
            if entries.len() >= 1 << 20 {
                return Err(Error::Protocol("more than a million entries in one READDIR reply".into()));
            }
            let cookie = self.d.u64("an entry's cookie")?;
            let name = self.d.opaque(MAX_NAME, "an entry's name")?.to_vec();
            let raw = Raw::decode(&mut self.d)?;
            entries.push((cookie, name, raw));
        }
        let eof = self.d.bool("READDIR eof")?;
        Ok((verf, entries, eof))
    }
    pub fn setattr(&mut self) -> Result<()> {
        self.op(OP_SETATTR, "SETATTR")?;
        Bitmap::decode(&mut self.d)?;
        Ok(())
    }
    pub fn create(&mut self) -> Result<()> {
        self.op(OP_CREATE, "CREATE")?;
        self.change_info()?;
        Bitmap::decode(&mut self.d)?;
        Ok(())
    }
    pub fn link(&mut self) -> Result<()> {
        self.op(OP_LINK, "LINK")?;
        self.change_info()
    }
    pub fn readlink(&mut self) -> Result<Vec<u8>> {
        self.op(OP_READLINK, "READLINK")?;
        Ok(self.d.opaque(MAX_NAME, "a symlink target")?.to_vec())
    }
    pub fn remove(&mut self) -> Result<()> {
        self.op(OP_REMOVE, "REMOVE")?;
        self.change_info()
    }
    pub fn rename(&mut self) -> Result<()> {
        self.op(OP_RENAME, "RENAME")?;
        self.change_info()?;
        self.change_info()
    }
    /// EXCHANGE_ID4resok: client id and sequence id (for CREATE_SESSION), flags.
    pub fn exchange_id(&mut self) -> Result<(u64, u32, u32)> {
        self.op(OP_EXCHANGE_ID, "EXCHANGE_ID")?;
        let d = &mut self.d;
        let clientid = d.u64("EXCHANGE_ID")?;
        let seq = d.u32("EXCHANGE_ID")?;
        let flags = d.u32("EXCHANGE_ID")?;
        match d.u32("the state protection")? {
            0 => {}
            p => return Err(Error::Protocol(format!("the server chose state protection {p}, not SP4_NONE"))),
        }
        d.u64("the server owner")?;
        d.opaque(1024, "the server owner")?;
        d.opaque(1024, "the server scope")?;
        let n = d.count(1, 8, "the server implementation")?;
        for _ in 0..n {
            d.opaque(1024, "the implementation domain")?;
            d.opaque(1024, "the implementation name")?;
            d.i64("the implementation date")?;
            d.u32("the implementation date")?;
        }
        Ok((clientid, seq, flags))
    }
    /// CREATE_SESSION4resok: session id and the fore channel's
    /// (maxrequestsize, maxresponsesize, maxrequests).
    pub fn create_session(&mut self) -> Result<([u8; 16], ChannelAttrs)> {
        self.op(OP_CREATE_SESSION, "CREATE_SESSION")?;
        let id = self.d.array("the session id")?;
        self.d.u32("CREATE_SESSION")?;
        self.d.u32("CREATE_SESSION")?;
        let fore = ChannelAttrs::decode(&mut self.d)?;
        ChannelAttrs::decode(&mut self.d)?;
        Ok((id, fore))
    }
}

/// channel_attrs4.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChannelAttrs {
    pub maxrequestsize: u32,
    pub maxresponsesize: u32,
    pub maxresponsesize_cached: u32,
    pub maxoperations: u32,
    pub maxrequests: u32,
}

impl ChannelAttrs {
    pub fn encode(&self, e: &mut Enc) {
        e.u32(0).u32(self.maxrequestsize).u32(self.maxresponsesize).u32(self.maxresponsesize_cached);
        e.u32(self.maxoperations).u32(self.maxrequests).u32(0);
    }
    fn decode(d: &mut Dec) -> Result<ChannelAttrs> {
        d.u32("channel attributes")?;
        let a = ChannelAttrs {
            maxrequestsize: d.u32("channel attributes")?,
            maxresponsesize: d.u32("channel attributes")?,
            maxresponsesize_cached: d.u32("channel attributes")?,
            maxoperations: d.u32("channel attributes")?,
            maxrequests: d.u32("channel attributes")?,
        };
        let n = d.count(1, 4, "channel attributes")?;
        for _ in 0..n {
            d.u32("channel attributes")?;
        }
        Ok(a)
    }
}

/// EXCHANGE_ID4args with SP4_NONE and no implementation id.
pub fn exchange_id(verifier: [u8; 8], owner: &[u8]) -> Ops {
    let mut o = Ops::new();
    let e = o.op(OP_EXCHANGE_ID, "EXCHANGE_ID");
    e.fixed(&verifier).opaque(owner);
    e.u32(0x0001_0000); // EXCHGID4_FLAG_USE_NON_PNFS
    e.u32(0); // SP4_NONE
    e.u32(0); // no client_impl_id
    o
}

/// CREATE_SESSION4args: no back channel, no callbacks.
pub fn create_session(clientid: u64, seq: u32, fore: &ChannelAttrs) -> Ops {
    let mut o = Ops::new();
    let e = o.op(OP_CREATE_SESSION, "CREATE_SESSION");
    e.u64(clientid).u32(seq).u32(0);
    fore.encode(e);
    ChannelAttrs { maxrequestsize: 4096, maxresponsesize: 4096, maxresponsesize_cached: 0, maxoperations: 2, maxrequests: 1 }.encode(e);
    e.u32(0x4000_0000); // cb_program, unused
    e.u32(1).u32(0); // one callback security flavour: AUTH_NONE
    o
}

/// BIND_CONN_TO_SESSION4args: the fore channel.
pub fn bind_conn_to_session(session: &[u8; 16]) -> Ops {
    let mut o = Ops::new();
    o.op(OP_BIND_CONN_TO_SESSION, "BIND_CONN_TO_SESSION").fixed(session).u32(1).bool(false); // CDFC4_FORE
    o
}

pub fn destroy_session(session: &[u8; 16]) -> Ops {
    let mut o = Ops::new();
    o.op(OP_DESTROY_SESSION, "DESTROY_SESSION").fixed(session);
    o
}

pub fn destroy_clientid(clientid: u64) -> Ops {
    let mut o = Ops::new();
    o.op(OP_DESTROY_CLIENTID, "DESTROY_CLIENTID").u64(clientid);
    o
}
