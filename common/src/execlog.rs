//! Execution logs, like CloudWatch Logs: every agent (workers and the coordinator driving the
//! execution) ships the log lines that name an execution to the Store, under that execution's
//! keys, so `GET /v1/executions/{id}/logs` and `ferry exec logs` show them without access to
//! the hosts.
//!
//! The tracing layer ([`crate::telemetry`]) hands each line to a [`LogBatcher`]: a plain,
//! deterministic struct (time is an argument) that filters by the execution's LogLevel,
//! bounds what waits in memory, and cuts chunks. [`ship`] drives it: it reads each
//! execution's LogLevel once, writes one Store value per chunk (never one per line), and
//! deletes an agent's oldest chunks past the retention bound. Nothing on the data path waits
//! for it: a full buffer drops lines and says so in a "LogLinesDropped" line, and a Store
//! outage only delays the chunks (each write is bounded by a timeout).
//!
//! Layout (docs/store-layout.md): `exec/{exec}/logs/{agent}/{seq:016}` holds a [`LogChunk`];
//! `exec/{exec}/logstreams/{agent}` marks that the agent shipped lines. Sequence numbers start
//! at the writer's clock in microseconds, so a restarted agent continues after its previous
//! run's chunks, and a compare-absent transaction keeps two writers from overwriting a chunk.
//! The keys go with the execution record when history is purged.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::codec;
use crate::keys::ExecKeys;
use crate::model::Execution;
use crate::store::{Compare, SharedStore, Txn, TxnOp};
use crate::task::LogLevelOpt;

/// Severity of a line, most severe first (so `<=` means "at least as severe").
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum LineLevel {
    Error,
    Warn,
    Info,
    Debug,
}

impl LineLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            LineLevel::Error => "ERROR",
            LineLevel::Warn => "WARN",
            LineLevel::Info => "INFO",
            LineLevel::Debug => "DEBUG",
        }
    }

    /// `error`, `WARN`, ... (case-insensitive; `warning` too).
    pub fn parse(s: &str) -> Option<LineLevel> {
        match s.to_ascii_uppercase().as_str() {
            "ERROR" => Some(LineLevel::Error),
            "WARN" | "WARNING" => Some(LineLevel::Warn),
            "INFO" => Some(LineLevel::Info),
            "DEBUG" => Some(LineLevel::Debug),
            _ => None,
        }
    }

    /// tracing's levels; TRACE is never shipped.
    pub fn of(level: &tracing::Level) -> Option<LineLevel> {
        match *level {
            tracing::Level::ERROR => Some(LineLevel::Error),
            tracing::Level::WARN => Some(LineLevel::Warn),
            tracing::Level::INFO => Some(LineLevel::Info),
            tracing::Level::DEBUG => Some(LineLevel::Debug),
            _ => None,
        }
    }
}

/// One log line, as the JSON log format has it: time, level, message and the event's fields.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LogLine {
    pub ts_ms: u64,
    pub level: LineLevel,
    pub message: String,
    #[serde(default)]
    pub fields: serde_json::Map<String, serde_json::Value>,
}

impl LogLine {
    /// What the line costs in memory and in the Store, roughly.
    pub fn weight(&self) -> usize {
        32 + self.message.len() + self.fields.iter().map(|(k, v)| k.len() + 8 + v.as_str().map_or(8, str::len)).sum::<usize>()
    }
}

/// One Store value: consecutive lines of one agent about one execution.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LogChunk {
    /// The agent's name as it registered (the key holds a sanitised form).
    pub agent: String,
    #[serde(default)]
    pub lines: Vec<LogLine>,
}

/// Most bytes of one line's message, and of one field's value; longer ones are cut.
pub const MAX_MESSAGE_BYTES: usize = 2048;
pub const MAX_FIELD_BYTES: usize = 1024;
/// Fields of one line beyond this are left out.
pub const MAX_FIELDS: usize = 32;

/// Cuts `s` to at most `max` bytes on a character boundary, marking the cut.
pub fn truncate(s: &mut String, max: usize) {
    if s.len() <= max {
        return;
    }
    let mut end = max.saturating_sub(3);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.truncate(end);
    s.push('…');
}

/// The agent name as a key segment: bytes other than `[A-Za-z0-9._-]` become `_`.
pub fn agent_key(agent: &str) -> String {
    let k: String = agent.chars().map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') { c } else { '_' }).collect();
    if k.is_empty() {
        "_".into()
    } else {
        k
    }
}

/// The most verbose level an execution's LogLevel ships: OFF nothing; BASIC (and ad-hoc
/// runs, which have none) errors, warnings and INFO lines such as phase changes; TRANSFER
/// also DEBUG. The per-file lines TRANSFER adds are INFO lines their emitters only log under
/// TRANSFER (worker/src/report.rs).
pub fn most_verbose(level: Option<LogLevelOpt>) -> Option<LineLevel> {
    match level {
        Some(LogLevelOpt::Off) => None,
        Some(LogLevelOpt::Transfer) => Some(LineLevel::Debug),
        Some(LogLevelOpt::Basic) | None => Some(LineLevel::Info),
    }
}

/// The bounds of a [`LogBatcher`], with what each costs.
#[derive(Clone, Debug)]
pub struct BatchLimits {
    /// Lines waiting in memory, over all executions (bytes, by [`LogLine::weight`]). Past it
    /// new lines are dropped and counted. Memory ≈ this.
    pub max_buffered_bytes: usize,
    /// A chunk is cut at this many bytes or lines: one Store value (far below its 256 KiB).
    pub chunk_bytes: usize,
    pub chunk_lines: usize,
    /// A line waits at most this long before its chunk is written: etcd writes ≈ one per
    /// execution and agent per interval while lines come.
    pub flush_every_ms: u64,
    /// Retention: each agent keeps at most this many bytes of chunks per execution in the
    /// Store, deleting its oldest chunks past it (and past `keep_chunks_per_execution`).
    pub keep_bytes_per_execution: u64,
    pub keep_chunks_per_execution: usize,
    /// Executions tracked at once; idle ones beyond it are forgotten first.
    pub max_executions: usize,
}

impl Default for BatchLimits {
    fn default() -> Self {
        BatchLimits {
            max_buffered_bytes: 2 << 20,
            chunk_bytes: 64 << 10,
            chunk_lines: 500,
            flush_every_ms: 1000,
            keep_bytes_per_execution: 2 << 20,
            keep_chunks_per_execution: 8192,
            max_executions: 256,
        }
    }
}

/// Whether an execution's lines are wanted, once its LogLevel is known.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verbosity {
    /// Not read yet: lines wait (within the buffer bound).
    Unknown,
    /// Lines up to this level are shipped.
    Upto(LineLevel),
    /// LogLevel OFF, or the execution is gone: lines are discarded.
    Discard,
}

#[derive(Debug)]
struct ExecState {
    verbosity: Verbosity,
    pending: VecDeque<LogLine>,
    pending_bytes: usize,
    /// When the oldest pending line arrived.
    oldest_ms: u64,
    /// Lines dropped since the last chunk was cut (buffer full).
    dropped: u64,
    /// Chunks written, oldest first: (seq, bytes).
    written: VecDeque<(u64, usize)>,
    written_bytes: u64,
    /// The stream key is written with the first chunk.
    announced: bool,
    /// Older chunks were deleted and the next chunk has not said so yet.
    trimmed_untold: bool,
    /// A chunk is out being written: no other is cut until it is answered, so chunks land in
    /// order.
    in_flight: bool,
    last_seen_ms: u64,
}

impl ExecState {
    fn new(now_ms: u64) -> Self {
        ExecState {
            verbosity: Verbosity::Unknown,
            pending: VecDeque::new(),
            pending_bytes: 0,
            oldest_ms: now_ms,
            dropped: 0,
            written: VecDeque::new(),
            written_bytes: 0,
            announced: false,
            trimmed_untold: false,
            in_flight: false,
            last_seen_ms: now_ms,
        }
    }
}

/// A chunk cut by [`LogBatcher::poll_chunks`], to be written and answered with
/// [`LogBatcher::handle_written`] or [`LogBatcher::handle_failed`].
#[derive(Clone, Debug, PartialEq)]
pub struct ChunkOut {
    pub exec: String,
    pub seq: u64,
    /// Also put the agent's stream key (its first chunk for this execution).
    pub announce: bool,
    pub chunk: LogChunk,
    pub bytes: usize,
}

/// Counts since start, for tests and `/metrics`-style reporting.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BatchStats {
    pub lines_accepted: u64,
    pub lines_dropped: u64,
    pub lines_discarded: u64,
    pub chunks_written: u64,
    pub chunks_failed: u64,
    pub chunks_deleted: u64,
}

/// The deterministic heart of the shipper: lines in, chunks out, within fixed bounds.
#[derive(Debug)]
pub struct LogBatcher {
    agent: String,
    limits: BatchLimits,
    execs: HashMap<String, ExecState>,
    buffered: usize,
    next_seq: u64,
    pub stats: BatchStats,
}

impl LogBatcher {
    /// `first_seq`: where sequence numbers start (the shipper uses its clock in µs).
    pub fn new(agent: &str, limits: BatchLimits, first_seq: u64) -> Self {
        LogBatcher { agent: agent.to_string(), limits, execs: HashMap::new(), buffered: 0, next_seq: first_seq, stats: BatchStats::default() }
    }

    pub fn agent(&self) -> &str {
        &self.agent
    }

    /// Bytes of lines waiting in memory.
    pub fn buffered_bytes(&self) -> usize {
        self.buffered
    }

    /// A line about `exec`. Never blocks and never grows past the bounds: a line that does
    /// not fit is counted as dropped.
    pub fn handle_line(&mut self, exec: &str, line: LogLine, now_ms: u64) {
        if !self.execs.contains_key(exec) && !self.make_room_for_execution() {
            self.stats.lines_dropped += 1;
            return;
        }
        let st = self.execs.entry(exec.to_string()).or_insert_with(|| ExecState::new(now_ms));
        st.last_seen_ms = now_ms;
        match st.verbosity {
            Verbosity::Discard => {
                self.stats.lines_discarded += 1;
                return;
            }
            Verbosity::Upto(max) if line.level > max => {
                self.stats.lines_discarded += 1;
                return;
            }
            _ => {}
        }
        let w = line.weight();
        if self.buffered + w > self.limits.max_buffered_bytes {
            st.dropped += 1;
            self.stats.lines_dropped += 1;
            return;
        }
        if st.pending.is_empty() {
            st.oldest_ms = now_ms;
        }
        st.pending.push_back(line);
        st.pending_bytes += w;
        self.buffered += w;
        self.stats.lines_accepted += 1;
    }

    /// Forgets the longest-idle execution with nothing waiting, when the table is full.
    fn make_room_for_execution(&mut self) -> bool {
        if self.execs.len() < self.limits.max_executions {
            return true;
        }
        let idle = self
            .execs
            .iter()
            .filter(|(_, s)| s.pending.is_empty() && s.dropped == 0 && !s.in_flight)
            .min_by_key(|(_, s)| s.last_seen_ms)
            .map(|(k, _)| k.clone());
        match idle {
            Some(k) => {
                self.execs.remove(&k);
                true
            }
            None => false,
        }
    }

    /// Executions whose LogLevel the driver must read from the Store.
    pub fn unresolved(&self) -> Vec<String> {
        let mut v: Vec<String> = self.execs.iter().filter(|(_, s)| s.verbosity == Verbosity::Unknown).map(|(k, _)| k.clone()).collect();
        v.sort();
        v
    }

    /// The execution's LogLevel, read from its record; `None` when the record is gone (its
    /// lines are discarded).
    pub fn handle_log_level(&mut self, exec: &str, level: Option<Option<LogLevelOpt>>) {
        let Some(st) = self.execs.get_mut(exec) else { return };
        st.verbosity = match level.map(most_verbose) {
            Some(Some(max)) => Verbosity::Upto(max),
            _ => Verbosity::Discard,
        };
        let before = st.pending.len();
        match st.verbosity {
            Verbosity::Upto(max) => st.pending.retain(|l| l.level <= max),
            _ => st.pending.clear(),
        }
        let kept: usize = st.pending.iter().map(LogLine::weight).sum();
        self.buffered -= st.pending_bytes - kept;
        st.pending_bytes = kept;
        let gone = (before - st.pending.len()) as u64;
        self.stats.lines_discarded += gone;
        self.stats.lines_accepted -= gone;
        if st.verbosity == Verbosity::Discard {
            st.dropped = 0;
        }
    }

    /// Chunks due now: an execution's lines once the oldest waited `flush_every_ms` or a
    /// chunk's worth is waiting, or everything when `force` (shutting down). At most one
    /// chunk per execution is out at a time.
    pub fn poll_chunks(&mut self, now_ms: u64, force: bool) -> Vec<ChunkOut> {
        let mut out = Vec::new();
        let mut names: Vec<&String> = self.execs.keys().collect();
        names.sort();
        let names: Vec<String> = names.into_iter().cloned().collect();
        for exec in names {
            let limits = &self.limits;
            let st = self.execs.get_mut(&exec).expect("listed above");
            if st.in_flight || !matches!(st.verbosity, Verbosity::Upto(_)) {
                continue;
            }
            let has_news = !st.pending.is_empty() || st.dropped > 0 || st.trimmed_untold;
            let due = force
                || now_ms.saturating_sub(st.oldest_ms) >= limits.flush_every_ms
                || st.pending_bytes >= limits.chunk_bytes
                || st.pending.len() >= limits.chunk_lines;
            if !has_news || !due {
                continue;
            }
            let mut lines = Vec::new();
            let mut bytes = 0;
            while let Some(l) = st.pending.front() {
                let w = l.weight();
                if !lines.is_empty() && (bytes + w > limits.chunk_bytes || lines.len() >= limits.chunk_lines) {
                    break;
                }
                bytes += w;
                lines.push(st.pending.pop_front().expect("front exists"));
            }
            st.pending_bytes -= bytes;
            self.buffered -= bytes;
            if st.pending.is_empty() && st.dropped > 0 {
                lines.push(marker(
                    now_ms,
                    "LogLinesDropped",
                    format!("{} log lines of this agent were dropped: its log buffer was full", st.dropped),
                    st.dropped,
                ));
                st.dropped = 0;
            }
            if st.trimmed_untold {
                let keep = limits.keep_bytes_per_execution;
                lines.insert(
                    0,
                    marker(
                        now_ms,
                        "LogLinesRemoved",
                        format!("older log lines of this agent were removed: each agent keeps the last {} KiB per execution", keep >> 10),
                        0,
                    ),
                );
                st.trimmed_untold = false;
            }
            if !st.pending.is_empty() {
                st.oldest_ms = now_ms;
            }
            st.in_flight = true;
            let seq = self.next_seq;
            self.next_seq += 1;
            out.push(ChunkOut { exec, seq, announce: !st.announced, chunk: LogChunk { agent: self.agent.clone(), lines }, bytes });
        }
        out
    }

    /// Reads the execution's LogLevel again (its record may be gone).
    pub fn forget_level(&mut self, exec: &str) {
        if let Some(st) = self.execs.get_mut(exec) {
            st.verbosity = Verbosity::Unknown;
        }
    }

    /// The chunk is in the Store. Returns the sequence numbers of this agent's chunks of that
    /// execution to delete (retention).
    pub fn handle_written(&mut self, c: &ChunkOut) -> Vec<u64> {
        self.stats.chunks_written += 1;
        let Some(st) = self.execs.get_mut(&c.exec) else { return Vec::new() };
        st.in_flight = false;
        st.announced = true;
        st.written.push_back((c.seq, c.bytes));
        st.written_bytes += c.bytes as u64;
        let mut delete = Vec::new();
        while st.written.len() > 1 && (st.written_bytes > self.limits.keep_bytes_per_execution || st.written.len() > self.limits.keep_chunks_per_execution) {
            let (seq, bytes) = st.written.pop_front().expect("len > 1");
            st.written_bytes -= bytes as u64;
            delete.push(seq);
        }
        if !delete.is_empty() {
            st.trimmed_untold = true;
            self.stats.chunks_deleted += delete.len() as u64;
        }
        delete
    }

    /// The chunk was not written: its lines go back first in line, within the buffer bound
    /// (the oldest are dropped and counted when they no longer fit).
    pub fn handle_failed(&mut self, c: ChunkOut) {
        self.stats.chunks_failed += 1;
        let Some(st) = self.execs.get_mut(&c.exec) else { return };
        st.in_flight = false;
        // Markers are made again when the chunk is cut again.
        for l in c.chunk.lines.into_iter().rev() {
            if l.fields.contains_key("ferry_marker") {
                if let Some(n) = l.fields.get("dropped").and_then(serde_json::Value::as_u64) {
                    st.dropped += n;
                }
                if l.message.starts_with("older log lines") {
                    st.trimmed_untold = true;
                }
                continue;
            }
            let w = l.weight();
            st.pending.push_front(l);
            st.pending_bytes += w;
            self.buffered += w;
        }
        while self.buffered > self.limits.max_buffered_bytes {
            let Some(l) = st.pending.pop_front() else { break };
            let w = l.weight();
            st.pending_bytes -= w;
            self.buffered -= w;
            st.dropped += 1;
            self.stats.lines_dropped += 1;
        }
    }
}

fn marker(now_ms: u64, event: &str, message: String, dropped: u64) -> LogLine {
    let mut fields = serde_json::Map::new();
    fields.insert("ferry_marker".into(), serde_json::Value::String(event.into()));
    if dropped > 0 {
        fields.insert("dropped".into(), dropped.into());
    }
    LogLine { ts_ms: now_ms, level: LineLevel::Warn, message, fields }
}

/// What the tracing layer and the shipper share.
#[derive(Debug)]
pub struct LogSink {
    pub batcher: Mutex<LogBatcher>,
}

impl LogSink {
    pub fn new(agent: &str, limits: BatchLimits) -> Arc<Self> {
        let first_seq = crate::schedule::now_ms() * 1000;
        Arc::new(LogSink { batcher: Mutex::new(LogBatcher::new(agent, limits, first_seq)) })
    }

    pub fn push(&self, exec: &str, line: LogLine) {
        let now = line.ts_ms;
        if let Ok(mut b) = self.batcher.lock() {
            b.handle_line(exec, line, now);
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut LogBatcher) -> T) -> Option<T> {
        self.batcher.lock().ok().map(|mut b| f(&mut b))
    }
}

/// Longest wait for one Store call: an outage delays the logs, never wedges the shipper.
const STORE_TIMEOUT: Duration = Duration::from_secs(5);

/// Drives `sink` against the Store until `stop` turns true (then flushes what waits, within
/// one timeout). Runs as its own task; nothing waits for it.
pub async fn ship(sink: Arc<LogSink>, store: SharedStore, mut stop: tokio::sync::watch::Receiver<bool>) {
    let tick = Duration::from_millis(250);
    let mut backoff_until = std::time::Instant::now();
    loop {
        let mut stopping = *stop.borrow();
        if !stopping {
            tokio::select! {
                _ = tokio::time::sleep(tick) => {}
                // A dropped sender means the process is going away too.
                r = stop.changed() => stopping = r.is_err(),
            }
        }
        let stopping = stopping || *stop.borrow();
        if std::time::Instant::now() < backoff_until && !stopping {
            continue;
        }
        match ship_once(&sink, &store, stopping).await {
            Ok(()) => {}
            Err(()) => backoff_until = std::time::Instant::now() + Duration::from_secs(2),
        }
        if stopping {
            return;
        }
    }
}

/// One round: read unknown LogLevels, write due chunks, delete past retention. `Err` when the
/// Store did not answer (the caller backs off).
async fn ship_once(sink: &LogSink, store: &SharedStore, force: bool) -> Result<(), ()> {
    let unresolved = sink.with(|b| b.unresolved()).unwrap_or_default();
    for exec in unresolved {
        let level = match tokio::time::timeout(STORE_TIMEOUT, store.get(&ExecKeys::new(&exec).meta())).await {
            Ok(Ok(Some(kv))) => match codec::decode::<Execution>(&kv.value) {
                Ok(e) => Some(e.spec.log_level),
                Err(_) => None,
            },
            Ok(Ok(None)) => None,
            _ => return Err(()),
        };
        sink.with(|b| b.handle_log_level(&exec, level));
    }
    let now = crate::schedule::now_ms();
    let (chunks, agent) = match sink.with(|b| (b.poll_chunks(now, force), agent_key(b.agent()))) {
        Some(x) => x,
        None => return Ok(()),
    };
    let mut failed = false;
    for c in chunks {
        if failed {
            sink.with(|b| b.handle_failed(c));
            continue;
        }
        let keys = ExecKeys::new(&c.exec);
        let key = keys.log_chunk(&agent, c.seq);
        let value = match codec::encode(&c.chunk) {
            Ok(v) => v,
            Err(_) => {
                sink.with(|b| b.handle_failed(c));
                continue;
            }
        };
        let mut ops = vec![TxnOp::put(key.clone(), value)];
        if c.announce {
            ops.push(TxnOp::put(keys.log_stream(&agent), Vec::new()));
        }
        // The execution must still exist: lines of a purged one would linger.
        let txn = Txn::new().when([Compare::absent(key), Compare::present(keys.meta())]).and_then(ops);
        match tokio::time::timeout(STORE_TIMEOUT, store.txn(txn)).await {
            Ok(Ok(r)) if r.succeeded => {
                let delete = sink.with(|b| b.handle_written(&c)).unwrap_or_default();
                for seq in delete {
                    let _ = tokio::time::timeout(STORE_TIMEOUT, store.delete(&keys.log_chunk(&agent, seq))).await;
                }
            }
            Ok(Ok(_)) => {
                // The key exists (a clock step back) or the execution is gone: the next cut
                // takes a new sequence number, and a gone execution resolves to Discard.
                sink.with(|b| {
                    b.handle_failed(c.clone());
                    b.forget_level(&c.exec);
                });
            }
            _ => {
                failed = true;
                sink.with(|b| b.handle_failed(c));
            }
        }
    }
    if failed {
        Err(())
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(ms: u64, level: LineLevel, msg: &str) -> LogLine {
        LogLine { ts_ms: ms, level, message: msg.into(), fields: Default::default() }
    }

    fn limits() -> BatchLimits {
        BatchLimits {
            max_buffered_bytes: 10_000,
            chunk_bytes: 1_000,
            chunk_lines: 10,
            flush_every_ms: 1000,
            keep_bytes_per_execution: 3_000,
            keep_chunks_per_execution: 100,
            max_executions: 4,
        }
    }

    fn messages(c: &ChunkOut) -> Vec<&str> {
        c.chunk.lines.iter().map(|l| l.message.as_str()).collect()
    }

    #[test]
    fn lines_wait_for_the_execution_log_level_then_ship_in_one_chunk_per_interval() {
        let mut b = LogBatcher::new("w1", limits(), 100);
        b.handle_line("e1", line(0, LineLevel::Info, "a"), 0);
        b.handle_line("e1", line(10, LineLevel::Debug, "b"), 10);
        assert!(b.poll_chunks(5000, false).is_empty(), "nothing ships before the LogLevel is known");
        assert_eq!(b.unresolved(), vec!["e1".to_string()]);
        b.handle_log_level("e1", Some(Some(LogLevelOpt::Basic)));
        assert!(b.unresolved().is_empty());
        b.handle_line("e1", line(20, LineLevel::Warn, "c"), 20);
        b.handle_line("e1", line(30, LineLevel::Debug, "d"), 30);
        assert!(b.poll_chunks(500, false).is_empty(), "the oldest line waited less than the interval");
        let out = b.poll_chunks(1000, false);
        assert_eq!(out.len(), 1);
        assert_eq!(messages(&out[0]), vec!["a", "c"], "BASIC ships INFO and above, in order");
        assert_eq!((out[0].seq, out[0].announce, out[0].chunk.agent.as_str()), (100, true, "w1"));
        assert!(b.poll_chunks(5000, false).is_empty(), "one chunk out at a time per execution");
        assert!(b.handle_written(&out[0]).is_empty());
        b.handle_line("e1", line(40, LineLevel::Info, "e"), 2000);
        let next = b.poll_chunks(3000, false);
        assert_eq!((next[0].seq, next[0].announce), (101, false), "sequence numbers grow; the stream is announced once");
        assert_eq!(b.stats.lines_discarded, 2);
        assert_eq!(b.buffered_bytes(), 0);
    }

    #[test]
    fn off_and_gone_executions_ship_nothing_and_transfer_ships_debug() {
        let mut b = LogBatcher::new("w1", limits(), 0);
        for e in ["off", "gone", "transfer", "adhoc"] {
            b.handle_line(e, line(0, LineLevel::Debug, "dbg"), 0);
            b.handle_line(e, line(0, LineLevel::Error, "err"), 0);
        }
        b.handle_log_level("off", Some(Some(LogLevelOpt::Off)));
        b.handle_log_level("gone", None);
        b.handle_log_level("transfer", Some(Some(LogLevelOpt::Transfer)));
        b.handle_log_level("adhoc", Some(None));
        b.handle_line("off", line(1, LineLevel::Error, "late"), 1);
        let out = b.poll_chunks(10_000, false);
        let by: HashMap<&str, Vec<&str>> = out.iter().map(|c| (c.exec.as_str(), messages(c))).collect();
        assert_eq!(by.len(), 2, "{by:?}");
        assert_eq!(by["transfer"], vec!["dbg", "err"]);
        assert_eq!(by["adhoc"], vec!["err"], "an ad-hoc run behaves like BASIC");
        assert_eq!(b.buffered_bytes(), 0);
    }

    #[test]
    fn a_full_buffer_drops_lines_and_says_how_many() {
        let mut lim = limits();
        lim.max_buffered_bytes = 5 * line(0, LineLevel::Info, "x").weight();
        let mut b = LogBatcher::new("w1", lim, 0);
        b.handle_log_level("e", Some(None));
        for i in 0..8 {
            b.handle_line("e", line(i, LineLevel::Info, "x"), i);
        }
        assert_eq!(b.stats.lines_dropped, 3);
        assert!(b.buffered_bytes() <= 5 * line(0, LineLevel::Info, "x").weight(), "memory stays bounded");
        // Not yet resolved when the lines came: resolve now (they were kept).
        b.handle_log_level("e", Some(None));
        let out = b.poll_chunks(10_000, true);
        let last = out[0].chunk.lines.last().unwrap();
        assert_eq!(out[0].chunk.lines.len(), 6);
        assert_eq!(last.level, LineLevel::Warn);
        assert!(last.message.starts_with("3 log lines of this agent were dropped"), "{}", last.message);
        assert_eq!(last.fields["dropped"], 3);
    }

    #[test]
    fn chunks_respect_their_bounds_and_a_failed_write_is_retried_in_order() {
        let mut b = LogBatcher::new("w1", limits(), 0);
        b.handle_log_level("e", Some(None));
        b.handle_line("e", line(0, LineLevel::Info, "pending"), 0);
        b.handle_log_level("e", Some(None));
        for i in 0..25 {
            b.handle_line("e", line(i, LineLevel::Info, &format!("l{i}")), 0);
        }
        let first = b.poll_chunks(0, false);
        assert_eq!(first.len(), 1, "due at once: a chunk's worth of lines waits");
        assert_eq!(first[0].chunk.lines.len(), 10, "at most chunk_lines per chunk");
        b.handle_failed(first[0].clone());
        let again = b.poll_chunks(0, false);
        assert_eq!(messages(&again[0]), messages(&first[0]), "the same lines, first in line");
        assert_eq!(again[0].seq, first[0].seq + 1, "a retried chunk takes a fresh sequence number");
        b.handle_written(&again[0]);
        let mut all: Vec<String> = again[0].chunk.lines.iter().map(|l| l.message.clone()).collect();
        for round in 1.. {
            assert!(round < 100, "the batcher does not drain");
            let out = b.poll_chunks(round * 10_000, false);
            if out.is_empty() {
                break;
            }
            assert!(out[0].bytes <= 1_000);
            all.extend(out[0].chunk.lines.iter().map(|l| l.message.clone()));
            b.handle_written(&out[0]);
        }
        let want: Vec<String> = std::iter::once("pending".to_string()).chain((0..25).map(|i| format!("l{i}"))).collect();
        assert_eq!(all, want, "every line exactly once, in order");
    }

    #[test]
    fn retention_deletes_the_oldest_chunks_and_says_so_once() {
        let mut b = LogBatcher::new("w1", limits(), 0);
        let big = "y".repeat(900);
        let mut deleted = Vec::new();
        let mut told = 0;
        for i in 0..10u64 {
            b.handle_line("e", line(i, LineLevel::Info, &big), i * 2000);
            // The driver reads the LogLevel of executions it has lines of.
            b.handle_log_level("e", Some(None));
            let out = b.poll_chunks(i * 2000 + 1000, false);
            assert_eq!(out.len(), 1);
            told += out[0].chunk.lines.iter().filter(|l| l.message.starts_with("older log lines")).count();
            deleted.extend(b.handle_written(&out[0]));
        }
        assert_eq!(deleted, (0..7).collect::<Vec<u64>>(), "keeps ~3,000 bytes: the last three chunks");
        assert!(told >= 1, "the stream says lines were removed");
        assert_eq!(b.stats.chunks_deleted, 7);
    }

    #[test]
    fn the_execution_table_is_bounded() {
        let mut b = LogBatcher::new("w1", limits(), 0);
        for i in 0..4 {
            b.handle_line(&format!("e{i}"), line(0, LineLevel::Info, "x"), i);
        }
        b.handle_line("e9", line(0, LineLevel::Info, "x"), 10);
        assert_eq!(b.stats.lines_dropped, 1, "no room while every tracked execution has lines waiting");
        b.handle_log_level("e0", Some(Some(LogLevelOpt::Off)));
        b.handle_line("e9", line(0, LineLevel::Info, "x"), 11);
        assert_eq!(b.unresolved(), vec!["e1", "e2", "e3", "e9"], "the idle OFF execution made room");
    }

    #[test]
    fn chunks_round_trip_and_tolerate_fields_added_later() {
        let mut fields = serde_json::Map::new();
        fields.insert("path".into(), "a/b".into());
        fields.insert("size".into(), 12.into());
        let c = LogChunk { agent: "w1".into(), lines: vec![LogLine { ts_ms: 5, level: LineLevel::Warn, message: "m".into(), fields }] };
        let bytes = codec::encode(&c).unwrap();
        assert_eq!(codec::decode::<LogChunk>(&bytes).unwrap(), c);
        #[derive(Serialize)]
        struct Later<'a> {
            agent: &'a str,
            lines: Vec<LogLine>,
            host: &'a str,
        }
        let later = codec::encode(&Later { agent: "w1", lines: c.lines.clone(), host: "h" }).unwrap();
        assert_eq!(codec::decode::<LogChunk>(&later).unwrap(), c);
    }

    #[test]
    fn agent_names_become_safe_key_segments_and_long_text_is_cut() {
        assert_eq!(agent_key("w-1.site_a"), "w-1.site_a");
        assert_eq!(agent_key("a/b c"), "a_b_c");
        assert_eq!(agent_key(""), "_");
        let mut s = "é".repeat(100);
        truncate(&mut s, 11);
        assert!(s.len() <= 11 && s.ends_with('…'), "{s}");
    }
}
