//! `ferry-worker`: the agent that joins a cluster through etcd and moves shards.

use clap::Parser;

#[derive(Parser)]
#[command(name = "ferry-worker", version, about = "ferry's worker agent: joins a cluster through etcd and moves shards")]
struct Args {
    /// etcd endpoints, comma-separated (e.g. http://127.0.0.1:2379).
    #[arg(long)]
    etcd: String,
    /// This agent's name, unique in the cluster.
    #[arg(long)]
    name: String,
    /// Concurrent movers.
    #[arg(long, default_value_t = 8)]
    movers: usize,
}

fn main() {
    let args = Args::parse();
    let _ = (&args.name, args.movers);
    eprintln!(
        "ferry-worker: error: cannot join the cluster at {}: this build has no etcd support yet (cluster mode is not implemented; run `ferry copy SRC DST` for single-host mode)",
        args.etcd
    );
    std::process::exit(2);
}
