//! EtcdStore: the Store on a real etcd v3 cluster, through the etcd-client crate.
//!
//! The mapping is one to one: the Store trait was shaped after etcd's API. Unary calls get a
//! deadline so an outage turns into `Unavailable` (callers back off and retry) instead of a
//! hang; watch streams have none, since they live as long as their caller wants.

use std::path::{Path, PathBuf};
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

/// One unary request `op` (a metric label: get, range, txn, ...), timed and counted.
async fn deadline<T>(op: &'static str, fut: impl std::future::Future<Output = Result<T, ec::Error>>, lease: Option<LeaseId>) -> Result<T, StoreError> {
    let started = std::time::Instant::now();
    // A span in the trace of whatever asked (DEBUG: for traces only).
    let span = if crate::traces::in_trace() { tracing::debug_span!("store", otel.name = op) } else { tracing::Span::none() };
    let fut = tracing::Instrument::instrument(fut, span);
    let r = match tokio::time::timeout(REQUEST_TIMEOUT, fut).await {
        Ok(r) => r.map_err(|e| classify(e, lease)),
        Err(_) => Err(StoreError::Unavailable(format!("no answer within {}s", REQUEST_TIMEOUT.as_secs()))),
    };
    metrics::histogram!(crate::metrics::STORE_REQUEST_DURATION, "operation" => op).record(started.elapsed().as_secs_f64());
    if r.is_err() {
        metrics::counter!(crate::metrics::STORE_ERRORS, "operation" => op).increment(1);
    }
    r
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

/// Why a first connection failed, and whether waiting could help: etcd still starting is worth
/// a retry, a wrong password or an untrusted certificate is not. Transport errors nest several
/// layers deep, so the whole Debug chain is searched.
fn connect_failure(e: &ec::Error, opts: &EtcdConnect) -> (String, bool) {
    let text = format!("{e:?}").to_lowercase();
    let user = opts.user.as_deref().unwrap_or("");
    let cacert = opts.cacert.as_ref().map_or("--etcd-cacert FILE".to_string(), |p| format!("--etcd-cacert {}", p.display()));
    if opts.user.is_none() && ["user name is empty", "invalid auth token", "user name not found", "permission denied"].iter().any(|n| text.contains(n)) {
        return ("etcd requires a login: give --etcd-user USER and --etcd-password-file FILE".to_string(), false);
    }
    let permanent: [(&[&str], String); 9] = [
        (&["authentication failed", "invalid user id or password"], format!("etcd refused user {user}: wrong password? (check --etcd-password-file)")),
        (
            &["user name is empty", "invalid auth token", "user name not found"],
            "etcd requires a login: give --etcd-user USER and --etcd-password-file FILE".to_string(),
        ),
        (&["permission denied"], format!("etcd user {user} may not read ferry's keys (grant it a role with readwrite on the /ferry/ prefix)")),
        (
            &["unknownissuer", "unknown issuer"],
            format!("TLS handshake failed: etcd's certificate is not signed by a CA this host trusts (give etcd's CA with {cacert})"),
        ),
        (
            &["notvalidforname", "not valid for name"],
            "TLS handshake failed: etcd's certificate does not name this endpoint's host (use the host name or address its certificate lists)".to_string(),
        ),
        (
            &["invalidcertificate(expired", "certificateexpired", "certificate expired"],
            "TLS handshake failed: a certificate has expired or is not yet valid (renew it)".to_string(),
        ),
        (
            &["certificaterequired", "certificate required", "badcertificate", "bad certificate", "unknownca", "unknown ca"],
            "TLS handshake failed: etcd refused this client's certificate (give --etcd-cert and --etcd-key signed by a CA etcd trusts)".to_string(),
        ),
        (
            &["invalidcontenttype", "corruptmessage", "wrong version number", "http/2 was not negotiated", "h2notnegotiated"],
            "TLS handshake failed: etcd does not speak TLS there (use http:// with --insecure-etcd, or start etcd with --cert-file and --key-file)".to_string(),
        ),
        (&["invalid uri", "invalid url"], "invalid URL (give one like https://10.0.0.1:2379)".to_string()),
    ];
    for (needles, reason) in permanent {
        if needles.iter().any(|n| text.contains(n)) {
            return (reason, false);
        }
    }
    // An etcd with --client-cert-auth drops a TLS client without a certificate; what reaches
    // the client is a reset or a cancelled request rather than the alert.
    let tls = opts.endpoints.iter().any(|e| e.starts_with("https://"));
    if tls
        && opts.cert.is_none()
        && ["connection reset", "broken pipe", "certificaterequired", "canceled", "connection closed", "unexpectedeof", "unexpected eof"]
            .iter()
            .any(|n| text.contains(n))
    {
        return (
            "etcd closed the TLS connection: does it ask for a client certificate? (give --etcd-cert and --etcd-key signed by a CA etcd trusts)".to_string(),
            false,
        );
    }
    for (needle, reason) in [
        ("connection refused", "connection refused"),
        ("timed out", "timed out"),
        ("timeoutexpired", "timed out"),
        ("no route to host", "no route to host"),
        ("dns error", "cannot resolve the host name"),
        ("connection reset", "connection reset (is etcd serving TLS there? then use https://)"),
        ("broken pipe", "connection reset (is etcd serving TLS there? then use https://)"),
    ] {
        if text.contains(needle) {
            return (reason.to_string(), true);
        }
    }
    let full = e.to_string().replace('\n', " ");
    (full.chars().take(160).collect(), true)
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

/// How to reach etcd: endpoints, TLS files and login. Built once from flags and the config
/// file (`ferry_common::config::EtcdArgs::resolve`); every connect uses the same one.
///
/// `https://` endpoints use TLS: etcd's certificate must chain to `cacert` (or to this host's
/// trust store without it), and `cert`/`key` are presented when etcd asks for a client
/// certificate. A plaintext `http://` endpoint is refused unless it is on loopback or
/// `insecure` is set: etcd holds every task, token and report location in the cluster.
#[derive(Clone, Default)]
pub struct EtcdConnect {
    pub endpoints: Vec<String>,
    pub cacert: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub user: Option<String>,
    pub password_file: Option<PathBuf>,
    /// Allow plaintext endpoints off this host.
    pub insecure: bool,
}

/// Never prints the password; the password file's name is enough to find it.
impl std::fmt::Debug for EtcdConnect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdConnect")
            .field("endpoints", &self.endpoints)
            .field("cacert", &self.cacert)
            .field("cert", &self.cert)
            .field("key", &self.key)
            .field("user", &self.user)
            .field("password_file", &self.password_file)
            .field("insecure", &self.insecure)
            .finish()
    }
}

/// `127.0.0.1`, `::1`, `localhost`: plaintext there never leaves the host.
fn is_loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost") || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// The host of `scheme://host[:port][/...]` (or of a bare `host:port`).
fn endpoint_host(endpoint: &str) -> &str {
    let rest = endpoint.split_once("://").map_or(endpoint, |(_, r)| r);
    let authority = rest.split('/').next().unwrap_or(rest);
    let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
    if let Some(v6) = authority.strip_prefix('[') {
        return v6.split(']').next().unwrap_or(v6);
    }
    match authority.rsplit_once(':') {
        Some((h, port)) if port.chars().all(|c| c.is_ascii_digit()) => h,
        _ => authority,
    }
}

/// Reads a PEM file named by `flag`, checking that it holds what it should.
fn read_pem(flag: &str, path: &Path, marker: &str, what: &str) -> Result<Vec<u8>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {flag} {}: {e} (give a readable PEM file)", path.display()))?;
    if !String::from_utf8_lossy(&bytes).contains(marker) {
        return Err(format!("{flag} {} holds no PEM {what} (give a file with a '-----BEGIN {what}-----' block)", path.display()));
    }
    Ok(bytes)
}

impl EtcdConnect {
    /// Plain endpoints and nothing else: what tests and loopback clusters use.
    pub fn plain(endpoints: &[String]) -> Self {
        EtcdConnect { endpoints: endpoints.to_vec(), ..Default::default() }
    }

    /// Checks the settings without connecting: endpoints, pairs of flags, file contents and
    /// the password file's mode. Every error is one line naming the flag or endpoint.
    pub fn check(&self) -> Result<(), String> {
        self.prepare().map(|_| ())
    }

    fn prepare(&self) -> Result<ec::ConnectOptions, String> {
        if self.endpoints.is_empty() {
            return Err("no etcd endpoint given (use --etcd URL or [etcd] endpoints in the config)".into());
        }
        let mut tls_needed = false;
        for e in &self.endpoints {
            let host = endpoint_host(e);
            if let Some(rest) = e.strip_prefix("https://") {
                if rest.is_empty() || host.is_empty() {
                    return Err(format!("etcd endpoint {e:?} has no host (give one like https://10.0.0.1:2379)"));
                }
                tls_needed = true;
            } else if e.contains("://") && !e.starts_with("http://") {
                return Err(format!("etcd endpoint {e:?} must start with https:// (or http:// on loopback)"));
            } else if !self.insecure && !is_loopback(host) {
                let hostport = e.strip_prefix("http://").unwrap_or(e);
                return Err(format!(
                    "etcd endpoint {e} is plaintext and off this host: use https://{hostport} with --etcd-cacert FILE, or allow plaintext with --insecure-etcd"
                ));
            }
        }
        if !tls_needed {
            if let Some(flag) =
                [("--etcd-cacert", &self.cacert), ("--etcd-cert", &self.cert), ("--etcd-key", &self.key)].iter().find(|(_, v)| v.is_some()).map(|(f, _)| f)
            {
                return Err(format!("{flag} is for TLS, but no etcd endpoint is https:// (use https://HOST:PORT)"));
            }
        }
        let mut opts = ec::ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(3))
            .with_keep_alive(Duration::from_secs(5), Duration::from_secs(5))
            .with_keep_alive_while_idle(true);
        match (&self.user, &self.password_file) {
            (Some(user), Some(file)) => {
                if user.is_empty() {
                    return Err("--etcd-user is empty (give the etcd user name)".into());
                }
                let password = crate::config::read_secret(file).map_err(|e| format!("--etcd-password-file: {e}"))?;
                if password.is_empty() {
                    return Err(format!("--etcd-password-file {} is empty (write the password of etcd user {user} into it)", file.display()));
                }
                // etcd's auth tokens expire (simple tokens after --auth-token-ttl, JWTs after
                // their ttl): a daemon logs in again instead of failing every call from then on.
                opts = opts.with_user(user.clone(), password).with_auto_token_refresh(true);
            }
            (Some(_), None) => return Err("--etcd-user needs --etcd-password-file FILE (mode 0600, the password on one line)".into()),
            (None, Some(_)) => return Err("--etcd-password-file needs --etcd-user USER".into()),
            (None, None) => {}
        }
        if tls_needed {
            // etcd speaks gRPC, which is HTTP/2 whatever ALPN says.
            let mut tls = ec::TlsOptions::new().assume_http2(true);
            tls = match &self.cacert {
                Some(ca) => tls.ca_certificate(ec::Certificate::from_pem(read_pem("--etcd-cacert", ca, "-----BEGIN CERTIFICATE-----", "CERTIFICATE")?)),
                None => tls.with_native_roots(),
            };
            match (&self.cert, &self.key) {
                (Some(cert), Some(key)) => {
                    let cert = read_pem("--etcd-cert", cert, "-----BEGIN CERTIFICATE-----", "CERTIFICATE")?;
                    crate::config::check_secret_mode(key).map_err(|e| format!("--etcd-key: {e}"))?;
                    let key = read_pem("--etcd-key", key, "PRIVATE KEY-----", "PRIVATE KEY")?;
                    tls = tls.identity(ec::Identity::from_pem(cert, key));
                }
                (Some(_), None) => return Err("--etcd-cert needs --etcd-key FILE (the client certificate's private key)".into()),
                (None, Some(_)) => return Err("--etcd-key needs --etcd-cert FILE (the client certificate)".into()),
                (None, None) => {}
            }
            opts = opts.with_tls(tls);
        }
        Ok(opts)
    }
}

impl EtcdStore {
    /// Connects to plaintext endpoints (loopback) and checks that etcd answers.
    pub async fn connect(endpoints: &[String]) -> Result<Self, StoreError> {
        Self::connect_with(&EtcdConnect::plain(endpoints)).await
    }

    /// Connects as `how` says and checks that etcd answers, so a wrong URL, password or
    /// certificate fails at once with a one-line error.
    pub async fn connect_with(how: &EtcdConnect) -> Result<Self, StoreError> {
        Self::connect_once(how).await.map_err(|(e, _)| e)
    }

    /// The error, and whether trying again later could help.
    async fn connect_once(how: &EtcdConnect) -> Result<Self, (StoreError, bool)> {
        let opts = how.prepare().map_err(|e| (StoreError::Unreachable(e), false))?;
        let endpoints = &how.endpoints;
        let fail = |(why, retry): (String, bool)| {
            let msg = if retry {
                format!("cannot reach etcd at {}: {why} (start etcd, or fix --etcd)", endpoints.join(","))
            } else {
                format!("etcd at {}: {why}", endpoints.join(","))
            };
            (StoreError::Unreachable(msg), retry)
        };
        let client = match tokio::time::timeout(REQUEST_TIMEOUT, ec::Client::connect(endpoints, Some(opts))).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => return Err(fail(connect_failure(&e, how))),
            Err(_) => return Err(fail(("timed out".into(), true))),
        };
        let store = EtcdStore { client, endpoints: endpoints.to_vec() };
        let mut probe = store.client.clone();
        match tokio::time::timeout(Duration::from_secs(5), probe.get(b"/ferry/v1/probe".to_vec(), None)).await {
            Ok(Ok(_)) => Ok(store),
            Ok(Err(e)) => Err(fail(connect_failure(&e, how))),
            Err(_) => Err(fail(("no answer within 5 s".into(), true))),
        }
    }

    /// For daemons: like [`EtcdStore::connect_with`], but an unreachable etcd is retried for up
    /// to `patience`. A daemon started (or restarted by its supervisor) while etcd is itself
    /// restarting then waits for it instead of exiting; after `patience` it gives up with the
    /// same one-line error as `connect`. A refused login or certificate fails at once.
    pub async fn connect_patiently(how: &EtcdConnect, patience: Duration) -> Result<Self, StoreError> {
        let deadline = tokio::time::Instant::now() + patience;
        let mut warned = false;
        loop {
            match Self::connect_once(how).await {
                Err((StoreError::Unreachable(why), true)) if tokio::time::Instant::now() < deadline => {
                    if !warned {
                        tracing::warn!(error = %why, patience_s = patience.as_secs(), "etcd is not answering yet; retrying");
                        warned = true;
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                other => return other.map_err(|(e, _)| e),
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
        let resp = deadline("get", c.get(key.to_vec(), None), None).await?;
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
        let resp = deadline("range", c.get(start, Some(o)), None).await?;
        Ok(RangeResult { kvs: resp.kvs().iter().map(convert_kv).collect(), revision: revision_of(resp.header()), more: resp.more() })
    }

    async fn count(&self, prefix: &[u8]) -> Result<usize, StoreError> {
        let mut c = self.client.clone();
        let o = ec::GetOptions::new().with_range(prefix_end(prefix)).with_count_only();
        let resp = deadline("count", c.get(first_key(prefix), Some(o)), None).await?;
        Ok(resp.count() as usize)
    }

    async fn put(&self, key: &[u8], value: Vec<u8>, lease: Option<LeaseId>) -> Result<Revision, StoreError> {
        check_value(key, &value)?;
        let mut c = self.client.clone();
        let o = lease.map(|l| ec::PutOptions::new().with_lease(l));
        let resp = deadline("put", c.put(key.to_vec(), value, o), lease).await?;
        Ok(revision_of(resp.header()))
    }

    async fn delete(&self, key: &[u8]) -> Result<usize, StoreError> {
        let mut c = self.client.clone();
        let resp = deadline("delete", c.delete(key.to_vec(), None), None).await?;
        Ok(resp.deleted() as usize)
    }

    async fn delete_prefix(&self, prefix: &[u8]) -> Result<usize, StoreError> {
        let mut c = self.client.clone();
        let o = ec::DeleteOptions::new().with_range(prefix_end(prefix));
        let resp = deadline("delete_prefix", c.delete(first_key(prefix), Some(o)), None).await?;
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
        let resp = deadline("txn", c.txn(t), lease).await?;
        Ok(TxnResult { succeeded: resp.succeeded(), revision: revision_of(resp.header()) })
    }

    async fn lease_grant(&self, ttl: Duration) -> Result<LeaseId, StoreError> {
        let mut c = self.client.clone();
        let secs = ttl.as_secs_f64().ceil().max(1.0) as i64;
        let resp = deadline("lease_grant", c.lease_grant(secs, None), None).await?;
        Ok(resp.id())
    }

    async fn lease_keep_alive(&self, lease: LeaseId) -> Result<(), StoreError> {
        let mut c = self.client.clone();
        // etcd-client sends one keep-alive and reads its answer before returning; an answer
        // with TTL 0 ("lease not found") means the lease is gone.
        deadline("lease_keep_alive", c.lease_keep_alive(lease), Some(lease)).await.map(|_| ())
    }

    async fn lease_revoke(&self, lease: LeaseId) -> Result<(), StoreError> {
        let mut c = self.client.clone();
        match deadline("lease_revoke", c.lease_revoke(lease), Some(lease)).await {
            Ok(_) | Err(StoreError::LeaseExpired(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn compact(&self, revision: Revision) -> Result<(), StoreError> {
        let mut c = self.client.clone();
        match deadline("compact", c.compact(revision, None), None).await {
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
        let stream = deadline("watch", c.watch(first_key(prefix), Some(o)), None).await?;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn check(endpoints: &[&str], insecure: bool) -> Result<(), String> {
        EtcdConnect { endpoints: endpoints.iter().map(|s| s.to_string()).collect(), insecure, ..Default::default() }.check()
    }

    #[test]
    fn plaintext_is_refused_off_loopback() {
        for ok in ["http://127.0.0.1:2379", "http://localhost:2379", "http://[::1]:2379", "127.0.0.1:2379", "http://127.0.0.2:2379"] {
            assert_eq!(check(&[ok], false), Ok(()), "{ok}");
        }
        let err = check(&["http://10.0.0.1:2379"], false).unwrap_err();
        assert_eq!(err, "etcd endpoint http://10.0.0.1:2379 is plaintext and off this host: use https://10.0.0.1:2379 with --etcd-cacert FILE, or allow plaintext with --insecure-etcd");
        assert!(check(&["http://127.0.0.1:2379", "http://etcd.example:2379"], false).is_err());
        assert_eq!(check(&["http://10.0.0.1:2379"], true), Ok(()));
        assert!(check(&["ftp://10.0.0.1:2379"], true).unwrap_err().contains("https://"));
    }

    #[test]
    fn tls_files_need_https_and_pairs() {
        let mut c = EtcdConnect::plain(&["http://127.0.0.1:2379".into()]);
        c.cacert = Some("/nonexistent/ca.pem".into());
        assert!(c.check().unwrap_err().starts_with("--etcd-cacert is for TLS"));
        c.endpoints = vec!["https://127.0.0.1:2379".into()];
        let err = c.check().unwrap_err();
        assert!(err.starts_with("cannot read --etcd-cacert /nonexistent/ca.pem"), "{err}");
        c.cacert = None;
        c.cert = Some("/x".into());
        assert!(c.check().unwrap_err().contains("--etcd-cert needs --etcd-key"));
        c.cert = None;
        c.user = Some("ferry".into());
        assert!(c.check().unwrap_err().contains("--etcd-user needs --etcd-password-file"));
    }
}
