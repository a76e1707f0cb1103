//! What the API returns: DataSync-shaped views of executions, agents and events, and the
//! error body. Requests use the task types of [`ferry_common::task`] directly.

use ferry_common::model::AgentStatus;
use ferry_common::model::{Execution, Phase};
use ferry_common::paths;
use ferry_common::task::Event;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

#[derive(Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "PascalCase")]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "PascalCase")]
pub struct ErrorDetail {
    /// InvalidRequest, Unauthorized, NotFound, Conflict, Unprocessable, Unavailable.
    pub code: String,
    /// The request field the error is about, when there is one (`Options.Atime`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    pub message: String,
}

#[derive(Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "PascalCase")]
pub struct PhaseView {
    /// QUEUED, LAUNCHING, PREPARING, TRANSFERRING, VERIFYING, SUCCESS, ERROR or CANCELLED.
    pub phase: String,
    pub start_time_unix_ms: u64,
    pub end_time_unix_ms: Option<u64>,
    pub duration_ms: u64,
    /// PENDING while the phase runs; SUCCESS once left for a later phase; ERROR when the
    /// execution failed or was cancelled in it.
    pub status: String,
}

#[derive(Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "PascalCase")]
pub struct CountersView {
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
    pub files_mismatched: u64,
    pub bytes_compressed: u64,
    pub bytes_resumed: u64,
    pub chunks_resent: u64,
    pub shard_retries: u64,
}

#[derive(Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "PascalCase")]
pub struct FailureView {
    pub path: String,
    pub reason: String,
}

#[derive(Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "PascalCase")]
pub struct ExecutionView {
    pub execution_id: String,
    pub task_name: Option<String>,
    /// The current phase (DataSync's Status).
    pub status: String,
    pub mode: String,
    pub source_location: String,
    pub destination_location: String,
    pub start_time_unix_ms: u64,
    pub end_time_unix_ms: Option<u64>,
    pub error: Option<String>,
    pub phases: Vec<PhaseView>,
    pub counters: CountersView,
    pub failures: Vec<FailureView>,
    /// The schedule slot that started it (Unix ms); null when started by a user.
    pub scheduled_slot_unix_ms: Option<u64>,
    /// Where the task report was written, once it was.
    pub report_path: Option<String>,
    /// NONE (no TaskReportConfig), PENDING (written once the execution has ended), WRITTEN or
    /// FAILED (see ReportError).
    pub report_status: String,
    pub report_error: Option<String>,
    /// BytesPerSecond the execution started with; -1 is unlimited.
    pub bytes_per_second: i64,
}

fn phase_status(exec: &Execution, i: usize) -> &'static str {
    let last = i + 1 == exec.phases.len();
    let p = exec.phases[i].phase;
    if p.is_terminal() {
        return if p == Phase::Success { "SUCCESS" } else { "ERROR" };
    }
    if !last {
        // Left for a later phase: failed only if that later phase is the bad end.
        let next_is_end = i + 2 == exec.phases.len() && matches!(exec.phase, Phase::Error | Phase::Cancelled);
        return if next_is_end { "ERROR" } else { "SUCCESS" };
    }
    "PENDING"
}

impl ExecutionView {
    pub fn of(exec: &Execution, now_ms: u64) -> Self {
        let c = &exec.counters;
        let phases = exec
            .phases
            .iter()
            .enumerate()
            .map(|(i, p)| PhaseView {
                phase: p.phase.as_str().to_string(),
                start_time_unix_ms: p.started_unix_ms,
                end_time_unix_ms: p.ended_unix_ms,
                duration_ms: p.ended_unix_ms.unwrap_or(now_ms).saturating_sub(p.started_unix_ms),
                status: phase_status(exec, i).to_string(),
            })
            .collect();
        ExecutionView {
            execution_id: exec.spec.id.clone(),
            task_name: exec.spec.task.clone(),
            status: exec.phase.as_str().to_string(),
            mode: exec.spec.mode.as_str().to_string(),
            source_location: exec.spec.source.clone(),
            destination_location: exec.spec.destination.clone(),
            start_time_unix_ms: exec.started_unix_ms,
            end_time_unix_ms: exec.finished_unix_ms,
            error: exec.error.clone(),
            phases,
            counters: CountersView {
                files_prepared: c.files_prepared,
                bytes_prepared: c.bytes_prepared,
                files_transferred: c.files_transferred,
                bytes_transferred: c.bytes_transferred,
                bytes_written: c.bytes_written,
                files_skipped: c.files_skipped,
                files_deleted: c.files_deleted,
                files_verified: c.files_verified,
                bytes_verified: c.bytes_verified,
                files_failed: c.files_failed,
                files_mismatched: c.files_mismatched,
                bytes_compressed: c.bytes_compressed,
                bytes_resumed: c.bytes_resumed,
                chunks_resent: c.chunks_resent,
                shard_retries: c.shard_retries,
            },
            failures: exec.failures.iter().map(|f| FailureView { path: paths::display(&f.path), reason: f.reason.clone() }).collect(),
            scheduled_slot_unix_ms: exec.task_run.scheduled_slot_ms,
            report_path: exec.task_run.report_path.clone(),
            report_status: match (&exec.task_run.report, &exec.task_run.report_path, &exec.task_run.report_error) {
                (None, _, _) => "NONE",
                (_, Some(_), _) => "WRITTEN",
                (_, None, Some(_)) => "FAILED",
                (_, None, None) => "PENDING",
            }
            .to_string(),
            report_error: exec.task_run.report_error.clone(),
            bytes_per_second: if exec.spec.link.bytes_per_second == 0 { -1 } else { exec.spec.link.bytes_per_second as i64 },
        }
    }
}

#[derive(Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "PascalCase")]
pub struct AgentView {
    pub name: String,
    pub host: String,
    pub movers: u64,
    pub pid: u32,
    pub labels: Vec<String>,
    pub link_address: Option<String>,
    pub started_unix_ms: u64,
    /// ONLINE: registered with a live lease. OFFLINE: it left or its lease lapsed; the rest
    /// is as it was last seen.
    pub status: String,
    /// The agent's release version and build commit (empty for agents built before 0.1.0
    /// stamped them).
    pub version: String,
    pub commit: String,
    /// When the agent last wrote its health record (every 10 s while it runs); 0 when it has
    /// not written one yet.
    pub last_heartbeat_unix_ms: u64,
    /// Bytes per second it moved over its last heartbeat interval.
    pub bytes_per_second: u64,
    /// Bytes it moved since its process started.
    pub bytes_total: u64,
    /// Its last failures (at most 10), oldest first.
    pub recent_errors: Vec<AgentErrorView>,
    /// Agents it has a live link connection with.
    pub link_peers: Vec<String>,
}

#[derive(Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "PascalCase")]
pub struct AgentErrorView {
    pub unix_ms: u64,
    pub execution_id: String,
    /// A stable code when there is one (`CHECKSUM_MISMATCH`, ...), else the error's kind.
    pub code: String,
    pub message: String,
}

impl From<&AgentStatus> for AgentView {
    fn from(a: &AgentStatus) -> Self {
        let (r, w) = (&a.record, &a.record.info);
        AgentView {
            name: w.name.clone(),
            host: w.host.clone(),
            movers: w.movers as u64,
            pid: w.pid,
            labels: w.labels.clone(),
            link_address: w.link_addr.clone(),
            started_unix_ms: w.started_unix_ms,
            status: if a.online { "ONLINE" } else { "OFFLINE" }.into(),
            version: w.version.clone(),
            commit: w.commit.clone(),
            last_heartbeat_unix_ms: r.heartbeat_unix_ms,
            bytes_per_second: if a.online { r.bytes_per_second } else { 0 },
            bytes_total: r.bytes_total,
            recent_errors: r
                .recent_errors
                .iter()
                .map(|e| AgentErrorView { unix_ms: e.unix_ms, execution_id: e.execution.clone(), code: e.code.clone(), message: e.message.clone() })
                .collect(),
            link_peers: if a.online { r.link_peers.clone() } else { Vec::new() },
        }
    }
}

#[derive(Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "PascalCase")]
pub struct EventView {
    /// Pass as `after` to read the events that follow.
    pub id: String,
    #[serde(flatten)]
    pub event: Event,
}

#[derive(Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct ExecutionUpdate {
    /// -1 for unlimited.
    pub bytes_per_second: i64,
}

#[derive(Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "PascalCase")]
pub struct Health {
    /// "ok"
    pub status: String,
    pub version: String,
    /// The commit the coordinator was built from ("unknown" without git at build time).
    pub commit: String,
}
