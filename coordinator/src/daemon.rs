//! `ferry coordinator`: the daemon. With `--etcd` it is one coordinator of a cluster; with
//! `--data-dir` and no etcd it is a single host that keeps tasks, schedules and executions in
//! a redb file and runs its own embedded workers. Either way it may serve the HTTP API.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ferry_common::config::DaemonConfig;
use ferry_common::schedule::FirePolicy;
use ferry_common::store::{EtcdConnect, EtcdStore, RedbStore, SharedStore};
use ferry_common::task::SchedulePolicy;
use ferry_worker::agent::{run_agent, AgentConfig};

use crate::api::{self, Tokens};
use crate::cli::CoordinatorArgs;
use crate::control::{ControlConfig, ControlPlane, SystemClock};

/// Everything the daemon needs, resolved from flags over the config file.
pub struct DaemonSettings {
    pub name: String,
    /// How to reach etcd; `None` on a single host (`--data-dir`).
    pub etcd: Option<EtcdConnect>,
    pub data_dir: Option<PathBuf>,
    pub listen: Option<SocketAddr>,
    pub tokens: Option<Tokens>,
    /// Serve the API over HTTPS with this.
    pub api_tls: Option<rustls::ServerConfig>,
    pub movers: usize,
    pub control: ControlConfig,
    /// How webhooks verify an https:// receiver.
    pub webhook_tls: Arc<rustls::ClientConfig>,
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
    let endpoints = if args.etcd.is_empty() { cfg.etcd.endpoints.clone() } else { args.etcd.etcd.clone() };
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
    let api_tls = match (args.tls_cert.clone().or(c.tls_cert.clone()), args.tls_key.clone().or(c.tls_key.clone())) {
        (Some(cert), Some(key)) if listen.is_some() => Some(crate::tls::server_config(&cert, &key)?),
        (Some(_), Some(_)) => return Err("--tls-cert and --tls-key are for the API: give --listen ADDR too".into()),
        (Some(_), None) => return Err("--tls-cert needs --tls-key FILE (the certificate's private key, mode 0600)".into()),
        (None, Some(_)) => return Err("--tls-key needs --tls-cert FILE (the API's certificate chain, PEM)".into()),
        (None, None) => None,
    };
    let webhook_cacert = args.webhook_cacert.clone().or(c.webhook_cacert.clone());
    let webhook_tls = crate::tls::client_config("--webhook-cacert", webhook_cacert.as_deref())?;
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
        // The URL may hold a secret: errors show its origin only.
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(format!("--webhook-url {} must be an http:// or https:// URL", crate::tls::url_origin(url)));
        }
        if url.starts_with("http://") && webhook_cacert.is_some() {
            return Err("--webhook-cacert is for an https:// webhook, but --webhook-url is http://".into());
        }
    }
    Ok(DaemonSettings {
        name: args.name.clone().or(c.name.clone()).unwrap_or(default_name),
        etcd: if endpoints.is_empty() { None } else { Some(cfg.etcd_connect(&args.etcd)?) },
        data_dir,
        listen,
        tokens,
        api_tls,
        webhook_tls,
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
        let store: SharedStore = match (&s.data_dir, &s.etcd) {
            (Some(dir), _) => match RedbStore::open(&dir.join("ferry.redb")) {
                Ok(st) => Arc::new(st),
                Err(e) => {
                    eprintln!("ferry: error: {e}");
                    return 2;
                }
            },
            (None, None) => {
                eprintln!("ferry: error: give --etcd URL (a cluster) or --data-dir DIR (a single host, no etcd)");
                return 2;
            }
            (None, Some(how)) => match EtcdStore::connect_patiently(how, Duration::from_secs(30)).await {
                Ok(st) => Arc::new(st),
                Err(e) => {
                    eprintln!("ferry: error: {e}");
                    return 2;
                }
            },
        };
        let control = Arc::new(ControlPlane::new(store.clone(), s.control).with_webhook_tls(s.webhook_tls));
        let (tx, rx) = tokio::sync::watch::channel(false);
        // Lines about executions go to the Store too (`ferry exec logs`).
        let shipper = ferry_common::telemetry::ship_execution_logs(store.clone(), rx.clone());
        let https = s.api_tls.is_some();
        let server = match (s.listen, s.tokens) {
            (Some(addr), Some(tokens)) => match api::serve(control.clone(), addr, tokens, s.api_tls) {
                Ok(server) => {
                    tracing::info!(listen = %addr, scheme = if https { "https" } else { "http" }, "ApiListening");
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
                readiness: Default::default(),
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
        if let Some(h) = shipper {
            let _ = tokio::time::timeout(Duration::from_secs(6), h).await;
        }
        0
    })
}
