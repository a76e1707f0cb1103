//! Traces across a fleet: a copy bound to two agents at two sites (network namespaces), with
//! the CLI, the coordinator and both agents exporting OTLP/HTTP to a real receiver (PyPI's
//! opentelemetry-proto decoding `/v1/traces`, started by the test). The execution is one
//! trace: every process's spans share the CLI's trace ID, and each span's parent is a span
//! of that trace, so the tree is whole (phases under the coordinator's span, shards under the
//! execution, the writer's stream under the reader's).

mod support;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::otlp::OtlpReceiver;
use support::sites::{have_root_and_ip, AgentSpec, Fleet};

/// Who sent a span: its service, and the agent's name for workers.
fn sender(s: &Value) -> String {
    match s["service"].as_str().unwrap_or("") {
        "ferry-worker" => format!("ferry-worker/{}", s["instance"].as_str().unwrap_or("")),
        other => other.to_string(),
    }
}

#[test]
fn a_bound_copy_is_one_trace_from_the_cli_through_the_coordinator_to_both_agents() {
    if !have_root_and_ip() {
        return;
    }
    // On every address: the agents reach it over the sites' bridge.
    let receiver = OtlpReceiver::start("0.0.0.0");
    let port = receiver.port;
    let endpoint = format!("http://{{host_ip}}:{port}");
    // A short batch delay, so the spans are in soon after each process's work.
    let env = [("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()), ("OTEL_BSP_SCHEDULE_DELAY", "200")];
    let Some(fleet) = Fleet::start_with_env(vec![AgentSpec::new("onprem", "onprem"), AgentSpec::new("cloud", "cloud")], &env) else {
        eprintln!("skipping: etcd is not installed");
        return;
    };
    let src = fleet.work.path().join("src");
    let dst = fleet.work.path().join("dst");
    for d in 0..4 {
        std::fs::create_dir_all(src.join(format!("d{d}"))).unwrap();
        for f in 0..25 {
            std::fs::write(src.join(format!("d{d}/f{f}")), vec![(d * 25 + f) as u8; 4096 + f * 100]).unwrap();
        }
    }
    let copy = fleet
        .ferry("copy", &src, &dst)
        .args(["--json", "--source-agents", "onprem", "--destination-agents", "cloud"])
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{}:{port}", fleet.sites.host_ip))
        .env("OTEL_BSP_SCHEDULE_DELAY", "200")
        .timeout(Duration::from_secs(180))
        .run();
    copy.assert_code(0);
    let summary: Value = serde_json::from_str(copy.stdout.trim()).unwrap();
    assert_eq!(summary["status"], "SUCCESS", "{}", copy.describe());

    // The CLI flushed before it exited; the daemons export within their batch delay.
    let wanted = ["ferry", "ferry-coordinator", "ferry-worker/onprem", "ferry-worker/cloud"];
    let deadline = Instant::now() + Duration::from_secs(60);
    let (trace, mine) = loop {
        let all = receiver.spans();
        let root = all.iter().find(|s| s["name"] == "ferry copy" && s["service"] == "ferry");
        if let Some(root) = root {
            let trace = root["trace_id"].as_str().unwrap().to_string();
            let mine: Vec<Value> = all.iter().filter(|s| s["trace_id"] == trace.as_str()).cloned().collect();
            let senders: BTreeSet<String> = mine.iter().map(sender).collect();
            let ids: BTreeSet<&str> = mine.iter().filter_map(|s| s["span_id"].as_str()).collect();
            let orphans = mine.iter().filter(|s| s["parent_span_id"] != "" && !ids.contains(s["parent_span_id"].as_str().unwrap())).count();
            let phases_done = mine.iter().any(|s| s["name"] == "TRANSFERRING");
            if wanted.iter().all(|w| senders.contains(*w)) && orphans == 0 && phases_done {
                break (trace, mine);
            }
        }
        if Instant::now() >= deadline {
            let kept = receiver.keep_for_failure("ferry-traces-failed.jsonl");
            let senders: BTreeMap<String, usize> = all.iter().fold(BTreeMap::new(), |mut m, s| {
                *m.entry(format!("{} {} {}", s["trace_id"].as_str().unwrap_or(""), sender(s), s["name"].as_str().unwrap_or(""))).or_default() += 1;
                m
            });
            let ids: BTreeSet<&str> = all.iter().filter_map(|s| s["span_id"].as_str()).collect();
            let orphans: Vec<String> = all
                .iter()
                .filter(|s| s["parent_span_id"] != "" && !ids.contains(s["parent_span_id"].as_str().unwrap()))
                .map(|s| format!("{} {} parent {}", sender(s), s["name"], s["parent_span_id"]))
                .collect();
            panic!(
                "the trace did not come in whole within 60 s (spans kept in {}): spans by trace, sender and name: {senders:#?}\norphans: {orphans:#?}\n{}",
                kept.display(),
                fleet.agent_logs()
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    };

    // One root: the CLI's. Everything else hangs under a span of this trace.
    let by_id: HashMap<&str, &Value> = mine.iter().map(|s| (s["span_id"].as_str().unwrap(), s)).collect();
    let roots: Vec<&Value> = mine.iter().filter(|s| s["parent_span_id"] == "").collect();
    assert_eq!(roots.len(), 1, "one root span: {roots:#?}");
    assert_eq!((roots[0]["service"].as_str(), roots[0]["name"].as_str()), (Some("ferry"), Some("ferry copy")));
    let parent = |s: &Value| by_id[s["parent_span_id"].as_str().unwrap()].clone();
    let named = |name: &str, from: &str| -> Vec<&Value> { mine.iter().filter(|s| s["name"] == name && sender(s) == from).collect() };

    // The coordinator's span is a child of the CLI's; its phases are children of it.
    let drives = named("coordinate execution", "ferry-coordinator");
    assert!(!drives.is_empty(), "no coordinator span");
    for d in &drives {
        assert_eq!(parent(d)["name"], "ferry copy");
    }
    for phase in ["PREPARING", "TRANSFERRING"] {
        let p = named(phase, "ferry-coordinator");
        assert!(!p.is_empty(), "no {phase} span");
        assert!(p.iter().all(|s| parent(s)["name"] == "coordinate execution"), "{phase} hangs under the coordinator's span");
    }
    // The reader's shards are children of the execution's root; its link streams are theirs.
    let reader_shards: Vec<&Value> = mine.iter().filter(|s| sender(s) == "ferry-worker/onprem" && s["attributes"]["shard"].is_string()).collect();
    assert!(reader_shards.iter().any(|s| s["name"] == "transfer"), "the reader ran transfer shards: {reader_shards:#?}");
    for s in &reader_shards {
        assert_eq!(parent(s)["name"], "ferry copy", "a shard's parent is the execution's root");
        assert!(s["attributes"]["outcome"].is_string(), "a shard says how it ended: {s}");
    }
    let sends = named("send batch", "ferry-worker/onprem");
    assert!(!sends.is_empty(), "the reader opened link streams");
    assert!(sends.iter().all(|s| reader_shards.iter().any(|r| r["span_id"] == s["parent_span_id"])), "sends hang under the reader's shards");
    // The writer's side of each stream is a child of the reader's.
    let receives = named("link receive", "ferry-worker/cloud");
    assert!(!receives.is_empty(), "the writer's stream spans");
    for r in &receives {
        let p = parent(r);
        assert_eq!(sender(&p), "ferry-worker/onprem", "the writer's stream hangs under the reader's: {r}");
        assert!(p["name"] == "send batch" || p["name"] == "ask destination", "a stream's reader side is a send or a request: {p}");
        assert_eq!(r["attributes"]["peer"], "onprem");
    }
    assert!(receives.iter().any(|r| parent(r)["name"] == "send batch"), "a data stream among them");
    // Store requests appear under whatever asked (the CLI's submission, a phase, a shard).
    let stores: BTreeSet<String> = mine.iter().filter(|s| s["name"] == "txn").map(sender).collect();
    assert!(stores.contains("ferry-coordinator") && stores.contains("ferry-worker/onprem"), "Store transactions from {stores:?}");
    eprintln!("traces: {} spans in trace {trace} from {:?}", mine.len(), mine.iter().map(sender).collect::<BTreeSet<_>>());
}
