//! The web console (coordinator/src/console), for real: a headless Chromium driven by
//! Playwright (coordinator/tests/console/test_console.py) against a coordinator, an etcd and
//! an agent started here, and the CSRF and cookie rules checked with a plain HTTP client.
//!
//! Needs Debian's `chromium` and PyPI's `playwright` and `pytest` (.ci/run installs them);
//! outside CI the browser test is skipped without them, under CI=true it fails.

mod support;

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ferry_common::testing::EtcdServer;
use support::{api_token_file, free_port, random_bytes, scratch, write_file, Daemons, Ferry, API_TOKEN};

const WAIT: Duration = Duration::from_secs(180);
/// The whole browser run; it takes about a minute on an idle machine.
const PYTEST_TIMEOUT: Duration = Duration::from_secs(900);

fn wait_for(what: &str, d: &Daemons, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !ok() {
        assert!(Instant::now() < deadline, "{what} within {WAIT:?}{}", d.logs());
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn status(url: &str) -> u16 {
    match ureq::get(url).timeout(Duration::from_secs(5)).call() {
        Ok(r) => r.status(),
        Err(ureq::Error::Status(code, _)) => code,
        Err(_) => 0,
    }
}

/// A single-host coordinator (`--data-dir`, its own agent) serving the API and the console.
fn single_host(dir: &Path) -> (Daemons, String) {
    let port = free_port();
    let log = dir.join("coordinator.log");
    let child = Ferry::bare()
        .args(["coordinator", "--data-dir"])
        .arg(dir.join("data"))
        .args(["--listen", &format!("127.0.0.1:{port}"), "--api-token-file"])
        .arg(api_token_file(dir))
        .args(["--movers", "2", "--name", "single"])
        .spawn_detached(&log);
    let d = Daemons { children: vec![("coordinator".into(), child, log)] };
    let url = format!("http://127.0.0.1:{port}");
    wait_for("the coordinator answers", &d, || status(&format!("{url}/healthz")) == 200);
    (d, url)
}

/// A cluster: a coordinator on `etcd` serving the API and the console, and one agent (w1)
/// whose writes of any `bad.bin` are corrupted (FERRY_TEST_CORRUPT), so an execution has a
/// failed entry to show.
fn cluster(etcd: &EtcdServer, dir: &Path) -> (Daemons, String) {
    use std::os::unix::process::CommandExt;
    let (api, probes) = (free_port(), free_port());
    let log_filter = std::env::var("FERRY_TEST_LOG").unwrap_or_else(|_| "info".into());
    let coordinator = Ferry::bare()
        .env("RUST_LOG", &log_filter)
        .args(["coordinator", "--etcd", &etcd.endpoint, "--name", "c1", "--listen", &format!("127.0.0.1:{api}"), "--api-token-file"])
        .arg(api_token_file(dir))
        .spawn_detached(&dir.join("coordinator.log"));
    let worker_bin = Path::new(env!("CARGO_BIN_EXE_ferry")).with_file_name("ferry-worker");
    let hooked = std::fs::read(&worker_bin).is_ok_and(|b| b.windows(18).any(|w| w == b"FERRY_TEST_CORRUPT"));
    assert!(
        hooked,
        "{} lacks the fault-injection hooks this test uses: build it with the tests' features (cargo build --release --workspace --bin ferry-worker --test console)",
        worker_bin.display()
    );
    let worker_log = dir.join("worker.log");
    let worker = Command::new(&worker_bin)
        .args(["--etcd", &etcd.endpoint, "--name", "w1", "--movers", "2", "--lease-ttl", "3", "--metrics-listen", &format!("127.0.0.1:{probes}")])
        .env("RUST_LOG", &log_filter)
        .env("FERRY_TEST_CORRUPT", "bad.bin")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&worker_log).unwrap())
        .process_group(0)
        .spawn()
        .expect("start ferry-worker");
    let d = Daemons { children: vec![("coordinator".into(), coordinator, dir.join("coordinator.log")), ("worker".into(), worker, worker_log)] };
    let url = format!("http://127.0.0.1:{api}");
    wait_for("the worker is ready", &d, || status(&format!("http://127.0.0.1:{probes}/readyz")) == 200);
    wait_for("the coordinator is ready", &d, || status(&format!("{url}/readyz")) == 200);
    (d, url)
}

/// An HTTP client that follows no redirects, so 303s are seen as they are.
fn client() -> ureq::Agent {
    ureq::AgentBuilder::new().redirects(0).timeout(Duration::from_secs(10)).build()
}

/// (status, Set-Cookie, Location, body) of one request.
fn send(req: ureq::Request, form: Option<&[(&str, &str)]>) -> (u16, String, String, String) {
    let res = match form {
        Some(f) => req.send_form(f),
        None => req.call(),
    };
    let r = match res {
        Ok(r) | Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("request failed: {e}"),
    };
    let (code, cookie, location) = (r.status(), r.header("set-cookie").unwrap_or("").to_string(), r.header("location").unwrap_or("").to_string());
    (code, cookie, location, r.into_string().unwrap_or_default())
}

/// The value of the hidden `csrf` field in a page.
fn csrf_of(page: &str) -> String {
    let at = page.find(r#"name="csrf" value=""#).expect("the page has a form with a CSRF token") + r#"name="csrf" value=""#.len();
    page[at..].split('"').next().unwrap().to_string()
}

/// Scenario 6, and the cookie rules, with a plain HTTP client: a form POST without its
/// session's CSRF token, or from another origin, is refused with 403 and changes nothing; the
/// cookie is a session id that the JSON API does not accept.
#[test]
fn console_posts_need_the_sessions_csrf_token_and_the_api_ignores_the_cookie() {
    let dir = scratch();
    let (d, url) = single_host(dir.path());
    let http = client();

    // No session: pages go to the login, an EventSource gets 401.
    let (code, _, location, _) = send(http.get(&format!("{url}/console/tasks")), None);
    assert_eq!((code, location.as_str()), (303, "/login"));
    let (code, ..) = send(http.get(&format!("{url}/console/executions/x/events")).set("Accept", "text/event-stream"), None);
    assert_eq!(code, 401);
    let (code, _, location, _) = send(http.post(&format!("{url}/console/tasks")), Some(&[("Name", "t")]));
    assert_eq!((code, location.as_str()), (303, "/login"), "a POST without a session goes to the login too");

    // Wrong token: 401 and no cookie. Right token: a session cookie that is not the token.
    let (code, cookie, _, body) = send(http.post(&format!("{url}/login")), Some(&[("token", "wrong-token-wrong-token")]));
    assert_eq!(code, 401);
    assert!(cookie.is_empty() && body.contains("not accepted"), "{body}");
    let (code, cookie, location, _) = send(http.post(&format!("{url}/login")), Some(&[("token", API_TOKEN)]));
    assert_eq!((code, location.as_str()), (303, "/console/executions"));
    assert!(cookie.starts_with("ferry_session=") && cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict") && cookie.contains("Path=/"), "{cookie}");
    assert!(!cookie.contains("Secure"), "plain HTTP: a Secure cookie would never come back: {cookie}");
    assert!(!cookie.contains(API_TOKEN), "{cookie}");
    let session = cookie.split(';').next().unwrap().to_string();

    // The JSON API wants the bearer token, not the cookie.
    let (code, ..) = send(http.get(&format!("{url}/v1/tasks")).set("Cookie", &session), None);
    assert_eq!(code, 401, "the API does not take the console's cookie");

    let (code, _, _, page) = send(http.get(&format!("{url}/console/tasks/new")).set("Cookie", &session), None);
    assert_eq!(code, 200);
    let csrf = csrf_of(&page);
    let src = dir.path().join("src");
    write_file(&src.join("f"), b"x");
    let (src, dst) = (src.to_str().unwrap().to_string(), dir.path().join("dst").to_str().unwrap().to_string());
    fn form<'a>(src: &'a str, dst: &'a str, token: Option<&'a str>) -> Vec<(&'a str, &'a str)> {
        let mut f = vec![("Name", "csrf-test"), ("SourceLocation", src), ("DestinationLocation", dst)];
        f.extend(token.map(|t| ("csrf", t)));
        f
    }
    let post = || http.post(&format!("{url}/console/tasks")).set("Cookie", &session);
    let (code, _, _, body) = send(post(), Some(&form(&src, &dst, None)));
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("no CSRF token"), "the refusal says why: {body}");
    let wrong = "0".repeat(64);
    let (code, _, _, body) = send(post(), Some(&form(&src, &dst, Some(&wrong))));
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("CSRF token does not match"), "{body}");
    let (code, _, _, body) = send(post().set("Origin", "http://evil.example"), Some(&form(&src, &dst, Some(&csrf))));
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("Origin"), "{body}");
    let (code, _, _, body) = send(post().set("Referer", "http://evil.example/page"), Some(&form(&src, &dst, Some(&csrf))));
    assert_eq!(code, 403, "{body}");
    let (code, tasks) = match ureq::get(&format!("{url}/v1/tasks")).set("Authorization", &format!("Bearer {API_TOKEN}")).call() {
        Ok(r) => (r.status(), r.into_string().unwrap()),
        Err(e) => panic!("{e}"),
    };
    assert_eq!((code, tasks.as_str()), (200, "[]"), "a refused POST changed nothing");

    // With the token and from the console itself: done.
    let (code, _, location, body) = send(post().set("Origin", &url), Some(&form(&src, &dst, Some(&csrf))));
    assert_eq!((code, location.as_str()), (303, "/console/tasks/csrf-test"), "{body}{}", d.logs());

    // Logout needs the token too, and ends the session.
    let (code, ..) = send(http.post(&format!("{url}/logout")).set("Cookie", &session), Some(&[("x", "y")]));
    assert_eq!(code, 403);
    let (code, cookie, location, _) = send(http.post(&format!("{url}/logout")).set("Cookie", &session), Some(&[("csrf", csrf.as_str())]));
    assert_eq!((code, location.as_str()), (303, "/login"));
    assert!(cookie.contains("Max-Age=0"), "{cookie}");
    let (code, _, location, _) = send(http.get(&format!("{url}/console/tasks")).set("Cookie", &session), None);
    assert_eq!((code, location.as_str()), (303, "/login"), "the session ended");

    // Assets need no session and are cached for long.
    let r = ureq::get(&format!("{url}/console/assets/htmx.min.js")).set("Accept-Encoding", "gzip").call().unwrap();
    assert_eq!(r.header("cache-control"), Some("public, max-age=31536000, immutable"));
    assert_eq!(r.header("content-encoding"), Some("gzip"));
}

/// Over HTTPS the session cookie is also Secure, so a browser never sends it in clear.
#[test]
fn over_https_the_session_cookie_is_secure() {
    use std::os::unix::fs::PermissionsExt;
    let dir = scratch();
    let ck = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
    let (cert, key) = (dir.path().join("api.crt"), dir.path().join("api.key"));
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let port = free_port();
    let log = dir.path().join("coordinator.log");
    let child = Ferry::bare()
        .args(["coordinator", "--data-dir"])
        .arg(dir.path().join("data"))
        .args(["--listen", &format!("127.0.0.1:{port}"), "--api-token-file"])
        .arg(api_token_file(dir.path()))
        .arg("--tls-cert")
        .arg(&cert)
        .arg("--tls-key")
        .arg(&key)
        .args(["--movers", "1", "--name", "tls"])
        .spawn_detached(&log);
    let d = Daemons { children: vec![("coordinator".into(), child, log)] };
    let url = format!("https://127.0.0.1:{port}");
    let curl = |args: &[&str]| {
        let out = Command::new("curl").args(["-sS", "--max-time", "10", "--cacert"]).arg(&cert).args(args).output().expect("curl (apt-get install curl)");
        (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned())
    };
    wait_for("the coordinator answers over HTTPS", &d, || curl(&["--fail", &format!("{url}/healthz")]).0);
    let (ok, head) = curl(&["-i", "-X", "POST", "--data-urlencode", &format!("token={API_TOKEN}"), &format!("{url}/login")]);
    assert!(ok, "{head}{}", d.logs());
    let cookie = head.lines().find(|l| l.to_ascii_lowercase().starts_with("set-cookie:")).unwrap_or_else(|| panic!("no cookie: {head}"));
    assert!(head.starts_with("HTTP/") && head.lines().next().unwrap().contains(" 303"), "{head}");
    assert!(cookie.contains("ferry_session=") && cookie.contains("; Secure") && cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"), "{cookie}");
}

/// Whether the browser test can run here: Debian's chromium and Playwright with pytest.
fn browser_available() -> Result<(), String> {
    if !Path::new("/usr/bin/chromium").exists() {
        return Err("/usr/bin/chromium is missing (apt-get install chromium)".into());
    }
    let py = Command::new("python3").args(["-c", "import playwright.sync_api, pytest"]).output().map_err(|e| format!("python3: {e}"))?;
    if !py.status.success() {
        return Err(format!("python3 cannot import playwright and pytest (python3 -m pip install playwright pytest): {}", String::from_utf8_lossy(&py.stderr)));
    }
    Ok(())
}

/// Scenarios 1 to 5 in a real browser: log in; a task's field error, then its execution's
/// live progress to SUCCESS; cancelling a running execution; failed entries with their codes;
/// an agent going OFFLINE once killed. Screenshots are kept under the target directory.
#[test]
fn the_console_in_a_real_browser() {
    if let Err(why) = browser_available() {
        assert!(std::env::var("CI").as_deref() != Ok("true"), "{why} (under CI=true no test skips; .ci/run installs them)");
        eprintln!("skipped: {why}");
        return;
    }
    let dir = scratch();
    let Some(etcd) = EtcdServer::start() else { return };
    let data = dir.path().join("data");
    // 16 × 64 KiB at 256 KiB/s: about 4 s of transfer, long enough to watch live.
    for i in 0..16 {
        write_file(&data.join(format!("src-ok/d{}/f{i}.bin", i % 4)), &random_bytes(64 << 10));
    }
    // 8 MiB at 64 KiB/s: running for minutes, until the test cancels it.
    for i in 0..8 {
        write_file(&data.join(format!("src-slow/f{i}.bin")), &random_bytes(1 << 20));
    }
    for i in 0..4 {
        write_file(&data.join(format!("src-bad/f{i}.bin")), &random_bytes(32 << 10));
    }
    write_file(&data.join("src-bad/bad.bin"), &random_bytes(32 << 10));
    let (d, url) = cluster(&etcd, dir.path());
    let shots = dir.path().join("screenshots");
    let metrics = dir.path().join("metrics.json");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/console/test_console.py");
    let worker_pgid = d.children[1].1.id();

    let started = Instant::now();
    let log = dir.path().join("pytest.log");
    let mut pytest = Command::new("python3")
        .args(["-m", "pytest", "-x", "-v", "-s", "-p", "no:cacheprovider"])
        .arg(&script)
        .env("FERRY_CONSOLE_URL", &url)
        .env("FERRY_CONSOLE_TOKEN", API_TOKEN)
        .env("FERRY_CONSOLE_DATA", &data)
        .env("FERRY_CONSOLE_SHOTS", &shots)
        .env("FERRY_CONSOLE_METRICS", &metrics)
        .env("FERRY_CONSOLE_WORKER_PGID", worker_pgid.to_string())
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start python3 -m pytest");
    let (mut out, mut err) = (pytest.stdout.take().unwrap(), pytest.stderr.take().unwrap());
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + PYTEST_TIMEOUT;
    let code = loop {
        if let Some(st) = pytest.try_wait().unwrap() {
            break st.code();
        }
        if Instant::now() > deadline {
            let _ = pytest.kill();
            let _ = pytest.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let report = format!("{}{}", out.join().unwrap_or_default(), err.join().unwrap_or_default());
    let _ = std::fs::write(&log, &report);
    eprintln!("{report}");
    eprintln!("the browser run took {:.0} s", started.elapsed().as_secs_f64());

    // Screenshots outlive the scratch directory.
    let target = Path::new(env!("CARGO_BIN_EXE_ferry")).parent().and_then(Path::parent).map(Path::to_path_buf).unwrap_or_else(std::env::temp_dir);
    let keep = target.join("console-screenshots");
    let _ = std::fs::remove_dir_all(&keep);
    std::fs::create_dir_all(&keep).unwrap();
    for f in std::fs::read_dir(&shots).into_iter().flatten().flatten() {
        let _ = std::fs::copy(f.path(), keep.join(f.file_name()));
    }
    let _ = std::fs::copy(&log, keep.join("pytest.log"));
    eprintln!("screenshots: {}", keep.display());
    if let Ok(m) = std::fs::read_to_string(&metrics) {
        eprintln!("page weight and first contentful paint: {m}");
        let _ = std::fs::copy(&metrics, keep.join("metrics.json"));
    }
    assert_eq!(code, Some(0), "the browser tests failed (timeout: {PYTEST_TIMEOUT:?}):\n{report}{}", d.logs());
}
