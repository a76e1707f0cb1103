//! `ferry-worker`: the agent that joins a cluster through etcd and moves shards.

use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use ferry_common::store::{EtcdStore, SharedStore};
use ferry_common::telemetry::{init_logging, LogFormat};
use ferry_worker::agent::{run_agent, AgentConfig};

#[derive(Parser)]
#[command(name = "ferry-worker", version, about = "ferry's worker agent: joins a cluster through etcd and moves shards")]
struct Args {
    /// etcd endpoints, comma-separated (e.g. http://127.0.0.1:2379).
    #[arg(long, value_delimiter = ',', required = true)]
    etcd: Vec<String>,
    /// This agent's name, unique in the cluster.
    #[arg(long)]
    name: String,
    /// Concurrent movers per execution (each holds one shard and a 1 MiB buffer).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=256))]
    movers: u32,
    /// Lease TTL in seconds: how long a silent agent keeps its claims.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(2..=300))]
    lease_ttl: u64,
    /// Log format on stderr.
    #[arg(long, default_value = "text")]
    log_format: String,
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
    let format = if args.log_format == "json" { LogFormat::Json } else { LogFormat::Text };
    init_logging(format, "info");
    let system = actix_rt::System::with_tokio_rt(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("the tokio runtime starts")
    });
    let code = system.block_on(async move {
        let store: SharedStore = match EtcdStore::connect(&args.etcd).await {
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
        let cfg = AgentConfig { name: args.name, movers: args.movers as usize, lease_ttl: Duration::from_secs(args.lease_ttl) };
        run_agent(store, cfg, rx).await;
        0
    });
    std::process::exit(code);
}
