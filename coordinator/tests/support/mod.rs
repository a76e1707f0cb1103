//! Shared helpers for the `ferry` CLI integration tests: running the real binary with a
//! timeout, building a tree full of awkward entries, and comparing trees (rsync for content and
//! attributes, our own walk for nanosecond timestamps, which rsync compares only to the second).
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::ffi::{CString, OsStr, OsString};
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;

pub mod fault_proxy;
pub mod objects;
pub mod otlp;
pub mod samba;
pub mod sites;

pub const KIB: u64 = 1024;
pub const MIB: u64 = 1024 * 1024;

/// Prefix of ferry's temporary files in a destination.
pub const TEMP_PREFIX: &[u8] = b".ferry-tmp-";

// ---------------------------------------------------------------------------------------------
// Scratch space

/// A fresh directory for one test, removed when dropped. `FERRY_TEST_TMP` picks the parent
/// (it must be a filesystem with holes, user xattrs and device nodes, such as ext4).
pub fn scratch() -> tempfile::TempDir {
    let base = std::env::var_os("FERRY_TEST_TMP").map(PathBuf::from).unwrap_or_else(std::env::temp_dir);
    fs::create_dir_all(&base).unwrap_or_else(|e| panic!("cannot create {}: {e}", base.display()));
    tempfile::Builder::new().prefix("ferry-it-").tempdir_in(&base).unwrap_or_else(|e| panic!("cannot create a scratch dir in {}: {e}", base.display()))
}

// ---------------------------------------------------------------------------------------------
// Running ferry

fn run_timeout() -> Duration {
    let secs = std::env::var("FERRY_TEST_TIMEOUT_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(900);
    Duration::from_secs(secs)
}

/// One finished run of the binary.
#[derive(Debug)]
pub struct Outcome {
    pub cmdline: String,
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Outcome {
    /// Everything needed to understand a failed assertion.
    pub fn describe(&self) -> String {
        format!(
            "command: {}\nexit code: {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}\n--------------",
            self.cmdline,
            self.code,
            truncate(&self.stdout, 20_000),
            truncate(&self.stderr, 20_000)
        )
    }

    pub fn assert_code(&self, expected: i32) -> &Self {
        assert_eq!(self.code, Some(expected), "unexpected exit code\n{}", self.describe());
        self.assert_no_panic();
        self
    }

    pub fn assert_no_panic(&self) -> &Self {
        for bad in ["panicked", "stack backtrace", "RUST_BACKTRACE"] {
            assert!(!self.stderr.contains(bad), "stderr contains {bad:?}\n{}", self.describe());
            assert!(!self.stdout.contains(bad), "stdout contains {bad:?}\n{}", self.describe());
        }
        self
    }

    /// stdout parsed as the single JSON object that `--json` prints.
    pub fn json(&self) -> Value {
        let v: Value = serde_json::from_str(self.stdout.trim()).unwrap_or_else(|e| panic!("stdout is not one JSON object ({e})\n{}", self.describe()));
        assert!(v.is_object(), "--json output is not an object\n{}", self.describe());
        v
    }
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// A free loopback TCP port (the listener is dropped, so a server can take it).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free loopback port")
}

/// The bearer token the API tests use, and a token file (0600) holding it.
pub const API_TOKEN: &str = "test-token-0123456789abcdef";

pub fn api_token_file(dir: &Path) -> PathBuf {
    let f = dir.join("tokens");
    fs::write(&f, format!("# API tokens\n{API_TOKEN}\n")).unwrap();
    fs::set_permissions(&f, fs::Permissions::from_mode(0o600)).unwrap();
    f
}

/// Builder for one invocation of the real `ferry` binary.
pub struct Ferry {
    cmd: Command,
    shown: Vec<String>,
    timeout: Duration,
}

impl Ferry {
    /// `ferry` with no arguments; the environment is cleared of ferry's test hooks.
    pub fn bare() -> Self {
        Self::bare_in(None)
    }

    /// [`Ferry::bare`], run inside network namespace `netns` when one is given (a test site
    /// that alone reaches some server).
    pub fn bare_in(netns: Option<&str>) -> Self {
        let mut cmd = match netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, env!("CARGO_BIN_EXE_ferry")]);
                c
            }
            None => Command::new(env!("CARGO_BIN_EXE_ferry")),
        };
        cmd.stdin(Stdio::null());
        cmd.env_remove("FERRY_TEST_CORRUPT");
        cmd.env_remove("FERRY_TEST_SOURCE_CHANGE");
        Ferry { cmd, shown: vec!["ferry".into()], timeout: run_timeout() }
    }

    /// `ferry SUB SRC DST --no-progress`.
    pub fn new(sub: &str, src: impl AsRef<OsStr>, dst: impl AsRef<OsStr>) -> Self {
        Ferry::bare().arg(sub).arg(src).arg(dst).arg("--no-progress")
    }

    pub fn arg(mut self, a: impl AsRef<OsStr>) -> Self {
        self.shown.push(shell_word(a.as_ref()));
        self.cmd.arg(a);
        self
    }

    pub fn args<S: AsRef<OsStr>>(mut self, args: impl IntoIterator<Item = S>) -> Self {
        for a in args {
            self = self.arg(a);
        }
        self
    }

    pub fn env(mut self, k: &str, v: impl AsRef<OsStr>) -> Self {
        self.shown.insert(0, format!("{k}={}", shell_word(v.as_ref())));
        self.cmd.env(k, v);
        self
    }

    /// Removes every AWS credential and profile variable, so only what a test sets is used.
    pub fn env_remove_aws(mut self) -> Self {
        for k in [
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "AWS_SESSION_TOKEN",
            "AWS_PROFILE",
            "AWS_CONFIG_FILE",
            "AWS_SHARED_CREDENTIALS_FILE",
            "AWS_WEB_IDENTITY_TOKEN_FILE",
            "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
            "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        ] {
            self.cmd.env_remove(k);
        }
        self
    }

    pub fn current_dir(mut self, dir: &Path) -> Self {
        self.cmd.current_dir(dir);
        self
    }

    /// How long the run may take before it counts as a hang (default: FERRY_TEST_TIMEOUT_SECS
    /// or 900 s).
    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = t;
        self
    }

    pub fn cmdline(&self) -> String {
        self.shown.join(" ")
    }

    /// Runs to completion. A run that outlives the timeout is killed and fails the test:
    /// ferry must never hang.
    pub fn run(mut self) -> Outcome {
        let cmdline = self.cmdline();
        self.cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = self.cmd.spawn().unwrap_or_else(|e| panic!("cannot start {cmdline}: {e}"));
        let out = drain(child.stdout.take().unwrap());
        let err = drain(child.stderr.take().unwrap());
        let deadline = Instant::now() + self.timeout;
        let status = loop {
            if let Some(st) = child.try_wait().expect("try_wait") {
                break st;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                let stderr = err.join().unwrap_or_default();
                panic!("{cmdline} did not finish within {:?} (hang?)\nstderr:\n{stderr}", self.timeout);
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        Outcome { cmdline, code: status.code(), stdout: out.join().unwrap_or_default(), stderr: err.join().unwrap_or_default() }
    }

    /// Starts in its own process group (so that everything it forks can be killed at once)
    /// with output discarded; for crash tests.
    pub fn spawn_detached(mut self, stderr_file: &Path) -> Child {
        use std::os::unix::process::CommandExt;
        let cmdline = self.cmdline();
        let errf = File::create(stderr_file).expect("create stderr file");
        self.cmd.stdout(Stdio::null()).stderr(errf).process_group(0);
        self.cmd.spawn().unwrap_or_else(|e| panic!("cannot start {cmdline}: {e}"))
    }
}

fn drain<R: Read + Send + 'static>(mut r: R) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    })
}

fn shell_word(s: &OsStr) -> String {
    let t = s.to_string_lossy();
    if !t.is_empty() && t.bytes().all(|b| b.is_ascii_alphanumeric() || b"/._-=:,+".contains(&b)) {
        t.into_owned()
    } else {
        format!("'{}'", t.replace('\'', "'\\''"))
    }
}

/// `ferry SUB SRC DST --json EXTRA...`, asserting exit 0 and status SUCCESS; returns the JSON.
pub fn ferry_ok(sub: &str, src: &Path, dst: &Path, extra: &[&str]) -> Value {
    let out = Ferry::new(sub, src, dst).arg("--json").args(extra).run();
    out.assert_code(0);
    let json = out.json();
    assert_eq!(json["status"], "SUCCESS", "{}", out.describe());
    assert_eq!(json["mode"], sub, "{}", out.describe());
    json
}

/// A counter from `--json` output or a report summary line.
pub fn counter(json: &Value, name: &str) -> u64 {
    json["counters"][name].as_u64().unwrap_or_else(|| panic!("counter {name:?} missing or not an unsigned integer in {json}"))
}

pub const COUNTERS: [&str; 9] = [
    "files_prepared",
    "bytes_prepared",
    "files_transferred",
    "bytes_transferred",
    "files_skipped",
    "files_deleted",
    "files_verified",
    "files_failed",
    "bytes_verified",
];

/// Asserts the documented shape of `--json` output (and of a report's summary line).
pub fn assert_summary_shape(json: &Value) {
    assert!(json["execution"].is_string(), "execution missing: {json}");
    assert!(json["mode"].is_string(), "mode missing: {json}");
    assert!(matches!(json["status"].as_str(), Some("SUCCESS" | "ERROR")), "bad status: {json}");
    for c in COUNTERS {
        counter(json, c);
    }
    let d = json["duration_secs"].as_f64().unwrap_or_else(|| panic!("duration_secs missing: {json}"));
    assert!(d >= 0.0 && d.is_finite(), "bad duration_secs: {json}");
    let failures = json["failures"].as_array().unwrap_or_else(|| panic!("failures is not an array: {json}"));
    for f in failures {
        assert!(f["path"].is_string() && f["reason"].is_string(), "bad failure entry {f} in {json}");
    }
}

/// The `failures` array of `--json` output as (path, reason) pairs.
pub fn failures(json: &Value) -> Vec<(String, String)> {
    json["failures"]
        .as_array()
        .unwrap_or_else(|| panic!("failures is not an array: {json}"))
        .iter()
        .map(|f| (f["path"].as_str().unwrap_or("").to_string(), f["reason"].as_str().unwrap_or("").to_string()))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Reports

pub struct Report {
    pub entries: Vec<Value>,
    pub summary: Value,
}

impl Report {
    /// Entries whose path is `rel` (compared after normalising `\xNN` escapes to lower case).
    pub fn entries_for(&self, rel: &str) -> Vec<&Value> {
        let want = normalize_escapes(rel);
        self.entries.iter().filter(|e| normalize_escapes(e["path"].as_str().unwrap_or("")) == want).collect()
    }

    /// The one entry for `rel`; fails if there is none or more than one.
    pub fn entry(&self, rel: &str) -> &Value {
        let found = self.entries_for(rel);
        assert_eq!(found.len(), 1, "expected exactly one report entry for {rel:?}, found {found:?}");
        found[0]
    }
}

/// Everything wrong with how a report accounts for the tree under `src`: entries that appear
/// more than once, name no source path, carry a status outside `allowed` or the wrong kind, and
/// source entries missing from it (the root itself may appear once). Also returns the entries
/// by source-relative path, and how many source entries there are.
pub fn report_problems<'a>(rep: &'a Report, src: &Path, allowed: &[&str]) -> (Vec<String>, BTreeMap<PathBuf, &'a Value>, usize) {
    let expected: BTreeMap<String, PathBuf> = walk(src).into_iter().map(|p| (normalize_escapes(&escape_rel(&p)), p)).collect();
    let mut seen: BTreeMap<String, Vec<&Value>> = BTreeMap::new();
    for e in &rep.entries {
        seen.entry(normalize_escapes(e["path"].as_str().unwrap())).or_default().push(e);
    }
    let mut problems = Vec::new();
    let mut by_path = BTreeMap::new();
    for (path, es) in &seen {
        if es.len() != 1 {
            problems.push(format!("{path:?} appears {} times: {es:?}", es.len()));
        }
        if matches!(path.as_str(), "" | "." | "/") {
            continue;
        }
        let Some(rel) = expected.get(path) else {
            problems.push(format!("entry for {path:?}, which is not a source path: {:?}", es[0]));
            continue;
        };
        let e = es[0];
        let status = e["status"].as_str().unwrap();
        if !allowed.contains(&status) {
            problems.push(format!("{path:?} has status {status:?}, expected one of {allowed:?}: {e}"));
        }
        let src_kind = kind_of(&fs::symlink_metadata(src.join(rel)).unwrap());
        let kind = e["kind"].as_str().unwrap();
        if !(kind == src_kind || (src_kind == "file" && kind == "hardlink")) {
            problems.push(format!("{path:?} is a {src_kind} but the report says {kind:?}: {e}"));
        }
        by_path.insert(rel.clone(), e);
    }
    let missing: Vec<&String> = expected.keys().filter(|p| !seen.contains_key(*p)).collect();
    if !missing.is_empty() {
        problems.push(format!("{} source entries are missing from the report, e.g. {:?}", missing.len(), &missing[..missing.len().min(20)]));
    }
    (problems, by_path, expected.len())
}

/// Reads a JSON Lines report: entry lines, then exactly one summary line, last.
pub fn read_report(path: &Path) -> Report {
    let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read report {}: {e}", path.display()));
    let mut lines: Vec<Value> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("report line {} is not JSON ({e}): {line:?}", i + 1));
        lines.push(v);
    }
    let summary = lines.pop().unwrap_or_else(|| panic!("report {} is empty", path.display()));
    assert_eq!(summary["type"], "summary", "the last report line must be the summary, got {summary}");
    for e in &lines {
        assert_eq!(e["type"], "entry", "every report line before the summary must be an entry, got {e}");
        assert!(e["path"].is_string(), "entry without a path: {e}");
        assert!(matches!(e["status"].as_str(), Some("transferred" | "skipped" | "verified" | "deleted" | "failed")), "entry with an unknown status: {e}");
        assert!(
            matches!(e["kind"].as_str(), Some("file" | "dir" | "symlink" | "hardlink" | "fifo" | "socket" | "chardev" | "blockdev")),
            "entry with an unknown kind: {e}"
        );
        match &e["crc32c"] {
            Value::Null => {}
            Value::String(s) => {
                assert!(s.len() == 8 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)), "crc32c must be 8 lowercase hex digits: {e}")
            }
            _ => panic!("crc32c must be a string or null: {e}"),
        }
    }
    Report { entries: lines, summary }
}

/// `\xAB` and `\xab` denote the same byte.
pub fn normalize_escapes(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1] == b'x' && b[i + 2].is_ascii_hexdigit() && b[i + 3].is_ascii_hexdigit() {
            out.extend_from_slice(&[b'\\', b'x', b[i + 2].to_ascii_lowercase(), b[i + 3].to_ascii_lowercase()]);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).expect("still UTF-8")
}

/// How a relative path is written in reports: UTF-8 as is; otherwise invalid bytes become
/// `\xNN` (and a backslash is doubled, so that the escape is unambiguous).
pub fn escape_rel(rel: &Path) -> String {
    let bytes = rel.as_os_str().as_bytes();
    if let Ok(s) = std::str::from_utf8(bytes) {
        return s.to_string();
    }
    let mut out = String::new();
    for chunk in bytes.utf8_chunks() {
        out.push_str(&chunk.valid().replace('\\', "\\\\"));
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// CRC32C (Castagnoli), bitwise table version; small and obviously right.

pub fn crc32c(data: &[u8]) -> u32 {
    static TABLE: OnceLock<[u32; 256]> = OnceLock::new();
    let t = TABLE.get_or_init(|| {
        let mut t = [0u32; 256];
        for (i, slot) in t.iter_mut().enumerate() {
            let mut c = i as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 { (c >> 1) ^ 0x82F6_3B78 } else { c >> 1 };
            }
            *slot = c;
        }
        t
    });
    let mut crc = !0u32;
    for &b in data {
        crc = t[((crc ^ b as u32) & 0xff) as usize] ^ (crc >> 8);
    }
    !crc
}

// ---------------------------------------------------------------------------------------------
// Small filesystem helpers

pub fn cstr(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).expect("path without NUL")
}

fn check(rc: libc::c_int, what: &str, p: &Path) {
    if rc != 0 {
        panic!("{what} {}: {}", p.display(), io::Error::last_os_error());
    }
}

/// Random bytes from the kernel (fast even in an unoptimised test build).
pub fn random_bytes(n: usize) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    File::open("/dev/urandom").expect("open /dev/urandom").read_exact(&mut buf).expect("read /dev/urandom");
    buf
}

pub fn write_file(p: &Path, data: &[u8]) {
    if let Some(parent) = p.parent() {
        fs::create_dir_all(parent).unwrap_or_else(|e| panic!("mkdir -p {}: {e}", parent.display()));
    }
    fs::write(p, data).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
}

pub fn chmod(p: &Path, mode: u32) {
    fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap_or_else(|e| panic!("chmod {}: {e}", p.display()));
}

pub fn symlink(target: impl AsRef<Path>, link: &Path) {
    std::os::unix::fs::symlink(target.as_ref(), link).unwrap_or_else(|e| panic!("symlink {}: {e}", link.display()));
}

pub fn mkfifo(p: &Path) {
    check(unsafe { libc::mkfifo(cstr(p).as_ptr(), 0o640) }, "mkfifo", p);
}

pub fn mknod_char(p: &Path, major: u32, minor: u32) {
    let dev = libc::makedev(major, minor);
    check(unsafe { libc::mknod(cstr(p).as_ptr(), libc::S_IFCHR | 0o666, dev) }, "mknod", p);
}

pub fn make_socket(p: &Path) {
    let l = std::os::unix::net::UnixListener::bind(p).unwrap_or_else(|e| panic!("bind {}: {e}", p.display()));
    drop(l); // the socket file stays behind
}

pub fn set_xattr(p: &Path, name: &str, value: &[u8]) {
    let n = CString::new(name).unwrap();
    let rc = unsafe { libc::setxattr(cstr(p).as_ptr(), n.as_ptr(), value.as_ptr().cast(), value.len(), 0) };
    check(rc, &format!("setxattr {name}"), p);
}

pub fn get_xattr(p: &Path, name: &str) -> Option<Vec<u8>> {
    let n = CString::new(name).unwrap();
    let mut buf = vec![0u8; 4096];
    let rc = unsafe { libc::lgetxattr(cstr(p).as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if rc < 0 {
        return None;
    }
    buf.truncate(rc as usize);
    Some(buf)
}

/// Sets atime and mtime (seconds, nanoseconds) without following a final symlink.
pub fn set_times(p: &Path, atime: (i64, i64), mtime: (i64, i64)) {
    let mut ts: [libc::timespec; 2] = unsafe { std::mem::zeroed() };
    ts[0].tv_sec = atime.0 as libc::time_t;
    ts[0].tv_nsec = atime.1 as _;
    ts[1].tv_sec = mtime.0 as libc::time_t;
    ts[1].tv_nsec = mtime.1 as _;
    let rc = unsafe { libc::utimensat(libc::AT_FDCWD, cstr(p).as_ptr(), ts.as_ptr(), libc::AT_SYMLINK_NOFOLLOW) };
    check(rc, "utimensat", p);
}

pub fn mtime_of(p: &Path) -> (i64, i64) {
    let m = fs::symlink_metadata(p).unwrap_or_else(|e| panic!("stat {}: {e}", p.display()));
    (m.mtime(), m.mtime_nsec())
}

pub fn atime_of(p: &Path) -> (i64, i64) {
    let m = fs::symlink_metadata(p).unwrap_or_else(|e| panic!("stat {}: {e}", p.display()));
    (m.atime(), m.atime_nsec())
}

/// Rewrites a file with different bytes of the same length, keeping its atime and mtime, so
/// that only a content comparison can see the change.
pub fn change_content_keep_size_and_times(p: &Path) {
    let (a, m) = (atime_of(p), mtime_of(p));
    let mut data = fs::read(p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()));
    assert!(!data.is_empty(), "{} must not be empty", p.display());
    for b in data.iter_mut() {
        *b = !*b;
    }
    let mut f = fs::OpenOptions::new().write(true).open(p).unwrap();
    f.write_all(&data).unwrap();
    drop(f);
    set_times(p, a, m);
}

/// Bytes actually allocated on disk.
pub fn allocated_bytes(p: &Path) -> u64 {
    fs::symlink_metadata(p).unwrap_or_else(|e| panic!("stat {}: {e}", p.display())).blocks() * 512
}

/// Opens for reading without updating the atime, so that checking a copy does not change
/// what a later check of its timestamps sees.
pub fn open_noatime(p: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    fs::OpenOptions::new().read(true).custom_flags(libc::O_NOATIME).open(p)
}

pub fn read_noatime(p: &Path) -> Vec<u8> {
    let mut f = open_noatime(p).unwrap_or_else(|e| panic!("open {}: {e}", p.display()));
    let mut buf = Vec::new();
    f.read_to_end(&mut buf).unwrap_or_else(|e| panic!("read {}: {e}", p.display()));
    buf
}

/// Byte-for-byte equality of two files (false if either cannot be opened).
pub fn same_content(a: &Path, b: &Path) -> bool {
    let (Ok(mut fa), Ok(mut fb)) = (open_noatime(a), open_noatime(b)) else {
        return false;
    };
    let (mut ba, mut bb) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    loop {
        let na = read_full(&mut fa, &mut ba);
        let nb = read_full(&mut fb, &mut bb);
        if na != nb || ba[..na] != bb[..nb] {
            return false;
        }
        if na == 0 {
            return true;
        }
    }
}

fn read_full(f: &mut File, buf: &mut [u8]) -> usize {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => panic!("read: {e}"),
        }
    }
    n
}

// ---------------------------------------------------------------------------------------------
// Walking trees

/// Every entry below `root` (not `root` itself) as a relative path, parents before children,
/// siblings in byte order. Symlinks are not followed.
pub fn walk(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    walk_into(root, Path::new(""), &mut out, false);
    out
}

/// Like `walk`, but tolerates entries vanishing underneath (a tree being written right now).
pub fn walk_tolerant(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    walk_into(root, Path::new(""), &mut out, true);
    out
}

fn walk_into(root: &Path, rel: &Path, out: &mut Vec<PathBuf>, tolerant: bool) {
    let dir = root.join(rel);
    let rd = match fs::read_dir(&dir) {
        Ok(rd) => rd,
        Err(_) if tolerant => return,
        Err(e) => panic!("read_dir {}: {e}", dir.display()),
    };
    let mut children: Vec<(OsString, bool)> = Vec::new();
    for ent in rd {
        let ent = match ent {
            Ok(e) => e,
            Err(_) if tolerant => continue,
            Err(e) => panic!("read_dir {}: {e}", dir.display()),
        };
        let is_dir = match ent.file_type() {
            Ok(t) => t.is_dir(),
            Err(_) if tolerant => continue,
            Err(e) => panic!("file_type in {}: {e}", dir.display()),
        };
        children.push((ent.file_name(), is_dir));
    }
    children.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    for (name, is_dir) in children {
        let child = rel.join(&name);
        out.push(child.clone());
        if is_dir {
            walk_into(root, &child, out, tolerant);
        }
    }
}

pub fn is_temp_name(rel: &Path) -> bool {
    rel.file_name().is_some_and(|n| n.as_bytes().starts_with(TEMP_PREFIX))
}

/// ferry's temporary files left anywhere under `root`.
pub fn temp_leftovers(root: &Path) -> Vec<String> {
    walk(root).into_iter().filter(|p| is_temp_name(p)).map(|p| escape_rel(&p)).collect()
}

pub fn assert_no_temp_leftovers(root: &Path) {
    let left = temp_leftovers(root);
    assert!(left.is_empty(), "temporary files remain in {}: {left:?}", root.display());
}

pub fn kind_of(m: &fs::Metadata) -> &'static str {
    let t = m.file_type();
    if t.is_file() {
        "file"
    } else if t.is_dir() {
        "dir"
    } else if t.is_symlink() {
        "symlink"
    } else if t.is_fifo() {
        "fifo"
    } else if t.is_socket() {
        "socket"
    } else if t.is_char_device() {
        "chardev"
    } else if t.is_block_device() {
        "blockdev"
    } else {
        "unknown"
    }
}

// ---------------------------------------------------------------------------------------------
// Timestamps with nanoseconds

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Times {
    pub kind: &'static str,
    pub atime: (i64, i64),
    pub mtime: (i64, i64),
}

/// atime and mtime of `root` (key "") and of every entry below it.
pub fn time_snapshot(root: &Path) -> BTreeMap<PathBuf, Times> {
    let mut map = BTreeMap::new();
    for rel in std::iter::once(PathBuf::new()).chain(walk(root)) {
        let m = fs::symlink_metadata(root.join(&rel)).unwrap_or_else(|e| panic!("stat {}: {e}", rel.display()));
        map.insert(rel, Times { kind: kind_of(&m), atime: (m.atime(), m.atime_nsec()), mtime: (m.mtime(), m.mtime_nsec()) });
    }
    map
}

/// Differences between the expected times (a snapshot of the source taken before the run) and
/// the tree at `actual_root`: mtime for every kind of entry, and atime for regular files
/// (directory atimes change whenever anything lists them).
pub fn time_differences(expected: &BTreeMap<PathBuf, Times>, actual_root: &Path, check_atime: bool) -> Vec<String> {
    let mut diffs = Vec::new();
    for (rel, want) in expected {
        let shown = if rel.as_os_str().is_empty() { ".".to_string() } else { escape_rel(rel) };
        let m = match fs::symlink_metadata(actual_root.join(rel)) {
            Ok(m) => m,
            Err(e) => {
                diffs.push(format!("{shown:?}: missing in destination ({e})"));
                continue;
            }
        };
        let mtime = (m.mtime(), m.mtime_nsec());
        if mtime != want.mtime {
            diffs.push(format!("{shown:?} ({}): mtime {:?}, expected {:?}", want.kind, mtime, want.mtime));
        }
        let atime = (m.atime(), m.atime_nsec());
        if check_atime && want.kind == "file" && atime != want.atime {
            diffs.push(format!("{shown:?} (file): atime {:?}, expected {:?}", atime, want.atime));
        }
    }
    diffs
}

/// Gives every entry its own distinctive time with nanoseconds, children before parents so
/// that no later change disturbs a directory's mtime. The root gets 1_600_000_000.123456789.
pub fn stamp_times(root: &Path) {
    let entries = walk(root);
    for (i, rel) in entries.iter().enumerate().rev() {
        let i = i as i64 + 1;
        let mtime = (1_600_000_000 + i * 37, (123_456_789 + i * 7_919) % 1_000_000_000);
        let atime = (1_500_000_000 + i * 13, (987_654_321 + i * 104_729) % 1_000_000_000);
        set_times(&root.join(rel), atime, mtime);
    }
    set_times(root, (1_500_000_000, 987_654_321), (1_600_000_000, 123_456_789));
}

// ---------------------------------------------------------------------------------------------
// Comparing trees

/// `rsync -n -i -a -H -X --checksum SRC/ DST/`: the itemized differences (content by checksum,
/// type, permissions, owner, group, times to the second, symlink targets, devices, hard links
/// and xattrs). An empty vector means no difference.
pub fn compare_trees(a: &Path, b: &Path) -> Vec<String> {
    assert!(a.is_dir(), "{} is not a directory", a.display());
    assert!(b.is_dir(), "{} is not a directory", b.display());
    let mut sa = a.as_os_str().to_owned();
    sa.push("/");
    let mut sb = b.as_os_str().to_owned();
    sb.push("/");
    let out = Command::new("rsync").args(["-n", "-i", "-a", "-H", "-X", "--checksum"]).arg(&sa).arg(&sb).env("LC_ALL", "C").stdin(Stdio::null()).output();
    let out = match out {
        Ok(o) => o,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            panic!("rsync is needed to compare trees but is not installed (apt-get install rsync); CI={:?}", std::env::var("CI").ok())
        }
        Err(e) => panic!("cannot run rsync: {e}"),
    };
    assert!(out.status.success(), "rsync failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).lines().filter(|l| !l.trim().is_empty()).map(str::to_string).collect()
}

/// Asserts that `dst` is an exact copy of `src`: rsync sees no difference, every mtime matches
/// `src_times` to the nanosecond (and every file's atime, when `check_atime`), and no
/// temporary file remains. Times are checked first because rsync's reads change atimes.
pub fn assert_exact_copy(src: &Path, dst: &Path, src_times: &BTreeMap<PathBuf, Times>, check_atime: bool) {
    let tdiff = time_differences(src_times, dst, check_atime);
    let rdiff = compare_trees(src, dst);
    assert!(rdiff.is_empty(), "rsync sees differences between {} and {}:\n{}", src.display(), dst.display(), rdiff.join("\n"));
    assert!(tdiff.is_empty(), "timestamps differ from the source:\n{}", tdiff.join("\n"));
    assert_no_temp_leftovers(dst);
}

/// A description of every entry (kind, mode, owner, size, mtime, inode, content CRC of files up
/// to 8 MiB, link target, device number), to show that something was left untouched.
pub fn fingerprint(root: &Path) -> BTreeMap<PathBuf, String> {
    let mut map = BTreeMap::new();
    if fs::symlink_metadata(root).is_err() {
        return map;
    }
    for rel in std::iter::once(PathBuf::new()).chain(walk(root)) {
        let p = root.join(&rel);
        let m = fs::symlink_metadata(&p).unwrap();
        let mut s = format!(
            "{} mode={:o} uid={} gid={} size={} mtime={}.{:09} nlink={}",
            kind_of(&m),
            m.mode(),
            m.uid(),
            m.gid(),
            m.len(),
            m.mtime(),
            m.mtime_nsec(),
            m.nlink()
        );
        let t = m.file_type();
        s += &format!(" ino={}", m.ino());
        if t.is_file() && m.len() <= 8 * MIB {
            s += &format!(" crc={:08x}", crc32c(&read_noatime(&p)));
        } else if t.is_symlink() {
            s += &format!(" -> {:?}", fs::read_link(&p).unwrap());
        } else if t.is_char_device() || t.is_block_device() {
            s += &format!(" rdev={}", m.rdev());
        }
        map.insert(rel, s);
    }
    map
}

// ---------------------------------------------------------------------------------------------
// The tricky tree

/// Relative path of the 300 MiB sparse file in the tricky tree.
pub const SPARSE_FILE: &str = "sparse/big.sparse";
pub const SPARSE_SIZE: u64 = 300 * MIB;
/// The special files of the tricky tree, with the kind a report gives them.
pub const SPECIALS: [(&str, &str); 3] = [("specials/fifo", "fifo"), ("specials/sock", "socket"), ("specials/null", "chardev")];
/// A regular file of the tricky tree, 1 MiB + 7 bytes.
pub const MIB_PLUS_SEVEN: &str = "files/mib_plus_seven";

fn deep_component(i: usize) -> String {
    format!("level{i:02}-{}", "x".repeat(40))
}

/// Relative path of the directory 40 levels below `deep/`.
pub fn deep_dir() -> PathBuf {
    let mut p = PathBuf::from("deep");
    for i in 1..=40 {
        p.push(deep_component(i));
    }
    p
}

/// Builds, under `root` (created if missing), a tree with every kind of awkward entry a POSIX
/// file system can hold, with distinctive nanosecond times. Needs root (ownership, mknod).
pub fn build_tricky_tree(root: &Path) {
    fs::create_dir_all(root).unwrap();
    let r = |p: &str| root.join(p);

    // Regular files of awkward sizes.
    write_file(&r("files/empty"), b"");
    write_file(&r("files/one"), b"1");
    write_file(&r("files/page_minus_one"), &random_bytes(4095));
    write_file(&r(MIB_PLUS_SEVEN), &random_bytes((MIB + 7) as usize));
    write_file(&r("top.txt"), b"top level file\n");

    // A 300 MiB file that is mostly holes: data at 0, at 100 MiB and at the very end.
    let sp = r(SPARSE_FILE);
    fs::create_dir_all(sp.parent().unwrap()).unwrap();
    let f = File::create(&sp).unwrap();
    f.set_len(SPARSE_SIZE).unwrap();
    f.write_all_at(&random_bytes(MIB as usize), 0).unwrap();
    f.write_all_at(&random_bytes(MIB as usize), 100 * MIB).unwrap();
    f.write_all_at(&random_bytes(5000), SPARSE_SIZE - 5000).unwrap();
    f.sync_all().unwrap();
    drop(f);
    let alloc = allocated_bytes(&sp);
    assert!(
        alloc < 16 * MIB,
        "the file system under {} does not keep holes ({alloc} bytes allocated for a sparse file); \
         set FERRY_TEST_TMP to a directory on ext4/xfs",
        root.display()
    );

    // An empty directory, and a path 40 directories deep (about 2 KB long).
    fs::create_dir_all(r("emptydir")).unwrap();
    write_file(&root.join(deep_dir()).join("leaf.txt"), b"at the bottom\n");

    // Awkward names.
    let names = r("names");
    fs::create_dir_all(&names).unwrap();
    let raw = |bytes: &[u8]| names.join(OsStr::from_bytes(bytes));
    write_file(&raw(b"caf\xe9"), b"latin-1 name\n");
    write_file(&raw(b"dir\xff\xfe").join("inner.txt"), b"inside a non-UTF-8 directory\n");
    write_file(&raw(b"new\nline"), b"newline in name\n");
    write_file(&raw(b"tab\there"), b"tab\n");
    write_file(&raw(b" leading and trailing space "), b"spaces\n");
    write_file(&raw(b"-dash"), b"dash\n");
    write_file(&raw(b"*?[glob]{x}"), b"glob chars\n");
    write_file(&raw(b"quote'\"dq"), b"quotes\n");
    write_file(&raw(b"percent%41"), b"percent\n");
    write_file(&raw(b"colon:name"), b"colon\n");
    write_file(&raw(b".hidden"), b"hidden\n");
    write_file(&raw("日本語.txt".as_bytes()), "unicode\n".as_bytes());
    write_file(&raw("🦀".as_bytes()), b"crab\n");
    let long_ascii = format!("{}.txt", "L".repeat(251));
    assert_eq!(long_ascii.len(), 255);
    write_file(&raw(long_ascii.as_bytes()), b"255-byte name\n");
    let long_utf8 = format!("{}x", "é".repeat(127));
    assert_eq!(long_utf8.len(), 255);
    write_file(&raw(long_utf8.as_bytes()), b"255-byte multibyte name\n");

    // Symlinks of every sort.
    fs::create_dir_all(r("links")).unwrap();
    symlink("../files/one", &r("links/rel"));
    symlink("/etc/hostname", &r("links/abs"));
    symlink("nowhere/at/all", &r("links/dangling"));
    symlink("loop_b", &r("links/loop_a"));
    symlink("loop_a", &r("links/loop_b"));
    symlink("../emptydir", &r("links/todir"));

    // Three names for one inode, one of them in another directory.
    write_file(&r("hard/a"), &random_bytes(10_000));
    fs::hard_link(r("hard/a"), r("hard/b")).unwrap();
    fs::create_dir_all(r("other")).unwrap();
    fs::hard_link(r("hard/a"), r("other/hard_c")).unwrap();

    // Special files.
    fs::create_dir_all(r("specials")).unwrap();
    mkfifo(&r(SPECIALS[0].0));
    make_socket(&r(SPECIALS[1].0));
    mknod_char(&r(SPECIALS[2].0), 1, 3);

    // Permissions (no setuid/setgid bits).
    write_file(&r("perms/mode0600"), b"0600\n");
    chmod(&r("perms/mode0600"), 0o600);
    write_file(&r("perms/mode0755"), b"#!/bin/sh\n");
    chmod(&r("perms/mode0755"), 0o755);
    write_file(&r("perms/mode0444"), b"0444\n");
    chmod(&r("perms/mode0444"), 0o444);
    write_file(&r("perms/sticky/inside"), b"sticky\n");
    chmod(&r("perms/sticky"), 0o1777);
    write_file(&r("perms/ro_dir/f1"), b"one\n");
    write_file(&r("perms/ro_dir/f2"), &random_bytes(3000));
    chmod(&r("perms/ro_dir"), 0o555);

    // Ownership by ids that have no name here.
    write_file(&r("owned/file"), b"owned by 1234:5678\n");
    symlink("file", &r("owned/link"));
    std::os::unix::fs::chown(r("owned/file"), Some(1234), Some(5678)).unwrap();
    std::os::unix::fs::lchown(r("owned/link"), Some(1234), Some(5678)).unwrap();
    std::os::unix::fs::chown(r("owned"), Some(1234), Some(5678)).unwrap();

    // Extended attributes on a file and a directory.
    write_file(&r("xattr/file"), b"has xattrs\n");
    fs::create_dir_all(r("xattr/dir")).unwrap();
    set_xattr(&r("xattr/file"), "user.test", b"value");
    set_xattr(&r("xattr/file"), "user.binary", &[0, 1, 2, 0xff, b'\n']);
    set_xattr(&r("xattr/dir"), "user.test", b"value");

    stamp_times(root);
}

/// The daemons of one test; SIGKILLed (with everything they forked, as process groups) when
/// it ends. Each is (name, process, its log).
pub struct Daemons {
    pub children: Vec<(String, Child, PathBuf)>,
}

impl Daemons {
    /// Every daemon's log, for failure messages.
    pub fn logs(&self) -> String {
        self.children.iter().map(|(name, _, log)| format!("\n===== {name} =====\n{}", std::fs::read_to_string(log).unwrap_or_default())).collect()
    }
}

impl Drop for Daemons {
    fn drop(&mut self) {
        for (_, child, _) in &mut self.children {
            // SAFETY: kill(2) on the process group this test started; no memory is touched.
            unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
            let _ = child.wait();
        }
    }
}
