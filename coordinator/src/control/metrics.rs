//! Prometheus text for `/metrics`: executions by phase, agents online, tasks and schedules,
//! and DataSync's counters summed over the executions still in history (so they only grow
//! between history purges, as counters should).

use std::collections::BTreeMap;
use std::fmt::Write;

use ferry_common::model::WorkerInfo;
use ferry_common::model::{Execution, Phase};
use ferry_common::task::{ScheduleStatus, Task};

const PHASES: [Phase; 8] =
    [Phase::Queued, Phase::Launching, Phase::Preparing, Phase::Transferring, Phase::Verifying, Phase::Success, Phase::Error, Phase::Cancelled];

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

pub fn render(execs: &[Execution], agents: &[WorkerInfo], tasks: &[Task]) -> String {
    let mut out = String::new();
    let mut by_phase: BTreeMap<&str, u64> = PHASES.iter().map(|p| (p.as_str(), 0)).collect();
    for e in execs {
        *by_phase.entry(e.phase.as_str()).or_default() += 1;
    }
    let _ = writeln!(out, "# HELP ferry_executions Executions kept in history, by phase.\n# TYPE ferry_executions gauge");
    for (phase, n) in &by_phase {
        let _ = writeln!(out, "ferry_executions{{phase=\"{phase}\"}} {n}");
    }
    let _ = writeln!(
        out,
        "# HELP ferry_agents_online Agents registered with a live lease.\n# TYPE ferry_agents_online gauge\nferry_agents_online {}",
        agents.len()
    );
    let movers: usize = agents.iter().map(|a| a.movers).sum();
    let _ = writeln!(out, "# HELP ferry_agent_movers Movers across online agents.\n# TYPE ferry_agent_movers gauge\nferry_agent_movers {movers}");
    let enabled = tasks.iter().filter(|t| t.schedule.as_ref().is_some_and(|s| s.status == ScheduleStatus::Enabled)).count();
    let _ = writeln!(out, "# HELP ferry_tasks Tasks defined.\n# TYPE ferry_tasks gauge\nferry_tasks {}", tasks.len());
    let _ = writeln!(
        out,
        "# HELP ferry_schedules_enabled Tasks with an enabled schedule.\n# TYPE ferry_schedules_enabled gauge\nferry_schedules_enabled {enabled}"
    );
    type Pick = fn(&ferry_common::model::Counters) -> u64;
    let counters: [(&str, &str, Pick); 10] = [
        ("files_prepared", "Files prepared (listed and compared).", |c| c.files_prepared),
        ("bytes_prepared", "Bytes prepared.", |c| c.bytes_prepared),
        ("files_transferred", "Files transferred.", |c| c.files_transferred),
        ("bytes_transferred", "Bytes transferred.", |c| c.bytes_transferred),
        ("bytes_written", "Bytes written at the destination.", |c| c.bytes_written),
        ("files_skipped", "Files skipped as unchanged.", |c| c.files_skipped),
        ("files_deleted", "Files deleted at the destination.", |c| c.files_deleted),
        ("files_verified", "Files verified.", |c| c.files_verified),
        ("files_failed", "Files that failed.", |c| c.files_failed),
        ("bytes_compressed", "Bytes saved by compression.", |c| c.bytes_compressed),
    ];
    for (name, help, pick) in counters {
        let total: u64 = execs.iter().map(|e| pick(&e.counters)).sum();
        let _ = writeln!(out, "# HELP ferry_{name}_total {help}\n# TYPE ferry_{name}_total counter\nferry_{name}_total {total}");
    }
    let _ = writeln!(
        out,
        "# HELP ferry_execution_bytes_transferred Bytes transferred by each unfinished execution.\n# TYPE ferry_execution_bytes_transferred gauge"
    );
    for e in execs.iter().filter(|e| !e.phase.is_terminal()) {
        let _ = writeln!(
            out,
            "ferry_execution_bytes_transferred{{execution=\"{}\",task=\"{}\",phase=\"{}\"}} {}",
            escape(&e.spec.id),
            escape(e.spec.task.as_deref().unwrap_or("")),
            e.phase.as_str(),
            e.counters.bytes_transferred
        );
    }
    out
}
