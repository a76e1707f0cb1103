//! What docs/operations.md tells an operator to rely on, run for real: the probe endpoints a
//! Kubernetes kubelet or a load balancer uses (alive versus ready, through an etcd outage),
//! the version stamp a rolling upgrade is watched by, and the etcd backup and restore procedure
//! (snapshot, lose etcd, restore: tasks are back and a running execution completes).

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ferry_common::testing::EtcdServer;
use serde_json::Value;
use support::{api_token_file, free_port, random_bytes, same_content, scratch, temp_leftovers, write_file, Daemons, Ferry, API_TOKEN};

const WAIT: Duration = Duration::from_secs(180);

fn worker_bin() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_ferry")).with_file_name("ferry-worker")
}

/// A coordinator serving the API on `api_port`, and one worker serving its probes on
/// `probe_port`, both on `etcd`.
fn start(etcd: &EtcdServer, dir: &Path, api_port: u16, probe_port: u16) -> Daemons {
    start_with(etcd, dir, api_port, probe_port, &[])
}

/// [`start`], with `worker_env` set for the worker (fault-injection hooks).
fn start_with(etcd: &EtcdServer, dir: &Path, api_port: u16, probe_port: u16, worker_env: &[(&str, &str)]) -> Daemons {
    use std::os::unix::process::CommandExt;
    let tokens = api_token_file(dir);
    // FERRY_TEST_LOG sets the daemons' RUST_LOG, for chasing a failure.
    let log_filter = std::env::var("FERRY_TEST_LOG").unwrap_or_else(|_| "info".into());
    let coordinator = Ferry::bare()
        .env("RUST_LOG", &log_filter)
        .args(["coordinator", "--etcd", &etcd.endpoint, "--name", "c1", "--listen", &format!("127.0.0.1:{api_port}"), "--api-token-file"])
        .arg(&tokens)
        .spawn_detached(&dir.join("coordinator.log"));
    let log = dir.join("worker.log");
    let worker = Command::new(worker_bin())
        .args(["--etcd", &etcd.endpoint, "--name", "w1", "--movers", "2", "--lease-ttl", "3", "--metrics-listen", &format!("127.0.0.1:{probe_port}")])
        .env("RUST_LOG", &log_filter)
        .envs(worker_env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .process_group(0)
        .spawn()
        .expect("start ferry-worker");
    Daemons { children: vec![("coordinator".into(), coordinator, dir.join("coordinator.log")), ("worker".into(), worker, log)] }
}

/// (status, body) of `GET http://127.0.0.1:{port}{path}`; status 0 when nothing answers.
fn get(port: u16, path: &str) -> (u16, String) {
    let agent = ureq::AgentBuilder::new().timeout(Duration::from_secs(5)).build();
    let req = agent.get(&format!("http://127.0.0.1:{port}{path}")).set("Authorization", &format!("Bearer {API_TOKEN}"));
    match req.call() {
        Ok(r) => (r.status(), r.into_string().unwrap_or_default()),
        Err(ureq::Error::Status(code, r)) => (code, r.into_string().unwrap_or_default()),
        Err(_) => (0, String::new()),
    }
}

fn wait_for(what: &str, d: &Daemons, timeout: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !ok() {
        assert!(Instant::now() < deadline, "{what} within {timeout:?}{}", d.logs());
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn probes_tell_alive_from_ready_through_an_etcd_outage() {
    let dir = scratch();
    let Some(mut etcd) = EtcdServer::start() else { return };
    let (api, probes) = (free_port(), free_port());
    let d = start(&etcd, dir.path(), api, probes);

    wait_for("the worker reports ready", &d, WAIT, || get(probes, "/readyz").0 == 200);
    assert_eq!(get(probes, "/healthz"), (200, "ok\n".to_string()));
    assert_eq!(get(probes, "/metricz").0, 404, "only the probe paths are served");
    wait_for("the coordinator reports ready", &d, WAIT, || get(api, "/readyz").0 == 200);
    assert_eq!(get(api, "/healthz").0, 200);
    // Probes carry no token; the rest of the API still wants one.
    let bare = ureq::get(&format!("http://127.0.0.1:{api}/readyz")).call().map(|r| r.status()).unwrap_or(0);
    assert_eq!(bare, 200, "a kubelet probe sends no token");
    let refused = ureq::get(&format!("http://127.0.0.1:{api}/v1/agents")).call();
    assert!(matches!(refused, Err(ureq::Error::Status(401, _))), "the API itself still wants a token");

    // The version stamp: the CLI, the API's health and every agent's registration name the
    // same release and commit, so a rolling upgrade can be watched.
    let version = Ferry::bare().arg("--version").run();
    version.assert_code(0);
    let (_, health) = get(api, "/v1/health");
    let health: Value = serde_json::from_str(&health).unwrap();
    let commit = health["Commit"].as_str().unwrap().to_string();
    assert!(!commit.is_empty());
    assert!(version.stdout.contains(env!("CARGO_PKG_VERSION")) && version.stdout.contains(commit.get(..12).unwrap_or(&commit)), "{}", version.stdout);
    let (_, agents) = get(api, "/v1/agents");
    let agents: Value = serde_json::from_str(&agents).unwrap();
    assert_eq!(agents[0]["Version"], env!("CARGO_PKG_VERSION"), "{agents}");
    // The agent's registration names the build of the binary it runs.
    let worker_version = Command::new(worker_bin()).arg("--version").output().unwrap();
    let worker_version = String::from_utf8_lossy(&worker_version.stdout).to_string();
    let registered = agents[0]["Commit"].as_str().unwrap_or("");
    assert!(!registered.is_empty() && worker_version.contains(registered.get(..12).unwrap_or(registered)), "{worker_version} vs {agents}");

    // etcd down: both stay alive (a restart would only drop held shards) and turn not ready.
    etcd.stop();
    wait_for("the worker reports not ready while etcd is down", &d, Duration::from_secs(30), || get(probes, "/readyz").0 == 503);
    let (_, why) = get(probes, "/readyz");
    assert!(why.contains("etcd"), "the answer says what to look at: {why}");
    assert_eq!(get(probes, "/healthz").0, 200, "alive while etcd is down");
    wait_for("the coordinator reports not ready while etcd is down", &d, Duration::from_secs(30), || get(api, "/readyz").0 == 503);
    assert_eq!(get(api, "/healthz").0, 200);

    etcd.restart();
    wait_for("the worker is ready again after etcd is back", &d, WAIT, || get(probes, "/readyz").0 == 200);
    wait_for("the coordinator is ready again after etcd is back", &d, WAIT, || get(api, "/readyz").0 == 200);
}

#[test]
fn etcd_backup_and_restore_brings_tasks_back_and_a_running_execution_completes() {
    let dir = scratch();
    let Some(mut etcd) = EtcdServer::start() else { return };
    let (src, dst) = (dir.path().join("src"), dir.path().join("dst"));
    // Many small shards (one directory each), so some finish between the backup and the loss:
    // their claims come back with the restore, naming an agent that is still alive.
    let rels: Vec<String> = (0..192).map(|i| format!("d{:02}/f{i}.bin", i % 48)).collect();
    for rel in &rels {
        write_file(&src.join(rel), &random_bytes(48 << 10));
    }
    let (api, probes) = (free_port(), free_port());
    let d = start(&etcd, dir.path(), api, probes);
    wait_for("the worker is ready", &d, WAIT, || get(probes, "/readyz").0 == 200);
    wait_for("the coordinator is ready", &d, WAIT, || get(api, "/readyz").0 == 200);
    let cli = |args: &[&str]| {
        Ferry::bare().env("FERRY_API", format!("http://127.0.0.1:{api}")).env("FERRY_API_TOKEN", API_TOKEN).args(args).timeout(Duration::from_secs(60)).run()
    };
    let s = |p: &Path| p.to_str().unwrap().to_string();
    // 9 MiB at 1 MiB/s: about 9 s of transfer, so the snapshot lands mid-run.
    cli(&["task", "create", "--name", "dr", "--source", &s(&src), "--destination", &s(&dst), "--option", "BytesPerSecond=1048576"]).assert_code(0);
    let started = cli(&["task", "start", "dr", "--json"]);
    started.assert_code(0);
    let id = serde_json::from_str::<Value>(&started.stdout).unwrap()["ExecutionId"].as_str().unwrap().to_string();
    let status = |id: &str| -> Value {
        let (code, body) = get(api, &format!("/v1/executions/{id}"));
        if code == 200 {
            serde_json::from_str(&body).unwrap()
        } else {
            Value::Null
        }
    };
    wait_for("the execution transfers", &d, WAIT, || status(&id)["Status"] == "TRANSFERRING");
    std::thread::sleep(Duration::from_secs(2));

    // The backup, then more progress that the restore will forget.
    let snapshot = dir.path().join("etcd.snapshot");
    etcd.snapshot(&snapshot);
    let at_backup = status(&id);
    assert_eq!(at_backup["Status"], "TRANSFERRING", "the backup is taken mid-run: {at_backup}");
    eprintln!("backup taken at {} bytes", at_backup["Counters"]["BytesWritten"]);
    std::thread::sleep(Duration::from_secs(2));
    eprintln!("etcd lost at {} bytes", status(&id)["Counters"]["BytesWritten"]);

    // Lose etcd (its data directory with it) and restore the snapshot.
    etcd.lose_and_restore(&snapshot);
    wait_for("the coordinator is ready after the restore", &d, WAIT, || get(api, "/readyz").0 == 200);
    eprintln!("restored to {} bytes", status(&id)["Counters"]["BytesWritten"]);

    let deadline = Instant::now() + WAIT;
    let end = loop {
        let e = status(&id);
        if matches!(e["Status"].as_str(), Some("SUCCESS" | "ERROR" | "CANCELLED")) {
            break e;
        }
        assert!(Instant::now() < deadline, "execution {id} did not end after the restore: {e}{}", d.logs());
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(end["Status"], "SUCCESS", "the execution resumed from the snapshot and finished: {end}{}", d.logs());
    let orphans = d.logs().matches("gave back a claim").count();
    eprintln!("claims given back after the restore: {orphans}");
    let tasks = cli(&["task", "list", "--json"]);
    tasks.assert_code(0);
    assert!(tasks.stdout.contains("\"dr\""), "the task is back: {}", tasks.stdout);
    for rel in &rels {
        assert!(same_content(&src.join(rel), &dst.join(rel)), "{rel} differs after the restore");
    }
    assert!(temp_leftovers(&dst).is_empty(), "temporary names left: {:?}", temp_leftovers(&dst));
}

/// `ferry agent list` answers "which agent is failing, and is it there at all": status, last
/// heartbeat, bytes moved, its recent failures; and an agent killed without a goodbye stays
/// listed, OFFLINE, as last seen, instead of vanishing.
#[test]
fn agent_list_shows_each_agents_health_and_keeps_a_killed_one_as_offline() {
    let dir = scratch();
    let Some(etcd) = EtcdServer::start() else { return };
    let src = dir.path().join("src");
    for i in 0..12 {
        write_file(&src.join(format!("f{i}.bin")), &random_bytes(256 << 10));
    }
    write_file(&src.join("bad.bin"), &random_bytes(64 << 10));
    let (api, probes) = (free_port(), free_port());
    // The worker's writes of bad.bin are corrupted on their way: it fails verification.
    let mut d = start_with(&etcd, dir.path(), api, probes, &[("FERRY_TEST_CORRUPT", "bad.bin")]);
    wait_for("the worker is ready", &d, WAIT, || get(probes, "/readyz").0 == 200);
    wait_for("the coordinator is ready", &d, WAIT, || get(api, "/readyz").0 == 200);
    let cli = |args: &[&str]| {
        Ferry::bare().env("FERRY_API", format!("http://127.0.0.1:{api}")).env("FERRY_API_TOKEN", API_TOKEN).args(args).timeout(Duration::from_secs(60)).run()
    };
    let agent = |name: &str| -> Value {
        let out = cli(&["agent", "list", "--json"]);
        out.assert_code(0);
        let list: Value = serde_json::from_str(&out.stdout).unwrap();
        list.as_array().unwrap().iter().find(|a| a["Name"] == name).cloned().unwrap_or(Value::Null)
    };
    wait_for("w1's first heartbeat", &d, WAIT, || agent("w1")["LastHeartbeatUnixMs"].as_u64().unwrap_or(0) > 0);
    assert_eq!(agent("w1")["Status"], "ONLINE");

    let dst = dir.path().join("dst");
    let s = |p: &Path| p.to_str().unwrap().to_string();
    cli(&["task", "create", "--name", "health", "--source", &s(&src), "--destination", &s(&dst)]).assert_code(0);
    let started = cli(&["task", "start", "health", "--json"]);
    started.assert_code(0);
    let id = serde_json::from_str::<Value>(&started.stdout).unwrap()["ExecutionId"].as_str().unwrap().to_string();
    wait_for("the execution ends", &d, WAIT, || {
        let (code, body) = get(api, &format!("/v1/executions/{id}"));
        code == 200 && matches!(serde_json::from_str::<Value>(&body).unwrap()["Status"].as_str(), Some("SUCCESS" | "ERROR"))
    });
    let good_bytes = 12 * (256 << 10);
    // The next heartbeat (every 10 s) carries what the execution did.
    wait_for("w1's record shows the bytes it moved and the failure", &d, WAIT, || {
        let a = agent("w1");
        a["BytesTotal"].as_u64().unwrap_or(0) >= good_bytes && a["RecentErrors"].as_array().is_some_and(|e| !e.is_empty())
    });
    let w1 = agent("w1");
    let last = w1["RecentErrors"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["ExecutionId"], id.as_str(), "{w1}");
    assert!(last["Message"].as_str().unwrap().contains("bad.bin"), "the failure names the entry: {w1}");
    assert!(!last["Code"].as_str().unwrap().is_empty(), "{w1}");
    assert_eq!(w1["Version"], env!("CARGO_PKG_VERSION"), "{w1}");
    let table = cli(&["agent", "list"]);
    table.assert_code(0);
    assert!(table.stdout.lines().any(|l| l.starts_with("w1 ") && l.contains("ONLINE") && l.contains("s ago")), "{}", table.stdout);
    assert!(table.stdout.contains("last error (") && table.stdout.contains("bad.bin"), "the table names the newest failure: {}", table.stdout);

    // Killed: no goodbye, the lease (3 s) lapses. Listed OFFLINE with what it last said.
    let (_, worker, _) = &mut d.children[1];
    unsafe { libc::kill(-(worker.id() as i32), libc::SIGKILL) };
    let _ = worker.wait();
    wait_for("w1 is listed OFFLINE", &d, WAIT, || agent("w1")["Status"] == "OFFLINE");
    let gone = agent("w1");
    assert_eq!(gone["BytesTotal"], w1["BytesTotal"], "as last seen: {gone}");
    assert_eq!(gone["RecentErrors"], w1["RecentErrors"], "{gone}");
    assert_eq!(gone["BytesPerSecond"], 0, "an offline agent moves nothing: {gone}");
    assert_eq!(gone["Host"], w1["Host"]);
    let table = cli(&["agent", "list"]);
    assert!(table.stdout.lines().any(|l| l.starts_with("w1 ") && l.contains("OFFLINE")), "{}", table.stdout);
    let registered = Ferry::bare().args(["workers", "--json", "--etcd", &etcd.endpoint]).run();
    registered.assert_code(0);
    assert_eq!(registered.stdout.trim(), "[]", "`ferry workers` lists registered agents only");
}
