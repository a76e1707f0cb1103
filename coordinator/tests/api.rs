//! The coordinator's HTTP API and the CLI over it, against a real single-host daemon
//! (`ferry coordinator --data-dir`): auth, JSON errors naming the field, the OpenAPI
//! document, metrics, the README's recurring-replication walkthrough, and a restart of the
//! daemon in the middle of a scheduled execution.

mod support;

use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::{api_token_file as token_file, free_port, scratch, write_file, Ferry};

const TOKEN: &str = support::API_TOKEN;

struct Daemon {
    child: Child,
    api: String,
    log: PathBuf,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        unsafe { libc::kill(-(self.child.id() as i32), libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

fn start_daemon(data: &Path, port: u16, tokens: &Path, log: &Path) -> Daemon {
    let child = Ferry::bare()
        .args(["coordinator", "--data-dir"])
        .arg(data)
        .args(["--listen", &format!("127.0.0.1:{port}"), "--api-token-file"])
        .arg(tokens)
        .args(["--movers", "2", "--min-schedule-interval", "60", "--name", "single"])
        .spawn_detached(log);
    let api = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(60);
    while ureq::get(&format!("{api}/v1/health")).call().is_err() {
        assert!(Instant::now() < deadline, "the daemon did not answer on {api}: {}", std::fs::read_to_string(log).unwrap_or_default());
        std::thread::sleep(Duration::from_millis(100));
    }
    Daemon { child, api, log: log.to_path_buf() }
}

/// (status, JSON body) of one call; `token` None sends no Authorization header.
fn call(method: &str, url: &str, token: Option<&str>, body: Option<Value>) -> (u16, Value) {
    let mut req = ureq::request(method, url);
    if let Some(t) = token {
        req = req.set("Authorization", &format!("Bearer {t}"));
    }
    let res = match body {
        Some(b) => req.send_json(b),
        None => req.call(),
    };
    let (code, r) = match res {
        Ok(r) => (r.status(), r),
        Err(ureq::Error::Status(c, r)) => (c, r),
        Err(e) => panic!("{method} {url}: {e}"),
    };
    let text = r.into_string().unwrap();
    (code, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

fn api(d: &Daemon, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    call(method, &format!("{}{path}", d.api), Some(TOKEN), body)
}

#[test]
fn the_api_wants_a_token_and_answers_errors_as_json_naming_the_field() {
    let dir = scratch();
    let d = start_daemon(&dir.path().join("data"), free_port(), &token_file(dir.path()), &dir.path().join("log"));
    let (code, health) = call("GET", &format!("{}/v1/health", d.api), None, None);
    assert_eq!((code, health["Status"].as_str()), (200, Some("ok")), "health needs no token");
    for token in [None, Some("wrong-token-wrong-token")] {
        let (code, body) = call("GET", &format!("{}/v1/tasks", d.api), token, None);
        assert_eq!(code, 401, "{body}");
        assert_eq!(body["Error"]["Code"], "Unauthorized");
    }
    let (code, _) = call("GET", &format!("{}/v1/openapi.json", d.api), None, None);
    assert_eq!(code, 401, "the OpenAPI document needs a token too");

    let src = dir.path().join("src");
    write_file(&src.join("a.txt"), b"a");
    let base = json!({"Name": "t1", "SourceLocation": src, "DestinationLocation": dir.path().join("dst")});
    let mut bad = base.clone();
    bad["Options"] = json!({"VerifyMode": "SOMETIMES"});
    let (code, body) = api(&d, "POST", "/v1/tasks", Some(bad));
    assert_eq!(code, 400, "{body}");
    assert_eq!(body["Error"]["Field"], "Options.VerifyMode", "{body}");

    let mut combo = base.clone();
    combo["Options"] = json!({"Atime": "BEST_EFFORT", "Mtime": "NONE"});
    let (code, body) = api(&d, "POST", "/v1/tasks", Some(combo));
    assert_eq!(code, 422, "{body}");
    assert_eq!(body["Error"]["Field"], "Options.Atime");
    assert!(body["Error"]["Message"].as_str().unwrap().contains("Mtime=PRESERVE"));

    let mut cron = base.clone();
    cron["Schedule"] = json!({"ScheduleExpression": "every day"});
    let (code, body) = api(&d, "POST", "/v1/tasks", Some(cron));
    assert_eq!((code, body["Error"]["Field"].as_str()), (400, Some("Schedule.ScheduleExpression")), "{body}");

    let mut zone = base.clone();
    zone["Schedule"] = json!({"ScheduleExpression": "0 2 * * *", "TimeZone": "Mars/Olympus"});
    let (code, body) = api(&d, "POST", "/v1/tasks", Some(zone));
    assert_eq!((code, body["Error"]["Field"].as_str()), (400, Some("Schedule.TimeZone")), "{body}");

    let (code, created) = api(&d, "POST", "/v1/tasks", Some(base.clone()));
    assert_eq!(code, 201, "{created}");
    assert_eq!(created["Options"]["VerifyMode"], "ONLY_FILES_TRANSFERRED", "defaults are filled in");
    assert_eq!(api(&d, "POST", "/v1/tasks", Some(base.clone())).0, 409, "a second task of the same name");
    assert_eq!(api(&d, "GET", "/v1/tasks/nope", None).0, 404);
    assert_eq!(api(&d, "POST", "/v1/tasks/nope/start", Some(json!({}))).0, 404);
    assert_eq!(api(&d, "GET", "/v1/executions/nope", None).0, 404);
    assert_eq!(api(&d, "GET", "/v1/no/such/route", None).0, 404);
    let (code, body) = api(&d, "PATCH", "/v1/tasks/t1", Some(json!({"Options": {"BytesPerSecond": 0}})));
    assert_eq!((code, body["Error"]["Field"].as_str()), (400, Some("Options.BytesPerSecond")), "{body}");
    let (code, body) = api(&d, "POST", "/v1/tasks/t1/start", Some(json!({"OverrideOptions": {"TransferMode": "ALL", "PreserveDeletedFiles": "REMOVE"}})));
    assert_eq!((code, body["Error"]["Field"].as_str()), (422, Some("OverrideOptions.PreserveDeletedFiles")), "{body}");

    let (code, exec) = api(&d, "POST", "/v1/tasks/t1/start", None);
    assert_eq!(code, 201, "{exec}");
    let id = exec["ExecutionId"].as_str().unwrap().to_string();
    let end = wait_status(&d, &id, &["SUCCESS", "ERROR", "CANCELLED"]);
    assert_eq!(end["Status"], "SUCCESS", "{end}");
    let phases: Vec<&str> = end["Phases"].as_array().unwrap().iter().map(|p| p["Phase"].as_str().unwrap()).collect();
    assert_eq!(phases.first(), Some(&"QUEUED"));
    assert_eq!(phases.last(), Some(&"SUCCESS"));
    assert_eq!(api(&d, "POST", &format!("/v1/executions/{id}/cancel"), None).0, 409, "an ended execution");
    assert_eq!(api(&d, "GET", &format!("/v1/executions/{id}/report"), None).0, 409, "no TaskReportConfig");
    assert_eq!(api(&d, "DELETE", "/v1/tasks/t1", None).0, 204);

    let (code, doc) = api(&d, "GET", "/v1/openapi.json", None);
    assert_eq!(code, 200);
    for path in [
        "/v1/tasks",
        "/v1/tasks/{name}",
        "/v1/tasks/{name}/start",
        "/v1/executions/{id}",
        "/v1/executions/{id}/cancel",
        "/v1/agents",
        "/v1/events",
        "/v1/health",
    ] {
        assert!(doc["paths"][path].is_object(), "the OpenAPI document has {path}");
    }
    assert!(doc["components"]["schemas"]["Task"].is_object());
    assert_eq!(doc["components"]["securitySchemes"]["bearer"]["scheme"], "bearer");

    let metrics = ureq::get(&format!("{}/metrics", d.api)).set("Authorization", &format!("Bearer {TOKEN}")).call().unwrap().into_string().unwrap();
    assert!(metrics.contains("ferry_executions{phase=\"SUCCESS\"} 1"), "{metrics}");
    assert!(metrics.contains("ferry_agents_online 1"), "{metrics}");
    let (_, events) = api(&d, "GET", "/v1/events?limit=1000", None);
    let kinds: Vec<&str> = events.as_array().unwrap().iter().map(|e| e["Kind"].as_str().unwrap()).collect();
    for k in ["TaskCreated", "ExecutionQueued", "ExecutionPhase", "ExecutionFinished", "TaskDeleted"] {
        assert!(kinds.contains(&k), "event {k} recorded: {kinds:?}");
    }
    let _ = &d.log;
}

fn wait_status(d: &Daemon, id: &str, wanted: &[&str]) -> Value {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let (code, e) = api(d, "GET", &format!("/v1/executions/{id}"), None);
        assert_eq!(code, 200, "{e}");
        if wanted.contains(&e["Status"].as_str().unwrap_or("")) {
            return e;
        }
        assert!(Instant::now() < deadline, "execution {id} stuck in {}: {}", e["Status"], std::fs::read_to_string(&d.log).unwrap_or_default());
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn cli(d: &Daemon, args: &[&str]) -> support::Outcome {
    Ferry::bare().env("FERRY_API", &d.api).env("FERRY_API_TOKEN", TOKEN).args(args).timeout(Duration::from_secs(300)).run()
}

#[test]
fn the_recurring_replication_walkthrough_and_a_restart_mid_execution() {
    let dir = scratch();
    let (src, dst, reports, data) = (dir.path().join("src"), dir.path().join("dst"), dir.path().join("reports"), dir.path().join("data"));
    for i in 0..12 {
        write_file(&src.join(format!("dir{}/file{i}.bin", i % 2)), &support::random_bytes(1 << 20));
    }
    let tokens = token_file(dir.path());
    let port = free_port();
    let d = start_daemon(&data, port, &tokens, &dir.path().join("log1"));

    // The README's walkthrough: a nightly sync, started once by hand, watched, reported.
    let s = |p: &Path| p.to_str().unwrap().to_string();
    cli(
        &d,
        &[
            "task",
            "create",
            "--name",
            "nightly",
            "--source",
            &s(&src),
            "--destination",
            &s(&dst),
            "--schedule",
            "0 2 * * *",
            "--option",
            "PreserveDeletedFiles=REMOVE",
            "--exclude",
            "*.tmp",
            "--report-dir",
            &s(&reports),
            "--report-level",
            "SUCCESSES_AND_ERRORS",
        ],
    )
    .assert_code(0);
    let out = cli(&d, &["task", "list"]);
    out.assert_code(0);
    assert!(out.stdout.contains("nightly") && out.stdout.contains("0 2 * * *"), "{}", out.stdout);
    let out = cli(&d, &["task", "describe", "nightly"]);
    assert!(out.stdout.contains("PreserveDeletedFiles=REMOVE") && out.stdout.contains("ENABLED"), "{}", out.stdout);
    let out = cli(&d, &["task", "start", "nightly", "--wait", "--json"]);
    out.assert_code(0);
    let ended: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(ended["ReportStatus"], "WRITTEN", "--wait also waits for the report");
    let out = cli(&d, &["exec", "describe", ended["ExecutionId"].as_str().unwrap()]);
    assert!(out.stdout.contains("SUCCESS") && out.stdout.contains("TRANSFERRING"), "{}", out.stdout);
    let out = cli(&d, &["exec", "list", "--task", "nightly", "--json"]);
    let list: Value = serde_json::from_str(&out.stdout).unwrap();
    let id = list[0]["ExecutionId"].as_str().unwrap().to_string();
    assert_eq!(list[0]["Status"], "SUCCESS");
    let report = cli(&d, &["exec", "report", &id]);
    report.assert_code(0);
    assert_eq!(report.stdout.lines().filter(|l| l.contains("\"transferred\"") && l.contains("\"file\"")).count(), 12, "{}", report.stdout);
    assert!(report.stdout.lines().last().unwrap().contains("\"summary\""));
    let agents = cli(&d, &["agent", "list", "--json"]);
    assert_eq!(serde_json::from_str::<Value>(&agents.stdout).unwrap().as_array().unwrap().len(), 1, "the embedded agent");
    let bad =
        cli(&d, &["task", "create", "--name", "x", "--source", &s(&src), "--destination", &s(&dst), "--option", "Atime=BEST_EFFORT", "--option", "Mtime=NONE"]);
    bad.assert_code(2);
    assert!(bad.stderr.contains("Options.Atime") && bad.stderr.contains("422"), "{}", bad.stderr);
    let noauth = Ferry::bare().env("FERRY_API", &d.api).args(["task", "list"]).run();
    noauth.assert_code(2);
    assert!(noauth.stderr.contains("401") && noauth.stderr.contains("FERRY_API_TOKEN"), "{}", noauth.stderr);

    // A scheduled execution, throttled so it is still running when the daemon is killed.
    cli(
        &d,
        &[
            "task",
            "create",
            "--name",
            "minutely",
            "--source",
            &s(&src),
            "--destination",
            &s(&dir.path().join("dst2")),
            "--schedule",
            "* * * * *",
            "--option",
            "BytesPerSecond=524288",
        ],
    )
    .assert_code(0);
    let deadline = Instant::now() + Duration::from_secs(90);
    let scheduled = loop {
        let (_, list) = api(&d, "GET", "/v1/executions?task=minutely", None);
        if let Some(e) = list.as_array().unwrap().first() {
            if matches!(e["Status"].as_str(), Some("PREPARING" | "TRANSFERRING")) {
                // 12 MiB at 512 KiB/s take about 24 s: two seconds in, it is mid-transfer.
                std::thread::sleep(Duration::from_secs(2));
                break e["ExecutionId"].as_str().unwrap().to_string();
            }
        }
        assert!(Instant::now() < deadline, "the minutely schedule did not start a running execution");
        std::thread::sleep(Duration::from_millis(200));
    };
    drop(d); // SIGKILL, mid-transfer

    let d = start_daemon(&data, port, &tokens, &dir.path().join("log2"));
    let (_, tasks) = api(&d, "GET", "/v1/tasks", None);
    let names: Vec<&str> = tasks.as_array().unwrap().iter().map(|t| t["Name"].as_str().unwrap()).collect();
    assert_eq!(names, vec!["minutely", "nightly"], "tasks survive the restart");
    let (_, old) = api(&d, "GET", &format!("/v1/executions/{id}"), None);
    assert_eq!(old["Status"], "SUCCESS", "history survives the restart");
    let end = wait_status(&d, &scheduled, &["SUCCESS", "ERROR", "CANCELLED"]);
    assert_eq!(end["Status"], "SUCCESS", "the interrupted execution resumed and finished: {end}");
    assert!(end["ScheduledSlotUnixMs"].is_u64());
    for i in 0..12 {
        let rel = format!("dir{}/file{i}.bin", i % 2);
        assert_eq!(std::fs::read(src.join(&rel)).unwrap(), std::fs::read(dir.path().join("dst2").join(&rel)).unwrap(), "{rel}");
    }
    support::assert_no_temp_leftovers(&dir.path().join("dst2"));
    cli(&d, &["task", "update", "minutely", "--schedule-status", "DISABLED"]).assert_code(0);
    let out = cli(&d, &["task", "describe", "minutely"]);
    assert!(out.stdout.contains("DISABLED"), "{}", out.stdout);
}
