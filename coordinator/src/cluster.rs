//! Cluster mode: the coordinator daemon (leader election, driving executions) and the client
//! side (submit an execution, follow it, merge its report, list and cancel).
//!
//! All state lives in the Store, so any coordinator can carry on an execution where a failed
//! leader stopped: [`ExecutionDriver::resume`] rebuilds the driver from the execution record,
//! and its compare-and-swap on that record's revision keeps a stale leader from overwriting it.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use ferry_common::codec;
use ferry_common::keys::{self, ExecKeys};
use ferry_common::model::{agent_statuses, AgentRecord, AgentStatus, Execution, ExecutionSpec, WorkerInfo};
use ferry_common::store::{Compare, LeaseId, RangeOptions, SharedStore, StoreError, Txn, TxnOp};
use tokio::sync::watch;

use crate::control::{ControlConfig, ControlPlane, LeaderState};
use crate::driver::{DriverError, ExecutionDriver, SystemClock};
use crate::progress::Progress;

/// How long a silent leader keeps leadership; a standby takes over within about this long.
pub const LEADER_TTL: Duration = Duration::from_secs(5);

/// Campaigns until this coordinator holds the leader key; returns its lease.
async fn campaign(store: &SharedStore, name: &str, shutdown: &mut watch::Receiver<bool>) -> Option<LeaseId> {
    let mut announced_standby = false;
    loop {
        if *shutdown.borrow() {
            return None;
        }
        let attempt = async {
            // Our own key from before an outage: its lease will lapse anyway, so take it back
            // now instead of standing by behind ourselves.
            let mine = Txn::new().when([Compare::value_is(keys::leader(), name.as_bytes().to_vec())]).and_then([TxnOp::delete(keys::leader())]);
            store.txn(mine).await?;
            let lease = store.lease_grant(LEADER_TTL).await?;
            let txn = Txn::new().when([Compare::absent(keys::leader())]).and_then([TxnOp::put_leased(keys::leader(), name.as_bytes().to_vec(), lease)]);
            if store.txn(txn).await?.succeeded {
                Ok::<_, StoreError>(Some(lease))
            } else {
                store.lease_revoke(lease).await?;
                Ok(None)
            }
        };
        match attempt.await {
            Ok(Some(lease)) => return Some(lease),
            Ok(None) if !announced_standby => {
                tracing::info!(coordinator = name, "standing by: another coordinator leads");
                announced_standby = true;
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(error = %e, "election: coordination store unavailable; retrying")
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = shutdown.changed() => {}
        }
    }
}

/// The coordinator daemon: campaign, lead, step down when the lease is lost, campaign again.
pub async fn run_coordinator(store: SharedStore, name: String, shutdown: watch::Receiver<bool>) {
    let control = Arc::new(ControlPlane::new(store.clone(), ControlConfig::default()));
    run_coordinator_with(control, name, shutdown).await
}

/// Like [`run_coordinator`], with the control plane's policies (and clock) given.
pub async fn run_coordinator_with(control: Arc<ControlPlane>, name: String, mut shutdown: watch::Receiver<bool>) {
    let store = control.store().clone();
    loop {
        let Some(lease) = campaign(&store, &name, &mut shutdown).await else {
            return;
        };
        tracing::info!(coordinator = %name, "LeaderElected");
        lead(&store, &control, lease, &mut shutdown).await;
        if *shutdown.borrow() {
            let _ = store.lease_revoke(lease).await;
            return;
        }
        tracing::warn!(coordinator = %name, "leadership lost; campaigning again");
    }
}

/// How often the leader fires schedules, launches queued executions and handles ended ones.
const CONTROL_TICK: Duration = Duration::from_millis(250);

/// How often the leader compacts the Store's history, and how much of it it keeps: what is
/// newer than the previous compaction tick, and at least `MIN_KEPT_REVISIONS`.
const COMPACT_EVERY: Duration = Duration::from_secs(10);
const MIN_KEPT_REVISIONS: i64 = 1_000;

/// etcd keeps every old revision until compacted; without this a long execution would fill
/// etcd's quota with history even though the live keys stay few. History is kept by time, not
/// by count: a completion carries up to a shard's report lines (100 KiB and more), so a fixed
/// count of revisions kept would hold a gigabyte of them in a large run (the database grew
/// 5 MiB/s, towards etcd's 2 GiB quota, with 10,000 revisions kept). A watcher whose revision
/// was compacted away reads the current state again (`StoreError::Compacted`).
async fn compact_history(store: &SharedStore, previous_tick: &mut Option<i64>) {
    let Ok(r) = store.range(&keys::leader(), RangeOptions { limit: 1, keys_only: true, ..Default::default() }).await else {
        return;
    };
    let upto = previous_tick.unwrap_or(0).min(r.revision - MIN_KEPT_REVISIONS);
    *previous_tick = Some(r.revision);
    if upto > 0 {
        if let Err(e) = store.compact(upto).await {
            tracing::warn!(error = %e, "history compaction failed; will retry");
        }
    }
}

/// The longest a leader waits for a change before it runs a round anyway: for what changes
/// with time alone (schedules, the leader's keep-alive, compaction).
const QUIET_ROUND: Duration = Duration::from_secs(1);

/// Whether a change under [`keys::ROOT`] is news to the leader: anything but agents'
/// heartbeats, shipped log lines, events and the election key, which no round acts on.
fn news_to_leader(key: &[u8]) -> bool {
    let Some(rest) = key.strip_prefix(keys::ROOT.as_bytes()) else {
        return false;
    };
    if rest.starts_with(b"agents/") || rest.starts_with(b"events/") || rest == b"leader" {
        return false;
    }
    // exec/{id}/logs/... and exec/{id}/logstreams/...
    let in_exec = rest.strip_prefix(b"exec/").and_then(|r| r.iter().position(|&b| b == b'/').map(|i| &r[i + 1..]));
    !in_exec.is_some_and(|r| r.starts_with(b"logs/") || r.starts_with(b"logstreams/"))
}

/// Follows the Store and wakes the leader on news, so that executions advance on the change
/// that moves them (a completion, a new queue, an agent joining) rather than on a poll, and an
/// idle cluster costs the Store one quiet round a second. A broken watch is set up again, and
/// counts as news, since changes may have been missed meanwhile.
struct ChangeWatch(tokio::task::JoinHandle<()>);

impl ChangeWatch {
    fn start(store: SharedStore, news: Arc<tokio::sync::Notify>) -> ChangeWatch {
        ChangeWatch(tokio::spawn(async move {
            use futures::StreamExt;
            let mut backoff = Duration::from_millis(200);
            loop {
                let followed: Result<(), StoreError> = async {
                    let now = store.range(keys::ROOT.as_bytes(), RangeOptions { limit: 1, keys_only: true, ..Default::default() }).await?;
                    let mut events = store.watch(keys::ROOT.as_bytes(), now.revision + 1).await?;
                    backoff = Duration::from_millis(200);
                    news.notify_one();
                    while let Some(ev) = events.next().await {
                        if news_to_leader(&ev?.kv.key) {
                            news.notify_one();
                        }
                    }
                    Ok(())
                }
                .await;
                if let Err(e) = followed {
                    tracing::debug!(error = %e, "leader's watch lost; watching again");
                }
                news.notify_one();
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }))
    }
}

impl Drop for ChangeWatch {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn lead(store: &SharedStore, control: &ControlPlane, lease: LeaseId, shutdown: &mut watch::Receiver<bool>) {
    let mut drivers: HashMap<String, ExecutionDriver> = HashMap::new();
    let mut last_keepalive = tokio::time::Instant::now();
    let mut last_compaction = tokio::time::Instant::now();
    let mut compacted_tick = None;
    let mut last_control = tokio::time::Instant::now() - CONTROL_TICK;
    let mut control_state = LeaderState::default();
    // At most one round per tick: a burst of changes (many completions) makes one round.
    let tick = control.cfg.reconcile_every();
    let news = Arc::new(tokio::sync::Notify::new());
    let _watch = ChangeWatch::start(store.clone(), news.clone());
    let mut last_round = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = news.notified() => {}
            _ = tokio::time::sleep(QUIET_ROUND) => {}
            _ = shutdown.changed() => {}
        }
        tokio::select! {
            _ = tokio::time::sleep_until(last_round + tick) => {}
            _ = shutdown.changed() => {}
        }
        last_round = tokio::time::Instant::now();
        if *shutdown.borrow() {
            return;
        }
        if last_keepalive.elapsed() >= LEADER_TTL / 4 {
            match store.lease_keep_alive(lease).await {
                Ok(()) => last_keepalive = tokio::time::Instant::now(),
                Err(StoreError::LeaseExpired(_)) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "leader keep-alive failed; retrying");
                    // Past the TTL another coordinator may lead: stop acting.
                    if last_keepalive.elapsed() >= LEADER_TTL {
                        return;
                    }
                    continue;
                }
            }
        }
        if last_control.elapsed() >= CONTROL_TICK {
            control.tick(&mut control_state).await;
            last_control = tokio::time::Instant::now();
        }
        if last_compaction.elapsed() >= COMPACT_EVERY {
            compact_history(store, &mut compacted_tick).await;
            last_compaction = tokio::time::Instant::now();
        }
        let active = match store.range(&keys::active_prefix(), RangeOptions { keys_only: true, ..Default::default() }).await {
            Ok(r) => r.kvs.into_iter().map(|kv| keys::exec_of(&kv.key)).collect::<HashSet<_>>(),
            Err(e) => {
                tracing::warn!(error = %e, "cannot list executions; retrying");
                continue;
            }
        };
        drivers.retain(|id, _| active.contains(id));
        for id in active {
            if !drivers.contains_key(&id) {
                match ExecutionDriver::resume(store.clone(), &id, Arc::new(SystemClock)).await {
                    Ok(Some(d)) => {
                        tracing::info!(execution = %id, "ExecutionResumed");
                        drivers.insert(id.clone(), d);
                    }
                    Ok(None) => continue,
                    Err(e) => {
                        tracing::warn!(execution = %id, error = %e, "cannot load execution; retrying");
                        continue;
                    }
                }
            }
            let Some(driver) = drivers.get_mut(&id) else {
                continue;
            };
            match driver.step().await {
                Ok(exec) if exec.phase.is_terminal() => {
                    tracing::info!(execution = %id, phase = exec.phase.as_str(), "ExecutionFinished");
                    drivers.remove(&id);
                }
                Ok(_) => {}
                Err(e) => {
                    // Reload from the Store next round: another writer may have moved it on.
                    tracing::warn!(execution = %id, error = %e, "reconciliation step failed; reloading");
                    drivers.remove(&id);
                }
            }
        }
    }
}

/// Writes the execution into the Store for the cluster to run.
pub async fn submit(store: &SharedStore, spec: ExecutionSpec) -> Result<(), DriverError> {
    ExecutionDriver::start(store.clone(), spec).await.map(|_| ())
}

pub async fn read_execution(store: &SharedStore, exec_id: &str) -> Result<Option<Execution>, DriverError> {
    match store.get(&ExecKeys::new(exec_id).meta()).await? {
        Some(kv) => Ok(Some(codec::decode(&kv.value)?)),
        None => Ok(None),
    }
}

/// Follows an execution until it ends, showing progress; Ctrl-C asks the cluster to cancel.
pub async fn follow(store: &SharedStore, exec_id: &str, mut progress: Progress) -> Result<Execution, String> {
    let (tx, mut cancel) = watch::channel(false);
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("\nferry: cancelling the execution (press Ctrl-C again to stop following)");
            let _ = tx.send(true);
            if tokio::signal::ctrl_c().await.is_ok() {
                std::process::exit(130);
            }
        }
    });
    let mut warned_no_leader = false;
    let mut cancel_sent = false;
    let mut failures_in_a_row = 0;
    let meta_key = ExecKeys::new(exec_id).meta();
    // Changes to the execution record wake the follower at once; a poll covers a watch that
    // broke (an etcd restart).
    let mut changes: Option<ferry_common::store::WatchStream> = None;
    loop {
        if *cancel.borrow() && !cancel_sent && store.put(&ExecKeys::new(exec_id).cancel(), Vec::new(), None).await.is_ok() {
            cancel_sent = true;
        }
        match store.get(&meta_key).await {
            Ok(Some(kv)) => {
                failures_in_a_row = 0;
                let exec: Execution = codec::decode(&kv.value).map_err(|e| e.to_string())?;
                progress.update(&exec);
                if exec.phase.is_terminal() {
                    progress.clear();
                    return Ok(exec);
                }
                if changes.is_none() {
                    changes = store.watch(&meta_key, kv.mod_revision + 1).await.ok();
                }
            }
            Ok(None) => return Err(format!("execution {exec_id} is gone from the coordination store")),
            Err(e) => {
                failures_in_a_row += 1;
                if failures_in_a_row == 10 {
                    eprintln!("ferry: warning: cannot read execution progress ({e}); still trying");
                }
            }
        }
        if !warned_no_leader {
            if let Ok(None) = store.get(&keys::leader()).await {
                progress.clear();
                eprintln!("ferry: warning: no coordinator is running; start `ferry coordinator --etcd ...` to run execution {exec_id}");
                warned_no_leader = true;
            }
        }
        let changed = async {
            match changes.as_mut() {
                Some(stream) => futures::StreamExt::next(stream).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            _ = cancel.changed() => {}
            ev = changed => {
                if !matches!(ev, Some(Ok(_))) {
                    changes = None;
                }
            }
        }
    }
}

pub async fn list_workers(store: &SharedStore) -> Result<Vec<WorkerInfo>, DriverError> {
    let r = store.range(&keys::workers(), RangeOptions::default()).await?;
    let mut out = Vec::new();
    for kv in r.kvs {
        out.push(codec::decode(&kv.value)?);
    }
    Ok(out)
}

/// Every agent whose record is kept, ONLINE or OFFLINE, and live agents without one yet. A
/// record that does not decode is left out (and logged) rather than hiding every agent.
pub async fn list_agents(store: &SharedStore) -> Result<Vec<AgentStatus>, DriverError> {
    let live = list_workers(store).await?;
    let r = store.range(&keys::agent_records(), RangeOptions::default()).await?;
    let records = r
        .kvs
        .iter()
        .filter_map(|kv| match codec::decode::<AgentRecord>(&kv.value) {
            Ok(rec) => Some(rec),
            Err(e) => {
                tracing::warn!(key = %String::from_utf8_lossy(&kv.key), error = %e, "unreadable agent record; not listed");
                None
            }
        })
        .collect();
    Ok(agent_statuses(live, records))
}

pub async fn list_executions(store: &SharedStore) -> Result<Vec<Execution>, DriverError> {
    let r = store.range(&keys::index_prefix(), RangeOptions { keys_only: true, ..Default::default() }).await?;
    let mut out = Vec::new();
    for kv in r.kvs {
        if let Some(e) = read_execution(store, &keys::exec_of(&kv.key)).await? {
            out.push(e);
        }
    }
    out.sort_by_key(|e| e.started_unix_ms);
    Ok(out)
}

/// Asks the leader to cancel a running execution.
pub async fn cancel(store: &SharedStore, exec_id: &str) -> Result<Execution, String> {
    let exec =
        read_execution(store, exec_id).await.map_err(|e| e.to_string())?.ok_or_else(|| format!("no execution {exec_id} (list them with `ferry exec list`)"))?;
    if exec.phase.is_terminal() {
        return Err(format!("execution {exec_id} already ended ({})", exec.phase.as_str()));
    }
    store.put(&ExecKeys::new(exec_id).cancel(), Vec::new(), None).await.map_err(|e| e.to_string())?;
    Ok(exec)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_leader_wakes_for_what_moves_executions_and_not_for_heartbeats_or_logs() {
        let exec = ExecKeys::new("e1");
        for key in [
            exec.meta(),
            exec.done("s@1"),
            exec.queue("1c-x"),
            exec.claim("1c-x"),
            exec.cancel(),
            keys::active("e1"),
            keys::worker("w1"),
            keys::pending(3, "e2"),
        ] {
            assert!(news_to_leader(&key), "{}", String::from_utf8_lossy(&key));
        }
        for key in [keys::agent_record("w1"), keys::leader(), keys::event(5, "a"), exec.log_chunk("w1", 3), exec.log_stream("w1"), b"/other/app".to_vec()] {
            assert!(!news_to_leader(&key), "{}", String::from_utf8_lossy(&key));
        }
    }
}
