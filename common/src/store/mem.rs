//! MemStore: the in-process Store behind embedded mode and the unit tests.
//!
//! It follows etcd's semantics (see the contract on [`Store`]) with one mutex around a
//! B-tree. Lease deadlines use `tokio::time::Instant`, so tests that pause tokio time can
//! expire leases deterministically. Expiry happens lazily on every call and from a reaper task,
//! so watchers see the deletes even when nobody else calls.
//!
//! A persistent store (`RedbStore`) is this same store with a [`Persistence`] hook: every
//! mutation records the keys it changed, and the mutating call writes them durably before it
//! returns, so the persistent store cannot drift from these semantics.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::ops::Bound;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::*;

/// How many past events a watch can replay from; older revisions answer `Compacted`. Both
/// bounds hold, so memory stays bounded however large the values are.
const EVENT_HISTORY: usize = 100_000;
const EVENT_HISTORY_BYTES: usize = 16 << 20;

#[derive(Clone)]
pub struct MemStore {
    inner: Arc<Mutex<Inner>>,
}

struct Lease {
    ttl: Duration,
    deadline: Instant,
    keys: HashSet<Vec<u8>>,
}

struct Watcher {
    prefix: Vec<u8>,
    tx: mpsc::UnboundedSender<WatchEvent>,
}

/// One changed key: `Some` is its new unleased value, `None` means it must not be on disk
/// (deleted, or now held by a lease, since leases do not survive a restart).
pub(super) type Change = (Vec<u8>, Option<KeyValue>);

/// Where a persistent store makes each mutation durable.
pub(super) trait Persistence: Send + 'static {
    /// Applies `changes` in order and records `revision`, all in one atomic, durable step.
    fn write(&mut self, changes: &[Change], revision: Revision) -> Result<(), StoreError>;
}

#[derive(Default)]
struct Inner {
    kvs: BTreeMap<Vec<u8>, KeyValue>,
    revision: Revision,
    next_lease: LeaseId,
    leases: HashMap<LeaseId, Lease>,
    history: VecDeque<WatchEvent>,
    history_bytes: usize,
    /// Bound on `history_bytes`; 0 means [`EVENT_HISTORY_BYTES`].
    history_cap: usize,
    /// Highest revision with events dropped from `history`; watches must start above it.
    compacted_through: Revision,
    watchers: Vec<Watcher>,
    /// None for a plain MemStore, which then records no changes at all.
    persistence: Option<Box<dyn Persistence>>,
    /// Changes since the last persisted write; filled only when `persistence` is set.
    pending: Vec<Change>,
    persisted_revision: Revision,
    /// Set by the first failed write: memory then holds changes the disk does not, so every
    /// later mutation is refused until the daemon restarts from what the disk has.
    poisoned: Option<StoreError>,
}

impl Default for MemStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemStore {
    pub fn new() -> Self {
        Self::from_inner(Inner { next_lease: 1, ..Default::default() })
    }

    /// A store whose watch history holds about `bytes` of keys and values. A process whose
    /// watchers all run beside the store (embedded `ferry copy`) replays little, and memory
    /// it does not keep is memory the copy can use.
    pub fn with_history_bytes(bytes: usize) -> Self {
        Self::from_inner(Inner { next_lease: 1, history_cap: bytes.max(1), ..Default::default() })
    }

    /// A store that starts from `kvs` (all unleased) at `revision` and hands every change to
    /// `persistence`. Watch history from before the restart is gone, so watches from revisions
    /// up to `revision` answer `Compacted`. Lease ids start at `first_lease`, which the caller
    /// keeps distinct across restarts so that a holder of a lease from before the restart
    /// cannot keep alive a new, unrelated lease with the same id.
    #[cfg_attr(not(feature = "redb"), allow(dead_code))]
    pub(super) fn with_persistence(kvs: Vec<KeyValue>, revision: Revision, first_lease: LeaseId, persistence: Box<dyn Persistence>) -> Self {
        Self::from_inner(Inner {
            kvs: kvs.into_iter().map(|kv| (kv.key.clone(), kv)).collect(),
            revision,
            next_lease: first_lease,
            compacted_through: revision,
            persistence: Some(persistence),
            persisted_revision: revision,
            ..Default::default()
        })
    }

    /// Ends every open watch stream, as an etcd outage or restart does. For tests of
    /// watchers, which must notice and watch again.
    pub fn end_watches(&self) {
        self.lock().watchers.clear();
    }

    fn from_inner(inner: Inner) -> Self {
        let store = MemStore { inner: Arc::new(Mutex::new(inner)) };
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            let weak: Weak<Mutex<Inner>> = Arc::downgrade(&store.inner);
            handle.spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    let Some(inner) = weak.upgrade() else { return };
                    inner.lock().unwrap_or_else(|e| e.into_inner()).expire_leases();
                }
            });
        }
        store
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the map half-updated (every mutation is
        // applied after its checks), so a poisoned lock is still safe to use.
        let mut guard = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        guard.expire_leases();
        guard
    }
}

fn check_value(key: &[u8], value: &[u8]) -> Result<(), StoreError> {
    if value.len() > MAX_VALUE_BYTES {
        return Err(StoreError::ValueTooLarge { key: String::from_utf8_lossy(key).into_owned(), len: value.len(), max: MAX_VALUE_BYTES });
    }
    Ok(())
}

impl Inner {
    fn expire_leases(&mut self) {
        let now = Instant::now();
        let expired: Vec<LeaseId> = self.leases.iter().filter(|(_, l)| l.deadline <= now).map(|(id, _)| *id).collect();
        if expired.is_empty() {
            return;
        }
        for id in expired {
            self.revoke(id);
        }
        // Expiry has no caller to report to; a failed write poisons the store, and the next
        // mutating call reports it.
        let _ = self.persist();
    }

    /// Refuses a mutation once a write has failed (see `poisoned`).
    fn check_writable(&self) -> Result<(), StoreError> {
        match &self.poisoned {
            Some(err) => Err(err.clone()),
            None => Ok(()),
        }
    }

    fn record(&mut self, change: impl FnOnce() -> Change) {
        if self.persistence.is_some() {
            self.pending.push(change());
        }
    }

    /// Makes the changes of the mutation just applied durable; a no-op without persistence.
    fn persist(&mut self) -> Result<(), StoreError> {
        let Some(persistence) = self.persistence.as_mut() else {
            return Ok(());
        };
        if let Some(err) = &self.poisoned {
            self.pending.clear();
            return Err(err.clone());
        }
        if self.pending.is_empty() && self.revision == self.persisted_revision {
            return Ok(());
        }
        let changes = std::mem::take(&mut self.pending);
        match persistence.write(&changes, self.revision) {
            Ok(()) => {
                self.persisted_revision = self.revision;
                Ok(())
            }
            Err(err) => {
                tracing::error!(error = %err, "coordination store write failed; refusing all further writes");
                self.poisoned = Some(err.clone());
                Err(err)
            }
        }
    }

    fn revoke(&mut self, id: LeaseId) -> bool {
        let Some(lease) = self.leases.remove(&id) else {
            return false;
        };
        if lease.keys.is_empty() {
            return true;
        }
        self.revision += 1;
        let rev = self.revision;
        let mut keys: Vec<_> = lease.keys.into_iter().collect();
        keys.sort();
        for key in keys {
            self.remove_key(&key, rev);
        }
        true
    }

    fn publish(&mut self, event: WatchEvent) {
        self.watchers.retain(|w| {
            if !event.kv.key.starts_with(&w.prefix) {
                return !w.tx.is_closed();
            }
            w.tx.send(event.clone()).is_ok()
        });
        self.history_bytes += event.kv.key.len() + event.kv.value.len();
        self.history.push_back(event);
        let cap = if self.history_cap == 0 { EVENT_HISTORY_BYTES } else { self.history_cap };
        while self.history.len() > EVENT_HISTORY || self.history_bytes > cap {
            let Some(old) = self.history.pop_front() else {
                break;
            };
            self.history_bytes -= old.kv.key.len() + old.kv.value.len();
            self.compacted_through = old.kv.mod_revision;
        }
    }

    fn remove_key(&mut self, key: &[u8], rev: Revision) -> bool {
        let Some(old) = self.kvs.remove(key) else {
            return false;
        };
        if old.lease != 0 {
            if let Some(lease) = self.leases.get_mut(&old.lease) {
                lease.keys.remove(key);
            }
        }
        if old.lease == 0 {
            // Leased keys are never on disk, so only unleased ones need a delete.
            self.record(|| (key.to_vec(), None));
        }
        let kv = KeyValue { value: Vec::new(), mod_revision: rev, ..old };
        self.publish(WatchEvent { kind: EventKind::Delete, kv });
        true
    }

    fn put_key(&mut self, key: &[u8], value: Vec<u8>, lease: Option<LeaseId>, rev: Revision) {
        let lease = lease.unwrap_or(0);
        let (create_revision, version, old_lease, existed) = match self.kvs.get(key) {
            Some(old) => (old.create_revision, old.version + 1, old.lease, true),
            None => (rev, 1, 0, false),
        };
        if old_lease != 0 && old_lease != lease {
            if let Some(l) = self.leases.get_mut(&old_lease) {
                l.keys.remove(key);
            }
        }
        if lease != 0 {
            if let Some(l) = self.leases.get_mut(&lease) {
                l.keys.insert(key.to_vec());
            }
        }
        let kv = KeyValue { key: key.to_vec(), value, create_revision, mod_revision: rev, version, lease };
        if lease == 0 {
            self.record(|| (key.to_vec(), Some(kv.clone())));
        } else if existed && old_lease == 0 {
            // It was on disk unleased; now it must vanish with its lease on a restart.
            self.record(|| (key.to_vec(), None));
        }
        self.kvs.insert(key.to_vec(), kv.clone());
        self.publish(WatchEvent { kind: EventKind::Put, kv });
    }

    fn check_lease(&self, lease: Option<LeaseId>) -> Result<(), StoreError> {
        match lease {
            Some(id) if id != 0 && !self.leases.contains_key(&id) => Err(StoreError::LeaseExpired(id)),
            _ => Ok(()),
        }
    }

    fn prefix_keys(&self, prefix: &[u8]) -> Vec<Vec<u8>> {
        self.kvs.range::<[u8], _>((Bound::Included(prefix), Bound::Unbounded)).take_while(|(k, _)| k.starts_with(prefix)).map(|(k, _)| k.clone()).collect()
    }

    fn compare(&self, c: &Compare) -> bool {
        use std::cmp::Ordering;
        let kv = self.kvs.get(&c.key);
        let ord = match (&c.target, kv) {
            (CompareTarget::Value(_), None) => return false,
            (CompareTarget::Value(v), Some(kv)) => kv.value.as_slice().cmp(v.as_slice()),
            (CompareTarget::ModRevision(r), kv) => kv.map_or(0, |kv| kv.mod_revision).cmp(r),
            (CompareTarget::CreateRevision(r), kv) => kv.map_or(0, |kv| kv.create_revision).cmp(r),
            (CompareTarget::Version(v), kv) => kv.map_or(0, |kv| kv.version).cmp(v),
            (CompareTarget::Lease(l), kv) => kv.map_or(0, |kv| kv.lease).cmp(l),
        };
        match c.op {
            CompareOp::Equal => ord == Ordering::Equal,
            CompareOp::NotEqual => ord != Ordering::Equal,
            CompareOp::Greater => ord == Ordering::Greater,
            CompareOp::Less => ord == Ordering::Less,
        }
    }
}

#[async_trait]
impl Store for MemStore {
    async fn get(&self, key: &[u8]) -> Result<Option<KeyValue>, StoreError> {
        Ok(self.lock().kvs.get(key).cloned())
    }

    async fn range(&self, prefix: &[u8], opts: RangeOptions) -> Result<RangeResult, StoreError> {
        let inner = self.lock();
        let start = match &opts.start_after {
            Some(after) if after.as_slice() >= prefix => Bound::Excluded(after.as_slice()),
            _ => Bound::Included(prefix),
        };
        let mut kvs = Vec::new();
        let mut more = false;
        for (k, kv) in inner.kvs.range::<[u8], _>((start, Bound::Unbounded)) {
            if !k.starts_with(prefix) {
                break;
            }
            if opts.limit != 0 && kvs.len() == opts.limit {
                more = true;
                break;
            }
            let mut kv = kv.clone();
            if opts.keys_only {
                kv.value.clear();
            }
            kvs.push(kv);
        }
        Ok(RangeResult { kvs, revision: inner.revision, more })
    }

    async fn count(&self, prefix: &[u8]) -> Result<usize, StoreError> {
        let inner = self.lock();
        Ok(inner.kvs.range::<[u8], _>((Bound::Included(prefix), Bound::Unbounded)).take_while(|(k, _)| k.starts_with(prefix)).count())
    }

    async fn put(&self, key: &[u8], value: Vec<u8>, lease: Option<LeaseId>) -> Result<Revision, StoreError> {
        check_value(key, &value)?;
        let mut inner = self.lock();
        inner.check_writable()?;
        inner.check_lease(lease)?;
        inner.revision += 1;
        let rev = inner.revision;
        inner.put_key(key, value, lease, rev);
        inner.persist()?;
        Ok(rev)
    }

    async fn delete(&self, key: &[u8]) -> Result<usize, StoreError> {
        let mut inner = self.lock();
        inner.check_writable()?;
        if !inner.kvs.contains_key(key) {
            return Ok(0);
        }
        inner.revision += 1;
        let rev = inner.revision;
        inner.remove_key(key, rev);
        inner.persist()?;
        Ok(1)
    }

    async fn delete_prefix(&self, prefix: &[u8]) -> Result<usize, StoreError> {
        let mut inner = self.lock();
        inner.check_writable()?;
        let keys = inner.prefix_keys(prefix);
        if keys.is_empty() {
            return Ok(0);
        }
        inner.revision += 1;
        let rev = inner.revision;
        for k in &keys {
            inner.remove_key(k, rev);
        }
        inner.persist()?;
        Ok(keys.len())
    }

    async fn txn(&self, txn: Txn) -> Result<TxnResult, StoreError> {
        let mut inner = self.lock();
        inner.check_writable()?;
        let succeeded = txn.compares.iter().all(|c| inner.compare(c));
        let ops = if succeeded { txn.success } else { txn.failure };
        // Validate everything first so the transaction is all-or-nothing.
        for op in &ops {
            if let TxnOp::Put { key, value, lease } = op {
                check_value(key, value)?;
                inner.check_lease(*lease)?;
            }
        }
        let writes = ops.iter().any(|op| match op {
            TxnOp::Put { .. } => true,
            TxnOp::Delete { key } => inner.kvs.contains_key(key),
            TxnOp::DeletePrefix { prefix } => !inner.prefix_keys(prefix).is_empty(),
        });
        if writes {
            inner.revision += 1;
            let rev = inner.revision;
            for op in ops {
                match op {
                    TxnOp::Put { key, value, lease } => inner.put_key(&key, value, lease, rev),
                    TxnOp::Delete { key } => {
                        inner.remove_key(&key, rev);
                    }
                    TxnOp::DeletePrefix { prefix } => {
                        for k in inner.prefix_keys(&prefix) {
                            inner.remove_key(&k, rev);
                        }
                    }
                }
            }
            inner.persist()?;
        }
        Ok(TxnResult { succeeded, revision: inner.revision })
    }

    async fn lease_grant(&self, ttl: Duration) -> Result<LeaseId, StoreError> {
        let mut inner = self.lock();
        let id = inner.next_lease;
        inner.next_lease += 1;
        inner.leases.insert(id, Lease { ttl, deadline: Instant::now() + ttl, keys: HashSet::new() });
        Ok(id)
    }

    async fn lease_keep_alive(&self, lease: LeaseId) -> Result<(), StoreError> {
        let mut inner = self.lock();
        match inner.leases.get_mut(&lease) {
            Some(l) => {
                l.deadline = Instant::now() + l.ttl;
                Ok(())
            }
            None => Err(StoreError::LeaseExpired(lease)),
        }
    }

    async fn lease_revoke(&self, lease: LeaseId) -> Result<(), StoreError> {
        let mut inner = self.lock();
        inner.check_writable()?;
        inner.revoke(lease);
        inner.persist()
    }

    async fn compact(&self, revision: Revision) -> Result<(), StoreError> {
        let mut inner = self.lock();
        while inner.history.front().is_some_and(|e| e.kv.mod_revision <= revision) {
            let old = inner.history.pop_front().expect("checked");
            inner.history_bytes -= old.kv.key.len() + old.kv.value.len();
        }
        inner.compacted_through = inner.compacted_through.max(revision.min(inner.revision));
        Ok(())
    }

    async fn watch(&self, prefix: &[u8], from_revision: Revision) -> Result<WatchStream, StoreError> {
        let mut inner = self.lock();
        let oldest = inner.compacted_through + 1;
        let (tx, rx) = mpsc::unbounded_channel();
        if from_revision > 0 && from_revision < oldest {
            let err = StoreError::Compacted { requested: from_revision, oldest };
            return Ok(Box::pin(futures::stream::once(async move { Err(err) })));
        }
        for event in inner.history.iter() {
            if event.kv.mod_revision >= from_revision && event.kv.key.starts_with(prefix) {
                let _ = tx.send(event.clone());
            }
        }
        inner.watchers.push(Watcher { prefix: prefix.to_vec(), tx });
        let stream = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|ev| (Ok(ev), rx)) });
        Ok(Box::pin(stream))
    }
}
