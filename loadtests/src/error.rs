//! One error type with two flavours, because the exit code must tell a
//! mistyped command line (2) apart from a failure while doing the work (1).

use std::fmt;
use std::path::Path;

#[derive(Debug)]
pub enum Error {
    /// The invocation itself is wrong (bad option combination, bad value).
    Usage(String),
    /// Something failed while generating or benchmarking.
    Run(String),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn usage(msg: impl Into<String>) -> Self {
        Error::Usage(msg.into())
    }

    pub fn run(msg: impl Into<String>) -> Self {
        Error::Run(msg.into())
    }

    /// Process exit code: 2 for usage errors (same as clap), 1 otherwise.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Usage(_) => 2,
            Error::Run(_) => 1,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Usage(m) | Error::Run(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for Error {}

/// Attach a human-readable context to an `io::Result`, producing a one-line
/// `Error::Run` such as `create /x/y: Permission denied (os error 13)`.
pub trait Context<T> {
    fn ctx<D: fmt::Display>(self, what: impl FnOnce() -> D) -> Result<T>;
}

impl<T> Context<T> for std::io::Result<T> {
    fn ctx<D: fmt::Display>(self, what: impl FnOnce() -> D) -> Result<T> {
        self.map_err(|e| Error::Run(format!("{}: {e}", what())))
    }
}

/// `verb path` with the path shown lossily but unambiguously (debug-escaped,
/// so newlines and non-UTF-8 bytes in tricky names stay on one line).
pub fn at(verb: &str, path: &Path) -> String {
    format!("{verb} {:?}", path)
}
