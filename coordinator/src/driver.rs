//! The execution state machine and the reconciler.
//!
//! [`Reconciler`] is pure: it folds shard results into counters and decides, from counts the
//! caller reads and the time it is given, when a stage is over and how the execution ends.
//! [`ExecutionDriver`] feeds it from the Store and writes its decisions back, and appends the
//! report lines that travel with the results to the execution's report. Both see only the
//! Store trait, so the same code drives `ferry copy` on one host and a cluster.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use ferry_common::codec;
use ferry_common::keys::ExecKeys;
use ferry_common::model::{
    Counters, Execution, ExecutionSpec, Mode, PartSet, Phase, ReportChunk, ScanDir, Shard, ShardBody, ShardKind, ShardResult, Stage, VerifyMode,
};
use ferry_common::store::{Compare, RangeOptions, SharedStore, StoreError, Txn, TxnOp};
use ferry_common::task::Event;

use crate::report::ReportFile;

pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// Where time comes from, so tests can run the reconciler and schedules on a clock they
/// control.
pub trait Clock: Send + Sync + 'static {
    fn now_ms(&self) -> u64;
}

pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        now_ms()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("corrupt value in the coordination store: {0}")]
    Codec(#[from] codec::CodecError),
}

/// How many failures the summary keeps; the report file has all of them.
pub const SUMMARY_FAILURES: usize = 20;

/// Pure bookkeeping for one execution.
#[derive(Debug)]
pub struct Reconciler {
    pub exec: Execution,
}

/// What the driver should do after looking at the queue.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Work is still queued in the current stage.
    Wait,
    /// Enter this stage; `seed` is a shard to queue on entry.
    Enter { stage: Stage, seed: Option<ShardBody> },
    /// No work is left: the execution ends in this phase.
    Finish(Phase),
}

impl Reconciler {
    pub fn new(spec: ExecutionSpec, now_ms: u64) -> Self {
        let phase = if spec.mode == Mode::Verify { Phase::Verifying } else { Phase::Preparing };
        Self::in_phase(spec, phase, now_ms)
    }

    /// A task execution waiting for its turn (TaskQueueing), not yet in the Store's frontier.
    pub fn queued(spec: ExecutionSpec, now_ms: u64) -> Self {
        Self::in_phase(spec, Phase::Queued, now_ms)
    }

    fn in_phase(spec: ExecutionSpec, phase: Phase, now_ms: u64) -> Self {
        let stage = if spec.mode == Mode::Verify { Stage::Verify } else { Stage::Transfer };
        let mut exec = Execution {
            spec,
            phase,
            stage,
            listing_done: false,
            counters: Counters::default(),
            started_unix_ms: now_ms,
            finished_unix_ms: None,
            error: None,
            failures: Vec::new(),
            phases: Vec::new(),
            task_run: Default::default(),
            report_bytes: 0,
        };
        exec.set_phase(phase, now_ms);
        Reconciler { exec }
    }

    /// The phase a launched execution works in: PREPARING while listing, or VERIFYING.
    pub fn working_phase(&self) -> Phase {
        if self.exec.spec.mode == Mode::Verify {
            Phase::Verifying
        } else {
            Phase::Preparing
        }
    }

    /// The shard that starts the execution.
    pub fn root_shard(&self) -> Shard {
        let root = ScanDir { path: Vec::new(), cookie: None, after: None, included: false, links: false };
        let body = if self.exec.spec.mode == Mode::Verify { ShardBody::Verify { dirs: vec![root] } } else { ShardBody::Scan { dirs: vec![root] } };
        Shard::new(Shard::child_id(&self.exec.spec.id, 0, 0, &body), body)
    }

    pub fn fold(&mut self, result: &ShardResult) {
        self.exec.counters.add(&result.counters);
        for f in &result.failures {
            if self.exec.failures.len() < SUMMARY_FAILURES {
                self.exec.failures.push(f.clone());
            }
        }
    }

    /// Called with the number of shards still queued in the current stage, the number of
    /// scan shards queued (to know when listing is complete), and the time.
    pub fn next_step(&mut self, queued_in_stage: usize, queued_scans: usize, now_ms: u64) -> Step {
        if self.exec.stage == Stage::Transfer && queued_scans == 0 && !self.exec.listing_done {
            self.exec.listing_done = true;
            if self.exec.phase != Phase::Verifying {
                self.exec.set_phase(Phase::Transferring, now_ms);
            }
        }
        if queued_in_stage > 0 {
            return Step::Wait;
        }
        let mut next = self.exec.stage.next();
        if next == Some(Stage::Verify) && self.exec.spec.options.verify != VerifyMode::PointInTimeConsistent {
            next = None;
        }
        if self.exec.spec.options.dry_run && next == Some(Stage::Verify) {
            next = None;
        }
        match next {
            Some(stage) => {
                self.exec.stage = stage;
                let seed = (stage == Stage::Verify)
                    .then(|| ShardBody::Verify { dirs: vec![ScanDir { path: Vec::new(), cookie: None, after: None, included: false, links: false }] });
                if stage == Stage::Verify {
                    self.exec.set_phase(Phase::Verifying, now_ms);
                }
                Step::Enter { stage, seed }
            }
            None => Step::Finish(self.final_phase()),
        }
    }

    /// SUCCESS only when every prepared entry is accounted for and none failed.
    fn final_phase(&mut self) -> Phase {
        let c = &self.exec.counters;
        // A verify run skips, with a code, what the destination cannot hold.
        let accounted = if self.exec.spec.mode == Mode::Verify {
            c.files_verified + c.files_mismatched + c.files_skipped
        } else {
            c.files_transferred + c.files_skipped + c.files_failed
        };
        if accounted != c.files_prepared {
            self.exec.error = Some(format!(
                "accounting mismatch: {} entries prepared but {accounted} accounted for (this is a bug in ferry; please report it)",
                c.files_prepared
            ));
            return Phase::Error;
        }
        if c.files_failed > 0 || c.files_mismatched > 0 {
            return Phase::Error;
        }
        // Failures without an entry (a flush that failed after renames) also fail the run.
        if !self.exec.failures.is_empty() {
            return Phase::Error;
        }
        Phase::Success
    }
}

/// The event recording that `exec` entered its current phase.
pub fn phase_event(exec: &Execution, now_ms: u64) -> Result<TxnOp, DriverError> {
    let phase = exec.phase;
    let kind = if phase.is_terminal() { "ExecutionFinished" } else { "ExecutionPhase" };
    let mut message = phase.as_str().to_string();
    if let Some(e) = exec.error.as_deref().filter(|_| phase.is_terminal()) {
        message = format!("{message}: {e}");
    }
    let mut ev = Event::new(now_ms, kind, message).execution(&exec.spec.id);
    if let Some(t) = &exec.spec.task {
        ev = ev.task(t);
    }
    Ok(TxnOp::put(ev.key(), codec::encode(&ev)?))
}

/// Drives one execution through the Store.
pub struct ExecutionDriver {
    store: SharedStore,
    keys: ExecKeys,
    pub state: Reconciler,
    meta_revision: i64,
    clock: Arc<dyn Clock>,
    /// The execution's report, opened at the first fold (cut back to what the record says
    /// was folded, so a coordinator that takes over writes each line once).
    report: Option<ReportFile>,
    /// The phase last written, so each phase change is recorded as an event once.
    written_phase: Phase,
    trace: DriveTrace,
}

/// This coordinator's spans of an execution: one for as long as it drives it (under the
/// span that started the execution), and under that one per phase, so a trace shows how long
/// each phase took. A coordinator that takes over starts its own.
struct DriveTrace {
    drive: tracing::Span,
    phase: tracing::Span,
}

impl DriveTrace {
    fn new(spec: &ExecutionSpec, phase: Phase, resumed: bool) -> Self {
        let drive = tracing::debug_span!("drive", otel.name = "coordinate execution", execution = %spec.id, resumed);
        ferry_common::traces::adopt(&drive, spec.trace_parent.as_deref());
        let phase = Self::phase_span(&drive, phase);
        DriveTrace { drive, phase }
    }

    fn phase_span(drive: &tracing::Span, phase: Phase) -> tracing::Span {
        if phase.is_terminal() {
            return tracing::Span::none();
        }
        tracing::debug_span!(parent: drive, "phase", otel.name = phase.as_str())
    }

    /// Ends the current phase's span and starts the next one's.
    fn entered(&mut self, phase: Phase) {
        self.phase = Self::phase_span(&self.drive, phase);
    }
}

/// Done records folded per transaction: each takes two operations (its result and its report
/// lines), which keeps a fold within etcd's 128 operations per transaction.
const FOLD_BATCH: usize = 60;

impl ExecutionDriver {
    /// Writes the execution and its root shard.
    pub async fn start(store: SharedStore, spec: ExecutionSpec) -> Result<Self, DriverError> {
        Self::start_with(store, spec, Arc::new(SystemClock)).await
    }

    /// [`ExecutionDriver::start`] on a given clock.
    pub async fn start_with(store: SharedStore, spec: ExecutionSpec, clock: Arc<dyn Clock>) -> Result<Self, DriverError> {
        let keys = ExecKeys::new(&spec.id);
        let state = Reconciler::new(spec, clock.now_ms());
        let root = state.root_shard();
        let id = state.exec.spec.id.clone();
        let txn = Txn::new().when([Compare::absent(keys.meta())]).and_then([
            TxnOp::put(keys.meta(), codec::encode(&state.exec)?),
            TxnOp::put(keys.queue(&root.id), codec::encode(&root)?),
            TxnOp::put(ferry_common::keys::active(&id), Vec::new()),
            TxnOp::put(ferry_common::keys::index(&id), Vec::new()),
        ]);
        let r = store.txn(txn).await?;
        if !r.succeeded {
            return Err(DriverError::Store(StoreError::Other(format!("execution {id} already exists"))));
        }
        let written_phase = state.exec.phase;
        let trace = DriveTrace::new(&state.exec.spec, written_phase, false);
        Ok(ExecutionDriver { store, keys, state, meta_revision: r.revision, clock, report: None, written_phase, trace })
    }

    /// Picks up a running execution where the previous driver (a failed leader) left it.
    pub async fn resume(store: SharedStore, exec_id: &str, clock: Arc<dyn Clock>) -> Result<Option<Self>, DriverError> {
        let keys = ExecKeys::new(exec_id);
        let Some(kv) = store.get(&keys.meta()).await? else {
            return Ok(None);
        };
        let exec: Execution = codec::decode(&kv.value)?;
        let written_phase = exec.phase;
        let trace = DriveTrace::new(&exec.spec, written_phase, true);
        Ok(Some(ExecutionDriver { store, keys, state: Reconciler { exec }, meta_revision: kv.mod_revision, clock, report: None, written_phase, trace }))
    }

    fn now(&self) -> u64 {
        self.clock.now_ms()
    }

    /// The report, opened and cut back to what was folded; `None` without one, or once it
    /// could not be written (the error is on the execution, and the transfer goes on).
    fn report(&mut self) -> Option<&mut ReportFile> {
        let exec = &mut self.state.exec;
        if self.report.is_none() && exec.task_run.report_error.is_none() {
            if let Some(path) = &exec.spec.report_file {
                match ReportFile::open(std::path::Path::new(path), exec.report_bytes) {
                    Ok(file) => self.report = Some(file),
                    Err(e) => exec.task_run.report_error = Some(format!("cannot write the report {path}: {e} (choose a writable path)")),
                }
            }
        }
        self.report.as_mut()
    }

    /// Appends to the report with `write`; a failure gives the report up and says so.
    fn write_report(&mut self, write: impl FnOnce(&mut ReportFile) -> std::io::Result<u64>) {
        let Some(report) = self.report() else { return };
        let path = report.path().display().to_string();
        match write(report) {
            Ok(len) => self.state.exec.report_bytes = len,
            Err(e) => {
                self.report = None;
                self.state.exec.task_run.report_error = Some(format!("cannot write the report {path}: {e}"));
            }
        }
    }

    async fn write_meta(&mut self, mut extra: Vec<TxnOp>) -> Result<(), DriverError> {
        extra.push(TxnOp::put(self.keys.meta(), codec::encode(&self.state.exec)?));
        let phase = self.state.exec.phase;
        if phase != self.written_phase {
            extra.push(phase_event(&self.state.exec, self.now())?);
            if self.state.exec.spec.log_level != Some(ferry_common::task::LogLevelOpt::Off) {
                tracing::info!(execution = %self.state.exec.spec.id, task = self.state.exec.spec.task.as_deref().unwrap_or(""), phase = phase.as_str(), error = self.state.exec.error.as_deref().unwrap_or(""), "ExecutionPhase");
            }
        }
        let txn = Txn::new().when([Compare::mod_revision_is(self.keys.meta(), self.meta_revision)]).and_then(extra);
        let r = self.store.txn(txn).await?;
        if !r.succeeded {
            return Err(DriverError::Store(StoreError::Other("execution record was changed by someone else; is another coordinator running?".into())));
        }
        self.meta_revision = r.revision;
        if phase != self.written_phase {
            self.trace.entered(phase);
        }
        self.written_phase = phase;
        Ok(())
    }

    /// Folds finished shards' results into the execution's counters, and their report lines
    /// into its report, in batches. The lines are made durable before the fold commits, and
    /// the fold records how long the report now is: lines of a fold that did not commit are
    /// cut off again, so each line is written exactly once.
    async fn fold_results(&mut self) -> Result<(), DriverError> {
        loop {
            let done = self.store.range(&self.keys.done_prefix(), RangeOptions { limit: FOLD_BATCH, ..Default::default() }).await?;
            if done.kvs.is_empty() {
                break;
            }
            let mut deletes = Vec::with_capacity(2 * done.kvs.len());
            let mut lines = Vec::new();
            let before = self.state.exec.clone();
            let results = done.kvs.iter().map(|kv| codec::decode::<ShardResult>(&kv.value)).collect::<Result<Vec<_>, _>>()?;
            // The batch's report chunks are read at once, and only where a result says it has
            // some: one round trip per result, one after another, made the fold slower than a
            // busy cluster's completions (done keys piled up by the thousand).
            let reports: Vec<Vec<u8>> = done.kvs.iter().map(|kv| self.keys.report_of(ExecKeys::shard_of(&kv.key))).collect();
            let store = &self.store;
            let chunks = futures::future::try_join_all(results.iter().zip(&reports).map(|(result, report)| async move {
                match result.report_chunks {
                    Some(0) => Ok(Vec::new()),
                    _ => store.range(report, RangeOptions::default()).await.map(|r| r.kvs),
                }
            }))
            .await?;
            for ((kv, result), (report, chunks)) in done.kvs.iter().zip(&results).zip(reports.into_iter().zip(chunks)) {
                self.state.fold(result);
                for chunk in chunks {
                    lines.extend(codec::decode::<ReportChunk>(&chunk.value)?.entries);
                }
                deletes.push(TxnOp::delete(kv.key.clone()));
                if result.report_chunks != Some(0) {
                    deletes.push(TxnOp::DeletePrefix { prefix: report });
                }
            }
            if !lines.is_empty() {
                self.write_report(|r| r.append(&lines));
            }
            if let Err(e) = self.write_meta(deletes).await {
                // Not folded: the results stay in the Store for the next round (or leader).
                if let Some(report) = self.report.as_mut() {
                    report.cut(before.report_bytes);
                }
                self.state.exec = before;
                return Err(e);
            }
            if !done.more {
                break;
            }
        }
        Ok(())
    }

    /// One reconciliation round: fold finished shards, then advance the stage if its queue
    /// is empty. Returns the execution as it now stands.
    pub async fn step(&mut self) -> Result<&Execution, DriverError> {
        // Store requests and lines of this round belong to the phase it runs in.
        let span = self.trace.phase.clone();
        tracing::Instrument::instrument(self.step_round(), span).await?;
        Ok(&self.state.exec)
    }

    async fn step_round(&mut self) -> Result<(), DriverError> {
        if self.state.exec.phase.is_terminal() {
            return Ok(());
        }
        if self.store.get(&self.keys.cancel()).await?.is_some() {
            self.fold_results().await?;
            self.cancel().await?;
            return Ok(());
        }
        if self.state.exec.phase == Phase::Launching {
            // Launched when a worker first holds or has finished one of its shards.
            let claimed = self.store.count(&self.keys.claim_prefix()).await? + self.store.count(&self.keys.done_prefix()).await?;
            if claimed > 0 {
                let working = self.state.working_phase();
                let now = self.now();
                self.state.exec.set_phase(working, now);
                self.write_meta(Vec::new()).await?;
            } else if let Some(why) = self.no_agent_can_run().await? {
                self.state.exec.error = Some(why);
                self.finish(Phase::Error).await?;
                return Ok(());
            }
        }
        // Count before folding: a completion writes its result and dequeues its shard in one
        // transaction, so once the queue is seen empty every result is already written and the
        // fold below collects all of them. Counting after the fold would let a shard finishing
        // in between dequeue itself unseen and its result would never be folded.
        let stage = self.state.exec.stage;
        let queued = self.store.count(&self.keys.queue_stage(stage)).await?;
        let scans = self.store.count(&self.keys.queue_kind(ShardKind::Scan)).await?;
        self.fold_results().await?;
        let before = (self.state.exec.phase, self.state.exec.listing_done);
        let now = self.now();
        match self.state.next_step(queued, scans, now) {
            Step::Wait => {
                if before != (self.state.exec.phase, self.state.exec.listing_done) {
                    self.write_meta(Vec::new()).await?;
                }
            }
            Step::Enter { seed, .. } => {
                let mut ops = Vec::new();
                if let Some(body) = seed {
                    let shard = Shard::new(Shard::child_id(&format!("{}-verify", self.state.exec.spec.id), 0, 0, &body), body);
                    ops.push(TxnOp::put(self.keys.queue(&shard.id), codec::encode(&shard)?));
                }
                self.write_meta(ops).await?;
            }
            Step::Finish(phase) => self.finish(phase).await?,
        }
        Ok(())
    }

    /// Every registered agent said it cannot take part: the execution cannot run. Returns the
    /// first agent's reason.
    async fn no_agent_can_run(&self) -> Result<Option<String>, DriverError> {
        let errors = self.store.range(&self.keys.agent_errors_prefix(), RangeOptions::default()).await?;
        if errors.kvs.is_empty() {
            return Ok(None);
        }
        let workers = self.store.range(&ferry_common::keys::workers(), RangeOptions { keys_only: true, ..Default::default() }).await?;
        let refused: std::collections::HashSet<String> = errors.kvs.iter().map(|kv| ExecKeys::shard_of(&kv.key).to_string()).collect();
        let all_refused = workers.kvs.iter().all(|kv| refused.contains(ExecKeys::shard_of(&kv.key)));
        if !all_refused {
            return Ok(None);
        }
        Ok(Some(String::from_utf8_lossy(&errors.kvs[0].value).into_owned()))
    }

    async fn finish(&mut self, phase: Phase) -> Result<(), DriverError> {
        if phase != Phase::Success {
            self.abort_uploads().await;
        }
        let now = self.now();
        let before = self.state.exec.clone();
        self.state.exec.set_phase(phase, now);
        self.state.exec.finished_unix_ms = Some(now);
        // The report is complete, its summary last, before the execution is seen to end.
        let summary = crate::report::summary_json(&self.state.exec);
        self.write_report(|r| r.finish(&summary));
        // Only the execution record outlives the run: the frontier keys are gone.
        let mut ops = vec![
            TxnOp::delete(ferry_common::keys::active(&self.state.exec.spec.id)),
            TxnOp::delete(self.keys.cancel()),
            TxnOp::DeletePrefix { prefix: self.keys.queue_prefix() },
            TxnOp::DeletePrefix { prefix: self.keys.claim_prefix() },
            TxnOp::DeletePrefix { prefix: self.keys.links_prefix() },
            TxnOp::DeletePrefix { prefix: self.keys.parts_prefix() },
            TxnOp::delete(self.keys.settings()),
            TxnOp::DeletePrefix { prefix: self.keys.agent_errors_prefix() },
        ];
        if self.state.exec.spec.task.is_some() {
            // The control plane still owes it a report and its schedule's accounting.
            ops.push(TxnOp::put(ferry_common::keys::finished(&self.state.exec.spec.id), Vec::new()));
        }
        ops.push(TxnOp::DeletePrefix { prefix: self.keys.report_prefix() });
        if let Err(e) = self.write_meta(ops).await {
            if let Some(report) = self.report.as_mut() {
                report.cut(before.report_bytes);
            }
            self.state.exec = before;
            return Err(e);
        }
        Ok(())
    }

    /// Aborts the multipart uploads of large files the execution did not finish (cancelled or
    /// failed), so no invisible parts are left to pay for. Best effort: a failure is logged,
    /// and the next run would resume or abort them anyway.
    async fn abort_uploads(&self) {
        let spec = self.state.exec.spec.clone();
        if !ferry_worker::location::is_object_uri(&spec.destination) {
            return;
        }
        let Ok(sets) = self.store.range(&self.keys.parts_prefix(), RangeOptions::default()).await else {
            return;
        };
        let uploads: Vec<(Vec<u8>, String)> =
            sets.kvs.iter().filter_map(|kv| codec::decode::<PartSet>(&kv.value).ok()).filter_map(|set| Some((set.path?, set.upload_id?))).collect();
        if uploads.is_empty() {
            return;
        }
        let aborted = tokio::task::spawn_blocking(move || {
            let dst = ferry_worker::location::open(&spec.destination, &spec)?;
            for (path, id) in &uploads {
                dst.abort_multipart(path, id)?;
            }
            Ok::<usize, ferry_common::error::FerryError>(uploads.len())
        })
        .await;
        match aborted {
            Ok(Ok(n)) => tracing::info!(uploads = n, "aborted the unfinished multipart uploads of the execution"),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "could not abort the execution's unfinished multipart uploads; the next run resumes or aborts them")
            }
            Err(e) => tracing::warn!(error = %e, "aborting multipart uploads failed"),
        }
    }

    /// Marks the execution cancelled; workers stop claiming when they see it.
    pub async fn cancel(&mut self) -> Result<(), DriverError> {
        if !self.state.exec.phase.is_terminal() {
            self.state.exec.error = Some("cancelled".into());
            self.finish(Phase::Cancelled).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_common::model::Options;

    fn spec(mode: Mode, verify: VerifyMode) -> ExecutionSpec {
        ExecutionSpec::new("e1", mode, "/a", "/b", Options { verify, ..Options::default() })
    }

    fn result(prepared: u64, transferred: u64, failed: u64) -> ShardResult {
        ShardResult {
            holder: String::new(),
            counters: Counters { files_prepared: prepared, files_transferred: transferred, files_failed: failed, ..Default::default() },
            failures: vec![],
            report_chunks: Some(0),
        }
    }

    #[test]
    fn stages_advance_only_when_their_queue_is_empty() {
        let mut r = Reconciler::new(spec(Mode::Copy, VerifyMode::OnlyFilesTransferred), 0);
        assert_eq!(r.next_step(5, 2, 1), Step::Wait);
        assert_eq!(r.exec.phase, Phase::Preparing);
        assert_eq!(r.next_step(3, 0, 2), Step::Wait);
        assert_eq!(r.exec.phase, Phase::Transferring, "listing done once no scan shard is queued");
        assert_eq!(r.next_step(0, 0, 3), Step::Enter { stage: Stage::Links, seed: None });
        assert_eq!(r.next_step(0, 0, 3), Step::Enter { stage: Stage::DirMeta, seed: None });
        assert_eq!(r.next_step(0, 0, 3), Step::Finish(Phase::Success), "verify stage skipped without POINT_IN_TIME_CONSISTENT");
    }

    #[test]
    fn point_in_time_consistent_seeds_a_verify_pass() {
        let mut r = Reconciler::new(spec(Mode::Copy, VerifyMode::PointInTimeConsistent), 0);
        r.next_step(0, 0, 3);
        r.next_step(0, 0, 3);
        match r.next_step(0, 0, 3) {
            Step::Enter { stage: Stage::Verify, seed: Some(ShardBody::Verify { .. }) } => {}
            other => panic!("expected a verify stage, got {other:?}"),
        }
        assert_eq!(r.exec.phase, Phase::Verifying);
    }

    #[test]
    fn every_prepared_entry_must_be_accounted_for() {
        let mut r = Reconciler::new(spec(Mode::Copy, VerifyMode::None), 0);
        r.fold(&result(10, 9, 0));
        r.exec.stage = Stage::DirMeta;
        assert_eq!(r.next_step(0, 0, 3), Step::Finish(Phase::Error));
        assert!(r.exec.error.as_deref().unwrap().contains("accounting mismatch"));
    }

    #[test]
    fn failures_end_in_error_and_clean_runs_in_success() {
        let mut r = Reconciler::new(spec(Mode::Copy, VerifyMode::None), 0);
        r.fold(&result(10, 9, 1));
        r.exec.stage = Stage::DirMeta;
        assert_eq!(r.next_step(0, 0, 3), Step::Finish(Phase::Error));
        let mut ok = Reconciler::new(spec(Mode::Copy, VerifyMode::None), 0);
        ok.fold(&result(10, 10, 0));
        ok.exec.stage = Stage::DirMeta;
        assert_eq!(ok.next_step(0, 0, 3), Step::Finish(Phase::Success));
    }
}
