//! `ferry-worker`: the agent that joins a cluster through etcd and moves shards.

use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use ferry_common::config::DaemonConfig;
use ferry_common::store::{EtcdStore, SharedStore};
use ferry_common::telemetry::{init_logging, LogFormat};
use ferry_worker::agent::{run_agent, AgentConfig};

#[derive(Parser)]
#[command(name = "ferry-worker", version, about = "ferry's worker agent: joins a cluster through etcd and moves shards")]
struct Args {
    /// Configuration file (TOML; see deploy/ferry.toml). Flags override it.
    #[arg(long)]
    config: Option<std::path::PathBuf>,
    /// etcd endpoints, comma-separated (e.g. http://127.0.0.1:2379).
    #[arg(long, value_delimiter = ',')]
    etcd: Vec<String>,
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
}

fn fail(msg: &str) -> ! {
    eprintln!("ferry-worker: error: {msg}");
    std::process::exit(2);
}

fn main() {
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
    let endpoints = if args.etcd.is_empty() { cfg.etcd.endpoints.clone() } else { args.etcd.clone() };
    if endpoints.is_empty() {
        fail("no etcd endpoint (give --etcd URL or [etcd] endpoints in --config)");
    }
    let name = args.name.clone().or(cfg.worker.name.clone()).unwrap_or_else(|| fail("no worker name (give --name NAME or [worker] name in --config)"));
    let credentials = cfg.etcd_credentials().unwrap_or_else(|e| fail(&e));
    let movers = args.movers.or(cfg.worker.movers).unwrap_or(8).clamp(1, 256) as usize;
    let lease_ttl = args.lease_ttl.or(cfg.worker.lease_ttl_secs).unwrap_or(10).clamp(2, 300);
    let log_format = args.log_format.clone().or(cfg.log_format.clone()).unwrap_or_else(|| "text".into());
    let format = match log_format.as_str() {
        "json" => LogFormat::Json,
        "text" => LogFormat::Text,
        other => fail(&format!("--log-format must be text or json, not {other:?}")),
    };
    init_logging(format, "info");
    let system = actix_rt::System::with_tokio_rt(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("the tokio runtime starts")
    });
    let code = system.block_on(async move {
        let store: SharedStore = match EtcdStore::connect_with(&endpoints, credentials).await {
            Ok(s) => Arc::new(s),
            Err(e) => {
                eprintln!("ferry-worker: error: {e} (start etcd or fix --etcd)");
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
        let cfg = AgentConfig { name, movers, lease_ttl: Duration::from_secs(lease_ttl) };
        run_agent(store, cfg, rx).await;
        0
    });
    std::process::exit(code);
}
