//! The web console: server-rendered pages under `/console/`, a login at `/login`, served by
//! the API's server with the same tokens.
//!
//! Authentication: `/login` takes an API token and opens a session held in this process's
//! memory ([`session::SessionTable`]); the browser gets only the session's random id, in an
//! HttpOnly, SameSite=Strict cookie (Secure when the API is served over TLS). Sessions end on
//! logout, after 8 idle hours, after 7 days, and when the coordinator restarts. The JSON API
//! never accepts the cookie: it wants the bearer token, as before.
//!
//! CSRF: every form carries its session's token, and a POST whose Origin (or Referer) names
//! another host is refused, both with 403.
//!
//! Live progress: an execution's page subscribes to `/console/executions/{id}/events`
//! (server-sent events), which sends the rendered progress fragment every second until the
//! execution ends; htmx's SSE extension swaps it in.

mod assets;
mod html;
mod pages;
pub mod session;
mod tasks;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::http::header::{self, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use ferry_common::model::Execution;
use ferry_common::task::{FieldError, ScheduleStatus, TaskUpdate};
use ferry_common::tokens::Tokens;
use serde::Deserialize;

use crate::api::views::{AgentView, EventView, ExecutionView};
use crate::control::{ControlError, ControlPlane};
use crate::progress::{self, Meter, Snapshot, Style};
use session::{NoSession, Session, SessionTable};
use tasks::TaskForm;

/// The console's state, shared by the server's workers.
pub struct Console {
    sessions: Mutex<SessionTable>,
    tokens: Tokens,
    /// Served over TLS: the cookie is Secure.
    secure: bool,
}

impl Console {
    pub fn new(tokens: Tokens, secure: bool) -> Self {
        Console { sessions: Mutex::new(SessionTable::default()), tokens, secure }
    }

    fn sessions(&self) -> std::sync::MutexGuard<'_, SessionTable> {
        // A panic while holding the table leaves it consistent (each method is one step).
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Whether the console serves `path`; the API's bearer check lets these through, and the
/// console checks its session cookie itself.
pub fn handles(path: &str) -> bool {
    matches!(path, "/" | "/login" | "/logout" | "/console") || path.starts_with("/console/")
}

type Ctl = web::Data<Arc<ControlPlane>>;
type Con = web::Data<Console>;
type Form = web::Form<Vec<(String, String)>>;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/", web::get().to(root))
        .route("/console", web::get().to(root))
        .route("/console/", web::get().to(root))
        .route("/login", web::get().to(login_page))
        .route("/login", web::post().to(login))
        .route("/logout", web::post().to(logout))
        .route("/console/assets/{name}", web::get().to(asset))
        .route("/console/executions", web::get().to(executions))
        .route("/console/executions/{id}", web::get().to(execution))
        .route("/console/executions/{id}/events", web::get().to(execution_events))
        .route("/console/executions/{id}/cancel", web::post().to(cancel))
        .route("/console/executions/{id}/failures", web::get().to(failures))
        .route("/console/tasks", web::get().to(tasks_list))
        .route("/console/tasks", web::post().to(create_task))
        .route("/console/tasks/new", web::get().to(new_task))
        .route("/console/tasks/{name}", web::get().to(task_page))
        .route("/console/tasks/{name}", web::post().to(update_task))
        .route("/console/tasks/{name}/start", web::post().to(start_task))
        .route("/console/tasks/{name}/schedule", web::post().to(schedule))
        .route("/console/agents", web::get().to(agents))
        .route("/console/events", web::get().to(events));
}

const CSP: &str = "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'";

fn html(status: StatusCode, body: String) -> HttpResponse {
    HttpResponse::build(status)
        .content_type("text/html; charset=utf-8")
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .insert_header((header::CONTENT_SECURITY_POLICY, CSP))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .insert_header((header::REFERRER_POLICY, "same-origin"))
        .body(body)
}

fn see_other(to: &str) -> HttpResponse {
    HttpResponse::SeeOther().insert_header((header::LOCATION, to)).insert_header((header::CACHE_CONTROL, "no-store")).finish()
}

fn now_ms() -> u64 {
    ferry_common::schedule::now_ms()
}

fn header_str(req: &HttpRequest, name: header::HeaderName) -> Option<&str> {
    req.headers().get(name).and_then(|v| v.to_str().ok())
}

fn session_id(req: &HttpRequest) -> Option<&str> {
    session::cookie_value(header_str(req, header::COOKIE), session::COOKIE)
}

/// The request's live session, or the response a request without one gets.
fn session(req: &HttpRequest, con: &Console) -> Result<Session, Box<HttpResponse>> {
    if let Some(s) = session_id(req).and_then(|id| con.sessions().touch(id, now_ms())) {
        return Ok(s);
    }
    let htmx = req.headers().contains_key("hx-request");
    let stream = header_str(req, header::ACCEPT).is_some_and(|a| a.contains("text/event-stream"));
    Err(Box::new(match session::without_session(htmx, stream) {
        NoSession::ToLogin => see_other("/login"),
        NoSession::Unauthorized => HttpResponse::Unauthorized().content_type("text/plain").body("no console session: log in again at /login\n"),
    }))
}

fn forbidden(message: &str) -> HttpResponse {
    let body = pages::problem(None, "Forbidden", &format!("{message}."));
    html(StatusCode::FORBIDDEN, body)
}

/// A form POST: a live session, a request from this console, and the session's CSRF token.
fn form_session(req: &HttpRequest, con: &Console, form: &[(String, String)]) -> Result<Session, Box<HttpResponse>> {
    let s = session(req, con)?;
    session::check_origin(header_str(req, header::ORIGIN), header_str(req, header::REFERER), header_str(req, header::HOST))
        .map_err(|e| Box::new(forbidden(&e)))?;
    let presented = form.iter().find(|(k, _)| k == "csrf").map(|(_, v)| v.as_str());
    session::check_csrf(&s, presented).map_err(|e| Box::new(forbidden(&e)))?;
    Ok(s)
}

fn status_of(e: &ControlError) -> StatusCode {
    match e {
        ControlError::Field(FieldError::Invalid { .. }) => StatusCode::BAD_REQUEST,
        ControlError::Field(FieldError::Unprocessable { .. }) => StatusCode::UNPROCESSABLE_ENTITY,
        ControlError::NotFound(_) => StatusCode::NOT_FOUND,
        ControlError::Conflict(_) => StatusCode::CONFLICT,
        ControlError::Store(_) => StatusCode::SERVICE_UNAVAILABLE,
    }
}

fn problem(s: &Session, title: &str, e: &ControlError) -> HttpResponse {
    let message = match e {
        ControlError::Store(m) => format!("{m} (the coordination store is unavailable; retry)"),
        e => e.to_string(),
    };
    html(status_of(e), pages::problem(Some(&s.csrf), title, &message))
}

macro_rules! try_page {
    ($s:expr, $title:expr, $e:expr) => {
        match $e {
            Ok(v) => v,
            Err(e) => return problem(&$s, $title, &e),
        }
    };
}

macro_rules! try_session {
    ($e:expr) => {
        match $e {
            Ok(s) => s,
            Err(resp) => return *resp,
        }
    };
}

async fn root(req: HttpRequest, con: Con) -> HttpResponse {
    match session(&req, &con) {
        Ok(_) => see_other("/console/executions"),
        Err(_) => see_other("/login"),
    }
}

async fn login_page(req: HttpRequest, con: Con) -> HttpResponse {
    if session(&req, &con).is_ok() {
        return see_other("/console/executions");
    }
    html(StatusCode::OK, pages::login(None))
}

async fn login(req: HttpRequest, con: Con, form: Form) -> HttpResponse {
    if let Err(e) = session::check_origin(header_str(&req, header::ORIGIN), header_str(&req, header::REFERER), header_str(&req, header::HOST)) {
        return html(StatusCode::FORBIDDEN, pages::login(Some(&format!("{e}."))));
    }
    let token = form.iter().find(|(k, _)| k == "token").map(|(_, v)| v.trim()).unwrap_or("");
    if !con.tokens.accepts(token.as_bytes()) {
        tracing::warn!(peer = %req.peer_addr().map(|a| a.ip().to_string()).unwrap_or_default(), "ConsoleLoginRefused");
        let why = if token.is_empty() { "Give an API token." } else { "That token is not accepted: give one from the coordinator's --api-token-file." };
        return html(StatusCode::UNAUTHORIZED, pages::login(Some(why)));
    }
    let id = con.sessions().open(now_ms());
    let mut resp = see_other("/console/executions");
    if let Ok(v) = HeaderValue::from_str(&session::set_cookie(&id, con.secure)) {
        resp.headers_mut().append(header::SET_COOKIE, v);
    }
    resp
}

async fn logout(req: HttpRequest, con: Con, form: Form) -> HttpResponse {
    try_session!(form_session(&req, &con, &form));
    if let Some(id) = session_id(&req) {
        con.sessions().close(id);
    }
    let mut resp = see_other("/login");
    if let Ok(v) = HeaderValue::from_str(&session::clear_cookie(con.secure)) {
        resp.headers_mut().append(header::SET_COOKIE, v);
    }
    resp
}

async fn asset(req: HttpRequest, name: web::Path<String>) -> HttpResponse {
    let Some(a) = assets::get(&name) else {
        return HttpResponse::NotFound().content_type("text/plain").body(format!("no console asset {name}\n"));
    };
    let gzip_ok = header_str(&req, header::ACCEPT_ENCODING).is_some_and(|v| v.split(',').any(|e| e.trim().starts_with("gzip")));
    let mut resp = HttpResponse::Ok();
    resp.content_type(a.content_type).insert_header((header::CACHE_CONTROL, assets::CACHE_CONTROL)).insert_header((header::VARY, "Accept-Encoding"));
    match a.gzip {
        Some(gz) if gzip_ok => resp.insert_header((header::CONTENT_ENCODING, "gzip")).body(gz),
        _ => resp.body(a.body),
    }
}

#[derive(Deserialize)]
struct ExecQuery {
    task: Option<String>,
}

async fn executions(req: HttpRequest, con: Con, ctl: Ctl, q: web::Query<ExecQuery>) -> HttpResponse {
    let s = try_session!(session(&req, &con));
    let list = try_page!(s, "Executions", ctl.list_executions(q.task.as_deref()).await);
    let now = now_ms();
    let views: Vec<ExecutionView> = list.iter().map(|e| ExecutionView::of(e, now)).collect();
    html(StatusCode::OK, pages::executions(&s.csrf, &views, q.task.as_deref()))
}

/// The progress line `ferry copy` prints, without its prefix.
fn summary_line(e: &Execution, rate: f64) -> String {
    let line = progress::render(Style::Lines, &Snapshot::of(e), rate);
    line.strip_prefix("ferry: ").unwrap_or(&line).to_string()
}

async fn execution(req: HttpRequest, con: Con, ctl: Ctl, id: web::Path<String>) -> HttpResponse {
    let s = try_session!(session(&req, &con));
    let e = try_page!(s, "Execution", ctl.get_execution(&id).await);
    let view = ExecutionView::of(&e, now_ms());
    let fragment = pages::progress(&s.csrf, &view, &summary_line(&e, 0.0), &[]);
    html(StatusCode::OK, pages::execution(&s.csrf, &view, &fragment))
}

/// Throughput samples an SSE stream keeps (one a second).
const SAMPLES: usize = 120;

/// One SSE event; each line of `data` is its own `data:` line.
fn sse_event(name: &str, data: &str) -> web::Bytes {
    let mut out = format!("event: {name}\n");
    for line in data.split('\n') {
        out.push_str("data: ");
        out.push_str(line);
        out.push('\n');
    }
    out.push('\n');
    web::Bytes::from(out)
}

struct Feed {
    ctl: Arc<ControlPlane>,
    id: String,
    csrf: String,
    started: Instant,
    meter: Meter,
    rates: std::collections::VecDeque<f64>,
    first: bool,
    done: bool,
}

impl Feed {
    /// The next event: progress every second, then `end` once the execution has ended.
    async fn next(mut self) -> Option<(Result<web::Bytes, actix_web::Error>, Feed)> {
        if self.done {
            return None;
        }
        if !self.first {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        self.first = false;
        let e = match self.ctl.get_execution(&self.id).await {
            Ok(e) => e,
            Err(ControlError::Store(m)) => {
                // Try again next second; the page keeps what it shows.
                tracing::debug!(error = %m, "console progress: store unavailable");
                return Some((Ok(web::Bytes::from_static(b": store unavailable, retrying\n\n")), self));
            }
            Err(e) => {
                self.done = true;
                return Some((Ok(sse_event("end", &html::esc(&e.to_string()))), self));
            }
        };
        self.meter.push(self.started.elapsed(), e.counters.bytes_transferred);
        let rate = self.meter.rate();
        if self.rates.len() == SAMPLES {
            self.rates.pop_front();
        }
        self.rates.push_back(rate);
        let view = ExecutionView::of(&e, now_ms());
        let rates: Vec<f64> = self.rates.iter().copied().collect();
        let mut out = sse_event("progress", &pages::progress(&self.csrf, &view, &summary_line(&e, rate), &rates)).to_vec();
        if e.phase.is_terminal() {
            out.extend_from_slice(&sse_event("end", e.phase.as_str()));
            self.done = true;
        }
        Some((Ok(web::Bytes::from(out)), self))
    }
}

async fn execution_events(req: HttpRequest, con: Con, ctl: Ctl, id: web::Path<String>) -> HttpResponse {
    let s = try_session!(session(&req, &con));
    let feed = Feed {
        ctl: ctl.get_ref().clone(),
        id: id.into_inner(),
        csrf: s.csrf,
        started: Instant::now(),
        meter: Meter::default(),
        rates: Default::default(),
        first: true,
        done: false,
    };
    HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .insert_header(("X-Accel-Buffering", "no"))
        .streaming(futures::stream::unfold(feed, Feed::next))
}

async fn cancel(req: HttpRequest, con: Con, ctl: Ctl, id: web::Path<String>, form: Form) -> HttpResponse {
    let s = try_session!(form_session(&req, &con, &form));
    try_page!(s, "Cannot cancel", ctl.cancel_execution(&id).await);
    see_other(&format!("/console/executions/{}", html::url_seg(&id)))
}

/// At most this many failed entries are read from a report.
const MAX_FAILED_SHOWN: usize = 1000;

/// The failed entries of a local task report, with their codes; None when it cannot be read.
fn report_failures(path: &str) -> Option<Vec<pages::FailedEntry>> {
    use std::io::BufRead;
    let f = std::fs::File::open(path).ok()?;
    let mut out = Vec::new();
    for line in std::io::BufReader::new(f).lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&line.ok()?) else { continue };
        if v["type"] != "entry" || !matches!(v["status"].as_str(), Some("failed" | "mismatched")) {
            continue;
        }
        let s = |k: &str| v[k].as_str().unwrap_or("").to_string();
        out.push(pages::FailedEntry { path: s("path"), status: s("status"), code: s("code"), reason: s("reason") });
        if out.len() == MAX_FAILED_SHOWN {
            break;
        }
    }
    Some(out)
}

async fn failures(req: HttpRequest, con: Con, ctl: Ctl, id: web::Path<String>) -> HttpResponse {
    let s = try_session!(session(&req, &con));
    let e = try_page!(s, "Failed entries", ctl.get_execution(&id).await);
    let local_report = e.task_run.report_path.as_deref().filter(|p| !crate::control::report::is_s3(p));
    let from_report = match local_report {
        Some(p) => tokio::task::spawn_blocking({
            let p = p.to_string();
            move || report_failures(&p)
        })
        .await
        .ok()
        .flatten(),
        None => None,
    };
    let (list, source) = match (from_report, &e.task_run.report_path) {
        (Some(list), Some(p)) => (list, format!("From the task report {p} (the first {MAX_FAILED_SHOWN} at most).")),
        _ => {
            let list = e
                .failures
                .iter()
                .map(|f| pages::FailedEntry {
                    path: ferry_common::paths::display(&f.path),
                    status: "failed".into(),
                    code: "-".into(),
                    reason: f.reason.clone(),
                })
                .collect();
            let why = match e.task_run.report_path {
                Some(_) => "its report cannot be read here",
                None => "codes are in the task report: give the task a report destination",
            };
            (list, format!("The first failures the execution kept ({why})."))
        }
    };
    html(StatusCode::OK, pages::failures(&s.csrf, &e.spec.id, &list, &source))
}

async fn tasks_list(req: HttpRequest, con: Con, ctl: Ctl) -> HttpResponse {
    let s = try_session!(session(&req, &con));
    let list = try_page!(s, "Tasks", ctl.list_tasks().await);
    html(StatusCode::OK, pages::tasks(&s.csrf, &list))
}

async fn new_task(req: HttpRequest, con: Con) -> HttpResponse {
    let s = try_session!(session(&req, &con));
    html(StatusCode::OK, pages::new_task(&s.csrf, &TaskForm::default()))
}

fn field_status(e: &FieldError) -> StatusCode {
    status_of(&ControlError::Field(e.clone()))
}

async fn create_task(req: HttpRequest, con: Con, ctl: Ctl, form: Form) -> HttpResponse {
    let s = try_session!(form_session(&req, &con, &form));
    let tf = TaskForm::from_pairs(&form);
    let result = match tf.to_task() {
        Ok(t) => ctl.create_task(t).await,
        Err(e) => Err(e.into()),
    };
    match result {
        Ok(t) => see_other(&format!("/console/tasks/{}", html::url_seg(&t.name))),
        Err(ControlError::Field(e)) => html(field_status(&e), pages::new_task(&s.csrf, &tf.with_error(e))),
        Err(e) => {
            // A conflict (the name is taken) belongs next to the name.
            if let ControlError::Conflict(m) = &e {
                return html(StatusCode::CONFLICT, pages::new_task(&s.csrf, &tf.with_error(FieldError::invalid("Name", m.clone()))));
            }
            problem(&s, "Cannot create the task", &e)
        }
    }
}

#[derive(Deserialize)]
struct SavedQuery {
    saved: Option<String>,
}

async fn task_page(req: HttpRequest, con: Con, ctl: Ctl, name: web::Path<String>, q: web::Query<SavedQuery>) -> HttpResponse {
    let s = try_session!(session(&req, &con));
    let t = try_page!(s, "Task", ctl.get_task(&name).await);
    html(StatusCode::OK, pages::task(&s.csrf, &t, &TaskForm::of(&t), q.saved.is_some()))
}

async fn update_task(req: HttpRequest, con: Con, ctl: Ctl, name: web::Path<String>, form: Form) -> HttpResponse {
    let s = try_session!(form_session(&req, &con, &form));
    let current = try_page!(s, "Task", ctl.get_task(&name).await);
    let tf = TaskForm::from_pairs(&form);
    let result = match tf.to_update(&current) {
        Ok(u) => ctl.update_task(&name, u).await,
        Err(e) => Err(e.into()),
    };
    match result {
        Ok(t) => see_other(&format!("/console/tasks/{}?saved=1", html::url_seg(&t.name))),
        Err(ControlError::Field(e)) => html(field_status(&e), pages::task(&s.csrf, &current, &tf.with_error(e), false)),
        Err(e) => problem(&s, "Cannot save the task", &e),
    }
}

async fn start_task(req: HttpRequest, con: Con, ctl: Ctl, name: web::Path<String>, form: Form) -> HttpResponse {
    let s = try_session!(form_session(&req, &con, &form));
    let e = try_page!(s, "Cannot start the task", ctl.start_task(&name, Default::default()).await);
    see_other(&format!("/console/executions/{}", html::url_seg(&e.spec.id)))
}

async fn schedule(req: HttpRequest, con: Con, ctl: Ctl, name: web::Path<String>, form: Form) -> HttpResponse {
    let s = try_session!(form_session(&req, &con, &form));
    let t = try_page!(s, "Task", ctl.get_task(&name).await);
    let Some(mut sched) = t.schedule.clone() else {
        return problem(&s, "No schedule", &ControlError::Conflict(format!("task {name} has no schedule: give it one in the form first")));
    };
    sched.status = match form.iter().find(|(k, _)| k == "Status").map(|(_, v)| v.as_str()) {
        Some("ENABLED") => ScheduleStatus::Enabled,
        Some("DISABLED") => ScheduleStatus::Disabled,
        _ => return problem(&s, "Schedule", &ControlError::Field(FieldError::invalid("Schedule.Status", "must be ENABLED or DISABLED"))),
    };
    try_page!(s, "Cannot change the schedule", ctl.update_task(&name, TaskUpdate { schedule: Some(sched), ..Default::default() }).await);
    see_other(&format!("/console/tasks/{}?saved=1", html::url_seg(&name)))
}

async fn agents(req: HttpRequest, con: Con, ctl: Ctl) -> HttpResponse {
    let s = try_session!(session(&req, &con));
    let list = try_page!(s, "Agents", ctl.list_agent_statuses().await);
    let views: Vec<AgentView> = list.iter().map(AgentView::from).collect();
    html(StatusCode::OK, pages::agents(&s.csrf, &views, now_ms()))
}

/// The events page shows this many, newest first.
const EVENTS_SHOWN: usize = 200;

async fn events(req: HttpRequest, con: Con, ctl: Ctl) -> HttpResponse {
    let s = try_session!(session(&req, &con));
    // Events come oldest first; page through them keeping the newest.
    let mut kept: std::collections::VecDeque<EventView> = Default::default();
    let mut after: Option<String> = None;
    loop {
        let page = try_page!(s, "Events", ctl.list_events(after.as_deref(), 1000).await);
        let full = page.len() == 1000;
        for (id, event) in page {
            after = Some(id.clone());
            if kept.len() == EVENTS_SHOWN {
                kept.pop_front();
            }
            kept.push_back(EventView { id, event });
        }
        if !full {
            break;
        }
    }
    let newest_first: Vec<EventView> = kept.into_iter().rev().collect();
    html(StatusCode::OK, pages::events(&s.csrf, &newest_first))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_console_claims_only_its_own_paths() {
        for p in ["/", "/login", "/logout", "/console", "/console/executions", "/console/assets/htmx.min.js"] {
            assert!(handles(p), "{p}");
        }
        for p in ["/v1/tasks", "/metrics", "/healthz", "/consoles", "/login/x", "/v1/console/x"] {
            assert!(!handles(p), "{p}");
        }
    }

    #[test]
    fn sse_events_split_lines_into_data_lines() {
        assert_eq!(&sse_event("progress", "<p>a</p>\n<p>b</p>")[..], b"event: progress\ndata: <p>a</p>\ndata: <p>b</p>\n\n");
    }
}
