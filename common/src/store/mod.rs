//! The coordination Store: the one place where executions, shards, claims and results live.
//!
//! The trait is shaped like etcd's v3 API on purpose, so that the embedded [`MemStore`] and the
//! etcd implementation are interchangeable and every piece of planning, claiming and
//! reconciliation code sees only this trait. [`RedbStore`] (feature `redb`) is a MemStore that
//! also writes every change durably to a file, for a single-host coordinator that must survive
//! a restart. The key layout is in `docs/store-layout.md` and in
//! [`crate::keys`].
//!
//! # Contract
//! - Every successful mutation (put, delete that removed something, successful transaction with
//!   writes) bumps the store's revision by exactly one; all keys written by it carry that
//!   revision as `mod_revision`. A key keeps its `create_revision` until it is deleted.
//! - `range(prefix)` returns keys in byte order, starting strictly after `start_after` when
//!   given, and at most `limit` of them (0 means no limit); `more` tells if keys were left out.
//! - A transaction evaluates all its compares against one consistent snapshot and applies either
//!   its success ops or its failure ops atomically.
//! - A key put with a lease is deleted when that lease expires or is revoked. A lease that has
//!   expired cannot be kept alive again and cannot be attached to new keys.
//! - `watch(prefix, from)` delivers every change to keys under `prefix` with revision `>= from`,
//!   in revision order, without gaps. If those revisions were compacted away the stream
//!   starts with [`StoreError::Compacted`], and the caller must re-read with `range`.
//!
//! # Errors
//! [`StoreError::Unavailable`] is transient: back off and retry. [`StoreError::LeaseExpired`]
//! means the holder lost everything attached to that lease and must not act on it any more.
//! The rest are permanent.

mod conformance;
#[cfg(feature = "etcd")]
mod etcd;
mod mem;
#[cfg(feature = "redb")]
mod redb;

#[cfg(feature = "redb")]
pub use self::redb::RedbStore;
pub use conformance::run_conformance_suite;
#[cfg(feature = "etcd")]
pub use etcd::{EtcdConnect, EtcdStore};
pub use mem::MemStore;

use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::Stream;

pub type Revision = i64;
pub type LeaseId = i64;

/// One stored key with its revisions, as etcd reports them.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyValue {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    pub create_revision: Revision,
    pub mod_revision: Revision,
    /// Number of writes since creation; 1 after the first put.
    pub version: i64,
    /// 0 when the key has no lease.
    pub lease: LeaseId,
}

impl fmt::Debug for KeyValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyValue")
            .field("key", &String::from_utf8_lossy(&self.key))
            .field("value_len", &self.value.len())
            .field("create_revision", &self.create_revision)
            .field("mod_revision", &self.mod_revision)
            .field("lease", &self.lease)
            .finish()
    }
}

#[derive(Clone, Debug, Default)]
pub struct RangeOptions {
    /// Return at most this many keys; 0 means all.
    pub limit: usize,
    /// Start strictly after this key (for paging).
    pub start_after: Option<Vec<u8>>,
    /// Leave values empty, for cheap scans of large prefixes.
    pub keys_only: bool,
}

#[derive(Clone, Debug, Default)]
pub struct RangeResult {
    pub kvs: Vec<KeyValue>,
    /// The store revision the range was read at.
    pub revision: Revision,
    /// True when `limit` cut the result short.
    pub more: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CompareTarget {
    /// Revision of the last write; 0 compares against "key absent".
    ModRevision(Revision),
    /// Revision of creation; 0 compares against "key absent".
    CreateRevision(Revision),
    Version(i64),
    Value(Vec<u8>),
    Lease(LeaseId),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CompareOp {
    Equal,
    NotEqual,
    Greater,
    Less,
}

/// A guard in a transaction, evaluated like etcd does: an absent key has revision 0,
/// version 0, lease 0 and an empty value... except that a `Value` compare on an absent key is
/// false whatever the op, as in etcd.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Compare {
    pub key: Vec<u8>,
    pub op: CompareOp,
    pub target: CompareTarget,
}

impl Compare {
    /// The key does not exist.
    pub fn absent(key: impl Into<Vec<u8>>) -> Self {
        Compare { key: key.into(), op: CompareOp::Equal, target: CompareTarget::CreateRevision(0) }
    }
    /// The key exists.
    pub fn present(key: impl Into<Vec<u8>>) -> Self {
        Compare { key: key.into(), op: CompareOp::Greater, target: CompareTarget::CreateRevision(0) }
    }
    pub fn value_is(key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> Self {
        Compare { key: key.into(), op: CompareOp::Equal, target: CompareTarget::Value(value.into()) }
    }
    pub fn mod_revision_is(key: impl Into<Vec<u8>>, rev: Revision) -> Self {
        Compare { key: key.into(), op: CompareOp::Equal, target: CompareTarget::ModRevision(rev) }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TxnOp {
    Put { key: Vec<u8>, value: Vec<u8>, lease: Option<LeaseId> },
    Delete { key: Vec<u8> },
    DeletePrefix { prefix: Vec<u8> },
}

impl TxnOp {
    pub fn put(key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> Self {
        TxnOp::Put { key: key.into(), value: value.into(), lease: None }
    }
    pub fn put_leased(key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>, lease: LeaseId) -> Self {
        TxnOp::Put { key: key.into(), value: value.into(), lease: Some(lease) }
    }
    pub fn delete(key: impl Into<Vec<u8>>) -> Self {
        TxnOp::Delete { key: key.into() }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Txn {
    pub compares: Vec<Compare>,
    pub success: Vec<TxnOp>,
    pub failure: Vec<TxnOp>,
}

impl Txn {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn when(mut self, compares: impl IntoIterator<Item = Compare>) -> Self {
        self.compares.extend(compares);
        self
    }
    pub fn and_then(mut self, ops: impl IntoIterator<Item = TxnOp>) -> Self {
        self.success.extend(ops);
        self
    }
    pub fn or_else(mut self, ops: impl IntoIterator<Item = TxnOp>) -> Self {
        self.failure.extend(ops);
        self
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TxnResult {
    pub succeeded: bool,
    /// The store revision after the transaction.
    pub revision: Revision,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    Put,
    Delete,
}

#[derive(Clone, Debug)]
pub struct WatchEvent {
    pub kind: EventKind,
    /// For deletes, the value is empty and `mod_revision` is the deleting revision.
    pub kv: KeyValue,
}

pub type WatchStream = Pin<Box<dyn Stream<Item = Result<WatchEvent, StoreError>> + Send>>;

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum StoreError {
    #[error("coordination store unavailable: {0} (check that it is running and reachable; ferry retries)")]
    Unavailable(String),
    /// The first connection failed: reported as is, since nothing is retried.
    #[error("{0}")]
    Unreachable(String),
    #[error("lease {0} expired (its keys are gone; the holder must stop acting on them)")]
    LeaseExpired(LeaseId),
    #[error("watch revision {requested} was compacted (oldest kept is {oldest}); re-read with range")]
    Compacted { requested: Revision, oldest: Revision },
    #[error("value for {key} is {len} bytes, over the {max}-byte limit")]
    ValueTooLarge { key: String, len: usize, max: usize },
    #[error("coordination store error: {0}")]
    Other(String),
}

impl StoreError {
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
    }
}

/// Values above this are refused by every implementation; etcd's default request limit is
/// 1.5 MiB, and the design keeps values to a few hundred KiB so a 10^9-file tree fits the
/// default 2 GiB quota.
pub const MAX_VALUE_BYTES: usize = 256 * 1024;

#[async_trait]
pub trait Store: Send + Sync + 'static {
    async fn get(&self, key: &[u8]) -> Result<Option<KeyValue>, StoreError>;
    async fn range(&self, prefix: &[u8], opts: RangeOptions) -> Result<RangeResult, StoreError>;
    /// Counts keys under `prefix` without returning them.
    async fn count(&self, prefix: &[u8]) -> Result<usize, StoreError>;
    async fn put(&self, key: &[u8], value: Vec<u8>, lease: Option<LeaseId>) -> Result<Revision, StoreError>;
    /// Returns how many keys were removed.
    async fn delete(&self, key: &[u8]) -> Result<usize, StoreError>;
    async fn delete_prefix(&self, prefix: &[u8]) -> Result<usize, StoreError>;
    async fn txn(&self, txn: Txn) -> Result<TxnResult, StoreError>;
    async fn lease_grant(&self, ttl: Duration) -> Result<LeaseId, StoreError>;
    /// Renews the lease for its full TTL. Fails with `LeaseExpired` if it is already gone.
    async fn lease_keep_alive(&self, lease: LeaseId) -> Result<(), StoreError>;
    async fn lease_revoke(&self, lease: LeaseId) -> Result<(), StoreError>;
    async fn watch(&self, prefix: &[u8], from_revision: Revision) -> Result<WatchStream, StoreError>;
    /// Discards the change history up to `revision` (watches from before it get
    /// `Compacted`), so a long execution does not grow the store's history without bound.
    async fn compact(&self, revision: Revision) -> Result<(), StoreError>;
    /// Total number of keys, for the "etcd holds only the frontier" accounting.
    async fn total_keys(&self) -> Result<usize, StoreError> {
        self.count(b"").await
    }
}

pub type SharedStore = Arc<dyn Store>;

/// Smallest key strictly greater than every key that starts with `prefix` (etcd's range_end).
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0] // etcd's convention for "to the end of the keyspace"
}
