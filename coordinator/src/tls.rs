//! TLS for the HTTP API (server and CLI client) and for webhooks: rustls on aws-lc-rs, the
//! provider quinn's links already use, so one crypto library serves the whole binary.
//!
//! ureq 2 is built without its `tls` feature (it would bring rustls with ring); [`UreqTls`]
//! gives it a verifying rustls connector instead.

use std::io::{Read, Write};
use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// The certificates of a PEM file named by `flag`.
pub fn load_certs(flag: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    std::fs::metadata(path).map_err(|e| format!("cannot read {flag} {}: {e} (give a readable PEM file)", path.display()))?;
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{flag} {} is not a PEM certificate file: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{flag} {} holds no certificate (give a file with a '-----BEGIN CERTIFICATE-----' block)", path.display()));
    }
    Ok(certs)
}

/// The private key of a PEM file named by `flag`; refused when others can read it.
pub fn load_key(flag: &str, path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    ferry_common::config::check_secret_mode(path).map_err(|e| format!("{flag}: {e}"))?;
    PrivateKeyDer::from_pem_file(path).map_err(|e| format!("{flag} {} holds no usable PEM private key: {e}", path.display()))
}

/// The API server's TLS: one certificate chain and its key.
pub fn server_config(cert: &Path, key: &Path) -> Result<rustls::ServerConfig, String> {
    let certs = load_certs("--tls-cert", cert)?;
    let private = load_key("--tls-key", key)?;
    rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?
        .with_no_client_auth()
        .with_single_cert(certs, private)
        .map_err(|e| format!("--tls-cert {} and --tls-key {} do not go together: {e} (give the key of that certificate)", cert.display(), key.display()))
}

/// A verifying client: trusts only the CA in `cacert` when given (named by `flag` in errors),
/// else this host's trust store.
pub fn client_config(flag: &str, cacert: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, String> {
    let mut roots = rustls::RootCertStore::empty();
    match cacert {
        Some(path) => {
            for c in load_certs(flag, path)? {
                roots.add(c).map_err(|e| format!("{flag} {}: not a usable CA certificate: {e}", path.display()))?;
            }
        }
        None => {
            roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
        }
    }
    let cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(cfg))
}

/// A ureq agent that speaks HTTPS through `tls`.
pub fn agent(tls: Arc<rustls::ClientConfig>, timeout: std::time::Duration) -> ureq::Agent {
    ureq::AgentBuilder::new().timeout(timeout).tls_connector(Arc::new(UreqTls(tls))).build()
}

/// ureq's TLS connector on rustls. A failed handshake becomes an I/O error whose message
/// starts with [`TLS_FAILED`] and says why in words.
pub struct UreqTls(pub Arc<rustls::ClientConfig>);

/// The start of a failed handshake's message (callers add their own hint after it).
pub const TLS_FAILED: &str = "TLS handshake failed: ";

impl ureq::TlsConnector for UreqTls {
    fn connect(&self, dns_name: &str, mut io: Box<dyn ureq::ReadWrite>) -> Result<Box<dyn ureq::ReadWrite>, ureq::Error> {
        let host = dns_name.trim_start_matches('[').trim_end_matches(']');
        let name = ServerName::try_from(host.to_string()).map_err(|_| std::io::Error::other(format!("{TLS_FAILED}{host:?} is not a host name")))?;
        let mut conn = rustls::ClientConnection::new(self.0.clone(), name).map_err(|e| std::io::Error::other(format!("{TLS_FAILED}{e}")))?;
        conn.complete_io(&mut io).map_err(|e| std::io::Error::other(format!("{TLS_FAILED}{}", handshake_reason(&e, host))))?;
        Ok(Box::new(TlsStream(rustls::StreamOwned::new(conn, io))))
    }
}

/// Why a handshake failed, in words.
fn handshake_reason(e: &std::io::Error, host: &str) -> String {
    use rustls::CertificateError as C;
    let Some(tls) = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) else {
        return e.to_string();
    };
    match tls {
        rustls::Error::InvalidCertificate(C::UnknownIssuer) => "the server's certificate is not signed by a CA this host trusts".into(),
        rustls::Error::InvalidCertificate(C::NotValidForName | C::NotValidForNameContext { .. }) => format!("the server's certificate does not name {host}"),
        rustls::Error::InvalidCertificate(C::Expired | C::ExpiredContext { .. }) => "the server's certificate has expired".into(),
        rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. } => "the server does not speak TLS there (use http://?)".into(),
        other => other.to_string(),
    }
}

struct TlsStream(rustls::StreamOwned<rustls::ClientConnection, Box<dyn ureq::ReadWrite>>);

impl std::fmt::Debug for TlsStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsStream").finish_non_exhaustive()
    }
}

impl ureq::ReadWrite for TlsStream {
    fn socket(&self) -> Option<&std::net::TcpStream> {
        self.0.get_ref().socket()
    }
}

impl Read for TlsStream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        // An end without close_notify stays an error (UnexpectedEof): it may be a truncation.
        self.0.read(buf)
    }
}

impl Write for TlsStream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

/// `scheme://host[:port]` of a URL: what may be logged of a webhook, whose path or query may
/// hold a secret.
pub fn url_origin(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("?", url));
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    format!("{scheme}://{host}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_origin_keeps_no_path_query_or_user() {
        assert_eq!(url_origin("https://hooks.example:8443/t/s3cr3t?key=abc#x"), "https://hooks.example:8443");
        assert_eq!(url_origin("http://user:pw@10.0.0.1/hook"), "http://10.0.0.1");
        assert_eq!(url_origin("https://[::1]:9/a"), "https://[::1]:9");
        assert_eq!(url_origin("https://h?token=1"), "https://h");
    }
}
