//! The coordinator's own series for `/metrics`: executions by phase, agents online, tasks and
//! schedules, and DataSync's counters summed over the executions still in history (so they
//! only grow between history purges, as counters should; a purge shows as a counter reset).
//!
//! They are set from the Store at each scrape, into the process's recorder
//! ([`ferry_common::metrics`]), which renders them with everything else this process records
//! (Store latency, and worker series where this process runs movers). No series carries an
//! execution or task name: those are unbounded.

use metrics::{counter, describe_counter, describe_gauge, gauge};

use ferry_common::model::WorkerInfo;
use ferry_common::model::{Counters, Execution, Phase};
use ferry_common::task::{ScheduleStatus, Task};

const PHASES: [Phase; 8] =
    [Phase::Queued, Phase::Launching, Phase::Preparing, Phase::Transferring, Phase::Verifying, Phase::Success, Phase::Error, Phase::Cancelled];

type Pick = fn(&Counters) -> u64;

/// DataSync's counters: (series, help, field).
const COUNTERS: [(&str, &str, Pick); 10] = [
    ("ferry_files_prepared_total", "Files prepared (listed and compared), summed over the executions in history.", |c| c.files_prepared),
    ("ferry_bytes_prepared_total", "Bytes prepared, summed over the executions in history.", |c| c.bytes_prepared),
    ("ferry_files_transferred_total", "Files transferred, summed over the executions in history.", |c| c.files_transferred),
    ("ferry_bytes_transferred_total", "Bytes transferred, summed over the executions in history.", |c| c.bytes_transferred),
    ("ferry_bytes_written_total", "Bytes written at the destination, summed over the executions in history.", |c| c.bytes_written),
    ("ferry_files_skipped_total", "Files skipped as unchanged, summed over the executions in history.", |c| c.files_skipped),
    ("ferry_files_deleted_total", "Files deleted at the destination, summed over the executions in history.", |c| c.files_deleted),
    ("ferry_files_verified_total", "Files verified, summed over the executions in history.", |c| c.files_verified),
    ("ferry_files_failed_total", "Files that failed, summed over the executions in history.", |c| c.files_failed),
    ("ferry_bytes_compressed_total", "Bytes saved by compression on links, summed over the executions in history.", |c| c.bytes_compressed),
];

fn describe() {
    describe_gauge!("ferry_executions", "Executions kept in history, by phase.");
    describe_gauge!("ferry_agents_online", "Agents registered with a live lease.");
    describe_gauge!("ferry_agent_movers", "Movers per execution summed over the online agents (what they registered).");
    describe_gauge!("ferry_tasks", "Tasks defined.");
    describe_gauge!("ferry_schedules_enabled", "Tasks with an enabled schedule.");
    for (name, help, _) in COUNTERS {
        describe_counter!(name, help);
    }
}

/// Sets the coordinator's series from what the Store holds now, and returns the process's
/// whole exposition.
pub fn render(execs: &[Execution], agents: &[WorkerInfo], tasks: &[Task]) -> String {
    let handle = match ferry_common::metrics::install() {
        Ok(h) => h,
        Err(e) => return format!("# {e}\n"),
    };
    static DESCRIBED: std::sync::Once = std::sync::Once::new();
    DESCRIBED.call_once(describe);
    for phase in PHASES {
        let n = execs.iter().filter(|e| e.phase == phase).count();
        gauge!("ferry_executions", "phase" => phase.as_str()).set(n as f64);
    }
    gauge!("ferry_agents_online").set(agents.len() as f64);
    gauge!("ferry_agent_movers").set(agents.iter().map(|a| a.movers).sum::<usize>() as f64);
    gauge!("ferry_tasks").set(tasks.len() as f64);
    let enabled = tasks.iter().filter(|t| t.schedule.as_ref().is_some_and(|s| s.status == ScheduleStatus::Enabled)).count();
    gauge!("ferry_schedules_enabled").set(enabled as f64);
    for (name, _, pick) in COUNTERS {
        counter!(name).absolute(execs.iter().map(|e| pick(&e.counters)).sum());
    }
    handle.render()
}
