//! Embedded mode: the coordinator, a MemStore and N mover actors in one process.
//!
//! The code paths are the cluster's: the driver and the movers talk only through the Store
//! trait. Only the Store implementation (in-process) and the transport (none) differ.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use ferry_common::model::{Execution, ExecutionSpec};
use ferry_common::store::{MemStore, SharedStore};
use ferry_worker::exec::ExecContext;
use ferry_worker::node::Node;
use ferry_worker::report::{NullSink, ReportSink};
use tokio::sync::oneshot;

use crate::driver::{DriverError, ExecutionDriver};
use crate::progress::Progress;
use crate::report::{summary_json, ActorSink, Finish, ReportWriter};

pub struct RunConfig {
    pub spec: ExecutionSpec,
    pub movers: usize,
    pub report: Option<PathBuf>,
    pub progress: bool,
}

pub struct RunResult {
    pub exec: Execution,
    pub report_error: Option<String>,
}

/// How often the coordinator reconciles. MemStore steps cost microseconds, and every stage
/// change waits for a tick, so a short tick keeps small jobs from paying a fixed delay.
const TICK: Duration = Duration::from_millis(10);

/// Runs one execution to its end and returns the final state.
pub fn run(cfg: RunConfig) -> Result<RunResult, String> {
    let blocking_threads = cfg.movers + 4;
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

type Done = Result<Execution, DriverError>;

/// Drives the execution: one reconciliation step per tick, never two at once.
struct CoordinatorActor {
    driver: Option<ExecutionDriver>,
    progress: Progress,
    done: Option<oneshot::Sender<Done>>,
    cancel: Arc<AtomicBool>,
}

impl Actor for CoordinatorActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.run_interval(TICK, |act, ctx| act.tick(ctx));
    }
}

impl CoordinatorActor {
    fn tick(&mut self, ctx: &mut Context<Self>) {
        let Some(mut driver) = self.driver.take() else { return };
        let cancel = self.cancel.load(Ordering::Relaxed);
        let step = async move {
            let r = if cancel { driver.cancel().await.map(|()| driver.state.exec.clone()) } else { driver.step().await.cloned() };
            (driver, r)
        };
        ctx.spawn(step.into_actor(self).map(|(driver, r), act, ctx| {
            match r {
                Ok(exec) => {
                    act.progress.update(&exec);
                    if exec.phase.is_terminal() {
                        act.progress.clear();
                        if let Some(tx) = act.done.take() {
                            let _ = tx.send(Ok(exec));
                        }
                        ctx.stop();
                    }
                }
                Err(e) => {
                    act.progress.clear();
                    if let Some(tx) = act.done.take() {
                        let _ = tx.send(Err(e));
                    }
                    ctx.stop();
                }
            }
            act.driver = Some(driver);
        }));
    }
}

async fn run_async(cfg: RunConfig) -> Result<RunResult, String> {
    let store: SharedStore = Arc::new(MemStore::new());
    let ctx = Arc::new(ExecContext::open(cfg.spec.clone()).map_err(|e| e.to_string())?);
    let report_addr = match &cfg.report {
        Some(path) => {
            let writer = ReportWriter::create(path.clone())?;
            // SyncArbiter wants a factory; there is exactly one thread, so one writer.
            let slot = std::sync::Mutex::new(Some(writer));
            Some(SyncArbiter::start(1, move || slot.lock().ok().and_then(|mut s| s.take()).expect("one report writer thread")))
        }
        None => None,
    };
    let sink: Arc<dyn ReportSink> = match &report_addr {
        Some(addr) => Arc::new(ActorSink(addr.clone())),
        None => Arc::new(NullSink),
    };

    let driver = ExecutionDriver::start(store.clone(), cfg.spec.clone()).await.map_err(|e| e.to_string())?;
    let node = Node::join(store.clone(), "embedded", Duration::from_secs(30), cfg.movers, &[], None).await.map_err(|e| e.to_string())?;
    let movers = node.start_movers(ctx, sink, cfg.movers, Default::default());

    let cancel = Arc::new(AtomicBool::new(false));
    let c = cancel.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("\nferry: cancelling (press Ctrl-C again to stop at once; temporary files are cleaned up by the next run)");
            c.store(true, Ordering::Relaxed);
            if tokio::signal::ctrl_c().await.is_ok() {
                std::process::exit(130);
            }
        }
    });

    let (tx, rx) = oneshot::channel();
    CoordinatorActor { driver: Some(driver), progress: Progress::new(cfg.progress), done: Some(tx), cancel }.start();
    let outcome = rx.await.map_err(|_| "the coordinator stopped unexpectedly".to_string())?;
    let exec = outcome.map_err(|e| e.to_string())?;

    // Movers stop by themselves once they see the terminal phase; wait so their last report
    // lines reach the writer before the summary.
    while movers.iter().any(|m| m.connected()) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    node.leave().await;
    let report_error = match report_addr {
        Some(addr) => addr.send(Finish(summary_json(&exec))).await.map_err(|e| e.to_string()).and_then(|r| r).err(),
        None => None,
    };
    Ok(RunResult { exec, report_error })
}
