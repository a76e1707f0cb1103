//! `ferry` against real S3-compatible servers on loopback: s3s-fs (checks SigV4 and CRC32C)
//! and moto (full multipart, ListMultipartUploads). Results are checked with tools that are
//! not ferry's code: rsync for trees, the AWS CLI for objects, metadata and checksums.

mod support;

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use ferry_common::model::S3Settings;
use ferry_common::testing::{S3Flavor, S3Server};
use ferry_worker::location::s3::S3Location;
use ferry_worker::location::Location;
use serde_json::Value;
use support::objects::*;
use support::*;

fn ferry_s3(server: &S3Server, sub: &str, src: impl AsRef<std::ffi::OsStr>, dst: impl AsRef<std::ffi::OsStr>) -> Ferry {
    let mut f = Ferry::new(sub, src, dst).arg("--endpoint-url").arg(&server.endpoint);
    for (k, v) in server.env() {
        f = f.env(k, v);
    }
    f
}

fn location(server: &S3Server, uri: &str) -> S3Location {
    server.export_env();
    S3Location::open(uri, &S3Settings { endpoint_url: Some(server.endpoint.clone()), path_style: true, ..S3Settings::default() }).unwrap()
}

fn crc_b64(data: &[u8]) -> String {
    ferry_worker::location::s3::crc_to_base64(crc32c(data))
}

fn aws(server: &S3Server, args: &[&str]) -> Value {
    Bucket::on(server).aws(args)
}

#[test]
fn tricky_tree_round_trips_posix_to_s3_to_posix() {
    let Some(server) = S3Server::start(S3Flavor::Moto) else {
        return;
    };
    let dir = scratch();
    let src = dir.path().join("src");
    build_tricky_tree(&src);
    let times = time_snapshot(&src);
    let report = dir.path().join("up.jsonl");
    let up = ferry_s3(&server, "copy", &src, server.uri("rt")).arg("--json").arg("--report").arg(&report).run();
    let fails = failures(&up.json());
    assert!(fails.iter().all(|(p, _)| is_newline_name(p)), "only moto's newline limit may fail: {fails:?}\n{}", up.describe());

    // What S3 cannot hold is decided from its limits before any request, and reported as
    // skipped with a stable code naming the limit.
    let rep = read_report(&report);
    let skipped: BTreeMap<String, (String, String)> = rep
        .entries
        .iter()
        .filter(|e| e["status"] == "skipped")
        .map(|e| (e["path"].as_str().unwrap().to_string(), (e["code"].as_str().unwrap_or("").to_string(), e["reason"].as_str().unwrap_or("").to_string())))
        .collect();
    assert!(skipped.iter().any(|(p, (c, r))| p.starts_with("specials/") && c == "SPECIAL_FILE" && r.contains("cannot hold a")), "{skipped:?}");
    assert!(skipped.iter().any(|(p, (c, r))| p.contains("caf") && c == "NAME_NOT_UTF8" && r.contains("UTF-8")), "{skipped:?}");
    assert!(
        skipped.iter().any(|(p, (c, r))| p.ends_with("leaf.txt") && c == "PATH_TOO_LONG" && r.contains("1,024 bytes")),
        "a key over S3's 1,024 bytes is refused before it is sent: {skipped:?}"
    );

    // Back to POSIX: everything S3 can hold comes back exactly, metadata included.
    let back = dir.path().join("back");
    fs::create_dir_all(&back).unwrap();
    let down = ferry_s3(&server, "copy", server.uri("rt"), &back).arg("--json").run();
    down.assert_code(0);
    let _ = fs::remove_file(back.join("names/new\nline"));
    let diff = s3_differences(&src, &back);
    assert!(diff.is_empty(), "rsync sees differences after POSIX -> S3 -> POSIX:\n{}", diff.join("\n"));
    let tdiff: Vec<String> = time_differences(&times, &back, false).into_iter().filter(|d| !unholdable(d.trim_start_matches('"'))).collect();
    assert!(tdiff.is_empty(), "mtimes differ after the round trip:\n{}", tdiff.join("\n"));
    assert_no_temp_leftovers(&back);

    // A second run in each direction changes nothing.
    for (a, b) in [(src.as_os_str().to_owned(), server.uri("rt").into()), (server.uri("rt").into(), back.as_os_str().to_owned())] {
        let again = ferry_s3(&server, "copy", &a, &b).arg("--json").arg("--exclude").arg("*line").run();
        again.assert_code(0);
        assert_eq!(counter(&again.json(), "files_transferred"), 0, "nothing changed, nothing is copied\n{}", again.describe());
    }
}

/// A server without object tagging (s3s-fs answers GetObjectTagging with NotImplemented)
/// still gives its objects: to a tree, which holds no tags, no tags are asked for; to another
/// bucket, with ObjectTags PRESERVE (the default), the objects go without tags. Both used to
/// skip every file as "destination cannot hold it" and end in SUCCESS having copied nothing.
#[test]
fn objects_of_a_server_without_tagging_are_copied_to_a_tree_and_to_a_bucket() {
    let Some(server) = S3Server::start(S3Flavor::S3sFs) else {
        return;
    };
    let dir = scratch();
    let src = dir.path().join("src");
    for i in 0..6 {
        write_file(&src.join(format!("f{i}.bin")), &random_bytes(1000 * (i + 1)));
        write_file(&src.join(format!("sub/g{i}.bin")), &random_bytes(500));
    }
    ferry_s3(&server, "copy", &src, server.uri("notags")).arg("--json").run().assert_code(0);

    let back = dir.path().join("back");
    let down = ferry_s3(&server, "copy", server.uri("notags"), &back).arg("--json").run();
    down.assert_code(0);
    // 12 files and the `sub` directory, 24,000 bytes: everything, nothing skipped.
    assert_eq!(counter(&down.json(), "bytes_transferred"), 24_000, "{}", down.describe());
    assert_eq!(counter(&down.json(), "files_skipped"), 0, "{}", down.describe());
    // Content, names and file times; directory times are not what this is about.
    let content = |a: &Path, b: &Path| -> Vec<String> { s3_differences(a, b).into_iter().filter(|l| !l.starts_with(".d..t")).collect() };
    let diff = content(&src, &back);
    assert!(diff.is_empty(), "S3 -> tree differs:\n{}", diff.join("\n"));

    let across = ferry_s3(&server, "copy", server.uri("notags"), server.uri("copied")).arg("--json").run();
    across.assert_code(0);
    assert_eq!(counter(&across.json(), "bytes_transferred"), 24_000, "{}", across.describe());
    assert_eq!(counter(&across.json(), "files_failed"), 0, "{}", across.describe());
    let again = dir.path().join("again");
    ferry_s3(&server, "copy", server.uri("copied"), &again).arg("--json").run().assert_code(0);
    let diff = content(&src, &again);
    assert!(diff.is_empty(), "S3 -> S3 -> tree differs:\n{}", diff.join("\n"));
}

/// An S3 endpoint that fails for 20 s in the middle of an upload (open connections cut,
/// new ones answered 503 or reset) costs a delay, not failed entries: the requests and shards
/// it fails are tried again with backoff within the retry window, and the copy ends in
/// SUCCESS with every object exact.
#[test]
fn a_twenty_second_s3_outage_mid_upload_ends_in_success() {
    let Some(server) = S3Server::start(S3Flavor::S3sFs) else {
        return;
    };
    let upstream: std::net::SocketAddr = server.endpoint.trim_start_matches("http://").parse().expect("s3s-fs listens on an address");
    let proxy = support::fault_proxy::FaultProxy::start(upstream);
    let dir = scratch();
    let src = dir.path().join("src");
    // 12 MiB at 1 MiB/s: the outage begins after about a quarter of it.
    for i in 0..384 {
        write_file(&src.join(format!("d{}/f{i}.bin", i % 8)), &random_bytes(32 * 1024));
    }
    let mut copy = Ferry::new("copy", &src, server.uri("outage")).arg("--endpoint-url").arg(proxy.endpoint()).args(["--json", "--bwlimit", "1M"]);
    for (k, v) in server.env() {
        copy = copy.env(k, v);
    }
    let running = std::thread::spawn(move || copy.run());
    std::thread::sleep(Duration::from_secs(3));
    proxy.down();
    std::thread::sleep(Duration::from_secs(20));
    proxy.up();
    let out = running.join().expect("the copy's thread");
    let (answered_503, reset) = proxy.refused();
    eprintln!("outage: {answered_503} connections answered 503, {reset} reset; the copy: {}", out.stdout.trim());
    assert!(answered_503 > 0 && reset > 0, "the outage refused no request (503: {answered_503}, reset: {reset}): it began after the copy\n{}", out.describe());
    out.assert_code(0);
    let json = out.json();
    assert_eq!(json["status"], "SUCCESS", "{}", out.describe());
    assert_eq!(counter(&json, "files_failed"), 0, "{}", out.describe());
    assert_eq!(counter(&json, "bytes_transferred"), 384 * 32 * 1024, "{}", out.describe());

    let back = dir.path().join("back");
    ferry_s3(&server, "copy", server.uri("outage"), &back).arg("--json").run().assert_code(0);
    let diff: Vec<String> = s3_differences(&src, &back).into_iter().filter(|l| !l.starts_with(".d..t")).collect();
    assert!(diff.is_empty(), "the objects differ from the source after the outage:\n{}", diff.join("\n"));
}

/// With traces on, each S3 request is a span (the SDK's, one per operation) under the shard
/// that made it, in the execution's trace.
#[test]
fn an_upload_is_traced_down_to_each_s3_request() {
    let Some(server) = S3Server::start(S3Flavor::S3sFs) else {
        return;
    };
    let receiver = support::otlp::OtlpReceiver::start("127.0.0.1");
    let dir = scratch();
    let src = dir.path().join("src");
    for i in 0..5 {
        write_file(&src.join(format!("f{i}.bin")), &random_bytes(2000 + i));
    }
    let up = ferry_s3(&server, "copy", &src, server.uri("traced"))
        .arg("--json")
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://127.0.0.1:{}", receiver.port))
        .run();
    up.assert_code(0);
    // The CLI flushed its spans before it exited.
    let spans = receiver.spans();
    let root = spans.iter().find(|s| s["name"] == "ferry copy").unwrap_or_else(|| panic!("no root span among {spans:#?}"));
    let trace = root["trace_id"].as_str().unwrap();
    let of_trace: Vec<&Value> = spans.iter().filter(|s| s["trace_id"] == trace).collect();
    let by_id: BTreeMap<&str, &Value> = of_trace.iter().map(|s| (s["span_id"].as_str().unwrap(), *s)).collect();
    let puts: Vec<&&Value> = of_trace.iter().filter(|s| s["name"] == "S3.PutObject").collect();
    let parent =
        |s: &Value| -> Value { (*by_id.get(s["parent_span_id"].as_str().unwrap()).unwrap_or_else(|| panic!("the parent of {s} is in the trace"))).clone() };
    // Each file's PUT hangs under the batch it belongs to, under the transfer shard that made
    // it; the directory's own object under the shard that sets its metadata (a Settle shard,
    // or a DirMeta one for a directory that waits for the end).
    let mut file_puts = 0;
    for put in &puts {
        assert_eq!(put["attributes"]["rpc.method"], "PutObject");
        let up = parent(put);
        match up["name"].as_str() {
            Some("send batch") => {
                assert_eq!(parent(&up)["name"], "transfer", "{up}");
                file_puts += 1;
            }
            Some("settle" | "dirmeta") => {}
            other => panic!("a PutObject under {other:?}: {put}"),
        }
    }
    assert_eq!(file_puts, 5, "one PutObject span per file: {of_trace:#?}");
}

#[test]
fn objects_carry_crc32c_and_posix_metadata_an_independent_client_can_read() {
    let Some(server) = S3Server::start(S3Flavor::S3sFs) else {
        return;
    };
    let dir = scratch();
    let src = dir.path().join("src");
    let small = random_bytes(70_000);
    write_file(&src.join("d/small"), &small);
    chmod(&src.join("d/small"), 0o640);
    set_times(&src.join("d/small"), (1_600_000_000, 1), (1_650_000_000, 987_654_321));
    write_file(&src.join("d/medium"), &random_bytes(20 << 20));
    ferry_s3(&server, "copy", &src, server.uri("meta")).arg("--json").run().assert_code(0);

    let head = aws(&server, &["head-object", "--bucket", &server.bucket, "--key", "meta/d/small", "--checksum-mode", "ENABLED"]);
    assert_eq!(head["ContentLength"], 70_000);
    assert_eq!(head["ChecksumCRC32C"].as_str(), Some(crc_b64(&small).as_str()), "the stored CRC32C is the source's: {head}");
    let meta = &head["Metadata"];
    assert_eq!(meta["file-mtime"], "1650000000987654321ns", "{head}");
    assert_eq!(meta["file-permissions"], "0100640", "{head}");
    assert_eq!(meta["file-owner"], unsafe { libc::getuid() }.to_string(), "{head}");
    let medium = aws(&server, &["head-object", "--bucket", &server.bucket, "--key", "meta/d/medium"]);
    assert_eq!(medium["ContentLength"], 20 << 20, "the multipart object is whole: {medium}");

    // s3s-fs checks CRC32C on arrival: a corrupted upload is refused, retried and reported.
    let dir2 = scratch();
    write_file(&dir2.path().join("x/bad"), &random_bytes(5000));
    let out = ferry_s3(&server, "copy", dir2.path(), server.uri("corrupt")).arg("--json").env("FERRY_TEST_CORRUPT", "x/bad").run();
    out.assert_code(1);
    let fails = failures(&out.json());
    assert!(fails.iter().any(|(p, r)| p == "x/bad" && r.contains("checksum")), "{fails:?}\n{}", out.describe());
    assert!(counter(&out.json(), "shard_retries") >= 1 || out.stdout.contains("attempts"), "{}", out.describe());
}

fn write_big(path: &Path, size: usize) -> Vec<u8> {
    let data: Vec<u8> = (0..size).map(|i| ((i * 2654435761) >> 13) as u8).collect();
    write_file(path, &data);
    data
}

#[test]
fn killed_mid_multipart_upload_resumes_and_leaves_no_upload_behind() {
    let Some(server) = S3Server::start(S3Flavor::Moto) else {
        return;
    };
    let dir = scratch();
    let src = dir.path().join("src");
    let size = 320 << 20;
    write_big(&src.join("huge"), size);
    let loc = location(&server, &server.uri("resume"));
    let stderr = dir.path().join("killed.stderr");
    let mut child = ferry_s3(&server, "copy", &src, server.uri("resume")).arg("--movers").arg("1").spawn_detached(&stderr);

    // Wait until the upload holds more than two part shards' worth of parts, then kill the
    // whole process group. (Killed just after a fifth part, a rerun once kept only the first
    // four: the last part listed before the kill is not always reused. Resuming is still
    // correct, a part sent again is harmless; see the session notes.)
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut seen = 0;
    while Instant::now() < deadline {
        if let Some(id) = loc.pending_multiparts(b"huge").unwrap().first() {
            seen = loc.list_parts(b"huge", id).unwrap().len();
            if seen >= 9 {
                break;
            }
        }
        if child.try_wait().unwrap().is_some() {
            panic!("ferry finished before it could be killed: {}", fs::read_to_string(&stderr).unwrap_or_default());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(seen >= 9, "the upload never got going");
    unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
    let _ = child.wait();
    assert_eq!(loc.stat(b"huge").unwrap(), None, "nothing is visible before the upload completes");
    assert_eq!(loc.pending_multiparts(b"huge").unwrap().len(), 1);

    // The rerun finds the upload and keeps the parts already there.
    let out = ferry_s3(&server, "copy", &src, server.uri("resume")).arg("--json").run();
    out.assert_code(0);
    let json = out.json();
    assert!(counter(&json, "bytes_resumed") >= 5 * (16 << 20), "the rerun resumed rather than restarted\n{}", out.describe());
    assert_eq!(counter(&json, "files_verified"), 1);
    let listing = aws(&server, &["list-multipart-uploads", "--bucket", &server.bucket]);
    assert!(listing.get("Uploads").is_none_or(|u| u.as_array().is_none_or(|a| a.is_empty())), "no unfinished upload is left: {listing}");
    // The object is right: fetched back by the independent client and compared.
    let fetched = dir.path().join("fetched");
    aws(&server, &["get-object", "--bucket", &server.bucket, "--key", "resume/huge", fetched.to_str().unwrap()]);
    assert!(same_content(&src.join("huge"), &fetched), "the resumed object differs from the source");
}

fn one_line_error(out: &Outcome, needles: &[&str]) {
    assert_eq!(out.code, Some(2), "expected exit code 2\n{}", out.describe());
    out.assert_no_panic();
    let lines: Vec<&str> = out.stderr.trim_end().lines().collect();
    assert_eq!(lines.len(), 1, "one line on stderr\n{}", out.describe());
    for n in needles {
        assert!(lines[0].contains(n), "the error should mention {n:?}\n{}", out.describe());
    }
}

#[test]
fn bad_credentials_missing_bucket_and_unreachable_server_give_clear_errors() {
    let Some(server) = S3Server::start(S3Flavor::S3sFs) else {
        return;
    };
    let dir = scratch();
    write_file(&dir.path().join("f"), b"x");
    let bare = |args: &[&str]| -> Ferry {
        let mut f = Ferry::bare().timeout(Duration::from_secs(60));
        for a in args {
            f = f.arg(a);
        }
        f.env("AWS_REGION", "us-east-1").env("AWS_EC2_METADATA_DISABLED", "true")
    };
    let src = dir.path().to_str().unwrap();

    let wrong = bare(&["copy", src, &server.uri("x"), "--endpoint-url", &server.endpoint])
        .env("AWS_ACCESS_KEY_ID", &server.access_key)
        .env("AWS_SECRET_ACCESS_KEY", "not-the-secret")
        .run();
    one_line_error(&wrong, &["destination", "s3://ferry-test", "credentials"]);

    let missing = bare(&["copy", src, "s3://no-such-bucket/x", "--endpoint-url", &server.endpoint])
        .env("AWS_ACCESS_KEY_ID", &server.access_key)
        .env("AWS_SECRET_ACCESS_KEY", &server.secret_key)
        .run();
    one_line_error(&missing, &["no-such-bucket", "does not exist"]);

    let unreachable =
        bare(&["copy", "s3://ferry-test/x", src, "--endpoint-url", "http://127.0.0.1:9"]).env("AWS_ACCESS_KEY_ID", "a").env("AWS_SECRET_ACCESS_KEY", "b").run();
    one_line_error(&unreachable, &["source", "cannot reach", "--endpoint-url"]);

    let bad_uri = bare(&["copy", src, "s3://A_B/x"]).run();
    one_line_error(&bad_uri, &["bucket name"]);
}

#[test]
fn sync_to_s3_deletes_extraneous_objects_in_batches() {
    let Some(server) = S3Server::start(S3Flavor::Moto) else {
        return;
    };
    let dir = scratch();
    let src = dir.path().join("src");
    for i in 0..30 {
        write_file(&src.join(format!("keep/f{i}")), format!("{i}").as_bytes());
        write_file(&src.join(format!("gone/g{i}")), b"g");
    }
    write_file(&src.join("excluded.tmp"), b"t");
    ferry_s3(&server, "copy", &src, server.uri("sync")).run().assert_code(0);
    fs::remove_dir_all(src.join("gone")).unwrap();
    fs::remove_file(src.join("keep/f0")).unwrap();
    fs::remove_file(src.join("excluded.tmp")).unwrap();
    let out = ferry_s3(&server, "sync", &src, server.uri("sync")).arg("--json").arg("--exclude").arg("*.tmp").run();
    out.assert_code(0);
    assert_eq!(counter(&out.json(), "files_deleted"), 31, "{}", out.describe());
    let listed = aws(&server, &["list-objects-v2", "--bucket", &server.bucket, "--prefix", "sync/"]);
    let keys: Vec<String> = listed["Contents"].as_array().unwrap().iter().map(|o| o["Key"].as_str().unwrap().to_string()).collect();
    assert!(keys.iter().all(|k| !k.starts_with("sync/gone/") && k != "sync/keep/f0"), "{keys:?}");
    assert!(keys.contains(&"sync/excluded.tmp".to_string()), "excluded paths are left alone: {keys:?}");
    assert_eq!(keys.iter().filter(|k| k.starts_with("sync/keep/f")).count(), 29);
}

#[test]
fn cluster_mode_moves_a_tree_to_s3_and_back_through_two_workers() {
    let Some(server) = S3Server::start(S3Flavor::Moto) else {
        return;
    };
    let Some(etcd) = ferry_common::testing::EtcdServer::start() else {
        return;
    };
    // Workers take credentials from their own AWS chain: here, the environment they inherit.
    server.export_env();
    let dir = scratch();
    let bin = |name: &str| Path::new(env!("CARGO_BIN_EXE_ferry")).with_file_name(name);
    let quiet = |c: &mut Command| -> std::process::Child {
        c.stdin(std::process::Stdio::null()).stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null()).spawn().expect("start a cluster process")
    };
    let mut procs = support::sites::Procs::default();
    procs.0.push(quiet(Command::new(bin("ferry")).args(["coordinator", "--etcd", &etcd.endpoint, "--name", "c1"])));
    for w in ["w1", "w2"] {
        procs.0.push(quiet(Command::new(bin("ferry-worker")).args(["--etcd", &etcd.endpoint, "--name", w, "--movers", "3"])));
    }
    let src = dir.path().join("src");
    write_big(&src.join("big/file"), 300 << 20);
    for i in 0..200 {
        write_file(&src.join(format!("small/d{}/f{i}", i % 7)), &random_bytes(100 + i * 37));
    }
    let run = |a: &std::ffi::OsStr, b: &std::ffi::OsStr| {
        let out = Ferry::new("copy", a, b).args(["--etcd", &etcd.endpoint, "--endpoint-url", &server.endpoint, "--json"]).run();
        out.assert_code(0);
        out.json()
    };
    let up = run(src.as_os_str(), server.uri("cluster").as_ref());
    assert_eq!(counter(&up, "files_transferred"), 201 + 9, "200 small files, one big one and 9 directories\n{up}");
    let back = dir.path().join("back");
    run(server.uri("cluster").as_ref(), back.as_os_str());
    let diff = s3_differences(&src, &back);
    assert!(diff.is_empty(), "rsync sees differences after a cluster round trip:\n{}", diff.join("\n"));
    drop(procs);
}

#[test]
fn a_cancelled_run_aborts_its_multipart_upload() {
    let Some(server) = S3Server::start(S3Flavor::Moto) else {
        return;
    };
    let dir = scratch();
    let src = dir.path().join("src");
    write_big(&src.join("huge"), 320 << 20);
    let loc = location(&server, &server.uri("cancel"));
    let stderr = dir.path().join("cancelled.stderr");
    let mut child = ferry_s3(&server, "copy", &src, server.uri("cancel")).arg("--movers").arg("1").spawn_detached(&stderr);
    let deadline = Instant::now() + Duration::from_secs(120);
    while loc.pending_multiparts(b"huge").unwrap().is_empty() {
        assert!(Instant::now() < deadline, "the upload never started");
        assert!(child.try_wait().unwrap().is_none(), "ferry finished before it could be cancelled");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Ctrl-C: the execution is cancelled, and its upload aborted.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(1), "a cancelled run exits 1: {}", fs::read_to_string(&stderr).unwrap_or_default());
    assert!(loc.pending_multiparts(b"huge").unwrap().is_empty(), "the cancelled upload is aborted");
    assert_eq!(loc.stat(b"huge").unwrap(), None);
}

#[test]
fn storage_class_encryption_and_object_tags_reach_the_objects() {
    let Some(server) = S3Server::start(S3Flavor::Moto) else {
        return;
    };
    let dir = scratch();
    let src = dir.path().join("src");
    write_file(&src.join("small"), b"small object");
    write_file(&src.join("medium"), &random_bytes(20 << 20));
    ferry_s3(&server, "copy", &src, server.uri("opts")).args(["--storage-class", "STANDARD_IA", "--sse", "AES256"]).run().assert_code(0);
    for key in ["opts/small", "opts/medium"] {
        let head = aws(&server, &["head-object", "--bucket", &server.bucket, "--key", key]);
        assert_eq!(head["StorageClass"], "STANDARD_IA", "{key}: {head}");
        assert_eq!(head["ServerSideEncryption"], "AES256", "{key}: {head}");
    }

    // ObjectTags PRESERVE (the default) between S3 locations, NONE drops them.
    aws(
        &server,
        &["put-object-tagging", "--bucket", &server.bucket, "--key", "opts/small", "--tagging", "TagSet=[{Key=team,Value=data eng},{Key=tier,Value=gold}]"],
    );
    ferry_s3(&server, "copy", server.uri("opts"), server.uri("tagged")).run().assert_code(0);
    let tags = aws(&server, &["get-object-tagging", "--bucket", &server.bucket, "--key", "tagged/small"]);
    let mut got: Vec<(String, String)> =
        tags["TagSet"].as_array().unwrap().iter().map(|t| (t["Key"].as_str().unwrap().to_string(), t["Value"].as_str().unwrap().to_string())).collect();
    got.sort();
    assert_eq!(got, vec![("team".to_string(), "data eng".to_string()), ("tier".to_string(), "gold".to_string())]);
    ferry_s3(&server, "copy", server.uri("opts"), server.uri("untagged")).args(["--object-tags", "NONE"]).run().assert_code(0);
    let none = aws(&server, &["get-object-tagging", "--bucket", &server.bucket, "--key", "untagged/small"]);
    assert!(none["TagSet"].as_array().is_none_or(|a| a.is_empty()), "{none}");
}
