//! One claimed shard, from claim to completion: what the Store must answer first (hard-link
//! roles, a large file's multipart write), which way its writes travel ([`Route`]), the
//! engine's work on the blocking pool, and the completion transaction with its report lines.

use ferry_common::codec;
use ferry_common::error::{ErrorKind, FerryError};
use ferry_common::metrics as m;
use ferry_common::model::{Entry, EntryKind, EntryStatus, ExecutionSpec, Shard, ShardBody, ShardKind, WorkerInfo};
use ferry_common::store::{SharedStore, TxnOp};

use crate::engine::context::Sides;
use crate::engine::dest::{Dest, Direct};
use crate::engine::owners::{DestNames, OwnerIdsFound};
use crate::engine::read::SendSettings;
use crate::engine::scan::{list_page, LinkRole};
use crate::engine::{dirmeta, links, parts, prune, transfer, verify, ExecContext, Line, Outcome};
use crate::node::MoverShared;
use crate::queue::{with_store_retry, QueueError};
use crate::retry::{self, RetryPolicy, Tries, Verdict};
use crate::transport::frame::PartTarget;
use crate::transport::remote::RemoteDest;
use crate::transport::{Connector, InProcess, LinkAgent, Remote, WriterAgent};

/// The shard kinds an agent takes: a reader the ones that read the source (writing through a
/// link), a writer the ones that need nothing of it.
pub fn claimable(ctx: &ExecContext) -> Option<Vec<ShardKind>> {
    match ctx.sides {
        Sides::Both { .. } => None,
        Sides::Reader { .. } => Some(vec![ShardKind::Scan, ShardKind::Transfer, ShardKind::Part, ShardKind::Prune, ShardKind::Verify]),
        Sides::Writer { .. } => Some(vec![ShardKind::Commit, ShardKind::Settle, ShardKind::Links, ShardKind::DirMeta]),
    }
}

/// Which way a shard's writes and questions about the destination travel.
#[derive(Clone)]
enum Route {
    /// This agent reaches the destination itself.
    InProcess,
    /// Over QUIC, to the agents that reach it.
    Remote { writers: Vec<WriterAgent>, start: usize, store: SharedStore },
}

/// Runs `f` with the connector, the destination and the send settings of `route`.
fn with_route<T>(ctx: &ExecContext, link: &LinkAgent, route: &Route, f: impl FnOnce(&dyn Connector, &dyn Dest, &SendSettings) -> T) -> Result<T, FerryError> {
    match route {
        Route::InProcess => {
            let settings = SendSettings { agent: &link.name, compress: false, rate: &ctx.rate };
            Ok(f(&InProcess { ctx }, &Direct(ctx.dst()?.as_ref()), &settings))
        }
        Route::Remote { writers, start, store } => {
            let client = link.client.as_ref().ok_or_else(|| no_certificate(link))?;
            // Connectors run on the blocking pool, where the runtime's handle may block.
            let lookup = || tokio::runtime::Handle::try_current().ok().and_then(|rt| rt.block_on(find_writers(store, &ctx.spec)).ok());
            let connector = Remote::new(client, &ctx.spec.link, writers.clone(), *start, Some(&lookup));
            let dest = RemoteDest { connector: &connector, exec: ctx.spec.id.clone(), agent: link.name.clone(), uri: ctx.spec.destination.clone() };
            let settings = SendSettings { agent: &link.name, compress: ctx.spec.link.compress, rate: &link.rate };
            Ok(f(&connector, &dest, &settings))
        }
    }
}

fn no_certificate(link: &LinkAgent) -> FerryError {
    FerryError::config(format!(
        "agent {} has no link certificate, so it cannot send to the destination's agents (start it with --tls-dir; enroll with --enroll-token)",
        link.name
    ))
}

async fn route(shared: &MoverShared, shard: &Shard) -> Result<Route, FerryError> {
    match shared.ctx.sides {
        Sides::Both { .. } | Sides::Writer { .. } => Ok(Route::InProcess),
        Sides::Reader { .. } => {
            if shared.link.client.is_none() {
                // A permanent error: the caller reports every entry failed, as for any shard.
                return Err(no_certificate(&shared.link));
            }
            let writers = find_writers(shared.queue.store(), &shared.ctx.spec).await?;
            Ok(Route::Remote { writers, start: crc32c::crc32c(shard.id.as_bytes()) as usize, store: shared.queue.store().clone() })
        }
    }
}

/// The destination host's user and group names, asked of a writer agent over the link (for a
/// reader whose owners travel by name). Runs on the blocking pool, like the shards.
pub struct LinkNames {
    pub link: std::sync::Arc<LinkAgent>,
    pub store: SharedStore,
    pub spec: ExecutionSpec,
}

impl DestNames for LinkNames {
    fn ids(&self, users: &[String], groups: &[String]) -> Result<OwnerIdsFound, FerryError> {
        let client = self.link.client.as_ref().ok_or_else(|| no_certificate(&self.link))?;
        let rt = tokio::runtime::Handle::try_current()
            .map_err(|_| FerryError::new(ErrorKind::Other, "owner names were looked up outside the runtime (report a bug)"))?;
        let writers = rt.block_on(find_writers(&self.store, &self.spec))?;
        let connector = Remote::new(client, &self.spec.link, writers, 0, None);
        let dest = RemoteDest { connector: &connector, exec: self.spec.id.clone(), agent: self.link.name.clone(), uri: self.spec.destination.clone() };
        dest.owner_ids(users, groups)
    }
}

/// The agents that reach an execution's destination and accept links.
async fn find_writers(store: &SharedStore, spec: &ExecutionSpec) -> Result<Vec<WriterAgent>, FerryError> {
    let page = store
        .range(&ferry_common::keys::workers(), Default::default())
        .await
        .map_err(|e| FerryError::new(ErrorKind::Unavailable, format!("coordination store: {e}")))?;
    let mut writers = Vec::new();
    for kv in page.kvs {
        let Ok(info) = codec::decode::<WorkerInfo>(&kv.value) else {
            continue;
        };
        let Some(addr) = info.link_addr.as_deref().and_then(|a| a.parse().ok()) else {
            continue;
        };
        if spec.link.reach(&info.name, &info.labels).destination {
            writers.push(WriterAgent { name: info.name, addr });
        }
    }
    writers.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(writers)
}

/// Runs blocking work on the blocking pool with the mover's buffer; a panic in it becomes an
/// error for that shard instead of taking the process down.
async fn blocking<T: Send + 'static>(slot: &mut Option<Vec<u8>>, f: impl FnOnce(&mut Vec<u8>) -> T + Send + 'static) -> Result<T, FerryError> {
    let mut buf = slot.take().unwrap_or_default();
    // The mover's span (its execution) follows the work onto the blocking pool.
    let span = tracing::Span::current();
    match tokio::task::spawn_blocking(move || {
        let _in = span.enter();
        let t = f(&mut buf);
        (t, buf)
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

fn store_err(e: QueueError) -> FerryError {
    FerryError::new(ErrorKind::Unavailable, format!("coordination store: {e}"))
}

/// A shard kind as a metric label.
fn kind_label(kind: ShardKind) -> &'static str {
    match kind {
        ShardKind::Commit => "commit",
        ShardKind::Part => "part",
        ShardKind::Transfer => "transfer",
        ShardKind::Prune => "prune",
        ShardKind::Scan => "scan",
        ShardKind::Links => "links",
        ShardKind::DirMeta => "dirmeta",
        ShardKind::Settle => "settle",
        ShardKind::Verify => "verify",
    }
}

/// Counts a mover as busy (and not idle) while it runs one shard.
struct Busy;

impl Busy {
    fn start() -> Busy {
        metrics::gauge!(m::MOVERS, "state" => "busy").increment(1.0);
        metrics::gauge!(m::MOVERS, "state" => "idle").decrement(1.0);
        Busy
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        metrics::gauge!(m::MOVERS, "state" => "busy").decrement(1.0);
        metrics::gauge!(m::MOVERS, "state" => "idle").increment(1.0);
    }
}

/// Counts one mover as idle for as long as it lives ([`Busy`] moves it to busy meanwhile).
pub struct MoverAlive;

impl MoverAlive {
    pub fn new() -> MoverAlive {
        metrics::gauge!(m::MOVERS, "state" => "idle").increment(1.0);
        MoverAlive
    }
}

impl Default for MoverAlive {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for MoverAlive {
    fn drop(&mut self) {
        metrics::gauge!(m::MOVERS, "state" => "idle").decrement(1.0);
    }
}

fn count(direction: &'static str, outcome: &'static str, files: u64, bytes: u64) {
    if files > 0 {
        metrics::counter!(m::WORKER_FILES, "direction" => direction, "outcome" => outcome).increment(files);
    }
    if bytes > 0 {
        metrics::counter!(m::WORKER_BYTES, "direction" => direction, "outcome" => outcome).increment(bytes);
    }
}

/// Bytes of the report lines by how they ended (the counters hold only their number).
#[derive(Default)]
struct Sizes {
    skipped: u64,
    failed: u64,
    mismatched: u64,
    deleted: u64,
}

impl Sizes {
    fn of(lines: &[ferry_common::model::ReportEntry]) -> Sizes {
        let mut s = Sizes::default();
        for e in lines {
            match e.status {
                EntryStatus::Skipped => s.skipped += e.size,
                EntryStatus::Failed if e.code.as_deref() == Some("MISMATCH") => s.mismatched += e.size,
                EntryStatus::Failed => s.failed += e.size,
                EntryStatus::Deleted => s.deleted += e.size,
                EntryStatus::Transferred | EntryStatus::Verified => {}
            }
        }
        s
    }
}

/// Counts a completed shard's entries once the completion committed them: the same numbers
/// the execution's counters add. What a writer committed at the destination is counted where
/// it commits ([`crate::engine::write`]), on whichever agent that is.
fn count_outcome(c: &ferry_common::model::Counters, sizes: &Sizes) {
    count("read", "transferred", c.files_transferred, c.bytes_transferred);
    count("read", "verified", c.files_verified, c.bytes_verified);
    count("read", "mismatched", c.files_mismatched, sizes.mismatched);
    count("write", "skipped", c.files_skipped, sizes.skipped);
    count("write", "failed", c.files_failed, sizes.failed);
    count("write", "deleted", c.files_deleted, sizes.deleted);
    if c.chunks_resent > 0 {
        metrics::counter!(m::LINK_RESENT_CHUNKS).increment(c.chunks_resent);
    }
}

/// How a shard's run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ended {
    /// Its completion committed.
    Committed,
    /// It went back to the queue for another attempt.
    Requeued,
    /// This worker's clock gave its lease up, so it stopped touching the destination.
    Abandoned,
    /// The completion came too late: the claim was another worker's by then.
    Refused,
    /// The Store refused the completion.
    Uncommitted,
}

impl Ended {
    fn as_str(self) -> &'static str {
        match self {
            Ended::Committed => "committed",
            Ended::Requeued => "requeued",
            Ended::Abandoned => "abandoned",
            Ended::Refused => "refused",
            Ended::Uncommitted => "uncommitted",
        }
    }

    /// Whether this worker's claim may still stand after the run: no transaction of the run
    /// removed it. An abandoned shard's lease may be alive too, because etcd renews every
    /// lease when it restarts, whatever the worker's own clock concluded during the outage.
    pub fn may_leave_claim(self) -> bool {
        matches!(self, Ended::Abandoned | Ended::Uncommitted)
    }
}

/// Claims are done: run the shard and complete it. The mover that claimed a shard owns its
/// claim: a run that ends without a transaction removing the claim releases it here, so the
/// shard is claimable again at once instead of staying with this live worker for ever.
pub async fn run_shard(shared: &MoverShared, shard: Shard, buf: &mut Option<Vec<u8>>) -> Ended {
    let _busy = Busy::start();
    let started = std::time::Instant::now();
    let kind = kind_label(shard.body.kind());
    let (entries, bytes) = load(&shard.body);
    let id = shard.id.clone();
    // A span in the execution's trace (DEBUG: it is for traces, and costs nothing without them).
    let span = tracing::debug_span!("shard", otel.name = kind, shard = %shard.id, attempt = shard.attempt, entries, bytes, outcome = tracing::field::Empty);
    ferry_common::traces::adopt(&span, shared.ctx.spec.trace_parent.as_deref());
    let ended = tracing::Instrument::instrument(run_shard_inner(shared, shard, buf), span.clone()).await;
    span.record("outcome", ended.as_str());
    if ended.may_leave_claim() {
        match with_store_retry("release claim", || shared.queue.release(&id)).await {
            Ok(()) => tracing::info!(shard = %id, ended = ended.as_str(), "claim released; the shard is claimable again"),
            Err(e) => tracing::warn!(shard = %id, error = %e, "could not release the claim; the next claim round gives it back"),
        }
    }
    metrics::histogram!(m::SHARD_DURATION, "kind" => kind).record(started.elapsed().as_secs_f64());
    ended
}

/// Entries (files, directories, links) and bytes a shard carries.
fn load(body: &ShardBody) -> (usize, u64) {
    match body {
        ShardBody::Scan { dirs } | ShardBody::Verify { dirs } => (dirs.len(), 0),
        ShardBody::Transfer { entries } => (entries.len(), entries.iter().map(|e| e.size).sum()),
        ShardBody::Part { len, .. } => (1, *len),
        ShardBody::Commit { file, .. } => (1, file.size),
        ShardBody::Prune { .. } => (1, 0),
        ShardBody::Links { links } => (links.len(), 0),
        ShardBody::DirMeta { dirs } | ShardBody::Settle { dirs } => (dirs.len(), 0),
    }
}

/// Runs a shard to its end and says how it ended.
async fn run_shard_inner(shared: &MoverShared, shard: Shard, buf: &mut Option<Vec<u8>>) -> Ended {
    let policy = RetryPolicy::from_limits(&shared.ctx.options().limits);
    let queue = &shared.queue;
    let mut ended = Ended::Committed;
    tracing::debug!(shard = %shard.id, attempt = shard.attempt, "ShardClaimed");
    // A retry waits out the backoff its failure was given, whoever claimed it.
    let wait = policy.wait_before(&shard, now_ms());
    if !wait.is_zero() {
        tracing::debug!(shard = %shard.id, attempt = shard.attempt, wait_ms = wait.as_millis() as u64, "waiting before the retry");
        tokio::time::sleep(wait).await;
    }
    let decide = |e: &FerryError| policy.decide(e.kind, Tries::of(&shard), now_ms(), retry::jitter());
    let committed: Result<bool, QueueError> = if let ShardBody::Part { file, offset, len, group, .. } = shard.body.clone() {
        let mut outcome = Outcome::default();
        let r = run_part(shared, &shard, file, offset, len, &group, buf).await;
        match r {
            Err(e) if e.kind == ErrorKind::LeaseLost => {
                abandon(&shard);
                return Ended::Abandoned;
            }
            Ok(done) => {
                shared.link.vitals.moved(done.counters.bytes_transferred);
                outcome.counters().add(&done.counters);
                let r =
                    with_store_retry("complete part", || queue.complete_part(&shard, Ok((done.crc, len)), &done.tags, done.source.as_ref(), &outcome)).await;
                if matches!(r, Ok(true)) {
                    count_outcome(&outcome.result.counters, &Sizes::default());
                }
                r
            }
            Err(e) => {
                note_failure(shared, &e);
                match decide(&e) {
                    Verdict::Retry(at) => {
                        ended = Ended::Requeued;
                        with_store_retry("requeue part", || queue.requeue(&shard, e.to_string(), at)).await
                    }
                    Verdict::Fail(why) => {
                        let e = given_up(e, &why);
                        with_store_retry("complete part", || queue.complete_part(&shard, Err(e.to_string()), &[], None, &outcome)).await
                    }
                }
            }
        }
    } else {
        match execute(shared, &shard, buf).await {
            Ok((outcome, _)) if outcome.abandoned => {
                abandon(&shard);
                return Ended::Abandoned;
            }
            Err(e) if e.kind == ErrorKind::LeaseLost => {
                abandon(&shard);
                return Ended::Abandoned;
            }
            Ok((outcome, extra)) => commit(shared, &shard, outcome, extra).await,
            Err(e) => match decide(&e) {
                Verdict::Retry(at) => {
                    note_failure(shared, &e);
                    tracing::info!(shard = %shard.id, error = %e, retry_in_ms = at.not_before_ms.saturating_sub(now_ms()), "shard failed; queued for another attempt");
                    ended = Ended::Requeued;
                    with_store_retry("requeue shard", || queue.requeue(&shard, e.to_string(), at)).await
                }
                Verdict::Fail(why) => commit(shared, &shard, all_failed(&shard.body, &given_up(e, &why)), Vec::new()).await,
            },
        }
    };
    match committed {
        Ok(true) => ended,
        Ok(false) => {
            tracing::warn!(shard = %shard.id, "completion refused: the claim was lost (lease expired); another worker owns it");
            Ended::Refused
        }
        Err(e) => {
            tracing::warn!(shard = %shard.id, error = %e, "could not complete shard; releasing its claim so that it runs again");
            Ended::Uncommitted
        }
    }
}

/// The error a shard is failed with, saying why it was not tried again.
fn given_up(e: FerryError, why: &str) -> FerryError {
    if why.is_empty() {
        e
    } else {
        FerryError::new(e.kind, format!("{} ({why})", e.message))
    }
}

fn now_ms() -> u64 {
    ferry_common::schedule::now_ms()
}

/// A part of a large file: finds the file's multipart write (recorded in the part set, left
/// by an interrupted run, or new), then sends the range into it.
async fn run_part(
    shared: &MoverShared,
    shard: &Shard,
    file: Entry,
    offset: u64,
    len: u64,
    group: &str,
    buf: &mut Option<Vec<u8>>,
) -> Result<parts::PartDone, FerryError> {
    let (ctx, link) = (shared.ctx.clone(), shared.link.clone());
    let route = route(shared, shard).await?;
    let recorded = with_store_retry("read part set", || shared.queue.part_set(group)).await.map_err(store_err)?.upload_id;
    let upload = match recorded {
        Some(id) => id,
        None => {
            let (c, l, r, f) = (ctx.clone(), link.clone(), route.clone(), file.clone());
            let opened = blocking(buf, move |_| {
                with_route(&c, &l, &r, |_, dest, _| parts::upload_meta(&c, &f).and_then(|meta| dest.open_upload(&f.path, f.size, &meta)))
            })
            .await??;
            let (id, created) = opened?;
            let winner = with_store_retry("record upload", || shared.queue.record_upload(group, &file.path, &id)).await.map_err(store_err)?;
            if winner != id && created {
                // Another part started the write first: this one is not needed.
                let (c, l, r, f) = (ctx.clone(), link.clone(), route.clone(), file.clone());
                let _ = blocking(buf, move |_| with_route(&c, &l, &r, |_, dest, _| dest.abort_upload(&f.path, &id))).await;
            }
            winner
        }
    };
    blocking(buf, move |b| {
        with_route(&ctx, &link, &route, |conn, _, settings| parts::run_part(&ctx, conn, settings, &file, PartTarget { upload: upload.clone(), offset, len }, b))
    })
    .await??
}

/// A shard that no longer belongs to this worker: no completion, no cleanup at the
/// destination (a successor may be working there); its temporary files go at the
/// directory-metadata stage.
fn abandon(shard: &Shard) {
    tracing::warn!(shard = %shard.id, "lease expired; abandoning the shard to the worker that claims it next");
}

/// A shard's failure, for the agent's recent errors.
fn note_failure(shared: &MoverShared, e: &FerryError) {
    shared.link.vitals.failed(ferry_common::schedule::now_ms(), &shared.ctx.spec.id, &format!("{:?}", e.kind), &e.to_string());
}

/// What a finished shard adds to the agent's vital signs: bytes moved, and its failed
/// entries (with the report's code for each when it has one).
fn note_outcome(shared: &MoverShared, outcome: &Outcome) {
    let vitals = &shared.link.vitals;
    vitals.moved(outcome.result.counters.bytes_transferred);
    let now = ferry_common::schedule::now_ms();
    for f in &outcome.result.failures {
        let code = outcome.report.iter().find(|l| l.path == f.path && l.status == EntryStatus::Failed).and_then(|l| l.code.clone());
        let what = if f.path.is_empty() { f.reason.clone() } else { format!("{}: {}", String::from_utf8_lossy(&f.path), f.reason) };
        vitals.failed(now, &shared.ctx.spec.id, code.as_deref().unwrap_or("FAILED"), &what);
    }
}

async fn commit(shared: &MoverShared, shard: &Shard, mut outcome: Outcome, extra: Vec<TxnOp>) -> Result<bool, QueueError> {
    note_outcome(shared, &outcome);
    let lines = std::mem::take(&mut outcome.report);
    crate::report::log_entries(&shared.ctx.spec, &lines);
    let sizes = Sizes::of(&lines);
    let chunks = crate::report::chunks(&shared.ctx.spec, lines);
    let r = with_store_retry("complete shard", || shared.queue.complete(shard, &outcome, &chunks, extra.clone())).await;
    if matches!(r, Ok(true)) {
        count_outcome(&outcome.result.counters, &sizes);
    }
    r
}

/// Runs any shard but a part; returns the outcome and extra completion writes.
async fn execute(shared: &MoverShared, shard: &Shard, buf: &mut Option<Vec<u8>>) -> Result<(Outcome, Vec<TxnOp>), FerryError> {
    let (ctx, link) = (shared.ctx.clone(), shared.link.clone());
    let tries = Tries::of(shard);
    let body = shard.body.clone();
    let route = match body.kind() {
        ShardKind::Commit | ShardKind::Links | ShardKind::DirMeta | ShardKind::Settle => Route::InProcess,
        _ => route(shared, shard).await?,
    };
    let outcome = match body {
        ShardBody::Scan { dirs } => {
            let (c, l) = (ctx.clone(), link.clone());
            let page = blocking(buf, move |_| with_route(&c, &l, &route, |_, dest, _| list_page(&c, dest, &dirs))).await???;
            let mut roles = Vec::with_capacity(page.link_candidates.len());
            for cand in &page.link_candidates {
                let role = with_store_retry("resolve hard link", || shared.queue.resolve_link(cand.dev, cand.ino, &cand.entry.path)).await;
                roles.push(match role.map_err(store_err)? {
                    None => LinkRole::First,
                    Some(first) => LinkRole::LinkTo(first),
                });
            }
            // Unknown while the Store is down: then found directories stay in the continuation.
            let room = shared.queue.room_for_scans(&ctx.options().limits).await.unwrap_or(0);
            page.into_bodies(&ctx, &shard.id, roles, room)
        }
        ShardBody::Transfer { entries } => {
            blocking(buf, move |b| with_route(&ctx, &link, &route, |conn, _, settings| transfer::run_transfer(&ctx, conn, settings, entries, tries, b)))
                .await??
        }
        ShardBody::Commit { file, group, .. } => {
            let set = with_store_retry("read part set", || shared.queue.part_set(&group)).await.map_err(store_err)?;
            let out = blocking(buf, move |b| {
                let failure = set.failed.first().map(|(_, r)| r.clone());
                parts::run_commit(&ctx, &file, &set, failure.as_deref(), b)
            })
            .await?;
            return Ok((out, vec![TxnOp::delete(shared.queue.keys().parts(&group))]));
        }
        ShardBody::Prune { dir } => blocking(buf, move |_| with_route(&ctx, &link, &route, |_, dest, _| prune::run_prune(&ctx, dest, &dir))).await???,
        ShardBody::Links { links: l } => blocking(buf, move |_| links::run_links(&ctx, l)).await?,
        ShardBody::DirMeta { dirs } | ShardBody::Settle { dirs } => blocking(buf, move |_| dirmeta::run_dirmeta(&ctx, dirs)).await?,
        ShardBody::Verify { dirs } => {
            blocking(buf, move |b| with_route(&ctx, &link, &route, |_, dest, _| verify::run_verify(&ctx, dest, &dirs, b))).await???
        }
        ShardBody::Part { .. } => unreachable!("parts complete through complete_part"),
    };
    Ok((outcome, Vec::new()))
}

/// A shard that failed for good: every entry it carried is reported failed with the error,
/// so the reconciliation still accounts for each of them.
pub fn all_failed(body: &ShardBody, err: &FerryError) -> Outcome {
    let mut out = Outcome::default();
    let err = FerryError::new(err.kind, format!("{} (shard gave up)", err.message));
    // Not an entry the scan counted (a whole directory's listing or pruning): counted as
    // prepared too, so prepared == transferred + skipped + failed still holds.
    let fail_unprepared = |out: &mut Outcome, path: &[u8], kind: EntryKind| {
        out.counters().files_prepared += 1;
        out.fail(Line::new(path.to_vec(), kind, EntryStatus::Failed), &err);
    };
    match body {
        ShardBody::Scan { dirs } => {
            for d in dirs {
                if d.path.is_empty() || d.after.is_some() || d.cookie.is_some() {
                    fail_unprepared(&mut out, &d.path, EntryKind::Dir);
                } else {
                    out.fail(Line::new(d.path.clone(), EntryKind::Dir, EntryStatus::Failed), &err);
                }
            }
        }
        ShardBody::Verify { dirs } => {
            for d in dirs {
                out.mismatch(d.path.clone(), EntryKind::Dir, 0, err.to_string());
            }
        }
        ShardBody::Prune { dir } => fail_unprepared(&mut out, &dir.path, EntryKind::Dir),
        ShardBody::Transfer { entries } => {
            for e in entries {
                out.fail(Line::of(e, EntryStatus::Failed), &err);
            }
        }
        ShardBody::Part { file, .. } | ShardBody::Commit { file, .. } => out.fail(Line::of(file, EntryStatus::Failed), &err),
        ShardBody::Links { links } => {
            for l in links {
                out.fail(Line::new(l.path.clone(), EntryKind::HardLink, EntryStatus::Failed).size(l.size), &err);
            }
        }
        ShardBody::DirMeta { dirs } | ShardBody::Settle { dirs } => {
            for d in dirs.iter().filter(|d| !d.path.is_empty()) {
                out.fail(Line::new(d.path.clone(), EntryKind::Dir, EntryStatus::Failed), &err);
            }
        }
    }
    out
}
