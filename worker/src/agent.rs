//! The `ferry-worker` agent: joins the cluster under a lease, finds running executions in
//! the Store, and runs movers on each until it ends.
//!
//! - Losing the lease (a long stall, an etcd outage longer than the TTL) means its claims are
//!   gone: the agent stops its movers (their completions would be refused by the fence anyway)
//!   and joins again under a new lease.
//! - On shutdown it stops claiming, lets each mover finish the shard it holds, revokes its
//!   lease and returns.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use actix::Addr;
use ferry_common::codec;
use ferry_common::keys;
use ferry_common::model::{AgentRecord, Execution, WorkerInfo};
use ferry_common::store::{RangeOptions, SharedStore};
use tokio::sync::watch;

use crate::engine::ExecContext;
use crate::node::{MoverActor, Node, StopClaiming};
use crate::transport::link::pki::{self, Admission, Identity};
use crate::transport::link::quic::{self, LinkClient, LinkTuning};
use crate::transport::LinkAgent;
use crate::vitals::{Throughput, HEARTBEAT};

#[derive(Clone, Debug)]
pub struct AgentConfig {
    pub name: String,
    pub movers: usize,
    pub lease_ttl: Duration,
    /// Labels that locations can be bound to.
    pub labels: Vec<String>,
    /// Link settings; `None`: this agent neither sends to nor accepts from other agents.
    pub link: Option<LinkSetup>,
    /// How often the agent looks for new executions.
    pub poll: Duration,
    /// Kept current with the agent's registration, for `/readyz`.
    pub readiness: Arc<crate::health::Readiness>,
}

/// How often an agent looks for new executions by default.
pub const POLL: Duration = Duration::from_millis(100);

#[derive(Clone, Debug)]
pub struct LinkSetup {
    /// Directory with the agent's certificate, key and the cluster CA.
    pub tls_dir: PathBuf,
    /// Enroll with this token if `tls_dir` holds no certificate yet.
    pub enroll_token: Option<String>,
    /// Accept links here (UDP); `None`: send only.
    pub listen: Option<std::net::SocketAddr>,
    /// What other agents dial; defaults to `listen`.
    pub advertise: Option<String>,
    pub tuning: LinkTuning,
}

/// Loads (or first enrolls for) the agent's certificate and starts its link endpoints.
pub async fn start_link(store: &SharedStore, cfg: &AgentConfig) -> Result<(Arc<LinkAgent>, Option<String>), String> {
    let mut agent = LinkAgent { name: cfg.name.clone(), labels: cfg.labels.clone(), ..Default::default() };
    let Some(setup) = &cfg.link else {
        return Ok((Arc::new(agent), None));
    };
    if !Identity::exists(&setup.tls_dir) {
        let Some(token) = &setup.enroll_token else {
            return Err(format!(
                "no certificate in {} (enroll this agent once with --enroll-token-file FILE or FERRY_ENROLL_TOKEN; make a token with 'ferry ca token --name {}')",
                setup.tls_dir.display(),
                cfg.name
            ));
        };
        tracing::info!(agent = %cfg.name, "enrolling with the cluster CA");
        let id = pki::enroll(store, token, &cfg.name, Duration::from_secs(600)).await.map_err(|e| e.to_string())?;
        id.save(&setup.tls_dir).map_err(|e| e.to_string())?;
        tracing::info!(agent = %cfg.name, dir = %setup.tls_dir.display(), "AgentEnrolled");
    }
    let id = Identity::load(&setup.tls_dir).map_err(|e| e.to_string())?;
    agent.labels = certified_labels(&id, cfg, &setup.tls_dir)?;
    let admission = Arc::new(Admission::with_store(store.clone()));
    agent.client = Some(LinkClient::new(&id, setup.tuning.clone()).map_err(|e| e.to_string())?.with_admission(admission.clone()));
    let (mut advertise, mut server) = (None, None);
    if let Some(listen) = setup.listen {
        let endpoint = quic::bind(listen, &id, &setup.tuning).map_err(|e| e.to_string())?;
        let bound = endpoint.local_addr().map_err(|e| format!("link endpoint: {e}"))?;
        advertise = Some(match &setup.advertise {
            Some(a) => a.clone(),
            None if bound.ip().is_unspecified() => {
                return Err(format!("--link-listen {listen} is a wildcard address: give --link-advertise HOST:PORT, the address other agents dial"))
            }
            None => bound.to_string(),
        });
        tracing::info!(listen = %bound, advertise = advertise.as_deref().unwrap_or(""), "LinkListening");
        server = Some(endpoint.clone());
        tokio::spawn(quic::serve(endpoint, agent.registry.clone(), Arc::new(quic::ServeStats::default()), admission));
    }
    let agent = Arc::new(agent);
    tokio::spawn(keep_certificate_fresh(store.clone(), setup.clone(), id, agent.clone(), server));
    Ok((agent, advertise))
}

/// How often an agent looks at its certificate's remaining lifetime.
const RENEWAL_CHECK: Duration = Duration::from_secs(3600);

/// Renews the agent's certificate when a third of its lifetime is left (certificates from
/// `ferry ca serve` live 7 days by default), saves it, and has new connections use it. Open
/// connections keep the certificate they were made with.
async fn keep_certificate_fresh(store: SharedStore, setup: LinkSetup, mut id: Identity, agent: Arc<LinkAgent>, server: Option<quinn::Endpoint>) {
    loop {
        if id.due_for_renewal().unwrap_or(false) {
            match pki::renew(&store, &id, Duration::from_secs(600)).await {
                Ok(renewed) => {
                    let applied = renewed.save(&setup.tls_dir).and_then(|()| {
                        if let Some(client) = &agent.client {
                            client.set_identity(&renewed)?;
                        }
                        if let Some(endpoint) = &server {
                            endpoint.set_server_config(Some(quic::server_config(&renewed, &setup.tuning)?));
                        }
                        Ok(())
                    });
                    match applied {
                        Ok(()) => {
                            tracing::info!(agent = %agent.name, valid_until_unix = renewed.agent().map(|a| a.not_after_unix).unwrap_or(0), "AgentCertificateRenewed");
                            id = renewed;
                        }
                        Err(e) => tracing::error!(agent = %agent.name, error = %e, "cannot use the renewed certificate; keeping the current one"),
                    }
                }
                Err(e) => tracing::warn!(agent = %agent.name, error = %e, "certificate renewal failed; retrying within the hour"),
            }
        }
        tokio::time::sleep(RENEWAL_CHECK).await;
    }
}

/// The labels an agent with a certificate works under: those the CA put in it. Labels given on
/// the command line must be among them (a certificate is what other agents check).
fn certified_labels(id: &Identity, cfg: &AgentConfig, dir: &std::path::Path) -> Result<Vec<String>, String> {
    let cert = id.agent().map_err(|e| e.to_string())?;
    if cert.name != cfg.name {
        return Err(format!(
            "the certificate in {} is for agent {:?}, not {:?}: start with --name {}, or give this agent its own --tls-dir",
            dir.display(),
            cert.name,
            cfg.name,
            cert.name
        ));
    }
    if let Some(extra) = cfg.labels.iter().find(|l| !cert.labels.contains(l)) {
        return Err(format!(
            "label {extra:?} is not in this agent's certificate (it carries {:?}): drop it, or revoke the agent and enroll it with a token made with --labels",
            cert.labels
        ));
    }
    Ok(cert.labels)
}

async fn stop_all(serving: &mut HashMap<String, Vec<Addr<MoverActor>>>) {
    for movers in serving.values() {
        for m in movers {
            m.do_send(StopClaiming);
        }
    }
    while serving.values().flatten().any(|m| m.connected()) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    serving.clear();
}

/// Why an execution could not be joined.
enum JoinError {
    /// Its locations are bound to other agents.
    NotOurs,
    /// The Store did not answer: try again next round.
    Store(String),
    /// This agent cannot take part (cannot reach the locations, bad record): stop trying.
    Unusable(String),
}

/// Starts movers for an execution this agent has not joined yet.
async fn join_execution(
    store: &SharedStore,
    node: &Node,
    exec_id: &str,
    cfg: &AgentConfig,
    link: &Arc<LinkAgent>,
) -> Result<Option<Vec<Addr<MoverActor>>>, JoinError> {
    let meta_key = keys::ExecKeys::new(exec_id).meta();
    let Some(kv) = store.get(&meta_key).await.map_err(|e| JoinError::Store(e.to_string()))? else {
        return Ok(None);
    };
    let exec: Execution = codec::decode(&kv.value).map_err(|e| JoinError::Unusable(e.to_string()))?;
    if exec.phase.is_terminal() {
        return Ok(None);
    }
    let reach = exec.spec.link.reach(&cfg.name, &link.labels);
    if !reach.source && !reach.destination {
        return Err(JoinError::NotOurs);
    }
    if reach.source && !reach.destination && link.client.is_none() {
        return Err(JoinError::Unusable(
            "this agent reads the source but has no link certificate to send to the destination's agents (start it with --tls-dir)".into(),
        ));
    }
    let spec = exec.spec.clone();
    let ctx = tokio::task::spawn_blocking(move || ExecContext::open_for(spec, reach))
        .await
        .map_err(|e| JoinError::Unusable(e.to_string()))?
        .map_err(|e| JoinError::Unusable(e.to_string()))?;
    tracing::info!(execution = exec_id, source = %exec.spec.source, destination = %exec.spec.destination, reads = reach.source, writes = reach.destination, "ExecutionJoined");
    if !reach.destination {
        let names = crate::mover::LinkNames { link: link.clone(), store: store.clone(), spec: ctx.spec.clone() };
        let _ = ctx.dest_names.set(Arc::new(names));
    }
    let ctx = Arc::new(ctx);
    if reach.destination {
        link.registry.insert(ctx.clone());
    }
    Ok(Some(node.start_movers(ctx, cfg.movers, link.clone())))
}

/// The agent's [`AgentRecord`] as of now; `rate` gives the throughput since the last one.
fn agent_record(info: &WorkerInfo, link: &LinkAgent, rate: &mut Throughput) -> AgentRecord {
    let now = ferry_common::schedule::now_ms();
    let total = link.vitals.bytes_total();
    AgentRecord {
        info: info.clone(),
        heartbeat_unix_ms: now,
        bytes_per_second: rate.sample(now, total),
        bytes_total: total,
        recent_errors: link.vitals.recent_errors(),
        link_peers: link.peers(),
    }
}

/// Writes the agent's record. A Store that does not answer soon only costs one heartbeat.
async fn put_record(store: &SharedStore, record: &AgentRecord) {
    let Ok(value) = codec::encode(record) else {
        return;
    };
    match tokio::time::timeout(Duration::from_secs(5), store.put(&keys::agent_record(&record.info.name), value, None)).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => tracing::debug!(error = %e, "heartbeat record not written; next heartbeat retries"),
        Err(_) => tracing::debug!("heartbeat record not written within 5 s; next heartbeat retries"),
    }
}

/// The task that rewrites the agent's record; it stops when this is dropped (the
/// registration ended, or the agent loop itself was dropped).
struct Heartbeat(tokio::task::JoinHandle<()>);

impl Drop for Heartbeat {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Rewrites the agent's record every [`HEARTBEAT`] while the returned value lives.
fn spawn_heartbeat(store: SharedStore, info: WorkerInfo, link: Arc<LinkAgent>) -> Heartbeat {
    Heartbeat(tokio::spawn(async move {
        let mut rate = Throughput::default();
        loop {
            put_record(&store, &agent_record(&info, &link, &mut rate)).await;
            tokio::time::sleep(HEARTBEAT).await;
        }
    }))
}

/// Runs until `shutdown` turns true. Must run inside an actix System.
pub async fn run_agent(store: SharedStore, cfg: AgentConfig, link: Arc<LinkAgent>, link_addr: Option<String>, mut shutdown: watch::Receiver<bool>) {
    let mut backoff = Duration::from_millis(200);
    'join: loop {
        if *shutdown.borrow() {
            return;
        }
        let node = match Node::join(store.clone(), &cfg.name, cfg.lease_ttl, cfg.movers, &link.labels, link_addr.clone()).await {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(error = %e, "cannot register with the coordination store; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = shutdown.changed() => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        backoff = Duration::from_millis(200);
        cfg.readiness.registered(node.clock());
        tracing::info!(worker = %cfg.name, lease = node.lease, "WorkerRegistered");
        let heartbeat = spawn_heartbeat(store.clone(), node.info.clone(), link.clone());
        let mut serving: HashMap<String, Vec<Addr<MoverActor>>> = HashMap::new();
        let mut unusable: HashSet<String> = HashSet::new();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(cfg.poll) => {}
                _ = shutdown.changed() => {}
            }
            if *shutdown.borrow() {
                tracing::info!("stopping: finishing held shards, then leaving");
                cfg.readiness.unregistered();
                stop_all(&mut serving).await;
                drop(heartbeat);
                // The last word: when it left, and what it had moved.
                let mut last = agent_record(&node.info, &link, &mut Throughput::default());
                last.link_peers.clear();
                put_record(&store, &last).await;
                node.leave().await;
                return;
            }
            if !node.is_alive() {
                tracing::warn!("lease lost; stopping movers and joining again");
                cfg.readiness.unregistered();
                drop(heartbeat);
                stop_all(&mut serving).await;
                continue 'join;
            }
            serving.retain(|id, movers| {
                let live = movers.iter().any(|m| m.connected());
                if !live {
                    link.registry.remove(id);
                }
                live
            });
            let active = match store.range(&keys::active_prefix(), RangeOptions { keys_only: true, ..Default::default() }).await {
                Ok(r) => r.kvs,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot list executions; retrying");
                    continue;
                }
            };
            for kv in active {
                let id = keys::exec_of(&kv.key);
                if serving.contains_key(&id) || unusable.contains(&id) {
                    continue;
                }
                match join_execution(&store, &node, &id, &cfg, &link).await {
                    Ok(Some(movers)) => {
                        serving.insert(id, movers);
                    }
                    Ok(None) => {}
                    Err(JoinError::Store(e)) => {
                        tracing::warn!(execution = %id, error = %e, "cannot read execution; retrying")
                    }
                    Err(JoinError::NotOurs) => {
                        tracing::info!(execution = %id, "locations bound to other agents; not joining");
                        unusable.insert(id);
                    }
                    Err(JoinError::Unusable(e)) => {
                        tracing::error!(execution = %id, error = %e, "cannot take part in execution");
                        // Recorded so the coordinator can end an execution no agent can run
                        // instead of leaving it launching for ever.
                        let key = keys::ExecKeys::new(&id).agent_error(&cfg.name);
                        if let Err(err) = store.put(&key, e.into_bytes(), None).await {
                            tracing::warn!(execution = %id, error = %err, "cannot record why this agent cannot take part");
                        }
                        unusable.insert(id);
                    }
                }
            }
        }
    }
}
