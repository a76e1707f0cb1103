//! The `ferry` command line: parsing, validation, and exit codes.
//!
//! Exit codes: 0 when everything succeeded, 1 when some entries failed or differ, 2 for a
//! usage or configuration error. Every error is one line naming the problem and the fix.

use std::path::{Path, PathBuf};

use clap::{Args, Parser, Subcommand, ValueEnum};
use ferry_common::filter::{Filters, Matcher};
use ferry_common::model::{ExecutionSpec, Limits, LinkSettings, Mode, Options, OwnerIds, Phase, S3Settings, TransferMode, VerifyMode};
use ferry_common::telemetry::{init_logging, LogFormat};

use std::sync::Arc;

use ferry_common::config::{DaemonConfig, EtcdArgs};
use ferry_common::store::{EtcdStore, SharedStore};

use crate::cluster;
use crate::embedded::{self, RunConfig, RunResult};
use crate::progress::print_summary;
use crate::progress::Progress;
use crate::report::summary_json;

#[derive(Parser, Debug)]
#[command(name = "ferry", version = ferry_worker::build_info::version_line(), about = "Move data between storage systems, verified end to end", propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Copy SRC into DST: new and changed entries only (TransferMode CHANGED), unless --all.
    Copy(TransferArgs),
    /// Like copy, then delete what DST has and SRC does not (PreserveDeletedFiles REMOVE).
    Sync(TransferArgs),
    /// Compare SRC and DST entry by entry, content by CRC32C; change nothing.
    Verify(VerifyArgs),
    /// Run a coordinator daemon for a cluster (several may run: one leads, the others stand by).
    Coordinator(CoordinatorArgs),
    /// List the worker agents registered in a cluster.
    Workers(ClusterArgs),
    /// List, describe, cancel or update executions, and read their reports.
    Exec(ExecArgs),
    /// Define, list, change, delete and start tasks (through the coordinator's API).
    Task {
        #[command(subcommand)]
        command: crate::cli_api::TaskCommand,
    },
    /// Agents registered with the coordinator.
    Agent {
        #[command(subcommand)]
        command: crate::cli_api::AgentCommand,
    },
    /// The cluster CA: create it, issue activation tokens, sign agent certificates.
    Ca(crate::ca::CaArgs),
}

#[derive(Args, Debug, Clone)]
pub struct ClusterArgs {
    #[command(flatten)]
    pub etcd: EtcdArgs,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug, Clone)]
pub struct CoordinatorArgs {
    /// Configuration file (TOML; see deploy/ferry.toml). Flags override it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub etcd: EtcdArgs,
    /// This coordinator's name, unique among coordinators (default: host-pid).
    #[arg(long)]
    pub name: Option<String>,
    /// Log format on stderr [default: text].
    #[arg(long, value_enum)]
    pub log_format: Option<LogFormatArg>,
    /// Single host without etcd: keep tasks, schedules and executions in DIR (a redb file)
    /// and run embedded workers.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Serve the HTTP API on this address (e.g. 127.0.0.1:7300).
    #[arg(long)]
    pub listen: Option<String>,
    /// Bearer tokens for the API, one per line (mode 0600). With --data-dir and no file, a
    /// token is created in DIR/api-token.
    #[arg(long)]
    pub api_token_file: Option<PathBuf>,
    /// Single host: movers of the embedded workers [default: 4].
    #[arg(long)]
    pub movers: Option<u32>,
    /// Schedules may not fire more often than this many seconds [default: 3600].
    #[arg(long, value_name = "SECS")]
    pub min_schedule_interval: Option<u64>,
    /// A schedule slot missed while no coordinator ran still runs once if it is younger than
    /// this many seconds; older missed slots are skipped [default: 3600].
    #[arg(long, value_name = "SECS")]
    pub schedule_catch_up: Option<u64>,
    /// A schedule disables itself after this many consecutive failures with the same error
    /// [default: 3].
    #[arg(long, value_name = "N")]
    pub disable_schedule_after_failures: Option<u32>,
    /// Ended executions and events are deleted after this many days [default: 30].
    #[arg(long, value_name = "DAYS")]
    pub history_days: Option<u32>,
    /// Serve the API over HTTPS with this certificate chain (PEM); needs --tls-key.
    #[arg(long, value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// The API certificate's private key (PEM, mode 0600).
    #[arg(long, value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// POST every event as JSON to this URL (at least once, in order). Logs show only its
    /// scheme://host:port: the path may hold a secret.
    #[arg(long, value_name = "URL")]
    pub webhook_url: Option<String>,
    /// Trust only this CA (PEM) for an https:// webhook [default: the system's CAs].
    #[arg(long, value_name = "FILE")]
    pub webhook_cacert: Option<PathBuf>,
    /// Where report lines wait for tasks whose reports go to S3; in a cluster, a directory
    /// shared with the workers [default with --data-dir: DIR/report-work].
    #[arg(long, value_name = "DIR")]
    pub report_work_dir: Option<PathBuf>,
}

#[derive(Args, Debug, Clone)]
pub struct ExecArgs {
    #[command(subcommand)]
    pub command: ExecCommand,
}

/// Where `ferry exec` finds executions: the HTTP API (`--api` or FERRY_API), or etcd directly.
#[derive(Args, Debug, Clone)]
pub struct ExecTarget {
    /// --etcd: read executions straight from etcd instead of the API (list, describe, cancel,
    /// logs).
    #[command(flatten)]
    pub etcd: EtcdArgs,
    #[command(flatten)]
    pub api: crate::cli_api::ApiArgs,
}

#[derive(Subcommand, Debug, Clone)]
pub enum ExecCommand {
    /// List executions.
    List {
        /// Only executions of this task.
        #[arg(long)]
        task: Option<String>,
        #[command(flatten)]
        target: ExecTarget,
    },
    /// Show one execution's phases, counters and first failures.
    Describe {
        id: String,
        #[command(flatten)]
        target: ExecTarget,
    },
    /// Cancel an execution in any phase.
    Cancel {
        id: String,
        #[command(flatten)]
        target: ExecTarget,
    },
    /// Print an execution's task report (JSON Lines).
    Report {
        id: String,
        #[command(flatten)]
        target: ExecTarget,
    },
    /// Print an execution's log lines from every agent (`--follow`: until it ends).
    Logs {
        id: String,
        /// Keep printing new lines until the execution ends.
        #[arg(long)]
        follow: bool,
        /// Only lines at least this severe: ERROR, WARN, INFO or DEBUG.
        #[arg(long)]
        level: Option<String>,
        #[command(flatten)]
        target: ExecTarget,
    },
    /// Change a running execution's BytesPerSecond (-1: unlimited).
    Update {
        id: String,
        #[arg(long, allow_hyphen_values = true)]
        bytes_per_second: i64,
        #[command(flatten)]
        target: ExecTarget,
    },
}

#[derive(Copy, Clone, Debug, ValueEnum, PartialEq, Eq)]
pub enum VerifyArg {
    /// Read back what was written and compare its CRC32C with the source's (the default).
    OnlyFilesTransferred,
    /// Also compare both complete trees at the end.
    PointInTimeConsistent,
    /// No verification.
    None,
}

/// Which parts of NTFS security descriptors an SMB → SMB copy carries: DataSync's
/// SecurityDescriptorCopyFlags.
#[derive(Copy, Clone, Debug, ValueEnum, PartialEq, Eq)]
pub enum SdCopyArg {
    /// None (NONE).
    None,
    /// The owner and the DACL (OWNER_DACL).
    OwnerDacl,
    /// Also the SACL; the SMB user needs SeSecurityPrivilege on both servers (OWNER_DACL_SACL).
    OwnerDaclSacl,
}

/// How owners travel when they are kept (as root): DataSync's Uid/Gid values.
#[derive(Copy, Clone, Debug, ValueEnum, PartialEq, Eq)]
pub enum OwnerIdsArg {
    /// The numeric uid and gid (INT_VALUE).
    Numeric,
    /// By user and group name, looked up on the hosts that read and write; an id without a
    /// name on either side is not carried (NAME).
    Name,
    /// By name where both sides know it, else the numeric id (BOTH).
    Both,
}

#[derive(Copy, Clone, Debug, ValueEnum, PartialEq, Eq)]
pub enum LogFormatArg {
    Text,
    Json,
}

#[derive(Copy, Clone, Debug, ValueEnum, PartialEq, Eq)]
pub enum SseArg {
    /// SSE-S3: keys managed by S3.
    #[value(name = "AES256")]
    Aes256,
    /// SSE-KMS, with --sse-kms-key-id or the bucket's default key.
    #[value(name = "aws:kms")]
    Kms,
}

#[derive(Copy, Clone, Debug, ValueEnum, PartialEq, Eq)]
pub enum ObjectTagsArg {
    #[value(name = "PRESERVE")]
    Preserve,
    #[value(name = "NONE")]
    None,
}

/// How to reach and write `s3://` locations. Credentials and the default region come from the
/// standard AWS chain: environment, profiles (AWS_PROFILE), instance and container roles.
#[derive(Args, Debug, Clone)]
pub struct S3Args {
    /// S3-compatible endpoint, e.g. http://127.0.0.1:9000 (AWS when omitted).
    #[arg(long, value_name = "URL")]
    pub endpoint_url: Option<String>,
    /// Region of the bucket (default: from the AWS chain, else us-east-1).
    #[arg(long)]
    pub region: Option<String>,
    /// Virtual-hosted-style addressing (bucket.endpoint) with --endpoint-url; path style
    /// (endpoint/bucket) is the default there, as most self-managed stores need it.
    #[arg(long)]
    pub virtual_hosted_style: bool,
    /// Storage class of uploaded objects (STANDARD, STANDARD_IA, INTELLIGENT_TIERING, GLACIER_IR, ...).
    #[arg(long, value_name = "CLASS")]
    pub storage_class: Option<String>,
    /// Server-side encryption of uploaded objects.
    #[arg(long, value_enum)]
    pub sse: Option<SseArg>,
    /// KMS key id or ARN for --sse aws:kms.
    #[arg(long, value_name = "KEY")]
    pub sse_kms_key_id: Option<String>,
    /// ObjectTags: copy object tags between S3 locations.
    #[arg(long, value_enum, default_value = "PRESERVE")]
    pub object_tags: ObjectTagsArg,
}

impl S3Args {
    fn settings(&self) -> Result<S3Settings, UsageError> {
        if self.sse_kms_key_id.is_some() && self.sse != Some(SseArg::Kms) {
            return Err(UsageError("--sse-kms-key-id needs --sse aws:kms (add it, or drop the key id)".into()));
        }
        if let Some(e) = &self.endpoint_url {
            if !(e.starts_with("http://") || e.starts_with("https://")) {
                return Err(UsageError(format!("--endpoint-url {e}: give a URL with http:// or https://")));
            }
        }
        Ok(S3Settings {
            endpoint_url: self.endpoint_url.clone(),
            region: self.region.clone(),
            path_style: self.endpoint_url.is_some() && !self.virtual_hosted_style,
            storage_class: self.storage_class.clone(),
            sse: self.sse.map(|s| match s {
                SseArg::Aes256 => "AES256".to_string(),
                SseArg::Kms => "aws:kms".to_string(),
            }),
            sse_kms_key_id: self.sse_kms_key_id.clone(),
            preserve_tags: self.object_tags == ObjectTagsArg::Preserve,
        })
    }
}

#[derive(Args, Debug, Clone)]
pub struct CommonArgs {
    /// Source location: a directory path, file:// URI, or s3://bucket/prefix.
    pub source: String,
    /// Destination location: a directory path or file:// URI (created if missing), or s3://bucket/prefix.
    pub destination: String,
    #[command(flatten)]
    pub s3: S3Args,
    /// Exclude paths matching these patterns ('|'-separated; '*' wildcard; '/x' anchors at the root).
    #[arg(long, value_name = "PATTERNS")]
    pub exclude: Vec<String>,
    /// Only include paths matching these patterns.
    #[arg(long, value_name = "PATTERNS")]
    pub include: Vec<String>,
    /// Skip FIFOs, sockets and device nodes (PreserveDevices NONE); each gets a report entry.
    #[arg(long)]
    pub no_specials: bool,
    /// How owner and group are carried when they are kept (they are, when ferry runs as root).
    #[arg(long, value_enum, default_value = "numeric")]
    pub owner_ids: OwnerIdsArg,
    /// Write the task report (JSON Lines) to FILE.
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,
    /// Print the summary as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// Log format on stderr.
    #[arg(long, value_enum, default_value = "text")]
    pub log_format: LogFormatArg,
    /// Concurrent movers (each holds one shard and one chunk buffer).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub movers: u32,
    /// No progress: neither the bar a terminal gets nor the line every 10 s a log gets.
    #[arg(long)]
    pub no_progress: bool,
    /// --etcd: submit to a cluster through etcd instead of running in this process.
    #[command(flatten)]
    pub etcd: EtcdArgs,
    #[command(flatten)]
    pub link: LinkArgs,
    /// smb:// locations: a file holding the SMB password (mode 0600). Without it the password
    /// comes from FERRY_SMB_PASSWORD; never from the URL or the command line.
    #[arg(long, value_name = "FILE")]
    pub smb_password_file: Option<PathBuf>,
    /// smb:// locations: which parts of security descriptors an SMB → SMB copy carries.
    #[arg(long, value_enum, default_value = "owner-dacl", value_name = "PARTS")]
    pub smb_security_descriptor: SdCopyArg,
}

/// Binding locations to agents (cluster mode), and how data travels between them.
#[derive(Args, Debug, Clone, Default)]
pub struct LinkArgs {
    /// Only these agents reach the source: agent names or labels, comma-separated (e.g.
    /// onprem). Shards are read there.
    #[arg(long, value_delimiter = ',', value_name = "AGENTS")]
    pub source_agents: Vec<String>,
    /// Only these agents reach the destination (e.g. cloud). A reader that cannot reach it
    /// streams the data to one of them over QUIC.
    #[arg(long, value_delimiter = ',', value_name = "AGENTS")]
    pub destination_agents: Vec<String>,
    /// Compress link chunks with zstd (skipped automatically for data that does not compress).
    #[arg(long)]
    pub compress: bool,
    /// BytesPerSecond, per agent: what each agent sends over links, copies or uploads (e.g.
    /// 100M, 1G; 0 = unlimited). Without --etcd the one process is the agent.
    #[arg(long, value_name = "RATE", value_parser = parse_rate)]
    pub bwlimit: Option<u64>,
}

/// `100M` → 100,000,000 bytes per second (decimal, like network rates).
fn parse_rate(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => (
            &s[..i],
            match c.to_ascii_uppercase() {
                'K' => 1_000,
                'M' => 1_000_000,
                'G' => 1_000_000_000,
                _ => return Err(format!("{s:?}: use a number of bytes per second with an optional K, M or G suffix")),
            },
        ),
        _ => (s, 1),
    };
    num.parse::<u64>()
        .map(|n| n.saturating_mul(mult))
        .map_err(|_| format!("{s:?}: use a number of bytes per second with an optional K, M or G suffix (e.g. 100M)"))
}

#[derive(Args, Debug, Clone)]
pub struct TransferArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Decide what changed by CRC32C instead of size and mtime.
    #[arg(long)]
    pub checksum: bool,
    /// Copy everything, changed or not (TransferMode ALL).
    #[arg(long)]
    pub all: bool,
    /// Never replace an entry that exists at the destination (OverwriteMode NEVER).
    #[arg(long)]
    pub no_overwrite: bool,
    /// Show what would be done; write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Verification mode.
    #[arg(long, value_enum, default_value = "only-files-transferred")]
    pub verify: VerifyArg,
    /// Do not flush to stable storage (scratch data only: a crash may lose recent files).
    #[arg(long)]
    pub no_fsync: bool,
    /// Let `sync` run from a source that holds nothing, deleting everything at the
    /// destination (refused otherwise: an unmounted source looks empty).
    #[arg(long)]
    pub allow_empty_source: bool,
}

#[derive(Args, Debug, Clone)]
pub struct VerifyArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// The only mode `ferry verify` has, accepted so DataSync's wording works: compare both
    /// complete trees as they are now.
    #[arg(long, value_enum, default_value = "point-in-time-consistent")]
    pub verify: VerifyArg,
}

/// A usage or configuration problem: exit code 2.
#[derive(Debug)]
pub struct UsageError(pub String);

/// Where a location URI points. Only local trees exist in this build.
fn parse_location(role: &str, uri: &str) -> Result<PathBuf, UsageError> {
    if let Some((scheme, _)) = uri.split_once("://") {
        return match scheme {
            "file" => Ok(PathBuf::from(&uri["file://".len()..])),
            other => Err(UsageError(format!("{role} {uri}: unknown scheme '{other}' (use a local path or file:///path)"))),
        };
    }
    if uri.is_empty() {
        return Err(UsageError(format!("{role} is empty (give a directory path)")));
    }
    Ok(PathBuf::from(uri))
}

fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

/// Checks an `s3://` location: the URI, then one request that fails the way the whole run
/// would (missing bucket, refused credentials, wrong region, unreachable endpoint).
fn check_s3(role: &str, uri: &str, settings: &S3Settings) -> Result<(), UsageError> {
    use ferry_worker::location::s3::S3Location;
    let loc = S3Location::open(uri, settings).map_err(|e| UsageError(format!("{role} {}", e.message)))?;
    loc.probe().map_err(|e| UsageError(format!("{role}: {}", e.message)))
}

/// Checks a scale-test location (`synthetic://` parameters; `null://` takes none).
fn check_test_location(role: &str, uri: &str) -> Result<(), UsageError> {
    ferry_worker::location::synthetic::check(uri).map_err(|e| UsageError(format!("{role} {}", e.message)))
}

/// Checks an `nfs://` location: mounts the export (unreachable server, unknown export and
/// refused credentials fail here, in one line), then the directory: a source must be one; a
/// destination is created and a probe file is written, its owner set where owners are kept,
/// so a read-only export or root squash fails before any shard runs.
fn check_nfs(role: &str, uri: &str, mode: Mode, dry_run: bool) -> Result<(), UsageError> {
    let loc = ferry_worker::location::nfs::NfsLocation::open(uri, true).map_err(|e| UsageError(format!("{role} {}", e.message)))?;
    check_tree(role, uri, &loc, mode, dry_run, &nfs_probe(), "export")
}

/// The probe file written to an NFS destination: owner-only, and owned by someone else when
/// owners are kept, so root squash shows.
fn nfs_probe() -> ferry_worker::location::Meta {
    use ferry_common::model::EntryKind;
    let owner = ferry_worker::location::local::sys::is_root().then_some(1);
    ferry_worker::location::Meta { kind: Some(EntryKind::File), mode: Some(libc::S_IFREG | 0o600), uid: owner, gid: owner, ..Default::default() }
}

/// Checks an opened tree (`nfs://`, `efs://`, `smb://`): a source must be a directory; a
/// destination is created and a `probe` file is written, read back and removed, so a
/// read-only `what` (export, share), root squash or a full disk fail before any shard runs.
fn check_tree(
    role: &str,
    uri: &str,
    loc: &dyn ferry_worker::location::Location,
    mode: Mode,
    dry_run: bool,
    probe: &ferry_worker::location::Meta,
    what: &str,
) -> Result<(), UsageError> {
    use ferry_common::model::EntryKind;
    use ferry_worker::location::{put_file, CommitOptions};
    let fail = |e: ferry_common::error::FerryError| UsageError(format!("{role} {}", e.message));
    let found = loc.stat(b"").map_err(fail)?;
    let is_dir = found.as_ref().map(|m| m.kind()) == Some(EntryKind::Dir);
    if role == "source" || mode == Mode::Verify {
        return match (found, is_dir) {
            (None, _) => Err(UsageError(format!("{role} {uri} does not exist (check the path)"))),
            (Some(_), false) => Err(UsageError(format!("{role} {uri} is not a directory (ferry copies directory trees; give its parent and use --include)"))),
            _ => Ok(()),
        };
    }
    if dry_run {
        return Ok(());
    }
    loc.ensure_dir(b"").map_err(fail)?;
    let name = format!(".ferry-tmp-probe-{}", std::process::id());
    let written = put_file(loc, name.as_bytes(), b"probe", probe, CommitOptions { fsync: false, verify: true });
    let _ = loc.remove(&[name.into_bytes()]);
    written.map(|_| ()).map_err(|e| UsageError(format!("destination {} (check the {what}'s permissions and free space)", e.message)))
}

/// Checks an `smb://` location: logs on to the share (unreachable server, wrong password,
/// unknown share, access denied fail here, in one line), then the directory as
/// [`check_tree`] does, with a probe file that carries no owner or mode.
fn check_smb(role: &str, uri: &str, mode: Mode, dry_run: bool, opts: &ferry_common::model::SmbOptions) -> Result<(), UsageError> {
    use ferry_worker::location::{smb::SmbLocation, Meta};
    let loc = SmbLocation::open(uri, opts, false).map_err(|e| UsageError(format!("{role} {}", e.message)))?;
    let probe = Meta { kind: Some(ferry_common::model::EntryKind::File), ..Meta::default() };
    check_tree(role, uri, &loc, mode, dry_run, &probe, "share")
}

/// Resolves an `efs://` file-system ID through the EFS API (a missing ID, a file system that
/// is not available or one without a mount target each get their line), then checks the
/// file system over NFSv4.1 as [`check_nfs`] does.
fn check_efs(role: &str, uri: &str, mode: Mode, dry_run: bool, s3: &S3Settings) -> Result<(), UsageError> {
    let loc = ferry_worker::location::efs::open(uri, s3, true).map_err(|e| UsageError(format!("{role} {}", e.message)))?;
    check_tree(role, uri, loc.as_ref(), mode, dry_run, &nfs_probe(), "export")
}

/// Checks both locations and prepares a local destination; returns the locations as URIs or
/// canonical paths.
fn check_any_locations(
    mode: Mode,
    src_uri: &str,
    dst_uri: &str,
    dry_run: bool,
    s3: &S3Settings,
    smb: &ferry_common::model::SmbOptions,
) -> Result<(String, String), UsageError> {
    use ferry_worker::location::{is_efs_uri, is_nfs_uri, is_object_uri, is_smb_uri, is_test_uri};
    let remote = |u: &str| is_object_uri(u) || is_nfs_uri(u) || is_efs_uri(u) || is_smb_uri(u) || is_test_uri(u);
    let check_remote = |role: &str, uri: &str| {
        if is_test_uri(uri) {
            check_test_location(role, uri)
        } else if is_object_uri(uri) {
            check_s3(role, uri, s3)
        } else if is_efs_uri(uri) {
            check_efs(role, uri, mode, dry_run, s3)
        } else if is_smb_uri(uri) {
            check_smb(role, uri, mode, dry_run, smb)
        } else {
            check_nfs(role, uri, mode, dry_run)
        }
    };
    if !remote(src_uri) && !remote(dst_uri) {
        let (src, dst) = check_locations(mode, src_uri, dst_uri, dry_run)?;
        return Ok((src.to_string_lossy().into_owned(), dst.to_string_lossy().into_owned()));
    }
    let src = if remote(src_uri) {
        check_remote("source", src_uri)?;
        src_uri.to_string()
    } else {
        let src = parse_location("source", src_uri)?;
        let meta = std::fs::metadata(&src).map_err(|e| UsageError(format!("source {}: {e} (check the path)", src.display())))?;
        if !meta.is_dir() {
            return Err(UsageError(format!("source {} is not a directory (ferry copies directory trees; give its parent and use --include)", src.display())));
        }
        src.canonicalize().map_err(|e| UsageError(format!("source {}: {e}", src.display())))?.to_string_lossy().into_owned()
    };
    let dst = if remote(dst_uri) {
        check_remote("destination", dst_uri)?;
        if src == dst_uri || (mode == Mode::Sync && (src.starts_with(dst_uri) || dst_uri.starts_with(&src))) {
            return Err(UsageError(format!("source {src} and destination {dst_uri} overlap (choose prefixes that do not contain each other)")));
        }
        dst_uri.to_string()
    } else {
        let dst = absolute(&parse_location("destination", dst_uri)?);
        if mode == Mode::Verify && !dst.is_dir() {
            return Err(UsageError(format!("destination {} does not exist or is not a directory (check the path)", dst.display())));
        }
        if !dry_run && mode != Mode::Verify {
            std::fs::create_dir_all(&dst)
                .map_err(|e| UsageError(format!("cannot create destination {}: {e} (check the path and its permissions)", dst.display())))?;
        }
        dst.to_string_lossy().into_owned()
    };
    Ok((src, dst))
}

/// Checks the source and prepares the destination; returns their canonical paths.
fn check_locations(mode: Mode, src_uri: &str, dst_uri: &str, dry_run: bool) -> Result<(PathBuf, PathBuf), UsageError> {
    let src = parse_location("source", src_uri)?;
    let dst = parse_location("destination", dst_uri)?;
    let meta = std::fs::metadata(&src).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => UsageError(format!("source {} does not exist (check the path)", src.display())),
        std::io::ErrorKind::PermissionDenied => UsageError(format!("source {}: permission denied (run as a user who can read it)", src.display())),
        _ => UsageError(format!("source {}: {e}", src.display())),
    })?;
    if !meta.is_dir() {
        return Err(UsageError(format!("source {} is not a directory (ferry copies directory trees; give its parent and use --include)", src.display())));
    }
    let src = src.canonicalize().map_err(|e| UsageError(format!("source {}: {e}", src.display())))?;
    // Resolve the destination through its deepest existing ancestor, so symlinks cannot hide
    // that it lies inside the source.
    let dst_abs = absolute(&dst);
    let mut existing = dst_abs.clone();
    let mut rest = Vec::new();
    while !existing.exists() {
        match (existing.file_name().map(|n| n.to_os_string()), existing.parent()) {
            (Some(name), Some(parent)) => {
                rest.push(name);
                existing = parent.to_path_buf();
            }
            _ => break,
        }
    }
    let mut dst_canon = existing.canonicalize().unwrap_or(existing);
    for name in rest.iter().rev() {
        dst_canon.push(name);
    }
    if dst_canon.starts_with(&src) {
        return Err(UsageError(format!(
            "destination {} is inside the source {} (choose a destination outside the source tree, or exclude it)",
            dst.display(),
            src.display()
        )));
    }
    if mode == Mode::Sync && src.starts_with(&dst_canon) {
        return Err(UsageError(format!(
            "source {} is inside the destination {}: sync would delete it (choose another destination)",
            src.display(),
            dst.display()
        )));
    }
    if mode == Mode::Verify || dry_run {
        if mode == Mode::Verify && !dst_canon.is_dir() {
            return Err(UsageError(format!("destination {} does not exist or is not a directory (check the path)", dst.display())));
        }
        return Ok((src, dst_canon));
    }
    std::fs::create_dir_all(&dst_canon)
        .map_err(|e| UsageError(format!("cannot create destination {}: {e} (check the path and its permissions)", dst.display())))?;
    if !dst_canon.is_dir() {
        return Err(UsageError(format!("destination {} is not a directory (give a directory path)", dst.display())));
    }
    let probe = dst_canon.join(format!(".ferry-tmp-probe-{}-{:08x}", std::process::id(), rand::random::<u32>()));
    // Created exclusively: a symlink planted at the name is not followed.
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)
        .and_then(|_| std::fs::remove_file(&probe))
        .map_err(|e| UsageError(format!("destination {} is not writable: {e} (check its permissions and free space)", dst.display())))?;
    Ok((src, dst_canon))
}

/// Whether `source` is a local directory that holds nothing. Other locations are checked by
/// the scan, which refuses the same way.
fn source_is_empty_dir(source: &str) -> bool {
    !ferry_worker::location::is_object_uri(source) && !source.contains("://") && std::fs::read_dir(source).is_ok_and(|mut d| d.next().is_none())
}

fn new_execution_id() -> String {
    use rand::Rng;
    format!("{:012x}", rand::thread_rng().gen::<u64>() & 0xffff_ffff_ffff)
}

fn build_spec(mode: Mode, common: &CommonArgs, t: Option<&TransferArgs>) -> Result<ExecutionSpec, UsageError> {
    let mut options = Options {
        preserve_devices: !common.no_specials,
        preserve_owner: ferry_worker::location::local::sys::is_root(),
        owner_ids: match common.owner_ids {
            OwnerIdsArg::Numeric => OwnerIds::Numeric,
            OwnerIdsArg::Name => OwnerIds::Name,
            OwnerIdsArg::Both => OwnerIds::Both,
        },
        filters: Filters { include: common.include.clone(), exclude: common.exclude.clone() },
        limits: Limits::default(),
        remove_deleted: mode == Mode::Sync,
        smb: ferry_common::model::SmbOptions {
            security_descriptor_copy: match common.smb_security_descriptor {
                SdCopyArg::None => ferry_common::model::SecurityDescriptorCopy::None,
                SdCopyArg::OwnerDacl => ferry_common::model::SecurityDescriptorCopy::OwnerDacl,
                SdCopyArg::OwnerDaclSacl => ferry_common::model::SecurityDescriptorCopy::OwnerDaclSacl,
            },
            // The path travels (agents read the file themselves), never the password.
            password_file: common.smb_password_file.as_deref().map(|p| absolute(p).to_string_lossy().into_owned()),
        },
        ..Options::default()
    };
    if let Some(t) = t {
        if t.checksum && t.all {
            return Err(UsageError("conflicting flags --checksum and --all (--all copies everything without comparing; drop one)".into()));
        }
        options.checksum = t.checksum;
        options.transfer_mode = if t.all { TransferMode::All } else { TransferMode::Changed };
        options.overwrite = if t.no_overwrite { ferry_common::model::OverwriteMode::Never } else { ferry_common::model::OverwriteMode::Always };
        options.dry_run = t.dry_run;
        options.fsync = !t.no_fsync;
        options.allow_empty_source = t.allow_empty_source;
        options.verify = match t.verify {
            VerifyArg::OnlyFilesTransferred => VerifyMode::OnlyFilesTransferred,
            VerifyArg::PointInTimeConsistent => VerifyMode::PointInTimeConsistent,
            VerifyArg::None => VerifyMode::None,
        };
    }
    Matcher::new(&options.filters).map_err(|e| UsageError(e.to_string()))?;
    let s3 = common.s3.settings()?;
    let link = link_settings(common)?;
    let (source, destination) = if link.is_bound() {
        // The submitter may see neither side: each is checked by the agents that reach it.
        (bound_path("source", &common.source)?, bound_path("destination", &common.destination)?)
    } else {
        check_any_locations(mode, &common.source, &common.destination, options.dry_run, &s3, &options.smb)?
    };
    if mode == Mode::Sync && !options.allow_empty_source && !link.is_bound() && source_is_empty_dir(&source) {
        return Err(UsageError(format!(
            "source {source} is empty: sync would delete everything in {destination} (check that the source is mounted and named right, or pass --allow-empty-source)"
        )));
    }
    Ok(ExecutionSpec {
        id: new_execution_id(),
        mode,
        source,
        destination,
        options,
        report_file: None,
        report_lines: Default::default(),
        s3,
        link,
        task: None,
        log_level: None,
        trace_parent: None,
    })
}

fn link_settings(common: &CommonArgs) -> Result<LinkSettings, UsageError> {
    let a = &common.link;
    let link = LinkSettings {
        source_agents: a.source_agents.clone(),
        destination_agents: a.destination_agents.clone(),
        compress: a.compress,
        bytes_per_second: a.bwlimit.unwrap_or(0),
    };
    if !link.is_bound() {
        // --bwlimit paces whatever each agent moves (local copies and uploads too); only
        // compression needs a link to compress on.
        if a.compress {
            return Err(UsageError("--compress applies to links between agents: bind the locations with --source-agents and --destination-agents".into()));
        }
        return Ok(link);
    }
    if common.etcd.is_empty() {
        return Err(UsageError(
            "--source-agents and --destination-agents bind locations to cluster agents: give --etcd (this host alone reaches both sides; drop the flags)"
                .into(),
        ));
    }
    for sel in link.source_agents.iter().chain(&link.destination_agents) {
        if sel.is_empty() {
            return Err(UsageError("an empty agent name in --source-agents or --destination-agents (give names or labels, comma-separated)".into()));
        }
    }
    Ok(link)
}

/// A location bound to agents: an absolute local path on those agents, or an object store
/// only they reach (checked by them).
fn bound_path(role: &str, uri: &str) -> Result<String, UsageError> {
    if ferry_worker::location::is_test_uri(uri) {
        check_test_location(role, uri)?;
        return Ok(uri.to_string());
    }
    if ferry_worker::location::is_object_uri(uri) {
        ferry_worker::location::s3::S3Url::parse(uri).map_err(|e| UsageError(format!("{role} {e}")))?;
        return Ok(uri.to_string());
    }
    if ferry_worker::location::is_nfs_uri(uri) {
        ferry_worker::location::nfs::url::NfsUrl::parse(uri).map_err(|e| UsageError(format!("{role} {e}")))?;
        return Ok(uri.to_string());
    }
    if ferry_worker::location::is_efs_uri(uri) {
        ferry_worker::location::efs::EfsUrl::parse(uri).map_err(|e| UsageError(format!("{role} {e}")))?;
        return Ok(uri.to_string());
    }
    if ferry_worker::location::is_smb_uri(uri) {
        ferry_worker::location::smb::url::SmbUrl::parse(uri).map_err(|e| UsageError(format!("{role} {e}")))?;
        return Ok(uri.to_string());
    }
    let path = parse_location(role, uri)?;
    if !path.is_absolute() {
        return Err(UsageError(format!("{role} {uri}: a location bound to agents must be an absolute path on those agents")));
    }
    Ok(path.to_string_lossy().into_owned())
}

pub(crate) fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("the tokio runtime starts")
}

/// Connects to etcd as the flags say; every failure is one line (exit 2).
pub(crate) async fn connect(args: &EtcdArgs) -> Result<SharedStore, UsageError> {
    let how = args.resolve(&Default::default()).map_err(UsageError)?;
    EtcdStore::connect_with(&how).await.map(|s| Arc::new(s) as SharedStore).map_err(|e| UsageError(e.to_string()))
}

/// Runs the CLI and returns the process exit code.
pub fn run(cli: Cli) -> i32 {
    let (mode, common, transfer) = match &cli.command {
        Command::Copy(t) => (Mode::Copy, &t.common, Some(t)),
        Command::Sync(t) => (Mode::Sync, &t.common, Some(t)),
        Command::Verify(v) if v.verify != VerifyArg::PointInTimeConsistent => {
            return exit_on_usage(Err(UsageError(format!(
                "ferry verify always compares both complete trees (--verify point-in-time-consistent); --verify {} belongs to copy and sync",
                v.verify.to_possible_value().map(|p| p.get_name().to_owned()).unwrap_or_default()
            ))));
        }
        Command::Verify(v) => (Mode::Verify, &v.common, None),
        Command::Coordinator(args) => return run_coordinator_daemon(args),
        Command::Workers(args) => return exit_on_usage(runtime().block_on(workers_command(args))),
        Command::Exec(args) => return exit_code(exec_command(&args.command)),
        Command::Task { command } => {
            init_logging(LogFormat::Text, "warn");
            return exit_code(crate::cli_api::task_command(command));
        }
        Command::Agent { command } => return exit_code(crate::cli_api::agent_command(command)),
        Command::Ca(args) => return exit_on_usage(crate::ca::run(args)),
    };
    let format = if common.log_format == LogFormatArg::Json { LogFormat::Json } else { LogFormat::Text };
    init_logging(format, "warn");
    // In cluster mode, reach etcd before touching anything (the destination is created by
    // validation).
    let cluster = if common.etcd.is_empty() {
        None
    } else {
        let rt = runtime();
        match rt.block_on(connect(&common.etcd)) {
            Ok(store) => Some((rt, store)),
            Err(UsageError(msg)) => {
                eprintln!("ferry: error: {msg}");
                return 2;
            }
        }
    };
    let mut spec = match build_spec(mode, common, transfer) {
        Ok(s) => s,
        Err(UsageError(msg)) => {
            eprintln!("ferry: error: {msg}");
            return 2;
        }
    };
    // The execution's trace starts here: coordinators and agents parent their spans on it.
    let root = tracing::info_span!("cli", otel.name = %format!("ferry {}", mode.as_str().to_ascii_lowercase()), execution_id = %spec.id);
    spec.trace_parent = ferry_common::traces::traceparent_of(&root);
    let _root = root.enter();
    let progress = crate::progress::Style::for_stderr(!common.no_progress && !common.json);
    if let Some(path) = &common.report {
        if let Err(msg) = crate::report::check_writable(path) {
            eprintln!("ferry: error: {msg}");
            return 2;
        }
    }
    let result = match cluster {
        None => {
            let cfg = RunConfig { spec, movers: common.movers as usize, report: common.report.clone(), progress };
            embedded::run(cfg)
        }
        Some((rt, store)) => {
            // The leading coordinator writes the report; the lines reach it with the results.
            spec.report_file = common.report.as_ref().map(|r| absolute(r).to_string_lossy().into_owned());
            spec.report_lines = if spec.report_file.is_some() { ferry_common::model::ReportLines::All } else { Default::default() };
            rt.block_on(run_in_cluster(store, spec, progress)).map_err(|UsageError(msg)| msg)
        }
    };
    let result = match result {
        Ok(r) => r,
        Err(msg) => {
            eprintln!("ferry: error: {msg}");
            return 2;
        }
    };
    if common.json {
        println!("{}", summary_json(&result.exec));
    } else {
        print_summary(&result.exec);
    }
    if let Some(e) = &result.report_error {
        eprintln!("ferry: error: {e}");
        return 1;
    }
    match result.exec.phase {
        Phase::Success => 0,
        _ => 1,
    }
}

fn exit_code(r: Result<i32, UsageError>) -> i32 {
    match r {
        Ok(code) => code,
        Err(UsageError(msg)) => {
            eprintln!("ferry: error: {msg}");
            2
        }
    }
}

fn exit_on_usage(r: Result<(), UsageError>) -> i32 {
    match r {
        Ok(()) => 0,
        Err(UsageError(msg)) => {
            eprintln!("ferry: error: {msg}");
            2
        }
    }
}

async fn run_in_cluster(store: SharedStore, spec: ExecutionSpec, progress: crate::progress::Style) -> Result<RunResult, UsageError> {
    let id = spec.id.clone();
    cluster::submit(&store, spec).await.map_err(|e| UsageError(format!("cannot submit the execution: {e}")))?;
    let exec = cluster::follow(&store, &id, Progress::new(progress)).await.map_err(UsageError)?;
    let report_error = exec.task_run.report_error.clone();
    Ok(RunResult { exec, report_error })
}

fn run_coordinator_daemon(args: &CoordinatorArgs) -> i32 {
    let cfg = match &args.config {
        Some(path) => match DaemonConfig::load(path) {
            Ok(c) => c,
            Err(e) => return exit_on_usage(Err(UsageError(e))),
        },
        None => DaemonConfig::default(),
    };
    let json = match args.log_format {
        Some(f) => f == LogFormatArg::Json,
        None => cfg.log_format.as_deref() == Some("json"),
    };
    let default_name = format!("{}-{}", hostname(), std::process::id());
    let name = args.name.clone().or(cfg.coordinator.name.clone()).unwrap_or_else(|| default_name.clone());
    ferry_common::telemetry::init_daemon_logging(if json { LogFormat::Json } else { LogFormat::Text }, "info", "ferry-coordinator", &name);
    match crate::daemon::resolve(args, &cfg, default_name) {
        Ok(settings) => crate::daemon::run(settings),
        Err(e) => exit_on_usage(Err(UsageError(e))),
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|s| s.trim().to_string()).unwrap_or_else(|_| "ferry".into())
}

/// `ferry workers`: the agents registered now, straight from the Store (`ferry agent list`
/// also shows the ones that went OFFLINE).
async fn workers_command(args: &ClusterArgs) -> Result<(), UsageError> {
    let store = connect(&args.etcd).await?;
    let agents = cluster::list_agents(&store).await.map_err(|e| UsageError(e.to_string()))?;
    let online: Vec<_> = agents.iter().filter(|a| a.online).collect();
    if args.json {
        let v: Vec<_> = online
            .iter()
            .map(|a| {
                let w = &a.record.info;
                serde_json::json!({"name": w.name, "host": w.host, "movers": w.movers, "pid": w.pid, "locations": w.locations, "labels": w.labels, "link": w.link_addr, "state": "ONLINE", "version": w.version, "commit": w.commit, "last_heartbeat_unix_ms": a.record.heartbeat_unix_ms, "bytes_per_second": a.record.bytes_per_second, "link_peers": a.record.link_peers})
            })
            .collect();
        println!("{}", serde_json::Value::Array(v));
    } else {
        let views: Vec<serde_json::Value> = online.iter().map(|a| serde_json::to_value(crate::api::views::AgentView::from(*a)).unwrap_or_default()).collect();
        print!("{}", crate::cli_api::agent_table(&views, ferry_common::schedule::now_ms()));
    }
    Ok(())
}

fn exec_command(cmd: &ExecCommand) -> Result<i32, UsageError> {
    use crate::cli_api::{exec_api_command, ExecApiCommand};
    let (target, api_cmd) = match cmd {
        ExecCommand::List { task, target } => (target, ExecApiCommand::List { task: task.as_deref() }),
        ExecCommand::Describe { id, target } => (target, ExecApiCommand::Describe(id)),
        ExecCommand::Cancel { id, target } => (target, ExecApiCommand::Cancel(id)),
        ExecCommand::Report { id, target } => (target, ExecApiCommand::Report(id)),
        ExecCommand::Update { id, bytes_per_second, target } => (target, ExecApiCommand::Update { id, bytes_per_second: *bytes_per_second }),
        ExecCommand::Logs { id, follow, level, target } => {
            (target, ExecApiCommand::Logs { id, follow: *follow, level: crate::cli_api::parse_line_level(level.as_deref())? })
        }
    };
    if target.etcd.is_empty() {
        return exec_api_command(api_cmd, &target.api);
    }
    runtime().block_on(exec_etcd_command(api_cmd, &target.etcd, target.api.json)).map(|()| 0)
}

/// `ferry exec ... --etcd`: straight from the Store, for clusters run without the API.
async fn exec_etcd_command(cmd: crate::cli_api::ExecApiCommand<'_>, etcd: &EtcdArgs, json: bool) -> Result<(), UsageError> {
    use crate::cli_api::ExecApiCommand;
    let store = connect(etcd).await?;
    match cmd {
        ExecApiCommand::List { task } => {
            let execs: Vec<_> = cluster::list_executions(&store)
                .await
                .map_err(|e| UsageError(e.to_string()))?
                .into_iter()
                .filter(|e| task.is_none() || e.spec.task.as_deref() == task)
                .collect();
            if json {
                println!("{}", serde_json::Value::Array(execs.iter().map(summary_json).collect()));
            } else {
                println!("{:<14} {:<7} {:<13} {:>12} {:>12} {:>8}  SOURCE -> DESTINATION", "ID", "MODE", "PHASE", "FILES", "BYTES", "FAILED");
                for e in &execs {
                    let c = &e.counters;
                    println!(
                        "{:<14} {:<7} {:<13} {:>12} {:>12} {:>8}  {} -> {}",
                        e.spec.id,
                        e.spec.mode.as_str(),
                        e.phase.as_str(),
                        c.files_transferred + c.files_skipped,
                        crate::progress::human_bytes(c.bytes_transferred),
                        c.files_failed,
                        e.spec.source,
                        e.spec.destination
                    );
                }
            }
        }
        ExecApiCommand::Describe(id) => {
            let exec = cluster::read_execution(&store, id)
                .await
                .map_err(|e| UsageError(e.to_string()))?
                .ok_or_else(|| UsageError(format!("no execution {id} (list them with `ferry exec list`)")))?;
            if json {
                println!("{}", summary_json(&exec));
            } else {
                println!("execution {} ({} -> {}), stage {:?}", exec.spec.id, exec.spec.source, exec.spec.destination, exec.stage);
                print_summary(&exec);
            }
        }
        ExecApiCommand::Cancel(id) => {
            cluster::cancel(&store, id).await.map_err(UsageError)?;
            println!("cancellation requested for execution {id}");
        }
        ExecApiCommand::Logs { id, follow, level } => crate::cli_api::logs_from_store(&store, id, follow, level, json).await?,
        ExecApiCommand::Report(_) | ExecApiCommand::Update { .. } => {
            return Err(UsageError("`exec report` and `exec update` go through the coordinator's API: give --api URL (or FERRY_API) instead of --etcd".into()));
        }
    }
    Ok(())
}
