//! The one error type of the client, and the names of NFSv4 status codes.

use std::fmt;

/// Why a call failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Error {
    /// The server answered `code` (an nfsstat4) to operation `op`. `resent`: the request went
    /// out more than once. Within one session a resend is answered from the server's reply
    /// cache (exactly once), but after the session had to be re-created, or for a server
    /// without a persistent reply cache that restarted, a non-idempotent operation that fails
    /// with EXIST or NOENT after a resend may have succeeded the first time: check.
    Status { code: u32, op: &'static str, resent: bool },
    /// No answer within the outage window: the server or the network is down.
    Unreachable(String),
    /// The server refused the credentials, the program, version or minor version.
    Refused(String),
    /// The server sent something this client cannot parse.
    Protocol(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The nfsstat4 of a `Status` error.
    pub fn code(&self) -> Option<u32> {
        match self {
            Error::Status { code, .. } => Some(*code),
            _ => None,
        }
    }
    pub fn is(&self, code: u32) -> bool {
        self.code() == Some(code)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Status { code, op, resent } => {
                write!(f, "the NFS server answered {op} with {} ({code})", status_name(*code))?;
                if let Some(hint) = hint(*code) {
                    write!(f, ": {hint}")?;
                }
                if *resent {
                    write!(f, " (the request was sent more than once: an earlier attempt may have taken effect)")?;
                }
                Ok(())
            }
            Error::Unreachable(why) => write!(f, "the NFS server is unreachable: {why}; check that it is up and that the network allows TCP to it"),
            Error::Refused(why) => write!(f, "the NFS server refused the client: {why}"),
            Error::Protocol(why) => write!(f, "malformed reply from the NFS server: {why}; this is a server or client bug, please report it"),
        }
    }
}

impl std::error::Error for Error {}

/// What to do about some statuses.
fn hint(code: u32) -> Option<&'static str> {
    Some(match code {
        nfsstat4::NFS4ERR_ACCESS | nfsstat4::NFS4ERR_PERM => "check the uid/gid the client sends and the export's permissions and squashing",
        nfsstat4::NFS4ERR_NOSPC | nfsstat4::NFS4ERR_DQUOT => "free space on the server or raise the quota",
        nfsstat4::NFS4ERR_ROFS => "the export is read-only",
        nfsstat4::NFS4ERR_STALE | nfsstat4::NFS4ERR_FHEXPIRED => "the file was removed or the server changed; look it up again",
        nfsstat4::NFS4ERR_BAD_STATEID | nfsstat4::NFS4ERR_STALE_STATEID | nfsstat4::NFS4ERR_EXPIRED | nfsstat4::NFS4ERR_ADMIN_REVOKED => {
            "the open state was lost (server restart or lease expiry); open the file again"
        }
        nfsstat4::NFS4ERR_WRONGSEC => "the export wants a security flavour other than AUTH_SYS",
        nfsstat4::NFS4ERR_NOTSUPP | nfsstat4::NFS4ERR_ATTRNOTSUPP => "the server does not support this",
        nfsstat4::NFS4ERR_BADOWNER => "the server cannot map this owner; use numeric ids or configure idmapping",
        _ => return None,
    })
}

/// nfsstat4 values (RFC 8881 section 15.1).
#[allow(non_upper_case_globals, dead_code)]
pub mod nfsstat4 {
    pub const NFS4_OK: u32 = 0;
    pub const NFS4ERR_PERM: u32 = 1;
    pub const NFS4ERR_NOENT: u32 = 2;
    pub const NFS4ERR_IO: u32 = 5;
    pub const NFS4ERR_NXIO: u32 = 6;
    pub const NFS4ERR_ACCESS: u32 = 13;
    pub const NFS4ERR_EXIST: u32 = 17;
    pub const NFS4ERR_XDEV: u32 = 18;
    pub const NFS4ERR_NOTDIR: u32 = 20;
    pub const NFS4ERR_ISDIR: u32 = 21;
    pub const NFS4ERR_INVAL: u32 = 22;
    pub const NFS4ERR_FBIG: u32 = 27;
    pub const NFS4ERR_NOSPC: u32 = 28;
    pub const NFS4ERR_ROFS: u32 = 30;
    pub const NFS4ERR_MLINK: u32 = 31;
    pub const NFS4ERR_NAMETOOLONG: u32 = 63;
    pub const NFS4ERR_NOTEMPTY: u32 = 66;
    pub const NFS4ERR_DQUOT: u32 = 69;
    pub const NFS4ERR_STALE: u32 = 70;
    pub const NFS4ERR_BADHANDLE: u32 = 10001;
    pub const NFS4ERR_BAD_COOKIE: u32 = 10003;
    pub const NFS4ERR_NOTSUPP: u32 = 10004;
    pub const NFS4ERR_TOOSMALL: u32 = 10005;
    pub const NFS4ERR_SERVERFAULT: u32 = 10006;
    pub const NFS4ERR_BADTYPE: u32 = 10007;
    pub const NFS4ERR_DELAY: u32 = 10008;
    pub const NFS4ERR_SAME: u32 = 10009;
    pub const NFS4ERR_DENIED: u32 = 10010;
    pub const NFS4ERR_EXPIRED: u32 = 10011;
    pub const NFS4ERR_LOCKED: u32 = 10012;
    pub const NFS4ERR_GRACE: u32 = 10013;
    pub const NFS4ERR_FHEXPIRED: u32 = 10014;
    pub const NFS4ERR_SHARE_DENIED: u32 = 10015;
    pub const NFS4ERR_WRONGSEC: u32 = 10016;
    pub const NFS4ERR_CLID_INUSE: u32 = 10017;
    pub const NFS4ERR_RESOURCE: u32 = 10018;
    pub const NFS4ERR_MOVED: u32 = 10019;
    pub const NFS4ERR_NOFILEHANDLE: u32 = 10020;
    pub const NFS4ERR_MINOR_VERS_MISMATCH: u32 = 10021;
    pub const NFS4ERR_STALE_CLIENTID: u32 = 10022;
    pub const NFS4ERR_STALE_STATEID: u32 = 10023;
    pub const NFS4ERR_OLD_STATEID: u32 = 10024;
    pub const NFS4ERR_BAD_STATEID: u32 = 10025;
    pub const NFS4ERR_BAD_SEQID: u32 = 10026;
    pub const NFS4ERR_NOT_SAME: u32 = 10027;
    pub const NFS4ERR_SYMLINK: u32 = 10029;
    pub const NFS4ERR_ATTRNOTSUPP: u32 = 10032;
    pub const NFS4ERR_BADXDR: u32 = 10036;
    pub const NFS4ERR_OPENMODE: u32 = 10038;
    pub const NFS4ERR_BADOWNER: u32 = 10039;
    pub const NFS4ERR_BADCHAR: u32 = 10040;
    pub const NFS4ERR_BADNAME: u32 = 10041;
    pub const NFS4ERR_OP_ILLEGAL: u32 = 10044;
    pub const NFS4ERR_ADMIN_REVOKED: u32 = 10047;
    pub const NFS4ERR_BADSESSION: u32 = 10052;
    pub const NFS4ERR_BADSLOT: u32 = 10053;
    pub const NFS4ERR_COMPLETE_ALREADY: u32 = 10054;
    pub const NFS4ERR_CONN_NOT_BOUND_TO_SESSION: u32 = 10055;
    pub const NFS4ERR_SEQ_MISORDERED: u32 = 10063;
    pub const NFS4ERR_SEQUENCE_POS: u32 = 10064;
    pub const NFS4ERR_REQ_TOO_BIG: u32 = 10065;
    pub const NFS4ERR_REP_TOO_BIG: u32 = 10066;
    pub const NFS4ERR_REP_TOO_BIG_TO_CACHE: u32 = 10067;
    pub const NFS4ERR_RETRY_UNCACHED_REP: u32 = 10068;
    pub const NFS4ERR_TOO_MANY_OPS: u32 = 10070;
    pub const NFS4ERR_OP_NOT_IN_SESSION: u32 = 10071;
    pub const NFS4ERR_CLIENTID_BUSY: u32 = 10074;
    pub const NFS4ERR_SEQ_FALSE_RETRY: u32 = 10076;
    pub const NFS4ERR_BAD_HIGH_SLOT: u32 = 10077;
    pub const NFS4ERR_DEADSESSION: u32 = 10078;
    pub const NFS4ERR_WRONG_CRED: u32 = 10082;
    pub const NFS4ERR_WRONG_TYPE: u32 = 10083;
}

/// The name of an nfsstat4 ("NFS4ERR_NOENT"), or "unknown status".
pub fn status_name(code: u32) -> &'static str {
    use nfsstat4::*;
    match code {
        NFS4_OK => "NFS4_OK",
        NFS4ERR_PERM => "NFS4ERR_PERM",
        NFS4ERR_NOENT => "NFS4ERR_NOENT",
        NFS4ERR_IO => "NFS4ERR_IO",
        NFS4ERR_NXIO => "NFS4ERR_NXIO",
        NFS4ERR_ACCESS => "NFS4ERR_ACCESS",
        NFS4ERR_EXIST => "NFS4ERR_EXIST",
        NFS4ERR_XDEV => "NFS4ERR_XDEV",
        NFS4ERR_NOTDIR => "NFS4ERR_NOTDIR",
        NFS4ERR_ISDIR => "NFS4ERR_ISDIR",
        NFS4ERR_INVAL => "NFS4ERR_INVAL",
        NFS4ERR_FBIG => "NFS4ERR_FBIG",
        NFS4ERR_NOSPC => "NFS4ERR_NOSPC",
        NFS4ERR_ROFS => "NFS4ERR_ROFS",
        NFS4ERR_MLINK => "NFS4ERR_MLINK",
        NFS4ERR_NAMETOOLONG => "NFS4ERR_NAMETOOLONG",
        NFS4ERR_NOTEMPTY => "NFS4ERR_NOTEMPTY",
        NFS4ERR_DQUOT => "NFS4ERR_DQUOT",
        NFS4ERR_STALE => "NFS4ERR_STALE",
        NFS4ERR_BADHANDLE => "NFS4ERR_BADHANDLE",
        NFS4ERR_BAD_COOKIE => "NFS4ERR_BAD_COOKIE",
        NFS4ERR_NOTSUPP => "NFS4ERR_NOTSUPP",
        NFS4ERR_TOOSMALL => "NFS4ERR_TOOSMALL",
        NFS4ERR_SERVERFAULT => "NFS4ERR_SERVERFAULT",
        NFS4ERR_BADTYPE => "NFS4ERR_BADTYPE",
        NFS4ERR_DELAY => "NFS4ERR_DELAY",
        NFS4ERR_SAME => "NFS4ERR_SAME",
        NFS4ERR_DENIED => "NFS4ERR_DENIED",
        NFS4ERR_EXPIRED => "NFS4ERR_EXPIRED",
        NFS4ERR_LOCKED => "NFS4ERR_LOCKED",
        NFS4ERR_GRACE => "NFS4ERR_GRACE",
        NFS4ERR_FHEXPIRED => "NFS4ERR_FHEXPIRED",
        NFS4ERR_SHARE_DENIED => "NFS4ERR_SHARE_DENIED",
        NFS4ERR_WRONGSEC => "NFS4ERR_WRONGSEC",
        NFS4ERR_CLID_INUSE => "NFS4ERR_CLID_INUSE",
        NFS4ERR_RESOURCE => "NFS4ERR_RESOURCE",
        NFS4ERR_MOVED => "NFS4ERR_MOVED",
        NFS4ERR_NOFILEHANDLE => "NFS4ERR_NOFILEHANDLE",
        NFS4ERR_MINOR_VERS_MISMATCH => "NFS4ERR_MINOR_VERS_MISMATCH",
        NFS4ERR_STALE_CLIENTID => "NFS4ERR_STALE_CLIENTID",
        NFS4ERR_STALE_STATEID => "NFS4ERR_STALE_STATEID",
        NFS4ERR_OLD_STATEID => "NFS4ERR_OLD_STATEID",
        NFS4ERR_BAD_STATEID => "NFS4ERR_BAD_STATEID",
        NFS4ERR_BAD_SEQID => "NFS4ERR_BAD_SEQID",
        NFS4ERR_NOT_SAME => "NFS4ERR_NOT_SAME",
        NFS4ERR_SYMLINK => "NFS4ERR_SYMLINK",
        NFS4ERR_ATTRNOTSUPP => "NFS4ERR_ATTRNOTSUPP",
        NFS4ERR_BADXDR => "NFS4ERR_BADXDR",
        NFS4ERR_OPENMODE => "NFS4ERR_OPENMODE",
        NFS4ERR_BADOWNER => "NFS4ERR_BADOWNER",
        NFS4ERR_BADCHAR => "NFS4ERR_BADCHAR",
        NFS4ERR_BADNAME => "NFS4ERR_BADNAME",
        NFS4ERR_OP_ILLEGAL => "NFS4ERR_OP_ILLEGAL",
        NFS4ERR_ADMIN_REVOKED => "NFS4ERR_ADMIN_REVOKED",
        NFS4ERR_BADSESSION => "NFS4ERR_BADSESSION",
        NFS4ERR_BADSLOT => "NFS4ERR_BADSLOT",
        NFS4ERR_COMPLETE_ALREADY => "NFS4ERR_COMPLETE_ALREADY",
        NFS4ERR_CONN_NOT_BOUND_TO_SESSION => "NFS4ERR_CONN_NOT_BOUND_TO_SESSION",
        NFS4ERR_SEQ_MISORDERED => "NFS4ERR_SEQ_MISORDERED",
        NFS4ERR_SEQUENCE_POS => "NFS4ERR_SEQUENCE_POS",
        NFS4ERR_REQ_TOO_BIG => "NFS4ERR_REQ_TOO_BIG",
        NFS4ERR_REP_TOO_BIG => "NFS4ERR_REP_TOO_BIG",
        NFS4ERR_REP_TOO_BIG_TO_CACHE => "NFS4ERR_REP_TOO_BIG_TO_CACHE",
        NFS4ERR_RETRY_UNCACHED_REP => "NFS4ERR_RETRY_UNCACHED_REP",
        NFS4ERR_TOO_MANY_OPS => "NFS4ERR_TOO_MANY_OPS",
        NFS4ERR_OP_NOT_IN_SESSION => "NFS4ERR_OP_NOT_IN_SESSION",
        NFS4ERR_CLIENTID_BUSY => "NFS4ERR_CLIENTID_BUSY",
        NFS4ERR_SEQ_FALSE_RETRY => "NFS4ERR_SEQ_FALSE_RETRY",
        NFS4ERR_BAD_HIGH_SLOT => "NFS4ERR_BAD_HIGH_SLOT",
        NFS4ERR_DEADSESSION => "NFS4ERR_DEADSESSION",
        NFS4ERR_WRONG_CRED => "NFS4ERR_WRONG_CRED",
        NFS4ERR_WRONG_TYPE => "NFS4ERR_WRONG_TYPE",
        _ => "unknown status",
    }
}

impl From<super::super::retry::Unreachable> for Error {
    fn from(u: super::super::retry::Unreachable) -> Error {
        Error::Unreachable(u.0)
    }
}
