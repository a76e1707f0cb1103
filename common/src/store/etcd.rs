//! EtcdStore: the Store on a real etcd v3 cluster, through the etcd-client crate.
//!
//! The mapping is one to one: the Store trait was shaped after etcd's API. Unary calls get a
//! deadline so an outage turns into `Unavailable` (callers back off and retry) instead of a
//! hang; watch streams have none, since they live as long as their caller wants.

use std::time::Duration;

use async_trait::async_trait;
use etcd_client as ec;

use super::*;

/// Deadline for one unary request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone)]
pub struct EtcdStore {
    client: ec::Client,
    endpoints: Vec<String>,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore").field("endpoints", &self.endpoints).finish()
    }
}

/// One function classifies every etcd error.
fn classify(err: ec::Error, lease: Option<LeaseId>) -> StoreError {
    match &err {
        ec::Error::GRpcStatus(status) => {
            let msg = status.message();
            if msg.contains("lease not found") {
                return StoreError::LeaseExpired(lease.unwrap_or(0));
            }
            if msg.contains("compacted") {
                return StoreError::Compacted { requested: 0, oldest: 0 };
            }
            if msg.contains("too large") {
                return StoreError::ValueTooLarge { key: String::new(), len: 0, max: MAX_VALUE_BYTES };
            }
            use grpc_code::*;
            match i32::from(status.code()) {
                UNAVAILABLE | DEADLINE_EXCEEDED | ABORTED | CANCELLED | UNKNOWN | INTERNAL | RESOURCE_EXHAUSTED => StoreError::Unavailable(msg.to_string()),
                _ => StoreError::Other(msg.to_string()),
            }
        }
        ec::Error::LeaseKeepAliveError(m) if m.contains("not found") => StoreError::LeaseExpired(lease.unwrap_or(0)),
        ec::Error::TransportError(_) | ec::Error::IoError(_) | ec::Error::LeaseKeepAliveError(_) | ec::Error::WatchError(_) => {
            StoreError::Unavailable(err.to_string())
        }
        _ => StoreError::Other(err.to_string()),
    }
}

/// gRPC status codes by number (grpc/doc/statuscodes.md), so tonic need not be a direct
/// dependency.
mod grpc_code {
    pub const CANCELLED: i32 = 1;
    pub const UNKNOWN: i32 = 2;
    pub const DEADLINE_EXCEEDED: i32 = 4;
    pub const RESOURCE_EXHAUSTED: i32 = 8;
    pub const ABORTED: i32 = 10;
    pub const INTERNAL: i32 = 13;
    pub const UNAVAILABLE: i32 = 14;
}

async fn deadline<T>(fut: impl std::future::Future<Output = Result<T, ec::Error>>, lease: Option<LeaseId>) -> Result<T, StoreError> {
    match tokio::time::timeout(REQUEST_TIMEOUT, fut).await {
        Ok(r) => r.map_err(|e| classify(e, lease)),
        Err(_) => Err(StoreError::Unavailable(format!("no answer within {}s", REQUEST_TIMEOUT.as_secs()))),
    }
}

fn convert_kv(kv: &ec::KeyValue) -> KeyValue {
    KeyValue {
        key: kv.key().to_vec(),
        value: kv.value().to_vec(),
        create_revision: kv.create_revision(),
        mod_revision: kv.mod_revision(),
        version: kv.version(),
        lease: kv.lease(),
    }
}

fn revision_of(header: Option<&ec::ResponseHeader>) -> Revision {
    header.map_or(0, |h| h.revision())
}

/// The useful part of a connection error: transport errors nest several layers deep.
fn short_reason(e: &ec::Error) -> String {
    let text = format!("{e:?}").to_lowercase();
    for (needle, reason) in [
        ("connection refused", "connection refused"),
        ("timed out", "timed out"),
        ("no route to host", "no route to host"),
        ("dns error", "cannot resolve the host name"),
        ("invalid uri", "invalid URL"),
        ("authentication failed", "authentication failed (check the user and password file)"),
        ("invalid auth token", "authentication failed (check the user and password file)"),
    ] {
        if text.contains(needle) {
            return reason.to_string();
        }
    }
    let full = e.to_string();
    full.chars().take(120).collect()
}

/// etcd refuses an empty key; the empty prefix starts at "\0", the smallest key.
fn first_key(prefix: &[u8]) -> Vec<u8> {
    if prefix.is_empty() {
        vec![0]
    } else {
        prefix.to_vec()
    }
}

fn check_value(key: &[u8], value: &[u8]) -> Result<(), StoreError> {
    if value.len() > MAX_VALUE_BYTES {
        return Err(StoreError::ValueTooLarge { key: String::from_utf8_lossy(key).into_owned(), len: value.len(), max: MAX_VALUE_BYTES });
    }
    Ok(())
}

impl EtcdStore {
    /// Connects and checks that etcd answers, so a wrong URL fails at once with a clear error.
    pub async fn connect(endpoints: &[String]) -> Result<Self, StoreError> {
        Self::connect_with(endpoints, None).await
    }

    /// Like [`EtcdStore::connect`], authenticating as `(user, password)` when given.
    pub async fn connect_with(endpoints: &[String], credentials: Option<(String, String)>) -> Result<Self, StoreError> {
        if endpoints.is_empty() {
            return Err(StoreError::Other("no etcd endpoint given (use --etcd URL or [etcd] endpoints in the config)".into()));
        }
        let mut opts = ec::ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(3))
            .with_keep_alive(Duration::from_secs(5), Duration::from_secs(5))
            .with_keep_alive_while_idle(true);
        if let Some((user, password)) = credentials {
            opts = opts.with_user(user, password);
        }
        let unreachable = |why: String| StoreError::Unreachable(format!("cannot reach etcd at {}: {why}", endpoints.join(",")));
        let client = match tokio::time::timeout(REQUEST_TIMEOUT, ec::Client::connect(endpoints, Some(opts))).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => return Err(unreachable(short_reason(&e))),
            Err(_) => return Err(unreachable("timed out".into())),
        };
        let store = EtcdStore { client, endpoints: endpoints.to_vec() };
        let mut probe = store.client.clone();
        match tokio::time::timeout(Duration::from_secs(5), probe.get(b"/ferry/v1/probe".to_vec(), None)).await {
            Ok(Ok(_)) => Ok(store),
            Ok(Err(e)) => Err(unreachable(short_reason(&e))),
            Err(_) => Err(unreachable("no answer within 5 s".into())),
        }
    }

    /// For daemons: like [`EtcdStore::connect_with`], but an unreachable etcd is retried for up
    /// to `patience`. A daemon started (or restarted by its supervisor) while etcd is itself
    /// restarting then waits for it instead of exiting; after `patience` it gives up with the
    /// same one-line error as `connect`.
    pub async fn connect_patiently(endpoints: &[String], credentials: Option<(String, String)>, patience: Duration) -> Result<Self, StoreError> {
        let deadline = tokio::time::Instant::now() + patience;
        let mut warned = false;
        loop {
            match Self::connect_with(endpoints, credentials.clone()).await {
                Err(StoreError::Unreachable(why)) if tokio::time::Instant::now() < deadline => {
                    if !warned {
                        tracing::warn!(error = %why, patience_s = patience.as_secs(), "etcd is not answering yet; retrying");
                        warned = true;
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                other => return other,
            }
        }
    }

    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    fn to_compare(c: Compare) -> ec::Compare {
        let op = match c.op {
            CompareOp::Equal => ec::CompareOp::Equal,
            CompareOp::NotEqual => ec::CompareOp::NotEqual,
            CompareOp::Greater => ec::CompareOp::Greater,
            CompareOp::Less => ec::CompareOp::Less,
        };
        match c.target {
            CompareTarget::ModRevision(r) => ec::Compare::mod_revision(c.key, op, r),
            CompareTarget::CreateRevision(r) => ec::Compare::create_revision(c.key, op, r),
            CompareTarget::Version(v) => ec::Compare::version(c.key, op, v),
            CompareTarget::Value(v) => ec::Compare::value(c.key, op, v),
            CompareTarget::Lease(l) => ec::Compare::lease(c.key, op, l),
        }
    }

    fn to_op(op: TxnOp) -> ec::TxnOp {
        match op {
            TxnOp::Put { key, value, lease } => ec::TxnOp::put(key, value, lease.map(|l| ec::PutOptions::new().with_lease(l))),
            TxnOp::Delete { key } => ec::TxnOp::delete(key, None),
            TxnOp::DeletePrefix { prefix } => ec::TxnOp::delete(first_key(&prefix), Some(ec::DeleteOptions::new().with_range(prefix_end(&prefix)))),
        }
    }
}

#[async_trait]
impl Store for EtcdStore {
    async fn get(&self, key: &[u8]) -> Result<Option<KeyValue>, StoreError> {
        let mut c = self.client.clone();
        let resp = deadline(c.get(key.to_vec(), None), None).await?;
        Ok(resp.kvs().first().map(convert_kv))
    }

    async fn range(&self, prefix: &[u8], opts: RangeOptions) -> Result<RangeResult, StoreError> {
        let mut c = self.client.clone();
        let start = match &opts.start_after {
            Some(after) if after.as_slice() >= prefix => {
                let mut s = after.clone();
                s.push(0);
                s
            }
            _ => first_key(prefix),
        };
        let mut o = ec::GetOptions::new().with_range(prefix_end(prefix));
        if opts.limit > 0 {
            o = o.with_limit(opts.limit as i64);
        }
        if opts.keys_only {
            o = o.with_keys_only();
        }
        let resp = deadline(c.get(start, Some(o)), None).await?;
        Ok(RangeResult { kvs: resp.kvs().iter().map(convert_kv).collect(), revision: revision_of(resp.header()), more: resp.more() })
    }

    async fn count(&self, prefix: &[u8]) -> Result<usize, StoreError> {
        let mut c = self.client.clone();
        let o = ec::GetOptions::new().with_range(prefix_end(prefix)).with_count_only();
        let resp = deadline(c.get(first_key(prefix), Some(o)), None).await?;
        Ok(resp.count() as usize)
    }

    async fn put(&self, key: &[u8], value: Vec<u8>, lease: Option<LeaseId>) -> Result<Revision, StoreError> {
        check_value(key, &value)?;
        let mut c = self.client.clone();
        let o = lease.map(|l| ec::PutOptions::new().with_lease(l));
        let resp = deadline(c.put(key.to_vec(), value, o), lease).await?;
        Ok(revision_of(resp.header()))
    }

    async fn delete(&self, key: &[u8]) -> Result<usize, StoreError> {
        let mut c = self.client.clone();
        let resp = deadline(c.delete(key.to_vec(), None), None).await?;
        Ok(resp.deleted() as usize)
    }

    async fn delete_prefix(&self, prefix: &[u8]) -> Result<usize, StoreError> {
        let mut c = self.client.clone();
        let o = ec::DeleteOptions::new().with_range(prefix_end(prefix));
        let resp = deadline(c.delete(first_key(prefix), Some(o)), None).await?;
        Ok(resp.deleted() as usize)
    }

    async fn txn(&self, txn: Txn) -> Result<TxnResult, StoreError> {
        let mut lease = None;
        for op in txn.success.iter().chain(txn.failure.iter()) {
            if let TxnOp::Put { key, value, lease: l } = op {
                check_value(key, value)?;
                lease = lease.or(*l);
            }
        }
        let t = ec::Txn::new()
            .when(txn.compares.into_iter().map(Self::to_compare).collect::<Vec<_>>())
            .and_then(txn.success.into_iter().map(Self::to_op).collect::<Vec<_>>())
            .or_else(txn.failure.into_iter().map(Self::to_op).collect::<Vec<_>>());
        let mut c = self.client.clone();
        let resp = deadline(c.txn(t), lease).await?;
        Ok(TxnResult { succeeded: resp.succeeded(), revision: revision_of(resp.header()) })
    }

    async fn lease_grant(&self, ttl: Duration) -> Result<LeaseId, StoreError> {
        let mut c = self.client.clone();
        let secs = ttl.as_secs_f64().ceil().max(1.0) as i64;
        let resp = deadline(c.lease_grant(secs, None), None).await?;
        Ok(resp.id())
    }

    async fn lease_keep_alive(&self, lease: LeaseId) -> Result<(), StoreError> {
        let mut c = self.client.clone();
        // etcd-client sends one keep-alive and reads its answer before returning; an answer
        // with TTL 0 ("lease not found") means the lease is gone.
        deadline(c.lease_keep_alive(lease), Some(lease)).await.map(|_| ())
    }

    async fn lease_revoke(&self, lease: LeaseId) -> Result<(), StoreError> {
        let mut c = self.client.clone();
        match deadline(c.lease_revoke(lease), Some(lease)).await {
            Ok(_) | Err(StoreError::LeaseExpired(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn compact(&self, revision: Revision) -> Result<(), StoreError> {
        let mut c = self.client.clone();
        match deadline(c.compact(revision, None), None).await {
            // Already compacted at or past it: nothing to do.
            Ok(_) | Err(StoreError::Compacted { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn watch(&self, prefix: &[u8], from_revision: Revision) -> Result<WatchStream, StoreError> {
        let mut c = self.client.clone();
        let mut o = ec::WatchOptions::new().with_range(prefix_end(prefix));
        if from_revision > 0 {
            o = o.with_start_revision(from_revision);
        }
        let stream = deadline(c.watch(first_key(prefix), Some(o)), None).await?;
        let events = futures::stream::unfold((stream, std::collections::VecDeque::new(), false), move |(mut s, mut pending, done)| async move {
            loop {
                if let Some(ev) = pending.pop_front() {
                    return Some((Ok(ev), (s, pending, done)));
                }
                if done {
                    return None;
                }
                match s.message().await {
                    Ok(Some(resp)) => {
                        if resp.canceled() {
                            let err = if resp.compact_revision() > 0 {
                                StoreError::Compacted { requested: from_revision, oldest: resp.compact_revision() }
                            } else {
                                StoreError::Unavailable(format!("watch cancelled: {}", resp.cancel_reason()))
                            };
                            return Some((Err(err), (s, pending, true)));
                        }
                        for e in resp.events() {
                            let Some(kv) = e.kv() else { continue };
                            let kind = match e.event_type() {
                                ec::EventType::Put => EventKind::Put,
                                ec::EventType::Delete => EventKind::Delete,
                            };
                            pending.push_back(WatchEvent { kind, kv: convert_kv(kv) });
                        }
                    }
                    Ok(None) => return None,
                    Err(e) => return Some((Err(classify(e, None)), (s, pending, true))),
                }
            }
        });
        Ok(Box::pin(events))
    }
}
