//! The coordinator's HTTP API (actix-web): JSON under `/v1`, bearer-token auth, errors as
//! JSON, the OpenAPI document at `/v1/openapi.json` (generated from these handlers by
//! utoipa), and Prometheus text at `/metrics`.
//!
//! Status codes: 400 a malformed request or field (the body names the field), 401 a missing or
//! wrong token, 404 no such task or execution, 409 a conflict (the task exists, is running
//! without queueing, or changed meanwhile), 422 valid fields that do not go together, 503 the
//! coordination store is unavailable.

mod logs;
pub mod views;

use std::net::SocketAddr;
use std::sync::Arc;

use actix_web::dev::{Service, ServiceResponse};
use actix_web::http::StatusCode;
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer, ResponseError};
use ferry_common::task::{FieldError, StartOverrides, Task, TaskUpdate};
use futures::future::{ready, Either};
use serde::Deserialize;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{IntoParams, Modify, OpenApi};

use crate::control::{ControlError, ControlPlane};
use views::*;

/// An API error: the status, a machine-readable code, and the field it is about.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    field: Option<String>,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError { status, code, field: None, message: message.into() }
    }
    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "InvalidRequest", message)
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }
    fn error_response(&self) -> HttpResponse {
        HttpResponse::build(self.status)
            .json(ErrorBody { error: ErrorDetail { code: self.code.into(), field: self.field.clone(), message: self.message.clone() } })
    }
}

impl From<ControlError> for ApiError {
    fn from(e: ControlError) -> Self {
        match e {
            ControlError::Field(f) => {
                let (status, code) = match &f {
                    FieldError::Invalid { .. } => (StatusCode::BAD_REQUEST, "InvalidRequest"),
                    FieldError::Unprocessable { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "Unprocessable"),
                };
                ApiError { status, code, field: Some(f.field().to_string()), message: f.to_string() }
            }
            ControlError::NotFound(m) => ApiError::new(StatusCode::NOT_FOUND, "NotFound", m),
            ControlError::Conflict(m) => ApiError::new(StatusCode::CONFLICT, "Conflict", m),
            ControlError::Store(m) => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "Unavailable", format!("{m} (the coordination store is unavailable; retry)"))
            }
        }
    }
}

type ApiResult<T> = Result<T, ApiError>;
type Ctl = web::Data<Arc<ControlPlane>>;

pub use ferry_common::tokens::Tokens;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme("bearer", SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()));
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "ferry coordinator API", description = "Tasks, schedules, executions, agents and events. Field names follow AWS DataSync's."),
    paths(health, live, readyz, create_task, list_tasks, describe_task, update_task, delete_task, start_task, list_executions, describe_execution, update_execution, cancel_execution, execution_report, logs::execution_logs, list_agents, list_events),
    modifiers(&BearerAuth),
    security(("bearer" = []))
)]
pub struct ApiDoc;

/// The OpenAPI document, as served at `/v1/openapi.json`.
pub fn openapi_json() -> String {
    ApiDoc::openapi().to_pretty_json().unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
}

/// Decodes a JSON body, naming the field a bad value is in (`Options.VerifyMode`).
fn body<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> ApiResult<T> {
    if bytes.is_empty() {
        return Err(ApiError::bad_request("the request needs a JSON body"));
    }
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let field = (path != ".").then_some(path);
        let message = match &field {
            Some(f) => format!("{f}: {inner}"),
            None => format!("malformed request: {inner}"),
        };
        ApiError { status: StatusCode::BAD_REQUEST, code: "InvalidRequest", field, message }
    })
}

fn json_error(err: impl std::fmt::Display) -> actix_web::Error {
    ApiError::bad_request(format!("malformed request: {err}")).into()
}

/// Serves the API until the process ends. Runs its own actix system on `threads` workers.
/// Serves the API on `listen`: HTTPS when `tls` is given, else plain HTTP.
pub fn serve(control: Arc<ControlPlane>, listen: SocketAddr, tokens: Tokens, tls: Option<rustls::ServerConfig>) -> std::io::Result<actix_web::dev::Server> {
    // Recording starts with the server, so /metrics covers the Store requests made before the
    // first scrape.
    ferry_common::metrics::install().map_err(std::io::Error::other)?;
    let data = web::Data::new(control);
    let console = web::Data::new(crate::console::Console::new(tokens.clone(), tls.is_some()));
    let server = HttpServer::new(move || {
        let tokens = tokens.clone();
        App::new()
            .app_data(data.clone())
            .app_data(console.clone())
            .app_data(web::PayloadConfig::new(1 << 20))
            .app_data(web::PathConfig::default().error_handler(|e, _| json_error(e)))
            .app_data(web::QueryConfig::default().error_handler(|e, _| json_error(e)))
            .wrap_fn(move |req, srv| {
                // Probes (kubelet, systemd, load balancers) carry no token.
                // The console checks its own session cookie (crate::console).
                let open = matches!(req.path(), "/v1/health" | "/healthz" | "/readyz") || crate::console::handles(req.path());
                if open || tokens.accepts_header(req.headers().get("authorization").and_then(|v| v.to_str().ok())) {
                    Either::Left(srv.call(req))
                } else {
                    let resp = ApiError::new(
                        StatusCode::UNAUTHORIZED,
                        "Unauthorized",
                        "missing or wrong bearer token (send 'Authorization: Bearer TOKEN' with a token from the coordinator's --api-token-file)",
                    )
                    .error_response();
                    let (req, _) = req.into_parts();
                    Either::Right(ready(Ok(ServiceResponse::new(req, resp))))
                }
            })
            .route("/v1/health", web::get().to(health))
            .route("/healthz", web::get().to(live))
            .route("/readyz", web::get().to(readyz))
            .route("/v1/openapi.json", web::get().to(|| async { HttpResponse::Ok().content_type("application/json").body(openapi_json()) }))
            .route("/metrics", web::get().to(metrics))
            .route("/v1/tasks", web::post().to(create_task))
            .route("/v1/tasks", web::get().to(list_tasks))
            .route("/v1/tasks/{name}", web::get().to(describe_task))
            .route("/v1/tasks/{name}", web::patch().to(update_task))
            .route("/v1/tasks/{name}", web::delete().to(delete_task))
            .route("/v1/tasks/{name}/start", web::post().to(start_task))
            .route("/v1/executions", web::get().to(list_executions))
            .route("/v1/executions/{id}", web::get().to(describe_execution))
            .route("/v1/executions/{id}", web::patch().to(update_execution))
            .route("/v1/executions/{id}/cancel", web::post().to(cancel_execution))
            .route("/v1/executions/{id}/report", web::get().to(execution_report))
            .route("/v1/executions/{id}/logs", web::get().to(logs::execution_logs))
            .route("/v1/agents", web::get().to(list_agents))
            .route("/v1/events", web::get().to(list_events))
            .configure(crate::console::configure)
            .default_service(web::to(|req: HttpRequest| async move {
                ApiError::new(StatusCode::NOT_FOUND, "NotFound", format!("no such endpoint: {} {} (see /v1/openapi.json)", req.method(), req.path()))
                    .error_response()
            }))
    })
    .workers(2)
    .disable_signals();
    let server = match tls {
        Some(cfg) => server.bind_rustls_0_23(listen, cfg)?,
        None => server.bind(listen)?,
    };
    Ok(server.run())
}

#[utoipa::path(get, path = "/v1/health", security(()), responses((status = 200, body = Health)))]
async fn health() -> HttpResponse {
    use ferry_worker::build_info::{COMMIT, VERSION};
    HttpResponse::Ok().json(Health { status: "ok".into(), version: VERSION.into(), commit: COMMIT.into() })
}

/// Liveness: the process answers HTTP. Nothing else, so a Store outage never gets a healthy
/// coordinator restarted.
#[utoipa::path(get, path = "/healthz", security(()), responses((status = 200, description = "the process is alive", body = String, content_type = "text/plain")))]
async fn live() -> HttpResponse {
    HttpResponse::Ok().content_type("text/plain").body("ok\n")
}

/// Readiness: the coordination Store answers within 2 s, so the API can serve requests.
#[utoipa::path(get, path = "/readyz", security(()), responses(
    (status = 200, description = "the Store answers", body = String, content_type = "text/plain"),
    (status = 503, description = "the Store does not answer", body = String, content_type = "text/plain")))]
async fn readyz(ctl: Ctl) -> HttpResponse {
    match ctl.store_answers(std::time::Duration::from_secs(2)).await {
        Ok(()) => HttpResponse::Ok().content_type("text/plain").body("ready\n"),
        Err(e) => HttpResponse::ServiceUnavailable().content_type("text/plain").body(format!("not ready: {e}\n")),
    }
}

/// Creates a task. Options left out get DataSync's defaults.
#[utoipa::path(post, path = "/v1/tasks", request_body = Task, responses(
    (status = 201, body = Task), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
    (status = 409, body = ErrorBody), (status = 422, body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn create_task(ctl: Ctl, bytes: web::Bytes) -> ApiResult<HttpResponse> {
    let task = ctl.create_task(body::<Task>(&bytes)?).await?;
    Ok(HttpResponse::Created().json(task))
}

#[utoipa::path(get, path = "/v1/tasks", responses((status = 200, body = [Task]), (status = 401, body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn list_tasks(ctl: Ctl) -> ApiResult<HttpResponse> {
    Ok(HttpResponse::Ok().json(ctl.list_tasks().await?))
}

#[utoipa::path(get, path = "/v1/tasks/{name}", params(("name" = String, Path, description = "Task name")), responses(
    (status = 200, body = Task), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn describe_task(ctl: Ctl, name: web::Path<String>) -> ApiResult<HttpResponse> {
    Ok(HttpResponse::Ok().json(ctl.get_task(&name).await?))
}

/// Changes options, filters, manifest, schedule (also to re-enable one ferry disabled),
/// report configuration or agents. Fields left out stay as they are.
#[utoipa::path(patch, path = "/v1/tasks/{name}", params(("name" = String, Path, description = "Task name")), request_body = TaskUpdate, responses(
    (status = 200, body = Task), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
    (status = 409, body = ErrorBody), (status = 422, body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn update_task(ctl: Ctl, name: web::Path<String>, bytes: web::Bytes) -> ApiResult<HttpResponse> {
    Ok(HttpResponse::Ok().json(ctl.update_task(&name, body::<TaskUpdate>(&bytes)?).await?))
}

#[utoipa::path(delete, path = "/v1/tasks/{name}", params(("name" = String, Path, description = "Task name")), responses(
    (status = 204), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn delete_task(ctl: Ctl, name: web::Path<String>) -> ApiResult<HttpResponse> {
    ctl.delete_task(&name).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// Starts an execution, optionally overriding options and filters for this run. It is
/// QUEUED until TaskQueueing lets it launch.
#[utoipa::path(post, path = "/v1/tasks/{name}/start", params(("name" = String, Path, description = "Task name")), request_body(content = StartOverrides, description = "Overrides for this execution; may be empty ({})"), responses(
    (status = 201, body = ExecutionView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
    (status = 409, body = ErrorBody), (status = 422, body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn start_task(ctl: Ctl, req: HttpRequest, name: web::Path<String>, bytes: web::Bytes) -> ApiResult<HttpResponse> {
    let overrides = if bytes.iter().all(u8::is_ascii_whitespace) { StartOverrides::default() } else { body::<StartOverrides>(&bytes)? };
    // The execution's trace: under the caller's span when the request carries a traceparent.
    let span = tracing::info_span!("api", otel.name = "POST /v1/tasks/{name}/start", task = %name);
    ferry_common::traces::adopt(&span, req.headers().get("traceparent").and_then(|v| v.to_str().ok()));
    let exec = tracing::Instrument::instrument(ctl.start_task(&name, overrides), span).await?;
    Ok(HttpResponse::Created().json(ExecutionView::of(&exec, ferry_common::schedule::now_ms())))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct ExecQuery {
    /// Only executions of this task.
    task: Option<String>,
}

#[utoipa::path(get, path = "/v1/executions", params(ExecQuery), responses(
    (status = 200, body = [ExecutionView]), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn list_executions(ctl: Ctl, q: web::Query<ExecQuery>) -> ApiResult<HttpResponse> {
    let now = ferry_common::schedule::now_ms();
    let list: Vec<ExecutionView> = ctl.list_executions(q.task.as_deref()).await?.iter().map(|e| ExecutionView::of(e, now)).collect();
    Ok(HttpResponse::Ok().json(list))
}

#[utoipa::path(get, path = "/v1/executions/{id}", params(("id" = String, Path, description = "Execution id")), responses(
    (status = 200, body = ExecutionView), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn describe_execution(ctl: Ctl, id: web::Path<String>) -> ApiResult<HttpResponse> {
    let e = ctl.get_execution(&id).await?;
    Ok(HttpResponse::Ok().json(ExecutionView::of(&e, ferry_common::schedule::now_ms())))
}

/// Changes BytesPerSecond while the execution runs; agents apply it within seconds.
#[utoipa::path(patch, path = "/v1/executions/{id}", params(("id" = String, Path, description = "Execution id")), request_body = ExecutionUpdate, responses(
    (status = 200, body = ExecutionView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
    (status = 409, body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn update_execution(ctl: Ctl, id: web::Path<String>, bytes: web::Bytes) -> ApiResult<HttpResponse> {
    let update = body::<ExecutionUpdate>(&bytes)?;
    let e = ctl.set_bytes_per_second(&id, update.bytes_per_second).await?;
    Ok(HttpResponse::Ok().json(ExecutionView::of(&e, ferry_common::schedule::now_ms())))
}

/// Cancels an execution in any phase that has not ended.
#[utoipa::path(post, path = "/v1/executions/{id}/cancel", params(("id" = String, Path, description = "Execution id")), responses(
    (status = 202, body = ExecutionView), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn cancel_execution(ctl: Ctl, id: web::Path<String>) -> ApiResult<HttpResponse> {
    let e = ctl.cancel_execution(&id).await?;
    Ok(HttpResponse::Accepted().json(ExecutionView::of(&e, ferry_common::schedule::now_ms())))
}

/// The execution's task report (JSON Lines), once written.
#[utoipa::path(get, path = "/v1/executions/{id}/report", params(("id" = String, Path, description = "Execution id")), responses(
    (status = 200, description = "JSON Lines: entry lines, then a summary line", content_type = "application/x-ndjson", body = String),
    (status = 401, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn execution_report(ctl: Ctl, id: web::Path<String>) -> ApiResult<HttpResponse> {
    let e = ctl.get_execution(&id).await?;
    let Some(path) = e.task_run.report_path.clone() else {
        let why = match (&e.task_run.report, &e.task_run.report_error) {
            (None, _) => "its task has no TaskReportConfig".to_string(),
            (Some(_), Some(err)) => format!("writing it failed: {err}"),
            _ if e.phase.is_terminal() => "the report is still being written; retry in a moment".to_string(),
            _ => "the execution has not ended".to_string(),
        };
        return Err(ApiError::new(StatusCode::CONFLICT, "Conflict", format!("execution {id} has no report yet: {why}")));
    };
    let body = tokio::fs::read(&path).await.map_err(|err| ApiError::new(StatusCode::NOT_FOUND, "NotFound", format!("report {path} cannot be read: {err}")))?;
    Ok(HttpResponse::Ok().content_type("application/x-ndjson").body(body))
}

#[utoipa::path(get, path = "/v1/agents", responses((status = 200, body = [AgentView]), (status = 401, body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn list_agents(ctl: Ctl) -> ApiResult<HttpResponse> {
    let list: Vec<AgentView> = ctl.list_agent_statuses().await?.iter().map(AgentView::from).collect();
    Ok(HttpResponse::Ok().json(list))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct EventQuery {
    /// Only events after this event id.
    after: Option<String>,
    /// At most this many (default 100, at most 1000).
    limit: Option<u32>,
}

#[utoipa::path(get, path = "/v1/events", params(EventQuery), responses(
    (status = 200, body = [EventView]), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn list_events(ctl: Ctl, q: web::Query<EventQuery>) -> ApiResult<HttpResponse> {
    let limit = q.limit.unwrap_or(100).clamp(1, 1000) as usize;
    let list: Vec<EventView> = ctl.list_events(q.after.as_deref(), limit).await?.into_iter().map(|(id, event)| EventView { id, event }).collect();
    Ok(HttpResponse::Ok().json(list))
}

/// Prometheus text: the process's recorder, with the execution and agent gauges and the
/// counters summed over kept history set from the Store first.
async fn metrics(ctl: Ctl) -> ApiResult<HttpResponse> {
    let execs = ctl.list_executions(None).await?;
    let agents = ctl.list_agents().await?;
    let tasks = ctl.list_tasks().await?;
    Ok(HttpResponse::Ok().content_type(ferry_common::metrics::CONTENT_TYPE).body(crate::control::metrics::render(&execs, &agents, &tasks)))
}
