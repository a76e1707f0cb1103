//! Fault injection for tests, compiled only with the `fault-injection` feature (which only
//! the test suites enable). A release binary reads no `FERRY_TEST_*` variable: a stray one in
//! a user's environment can never corrupt a copy.

/// Faults to inject, read once from the environment.
#[derive(Clone, Debug, Default)]
pub struct TestHooks {
    /// `FERRY_TEST_CORRUPT=rel/path`: the writer flips the first byte of that file on its way
    /// to the destination, after its CRC was computed, so verification must catch it.
    pub corrupt: Option<Vec<u8>>,
    /// `FERRY_TEST_SOURCE_CHANGE=rel/path`: append to that source file while it is read.
    pub source_change: Option<Vec<u8>>,
    /// `FERRY_TEST_CORRUPT_CHUNK=rel/path`: a link reader flips a byte of that file's first
    /// chunk after computing its CRC, once per shard, as a bad network path would.
    pub corrupt_chunk: Option<Vec<u8>>,
}

impl TestHooks {
    #[cfg(feature = "fault-injection")]
    pub fn from_env() -> Self {
        use std::os::unix::ffi::OsStringExt;
        TestHooks {
            corrupt: std::env::var_os("FERRY_TEST_CORRUPT").map(|v| v.into_vec()),
            source_change: std::env::var_os("FERRY_TEST_SOURCE_CHANGE").map(|v| v.into_vec()),
            corrupt_chunk: std::env::var_os("FERRY_TEST_CORRUPT_CHUNK").map(|v| v.into_vec()),
        }
    }

    /// Without the `fault-injection` feature there is nothing to inject.
    #[cfg(not(feature = "fault-injection"))]
    pub fn from_env() -> Self {
        TestHooks::default()
    }

    pub fn corrupts(&self, rel: &[u8]) -> bool {
        self.corrupt.as_deref() == Some(rel)
    }

    pub fn changes_source(&self, rel: &[u8]) -> bool {
        self.source_change.as_deref() == Some(rel)
    }

    pub fn corrupts_chunk(&self, rel: &[u8]) -> bool {
        self.corrupt_chunk.as_deref() == Some(rel)
    }
}
