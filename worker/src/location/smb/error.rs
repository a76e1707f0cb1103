//! One error type for the whole layer: what happened, on what, and what to do about it.

use std::fmt;

/// NTSTATUS values this layer reacts to (MS-ERREF 2.3).
pub mod status {
    pub const ACCESS_DENIED: u32 = 0xC000_0022;
    pub const OBJECT_NAME_INVALID: u32 = 0xC000_0033;
    pub const OBJECT_NAME_NOT_FOUND: u32 = 0xC000_0034;
    pub const OBJECT_NAME_COLLISION: u32 = 0xC000_0035;
    pub const OBJECT_PATH_NOT_FOUND: u32 = 0xC000_003A;
    pub const SHARING_VIOLATION: u32 = 0xC000_0043;
    pub const DELETE_PENDING: u32 = 0xC000_0056;
    pub const PRIVILEGE_NOT_HELD: u32 = 0xC000_0061;
    pub const LOGON_FAILURE: u32 = 0xC000_006D;
    pub const ACCOUNT_RESTRICTION: u32 = 0xC000_006E;
    pub const PASSWORD_EXPIRED: u32 = 0xC000_0071;
    pub const ACCOUNT_DISABLED: u32 = 0xC000_0072;
    pub const FILE_IS_A_DIRECTORY: u32 = 0xC000_00BA;
    pub const NOT_SUPPORTED: u32 = 0xC000_00BB;
    pub const BAD_NETWORK_NAME: u32 = 0xC000_00CC;
    pub const DIRECTORY_NOT_EMPTY: u32 = 0xC000_0101;
    pub const NOT_A_DIRECTORY: u32 = 0xC000_0103;
    pub const CANNOT_DELETE: u32 = 0xC000_0121;
    pub const NETWORK_SESSION_EXPIRED: u32 = 0xC000_035C;
    pub const DISK_FULL: u32 = 0xC000_007F;
}

/// What went wrong. Every variant carries what it happened to (a path, a share, a host) and
/// its `Display` names the fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// The server refused the user name or password (STATUS_LOGON_FAILURE and kin).
    LogonFailure { user: String, host: String, status: u32 },
    /// The server has no such share (STATUS_BAD_NETWORK_NAME).
    BadShare { share: String, host: String },
    /// The user may not do this to this path (STATUS_ACCESS_DENIED, STATUS_CANNOT_DELETE).
    AccessDenied { path: String, status: u32 },
    /// No such file or directory, or a missing parent (STATUS_OBJECT_NAME/PATH_NOT_FOUND).
    NotFound { path: String },
    /// The name is taken (STATUS_OBJECT_NAME_COLLISION).
    Exists { path: String },
    /// A directory to remove is not empty (STATUS_DIRECTORY_NOT_EMPTY).
    NotEmpty { path: String },
    /// A file where a directory was needed or the reverse.
    WrongType { path: String, status: u32 },
    /// Reading or writing a SACL needs SeSecurityPrivilege (STATUS_PRIVILEGE_NOT_HELD).
    PrivilegeNotHeld { path: String, privilege: &'static str },
    /// The server or the connection is gone, refused, or too slow.
    Unreachable { host: String, detail: String },
    /// Anything else, with the NTSTATUS text when there is one.
    Other(String),
}

pub type Result<T> = std::result::Result<T, Error>;

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::LogonFailure { user, host, status } => write!(
                f,
                "SMB logon to {host} as '{user}' refused ({}): check the user name, the password and the \
                 domain (smb://DOMAIN;USER@HOST/SHARE), and that the account is enabled on the server \
                 (samba: `smbpasswd -a USER`)",
                status_text(*status)
            ),
            Error::BadShare { share, host } => write!(
                f,
                "server {host} has no share '{share}' (STATUS_BAD_NETWORK_NAME): check the share name \
                 (`smbclient -L //{host} -U USER` lists them) or the server's share configuration"
            ),
            Error::AccessDenied { path, status } => write!(
                f,
                "access denied on '{path}' ({}): give the SMB user the needed rights on it (the DACL, or \
                 the share's `read only`/`valid users`), or clear its read-only attribute",
                status_text(*status)
            ),
            Error::NotFound { path } => write!(f, "'{path}' not found on the share: check the path (and its parent directories) and its case"),
            Error::Exists { path } => write!(f, "'{path}' already exists: remove it first, or rename with replace"),
            Error::NotEmpty { path } => write!(f, "directory '{path}' is not empty: remove its entries first"),
            Error::WrongType { path, status } => write!(
                f,
                "'{path}' is not what was expected ({}): a file where a directory was needed or the \
                 reverse; check the path",
                status_text(*status)
            ),
            Error::PrivilegeNotHeld { path, privilege } => write!(
                f,
                "reading or writing the SACL of '{path}' needs {privilege}: grant it to the SMB user \
                 (samba: `net sam rights grant USER {privilege}`, Windows: 'Manage auditing and security \
                 log'), or copy security descriptors without the SACL (OWNER_DACL)"
            ),
            Error::Unreachable { host, detail } => write!(
                f,
                "SMB server {host} unreachable: {detail}: check the host name, the port (445 unless \
                 given), firewalls, and that the server runs"
            ),
            Error::Other(s) => write!(f, "SMB error: {s}"),
        }
    }
}

impl std::error::Error for Error {}

/// `Name (0x…)` for a known NTSTATUS, else the hex value.
pub fn status_text(s: u32) -> String {
    match smb::Status::try_from(s) {
        Ok(st) => format!("{st:?} (0x{s:08x})"),
        Err(_) => format!("NTSTATUS 0x{s:08x}"),
    }
}

/// The NTSTATUS inside an error of the `smb` crate, when there is one.
pub fn status_of(e: &smb::Error) -> Option<u32> {
    match e {
        smb::Error::UnexpectedMessageStatus(s) | smb::Error::ReceivedErrorMessage(s, _) => Some(*s),
        _ => None,
    }
}

/// Read, write and flush errors reach us stringified (`io::Error::other(e.to_string())` in
/// smb-rs); the status survives as `(0x…)` in the text.
fn status_in_text(text: &str) -> Option<u32> {
    let i = text.find("(0x")?;
    let hex: String = text[i + 3..].chars().take_while(|c| c.is_ascii_hexdigit()).collect();
    if hex.len() == 8 {
        u32::from_str_radix(&hex, 16).ok()
    } else {
        None
    }
}

/// Maps a status on an operation on `path`.
pub(crate) fn from_status(s: u32, path: &str, host: &str, detail: impl FnOnce() -> String) -> Error {
    use status::*;
    let path = path.to_string();
    match s {
        ACCESS_DENIED | CANNOT_DELETE => Error::AccessDenied { path, status: s },
        OBJECT_NAME_NOT_FOUND | OBJECT_PATH_NOT_FOUND => Error::NotFound { path },
        OBJECT_NAME_COLLISION => Error::Exists { path },
        DIRECTORY_NOT_EMPTY => Error::NotEmpty { path },
        FILE_IS_A_DIRECTORY | NOT_A_DIRECTORY => Error::WrongType { path, status: s },
        PRIVILEGE_NOT_HELD => Error::PrivilegeNotHeld { path, privilege: "SeSecurityPrivilege" },
        NETWORK_SESSION_EXPIRED => Error::Unreachable { host: host.to_string(), detail: "the SMB session expired; reconnect".into() },
        _ => Error::Other(format!("'{path}': {} ({})", status_text(s), detail())),
    }
}

/// Maps an error of the `smb` crate from an operation on `path` of server `host`.
pub(crate) fn map(e: smb::Error, path: &str, host: &str) -> Error {
    if let Some(s) = status_of(&e) {
        return from_status(s, path, host, || e.to_string());
    }
    match e {
        smb::Error::TransportError(_) | smb::Error::ConnectionStopped | smb::Error::OperationTimeout(..) | smb::Error::IoError(_) => {
            Error::Unreachable { host: host.to_string(), detail: e.to_string() }
        }
        smb::Error::MissingPermissions(what) => {
            Error::AccessDenied { path: format!("{path} (the server's maximal access lacks {what})"), status: status::ACCESS_DENIED }
        }
        other => Error::Other(format!("'{path}': {other}")),
    }
}

/// Maps the `io::Error` that smb-rs returns from reads, writes and flushes.
pub(crate) fn map_io(e: std::io::Error, path: &str, host: &str) -> Error {
    if e.kind() == std::io::ErrorKind::PermissionDenied {
        return Error::AccessDenied { path: path.to_string(), status: status::ACCESS_DENIED };
    }
    let text = e.to_string();
    if let Some(s) = status_in_text(&text) {
        return from_status(s, path, host, || text.clone());
    }
    let lower = text.to_ascii_lowercase();
    if lower.contains("connection") || lower.contains("timed out") || lower.contains("transport") {
        return Error::Unreachable { host: host.to_string(), detail: text };
    }
    Error::Other(format!("'{path}': {text}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_from_text() {
        assert_eq!(status_in_text("Unexpected message status: Access Denied (0xc0000022)."), Some(0xC000_0022));
        assert_eq!(status_in_text("no status"), None);
        assert_eq!(status_in_text("(0x12)"), None);
    }

    #[test]
    fn display_suggests_fix() {
        let e = Error::LogonFailure { user: "u".into(), host: "h".into(), status: status::LOGON_FAILURE };
        let s = e.to_string();
        assert!(s.contains("LogonFailure") && s.contains("password"), "{s}");
        let e = map_io(std::io::Error::other("Server returned an error message with status: Access Denied (0xc0000022)."), "a/b", "h");
        assert!(matches!(e, Error::AccessDenied { .. }), "{e:?}");
    }
}
