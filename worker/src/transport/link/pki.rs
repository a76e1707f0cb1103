//! The cluster CA, agent certificates, enrollment with a single-use activation token, and
//! revocation.
//!
//! - `ferry ca init` writes `ca.crt` and `ca.key` (mode 0600) into the CA directory.
//! - `ferry ca token --name NAME [--labels L,..]` runs where the CA key is. It stores a ticket
//!   `/ferry/v1/enroll/{id}` holding the agent's name, labels and expiry, sealed with a MAC
//!   under a key derived from the CA key, and prints `{id}.{secret}`, where the secret is a
//!   second MAC of the id. Neither the secret nor anything it could be derived from is ever in
//!   the Store: whoever can write to etcd cannot mint a ticket, change a ticket's name or
//!   labels, or learn a token.
//! - A worker given the token (in a file or `FERRY_ENROLL_TOKEN`, never on its command line)
//!   makes its own key (it never leaves the host) and puts a CSR into the ticket together with a
//!   MAC of the CSR under the secret, in one transaction that only succeeds while no CSR is
//!   there: a token is used once, and a CSR swapped in later does not match its proof.
//! - The CA holder (`ferry ca serve`) checks the ticket's seal and the proof, refuses a name
//!   that a live, unrevoked certificate already carries, and writes the certificate back.
//! - `ferry ca revoke NAME` records that every certificate issued to NAME until now is void.
//!   Agents read it on each new link connection ([`Admission`]).
//!
//! Certificates carry the agent's name as their DNS name and its labels as URI names
//! (`urn:ferry:label:L`), so what an agent may do on a link is fixed by the CA, not by what it
//! says about itself. They are valid for client and server authentication. Agents accept only
//! peers with a certificate from the same CA, over TLS 1.3.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use aws_lc_rs::hmac;
use ferry_common::codec;
use ferry_common::store::{Compare, SharedStore, Txn, TxnOp};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde::{Deserialize, Serialize};

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

/// Labels become URI names in certificates: the same characters as a host-name label.
pub fn check_label(label: &str) -> Result<(), PkiError> {
    if !label.is_empty() && label.len() <= 63 && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.') {
        Ok(())
    } else {
        Err(fail(format!("label {label:?} cannot be used in a certificate: use letters, digits, '-', '_' and '.'")))
    }
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

/// A loaded CA: signs agent certificates and seals enrollment tickets.
pub struct Ca {
    pub cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
    /// Derived from the CA key: only the CA holder can seal a ticket or derive a token's secret.
    ticket_key: hmac::Key,
}

impl Ca {
    pub fn load(dir: &Path) -> Result<Ca, PkiError> {
        let cert_pem = read_public(&dir.join(CA_CERT), "CA certificate")
            .map_err(|e| fail(format!("{e} (create a CA with 'ferry ca init --ca-dir {}')", dir.display())))?;
        let key_pem = read_private(&dir.join(CA_KEY))?;
        let key = KeyPair::from_pem(&key_pem).map_err(|e| fail(format!("bad CA key in {}: {e}", dir.display())))?;
        let issuer = Issuer::from_ca_cert_pem(&cert_pem, key).map_err(|e| fail(format!("bad CA certificate in {}: {e}", dir.display())))?;
        let derived = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key_pem.as_bytes()), b"ferry enrollment tickets v1");
        Ok(Ca { cert_pem, issuer, ticket_key: hmac::Key::new(hmac::HMAC_SHA256, derived.as_ref()) })
    }

    /// Signs a certificate for agent `name` with `labels` and the public key of `csr_pem`.
    /// Only the key is taken from the request: the name, labels, usages and validity are the
    /// CA's choice. The serial starts with the signing time, which revocation compares against.
    pub fn sign(&self, csr_pem: &str, name: &str, labels: &[String], days: i64) -> Result<String, PkiError> {
        check_agent_name(name)?;
        labels.iter().try_for_each(|l| check_label(l))?;
        let csr = CertificateSigningRequestParams::from_pem(csr_pem).map_err(|e| fail(format!("bad certificate request: {e}")))?;
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, name);
        params.subject_alt_names = vec![SanType::DnsName(name.try_into().map_err(|e| fail(format!("agent name {name:?}: {e}")))?)];
        for l in labels {
            params.subject_alt_names.push(SanType::URI(format!("{LABEL_URI}{l}").try_into().map_err(|e| fail(format!("label {l:?}: {e}")))?));
        }
        params.serial_number = Some(serial_for(now_unix()).into());
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

/// Names the agent, never the key.
impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity").field("agent", &self.agent().map(|a| a.name).unwrap_or_default()).finish_non_exhaustive()
    }
}

impl Identity {
    pub fn exists(dir: &Path) -> bool {
        dir.join(AGENT_CERT).exists() && dir.join(AGENT_KEY).exists() && dir.join(CA_CERT).exists()
    }

    pub fn load(dir: &Path) -> Result<Identity, PkiError> {
        Self::finish_save(dir)?;
        let hint = |e: PkiError| fail(format!("{e} (enroll this agent with --enroll-token-file, from 'ferry ca token')"));
        Ok(Identity {
            ca_pem: read_public(&dir.join(CA_CERT), "CA certificate").map_err(hint)?,
            cert_pem: read_public(&dir.join(AGENT_CERT), "agent certificate").map_err(hint)?,
            key_pem: read_private(&dir.join(AGENT_KEY))?,
        })
    }

    /// Replaces the identity in `dir` so that a crash at any moment leaves a matching key and
    /// certificate: both are written under `.new` names, then the key is renamed into place,
    /// then the certificate. [`Identity::load`] completes or undoes an interrupted save.
    pub fn save(&self, dir: &Path) -> Result<(), PkiError> {
        std::fs::create_dir_all(dir).map_err(|e| fail(format!("cannot create {}: {e}", dir.display())))?;
        let new = |name: &str| dir.join(format!("{name}.new"));
        let rename = |from: &Path, to: &Path| std::fs::rename(from, to).map_err(|e| fail(format!("cannot replace {}: {e}", to.display())));
        write_private(&new(AGENT_KEY), self.key_pem.as_bytes(), true)?;
        write_private(&new(AGENT_CERT), self.cert_pem.as_bytes(), true)?;
        std::fs::write(dir.join(CA_CERT), &self.ca_pem).map_err(|e| fail(format!("cannot write {}: {e}", dir.join(CA_CERT).display())))?;
        rename(&new(AGENT_KEY), &dir.join(AGENT_KEY))?;
        rename(&new(AGENT_CERT), &dir.join(AGENT_CERT))?;
        std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(|e| fail(format!("cannot sync {}: {e}", dir.display())))
    }

    fn finish_save(dir: &Path) -> Result<(), PkiError> {
        let (key_new, cert_new) = (dir.join(format!("{AGENT_KEY}.new")), dir.join(format!("{AGENT_CERT}.new")));
        if key_new.exists() {
            // Interrupted before the key moved: the old pair is whole.
            let _ = std::fs::remove_file(&key_new);
            let _ = std::fs::remove_file(&cert_new);
        } else if cert_new.exists() {
            // The new key is in place: its certificate must follow.
            std::fs::rename(&cert_new, dir.join(AGENT_CERT)).map_err(|e| fail(format!("cannot finish replacing {}: {e}", dir.join(AGENT_CERT).display())))?;
        }
        Ok(())
    }

    /// Issues an identity directly from a CA on this host (tests, benchmarks, and operators
    /// who provision agents by hand with `ferry ca issue`).
    pub fn issue(ca: &Ca, name: &str, labels: &[String], days: i64) -> Result<Identity, PkiError> {
        let (key_pem, csr) = key_and_csr(name)?;
        Ok(Identity { ca_pem: ca.cert_pem.clone(), cert_pem: ca.sign(&csr, name, labels, days)?, key_pem })
    }

    /// What this agent's own certificate says about it.
    pub fn agent(&self) -> Result<AgentCert, PkiError> {
        let der = CertificateDer::pem_slice_iter(self.cert_pem.as_bytes())
            .next()
            .ok_or_else(|| fail("the agent certificate file holds no certificate"))?
            .map_err(|e| fail(format!("bad agent certificate: {e}")))?;
        AgentCert::parse(&der)
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

// ---- what a certificate says about its agent ----

/// The URI-name prefix that carries one of the agent's labels in its certificate.
const LABEL_URI: &str = "urn:ferry:label:";

/// A serial number that starts with the signing time (seconds), then random bytes. The first
/// byte is 1 so the DER integer keeps all 16 bytes and stays positive.
fn serial_for(issued_unix: u64) -> Vec<u8> {
    let mut s = vec![1u8];
    s.extend_from_slice(&issued_unix.to_be_bytes());
    s.extend_from_slice(&rand::random::<[u8; 7]>());
    s
}

/// What an agent certificate says: the name and labels the CA gave the agent, and when.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentCert {
    pub name: String,
    pub labels: Vec<String>,
    /// When the CA signed it: a revocation of the name voids certificates signed until then.
    pub issued_unix: u64,
    pub not_after_unix: u64,
}

impl AgentCert {
    pub fn parse(der: &[u8]) -> Result<AgentCert, PkiError> {
        use x509_parser::extensions::GeneralName;
        let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| fail(format!("unreadable agent certificate: {e}")))?;
        let (mut name, mut labels) = (None, Vec::new());
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for general in &san.value.general_names {
                match general {
                    GeneralName::DNSName(d) if name.is_none() => name = Some(d.to_string()),
                    GeneralName::URI(u) => labels.extend(u.strip_prefix(LABEL_URI).map(str::to_string)),
                    _ => {}
                }
            }
        }
        let name = name.ok_or_else(|| fail("the agent certificate names no agent (no DNS name)"))?;
        let not_before = cert.validity().not_before.timestamp().max(0) as u64;
        let serial: Vec<u8> = cert.raw_serial().iter().copied().skip_while(|b| *b == 0).collect();
        // Certificates from before serials carried the time: their start of validity stands in.
        let issued_unix = match serial.as_slice() {
            [1, t @ .., _, _, _, _, _, _, _] if t.len() == 8 => u64::from_be_bytes(t.try_into().unwrap_or_default()),
            _ => not_before,
        };
        Ok(AgentCert { name, labels, issued_unix, not_after_unix: cert.validity().not_after.timestamp().max(0) as u64 })
    }
}

// ---- enrollment through the Store ----

/// `/ferry/v1/enroll/{id}`: one activation token's ticket.
#[derive(Clone, Debug, Serialize, Deserialize, Default)]
pub struct EnrollTicket {
    /// The name and labels the certificate will carry, fixed by the CA holder.
    pub name: String,
    pub labels: Vec<String>,
    pub expires_unix: u64,
    /// The CA's seal over the id and the fields above (hex HMAC-SHA256).
    pub seal: String,
    /// Filled by the enrolling agent: its request, and the MAC of it under the token's secret.
    pub csr: Option<String>,
    pub proof: Option<String>,
    /// Filled by the CA holder.
    pub cert: Option<String>,
    pub ca: Option<String>,
    pub refused: Option<String>,
}

/// `/ferry/v1/pki/issued/{name}`: the certificate the CA last signed for an agent name.
#[derive(Clone, Debug, Serialize, Deserialize, Default)]
pub struct IssuedRecord {
    pub issued_unix: u64,
    pub not_after_unix: u64,
}

/// `/ferry/v1/pki/revoked/{name}`: every certificate of that name signed until then is void.
#[derive(Clone, Debug, Serialize, Deserialize, Default)]
pub struct Revocation {
    pub revoked_unix: u64,
}

pub fn enroll_prefix() -> Vec<u8> {
    b"/ferry/v1/enroll/".to_vec()
}

fn enroll_key(id: &str) -> Vec<u8> {
    let mut k = enroll_prefix();
    k.extend_from_slice(id.as_bytes());
    k
}

fn issued_key(name: &str) -> Vec<u8> {
    format!("/ferry/v1/pki/issued/{name}").into_bytes()
}

fn revoked_key(name: &str) -> Vec<u8> {
    format!("/ferry/v1/pki/revoked/{name}").into_bytes()
}

fn now_unix() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn store_err(e: impl std::fmt::Display) -> PkiError {
    fail(format!("coordination store: {e}"))
}

fn mac_hex(key: &hmac::Key, msg: &[u8]) -> String {
    hex::encode(hmac::sign(key, msg).as_ref())
}

/// Constant time: how much of a MAC matched does not show in the time it takes to say no.
fn mac_matches(key: &hmac::Key, msg: &[u8], tag_hex: &str) -> bool {
    hex::decode(tag_hex).is_ok_and(|tag| hmac::verify(key, msg, &tag).is_ok())
}

impl Ca {
    /// A token's secret: derived from its id under the CA's key, so it is never stored.
    fn token_secret(&self, id: &str) -> String {
        mac_hex(&self.ticket_key, format!("secret\n{id}").as_bytes())
    }

    fn ticket_fields(id: &str, t: &EnrollTicket) -> Vec<u8> {
        format!("ticket\n{id}\n{}\n{}\n{}", t.name, t.labels.join(","), t.expires_unix).into_bytes()
    }

    fn seal(&self, id: &str, t: &EnrollTicket) -> String {
        mac_hex(&self.ticket_key, &Self::ticket_fields(id, t))
    }

    /// Why a ticket read back from the Store must not be signed, if it must not.
    fn check_ticket(&self, id: &str, t: &EnrollTicket) -> Result<(), String> {
        if !mac_matches(&self.ticket_key, &Self::ticket_fields(id, t), &t.seal) {
            return Err("the ticket was not issued by this CA (its seal does not match): make tokens with 'ferry ca token'".into());
        }
        if t.expires_unix < now_unix() {
            return Err("the token expired before the agent used it".into());
        }
        let (Some(csr), Some(proof)) = (&t.csr, &t.proof) else {
            return Err("the ticket holds no request".into());
        };
        let secret = hmac::Key::new(hmac::HMAC_SHA256, self.token_secret(id).as_bytes());
        if !mac_matches(&secret, csr.as_bytes(), proof) {
            return Err("the request does not prove the token's secret (a mistyped token, or a request swapped in the Store)".into());
        }
        Ok(())
    }
}

/// Whether a live, unrevoked certificate carries `name`: the CA gives a name to one agent.
async fn name_in_use(store: &SharedStore, name: &str) -> Result<Option<IssuedRecord>, PkiError> {
    let Some(kv) = store.get(&issued_key(name)).await.map_err(store_err)? else {
        return Ok(None);
    };
    let issued: IssuedRecord = codec::decode(&kv.value).map_err(|e| fail(e.to_string()))?;
    if issued.not_after_unix < now_unix() {
        return Ok(None);
    }
    let revoked = match store.get(&revoked_key(name)).await.map_err(store_err)? {
        Some(kv) => codec::decode::<Revocation>(&kv.value).map_err(|e| fail(e.to_string()))?.revoked_unix >= issued.issued_unix,
        None => false,
    };
    Ok((!revoked).then_some(issued))
}

fn in_use_error(name: &str, issued: &IssuedRecord) -> PkiError {
    fail(format!(
        "agent name {name:?} already has a live certificate (signed at unix time {}, valid until {}): revoke it first with 'ferry ca revoke {name}', or choose another name",
        issued.issued_unix, issued.not_after_unix
    ))
}

/// The CA holder's side: creates a token for agent `name` with `labels`, valid for `ttl`.
/// Returns `{id}.{secret}`.
pub async fn create_token(store: &SharedStore, ca: &Ca, name: &str, labels: &[String], ttl: Duration) -> Result<String, PkiError> {
    check_agent_name(name)?;
    labels.iter().try_for_each(|l| check_label(l))?;
    if let Some(issued) = name_in_use(store, name).await? {
        return Err(in_use_error(name, &issued));
    }
    let id = format!("{:016x}", rand::random::<u64>());
    let mut ticket = EnrollTicket { name: name.to_string(), labels: labels.to_vec(), expires_unix: now_unix() + ttl.as_secs(), ..Default::default() };
    ticket.seal = ca.seal(&id, &ticket);
    let lease = store.lease_grant(ttl).await.map_err(store_err)?;
    let value = codec::encode(&ticket).map_err(|e| fail(e.to_string()))?;
    store.put(&enroll_key(&id), value, Some(lease)).await.map_err(store_err)?;
    Ok(format!("{id}.{}", ca.token_secret(&id)))
}

/// The agent's side: submits a request with the token and waits for the certificate. The
/// token names the agent: `name` must be that name.
pub async fn enroll(store: &SharedStore, token: &str, name: &str, wait: Duration) -> Result<Identity, PkiError> {
    let bad = || fail("the enrollment token is not valid: it is used, expired or mistyped (make a new one with 'ferry ca token')");
    let (id, secret) = token.trim().split_once('.').ok_or_else(bad)?;
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad());
    }
    let key = enroll_key(id);
    let kv = store.get(&key).await.map_err(store_err)?.ok_or_else(bad)?;
    let mut ticket: EnrollTicket = codec::decode(&kv.value).map_err(|_| bad())?;
    if ticket.csr.is_some() || ticket.expires_unix < now_unix() {
        return Err(bad());
    }
    if ticket.name != name {
        return Err(fail(format!(
            "this enrollment token is for agent {:?}, not {name:?}: start the agent with --name {}, or make a token for {name:?}",
            ticket.name, ticket.name
        )));
    }
    let (key_pem, csr) = key_and_csr(name)?;
    ticket.proof = Some(mac_hex(&hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes()), csr.as_bytes()));
    ticket.csr = Some(csr);
    let value = codec::encode(&ticket).map_err(|e| fail(e.to_string()))?;
    // Single use: only the first request lands on an untouched ticket.
    let txn = Txn::new().when([Compare::value_is(key.clone(), kv.value.clone())]).and_then([TxnOp::put(key.clone(), value)]);
    if !store.txn(txn).await.map_err(store_err)?.succeeded {
        return Err(bad());
    }
    let deadline = std::time::Instant::now() + wait;
    loop {
        if let Some(kv) = store.get(&key).await.map_err(store_err)? {
            let t: EnrollTicket = codec::decode(&kv.value).map_err(|e| fail(e.to_string()))?;
            if let Some(why) = t.refused {
                return Err(fail(format!("enrollment refused by the CA: {why}")));
            }
            if let (Some(cert), Some(ca)) = (t.cert, t.ca) {
                let _ = store.delete(&key).await;
                let id = Identity { ca_pem: ca, cert_pem: cert, key_pem };
                // The certificate must be for our key and name, whoever wrote it into the Store.
                id.server_tls()?;
                if id.agent()?.name != name {
                    return Err(fail("the certificate written back names another agent: enrollment refused"));
                }
                return Ok(id);
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

/// The CA holder's side: signs every pending request whose ticket carries this CA's seal and
/// whose proof matches the token. Returns how many were signed.
pub async fn sign_pending(store: &SharedStore, ca: &Ca, days: i64) -> Result<usize, PkiError> {
    let page = store.range(&enroll_prefix(), Default::default()).await.map_err(store_err)?;
    let mut signed = 0;
    for kv in page.kvs {
        let id = String::from_utf8_lossy(&kv.key[enroll_prefix().len()..]).into_owned();
        let Ok(mut t) = codec::decode::<EnrollTicket>(&kv.value) else {
            let _ = store.delete(&kv.key).await;
            continue;
        };
        // A ticket an agent touched is no longer under the token's lease: sweep it an hour
        // after it expired (the agent has long given up waiting).
        if t.expires_unix + 3600 < now_unix() {
            let _ = store.delete(&kv.key).await;
            continue;
        }
        if t.csr.is_none() || t.cert.is_some() || t.refused.is_some() {
            continue;
        }
        let verdict = match ca.check_ticket(&id, &t) {
            Err(why) => Err(why),
            Ok(()) => match name_in_use(store, &t.name).await? {
                Some(issued) => Err(in_use_error(&t.name, &issued).0),
                None => ca.sign(t.csr.as_deref().unwrap_or_default(), &t.name, &t.labels, days).map_err(|e| e.0),
            },
        };
        match verdict {
            Ok(cert) => {
                let issued = AgentCert::parse(&CertificateDer::from_pem_slice(cert.as_bytes()).map_err(|e| fail(e.to_string()))?)?;
                let record = IssuedRecord { issued_unix: issued.issued_unix, not_after_unix: issued.not_after_unix };
                store.put(&issued_key(&t.name), codec::encode(&record).map_err(|e| fail(e.to_string()))?, None).await.map_err(store_err)?;
                t.cert = Some(cert);
                t.ca = Some(ca.cert_pem.clone());
                signed += 1;
                tracing::info!(agent = %t.name, labels = ?t.labels, "AgentEnrolled");
            }
            Err(why) => {
                tracing::warn!(agent = %t.name, ticket = %id, reason = %why, "EnrollmentRefused");
                t.refused = Some(why);
            }
        }
        let value = codec::encode(&t).map_err(|e| fail(e.to_string()))?;
        let txn = Txn::new().when([Compare::value_is(kv.key.clone(), kv.value.clone())]).and_then([TxnOp::put(kv.key.clone(), value)]);
        store.txn(txn).await.map_err(store_err)?;
    }
    Ok(signed)
}

// ---- renewal: short-lived certificates, replaced before they expire ----

/// `/ferry/v1/pki/renew/{name}`: an agent asks for a fresh certificate for a new key, proving
/// it holds its current one.
#[derive(Clone, Debug, Serialize, Deserialize, Default)]
pub struct RenewRequest {
    /// The agent's current certificate (PEM).
    pub cert: String,
    /// The request for its new key.
    pub csr: String,
    /// The current key's signature over `csr` (hex): only the certificate's holder can ask.
    pub signature: String,
    /// Filled by the CA holder.
    pub issued: Option<String>,
    pub refused: Option<String>,
}

pub fn renew_prefix() -> Vec<u8> {
    b"/ferry/v1/pki/renew/".to_vec()
}

fn renew_key(name: &str) -> Vec<u8> {
    let mut k = renew_prefix();
    k.extend_from_slice(name.as_bytes());
    k
}

impl Identity {
    /// Less than a third of the certificate's lifetime is left: time to ask for a new one.
    pub fn due_for_renewal(&self) -> Result<bool, PkiError> {
        let me = self.agent()?;
        let life = me.not_after_unix.saturating_sub(me.issued_unix);
        Ok(now_unix() + life / 3 >= me.not_after_unix)
    }
}

/// The agent's side: a new key and certificate with the same name and labels, signed by the
/// CA holder (`ferry ca serve`) on the strength of the current certificate.
pub async fn renew(store: &SharedStore, id: &Identity, wait: Duration) -> Result<Identity, PkiError> {
    use rcgen::SigningKey;
    let me = id.agent()?;
    let (key_pem, csr) = key_and_csr(&me.name)?;
    let current = KeyPair::from_pem(&id.key_pem).map_err(|e| fail(format!("bad agent key: {e}")))?;
    let signature = current.sign(csr.as_bytes()).map_err(|e| fail(format!("cannot sign the renewal request: {e}")))?;
    let request = RenewRequest { cert: id.cert_pem.clone(), csr, signature: hex::encode(signature), ..Default::default() };
    let key = renew_key(&me.name);
    store.put(&key, codec::encode(&request).map_err(|e| fail(e.to_string()))?, None).await.map_err(store_err)?;
    let deadline = std::time::Instant::now() + wait;
    loop {
        if let Some(kv) = store.get(&key).await.map_err(store_err)? {
            let r: RenewRequest = codec::decode(&kv.value).map_err(|e| fail(e.to_string()))?;
            if let Some(why) = r.refused {
                let _ = store.delete(&key).await;
                return Err(fail(format!("renewal refused by the CA: {why}")));
            }
            if let Some(cert_pem) = r.issued {
                let _ = store.delete(&key).await;
                let renewed = Identity { ca_pem: id.ca_pem.clone(), cert_pem, key_pem };
                renewed.server_tls()?;
                let now = renewed.agent()?;
                if now.name != me.name || now.labels != me.labels {
                    return Err(fail("the renewed certificate names another agent or labels: renewal refused"));
                }
                return Ok(renewed);
            }
        }
        if std::time::Instant::now() >= deadline {
            return Err(fail(format!("no renewed certificate within {} s: is 'ferry ca serve' running?", wait.as_secs())));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

impl Ca {
    /// Why a renewal request must not be signed, or the certificate it gets.
    async fn answer_renewal(&self, store: &SharedStore, r: &RenewRequest, days: i64) -> Result<String, PkiError> {
        let der = CertificateDer::from_pem_slice(r.cert.as_bytes()).map_err(|e| fail(format!("unreadable current certificate: {e}")))?;
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(self.cert_pem.as_bytes()) {
            roots.add(c.map_err(|e| fail(e.to_string()))?).map_err(|e| fail(e.to_string()))?;
        }
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
            .build()
            .map_err(|e| fail(e.to_string()))?;
        verifier
            .verify_client_cert(&der, &[], rustls::pki_types::UnixTime::now())
            .map_err(|e| fail(format!("the current certificate is not a valid one from this CA ({e}): enroll the agent again with a token")))?;
        let me = AgentCert::parse(&der)?;
        if let Some(kv) = store.get(&revoked_key(&me.name)).await.map_err(store_err)? {
            if codec::decode::<Revocation>(&kv.value).is_ok_and(|rv| rv.revoked_unix >= me.issued_unix) {
                return Err(fail(format!("agent {} was revoked", me.name)));
            }
        }
        let (_, cert) = x509_parser::parse_x509_certificate(&der).map_err(|e| fail(e.to_string()))?;
        let signature = hex::decode(&r.signature).map_err(|_| fail("the renewal signature is not hex"))?;
        aws_lc_rs::signature::UnparsedPublicKey::new(&aws_lc_rs::signature::ECDSA_P256_SHA256_ASN1, &cert.public_key().subject_public_key.data)
            .verify(r.csr.as_bytes(), &signature)
            .map_err(|_| fail("the renewal request is not signed by the current certificate's key"))?;
        let new = self.sign(&r.csr, &me.name, &me.labels, days)?;
        let signed = AgentCert::parse(&CertificateDer::from_pem_slice(new.as_bytes()).map_err(|e| fail(e.to_string()))?)?;
        let record = IssuedRecord { issued_unix: signed.issued_unix, not_after_unix: signed.not_after_unix };
        store.put(&issued_key(&me.name), codec::encode(&record).map_err(|e| fail(e.to_string()))?, None).await.map_err(store_err)?;
        Ok(new)
    }
}

/// The CA holder's side of renewal: answers every pending request. Returns how many were
/// signed.
pub async fn sign_renewals(store: &SharedStore, ca: &Ca, days: i64) -> Result<usize, PkiError> {
    let page = store.range(&renew_prefix(), Default::default()).await.map_err(store_err)?;
    let mut signed = 0;
    for kv in page.kvs {
        let Ok(mut r) = codec::decode::<RenewRequest>(&kv.value) else {
            let _ = store.delete(&kv.key).await;
            continue;
        };
        if r.issued.is_some() || r.refused.is_some() {
            continue;
        }
        let name = String::from_utf8_lossy(&kv.key[renew_prefix().len()..]).into_owned();
        match ca.answer_renewal(store, &r, days).await {
            Ok(cert) => {
                tracing::info!(agent = %name, "AgentRenewed");
                r.issued = Some(cert);
                signed += 1;
            }
            Err(why) => {
                tracing::warn!(agent = %name, reason = %why, "RenewalRefused");
                r.refused = Some(why.0);
            }
        }
        let value = codec::encode(&r).map_err(|e| fail(e.to_string()))?;
        let txn = Txn::new().when([Compare::value_is(kv.key.clone(), kv.value.clone())]).and_then([TxnOp::put(kv.key.clone(), value)]);
        store.txn(txn).await.map_err(store_err)?;
    }
    Ok(signed)
}

/// Voids every certificate signed for `name` until now. Links refuse them from the next
/// connection on, and the name can be enrolled again.
pub async fn revoke(store: &SharedStore, name: &str) -> Result<(), PkiError> {
    check_agent_name(name)?;
    let record = Revocation { revoked_unix: now_unix() };
    store.put(&revoked_key(name), codec::encode(&record).map_err(|e| fail(e.to_string()))?, None).await.map_err(store_err)?;
    Ok(())
}

/// Who may hold a link with this agent, beyond the CA's signature: the peer's certificate
/// must not be revoked. Read from the Store on every new connection, and again for a new
/// stream when the last reading is older than [`Admission::RECHECK`], so a revoked agent's
/// open connection is cut within that. When the Store cannot answer (an etcd outage must not
/// cut running transfers), the last answer stands.
#[derive(Default)]
pub struct Admission {
    store: Option<SharedStore>,
    known: std::sync::Mutex<std::collections::HashMap<String, (std::time::Instant, Option<u64>)>>,
}

impl Admission {
    pub const RECHECK: Duration = Duration::from_secs(10);

    /// Checks revocations in `store`.
    pub fn with_store(store: SharedStore) -> Admission {
        Admission { store: Some(store), known: Default::default() }
    }

    /// Whether `peer` may go on: `Err` says why not. `fresh` reads the Store whatever was
    /// read before (a new connection); otherwise a reading younger than `RECHECK` is used.
    pub async fn admit(&self, peer: &AgentCert, fresh: bool) -> Result<(), String> {
        let Some(store) = &self.store else {
            return Ok(());
        };
        let cached = self.known.lock().unwrap_or_else(|p| p.into_inner()).get(&peer.name).copied();
        let revoked = match cached {
            Some((read, at)) if !fresh && read.elapsed() < Self::RECHECK => at,
            _ => match store.get(&revoked_key(&peer.name)).await {
                Ok(found) => {
                    let at = found.and_then(|kv| codec::decode::<Revocation>(&kv.value).ok()).map(|r| r.revoked_unix);
                    self.known.lock().unwrap_or_else(|p| p.into_inner()).insert(peer.name.clone(), (std::time::Instant::now(), at));
                    at
                }
                Err(e) => {
                    tracing::warn!(peer = %peer.name, error = %e, "cannot read revocations; using the last known answer");
                    cached.and_then(|(_, at)| at)
                }
            },
        };
        match revoked {
            Some(at) if peer.issued_unix <= at => Err(format!("the certificate of agent {} was revoked ('ferry ca revoke' at unix time {at})", peer.name)),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_common::store::MemStore;

    fn setup() -> (tempfile::TempDir, Ca, SharedStore) {
        let dir = tempfile::tempdir().unwrap();
        init_ca(dir.path()).unwrap();
        let ca = Ca::load(dir.path()).unwrap();
        (dir, ca, Arc::new(MemStore::new()))
    }

    async fn ticket(store: &SharedStore, id: &str) -> EnrollTicket {
        store.get(&enroll_key(id)).await.unwrap().map(|kv| codec::decode(&kv.value).unwrap()).unwrap_or_default()
    }

    /// Enrolls `name` with `token` while the CA signs: the agent's result.
    async fn enroll_with_ca(store: &SharedStore, ca: &Ca, token: &str, name: &str) -> Result<Identity, PkiError> {
        let agent = enroll(store, token, name, Duration::from_secs(5));
        let signer = async {
            loop {
                sign_pending(store, ca, 3).await.unwrap();
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        tokio::select! {
            r = agent => r,
            _ = signer => unreachable!(),
        }
    }

    #[tokio::test]
    async fn a_token_enrolls_its_name_once_with_the_labels_the_ca_chose() {
        let (_dir, ca, store) = setup();
        let token = create_token(&store, &ca, "w1", &["onprem".into()], Duration::from_secs(60)).await.unwrap();
        let id = enroll_with_ca(&store, &ca, &token, "w1").await.unwrap();
        let me = id.agent().unwrap();
        assert_eq!((me.name.as_str(), me.labels.clone()), ("w1", vec!["onprem".to_string()]));
        assert!(me.issued_unix.abs_diff(now_unix()) < 5, "the serial carries the signing time: {me:?}");
        // Used: a second use fails, whoever tries.
        let again = enroll(&store, &token, "w1", Duration::from_secs(1)).await.unwrap_err();
        assert!(again.0.contains("not valid"), "{again}");
    }

    #[tokio::test]
    async fn a_token_names_its_agent_and_another_name_is_refused() {
        let (_dir, ca, store) = setup();
        let token = create_token(&store, &ca, "w1", &[], Duration::from_secs(60)).await.unwrap();
        let e = enroll(&store, &token, "w2", Duration::from_secs(1)).await.unwrap_err();
        assert!(e.0.contains("for agent \"w1\", not \"w2\""), "{e}");
    }

    #[tokio::test]
    async fn a_ticket_forged_in_the_store_is_not_signed() {
        let (_dir, ca, store) = setup();
        // Whoever can write to etcd writes a ticket of their own, with a secret they chose
        // and a seal they cannot compute.
        let (id, secret) = ("00000000000000aa", "attacker-secret");
        let (_key, csr) = key_and_csr("intruder").unwrap();
        let forged = EnrollTicket {
            name: "intruder".into(),
            labels: vec!["cloud".into()],
            expires_unix: now_unix() + 600,
            seal: hex::encode([7u8; 32]),
            proof: Some(mac_hex(&hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes()), csr.as_bytes())),
            csr: Some(csr),
            ..Default::default()
        };
        store.put(&enroll_key(id), codec::encode(&forged).unwrap(), None).await.unwrap();
        assert_eq!(sign_pending(&store, &ca, 3).await.unwrap(), 0);
        let t = ticket(&store, id).await;
        assert!(t.cert.is_none());
        assert!(t.refused.as_deref().unwrap_or_default().contains("not issued by this CA"), "{t:?}");
    }

    #[tokio::test]
    async fn a_real_ticket_whose_labels_were_changed_in_the_store_is_not_signed() {
        let (_dir, ca, store) = setup();
        let token = create_token(&store, &ca, "w1", &["onprem".into()], Duration::from_secs(60)).await.unwrap();
        let id = token.split_once('.').unwrap().0.to_string();
        let mut t = ticket(&store, &id).await;
        t.labels = vec!["cloud".into()];
        store.put(&enroll_key(&id), codec::encode(&t).unwrap(), None).await.unwrap();
        let e = enroll_with_ca(&store, &ca, &token, "w1").await.unwrap_err();
        assert!(e.0.contains("not issued by this CA"), "{e}");
    }

    #[tokio::test]
    async fn a_request_swapped_in_after_the_agent_submitted_is_not_signed() {
        let (_dir, ca, store) = setup();
        let token = create_token(&store, &ca, "w1", &[], Duration::from_secs(60)).await.unwrap();
        let id = token.split_once('.').unwrap().0.to_string();
        let agent = tokio::spawn({
            let (store, token) = (store.clone(), token.clone());
            async move { enroll(&store, &token, "w1", Duration::from_secs(5)).await }
        });
        // The agent's request lands; an etcd writer replaces the CSR with one for its own key.
        let mut t = loop {
            let t = ticket(&store, &id).await;
            if t.csr.is_some() {
                break t;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        t.csr = Some(key_and_csr("w1").unwrap().1);
        store.put(&enroll_key(&id), codec::encode(&t).unwrap(), None).await.unwrap();
        assert_eq!(sign_pending(&store, &ca, 3).await.unwrap(), 0);
        let e = agent.await.unwrap().unwrap_err();
        assert!(e.0.contains("does not prove the token's secret"), "{e}");
    }

    #[tokio::test]
    async fn a_name_with_a_live_certificate_is_not_enrolled_again_until_revoked() {
        let (_dir, ca, store) = setup();
        let token = create_token(&store, &ca, "w1", &[], Duration::from_secs(60)).await.unwrap();
        let first = enroll_with_ca(&store, &ca, &token, "w1").await.unwrap().agent().unwrap();
        let e = create_token(&store, &ca, "w1", &[], Duration::from_secs(60)).await.unwrap_err();
        assert!(e.0.contains("already has a live certificate") && e.0.contains("ferry ca revoke w1"), "{e}");

        // Two tokens made before either was used: the second enrollment is refused by the CA.
        let (_dir2, ca2, store2) = setup();
        let t1 = create_token(&store2, &ca2, "w9", &[], Duration::from_secs(60)).await.unwrap();
        let t2 = create_token(&store2, &ca2, "w9", &[], Duration::from_secs(60)).await.unwrap();
        enroll_with_ca(&store2, &ca2, &t1, "w9").await.unwrap();
        let e = enroll_with_ca(&store2, &ca2, &t2, "w9").await.unwrap_err();
        assert!(e.0.contains("already has a live certificate"), "{e}");

        // Revoked: the old certificate is refused on links, and the name can be enrolled again.
        tokio::time::sleep(Duration::from_millis(1100)).await; // revocation has one-second resolution
        revoke(&store, "w1").await.unwrap();
        let admission = Admission::with_store(store.clone());
        let why = admission.admit(&first, true).await.unwrap_err();
        assert!(why.contains("revoked"), "{why}");
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let token = create_token(&store, &ca, "w1", &[], Duration::from_secs(60)).await.unwrap();
        let second = enroll_with_ca(&store, &ca, &token, "w1").await.unwrap().agent().unwrap();
        admission.admit(&second, true).await.unwrap();
    }

    /// Renews `id` while the CA answers: the agent's result.
    async fn renew_with_ca(store: &SharedStore, ca: &Ca, id: &Identity) -> Result<Identity, PkiError> {
        let agent = renew(store, id, Duration::from_secs(5));
        let signer = async {
            loop {
                sign_renewals(store, ca, 7).await.unwrap();
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        tokio::select! {
            r = agent => r,
            _ = signer => unreachable!(),
        }
    }

    #[tokio::test]
    async fn an_agent_renews_its_certificate_for_a_new_key_with_the_same_name_and_labels() {
        let (_dir, ca, store) = setup();
        let old = Identity::issue(&ca, "w1", &["onprem".into()], 30).unwrap();
        assert!(!old.due_for_renewal().unwrap());
        assert!(Identity::issue(&ca, "w1", &[], 0).unwrap().due_for_renewal().unwrap(), "a certificate at its end is due");
        let new = renew_with_ca(&store, &ca, &old).await.unwrap();
        let (a, b) = (old.agent().unwrap(), new.agent().unwrap());
        assert_eq!((b.name.as_str(), b.labels.clone()), ("w1", vec!["onprem".to_string()]));
        assert_ne!(old.key_pem, new.key_pem);
        assert!(b.not_after_unix < a.not_after_unix, "7 days, not 30: {a:?} {b:?}");
        // Saved, and loaded back whole.
        let dir = tempfile::tempdir().unwrap();
        old.save(dir.path()).unwrap();
        new.save(dir.path()).unwrap();
        assert_eq!(Identity::load(dir.path()).unwrap().key_pem, new.key_pem);
    }

    #[tokio::test]
    async fn renewal_is_refused_without_the_current_key_for_a_revoked_agent_and_for_another_ca() {
        let (_dir, ca, store) = setup();
        let id = Identity::issue(&ca, "w1", &[], 30).unwrap();
        // Someone with the (public) certificate but another key.
        let thief = Identity { key_pem: key_and_csr("w1").unwrap().0, ..id.clone() };
        let e = renew_with_ca(&store, &ca, &thief).await.unwrap_err();
        assert!(e.0.contains("not signed by the current certificate's key"), "{e}");
        // Another CA's certificate for the same name.
        let (_other_dir, other_ca, _) = setup();
        let stranger = Identity::issue(&other_ca, "w1", &[], 30).unwrap();
        let e = renew_with_ca(&store, &ca, &stranger).await.unwrap_err();
        assert!(e.0.contains("not a valid one from this CA"), "{e}");
        // Revoked.
        revoke(&store, "w1").await.unwrap();
        let e = renew_with_ca(&store, &ca, &id).await.unwrap_err();
        assert!(e.0.contains("revoked"), "{e}");
    }

    #[test]
    fn an_interrupted_save_leaves_a_matching_key_and_certificate() {
        let dir = tempfile::tempdir().unwrap();
        init_ca(dir.path()).unwrap();
        let ca = Ca::load(dir.path()).unwrap();
        let (old, new) = (Identity::issue(&ca, "w1", &[], 30).unwrap(), Identity::issue(&ca, "w1", &[], 30).unwrap());
        let tls = dir.path().join("tls");
        old.save(&tls).unwrap();
        // Crashed before the key moved: the old pair stands.
        write_private(&tls.join("agent.key.new"), new.key_pem.as_bytes(), true).unwrap();
        write_private(&tls.join("agent.crt.new"), new.cert_pem.as_bytes(), true).unwrap();
        let loaded = Identity::load(&tls).unwrap();
        assert_eq!((loaded.key_pem.as_str(), loaded.cert_pem.as_str()), (old.key_pem.as_str(), old.cert_pem.as_str()));
        // Crashed after the key moved: the new certificate follows it.
        write_private(&tls.join("agent.key"), new.key_pem.as_bytes(), true).unwrap();
        write_private(&tls.join("agent.crt.new"), new.cert_pem.as_bytes(), true).unwrap();
        let loaded = Identity::load(&tls).unwrap();
        assert_eq!((loaded.key_pem.as_str(), loaded.cert_pem.as_str()), (new.key_pem.as_str(), new.cert_pem.as_str()));
        loaded.server_tls().unwrap();
    }

    #[test]
    fn labels_and_names_must_fit_a_certificate() {
        assert!(check_label("site-a.1_x").is_ok());
        for bad in ["", "a b", "a/b", "a:b", &"x".repeat(64)] {
            assert!(check_label(bad).is_err(), "{bad:?}");
        }
        assert!(check_agent_name("w1.example").is_ok());
        assert!(check_agent_name("-w1").is_err());
    }
}
