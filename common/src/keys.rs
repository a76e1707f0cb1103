//! The Store key layout (docs/store-layout.md). Every key starts with `/ferry/v1/`.
//!
//! ```text
//! /ferry/v1/workers/{id}                   WorkerInfo            (leased by the worker)
//! /ferry/v1/agents/{id}                    AgentRecord           (no lease: kept after it dies)
//! /ferry/v1/leader                         coordinator election  (leased by the leader)
//! /ferry/v1/active/{exec}                  ""                    executions still running
//! /ferry/v1/index/{exec}                   ""                    every execution, for listing
//! /ferry/v1/exec/{exec}/meta               Execution
//! /ferry/v1/exec/{exec}/cancel             ""                    cancellation request
//! /ferry/v1/exec/{exec}/queue/{shard}      Shard; id = {stage digit}{kind letter}-{origin}-{hash}.{seq}
//! /ferry/v1/exec/{exec}/claim/{shard}      worker id             (leased by the worker)
//! /ferry/v1/exec/{exec}/done/{shard}       ShardResult           (folded, then deleted)
//! /ferry/v1/exec/{exec}/report/{shard}.{n} ReportChunk           (folded into the report, then deleted)
//! /ferry/v1/exec/{exec}/links/{dev}:{ino}  first path of a hard-link set
//! /ferry/v1/exec/{exec}/parts/{group}      PartSet of a large file being written in parts
//! /ferry/v1/exec/{exec}/settings           ExecSettings          (BytesPerSecond while running)
//! /ferry/v1/exec/{exec}/agenterr/{agent}   why that agent cannot take part
//! /ferry/v1/exec/{exec}/logstreams/{agent} ""                    agents that shipped log lines
//! /ferry/v1/exec/{exec}/logs/{agent}/{seq} LogChunk              an agent's log lines, in order
//! /ferry/v1/tasks/{task}                   Task
//! /ferry/v1/sched/{task}                   ScheduleState         (written by the leader)
//! /ferry/v1/pending/{pos}-{exec}           ""                    QUEUED executions, FIFO
//! /ferry/v1/finished/{exec}                ""                    ended task executions the
//!                                                                control plane has not handled
//! /ferry/v1/events/{ms}-{seq}              Event
//! ```

use crate::model::{ShardKind, Stage};

pub const ROOT: &str = "/ferry/v1/";

pub fn workers() -> Vec<u8> {
    format!("{ROOT}workers/").into_bytes()
}
pub fn worker(id: &str) -> Vec<u8> {
    format!("{ROOT}workers/{id}").into_bytes()
}
pub fn agent_records() -> Vec<u8> {
    format!("{ROOT}agents/").into_bytes()
}
pub fn agent_record(id: &str) -> Vec<u8> {
    format!("{ROOT}agents/{id}").into_bytes()
}
pub fn leader() -> Vec<u8> {
    format!("{ROOT}leader").into_bytes()
}
pub fn active_prefix() -> Vec<u8> {
    format!("{ROOT}active/").into_bytes()
}
pub fn active(exec: &str) -> Vec<u8> {
    format!("{ROOT}active/{exec}").into_bytes()
}
pub fn index_prefix() -> Vec<u8> {
    format!("{ROOT}index/").into_bytes()
}
pub fn index(exec: &str) -> Vec<u8> {
    format!("{ROOT}index/{exec}").into_bytes()
}
pub fn tasks() -> Vec<u8> {
    format!("{ROOT}tasks/").into_bytes()
}
pub fn task(name: &str) -> Vec<u8> {
    format!("{ROOT}tasks/{name}").into_bytes()
}
pub fn sched(task: &str) -> Vec<u8> {
    format!("{ROOT}sched/{task}").into_bytes()
}
pub fn pending_prefix() -> Vec<u8> {
    format!("{ROOT}pending/").into_bytes()
}
/// Queued executions sort by their queue position (see the control plane).
pub fn pending(position: u64, exec: &str) -> Vec<u8> {
    format!("{ROOT}pending/{position:016x}-{exec}").into_bytes()
}
pub fn finished_prefix() -> Vec<u8> {
    format!("{ROOT}finished/").into_bytes()
}
pub fn finished(exec: &str) -> Vec<u8> {
    format!("{ROOT}finished/{exec}").into_bytes()
}
pub fn events() -> Vec<u8> {
    format!("{ROOT}events/").into_bytes()
}
/// Events sort by time; `unique` keeps two events of one millisecond apart.
pub fn event(ms: u64, unique: &str) -> Vec<u8> {
    format!("{ROOT}events/{ms:016}-{unique}").into_bytes()
}

/// The execution id at the end of an `active/` or `index/` key.
pub fn exec_of(key: &[u8]) -> String {
    String::from_utf8_lossy(key).rsplit('/').next().unwrap_or("").to_string()
}

/// Keys of one execution.
#[derive(Clone, Debug)]
pub struct ExecKeys {
    base: String,
}

impl ExecKeys {
    pub fn new(exec: &str) -> Self {
        ExecKeys { base: format!("{ROOT}exec/{exec}/") }
    }
    pub fn all(&self) -> Vec<u8> {
        self.base.clone().into_bytes()
    }
    pub fn meta(&self) -> Vec<u8> {
        format!("{}meta", self.base).into_bytes()
    }
    pub fn cancel(&self) -> Vec<u8> {
        format!("{}cancel", self.base).into_bytes()
    }
    pub fn queue_prefix(&self) -> Vec<u8> {
        format!("{}queue/", self.base).into_bytes()
    }
    pub fn queue_stage(&self, stage: Stage) -> Vec<u8> {
        format!("{}queue/{}", self.base, stage.digit()).into_bytes()
    }
    /// Queued shards of one kind.
    pub fn queue_kind(&self, kind: ShardKind) -> Vec<u8> {
        format!("{}queue/{}{}", self.base, kind.stage().digit(), kind.letter()).into_bytes()
    }
    pub fn queue(&self, shard: &str) -> Vec<u8> {
        format!("{}queue/{shard}", self.base).into_bytes()
    }
    pub fn claim(&self, shard: &str) -> Vec<u8> {
        format!("{}claim/{shard}", self.base).into_bytes()
    }
    pub fn claim_prefix(&self) -> Vec<u8> {
        format!("{}claim/", self.base).into_bytes()
    }
    pub fn done(&self, shard: &str) -> Vec<u8> {
        format!("{}done/{shard}", self.base).into_bytes()
    }
    pub fn done_prefix(&self) -> Vec<u8> {
        format!("{}done/", self.base).into_bytes()
    }
    /// Report lines of a completed shard attempt (`{shard}@{attempt}`), chunk `n`.
    pub fn report(&self, attempt: &str, n: usize) -> Vec<u8> {
        format!("{}report/{attempt}.{n:03}", self.base).into_bytes()
    }
    /// Every report chunk of a shard attempt.
    pub fn report_of(&self, attempt: &str) -> Vec<u8> {
        format!("{}report/{attempt}.", self.base).into_bytes()
    }
    pub fn report_prefix(&self) -> Vec<u8> {
        format!("{}report/", self.base).into_bytes()
    }
    pub fn link(&self, dev: u64, ino: u64) -> Vec<u8> {
        format!("{}links/{dev}:{ino}", self.base).into_bytes()
    }
    pub fn links_prefix(&self) -> Vec<u8> {
        format!("{}links/", self.base).into_bytes()
    }
    pub fn parts_prefix(&self) -> Vec<u8> {
        format!("{}parts/", self.base).into_bytes()
    }
    pub fn parts(&self, group: &str) -> Vec<u8> {
        format!("{}parts/{group}", self.base).into_bytes()
    }
    /// Why an agent cannot take part (it cannot open the locations, for instance).
    pub fn agent_error(&self, agent: &str) -> Vec<u8> {
        format!("{}agenterr/{agent}", self.base).into_bytes()
    }
    pub fn agent_errors_prefix(&self) -> Vec<u8> {
        format!("{}agenterr/", self.base).into_bytes()
    }
    /// One agent's log stream (CloudWatch's term): present once it shipped a line.
    pub fn log_stream(&self, agent: &str) -> Vec<u8> {
        format!("{}logstreams/{agent}", self.base).into_bytes()
    }
    pub fn log_streams_prefix(&self) -> Vec<u8> {
        format!("{}logstreams/", self.base).into_bytes()
    }
    /// Chunk `seq` of an agent's log lines; fixed width, so chunks sort in the order written.
    pub fn log_chunk(&self, agent: &str, seq: u64) -> Vec<u8> {
        format!("{}logs/{agent}/{seq:016}", self.base).into_bytes()
    }
    pub fn log_chunks_of(&self, agent: &str) -> Vec<u8> {
        format!("{}logs/{agent}/", self.base).into_bytes()
    }
    pub fn settings(&self) -> Vec<u8> {
        format!("{}settings", self.base).into_bytes()
    }
    /// The shard id at the end of a queue, claim or done key.
    pub fn shard_of(key: &[u8]) -> &str {
        let s = std::str::from_utf8(key).unwrap_or("");
        s.rsplit('/').next().unwrap_or("")
    }
}
