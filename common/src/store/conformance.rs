//! The one conformance suite every [`Store`] implementation must pass, unchanged.
//!
//! Each check is a plain async fn that works under its own key prefix, so the whole suite can
//! run against a shared, long-lived server such as etcd. Checks panic on a violation; call
//! them from a test.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;

use super::*;

fn ns(scope: &str, check: &str) -> Vec<u8> {
    format!("/conformance/{scope}/{check}/").into_bytes()
}

fn key(prefix: &[u8], k: &str) -> Vec<u8> {
    let mut v = prefix.to_vec();
    v.extend_from_slice(k.as_bytes());
    v
}

/// Runs every check. `scope` separates concurrent runs against one server.
pub async fn run_conformance_suite(store: SharedStore, scope: &str) {
    put_get_and_revisions(&store, scope).await;
    range_is_ordered_and_pages(&store, scope).await;
    delete_and_delete_prefix(&store, scope).await;
    txn_compares_and_applies_atomically(&store, scope).await;
    claim_race_has_exactly_one_winner(&store, scope).await;
    values_over_the_limit_are_refused(&store, scope).await;
    watch_resumes_from_a_revision(&store, scope).await;
    compaction_keeps_keys_and_refuses_old_watches(&store, scope).await;
    lease_keep_alive_and_revoke(&store, scope).await;
    lease_expiry_removes_claims(&store, scope).await;
}

pub async fn put_get_and_revisions(store: &SharedStore, scope: &str) {
    let p = ns(scope, "putget");
    store.delete_prefix(&p).await.unwrap();
    let k = key(&p, "a");
    assert!(store.get(&k).await.unwrap().is_none(), "absent key must read as None");
    let r1 = store.put(&k, b"one".to_vec(), None).await.unwrap();
    let kv = store.get(&k).await.unwrap().expect("key just put");
    assert_eq!(kv.value, b"one");
    assert_eq!(kv.create_revision, r1);
    assert_eq!(kv.mod_revision, r1);
    assert_eq!(kv.version, 1);
    assert_eq!(kv.lease, 0);
    let r2 = store.put(&k, b"two".to_vec(), None).await.unwrap();
    assert!(r2 > r1, "every write bumps the revision");
    let kv = store.get(&k).await.unwrap().unwrap();
    assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (r1, r2, 2));
    assert_eq!(kv.value, b"two");
}

pub async fn range_is_ordered_and_pages(store: &SharedStore, scope: &str) {
    let p = ns(scope, "range");
    store.delete_prefix(&p).await.unwrap();
    // A sibling whose name extends the prefix must not leak into the range.
    let sibling = {
        let mut s = p.clone();
        s.pop();
        s.extend_from_slice(b"x/k");
        s
    };
    store.put(&sibling, b"no".to_vec(), None).await.unwrap();
    for name in ["c", "a", "e", "b", "d"] {
        store.put(&key(&p, name), name.as_bytes().to_vec(), None).await.unwrap();
    }
    let all = store.range(&p, RangeOptions::default()).await.unwrap();
    let names: Vec<_> = all.kvs.iter().map(|kv| kv.value.clone()).collect();
    assert_eq!(names, vec![b"a".to_vec(), b"b".to_vec(), b"c".to_vec(), b"d".to_vec(), b"e".to_vec()]);
    assert!(!all.more);
    assert_eq!(store.count(&p).await.unwrap(), 5);

    let page = store.range(&p, RangeOptions { limit: 2, ..Default::default() }).await.unwrap();
    assert_eq!(page.kvs.len(), 2);
    assert!(page.more, "limit cut the result, so more must be set");
    let next = store.range(&p, RangeOptions { limit: 2, start_after: Some(page.kvs[1].key.clone()), ..Default::default() }).await.unwrap();
    assert_eq!(next.kvs[0].value, b"c");
    assert_eq!(next.kvs[1].value, b"d");
    let keys = store.range(&p, RangeOptions { keys_only: true, ..Default::default() }).await.unwrap();
    assert_eq!(keys.kvs.len(), 5);
    assert!(keys.kvs.iter().all(|kv| kv.value.is_empty()), "keys_only leaves values empty");
    store.delete(&sibling).await.unwrap();
}

pub async fn delete_and_delete_prefix(store: &SharedStore, scope: &str) {
    let p = ns(scope, "delete");
    store.delete_prefix(&p).await.unwrap();
    for name in ["a", "b", "c"] {
        store.put(&key(&p, name), vec![1], None).await.unwrap();
    }
    assert_eq!(store.delete(&key(&p, "a")).await.unwrap(), 1);
    assert_eq!(store.delete(&key(&p, "a")).await.unwrap(), 0, "deleting an absent key removes nothing");
    assert_eq!(store.delete_prefix(&p).await.unwrap(), 2);
    assert_eq!(store.count(&p).await.unwrap(), 0);
}

pub async fn txn_compares_and_applies_atomically(store: &SharedStore, scope: &str) {
    let p = ns(scope, "txn");
    store.delete_prefix(&p).await.unwrap();
    let (q, c) = (key(&p, "queue"), key(&p, "claim"));
    store.put(&q, b"shard".to_vec(), None).await.unwrap();

    let claim = || Txn::new().when([Compare::absent(c.clone()), Compare::present(q.clone())]).and_then([TxnOp::put(c.clone(), b"w1".to_vec())]);
    assert!(store.txn(claim()).await.unwrap().succeeded);
    let second = store.txn(claim().or_else([TxnOp::put(key(&p, "lost"), b"1".to_vec())])).await.unwrap();
    assert!(!second.succeeded, "a claim that exists must make the compare fail");
    assert!(store.get(&key(&p, "lost")).await.unwrap().is_some(), "failure ops run when compares fail");

    // The completion fence: only the claim holder's value matches.
    let fence = |holder: &str| {
        Txn::new().when([Compare::value_is(c.clone(), holder.as_bytes().to_vec())]).and_then([
            TxnOp::put(key(&p, "done"), b"ok".to_vec()),
            TxnOp::delete(q.clone()),
            TxnOp::delete(c.clone()),
        ])
    };
    assert!(!store.txn(fence("w2")).await.unwrap().succeeded);
    assert!(store.get(&key(&p, "done")).await.unwrap().is_none(), "a failed txn writes nothing");
    let done = store.txn(fence("w1")).await.unwrap();
    assert!(done.succeeded);
    let kv = store.get(&key(&p, "done")).await.unwrap().unwrap();
    assert_eq!(kv.mod_revision, done.revision, "all writes of one txn share its revision");
    assert!(store.get(&q).await.unwrap().is_none());
    assert!(store.get(&c).await.unwrap().is_none());

    // Revision compares.
    let r = store.put(&q, b"v".to_vec(), None).await.unwrap();
    assert!(store.txn(Txn::new().when([Compare::mod_revision_is(q.clone(), r)])).await.unwrap().succeeded);
    assert!(!store.txn(Txn::new().when([Compare::mod_revision_is(q.clone(), r - 1)])).await.unwrap().succeeded);
    // A value compare on an absent key is false, as in etcd.
    let absent = key(&p, "nothing");
    let ne = Compare { key: absent, op: CompareOp::NotEqual, target: CompareTarget::Value(b"x".to_vec()) };
    assert!(!store.txn(Txn::new().when([ne])).await.unwrap().succeeded);
}

pub async fn claim_race_has_exactly_one_winner(store: &SharedStore, scope: &str) {
    let p = ns(scope, "race");
    store.delete_prefix(&p).await.unwrap();
    let rounds = 5;
    let claimers = 16;
    for round in 0..rounds {
        let q = key(&p, &format!("queue/{round}"));
        let c = key(&p, &format!("claim/{round}"));
        store.put(&q, b"shard".to_vec(), None).await.unwrap();
        let mut tasks = Vec::new();
        for w in 0..claimers {
            let store = Arc::clone(store);
            let (q, c) = (q.clone(), c.clone());
            tasks.push(tokio::spawn(async move {
                let txn = Txn::new().when([Compare::absent(c.clone()), Compare::present(q)]).and_then([TxnOp::put(c, format!("w{w}").into_bytes())]);
                store.txn(txn).await.unwrap().succeeded
            }));
        }
        let mut winners = 0;
        for t in tasks {
            winners += t.await.unwrap() as usize;
        }
        assert_eq!(winners, 1, "round {round}: exactly one claimer must win");
    }
}

pub async fn values_over_the_limit_are_refused(store: &SharedStore, scope: &str) {
    let p = ns(scope, "limit");
    let big = vec![0u8; MAX_VALUE_BYTES + 1];
    match store.put(&key(&p, "big"), big, None).await {
        Err(StoreError::ValueTooLarge { .. }) => {}
        other => panic!("a value over MAX_VALUE_BYTES must be refused, got {other:?}"),
    }
    store.put(&key(&p, "fits"), vec![0u8; MAX_VALUE_BYTES], None).await.unwrap();
    store.delete_prefix(&p).await.unwrap();
}

async fn next_event(stream: &mut WatchStream) -> WatchEvent {
    tokio::time::timeout(Duration::from_secs(10), stream.next()).await.expect("watch event within 10 s").expect("watch stream ended").expect("watch error")
}

pub async fn watch_resumes_from_a_revision(store: &SharedStore, scope: &str) {
    let p = ns(scope, "watch");
    store.delete_prefix(&p).await.unwrap();
    let _ra = store.put(&key(&p, "a"), b"1".to_vec(), None).await.unwrap();
    let rb = store.put(&key(&p, "b"), b"2".to_vec(), None).await.unwrap();
    store.put(&key(&p, "c"), b"3".to_vec(), None).await.unwrap();
    store.put(b"/conformance-outside", b"x".to_vec(), None).await.unwrap();

    let mut w = store.watch(&p, rb).await.unwrap();
    let e = next_event(&mut w).await;
    assert_eq!((e.kind, e.kv.key.clone(), e.kv.mod_revision), (EventKind::Put, key(&p, "b"), rb));
    let e = next_event(&mut w).await;
    assert_eq!(e.kv.key, key(&p, "c"), "history is replayed in revision order");
    // Live events follow the replayed ones without a gap.
    store.put(&key(&p, "d"), b"4".to_vec(), None).await.unwrap();
    store.delete(&key(&p, "a")).await.unwrap();
    let e = next_event(&mut w).await;
    assert_eq!((e.kind, e.kv.key.clone()), (EventKind::Put, key(&p, "d")));
    let e = next_event(&mut w).await;
    assert_eq!((e.kind, e.kv.key.clone()), (EventKind::Delete, key(&p, "a")));
    store.delete(b"/conformance-outside").await.unwrap();
}

pub async fn lease_keep_alive_and_revoke(store: &SharedStore, scope: &str) {
    let p = ns(scope, "lease-revoke");
    store.delete_prefix(&p).await.unwrap();
    let lease = store.lease_grant(Duration::from_secs(30)).await.unwrap();
    store.put(&key(&p, "held"), b"w".to_vec(), Some(lease)).await.unwrap();
    assert_eq!(store.get(&key(&p, "held")).await.unwrap().unwrap().lease, lease);
    store.lease_keep_alive(lease).await.unwrap();
    store.lease_revoke(lease).await.unwrap();
    assert!(store.get(&key(&p, "held")).await.unwrap().is_none(), "revoking a lease deletes its keys");
    assert!(matches!(store.lease_keep_alive(lease).await, Err(StoreError::LeaseExpired(_))));
    assert!(store.put(&key(&p, "late"), b"w".to_vec(), Some(lease)).await.is_err(), "a revoked lease cannot hold new keys");
}

pub async fn lease_expiry_removes_claims(store: &SharedStore, scope: &str) {
    let p = ns(scope, "lease-expiry");
    store.delete_prefix(&p).await.unwrap();
    let (short, kept) = (store.lease_grant(Duration::from_secs(2)).await.unwrap(), store.lease_grant(Duration::from_secs(2)).await.unwrap());
    store.put(&key(&p, "claim/1"), b"dead".to_vec(), Some(short)).await.unwrap();
    store.put(&key(&p, "claim/2"), b"alive".to_vec(), Some(kept)).await.unwrap();
    let start_rev = store.range(&p, RangeOptions::default()).await.unwrap().revision + 1;
    let mut w = store.watch(&p, start_rev).await.unwrap();
    // Keep one lease alive across its TTL while the other lapses.
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        store.lease_keep_alive(kept).await.unwrap();
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while store.get(&key(&p, "claim/1")).await.unwrap().is_some() {
        assert!(tokio::time::Instant::now() < deadline, "expired lease must remove its key");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(store.get(&key(&p, "claim/2")).await.unwrap().is_some(), "a kept-alive lease keeps its key");
    let e = next_event(&mut w).await;
    assert_eq!((e.kind, e.kv.key), (EventKind::Delete, key(&p, "claim/1")), "watchers see the expiry");
    assert!(matches!(store.lease_keep_alive(short).await, Err(StoreError::LeaseExpired(_))));
    store.lease_revoke(kept).await.unwrap();
}

pub async fn compaction_keeps_keys_and_refuses_old_watches(store: &SharedStore, scope: &str) {
    let p = ns(scope, "compact");
    store.delete_prefix(&p).await.unwrap();
    let r1 = store.put(&key(&p, "a"), b"1".to_vec(), None).await.unwrap();
    let r2 = store.put(&key(&p, "a"), b"2".to_vec(), None).await.unwrap();
    store.compact(r2).await.unwrap();
    store.compact(r1).await.unwrap(); // compacting to an older revision is a no-op, not an error
    assert_eq!(store.get(&key(&p, "a")).await.unwrap().unwrap().value, b"2", "compaction keeps current values");
    let mut w = store.watch(&p, r1).await.unwrap();
    match tokio::time::timeout(Duration::from_secs(10), w.next()).await.expect("an answer within 10 s") {
        Some(Err(StoreError::Compacted { .. })) => {}
        other => {
            panic!("a watch from a compacted revision must fail with Compacted, got {other:?}")
        }
    }
}
