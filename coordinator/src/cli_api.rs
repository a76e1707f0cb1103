//! `ferry task`, `ferry exec` and `ferry agent`: the CLI over the coordinator's HTTP API.
//!
//! The API is found with `--api URL` or `FERRY_API`; the token with `FERRY_API_TOKEN` or
//! `--api-token-file`. An https:// API's certificate is verified: against `--api-cacert` (or
//! `FERRY_API_CACERT`) when given, else against this host's trust store. Output is a table, or the API's JSON with `--json`.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};
use serde_json::{json, Map, Value};

use crate::cli::UsageError;
use crate::progress::human_bytes;
use ferry_common::execlog::LineLevel;

#[derive(Args, Debug, Clone)]
pub struct ApiArgs {
    /// The coordinator's API, e.g. https://ferry.example:7300 [env: FERRY_API].
    #[arg(long)]
    pub api: Option<String>,
    /// Trust only this CA (PEM) for an https:// API [env: FERRY_API_CACERT; default: the
    /// system's CAs].
    #[arg(long, value_name = "FILE")]
    pub api_cacert: Option<PathBuf>,
    /// A file holding the bearer token (or set FERRY_API_TOKEN).
    #[arg(long)]
    pub api_token_file: Option<PathBuf>,
    /// Print the API's JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Flags shared by `task create` and `task update`.
#[derive(Args, Debug, Clone, Default)]
pub struct TaskFlags {
    /// A DataSync option, KEY=VALUE (repeatable): VerifyMode=POINT_IN_TIME_CONSISTENT,
    /// TransferMode=ALL, PreserveDeletedFiles=REMOVE, BytesPerSecond=10485760,
    /// TaskQueueing=DISABLED, LogLevel=TRANSFER, ...
    #[arg(long = "option", value_name = "KEY=VALUE")]
    pub options: Vec<String>,
    /// Include filter, SIMPLE_PATTERN ('/photos|*.jpg'); repeatable.
    #[arg(long)]
    pub include: Vec<String>,
    /// Exclude filter, SIMPLE_PATTERN ('*.tmp|*/.snapshot'); repeatable.
    #[arg(long)]
    pub exclude: Vec<String>,
    /// Cron schedule, five fields: minute hour day-of-month month day-of-week ('0 2 * * *').
    #[arg(long)]
    pub schedule: Option<String>,
    /// The schedule's IANA time zone [default: UTC].
    #[arg(long)]
    pub time_zone: Option<String>,
    /// ENABLED or DISABLED (update: re-enable a schedule ferry disabled).
    #[arg(long)]
    pub schedule_status: Option<String>,
    /// A manifest: only the paths it lists (one per line) are transferred and verified.
    #[arg(long)]
    pub manifest: Option<String>,
    /// Write each execution's report under this directory ({DIR}/{task}/{execution}.jsonl).
    #[arg(long)]
    pub report_dir: Option<String>,
    /// SUMMARY_ONLY or STANDARD [default: STANDARD].
    #[arg(long)]
    pub report_output: Option<String>,
    /// ERRORS_ONLY or SUCCESSES_AND_ERRORS [default: ERRORS_ONLY].
    #[arg(long)]
    pub report_level: Option<String>,
}

#[derive(Subcommand, Debug, Clone)]
pub enum TaskCommand {
    /// Define a task (validated now: a bad option or combination is refused naming the field).
    Create {
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        source: Option<String>,
        #[arg(long)]
        destination: Option<String>,
        /// The whole task as JSON (the API's shape); flags override its fields.
        #[arg(long)]
        from_json: Option<PathBuf>,
        #[command(flatten)]
        flags: TaskFlags,
        #[command(flatten)]
        api: ApiArgs,
    },
    List {
        #[command(flatten)]
        api: ApiArgs,
    },
    Describe {
        name: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Change options, filters, schedule or report configuration.
    Update {
        name: String,
        #[command(flatten)]
        flags: TaskFlags,
        #[command(flatten)]
        api: ApiArgs,
    },
    Delete {
        name: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Start an execution now, optionally overriding options and filters for this run.
    Start {
        name: String,
        #[arg(long = "option", value_name = "KEY=VALUE")]
        options: Vec<String>,
        #[arg(long)]
        include: Vec<String>,
        #[arg(long)]
        exclude: Vec<String>,
        /// Wait for the execution to end; exit 0 on SUCCESS, 1 otherwise.
        #[arg(long)]
        wait: bool,
        #[command(flatten)]
        api: ApiArgs,
    },
}

#[derive(Subcommand, Debug, Clone)]
pub enum AgentCommand {
    /// Agents registered with the coordinator.
    List {
        #[command(flatten)]
        api: ApiArgs,
    },
}

pub struct ApiClient {
    base: String,
    token: Option<String>,
    agent: ureq::Agent,
}

impl ApiClient {
    pub fn new(args: &ApiArgs) -> Result<Self, UsageError> {
        let base = args.api.clone().or_else(|| std::env::var("FERRY_API").ok().filter(|s| !s.is_empty())).ok_or_else(|| {
            UsageError("no API to talk to: give --api URL or set FERRY_API (the coordinator's --listen address, e.g. http://127.0.0.1:7300)".into())
        })?;
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(UsageError(format!("--api {base:?} must start with http:// or https://")));
        }
        let token = match (&args.api_token_file, std::env::var("FERRY_API_TOKEN").ok().filter(|s| !s.is_empty())) {
            (Some(f), _) => {
                let text = std::fs::read_to_string(f).map_err(|e| UsageError(format!("cannot read --api-token-file {}: {e}", f.display())))?;
                let t = text
                    .lines()
                    .map(str::trim)
                    .find(|l| !l.is_empty() && !l.starts_with('#'))
                    .ok_or_else(|| UsageError(format!("--api-token-file {} holds no token", f.display())))?;
                Some(t.to_string())
            }
            (None, env) => env,
        };
        let cacert = args.api_cacert.clone().or_else(|| std::env::var_os("FERRY_API_CACERT").filter(|s| !s.is_empty()).map(PathBuf::from));
        if cacert.is_some() && !base.starts_with("https://") {
            return Err(UsageError(format!("--api-cacert is for an https:// API, but the API is {base} (use https://)")));
        }
        let tls = crate::tls::client_config("--api-cacert", cacert.as_deref()).map_err(UsageError)?;
        let agent = crate::tls::agent(tls, Duration::from_secs(30));
        Ok(ApiClient { base: base.trim_end_matches('/').to_string(), token, agent })
    }

    /// Calls the API; an error response becomes its one-line message.
    pub fn call(&self, method: &str, path: &str, body: Option<Value>) -> Result<ureq::Response, UsageError> {
        let mut req = self.agent.request(method, &format!("{}{path}", self.base));
        // The coordinator's span of this request joins the caller's trace.
        if let Some(tp) = ferry_common::traces::current_traceparent() {
            req = req.set("traceparent", &tp);
        }
        if let Some(t) = &self.token {
            req = req.set("Authorization", &format!("Bearer {t}"));
        }
        let res = match body {
            Some(b) => req.send_json(b),
            None => req.call(),
        };
        match res {
            Ok(r) => Ok(r),
            Err(ureq::Error::Status(code, r)) => {
                let body: Value = r.into_json().unwrap_or(Value::Null);
                let msg = body["Error"]["Message"].as_str().unwrap_or("no message").to_string();
                let hint = if code == 401 { " (set FERRY_API_TOKEN or --api-token-file)" } else { "" };
                Err(UsageError(format!("{msg}{hint} [HTTP {code}]")))
            }
            Err(ureq::Error::Transport(t)) if t.to_string().contains(crate::tls::TLS_FAILED) => {
                let text = t.to_string();
                let reason = text.split(crate::tls::TLS_FAILED).nth(1).unwrap_or("").to_string();
                Err(UsageError(format!(
                    "the ferry API at {}: TLS handshake failed: {reason} (give the API's CA with --api-cacert FILE or FERRY_API_CACERT)",
                    self.base
                )))
            }
            Err(ureq::Error::Transport(t)) => Err(UsageError(format!(
                "cannot reach the ferry API at {}: {t} (is `ferry coordinator --listen` running there? check --api or FERRY_API)",
                self.base
            ))),
        }
    }

    pub fn json(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, UsageError> {
        let r = self.call(method, path, body)?;
        if r.status() == 204 {
            return Ok(Value::Null);
        }
        r.into_json().map_err(|e| UsageError(format!("the API answered with something that is not JSON: {e}")))
    }
}

fn key_values(list: &[String]) -> Result<Map<String, Value>, UsageError> {
    let mut m = Map::new();
    for kv in list {
        let (k, v) = kv.split_once('=').ok_or_else(|| UsageError(format!("--option {kv:?} is not KEY=VALUE (e.g. VerifyMode=NONE)")))?;
        let value = match v.parse::<i64>() {
            Ok(n) => json!(n),
            Err(_) => json!(v),
        };
        m.insert(k.trim().to_string(), value);
    }
    Ok(m)
}

fn rules(list: &[String]) -> Value {
    Value::Array(list.iter().map(|v| json!({"FilterType": "SIMPLE_PATTERN", "Value": v})).collect())
}

/// The task fields the flags set (for create, over --from-json; for update, the patch).
fn apply_flags(obj: &mut Map<String, Value>, f: &TaskFlags, existing_schedule: Option<&Value>) -> Result<(), UsageError> {
    if !f.options.is_empty() {
        obj.insert("Options".into(), Value::Object(key_values(&f.options)?));
    }
    if !f.include.is_empty() {
        obj.insert("Includes".into(), rules(&f.include));
    }
    if !f.exclude.is_empty() {
        obj.insert("Excludes".into(), rules(&f.exclude));
    }
    if f.schedule.is_some() || f.time_zone.is_some() || f.schedule_status.is_some() {
        let mut s = existing_schedule.and_then(|v| v.as_object().cloned()).unwrap_or_default();
        if let Some(e) = &f.schedule {
            s.insert("ScheduleExpression".into(), json!(e));
        }
        if let Some(tz) = &f.time_zone {
            s.insert("TimeZone".into(), json!(tz));
        }
        if let Some(st) = &f.schedule_status {
            s.insert("Status".into(), json!(st.to_uppercase()));
        }
        s.remove("DisabledReason");
        s.remove("DisabledBy");
        if !s.contains_key("ScheduleExpression") {
            return Err(UsageError("the task has no schedule yet: give --schedule 'MIN HOUR DOM MON DOW'".into()));
        }
        obj.insert("Schedule".into(), Value::Object(s));
    }
    if let Some(m) = &f.manifest {
        obj.insert("Manifest".into(), json!({"Source": m}));
    }
    if f.report_dir.is_some() || f.report_output.is_some() || f.report_level.is_some() {
        let dir = f.report_dir.clone().ok_or_else(|| UsageError("--report-output and --report-level need --report-dir DIR".into()))?;
        let mut r = Map::new();
        r.insert("Destination".into(), json!(dir));
        if let Some(o) = &f.report_output {
            r.insert("OutputType".into(), json!(o.to_uppercase()));
        }
        if let Some(l) = &f.report_level {
            r.insert("ReportLevel".into(), json!(l.to_uppercase()));
        }
        obj.insert("TaskReportConfig".into(), Value::Object(r));
    }
    Ok(())
}

fn print_json(v: &Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

fn time(v: &Value) -> String {
    match v.as_u64() {
        Some(ms) => {
            let secs = (ms / 1000) as i64;
            chrono::DateTime::from_timestamp(secs, 0).map(|t| t.format("%Y-%m-%d %H:%M:%SZ").to_string()).unwrap_or_else(|| ms.to_string())
        }
        None => "-".into(),
    }
}

fn print_task(t: &Value) {
    println!("Name:         {}", s(&t["Name"]));
    println!("Source:       {}", s(&t["SourceLocation"]));
    println!("Destination:  {}", s(&t["DestinationLocation"]));
    if let Some(o) = t["Options"].as_object() {
        let opts: Vec<String> = o.iter().map(|(k, v)| format!("{k}={}", s(v))).collect();
        println!("Options:      {}", opts.join(" "));
    }
    let filters = |k: &str| {
        t[k].as_array().map(|a| a.iter().map(|r| s(&r["Value"])).collect::<Vec<_>>().join(" | ")).filter(|x| !x.is_empty()).unwrap_or_else(|| "-".into())
    };
    println!("Includes:     {}", filters("Includes"));
    println!("Excludes:     {}", filters("Excludes"));
    println!("Manifest:     {}", s(&t["Manifest"]["Source"]));
    match t["Schedule"].as_object() {
        Some(sc) => {
            println!(
                "Schedule:     {} ({}) {}",
                s(&sc["ScheduleExpression"]),
                sc.get("TimeZone").map(s).filter(|z| z != "-").unwrap_or_else(|| "UTC".into()),
                s(&sc["Status"])
            );
            if let Some(r) = sc.get("DisabledReason").and_then(Value::as_str) {
                println!("              disabled by {}: {r}", s(&sc["DisabledBy"]));
            }
        }
        None => println!("Schedule:     -"),
    }
    match t["TaskReportConfig"].as_object() {
        Some(r) => println!("Report:       {} ({}, {})", s(&r["Destination"]), s(&r["OutputType"]), s(&r["ReportLevel"])),
        None => println!("Report:       -"),
    }
}

fn print_exec(e: &Value) {
    println!("Execution:    {}", s(&e["ExecutionId"]));
    println!("Task:         {}", s(&e["TaskName"]));
    println!("Status:       {}", s(&e["Status"]));
    println!("Source:       {}", s(&e["SourceLocation"]));
    println!("Destination:  {}", s(&e["DestinationLocation"]));
    println!("Started:      {}", time(&e["StartTimeUnixMs"]));
    println!("Ended:        {}", time(&e["EndTimeUnixMs"]));
    if !e["Error"].is_null() {
        println!("Error:        {}", s(&e["Error"]));
    }
    println!("Phases:");
    for p in e["Phases"].as_array().into_iter().flatten() {
        println!(
            "  {:<13} {:<8} {:>10.1}s  from {}",
            s(&p["Phase"]),
            s(&p["Status"]),
            p["DurationMs"].as_u64().unwrap_or(0) as f64 / 1000.0,
            time(&p["StartTimeUnixMs"])
        );
    }
    let c = &e["Counters"];
    let n = |k: &str| c[k].as_u64().unwrap_or(0);
    println!(
        "Files:        {} prepared, {} transferred, {} skipped, {} deleted, {} verified, {} failed",
        n("FilesPrepared"),
        n("FilesTransferred"),
        n("FilesSkipped"),
        n("FilesDeleted"),
        n("FilesVerified"),
        n("FilesFailed")
    );
    println!(
        "Bytes:        {} prepared, {} transferred, {} written",
        human_bytes(n("BytesPrepared")),
        human_bytes(n("BytesTransferred")),
        human_bytes(n("BytesWritten"))
    );
    for f in e["Failures"].as_array().into_iter().flatten() {
        println!("  failed: {}: {}", s(&f["Path"]), s(&f["Reason"]));
    }
    if !e["ReportPath"].is_null() {
        println!("Report:       {}", s(&e["ReportPath"]));
    }
}

fn print_exec_table(list: &[Value]) {
    println!("{:<24} {:<16} {:<13} {:>10} {:>10} {:>7}  STARTED", "EXECUTION", "TASK", "STATUS", "FILES", "BYTES", "FAILED");
    for e in list {
        let c = &e["Counters"];
        println!(
            "{:<24} {:<16} {:<13} {:>10} {:>10} {:>7}  {}",
            s(&e["ExecutionId"]),
            s(&e["TaskName"]),
            s(&e["Status"]),
            c["FilesTransferred"].as_u64().unwrap_or(0) + c["FilesSkipped"].as_u64().unwrap_or(0),
            human_bytes(c["BytesTransferred"].as_u64().unwrap_or(0)),
            c["FilesFailed"].as_u64().unwrap_or(0),
            time(&e["StartTimeUnixMs"])
        );
    }
}

fn enc(segment: &str) -> String {
    segment.bytes().map(|b| if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) { (b as char).to_string() } else { format!("%{b:02X}") }).collect()
}

/// Runs a task command; returns the exit code.
pub fn task_command(cmd: &TaskCommand) -> Result<i32, UsageError> {
    match cmd {
        TaskCommand::Create { name, source, destination, from_json, flags, api } => {
            let client = ApiClient::new(api)?;
            let mut obj = match from_json {
                Some(f) => {
                    let text = std::fs::read_to_string(f).map_err(|e| UsageError(format!("cannot read --from-json {}: {e}", f.display())))?;
                    match serde_json::from_str::<Value>(&text) {
                        Ok(Value::Object(m)) => m,
                        Ok(_) => return Err(UsageError(format!("--from-json {}: expected a JSON object (a task)", f.display()))),
                        Err(e) => return Err(UsageError(format!("--from-json {}: not JSON: {e}", f.display()))),
                    }
                }
                None => Map::new(),
            };
            for (k, v) in [("Name", name), ("SourceLocation", source), ("DestinationLocation", destination)] {
                if let Some(v) = v {
                    obj.insert(k.into(), json!(v));
                }
            }
            for (k, flag) in [("Name", "--name"), ("SourceLocation", "--source"), ("DestinationLocation", "--destination")] {
                if !obj.contains_key(k) {
                    return Err(UsageError(format!("a task needs {flag}")));
                }
            }
            apply_flags(&mut obj, flags, None)?;
            let t = client.json("POST", "/v1/tasks", Some(Value::Object(obj)))?;
            if api.json {
                print_json(&t);
            } else {
                println!("created task {}", s(&t["Name"]));
            }
        }
        TaskCommand::List { api } => {
            let list = ApiClient::new(api)?.json("GET", "/v1/tasks", None)?;
            if api.json {
                print_json(&list);
            } else {
                println!("{:<20} {:<22} {:<9} {:<30} {:<30}", "NAME", "SCHEDULE", "STATUS", "SOURCE", "DESTINATION");
                for t in list.as_array().into_iter().flatten() {
                    let sched = t["Schedule"]["ScheduleExpression"].as_str().unwrap_or("-");
                    let status = t["Schedule"]["Status"].as_str().unwrap_or("-");
                    println!("{:<20} {:<22} {:<9} {:<30} {:<30}", s(&t["Name"]), sched, status, s(&t["SourceLocation"]), s(&t["DestinationLocation"]));
                }
            }
        }
        TaskCommand::Describe { name, api } => {
            let t = ApiClient::new(api)?.json("GET", &format!("/v1/tasks/{}", enc(name)), None)?;
            if api.json {
                print_json(&t);
            } else {
                print_task(&t);
            }
        }
        TaskCommand::Update { name, flags, api } => {
            let client = ApiClient::new(api)?;
            let existing = if flags.schedule.is_none() && (flags.time_zone.is_some() || flags.schedule_status.is_some()) {
                Some(client.json("GET", &format!("/v1/tasks/{}", enc(name)), None)?["Schedule"].clone())
            } else {
                None
            };
            let mut patch = Map::new();
            apply_flags(&mut patch, flags, existing.as_ref())?;
            if patch.is_empty() {
                return Err(UsageError(
                    "nothing to update: give --option, --include, --exclude, --schedule, --schedule-status, --manifest or --report-dir".into(),
                ));
            }
            let t = client.json("PATCH", &format!("/v1/tasks/{}", enc(name)), Some(Value::Object(patch)))?;
            if api.json {
                print_json(&t);
            } else {
                println!("updated task {name}");
            }
        }
        TaskCommand::Delete { name, api } => {
            ApiClient::new(api)?.json("DELETE", &format!("/v1/tasks/{}", enc(name)), None)?;
            if !api.json {
                println!("deleted task {name}");
            }
        }
        TaskCommand::Start { name, options, include, exclude, wait, api } => {
            // The execution's trace starts here (when OTEL_* asks for traces).
            let root = tracing::info_span!("cli", otel.name = "ferry task start", task = %name);
            let _root = root.enter();
            let client = ApiClient::new(api)?;
            let mut body = Map::new();
            if !options.is_empty() {
                body.insert("OverrideOptions".into(), Value::Object(key_values(options)?));
            }
            if !include.is_empty() {
                body.insert("Includes".into(), rules(include));
            }
            if !exclude.is_empty() {
                body.insert("Excludes".into(), rules(exclude));
            }
            let e = client.json("POST", &format!("/v1/tasks/{}/start", enc(name)), Some(Value::Object(body)))?;
            let id = s(&e["ExecutionId"]);
            if !*wait {
                if api.json {
                    print_json(&e);
                } else {
                    println!("started execution {id} ({})", s(&e["Status"]));
                }
                return Ok(0);
            }
            let end = wait_for(&client, &id, crate::progress::Style::for_stderr(!api.json))?;
            if api.json {
                print_json(&end);
            } else {
                print_exec(&end);
            }
            return Ok(if end["Status"] == "SUCCESS" { 0 } else { 1 });
        }
    }
    Ok(0)
}

/// Follows an execution until it has ended, with a progress bar on a terminal (status
/// changes and a plain line every 10 s otherwise, none with `--json`).
fn wait_for(client: &ApiClient, id: &str, progress: crate::progress::Style) -> Result<Value, UsageError> {
    use crate::progress::{Progress, Snapshot, Style};
    let mut shown = Progress::new(progress);
    let mut last_status = String::new();
    loop {
        let e = client.json("GET", &format!("/v1/executions/{}", enc(id)), None)?;
        let status = s(&e["Status"]);
        if status != last_status && progress != Style::Bar {
            eprintln!("ferry: execution {id}: {status}");
        }
        last_status = status.clone();
        // Ended, and its report (when the task has one) is written or has failed.
        if matches!(status.as_str(), "SUCCESS" | "ERROR" | "CANCELLED") && e["ReportStatus"] != "PENDING" {
            shown.clear();
            return Ok(e);
        }
        shown.show(&Snapshot::of_view(&e));
        std::thread::sleep(Duration::from_millis(500));
    }
}

pub enum ExecApiCommand<'a> {
    List { task: Option<&'a str> },
    Describe(&'a str),
    Cancel(&'a str),
    Report(&'a str),
    Update { id: &'a str, bytes_per_second: i64 },
    Logs { id: &'a str, follow: bool, level: Option<LineLevel> },
}

/// `--level`: ERROR, WARN, INFO or DEBUG, in any case.
pub fn parse_line_level(level: Option<&str>) -> Result<Option<LineLevel>, UsageError> {
    level.map(|l| LineLevel::parse(l).ok_or_else(|| UsageError(format!("--level {l:?} is not a level: give ERROR, WARN, INFO or DEBUG")))).transpose()
}

/// One log line: `TIME AGENT LEVEL message key=value...`, or the API's JSON on one line.
fn print_log_line(l: &Value, json: bool) {
    if json {
        println!("{l}");
        return;
    }
    let time = l["TimeUnixMs"]
        .as_u64()
        .and_then(|ms| chrono::DateTime::from_timestamp_millis(ms as i64))
        .map(|t| t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
        .unwrap_or_else(|| "-".into());
    let mut out = format!("{time} {} {:<5} {}", s(&l["Agent"]), s(&l["Level"]), s(&l["Message"]));
    for (k, v) in l["Fields"].as_object().into_iter().flatten() {
        let v = match v {
            Value::String(t) if t.is_empty() || t.chars().any(|c| c.is_whitespace() || c == '"' || c == '=') => format!("{t:?}"),
            Value::String(t) => t.clone(),
            other => other.to_string(),
        };
        out.push_str(&format!(" {k}={v}"));
    }
    println!("{out}");
}

/// Whether a reader stops after this page: without `follow` when nothing more is stored,
/// with it when the execution ended and its last lines are in.
fn last_page(follow: bool, more: bool, ended: bool) -> bool {
    if follow {
        ended
    } else {
        !more
    }
}

/// `ferry exec logs --etcd`: the same pages, read from the Store directly.
pub async fn logs_from_store(store: &ferry_common::store::SharedStore, id: &str, follow: bool, level: Option<LineLevel>, json: bool) -> Result<(), UsageError> {
    use crate::exec_logs::{read_page, wait_page, Cursor, LogQuery, ReadError, MAX_LIMIT};
    let mut after = Cursor::default();
    loop {
        let q = LogQuery { after, level, limit: MAX_LIMIT };
        let page = if follow { wait_page(store, id, &q, Duration::from_secs(20), Duration::from_millis(500)).await } else { read_page(store, id, &q).await };
        let page = page.map_err(|e| match e {
            ReadError::NotFound(m) => UsageError(m),
            ReadError::Store(m) => UsageError(format!("cannot read the logs of execution {id}: {m} (check --etcd and that etcd is running)")),
        })?;
        for l in &page.lines {
            print_log_line(&serde_json::to_value(l).unwrap_or_default(), json);
        }
        if last_page(follow, page.more, page.ended) {
            return Ok(());
        }
        after = Cursor::parse(&page.next).map_err(UsageError)?;
    }
}

pub fn exec_api_command(cmd: ExecApiCommand<'_>, api: &ApiArgs) -> Result<i32, UsageError> {
    let client = ApiClient::new(api)?;
    match cmd {
        ExecApiCommand::List { task } => {
            let path = match task {
                Some(t) => format!("/v1/executions?task={}", enc(t)),
                None => "/v1/executions".into(),
            };
            let list = client.json("GET", &path, None)?;
            if api.json {
                print_json(&list);
            } else {
                print_exec_table(list.as_array().map(Vec::as_slice).unwrap_or(&[]));
            }
        }
        ExecApiCommand::Describe(id) => {
            let e = client.json("GET", &format!("/v1/executions/{}", enc(id)), None)?;
            if api.json {
                print_json(&e);
            } else {
                print_exec(&e);
            }
        }
        ExecApiCommand::Cancel(id) => {
            let e = client.json("POST", &format!("/v1/executions/{}/cancel", enc(id)), None)?;
            if api.json {
                print_json(&e);
            } else {
                println!("cancellation requested for execution {id} (was {})", s(&e["Status"]));
            }
        }
        ExecApiCommand::Report(id) => {
            // The leader writes the report just after the execution ends: wait a little.
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            loop {
                let e = client.json("GET", &format!("/v1/executions/{}", enc(id)), None)?;
                let ended = matches!(e["Status"].as_str(), Some("SUCCESS" | "ERROR" | "CANCELLED"));
                if !(ended && e["ReportStatus"] == "PENDING") || std::time::Instant::now() > deadline {
                    break;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            let r = client.call("GET", &format!("/v1/executions/{}/report", enc(id)), None)?;
            let body = r.into_string().map_err(|e| UsageError(format!("cannot read the report: {e}")))?;
            print!("{body}");
        }
        ExecApiCommand::Logs { id, follow, level } => {
            let mut after = String::new();
            loop {
                let mut path = format!("/v1/executions/{}/logs?limit=1000&after={}", enc(id), enc(&after));
                if let Some(l) = level {
                    path += &format!("&level={}", l.as_str());
                }
                if follow {
                    path += "&follow=true";
                }
                let page = client.json("GET", &path, None)?;
                for l in page["Lines"].as_array().into_iter().flatten() {
                    print_log_line(l, api.json);
                }
                if last_page(follow, page["More"] == Value::Bool(true), page["Ended"] == Value::Bool(true)) {
                    break;
                }
                after = page["Next"].as_str().unwrap_or_default().to_string();
            }
        }
        ExecApiCommand::Update { id, bytes_per_second } => {
            let e = client.json("PATCH", &format!("/v1/executions/{}", enc(id)), Some(json!({"BytesPerSecond": bytes_per_second})))?;
            if api.json {
                print_json(&e);
            } else {
                println!("execution {id}: BytesPerSecond is now {bytes_per_second}");
            }
        }
    }
    Ok(0)
}

pub fn agent_command(cmd: &AgentCommand) -> Result<i32, UsageError> {
    let AgentCommand::List { api } = cmd;
    let list = ApiClient::new(api)?.json("GET", "/v1/agents", None)?;
    if api.json {
        print_json(&list);
    } else {
        print!("{}", agent_table(list.as_array().map(Vec::as_slice).unwrap_or_default(), ferry_common::schedule::now_ms()));
    }
    Ok(0)
}

/// Agents as `AgentView` JSON, one line each: health first (status, when last heard of, the
/// rate, failures), then identity. `ferry agent list` and `ferry workers` both print it.
pub fn agent_table(agents: &[Value], now_ms: u64) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<20} {:<16} {:<8} {:>9} {:>10} {:>9} {:>6} {:<20} {:<16} {:<20} LINK",
        "NAME", "HOST", "STATUS", "LAST SEEN", "RATE", "MOVED", "ERRORS", "VERSION", "LABELS", "PEERS"
    );
    let list = |v: &Value| v.as_array().map(|l| l.iter().map(s).collect::<Vec<_>>().join(",")).filter(|l| !l.is_empty()).unwrap_or_else(|| "-".into());
    for a in agents {
        let (version, commit) = (s(&a["Version"]), s(&a["Commit"]));
        let version = if version.is_empty() || version == "-" { "-".to_string() } else { format!("{version} {}", commit.get(..7).unwrap_or(&commit)) };
        let beat = a["LastHeartbeatUnixMs"].as_u64().unwrap_or(0);
        let seen = if beat == 0 { "-".to_string() } else { format!("{}s ago", now_ms.saturating_sub(beat) / 1000) };
        let rate = format!("{}/s", crate::progress::human_bytes(a["BytesPerSecond"].as_u64().unwrap_or(0)));
        let moved = crate::progress::human_bytes(a["BytesTotal"].as_u64().unwrap_or(0));
        let errors = a["RecentErrors"].as_array().map_or(0, Vec::len);
        let _ = writeln!(
            out,
            "{:<20} {:<16} {:<8} {:>9} {:>10} {:>9} {:>6} {:<20} {:<16} {:<20} {}",
            s(&a["Name"]),
            s(&a["Host"]),
            s(&a["Status"]),
            seen,
            rate,
            moved,
            errors,
            version,
            list(&a["Labels"]),
            list(&a["LinkPeers"]),
            s(&a["LinkAddress"])
        );
        // The newest failure, so "which agent is failing, and why" needs no second command.
        if let Some(last) = a["RecentErrors"].as_array().and_then(|e| e.last()) {
            let _ = writeln!(out, "    last error ({}, execution {}): {}", s(&last["Code"]), s(&last["ExecutionId"]), s(&last["Message"]));
        }
    }
    out
}
