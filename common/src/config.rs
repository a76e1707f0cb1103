//! The daemon configuration file (`ferry coordinator --config`, `ferry-worker --config`).
//!
//! TOML; unknown keys are refused so a typo never silently falls back to a default. Secrets
//! are read from files, and a secret file that others can read is refused.
//!
//! ```toml
//! log_format = "json"            # text | json
//!
//! [etcd]
//! endpoints = ["https://10.0.0.1:2379", "https://10.0.0.2:2379"]
//! cacert = "/etc/ferry/etcd-ca.crt"            # the CA that signed etcd's certificate
//! cert = "/etc/ferry/etcd-client.crt"          # client certificate, when etcd asks for one
//! key = "/etc/ferry/etcd-client.key"           # its key, mode 0600
//! user = "ferry"                 # optional: etcd's own login (auth enable)
//! password_file = "/etc/ferry/etcd-password"   # mode 0600; required with user
//! insecure = false               # true allows http:// endpoints off this host
//!
//! [coordinator]
//! name = "coord-a"               # default: host-pid
//! listen = "10.0.0.5:7300"       # the HTTP API
//! tls_cert = "/etc/ferry/api.crt"              # serve the API over HTTPS (with tls_key)
//! tls_key = "/etc/ferry/api.key"               # mode 0600
//! api_token_file = "/etc/ferry/api-tokens"     # mode 0600, one token per line
//! data_dir = "/var/lib/ferry"    # single host, no etcd: tasks and history in redb
//! movers = 8                     # single host: embedded workers' movers
//! min_schedule_interval_secs = 3600
//! schedule_catch_up_secs = 3600  # a missed slot younger than this runs once
//! disable_schedule_after_failures = 3
//! history_days = 30
//! webhook_url = "https://hooks.example/ferry"  # events are POSTed here
//! webhook_cacert = "/etc/ferry/hooks-ca.crt"   # trust this CA for the webhook (optional)
//! allowed_roots = ["/data", "s3://bucket"]      # what API tasks may name (default: anything)
//!
//! [worker]
//! name = "agent-1"               # required for workers (or --name)
//! movers = 8                     # memory ≈ movers × (1 MiB buffer + one shard)
//! lease_ttl_secs = 10            # how long a silent agent keeps its claims
//! ```

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

#[derive(Debug, Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
pub struct DaemonConfig {
    #[serde(default)]
    pub log_format: Option<String>,
    #[serde(default)]
    pub etcd: EtcdConfig,
    #[serde(default)]
    pub coordinator: CoordinatorSection,
    #[serde(default)]
    pub worker: WorkerSection,
}

#[derive(Debug, Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
pub struct EtcdConfig {
    #[serde(default)]
    pub endpoints: Vec<String>,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// The CA certificate (PEM) that signed etcd's server certificate.
    #[serde(default)]
    pub cacert: Option<PathBuf>,
    /// A client certificate (PEM) for etcd's `--client-cert-auth`.
    #[serde(default)]
    pub cert: Option<PathBuf>,
    /// The client certificate's private key (PEM, mode 0600).
    #[serde(default)]
    pub key: Option<PathBuf>,
    /// Allow plaintext `http://` endpoints off this host.
    #[serde(default)]
    pub insecure: bool,
}

#[derive(Debug, Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
pub struct CoordinatorSection {
    #[serde(default)]
    pub name: Option<String>,
    /// Single host without etcd: keep tasks, schedules and executions here (redb).
    #[serde(default)]
    pub data_dir: Option<PathBuf>,
    /// The HTTP API's address, e.g. `127.0.0.1:7300`.
    #[serde(default)]
    pub listen: Option<String>,
    /// Bearer tokens for the API, one per line (mode 0600).
    #[serde(default)]
    pub api_token_file: Option<PathBuf>,
    /// Serve the API over HTTPS with this certificate chain (PEM)...
    #[serde(default)]
    pub tls_cert: Option<PathBuf>,
    /// ...and this private key (PEM, mode 0600).
    #[serde(default)]
    pub tls_key: Option<PathBuf>,
    /// Embedded workers' movers (single host).
    #[serde(default)]
    pub movers: Option<u32>,
    /// The shortest interval a schedule may fire at (default 3600, DataSync's).
    #[serde(default)]
    pub min_schedule_interval_secs: Option<u64>,
    /// A missed schedule slot younger than this still runs once (default 3600).
    #[serde(default)]
    pub schedule_catch_up_secs: Option<u64>,
    /// A schedule disables itself after this many consecutive failures with one error.
    #[serde(default)]
    pub disable_schedule_after_failures: Option<u32>,
    /// Ended executions and events are kept this long (default 30).
    #[serde(default)]
    pub history_days: Option<u32>,
    /// Events are POSTed here as JSON.
    #[serde(default)]
    pub webhook_url: Option<String>,
    /// Trust this CA (PEM) for an https:// webhook, besides the system's.
    #[serde(default)]
    pub webhook_cacert: Option<PathBuf>,
    /// Where report lines wait for tasks whose reports go to S3 (shared with the workers).
    #[serde(default)]
    pub report_work_dir: Option<PathBuf>,
    /// Locations (directories, `s3://bucket/prefix`) that tasks created through the API may
    /// name as source, destination, manifest or report destination, and everything below
    /// them; empty allows any. A task otherwise reads and writes wherever its agents can.
    #[serde(default)]
    pub allowed_roots: Vec<String>,
}

#[derive(Debug, Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
pub struct WorkerSection {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub movers: Option<u32>,
    #[serde(default)]
    pub lease_ttl_secs: Option<u64>,
    /// Labels that locations can be bound to (`--source-agents onprem`).
    #[serde(default)]
    pub labels: Vec<String>,
    /// UDP address to accept links from other agents on, e.g. `0.0.0.0:7400`.
    #[serde(default)]
    pub link_listen: Option<String>,
    /// Address other agents dial; defaults to `link_listen`.
    #[serde(default)]
    pub link_advertise: Option<String>,
    /// Directory with `agent.crt`, `agent.key` (0600) and `ca.crt`.
    #[serde(default)]
    pub tls_dir: Option<String>,
    /// Congestion controller for links: bbr (default), cubic or newreno.
    #[serde(default)]
    pub congestion: Option<String>,
    /// QUIC connections per writer agent.
    #[serde(default)]
    pub link_connections: Option<u32>,
    /// Address for the probe endpoints `/healthz` and `/readyz` (plain HTTP), e.g.
    /// `0.0.0.0:9464`.
    #[serde(default)]
    pub metrics_listen: Option<String>,
    /// Bearer tokens for `/metrics` on `metrics_listen`, one per line (mode 0600 or 0400).
    #[serde(default)]
    pub metrics_token_file: Option<String>,
}

impl DaemonConfig {
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read config {}: {e}", path.display()))?;
        let cfg: DaemonConfig = toml::from_str(&text).map_err(|e| {
            // toml's message spans several lines (position, source snippet, reason): keep the
            // position and the reason on one line.
            let text = e.to_string();
            let lines: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.contains('|')).collect();
            let summary = match (lines.first(), lines.last()) {
                (Some(first), Some(last)) if first != last => format!("{first}: {last}"),
                (Some(first), _) => first.to_string(),
                _ => "invalid TOML".to_string(),
            };
            format!("config {}: {summary}", path.display())
        })?;
        if let Some(f) = &cfg.log_format {
            if f != "text" && f != "json" {
                return Err(format!("config {}: log_format must be \"text\" or \"json\", not {f:?}", path.display()));
            }
        }
        if cfg.etcd.user.is_some() != cfg.etcd.password_file.is_some() {
            return Err(format!("config {}: etcd.user and etcd.password_file go together (set both or neither)", path.display()));
        }
        Ok(cfg)
    }

    /// How the daemon reaches etcd: `args` (flags) over the `[etcd]` section.
    #[cfg(feature = "etcd")]
    pub fn etcd_connect(&self, args: &EtcdArgs) -> Result<crate::store::EtcdConnect, String> {
        args.resolve(&self.etcd)
    }
}

/// The etcd flags every command and daemon takes (flattened into each with
/// `#[command(flatten)]`). A flag overrides the same key of the config file's `[etcd]`.
#[derive(Debug, Clone, Default)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
pub struct EtcdArgs {
    /// etcd endpoints, comma-separated: https://HOST:2379 (http:// only on loopback, or with
    /// --insecure-etcd).
    #[cfg_attr(feature = "cli", arg(long, value_delimiter = ',', value_name = "URLS"))]
    pub etcd: Vec<String>,
    /// The CA certificate (PEM) that signed etcd's certificate [default: the system's CAs].
    #[cfg_attr(feature = "cli", arg(long, value_name = "FILE"))]
    pub etcd_cacert: Option<PathBuf>,
    /// A client certificate (PEM) for an etcd started with --client-cert-auth.
    #[cfg_attr(feature = "cli", arg(long, value_name = "FILE"))]
    pub etcd_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM, mode 0600).
    #[cfg_attr(feature = "cli", arg(long, value_name = "FILE"))]
    pub etcd_key: Option<PathBuf>,
    /// Log in to etcd as this user (etcd's `auth enable`); needs --etcd-password-file.
    #[cfg_attr(feature = "cli", arg(long, value_name = "USER"))]
    pub etcd_user: Option<String>,
    /// A file holding the etcd user's password (mode 0600; refused if others can read it).
    #[cfg_attr(feature = "cli", arg(long, value_name = "FILE"))]
    pub etcd_password_file: Option<PathBuf>,
    /// Allow plaintext http:// etcd endpoints off this host (tasks and tokens then cross the
    /// network in the clear).
    #[cfg_attr(feature = "cli", arg(long))]
    pub insecure_etcd: bool,
}

impl EtcdArgs {
    /// No endpoint given: a command then runs on its own (copy) or asks for one.
    pub fn is_empty(&self) -> bool {
        self.etcd.is_empty()
    }

    /// The settings to connect with: each flag over the same key of `cfg`, then checked (files
    /// readable, pairs complete, no plaintext off loopback).
    #[cfg(feature = "etcd")]
    pub fn resolve(&self, cfg: &EtcdConfig) -> Result<crate::store::EtcdConnect, String> {
        let how = crate::store::EtcdConnect {
            endpoints: if self.etcd.is_empty() { cfg.endpoints.clone() } else { self.etcd.clone() },
            cacert: self.etcd_cacert.clone().or(cfg.cacert.clone()),
            cert: self.etcd_cert.clone().or(cfg.cert.clone()),
            key: self.etcd_key.clone().or(cfg.key.clone()),
            user: self.etcd_user.clone().or(cfg.user.clone()),
            password_file: self.etcd_password_file.clone().or(cfg.password_file.clone()),
            insecure: self.insecure_etcd || cfg.insecure,
        };
        how.check()?;
        Ok(how)
    }
}

/// Refuses a secret file (a password, a private key) that group or others can read.
pub fn check_secret_mode(path: &Path) -> Result<(), String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("cannot read secret file {}: {e}", path.display()))?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(format!(
            "secret file {} is readable by others (mode {:o}); run `chmod 600 {}`",
            path.display(),
            meta.permissions().mode() & 0o777,
            path.display()
        ));
    }
    Ok(())
}

/// Reads a secret file, refusing one that group or others can read.
pub fn read_secret(path: &Path) -> Result<String, String> {
    check_secret_mode(path)?;
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read secret file {}: {e}", path.display()))?;
    Ok(text.trim_end_matches(['\n', '\r']).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str, mode: u32) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        p
    }

    #[test]
    fn a_full_config_parses() {
        let dir = std::env::temp_dir().join(format!("ferry-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let pw = write(&dir, "pw", "s3cret\n", 0o600);
        let cfg = write(
            &dir,
            "ok.toml",
            &format!("log_format = \"json\"\n[etcd]\nendpoints = [\"http://127.0.0.1:2379\"]\nuser = \"ferry\"\npassword_file = \"{}\"\n[worker]\nname = \"w1\"\nmovers = 4\n", pw.display()),
            0o644,
        );
        let c = DaemonConfig::load(&cfg).unwrap();
        assert_eq!(c.worker.movers, Some(4));
        let how = c.etcd_connect(&EtcdArgs::default()).unwrap();
        assert_eq!((how.user.as_deref(), how.password_file.as_deref()), (Some("ferry"), Some(pw.as_path())));
        let flags = EtcdArgs { etcd: vec!["http://10.1.2.3:2379".into()], ..Default::default() };
        assert!(c.etcd_connect(&flags).unwrap_err().contains("--insecure-etcd"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn unknown_keys_and_readable_secrets_are_refused() {
        let dir = std::env::temp_dir().join(format!("ferry-config-bad-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let typo = write(&dir, "typo.toml", "[worker]\nmover = 4\n", 0o644);
        let err = DaemonConfig::load(&typo).unwrap_err();
        assert!(err.contains("mover"), "{err}");
        let pw = write(&dir, "pw", "x", 0o644);
        let err = read_secret(&pw).unwrap_err();
        assert!(err.contains("chmod 600"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
