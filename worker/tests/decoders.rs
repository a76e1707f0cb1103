//! Every decoder that reads bytes from the network or from the Store, fed hostile input: the
//! link frames (HELLO and HEADER are msgpack inside them), the values agents and coordinators
//! read back from etcd, and manifests. Inputs are valid encodings with bytes flipped, cut short
//! or extended, and plain random bytes. A decoder may refuse them; it must not panic, hang, or
//! claim to have used more input than it was given.
//!
//! The suite runs `FERRY_FUZZ_CASES` cases per property (default 2,000); `.ci/run` runs a long
//! pass and prints the count.

use ferry_common::codec;
use ferry_common::execlog::{LineLevel, LogChunk, LogLine};
use ferry_common::filter::Manifest;
use ferry_common::model::{AgentError, AgentRecord, Entry, EntryKind, ExecutionSpec, PartSet, ReportChunk, ScanDir, Shard, ShardBody, ShardResult, WorkerInfo};
use ferry_common::task::{Event, ExecSettings};
use ferry_worker::transport::frame::{self, FileHeader, Frame, Hello};
use ferry_worker::transport::link::pki::{EnrollTicket, IssuedRecord, Revocation};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

fn cases() -> u32 {
    std::env::var("FERRY_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(2_000)
}

/// A valid input changed: some bytes replaced, then cut or extended.
#[derive(Debug, Clone)]
struct Mutation {
    flips: Vec<(usize, u8)>,
    cut: Option<usize>,
    tail: Vec<u8>,
}

fn mutation() -> impl Strategy<Value = Mutation> {
    (proptest::collection::vec((any::<usize>(), any::<u8>()), 0..6), proptest::option::of(any::<usize>()), proptest::collection::vec(any::<u8>(), 0..16))
        .prop_map(|(flips, cut, tail)| Mutation { flips, cut, tail })
}

fn mutate(seed: &[u8], m: &Mutation) -> Vec<u8> {
    let mut b = seed.to_vec();
    if !b.is_empty() {
        for (at, v) in &m.flips {
            let i = at % b.len();
            b[i] = *v;
        }
    }
    if let Some(c) = m.cut {
        b.truncate(c % (b.len() + 1));
    }
    b.extend_from_slice(&m.tail);
    b
}

/// Runs `check` on mutations of every seed and on random bytes; returns how many inputs ran.
fn run(name: &str, seeds: &[Vec<u8>], check: impl Fn(&[u8])) -> u64 {
    let mut runner = TestRunner::new(Config { cases: cases(), failure_persistence: None, ..Config::default() });
    let ran = std::cell::Cell::new(0u64);
    let strategy = (0..seeds.len(), mutation(), proptest::collection::vec(any::<u8>(), 0..256), any::<bool>());
    runner
        .run(&strategy, |(i, m, random, use_random)| {
            let input = if use_random { random } else { mutate(&seeds[i], &m) };
            check(&input);
            ran.set(ran.get() + 1);
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    eprintln!("decoders: {name}: {} cases", ran.get());
    ran.get()
}

fn frame_seeds() -> Vec<Vec<u8>> {
    let header = FileHeader { id: 7, path: b"dir/file.txt".to_vec(), size: 4096, mode: 0o100644, uid: 1000, gid: 1000, ..Default::default() };
    let link =
        FileHeader { id: 8, path: b"dir/link".to_vec(), kind: frame::entry_kind::SYMLINK, target: b"file.txt".to_vec(), mode: 0o120777, ..Default::default() };
    let frames = vec![
        Frame::Hello(Hello { exec: "e-1".into(), agent: "w1".into(), trace: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into()) }),
        Frame::Header(header),
        Frame::Header(link),
        Frame::Chunk { id: 7, offset: 0, crc32c: 0x1234_5678, compressed: false, raw_len: 5, data: b"hello".to_vec() },
        Frame::Chunk { id: 7, offset: 5, crc32c: 1, compressed: true, raw_len: 64, data: zstd::encode_all(&[b'z'; 64][..], 1).unwrap() },
        Frame::End { id: 7, size: 4096, crc32c: 9 },
        Frame::Ack { id: 7, offset: 4096, status: 0 },
        Frame::Error { code: 2, message: "malformed".into() },
        Frame::Flush,
        Frame::Reject { id: 3, code: 4, message: "unsafe path".into() },
        Frame::Hole { id: 7, offset: 0, len: 1 << 20 },
    ];
    let mut seeds = vec![frame::encode_preamble().to_vec()];
    for f in &frames {
        let mut b = Vec::new();
        frame::encode(f, &mut b).unwrap();
        seeds.push(b);
    }
    // Frames back to back, as a stream carries them.
    seeds.push(seeds[1..].concat());
    seeds
}

#[test]
fn link_frames_survive_hostile_bytes() {
    let n = run("link frames", &frame_seeds(), |input| {
        let mut rest = input;
        // A stream of frames: decode until the input is used up or refused.
        while let Ok(Some((_, used))) = frame::decode(rest) {
            assert!(used > 0 && used <= rest.len(), "a frame claimed {used} bytes of {}", rest.len());
            rest = &rest[used..];
        }
        if input.len() >= frame::PREAMBLE_LEN {
            let _ = frame::decode_preamble(input[..frame::PREAMBLE_LEN].try_into().unwrap());
        }
    });
    assert!(n > 0);
}

fn entry(path: &str) -> Entry {
    Entry { path: path.as_bytes().to_vec(), kind: EntryKind::File, size: 10, mtime: Default::default(), compare_checksum: false, check_dest: true }
}

fn spec() -> ExecutionSpec {
    ExecutionSpec::new("e-1", ferry_common::model::Mode::Copy, "/src", "s3://bucket/prefix", Default::default())
}

fn enc<T: serde::Serialize>(v: &T) -> Vec<u8> {
    codec::encode(v).unwrap()
}

fn agent_record(worker: &WorkerInfo) -> AgentRecord {
    AgentRecord {
        info: worker.clone(),
        heartbeat_unix_ms: 2,
        bytes_per_second: 3,
        bytes_total: 4,
        recent_errors: vec![AgentError { unix_ms: 5, execution: "e1".into(), code: "CHECKSUM_MISMATCH".into(), message: "a/b: mismatch".into() }],
        link_peers: vec!["agent-cloud".into()],
    }
}

fn log_chunk() -> LogChunk {
    let mut fields = serde_json::Map::new();
    fields.insert("shard".into(), serde_json::Value::String("2Tx-1".into()));
    fields.insert("bytes".into(), serde_json::Value::from(42u64));
    LogChunk { agent: "w1".into(), lines: vec![LogLine { ts_ms: 1, level: LineLevel::Info, message: "ShardClaimed".into(), fields }] }
}

#[test]
fn store_values_survive_hostile_bytes() {
    let scan = Shard::new(
        "s-1".into(),
        ShardBody::Scan { dirs: vec![ScanDir { path: b"a/b".to_vec(), cookie: Some(3), after: None, included: false, links: false }] },
    );
    let transfer = Shard::new("s-2".into(), ShardBody::Transfer { entries: vec![entry("a"), entry("b/c")] });
    let worker = WorkerInfo {
        name: "w1".into(),
        host: "h".into(),
        movers: 8,
        pid: 1,
        locations: vec!["file:///".into()],
        started_unix_ms: 1,
        labels: vec!["cloud".into()],
        link_addr: Some("10.0.0.1:7400".into()),
        version: "0.1.0".into(),
        commit: "0123456789abcdef0123456789abcdef01234567".into(),
    };
    let record = agent_record(&worker);
    let logs = log_chunk();
    let ticket = EnrollTicket { name: "w1".into(), labels: vec!["onprem".into()], expires_unix: 1, seal: "00".repeat(32), ..Default::default() };
    let seeds = vec![
        enc(&spec()),
        enc(&scan),
        enc(&transfer),
        enc(&PartSet::default()),
        enc(&ShardResult::default()),
        enc(&ReportChunk::default()),
        enc(&ExecSettings::default()),
        enc(&worker),
        enc(&record),
        enc(&logs),
        enc(&Event::new(1, "TaskCreated", "made").task("t1")),
        enc(&ticket),
        enc(&IssuedRecord::default()),
        enc(&Revocation::default()),
    ];
    let n = run("store values", &seeds, |input| {
        let _ = codec::decode::<ExecutionSpec>(input);
        let _ = codec::decode::<ferry_common::model::Execution>(input);
        let _ = codec::decode::<Shard>(input);
        let _ = codec::decode::<PartSet>(input);
        let _ = codec::decode::<ShardResult>(input);
        let _ = codec::decode::<ReportChunk>(input);
        let _ = codec::decode::<ExecSettings>(input);
        let _ = codec::decode::<WorkerInfo>(input);
        let _ = codec::decode::<AgentRecord>(input);
        let _ = codec::decode::<LogChunk>(input);
        let _ = codec::decode::<Event>(input);
        let _ = codec::decode::<ferry_common::task::Task>(input);
        let _ = codec::decode::<EnrollTicket>(input);
        let _ = codec::decode::<IssuedRecord>(input);
        let _ = codec::decode::<Revocation>(input);
    });
    assert!(n > 0);
}

/// A value as a later release writes it: today's fields plus one this release does not know.
#[derive(serde::Serialize)]
struct Later<'a, T: serde::Serialize> {
    #[serde(flatten)]
    now: &'a T,
    field_added_in_a_later_release: Vec<u32>,
}

/// `value`, written by a later release, reads back as the same value here (compared by its
/// encoding, as not every type has `PartialEq`).
fn later_release_reads_back<T: serde::Serialize + serde::de::DeserializeOwned>(value: &T) {
    let bytes = codec::encode(&Later { now: value, field_added_in_a_later_release: vec![1, 2] }).unwrap();
    let back: T = codec::decode(&bytes).unwrap_or_else(|e| panic!("{} with a later release's field: {e}", std::any::type_name::<T>()));
    assert_eq!(enc(&back), enc(value), "{}", std::any::type_name::<T>());
}

/// The rolling-upgrade rule of docs/operations.md: during a rolling restart old agents read
/// values new ones wrote, so every Store value must ignore fields it does not know. (Task is
/// the documented exception: the API rejects misspelled fields with the same type.)
#[test]
fn store_values_written_by_a_later_release_still_decode() {
    later_release_reads_back(&spec());
    later_release_reads_back(&Shard::new("s-1".into(), ShardBody::Transfer { entries: vec![entry("a")] }));
    later_release_reads_back(&Shard::new(
        "s-2".into(),
        ShardBody::Scan { dirs: vec![ScanDir { path: b"a".to_vec(), cookie: Some(1), after: None, included: true, links: false }] },
    ));
    later_release_reads_back(&PartSet::default());
    later_release_reads_back(&ShardResult::default());
    later_release_reads_back(&ReportChunk::default());
    later_release_reads_back(&ExecSettings::default());
    later_release_reads_back(&WorkerInfo { name: "w1".into(), version: "0.1.0".into(), ..Default::default() });
    later_release_reads_back(&agent_record(&WorkerInfo { name: "w1".into(), ..Default::default() }));
    later_release_reads_back(&log_chunk());
    later_release_reads_back(&Event::new(1, "TaskCreated", "made").task("t1"));
    later_release_reads_back(&EnrollTicket { name: "w1".into(), ..Default::default() });
    later_release_reads_back(&IssuedRecord::default());
    later_release_reads_back(&Revocation::default());
}

#[test]
fn manifests_survive_hostile_bytes() {
    let seeds = vec![b"a/b.txt\n/abs/c\nd/\n\n# comment\nx\\ny\n".to_vec(), b"../up\n".to_vec(), vec![0xff, 0xfe, b'\n', 0]];
    let n = run("manifests", &seeds, |input| {
        let _ = Manifest::parse(input);
    });
    assert!(n > 0);
}
