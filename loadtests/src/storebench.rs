//! `ferry-load store-bench`: how many shard claims plus completions per second the
//! coordination Store sustains, with the real claim and fencing transactions.
//!
//! It queues N empty transfer shards for a synthetic execution, then runs C concurrent
//! claimers (the same `ShardQueue` the movers use) that claim and complete until the queue is
//! empty. It reports operations per second, where one operation is one claim or one completion.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_common::codec;
use ferry_common::keys::ExecKeys;
use ferry_common::model::{Shard, ShardBody, Stage};
use ferry_common::store::{EtcdStore, MemStore, SharedStore};
use ferry_common::testing::EtcdServer;
use ferry_worker::engine::Outcome;
use ferry_worker::queue::ShardQueue;

pub struct StoreBenchResult {
    pub store: &'static str,
    pub shards: usize,
    pub claimers: usize,
    pub elapsed: Duration,
}

impl StoreBenchResult {
    /// Claims plus completions per second.
    pub fn ops_per_sec(&self) -> f64 {
        (2 * self.shards) as f64 / self.elapsed.as_secs_f64()
    }
}

async fn fill(store: &SharedStore, exec: &str, shards: usize) {
    let keys = ExecKeys::new(exec);
    for i in 0..shards {
        let body = ShardBody::Transfer { entries: Vec::new() };
        let shard = Shard::new(Shard::child_id("bench-root", 0, i as u64, &body), body);
        store.put(&keys.queue(&shard.id), codec::encode(&shard).expect("encode"), None).await.expect("queue a shard");
    }
}

async fn drain(store: SharedStore, exec: &str, claimers: usize) {
    let mut tasks = Vec::new();
    for c in 0..claimers {
        let store = store.clone();
        let exec = exec.to_string();
        tasks.push(tokio::spawn(async move {
            let lease = store.lease_grant(Duration::from_secs(30)).await.expect("lease");
            let queue = ShardQueue::new(store, &exec, &format!("bench-{c}"), lease);
            let mut idle = 0;
            let unbounded = ferry_common::model::Limits { max_queued_transfer_shards: u32::MAX, max_queued_settle_shards: u32::MAX, ..Default::default() };
            while idle < 3 {
                match queue.claim(Stage::Transfer, &unbounded).await.expect("claim") {
                    Some(shard) => {
                        idle = 0;
                        let ok = queue.complete(&shard, &Outcome::default(), &[], Vec::new()).await.expect("complete");
                        assert!(ok, "the fence refused a live claimer");
                    }
                    None => {
                        idle += 1;
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await.expect("claimer task");
    }
}

/// Runs the benchmark on MemStore and on a real etcd started for the purpose.
pub fn run(shards: usize, claimers: usize) -> Result<Vec<StoreBenchResult>, String> {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().map_err(|e| e.to_string())?;
    let mut results = Vec::new();
    let mem: SharedStore = Arc::new(MemStore::new());
    results.push(rt.block_on(measure("MemStore", mem, shards, claimers)));
    let server = EtcdServer::start().ok_or("etcd is not installed (apt-get install etcd-server)")?;
    let etcd: SharedStore = Arc::new(rt.block_on(EtcdStore::connect(std::slice::from_ref(&server.endpoint))).map_err(|e| e.to_string())?);
    results.push(rt.block_on(measure("EtcdStore", etcd, shards, claimers)));
    Ok(results)
}

async fn measure(name: &'static str, store: SharedStore, shards: usize, claimers: usize) -> StoreBenchResult {
    let exec = format!("bench-{}", std::process::id());
    fill(&store, &exec, shards).await;
    let start = Instant::now();
    drain(store.clone(), &exec, claimers).await;
    let elapsed = start.elapsed();
    store.delete_prefix(&ExecKeys::new(&exec).all()).await.expect("clean up");
    StoreBenchResult { store: name, shards, claimers, elapsed }
}
