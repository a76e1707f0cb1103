//! `GET /v1/executions/{id}/logs`: an execution's log lines from every agent, paged, and
//! followed live with a long poll (`follow=true`).

use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse};
use ferry_common::execlog::LineLevel;
use serde::Deserialize;
use utoipa::IntoParams;

use super::{ApiError, ApiResult, Ctl};
use crate::exec_logs::{self, Cursor, LogQuery, ReadError};

/// How long a `follow=true` request waits for lines before it answers with none.
const FOLLOW_WAIT: Duration = Duration::from_secs(20);
const FOLLOW_POLL: Duration = Duration::from_millis(500);

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct LogParams {
    /// Only lines at least this severe.
    level: Option<LineLevel>,
    /// Continue after this cursor: the `Next` of a previous page (default: the beginning).
    after: Option<String>,
    /// At most this many lines (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
    /// Wait up to 20 s for new lines when there are none yet and the execution has not
    /// ended (a long poll); loop on `Next` until `Ended`.
    follow: Option<bool>,
}

/// The execution's log lines from every agent that logged about it (workers and the
/// coordinator), filtered by the execution's LogLevel when they were logged and by `level`
/// here. Lines of different agents are merged by time within a page.
#[utoipa::path(get, path = "/v1/executions/{id}/logs", params(("id" = String, Path, description = "Execution id"), LogParams), responses(
    (status = 200, body = exec_logs::LogPage), (status = 400, body = super::ErrorBody), (status = 401, body = super::ErrorBody),
    (status = 404, body = super::ErrorBody), (status = 503, body = super::ErrorBody)))]
pub(super) async fn execution_logs(ctl: Ctl, id: web::Path<String>, q: web::Query<LogParams>) -> ApiResult<HttpResponse> {
    let limit = q.limit.unwrap_or(100) as usize;
    if !(1..=exec_logs::MAX_LIMIT).contains(&limit) {
        return Err(ApiError::bad_request(format!("limit {limit} is out of range: give 1 to {}", exec_logs::MAX_LIMIT)));
    }
    let after = Cursor::parse(q.after.as_deref().unwrap_or("")).map_err(ApiError::bad_request)?;
    let query = LogQuery { after, level: q.level, limit };
    let store = ctl.store();
    let page = if q.follow.unwrap_or(false) {
        exec_logs::wait_page(store, &id, &query, FOLLOW_WAIT, FOLLOW_POLL).await
    } else {
        exec_logs::read_page(store, &id, &query).await
    };
    match page {
        Ok(p) => Ok(HttpResponse::Ok().json(p)),
        Err(ReadError::NotFound(m)) => Err(ApiError::new(StatusCode::NOT_FOUND, "NotFound", m)),
        Err(ReadError::Store(m)) => {
            Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "Unavailable", format!("{m} (the coordination store is unavailable; retry)")))
        }
    }
}
