//! The worker's actors: a node that holds the Store lease, and N movers that claim shards,
//! run them and complete them.
//!
//! Actors are thin drivers. The decisions live in [`crate::queue`] (claims, fencing, retry
//! accounting) and [`crate::exec`] (what each shard does). Movers run on the actix system
//! thread, but every blocking step (file I/O, CRC) goes to tokio's blocking pool, so one
//! thread orchestrates many movers without stalling.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use ferry_common::codec;
use ferry_common::task::ExecSettings;
use ferry_common::error::{ErrorKind, FerryError};
use ferry_common::model::{Entry, EntryKind, Execution, Shard, ShardBody};
use ferry_common::store::{LeaseId, SharedStore, StoreError, TxnOp};
use futures::StreamExt;
use tokio::sync::Notify;

use crate::exec::scan::{list_page, LinkRole};
use crate::exec::transfer::{self, Buffers};
use crate::exec::{object, verify, ExecContext, Outcome};
use crate::lease::LeaseClock;
use crate::link::sender::SendSettings;
use crate::link::{run_transfer_linked, InProcess, LinkAgent, Remote, Writer};
use crate::queue::{QueueError, ShardQueue};
use crate::report::{ReportSink, ShardTag};

/// A worker's membership in the cluster: its lease, kept alive in the background.
pub struct Node {
    pub store: SharedStore,
    pub worker_id: String,
    pub lease: LeaseId,
    clock: Arc<LeaseClock>,
    stopped: Arc<AtomicBool>,
}

#[derive(serde::Serialize, serde::Deserialize, Debug, Clone)]
pub struct WorkerInfo {
    pub name: String,
    pub host: String,
    pub movers: usize,
    pub pid: u32,
    /// Location prefixes this agent can reach (`file:///` means every local path).
    #[serde(default)]
    pub locations: Vec<String>,
    #[serde(default)]
    pub started_unix_ms: u64,
    /// Labels that locations can be bound to.
    #[serde(default)]
    pub labels: Vec<String>,
    /// Where other agents reach this one's link endpoint (`host:port`, UDP), if it has one.
    #[serde(default)]
    pub link_addr: Option<String>,
}

impl Node {
    /// Takes a lease, registers under it, and keeps it alive until [`Node::leave`].
    pub async fn join(store: SharedStore, worker_id: &str, ttl: Duration, movers: usize, labels: &[String], link_addr: Option<String>) -> Result<Node, StoreError> {
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
        };
        let value = codec::encode(&info).map_err(|e| StoreError::Other(e.to_string()))?;
        store.put(&ferry_common::keys::worker(worker_id), value, Some(lease)).await?;
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
        Ok(Node { store, worker_id: worker_id.to_string(), lease, clock, stopped })
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

    pub fn start_movers(&self, ctx: Arc<ExecContext>, reports: Arc<dyn ReportSink>, count: usize, link: Arc<LinkAgent>) -> Vec<Addr<MoverActor>> {
        let _ = ctx.lease.set(self.clock.clone());
        let kinds = if ctx.spec.link.is_bound() { crate::link::claimable_kinds(ctx.reach()) } else { None };
        let shared = Arc::new(MoverShared {
            queue: ShardQueue::new(self.store.clone(), &ctx.spec.id, &self.worker_id, self.lease).with_kinds(kinds),
            link,
            ctx,
            reports,
            wake: Arc::new(Notify::new()),
            stopping: AtomicBool::new(false),
        });
        spawn_waker(shared.clone());
        (0..count).map(|index| MoverActor { shared: shared.clone(), index }.start()).collect()
    }
}

fn hostname() -> String {
    let mut buf = [0u8; 256];
    let ok = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } == 0;
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    if ok { String::from_utf8_lossy(&buf[..end]).into_owned() } else { String::new() }
}

/// What the movers of one node share for one execution.
pub struct MoverShared {
    ctx: Arc<ExecContext>,
    link: Arc<LinkAgent>,
    queue: ShardQueue,
    reports: Arc<dyn ReportSink>,
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
                    let Some(shared) = weak.upgrade() else { return Ok(()) };
                    if ev.kv.key == settings_key && ev.kind == ferry_common::store::EventKind::Put {
                        apply(&shared, &ev.kv.value);
                    }
                    drop(shared);
                    wake.notify_waiters();
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

/// How long an idle mover waits before looking for work again unprompted; the watch wakes it
/// sooner on any change to the execution's keys. Each look costs several etcd reads, so a
/// longer wait would spare etcd, but with 2 s the etcd-outage test hung in 2 of 14 runs (0 of
/// 16 at 200 ms): some progress after an outage still depends on this poll, not on the watch.
const IDLE_RECHECK: Duration = Duration::from_millis(200);

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
        ctx.spawn(
            async move { mover_loop(shared, index).await }
                .into_actor(self)
                .map(|_, _, ctx| ctx.stop()),
        );
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
    let limits = shared.ctx.options().limits.clone();
    let mut bufs = Some(Buffers::new(limits.chunk_size as usize));
    let mut backoff = Duration::from_millis(50);
    let meta_key = shared.queue.keys().meta();
    loop {
        if shared.stopping.load(Ordering::Relaxed) {
            return;
        }
        let wake = shared.wake.notified();
        let step = async {
            let kv = shared.queue.store().get(&meta_key).await?;
            let Some(kv) = kv else { return Ok::<_, QueueError>(None) };
            let exec: Execution = codec::decode(&kv.value)?;
            if exec.phase.is_terminal() {
                return Ok(None);
            }
            // The agent's link bucket is shared by every execution it serves: the one claiming
            // sets it to its own rate (kept current by the waker).
            if exec.spec.link.is_bound() {
                shared.link.rate.set_rate(shared.ctx.rate.rate());
            }
            Ok(Some(shared.queue.claim(exec.stage, limits.max_queued_transfer_shards as usize).await?))
        };
        match step.await {
            Ok(None) => return,
            Ok(Some(Some(shard))) => {
                backoff = Duration::from_millis(50);
                run_shard(&shared, shard, &mut bufs).await;
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

/// Runs blocking work on the blocking pool with the mover's buffers; a panic in it becomes an
/// error for that shard instead of taking the process down.
async fn blocking<T: Send + 'static>(
    chunk: usize,
    slot: &mut Option<Buffers>,
    f: impl FnOnce(&mut Buffers) -> T + Send + 'static,
) -> Result<T, FerryError> {
    let mut bufs = slot.take().unwrap_or_else(|| Buffers::new(chunk));
    match tokio::task::spawn_blocking(move || {
        let t = f(&mut bufs);
        (t, bufs)
    })
    .await
    {
        Ok((t, b)) => {
            *slot = Some(b);
            Ok(t)
        }
        Err(e) => Err(FerryError::new(ErrorKind::Other, format!("internal error while running a shard: {e}"))),
    }
}

/// Retries a Store operation while the Store is unavailable. Giving up is not an option: a
/// shard whose completion is never written stays claimed by this live worker forever.
async fn with_store_retry<T, F, Fut>(what: &str, mut op: F) -> Result<T, QueueError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, QueueError>>,
{
    let mut backoff = Duration::from_millis(100);
    let mut warned = false;
    loop {
        match op().await {
            Err(QueueError::Store(e)) if e.is_transient() => {
                if !warned {
                    tracing::warn!(error = %e, "{what}: coordination store unavailable; retrying until it is back");
                    warned = true;
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
            other => return other,
        }
    }
}

async fn run_shard(shared: &MoverShared, shard: Shard, bufs: &mut Option<Buffers>) {
    let ctx = shared.ctx.clone();
    let queue = &shared.queue;
    let max_attempts = ctx.options().limits.max_attempts;
    let chunk = ctx.options().limits.chunk_size as usize;
    tracing::debug!(shard = %shard.id, attempt = shard.attempt, "ShardClaimed");

    let committed: Result<bool, QueueError> = if let ShardBody::Part { file, offset, len, group, .. } = shard.body.clone() {
        let mut outcome = Outcome::default();
        let mut tags = Vec::new();
        let r = if ctx.object.is_some() {
            run_object_part(shared, file, offset, len, group, bufs).await.map(|done| {
                outcome.counters().bytes_resumed += done.bytes_resumed;
                tags = done.tags;
                done.crc
            })
        } else {
            let c = ctx.clone();
            blocking(chunk, bufs, move |b| transfer::run_part(&c, &file, offset, len, b)).await.and_then(|r| r)
        };
        match r {
            Err(e) if e.kind == ErrorKind::LeaseLost => return abandon(&shard),
            Ok(crc) => with_store_retry("complete part", || queue.complete_part(&shard, Ok((crc, len)), &tags, &outcome)).await,
            Err(e) if e.kind.is_transient() && shard.attempt < max_attempts => {
                with_store_retry("requeue part", || queue.requeue(&shard, e.to_string())).await
            }
            Err(e) => with_store_retry("complete part", || queue.complete_part(&shard, Err(e.to_string()), &[], &outcome)).await,
        }
    } else {
        match execute(shared, &shard, bufs).await {
            Ok((outcome, _)) if outcome.abandoned => return abandon(&shard),
            Err(e) if e.kind == ErrorKind::LeaseLost => return abandon(&shard),
            Ok((outcome, extra)) => commit(shared, &shard, outcome, extra).await,
            Err(e) if e.kind.is_transient() && shard.attempt < max_attempts => {
                tracing::info!(shard = %shard.id, error = %e, "shard failed; queued for another attempt");
                with_store_retry("requeue shard", || queue.requeue(&shard, e.to_string())).await
            }
            Err(e) => commit(shared, &shard, all_failed(&shard.body, &e), Vec::new()).await,
        }
    };
    match committed {
        Ok(true) => {}
        Ok(false) => tracing::warn!(shard = %shard.id, "completion refused: the claim was lost (lease expired); another worker owns it"),
        Err(e) => tracing::warn!(shard = %shard.id, error = %e, "could not complete shard; it returns to the queue when the claim expires"),
    }
}

/// A part of a large file bound for an object store: finds the file's multipart upload
/// (recorded in the part set, left by an interrupted run, or new), then uploads the range.
async fn run_object_part(shared: &MoverShared, file: Entry, offset: u64, len: u64, group: String, bufs: &mut Option<Buffers>) -> Result<object::PartDone, FerryError> {
    let ctx = shared.ctx.clone();
    let chunk = ctx.options().limits.chunk_size as usize;
    let store_err = |e: QueueError| FerryError::new(ErrorKind::Unavailable, format!("coordination store: {e}"));
    let recorded = with_store_retry("read part set", || shared.queue.part_set(&group)).await.map_err(store_err)?.upload_id;
    let upload = match recorded {
        Some(id) => id,
        None => {
            let (c, f) = (ctx.clone(), file.clone());
            let (id, created) = blocking(chunk, bufs, move |_| object::find_or_create_upload(c.object(), &f, c.spec.s3.preserve_tags)).await??;
            let winner = with_store_retry("record upload", || shared.queue.record_upload(&group, &file.path, &id)).await.map_err(store_err)?;
            if winner != id && created {
                // Another part created the upload first: this one is not needed.
                let (c, f) = (ctx.clone(), file.clone());
                let _ = blocking(chunk, bufs, move |_| c.object().dst.as_ref().map(|d| d.abort_multipart(&f.path, &id))).await;
            }
            winner
        }
    };
    let c = ctx.clone();
    blocking(chunk, bufs, move |b| object::run_part(&c, c.object(), &file, offset, len, &upload, b)).await?
}

/// A shard this worker may no longer own: no completion, no cleanup at the destination (a
/// successor may be working there); its temporary files go at the directory-metadata stage.
fn abandon(shard: &Shard) {
    tracing::warn!(shard = %shard.id, "lease expired; abandoning the shard to the worker that claims it next");
}

async fn commit(shared: &MoverShared, shard: &Shard, mut outcome: Outcome, extra: Vec<TxnOp>) -> Result<bool, QueueError> {
    let tag = ShardTag { shard: format!("{}@{}", shard.id, shard.attempt), holder: shared.queue.holder().to_string() };
    let report = std::mem::take(&mut outcome.report);
    let early = shared.reports.before_commit();
    if early && !report.is_empty() {
        let (sink, t) = (shared.reports.clone(), tag.clone());
        let _ = tokio::task::spawn_blocking(move || sink.record(&t, report)).await;
        return with_store_retry("complete shard", || shared.queue.complete(shard, &outcome, extra.clone())).await;
    }
    let ok = with_store_retry("complete shard", || shared.queue.complete(shard, &outcome, extra.clone())).await?;
    if ok && !report.is_empty() {
        shared.reports.record(&tag, report);
    }
    Ok(ok)
}

/// Runs any shard but a part; returns the outcome and extra completion writes.
async fn execute(shared: &MoverShared, shard: &Shard, bufs: &mut Option<Buffers>) -> Result<(Outcome, Vec<TxnOp>), FerryError> {
    let ctx = shared.ctx.clone();
    let chunk = ctx.options().limits.chunk_size as usize;
    let attempt = shard.attempt;
    let store_err = |e: QueueError| FerryError::new(ErrorKind::Other, format!("coordination store: {e}"));
    if ctx.object.is_some() {
        return execute_object(shared, shard, bufs).await;
    }
    if let (true, ShardBody::Transfer { entries }) = (ctx.spec.link.is_bound(), &shard.body) {
        return Ok((execute_linked_transfer(shared, shard, entries.clone(), bufs).await?, Vec::new()));
    }
    let outcome = match shard.body.clone() {
        ShardBody::Scan { dirs } => {
            let c = ctx.clone();
            let page = blocking(chunk, bufs, move |_| list_page(&c, &dirs)).await??;
            let mut roles = Vec::with_capacity(page.link_candidates.len());
            for cand in &page.link_candidates {
                let role = with_store_retry("resolve hard link", || shared.queue.resolve_link(cand.dev, cand.ino, &cand.entry.path)).await;
                roles.push(match role.map_err(store_err)? {
                    None => LinkRole::First,
                    Some(first) => LinkRole::LinkTo(first),
                });
            }
            page.into_bodies(&ctx, &shard.id, roles)
        }
        ShardBody::Transfer { entries } => {
            let c = ctx.clone();
            blocking(chunk, bufs, move |b| transfer::run_transfer(&c, entries, attempt, b)).await?
        }
        ShardBody::Commit { file, group, .. } => {
            let set = with_store_retry("read part set", || shared.queue.part_set(&group)).await.map_err(store_err)?;
            let c = ctx.clone();
            let out = blocking(chunk, bufs, move |_| {
                let failure = set.failed.first().map(|(_, r)| r.clone());
                transfer::run_commit(&c, &file, &set, failure.as_deref())
            })
            .await?;
            return Ok((out, vec![TxnOp::delete(shared.queue.keys().parts(&group))]));
        }
        ShardBody::Prune { dir } => {
            let c = ctx.clone();
            blocking(chunk, bufs, move |_| transfer::run_prune(&c, &dir)).await??
        }
        ShardBody::Links { links } => {
            let c = ctx.clone();
            blocking(chunk, bufs, move |_| transfer::run_links(&c, links)).await?
        }
        ShardBody::DirMeta { dirs } => {
            let c = ctx.clone();
            blocking(chunk, bufs, move |_| transfer::run_dirmeta(&c, dirs)).await?
        }
        ShardBody::Verify { dirs } => {
            let c = ctx.clone();
            blocking(chunk, bufs, move |b| verify::run_verify(&c, &dirs, b)).await??
        }
        ShardBody::Part { .. } => unreachable!("parts complete through complete_part"),
    };
    Ok((outcome, Vec::new()))
}

/// A Transfer shard of an execution whose locations are bound to agents: sent in-process when
/// this agent reaches the destination too, else over QUIC to an agent that does.
async fn execute_linked_transfer(shared: &MoverShared, shard: &Shard, entries: Vec<Entry>, bufs: &mut Option<Buffers>) -> Result<Outcome, FerryError> {
    let ctx = shared.ctx.clone();
    let link = shared.link.clone();
    let chunk = ctx.options().limits.chunk_size as usize;
    let attempt = shard.attempt;
    let local = ctx.reach().destination;
    let writers = if local { Vec::new() } else { find_writers(shared.queue.store(), &ctx.spec).await? };
    let start = crc32c::crc32c(shard.id.as_bytes()) as usize;
    if !local && link.client.is_none() {
        // A permanent error: the caller reports every entry failed, as for any shard.
        return Err(FerryError::config(format!("agent {} has no link certificate, so it cannot send to the destination's agents (start it with --tls-dir; enroll with --enroll-token)", link.name)));
    }
    blocking(chunk, bufs, move |b| {
        let settings = SendSettings { agent: &link.name, compress: ctx.spec.link.compress, rate: &link.rate, max_stripes: link.max_stripes };
        match &link.client {
            Some(client) if !local => run_transfer_linked(&ctx, &Remote { client, writers, start }, &settings, entries, attempt, b),
            _ => run_transfer_linked(&ctx, &InProcess { ctx: ctx.clone() }, &settings, entries, attempt, b),
        }
    })
    .await
}

/// The agents that reach an execution's destination and accept links.
async fn find_writers(store: &SharedStore, spec: &ferry_common::model::ExecutionSpec) -> Result<Vec<Writer>, FerryError> {
    let page = store
        .range(&ferry_common::keys::workers(), Default::default())
        .await
        .map_err(|e| FerryError::new(ErrorKind::Unavailable, format!("coordination store: {e}")))?;
    let mut writers = Vec::new();
    for kv in page.kvs {
        let Ok(info) = codec::decode::<WorkerInfo>(&kv.value) else { continue };
        let Some(addr) = info.link_addr.as_deref().and_then(|a| a.parse().ok()) else { continue };
        if spec.link.reach(&info.name, &info.labels).destination {
            writers.push(Writer { name: info.name, addr });
        }
    }
    writers.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(writers)
}

/// [`execute`] for executions with an object store on either side.
async fn execute_object(shared: &MoverShared, shard: &Shard, bufs: &mut Option<Buffers>) -> Result<(Outcome, Vec<TxnOp>), FerryError> {
    let ctx = shared.ctx.clone();
    let chunk = ctx.options().limits.chunk_size as usize;
    let attempt = shard.attempt;
    let store_err = |e: QueueError| FerryError::new(ErrorKind::Other, format!("coordination store: {e}"));
    let c = ctx.clone();
    let outcome = match shard.body.clone() {
        ShardBody::Scan { dirs } => {
            let page = blocking(chunk, bufs, move |_| object::list_page(&c, c.object(), &dirs)).await??;
            page.into_bodies(&ctx, &shard.id, Vec::new())
        }
        ShardBody::Transfer { entries } => {
            blocking(chunk, bufs, move |b| object::run_transfer(&c, c.object(), entries, attempt, b)).await?
        }
        ShardBody::Commit { file, group, .. } => {
            let set = with_store_retry("read part set", || shared.queue.part_set(&group)).await.map_err(store_err)?;
            let out = blocking(chunk, bufs, move |b| {
                let failure = set.failed.first().map(|(_, r)| r.clone());
                object::run_commit(&c, c.object(), &file, &set, failure.as_deref(), b)
            })
            .await?;
            return Ok((out, vec![TxnOp::delete(shared.queue.keys().parts(&group))]));
        }
        ShardBody::Prune { dir } => blocking(chunk, bufs, move |_| object::run_prune(&c, c.object(), &dir)).await??,
        // Object stores hold no hard links: the scan never plans link shards for them.
        ShardBody::Links { .. } => Outcome::default(),
        ShardBody::DirMeta { dirs } => blocking(chunk, bufs, move |_| object::run_dirmeta(&c, c.object(), dirs)).await?,
        ShardBody::Verify { dirs } => blocking(chunk, bufs, move |b| object::run_verify(&c, c.object(), &dirs, b)).await??,
        ShardBody::Part { .. } => unreachable!("parts complete through complete_part"),
    };
    Ok((outcome, Vec::new()))
}

/// A shard that failed for good: every entry it carried is reported failed with the error,
/// so the reconciliation still accounts for each of them.
pub fn all_failed(body: &ShardBody, err: &FerryError) -> Outcome {
    let mut out = Outcome::default();
    let reason = format!("{err} (shard gave up)");
    let fail_unprepared = |out: &mut Outcome, path: &[u8], kind: EntryKind| {
        // Not an entry the scan counted (a whole directory's listing or pruning): count it
        // as prepared too, so prepared == transferred + skipped + failed still holds.
        out.counters().files_prepared += 1;
        out.record(path.to_vec(), kind, ferry_common::model::EntryStatus::Failed, 0, None, Some(reason.clone()));
    };
    match body {
        ShardBody::Scan { dirs } => {
            for d in dirs {
                if d.path.is_empty() || d.cookie.is_some() {
                    fail_unprepared(&mut out, &d.path, EntryKind::Dir);
                } else {
                    out.record(d.path.clone(), EntryKind::Dir, ferry_common::model::EntryStatus::Failed, 0, None, Some(reason.clone()));
                }
            }
        }
        ShardBody::Verify { dirs } => {
            for d in dirs {
                out.mismatch(d.path.clone(), EntryKind::Dir, 0, reason.clone());
            }
        }
        ShardBody::Prune { dir } => fail_unprepared(&mut out, &dir.path, EntryKind::Dir),
        ShardBody::Transfer { entries } => {
            for e in entries {
                out.fail(e.path.clone(), e.kind, e.size, err);
            }
        }
        ShardBody::Part { file, .. } | ShardBody::Commit { file, .. } => out.fail(file.path.clone(), EntryKind::File, file.size, err),
        ShardBody::Links { links } => {
            for l in links {
                out.fail(l.path.clone(), EntryKind::HardLink, l.size, err);
            }
        }
        ShardBody::DirMeta { dirs } => {
            for d in dirs {
                if !d.path.is_empty() {
                    out.fail(d.path.clone(), EntryKind::Dir, 0, err);
                }
            }
        }
    }
    out
}
