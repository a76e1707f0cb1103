//! The agent's probe endpoints, for kubelet, systemd and load balancers.
//!
//! - `GET /healthz`: the process answers. A Store outage does not fail it: restarting an agent
//!   that is waiting for etcd would only drop the shards it holds.
//! - `GET /readyz`: registered, with a lease the Store confirmed within its TTL. While etcd is
//!   down the lease cannot be confirmed, so the agent reports not ready (503, with the reason).
//!
//! - `GET /metrics`: the process's Prometheus metrics ([`ferry_common::metrics`]), for a
//!   bearer token from `--metrics-token-file`. Without a token file it answers 403 and says
//!   how to configure one; a missing or wrong token gets 401.
//!
//! Plain HTTP. The probes need no token: their answers carry no data beyond "ok" and a reason.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};

use ferry_common::tokens::Tokens;

use crate::lease::LeaseClock;

/// What `/readyz` answers from: the lease of the agent's current registration, if any.
#[derive(Default)]
pub struct Readiness {
    lease: Mutex<Option<Arc<LeaseClock>>>,
}

impl std::fmt::Debug for Readiness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Readiness").field("ready", &self.check().is_ok()).finish()
    }
}

impl Readiness {
    /// The agent registered under the lease `clock` tracks.
    pub fn registered(&self, clock: Arc<LeaseClock>) {
        *self.lease.lock().unwrap_or_else(|e| e.into_inner()) = Some(clock);
    }

    /// The agent left, or lost its lease and is registering again.
    pub fn unregistered(&self) {
        *self.lease.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// `Ok` when ready; otherwise why not, in words for an operator.
    pub fn check(&self) -> Result<(), &'static str> {
        match &*self.lease.lock().unwrap_or_else(|e| e.into_inner()) {
            None => Err("not registered with the coordination Store (is etcd reachable? see the agent's log)"),
            Some(clock) if clock.is_lost() => Err("the agent's lease expired; it is registering again"),
            Some(clock) if !clock.is_valid_now() => Err("the coordination Store has not confirmed the agent's lease within its TTL (is etcd reachable?)"),
            Some(_) => Ok(()),
        }
    }
}

/// Answers `/metrics`: the recorder's text for a listed bearer token.
fn metrics(req: &HttpRequest, tokens: Option<&Tokens>) -> HttpResponse {
    let Some(tokens) = tokens else {
        return HttpResponse::Forbidden()
            .content_type("text/plain")
            .body("metrics are off: this agent has no metrics token (start it with --metrics-token-file FILE or [worker] metrics_token_file)\n");
    };
    if !tokens.accepts_header(req.headers().get("authorization").and_then(|v| v.to_str().ok())) {
        return HttpResponse::Unauthorized()
            .insert_header(("WWW-Authenticate", "Bearer"))
            .content_type("text/plain")
            .body("missing or wrong bearer token (send 'Authorization: Bearer TOKEN' with a token from the agent's --metrics-token-file)\n");
    }
    match ferry_common::metrics::render() {
        Some(text) => HttpResponse::Ok().content_type(ferry_common::metrics::CONTENT_TYPE).body(text),
        None => HttpResponse::ServiceUnavailable().content_type("text/plain").body("the metrics recorder is not installed in this process\n"),
    }
}

/// Serves `/healthz`, `/readyz` and `/metrics` on `listen`. Runs on the caller's actix system.
/// `tokens`: who may read `/metrics` (none: nobody).
pub fn serve(listen: SocketAddr, readiness: Arc<Readiness>, tokens: Option<Tokens>) -> std::io::Result<actix_web::dev::Server> {
    let data = web::Data::from(readiness);
    let tokens = web::Data::new(tokens);
    let server = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .app_data(tokens.clone())
            .route("/metrics", web::get().to(|req: HttpRequest, t: web::Data<Option<Tokens>>| async move { metrics(&req, t.get_ref().as_ref()) }))
            .route("/healthz", web::get().to(|| async { HttpResponse::Ok().content_type("text/plain").body("ok\n") }))
            .route(
                "/readyz",
                web::get().to(|r: web::Data<Readiness>| async move {
                    match r.check() {
                        Ok(()) => HttpResponse::Ok().content_type("text/plain").body("ready\n"),
                        Err(why) => HttpResponse::ServiceUnavailable().content_type("text/plain").body(format!("not ready: {why}\n")),
                    }
                }),
            )
            .default_service(web::to(|| async {
                HttpResponse::NotFound().content_type("text/plain").body("not found: this port serves /healthz, /readyz and /metrics\n")
            }))
    })
    .workers(1)
    .disable_signals()
    .bind(listen)
    .map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen on {listen} for /healthz, /readyz and /metrics (--metrics-listen): {e}")))?;
    Ok(server.run())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn ready_only_with_a_lease_the_store_confirmed() {
        let r = Readiness::default();
        assert!(r.check().unwrap_err().contains("not registered"));
        let clock = Arc::new(LeaseClock::new(Duration::from_secs(10), Instant::now()));
        r.registered(clock.clone());
        assert_eq!(r.check(), Ok(()));
        // Unconfirmed for longer than the TTL (etcd down): not ready.
        let stale = Arc::new(LeaseClock::new(Duration::from_secs(10), Instant::now() - Duration::from_secs(60)));
        r.registered(stale);
        assert!(r.check().unwrap_err().contains("not confirmed"));
        clock.mark_lost();
        r.registered(clock);
        assert!(r.check().unwrap_err().contains("expired"));
        r.unregistered();
        assert!(r.check().is_err());
    }
}
