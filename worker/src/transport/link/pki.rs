//! The cluster CA, agent certificates, and enrollment with a single-use activation token.
//!
//! - `ferry ca init` writes `ca.crt` and `ca.key` (mode 0600) into the CA directory.
//! - `ferry ca token` stores a ticket `/ferry/v1/enroll/{id}` holding the SHA-256 of a random
//!   secret, under an etcd lease of the token's lifetime, and prints `{id}.{secret}`.
//! - A worker started with `--enroll-token` makes its own key (it never leaves the host),
//!   puts a CSR into the ticket together with the secret, in one transaction that only
//!   succeeds while no CSR is there: a token is used once.
//! - The CA holder (`ferry ca serve`) signs tickets whose secret matches and that have not
//!   expired, writing the certificate back; the worker saves it with the CA certificate.
//!
//! Certificates carry the agent's name as their DNS name and are valid for client and server
//! authentication. Agents accept only peers with a certificate from the same CA, over TLS 1.3.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ferry_common::codec;
use ferry_common::store::{Compare, SharedStore, Txn, TxnOp};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde::{Deserialize, Serialize};
use sha2::Digest;

pub const CA_CERT: &str = "ca.crt";
pub const CA_KEY: &str = "ca.key";
pub const AGENT_CERT: &str = "agent.crt";
pub const AGENT_KEY: &str = "agent.key";
/// ALPN protocol of the link: a peer speaking anything else is refused during the handshake.
pub const ALPN: &[u8] = b"ferry-link/1";

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct PkiError(pub String);

fn fail(msg: impl Into<String>) -> PkiError {
    PkiError(msg.into())
}

/// Writes a private file with mode 0600 from the start (never briefly world-readable).
fn write_private(path: &Path, bytes: &[u8], replace: bool) -> Result<(), PkiError> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).mode(0o600);
    if replace {
        opts.create(true).truncate(true);
    } else {
        opts.create_new(true);
    }
    let mut f = opts.open(path).map_err(|e| fail(format!("cannot create {}: {e}", path.display())))?;
    f.set_permissions(std::fs::Permissions::from_mode(0o600)).map_err(|e| fail(format!("cannot restrict {}: {e}", path.display())))?;
    f.write_all(bytes).and_then(|_| f.sync_all()).map_err(|e| fail(format!("cannot write {}: {e}", path.display())))
}

/// Reads a private key file, refusing one that others can read.
fn read_private(path: &Path) -> Result<String, PkiError> {
    let meta = std::fs::metadata(path).map_err(|e| fail(format!("cannot read key file {}: {e}", path.display())))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(fail(format!("key file {} is readable by others (mode {mode:03o}); run 'chmod 600 {}'", path.display(), path.display())));
    }
    std::fs::read_to_string(path).map_err(|e| fail(format!("cannot read key file {}: {e}", path.display())))
}

fn read_public(path: &Path, what: &str) -> Result<String, PkiError> {
    std::fs::read_to_string(path).map_err(|e| fail(format!("cannot read {what} {}: {e}", path.display())))
}

/// Agent names become certificate DNS names, so they must be valid host names.
pub fn check_agent_name(name: &str) -> Result<(), PkiError> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && name
            .split('.')
            .all(|l| !l.is_empty() && l.len() <= 63 && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') && !l.starts_with('-') && !l.ends_with('-'))
        && matches!(ServerName::try_from(name.to_string()), Ok(ServerName::DnsName(_)));
    if ok {
        Ok(())
    } else {
        Err(fail(format!("agent name {name:?} cannot be used in a certificate: use letters, digits, '-' and '.' (like a host name)")))
    }
}

/// Creates a new cluster CA in `dir` (refuses to replace an existing one).
pub fn init_ca(dir: &Path) -> Result<PathBuf, PkiError> {
    std::fs::create_dir_all(dir).map_err(|e| fail(format!("cannot create CA directory {}: {e}", dir.display())))?;
    let (cert_path, key_path) = (dir.join(CA_CERT), dir.join(CA_KEY));
    if cert_path.exists() || key_path.exists() {
        return Err(fail(format!("{} already holds a CA; use it, or choose another --ca-dir", dir.display())));
    }
    let key = KeyPair::generate().map_err(|e| fail(format!("cannot generate the CA key: {e}")))?;
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, format!("ferry cluster CA {:08x}", rand::random::<u32>()));
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(3650);
    let cert = params.self_signed(&key).map_err(|e| fail(format!("cannot create the CA certificate: {e}")))?;
    write_private(&key_path, key.serialize_pem().as_bytes(), false)?;
    std::fs::write(&cert_path, cert.pem()).map_err(|e| fail(format!("cannot write {}: {e}", cert_path.display())))?;
    Ok(cert_path)
}

/// A loaded CA: signs agent certificates.
pub struct Ca {
    pub cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    pub fn load(dir: &Path) -> Result<Ca, PkiError> {
        let cert_pem = read_public(&dir.join(CA_CERT), "CA certificate")
            .map_err(|e| fail(format!("{e} (create a CA with 'ferry ca init --ca-dir {}')", dir.display())))?;
        let key = KeyPair::from_pem(&read_private(&dir.join(CA_KEY))?).map_err(|e| fail(format!("bad CA key in {}: {e}", dir.display())))?;
        let issuer = Issuer::from_ca_cert_pem(&cert_pem, key).map_err(|e| fail(format!("bad CA certificate in {}: {e}", dir.display())))?;
        Ok(Ca { cert_pem, issuer })
    }

    /// Signs a certificate for agent `name` with the public key of `csr_pem`. Only the key
    /// is taken from the request: the name, usages and validity are the CA's choice.
    pub fn sign(&self, csr_pem: &str, name: &str, days: i64) -> Result<String, PkiError> {
        check_agent_name(name)?;
        let csr = CertificateSigningRequestParams::from_pem(csr_pem).map_err(|e| fail(format!("bad certificate request: {e}")))?;
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, name);
        params.subject_alt_names = vec![SanType::DnsName(name.try_into().map_err(|e| fail(format!("agent name {name:?}: {e}")))?)];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::hours(1);
        params.not_after = now + time::Duration::days(days);
        let cert = params.signed_by(&csr.public_key, &self.issuer).map_err(|e| fail(format!("cannot sign the certificate: {e}")))?;
        Ok(cert.pem())
    }
}

/// A fresh key and a certificate request for `name`.
pub fn key_and_csr(name: &str) -> Result<(String, String), PkiError> {
    check_agent_name(name)?;
    let key = KeyPair::generate().map_err(|e| fail(format!("cannot generate a key: {e}")))?;
    let params = CertificateParams::new(vec![name.to_string()]).map_err(|e| fail(format!("agent name {name:?}: {e}")))?;
    let csr = params.serialize_request(&key).map_err(|e| fail(format!("cannot make a certificate request: {e}")))?;
    Ok((key.serialize_pem(), csr.pem().map_err(|e| fail(e.to_string()))?))
}

/// An agent's credentials: its certificate and key, and the CA it trusts.
#[derive(Clone)]
pub struct Identity {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

impl Identity {
    pub fn exists(dir: &Path) -> bool {
        dir.join(AGENT_CERT).exists() && dir.join(AGENT_KEY).exists() && dir.join(CA_CERT).exists()
    }

    pub fn load(dir: &Path) -> Result<Identity, PkiError> {
        let hint = |e: PkiError| fail(format!("{e} (enroll this agent with --enroll-token, from 'ferry ca token')"));
        Ok(Identity {
            ca_pem: read_public(&dir.join(CA_CERT), "CA certificate").map_err(hint)?,
            cert_pem: read_public(&dir.join(AGENT_CERT), "agent certificate").map_err(hint)?,
            key_pem: read_private(&dir.join(AGENT_KEY))?,
        })
    }

    pub fn save(&self, dir: &Path) -> Result<(), PkiError> {
        std::fs::create_dir_all(dir).map_err(|e| fail(format!("cannot create {}: {e}", dir.display())))?;
        write_private(&dir.join(AGENT_KEY), self.key_pem.as_bytes(), true)?;
        std::fs::write(dir.join(AGENT_CERT), &self.cert_pem).map_err(|e| fail(format!("cannot write {}: {e}", dir.join(AGENT_CERT).display())))?;
        std::fs::write(dir.join(CA_CERT), &self.ca_pem).map_err(|e| fail(format!("cannot write {}: {e}", dir.join(CA_CERT).display())))
    }

    /// Issues an identity directly from a CA on this host (tests, benchmarks, and operators
    /// who provision agents by hand with `ferry ca issue`).
    pub fn issue(ca: &Ca, name: &str, days: i64) -> Result<Identity, PkiError> {
        let (key_pem, csr) = key_and_csr(name)?;
        Ok(Identity { ca_pem: ca.cert_pem.clone(), cert_pem: ca.sign(&csr, name, days)?, key_pem })
    }

    fn parts(&self) -> Result<(rustls::RootCertStore, Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), PkiError> {
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(self.ca_pem.as_bytes()) {
            roots.add(c.map_err(|e| fail(format!("bad CA certificate: {e}")))?).map_err(|e| fail(format!("bad CA certificate: {e}")))?;
        }
        let chain =
            CertificateDer::pem_slice_iter(self.cert_pem.as_bytes()).collect::<Result<Vec<_>, _>>().map_err(|e| fail(format!("bad agent certificate: {e}")))?;
        let key = PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes()).map_err(|e| fail(format!("bad agent key: {e}")))?;
        Ok((roots, chain, key))
    }

    /// TLS 1.3 server side: a client must present a certificate from our CA.
    pub fn server_tls(&self) -> Result<rustls::ServerConfig, PkiError> {
        let (roots, chain, key) = self.parts()?;
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .build()
            .map_err(|e| fail(format!("cannot build the client verifier: {e}")))?;
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| fail(e.to_string()))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)
            .map_err(|e| fail(format!("agent certificate and key do not match: {e}")))?;
        cfg.alpn_protocols = vec![ALPN.to_vec()];
        Ok(cfg)
    }

    /// TLS 1.3 client side: the server must present a certificate from our CA for the name
    /// we dial.
    pub fn client_tls(&self) -> Result<rustls::ClientConfig, PkiError> {
        let (roots, chain, key) = self.parts()?;
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| fail(e.to_string()))?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .map_err(|e| fail(format!("agent certificate and key do not match: {e}")))?;
        cfg.alpn_protocols = vec![ALPN.to_vec()];
        Ok(cfg)
    }
}

// ---- enrollment through the Store ----

/// `/ferry/v1/enroll/{id}`: one activation token's ticket.
#[derive(Clone, Debug, Serialize, Deserialize, Default)]
pub struct EnrollTicket {
    pub secret_sha256: String,
    pub expires_unix: u64,
    /// Filled by the enrolling agent.
    pub name: Option<String>,
    pub csr: Option<String>,
    pub secret: Option<String>,
    /// Filled by the CA holder.
    pub cert: Option<String>,
    pub ca: Option<String>,
    pub refused: Option<String>,
}

pub fn enroll_prefix() -> Vec<u8> {
    b"/ferry/v1/enroll/".to_vec()
}

fn enroll_key(id: &str) -> Vec<u8> {
    let mut k = enroll_prefix();
    k.extend_from_slice(id.as_bytes());
    k
}

fn now_unix() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn sha256_hex(s: &str) -> String {
    hex::encode(sha2::Sha256::digest(s.as_bytes()))
}

/// Creates a token valid for `ttl`; returns `{id}.{secret}`.
pub async fn create_token(store: &SharedStore, ttl: Duration) -> Result<String, PkiError> {
    let id = format!("{:016x}", rand::random::<u64>());
    let secret = hex::encode(rand::random::<[u8; 16]>());
    let ticket = EnrollTicket { secret_sha256: sha256_hex(&secret), expires_unix: now_unix() + ttl.as_secs(), ..Default::default() };
    let lease = store.lease_grant(ttl).await.map_err(|e| fail(format!("coordination store: {e}")))?;
    let value = codec::encode(&ticket).map_err(|e| fail(e.to_string()))?;
    store.put(&enroll_key(&id), value, Some(lease)).await.map_err(|e| fail(format!("coordination store: {e}")))?;
    Ok(format!("{id}.{secret}"))
}

/// The agent's side: submits a request with the token and waits for the certificate.
pub async fn enroll(store: &SharedStore, token: &str, name: &str, wait: Duration) -> Result<Identity, PkiError> {
    let bad = || fail("the enrollment token is not valid: it is used, expired or mistyped (make a new one with 'ferry ca token')");
    let (id, secret) = token.trim().split_once('.').ok_or_else(bad)?;
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad());
    }
    let key = enroll_key(id);
    let kv = store.get(&key).await.map_err(|e| fail(format!("coordination store: {e}")))?.ok_or_else(bad)?;
    let mut ticket: EnrollTicket = codec::decode(&kv.value).map_err(|e| fail(e.to_string()))?;
    if ticket.csr.is_some() || ticket.expires_unix < now_unix() || ticket.secret_sha256 != sha256_hex(secret) {
        return Err(bad());
    }
    let (key_pem, csr) = key_and_csr(name)?;
    ticket.name = Some(name.to_string());
    ticket.csr = Some(csr);
    ticket.secret = Some(secret.to_string());
    let value = codec::encode(&ticket).map_err(|e| fail(e.to_string()))?;
    // Single use: only the first request lands on an untouched ticket.
    let txn = Txn::new().when([Compare::value_is(key.clone(), kv.value.clone())]).and_then([TxnOp::put(key.clone(), value)]);
    if !store.txn(txn).await.map_err(|e| fail(format!("coordination store: {e}")))?.succeeded {
        return Err(bad());
    }
    let deadline = std::time::Instant::now() + wait;
    loop {
        if let Some(kv) = store.get(&key).await.map_err(|e| fail(format!("coordination store: {e}")))? {
            let t: EnrollTicket = codec::decode(&kv.value).map_err(|e| fail(e.to_string()))?;
            if let Some(why) = t.refused {
                return Err(fail(format!("enrollment refused by the CA: {why}")));
            }
            if let (Some(cert), Some(ca)) = (t.cert, t.ca) {
                let _ = store.delete(&key).await;
                return Ok(Identity { ca_pem: ca, cert_pem: cert, key_pem });
            }
        } else {
            return Err(fail("the enrollment ticket expired before the CA signed it (is 'ferry ca serve' running?)"));
        }
        if std::time::Instant::now() >= deadline {
            return Err(fail(format!("no certificate within {} s: is 'ferry ca serve' running with this cluster's etcd?", wait.as_secs())));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The CA holder's side: signs every pending request whose secret matches. Returns how many
/// were signed.
pub async fn sign_pending(store: &SharedStore, ca: &Ca, days: i64) -> Result<usize, PkiError> {
    let page = store.range(&enroll_prefix(), Default::default()).await.map_err(|e| fail(format!("coordination store: {e}")))?;
    let mut signed = 0;
    for kv in page.kvs {
        let Ok(mut t) = codec::decode::<EnrollTicket>(&kv.value) else {
            continue;
        };
        // A ticket an agent touched is no longer under the token's lease: sweep it an hour
        // after it expired (the agent has long given up waiting).
        if t.expires_unix + 3600 < now_unix() {
            let _ = store.delete(&kv.key).await;
            continue;
        }
        let (Some(csr), Some(name), Some(secret)) = (t.csr.clone(), t.name.clone(), t.secret.clone()) else {
            continue;
        };
        if t.cert.is_some() || t.refused.is_some() {
            continue;
        }
        if sha256_hex(&secret) != t.secret_sha256 || t.expires_unix < now_unix() {
            t.refused = Some("token secret does not match or the token expired".into());
        } else {
            match ca.sign(&csr, &name, days) {
                Ok(cert) => {
                    t.cert = Some(cert);
                    t.ca = Some(ca.cert_pem.clone());
                    signed += 1;
                    tracing::info!(agent = %name, "AgentEnrolled");
                }
                Err(e) => t.refused = Some(e.to_string()),
            }
        }
        t.secret = None;
        let value = codec::encode(&t).map_err(|e| fail(e.to_string()))?;
        let txn = Txn::new().when([Compare::value_is(kv.key.clone(), kv.value.clone())]).and_then([TxnOp::put(kv.key.clone(), value)]);
        store.txn(txn).await.map_err(|e| fail(format!("coordination store: {e}")))?;
    }
    Ok(signed)
}
