//! Prometheus metrics from every daemon, checked with Prometheus's own tools: `promtool check
//! metrics` accepts what each daemon serves, a real Prometheus server scrapes a running cluster
//! with the agents' bearer token, and what it stores adds up to the execution's counters. S3
//! and link series move when a copy uses S3 or a link.
//!
//! promtool and prometheus come from Debian's `prometheus` package, unpacked into /opt/prom by
//! .ci/run (or named by FERRY_PROMTOOL / FERRY_PROMETHEUS, or on PATH). Under CI=true a
//! missing tool fails the test.

mod support;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ferry_common::testing::{EtcdServer, S3Flavor, S3Server};
use support::sites::{have_root_and_ip, AgentSpec, Fleet};
use support::{api_token_file, counter, free_port, random_bytes, scratch, write_file, Ferry, API_TOKEN};

/// The agents' metrics token (another secret than the API's).
const METRICS_TOKEN: &str = "metrics-token-fedcba9876543210";
const WAIT: Duration = Duration::from_secs(120);

/// A tool from Debian's prometheus package: `$env`, /opt/prom/usr/bin/NAME, then PATH. `None`
/// outside CI when it is missing; under CI=true that is a failure.
fn prom_tool(name: &str, env: &str) -> Option<PathBuf> {
    let candidates = std::env::var_os(env).map(PathBuf::from).into_iter().chain([Path::new("/opt/prom/usr/bin").join(name)]);
    let found = candidates
        .into_iter()
        .find(|p| p.is_file())
        .or_else(|| std::env::var_os("PATH").and_then(|paths| std::env::split_paths(&paths).map(|d| d.join(name)).find(|p| p.is_file())));
    if found.is_none() {
        let hint = format!("{name} is not installed (apt-get download prometheus && dpkg -x prometheus_*.deb /opt/prom; .ci/run does this, or set {env})");
        assert!(std::env::var("CI").as_deref() != Ok("true"), "{hint}; under CI=true no test skips for lack of a tool");
        eprintln!("skipping: {hint}");
    }
    found
}

fn metrics_token_file(dir: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let f = dir.join("metrics-tokens");
    std::fs::write(&f, format!("# who may read /metrics\n{METRICS_TOKEN}\n")).unwrap();
    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
    f
}

fn worker_bin() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_ferry")).with_file_name("ferry-worker")
}

/// Processes of one test, SIGKILLed with their process groups when it ends.
#[derive(Default)]
struct Daemons {
    children: Vec<(String, Child, PathBuf)>,
}

impl Daemons {
    fn logs(&self) -> String {
        self.children
            .iter()
            .map(|(name, _, log)| {
                let text = std::fs::read_to_string(log).unwrap_or_default();
                format!("\n===== {name} (last 4000 bytes) =====\n{}", &text[text.len().saturating_sub(4000)..])
            })
            .collect()
    }

    fn spawn(&mut self, name: &str, mut cmd: Command, log: PathBuf) {
        use std::os::unix::process::CommandExt;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("start {name}: {e}"));
        self.children.push((name.to_string(), child, log));
    }
}

impl Drop for Daemons {
    fn drop(&mut self) {
        for (_, child, _) in &mut self.children {
            unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
            let _ = child.wait();
        }
    }
}

/// etcd, a coordinator with its API on `api`, and agents serving `/metrics` on their ports.
struct Cluster {
    d: Daemons,
    etcd: EtcdServer,
    api: u16,
    /// (agent name, metrics port).
    agents: Vec<(String, u16)>,
}

impl Cluster {
    fn start(dir: &Path, agents: &[&str], env: &[(&'static str, String)]) -> Option<Cluster> {
        let etcd = EtcdServer::start()?;
        let mut d = Daemons::default();
        let api = free_port();
        let tokens = api_token_file(dir);
        let mut c = Command::new(env!("CARGO_BIN_EXE_ferry"));
        c.args(["coordinator", "--etcd", &etcd.endpoint, "--name", "c1", "--listen", &format!("127.0.0.1:{api}"), "--api-token-file"]).arg(&tokens);
        d.spawn("coordinator", c, dir.join("coordinator.log"));
        let metrics_tokens = metrics_token_file(dir);
        let mut ports = Vec::new();
        for name in agents {
            let port = free_port();
            let mut w = Command::new(worker_bin());
            w.args(["--etcd", &etcd.endpoint, "--name", name, "--movers", "3", "--metrics-listen", &format!("127.0.0.1:{port}"), "--metrics-token-file"]);
            w.arg(&metrics_tokens);
            w.envs(env.iter().map(|(k, v)| (*k, v.as_str())));
            d.spawn(name, w, dir.join(format!("{name}.log")));
            ports.push((name.to_string(), port));
        }
        let cluster = Cluster { d, etcd, api, agents: ports };
        cluster.wait_for("every agent is ready and the coordinator answers", || {
            cluster.agents.iter().all(|(_, p)| get(*p, "/readyz", None).0 == 200) && get(api, "/readyz", None).0 == 200
        });
        let online = || {
            let (code, body) = get(api, "/v1/agents", Some(API_TOKEN));
            code == 200 && serde_json::from_str::<serde_json::Value>(&body).is_ok_and(|v| v.as_array().is_some_and(|a| a.len() == agents.len()))
        };
        cluster.wait_for("the coordinator sees every agent", online);
        Some(cluster)
    }

    fn wait_for(&self, what: &str, mut ok: impl FnMut() -> bool) {
        let deadline = Instant::now() + WAIT;
        while !ok() {
            assert!(Instant::now() < deadline, "{what} within {WAIT:?}{}", self.d.logs());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `ferry copy --json` submitted to this cluster; asserts SUCCESS and returns the JSON.
    fn copy(&self, src: impl AsRef<std::ffi::OsStr>, dst: impl AsRef<std::ffi::OsStr>, extra: &[&str], env: &[(&'static str, String)]) -> serde_json::Value {
        let mut f = Ferry::new("copy", src, dst).args(["--json", "--etcd", &self.etcd.endpoint]).args(extra).timeout(Duration::from_secs(180));
        for (k, v) in env {
            f = f.env(k, v);
        }
        let out = f.run();
        out.assert_code(0);
        let json = out.json();
        assert_eq!(json["status"], "SUCCESS", "{}{}", out.describe(), self.d.logs());
        json
    }

    /// Every agent's `/metrics` text, by agent name.
    fn scrape_agents(&self) -> BTreeMap<String, String> {
        self.agents
            .iter()
            .map(|(name, port)| {
                let (code, body) = get(*port, "/metrics", Some(METRICS_TOKEN));
                assert_eq!(code, 200, "{name}'s /metrics: {body}");
                (name.clone(), body)
            })
            .collect()
    }
}

/// (status, body) of `GET http://127.0.0.1:{port}{path}` with an optional bearer token; status
/// 0 when nothing answers.
fn get(port: u16, path: &str, token: Option<&str>) -> (u16, String) {
    get_url(&format!("http://127.0.0.1:{port}{path}"), token)
}

fn get_url(url: &str, token: Option<&str>) -> (u16, String) {
    let agent = ureq::AgentBuilder::new().timeout(Duration::from_secs(10)).build();
    let mut req = agent.get(url);
    if let Some(t) = token {
        req = req.set("Authorization", &format!("Bearer {t}"));
    }
    match req.call() {
        Ok(r) => (r.status(), r.into_string().unwrap_or_default()),
        Err(ureq::Error::Status(code, r)) => (code, r.into_string().unwrap_or_default()),
        Err(_) => (0, String::new()),
    }
}

/// The value of each sample of `name` whose labels include every `want` pair, summed.
fn sample_sum(text: &str, name: &str, want: &[(&str, &str)]) -> f64 {
    samples(text, name).into_iter().filter(|(labels, _)| want.iter().all(|(k, v)| labels.get(*k).map(String::as_str) == Some(*v))).map(|(_, v)| v).sum()
}

/// Every sample of the series `name`: (labels, value).
fn samples(text: &str, name: &str) -> Vec<(BTreeMap<String, String>, f64)> {
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some(rest) = line.strip_prefix(name) else { continue };
        let (labels, value) = match rest.strip_prefix('{') {
            Some(r) => match r.split_once("} ") {
                Some((l, v)) => (l, v),
                None => continue,
            },
            None => match rest.strip_prefix(' ') {
                Some(v) => ("", v),
                None => continue,
            },
        };
        let labels = labels
            .split("\",")
            .filter(|p| !p.is_empty())
            .filter_map(|p| p.split_once("=\"").map(|(k, v)| (k.to_string(), v.trim_end_matches('"').to_string())))
            .collect();
        out.push((labels, value.trim().parse().unwrap_or(f64::NAN)));
    }
    out
}

/// `promtool check metrics` on `text` (lint included); panics with its complaint.
fn promtool_accepts(promtool: &Path, who: &str, text: &str) {
    let mut child = Command::new(promtool).args(["check", "metrics"]).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics refused {who}'s /metrics: {}{}\n--- body ---\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn make_tree(root: &Path, files: usize) {
    for i in 0..files {
        write_file(&root.join(format!("d{}/f{i:03}.bin", i % 6)), &random_bytes(1000 + i * 7919 % 200_000));
    }
}

const WRITE_TRANSFERRED: [(&str, &str); 2] = [("direction", "write"), ("outcome", "transferred")];
const READ_TRANSFERRED: [(&str, &str); 2] = [("direction", "read"), ("outcome", "transferred")];

#[test]
fn every_daemon_serves_metrics_promtool_accepts_and_agent_bytes_add_up_to_the_execution() {
    let Some(promtool) = prom_tool("promtool", "FERRY_PROMTOOL") else { return };
    let dir = scratch();
    let Some(cluster) = Cluster::start(dir.path(), &["w1", "w2"], &[]) else { return };
    let (src, dst) = (dir.path().join("src"), dir.path().join("dst"));
    make_tree(&src, 60);
    let json = cluster.copy(&src, &dst, &[], &[]);
    let bytes = counter(&json, "bytes_transferred");
    let files = counter(&json, "files_transferred");
    assert!(bytes > 0);

    let bodies = cluster.scrape_agents();
    let written: f64 = bodies.values().map(|t| sample_sum(t, "ferry_worker_bytes_total", &WRITE_TRANSFERRED)).sum();
    assert_eq!(written as u64, bytes, "bytes the agents wrote add up to the execution's BytesTransferred{}", cluster.d.logs());
    let read: f64 = bodies.values().map(|t| sample_sum(t, "ferry_worker_bytes_total", &READ_TRANSFERRED)).sum();
    assert_eq!(read as u64, bytes, "bytes the agents read add up too");
    let read_files: f64 = bodies.values().map(|t| sample_sum(t, "ferry_worker_files_total", &READ_TRANSFERRED)).sum();
    assert_eq!(read_files as u64, files, "files too");
    for (name, text) in &bodies {
        promtool_accepts(&promtool, name, text);
        assert!(sample_sum(text, "ferry_store_request_duration_seconds_count", &[("operation", "txn")]) > 0.0, "{name} timed its Store transactions");
        assert!(text.contains("# TYPE ferry_movers gauge"), "{name}: {text}");
        assert!(!text.contains("execution="), "no execution label: {text}");
    }

    // Which agent claims which shard is up to them: between them they ran and timed the scan
    // and transfer shards.
    for kind in ["scan", "transfer"] {
        let ran: f64 = bodies.values().map(|t| sample_sum(t, "ferry_shard_duration_seconds_count", &[("kind", kind)])).sum();
        assert!(ran > 0.0, "no {kind} shard timed: {bodies:?}");
    }

    // The coordinator renders from the same recorder: its gauges, the summed counters, and no
    // per-execution series.
    let (code, coord) = get(cluster.api, "/metrics", Some(API_TOKEN));
    assert_eq!(code, 200, "{coord}");
    promtool_accepts(&promtool, "the coordinator", &coord);
    assert_eq!(sample_sum(&coord, "ferry_bytes_transferred_total", &[]) as u64, bytes, "{coord}");
    assert_eq!(sample_sum(&coord, "ferry_executions", &[("phase", "SUCCESS")]), 1.0, "{coord}");
    assert_eq!(sample_sum(&coord, "ferry_agents_online", &[]), 2.0, "{coord}");
    assert!(sample_sum(&coord, "ferry_store_request_duration_seconds_count", &[]) > 0.0, "{coord}");
    assert!(!coord.contains("execution="), "no per-execution labels: {coord}");

    // Tokens: the API's for the coordinator, the metrics token for agents; probes stay open.
    let (port, name) = (cluster.agents[0].1, &cluster.agents[0].0);
    let (code, body) = get(port, "/metrics", None);
    assert_eq!(code, 401, "{name} without a token: {body}");
    assert!(body.contains("--metrics-token-file") && body.lines().count() == 1, "one line naming the fix: {body}");
    assert_eq!(get(port, "/metrics", Some(API_TOKEN)).0, 401, "the API token is not a metrics token");
    assert_eq!(get(port, "/healthz", None).0, 200);
    assert_eq!(get(port, "/readyz", None).0, 200);
    assert_eq!(get(cluster.api, "/metrics", None).0, 401);
    assert_eq!(get(cluster.api, "/metrics", Some(METRICS_TOKEN)).0, 401);

    // An agent started without a token file refuses /metrics with 403 and says how to turn it
    // on. It serves before it reaches the Store, so one pointed at no etcd shows it.
    let open_port = free_port();
    let mut d = Daemons::default();
    let mut w = Command::new(worker_bin());
    w.args(["--etcd", "http://127.0.0.1:9", "--name", "untokened", "--metrics-listen", &format!("127.0.0.1:{open_port}")]);
    d.spawn("untokened", w, dir.path().join("untokened.log"));
    let deadline = Instant::now() + WAIT;
    while get(open_port, "/healthz", None).0 != 200 {
        assert!(Instant::now() < deadline, "the untokened agent serves /healthz{}", d.logs());
        std::thread::sleep(Duration::from_millis(100));
    }
    let (code, body) = get(open_port, "/metrics", Some(METRICS_TOKEN));
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("--metrics-token-file") && body.trim_end().lines().count() == 1, "{body}");
}

#[test]
fn a_prometheus_server_scrapes_the_cluster_and_its_query_matches_the_execution() {
    let Some(prometheus) = prom_tool("prometheus", "FERRY_PROMETHEUS") else { return };
    let dir = scratch();
    let Some(cluster) = Cluster::start(dir.path(), &["w1", "w2"], &[]) else { return };
    let targets: Vec<String> = cluster.agents.iter().map(|(_, p)| format!("'127.0.0.1:{p}'")).collect();
    let config = [
        "global:".to_string(),
        "  scrape_interval: 1s".into(),
        "  scrape_timeout: 1s".into(),
        "scrape_configs:".into(),
        "  - job_name: ferry-agents".into(),
        "    authorization:".into(),
        "      type: Bearer".into(),
        format!("      credentials: '{METRICS_TOKEN}'"),
        "    static_configs:".into(),
        format!("      - targets: [{}]", targets.join(", ")),
        "  - job_name: ferry-coordinator".into(),
        "    authorization:".into(),
        "      type: Bearer".into(),
        format!("      credentials: '{API_TOKEN}'"),
        "    static_configs:".into(),
        format!("      - targets: ['127.0.0.1:{}']", cluster.api),
    ]
    .join("\n");
    let config_file = dir.path().join("prometheus.yml");
    std::fs::write(&config_file, config).unwrap();
    let web = free_port();
    let mut d = Daemons::default();
    let mut p = Command::new(&prometheus);
    p.arg(format!("--config.file={}", config_file.display()))
        .arg(format!("--storage.tsdb.path={}", dir.path().join("tsdb").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{web}"));
    d.spawn("prometheus", p, dir.path().join("prometheus.log"));

    let (src, dst) = (dir.path().join("src"), dir.path().join("dst"));
    make_tree(&src, 48);
    let json = cluster.copy(&src, &dst, &[], &[]);
    let bytes = counter(&json, "bytes_transferred");

    let query = |q: &str| -> Option<f64> {
        let agent = ureq::AgentBuilder::new().timeout(Duration::from_secs(10)).build();
        let r = agent.get(&format!("http://127.0.0.1:{web}/api/v1/query")).query("query", q).call().ok()?;
        let v: serde_json::Value = r.into_json().ok()?;
        v["data"]["result"][0]["value"][1].as_str()?.parse().ok()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let agents_q = "sum(ferry_worker_bytes_total{direction=\"write\",outcome=\"transferred\"})";
    let coord_q = "sum(ferry_bytes_transferred_total{job=\"ferry-coordinator\"})";
    // Every target scraped with its token (up == 1 for both agents and the coordinator), and
    // what they reported adds up to the execution's counter.
    loop {
        let (a, c, up) = (query(agents_q), query(coord_q), query("sum(up)"));
        if a == Some(bytes as f64) && c == Some(bytes as f64) && up == Some(3.0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus answers {agents_q} = {a:?}, {coord_q} = {c:?} and sum(up) = {up:?}; the execution moved {bytes} bytes{}{}",
            d.logs(),
            cluster.d.logs()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn s3_requests_are_counted_by_operation() {
    let Some(promtool) = prom_tool("promtool", "FERRY_PROMTOOL") else { return };
    let Some(s3) = S3Server::start(S3Flavor::S3sFs) else { return };
    let dir = scratch();
    let env: Vec<(&'static str, String)> = s3.env();
    let Some(cluster) = Cluster::start(dir.path(), &["w1"], &env) else { return };
    let src = dir.path().join("src");
    make_tree(&src, 12);
    let up = cluster.copy(&src, s3.uri("metrics/"), &["--endpoint-url", &s3.endpoint], &env);
    assert!(counter(&up, "bytes_transferred") > 0);

    let text = cluster.scrape_agents().remove("w1").unwrap();
    promtool_accepts(&promtool, "w1", &text);
    assert!(sample_sum(&text, "ferry_s3_requests_total", &[("operation", "PutObject")]) >= 12.0, "a PutObject per file at least: {text}");
    assert_eq!(sample_sum(&text, "ferry_worker_bytes_total", &WRITE_TRANSFERRED) as u64, counter(&up, "bytes_transferred"), "{text}");
    assert!(sample_sum(&text, "ferry_s3_requests_total", &[("operation", "ListObjectsV2")]) > 0.0, "{text}");
    // And back: GetObject per file (the server has no tagging; a tree asks for no tags).
    let back = dir.path().join("back");
    let down = cluster.copy(s3.uri("metrics/"), &back, &["--endpoint-url", &s3.endpoint], &env);
    assert_eq!(counter(&down, "bytes_transferred"), counter(&up, "bytes_transferred"), "{up}\n{down}");
    let text = cluster.scrape_agents().remove("w1").unwrap();
    assert!(sample_sum(&text, "ferry_s3_requests_total", &[("operation", "GetObject")]) >= 12.0, "{text}");
    assert_eq!(sample_sum(&text, "ferry_s3_requests_total", &[("operation", "GetObjectTagging")]), 0.0, "{text}");
    // Every error sample names an operation and a code.
    for (labels, _) in samples(&text, "ferry_s3_errors_total") {
        assert!(labels.contains_key("operation") && labels.contains_key("code"), "{labels:?}");
    }
}

#[test]
fn link_series_name_the_peer_agent() {
    if !have_root_and_ip() {
        return;
    }
    let Some(promtool) = prom_tool("promtool", "FERRY_PROMTOOL") else { return };
    let tokens_dir = scratch();
    let tokens = metrics_token_file(tokens_dir.path());
    // Each agent is alone in its namespace: the same port serves both.
    let spec = |name: &str, label: &str| {
        AgentSpec::new(name, label).arg("--metrics-listen").arg("0.0.0.0:9464").arg("--metrics-token-file").arg(tokens.to_str().unwrap())
    };
    let Some(fleet) = Fleet::start(vec![spec("agent-onprem", "onprem"), spec("agent-cloud", "cloud")]) else { return };
    let (src, dst) = (fleet.work.path().join("src"), fleet.work.path().join("dst"));
    make_tree(&src, 30);
    let out =
        fleet.ferry("copy", &src, &dst).args(["--json", "--source-agents", "onprem", "--destination-agents", "cloud"]).timeout(Duration::from_secs(180)).run();
    out.assert_code(0);
    let bytes = counter(&out.json(), "bytes_transferred");
    let scrape = |site: usize| {
        let (code, body) = get_url(&format!("http://{}:9464/metrics", fleet.sites.sites[site].addr), Some(METRICS_TOKEN));
        assert_eq!(code, 200, "{body}{}", fleet.agent_logs());
        body
    };
    // Links are sampled every 5 s: wait for a sample taken after the copy.
    let deadline = Instant::now() + Duration::from_secs(60);
    let (onprem, cloud) = loop {
        let (onprem, cloud) = (scrape(0), scrape(1));
        if sample_sum(&onprem, "ferry_link_sent_bytes_total", &[("peer", "agent-cloud")]) >= bytes as f64
            && sample_sum(&cloud, "ferry_link_received_bytes_total", &[("peer", "agent-onprem")]) >= bytes as f64
        {
            break (onprem, cloud);
        }
        assert!(Instant::now() < deadline, "link bytes to the peer reach the {bytes} bytes copied:\n{onprem}\n{cloud}{}", fleet.agent_logs());
        std::thread::sleep(Duration::from_millis(500));
    };
    assert!(sample_sum(&onprem, "ferry_link_rtt_seconds", &[("peer", "agent-cloud")]) > 0.0, "{onprem}");
    assert!(sample_sum(&onprem, "ferry_link_congestion_window_bytes", &[("peer", "agent-cloud")]) > 0.0, "{onprem}");
    // The reader read everything; the writer, across the link, wrote it.
    assert_eq!(sample_sum(&onprem, "ferry_worker_bytes_total", &READ_TRANSFERRED) as u64, bytes, "{onprem}");
    assert_eq!(sample_sum(&cloud, "ferry_worker_bytes_total", &WRITE_TRANSFERRED) as u64, bytes, "{cloud}");
    assert_eq!(sample_sum(&onprem, "ferry_worker_bytes_total", &WRITE_TRANSFERRED), 0.0, "{onprem}");
    promtool_accepts(&promtool, "agent-onprem", &onprem);
    promtool_accepts(&promtool, "agent-cloud", &cloud);
}

#[test]
fn the_grafana_dashboard_is_json_with_a_datasource_variable_and_queries_promtool_parses() {
    let Some(promtool) = prom_tool("promtool", "FERRY_PROMTOOL") else { return };
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/grafana/ferry.json");
    let dash: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).expect("deploy/grafana/ferry.json is JSON");
    let vars = dash["templating"]["list"].as_array().unwrap();
    assert!(vars.iter().any(|v| v["type"] == "datasource" && v["query"] == "prometheus"), "a data source variable");
    let exprs: Vec<String> = dash["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .filter_map(|t| t["expr"].as_str().map(String::from))
        .collect();
    assert!(exprs.len() >= 20, "{exprs:?}");
    // Every series the docs promise is on a panel.
    for series in [
        "ferry_worker_bytes_total",
        "ferry_worker_files_total",
        "ferry_shard_duration_seconds_bucket",
        "ferry_movers",
        "ferry_throttled_bytes_total",
        "ferry_s3_errors_total",
        "ferry_s3_retries_total",
        "ferry_link_rtt_seconds",
        "ferry_link_lost_packets_total",
        "ferry_link_congestion_window_bytes",
        "ferry_store_request_duration_seconds_bucket",
    ] {
        assert!(exprs.iter().any(|e| e.contains(series)), "no panel shows {series}");
    }
    // Grafana's variables replaced by what they expand to, each query is a recording rule.
    let dir = scratch();
    let rules: String = exprs
        .iter()
        .enumerate()
        .map(|(i, e)| {
            format!("  - record: ferry:panel{i}\n    expr: {}\n", serde_json::Value::from(e.replace("$__rate_interval", "5m").replace("$instance", ".*")))
        })
        .collect();
    let file = dir.path().join("rules.yml");
    std::fs::write(&file, format!("groups:\n- name: dashboard\n  rules:\n{rules}")).unwrap();
    let out = Command::new(promtool).args(["check", "rules"]).arg(&file).output().unwrap();
    assert!(out.status.success(), "promtool cannot parse a dashboard query: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
}
