//! The control plane: tasks, schedules, queued executions, events and task reports.
//!
//! Everything lives in the Store (keys in [`ferry_common::keys`]), so the HTTP API of any
//! coordinator can serve requests and the leader alone acts on schedules and queues
//! ([`ControlPlane::tick`]). Every decision that must happen once (fire a schedule slot,
//! launch a queued execution, count an execution's outcome) is a compare-and-swap
//! transaction, so a leader change in the middle repeats nothing.
//!
//! Decision logic is pure and lives elsewhere: when a schedule fires in
//! [`ferry_common::schedule`], which queued executions may launch in [`queue`].

pub mod metrics;
pub mod queue;
pub mod report;

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use ferry_common::codec;
use ferry_common::keys::{self, ExecKeys};
use ferry_common::model::WorkerInfo;
use ferry_common::model::{AgentStatus, Execution, Phase};
use ferry_common::schedule::{self, arm_key, CronSchedule, Decision, FirePolicy, ScheduleState};
use ferry_common::store::{Compare, KeyValue, RangeOptions, SharedStore, StoreError, Txn, TxnOp};
use ferry_common::task::{Event, ExecSettings, FieldError, SchedulePolicy, ScheduleStatus, StartOverrides, Task, TaskUpdate};

use crate::driver::{phase_event, DriverError, Reconciler};

pub use crate::driver::{Clock, SystemClock};

/// A clock that moves only when told to.
#[derive(Default)]
pub struct ManualClock(AtomicU64);

impl ManualClock {
    pub fn new(ms: u64) -> Self {
        ManualClock(AtomicU64::new(ms))
    }
    pub fn set(&self, ms: u64) {
        self.0.store(ms, Ordering::SeqCst);
    }
    pub fn advance(&self, ms: u64) {
        self.0.fetch_add(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

pub struct ControlConfig {
    pub schedule: SchedulePolicy,
    pub fire: FirePolicy,
    /// Ended executions and events older than this are deleted.
    pub history_days: u32,
    /// Events are POSTed here as JSON, at least once each, in order.
    pub webhook: Option<String>,
    /// Where report lines wait before an S3 report destination gets them (shared with the
    /// workers in a cluster). Without it, S3 report destinations are refused.
    pub report_work_dir: Option<PathBuf>,
    pub clock: Arc<dyn Clock>,
    /// How often the leader reconciles each running execution. Every stage change waits for
    /// one round, so a single host running small jobs wants it short.
    pub reconcile_every: std::time::Duration,
    /// What API tasks may name (`[coordinator] allowed_roots`); empty: anything.
    pub allowed_roots: Vec<String>,
}

impl Default for ControlConfig {
    fn default() -> Self {
        ControlConfig {
            schedule: SchedulePolicy::default(),
            fire: FirePolicy::default(),
            history_days: 30,
            webhook: None,
            report_work_dir: None,
            clock: Arc::new(SystemClock),
            reconcile_every: std::time::Duration::from_millis(50),
            allowed_roots: Vec::new(),
        }
    }
}

impl ControlConfig {
    pub fn reconcile_every(&self) -> std::time::Duration {
        self.reconcile_every
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error(transparent)]
    Field(#[from] FieldError),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Store(String),
}

impl From<StoreError> for ControlError {
    fn from(e: StoreError) -> Self {
        ControlError::Store(e.to_string())
    }
}
impl From<DriverError> for ControlError {
    fn from(e: DriverError) -> Self {
        ControlError::Store(e.to_string())
    }
}
impl From<codec::CodecError> for ControlError {
    fn from(e: codec::CodecError) -> Self {
        ControlError::Store(format!("corrupt value in the coordination store: {e}"))
    }
}

pub type Result<T, E = ControlError> = std::result::Result<T, E>;

/// The leader's memory between ticks; rebuilt from scratch after a leader change.
#[derive(Default)]
pub struct LeaderState {
    known_agents: Option<BTreeSet<String>>,
    last_purge_ms: u64,
    webhook_backoff_until_ms: u64,
}

pub struct ControlPlane {
    store: SharedStore,
    pub cfg: ControlConfig,
    /// How an https:// webhook is verified [default: this host's trust store].
    webhook_tls: Option<Arc<rustls::ClientConfig>>,
}

fn decode_kv<T: serde::de::DeserializeOwned>(kv: &KeyValue) -> Result<T> {
    Ok(codec::decode(&kv.value)?)
}

fn event_op(ev: &Event) -> Result<TxnOp> {
    Ok(TxnOp::put(ev.key(), codec::encode(ev)?))
}

/// A queue position: milliseconds with 20 bits of sequence below them, strictly increasing
/// within this process, so executions queued in one millisecond keep their order.
fn next_queue_position(now_ms: u64) -> u64 {
    static LAST: AtomicU64 = AtomicU64::new(0);
    let mut prev = LAST.load(Ordering::SeqCst);
    loop {
        let next = (now_ms << 20).max(prev + 1);
        match LAST.compare_exchange(prev, next, Ordering::SeqCst, Ordering::SeqCst) {
            Ok(_) => return next,
            Err(p) => prev = p,
        }
    }
}

/// The execution id in a `pending/{ms}-{exec}` key.
fn pending_exec(key: &[u8]) -> String {
    let last = keys::exec_of(key);
    last.split_once('-').map(|(_, e)| e.to_string()).unwrap_or(last)
}

impl ControlPlane {
    pub fn new(store: SharedStore, cfg: ControlConfig) -> Self {
        ControlPlane { store, cfg, webhook_tls: None }
    }

    /// Verify an https:// webhook receiver with `tls` (e.g. one trusting `--webhook-cacert`).
    pub fn with_webhook_tls(mut self, tls: Arc<rustls::ClientConfig>) -> Self {
        self.webhook_tls = Some(tls);
        self
    }

    pub fn store(&self) -> &SharedStore {
        &self.store
    }

    /// The clock schedules and history retention follow (a test's clock in tests).
    fn now(&self) -> u64 {
        self.cfg.clock.now_ms()
    }

    /// Wall time, for what records carry (phases, events, queue order).
    fn wall(&self) -> u64 {
        schedule::now_ms()
    }

    async fn event(&self, ev: Event) {
        tracing::info!(kind = %ev.kind, task = ev.task.as_deref().unwrap_or(""), execution = ev.execution.as_deref().unwrap_or(""), agent = ev.agent.as_deref().unwrap_or(""), "{}", ev.message);
        let put = async { self.store.put(&ev.key(), codec::encode(&ev)?, None).await.map_err(ControlError::from) };
        if let Err(e) = put.await {
            tracing::warn!(error = %e, "cannot record event");
        }
    }

    fn no_report_work_dir(&self) -> ControlError {
        FieldError::unprocessable(
            "TaskReportConfig.Destination",
            "an S3 report destination needs the coordinator's --report-work-dir (a directory the workers and coordinators share, where report lines wait for the upload)",
        )
        .into()
    }

    /// Checks what depends on this coordinator's configuration rather than on the task alone.
    fn check_task_here(&self, task: &Task) -> Result<()> {
        task.check_roots(&self.cfg.allowed_roots)?;
        task.check_local_files()?;
        if let Some(r) = &task.task_report_config {
            if report::work_dir(&r.destination, self.cfg.report_work_dir.as_deref()).is_none() {
                return Err(self.no_report_work_dir());
            }
        }
        Ok(())
    }

    // ----- tasks -----

    pub async fn create_task(&self, mut task: Task) -> Result<Task> {
        task.validate(&self.cfg.schedule)?;
        self.check_task_here(&task)?;
        task.created_unix_ms = self.wall();
        let key = keys::task(&task.name);
        let ev = Event::new(self.wall(), "TaskCreated", format!("{} -> {}", task.source_location, task.destination_location)).task(&task.name);
        let txn = Txn::new().when([Compare::absent(key.clone())]).and_then([TxnOp::put(key, codec::encode(&task)?), event_op(&ev)?]);
        if !self.store.txn(txn).await?.succeeded {
            return Err(ControlError::Conflict(format!("task {} already exists (update it with PATCH, or choose another name)", task.name)));
        }
        Ok(task)
    }

    async fn task_kv(&self, name: &str) -> Result<(Task, i64)> {
        let kv =
            self.store.get(&keys::task(name)).await?.ok_or_else(|| ControlError::NotFound(format!("no task {name} (list tasks with `ferry task list`)")))?;
        Ok((decode_kv(&kv)?, kv.mod_revision))
    }

    pub async fn get_task(&self, name: &str) -> Result<Task> {
        Ok(self.task_kv(name).await?.0)
    }

    pub async fn list_tasks(&self) -> Result<Vec<Task>> {
        let r = self.store.range(&keys::tasks(), RangeOptions::default()).await?;
        r.kvs.iter().map(decode_kv).collect()
    }

    pub async fn update_task(&self, name: &str, update: TaskUpdate) -> Result<Task> {
        let (mut task, rev) = self.task_kv(name).await?;
        let schedule_changed = update.schedule.is_some();
        task.apply(update);
        if schedule_changed {
            if let Some(s) = task.schedule.as_mut() {
                // A user writing the schedule takes over from ferry's auto-disable.
                if s.status == ScheduleStatus::Enabled {
                    s.disabled_reason = None;
                    s.disabled_by = None;
                } else if s.disabled_by.is_none() {
                    s.disabled_by = Some("USER".into());
                }
            }
        }
        task.validate(&self.cfg.schedule)?;
        self.check_task_here(&task)?;
        let ev = Event::new(self.wall(), "TaskUpdated", "task updated").task(name);
        let mut ops = vec![TxnOp::put(keys::task(name), codec::encode(&task)?), event_op(&ev)?];
        if schedule_changed {
            // Failures counted under the old schedule do not count against the new one.
            ops.push(TxnOp::delete(keys::sched(name)));
        }
        let txn = Txn::new().when([Compare::mod_revision_is(keys::task(name), rev)]).and_then(ops);
        if !self.store.txn(txn).await?.succeeded {
            return Err(ControlError::Conflict(format!("task {name} changed while it was being updated; retry")));
        }
        Ok(task)
    }

    pub async fn delete_task(&self, name: &str) -> Result<()> {
        let (_, rev) = self.task_kv(name).await?;
        if let Some(e) = self.unfinished_executions().await?.into_iter().find(|e| e.spec.task.as_deref() == Some(name)) {
            return Err(ControlError::Conflict(format!(
                "task {name} has execution {} in {}; cancel it first (`ferry exec cancel {}`)",
                e.spec.id,
                e.phase.as_str(),
                e.spec.id
            )));
        }
        let ev = Event::new(self.wall(), "TaskDeleted", "task deleted").task(name);
        let txn = Txn::new().when([Compare::mod_revision_is(keys::task(name), rev)]).and_then([
            TxnOp::delete(keys::task(name)),
            TxnOp::delete(keys::sched(name)),
            event_op(&ev)?,
        ]);
        if !self.store.txn(txn).await?.succeeded {
            return Err(ControlError::Conflict(format!("task {name} changed while it was being deleted; retry")));
        }
        Ok(())
    }

    // ----- executions -----

    /// Queued and running executions (not yet ended).
    async fn unfinished_executions(&self) -> Result<Vec<Execution>> {
        let mut ids: Vec<String> = Vec::new();
        for kv in self.store.range(&keys::pending_prefix(), RangeOptions { keys_only: true, ..Default::default() }).await?.kvs {
            ids.push(pending_exec(&kv.key));
        }
        for kv in self.store.range(&keys::active_prefix(), RangeOptions { keys_only: true, ..Default::default() }).await?.kvs {
            ids.push(keys::exec_of(&kv.key));
        }
        let mut out = Vec::new();
        for id in ids {
            if let Some(e) = self.read_execution(&id).await? {
                if !e.phase.is_terminal() {
                    out.push(e);
                }
            }
        }
        Ok(out)
    }

    pub async fn read_execution(&self, id: &str) -> Result<Option<Execution>> {
        match self.store.get(&ExecKeys::new(id).meta()).await? {
            Some(kv) => Ok(Some(decode_kv(&kv)?)),
            None => Ok(None),
        }
    }

    pub async fn get_execution(&self, id: &str) -> Result<Execution> {
        self.read_execution(id).await?.ok_or_else(|| ControlError::NotFound(format!("no execution {id} (list them with `ferry exec list`)")))
    }

    pub async fn list_executions(&self, task: Option<&str>) -> Result<Vec<Execution>> {
        let r = self.store.range(&keys::index_prefix(), RangeOptions { keys_only: true, ..Default::default() }).await?;
        let mut out = Vec::new();
        for kv in r.kvs {
            if let Some(e) = self.read_execution(&keys::exec_of(&kv.key)).await? {
                if task.is_none() || e.spec.task.as_deref() == task {
                    out.push(e);
                }
            }
        }
        out.sort_by(|a, b| (a.started_unix_ms, &a.spec.id).cmp(&(b.started_unix_ms, &b.spec.id)));
        Ok(out)
    }

    /// The writes that queue a new execution of `task`.
    fn queue_ops(&self, task: &Task, overrides: &StartOverrides, slot: Option<u64>) -> Result<(Execution, Vec<TxnOp>)> {
        let now = self.wall();
        let position = next_queue_position(now);
        // Ids sort like queue positions; the random tail keeps two coordinators apart.
        let id = format!("exec-{position:016x}{:04x}", rand::random::<u16>());
        let mut spec = task.execution_spec(&id, overrides)?;
        // The execution's trace: the API request's, else (a schedule, the console) its own.
        spec.trace_parent = ferry_common::traces::current_traceparent().or_else(|| {
            let what = if slot.is_some() { "scheduled start" } else { "start" };
            ferry_common::traces::traceparent_of(&tracing::info_span!("start", otel.name = what, task = %task.name))
        });
        if let Some(r) = &task.task_report_config {
            let dir = report::work_dir(&r.destination, self.cfg.report_work_dir.as_deref()).ok_or_else(|| self.no_report_work_dir())?;
            spec.report_file = Some(dir.join(format!("{id}.jsonl")).to_string_lossy().into_owned());
            spec.report_lines = report::lines_for(r);
        }
        let mut exec = Reconciler::queued(spec, now).exec;
        exec.task_run.scheduled_slot_ms = slot;
        exec.task_run.report = task.task_report_config.clone();
        exec.task_run.queueing = task.queueing();
        exec.task_run.queue_position = Some(position);
        let how = match slot {
            Some(s) => format!("queued by its schedule (slot {s})"),
            None => "queued".to_string(),
        };
        let ev = Event::new(now, "ExecutionQueued", how).task(&task.name).execution(&id);
        let meta = ExecKeys::new(&id).meta();
        let ops = vec![
            TxnOp::put(meta, codec::encode(&exec)?),
            TxnOp::put(keys::index(&id), Vec::new()),
            TxnOp::put(keys::pending(position, &id), Vec::new()),
            event_op(&ev)?,
        ];
        Ok((exec, ops))
    }

    async fn refuse_if_running(&self, task: &Task) -> Result<()> {
        if task.queueing() {
            return Ok(());
        }
        if let Some(e) = self.unfinished_executions().await?.into_iter().find(|e| e.spec.task.as_deref() == Some(task.name.as_str())) {
            return Err(ControlError::Conflict(format!(
                "task {} is already running (execution {}, {}) and its TaskQueueing is DISABLED; wait, cancel it, or enable TaskQueueing",
                task.name,
                e.spec.id,
                e.phase.as_str()
            )));
        }
        Ok(())
    }

    /// Starts an execution of a task now: it is QUEUED, and the leader launches it when
    /// TaskQueueing allows.
    pub async fn start_task(&self, name: &str, overrides: StartOverrides) -> Result<Execution> {
        let (task, rev) = self.task_kv(name).await?;
        self.refuse_if_running(&task).await?;
        let (exec, ops) = self.queue_ops(&task, &overrides, None)?;
        let txn = Txn::new().when([Compare::mod_revision_is(keys::task(name), rev)]).and_then(ops);
        if !self.store.txn(txn).await?.succeeded {
            return Err(ControlError::Conflict(format!("task {name} changed while starting it; retry")));
        }
        Ok(exec)
    }

    /// Cancels an execution in any phase: a queued one ends at once; a running one ends when
    /// the leader next reconciles it and its workers stop.
    pub async fn cancel_execution(&self, id: &str) -> Result<Execution> {
        for _ in 0..5 {
            let kv = self
                .store
                .get(&ExecKeys::new(id).meta())
                .await?
                .ok_or_else(|| ControlError::NotFound(format!("no execution {id} (list them with `ferry exec list`)")))?;
            let mut exec: Execution = decode_kv(&kv)?;
            if exec.phase.is_terminal() {
                return Err(ControlError::Conflict(format!("execution {id} already ended ({})", exec.phase.as_str())));
            }
            if exec.phase != Phase::Queued {
                self.store.put(&ExecKeys::new(id).cancel(), Vec::new(), None).await?;
                return Ok(exec);
            }
            let now = self.wall();
            exec.error = Some("cancelled while queued".into());
            exec.set_phase(Phase::Cancelled, now);
            exec.finished_unix_ms = Some(now);
            let mut ops =
                vec![TxnOp::put(ExecKeys::new(id).meta(), codec::encode(&exec)?), phase_event(&exec, now)?, TxnOp::put(keys::finished(id), Vec::new())];
            ops.extend(exec.task_run.queue_position.map(|pos| TxnOp::delete(keys::pending(pos, id))));
            let txn = Txn::new().when([Compare::mod_revision_is(ExecKeys::new(id).meta(), kv.mod_revision)]).and_then(ops);
            if self.store.txn(txn).await?.succeeded {
                return Ok(exec);
            }
            // Launched meanwhile: cancel it the running way.
        }
        Err(ControlError::Conflict(format!("execution {id} kept changing while cancelling it; retry")))
    }

    /// Changes BytesPerSecond of an unfinished execution; agents apply it within seconds.
    pub async fn set_bytes_per_second(&self, id: &str, bytes_per_second: i64) -> Result<Execution> {
        if bytes_per_second != -1 && bytes_per_second < 1 {
            return Err(FieldError::invalid("BytesPerSecond", format!("{bytes_per_second} is not a rate: give -1 (unlimited) or a positive number")).into());
        }
        let exec = self.get_execution(id).await?;
        if exec.phase.is_terminal() {
            return Err(ControlError::Conflict(format!("execution {id} already ended ({})", exec.phase.as_str())));
        }
        let settings = ExecSettings { bytes_per_second: bytes_per_second.max(0) as u64 };
        let mut ev = Event::new(self.wall(), "ExecutionUpdated", format!("BytesPerSecond={bytes_per_second}")).execution(id);
        if let Some(t) = &exec.spec.task {
            ev = ev.task(t);
        }
        let txn = Txn::new()
            .when([Compare::present(ExecKeys::new(id).meta())])
            .and_then([TxnOp::put(ExecKeys::new(id).settings(), codec::encode(&settings)?), event_op(&ev)?]);
        self.store.txn(txn).await?;
        Ok(exec)
    }

    pub async fn list_events(&self, after: Option<&str>, limit: usize) -> Result<Vec<(String, Event)>> {
        let start_after = after.map(|a| {
            let mut k = keys::events();
            k.extend_from_slice(a.as_bytes());
            k
        });
        let r = self.store.range(&keys::events(), RangeOptions { limit, start_after, keys_only: false }).await?;
        r.kvs.iter().map(|kv| Ok((keys::exec_of(&kv.key), decode_kv(kv)?))).collect()
    }

    /// Whether the Store answers a read within `within`: the coordinator's readiness.
    pub async fn store_answers(&self, within: std::time::Duration) -> std::result::Result<(), String> {
        match tokio::time::timeout(within, self.store.get(&keys::workers())).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("the coordination Store did not answer within {} s", within.as_secs())),
        }
    }

    pub async fn list_agents(&self) -> Result<Vec<WorkerInfo>> {
        let r = self.store.range(&keys::workers(), RangeOptions::default()).await?;
        r.kvs.iter().map(decode_kv).collect()
    }

    /// Every agent ever seen (within the history retention), ONLINE or OFFLINE.
    pub async fn list_agent_statuses(&self) -> Result<Vec<AgentStatus>> {
        Ok(crate::cluster::list_agents(&self.store).await?)
    }

    // ----- the leader's work -----

    /// One round of the leader's control work. Each part logs and carries on when the Store
    /// hiccups; the next tick retries.
    pub async fn tick(&self, st: &mut LeaderState) {
        if let Err(e) = self.fire_schedules().await {
            tracing::warn!(error = %e, "schedules: retrying next tick");
        }
        if let Err(e) = self.launch_queued().await {
            tracing::warn!(error = %e, "queued executions: retrying next tick");
        }
        if let Err(e) = self.handle_finished().await {
            tracing::warn!(error = %e, "finished executions: retrying next tick");
        }
        if let Err(e) = self.watch_agents(st).await {
            tracing::warn!(error = %e, "agents: retrying next tick");
        }
        let now = self.wall();
        if now.saturating_sub(st.last_purge_ms) >= 60_000 {
            match self.purge_history().await {
                Ok(()) => st.last_purge_ms = now,
                Err(e) => tracing::warn!(error = %e, "history retention: retrying"),
            }
        }
        if let Some(url) = self.cfg.webhook.clone() {
            if now >= st.webhook_backoff_until_ms {
                if let Err(e) = self.deliver_webhook(&url).await {
                    // The URL's path or query may hold a secret: log its origin only.
                    tracing::warn!(error = %e, webhook = %crate::tls::url_origin(&url), "webhook delivery failed; retrying in 10 s");
                    st.webhook_backoff_until_ms = now + 10_000;
                }
            }
        }
    }

    async fn fire_schedules(&self) -> Result<()> {
        let tasks = self.store.range(&keys::tasks(), RangeOptions::default()).await?;
        for kv in &tasks.kvs {
            let task: Task = decode_kv(kv)?;
            let Some(sched) = task.schedule.clone() else {
                continue;
            };
            let state_kv = self.store.get(&keys::sched(&task.name)).await?;
            let state_rev = state_kv.as_ref().map_or(0, |kv| kv.mod_revision);
            let mut state: ScheduleState = match &state_kv {
                Some(kv) => decode_kv(kv)?,
                None => ScheduleState::default(),
            };
            if sched.status == ScheduleStatus::Disabled {
                continue;
            }
            let cron = match CronSchedule::parse(&sched.schedule_expression, sched.time_zone.as_deref()) {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(task = %task.name, error = %e, "schedule no longer parses; skipping it");
                    continue;
                }
            };
            let key = arm_key(&sched.schedule_expression, sched.time_zone.as_deref());
            let now = self.now();
            let guard = [Compare::mod_revision_is(keys::sched(&task.name), state_rev), Compare::mod_revision_is(keys::task(&task.name), kv.mod_revision)];
            match schedule::decide(&cron, &key, &state, now, &self.cfg.fire) {
                Decision::Wait => {}
                Decision::Arm { next_slot_ms } => {
                    state.armed_for = key;
                    state.next_slot_ms = Some(next_slot_ms);
                    self.store.txn(Txn::new().when(guard).and_then([TxnOp::put(keys::sched(&task.name), codec::encode(&state)?)])).await?;
                }
                Decision::Skip { slot_ms, missed, next_slot_ms } => {
                    state.last_slot_ms = Some(slot_ms);
                    state.next_slot_ms = next_slot_ms;
                    let ev = Event::new(
                        self.wall(),
                        "ScheduleMissed",
                        format!(
                            "{} slot(s) missed while no coordinator led, the latest {}s ago (past the catch-up window); not run",
                            missed + 1,
                            (now - slot_ms) / 1000
                        ),
                    )
                    .task(&task.name);
                    let txn = Txn::new().when(guard).and_then([TxnOp::put(keys::sched(&task.name), codec::encode(&state)?), event_op(&ev)?]);
                    self.store.txn(txn).await?;
                }
                Decision::Fire { slot_ms, missed, next_slot_ms } => {
                    state.last_slot_ms = Some(slot_ms);
                    state.next_slot_ms = next_slot_ms;
                    let mut ops = vec![TxnOp::put(keys::sched(&task.name), codec::encode(&state)?)];
                    let note = if missed > 0 { format!(" ({missed} earlier missed slot(s) coalesced into this run)") } else { String::new() };
                    let running = if task.queueing() {
                        None
                    } else {
                        self.unfinished_executions().await?.into_iter().find(|e| e.spec.task.as_deref() == Some(task.name.as_str()))
                    };
                    let ev = match running {
                        Some(r) => Event::new(
                            self.wall(),
                            "ScheduleSkipped",
                            format!("slot {slot_ms} not run: execution {} is still running and TaskQueueing is DISABLED", r.spec.id),
                        )
                        .task(&task.name),
                        None => {
                            let (exec, queue) = self.queue_ops(&task, &StartOverrides::default(), Some(slot_ms))?;
                            ops.extend(queue);
                            Event::new(self.wall(), "ScheduleFired", format!("slot {slot_ms} started execution {}{note}", exec.spec.id))
                                .task(&task.name)
                                .execution(&exec.spec.id)
                        }
                    };
                    ops.push(event_op(&ev)?);
                    if self.store.txn(Txn::new().when(guard).and_then(ops)).await?.succeeded {
                        tracing::info!(task = %task.name, slot = slot_ms, "{}", ev.message);
                    }
                }
            }
        }
        Ok(())
    }

    async fn launch_queued(&self) -> Result<()> {
        let pending = self.store.range(&keys::pending_prefix(), RangeOptions { keys_only: true, ..Default::default() }).await?;
        if pending.kvs.is_empty() {
            return Ok(());
        }
        let agents = self.list_agents().await?;
        let item = |e: &Execution| queue::QueueItem {
            exec: e.spec.id.clone(),
            task: e.spec.task.clone().unwrap_or_else(|| format!("(no task) {}", e.spec.id)),
            queueing: e.task_run.queueing,
            agents: agents
                .iter()
                .filter(|w| {
                    let r = e.spec.link.reach(&w.name, &w.labels);
                    r.source || r.destination
                })
                .map(|w| w.name.clone())
                .collect(),
        };
        let mut running = Vec::new();
        for kv in self.store.range(&keys::active_prefix(), RangeOptions { keys_only: true, ..Default::default() }).await?.kvs {
            if let Some(e) = self.read_execution(&keys::exec_of(&kv.key)).await? {
                if !e.phase.is_terminal() {
                    running.push(item(&e));
                }
            }
        }
        let mut queued = Vec::new();
        let mut by_id: HashMap<String, (Vec<u8>, Execution, i64)> = HashMap::new();
        for kv in &pending.kvs {
            let id = pending_exec(&kv.key);
            let Some(meta) = self.store.get(&ExecKeys::new(&id).meta()).await? else {
                // A queued execution whose record is gone (purged): drop the stale entry.
                self.store.delete(&kv.key).await?;
                continue;
            };
            let exec: Execution = decode_kv(&meta)?;
            if exec.phase != Phase::Queued {
                self.store.delete(&kv.key).await?;
                continue;
            }
            queued.push(item(&exec));
            by_id.insert(id, (kv.key.clone(), exec, meta.mod_revision));
        }
        for id in queue::launchable(&queued, &running) {
            let Some((pending_key, mut exec, rev)) = by_id.remove(&id) else {
                continue;
            };
            let now = self.wall();
            exec.set_phase(Phase::Launching, now);
            exec.started_unix_ms = now;
            let root = Reconciler { exec: exec.clone() }.root_shard();
            let ek = ExecKeys::new(&id);
            let mut ops = vec![
                TxnOp::put(ek.meta(), codec::encode(&exec)?),
                TxnOp::put(ek.queue(&root.id), codec::encode(&root)?),
                TxnOp::put(keys::active(&id), Vec::new()),
                TxnOp::delete(pending_key.clone()),
                phase_event(&exec, now)?,
            ];
            if exec.spec.link.bytes_per_second > 0 {
                ops.push(TxnOp::put(ek.settings(), codec::encode(&ExecSettings { bytes_per_second: exec.spec.link.bytes_per_second })?));
            }
            let txn = Txn::new().when([Compare::mod_revision_is(ek.meta(), rev), Compare::present(pending_key)]).and_then(ops);
            if self.store.txn(txn).await?.succeeded {
                tracing::info!(execution = %id, task = exec.spec.task.as_deref().unwrap_or(""), "ExecutionLaunched");
            }
        }
        Ok(())
    }

    /// Writes reports and folds outcomes into schedules for ended task executions.
    async fn handle_finished(&self) -> Result<()> {
        let finished = self.store.range(&keys::finished_prefix(), RangeOptions { keys_only: true, limit: 50, ..Default::default() }).await?;
        for kv in finished.kvs {
            let id = keys::exec_of(&kv.key);
            let Some(meta) = self.store.get(&ExecKeys::new(&id).meta()).await? else {
                self.store.delete(&kv.key).await?;
                continue;
            };
            let mut exec: Execution = decode_kv(&meta)?;
            let task_name = exec.spec.task.clone().unwrap_or_default();
            let mut ops = vec![TxnOp::delete(kv.key.clone())];
            let mut guards = vec![Compare::mod_revision_is(ExecKeys::new(&id).meta(), meta.mod_revision), Compare::present(kv.key.clone())];
            if let Some(cfg) = exec.task_run.report.clone() {
                if exec.task_run.report_path.is_none() && exec.task_run.report_error.is_none() {
                    let e2 = exec.clone();
                    let written =
                        tokio::task::spawn_blocking(move || report::write_task_report(&e2, &cfg)).await.map_err(|e| ControlError::Store(e.to_string()))?;
                    match written {
                        Ok(path) => {
                            let ev = Event::new(self.wall(), "ReportWritten", path.display().to_string()).task(&task_name).execution(&id);
                            ops.push(event_op(&ev)?);
                            exec.task_run.report_path = Some(path.display().to_string());
                        }
                        Err(e) => {
                            let ev = Event::new(self.wall(), "ReportFailed", format!("cannot write the report: {e}")).task(&task_name).execution(&id);
                            ops.push(event_op(&ev)?);
                            exec.task_run.report_error = Some(e.to_string());
                        }
                    }
                }
            }
            if exec.task_run.scheduled_slot_ms.is_some() && !exec.task_run.outcome_recorded {
                if let Ok((task, task_rev)) = self.task_kv(&task_name).await {
                    let state_kv = self.store.get(&keys::sched(&task_name)).await?;
                    let mut state: ScheduleState = match &state_kv {
                        Some(kv) => decode_kv(kv)?,
                        None => ScheduleState::default(),
                    };
                    guards.push(Compare::mod_revision_is(keys::sched(&task_name), state_kv.as_ref().map_or(0, |kv| kv.mod_revision)));
                    let error = match exec.phase {
                        Phase::Error => Some(exec.error.clone().unwrap_or_else(|| failure_summary(&exec))),
                        _ => None,
                    };
                    // A cancelled run says nothing about the schedule's health.
                    if exec.phase != Phase::Cancelled && schedule::record_outcome(&mut state, error.as_deref(), &self.cfg.fire) {
                        let mut task = task;
                        if let Some(s) = task.schedule.as_mut() {
                            let reason = format!(
                                "disabled after {} consecutive failures with the same error: {}",
                                state.consecutive_failures,
                                error.as_deref().unwrap_or("")
                            );
                            s.status = ScheduleStatus::Disabled;
                            s.disabled_by = Some("SERVICE".into());
                            s.disabled_reason = Some(reason.clone());
                            ops.push(event_op(&Event::new(self.wall(), "ScheduleDisabled", reason).task(&task_name))?);
                        }
                        guards.push(Compare::mod_revision_is(keys::task(&task_name), task_rev));
                        ops.push(TxnOp::put(keys::task(&task_name), codec::encode(&task)?));
                    }
                    ops.push(TxnOp::put(keys::sched(&task_name), codec::encode(&state)?));
                }
                exec.task_run.outcome_recorded = true;
            }
            ops.push(TxnOp::put(ExecKeys::new(&id).meta(), codec::encode(&exec)?));
            if self.store.txn(Txn::new().when(guards).and_then(ops)).await?.succeeded && exec.task_run.report_path.is_some() {
                // The report is in place and recorded: its work file is no longer needed.
                if let Some(work) = &exec.spec.report_file {
                    let _ = std::fs::remove_file(work);
                }
            }
        }
        Ok(())
    }

    async fn watch_agents(&self, st: &mut LeaderState) -> Result<()> {
        let now: BTreeSet<String> = self.list_agents().await?.into_iter().map(|w| w.name).collect();
        if let Some(before) = &st.known_agents {
            for a in now.difference(before) {
                self.event(Event::new(self.wall(), "AgentOnline", "agent registered").agent(a)).await;
            }
            for a in before.difference(&now) {
                self.event(Event::new(self.wall(), "AgentOffline", "agent left or its lease expired").agent(a)).await;
            }
        }
        st.known_agents = Some(now);
        Ok(())
    }

    /// Deletes ended executions and events older than the retention period.
    async fn purge_history(&self) -> Result<()> {
        let cutoff = self.now().saturating_sub(self.cfg.history_days as u64 * 86_400_000);
        let index = self.store.range(&keys::index_prefix(), RangeOptions { keys_only: true, ..Default::default() }).await?;
        for kv in index.kvs {
            let id = keys::exec_of(&kv.key);
            match self.read_execution(&id).await? {
                Some(e) if e.phase.is_terminal() && e.finished_unix_ms.is_some_and(|f| f < cutoff) => {
                    let txn = Txn::new().and_then([TxnOp::DeletePrefix { prefix: ExecKeys::new(&id).all() }, TxnOp::delete(kv.key.clone())]);
                    self.store.txn(txn).await?;
                }
                None => {
                    self.store.delete(&kv.key).await?;
                }
                _ => {}
            }
        }
        // Agents offline for longer than the retention are forgotten. One that comes back at
        // this moment loses its record only until its next heartbeat rewrites it.
        for gone in self.list_agent_statuses().await?.into_iter().filter(|a| !a.online && a.record.heartbeat_unix_ms < cutoff) {
            self.store.delete(&keys::agent_record(&gone.record.info.name)).await?;
        }
        loop {
            let r = self.store.range(&keys::events(), RangeOptions { limit: 200, keys_only: true, ..Default::default() }).await?;
            let old: Vec<TxnOp> = r
                .kvs
                .iter()
                .filter(|kv| keys::exec_of(&kv.key).get(..16).and_then(|ms| ms.parse::<u64>().ok()).is_some_and(|ms| ms < cutoff))
                .map(|kv| TxnOp::delete(kv.key.clone()))
                .collect();
            let full = old.len() == r.kvs.len() && r.more;
            if old.is_empty() {
                return Ok(());
            }
            self.store.txn(Txn::new().and_then(old)).await?;
            if !full {
                return Ok(());
            }
        }
    }

    async fn deliver_webhook(&self, url: &str) -> Result<()> {
        let cursor_key = format!("{}webhook-cursor", keys::ROOT).into_bytes();
        let cursor = self.store.get(&cursor_key).await?.map(|kv| String::from_utf8_lossy(&kv.value).into_owned());
        let events = self.list_events(cursor.as_deref(), 100).await?;
        if events.is_empty() {
            return Ok(());
        }
        let tls = match &self.webhook_tls {
            Some(t) => t.clone(),
            None => crate::tls::client_config("--webhook-cacert", None).map_err(ControlError::Store)?,
        };
        let agent = crate::tls::agent(tls, std::time::Duration::from_secs(5));
        for (key, ev) in events {
            let url = url.to_string();
            let agent = agent.clone();
            let body = serde_json::to_value(&ev).map_err(|e| ControlError::Store(e.to_string()))?;
            let sent = tokio::task::spawn_blocking(move || agent.post(&url).send_json(body).map(|_| ()).map_err(|e| webhook_error(&e)))
                .await
                .map_err(|e| ControlError::Store(e.to_string()))?;
            sent.map_err(ControlError::Store)?;
            self.store.put(&cursor_key, key.into_bytes(), None).await?;
        }
        Ok(())
    }
}

/// A failed delivery in words, without the URL (ureq's own message starts with it).
fn webhook_error(e: &ureq::Error) -> String {
    match e {
        ureq::Error::Status(code, _) => format!("the receiver answered HTTP {code}"),
        ureq::Error::Transport(t) => {
            let mut msg = t.kind().to_string();
            if let Some(m) = t.message() {
                msg = format!("{msg}: {m}");
            }
            if let Some(src) = std::error::Error::source(t) {
                msg = format!("{msg}: {src}");
            }
            msg
        }
    }
}

/// The error a failed execution is known by, for "the same error again": counts and paths
/// vary from run to run, so entry failures all read alike.
fn failure_summary(_exec: &Execution) -> String {
    "some entries failed (see the execution's report)".to_string()
}
