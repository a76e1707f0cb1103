use std::sync::Arc;

use ferry_common::store::{run_conformance_suite, MemStore, SharedStore};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memstore_passes_the_store_conformance_suite() {
    let store: SharedStore = Arc::new(MemStore::new());
    run_conformance_suite(store, "mem").await;
}
