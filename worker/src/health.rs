//! The agent's probe endpoints, for kubelet, systemd and load balancers.
//!
//! - `GET /healthz`: the process answers. A Store outage does not fail it: restarting an agent
//!   that is waiting for etcd would only drop the shards it holds.
//! - `GET /readyz`: registered, with a lease the Store confirmed within its TTL. While etcd is
//!   down the lease cannot be confirmed, so the agent reports not ready (503, with the reason).
//!
//! Plain HTTP without a token: the answers carry no data beyond "ok" and a reason.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use actix_web::{web, App, HttpResponse, HttpServer};

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

/// Serves `/healthz` and `/readyz` on `listen`. Runs on the caller's actix system.
pub fn serve(listen: SocketAddr, readiness: Arc<Readiness>) -> std::io::Result<actix_web::dev::Server> {
    let data = web::Data::from(readiness);
    let server = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
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
                HttpResponse::NotFound().content_type("text/plain").body("not found: this port serves /healthz and /readyz\n")
            }))
    })
    .workers(1)
    .disable_signals()
    .bind(listen)
    .map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen on {listen} for /healthz and /readyz: {e}")))?;
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
