//! The matrix: {local, S3} source × {local, S3} destination × {direct, across two agents at two
//! sites}. Every cell runs one shared fidelity test, [`fidelity`]:
//!
//! 1. copy the tricky tree (what the destination can hold, as README.md lists it) with a task
//!    report, and check the destination with tools that are not ferry's: rsync `--checksum
//!    --delete` plus a nanosecond time check for trees; the AWS CLI (listing, MD5 ETags, byte
//!    ranges of multipart objects, POSIX metadata) for objects;
//! 2. check that the report names every entry exactly once and agrees with the summary;
//! 3. rerun: nothing is transferred;
//! 4. change, add and delete at the source, then `sync --verify point-in-time-consistent`, and
//!    check the destination again, exactly;
//! 5. `verify` finds no difference, then finds one injected at the destination.
//!
//! Across sites, each side's S3 server listens on its own namespace's loopback, so only the
//! agent bound to that side can reach it: local → S3 goes through the cloud agent alone, and
//! S3 → local through the onprem agent alone. Both servers answer at the same endpoint URL,
//! as private endpoints at two sites would.

mod support;

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use ferry_common::testing::{S3Flavor, S3Server};
use serde_json::Value;
use support::objects::*;
use support::sites::{have_root_and_ip, in_netns, AgentSpec, Fleet};
use support::*;

/// Where one side of a cell lives.
enum Place<'a> {
    Local(PathBuf),
    S3 { bucket: Bucket<'a>, prefix: String },
}

impl Place<'_> {
    fn uri(&self) -> OsString {
        match self {
            Place::Local(p) => p.clone().into_os_string(),
            Place::S3 { bucket, prefix } => bucket.server.uri(prefix).into(),
        }
    }

    fn is_s3(&self) -> bool {
        matches!(self, Place::S3 { .. })
    }
}

/// How runs reach the locations: in this process, or submitted to a fleet whose `onprem`
/// agent reads and whose `cloud` agent writes.
struct Transport<'a> {
    fleet: Option<&'a Fleet>,
    /// The S3 endpoint every side uses (one URL; across sites each site's own server).
    endpoint: String,
    creds: Vec<(&'static str, String)>,
}

impl Transport<'_> {
    fn ferry(&self, sub: &str, src: &Place, dst: &Place) -> Ferry {
        let mut f = match self.fleet {
            Some(fleet) => fleet.ferry(sub, src.uri(), dst.uri()).args(["--source-agents", "onprem", "--destination-agents", "cloud"]),
            None => Ferry::new(sub, src.uri(), dst.uri()),
        };
        if src.is_s3() || dst.is_s3() {
            f = f.arg("--endpoint-url").arg(&self.endpoint);
            for (k, v) in &self.creds {
                f = f.env(k, v);
            }
        }
        if dst.is_s3() {
            // moto refuses a key with a newline (AWS takes it): leave that one name out.
            f = f.args(["--exclude", "*line"]);
        }
        f
    }

    fn describe(&self) -> String {
        self.fleet.map(Fleet::agent_logs).unwrap_or_default()
    }
}

/// One cell: a source, a destination, the local tree the source stands for (the source
/// itself when it is local), and scratch space.
struct Cell<'a> {
    name: String,
    src: Place<'a>,
    dst: Place<'a>,
    reference: PathBuf,
    work: PathBuf,
}

impl Cell<'_> {
    fn through_s3(&self) -> bool {
        self.src.is_s3() || self.dst.is_s3()
    }
}

/// Puts the reference tree into an S3 source, directly, at the site that reaches the server.
fn seed(t: &Transport, reference: &Path, src: &Place) {
    let Place::S3 { bucket, .. } = src else {
        return;
    };
    let mut f = Ferry::bare_in(bucket.netns.as_deref()).arg("sync").arg(reference).arg(src.uri()).args(["--no-progress", "--exclude", "*line"]);
    f = f.arg("--endpoint-url").arg(&t.endpoint);
    for (k, v) in &t.creds {
        f = f.env(k, v);
    }
    f.run().assert_code(0);
}

fn run_ok(t: &Transport, cell: &Cell, f: Ferry) -> Value {
    let out = f.run();
    assert_eq!(out.code, Some(0), "[{}] the run failed\n{}\n{}", cell.name, out.describe(), t.describe());
    out.assert_no_panic();
    out.json()
}

fn fidelity(t: &Transport, cell: &Cell) {
    eprintln!("[{}] copy", cell.name);
    seed(t, &cell.reference, &cell.src);
    let report = cell.work.join("copy.jsonl");
    let json = run_ok(t, cell, t.ferry("copy", &cell.src, &cell.dst).arg("--json").arg("--report").arg(&report));
    check_destination(cell, "after the copy");
    check_report(cell, &report, &json);

    eprintln!("[{}] idle rerun", cell.name);
    let again = run_ok(t, cell, t.ferry("copy", &cell.src, &cell.dst).arg("--json"));
    assert_eq!(counter(&again, "files_transferred"), 0, "[{}] an idle rerun transferred files: {again}", cell.name);
    assert_eq!(counter(&again, "bytes_transferred"), 0, "[{}] an idle rerun transferred bytes: {again}", cell.name);

    eprintln!("[{}] sync after changes", cell.name);
    change_the_source(&cell.reference);
    seed(t, &cell.reference, &cell.src);
    let sync = run_ok(t, cell, t.ferry("sync", &cell.src, &cell.dst).args(["--json", "--verify", "point-in-time-consistent"]));
    assert_eq!(counter(&sync, "files_deleted"), 2, "[{}] the sync deletes a file, and a directory with the file it held: {sync}", cell.name);
    assert!(counter(&sync, "files_transferred") >= 2, "[{}] the sync sends the changed and the added file: {sync}", cell.name);
    assert!(counter(&sync, "files_verified") > 0, "[{}] point-in-time verification ran: {sync}", cell.name);
    check_destination(cell, "after the sync");

    eprintln!("[{}] verify", cell.name);
    let clean = run_ok(t, cell, t.ferry("verify", &cell.src, &cell.dst).args(["--json", "--verify", "point-in-time-consistent"]));
    assert_eq!(counter(&clean, "files_failed"), 0, "[{}] {clean}", cell.name);
    assert!(counter(&clean, "files_verified") > 0, "[{}] {clean}", cell.name);
    inject_difference(cell);
    let out = t.ferry("verify", &cell.src, &cell.dst).arg("--json").run();
    assert_eq!(out.code, Some(1), "[{}] verify must find the injected difference\n{}\n{}", cell.name, out.describe(), t.describe());
    let found = failures(&out.json());
    assert!(found.iter().any(|(p, _)| p == INJECTED), "[{}] verify does not name {INJECTED}: {found:?}", cell.name);
}

/// Changes, an addition and deletions (a file, and a directory with its content).
fn change_the_source(root: &Path) {
    write_file(&root.join("top.txt"), b"changed at the source\n");
    set_times(&root.join("top.txt"), (1_700_000_000, 1), (1_700_000_000, 987_654_321));
    fs::remove_file(root.join("files/one")).unwrap();
    fs::remove_dir_all(root.join("perms/sticky")).unwrap();
    write_file(&root.join("added/new.txt"), b"added after the first copy\n");
}

const INJECTED: &str = "files/page_minus_one";

/// A same-size change at the destination, behind ferry's back.
fn inject_difference(cell: &Cell) {
    match &cell.dst {
        Place::Local(d) => change_content_keep_size_and_times(&d.join(INJECTED)),
        Place::S3 { bucket, prefix } => {
            let body = cell.work.join("injected");
            write_file(&body, &random_bytes(4095));
            bucket.put(&format!("{prefix}/{INJECTED}"), &body);
        }
    }
}

fn check_destination(cell: &Cell, when: &str) {
    let times = time_snapshot(&cell.reference);
    match &cell.dst {
        Place::Local(d) if !cell.through_s3() => {
            let extra = walk(d).len() as i64 - walk(&cell.reference).len() as i64;
            assert_eq!(extra, 0, "[{}] {when}: the destination has {extra} entries more than the source", cell.name);
            assert_exact_copy(&cell.reference, d, &times, false);
        }
        Place::Local(d) => {
            let diff = s3_differences(&cell.reference, d);
            assert!(diff.is_empty(), "[{}] {when}: rsync sees differences:\n{}", cell.name, diff.join("\n"));
            let tdiff: Vec<String> = time_differences(&times, d, false).into_iter().filter(|d| !unholdable(d.trim_start_matches('"'))).collect();
            assert!(tdiff.is_empty(), "[{}] {when}: times differ:\n{}", cell.name, tdiff.join("\n"));
            assert_no_temp_leftovers(d);
        }
        Place::S3 { bucket, prefix } => check_objects(cell, bucket, prefix, &times, when),
    }
}

/// The destination prefix holds exactly one object per entry S3 can hold (a `dir/` marker per
/// directory), each file's bytes are the source's (MD5 ETag, or sampled ranges of a multipart
/// object), and POSIX times travel in the metadata.
fn check_objects(cell: &Cell, bucket: &Bucket, prefix: &str, times: &BTreeMap<PathBuf, Times>, when: &str) {
    let objects = bucket.objects(&format!("{prefix}/"));
    let mut expected = BTreeMap::new();
    for rel in walk(&cell.reference) {
        let m = fs::symlink_metadata(cell.reference.join(&rel)).unwrap();
        if s3_holds(&rel, m.file_type(), prefix.len()) {
            let key = format!("{prefix}/{}{}", rel.to_str().unwrap(), if m.is_dir() { "/" } else { "" });
            expected.insert(key, rel);
        }
    }
    let root_marker = format!("{prefix}/");
    let extra: Vec<&String> = objects.keys().filter(|k| !expected.contains_key(*k) && **k != root_marker).collect();
    let missing: Vec<&String> = expected.keys().filter(|k| !objects.contains_key(*k)).collect();
    assert!(extra.is_empty() && missing.is_empty(), "[{}] {when}: objects not in the source: {extra:?}; entries without an object: {missing:?}", cell.name);
    for (key, rel) in &expected {
        let path = cell.reference.join(rel);
        let m = fs::symlink_metadata(&path).unwrap();
        if !m.is_file() {
            continue;
        }
        let o = &objects[key];
        assert_eq!(o.size, m.len(), "[{}] {when}: {key} has the wrong size", cell.name);
        if !o.etag.contains('-') {
            assert_eq!(o.etag, md5_hex(&path), "[{}] {when}: {key} differs from the source (MD5)", cell.name);
            continue;
        }
        let data = read_noatime(&path);
        for start in [0, m.len() / 3, m.len() / 3 * 2, m.len().saturating_sub(5000)] {
            let len = (m.len() - start).min(1 << 20);
            let got = bucket.get_range(key, start, len, &cell.work);
            assert!(got == data[start as usize..(start + len) as usize], "[{}] {when}: {key} differs from the source at {start}", cell.name);
        }
    }
    for rel in ["top.txt", "files/mib_plus_seven"] {
        let head = bucket.head(&format!("{prefix}/{rel}"));
        let (s, ns) = times[Path::new(rel)].mtime;
        assert_eq!(head["Metadata"]["file-mtime"], format!("{s}{ns:09}ns"), "[{}] {when}: {rel} carries its mtime: {head}", cell.name);
        let mode = fs::symlink_metadata(cell.reference.join(rel)).unwrap().mode();
        assert_eq!(head["Metadata"]["file-permissions"], format!("0{mode:o}"), "[{}] {when}: {rel} carries its mode: {head}", cell.name);
    }
}

/// Every entry the chain can hold is in the report exactly once, none failed, and the summary
/// line agrees with the run's own.
fn check_report(cell: &Cell, path: &Path, json: &Value) {
    let rep = read_report(path);
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for e in &rep.entries {
        *seen.entry(normalize_escapes(e["path"].as_str().unwrap())).or_default() += 1;
        assert_ne!(e["status"], "failed", "[{}] {e}", cell.name);
    }
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "[{}] entries reported more than once: {twice:?}", cell.name);
    let prefix_len = match (&cell.src, &cell.dst) {
        (Place::S3 { prefix, .. }, _) | (_, Place::S3 { prefix, .. }) => prefix.len(),
        _ => 0,
    };
    let missing: Vec<PathBuf> = walk(&cell.reference)
        .into_iter()
        .filter(|rel| {
            let ft = fs::symlink_metadata(cell.reference.join(rel)).unwrap().file_type();
            (!cell.through_s3() || s3_holds(rel, ft, prefix_len)) && !seen.contains_key(&normalize_escapes(&escape_rel(rel)))
        })
        .collect();
    assert!(missing.is_empty(), "[{}] entries missing from the report: {missing:?}", cell.name);
    for c in ["files_transferred", "bytes_transferred", "files_failed", "files_skipped"] {
        assert_eq!(counter(&rep.summary, c), counter(json, c), "[{}] the report summary's {c} differs from the run's", cell.name);
    }
}

/// The four cells of one transport, run in turn, each with its own tree and prefixes.
fn run_matrix(t: &Transport, src_bucket: Bucket, dst_bucket: Bucket, work: &Path) {
    let pairs = [("local->local", false, false), ("local->s3", false, true), ("s3->local", true, false), ("s3->s3", true, true)];
    for (i, (name, src_s3, dst_s3)) in pairs.into_iter().enumerate() {
        let dir = work.join(format!("cell{i}"));
        let reference = dir.join("reference");
        build_tricky_tree(&reference);
        let src = if src_s3 { Place::S3 { bucket: src_bucket.clone(), prefix: format!("c{i}src") } } else { Place::Local(reference.clone()) };
        let dst = if dst_s3 { Place::S3 { bucket: dst_bucket.clone(), prefix: format!("c{i}dst") } } else { Place::Local(dir.join("dst")) };
        let via = if t.fleet.is_some() { "across sites" } else { "direct" };
        fidelity(t, &Cell { name: format!("{via} {name}"), src, dst, reference, work: dir });
    }
}

#[test]
fn every_pair_direct() {
    let Some(server) = S3Server::start(S3Flavor::Moto) else {
        return;
    };
    let work = scratch();
    let t = Transport { fleet: None, endpoint: server.endpoint.clone(), creds: server.env() };
    run_matrix(&t, Bucket::on(&server), Bucket::on(&server), work.path());
}

/// The port of each site's private S3 server (any port is free in a fresh namespace).
const PRIVATE_S3_PORT: u16 = 19767;

#[test]
fn every_pair_across_two_sites() {
    if !have_root_and_ip() {
        return;
    }
    // Two sites; the agents take S3 credentials from their own AWS chain (the environment).
    let creds = |a: AgentSpec| {
        [
            ("AWS_ACCESS_KEY_ID", "ferrytestkey"),
            ("AWS_SECRET_ACCESS_KEY", "ferrytestsecret0123456789"),
            ("AWS_REGION", "us-east-1"),
            ("AWS_EC2_METADATA_DISABLED", "true"),
        ]
        .into_iter()
        .fold(a, |a, (k, v)| a.env(k, v))
    };
    let Some(fleet) = Fleet::start(vec![creds(AgentSpec::new("agent-onprem", "onprem")), creds(AgentSpec::new("agent-cloud", "cloud"))]) else {
        return;
    };
    let (onprem_ns, cloud_ns) = (fleet.sites.sites[0].ns.clone(), fleet.sites.sites[1].ns.clone());
    // Each site's private object store, on its own loopback at the same port. Nothing answers
    // there on the host, so neither the CLI nor the coordinator can have used it.
    let onprem_s3 = in_netns(&onprem_ns, || S3Server::start_at_port(S3Flavor::Moto, "127.0.0.1", PRIVATE_S3_PORT)).expect("moto is installed");
    let cloud_s3 = in_netns(&cloud_ns, || S3Server::start_at_port(S3Flavor::Moto, "127.0.0.1", PRIVATE_S3_PORT)).expect("moto is installed");
    let host_side = std::net::TcpStream::connect(("127.0.0.1", PRIVATE_S3_PORT));
    assert!(host_side.is_err(), "something on the host listens on port {PRIVATE_S3_PORT}; the sites' servers would not be private");
    assert_eq!(onprem_s3.access_key, "ferrytestkey", "the agents' credentials match the servers'");
    let t = Transport { fleet: Some(&fleet), endpoint: cloud_s3.endpoint.clone(), creds: cloud_s3.env() };
    let work = scratch();
    run_matrix(&t, Bucket::in_netns(&onprem_s3, &onprem_ns), Bucket::in_netns(&cloud_s3, &cloud_ns), work.path());
}

/// Runs `ferry ARGS` under strace and counts the calls that make data durable.
fn durability_calls(t: &Transport, work: &Path, args: &[OsString]) -> (u64, Value) {
    let trace = work.join("strace.out");
    let mut cmd = std::process::Command::new("strace");
    cmd.args(["-f", "-qq", "-e", "trace=fsync,fdatasync,syncfs,sync_file_range", "-o"]).arg(&trace);
    cmd.arg(env!("CARGO_BIN_EXE_ferry")).args(args).args(["--no-progress", "--json", "--endpoint-url", &t.endpoint]);
    cmd.envs(t.creds.iter().map(|(k, v)| (*k, v.as_str()))).stdin(std::process::Stdio::null());
    let out = match cmd.output() {
        Ok(o) => o,
        Err(e) => panic!("strace is needed (apt-get install strace; .ci/run installs it): {e}"),
    };
    assert!(out.status.success(), "ferry {args:?} under strace failed: {}", String::from_utf8_lossy(&out.stderr));
    let calls = fs::read_to_string(&trace)
        .unwrap()
        .lines()
        .filter(|l| !l.contains("resumed>") && ["fsync(", "fdatasync(", "syncfs(", "sync_file_range("].iter().any(|c| l.contains(c)))
        .count();
    (calls as u64, serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout))))
}

/// `--no-fsync` and `--verify none` hold for every destination and every source: with them,
/// no call that flushes to stable storage is made and nothing is read back; without them,
/// both happen.
#[test]
fn no_fsync_and_verify_none_are_honoured_for_every_destination() {
    if std::process::Command::new("strace").arg("-V").output().is_err() {
        assert!(std::env::var("CI").as_deref() != Ok("true"), "strace is not installed; .ci/run installs it");
        eprintln!("skipping: strace is not installed");
        return;
    }
    let Some(server) = S3Server::start(S3Flavor::Moto) else {
        return;
    };
    let work = scratch();
    let t = Transport { fleet: None, endpoint: server.endpoint.clone(), creds: server.env() };
    let tree = work.path().join("tree");
    for i in 0..20 {
        write_file(&tree.join(format!("d{}/f{i}", i % 3)), &random_bytes(1000 + i * 4000));
    }
    let s3_source = server.uri("durability-src");
    seed(&t, &tree, &Place::S3 { bucket: Bucket::on(&server), prefix: "durability-src".into() });
    let sources: [(&str, OsString); 2] = [("local", tree.clone().into_os_string()), ("s3", s3_source.into())];
    for (from, src) in &sources {
        for to in ["local", "s3"] {
            let run = |name: &str, extra: &[&str]| {
                let dst: OsString = match to {
                    "local" => work.path().join(format!("{from}-{name}")).into_os_string(),
                    _ => server.uri(&format!("{from}-{name}")).into(),
                };
                let mut args: Vec<OsString> = vec!["copy".into(), src.clone(), dst];
                args.extend(extra.iter().map(OsString::from));
                durability_calls(&t, work.path(), &args)
            };
            let cell = format!("{from} -> {to}");
            let (syncs, json) = run("default", &[]);
            assert_eq!(counter(&json, "files_verified"), 20, "[{cell}] every file is read back by default: {json}");
            if to == "local" {
                assert!(syncs > 0, "[{cell}] a local destination is made durable by default");
            }
            let (syncs, json) = run("nofsync", &["--no-fsync"]);
            assert_eq!(syncs, 0, "[{cell}] --no-fsync made {syncs} flush calls");
            assert_eq!(counter(&json, "files_transferred"), 23, "[{cell}] 20 files and 3 directories: {json}");
            let (_, json) = run("noverify", &["--verify", "none"]);
            assert_eq!(counter(&json, "files_verified"), 0, "[{cell}] --verify none read something back: {json}");
            assert_eq!(counter(&json, "bytes_verified"), 0, "[{cell}] --verify none read something back: {json}");
            assert_eq!(counter(&json, "files_transferred"), 23, "[{cell}] {json}");
        }
    }
}
