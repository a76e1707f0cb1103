//! TaskQueueing: which QUEUED executions may launch now. Pure, so the order rules are tested
//! without a Store.
//!
//! Rules (DataSync's):
//! - Executions of one task run one at a time, in the order they were queued.
//! - With TaskQueueing ENABLED, executions of tasks that share agents also wait for each
//!   other, in FIFO order: an agent runs one queued task at a time.
//! - An execution whose task has TaskQueueing DISABLED never waits for other tasks (starting
//!   it while its own task runs is refused up front with a conflict).

use std::collections::BTreeSet;

/// An execution as the planner sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueItem {
    pub exec: String,
    pub task: String,
    pub queueing: bool,
    /// The agents that may take part in it (those reaching its source or destination).
    pub agents: BTreeSet<String>,
}

impl QueueItem {
    fn conflicts_with(&self, other: &QueueItem) -> bool {
        self.task == other.task || (self.queueing && other.queueing && !self.agents.is_disjoint(&other.agents))
    }
}

/// Returns the ids of the `queued` executions (in FIFO order) that may launch, given the
/// executions already `running`. An execution that must wait also holds back every later
/// one it conflicts with, so nobody overtakes an earlier waiter.
pub fn launchable(queued: &[QueueItem], running: &[QueueItem]) -> Vec<String> {
    let mut busy: Vec<&QueueItem> = running.iter().collect();
    let mut out = Vec::new();
    for item in queued {
        if busy.iter().any(|b| item.conflicts_with(b)) {
            // Waits; later conflicting items wait behind it.
            busy.push(item);
            continue;
        }
        out.push(item.exec.clone());
        busy.push(item);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(exec: &str, task: &str, queueing: bool, agents: &[&str]) -> QueueItem {
        QueueItem { exec: exec.into(), task: task.into(), queueing, agents: agents.iter().map(|s| s.to_string()).collect() }
    }

    #[test]
    fn one_execution_per_task_in_order() {
        let q = [item("e1", "a", true, &["w1"]), item("e2", "a", true, &["w1"])];
        assert_eq!(launchable(&q, &[]), vec!["e1"]);
        assert_eq!(launchable(&q[1..], &[q[0].clone()]), Vec::<String>::new());
        assert_eq!(launchable(&q[1..], &[]), vec!["e2"]);
    }

    #[test]
    fn tasks_sharing_agents_wait_in_fifo_order() {
        let running = [item("r", "a", true, &["w1"])];
        let q = [item("e1", "b", true, &["w1", "w2"]), item("e2", "c", true, &["w2"]), item("e3", "d", true, &["w3"])];
        // e1 waits for r (shares w1); e2 shares w2 with the waiting e1, so it does not
        // overtake it; e3 shares nothing and goes.
        assert_eq!(launchable(&q, &running), vec!["e3"]);
    }

    #[test]
    fn disabled_queueing_ignores_other_tasks() {
        let running = [item("r", "a", true, &["w1"])];
        let q = [item("e1", "b", false, &["w1"])];
        assert_eq!(launchable(&q, &running), vec!["e1"]);
    }
}
