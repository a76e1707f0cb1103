//! `ferry ca`: the cluster CA that agents' link certificates come from.
//!
//! ```text
//! ferry ca init  --ca-dir /etc/ferry/ca                 # once, on the CA host
//! ferry ca token --ca-dir /etc/ferry/ca --etcd URL --name w1 [--labels onprem] [--ttl 15m]
//! ferry ca serve --ca-dir /etc/ferry/ca --etcd URL       # signs enrollments as agents ask
//! FERRY_ENROLL_TOKEN=TOKEN ferry-worker --name w1 --tls-dir /var/lib/ferry/tls ...
//! ferry ca revoke --etcd URL w1                          # void w1's certificates
//! ferry ca issue --ca-dir DIR --name w1 --out DIR        # or provision an agent by hand
//! ```
//!
//! Tokens are made where the CA key is: a ticket is sealed with a key derived from it, so
//! whoever can write to etcd cannot mint one (see `ferry_worker::transport::link::pki`).

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};
use ferry_common::config::EtcdArgs;
use ferry_worker::transport::link::pki::{self, Ca, Identity};

use crate::cli::{connect, runtime, UsageError};

#[derive(Args, Debug, Clone)]
pub struct CaArgs {
    #[command(subcommand)]
    pub command: CaCommand,
}

#[derive(Subcommand, Debug, Clone)]
pub enum CaCommand {
    /// Create a new cluster CA (ca.crt, and ca.key with mode 0600).
    Init {
        #[arg(long)]
        ca_dir: PathBuf,
    },
    /// Create a single-use activation token for agent --name, valid for --ttl.
    Token {
        #[arg(long)]
        ca_dir: PathBuf,
        #[command(flatten)]
        etcd: EtcdArgs,
        /// The agent's name: the token enrolls this name only, and not while a live
        /// certificate carries it.
        #[arg(long)]
        name: String,
        /// Labels the certificate carries (comma-separated): what locations the agent may be
        /// bound to on links.
        #[arg(long, value_delimiter = ',')]
        labels: Vec<String>,
        /// How long the token stays valid: seconds, or with an s, m or h suffix.
        #[arg(long, default_value = "15m", value_parser = parse_duration)]
        ttl: Duration,
    },
    /// Sign the certificates of agents enrolling with a valid token (until Ctrl-C, or once).
    Serve {
        #[arg(long)]
        ca_dir: PathBuf,
        #[command(flatten)]
        etcd: EtcdArgs,
        /// Sign what is pending now and exit.
        #[arg(long)]
        once: bool,
        /// Certificate lifetime in days. Agents renew theirs through this process when a
        /// third of the lifetime is left, so short lifetimes cost nothing while it runs.
        #[arg(long, default_value_t = 7, value_parser = clap::value_parser!(i64).range(1..=3650))]
        days: i64,
    },
    /// Void every certificate issued to agent NAME until now: links refuse it from its next
    /// connection (open ones within seconds), and the name can be enrolled again.
    Revoke {
        #[command(flatten)]
        etcd: EtcdArgs,
        name: String,
    },
    /// Issue an agent's certificate and key directly into a directory (no token, no etcd).
    Issue {
        #[arg(long)]
        ca_dir: PathBuf,
        /// The agent's name (as given to ferry-worker --name).
        #[arg(long)]
        name: String,
        /// Labels the certificate carries (comma-separated).
        #[arg(long, value_delimiter = ',')]
        labels: Vec<String>,
        /// Directory to write agent.crt, agent.key (0600) and ca.crt into.
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 365)]
        days: i64,
    },
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("{s:?}: give seconds, or a number with s, m or h (e.g. 15m)");
    let (num, mult) = match s.chars().last() {
        Some('s') => (&s[..s.len() - 1], 1),
        Some('m') => (&s[..s.len() - 1], 60),
        Some('h') => (&s[..s.len() - 1], 3600),
        _ => (s, 1),
    };
    let n: u64 = num.parse().map_err(|_| bad())?;
    if n == 0 {
        return Err(bad());
    }
    Ok(Duration::from_secs(n * mult))
}

fn usage(e: pki::PkiError) -> UsageError {
    UsageError(e.to_string())
}

pub fn run(args: &CaArgs) -> Result<(), UsageError> {
    match &args.command {
        CaCommand::Init { ca_dir } => {
            let cert = pki::init_ca(ca_dir).map_err(usage)?;
            println!("created the cluster CA: {} (keep {} private)", cert.display(), ca_dir.join(pki::CA_KEY).display());
            Ok(())
        }
        CaCommand::Token { ca_dir, etcd, name, labels, ttl } => {
            let ca = Ca::load(ca_dir).map_err(usage)?;
            runtime().block_on(async {
                let store = connect(etcd).await?;
                let token = pki::create_token(&store, &ca, name, labels, *ttl).await.map_err(usage)?;
                println!("{token}");
                eprintln!(
                    "valid for {} s, once, for agent {name}: put it in a file for ferry-worker --enroll-token-file (or in FERRY_ENROLL_TOKEN) while 'ferry ca serve' runs",
                    ttl.as_secs()
                );
                Ok(())
            })
        }
        CaCommand::Revoke { etcd, name } => runtime().block_on(async {
            let store = connect(etcd).await?;
            pki::revoke(&store, name).await.map_err(usage)?;
            println!("revoked the certificates of agent {name}: links refuse them from now on");
            Ok(())
        }),
        CaCommand::Serve { ca_dir, etcd, once, days } => {
            let ca = Ca::load(ca_dir).map_err(usage)?;
            runtime().block_on(async {
                let store = connect(etcd).await?;
                loop {
                    let n = pki::sign_pending(&store, &ca, *days).await.map_err(usage)?;
                    if n > 0 {
                        eprintln!("signed {n} agent certificate(s)");
                    }
                    let n = pki::sign_renewals(&store, &ca, *days).await.map_err(usage)?;
                    if n > 0 {
                        eprintln!("renewed {n} agent certificate(s)");
                    }
                    if *once {
                        return Ok(());
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                        _ = tokio::signal::ctrl_c() => return Ok(()),
                    }
                }
            })
        }
        CaCommand::Issue { ca_dir, name, labels, out, days } => {
            let ca = Ca::load(ca_dir).map_err(usage)?;
            Identity::issue(&ca, name, labels, *days).and_then(|id| id.save(out)).map_err(usage)?;
            println!("issued a certificate for agent {name} into {}", out.display());
            Ok(())
        }
    }
}
