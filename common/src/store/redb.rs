//! RedbStore: the persistent Store of a single-host coordinator (`ferry coordinator --data-dir`).
//!
//! It is a [`MemStore`] whose every mutation is also written to a redb file, in one durable
//! write transaction together with the store revision, before the call returns. Reads are
//! served from memory, so the semantics are exactly MemStore's; on open the file is loaded back.
//!
//! What survives a restart: every unleased key with its value, `create_revision`,
//! `mod_revision` and `version`, and the revision counter, so revisions never repeat. What does
//! not: leases and the keys attached to them (they behave as if the leases had expired while
//! the daemon was down), and the watch history (watches from before the restart get
//! `Compacted` and re-read with `range`, as after any compaction).

use std::path::{Path, PathBuf};
use std::time::Duration;

use ::redb::{Database, DatabaseError, Durability, ReadableTable, StorageError, TableDefinition};
use async_trait::async_trait;

use super::mem::{Change, Persistence};
use super::*;

/// key -> (create_revision, mod_revision, version, value). Only unleased keys are stored.
const KEYS: TableDefinition<&[u8], (i64, i64, i64, &[u8])> = TableDefinition::new("keys");
/// The counters that must outlive a restart, by name.
const META: TableDefinition<&str, i64> = TableDefinition::new("meta");

const META_FORMAT: &str = "format";
const META_REVISION: &str = "revision";
const META_LEASE_EPOCH: &str = "lease_epoch";

/// Bumped when the table layout changes, so an older build refuses a file it would misread.
const FORMAT: i64 = 1;

/// Lease ids are `epoch << LEASE_EPOCH_SHIFT | n`, with the epoch bumped on every open: a
/// holder of a lease from before a restart then gets `LeaseExpired`, never someone else's lease.
const LEASE_EPOCH_SHIFT: u32 = 32;

#[derive(Clone)]
pub struct RedbStore {
    mem: MemStore,
    path: PathBuf,
}

impl RedbStore {
    /// Opens the store file at `path`, creating it and its parent directory if missing.
    pub fn open(path: &Path) -> Result<RedbStore, StoreError> {
        if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|err| {
                StoreError::Other(format!(
                    "cannot create the directory {} for the coordinator store: {err}; check the --data-dir path and its permissions",
                    dir.display()
                ))
            })?;
        }
        let db = Database::create(path).map_err(|err| open_error(path, err))?;
        let loaded = load(&db).map_err(|why| {
            StoreError::Other(format!(
                "cannot load the coordinator store {}: {why}; if it belongs to something else, point --data-dir elsewhere",
                path.display()
            ))
        })?;
        tracing::info!(
            path = %path.display(),
            keys = loaded.kvs.len(),
            revision = loaded.revision,
            "opened the coordinator store"
        );
        let persistence = RedbPersistence { db, path: path.to_path_buf() };
        let first_lease = (loaded.lease_epoch << LEASE_EPOCH_SHIFT) | 1;
        let mem = MemStore::with_persistence(loaded.kvs, loaded.revision, first_lease, Box::new(persistence));
        Ok(RedbStore { mem, path: path.to_path_buf() })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn open_error(path: &Path, err: DatabaseError) -> StoreError {
    let path = path.display();
    let why = match err {
        DatabaseError::DatabaseAlreadyOpen => {
            "it is already in use (is another `ferry coordinator --data-dir` running on it?); stop that process or use another --data-dir".to_string()
        }
        DatabaseError::Storage(StorageError::Io(io)) if io.kind() == std::io::ErrorKind::InvalidData => {
            "it is not a redb database; move it away (the coordinator then starts empty) or point --data-dir elsewhere".to_string()
        }
        DatabaseError::Storage(StorageError::Corrupted(detail)) => {
            format!("it is damaged ({detail}); restore it from a backup, or move it away and start empty")
        }
        DatabaseError::UpgradeRequired(version) => {
            format!("it uses redb file format {version}, which this build cannot read; open it with the ferry that wrote it, or move it away")
        }
        DatabaseError::Storage(StorageError::Io(io)) => format!("{io}; check the path, its permissions and free space"),
        other => format!("{other}; move the file away if it keeps failing"),
    };
    StoreError::Other(format!("cannot open the coordinator store {path}: {why}"))
}

struct Loaded {
    kvs: Vec<KeyValue>,
    revision: Revision,
    lease_epoch: i64,
}

/// Reads every key and counter, and takes a new lease epoch, in one write transaction (which
/// also creates the tables in a new file).
fn load(db: &Database) -> Result<Loaded, String> {
    let txn = db.begin_write().map_err(|e| e.to_string())?;
    let loaded = {
        let keys = txn.open_table(KEYS).map_err(|e| e.to_string())?;
        let mut meta = txn.open_table(META).map_err(|e| e.to_string())?;
        let read_meta = |name: &str| -> Result<Option<i64>, String> { Ok(meta.get(name).map_err(|e| e.to_string())?.map(|v| v.value())) };
        let format = read_meta(META_FORMAT)?.unwrap_or(FORMAT);
        if format != FORMAT {
            return Err(format!("it is in store format {format}, and this build reads only format {FORMAT} (run the ferry that wrote it)"));
        }
        let mut revision = read_meta(META_REVISION)?.unwrap_or(0);
        let lease_epoch = read_meta(META_LEASE_EPOCH)?.unwrap_or(0) + 1;
        if lease_epoch >= 1 << (63 - LEASE_EPOCH_SHIFT) {
            return Err("its lease epoch is exhausted".to_string());
        }
        let mut kvs = Vec::new();
        for row in keys.iter().map_err(|e| e.to_string())? {
            let (key, row) = row.map_err(|e| e.to_string())?;
            let (create_revision, mod_revision, version, value) = row.value();
            // Both are written in the same transaction; this only guards against a file
            // edited by hand, where reusing a revision would break watches.
            revision = revision.max(mod_revision);
            kvs.push(KeyValue { key: key.value().to_vec(), value: value.to_vec(), create_revision, mod_revision, version, lease: 0 });
        }
        meta.insert(META_FORMAT, FORMAT).map_err(|e| e.to_string())?;
        meta.insert(META_REVISION, revision).map_err(|e| e.to_string())?;
        meta.insert(META_LEASE_EPOCH, lease_epoch).map_err(|e| e.to_string())?;
        Loaded { kvs, revision, lease_epoch }
    };
    txn.commit().map_err(|e| e.to_string())?;
    Ok(loaded)
}

struct RedbPersistence {
    db: Database,
    path: PathBuf,
}

impl RedbPersistence {
    // The error is turned into a message at once, and only on the rare failure, so its size
    // costs nothing.
    #[allow(clippy::result_large_err)]
    fn try_write(&self, changes: &[Change], revision: Revision) -> Result<(), ::redb::Error> {
        let mut txn = self.db.begin_write()?;
        // The caller is told "done" only after this commit, so it must be on disk by then.
        txn.set_durability(Durability::Immediate);
        {
            let mut keys = txn.open_table(KEYS)?;
            for (key, kv) in changes {
                match kv {
                    Some(kv) => {
                        keys.insert(key.as_slice(), (kv.create_revision, kv.mod_revision, kv.version, kv.value.as_slice()))?;
                    }
                    None => {
                        keys.remove(key.as_slice())?;
                    }
                }
            }
            txn.open_table(META)?.insert(META_REVISION, revision)?;
        }
        txn.commit()?;
        Ok(())
    }
}

impl Persistence for RedbPersistence {
    fn write(&mut self, changes: &[Change], revision: Revision) -> Result<(), StoreError> {
        self.try_write(changes, revision).map_err(|err| {
            StoreError::Other(format!(
                "cannot write the coordinator store {}: {err}; the store now refuses writes: fix the cause (disk full? file removed?) and restart the daemon, which resumes from the last durable write",
                self.path.display()
            ))
        })
    }
}

#[async_trait]
impl Store for RedbStore {
    async fn get(&self, key: &[u8]) -> Result<Option<KeyValue>, StoreError> {
        self.mem.get(key).await
    }
    async fn range(&self, prefix: &[u8], opts: RangeOptions) -> Result<RangeResult, StoreError> {
        self.mem.range(prefix, opts).await
    }
    async fn count(&self, prefix: &[u8]) -> Result<usize, StoreError> {
        self.mem.count(prefix).await
    }
    async fn put(&self, key: &[u8], value: Vec<u8>, lease: Option<LeaseId>) -> Result<Revision, StoreError> {
        self.mem.put(key, value, lease).await
    }
    async fn delete(&self, key: &[u8]) -> Result<usize, StoreError> {
        self.mem.delete(key).await
    }
    async fn delete_prefix(&self, prefix: &[u8]) -> Result<usize, StoreError> {
        self.mem.delete_prefix(prefix).await
    }
    async fn txn(&self, txn: Txn) -> Result<TxnResult, StoreError> {
        self.mem.txn(txn).await
    }
    async fn lease_grant(&self, ttl: Duration) -> Result<LeaseId, StoreError> {
        self.mem.lease_grant(ttl).await
    }
    async fn lease_keep_alive(&self, lease: LeaseId) -> Result<(), StoreError> {
        self.mem.lease_keep_alive(lease).await
    }
    async fn lease_revoke(&self, lease: LeaseId) -> Result<(), StoreError> {
        self.mem.lease_revoke(lease).await
    }
    async fn watch(&self, prefix: &[u8], from_revision: Revision) -> Result<WatchStream, StoreError> {
        self.mem.watch(prefix, from_revision).await
    }
    async fn compact(&self, revision: Revision) -> Result<(), StoreError> {
        self.mem.compact(revision).await
    }
    async fn total_keys(&self) -> Result<usize, StoreError> {
        self.mem.total_keys().await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    type Written = Arc<Mutex<Vec<(Vec<Change>, Revision)>>>;
    /// Per write: (key, written or deleted) for each change, and the revision.
    type Summary<'a> = Vec<(Vec<(&'a [u8], bool)>, Revision)>;

    /// Records what it is asked to write, and fails from the `fail_from`-th write on.
    struct FakeDisk {
        writes: Written,
        fail_from: usize,
    }

    impl Persistence for FakeDisk {
        fn write(&mut self, changes: &[Change], revision: Revision) -> Result<(), StoreError> {
            let mut writes = self.writes.lock().unwrap();
            if writes.len() + 1 >= self.fail_from {
                return Err(StoreError::Other("disk full".to_string()));
            }
            writes.push((changes.to_vec(), revision));
            Ok(())
        }
    }

    fn store_on_fake_disk(fail_from: usize) -> (MemStore, Written) {
        let writes = Arc::new(Mutex::new(Vec::new()));
        let disk = FakeDisk { writes: Arc::clone(&writes), fail_from };
        (MemStore::with_persistence(Vec::new(), 0, 1, Box::new(disk)), writes)
    }

    #[tokio::test]
    async fn each_mutation_is_one_write_and_leased_keys_leave_the_disk() {
        let (store, writes) = store_on_fake_disk(usize::MAX);
        store.put(b"a", b"1".to_vec(), None).await.unwrap();
        let txn = Txn::new().and_then([TxnOp::put(b"b".to_vec(), b"2".to_vec()), TxnOp::delete(b"a".to_vec())]);
        store.txn(txn).await.unwrap();
        let lease = store.lease_grant(Duration::from_secs(30)).await.unwrap();
        store.put(b"b", b"held".to_vec(), Some(lease)).await.unwrap();
        store.put(b"c", b"held".to_vec(), Some(lease)).await.unwrap();
        store.lease_revoke(lease).await.unwrap();
        // Reads and no-op mutations write nothing.
        store.get(b"b").await.unwrap();
        assert_eq!(store.delete(b"absent").await.unwrap(), 0);
        store.txn(Txn::new().when([Compare::present(b"absent".to_vec())])).await.unwrap();

        let writes = writes.lock().unwrap();
        let summary: Summary = writes.iter().map(|(changes, rev)| (changes.iter().map(|(k, kv)| (k.as_slice(), kv.is_some())).collect(), *rev)).collect();
        let expected: Summary = vec![
            (vec![(b"a", true)], 1),
            (vec![(b"b", true), (b"a", false)], 2),
            // b was on disk unleased, so taking a lease removes it from disk.
            (vec![(b"b", false)], 3),
            // c was never on disk; only the revision moves.
            (vec![], 4),
            // The revoke deletes only leased keys, none of which are on disk.
            (vec![], 5),
        ];
        assert_eq!(summary, expected);
        let first = writes[0].0[0].1.as_ref().unwrap();
        assert_eq!((first.create_revision, first.mod_revision, first.version, first.lease), (1, 1, 1, 0));
    }

    #[tokio::test]
    async fn a_failed_write_refuses_every_later_mutation() {
        let (store, writes) = store_on_fake_disk(2);
        store.put(b"a", b"1".to_vec(), None).await.unwrap();
        let err = store.put(b"b", b"2".to_vec(), None).await.unwrap_err();
        assert_eq!(err, StoreError::Other("disk full".to_string()));
        let lease = store.lease_grant(Duration::from_secs(30)).await.unwrap();
        let refused = [
            store.put(b"c", b"3".to_vec(), None).await.map(|_| ()),
            store.delete(b"a").await.map(|_| ()),
            store.delete_prefix(b"").await.map(|_| ()),
            store.txn(Txn::new().and_then([TxnOp::put(b"d".to_vec(), b"4".to_vec())])).await.map(|_| ()),
            store.lease_revoke(lease).await,
        ];
        for result in refused {
            assert_eq!(result, Err(err.clone()), "a poisoned store must refuse every mutation");
        }
        assert_eq!(writes.lock().unwrap().len(), 1, "nothing after the failure reaches the disk");
        assert_eq!(store.get(b"a").await.unwrap().unwrap().value, b"1", "reads still answer");
        assert!(store.get(b"c").await.unwrap().is_none(), "refused mutations change nothing");
    }
}
