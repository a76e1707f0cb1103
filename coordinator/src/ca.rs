//! `ferry ca`: the cluster CA that agents' link certificates come from.
//!
//! ```text
//! ferry ca init  --ca-dir /etc/ferry/ca                 # once, on the CA host
//! ferry ca token --etcd URL [--ttl 15m]                  # prints a one-time activation token
//! ferry ca serve --ca-dir /etc/ferry/ca --etcd URL       # signs enrollments as agents ask
//! ferry-worker --name w1 --tls-dir /var/lib/ferry/tls --enroll-token TOKEN ...
//! ferry ca issue --ca-dir DIR --name w1 --out DIR        # or provision an agent by hand
//! ```

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
    /// Create a single-use activation token for one agent, valid for --ttl.
    Token {
        #[command(flatten)]
        etcd: EtcdArgs,
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
        /// Certificate lifetime in days.
        #[arg(long, default_value_t = 365)]
        days: i64,
    },
    /// Issue an agent's certificate and key directly into a directory (no token, no etcd).
    Issue {
        #[arg(long)]
        ca_dir: PathBuf,
        /// The agent's name (as given to ferry-worker --name).
        #[arg(long)]
        name: String,
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
        CaCommand::Token { etcd, ttl } => runtime().block_on(async {
            let store = connect(etcd).await?;
            let token = pki::create_token(&store, *ttl).await.map_err(usage)?;
            println!("{token}");
            eprintln!("valid for {} s, once: start the agent with --enroll-token {token} while 'ferry ca serve' runs", ttl.as_secs());
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
        CaCommand::Issue { ca_dir, name, out, days } => {
            let ca = Ca::load(ca_dir).map_err(usage)?;
            Identity::issue(&ca, name, *days).and_then(|id| id.save(out)).map_err(usage)?;
            println!("issued a certificate for agent {name} into {}", out.display());
            Ok(())
        }
    }
}
