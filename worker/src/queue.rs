//! Claiming and completing shards through the Store (design.md, "The coordination Store").
//!
//! - Claim: one transaction. If no claim exists and the queue entry does, put the claim with
//!   the worker's lease.
//! - Complete: one transaction. If the claim is still ours, write `done`, delete the queue
//!   entry and the claim, and queue what the shard emitted. This is the fence: a worker whose
//!   lease expired has lost its claim and cannot commit, so a stalled worker never overwrites
//!   the accounting of the worker that took over.
//! - Every claim has an owner: the mover that made it. A claim whose owner ends without
//!   committing is released by that owner at once ([`ShardQueue::release`]), and a claim
//!   transaction whose answer was lost (the Store went down between applying it and answering)
//!   is released by the claimer before it lets go of the shard's id. A live worker's lease
//!   never lapses, so a claim left behind by either would hold its shard for ever: the
//!   execution hung after etcd outages this way.
//! - Settle shards (directory metadata) are claimable only once every queued shard that
//!   writes entries is younger than them (its origin, carried in its id, is later): see
//!   `ShardBody::Settle`.
//! - Orphans: a claim that names this claimer while none of its movers runs the shard is given
//!   back at the next claim. Only a Store restored from a backup makes one now (the claims of
//!   shards finished since the snapshot come back, under a lease that is still alive).

use ferry_common::codec;
use ferry_common::keys::ExecKeys;
use ferry_common::model::{FileMeta, Limits, PartSet, ReportChunk, Shard, ShardBody, ShardKind, ShardResult, Stage};
use std::collections::HashSet;
use std::sync::Mutex;

use ferry_common::store::{Compare, LeaseId, RangeOptions, SharedStore, StoreError, Txn, TxnOp};
use rand::seq::SliceRandom;

use crate::engine::Outcome;

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("corrupt value in the coordination store: {0}")]
    Codec(#[from] codec::CodecError),
}

pub struct ShardQueue {
    store: SharedStore,
    keys: ExecKeys,
    /// Identifies this claimer: the worker id plus its lease, so a restarted worker with the
    /// same name does not mistake an old claim for its own.
    holder: Vec<u8>,
    lease: LeaseId,
    /// Shard kinds this claimer may take; `None` takes every kind. An agent that reaches
    /// only one side of an execution takes only the shards that side can run.
    kinds: Option<Vec<ShardKind>>,
    /// Shards this claimer's movers are claiming or running. An id goes in before its claim
    /// transaction and leaves only after the shard's claim is gone ([`ShardQueue::done_with`]),
    /// so a claim of ours whose id is missing here is an orphan.
    held: Mutex<HashSet<String>>,
}

/// Keys read per queue page while looking for an unclaimed shard.
const CLAIM_PAGE: usize = 256;

impl ShardQueue {
    pub fn new(store: SharedStore, exec: &str, worker_id: &str, lease: LeaseId) -> Self {
        ShardQueue {
            store,
            keys: ExecKeys::new(exec),
            holder: format!("{worker_id}#{lease:x}").into_bytes(),
            lease,
            kinds: None,
            held: Mutex::new(HashSet::new()),
        }
    }

    /// Restricts claims to these shard kinds.
    pub fn with_kinds(mut self, kinds: Option<Vec<ShardKind>>) -> Self {
        self.kinds = kinds;
        self
    }

    pub fn holder(&self) -> &str {
        std::str::from_utf8(&self.holder).unwrap_or("")
    }

    pub fn keys(&self) -> &ExecKeys {
        &self.keys
    }

    pub fn store(&self) -> &SharedStore {
        &self.store
    }

    /// Claims one shard of `stage`, or returns `None` when nothing is claimable right now.
    ///
    /// Scan shards are only claimed while fewer than `max_queued_transfer_shards` transfer
    /// shards and fewer than `max_queued_settle_shards` Settle shards are queued: that is the
    /// backpressure that keeps listing from running ahead of copying, and directory metadata
    /// from piling up behind a long transfer.
    ///
    /// Shards already claimed are skipped using one read of the claim prefix: a claim
    /// transaction is a write (it goes through etcd's log even when its compare fails), so
    /// trying claimed shards one by one would cost a disk flush each.
    pub async fn claim(&self, stage: Stage, limits: &Limits) -> Result<Option<Shard>, QueueError> {
        let claims = self.store.range(&self.keys.claim_prefix(), RangeOptions::default()).await?.kvs;
        let given_back = self.give_back_orphans(&claims).await?;
        let claimed: HashSet<Vec<u8>> =
            claims.into_iter().filter(|kv| !given_back.contains(&kv.key)).map(|kv| ExecKeys::shard_of(&kv.key).as_bytes().to_vec()).collect();
        let (mut backlog, mut settling) = (0, 0);
        // Within a stage, finish files already started (commits, parts) before new files, and
        // list last, so the frontier stays small.
        for kind in ShardKind::of_stage(stage) {
            if kind == ShardKind::Scan && (backlog >= limits.max_queued_transfer_shards as usize || settling >= limits.max_queued_settle_shards as usize) {
                continue;
            }
            // Kinds this claimer may not take are not read at all. Its backlog then counts
            // only the transfer shards it could take, which is the backlog that matters to its
            // scans (in a linked execution only readers scan, and only readers transfer).
            // Settle shards are counted all the same: writers run them, and readers' scans
            // must wait for them.
            if self.kinds.as_ref().is_some_and(|k| !k.contains(&kind)) {
                if kind == ShardKind::Settle {
                    settling = self.store.count(&self.keys.queue_kind(kind)).await?;
                }
                continue;
            }
            let prefix = self.keys.queue_kind(kind);
            let mut start_after = None;
            // The oldest origin among queued shards that write entries, read once if needed.
            let mut low_water = None;
            loop {
                let page = self.store.range(&prefix, RangeOptions { limit: CLAIM_PAGE, start_after: start_after.clone(), keys_only: true }).await?;
                if kind.is_backlog() {
                    backlog += page.kvs.len();
                }
                if kind == ShardKind::Settle {
                    settling += page.kvs.len();
                }
                start_after = page.kvs.last().map(|kv| kv.key.clone());
                let mut keys: Vec<Vec<u8>> = page.kvs.into_iter().map(|kv| kv.key).filter(|k| !claimed.contains(ExecKeys::shard_of(k).as_bytes())).collect();
                if kind == ShardKind::Settle && !keys.is_empty() {
                    let oldest = match low_water {
                        Some(w) => w,
                        None => *low_water.insert(self.oldest_writing_origin().await?),
                    };
                    keys.retain(|k| Shard::origin_of(ExecKeys::shard_of(k)) < oldest);
                }
                // Claimers start at different places so they rarely collide on one key.
                keys.shuffle(&mut rand::thread_rng());
                for key in &keys {
                    if let Some(shard) = self.try_claim(key).await? {
                        return Ok(Some(shard));
                    }
                }
                if !page.more {
                    break;
                }
            }
        }
        Ok(None)
    }

    /// The oldest origin among queued shards that write entries into the destination
    /// (claimed or not), or `u64::MAX` when there are none: a Settle shard of an older origin
    /// has nothing left to wait for.
    async fn oldest_writing_origin(&self) -> Result<u64, QueueError> {
        let prefix = self.keys.queue_stage(Stage::Transfer);
        let mut oldest = u64::MAX;
        let mut start_after = None;
        loop {
            let page = self.store.range(&prefix, RangeOptions { limit: 1024, start_after: start_after.clone(), keys_only: true }).await?;
            for kv in &page.kvs {
                let id = ExecKeys::shard_of(&kv.key);
                if ShardKind::of_id(id).is_none_or(|k| k.writes_entries()) {
                    oldest = oldest.min(Shard::origin_of(id));
                }
            }
            start_after = page.kvs.last().map(|kv| kv.key.clone());
            if !page.more {
                return Ok(oldest);
            }
        }
    }

    /// How many more scan shards the queue takes before a scan page keeps what it found in
    /// its continuation (`Limits::max_queued_scan_shards`).
    pub async fn room_for_scans(&self, limits: &Limits) -> Result<usize, QueueError> {
        let queued = self.store.count(&self.keys.queue_kind(ShardKind::Scan)).await?;
        Ok((limits.max_queued_scan_shards as usize).saturating_sub(queued))
    }

    /// Releases the claims in `claims` that name this claimer but no mover of it holds (see
    /// the module comment). Each release is guarded by the claim's revision as read, so a
    /// claim made or ended since is left alone.
    /// Returns the claim keys it deleted.
    async fn give_back_orphans(&self, claims: &[ferry_common::store::KeyValue]) -> Result<Vec<Vec<u8>>, QueueError> {
        let orphans: Vec<&ferry_common::store::KeyValue> = {
            let held = self.held.lock().unwrap_or_else(|e| e.into_inner());
            claims.iter().filter(|kv| kv.value == self.holder && !held.contains(ExecKeys::shard_of(&kv.key))).collect()
        };
        let mut given_back = Vec::new();
        for kv in orphans {
            let txn = Txn::new().when([Compare::mod_revision_is(kv.key.clone(), kv.mod_revision)]).and_then([TxnOp::delete(kv.key.clone())]);
            if self.store.txn(txn).await?.succeeded {
                tracing::warn!(
                    shard = ExecKeys::shard_of(&kv.key),
                    "gave back a claim of this agent that no mover was running (the Store was restored from a backup, or a claim's answer was lost); the shard runs again"
                );
                given_back.push(kv.key.clone());
            }
        }
        Ok(given_back)
    }

    /// The mover is finished with `shard` and its claim is gone (completed, requeued, released
    /// or lost): the shard may count as an orphan from now on.
    pub fn done_with(&self, shard: &str) {
        self.held.lock().unwrap_or_else(|e| e.into_inner()).remove(shard);
    }

    async fn try_claim(&self, key: &[u8]) -> Result<Option<Shard>, QueueError> {
        let id = ExecKeys::shard_of(key);
        // Held before the claim exists, so a concurrent orphan check never sees ours unheld.
        if !self.held.lock().unwrap_or_else(|e| e.into_inner()).insert(id.to_string()) {
            return Ok(None);
        }
        let claimed = self.claim_held(key, id).await;
        match &claimed {
            Ok(Some(_)) => return claimed,
            Ok(None) => {}
            Err(e) => {
                // The claim may have been applied with its answer lost, or the read after it
                // failed: either way a claim of ours may stand with no mover behind it. It is
                // released before the id is let go, waiting out the outage if need be.
                tracing::debug!(shard = id, error = %e, "claim unanswered; releasing it in case it was applied");
                if let Err(e) = with_store_retry("release an unanswered claim", || self.release(id)).await {
                    tracing::warn!(shard = id, error = %e, "could not release an unanswered claim; the next claim round gives it back");
                }
            }
        }
        self.done_with(id);
        claimed
    }

    async fn claim_held(&self, key: &[u8], id: &str) -> Result<Option<Shard>, QueueError> {
        let claim = self.keys.claim(id);
        let txn = Txn::new().when([Compare::absent(claim.clone()), Compare::present(key.to_vec())]).and_then([TxnOp::put_leased(
            claim,
            self.holder.clone(),
            self.lease,
        )]);
        if !self.store.txn(txn).await?.succeeded {
            return Ok(None);
        }
        match self.store.get(key).await? {
            Some(kv) => {
                let mut shard: Shard = codec::decode(&kv.value)?;
                shard.revision = kv.create_revision;
                Ok(Some(shard))
            }
            // Completed by someone else between our claim and read: drop the claim.
            None => {
                self.store.delete(&self.keys.claim(id)).await?;
                Ok(None)
            }
        }
    }

    fn fence(&self, shard: &Shard) -> Compare {
        Compare::value_is(self.keys.claim(&shard.id), self.holder.clone())
    }

    /// The writes of a completion: the result, its report lines, the queue update and the
    /// emitted shards.
    fn completion_ops(&self, shard: &Shard, outcome: &Outcome, report: &[ReportChunk]) -> Result<Vec<TxnOp>, QueueError> {
        let mut result: ShardResult = outcome.result.clone();
        result.holder = String::from_utf8_lossy(&self.holder).into_owned();
        result.counters.shards_done += 1;
        result.report_chunks = Some(report.len() as u32);
        let mut ops = vec![TxnOp::delete(self.keys.claim(&shard.id))];
        match &outcome.retry {
            Some(body) => {
                result.counters.shard_retries += 1;
                let next = Shard {
                    id: shard.id.clone(),
                    attempt: shard.attempt + 1,
                    body: body.clone(),
                    last_error: outcome.retry_error.clone(),
                    not_before_ms: outcome.retry_at.map(|at| at.not_before_ms),
                    failing_since_ms: outcome.retry_at.map(|at| at.failing_since_ms),
                    revision: 0,
                };
                ops.push(TxnOp::put(self.keys.queue(&shard.id), codec::encode(&next)?));
            }
            None => ops.push(TxnOp::delete(self.keys.queue(&shard.id))),
        }
        let attempt = format!("{}@{}", shard.id, shard.attempt);
        ops.push(TxnOp::put(self.keys.done(&attempt), codec::encode(&result)?));
        for (n, chunk) in report.iter().enumerate() {
            ops.push(TxnOp::put(self.keys.report(&attempt, n), codec::encode(chunk)?));
        }
        let origin = shard.origin_of_children();
        for (seq, body) in outcome.emit.iter().enumerate() {
            let child = Shard::new(Shard::child_id(&shard.id, origin, seq as u64, body), body.clone());
            ops.push(TxnOp::put(self.keys.queue(&child.id), codec::encode(&child)?));
        }
        Ok(ops)
    }

    /// Commits a shard's outcome with its report lines. Returns false when the fence rejected
    /// it (the claim was lost): the outcome and its lines are then discarded.
    pub async fn complete(&self, shard: &Shard, outcome: &Outcome, report: &[ReportChunk], extra: Vec<TxnOp>) -> Result<bool, QueueError> {
        let mut ops = self.completion_ops(shard, outcome, report)?;
        ops.extend(extra);
        let txn = Txn::new().when([self.fence(shard)]).and_then(ops);
        Ok(self.store.txn(txn).await?.succeeded)
    }

    /// Puts the shard back for another attempt, not before `at` (a transient whole-shard
    /// failure).
    pub async fn requeue(&self, shard: &Shard, error: String, at: crate::retry::RetryAt) -> Result<bool, QueueError> {
        let outcome = Outcome { retry: Some(shard.body.clone()), retry_error: Some(error), retry_at: Some(at), ..Default::default() };
        self.complete(shard, &outcome, &[], Vec::new()).await
    }

    /// Gives the claim of shard `id` back untouched if it is ours: its owner ended without
    /// committing, or does not know whether its claim was applied. Deleting a claim that is
    /// already gone, or another claimer's, changes nothing.
    pub async fn release(&self, id: &str) -> Result<(), QueueError> {
        let claim = self.keys.claim(id);
        let txn = Txn::new().when([Compare::value_is(claim.clone(), self.holder.clone())]).and_then([TxnOp::delete(claim)]);
        self.store.txn(txn).await?;
        Ok(())
    }

    /// Records one finished (or failed) part in the file's PartSet and completes the part
    /// shard, in one transaction guarded by both the fence and the PartSet's revision. The
    /// part that completes the set also queues the Commit shard. `tags` are the object-store
    /// part tags it stored (none for a POSIX destination), `source` the file's metadata as the
    /// part read it.
    pub async fn complete_part(
        &self,
        shard: &Shard,
        result: Result<(u32, u64), String>,
        tags: &[(u32, String)],
        source: Option<&FileMeta>,
        outcome: &Outcome,
    ) -> Result<bool, QueueError> {
        let ShardBody::Part { file, index, count, group, .. } = &shard.body else { unreachable!("complete_part is only called for part shards") };
        let parts_key = self.keys.parts(group);
        loop {
            let current = self.store.get(&parts_key).await?;
            let (mut set, rev): (PartSet, i64) = match &current {
                Some(kv) => (codec::decode(&kv.value)?, kv.mod_revision),
                None => (PartSet::default(), 0),
            };
            set.done.retain(|p| p.0 != *index);
            set.failed.retain(|p| p.0 != *index);
            set.part_tags.retain(|(n, _)| !tags.iter().any(|(m, _)| m == n));
            if set.part_tags.len() + tags.len() <= ferry_common::model::MAX_PART_TAGS {
                set.part_tags.extend(tags.iter().cloned());
            }
            match &result {
                Ok((crc, len)) => set.done.push((*index, *crc, *len)),
                Err(reason) => set.failed.push((*index, reason.clone())),
            }
            if set.source.is_none() {
                set.source = source.cloned();
            }
            let mut out = Outcome { result: outcome.result.clone(), ..Default::default() };
            if set.is_complete(*count) {
                out.emit.push(ShardBody::Commit { file: file.clone(), count: *count, group: group.clone() });
            }
            let mut ops = self.completion_ops(shard, &out, &[])?;
            ops.push(TxnOp::put(parts_key.clone(), codec::encode(&set)?));
            let guard = Compare::mod_revision_is(parts_key.clone(), rev);
            let txn = Txn::new().when([self.fence(shard), guard]).and_then(ops);
            if self.store.txn(txn).await?.succeeded {
                return Ok(true);
            }
            // Either the fence failed (we lost the claim) or another part updated the set.
            let still_ours = self.store.get(&self.keys.claim(&shard.id)).await?.is_some_and(|kv| kv.value == self.holder);
            if !still_ours {
                return Ok(false);
            }
        }
    }

    /// Records `upload` as the multipart upload of a part group unless one is recorded
    /// already; returns the upload every part must use (the first recorded wins).
    pub async fn record_upload(&self, group: &str, path: &[u8], upload: &str) -> Result<String, QueueError> {
        let key = self.keys.parts(group);
        loop {
            let current = self.store.get(&key).await?;
            let (mut set, rev): (PartSet, i64) = match &current {
                Some(kv) => (codec::decode(&kv.value)?, kv.mod_revision),
                None => (PartSet::default(), 0),
            };
            if let Some(existing) = set.upload_id {
                return Ok(existing);
            }
            set.upload_id = Some(upload.to_string());
            set.path = Some(path.to_vec());
            let txn = Txn::new().when([Compare::mod_revision_is(key.clone(), rev)]).and_then([TxnOp::put(key.clone(), codec::encode(&set)?)]);
            if self.store.txn(txn).await?.succeeded {
                return Ok(upload.to_string());
            }
        }
    }

    pub async fn part_set(&self, group: &str) -> Result<PartSet, QueueError> {
        Ok(match self.store.get(&self.keys.parts(group)).await? {
            Some(kv) => codec::decode(&kv.value)?,
            None => PartSet::default(),
        })
    }

    /// Decides which path of a hard-link set is copied: the first to register wins, and a
    /// retried scan finds its own registration again.
    pub async fn resolve_link(&self, dev: u64, ino: u64, path: &[u8]) -> Result<Option<Vec<u8>>, QueueError> {
        let key = self.keys.link(dev, ino);
        let txn = Txn::new().when([Compare::absent(key.clone())]).and_then([TxnOp::put(key.clone(), path.to_vec())]);
        if self.store.txn(txn).await?.succeeded {
            return Ok(None);
        }
        let first = self.store.get(&key).await?.map(|kv| kv.value).unwrap_or_default();
        Ok(if first == path { None } else { Some(first) })
    }
}

/// Retries a Store operation while the Store is unavailable. Giving up is not an option for
/// the steps that end a claim: a claim that is neither completed nor released stays with this
/// live worker for ever.
pub async fn with_store_retry<T, F, Fut>(what: &str, mut op: F) -> Result<T, QueueError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, QueueError>>,
{
    let mut backoff = std::time::Duration::from_millis(100);
    let mut warned: Option<std::time::Instant> = None;
    loop {
        match op().await {
            Err(QueueError::Store(e)) if e.is_transient() => {
                // Once, then every 30 s with the latest error: a loop that never ends must
                // still say what it waits for.
                if warned.is_none_or(|at| at.elapsed() >= std::time::Duration::from_secs(30)) {
                    let again = if warned.is_some() { "still " } else { "" };
                    tracing::warn!(error = %e, "{what}: coordination store unavailable; {again}retrying until it is back");
                    warned = Some(std::time::Instant::now());
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(std::time::Duration::from_secs(5));
            }
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_common::store::MemStore;
    use std::sync::Arc;
    use std::time::Duration;

    fn transfer_shard(seq: u64) -> Shard {
        let body = ShardBody::Transfer { entries: vec![] };
        Shard::new(Shard::child_id("root", 0, seq, &body), body)
    }

    fn dir(path: &str) -> ferry_common::model::DirMeta {
        ferry_common::model::DirMeta {
            path: path.as_bytes().to_vec(),
            mode: libc::S_IFDIR | 0o755,
            uid: 0,
            gid: 0,
            atime: Default::default(),
            mtime: Default::default(),
            xattrs: None,
        }
    }

    /// A directory's metadata waits for every shard that writes into it, and only for those
    /// (and other older ones): the Settle shard a scan page emits is claimable once the
    /// transfers of the same page, and the commit a part of it queues, are done, even while
    /// younger transfers are still queued.
    #[tokio::test]
    async fn a_settle_shard_waits_for_the_writes_its_page_planned_and_no_longer() {
        let store: SharedStore = Arc::new(MemStore::new());
        let lease = store.lease_grant(Duration::from_secs(30)).await.unwrap();
        let queue = ShardQueue::new(store.clone(), "exec-1", "w1", lease);
        let limits = Limits::default();
        let scan_body = ShardBody::Scan { dirs: vec![] };
        let scan = Shard::new(Shard::child_id("root", 0, 0, &scan_body), scan_body);
        store.put(&queue.keys().queue(&scan.id), codec::encode(&scan).unwrap(), None).await.unwrap();

        // The scan page plans a transfer, a part of a large file, and the directory's Settle.
        let page = queue.claim(Stage::Transfer, &limits).await.unwrap().expect("the scan");
        assert!(page.revision > 0, "a claimed shard knows its key's revision");
        let entry = ferry_common::model::Entry {
            path: b"d/big".to_vec(),
            kind: ferry_common::model::EntryKind::File,
            size: 10,
            mtime: Default::default(),
            compare_checksum: false,
            check_dest: false,
        };
        let outcome = Outcome {
            emit: vec![
                ShardBody::Transfer { entries: vec![] },
                ShardBody::Part { file: entry.clone(), index: 0, count: 1, offset: 0, len: 10, group: "g".into() },
                ShardBody::Settle { dirs: vec![dir("d")] },
            ],
            ..Default::default()
        };
        assert!(queue.complete(&page, &outcome, &[], Vec::new()).await.unwrap());
        let children: Vec<String> = store
            .range(&queue.keys().queue_stage(Stage::Transfer), RangeOptions::default())
            .await
            .unwrap()
            .kvs
            .iter()
            .map(|kv| ExecKeys::shard_of(&kv.key).to_string())
            .collect();
        assert_eq!(children.len(), 3);
        assert!(children.iter().all(|id| Shard::origin_of(id) == page.revision as u64), "children carry the page's revision: {children:?}");

        // A younger page's transfer is queued too: it must not hold the Settle back.
        let younger = ShardBody::Transfer { entries: vec![] };
        let younger = Shard::new(Shard::child_id("other", page.revision as u64 + 5, 0, &younger), younger);
        store.put(&queue.keys().queue(&younger.id), codec::encode(&younger).unwrap(), None).await.unwrap();

        let settle_kind = |s: &Shard| matches!(s.body, ShardBody::Settle { .. });
        // Claim and finish everything but the Settle and the younger transfer, checking that
        // the Settle is never handed out while its page's writes are queued.
        let mut claimed = Vec::new();
        while let Some(s) = queue.claim(Stage::Transfer, &limits).await.unwrap() {
            assert!(!settle_kind(&s), "the Settle came before its page's writes were done");
            claimed.push(s);
        }
        assert_eq!(claimed.len(), 3, "the transfer, the part and the younger transfer");
        for s in claimed.iter().filter(|s| s.id != younger.id && !matches!(s.body, ShardBody::Part { .. })) {
            assert!(queue.complete(s, &Outcome::default(), &[], Vec::new()).await.unwrap());
            queue.done_with(&s.id);
        }
        assert!(queue.claim(Stage::Transfer, &limits).await.unwrap().is_none(), "the part is still running");
        // The part completes its set and queues the commit, which inherits the page's origin.
        let part = claimed.iter().find(|s| matches!(s.body, ShardBody::Part { .. })).unwrap();
        assert!(queue.complete_part(part, Ok((1, 10)), &[], None, &Outcome::default()).await.unwrap());
        queue.done_with(&part.id);
        let commit = queue.claim(Stage::Transfer, &limits).await.unwrap().expect("the commit");
        assert!(matches!(commit.body, ShardBody::Commit { .. }), "{commit:?}");
        assert_eq!(Shard::origin_of(&commit.id), page.revision as u64);
        assert!(queue.claim(Stage::Transfer, &limits).await.unwrap().is_none(), "the commit still runs");
        assert!(queue.complete(&commit, &Outcome::default(), &[], Vec::new()).await.unwrap());
        queue.done_with(&commit.id);

        let settle = queue.claim(Stage::Transfer, &limits).await.unwrap().expect("the Settle, with only a younger transfer left");
        assert!(settle_kind(&settle));
    }

    /// Scans wait while too many Settle shards are queued, so directory metadata held back by
    /// a long transfer cannot pile up in the Store.
    #[tokio::test]
    async fn scans_wait_while_settle_shards_pile_up() {
        let store: SharedStore = Arc::new(MemStore::new());
        let lease = store.lease_grant(Duration::from_secs(30)).await.unwrap();
        let queue = ShardQueue::new(store.clone(), "exec-1", "w1", lease);
        let limits = Limits { max_queued_settle_shards: 2, ..Limits::default() };
        // An old transfer, claimed by another agent, holds back two younger Settle shards.
        let old = ShardBody::Transfer { entries: vec![] };
        let old = Shard::new(Shard::child_id("a", 1, 0, &old), old);
        store.put(&queue.keys().queue(&old.id), codec::encode(&old).unwrap(), None).await.unwrap();
        store.put(&queue.keys().claim(&old.id), b"w2#1".to_vec(), None).await.unwrap();
        for seq in 0..2 {
            let body = ShardBody::Settle { dirs: vec![dir("x")] };
            let s = Shard::new(Shard::child_id("b", 2, seq, &body), body);
            store.put(&queue.keys().queue(&s.id), codec::encode(&s).unwrap(), None).await.unwrap();
        }
        let scan = ShardBody::Scan { dirs: vec![] };
        let scan = Shard::new(Shard::child_id("c", 3, 0, &scan), scan);
        store.put(&queue.keys().queue(&scan.id), codec::encode(&scan).unwrap(), None).await.unwrap();
        assert!(queue.claim(Stage::Transfer, &limits).await.unwrap().is_none(), "neither the Settles nor the scan");
        let roomier = Limits { max_queued_settle_shards: 3, ..Limits::default() };
        let got = queue.claim(Stage::Transfer, &roomier).await.unwrap().expect("the scan, below the limit");
        assert_eq!(got.id, scan.id);
        assert_eq!(queue.room_for_scans(&roomier).await.unwrap(), roomier.max_queued_scan_shards as usize - 1);
    }

    /// The path behind the hang after etcd outages: the claim transaction is applied but its
    /// answer is lost, so the claimer thinks it claimed nothing while its live lease holds the
    /// claim. The claim must be gone when `claim` returns, before any later claim round.
    #[tokio::test]
    async fn a_claim_whose_answer_was_lost_is_released_before_claim_returns() {
        let mem: SharedStore = Arc::new(MemStore::new());
        let lossy = Arc::new(ferry_common::testing::LossyStore::new(mem));
        let store: SharedStore = lossy.clone();
        let lease = store.lease_grant(Duration::from_secs(30)).await.unwrap();
        let queue = ShardQueue::new(store.clone(), "exec-1", "w1", lease);
        let shard = transfer_shard(1);
        store.put(&queue.keys().queue(&shard.id), codec::encode(&shard).unwrap(), None).await.unwrap();
        let claim_key = queue.keys().claim(&shard.id);
        let (key, mut lost) = (claim_key.clone(), false);
        lossy.lose_answers(move |txn| {
            let claims = txn.success.iter().any(|op| matches!(op, TxnOp::Put { key: k, lease: Some(_), .. } if *k == key));
            let lose = claims && !lost;
            lost |= lose;
            lose
        });

        let err = queue.claim(Stage::Transfer, &Limits::default()).await.expect_err("the claim's answer is lost");
        assert!(matches!(err, QueueError::Store(StoreError::Unavailable(_))), "{err}");
        assert!(store.get(&claim_key).await.unwrap().is_none(), "a claim nobody runs is left under a live lease");
        assert!(queue.held.lock().unwrap().is_empty());

        let again = queue.claim(Stage::Transfer, &Limits::default()).await.unwrap().expect("the shard is claimable again");
        assert_eq!(again.id, shard.id);
    }

    #[tokio::test]
    async fn a_claim_of_ours_that_no_mover_runs_is_given_back_and_claimed_again() {
        let store: SharedStore = Arc::new(MemStore::new());
        let lease = store.lease_grant(Duration::from_secs(30)).await.unwrap();
        let queue = ShardQueue::new(store.clone(), "exec-1", "w1", lease);
        let (a, b) = (transfer_shard(1), transfer_shard(2));
        for s in [&a, &b] {
            store.put(&queue.keys().queue(&s.id), codec::encode(s).unwrap(), None).await.unwrap();
        }
        // A mover runs one shard; the other shard's claim names us too, as after a restore
        // from a backup taken while we held it.
        let running = queue.claim(Stage::Transfer, &Limits::default()).await.unwrap().expect("a shard to claim");
        let orphan = if running.id == a.id { &b } else { &a };
        store.put(&queue.keys().claim(&orphan.id), queue.holder.clone(), Some(lease)).await.unwrap();

        let again = queue.claim(Stage::Transfer, &Limits::default()).await.unwrap().expect("the orphan is given back and claimed");
        assert_eq!(again.id, orphan.id);
        let held = store.get(&queue.keys().claim(&running.id)).await.unwrap().expect("the running shard keeps its claim");
        assert_eq!(held.value, queue.holder);

        // Another agent's claim, and ours while a mover runs it, are never touched.
        let other = transfer_shard(3);
        store.put(&queue.keys().queue(&other.id), codec::encode(&other).unwrap(), None).await.unwrap();
        store.put(&queue.keys().claim(&other.id), b"w2#1".to_vec(), None).await.unwrap();
        assert!(queue.claim(Stage::Transfer, &Limits::default()).await.unwrap().is_none());
        assert!(store.get(&queue.keys().claim(&other.id)).await.unwrap().is_some());
        assert!(store.get(&queue.keys().claim(&again.id)).await.unwrap().is_some());
    }
}
