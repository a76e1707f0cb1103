//! `ferry coordinator`: the daemon. With `--etcd` it is one coordinator of a cluster; with
//! `--data-dir` and no etcd it is a single host that keeps tasks, schedules and executions in
//! a redb file and runs its own embedded workers. Either way it may serve the HTTP API.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ferry_common::config::DaemonConfig;
use ferry_common::schedule::FirePolicy;
use ferry_common::store::{EtcdStore, RedbStore, SharedStore};
use ferry_common::task::SchedulePolicy;
use ferry_worker::agent::{run_agent, AgentConfig};

use crate::api::{self, Tokens};
use crate::cli::CoordinatorArgs;
use crate::control::{ControlConfig, ControlPlane, SystemClock};

/// Everything the daemon needs, resolved from flags over the config file.
pub struct DaemonSettings {
    pub name: String,
    pub endpoints: Vec<String>,
    pub credentials: Option<(String, String)>,
    pub data_dir: Option<PathBuf>,
    pub listen: Option<SocketAddr>,
    pub tokens: Option<Tokens>,
    pub movers: usize,
    pub control: ControlConfig,
}

/// Creates (once) and reads the single host's own API token: `{data_dir}/api-token`, 0600.
fn local_token(data_dir: &Path) -> Result<Tokens, String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path = data_dir.join("api-token");
    if !path.exists() {
        let token: String = (0..32).map(|_| format!("{:02x}", rand::random::<u8>())).collect();
        let mut f =
            std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path).map_err(|e| format!("cannot create {}: {e}", path.display()))?;
        f.write_all(format!("{token}\n").as_bytes()).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        tracing::info!(file = %path.display(), "created the API token (use it with FERRY_API_TOKEN or --api-token-file)");
    }
    Tokens::load(&path)
}

pub fn resolve(args: &CoordinatorArgs, cfg: &DaemonConfig, default_name: String) -> Result<DaemonSettings, String> {
    let c = &cfg.coordinator;
    let endpoints = if args.etcd.is_empty() { cfg.etcd.endpoints.clone() } else { args.etcd.clone() };
    let data_dir = args.data_dir.clone().or(c.data_dir.clone());
    if endpoints.is_empty() && data_dir.is_none() {
        return Err("give --etcd URL (a cluster) or --data-dir DIR (a single host, no etcd)".into());
    }
    if !endpoints.is_empty() && data_dir.is_some() {
        return Err("give either --etcd (cluster state lives in etcd) or --data-dir (single host), not both".into());
    }
    if let Some(d) = &data_dir {
        std::fs::create_dir_all(d).map_err(|e| format!("cannot create --data-dir {}: {e} (choose a writable directory)", d.display()))?;
    }
    let listen = match args.listen.clone().or(c.listen.clone()) {
        Some(l) => Some(l.parse::<SocketAddr>().map_err(|_| format!("--listen {l:?} is not an address like 127.0.0.1:7300"))?),
        None => None,
    };
    let token_file = args.api_token_file.clone().or(c.api_token_file.clone());
    let tokens = match (&listen, &token_file, &data_dir) {
        (None, _, _) => None,
        (Some(_), Some(f), _) => Some(Tokens::load(f)?),
        (Some(_), None, Some(d)) => Some(local_token(d)?),
        (Some(_), None, None) => return Err("--listen needs --api-token-file FILE (one bearer token per line, mode 0600)".into()),
    };
    let control = ControlConfig {
        schedule: SchedulePolicy { min_interval_secs: args.min_schedule_interval.or(c.min_schedule_interval_secs).unwrap_or(3600) },
        fire: FirePolicy {
            catch_up_ms: args.schedule_catch_up.or(c.schedule_catch_up_secs).unwrap_or(3600) * 1000,
            disable_after_failures: args.disable_schedule_after_failures.or(c.disable_schedule_after_failures).unwrap_or(3),
        },
        history_days: args.history_days.or(c.history_days).unwrap_or(30),
        webhook: args.webhook_url.clone().or(c.webhook_url.clone()),
        // A single host's workers share its disk: its data directory serves.
        report_work_dir: args.report_work_dir.clone().or(c.report_work_dir.clone()).or_else(|| data_dir.as_ref().map(|d| d.join("report-work"))),
        clock: Arc::new(SystemClock),
        reconcile_every: ControlConfig::default().reconcile_every,
        allowed_roots: c.allowed_roots.clone(),
    };
    if let Some(url) = &control.webhook {
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(format!("--webhook-url {url:?} must be an http:// or https:// URL"));
        }
    }
    Ok(DaemonSettings {
        name: args.name.clone().or(c.name.clone()).unwrap_or(default_name),
        credentials: if endpoints.is_empty() { None } else { cfg.etcd_credentials()? },
        endpoints,
        data_dir,
        listen,
        tokens,
        movers: args.movers.or(c.movers).unwrap_or(4).clamp(1, 256) as usize,
        control,
    })
}

/// Runs the daemon until SIGTERM or Ctrl-C. Returns the exit code.
pub fn run(s: DaemonSettings) -> i32 {
    let system = actix_rt::System::with_tokio_rt(|| {
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).max_blocking_threads(64).enable_all().build().expect("the tokio runtime starts")
    });
    system.block_on(async move {
        let single_host = s.data_dir.is_some();
        let store: SharedStore = match &s.data_dir {
            Some(dir) => match RedbStore::open(&dir.join("ferry.redb")) {
                Ok(st) => Arc::new(st),
                Err(e) => {
                    eprintln!("ferry: error: {e}");
                    return 2;
                }
            },
            None => match EtcdStore::connect_patiently(&s.endpoints, s.credentials.clone(), Duration::from_secs(30)).await {
                Ok(st) => Arc::new(st),
                Err(e) => {
                    eprintln!("ferry: error: {e} (start etcd, or fix --etcd)");
                    return 2;
                }
            },
        };
        let control = Arc::new(ControlPlane::new(store.clone(), s.control));
        let (tx, rx) = tokio::sync::watch::channel(false);
        let server = match (s.listen, s.tokens) {
            (Some(addr), Some(tokens)) => match api::serve(control.clone(), addr, tokens) {
                Ok(server) => {
                    tracing::info!(listen = %addr, "ApiListening");
                    let handle = server.handle();
                    tokio::spawn(server);
                    Some(handle)
                }
                Err(e) => {
                    eprintln!("ferry: error: cannot listen on {addr}: {e} (is another coordinator using it? choose another --listen)");
                    return 2;
                }
            },
            _ => None,
        };
        tokio::spawn(async move {
            let Ok(mut term) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) else { return };
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            let _ = tx.send(true);
        });
        let agent = single_host.then(|| {
            let cfg = AgentConfig {
                name: format!("{}-local", s.name),
                movers: s.movers,
                lease_ttl: Duration::from_secs(10),
                labels: vec![],
                link: None,
                poll: ferry_worker::agent::POLL,
            };
            let store = store.clone();
            let rx = rx.clone();
            actix_rt::spawn(async move { run_agent(store, cfg, Arc::new(Default::default()), None, rx).await })
        });
        crate::cluster::run_coordinator_with(control, s.name, rx).await;
        if let Some(a) = agent {
            let _ = a.await;
        }
        if let Some(h) = server {
            h.stop(true).await;
        }
        0
    })
}
