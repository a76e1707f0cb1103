//! Domain types: executions, options, shards, results and report entries.
//!
//! Everything here is persisted with [`crate::codec`] (a version byte, then a MessagePack map),
//! so fields can be added with `#[serde(default)]`. Paths are raw bytes relative to a location
//! root (see [`crate::paths`]).

use serde::{Deserialize, Serialize};

use crate::filter::Filters;

pub type RelPath = Vec<u8>;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EntryKind {
    File,
    Dir,
    Symlink,
    HardLink,
    Fifo,
    Socket,
    CharDev,
    BlockDev,
}

impl EntryKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EntryKind::File => "file",
            EntryKind::Dir => "dir",
            EntryKind::Symlink => "symlink",
            EntryKind::HardLink => "hardlink",
            EntryKind::Fifo => "fifo",
            EntryKind::Socket => "socket",
            EntryKind::CharDev => "chardev",
            EntryKind::BlockDev => "blockdev",
        }
    }
    pub fn is_special(self) -> bool {
        matches!(self, EntryKind::Fifo | EntryKind::Socket | EntryKind::CharDev | EntryKind::BlockDev)
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Timestamp {
    pub sec: i64,
    pub nsec: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Mode {
    Copy,
    Sync,
    Verify,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Copy => "copy",
            Mode::Sync => "sync",
            Mode::Verify => "verify",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum VerifyMode {
    OnlyFilesTransferred,
    PointInTimeConsistent,
    None,
}

/// How a file's owner and group are carried when they are kept (DataSync's Uid/Gid).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum OwnerIds {
    /// The numeric ids, as the source has them (INT_VALUE).
    #[default]
    Numeric,
    /// By name: the source's id is named on the host that reads it and that name is looked
    /// up where the destination is written. An id that has no name on either side is not
    /// carried, nor is the other half of the pair (owner and group are set together): the
    /// entry keeps the writer's default owner and group (NAME).
    Name,
    /// By name where both sides know it, else the numeric id, as rsync does (BOTH).
    Both,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TransferMode {
    /// Copy what is new or differs by size and mtime (or by CRC32C with `checksum`).
    Changed,
    All,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum OverwriteMode {
    Always,
    Never,
}

/// Sizes that bound work and memory. Memory per worker is about
/// `movers × (chunk_size + shard_max_files × ~200 B)`; the Store holds about
/// `max_queued_transfer_shards × encoded shard size` of queued work.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    pub shard_max_files: u32,
    pub shard_max_bytes: u64,
    /// Files at least this large are split into part shards.
    pub part_threshold: u64,
    pub part_size: u64,
    /// Directory entries listed per scan shard run before it continues in a new shard.
    pub scan_page_entries: u32,
    /// Scan shards are not claimed while more transfer shards than this are queued.
    pub max_queued_transfer_shards: u32,
    /// Scan pages hand found directories out as new scan shards (16 each) only while fewer
    /// scan shards than this are queued; beyond it they keep them in their continuation, so
    /// the listing frontier is a few keys whatever the tree's shape.
    #[serde(default = "default_max_queued_scan_shards")]
    pub max_queued_scan_shards: u32,
    /// Scan shards are not claimed while this many Settle shards (directory metadata waiting
    /// for older writes) are queued.
    #[serde(default = "default_max_queued_settle_shards")]
    pub max_queued_settle_shards: u32,
    /// Attempts per shard (and per entry) after integrity failures (checksum mismatches)
    /// before its entries are reported failed.
    pub max_attempts: u32,
    /// How long an outage (timeouts, 5xx, a link or the Store down) is retried, from the
    /// first failure, before the entries are reported failed.
    #[serde(default = "default_retry_window_secs")]
    pub retry_window_secs: u64,
    /// Read/write buffer per mover.
    pub chunk_size: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            shard_max_files: 1000,
            shard_max_bytes: 64 << 20,
            part_threshold: 256 << 20,
            part_size: 64 << 20,
            scan_page_entries: 4096,
            max_queued_transfer_shards: 64,
            max_queued_scan_shards: default_max_queued_scan_shards(),
            max_queued_settle_shards: default_max_queued_settle_shards(),
            max_attempts: 3,
            retry_window_secs: default_retry_window_secs(),
            chunk_size: 1 << 20,
        }
    }
}

fn default_retry_window_secs() -> u64 {
    600
}

fn default_max_queued_scan_shards() -> u32 {
    64
}

fn default_max_queued_settle_shards() -> u32 {
    128
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Options {
    pub verify: VerifyMode,
    pub transfer_mode: TransferMode,
    pub overwrite: OverwriteMode,
    /// Compare by CRC32C instead of size and mtime when deciding what changed.
    pub checksum: bool,
    /// PreserveDeletedFiles=REMOVE when true.
    pub remove_deleted: bool,
    /// PreserveDevices: recreate FIFOs, sockets and device nodes.
    pub preserve_devices: bool,
    /// Set owner and group (needs root at the destination).
    pub preserve_owner: bool,
    /// How owner and group travel when `preserve_owner`.
    #[serde(default)]
    pub owner_ids: OwnerIds,
    pub fsync: bool,
    pub dry_run: bool,
    pub filters: Filters,
    pub limits: Limits,
    /// A manifest (local file or `s3://` object): only the paths it lists are transferred
    /// and verified.
    #[serde(default)]
    pub manifest: Option<String>,
    /// `smb://` locations: the password file and which security-descriptor parts travel.
    #[serde(default)]
    pub smb: SmbOptions,
    /// `sync` from a source root that holds nothing deletes everything at the destination:
    /// refused unless this is set (an unmounted file system or a wrong prefix looks empty).
    #[serde(default)]
    pub allow_empty_source: bool,
}

/// DataSync's `SecurityDescriptorCopyFlags`: which parts of an NTFS security descriptor an
/// SMB → SMB copy carries.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SecurityDescriptorCopy {
    None,
    /// The owner and the DACL.
    #[default]
    OwnerDacl,
    /// Also the SACL (the SMB user needs SeSecurityPrivilege on both servers).
    OwnerDaclSacl,
}

/// What `smb://` locations need besides their URL.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SmbOptions {
    pub security_descriptor_copy: SecurityDescriptorCopy,
    /// A file (mode 0600) holding the password; without it `FERRY_SMB_PASSWORD`. The path
    /// travels, never the password.
    pub password_file: Option<String>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            verify: VerifyMode::OnlyFilesTransferred,
            transfer_mode: TransferMode::Changed,
            overwrite: OverwriteMode::Always,
            checksum: false,
            remove_deleted: false,
            preserve_devices: true,
            preserve_owner: true,
            owner_ids: OwnerIds::Numeric,
            fsync: true,
            dry_run: false,
            filters: Filters::default(),
            limits: Limits::default(),
            manifest: None,
            smb: SmbOptions::default(),
            allow_empty_source: false,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecutionSpec {
    pub id: String,
    pub mode: Mode,
    pub source: String,
    pub destination: String,
    pub options: Options,
    /// Where the coordinator writes the report (JSON Lines: one line per entry as results
    /// are folded, then the summary), on the coordinator's host. Agents write nothing: their
    /// lines travel with the shard results.
    #[serde(default)]
    pub report_file: Option<String>,
    /// Which per-entry lines agents send for the report.
    #[serde(default)]
    pub report_lines: ReportLines,
    /// How to reach and write S3 locations; unused when neither side is S3.
    #[serde(default)]
    pub s3: S3Settings,
    /// Which agents reach which side, and how data travels between them.
    #[serde(default)]
    pub link: LinkSettings,
    /// The task this execution runs, when it was started from one.
    #[serde(default)]
    pub task: Option<String>,
    /// LogLevel: what agents and coordinators log about this execution. None (ad-hoc runs)
    /// behaves like BASIC.
    #[serde(default)]
    pub log_level: Option<crate::task::LogLevelOpt>,
    /// The W3C `traceparent` of the span that started the execution (the CLI's, an API
    /// request's, the scheduler's), when traces are on: every coordinator and agent that
    /// works on it parents its spans there, so the execution is one trace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_parent: Option<String>,
}

impl ExecutionSpec {
    /// An execution of `mode` from `source` to `destination`, with no report, link, task or
    /// trace: what a test or a one-off run fills in further.
    pub fn new(id: impl Into<String>, mode: Mode, source: impl Into<String>, destination: impl Into<String>, options: Options) -> Self {
        ExecutionSpec {
            id: id.into(),
            mode,
            source: source.into(),
            destination: destination.into(),
            options,
            report_file: None,
            report_lines: ReportLines::default(),
            s3: S3Settings::default(),
            link: LinkSettings::default(),
            task: None,
            log_level: None,
            trace_parent: None,
        }
    }
}

/// Locations bound to agents. An agent matches a selector when its name or one of its labels
/// is listed; an empty selector matches every agent. When the agent reading a shard cannot
/// reach the destination, it streams the data over QUIC to an agent that can.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct LinkSettings {
    pub source_agents: Vec<String>,
    pub destination_agents: Vec<String>,
    /// zstd per chunk, skipped for data that does not compress.
    pub compress: bool,
    /// BytesPerSecond per agent (0: unlimited).
    pub bytes_per_second: u64,
}

impl LinkSettings {
    /// True when locations are bound to agents: shards then go through the link path, which
    /// works whether or not one agent reaches both sides.
    pub fn is_bound(&self) -> bool {
        !self.source_agents.is_empty() || !self.destination_agents.is_empty()
    }

    /// What an agent with this name and labels can reach.
    pub fn reach(&self, name: &str, labels: &[String]) -> Reach {
        let matches = |sel: &[String]| sel.is_empty() || sel.iter().any(|s| s == name || labels.iter().any(|l| l == s));
        Reach { source: matches(&self.source_agents), destination: matches(&self.destination_agents) }
    }
}

/// Which sides of an execution an agent can reach.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reach {
    pub source: bool,
    pub destination: bool,
}

impl Reach {
    pub const BOTH: Reach = Reach { source: true, destination: true };
}

/// S3 settings that travel with the execution, so every worker addresses the store the same
/// way. Credentials do not travel: each worker takes them from its own AWS credential chain.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct S3Settings {
    /// An S3-compatible endpoint (`http://127.0.0.1:9000`); AWS when unset.
    pub endpoint_url: Option<String>,
    /// Overrides the region from the AWS chain.
    pub region: Option<String>,
    /// Path-style addressing (`endpoint/bucket/key`), which most self-managed stores need.
    pub path_style: bool,
    /// Storage class for uploaded objects (STANDARD, STANDARD_IA, GLACIER_IR, ...).
    pub storage_class: Option<String>,
    /// Server-side encryption: `AES256` (SSE-S3) or `aws:kms` (SSE-KMS).
    pub sse: Option<String>,
    /// The KMS key for SSE-KMS; the bucket's default key when unset.
    pub sse_kms_key_id: Option<String>,
    /// ObjectTags PRESERVE: copy object tags between S3 locations.
    pub preserve_tags: bool,
}

/// DataSync's execution phases. PREPARING and TRANSFERRING overlap in ferry: copying starts
/// while listing goes on; `Phase::Transferring` is shown once listing is done.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Phase {
    Queued,
    Launching,
    Preparing,
    Transferring,
    Verifying,
    Success,
    Error,
    Cancelled,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Queued => "QUEUED",
            Phase::Launching => "LAUNCHING",
            Phase::Preparing => "PREPARING",
            Phase::Transferring => "TRANSFERRING",
            Phase::Verifying => "VERIFYING",
            Phase::Success => "SUCCESS",
            Phase::Error => "ERROR",
            Phase::Cancelled => "CANCELLED",
        }
    }
    pub fn is_terminal(self) -> bool {
        matches!(self, Phase::Success | Phase::Error | Phase::Cancelled)
    }
}

/// Stages gate which shards may be claimed, because some work must wait for all earlier
/// work: hard links need their first path in place, and directory times must be set after
/// everything inside the directory was written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Stage {
    /// Scan, transfer, part, commit and prune shards.
    Transfer = 1,
    Links = 2,
    DirMeta = 3,
    Verify = 4,
}

impl Stage {
    pub fn digit(self) -> char {
        (b'0' + self as u8) as char
    }
    pub fn next(self) -> Option<Stage> {
        match self {
            Stage::Transfer => Some(Stage::Links),
            Stage::Links => Some(Stage::DirMeta),
            Stage::DirMeta => Some(Stage::Verify),
            Stage::Verify => None,
        }
    }
}

/// DataSync's counters, plus ferry's accounting fields. All fields add up across shards.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Counters {
    pub files_prepared: u64,
    pub bytes_prepared: u64,
    pub files_transferred: u64,
    pub bytes_transferred: u64,
    pub bytes_written: u64,
    pub files_skipped: u64,
    pub files_deleted: u64,
    pub files_verified: u64,
    pub bytes_verified: u64,
    pub files_failed: u64,
    pub bytes_compressed: u64,
    /// Entries reported as different by `verify` or POINT_IN_TIME_CONSISTENT.
    pub files_mismatched: u64,
    /// Bytes found already uploaded by an interrupted run and kept (multipart resume).
    pub bytes_resumed: u64,
    /// Link chunks sent again because the writer found them damaged.
    pub chunks_resent: u64,
    pub shards_done: u64,
    pub shard_retries: u64,
}

impl Counters {
    pub fn add(&mut self, o: &Counters) {
        self.files_prepared += o.files_prepared;
        self.bytes_prepared += o.bytes_prepared;
        self.files_transferred += o.files_transferred;
        self.bytes_transferred += o.bytes_transferred;
        self.bytes_written += o.bytes_written;
        self.files_skipped += o.files_skipped;
        self.files_deleted += o.files_deleted;
        self.files_verified += o.files_verified;
        self.bytes_verified += o.bytes_verified;
        self.files_failed += o.files_failed;
        self.bytes_compressed += o.bytes_compressed;
        self.files_mismatched += o.files_mismatched;
        self.bytes_resumed += o.bytes_resumed;
        self.chunks_resent += o.chunks_resent;
        self.shards_done += o.shards_done;
        self.shard_retries += o.shard_retries;
    }
}

/// When an execution entered a phase and how that phase ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PhaseRecord {
    pub phase: Phase,
    pub started_unix_ms: u64,
    #[serde(default)]
    pub ended_unix_ms: Option<u64>,
}

/// How a task execution came to be and what the control plane still owes it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct TaskRun {
    /// The schedule slot (Unix ms) that started it; None when a user started it.
    pub scheduled_slot_ms: Option<u64>,
    /// The report configuration captured at start.
    pub report: Option<crate::task::TaskReportConfig>,
    /// Where the report was written, once it was.
    pub report_path: Option<String>,
    /// Why the report could not be written.
    pub report_error: Option<String>,
    /// The outcome was folded into the task's schedule state (exactly once).
    pub outcome_recorded: bool,
    /// TaskQueueing was enabled when it started.
    pub queueing: bool,
    /// Its place in the queue: the `pending/{pos}-{exec}` key while it is QUEUED.
    pub queue_position: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Execution {
    pub spec: ExecutionSpec,
    pub phase: Phase,
    pub stage: Stage,
    /// True once no scan shard is left: listing is complete and counters are final totals.
    #[serde(default)]
    pub listing_done: bool,
    pub counters: Counters,
    pub started_unix_ms: u64,
    #[serde(default)]
    pub finished_unix_ms: Option<u64>,
    #[serde(default)]
    pub error: Option<String>,
    /// The first failures, for the summary; the report has all of them.
    #[serde(default)]
    pub failures: Vec<Failure>,
    /// Every phase entered, in order, with its start and end.
    #[serde(default)]
    pub phases: Vec<PhaseRecord>,
    #[serde(default)]
    pub task_run: TaskRun,
    /// Bytes of the report file that hold folded lines: a coordinator that takes over cuts
    /// the file back to this before it appends, so every line is written exactly once.
    #[serde(default)]
    pub report_bytes: u64,
}

/// An agent's registration (`/ferry/v1/workers/{id}`, under its lease).
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
pub struct WorkerInfo {
    pub name: String,
    pub host: String,
    pub movers: usize,
    pub pid: u32,
    /// Location prefixes this agent can reach (`file:///` means every local path).
    #[serde(default)]
    pub locations: Vec<String>,
    #[serde(default)]
    pub started_unix_ms: u64,
    /// Labels that locations can be bound to.
    #[serde(default)]
    pub labels: Vec<String>,
    /// Where other agents reach this one's link endpoint (`host:port`, UDP), if it has one.
    #[serde(default)]
    pub link_addr: Option<String>,
    /// The agent's release version and commit (empty from agents older than 0.1.0's stamp),
    /// so a rolling upgrade shows which agents still run the old build.
    #[serde(default)]
    pub version: String,
    #[serde(default)]
    pub commit: String,
}

/// What an agent last said about itself (`/ferry/v1/agents/{id}`, no lease): rewritten by
/// the agent every heartbeat, so an agent that died is still listed, OFFLINE, with the state
/// it was last seen in. Its registration (`workers/{id}`, leased) says whether it is ONLINE.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
pub struct AgentRecord {
    pub info: WorkerInfo,
    /// When the agent last wrote this record.
    #[serde(default)]
    pub heartbeat_unix_ms: u64,
    /// Bytes the agent moved (read for a peer, or written) per second over its last
    /// heartbeat interval.
    #[serde(default)]
    pub bytes_per_second: u64,
    /// Bytes moved since the agent's process started.
    #[serde(default)]
    pub bytes_total: u64,
    /// The last few failures of its shards and entries, newest last.
    #[serde(default)]
    pub recent_errors: Vec<AgentError>,
    /// Agents it has a live link connection with, by name (or address, for a writer it
    /// dialed before learning the name).
    #[serde(default)]
    pub link_peers: Vec<String>,
}

/// An agent as listed: its last record, and whether it is registered (ONLINE) now.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentStatus {
    pub record: AgentRecord,
    pub online: bool,
}

/// Every agent ever seen: the kept `records` joined with the live `registrations`, by name.
/// A live agent without a record yet (it has just started, or runs a release without
/// heartbeats) is listed from its registration, and a live registration wins over the
/// record's older copy of it (a restart changes the pid and version). A record without a
/// registration is an agent that left or died: OFFLINE, as last seen.
pub fn agent_statuses(registrations: Vec<WorkerInfo>, records: Vec<AgentRecord>) -> Vec<AgentStatus> {
    let mut by_name: std::collections::BTreeMap<String, AgentStatus> =
        records.into_iter().map(|record| (record.info.name.clone(), AgentStatus { record, online: false })).collect();
    for info in registrations {
        let status = by_name.entry(info.name.clone()).or_insert_with(|| AgentStatus { record: AgentRecord::default(), online: true });
        status.online = true;
        if status.record.info != info {
            // A new process under the name: what the record says of the old one is stale.
            if status.record.info.pid != info.pid || status.record.info.host != info.host {
                status.record = AgentRecord::default();
            }
            status.record.info = info;
        }
    }
    by_name.into_values().collect()
}

/// How many recent errors an [`AgentRecord`] keeps.
pub const AGENT_RECENT_ERRORS: usize = 10;

/// One failure an agent saw.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
pub struct AgentError {
    pub unix_ms: u64,
    pub execution: String,
    /// A stable code when there is one (`CHECKSUM_MISMATCH`, ...), else the error's kind.
    pub code: String,
    pub message: String,
}

impl Execution {
    /// Moves to `phase`, closing the current phase's record.
    pub fn set_phase(&mut self, phase: Phase, now_ms: u64) {
        if self.phase == phase && !self.phases.is_empty() {
            return;
        }
        if let Some(last) = self.phases.last_mut() {
            last.ended_unix_ms.get_or_insert(now_ms);
        }
        self.phase = phase;
        let ended = phase.is_terminal().then_some(now_ms);
        self.phases.push(PhaseRecord { phase, started_unix_ms: now_ms, ended_unix_ms: ended });
    }
}

/// A directory to list, with where to resume when an earlier run of the shard listed part of
/// it (a readdir cookie, stable for the directory on ext4, XFS and NFS).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScanDir {
    #[serde(with = "serde_bytes")]
    pub path: RelPath,
    #[serde(default)]
    pub cookie: Option<i64>,
    /// Where an object-store listing resumes: the last name already listed.
    #[serde(default, with = "serde_bytes")]
    pub after: Option<Vec<u8>>,
    /// The directory matched an include filter, so everything below is included.
    #[serde(default)]
    pub included: bool,
    /// An earlier page of this directory made hard links in it: its metadata waits for the
    /// Links stage (a DirMeta shard), not for its own transfers (a Settle shard).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub links: bool,
}

/// One entry to move, as the scanner saw it at the source.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    #[serde(with = "serde_bytes")]
    pub path: RelPath,
    pub kind: EntryKind,
    pub size: u64,
    pub mtime: Timestamp,
    /// CHANGED with `--checksum`: the destination exists with the same size, so compare CRCs
    /// before copying.
    #[serde(default)]
    pub compare_checksum: bool,
    /// The scan could not tell whether the destination holds it unchanged (an object store
    /// lists sizes but not metadata): the writer compares before writing.
    #[serde(default)]
    pub check_dest: bool,
}

impl Entry {
    /// The scan decided this entry must be written: the writer need not compare.
    pub fn decided(&self) -> bool {
        !self.check_dest && !self.compare_checksum
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkEntry {
    #[serde(with = "serde_bytes")]
    pub path: RelPath,
    /// The first path of the hard-link set, already copied in the Transfer stage.
    #[serde(with = "serde_bytes")]
    pub target: RelPath,
    pub size: u64,
}

/// Source directory metadata captured when it was listed (listing changes its atime), so the
/// agent that sets it needs no access to the source.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirMeta {
    #[serde(with = "serde_bytes")]
    pub path: RelPath,
    pub mode: u32,
    /// `u32::MAX` when the source keeps no owner.
    pub uid: u32,
    pub gid: u32,
    pub atime: Timestamp,
    pub mtime: Timestamp,
    /// The directory's extended attributes, when both sides keep them; `None` leaves the
    /// destination's alone.
    #[serde(default)]
    pub xattrs: Option<Vec<(serde_bytes::ByteBuf, serde_bytes::ByteBuf)>>,
}

/// The kinds of shard. Each has one letter in shard ids (`{stage}{letter}-{hash}`), so that
/// claimers choose by kind from keys alone; letters sort in claim-preference order within a
/// stage: finish started files first, list last, which keeps the frontier small.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ShardKind {
    Commit,
    Part,
    Transfer,
    Prune,
    /// Directory metadata set as soon as everything written into the directories is in place
    /// (see [`ShardBody::Settle`]).
    Settle,
    Scan,
    Links,
    DirMeta,
    Verify,
}

impl ShardKind {
    pub const ALL: [ShardKind; 9] = [
        ShardKind::Commit,
        ShardKind::Part,
        ShardKind::Transfer,
        ShardKind::Prune,
        ShardKind::Settle,
        ShardKind::Scan,
        ShardKind::Links,
        ShardKind::DirMeta,
        ShardKind::Verify,
    ];

    pub fn letter(self) -> char {
        match self {
            ShardKind::Commit => 'a',
            ShardKind::Part => 'b',
            ShardKind::Transfer => 'c',
            ShardKind::Prune => 'd',
            ShardKind::Settle => 'e',
            ShardKind::Scan => 's',
            ShardKind::Links => 'l',
            ShardKind::DirMeta => 'm',
            ShardKind::Verify => 'v',
        }
    }

    pub fn stage(self) -> Stage {
        match self {
            ShardKind::Commit | ShardKind::Part | ShardKind::Transfer | ShardKind::Prune | ShardKind::Settle | ShardKind::Scan => Stage::Transfer,
            ShardKind::Links => Stage::Links,
            ShardKind::DirMeta => Stage::DirMeta,
            ShardKind::Verify => Stage::Verify,
        }
    }

    /// The kinds of a stage, in claim-preference order.
    pub fn of_stage(stage: Stage) -> impl Iterator<Item = ShardKind> {
        Self::ALL.into_iter().filter(move |k| k.stage() == stage)
    }

    /// Kinds that count as the transfer backlog for scan backpressure.
    pub fn is_backlog(self) -> bool {
        matches!(self, ShardKind::Commit | ShardKind::Part | ShardKind::Transfer)
    }

    /// Kinds that write into destination directories: a Settle shard waits for every one of
    /// them that is older than itself (see [`ShardBody::Settle`]).
    pub fn writes_entries(self) -> bool {
        matches!(self, ShardKind::Commit | ShardKind::Part | ShardKind::Transfer | ShardKind::Prune)
    }

    /// The kind of a shard id (its second character), if it names one.
    pub fn of_id(id: &str) -> Option<ShardKind> {
        let letter = id.chars().nth(1)?;
        Self::ALL.into_iter().find(|k| k.letter() == letter && id.starts_with(k.stage().digit()))
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ShardBody {
    Scan {
        dirs: Vec<ScanDir>,
    },
    Transfer {
        entries: Vec<Entry>,
    },
    /// Bytes `[offset, offset+len)` of one large file; `group` names the file's part set.
    Part {
        file: Entry,
        index: u32,
        count: u32,
        offset: u64,
        len: u64,
        group: String,
    },
    /// All parts are written: check the combined CRC, make durable, rename, set metadata.
    Commit {
        file: Entry,
        count: u32,
        group: String,
    },
    /// Delete what the destination directory has and the source does not (sync).
    Prune {
        dir: ScanDir,
    },
    Links {
        links: Vec<LinkEntry>,
    },
    /// Directory metadata that waits for the end of the Transfer stage: directories that
    /// lose their owner's write or search permission, and directories that get hard links.
    DirMeta {
        dirs: Vec<DirMeta>,
    },
    /// Directory metadata set during the Transfer stage, once every shard that writes into
    /// these directories is done. A directory's times change only when its own entries do, and
    /// every shard that writes into a directory comes from the scan pages that listed it, so
    /// it was emitted no later than the page that finished the listing and emitted this shard.
    /// Shard ids carry the revision of the scan page they came from (their origin, see
    /// [`Shard::child_id`]): a Settle shard is claimable once no queued shard that writes
    /// entries has an origin at or before its own. That keeps directory metadata out of the
    /// Store except for a short while, whatever the tree's shape.
    Settle {
        dirs: Vec<DirMeta>,
    },
    /// Compare source and destination directories (verify, POINT_IN_TIME_CONSISTENT).
    Verify {
        dirs: Vec<ScanDir>,
    },
}

impl ShardBody {
    pub fn stage(&self) -> Stage {
        match self {
            ShardBody::Scan { .. } | ShardBody::Transfer { .. } | ShardBody::Part { .. } | ShardBody::Commit { .. } | ShardBody::Prune { .. } => {
                Stage::Transfer
            }
            ShardBody::Links { .. } => Stage::Links,
            ShardBody::DirMeta { .. } => Stage::DirMeta,
            ShardBody::Settle { .. } => Stage::Transfer,
            ShardBody::Verify { .. } => Stage::Verify,
        }
    }
    pub fn kind(&self) -> ShardKind {
        match self {
            ShardBody::Commit { .. } => ShardKind::Commit,
            ShardBody::Part { .. } => ShardKind::Part,
            ShardBody::Transfer { .. } => ShardKind::Transfer,
            ShardBody::Prune { .. } => ShardKind::Prune,
            ShardBody::Scan { .. } => ShardKind::Scan,
            ShardBody::Links { .. } => ShardKind::Links,
            ShardBody::DirMeta { .. } => ShardKind::DirMeta,
            ShardBody::Settle { .. } => ShardKind::Settle,
            ShardBody::Verify { .. } => ShardKind::Verify,
        }
    }
    pub fn is_scan(&self) -> bool {
        matches!(self, ShardBody::Scan { .. } | ShardBody::Verify { .. })
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shard {
    pub id: String,
    pub attempt: u32,
    pub body: ShardBody,
    #[serde(default)]
    pub last_error: Option<String>,
    /// A retried shard runs no earlier than this (Unix ms): the backoff of the failure that
    /// queued it again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_before_ms: Option<u64>,
    /// When its work first failed for a transient reason (Unix ms): retries stop once that is
    /// a retry window ago.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failing_since_ms: Option<u64>,
    /// The `create_revision` of its queue key, filled in when it is claimed (not stored): a
    /// scan page's children carry it as their origin.
    #[serde(skip)]
    pub revision: i64,
}

impl Shard {
    /// Ids are `{stage}{kind}-{origin:012x}-{hash:016x}.{seq:x}`: deterministic from the
    /// origin, the parent and the sequence number, so a retried scan re-emits the same ids
    /// instead of duplicating work. The origin is the Store revision at which the scan page
    /// that planned the work was queued (see [`ShardBody::Settle`]); keys of one kind sort by
    /// it, so claimers that read keys in order take older work first.
    pub fn child_id(parent: &str, origin: u64, seq: u64, body: &ShardBody) -> String {
        let h = ((crc32c::crc32c(parent.as_bytes()) as u64) << 32) | crc32c::crc32c_append(0x5bd1_e995, parent.as_bytes()) as u64;
        format!("{}{}-{:012x}-{h:016x}.{seq:x}", body.stage().digit(), body.kind().letter(), origin.min(ORIGIN_MAX))
    }

    /// The origin an id carries; 0 for ids without one (queued by an older ferry), which
    /// counts as older than everything.
    pub fn origin_of(id: &str) -> u64 {
        match (id.get(3..15), id.as_bytes().get(15)) {
            (Some(hex), Some(b'-')) => u64::from_str_radix(hex, 16).unwrap_or(0),
            _ => 0,
        }
    }

    /// The origin of the shards this one emits: a scan page's own revision, and for any other
    /// shard (a part that queues its file's commit) the origin it carries itself.
    pub fn origin_of_children(&self) -> u64 {
        match self.body {
            ShardBody::Scan { .. } | ShardBody::Verify { .. } => self.revision.max(0) as u64,
            _ => Self::origin_of(&self.id),
        }
    }

    pub fn new(id: String, body: ShardBody) -> Self {
        Shard { id, attempt: 1, body, last_error: None, not_before_ms: None, failing_since_ms: None, revision: 0 }
    }
}

/// Origins are written in 12 hex digits.
const ORIGIN_MAX: u64 = (1 << 48) - 1;

/// Per-part record kept while a large file's parts are being written.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartSet {
    /// (index, crc32c, len) of each finished part.
    pub done: Vec<(u32, u32, u64)>,
    /// Parts that failed for good, with the reason; the file is then reported failed.
    #[serde(default)]
    pub failed: Vec<(u32, String)>,
    /// The object store's multipart upload that every part of the file goes into.
    #[serde(default)]
    pub upload_id: Option<String>,
    /// The file the upload is for, so an execution that ends early can abort it.
    #[serde(default, with = "serde_bytes")]
    pub path: Option<Vec<u8>>,
    /// (part number, MD5 hex) of every object part stored, as the store reported and the
    /// uploader checked them: the commit derives the object's expected ETag from them. Kept
    /// only up to [`MAX_PART_TAGS`] parts, to bound the value's size.
    #[serde(default)]
    pub part_tags: Vec<(u32, String)>,
    /// The source file's metadata as the parts read it (mode, owner, times, extended
    /// attributes), for the commit, which may run where the source is out of reach.
    #[serde(default)]
    pub source: Option<FileMeta>,
}

/// A file's metadata as it travels to an agent that cannot see the source.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileMeta {
    pub mode: u32,
    /// `None` when the owner is not preserved.
    pub owner: Option<(u32, u32)>,
    pub atime: Timestamp,
    pub mtime: Timestamp,
    #[serde(default)]
    pub xattrs: Vec<(serde_bytes::ByteBuf, serde_bytes::ByteBuf)>,
    #[serde(default)]
    pub tags: Option<String>,
}

/// Most part tags a [`PartSet`] keeps (about 40 bytes each).
pub const MAX_PART_TAGS: usize = 2048;

impl PartSet {
    /// True once every part has finished or failed.
    pub fn is_complete(&self, count: u32) -> bool {
        (self.done.len() + self.failed.len()) as u32 >= count
    }

    /// The whole-file CRC, combined from the part CRCs in order.
    pub fn combined_crc(&self) -> u32 {
        let mut parts = self.done.clone();
        parts.sort_by_key(|p| p.0);
        parts.iter().fold(0u32, |acc, &(i, crc, len)| if i == 0 { crc } else { crate::crc::combine(acc, crc, len) })
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    #[serde(with = "serde_bytes")]
    pub path: RelPath,
    pub reason: String,
}

/// What a shard contributed, written to `done/{shard}` and folded into the counters.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardResult {
    /// Who committed it (`worker#lease`): report lines carry the same tag, so the merge keeps
    /// exactly the lines of committed attempts.
    #[serde(default)]
    pub holder: String,
    pub counters: Counters,
    /// The first few failures, for the summary; the report file has all of them.
    pub failures: Vec<Failure>,
    /// How many report chunks the completion wrote beside it; `None` from an older ferry,
    /// whose chunks must be looked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report_chunks: Option<u32>,
}

/// How many failures a shard result carries; the rest are only in the report.
pub const MAX_FAILURES_PER_RESULT: usize = 16;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EntryStatus {
    Transferred,
    Skipped,
    Verified,
    Deleted,
    Failed,
}

impl EntryStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            EntryStatus::Transferred => "transferred",
            EntryStatus::Skipped => "skipped",
            EntryStatus::Verified => "verified",
            EntryStatus::Deleted => "deleted",
            EntryStatus::Failed => "failed",
        }
    }
}

/// One line of the task report, with what DataSync's task reports carry: path, type, size,
/// mtime, checksum, when it was handled, a status, and for a failure or a skip a stable code
/// and a message. Lines travel with their shard's result through the Store; only the
/// coordinator writes them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportEntry {
    #[serde(with = "serde_bytes")]
    pub path: RelPath,
    pub kind: EntryKind,
    pub status: EntryStatus,
    #[serde(default)]
    pub reason: Option<String>,
    /// A stable code for the reason (`CHECKSUM_MISMATCH`, `PATH_TOO_LONG`, ...).
    #[serde(default)]
    pub code: Option<String>,
    pub size: u64,
    #[serde(default)]
    pub crc32c: Option<u32>,
    #[serde(default)]
    pub mtime: Option<Timestamp>,
    /// When the entry was handled (Unix ms).
    #[serde(default)]
    pub at_ms: u64,
}

/// Report lines of one shard attempt, as stored beside its result (`report/{shard}@{attempt}.{n}`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportChunk {
    pub entries: Vec<ReportEntry>,
}

/// Which report lines an execution's agents send to the coordinator.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReportLines {
    /// No per-entry lines: no report, or a summary-only one.
    #[default]
    None,
    /// Failures (and mismatches) only.
    Errors,
    /// Every entry.
    All,
}

impl ReportLines {
    pub fn wants(self, status: EntryStatus) -> bool {
        match self {
            ReportLines::None => false,
            ReportLines::Errors => status == EntryStatus::Failed,
            ReportLines::All => true,
        }
    }
}

impl ReportEntry {
    pub fn to_json(&self) -> serde_json::Value {
        let mut v = serde_json::json!({
            "type": "entry",
            "path": crate::paths::display(&self.path),
            "status": self.status.as_str(),
            "kind": self.kind.as_str(),
            "size": self.size,
            "crc32c": self.crc32c.map(crate::crc::to_hex),
        });
        if let Some(m) = &self.mtime {
            v["mtime"] = serde_json::Value::String(format!("{}.{:09}", m.sec, m.nsec));
        }
        if self.at_ms > 0 {
            v["handled_unix_ms"] = serde_json::Value::from(self.at_ms);
        }
        if let Some(r) = &self.reason {
            v["reason"] = serde_json::Value::String(r.clone());
        }
        if let Some(c) = &self.code {
            v["code"] = serde_json::Value::String(c.clone());
        }
        if std::str::from_utf8(&self.path).is_err() {
            v["path_encoding"] = serde_json::Value::String("escaped".into());
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_ids_are_deterministic_and_sort_by_stage_and_kind() {
        let body = ShardBody::Transfer { entries: vec![] };
        assert_eq!(Shard::child_id("1s-root", 9, 3, &body), Shard::child_id("1s-root", 9, 3, &body));
        assert_ne!(Shard::child_id("1s-root", 9, 3, &body), Shard::child_id("1s-root", 9, 4, &body));
        assert!(Shard::child_id("x", 9, 1, &body).starts_with("1c-"));
        assert!(Shard::child_id("x", 9, 1, &ShardBody::Links { links: vec![] }).starts_with("2l-"));
        assert!(Shard::child_id("x", 10, 1, &body) > Shard::child_id("y", 9, 7, &body), "older origins sort first");
    }

    #[test]
    fn ids_carry_their_origin_and_their_kind() {
        let settle = ShardBody::Settle { dirs: vec![] };
        let id = Shard::child_id("1s-x", 0xabc, 2, &settle);
        assert_eq!(Shard::origin_of(&id), 0xabc);
        assert_eq!(ShardKind::of_id(&id), Some(ShardKind::Settle));
        assert_eq!(Shard::origin_of("1c-00000000000000ab.1"), 0, "an id from before origins counts as oldest");
        assert_eq!(Shard::origin_of("1c"), 0);
        let mut scan = Shard::new(Shard::child_id("p", 5, 0, &ShardBody::Scan { dirs: vec![] }), ShardBody::Scan { dirs: vec![] });
        scan.revision = 77;
        assert_eq!(scan.origin_of_children(), 77, "a scan page's children carry its revision");
        let transfer = Shard::child_id("p", 5, 0, &ShardBody::Transfer { entries: vec![] });
        assert_eq!(Shard::origin_of(&transfer), 5);
    }

    #[test]
    fn shard_kinds_have_one_letter_each_in_claim_order() {
        let letters: Vec<char> = ShardKind::ALL.iter().map(|k| k.letter()).collect();
        let mut unique = letters.clone();
        unique.dedup();
        assert_eq!(letters, unique, "one letter per kind");
        let transfer: Vec<ShardKind> = ShardKind::of_stage(Stage::Transfer).collect();
        assert_eq!(
            transfer,
            [ShardKind::Commit, ShardKind::Part, ShardKind::Transfer, ShardKind::Prune, ShardKind::Settle, ShardKind::Scan],
            "started files first, listing last"
        );
        for kind in ShardKind::ALL {
            assert!(transfer.contains(&kind) == (kind.stage() == Stage::Transfer));
        }
    }

    #[test]
    fn report_lines_round_trip_through_the_codec() {
        let chunk = ReportChunk {
            entries: vec![ReportEntry {
                path: b"caf\xe9".to_vec(),
                kind: EntryKind::File,
                status: EntryStatus::Failed,
                reason: Some("why".into()),
                code: Some("CHECKSUM_MISMATCH".into()),
                size: 3,
                crc32c: Some(7),
                mtime: Some(Timestamp { sec: 1, nsec: 2 }),
                at_ms: 9,
            }],
        };
        assert_eq!(crate::codec::decode::<ReportChunk>(&crate::codec::encode(&chunk).unwrap()).unwrap(), chunk);
        let json = chunk.entries[0].to_json();
        assert_eq!((json["code"].as_str(), json["mtime"].as_str()), (Some("CHECKSUM_MISMATCH"), Some("1.000000002")));
    }

    #[test]
    fn part_crcs_combine_into_the_file_crc() {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i * 7) as u8).collect();
        let parts = [(0u32, 0usize, 4000usize), (2, 7000, 3000), (1, 4000, 3000)];
        let set = PartSet {
            failed: vec![],
            upload_id: None,
            path: None,
            part_tags: vec![],
            source: None,
            done: parts.iter().map(|&(i, o, l)| (i, crc32c::crc32c(&data[o..o + l]), l as u64)).collect(),
        };
        assert_eq!(set.combined_crc(), crc32c::crc32c(&data));
    }

    #[test]
    fn shard_round_trips_through_the_codec() {
        let shard = Shard::new(
            "1c-x".into(),
            ShardBody::Transfer {
                entries: vec![Entry {
                    path: b"caf\xe9/x\ny".to_vec(),
                    kind: EntryKind::File,
                    size: 5,
                    mtime: Timestamp { sec: 1, nsec: 2 },
                    compare_checksum: false,
                    check_dest: false,
                }],
            },
        );
        let bytes = crate::codec::encode(&shard).unwrap();
        assert_eq!(crate::codec::decode::<Shard>(&bytes).unwrap(), shard);
    }

    #[test]
    fn agents_are_listed_online_from_registrations_and_offline_from_records_alone() {
        let info = |name: &str, pid: u32| WorkerInfo { name: name.into(), host: "h".into(), pid, ..WorkerInfo::default() };
        let record =
            |name: &str, pid: u32, bytes: u64| AgentRecord { info: info(name, pid), heartbeat_unix_ms: 5, bytes_total: bytes, ..AgentRecord::default() };
        let listed = agent_statuses(
            vec![info("live", 1), info("new", 2), info("restarted", 9)],
            vec![record("live", 1, 10), record("dead", 3, 30), record("restarted", 8, 80)],
        );
        let by: std::collections::BTreeMap<_, _> = listed.iter().map(|a| (a.record.info.name.as_str(), a)).collect();
        assert_eq!(by.keys().copied().collect::<Vec<_>>(), ["dead", "live", "new", "restarted"], "every agent once, by name");
        assert!(by["live"].online && by["live"].record.bytes_total == 10, "a live agent with its record");
        assert!(by["new"].online && by["new"].record.heartbeat_unix_ms == 0, "registered, no heartbeat yet");
        assert!(!by["dead"].online && by["dead"].record.bytes_total == 30, "gone, as last seen");
        let restarted = &by["restarted"];
        assert!(restarted.online && restarted.record.info.pid == 9, "the live registration wins");
        assert_eq!(restarted.record.bytes_total, 0, "the old process's numbers are not the new one's");
    }
}
