//! Execution logs like CloudWatch Logs: `ferry exec logs` and `GET /v1/executions/{id}/logs`
//! show the lines every agent logged about an execution, read from the Store, with no
//! access to the agents' hosts.
//!
//! 1. After a cluster task run with two workers (LogLevel TRANSFER), the logs hold lines of
//!    both workers and of the coordinator, one `Entry` line per file; the level filter keeps
//!    exactly the lines at least that severe; paging with the cursor returns every line
//!    exactly once; bad requests are clean 400s and an unknown execution a 404.
//! 2. `ferry exec logs --follow`, started while an execution runs, prints the lines of
//!    agents running in other network namespaces and exits when the execution ends.

mod support;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ferry_common::testing::EtcdServer;
use serde_json::Value;
use support::sites::{bin, have_root_and_ip, AgentSpec, Fleet, Procs};
use support::*;

/// A tree of `files` files of `size` bytes in a few directories.
fn make_tree(root: &Path, files: usize, size: usize) -> BTreeSet<String> {
    let mut paths = BTreeSet::new();
    for i in 0..files {
        let rel = format!("d{}/f{i:03}", i % 4);
        write_file(&root.join(&rel), &vec![(i % 251) as u8; size]);
        paths.insert(rel);
    }
    paths
}

/// Lines of `--json` output (one JSON object per line).
fn json_lines(out: &Outcome) -> Vec<Value> {
    out.stdout.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}\n{}", out.describe()))).collect()
}

/// Lines as comparable strings, sorted: a multiset.
fn multiset(lines: &[Value]) -> Vec<String> {
    let mut v: Vec<String> = lines.iter().map(Value::to_string).collect();
    v.sort();
    v
}

fn get(url: &str) -> (u16, Value) {
    let res = ureq::get(url).set("Authorization", &format!("Bearer {API_TOKEN}")).timeout(Duration::from_secs(60)).call();
    let (code, r) = match res {
        Ok(r) => (r.status(), r),
        Err(ureq::Error::Status(c, r)) => (c, r),
        Err(e) => panic!("GET {url}: {e}"),
    };
    (code, r.into_json().unwrap_or(Value::Null))
}

fn wait_workers_online(etcd: &str, n: usize, logs: &Path) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = Ferry::bare().args(["workers", "--json", "--etcd", etcd]).run();
        if out.code == Some(0) && out.stdout.matches("\"ONLINE\"").count() == n {
            return;
        }
        assert!(Instant::now() < deadline, "workers did not register: {}\n{}", out.stdout, std::fs::read_to_string(logs.join("w1.log")).unwrap_or_default());
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn logs_of_a_cluster_run_come_from_both_workers_and_the_coordinator_filtered_and_paged_exactly() {
    let Some(etcd) = EtcdServer::start() else {
        eprintln!("skipping: etcd is not installed (apt-get install etcd-server)");
        return;
    };
    let work = scratch();
    let (src, dst, logs) = (work.path().join("src"), work.path().join("dst"), work.path().join("logs"));
    std::fs::create_dir_all(&logs).unwrap();
    let files = make_tree(&src, 48, 64 * 1024);
    let tokens = api_token_file(work.path());
    let port = free_port();
    let api = format!("http://127.0.0.1:{port}");
    let mut procs = Procs::default();
    let spawn = |name: &str, cmd: &mut Command| {
        cmd.env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(logs.join(format!("{name}.log"))).unwrap())
            .spawn()
            .unwrap()
    };
    procs.0.push(spawn(
        "c1",
        Command::new(bin("ferry"))
            .args(["coordinator", "--name", "c1", "--etcd", &etcd.endpoint, "--listen", &format!("127.0.0.1:{port}"), "--api-token-file"])
            .arg(&tokens),
    ));
    for w in ["w1", "w2"] {
        procs.0.push(spawn(w, Command::new(bin("ferry-worker")).args(["--etcd", &etcd.endpoint, "--name", w, "--movers", "2"])));
    }
    wait_workers_online(&etcd.endpoint, 2, &logs);
    let deadline = Instant::now() + Duration::from_secs(60);
    while ureq::get(&format!("{api}/v1/health")).call().is_err() {
        assert!(Instant::now() < deadline, "the API did not answer: {}", std::fs::read_to_string(logs.join("c1.log")).unwrap_or_default());
        std::thread::sleep(Duration::from_millis(100));
    }
    let cli = |args: &[&str]| Ferry::bare().env("FERRY_API", &api).env("FERRY_API_TOKEN", API_TOKEN).args(args);
    cli(&["task", "create", "--name", "logs-task", "--source", src.to_str().unwrap(), "--destination", dst.to_str().unwrap()])
        .args(["--option", "LogLevel=TRANSFER", "--option", "BytesPerSecond=1048576"])
        .run()
        .assert_code(0);
    let started = cli(&["task", "start", "logs-task", "--wait", "--json"]).run();
    started.assert_code(0);
    let id = started.json()["ExecutionId"].as_str().unwrap().to_string();

    // --follow after the end returns at once, with everything (it waits for the agents' last
    // flush): the reference every other read is compared with.
    let all_out = cli(&["exec", "logs", &id, "--follow", "--json"]).run();
    all_out.assert_code(0);
    let all = json_lines(&all_out);
    let agents: BTreeSet<&str> = all.iter().filter_map(|l| l["Agent"].as_str()).collect();
    for a in ["w1", "w2", "c1"] {
        assert!(agents.contains(a), "no line from {a}: agents {agents:?}\n{}", all_out.stdout);
    }
    let entries: BTreeSet<String> = all
        .iter()
        .filter(|l| l["Message"] == "Entry" && l["Fields"]["status"] == "transferred")
        .filter_map(|l| l["Fields"]["path"].as_str().map(String::from))
        .collect();
    for f in &files {
        assert!(entries.contains(f), "LogLevel TRANSFER: no Entry line for {f}\n{}", all_out.stdout);
    }
    assert!(all.iter().any(|l| l["Agent"] == "c1" && l["Message"] == "ExecutionPhase" && l["Fields"]["phase"] == "SUCCESS"), "{}", all_out.stdout);
    assert!(all.iter().any(|l| l["Level"] == "DEBUG"), "TRANSFER ships DEBUG lines (ShardClaimed)");
    for l in &all {
        assert!(l["TimeUnixMs"].as_u64().is_some() && l["Fields"].is_object() && l["Fields"].get("execution").is_none(), "{l}");
    }

    // The same lines through the API (no --follow), and in text.
    let again = cli(&["exec", "logs", &id, "--json"]).run();
    assert_eq!(multiset(&json_lines(again.assert_code(0))), multiset(&all), "a second read returns the same lines");
    let text = cli(&["exec", "logs", &id]).run();
    text.assert_code(0);
    assert_eq!(text.stdout.lines().count(), all.len());
    let first: Vec<&str> = text.stdout.lines().next().unwrap().split_whitespace().collect();
    assert!(
        first[0].ends_with('Z') && agents.contains(first[1]) && ["ERROR", "WARN", "INFO", "DEBUG"].contains(&first[2]),
        "TIME AGENT LEVEL message: {first:?}"
    );
    assert!(text.stdout.lines().any(|l| l.contains(" Entry ") && l.contains(" status=transferred")), "key=value fields: {}", text.stdout);

    // The level filter keeps exactly the lines at least that severe.
    let info = cli(&["exec", "logs", &id, "--level", "info", "--json"]).run();
    let info = json_lines(info.assert_code(0));
    let want: Vec<Value> = all.iter().filter(|l| l["Level"] != "DEBUG").cloned().collect();
    assert!(!want.is_empty() && want.len() < all.len());
    assert_eq!(multiset(&info), multiset(&want));
    let errors = json_lines(cli(&["exec", "logs", &id, "--level", "ERROR", "--json"]).run().assert_code(0));
    assert_eq!(multiset(&errors), multiset(&all.iter().filter(|l| l["Level"] == "ERROR").cloned().collect::<Vec<_>>()));

    // Paging through the API with a small limit returns every line exactly once.
    let mut paged = Vec::new();
    let mut after = String::new();
    for round in 0.. {
        assert!(round < 10_000, "paging does not end");
        let (code, page) = get(&format!("{api}/v1/executions/{id}/logs?limit=7&after={}", after.replace(',', "%2C").replace(':', "%3A")));
        assert_eq!(code, 200, "{page}");
        let lines = page["Lines"].as_array().unwrap();
        assert!(lines.len() <= 7);
        paged.extend(lines.iter().cloned());
        after = page["Next"].as_str().unwrap().to_string();
        if page["More"] != true {
            assert_eq!(page["Ended"], true, "the execution ended and nothing more is stored");
            break;
        }
    }
    assert_eq!(multiset(&paged), multiset(&all), "pages hold every line exactly once");

    // The OpenAPI document describes the endpoint (schemathesis checks answers against it).
    let (code, doc) = get(&format!("{api}/v1/openapi.json"));
    assert_eq!(code, 200);
    assert!(doc["paths"]["/v1/executions/{id}/logs"]["get"].is_object(), "the OpenAPI document has the logs endpoint");
    assert_eq!(doc["components"]["schemas"]["LineLevel"]["enum"], serde_json::json!(["ERROR", "WARN", "INFO", "DEBUG"]));
    for field in ["Lines", "Next", "More", "Ended"] {
        assert!(doc["components"]["schemas"]["LogPage"]["required"].as_array().unwrap().iter().any(|f| f == field), "LogPage.{field}");
    }

    // Errors: 404 for an unknown execution, 400 for bad parameters, one line from the CLI.
    assert_eq!(get(&format!("{api}/v1/executions/no-such-exec/logs")).0, 404);
    for bad in ["limit=0", "limit=1001", "limit=x", "level=LOUD", "after=nonsense", "follow=maybe"] {
        let (code, body) = get(&format!("{api}/v1/executions/{id}/logs?{bad}"));
        assert_eq!(code, 400, "{bad}: {body}");
        assert_eq!(body["Error"]["Code"], "InvalidRequest", "{bad}: {body}");
    }
    let unknown = cli(&["exec", "logs", "no-such-exec"]).run();
    unknown.assert_code(2);
    assert!(unknown.stderr.contains("no execution no-such-exec") && unknown.stderr.lines().count() == 1, "{}", unknown.describe());
    let bad_level = cli(&["exec", "logs", &id, "--level", "LOUD"]).run();
    bad_level.assert_code(2);
    assert!(bad_level.stderr.contains("--level") && bad_level.stderr.contains("ERROR, WARN, INFO or DEBUG"), "{}", bad_level.describe());
    // For the record: how many Store writes the logs of this execution took.
    if let Ok(keys) =
        Command::new("etcdctl").args(["--endpoints", &etcd.endpoint, "get", "--prefix", "--keys-only", &format!("/ferry/v1/exec/{id}/logs/")]).output()
    {
        let chunks = String::from_utf8_lossy(&keys.stdout).lines().filter(|l| !l.is_empty()).count();
        eprintln!("exec_logs: {} lines from {} agents in {chunks} chunks (Store writes)", all.len(), agents.len());
    }
    // The same reads straight from etcd.
    let direct = Ferry::bare().args(["exec", "logs", &id, "--json", "--etcd", &etcd.endpoint]).run();
    assert_eq!(multiset(&json_lines(direct.assert_code(0))), multiset(&all));
}

#[test]
fn follow_prints_lines_of_agents_in_other_network_namespaces_until_the_execution_ends() {
    if !have_root_and_ip() {
        return;
    }
    let Some(fleet) = Fleet::start(vec![AgentSpec::new("onprem", "onprem"), AgentSpec::new("cloud", "cloud")]) else {
        eprintln!("skipping: etcd is not installed");
        return;
    };
    let src = fleet.work.path().join("src");
    let dst = fleet.work.path().join("dst");
    make_tree(&src, 24, 256 * 1024);
    // 6 MiB at 1 MiB/s: the execution runs for seconds, long enough to follow it.
    let copy = fleet
        .ferry("copy", &src, &dst)
        .args(["--source-agents", "onprem", "--destination-agents", "cloud", "--bwlimit", "1M", "--json"])
        .spawn_detached(&fleet.work.path().join("copy.stderr"));
    let mut copy = Procs(vec![copy]);
    let etcd = fleet.etcd.endpoint.clone();
    let deadline = Instant::now() + Duration::from_secs(120);
    let (id, status) = loop {
        let out = Ferry::bare().args(["exec", "list", "--json", "--etcd", &etcd]).run();
        let list: Value = serde_json::from_str(out.stdout.trim()).unwrap_or(Value::Null);
        if let Some(e) = list.as_array().and_then(|a| a.first()) {
            break (e["execution"].as_str().unwrap().to_string(), e["status"].as_str().unwrap_or("").to_string());
        }
        assert!(Instant::now() < deadline, "the execution did not appear: {}\n{}", out.describe(), fleet.agent_logs());
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(!["SUCCESS", "ERROR", "CANCELLED"].contains(&status.as_str()), "the execution must still run when --follow starts (it is {status})");
    // From the host namespace, through etcd only: no access to the agents' hosts.
    let follow = Ferry::bare().args(["exec", "logs", &id, "--follow", "--etcd", &etcd]).timeout(Duration::from_secs(300)).run();
    follow.assert_code(0);
    let status = copy.0[0].wait().unwrap();
    copy.0.clear();
    assert!(
        status.success(),
        "the copy failed: {}\n{}",
        std::fs::read_to_string(fleet.work.path().join("copy.stderr")).unwrap_or_default(),
        fleet.agent_logs()
    );
    let agent_of = |l: &str| l.split_whitespace().nth(1).map(str::to_string);
    let agents: BTreeSet<String> = follow.stdout.lines().filter_map(agent_of).collect();
    for a in ["onprem", "cloud", "c1"] {
        assert!(agents.contains(a), "--follow printed no line of {a}: {agents:?}\n{}\n{}", follow.describe(), fleet.agent_logs());
    }
    assert!(follow.stdout.lines().any(|l| l.contains(" onprem ") && l.contains("ExecutionJoined")), "{}", follow.stdout);
    // It exited because the execution ended: the coordinator's last phase line is in.
    assert!(follow.stdout.lines().any(|l| l.contains(" c1 ") && l.contains("ExecutionPhase") && l.contains("phase=SUCCESS")), "{}", follow.stdout);
    // The onprem agent's process runs in its own namespace (the proof that these lines did not
    // come from a local process).
    let ns = &fleet.sites.sites[0].ns;
    let pids = Command::new("ip").args(["netns", "pids", ns]).output().unwrap();
    assert!(!String::from_utf8_lossy(&pids.stdout).trim().is_empty(), "the onprem agent runs in namespace {ns}");
}
