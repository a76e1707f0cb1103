#![cfg(feature = "redb")]

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;

use ferry_common::store::{run_conformance_suite, RedbStore, SharedStore, Store, StoreError, Txn, TxnOp};

/// Reopens after the previous store was dropped. The lease reaper task briefly holds a handle
/// every 100 ms; when it holds the last one, it closes the file (tens of ms, writing redb's
/// allocator state) while the test already tries to reopen.
fn reopen(path: &Path) -> RedbStore {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match RedbStore::open(path) {
            Ok(store) => return store,
            Err(err) if err.to_string().contains("already in use") && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(err) => panic!("reopen {}: {err}", path.display()),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redbstore_passes_the_store_conformance_suite() {
    let dir = tempfile::tempdir().unwrap();
    let store: SharedStore = Arc::new(RedbStore::open(&dir.path().join("store.redb")).unwrap());
    run_conformance_suite(store, "redb").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_conformance_suite_passes_again_on_the_reopened_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");
    run_conformance_suite(Arc::new(RedbStore::open(&path).unwrap()), "redb").await;
    run_conformance_suite(Arc::new(reopen(&path)), "redb").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_and_their_revisions_survive_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    // A missing parent directory is created.
    let path = dir.path().join("data").join("store.redb");
    let store = RedbStore::open(&path).unwrap();
    store.put(b"/t/a", b"one".to_vec(), None).await.unwrap();
    store.put(b"/t/a", b"two".to_vec(), None).await.unwrap();
    store.put(b"/t/b", b"gone".to_vec(), None).await.unwrap();
    store.put(b"/t/c", b"c".to_vec(), None).await.unwrap();
    let txn = Txn::new().and_then([TxnOp::put(b"/t/d".to_vec(), b"d".to_vec()), TxnOp::delete(b"/t/b".to_vec())]);
    store.txn(txn).await.unwrap();
    store.delete(b"/t/c").await.unwrap();
    let empty = vec![0u8; 0];
    store.put(b"/t/empty", empty.clone(), None).await.unwrap();
    let before = store.range(b"/t/", Default::default()).await.unwrap();
    drop(store);

    let store = reopen(&path);
    let after = store.range(b"/t/", Default::default()).await.unwrap();
    assert_eq!(after.kvs, before.kvs, "values, create/mod revisions and versions are kept");
    assert_eq!(after.revision, before.revision);
    let a = store.get(b"/t/a").await.unwrap().unwrap();
    assert_eq!((a.value.as_slice(), a.version), (&b"two"[..], 2));
    assert!(store.get(b"/t/b").await.unwrap().is_none(), "a key deleted in a txn stays deleted");
    assert!(store.get(b"/t/c").await.unwrap().is_none(), "a deleted key stays deleted");
    assert_eq!(store.get(b"/t/empty").await.unwrap().unwrap().value, empty);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revisions_keep_increasing_across_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");
    let store = RedbStore::open(&path).unwrap();
    store.put(b"/r/a", b"1".to_vec(), None).await.unwrap();
    // The last write before the restart touches only a leased key: its revision must still
    // never be handed out again.
    let lease = store.lease_grant(Duration::from_secs(60)).await.unwrap();
    let last = store.put(b"/r/held", b"w".to_vec(), Some(lease)).await.unwrap();
    drop(store);

    let store = reopen(&path);
    assert_eq!(store.range(b"", Default::default()).await.unwrap().revision, last);
    let next = store.put(b"/r/b", b"2".to_vec(), None).await.unwrap();
    assert_eq!(next, last + 1, "writes continue from the persisted revision");
    let kv = store.get(b"/r/b").await.unwrap().unwrap();
    assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (next, next, 1));
    let a = store.put(b"/r/a", b"again".to_vec(), None).await.unwrap();
    let kv = store.get(b"/r/a").await.unwrap().unwrap();
    assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (1, a, 2), "a reloaded key keeps counting");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leased_keys_and_leases_are_gone_after_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");
    let store = RedbStore::open(&path).unwrap();
    let lease = store.lease_grant(Duration::from_secs(60)).await.unwrap();
    store.put(b"/l/claim", b"w1".to_vec(), Some(lease)).await.unwrap();
    // A key that was on disk unleased and then taken by a lease must leave the disk.
    store.put(b"/l/was-plain", b"p".to_vec(), None).await.unwrap();
    store.put(b"/l/was-plain", b"w1".to_vec(), Some(lease)).await.unwrap();
    store.put(b"/l/plain", b"p".to_vec(), None).await.unwrap();
    drop(store);

    let store = reopen(&path);
    assert!(store.get(b"/l/claim").await.unwrap().is_none(), "leased keys do not survive a restart");
    assert!(store.get(b"/l/was-plain").await.unwrap().is_none(), "a key that became leased does not either");
    assert!(store.get(b"/l/plain").await.unwrap().is_some());
    assert_eq!(store.lease_keep_alive(lease).await, Err(StoreError::LeaseExpired(lease)));
    let new_lease = store.lease_grant(Duration::from_secs(60)).await.unwrap();
    assert_ne!(new_lease, lease, "a lease id from before the restart must not name a new lease");
    assert_eq!(store.lease_keep_alive(lease).await, Err(StoreError::LeaseExpired(lease)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_from_before_the_reopen_is_compacted() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");
    let store = RedbStore::open(&path).unwrap();
    let old = store.put(b"/w/a", b"1".to_vec(), None).await.unwrap();
    let last = store.put(b"/w/a", b"2".to_vec(), None).await.unwrap();
    drop(store);

    let store = reopen(&path);
    for from in [old, last] {
        let mut stream = store.watch(b"/w/", from).await.unwrap();
        match tokio::time::timeout(Duration::from_secs(10), stream.next()).await.unwrap() {
            Some(Err(StoreError::Compacted { requested, oldest })) => {
                assert_eq!((requested, oldest), (from, last + 1));
            }
            other => panic!("a watch from revision {from} after reopening at {last} must get Compacted, got {other:?}"),
        }
    }
    // From the next revision on, nothing is missing.
    let mut stream = store.watch(b"/w/", last + 1).await.unwrap();
    let rev = store.put(b"/w/b", b"3".to_vec(), None).await.unwrap();
    let event = tokio::time::timeout(Duration::from_secs(10), stream.next()).await.unwrap().unwrap().unwrap();
    assert_eq!((event.kv.key.as_slice(), event.kv.mod_revision), (&b"/w/b"[..], rev));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_open_while_the_first_is_alive_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");
    let first = RedbStore::open(&path).unwrap();
    let err = RedbStore::open(&path).err().expect("a second open of a live store must fail").to_string();
    eprintln!("{err}");
    assert!(err.contains(&path.display().to_string()), "{err}");
    assert!(err.contains("is another `ferry coordinator --data-dir` running on it?"), "{err}");
    assert!(!err.contains('\n'), "one line: {err}");
    // The first store is unharmed.
    first.put(b"/x", b"1".to_vec(), None).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_that_is_not_a_store_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");
    std::fs::write(&path, b"these are not the bytes of a redb database\n".repeat(100)).unwrap();
    let err = RedbStore::open(&path).err().expect("a garbage file must be refused").to_string();
    eprintln!("{err}");
    assert!(err.contains(&path.display().to_string()), "{err}");
    assert!(err.contains("not a redb database"), "{err}");
    assert!(err.contains("move it away"), "the error says what to do: {err}");
    assert!(!err.contains('\n'), "one line: {err}");
    let garbage = std::fs::read(&path).unwrap();
    assert!(garbage.starts_with(b"these are not"), "a refused file is left as it was");

    let dir_path = dir.path().join("a-directory");
    std::fs::create_dir(&dir_path).unwrap();
    let err = RedbStore::open(&dir_path).err().expect("a directory is not a store file").to_string();
    eprintln!("{err}");
    assert!(err.contains(&dir_path.display().to_string()), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_puts_are_all_there_after_a_reopen_and_their_cost_is_reported() {
    const PUTS: usize = 1000;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");
    let store = RedbStore::open(&path).unwrap();
    let value = vec![7u8; 256];
    let started = Instant::now();
    for i in 0..PUTS {
        store.put(format!("/p/{i:05}").as_bytes(), value.clone(), None).await.unwrap();
    }
    let elapsed = started.elapsed();
    eprintln!("{PUTS} durable puts of {} B in {} ms ({:.2} ms each)", value.len(), elapsed.as_millis(), elapsed.as_secs_f64() * 1000.0 / PUTS as f64);
    drop(store);
    let store = reopen(&path);
    assert_eq!(store.count(b"/p/").await.unwrap(), PUTS);
    assert_eq!(store.range(b"", Default::default()).await.unwrap().revision, PUTS as i64);
}
