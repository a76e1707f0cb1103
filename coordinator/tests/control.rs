//! The control plane in process, with a clock the tests move: schedules fire once per slot
//! across a leader failover, disable themselves after repeated failures, queued executions
//! run one at a time in order, cancel works in every phase, BytesPerSecond changes reach a
//! running execution, and a manifest restricts transfer and verification.
//!
//! Coordinators and agents are the real ones (`run_coordinator_with`, `run_agent`) over a
//! real etcd for the failover test and a MemStore elsewhere.

mod support;

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use ferry_common::keys;
use ferry_common::model::{Execution, Phase};
use ferry_common::schedule::FirePolicy;
use ferry_common::store::{EtcdStore, MemStore, SharedStore};
use ferry_common::task::{SchedulePolicy, StartOverrides, Task, TaskOptions, TaskUpdate};
use ferry_coordinator::cluster::run_coordinator_with;
use ferry_coordinator::control::{ControlConfig, ControlPlane, LeaderState, ManualClock};
use ferry_worker::agent::{run_agent, AgentConfig};
use serde_json::json;
use support::{scratch, write_file};
use tokio::sync::watch;

/// 2026-01-01T00:00:00Z: slots of an hourly schedule fall on T0 + n hours.
const T0: u64 = 1_767_225_600_000;
const HOUR: u64 = 3_600_000;

fn run<F: Future<Output = ()>>(f: impl FnOnce() -> F) {
    let system = actix_rt::System::with_tokio_rt(|| {
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).max_blocking_threads(32).enable_all().build().unwrap()
    });
    system.block_on(f());
}

fn config(clock: Arc<ManualClock>) -> ControlConfig {
    ControlConfig {
        schedule: SchedulePolicy { min_interval_secs: 60 },
        fire: FirePolicy { catch_up_ms: HOUR, disable_after_failures: 2 },
        history_days: 30,
        webhook: None,
        report_work_dir: None,
        clock,
        reconcile_every: Duration::from_millis(50),
        allowed_roots: Vec::new(),
    }
}

fn task(v: serde_json::Value) -> Task {
    serde_json::from_value(v).expect("a valid task document")
}

struct Daemon {
    stop: watch::Sender<bool>,
    handle: tokio::task::JoinHandle<()>,
}

impl Daemon {
    async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(60), self.handle).await;
    }
    /// A crash: the task is dropped mid-flight; its lease lapses on its own.
    fn crash(self) {
        self.handle.abort();
    }
}

fn coordinator(control: Arc<ControlPlane>, name: &str) -> Daemon {
    let (stop, rx) = watch::channel(false);
    let handle = tokio::spawn(run_coordinator_with(control, name.to_string(), rx));
    Daemon { stop, handle }
}

fn agent(store: &SharedStore, name: &str) -> Daemon {
    let (stop, rx) = watch::channel(false);
    let cfg = AgentConfig {
        name: name.into(),
        movers: 2,
        lease_ttl: Duration::from_secs(10),
        labels: vec![],
        link: None,
        poll: ferry_worker::agent::POLL,
        readiness: Default::default(),
    };
    // Movers are actix actors: the agent runs on the system's own thread.
    let handle = actix_rt::spawn(run_agent(store.clone(), cfg, Arc::new(Default::default()), None, rx));
    Daemon { stop, handle }
}

async fn wait_for<F, Fut>(what: &str, limit: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn executions(ctl: &ControlPlane, name: &str) -> Vec<Execution> {
    ctl.list_executions(Some(name)).await.unwrap()
}

async fn wait_end(ctl: &ControlPlane, id: &str, limit: Duration) -> Execution {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let e = ctl.get_execution(id).await.unwrap();
        if e.phase.is_terminal() {
            return e;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for execution {id} to end (it is {:?})", e.phase);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn wait_phase(ctl: &ControlPlane, id: &str, phases: &[Phase]) {
    wait_for(&format!("execution {id} to reach {phases:?}"), Duration::from_secs(60), || async {
        phases.contains(&ctl.get_execution(id).await.unwrap().phase)
    })
    .await;
}

async fn leader(store: &SharedStore) -> Option<String> {
    store.get(&keys::leader()).await.unwrap().map(|kv| String::from_utf8_lossy(&kv.value).into_owned())
}

fn hourly(name: &str, src: &str, dst: &str) -> Task {
    task(json!({
        "Name": name, "SourceLocation": src, "DestinationLocation": dst,
        "Schedule": {"ScheduleExpression": "0 * * * *"},
    }))
}

fn slots(execs: &[Execution]) -> Vec<u64> {
    let mut s: Vec<u64> = execs.iter().filter_map(|e| e.task_run.scheduled_slot_ms).collect();
    s.sort();
    s
}

#[test]
fn a_schedule_fires_once_per_slot_across_a_leader_failover() {
    let Some(etcd) = ferry_common::testing::EtcdServer::start() else {
        return;
    };
    run(|| async move {
        let connect = || async { Arc::new(EtcdStore::connect(std::slice::from_ref(&etcd.endpoint)).await.unwrap()) as SharedStore };
        let clock = Arc::new(ManualClock::new(T0 + 10 * 60_000));
        let a = Arc::new(ControlPlane::new(connect().await, config(clock.clone())));
        let b = Arc::new(ControlPlane::new(connect().await, config(clock.clone())));
        let store = a.store().clone();
        a.create_task(hourly("nightly", "/srv/ferry-test-src", "/srv/ferry-test-dst")).await.unwrap();

        let coord_a = coordinator(a.clone(), "coord-a");
        wait_for("coord-a to lead", Duration::from_secs(30), || async { leader(&store).await.as_deref() == Some("coord-a") }).await;
        // Armed for 01:00; nothing fires before it.
        tokio::time::sleep(Duration::from_millis(800)).await;
        assert!(executions(&a, "nightly").await.is_empty());

        clock.set(T0 + HOUR + 1_000);
        wait_for("the 01:00 slot to fire", Duration::from_secs(30), || async { !executions(&a, "nightly").await.is_empty() }).await;

        // The leader dies without a word; the standby takes over once its lease lapses.
        let coord_b = coordinator(b.clone(), "coord-b");
        coord_a.crash();
        wait_for("coord-b to lead", Duration::from_secs(30), || async { leader(&store).await.as_deref() == Some("coord-b") }).await;
        // Several control ticks of the new leader, still inside the fired slot.
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(slots(&executions(&b, "nightly").await), vec![T0 + HOUR], "the slot fired exactly once across the failover");

        clock.set(T0 + 2 * HOUR + 500);
        wait_for("the 02:00 slot to fire", Duration::from_secs(30), || async { executions(&b, "nightly").await.len() == 2 }).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(slots(&executions(&b, "nightly").await), vec![T0 + HOUR, T0 + 2 * HOUR]);

        let events = b.list_events(None, 1000).await.unwrap();
        assert_eq!(events.iter().filter(|(_, e)| e.kind == "ScheduleFired").count(), 2, "one ScheduleFired event per slot");
        coord_b.stop().await;
    });
}

#[test]
fn two_leaders_racing_on_one_slot_start_one_execution() {
    run(|| async move {
        let store: SharedStore = Arc::new(MemStore::new());
        let clock = Arc::new(ManualClock::new(T0));
        let a = ControlPlane::new(store.clone(), config(clock.clone()));
        let b = ControlPlane::new(store.clone(), config(clock.clone()));
        a.create_task(hourly("race", "/srv/a", "/srv/b")).await.unwrap();
        let (mut sa, mut sb) = (LeaderState::default(), LeaderState::default());
        a.tick(&mut sa).await; // arms
        for n in 1..=20u64 {
            clock.set(T0 + n * HOUR + 1);
            // Both believe they lead (a stale leader during a failover) and tick at once.
            tokio::join!(a.tick(&mut sa), b.tick(&mut sb));
            a.tick(&mut sa).await;
            b.tick(&mut sb).await;
            let fired = slots(&executions(&a, "race").await);
            assert_eq!(fired, (1..=n).map(|k| T0 + k * HOUR).collect::<Vec<_>>(), "slot {n} fired exactly once");
        }
    });
}

#[test]
fn missed_slots_are_coalesced_or_skipped_by_the_documented_policy() {
    run(|| async move {
        let store: SharedStore = Arc::new(MemStore::new());
        let clock = Arc::new(ManualClock::new(T0));
        let ctl = ControlPlane::new(store.clone(), config(clock.clone()));
        ctl.create_task(hourly("late", "/srv/a", "/srv/b")).await.unwrap();
        ctl.create_task(task(
            json!({"Name": "daily", "SourceLocation": "/srv/c", "DestinationLocation": "/srv/d", "Schedule": {"ScheduleExpression": "0 3 * * *"}}),
        ))
        .await
        .unwrap();
        let mut st = LeaderState::default();
        ctl.tick(&mut st).await;
        // No leader from 00:00 to 05:20. Hourly: slots 01..05 missed, 05:00 is 20 minutes old
        // (inside the one-hour catch-up window): one run for it. Daily: 03:00 is 2h20 old:
        // skipped, and the skip is recorded.
        clock.set(T0 + 5 * HOUR + 20 * 60_000);
        ctl.tick(&mut st).await;
        assert_eq!(slots(&executions(&ctl, "late").await), vec![T0 + 5 * HOUR], "one catch-up run for the latest missed slot");
        assert!(executions(&ctl, "daily").await.is_empty(), "a slot older than the catch-up window is skipped");
        let events = ctl.list_events(None, 1000).await.unwrap();
        assert!(events.iter().any(|(_, e)| e.kind == "ScheduleMissed" && e.task.as_deref() == Some("daily")), "the skip is recorded as an event");
        assert!(events.iter().any(|(_, e)| e.kind == "ScheduleFired" && e.message.contains("4 earlier missed slot(s) coalesced")));
        // The daily schedule carries on at its next slot.
        clock.set(T0 + 27 * HOUR + 1);
        ctl.tick(&mut st).await;
        assert_eq!(slots(&executions(&ctl, "daily").await), vec![T0 + 27 * HOUR]);
    });
}

#[test]
fn a_schedule_disables_itself_after_repeated_identical_failures() {
    run(|| async move {
        let store: SharedStore = Arc::new(MemStore::new());
        let clock = Arc::new(ManualClock::new(T0));
        let ctl = Arc::new(ControlPlane::new(store.clone(), config(clock.clone())));
        let dir = scratch();
        let missing = dir.path().join("no-such-source");
        let dst = dir.path().join("dst");
        ctl.create_task(hourly("broken", missing.to_str().unwrap(), dst.to_str().unwrap())).await.unwrap();
        let coord = coordinator(ctl.clone(), "coord");
        let agent = agent(&store, "agent-1");
        tokio::time::sleep(Duration::from_millis(600)).await;

        for n in 1..=2u64 {
            clock.set(T0 + n * HOUR + 1);
            wait_for("the slot to fire", Duration::from_secs(30), || async { executions(&ctl, "broken").await.len() as u64 == n }).await;
            let e = executions(&ctl, "broken").await.pop().unwrap();
            let end = wait_end(&ctl, &e.spec.id, Duration::from_secs(60)).await;
            assert_eq!(end.phase, Phase::Error);
            assert!(end.error.as_deref().unwrap_or("").contains("no-such-source"), "the error names the missing source: {:?}", end.error);
        }
        wait_for("the schedule to disable itself", Duration::from_secs(30), || async {
            ctl.get_task("broken").await.unwrap().schedule.unwrap().status == ferry_common::task::ScheduleStatus::Disabled
        })
        .await;
        let t = ctl.get_task("broken").await.unwrap();
        let s = t.schedule.clone().unwrap();
        assert_eq!(s.disabled_by.as_deref(), Some("SERVICE"));
        assert!(s.disabled_reason.as_deref().unwrap().contains("2 consecutive failures"), "{:?}", s.disabled_reason);

        clock.set(T0 + 3 * HOUR + 1);
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(executions(&ctl, "broken").await.len(), 2, "a disabled schedule does not fire");
        assert!(ctl.list_events(None, 1000).await.unwrap().iter().any(|(_, e)| e.kind == "ScheduleDisabled"));

        // A user re-enabling it starts the count afresh; it fires again at the next slot.
        let mut sched = t.schedule.clone().unwrap();
        sched.status = ferry_common::task::ScheduleStatus::Enabled;
        ctl.update_task("broken", TaskUpdate { schedule: Some(sched), ..Default::default() }).await.unwrap();
        tokio::time::sleep(Duration::from_millis(600)).await;
        clock.set(T0 + 4 * HOUR + 1);
        wait_for("the re-enabled schedule to fire", Duration::from_secs(30), || async { executions(&ctl, "broken").await.len() == 3 }).await;
        agent.stop().await;
        coord.stop().await;
    });
}

fn tree(root: &Path, files: usize, size: usize) {
    for i in 0..files {
        write_file(&root.join(format!("d{}/f{i}.bin", i % 3)), &support::random_bytes(size));
    }
}

#[test]
fn queued_executions_run_one_at_a_time_in_fifo_order() {
    run(|| async move {
        let store: SharedStore = Arc::new(MemStore::new());
        let clock = Arc::new(ManualClock::new(T0));
        let ctl = Arc::new(ControlPlane::new(store.clone(), config(clock.clone())));
        let dir = scratch();
        let (src, d1, d2) = (dir.path().join("src"), dir.path().join("d1"), dir.path().join("d2"));
        tree(&src, 30, 64 << 10);
        let p = |x: &Path| x.to_str().unwrap().to_string();
        ctl.create_task(task(json!({"Name": "one", "SourceLocation": p(&src), "DestinationLocation": p(&d1)}))).await.unwrap();
        ctl.create_task(task(json!({"Name": "two", "SourceLocation": p(&src), "DestinationLocation": p(&d2)}))).await.unwrap();
        // Queue everything before any coordinator runs, so the order is the queue's alone.
        let mut ids = Vec::new();
        for name in ["one", "two", "one", "two"] {
            ids.push(ctl.start_task(name, StartOverrides::default()).await.unwrap().spec.id);
            clock.advance(1);
        }
        let coord = coordinator(ctl.clone(), "coord");
        let agent = agent(&store, "agent-1");
        let mut ends = Vec::new();
        for id in &ids {
            ends.push(wait_end(&ctl, id, Duration::from_secs(120)).await);
        }
        for e in &ends {
            assert_eq!(e.phase, Phase::Success, "{:?}", e.error);
            let names: Vec<Phase> = e.phases.iter().map(|p| p.phase).collect();
            assert_eq!(&names[..2], &[Phase::Queued, Phase::Launching], "every execution waited in QUEUED and went through LAUNCHING");
        }
        // Tasks "one" and "two" share the only agent: each launch comes after the previous end.
        for w in ends.windows(2) {
            let launched = w[1].phases.iter().find(|p| p.phase == Phase::Launching).unwrap().started_unix_ms;
            assert!(launched >= w[0].finished_unix_ms.unwrap(), "{} launched before {} ended", w[1].spec.id, w[0].spec.id);
        }
        agent.stop().await;
        coord.stop().await;
    });
}

#[test]
fn starting_a_running_task_without_queueing_is_a_conflict() {
    run(|| async move {
        let store: SharedStore = Arc::new(MemStore::new());
        let ctl = ControlPlane::new(store, config(Arc::new(ManualClock::new(T0))));
        let mut t = task(json!({"Name": "solo", "SourceLocation": "/srv/a", "DestinationLocation": "/srv/b"}));
        t.options = TaskOptions { task_queueing: Some(ferry_common::task::TaskQueueingOpt::Disabled), ..Default::default() };
        ctl.create_task(t).await.unwrap();
        ctl.start_task("solo", StartOverrides::default()).await.unwrap();
        let err = ctl.start_task("solo", StartOverrides::default()).await.unwrap_err();
        assert!(matches!(err, ferry_coordinator::control::ControlError::Conflict(_)), "{err}");
        assert!(err.to_string().contains("TaskQueueing"), "{err}");
    });
}

#[test]
fn cancel_works_in_every_phase() {
    run(|| async move {
        // LAUNCHING: no agent exists, so the execution cannot get further.
        {
            let store: SharedStore = Arc::new(MemStore::new());
            let ctl = Arc::new(ControlPlane::new(store.clone(), config(Arc::new(ManualClock::new(T0)))));
            ctl.create_task(task(json!({"Name": "t", "SourceLocation": "/srv/a", "DestinationLocation": "/srv/b"}))).await.unwrap();
            let coord = coordinator(ctl.clone(), "coord");
            let id = ctl.start_task("t", StartOverrides::default()).await.unwrap().spec.id;
            wait_phase(&ctl, &id, &[Phase::Launching]).await;
            ctl.cancel_execution(&id).await.unwrap();
            let end = wait_end(&ctl, &id, Duration::from_secs(30)).await;
            assert_eq!(end.phase, Phase::Cancelled);
            assert_eq!(end.phases.iter().map(|p| p.phase).collect::<Vec<_>>(), vec![Phase::Queued, Phase::Launching, Phase::Cancelled]);
            coord.stop().await;
        }
        // QUEUED, then PREPARING/TRANSFERRING: a slow first execution holds the second in the queue.
        let store: SharedStore = Arc::new(MemStore::new());
        let ctl = Arc::new(ControlPlane::new(store.clone(), config(Arc::new(ManualClock::new(T0)))));
        let dir = scratch();
        let (src, dst) = (dir.path().join("src"), dir.path().join("dst"));
        tree(&src, 12, 1 << 20);
        let p = |x: &Path| x.to_str().unwrap().to_string();
        ctl.create_task(task(json!({"Name": "slow", "SourceLocation": p(&src), "DestinationLocation": p(&dst), "Options": {"BytesPerSecond": 262144}})))
            .await
            .unwrap();
        let coord = coordinator(ctl.clone(), "coord");
        let agent = agent(&store, "agent-1");
        let first = ctl.start_task("slow", StartOverrides::default()).await.unwrap().spec.id;
        let second = ctl.start_task("slow", StartOverrides::default()).await.unwrap().spec.id;
        wait_phase(&ctl, &first, &[Phase::Preparing, Phase::Transferring]).await;
        assert_eq!(ctl.get_execution(&second).await.unwrap().phase, Phase::Queued);
        ctl.cancel_execution(&second).await.unwrap();
        assert_eq!(ctl.get_execution(&second).await.unwrap().phase, Phase::Cancelled, "a queued execution ends at once");
        let running = ctl.get_execution(&first).await.unwrap().phase;
        ctl.cancel_execution(&first).await.unwrap();
        let end = wait_end(&ctl, &first, Duration::from_secs(60)).await;
        assert_eq!(end.phase, Phase::Cancelled, "cancelled while {running:?}");
        assert!(
            matches!(ctl.cancel_execution(&first).await.unwrap_err(), ferry_coordinator::control::ControlError::Conflict(_)),
            "an ended execution cannot be cancelled again"
        );
        // VERIFYING: the driver honours the cancel request in any phase it drives.
        let spec = ferry_common::model::ExecutionSpec { mode: ferry_common::model::Mode::Verify, ..end.spec.clone() };
        let spec = ferry_common::model::ExecutionSpec { id: "verify-run".into(), task: None, log_level: None, ..spec };
        let mut driver = ferry_coordinator::driver::ExecutionDriver::start(store.clone(), spec).await.unwrap();
        assert_eq!(driver.state.exec.phase, Phase::Verifying);
        store.put(&keys::ExecKeys::new("verify-run").cancel(), vec![], None).await.unwrap();
        assert_eq!(driver.step().await.unwrap().phase, Phase::Cancelled);
        agent.stop().await;
        coord.stop().await;
    });
}

/// Lowers BytesPerSecond from 64 KiB/s to unlimited on a running execution, after ending
/// every watch first when `break_watches` (as an etcd restart does), and checks it finishes.
fn a_bytes_per_second_change_arrives(break_watches: bool) {
    run(|| async move {
        let mem = Arc::new(MemStore::new());
        let store: SharedStore = mem.clone();
        let ctl = Arc::new(ControlPlane::new(store.clone(), config(Arc::new(ManualClock::new(T0)))));
        let dir = scratch();
        let (src, dst) = (dir.path().join("src"), dir.path().join("dst"));
        // 24 MiB at 64 KiB/s would take over six minutes; the test waits at most two.
        tree(&src, 6, 4 << 20);
        let p = |x: &Path| x.to_str().unwrap().to_string();
        ctl.create_task(task(json!({"Name": "throttled", "SourceLocation": p(&src), "DestinationLocation": p(&dst), "Options": {"BytesPerSecond": 65536}})))
            .await
            .unwrap();
        let coord = coordinator(ctl.clone(), "coord");
        let agent = agent(&store, "agent-1");
        let id = ctl.start_task("throttled", StartOverrides::default()).await.unwrap().spec.id;
        if break_watches {
            wait_phase(&ctl, &id, &[Phase::Transferring]).await;
            tokio::time::sleep(Duration::from_millis(500)).await;
            // The movers must notice and watch again, or they never hear of the change.
            mem.end_watches();
        } else {
            wait_phase(&ctl, &id, &[Phase::Preparing, Phase::Transferring]).await;
        }
        ctl.set_bytes_per_second(&id, -1).await.unwrap();
        let end = wait_end(&ctl, &id, Duration::from_secs(120)).await;
        assert_eq!(end.phase, Phase::Success, "{:?}", end.error);
        assert_eq!(end.counters.files_transferred, 6 + 3, "six files and their three directories");
        assert!(ctl.list_events(None, 1000).await.unwrap().iter().any(|(_, e)| e.kind == "ExecutionUpdated" && e.message.contains("BytesPerSecond=-1")));
        assert!(matches!(ctl.set_bytes_per_second(&id, 0).await.unwrap_err(), ferry_coordinator::control::ControlError::Field(_)));
        agent.stop().await;
        coord.stop().await;
    });
}

#[test]
fn a_bytes_per_second_change_reaches_a_running_execution() {
    a_bytes_per_second_change_arrives(false);
}

#[test]
fn a_bytes_per_second_change_made_after_the_watches_broke_still_arrives() {
    a_bytes_per_second_change_arrives(true);
}

#[test]
fn a_manifest_restricts_both_transfer_and_verification() {
    run(|| async move {
        let store: SharedStore = Arc::new(MemStore::new());
        let ctl = Arc::new(ControlPlane::new(store.clone(), config(Arc::new(ManualClock::new(T0)))));
        let dir = scratch();
        let (src, dst) = (dir.path().join("src"), dir.path().join("dst"));
        for rel in ["keep/a.txt", "keep/b.txt", "skip/c.txt", "d.txt", "deep/er/e.txt"] {
            write_file(&src.join(rel), rel.as_bytes());
        }
        // Something unlisted and different at the destination: a full verification would
        // report it; a manifest-restricted one must not look at it.
        write_file(&dst.join("skip/c.txt"), b"different");
        let manifest = dir.path().join("manifest.csv");
        write_file(&manifest, b"keep/a.txt\n\"deep/er/e.txt\",v1\n/d.txt\n");
        let p = |x: &Path| x.to_str().unwrap().to_string();
        ctl.create_task(task(json!({
            "Name": "listed", "SourceLocation": p(&src), "DestinationLocation": p(&dst),
            "Manifest": {"Source": p(&manifest)},
            "Options": {"VerifyMode": "POINT_IN_TIME_CONSISTENT"},
        })))
        .await
        .unwrap();
        let coord = coordinator(ctl.clone(), "coord");
        let agent = agent(&store, "agent-1");
        let id = ctl.start_task("listed", StartOverrides::default()).await.unwrap().spec.id;
        let end = wait_end(&ctl, &id, Duration::from_secs(120)).await;
        assert_eq!(end.phase, Phase::Success, "{:?} {:?}", end.error, end.failures);
        assert_eq!(end.counters.files_transferred, 3 + 3, "three listed files and the three directories above them");
        assert_eq!(end.counters.files_mismatched, 0, "the unlisted destination file is outside the verification");
        assert!(end.counters.files_verified >= 3);
        assert!(end.phases.iter().any(|p| p.phase == Phase::Verifying));
        assert!(dst.join("keep/a.txt").exists() && dst.join("deep/er/e.txt").exists() && dst.join("d.txt").exists());
        assert!(!dst.join("keep/b.txt").exists(), "an unlisted file is not transferred");
        assert_eq!(std::fs::read(dst.join("skip/c.txt")).unwrap(), b"different", "an unlisted destination file is left alone");

        // A manifest that names a path outside the source fails the execution, naming the line.
        write_file(&manifest, b"keep/a.txt\n../../etc/passwd\n");
        let id = ctl.start_task("listed", StartOverrides::default()).await.unwrap().spec.id;
        let end = wait_end(&ctl, &id, Duration::from_secs(60)).await;
        assert_eq!(end.phase, Phase::Error);
        assert!(end.error.as_deref().unwrap_or("").contains("line 2"), "{:?}", end.error);
        agent.stop().await;
        coord.stop().await;
    });
}

#[test]
fn task_reports_follow_the_report_configuration() {
    run(|| async move {
        let store: SharedStore = Arc::new(MemStore::new());
        let ctl = Arc::new(ControlPlane::new(store.clone(), config(Arc::new(ManualClock::new(T0)))));
        let dir = scratch();
        let (src, dst, reports) = (dir.path().join("src"), dir.path().join("dst"), dir.path().join("reports"));
        tree(&src, 5, 1000);
        let p = |x: &Path| x.to_str().unwrap().to_string();
        ctl.create_task(task(json!({
            "Name": "reported", "SourceLocation": p(&src), "DestinationLocation": p(&dst),
            "TaskReportConfig": {"Destination": p(&reports), "OutputType": "STANDARD", "ReportLevel": "SUCCESSES_AND_ERRORS"},
        })))
        .await
        .unwrap();
        let coord = coordinator(ctl.clone(), "coord");
        let agent = agent(&store, "agent-1");
        let id = ctl.start_task("reported", StartOverrides::default()).await.unwrap().spec.id;
        wait_end(&ctl, &id, Duration::from_secs(60)).await;
        wait_for("the report", Duration::from_secs(30), || async { ctl.get_execution(&id).await.unwrap().task_run.report_path.is_some() }).await;
        let path = reports.join("reported").join(format!("{id}.jsonl"));
        assert_eq!(ctl.get_execution(&id).await.unwrap().task_run.report_path.as_deref(), Some(path.to_str().unwrap()));
        let lines: Vec<serde_json::Value> = std::fs::read_to_string(&path).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.iter().filter(|l| l["type"] == "entry" && l["status"] == "transferred" && l["kind"] == "file").count(), 5);
        assert_eq!(lines.last().unwrap()["type"], "summary");

        // ERRORS_ONLY on a clean run: just the summary.
        ctl.update_task(
            "reported",
            TaskUpdate {
                task_report_config: Some(serde_json::from_value(json!({"Destination": p(&reports), "ReportLevel": "ERRORS_ONLY"})).unwrap()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
        std::fs::write(src.join("new.txt"), b"x").unwrap();
        let id = ctl.start_task("reported", StartOverrides::default()).await.unwrap().spec.id;
        wait_end(&ctl, &id, Duration::from_secs(60)).await;
        wait_for("the report", Duration::from_secs(30), || async { ctl.get_execution(&id).await.unwrap().task_run.report_path.is_some() }).await;
        let text = std::fs::read_to_string(reports.join("reported").join(format!("{id}.jsonl"))).unwrap();
        assert_eq!(text.lines().count(), 1, "only the summary: {text}");
        assert!(std::fs::read_dir(reports.join(".ferry-work")).unwrap().next().is_none(), "work files are cleaned up");
        agent.stop().await;
        coord.stop().await;
    });
}

/// A one-thread HTTP server that records the bodies POSTed to it and answers 200.
fn webhook_receiver() -> (String, std::sync::Arc<std::sync::Mutex<Vec<serde_json::Value>>>) {
    use std::io::{BufRead, BufReader, Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = got.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let mut reader = BufReader::new(conn.try_clone().unwrap());
            let mut len = 0usize;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap_or(0);
                }
                if line == "\r\n" {
                    break;
                }
            }
            let mut body = vec![0; len];
            if reader.read_exact(&mut body).is_ok() {
                if let Ok(v) = serde_json::from_slice(&body) {
                    sink.lock().unwrap().push(v);
                }
            }
            let _ = conn.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
        }
    });
    (url, got)
}

#[test]
fn events_cover_tasks_executions_and_agents_reach_a_webhook_and_expire_with_history() {
    run(|| async move {
        let store: SharedStore = Arc::new(MemStore::new());
        let clock = Arc::new(ManualClock::new(ferry_common::schedule::now_ms()));
        let (url, received) = webhook_receiver();
        let ctl = ControlPlane::new(store.clone(), ControlConfig { webhook: Some(url), ..config(clock.clone()) });
        let mut st = LeaderState::default();
        ctl.tick(&mut st).await; // learns the (empty) set of agents
        ctl.create_task(task(json!({"Name": "ev", "SourceLocation": "/srv/a", "DestinationLocation": "/srv/b"}))).await.unwrap();
        let id = ctl.start_task("ev", StartOverrides::default()).await.unwrap().spec.id;
        ctl.cancel_execution(&id).await.unwrap(); // while QUEUED: it ends at once
        let a = agent(&store, "agent-ev");
        wait_for("the agent to register", Duration::from_secs(30), || async { !ctl.list_agents().await.unwrap().is_empty() }).await;
        ctl.tick(&mut st).await;
        a.stop().await;
        ctl.tick(&mut st).await;

        let kinds: Vec<String> = ctl.list_events(None, 1000).await.unwrap().into_iter().map(|(_, e)| e.kind).collect();
        for k in ["TaskCreated", "ExecutionQueued", "AgentOnline", "AgentOffline", "ExecutionFinished"] {
            assert!(kinds.contains(&k.to_string()), "{k} in {kinds:?}");
        }
        wait_for("the webhook to receive every event", Duration::from_secs(30), || {
            let n = received.lock().unwrap().len();
            let want = kinds.len();
            async move { n >= want }
        })
        .await;
        let posted: Vec<String> = received.lock().unwrap().iter().map(|v| v["Kind"].as_str().unwrap_or("").to_string()).collect();
        assert_eq!(&posted[..kinds.len()], &kinds[..], "POSTed in order");

        // Thirty-one days on, with the default thirty days of history: all of it is gone.
        clock.advance(31 * 86_400_000);
        let mut fresh = LeaderState::default();
        ctl.tick(&mut fresh).await;
        assert!(matches!(ctl.get_execution(&id).await.unwrap_err(), ferry_coordinator::control::ControlError::NotFound(_)));
        assert!(ctl.list_executions(None).await.unwrap().is_empty());
        assert!(ctl.list_events(None, 1000).await.unwrap().is_empty(), "old events are deleted");
        assert!(ctl.get_task("ev").await.is_ok(), "tasks are not history");
    });
}

#[test]
fn a_manifest_can_be_an_s3_object() {
    let Some(s3) = ferry_common::testing::S3Server::start(ferry_common::testing::S3Flavor::S3sFs) else {
        return;
    };
    let dir = scratch();
    let (src, dst, mdir) = (dir.path().join("src"), dir.path().join("dst"), dir.path().join("m"));
    for rel in ["a/listed.txt", "a/other.txt", "b.txt"] {
        write_file(&src.join(rel), rel.as_bytes());
    }
    write_file(&mdir.join("manifest.csv"), b"a/listed.txt\nb.txt\n");
    // Uploaded with ferry itself (its S3 path is tested elsewhere against the AWS CLI).
    let mut up = support::Ferry::new("copy", &mdir, s3.uri("manifests/")).arg("--endpoint-url").arg(&s3.endpoint);
    for (k, v) in s3.env() {
        up = up.env(k, v);
    }
    up.run().assert_code(0);
    s3.export_env();
    let endpoint = s3.endpoint.clone();
    let manifest = s3.uri("manifests/manifest.csv");
    run(|| async move {
        let store: SharedStore = Arc::new(MemStore::new());
        let ctl = Arc::new(ControlPlane::new(store.clone(), config(Arc::new(ManualClock::new(T0)))));
        let p = |x: &Path| x.to_str().unwrap().to_string();
        ctl.create_task(task(json!({
            "Name": "s3-listed", "SourceLocation": p(&src), "DestinationLocation": p(&dst),
            "Manifest": {"Source": manifest}, "S3": {"EndpointUrl": endpoint},
        })))
        .await
        .unwrap();
        let coord = coordinator(ctl.clone(), "coord");
        let agent = agent(&store, "agent-1");
        let id = ctl.start_task("s3-listed", StartOverrides::default()).await.unwrap().spec.id;
        let end = wait_end(&ctl, &id, Duration::from_secs(120)).await;
        assert_eq!(end.phase, Phase::Success, "{:?}", end.error);
        assert!(dst.join("a/listed.txt").exists() && dst.join("b.txt").exists());
        assert!(!dst.join("a/other.txt").exists(), "an unlisted file is not transferred");
        agent.stop().await;
        coord.stop().await;
    });
}

#[test]
fn a_task_report_can_go_to_an_s3_prefix() {
    let Some(s3) = ferry_common::testing::S3Server::start(ferry_common::testing::S3Flavor::S3sFs) else {
        return;
    };
    s3.export_env();
    let dir = scratch();
    let (src, dst, work) = (dir.path().join("src"), dir.path().join("dst"), dir.path().join("work"));
    tree(&src, 4, 100);
    let endpoint = s3.endpoint.clone();
    let reports = s3.uri("reports/");
    run(|| async move {
        let store: SharedStore = Arc::new(MemStore::new());
        let p = |x: &Path| x.to_str().unwrap().to_string();
        let t = task(json!({
            "Name": "to-s3", "SourceLocation": p(&src), "DestinationLocation": p(&dst),
            "TaskReportConfig": {"Destination": reports.clone(), "ReportLevel": "SUCCESSES_AND_ERRORS"}, "S3": {"EndpointUrl": endpoint.clone()},
        }));
        // Without a work directory for report lines, an S3 destination is refused up front.
        let bare = ControlPlane::new(store.clone(), config(Arc::new(ManualClock::new(T0))));
        let err = bare.create_task(t.clone()).await.unwrap_err();
        assert!(err.to_string().contains("--report-work-dir"), "{err}");

        let ctl = Arc::new(ControlPlane::new(store.clone(), ControlConfig { report_work_dir: Some(work.clone()), ..config(Arc::new(ManualClock::new(T0))) }));
        ctl.create_task(t).await.unwrap();
        let coord = coordinator(ctl.clone(), "coord");
        let agent = agent(&store, "agent-1");
        let id = ctl.start_task("to-s3", StartOverrides::default()).await.unwrap().spec.id;
        assert_eq!(wait_end(&ctl, &id, Duration::from_secs(60)).await.phase, Phase::Success);
        wait_for("the report upload", Duration::from_secs(30), || async { ctl.get_execution(&id).await.unwrap().task_run.report_path.is_some() }).await;
        let e = ctl.get_execution(&id).await.unwrap();
        assert_eq!(e.task_run.report_path.as_deref(), Some(format!("{reports}to-s3/{id}.jsonl").as_str()), "{:?}", e.task_run.report_error);
        // The S3 client blocks on its own runtime: read the object from a blocking thread.
        let (uri, key) = (reports.clone(), format!("to-s3/{id}.jsonl"));
        let text = tokio::task::spawn_blocking(move || {
            use ferry_worker::location::Location;
            let loc = ferry_worker::location::s3::S3Location::open(
                &uri,
                &ferry_common::model::S3Settings { endpoint_url: Some(endpoint), path_style: true, ..Default::default() },
            )
            .unwrap();
            let size = loc.stat(key.as_bytes()).unwrap().expect("the report object exists").size;
            let mut body = vec![0u8; size as usize];
            loc.open(key.as_bytes(), 0).unwrap().read_at(0, &mut body).unwrap();
            String::from_utf8(body).unwrap()
        })
        .await
        .unwrap();
        assert_eq!(text.lines().filter(|l| l.contains("\"transferred\"") && l.contains("\"file\"")).count(), 4, "{text}");
        assert!(text.lines().last().unwrap().contains("\"summary\""));
        agent.stop().await;
        coord.stop().await;
    });
}

/// Idle movers are woken by the changes that can give them work, never by a clock: while an
/// execution's only shard is claimed by another agent they make no Store request at all, and
/// the moment that claim ends one of them takes the shard.
#[test]
fn idle_movers_cost_the_store_nothing_until_a_change_gives_them_work() {
    use ferry_common::model::{ExecutionSpec, Mode, Options};
    use ferry_common::store::RangeOptions;
    run(|| async move {
        let lossy = Arc::new(ferry_common::testing::LossyStore::new(Arc::new(MemStore::new())));
        let store: SharedStore = lossy.clone();
        let dir = scratch();
        let (src, dst) = (dir.path().join("src"), dir.path().join("dst"));
        tree(&src, 3, 1024);
        std::fs::create_dir_all(&dst).unwrap();
        let spec = ExecutionSpec::new("exec-idle", Mode::Copy, src.to_str().unwrap(), dst.to_str().unwrap(), Options::default());
        ferry_coordinator::driver::ExecutionDriver::start(store.clone(), spec).await.unwrap();
        let exec = keys::ExecKeys::new("exec-idle");
        let root = store.range(&exec.queue_prefix(), RangeOptions::default()).await.unwrap().kvs.remove(0);
        let root_id = keys::ExecKeys::shard_of(&root.key).to_string();
        // Another agent holds the only shard.
        store.put(&exec.claim(&root_id), b"w9#1".to_vec(), None).await.unwrap();

        let agent = agent(&store, "agent-1");
        wait_for("the movers' first look", Duration::from_secs(20), || async {
            let errs = store.range(&exec.agent_errors_prefix(), RangeOptions::default()).await.unwrap().kvs;
            assert!(errs.is_empty(), "{:?}", String::from_utf8_lossy(&errs[0].value));
            lossy.requests_under(&exec.claim_prefix()) >= 2
        })
        .await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let before = lossy.requests_under(&exec.all());
        tokio::time::sleep(Duration::from_secs(3)).await;
        let idle = lossy.requests_under(&exec.all()) - before;
        assert_eq!(idle, 0, "two idle movers made {idle} requests about the execution in 3 s with nothing to claim");

        // The other agent lets go: the watch, not a timer, brings a mover to the shard (the
        // movers' safety look is 30 s away).
        store.delete(&exec.claim(&root_id)).await.unwrap();
        wait_for("the root shard to be claimed and run", Duration::from_secs(10), || async { store.get(&exec.queue(&root_id)).await.unwrap().is_none() }).await;
        agent.stop().await;
    });
}
