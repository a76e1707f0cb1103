//! Bad input of any kind gets exit code 2 and one line on stderr, `ferry: error: ...`, naming
//! the thing and the fix: never a panic, never a backtrace, never a hang.

mod support;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use support::*;

/// Runs `ferry ARGS...` (no `--no-progress`: errors come before any progress output) with
/// backtraces enabled, so that a panic could not hide.
fn ferry_in(dir: &Path, args: &[&dyn AsRef<std::ffi::OsStr>]) -> Outcome {
    let mut f = Ferry::bare().env("RUST_BACKTRACE", "1").current_dir(dir).timeout(Duration::from_secs(120));
    for a in args {
        f = f.arg(a);
    }
    f.run()
}

fn assert_usage_error(out: &Outcome, needles: &[&str]) {
    assert_eq!(out.code, Some(2), "expected exit code 2\n{}", out.describe());
    out.assert_no_panic();
    let lines: Vec<&str> = out.stderr.trim_end_matches('\n').lines().collect();
    assert_eq!(lines.len(), 1, "stderr must be exactly one line\n{}", out.describe());
    assert!(lines[0].starts_with("ferry: error: "), "stderr must start with 'ferry: error: '\n{}", out.describe());
    for n in needles {
        assert!(lines[0].contains(n), "the error should mention {n:?}\n{}", out.describe());
    }
}

/// A scratch dir holding `src/` with one file in it.
fn setup() -> (tempfile::TempDir, PathBuf) {
    let t = scratch();
    let src = t.path().join("src");
    write_file(&src.join("file.txt"), b"hello\n");
    (t, src)
}

fn s(p: &Path) -> &str {
    p.to_str().expect("scratch paths are UTF-8")
}

#[test]
fn missing_source_is_reported() {
    let (t, _) = setup();
    let missing = t.path().join("does-not-exist");
    let dst = t.path().join("dst");
    let out = ferry_in(t.path(), &[&"copy", &missing, &dst]);
    assert_usage_error(&out, &[s(&missing), "does not exist"]);
    assert!(!dst.exists(), "the destination was created for a missing source");
}

#[test]
fn missing_relative_source_is_reported() {
    let (t, _) = setup();
    let out = ferry_in(t.path(), &[&"copy", &"no-such-dir", &"out"]);
    assert_usage_error(&out, &["no-such-dir", "does not exist"]);
    assert!(!t.path().join("out").exists());
}

#[test]
fn missing_source_file_uri_is_reported() {
    let (t, _) = setup();
    let missing = t.path().join("gone");
    let uri = format!("file://{}", s(&missing));
    let out = ferry_in(t.path(), &[&"copy", &uri, &t.path().join("dst")]);
    assert_usage_error(&out, &[s(&missing), "does not exist"]);
}

#[test]
fn destination_inside_source_is_refused() {
    let (t, src) = setup();
    for sub in ["copy", "sync"] {
        let out = ferry_in(t.path(), &[&sub, &src, &src.join("backup")]);
        assert_usage_error(&out, &["inside the source"]);
        assert!(!src.join("backup").exists(), "{sub} created the destination inside the source");
    }
}

#[test]
fn destination_inside_source_via_symlink_is_refused() {
    let (t, src) = setup();
    let alias = t.path().join("alias");
    symlink(&src, &alias);
    let out = ferry_in(t.path(), &[&"copy", &src, &alias.join("backup")]);
    assert_usage_error(&out, &["inside the source"]);
    assert!(!src.join("backup").exists());
}

#[test]
fn destination_equal_to_source_is_refused() {
    let (t, src) = setup();
    let out = ferry_in(t.path(), &[&"sync", &src, &src]);
    assert_usage_error(&out, &[s(&src)]);
    assert_eq!(fs::read(src.join("file.txt")).unwrap(), b"hello\n");
}

/// `sync SRC/sub SRC` would delete the source itself as an extraneous destination entry.
#[test]
fn sync_into_a_parent_of_the_source_is_refused() {
    let (t, src) = setup();
    let inner = src.join("inner");
    write_file(&inner.join("precious.txt"), b"keep me\n");
    let out = ferry_in(t.path(), &[&"sync", &inner, &src]);
    assert_usage_error(&out, &[]);
    assert_eq!(fs::read(inner.join("precious.txt")).unwrap(), b"keep me\n");
    assert_eq!(fs::read(src.join("file.txt")).unwrap(), b"hello\n");
}

#[test]
fn destination_under_a_file_is_refused() {
    let (t, src) = setup();
    let file = t.path().join("afile");
    write_file(&file, b"a plain file\n");
    let out = ferry_in(t.path(), &[&"copy", &src, &file.join("sub")]);
    assert_usage_error(&out, &[s(&file)]);
    assert_eq!(fs::read(&file).unwrap(), b"a plain file\n");
}

#[test]
fn destination_that_is_a_file_is_refused() {
    let (t, src) = setup();
    let file = t.path().join("afile");
    write_file(&file, b"a plain file\n");
    let out = ferry_in(t.path(), &[&"copy", &src, &file]);
    assert_usage_error(&out, &[s(&file)]);
    assert_eq!(fs::read(&file).unwrap(), b"a plain file\n");
}

#[test]
fn unknown_scheme_is_reported() {
    let (t, src) = setup();
    let out = ferry_in(t.path(), &[&"copy", &"foo://x", &t.path().join("dst")]);
    assert_usage_error(&out, &["unknown scheme", "foo"]);
    let out = ferry_in(t.path(), &[&"copy", &src, &"foo://x"]);
    assert_usage_error(&out, &["unknown scheme", "foo"]);
}

#[test]
fn ftp_scheme_is_reported() {
    let (t, _) = setup();
    let out = ferry_in(t.path(), &[&"copy", &"ftp://host/path", &t.path().join("dst")]);
    assert_usage_error(&out, &["ftp", "scheme"]);
}

#[test]
fn unsupported_schemes_and_bad_s3_locations_are_refused() {
    let (t, src) = setup();
    // smb:// is spoken now: without a password it stops before connecting.
    let out = ferry_in(t.path(), &[&"copy", &src, &"smb://user@host/share"]);
    assert_usage_error(&out, &["smb://user@host/share", "FERRY_SMB_PASSWORD"]);
    let out = ferry_in(t.path(), &[&"copy", &src, &"nfs://no-such-host.invalid/export"]);
    assert_usage_error(&out, &["no-such-host.invalid", "cannot resolve"]);
    let out = ferry_in(t.path(), &[&"copy", &"nfs://host/export/../etc", &t.path().join("dst")]);
    assert_usage_error(&out, &["'..'"]);
    let out = ferry_in(t.path(), &[&"copy", &"s3://Bad_Bucket/prefix", &t.path().join("dst")]);
    assert_usage_error(&out, &["Bad_Bucket", "bucket name"]);
    let out = ferry_in(t.path(), &[&"copy", &src, &"s3://bucket/a/../b"]);
    assert_usage_error(&out, &["'..'"]);
    let out = ferry_in(t.path(), &[&"copy", &src, &"s3://bucket/x", &"--sse-kms-key-id", &"k"]);
    assert_usage_error(&out, &["--sse aws:kms"]);
}

#[test]
fn s3_without_credentials_says_where_credentials_come_from() {
    let (t, src) = setup();
    let out = Ferry::bare()
        .env("HOME", t.path())
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_REGION", "us-east-1")
        .env_remove_aws()
        .current_dir(t.path())
        .timeout(Duration::from_secs(120))
        .arg("copy")
        .arg(&src)
        .arg("s3://some-bucket/x")
        .arg("--endpoint-url")
        .arg("http://127.0.0.1:9")
        .run();
    assert_usage_error(&out, &["destination", "no AWS credentials", "AWS_ACCESS_KEY_ID"]);
}

#[test]
fn conflicting_checksum_and_all_are_refused() {
    let (t, src) = setup();
    let dst = t.path().join("dst");
    let out = ferry_in(t.path(), &[&"copy", &src, &dst, &"--checksum", &"--all"]);
    assert_usage_error(&out, &["conflict", "--checksum", "--all"]);
    assert!(!dst.exists());
}

/// Not bad input: a dry run may ask for point-in-time verification.
#[test]
fn dry_run_with_point_in_time_verify_is_allowed() {
    let (t, src) = setup();
    let dst = t.path().join("dst");
    let out = ferry_in(t.path(), &[&"copy", &src, &dst, &"--dry-run", &"--verify", &"point-in-time-consistent", &"--no-progress"]);
    out.assert_code(0);
    assert!(!dst.exists(), "a dry run created the destination");
}

#[test]
fn unknown_flag_is_reported() {
    let (t, src) = setup();
    let out = ferry_in(t.path(), &[&"copy", &src, &t.path().join("dst"), &"--frobnicate"]);
    assert_usage_error(&out, &["--frobnicate"]);
}

#[test]
fn bad_verify_mode_is_reported() {
    let (t, src) = setup();
    let out = ferry_in(t.path(), &[&"copy", &src, &t.path().join("dst"), &"--verify", &"sometimes"]);
    assert_usage_error(&out, &["sometimes"]);
}

/// `ferry verify` compares whole trees; a weaker mode there is a mistake, not a request.
#[test]
fn verify_with_a_mode_other_than_point_in_time_is_refused() {
    let (t, src) = setup();
    let dst = t.path().join("dst");
    std::fs::create_dir(&dst).unwrap();
    let out = ferry_in(t.path(), &[&"verify", &src, &dst, &"--verify", &"none"]);
    assert_usage_error(&out, &["ferry verify", "point-in-time-consistent", "--verify none", "copy and sync"]);
}

#[test]
fn non_numeric_movers_is_reported() {
    let (t, src) = setup();
    let out = ferry_in(t.path(), &[&"copy", &src, &t.path().join("dst"), &"--movers", &"lots"]);
    assert_usage_error(&out, &["lots"]);
}

#[test]
fn missing_destination_argument_is_reported() {
    let (t, src) = setup();
    let out = ferry_in(t.path(), &[&"copy", &src]);
    assert_usage_error(&out, &[]);
}

#[test]
fn unknown_subcommand_is_reported() {
    let (t, src) = setup();
    let out = ferry_in(t.path(), &[&"frobnicate", &src, &t.path().join("dst")]);
    assert_usage_error(&out, &["frobnicate"]);
}

#[test]
fn empty_filter_pattern_is_reported() {
    let (t, src) = setup();
    let out = ferry_in(t.path(), &[&"copy", &src, &t.path().join("dst"), &"--exclude", &"*.tmp||/x"]);
    assert_usage_error(&out, &["*.tmp||/x"]);
}

#[test]
fn report_in_missing_directory_is_reported() {
    let (t, src) = setup();
    let dir = t.path().join("no-such-dir");
    let dst = t.path().join("dst");
    let out = ferry_in(t.path(), &[&"copy", &src, &dst, &"--report", &dir.join("r.jsonl")]);
    assert_usage_error(&out, &[s(&dir)]);
}

/// `efs://FS_ID` is resolved through the EFS API (moto's here, as the endpoint): a malformed
/// ID, an unknown one and one without a mount target each get their line, and a file system
/// that resolves says where it is and that this build cannot speak NFSv4 to it yet.
#[test]
fn efs_ids_are_resolved_through_the_efs_api_with_one_line_for_each_mistake_then_copied_to_over_nfs41() {
    let Some(moto) = ferry_common::testing::S3Server::start(ferry_common::testing::S3Flavor::Moto) else {
        return;
    };
    let (t, src) = setup();
    let aws = |args: &[&str]| -> String {
        let out = std::process::Command::new("aws")
            .args(["--endpoint-url", &moto.endpoint, "--region", "us-east-1", "--output", "text"])
            .args(args)
            .env("AWS_ACCESS_KEY_ID", &moto.access_key)
            .env("AWS_SECRET_ACCESS_KEY", &moto.secret_key)
            .output()
            .expect("the AWS CLI is installed");
        assert!(out.status.success(), "aws {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let efs_copy = |from: &str, to: &str| {
        Ferry::bare()
            .args(["copy", from, to, "--json", "--endpoint-url", &moto.endpoint, "--region", "us-east-1"])
            .env("AWS_ACCESS_KEY_ID", &moto.access_key)
            .env("AWS_SECRET_ACCESS_KEY", &moto.secret_key)
            .current_dir(t.path())
            .timeout(Duration::from_secs(60))
            .run()
    };
    let efs = |uri: &str| efs_copy(s(&src), uri);
    assert_usage_error(&ferry_in(t.path(), &[&"copy", &src, &"efs://my-file-system/x"]), &["my-file-system", "fs-0123456789abcdef0"]);
    assert_usage_error(&efs("efs://fs-0badc0de/data"), &["no EFS file system fs-0badc0de", "us-east-1", "--region"]);
    let unreachable = Ferry::bare()
        .args(["copy", s(&src), "efs://fs-0badc0de", "--endpoint-url", "http://127.0.0.1:9"])
        .env("AWS_ACCESS_KEY_ID", "a")
        .env("AWS_SECRET_ACCESS_KEY", "b")
        .run();
    assert_usage_error(&unreachable, &["the EFS API does not answer", "--endpoint-url"]);

    let fs = aws(&["efs", "create-file-system", "--creation-token", &format!("ferry-{}", std::process::id()), "--query", "FileSystemId"]);
    assert_usage_error(&efs(&format!("efs://{fs}/data")), &[&fs, "no available mount target (it has none)", "create one"]);

    let vpc = aws(&["ec2", "create-vpc", "--cidr-block", "127.0.0.0/16", "--query", "Vpc.VpcId"]);
    let subnet =
        aws(&["ec2", "create-subnet", "--vpc-id", &vpc, "--cidr-block", "127.0.0.0/24", "--availability-zone", "us-east-1a", "--query", "Subnet.SubnetId"]);
    let target = aws(&["efs", "create-mount-target", "--file-system-id", &fs, "--subnet-id", &subnet, "--ip-address", "127.0.0.1", "--query", "MountTargetId"]);
    // Nothing serves NFS at the mount target's address yet.
    assert_usage_error(&efs(&format!("efs://{fs}/data?az=us-east-1a")), &[&fs, &target, "127.0.0.1:2049", "cannot reach the NFSv4.1 service"]);

    // A ganesha of the test's own on 127.0.0.1:2049 stands in for the file system: copies to
    // and from it go over NFSv4.1, and are exact on the server's disk.
    let Some(nfs) = ferry_common::testing::NfsServer::private(2049, 12548) else {
        return;
    };
    let (on_disk, _) = nfs.fresh("efs");
    let uri = format!("efs://{fs}/export/{}?az=us-east-1a", on_disk.file_name().unwrap().to_string_lossy());
    let tree = t.path().join("tree");
    for i in 0..50 {
        write_file(&tree.join(format!("d{}/f{i}", i % 5)), &random_bytes(100 + i * 997));
    }
    write_file(&tree.join("large"), &random_bytes(5 << 20));
    chmod(&tree.join("d2/f2"), 0o640);
    let times = time_snapshot(&tree);
    let out = efs_copy(s(&tree), &uri);
    out.assert_code(0);
    assert_exact_copy(&tree, &on_disk, &times, false);
    let idle = efs_copy(s(&tree), &uri);
    idle.assert_code(0);
    assert_eq!(counter(&idle.json(), "files_transferred"), 0, "an idle rerun to EFS copied: {}", idle.describe());
    let back = t.path().join("back");
    efs_copy(&uri, s(&back)).assert_code(0);
    assert_exact_copy(&on_disk, &back, &time_snapshot(&on_disk), false);
}
