//! What this binary is: the release version and the commit it was built from (see build.rs).

/// The crate version, e.g. `0.1.0`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The full commit hash, or `unknown` for a source tree built without git or `FERRY_COMMIT`.
pub const COMMIT: &str = env!("FERRY_BUILD_COMMIT");

/// The `--version` text of both binaries: `0.1.0 (commit 0123456789ab)`.
pub fn version_line() -> &'static str {
    static LINE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    LINE.get_or_init(|| format!("{VERSION} (commit {})", short_commit()))
}

/// The first 12 hex digits of [`COMMIT`]: enough to be unique, short enough for a table.
pub fn short_commit() -> &'static str {
    COMMIT.get(..12).unwrap_or(COMMIT)
}
