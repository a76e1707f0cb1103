//! Everything a worker needs to run the shards of one execution.

use std::path::PathBuf;

use ferry_common::error::FerryError;
use ferry_common::filter::Matcher;
use ferry_common::keys::ExecKeys;
use ferry_common::model::{ExecutionSpec, Options, Reach};

use crate::storage::local::LocalTree;
use crate::storage::{self, SharedLocation};

/// Test hooks, read once from the environment. They exist so integration tests can inject
/// faults that are otherwise impossible to time: they never activate unless set.
#[derive(Clone, Debug, Default)]
pub struct TestHooks {
    /// `FERRY_TEST_CORRUPT=rel/path`: flip a byte of that file's destination copy after it is
    /// written and before it is verified.
    pub corrupt: Option<Vec<u8>>,
    /// `FERRY_TEST_SOURCE_CHANGE=rel/path`: append to that source file while it is read.
    pub source_change: Option<Vec<u8>>,
    /// `FERRY_TEST_CORRUPT_CHUNK=rel/path`: a link reader flips a byte of that file's first
    /// chunk after computing its CRC, once per shard, as a bad network path would.
    pub corrupt_chunk: Option<Vec<u8>>,
}

impl TestHooks {
    pub fn from_env() -> Self {
        use std::os::unix::ffi::OsStringExt;
        TestHooks {
            corrupt: std::env::var_os("FERRY_TEST_CORRUPT").map(|v| v.into_vec()),
            source_change: std::env::var_os("FERRY_TEST_SOURCE_CHANGE").map(|v| v.into_vec()),
            corrupt_chunk: std::env::var_os("FERRY_TEST_CORRUPT_CHUNK").map(|v| v.into_vec()),
        }
    }
}

/// The two sides of an execution that involves an object store, behind the `Location` trait.
pub struct ObjectPair {
    pub src: SharedLocation,
    /// `None` only in dry-run mode when a local destination root does not exist yet.
    pub dst: Option<SharedLocation>,
}

pub struct ExecContext {
    pub spec: ExecutionSpec,
    pub keys: ExecKeys,
    /// Local-to-local executions: the source tree. `None` when `object` is set.
    src: Option<LocalTree>,
    /// Local-to-local: `None` only in dry-run mode when the destination root does not exist yet.
    pub dst: Option<LocalTree>,
    /// Set when either side is an object store: every shard then runs through
    /// [`crate::exec::object`].
    pub object: Option<ObjectPair>,
    pub matcher: Matcher,
    pub hooks: TestHooks,
    /// Prefix of this execution's temporary names; anything else starting with
    /// [`TEMP_PREFIX`] is debris from an interrupted run and is removed.
    pub temp_prefix: Vec<u8>,
    /// Distinguishes this process's temporary names from another worker's running the same
    /// shard (a stalled worker that lost its claim must never rename the other's half-written
    /// file into place).
    nonce: String,
    pub is_root: bool,
    /// The lease of the worker running this execution's shards; set when movers start.
    pub lease: std::sync::OnceLock<std::sync::Arc<crate::lease::LeaseClock>>,
    /// BytesPerSecond of this execution on this agent, for local copies; it follows changes
    /// made while the execution runs (the movers refresh it).
    pub rate: crate::link::rate::RateLimiter,
}

/// Every temporary name ferry creates starts with this; source entries with it are ignored.
pub const TEMP_PREFIX: &[u8] = b".ferry-tmp-";

/// Most bytes a manifest may have: it is held in memory on every worker.
const MAX_MANIFEST_BYTES: u64 = 1 << 30;

/// Reads and parses a manifest from a local file or an S3 object.
fn load_manifest(uri: &str, spec: &ExecutionSpec) -> Result<ferry_common::filter::Manifest, FerryError> {
    let text = if storage::is_object_uri(uri) {
        let (dir, name) = uri.rsplit_once('/').filter(|(d, n)| !n.is_empty() && d.len() > "s3:/".len()).ok_or_else(|| FerryError::config(format!("manifest {uri}: give the object's full URI, s3://bucket/path/manifest.csv")))?;
        let loc = storage::open(dir, spec)?;
        let mut buf = Vec::new();
        loc.fetch(name.as_bytes(), MAX_MANIFEST_BYTES, &mut buf)?.ok_or_else(|| FerryError::config(format!("manifest {uri} does not exist (upload it, or fix Manifest.Source)")))?;
        buf
    } else {
        let path = uri.strip_prefix("file://").unwrap_or(uri);
        std::fs::read(path).map_err(|e| FerryError::config(format!("cannot read manifest {path}: {e} (fix Manifest.Source, or make it readable on every agent)")))?
    };
    ferry_common::filter::Manifest::parse(&text).map_err(|e| FerryError::config(format!("manifest {uri}: {e}")))
}

/// A task's local destination directory is created when missing, as DataSync does. (`ferry
/// copy` creates it while validating its arguments, before anything is submitted.)
/// Creates a local destination that is missing. `ferry copy` creates it on the submitting
/// host, but tasks and locations bound to agents are submitted by hosts that may not see the
/// destination at all, so the agents that write there create it.
fn create_destination(spec: &ExecutionSpec) -> Result<(), FerryError> {
    if !(spec.task.is_some() || spec.link.is_bound()) || spec.options.dry_run || spec.mode == ferry_common::model::Mode::Verify {
        return Ok(());
    }
    let path = local_path(&spec.destination);
    std::fs::create_dir_all(&path).map_err(|e| FerryError::config(format!("cannot create destination {}: {e} (create it, or fix DestinationLocation)", path.display())))
}

impl ExecContext {
    pub fn open(spec: ExecutionSpec) -> Result<Self, FerryError> {
        Self::open_for(spec, Reach::BOTH)
    }

    /// Opens the sides this agent can reach. A linked execution (locations bound to agents)
    /// runs on local trees at both ends; an agent that reaches one side opens only that one.
    pub fn open_for(spec: ExecutionSpec, reach: Reach) -> Result<Self, FerryError> {
        let (mut src, mut dst, mut object) = (None, None, None);
        if spec.link.is_bound() {
            if storage::is_object_uri(&spec.source) || storage::is_object_uri(&spec.destination) {
                return Err(FerryError::config("locations bound to agents must be local paths (file trees); object stores are reached by every agent directly"));
            }
            if reach.source {
                src = Some(LocalTree::open(&local_path(&spec.source))?);
            }
            if reach.destination {
                create_destination(&spec)?;
                dst = Some(LocalTree::open(&local_path(&spec.destination))?);
            }
        } else if storage::is_object_uri(&spec.source) || storage::is_object_uri(&spec.destination) {
            if !storage::is_object_uri(&spec.destination) {
                create_destination(&spec)?;
            }
            let dst = match storage::open(&spec.destination, &spec) {
                Ok(d) => Some(d),
                Err(_) if spec.options.dry_run && !storage::is_object_uri(&spec.destination) => None,
                Err(e) => return Err(e),
            };
            object = Some(ObjectPair { src: storage::open(&spec.source, &spec)?, dst });
        } else {
            src = Some(LocalTree::open(&local_path(&spec.source))?);
            create_destination(&spec)?;
            dst = match LocalTree::open(&local_path(&spec.destination)) {
                Ok(t) => Some(t),
                Err(_) if spec.options.dry_run => None,
                Err(e) => return Err(e),
            };
        }
        let mut matcher = Matcher::new(&spec.options.filters).map_err(|e| FerryError::config(e.to_string()))?;
        if let Some(uri) = &spec.options.manifest {
            matcher = matcher.with_manifest(load_manifest(uri, &spec)?);
        }
        let spec_rate = spec.link.bytes_per_second;
        let mut temp_prefix = TEMP_PREFIX.to_vec();
        temp_prefix.extend_from_slice(spec.id.as_bytes());
        temp_prefix.push(b'-');
        Ok(ExecContext {
            keys: ExecKeys::new(&spec.id),
            spec,
            src,
            dst,
            object,
            matcher,
            hooks: TestHooks::from_env(),
            temp_prefix,
            nonce: format!("{:08x}", rand::random::<u32>()),
            is_root: crate::storage::local::sys::is_root(),
            lease: std::sync::OnceLock::new(),
            rate: crate::link::rate::RateLimiter::new(spec_rate),
        })
    }

    /// Called before every change to the destination: waits while the lease's state is
    /// unknown (a keep-alive is overdue) and fails with `LeaseLost` once it is known gone, so a
    /// worker that stalled past its lease never writes over its successor's work.
    pub fn fence(&self) -> Result<(), FerryError> {
        match self.lease.get() {
            Some(lease) => lease.wait_valid(),
            None => Ok(()),
        }
    }

    /// The local source tree. Only local-to-local shard functions call this, and the node
    /// sends every shard of an execution with an object store to `exec::object` instead.
    pub fn src(&self) -> &LocalTree {
        self.src.as_ref().expect("local shard functions run only for local-to-local executions, on agents that reach the source")
    }

    /// The local source tree, if this agent reaches it.
    pub fn src_if_reached(&self) -> Option<&LocalTree> {
        self.src.as_ref()
    }

    /// What this agent can reach of this execution.
    pub fn reach(&self) -> Reach {
        if self.object.is_some() {
            return Reach::BOTH;
        }
        Reach { source: self.src.is_some(), destination: self.dst.is_some() || self.options().dry_run }
    }

    /// Both sides of an execution with an object store. Only `exec::object` callers use it,
    /// and the node sends them only the shards of such executions.
    pub fn object(&self) -> &ObjectPair {
        self.object.as_ref().expect("object shard functions run only for executions with an object store")
    }

    pub fn options(&self) -> &Options {
        &self.spec.options
    }

    /// The destination tree; callers only reach this outside dry-run.
    pub fn dst(&self) -> Result<&LocalTree, FerryError> {
        self.dst.as_ref().ok_or_else(|| FerryError::config("destination does not exist (dry run)"))
    }

    /// A temporary name in the same directory as `name`: deterministic within this process, so
    /// a retry reuses (and replaces) its own debris, and short, so it fits even when `name` is
    /// 255 bytes.
    pub fn temp_name(&self, name: &[u8]) -> Vec<u8> {
        self.temp_with(&self.nonce, name)
    }

    /// The temporary name of a large file written in parts: shared by every worker that
    /// writes a part. Parts of one source write identical bytes at identical offsets, so a
    /// stale writer cannot corrupt it.
    pub fn part_temp_name(&self, name: &[u8]) -> Vec<u8> {
        self.temp_with("parts", name)
    }

    pub(crate) fn temp_with(&self, tag: &str, name: &[u8]) -> Vec<u8> {
        let h = ((crc32c::crc32c(name) as u64) << 32) | crc32c::crc32c_append(0x2545_f491, name) as u64;
        let mut t = self.temp_prefix.clone();
        t.extend_from_slice(format!("{tag}-{h:016x}").as_bytes());
        t
    }

    pub fn is_own_temp(&self, name: &[u8]) -> bool {
        name.starts_with(&self.temp_prefix)
    }
}

/// `file:///x` and `/x` both name the local path `/x`.
pub fn local_path(uri: &str) -> PathBuf {
    PathBuf::from(uri.strip_prefix("file://").unwrap_or(uri))
}
