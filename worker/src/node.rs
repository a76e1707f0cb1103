//! The worker's actors: a node that holds the Store lease, and N movers that claim shards,
//! run them and complete them.
//!
//! Actors are thin drivers. The decisions live in [`crate::queue`] (claims, fencing, retry
//! accounting) and [`crate::engine`] (what each shard does), and [`crate::mover`] runs one
//! claimed shard between them. Movers run on the actix system
//! thread, but every blocking step (file I/O, CRC) goes to tokio's blocking pool, so one
//! thread orchestrates many movers without stalling.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use ferry_common::codec;
use ferry_common::model::{Execution, WorkerInfo};
use ferry_common::store::{Compare, LeaseId, SharedStore, StoreError, Txn, TxnOp};
use ferry_common::task::ExecSettings;
use futures::StreamExt;
use tokio::sync::Notify;

use crate::engine::ExecContext;
use crate::lease::LeaseClock;
use crate::mover::run_shard;
use crate::queue::{QueueError, ShardQueue};
use crate::transport::LinkAgent;

/// A worker's membership in the cluster: its lease, kept alive in the background.
pub struct Node {
    pub store: SharedStore,
    pub worker_id: String,
    pub lease: LeaseId,
    /// The registration this node made.
    pub info: WorkerInfo,
    clock: Arc<LeaseClock>,
    stopped: Arc<AtomicBool>,
}

impl Node {
    /// Takes a lease, registers under it, and keeps it alive until [`Node::leave`].
    pub async fn join(
        store: SharedStore,
        worker_id: &str,
        ttl: Duration,
        movers: usize,
        labels: &[String],
        link_addr: Option<String>,
    ) -> Result<Node, StoreError> {
        let asked = std::time::Instant::now();
        let lease = store.lease_grant(ttl).await?;
        let clock = Arc::new(LeaseClock::new(ttl, asked));
        let info = WorkerInfo {
            name: worker_id.to_string(),
            host: hostname(),
            movers,
            pid: std::process::id(),
            locations: vec!["file:///".to_string()],
            started_unix_ms: std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0),
            labels: labels.to_vec(),
            link_addr,
            version: crate::build_info::VERSION.to_string(),
            commit: crate::build_info::COMMIT.to_string(),
        };
        let value = codec::encode(&info).map_err(|e| StoreError::Other(e.to_string()))?;
        if let Err(e) = register(&store, &info, value, lease).await {
            let _ = store.lease_revoke(lease).await;
            return Err(e);
        }
        let stopped = Arc::new(AtomicBool::new(false));
        let (s, c, stop) = (store.clone(), clock.clone(), stopped.clone());
        tokio::spawn(async move {
            let mut interval = ttl / 3;
            while !stop.load(Ordering::Relaxed) && !c.is_lost() {
                tokio::time::sleep(interval).await;
                let sent = std::time::Instant::now();
                match s.lease_keep_alive(lease).await {
                    Ok(()) => {
                        c.renewed(sent);
                        interval = ttl / 3;
                    }
                    Err(StoreError::LeaseExpired(_)) => {
                        tracing::error!(lease, "worker lease expired; its claims are gone and completions will be refused");
                        c.mark_lost();
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "lease keep-alive failed; retrying");
                        interval = Duration::from_millis(500).min(ttl / 3);
                    }
                }
            }
        });
        Ok(Node { store, worker_id: worker_id.to_string(), lease, info, clock, stopped })
    }

    /// What this node knows of its lease: whether the Store confirmed it recently.
    pub fn clock(&self) -> Arc<LeaseClock> {
        self.clock.clone()
    }

    pub fn is_alive(&self) -> bool {
        !self.clock.is_lost() && !self.stopped.load(Ordering::Relaxed)
    }

    /// Revokes the lease: claims still held return to the queue at once.
    pub async fn leave(&self) {
        self.stopped.store(true, Ordering::Relaxed);
        let _ = self.store.lease_revoke(self.lease).await;
    }

    /// Starts `count` movers on one execution. Must run inside an actix System.
    /// The claim holder tag of this node: `{worker}#{lease}`.
    pub fn holder(&self) -> String {
        format!("{}#{:x}", self.worker_id, self.lease)
    }

    pub fn start_movers(&self, ctx: Arc<ExecContext>, count: usize, link: Arc<LinkAgent>) -> Vec<Addr<MoverActor>> {
        let _ = ctx.lease.set(self.clock.clone());
        let kinds = crate::mover::claimable(&ctx);
        let shared = Arc::new(MoverShared {
            queue: ShardQueue::new(self.store.clone(), &ctx.spec.id, &self.worker_id, self.lease).with_kinds(kinds),
            link,
            ctx,
            wake: Arc::new(Notify::new()),
            stopping: AtomicBool::new(false),
        });
        spawn_waker(shared.clone());
        (0..count).map(|index| MoverActor { shared: shared.clone(), index }.start()).collect()
    }
}

/// Puts the registration unless a live agent holds the name. A registration is replaced only
/// when it was made by a process of this host that is gone (a restart before the old lease
/// lapsed); another host's agent, or a running one, keeps its name until its lease lapses.
async fn register(store: &SharedStore, info: &WorkerInfo, value: Vec<u8>, lease: LeaseId) -> Result<(), StoreError> {
    let key = ferry_common::keys::worker(&info.name);
    let put = [TxnOp::put_leased(key.clone(), value, lease)];
    if store.txn(Txn::new().when([Compare::absent(key.clone())]).and_then(put.clone())).await?.succeeded {
        return Ok(());
    }
    let Some(held) = store.get(&key).await? else {
        return Err(StoreError::Unavailable(format!("the registration of {} changed while joining; trying again", info.name)));
    };
    let holder = codec::decode::<WorkerInfo>(&held.value).ok();
    if let Some(h) = holder.as_ref().filter(|h| h.host == info.host && h.pid != info.pid && !process_alive(h.pid)) {
        tracing::info!(worker = %info.name, old_pid = h.pid, "replacing the registration of this agent's previous, exited process");
        if store.txn(Txn::new().when([Compare::value_is(key.clone(), held.value.clone())]).and_then(put)).await?.succeeded {
            return Ok(());
        }
    }
    let who = holder.map(|h| format!("host {:?}, pid {}", h.host, h.pid)).unwrap_or_else(|| "unreadable registration".into());
    Err(StoreError::Other(format!(
        "another agent is registered as {} ({who}): stop it, or give this agent another --name (a dead agent's registration lapses with its lease)",
        info.name
    )))
}

fn process_alive(pid: u32) -> bool {
    // Signal 0 checks existence only; EPERM means it exists under another user.
    let r = unsafe { libc::kill(pid as libc::pid_t, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

fn hostname() -> String {
    let mut buf = [0u8; 256];
    let ok = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } == 0;
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    if ok {
        String::from_utf8_lossy(&buf[..end]).into_owned()
    } else {
        String::new()
    }
}

/// What the movers of one node share for one execution.
pub struct MoverShared {
    pub(crate) ctx: Arc<ExecContext>,
    pub(crate) link: Arc<LinkAgent>,
    pub(crate) queue: ShardQueue,
    /// Woken by Store changes under the execution, so idle movers do not poll hard.
    wake: Arc<Notify>,
    stopping: AtomicBool,
}

fn spawn_waker(shared: Arc<MoverShared>) {
    let store = shared.queue.store().clone();
    let prefix = shared.queue.keys().all();
    let settings_key = shared.queue.keys().settings();
    let wake = shared.wake.clone();
    let weak = Arc::downgrade(&shared);
    drop(shared);
    let apply = |shared: &MoverShared, value: &[u8]| {
        if let Ok(settings) = codec::decode::<ExecSettings>(value) {
            shared.ctx.rate.set_rate(settings.bytes_per_second);
            if shared.ctx.spec.link.is_bound() {
                shared.link.rate.set_rate(settings.bytes_per_second);
            }
        }
    };
    tokio::spawn(async move {
        // A watch ends when etcd restarts or the connection breaks; it is set up again for as
        // long as the movers live, or BytesPerSecond changes would stop reaching them.
        let mut backoff = WATCH_RETRY_MIN;
        while weak.strong_count() > 0 {
            // BytesPerSecond as it stands now, then every change from that revision on: a
            // change applies at once, even while every mover is busy with a long shard (the
            // buckets are read before each chunk), and no mover reads the setting on its
            // claim path.
            let followed: Result<(), StoreError> = async {
                let now = store.range(&settings_key, Default::default()).await?;
                let mut events = store.watch(&prefix, now.revision + 1).await?;
                if let (Some(kv), Some(shared)) = (now.kvs.iter().find(|kv| kv.key == settings_key), weak.upgrade()) {
                    apply(&shared, &kv.value);
                }
                backoff = WATCH_RETRY_MIN;
                // Whatever changed while no watch was open (a new stage's shards) is worth a look.
                wake.notify_waiters();
                while let Some(ev) = events.next().await {
                    let ev = ev?;
                    let Some(shared) = weak.upgrade() else {
                        return Ok(());
                    };
                    if ev.kv.key == settings_key && ev.kind == ferry_common::store::EventKind::Put {
                        apply(&shared, &ev.kv.value);
                    }
                    let look = worth_a_look(shared.queue.keys(), &ev);
                    drop(shared);
                    if look {
                        wake.notify_waiters();
                    }
                }
                Ok(())
            }
            .await;
            if let Err(e) = followed {
                tracing::debug!(error = %e, "execution watch lost; watching again");
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(WATCH_RETRY_MAX);
        }
    });
}

/// Whether a change under an execution can give an idle mover something to claim: a shard
/// queued or finished (which also shrinks the backlog that holds scans back), a claim ended
/// (released, or deleted with an expired lease), a new stage or phase, a cancel. Results,
/// report lines, part sets and shipped log lines cannot, and they are most of the writes.
fn worth_a_look(keys: &ferry_common::keys::ExecKeys, ev: &ferry_common::store::WatchEvent) -> bool {
    let key = ev.kv.key.as_slice();
    key.starts_with(&keys.queue_prefix())
        || (key.starts_with(&keys.claim_prefix()) && ev.kind == ferry_common::store::EventKind::Delete)
        || key == keys.meta()
        || key == keys.cancel()
}

/// How long an idle mover waits before looking for work again unprompted. Progress never
/// waits on this: the watch wakes idle movers on every change that can give them work
/// ([`worth_a_look`]), the watch is set up again after an outage with a look at once, and a
/// claim always has a mover that completes or releases it. The look is only a safety net,
/// and idle movers cost the Store nothing between changes.
const IDLE_RECHECK: Duration = Duration::from_secs(30);

const WATCH_RETRY_MIN: Duration = Duration::from_millis(200);
const WATCH_RETRY_MAX: Duration = Duration::from_secs(5);

pub struct MoverActor {
    shared: Arc<MoverShared>,
    index: usize,
}

impl Actor for MoverActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let shared = self.shared.clone();
        let index = self.index;
        // Lines inside name the execution, so they reach its logs (`ferry exec logs`).
        let span = tracing::info_span!("mover", execution = %shared.ctx.spec.id);
        ctx.spawn(tracing::Instrument::instrument(async move { mover_loop(shared, index).await }, span).into_actor(self).map(|_, _, ctx| ctx.stop()));
    }
}

/// Asks a mover to stop claiming; it finishes the shard it holds first.
#[derive(Message)]
#[rtype(result = "()")]
pub struct StopClaiming;

impl Handler<StopClaiming> for MoverActor {
    type Result = ();
    fn handle(&mut self, _: StopClaiming, _: &mut Context<Self>) {
        self.shared.stopping.store(true, Ordering::Relaxed);
        self.shared.wake.notify_waiters();
    }
}

async fn mover_loop(shared: Arc<MoverShared>, index: usize) {
    let _alive = crate::mover::MoverAlive::new();
    let limits = shared.ctx.options().limits.clone();
    // Grown by what uses it, to the size the content needs (see `location::crc_of`).
    let mut buf = Some(Vec::new());
    let mut backoff = Duration::from_millis(50);
    let meta_key = shared.queue.keys().meta();
    loop {
        if shared.stopping.load(Ordering::Relaxed) {
            return;
        }
        let wake = shared.wake.notified();
        let step = async {
            let kv = shared.queue.store().get(&meta_key).await?;
            let Some(kv) = kv else {
                // Not a normal end (that is a terminal phase): say so, for the record.
                tracing::info!(mover = index, "the execution's record is gone; this mover stops");
                return Ok::<_, QueueError>(None);
            };
            let exec: Execution = codec::decode(&kv.value)?;
            if exec.phase.is_terminal() {
                return Ok(None);
            }
            // The agent's link bucket is shared by every execution it serves: the one claiming
            // sets it to its own rate (kept current by the waker).
            if exec.spec.link.is_bound() {
                shared.link.rate.set_rate(shared.ctx.rate.rate());
            }
            Ok(Some(shared.queue.claim(exec.stage, &limits).await?))
        };
        match step.await {
            Ok(None) => return,
            Ok(Some(Some(shard))) => {
                backoff = Duration::from_millis(50);
                let id = shard.id.clone();
                // Completed, requeued or released by the run: the claim is gone either way.
                run_shard(&shared, shard, &mut buf).await;
                shared.queue.done_with(&id);
            }
            Ok(Some(None)) => {
                let _ = tokio::time::timeout(IDLE_RECHECK, wake).await;
            }
            Err(e) => {
                tracing::warn!(mover = index, error = %e, "coordination store error; backing off");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_common::store::MemStore;

    fn holder(name: &str, host: &str, pid: u32) -> WorkerInfo {
        WorkerInfo {
            name: name.into(),
            host: host.into(),
            movers: 1,
            pid,
            locations: vec![],
            started_unix_ms: 0,
            labels: vec!["cloud".into()],
            link_addr: Some("10.0.0.9:7400".into()),
            ..Default::default()
        }
    }

    async fn registered(store: &SharedStore, name: &str) -> WorkerInfo {
        codec::decode(&store.get(&ferry_common::keys::worker(name)).await.unwrap().unwrap().value).unwrap()
    }

    #[tokio::test]
    async fn a_live_agents_registration_is_not_taken_over() {
        let store: SharedStore = Arc::new(MemStore::new());
        let lease = store.lease_grant(Duration::from_secs(30)).await.unwrap();
        let theirs = holder("w1", "other-host", 4242);
        store.put(&ferry_common::keys::worker("w1"), codec::encode(&theirs).unwrap(), Some(lease)).await.unwrap();
        let e = Node::join(store.clone(), "w1", Duration::from_secs(30), 1, &[], Some("127.0.0.1:1".into())).await.err().expect("refused");
        assert!(e.to_string().contains("another agent is registered as w1") && e.to_string().contains("other-host"), "{e}");
        let now = registered(&store, "w1").await;
        assert_eq!((now.pid, now.host, now.link_addr), (theirs.pid, theirs.host, theirs.link_addr), "the registration is unchanged");
    }

    #[tokio::test]
    async fn a_restarted_agent_replaces_the_registration_of_its_exited_process() {
        let store: SharedStore = Arc::new(MemStore::new());
        let lease = store.lease_grant(Duration::from_secs(30)).await.unwrap();
        // A pid of this host that is not running: the previous process of this agent.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let gone = child.id();
        child.wait().unwrap();
        store.put(&ferry_common::keys::worker("w1"), codec::encode(&holder("w1", &hostname(), gone)).unwrap(), Some(lease)).await.unwrap();
        let node = Node::join(store.clone(), "w1", Duration::from_secs(30), 1, &[], None).await.unwrap();
        assert_eq!(registered(&store, "w1").await.pid, std::process::id());
        node.leave().await;
    }
}
