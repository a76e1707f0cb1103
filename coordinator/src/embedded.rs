//! `ferry copy` on one host: the same coordinator and agent code as the single-host daemon
//! and the cluster (`cluster::run_coordinator_with` and `agent::run_agent`), over a MemStore
//! in this process. Nothing to install or start; only the Store differs.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ferry_common::model::{Execution, ExecutionSpec, ReportLines};
use ferry_common::store::{MemStore, SharedStore};
use ferry_worker::agent::{run_agent, AgentConfig};
use ferry_worker::engine::ExecContext;
use tokio::sync::watch;

use crate::cluster;
use crate::control::{ControlConfig, ControlPlane};
use crate::progress::Progress;

pub struct RunConfig {
    pub spec: ExecutionSpec,
    pub movers: usize,
    pub report: Option<PathBuf>,
    pub progress: crate::progress::Style,
}

pub struct RunResult {
    pub exec: Execution,
    pub report_error: Option<String>,
}

/// How often the coordinator reconciles and the agent looks for work. MemStore steps cost
/// microseconds, and every stage change waits for a round, so short rounds keep small jobs
/// from paying a fixed delay.
const ROUND: Duration = Duration::from_millis(10);

/// Runs one execution to its end and returns the final state.
pub fn run(cfg: RunConfig) -> Result<RunResult, String> {
    let blocking_threads = cfg.movers + 8;
    let system = actix_rt::System::with_tokio_rt(move || {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .max_blocking_threads(blocking_threads)
            .enable_all()
            .build()
            .expect("the tokio runtime starts (it needs only threads and an epoll fd)")
    });
    system.block_on(run_async(cfg))
}

/// Watch history of the embedded store: its watchers (the agent, the follower) are in this
/// process and replay at most a few rounds of changes.
const EMBEDDED_HISTORY_BYTES: usize = 2 << 20;

async fn run_async(cfg: RunConfig) -> Result<RunResult, String> {
    let mut spec = cfg.spec;
    // A location that cannot be opened is a usage error here, before anything starts.
    let probe = spec.clone();
    tokio::task::spawn_blocking(move || ExecContext::open(probe).map(|_| ())).await.map_err(|e| e.to_string())?.map_err(|e| e.to_string())?;
    if let Some(path) = &cfg.report {
        spec.report_file = Some(std::path::absolute(path).unwrap_or_else(|_| path.clone()).to_string_lossy().into_owned());
        spec.report_lines = ReportLines::All;
    }
    let store: SharedStore = Arc::new(MemStore::with_history_bytes(EMBEDDED_HISTORY_BYTES));
    let control = Arc::new(ControlPlane::new(store.clone(), ControlConfig { reconcile_every: ROUND, ..ControlConfig::default() }));
    let (stop, stopped) = watch::channel(false);
    let coordinator = actix_rt::spawn(cluster::run_coordinator_with(control, "embedded".into(), stopped.clone()));
    let agent_cfg = AgentConfig {
        name: "embedded".into(),
        movers: cfg.movers,
        lease_ttl: Duration::from_secs(30),
        labels: Vec::new(),
        link: None,
        poll: ROUND,
        readiness: Default::default(),
    };
    let agent = actix_rt::spawn(run_agent(store.clone(), agent_cfg, Arc::new(Default::default()), None, stopped));
    // The coordinator leads within a round; following before that would warn of none.
    while store.get(&ferry_common::keys::leader()).await.map_err(|e| e.to_string())?.is_none() {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let id = spec.id.clone();
    cluster::submit(&store, spec).await.map_err(|e| e.to_string())?;
    let followed = cluster::follow(&store, &id, Progress::new(cfg.progress)).await;
    let _ = stop.send(true);
    let _ = agent.await;
    let _ = coordinator.await;
    let exec = followed?;
    let report_error = exec.task_run.report_error.clone();
    Ok(RunResult { exec, report_error })
}
