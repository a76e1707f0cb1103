//! The control plane secure by default, attacked with real components: an etcd that serves
//! TLS only, asks for client certificates and has `auth enable`; a coordinator serving its
//! API over HTTPS; a webhook receiver over HTTPS. Certificates are made here with rcgen.
//!
//! etcd listens on fixed loopback ports 23790/23791, so the tests of this file take a lock.

mod support;

use std::fs;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ferry_common::testing::{EtcdServer, EtcdTls};
use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair};
use support::*;

const ETCD_PORT: u16 = 23790;
const ETCD_PEER_PORT: u16 = 23791;
const WAIT: Duration = Duration::from_secs(60);

static ETCD_PORTS: Mutex<()> = Mutex::new(());

fn worker_bin() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_ferry")).with_file_name("ferry-worker")
}

/// A CA and what it signed, as PEM files in `dir` (keys mode 0600).
struct Pki {
    dir: PathBuf,
    issuer: Issuer<'static, KeyPair>,
}

impl Pki {
    fn new(dir: &Path, name: &str) -> Pki {
        fs::create_dir_all(dir).unwrap();
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, format!("{name} test CA"));
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).unwrap();
        fs::write(dir.join(format!("{name}-ca.crt")), cert.pem()).unwrap();
        let issuer = Issuer::from_ca_cert_pem(&cert.pem(), key).unwrap();
        Pki { dir: dir.to_path_buf(), issuer }
    }

    /// Issues `name.crt` and `name.key` for 127.0.0.1 and localhost; returns their paths.
    fn issue(&self, name: &str) -> (PathBuf, PathBuf) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let (c, k) = (self.dir.join(format!("{name}.crt")), self.dir.join(format!("{name}.key")));
        fs::write(&c, cert.pem()).unwrap();
        write_secret(&k, &key.serialize_pem());
        (c, k)
    }
}

fn write_secret(path: &Path, text: &str) {
    fs::write(path, text).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(0o600)).unwrap();
}

/// Kills its child on drop, panicking test or not.
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(program: &Path, args: &[&str], log: &Path) -> Daemon {
    let child = Command::new(program)
        .args(args)
        .env_remove("RUST_LOG")
        .env_remove("FERRY_API_CACERT")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(fs::File::create(log).unwrap())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", program.display()));
    Daemon(child)
}

/// The one line a refused command prints, asserting there is exactly one and exit code 2.
fn one_line_error(out: &Outcome) -> String {
    out.assert_code(2);
    let lines: Vec<&str> = out.stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "want one line on stderr\n{}", out.describe());
    lines[0].to_string()
}

/// Creates user root (role root) with `password` and turns authentication on, over TLS as
/// `client` (a certificate etcd trusts).
fn enable_auth(endpoint: &str, ca: &Path, client: &(PathBuf, PathBuf), password: &str) {
    use etcd_client as ec;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let tls = ec::TlsOptions::new()
            .ca_certificate(ec::Certificate::from_pem(fs::read(ca).unwrap()))
            .identity(ec::Identity::from_pem(fs::read(&client.0).unwrap(), fs::read(&client.1).unwrap()))
            .assume_http2(true);
        let deadline = Instant::now() + WAIT;
        let mut c = loop {
            let opts = ec::ConnectOptions::new().with_tls(tls.clone()).with_connect_timeout(Duration::from_secs(2));
            let why = match ec::Client::connect([endpoint], Some(opts)).await {
                Ok(mut c) => match c.status().await {
                    Ok(_) => break c,
                    Err(e) => e,
                },
                Err(e) => e,
            };
            assert!(Instant::now() < deadline, "etcd over TLS did not answer: {why}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        c.user_add("root", password, None).await.unwrap();
        c.user_grant_role("root", "root").await.unwrap();
        c.auth_enable().await.unwrap();
    });
}

#[test]
fn copy_through_tls_etcd_with_login_is_exact_and_bad_credentials_get_one_line() {
    let _ports = ETCD_PORTS.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = scratch();
    let pki = Pki::new(&tmp.path().join("pki"), "etcd");
    let ca = pki.dir.join("etcd-ca.crt");
    let server = pki.issue("etcd-server");
    let client = pki.issue("ferry-client");
    let Some(etcd) = EtcdServer::start_tls(ETCD_PORT, ETCD_PEER_PORT, EtcdTls { cert: server.0.clone(), key: server.1.clone(), client_ca: ca.clone() }) else {
        eprintln!("skipping: etcd is not installed (apt-get install etcd-server)");
        return;
    };
    let url = etcd.endpoint.clone();
    enable_auth(&url, &ca, &client, "correct horse");
    let pw = tmp.path().join("etcd-password");
    write_secret(&pw, "correct horse\n");
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let flags: Vec<String> = [
        "--etcd",
        &url,
        "--etcd-cacert",
        &s(&ca),
        "--etcd-cert",
        &s(&client.0),
        "--etcd-key",
        &s(&client.1),
        "--etcd-user",
        "root",
        "--etcd-password-file",
        &s(&pw),
    ]
    .iter()
    .map(|a| a.to_string())
    .collect();
    let flag_refs: Vec<&str> = flags.iter().map(String::as_str).collect();

    let logs = tmp.path().join("logs");
    fs::create_dir_all(&logs).unwrap();
    let _coordinator = spawn(Path::new(env!("CARGO_BIN_EXE_ferry")), &[&["coordinator", "--name", "c1"][..], &flag_refs].concat(), &logs.join("c1.log"));
    let _worker = spawn(&worker_bin(), &[&["--name", "w1", "--movers", "2"][..], &flag_refs].concat(), &logs.join("w1.log"));
    let deadline = Instant::now() + WAIT;
    loop {
        let out = Ferry::bare().args(["workers", "--json"]).args(&flag_refs).run();
        if out.code == Some(0) && serde_json::from_str::<serde_json::Value>(&out.stdout).ok().and_then(|v| v.as_array().map(|a| !a.is_empty())) == Some(true) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the worker did not register over TLS\n{}\nworker log:\n{}",
            out.describe(),
            fs::read_to_string(logs.join("w1.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(300));
    }

    // A copy through the cluster, every hop to etcd over TLS with a login.
    let (src, dst) = (tmp.path().join("src"), tmp.path().join("dst"));
    fs::create_dir_all(src.join("sub")).unwrap();
    write_file(&src.join("a.bin"), &random_bytes(3 * MIB as usize + 17));
    write_file(&src.join("sub/b.txt"), b"over TLS\n");
    let times = time_snapshot(&src);
    let out = Ferry::new("copy", &src, &dst).arg("--json").args(&flag_refs).timeout(Duration::from_secs(300)).run();
    out.assert_code(0);
    assert_exact_copy(&src, &dst, &times, false);

    // A wrong password: one line naming the user and the file to check, exit 2.
    let bad = tmp.path().join("bad-password");
    write_secret(&bad, "wrong\n");
    let bad_flags: Vec<&str> = flag_refs.iter().map(|f| if *f == s(&pw) { bad.to_str().unwrap() } else { f }).collect();
    let line = one_line_error(&Ferry::bare().args(["workers"]).args(&bad_flags).run());
    assert!(line.contains("etcd refused user root: wrong password? (check --etcd-password-file)"), "{line}");
    let out = Command::new(worker_bin()).args(["--name", "w2"]).args(&bad_flags).stdin(Stdio::null()).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("etcd refused user root"), "{}", String::from_utf8_lossy(&out.stderr));

    // No login at all, against an etcd with auth enabled.
    let line = one_line_error(
        &Ferry::bare().args(["workers", "--etcd", &url, "--etcd-cacert", &s(&ca), "--etcd-cert", &s(&client.0), "--etcd-key", &s(&client.1)]).run(),
    );
    assert!(line.contains("--etcd-user"), "{line}");

    // No client certificate: refused by etcd's --client-cert-auth, in one line.
    let line = one_line_error(
        &Ferry::bare().args(["workers", "--etcd", &url, "--etcd-cacert", &s(&ca), "--etcd-user", "root", "--etcd-password-file", &s(&pw)]).run(),
    );
    // etcd ends such a handshake with an alert or just drops the connection, differently
    // from run to run; either way the line says which flags to give.
    assert!(line.contains("certificate") && line.contains("--etcd-cert") && line.contains("--etcd-key"), "{line}");

    // etcd's certificate checked against another CA: refused.
    let other = Pki::new(&tmp.path().join("other"), "other");
    let line = one_line_error(&Ferry::bare().args(["workers", "--etcd", &url, "--etcd-cacert", &s(&other.dir.join("other-ca.crt"))]).run());
    assert!(line.contains("not signed by a CA this host trusts"), "{line}");

    // A password file others can read, a key others can read, a certificate file that is not one.
    let open_pw = tmp.path().join("open-password");
    fs::write(&open_pw, "correct horse\n").unwrap();
    fs::set_permissions(&open_pw, fs::Permissions::from_mode(0o644)).unwrap();
    let line = one_line_error(
        &Ferry::bare().args(["workers", "--etcd", &url, "--etcd-cacert", &s(&ca), "--etcd-user", "root", "--etcd-password-file", &s(&open_pw)]).run(),
    );
    assert!(line.contains("chmod 600"), "{line}");
    let line = one_line_error(&Ferry::bare().args(["workers", "--etcd", &url, "--etcd-cacert", &s(&pw)]).run());
    assert!(line.contains("holds no PEM CERTIFICATE"), "{line}");

    // Plaintext off loopback is refused before any connection, by every command and daemon.
    let line = one_line_error(&Ferry::bare().args(["workers", "--etcd", "http://10.255.255.1:2379"]).run());
    assert!(line.contains("plaintext") && line.contains("https://10.255.255.1:2379") && line.contains("--insecure-etcd"), "{line}");
    let line = one_line_error(&Ferry::new("copy", &src, tmp.path().join("dst2")).args(["--etcd", "http://10.255.255.1:2379"]).run());
    assert!(line.contains("--insecure-etcd"), "{line}");
    assert!(!tmp.path().join("dst2").exists(), "a refused copy created its destination");
    let started = Instant::now();
    let out = Command::new(worker_bin()).args(["--name", "w3", "--etcd", "http://10.255.255.1:2379"]).stdin(Stdio::null()).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--insecure-etcd"), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(started.elapsed() < Duration::from_secs(5), "the refusal waited for a connection");
    let out = Ferry::bare().args(["coordinator", "--name", "c9", "--etcd", "http://10.255.255.1:2379"]).run();
    assert!(one_line_error(&out).contains("--insecure-etcd"));
    // With --insecure-etcd the refusal is gone: what remains is that nothing answers there.
    let line = one_line_error(&Ferry::bare().args(["workers", "--insecure-etcd", "--etcd", "http://10.255.255.1:2379"]).run());
    assert!(line.contains("cannot reach etcd at http://10.255.255.1:2379"), "{line}");
}

/// A tiny HTTPS receiver (python3's http.server with ssl): appends each POST's path and body
/// to `out`.
fn webhook_receiver(port: u16, cert: &Path, key: &Path, out: &Path) -> Daemon {
    let script = r#"
import http.server, ssl, sys
port, cert, key, out = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get('Content-Length', 0)))
        with open(out, 'a') as f:
            f.write(self.path + ' ' + body.decode() + '\n')
        self.send_response(200)
        self.send_header('Content-Length', '0')
        self.end_headers()
    def log_message(self, *a):
        pass
srv = http.server.HTTPServer(('127.0.0.1', port), H)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
srv.serve_forever()
"#;
    let child = Command::new("python3")
        .args(["-c", script, &port.to_string()])
        .arg(cert)
        .arg(key)
        .arg(out)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("python3 runs the webhook receiver");
    Daemon(child)
}

#[test]
fn api_over_https_verifies_certificates_and_webhooks_never_log_their_url() {
    let tmp = scratch();
    let pki = Pki::new(&tmp.path().join("pki"), "api");
    let ca = pki.dir.join("api-ca.crt");
    let (cert, key) = pki.issue("api-server");
    let (hook_cert, hook_key) = pki.issue("hook-server");
    let token = "https-test-token-0123456789";
    let tokens = tmp.path().join("tokens");
    write_secret(&tokens, &format!("{token}\n"));
    let (port, hook_port) = (free_port(), free_port());
    let api = format!("https://127.0.0.1:{port}");
    // The webhook's path and query hold secrets: the log may show its origin only.
    let hook = format!("https://127.0.0.1:{hook_port}/hooks/s3cr3t-path?token=hunter2");
    let log = tmp.path().join("coordinator.log");
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let _coordinator = spawn(
        Path::new(env!("CARGO_BIN_EXE_ferry")),
        &[
            "coordinator",
            "--data-dir",
            &s(&tmp.path().join("data")),
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--api-token-file",
            &s(&tokens),
            "--tls-cert",
            &s(&cert),
            "--tls-key",
            &s(&key),
            "--webhook-url",
            &hook,
            "--webhook-cacert",
            &s(&ca),
            "--movers",
            "2",
        ],
        &log,
    );
    // curl with the CA: the health check answers over HTTPS.
    let deadline = Instant::now() + WAIT;
    loop {
        let out = Command::new("curl").args(["-sS", "--fail", "--cacert", &s(&ca), &format!("{api}/v1/health")]).output().unwrap();
        if out.status.success() {
            assert!(String::from_utf8_lossy(&out.stdout).contains("\"ok\""), "{}", String::from_utf8_lossy(&out.stdout));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no HTTPS health answer: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // curl without it refuses the certificate; plain HTTP gets no API.
    let out = Command::new("curl").args(["-sS", "--fail", &format!("{api}/v1/health")]).output().unwrap();
    assert!(!out.status.success(), "curl trusted a certificate from an unknown CA");
    let out = Command::new("curl").args(["-sS", "--fail", "--max-time", "5", &format!("http://127.0.0.1:{port}/v1/health")]).output().unwrap();
    assert!(!out.status.success(), "the API answered plain HTTP on its HTTPS port");

    // The CLI with --api-cacert (and with FERRY_API_CACERT) works.
    let (src, dst) = (tmp.path().join("src"), tmp.path().join("dst"));
    fs::create_dir_all(&src).unwrap();
    write_file(&src.join("a.txt"), b"https\n");
    let cli = || Ferry::bare().env("FERRY_API_TOKEN", token).env("FERRY_API", &api);
    cli().args(["task", "create", "--name", "t1", "--source"]).arg(&src).arg("--destination").arg(&dst).args(["--api-cacert", &s(&ca)]).run().assert_code(0);
    let out = cli().env("FERRY_API_CACERT", &ca).args(["task", "start", "t1", "--wait", "--json"]).run();
    out.assert_code(0);
    assert_eq!(fs::read(dst.join("a.txt")).unwrap(), b"https\n");

    // Without the CA: one line naming the certificate problem and the flag that fixes it.
    let line = one_line_error(&cli().args(["task", "list"]).run());
    assert!(line.contains("TLS handshake failed") && line.contains("not signed by a CA this host trusts") && line.contains("--api-cacert"), "{line}");
    // Another CA is no better.
    let other = Pki::new(&tmp.path().join("other"), "other");
    let line = one_line_error(&cli().args(["task", "list", "--api-cacert", &s(&other.dir.join("other-ca.crt"))]).run());
    assert!(line.contains("--api-cacert"), "{line}");

    // The receiver was down so far: deliveries failed and were logged (origin only). Once it
    // is up, the events arrive over HTTPS, verified against --webhook-cacert.
    let deadline = Instant::now() + WAIT;
    while !fs::read_to_string(&log).unwrap_or_default().contains("webhook delivery failed") {
        assert!(Instant::now() < deadline, "no failed delivery was logged:\n{}", fs::read_to_string(&log).unwrap_or_default());
        std::thread::sleep(Duration::from_millis(200));
    }
    let received = tmp.path().join("received");
    let _receiver = webhook_receiver(hook_port, &hook_cert, &hook_key, &received);
    let deadline = Instant::now() + WAIT;
    loop {
        let got = fs::read_to_string(&received).unwrap_or_default();
        if got.lines().any(|l| l.starts_with("/hooks/s3cr3t-path?token=hunter2 ") && l.contains("t1")) {
            break;
        }
        assert!(Instant::now() < deadline, "no webhook delivered over HTTPS; received: {got:?}\nlog:\n{}", fs::read_to_string(&log).unwrap_or_default());
        std::thread::sleep(Duration::from_millis(200));
    }
    let text = fs::read_to_string(&log).unwrap();
    assert!(text.contains(&format!("https://127.0.0.1:{hook_port}")), "the log does not say which webhook failed:\n{text}");
    for secret in ["s3cr3t-path", "hunter2", "/hooks"] {
        assert!(!text.contains(secret), "the coordinator logged the webhook URL's {secret:?}:\n{text}");
    }
    for line in BufReader::new(fs::File::open(&log).unwrap()).lines() {
        assert!(!line.unwrap().contains("panicked"));
    }
}
