//! Error kinds shared by every backend, and the retry status that drives retry accounting.
//!
//! A backend classifies its native errors once (for POSIX: [`ErrorKind::from_io`]). Retry
//! loops look only at [`ErrorKind::is_transient`]; users see the message, which names the
//! path, the operation and what to do.

use std::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ErrorKind {
    NotFound,
    PermissionDenied,
    AlreadyExists,
    /// Checksum mismatch or unreadable data.
    Corrupt,
    /// The source changed while it was read.
    SourceChanged,
    /// Out of space or quota at the destination.
    NoSpace,
    /// The destination cannot hold this kind of entry.
    Unsupported,
    /// Network, timeouts, EIO, stale handles: worth retrying.
    Unavailable,
    /// Bad configuration or input; retrying will not help.
    Config,
    /// This worker's lease lapsed: its claim belongs to someone else now, so it must stop
    /// touching the destination and drop the shard without completing it.
    LeaseLost,
    Other,
}

impl ErrorKind {
    pub fn is_transient(self) -> bool {
        matches!(self, ErrorKind::Unavailable | ErrorKind::Corrupt)
    }

    pub fn from_io(err: &std::io::Error) -> ErrorKind {
        use std::io::ErrorKind as K;
        match err.raw_os_error() {
            Some(libc::ENOSPC) | Some(libc::EDQUOT) => return ErrorKind::NoSpace,
            Some(libc::EIO)
            | Some(libc::ESTALE)
            | Some(libc::ETIMEDOUT)
            | Some(libc::EAGAIN)
            | Some(libc::EINTR)
            | Some(libc::ECONNRESET)
            | Some(libc::EHOSTUNREACH) => return ErrorKind::Unavailable,
            Some(libc::EPERM) => return ErrorKind::PermissionDenied,
            Some(libc::EOPNOTSUPP) | Some(libc::EXDEV) => return ErrorKind::Unsupported,
            _ => {}
        }
        match err.kind() {
            K::NotFound => ErrorKind::NotFound,
            K::PermissionDenied => ErrorKind::PermissionDenied,
            K::AlreadyExists => ErrorKind::AlreadyExists,
            K::TimedOut | K::Interrupted | K::WouldBlock => ErrorKind::Unavailable,
            _ => ErrorKind::Other,
        }
    }

    /// A stable code for reports: it names the kind of failure and never changes.
    pub fn code(self) -> &'static str {
        match self {
            ErrorKind::NotFound => "NOT_FOUND",
            ErrorKind::PermissionDenied => "PERMISSION_DENIED",
            ErrorKind::AlreadyExists => "ALREADY_EXISTS",
            ErrorKind::Corrupt => "CHECKSUM_MISMATCH",
            ErrorKind::SourceChanged => "SOURCE_CHANGED",
            ErrorKind::NoSpace => "NO_SPACE",
            ErrorKind::Unsupported => "UNSUPPORTED",
            ErrorKind::Unavailable => "UNAVAILABLE",
            ErrorKind::Config => "CONFIGURATION",
            ErrorKind::LeaseLost => "LEASE_LOST",
            ErrorKind::Other => "INTERNAL",
        }
    }

    /// What the user can do about it, appended to messages.
    pub fn hint(self) -> &'static str {
        match self {
            ErrorKind::NotFound => "check the path, or exclude it with --exclude",
            ErrorKind::PermissionDenied => "run as a user who can access it, or exclude it with --exclude",
            ErrorKind::AlreadyExists => "remove the conflicting entry at the destination",
            ErrorKind::Corrupt => "ferry retried; check the storage hardware if it persists",
            ErrorKind::SourceChanged => "rerun when the file is no longer being written",
            ErrorKind::NoSpace => "free space or raise the quota at the destination, then rerun",
            ErrorKind::Unsupported => "the destination cannot hold this entry; use --no-specials to skip such entries",
            ErrorKind::Unavailable => "ferry retried; check the storage or network, then rerun",
            ErrorKind::Config => "fix the option and rerun",
            ErrorKind::LeaseLost => "another worker took the shard over",
            ErrorKind::Other => "rerun; report a bug if it persists",
        }
    }
}

/// An error about one entry or operation, with enough context to act on.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FerryError {
    pub kind: ErrorKind,
    /// E.g. "cannot read /data/x: permission denied".
    pub message: String,
}

impl FerryError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        FerryError { kind, message: message.into() }
    }
    pub fn io(op: &str, path: &std::path::Path, err: &std::io::Error) -> Self {
        let kind = ErrorKind::from_io(err);
        FerryError { kind, message: format!("cannot {op} {}: {err}", path.display()) }
    }
    pub fn config(message: impl Into<String>) -> Self {
        FerryError::new(ErrorKind::Config, message)
    }
}

impl fmt::Display for FerryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.message, self.kind.hint())
    }
}

impl std::error::Error for FerryError {}
