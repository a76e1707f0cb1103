//! `ferry-worker`: the agent that joins a cluster through etcd and moves shards.

use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use ferry_common::config::{DaemonConfig, EtcdArgs};
use ferry_common::store::{EtcdStore, SharedStore};
use ferry_common::telemetry::{init_daemon_logging, ship_execution_logs, LogFormat};
use ferry_worker::agent::{run_agent, start_link, AgentConfig, LinkSetup};

#[derive(Parser)]
#[command(name = "ferry-worker", version = ferry_worker::build_info::version_line(), about = "ferry's worker agent: joins a cluster through etcd and moves shards")]
struct Args {
    /// Configuration file (TOML; see deploy/ferry.toml). Flags override it.
    #[arg(long)]
    config: Option<std::path::PathBuf>,
    #[command(flatten)]
    etcd: EtcdArgs,
    /// This agent's name, unique in the cluster.
    #[arg(long)]
    name: Option<String>,
    /// Concurrent movers per execution (each holds one shard and a 1 MiB buffer) [default: 8].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=256))]
    movers: Option<u32>,
    /// Lease TTL in seconds: how long a silent agent keeps its claims [default: 10].
    #[arg(long, value_parser = clap::value_parser!(u64).range(2..=300))]
    lease_ttl: Option<u64>,
    /// Log format on stderr: text or json.
    #[arg(long)]
    log_format: Option<String>,
    /// Labels that locations can be bound to, comma-separated (e.g. onprem,site-a).
    #[arg(long, value_delimiter = ',')]
    labels: Vec<String>,
    /// Accept links from other agents on this UDP address (e.g. 0.0.0.0:7400).
    #[arg(long)]
    link_listen: Option<String>,
    /// The address other agents dial for links [default: --link-listen].
    #[arg(long)]
    link_advertise: Option<String>,
    /// Directory with agent.crt, agent.key and ca.crt; enables links.
    #[arg(long)]
    tls_dir: Option<std::path::PathBuf>,
    /// Enroll with the cluster CA using the one-time token in this file (from 'ferry ca
    /// token'; or set FERRY_ENROLL_TOKEN), then keep the certificate in --tls-dir. A token is
    /// never taken from the command line, where `ps` shows it to every user.
    #[arg(long)]
    enroll_token_file: Option<std::path::PathBuf>,
    /// Congestion controller for links: bbr, cubic or newreno [default: bbr].
    #[arg(long)]
    congestion: Option<String>,
    /// QUIC connections to each writer agent [default: 1].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=16))]
    link_connections: Option<u32>,
    /// Largest link datagram path MTU discovery may try (1200-65507) [default: what the route
    /// to each writer carries: 1472 on Ethernet, 8972 on jumbo frames, 65507 on loopback].
    #[arg(long, value_parser = clap::value_parser!(u16).range(1200..=65507))]
    link_max_mtu: Option<u16>,
    /// Turn off generic segmentation offload for links (measuring only).
    #[arg(long)]
    link_no_gso: bool,
    /// Turn off generic receive offload for links (measuring only).
    #[arg(long)]
    link_no_gro: bool,
    /// Serve the probe endpoints /healthz (alive) and /readyz (registered, with a lease the
    /// Store confirmed), and Prometheus metrics at /metrics, over plain HTTP on this address
    /// (e.g. 0.0.0.0:9464).
    #[arg(long)]
    metrics_listen: Option<String>,
    /// Bearer tokens that may read /metrics, one per line (mode 0600 or 0400). Without it
    /// /metrics answers 403.
    #[arg(long)]
    metrics_token_file: Option<std::path::PathBuf>,
}

fn fail(msg: &str) -> ! {
    eprintln!("ferry-worker: error: {msg}");
    std::process::exit(2);
}

fn main() {
    ferry_common::process::tune();
    let args = match Args::try_parse() {
        Ok(a) => a,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
                let _ = e.print();
                std::process::exit(0);
            }
            let text = e.to_string();
            let first = text.lines().next().unwrap_or("invalid arguments").trim_start_matches("error: ");
            eprintln!("ferry-worker: error: {first} (run 'ferry-worker --help' for usage)");
            std::process::exit(2);
        }
    };
    let cfg = match &args.config {
        Some(path) => DaemonConfig::load(path).unwrap_or_else(|e| fail(&e)),
        None => DaemonConfig::default(),
    };
    if args.etcd.is_empty() && cfg.etcd.endpoints.is_empty() {
        fail("no etcd endpoint (give --etcd URL or [etcd] endpoints in --config)");
    }
    let name = args.name.clone().or(cfg.worker.name.clone()).unwrap_or_else(|| fail("no worker name (give --name NAME or [worker] name in --config)"));
    let etcd = cfg.etcd_connect(&args.etcd).unwrap_or_else(|e| fail(&e));
    let movers = args.movers.or(cfg.worker.movers).unwrap_or(8).clamp(1, 256) as usize;
    let lease_ttl = args.lease_ttl.or(cfg.worker.lease_ttl_secs).unwrap_or(10).clamp(2, 300);
    let log_format = args.log_format.clone().or(cfg.log_format.clone()).unwrap_or_else(|| "text".into());
    let format = match log_format.as_str() {
        "json" => LogFormat::Json,
        "text" => LogFormat::Text,
        other => fail(&format!("--log-format must be text or json, not {other:?}")),
    };
    let labels = if args.labels.is_empty() { cfg.worker.labels.clone() } else { args.labels.clone() };
    let tls_dir = args.tls_dir.clone().or(cfg.worker.tls_dir.clone().map(Into::into));
    let link_listen = args.link_listen.clone().or(cfg.worker.link_listen.clone());
    let enrolled = tls_dir.as_deref().is_some_and(ferry_worker::transport::link::pki::Identity::exists);
    let enroll_token = match &args.enroll_token_file {
        // An enrolled agent needs no token: the file may be gone (a one-time Secret, a
        // shredded file) without stopping a restart.
        Some(path) if enrolled && !path.exists() => None,
        Some(path) => Some(
            std::fs::read_to_string(path)
                .map(|t| t.trim().to_string())
                .unwrap_or_else(|e| fail(&format!("cannot read the enrollment token file {}: {e}", path.display()))),
        ),
        None => std::env::var("FERRY_ENROLL_TOKEN").ok().map(|t| t.trim().to_string()).filter(|t| !t.is_empty()),
    };
    let link = match tls_dir {
        None if link_listen.is_some() || enroll_token.is_some() => {
            fail("links need a certificate: give --tls-dir DIR (and an enrollment token the first time: --enroll-token-file FILE or FERRY_ENROLL_TOKEN)")
        }
        None => None,
        Some(tls_dir) => {
            if let Err(e) = ferry_worker::transport::link::pki::check_agent_name(&name) {
                fail(&e.to_string());
            }
            let mut tuning = ferry_worker::transport::link::quic::LinkTuning::default();
            if let Some(c) = args.congestion.clone().or(cfg.worker.congestion.clone()) {
                tuning.congestion = c.parse().unwrap_or_else(|e: String| fail(&e));
            }
            if let Some(m) = args.link_max_mtu {
                tuning.max_mtu = m;
            }
            tuning.gso = !args.link_no_gso;
            tuning.gro = !args.link_no_gro;
            tuning.connections = args.link_connections.or(cfg.worker.link_connections).unwrap_or(1).clamp(1, 16) as usize;
            let listen = link_listen
                .map(|l| l.parse::<std::net::SocketAddr>().unwrap_or_else(|_| fail(&format!("--link-listen {l:?} is not an address like 0.0.0.0:7400"))));
            Some(LinkSetup { tls_dir, enroll_token, listen, advertise: args.link_advertise.clone().or(cfg.worker.link_advertise.clone()), tuning })
        }
    };
    let metrics_listen = args
        .metrics_listen
        .clone()
        .or(cfg.worker.metrics_listen.clone())
        .map(|l| l.parse::<std::net::SocketAddr>().unwrap_or_else(|_| fail(&format!("--metrics-listen {l:?} is not an address like 0.0.0.0:9464"))));
    let metrics_tokens = args
        .metrics_token_file
        .clone()
        .or(cfg.worker.metrics_token_file.clone().map(Into::into))
        .map(|p| ferry_common::tokens::Tokens::load_named(&p, "metrics token file (--metrics-token-file)").unwrap_or_else(|e| fail(&e)));
    if metrics_tokens.is_some() && metrics_listen.is_none() {
        fail("--metrics-token-file needs --metrics-listen ADDR (where /metrics is served)");
    }
    if metrics_listen.is_some() {
        if let Err(e) = ferry_common::metrics::install() {
            fail(&e);
        }
    }
    init_daemon_logging(format, "info", "ferry-worker", &name);
    let system = actix_rt::System::with_tokio_rt(|| {
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("the tokio runtime starts")
    });
    let code = system.block_on(async move {
        let readiness = Arc::new(ferry_worker::health::Readiness::default());
        // Up before the Store is reached, so a probe sees "alive, not ready" while etcd is down.
        let probes = match metrics_listen.map(|addr| ferry_worker::health::serve(addr, readiness.clone(), metrics_tokens.clone())).transpose() {
            Ok(server) => server.map(|server| {
                let handle = server.handle();
                actix_rt::spawn(server);
                handle
            }),
            Err(e) => {
                eprintln!("ferry-worker: error: {e}");
                return 2;
            }
        };
        let store: SharedStore = match EtcdStore::connect_patiently(&etcd, Duration::from_secs(30)).await {
            Ok(s) => Arc::new(s),
            Err(e) => {
                eprintln!("ferry-worker: error: {e}");
                return 2;
            }
        };
        let (tx, rx) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            let _ = tx.send(true);
        });
        // Lines about executions go to the Store too (`ferry exec logs`).
        let shipper = ship_execution_logs(store.clone(), rx.clone());
        let cfg = AgentConfig { name, movers, lease_ttl: Duration::from_secs(lease_ttl), labels, link, poll: ferry_worker::agent::POLL, readiness };
        let (link, link_addr) = match start_link(&store, &cfg).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("ferry-worker: error: {e}");
                return 2;
            }
        };
        run_agent(store, cfg, link, link_addr, rx).await;
        if let Some(h) = shipper {
            let _ = tokio::time::timeout(Duration::from_secs(6), h).await;
        }
        if let Some(handle) = probes {
            handle.stop(false).await;
        }
        0
    });
    ferry_common::traces::shutdown();
    std::process::exit(code);
}
