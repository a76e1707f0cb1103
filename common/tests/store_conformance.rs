use std::sync::Arc;

use ferry_common::store::{run_conformance_suite, EtcdStore, MemStore, SharedStore};
use ferry_common::testing::EtcdServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memstore_passes_the_store_conformance_suite() {
    let store: SharedStore = Arc::new(MemStore::new());
    run_conformance_suite(store, "mem").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdstore_passes_the_store_conformance_suite() {
    let Some(server) = EtcdServer::start() else {
        eprintln!("etcd not installed; skipping (CI installs it and never skips)");
        return;
    };
    let store: SharedStore = Arc::new(EtcdStore::connect(std::slice::from_ref(&server.endpoint)).await.expect("connect to etcd"));
    run_conformance_suite(store, "etcd").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_etcd_is_a_clear_error() {
    let err = EtcdStore::connect(&["http://127.0.0.1:9".to_string()]).await.unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("cannot reach etcd at http://127.0.0.1:9"), "{msg}");
}
