//! Reading an execution's logs ([`ferry_common::execlog`] writes them): pages of lines merged
//! from every agent's stream, and a cursor that makes paging exact.
//!
//! Each agent's chunks sort by sequence number, so the cursor holds one position per agent
//! (`{agent}:{seq}.{line}`, comma-separated): a page continues every stream exactly where the
//! last one stopped, and a chunk that lands late (an agent cut off from the Store for a
//! while) is still read once, never skipped. Within a page, lines of different agents are
//! merged by time.

use std::collections::{BTreeMap, VecDeque};

use ferry_common::codec;
use ferry_common::execlog::{LineLevel, LogChunk, LogLine};
use ferry_common::keys::ExecKeys;
use ferry_common::model::Execution;
use ferry_common::store::{RangeOptions, SharedStore, StoreError};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Chunks read per agent for one page (each holds at most 500 lines).
const CHUNKS_PER_AGENT: usize = 4;

/// After an execution ends, how long its logs still count as open: agents flush their last
/// lines within about a second.
pub const ENDED_GRACE_MS: u64 = 3000;

/// Most lines in one page.
pub const MAX_LIMIT: usize = 1000;

/// Where a reader is in every agent's stream: the next line to read is line `.1` of chunk
/// `.0` (or the first line of the first chunk after it).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Cursor(BTreeMap<String, (u64, u32)>);

impl Cursor {
    /// Parses a page's `Next`; the message names what is wrong.
    pub fn parse(s: &str) -> Result<Cursor, String> {
        let mut m = BTreeMap::new();
        for part in s.split(',').filter(|p| !p.is_empty()) {
            let bad = || format!("after {s:?} is not a cursor: pass the Next of a previous page (or leave it out to start at the beginning)");
            let (agent, pos) = part.rsplit_once(':').ok_or_else(bad)?;
            let (seq, line) = pos.split_once('.').ok_or_else(bad)?;
            let ok_agent = !agent.is_empty() && agent.len() <= 128 && agent.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
            let ok_num = |n: &str, max: usize| !n.is_empty() && n.len() <= max && n.bytes().all(|b| b.is_ascii_digit());
            if !ok_agent || !ok_num(seq, 19) || !ok_num(line, 9) {
                return Err(bad());
            }
            m.insert(agent.to_string(), (seq.parse().map_err(|_| bad())?, line.parse().map_err(|_| bad())?));
        }
        if m.len() > 4096 {
            return Err("after: a cursor names at most 4096 agents".into());
        }
        Ok(Cursor(m))
    }
}

impl std::fmt::Display for Cursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = self.0.iter().map(|(a, (seq, line))| format!("{a}:{seq}.{line}")).collect();
        f.write_str(&parts.join(","))
    }
}

/// One log line as the API shows it.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "PascalCase")]
pub struct LogLineView {
    /// When the agent logged it (its clock).
    pub time_unix_ms: u64,
    /// The worker agent or coordinator that logged it.
    pub agent: String,
    pub level: LineLevel,
    pub message: String,
    /// The line's structured fields (path, shard, error, ...), as in the JSON log format.
    #[schema(value_type = Object)]
    pub fields: serde_json::Map<String, serde_json::Value>,
}

/// One page of an execution's logs.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "PascalCase")]
pub struct LogPage {
    pub execution_id: String,
    pub lines: Vec<LogLineView>,
    /// Pass as `after` to continue after this page.
    pub next: String,
    /// More lines are stored after `Next` already: ask again at once.
    pub more: bool,
    /// The execution ended and every agent's last lines are in: no line will follow `Next`.
    pub ended: bool,
}

#[derive(Debug)]
pub enum ReadError {
    NotFound(String),
    Store(String),
}

impl From<StoreError> for ReadError {
    fn from(e: StoreError) -> Self {
        ReadError::Store(e.to_string())
    }
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadError::NotFound(m) | ReadError::Store(m) => f.write_str(m),
        }
    }
}

/// What to read: after `after`, lines at least as severe as `level`, at most `limit`.
#[derive(Clone, Debug)]
pub struct LogQuery {
    pub after: Cursor,
    pub level: Option<LineLevel>,
    pub limit: usize,
}

struct Stream {
    agent: String,
    /// (seq, line index, lines in that chunk, line)
    queue: VecDeque<(u64, u32, u32, LogLine)>,
    /// The Store holds chunks after the ones read.
    more: bool,
}

/// One page of `exec`'s logs.
pub async fn read_page(store: &SharedStore, exec: &str, q: &LogQuery) -> Result<LogPage, ReadError> {
    let keys = ExecKeys::new(exec);
    let meta = store.get(&keys.meta()).await?.ok_or_else(|| ReadError::NotFound(format!("no execution {exec} (list them with `ferry exec list`)")))?;
    let execution: Execution = codec::decode(&meta.value).map_err(|e| ReadError::Store(format!("execution {exec}: {e}")))?;
    let prefix = keys.log_streams_prefix();
    let listed = store.range(&prefix, RangeOptions { keys_only: true, ..Default::default() }).await?;
    let mut cursor = q.after.clone();
    let mut streams = Vec::new();
    for kv in listed.kvs {
        let agent = String::from_utf8_lossy(&kv.key[prefix.len()..]).into_owned();
        let from = cursor.0.get(&agent).copied();
        let start_after = from.and_then(|(seq, _)| seq.checked_sub(1)).map(|s| keys.log_chunk(&agent, s));
        let r = store.range(&keys.log_chunks_of(&agent), RangeOptions { limit: CHUNKS_PER_AGENT, start_after, keys_only: false }).await?;
        let mut queue = VecDeque::new();
        let chunks_prefix = keys.log_chunks_of(&agent);
        for kv in &r.kvs {
            let Some(seq) = std::str::from_utf8(&kv.key[chunks_prefix.len()..]).ok().and_then(|s| s.parse::<u64>().ok()) else { continue };
            let chunk: LogChunk = codec::decode(&kv.value).map_err(|e| ReadError::Store(format!("log chunk of {agent} in execution {exec}: {e}")))?;
            let skip = match from {
                Some((s, line)) if s == seq => line,
                _ => 0,
            };
            let n = chunk.lines.len() as u32;
            for (i, line) in chunk.lines.into_iter().enumerate().skip(skip as usize) {
                queue.push_back((seq, i as u32, n, line));
            }
            if skip >= n {
                // Read to its end already (or empty): continue after it.
                cursor.0.insert(agent.clone(), (seq + 1, 0));
            }
        }
        streams.push(Stream { agent, queue, more: r.more });
    }
    let mut lines = Vec::new();
    while lines.len() < q.limit {
        // A stream whose fetched lines ran out while it has more stored stops the merge: its
        // next lines may be older than the others'.
        if streams.iter().any(|s| s.queue.is_empty() && s.more) {
            break;
        }
        let Some(i) = streams.iter().enumerate().filter_map(|(i, s)| s.queue.front().map(|h| (h.3.ts_ms, i))).min().map(|(_, i)| i) else {
            break;
        };
        let s = &mut streams[i];
        let (seq, idx, n, line) = s.queue.pop_front().expect("front exists");
        let next = if idx + 1 >= n { (seq + 1, 0) } else { (seq, idx + 1) };
        cursor.0.insert(s.agent.clone(), next);
        if q.level.is_none_or(|max| line.level <= max) {
            lines.push(LogLineView { time_unix_ms: line.ts_ms, agent: s.agent.clone(), level: line.level, message: line.message, fields: line.fields });
        }
    }
    // The chunk's own agent name is the real one; the stream key is its sanitised form.
    let more = streams.iter().any(|s| !s.queue.is_empty() || s.more);
    let now = ferry_common::schedule::now_ms();
    let ended = execution.phase.is_terminal() && !more && execution.finished_unix_ms.is_none_or(|f| now >= f + ENDED_GRACE_MS);
    Ok(LogPage { execution_id: exec.to_string(), lines, next: cursor.to_string(), more, ended })
}

/// Like [`read_page`], but when nothing is there yet and the execution has not ended, waits
/// for lines (polling every `poll`) up to `wait`: a long poll.
pub async fn wait_page(store: &SharedStore, exec: &str, q: &LogQuery, wait: std::time::Duration, poll: std::time::Duration) -> Result<LogPage, ReadError> {
    let deadline = tokio::time::Instant::now() + wait;
    let mut q = q.clone();
    loop {
        let page = read_page(store, exec, &q).await?;
        if !page.lines.is_empty() || page.ended || page.more || tokio::time::Instant::now() + poll > deadline {
            return Ok(page);
        }
        q.after = Cursor::parse(&page.next).map_err(ReadError::Store)?;
        tokio::time::sleep(poll).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_common::execlog::{agent_key, BatchLimits, LogBatcher};
    use ferry_common::model::{ExecutionSpec, Mode, Phase};
    use ferry_common::store::MemStore;
    use std::sync::Arc;

    #[test]
    fn cursors_round_trip_and_bad_ones_are_refused() {
        let c = Cursor::parse("c1:17.3,w-1:1700000000000000.0").unwrap();
        assert_eq!(Cursor::parse(&c.to_string()).unwrap(), c);
        assert_eq!(Cursor::parse("").unwrap(), Cursor::default());
        for bad in ["x", "a:1", "a:b.c", ":1.2", "a/b:1.2", "a:99999999999999999999.0"] {
            assert!(Cursor::parse(bad).is_err(), "{bad}");
        }
    }

    async fn execution(store: &SharedStore, id: &str, phase: Phase) {
        let spec = ExecutionSpec::new(id, Mode::Copy, "/a", "/b", Default::default());
        let e = Execution {
            spec,
            phase,
            stage: ferry_common::model::Stage::Transfer,
            listing_done: true,
            counters: Default::default(),
            started_unix_ms: 0,
            finished_unix_ms: Some(0),
            error: None,
            failures: vec![],
            phases: vec![],
            task_run: Default::default(),
            report_bytes: 0,
        };
        store.put(&ExecKeys::new(id).meta(), codec::encode(&e).unwrap(), None).await.unwrap();
    }

    /// Writes what a batcher cuts, as the shipper does.
    async fn ship_all(store: &SharedStore, b: &mut LogBatcher, exec: &str) {
        b.handle_log_level(exec, Some(Some(ferry_common::task::LogLevelOpt::Transfer)));
        loop {
            let out = b.poll_chunks(u64::MAX / 2, true);
            if out.is_empty() {
                return;
            }
            for c in out {
                let keys = ExecKeys::new(exec);
                let agent = agent_key(b.agent());
                store.put(&keys.log_chunk(&agent, c.seq), codec::encode(&c.chunk).unwrap(), None).await.unwrap();
                store.put(&keys.log_stream(&agent), vec![], None).await.unwrap();
                b.handle_written(&c);
            }
        }
    }

    #[tokio::test]
    async fn pages_return_every_line_of_every_agent_exactly_once() {
        let store: SharedStore = Arc::new(MemStore::new());
        execution(&store, "e1", Phase::Success).await;
        let limits = BatchLimits { chunk_lines: 7, ..Default::default() };
        let mut want = Vec::new();
        for (agent, n) in [("w1", 40u64), ("w2", 23), ("c1", 5)] {
            let mut b = LogBatcher::new(agent, limits.clone(), 10);
            for i in 0..n {
                let level = if i % 3 == 0 { LineLevel::Debug } else { LineLevel::Info };
                b.handle_line("e1", LogLine { ts_ms: i * 10, level, message: format!("{agent}-{i}"), fields: Default::default() }, 0);
                want.push(format!("{agent}-{i}"));
            }
            ship_all(&store, &mut b, "e1").await;
        }
        let mut got = Vec::new();
        let mut q = LogQuery { after: Cursor::default(), level: None, limit: 6 };
        for _ in 0..200 {
            let page = read_page(&store, "e1", &q).await.unwrap();
            got.extend(page.lines.iter().map(|l| l.message.clone()));
            q.after = Cursor::parse(&page.next).unwrap();
            if !page.more {
                assert!(page.ended);
                break;
            }
        }
        let mut sorted = got.clone();
        sorted.sort();
        want.sort();
        assert_eq!(sorted, want, "every line once");
        // A later chunk of one agent is read after the cursor, not lost.
        let mut late = LogBatcher::new("w2", limits.clone(), 1000);
        late.handle_line("e1", LogLine { ts_ms: 1, level: LineLevel::Info, message: "late".into(), fields: Default::default() }, 0);
        ship_all(&store, &mut late, "e1").await;
        let page = read_page(&store, "e1", &q).await.unwrap();
        assert_eq!(page.lines.iter().map(|l| l.message.as_str()).collect::<Vec<_>>(), vec!["late"]);
        // The level filter.
        let mut q = LogQuery { after: Cursor::default(), level: Some(LineLevel::Info), limit: 1000 };
        let mut info = Vec::new();
        loop {
            // A page reads a few chunks per agent: `More` says to go on.
            let page = read_page(&store, "e1", &q).await.unwrap();
            info.extend(page.lines);
            q.after = Cursor::parse(&page.next).unwrap();
            if !page.more {
                break;
            }
        }
        assert!(info.iter().all(|l| l.level == LineLevel::Info));
        assert_eq!(info.len(), 68 + 1 - (14 + 8 + 2));
        assert!(matches!(read_page(&store, "nope", &q).await, Err(ReadError::NotFound(_))));
    }
}
