//! Issue 17, "secure by default": what a destination, a source or a task may hold or ask for
//! without hurting the machine ferry runs on. Drives the real binary in embedded mode.

mod support;

use std::ffi::CString;
use std::fs;
use std::path::Path;

use support::*;

/// Makes a chain of `depth` directories named `d` below `top`, one descriptor at a time
/// (paths that deep exceed PATH_MAX many times over).
fn deep_chain(top: &Path, depth: usize) {
    fs::create_dir_all(top).unwrap();
    let name = CString::new("d").unwrap();
    let mut fd = unsafe { libc::open(cstr(top).as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY) };
    assert!(fd >= 0);
    for _ in 0..depth {
        assert_eq!(unsafe { libc::mkdirat(fd, name.as_ptr(), 0o755) }, 0);
        let next = unsafe { libc::openat(fd, name.as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW) };
        assert!(next >= 0);
        unsafe { libc::close(fd) };
        fd = next;
    }
    unsafe { libc::close(fd) };
}

#[test]
fn sync_deletes_a_100000_deep_directory_chain_without_crashing() {
    let tmp = scratch();
    let (src, dst) = (tmp.path().join("src"), tmp.path().join("dst"));
    write_file(&src.join("kept.txt"), b"kept\n");
    deep_chain(&dst.join("extra"), 100_000);
    let json = ferry_ok("sync", &src, &dst, &[]);
    assert_eq!(counter(&json, "files_failed"), 0, "{json}");
    assert!(!dst.join("extra").exists(), "the chain is gone");
    assert_eq!(fs::read(dst.join("kept.txt")).unwrap(), b"kept\n");
}

#[test]
fn sync_from_an_empty_source_is_refused_unless_allowed() {
    let tmp = scratch();
    let (src, dst) = (tmp.path().join("src"), tmp.path().join("dst"));
    fs::create_dir(&src).unwrap();
    write_file(&dst.join("precious/data.txt"), b"keep me\n");
    let out = Ferry::new("sync", &src, &dst).run();
    out.assert_code(2).assert_no_panic();
    let lines: Vec<&str> = out.stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{}", out.describe());
    assert!(lines[0].contains("is empty") && lines[0].contains("--allow-empty-source"), "{}", out.describe());
    assert_eq!(fs::read(dst.join("precious/data.txt")).unwrap(), b"keep me\n", "the destination is intact");

    // Copy deletes nothing: an empty source is fine there.
    ferry_ok("copy", &src, &dst, &[]);
    assert!(dst.join("precious/data.txt").exists());

    let json = ferry_ok("sync", &src, &dst, &["--allow-empty-source"]);
    assert!(counter(&json, "files_deleted") >= 1, "{json}");
    assert!(!dst.join("precious").exists(), "asked for, the mirror of nothing is nothing");
}

// ---- tasks through the control plane (the API answers its field errors with 422) ----

fn control(allowed_roots: &[&str]) -> ferry_coordinator::control::ControlPlane {
    use ferry_coordinator::control::{ControlConfig, ControlPlane};
    let store: ferry_common::store::SharedStore = std::sync::Arc::new(ferry_common::store::MemStore::new());
    ControlPlane::new(store, ControlConfig { allowed_roots: allowed_roots.iter().map(|s| s.to_string()).collect(), ..ControlConfig::default() })
}

fn task(name: &str, src: &str, dst: &str, extra: serde_json::Value) -> ferry_common::task::Task {
    let mut doc = serde_json::json!({ "Name": name, "SourceLocation": src, "DestinationLocation": dst });
    doc.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    serde_json::from_value(doc).unwrap()
}

/// The field and message of a refusal the API answers with 422.
fn unprocessable(r: Result<ferry_common::task::Task, ferry_coordinator::control::ControlError>) -> (String, String) {
    use ferry_common::task::FieldError;
    use ferry_coordinator::control::ControlError;
    match r {
        Err(ControlError::Field(FieldError::Unprocessable { field, message })) => (field, message),
        other => panic!("expected a 422 refusal, got {other:?}"),
    }
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f)
}

#[test]
fn a_task_cannot_name_a_destination_that_contains_its_source_or_the_reverse() {
    let ctl = control(&[]);
    block_on(async {
        let (field, message) = unprocessable(ctl.create_task(task("a", "/srv/data/src", "/srv/data", serde_json::json!({}))).await);
        assert_eq!(field, "SourceLocation");
        assert!(message.contains("inside the destination"), "{message}");
        let (field, _) = unprocessable(ctl.create_task(task("b", "/srv/data", "file:///srv/data/copy/", serde_json::json!({}))).await);
        assert_eq!(field, "DestinationLocation");
        let (field, _) = unprocessable(ctl.create_task(task("c", "s3://bucket/a", "s3://bucket/a/b", serde_json::json!({}))).await);
        assert_eq!(field, "DestinationLocation");
        // Siblings sharing a prefix are not nested.
        ctl.create_task(task("d", "/srv/data", "/srv/database", serde_json::json!({}))).await.unwrap();
    });
}

#[test]
fn a_manifest_that_is_not_a_bounded_regular_file_is_refused_at_once() {
    let tmp = scratch();
    let fifo = tmp.path().join("manifest.fifo");
    mkfifo(&fifo);
    let big = tmp.path().join("big.csv");
    fs::File::create(&big).unwrap().set_len(ferry_common::task::MAX_MANIFEST_BYTES + 1).unwrap();
    let ctl = control(&[]);
    let started = std::time::Instant::now();
    block_on(async {
        for (i, m) in ["/dev/zero", fifo.to_str().unwrap(), big.to_str().unwrap()].iter().enumerate() {
            let t = task(&format!("m{i}"), "/srv/a", "/srv/b", serde_json::json!({ "Manifest": { "Source": m } }));
            let (field, message) = unprocessable(ctl.create_task(t).await);
            assert_eq!(field, "Manifest.Source", "{m}: {message}");
        }
        let report = tmp.path().join("not-a-dir");
        write_file(&report, b"x");
        let t = task("r", "/srv/a", "/srv/b", serde_json::json!({ "TaskReportConfig": { "Destination": report.to_str().unwrap() } }));
        assert_eq!(unprocessable(ctl.create_task(t).await).0, "TaskReportConfig.Destination");
    });
    assert!(started.elapsed() < std::time::Duration::from_secs(5), "refused without reading: {:?}", started.elapsed());
}

#[test]
fn a_task_outside_the_allowed_roots_is_refused() {
    let ctl = control(&["/data", "s3://bucket"]);
    block_on(async {
        ctl.create_task(task("ok", "/data/in", "s3://bucket/out", serde_json::json!({}))).await.unwrap();
        let (field, message) = unprocessable(ctl.create_task(task("etc", "/etc", "/data/loot", serde_json::json!({}))).await);
        assert_eq!(field, "SourceLocation");
        assert!(message.contains("allowed_roots"), "{message}");
        let (field, _) = unprocessable(ctl.create_task(task("dotdot", "/data/in", "/datax/out", serde_json::json!({}))).await);
        assert_eq!(field, "DestinationLocation");
        let (field, _) = unprocessable(ctl.create_task(task("other", "s3://bucket2/x", "/data/out", serde_json::json!({}))).await);
        assert_eq!(field, "SourceLocation");
        let t = task("man", "/data/in", "/data/out", serde_json::json!({ "Manifest": { "Source": "/etc/shadow" } }));
        assert_eq!(unprocessable(ctl.create_task(t).await).0, "Manifest.Source");
    });
}

#[test]
fn copy_and_sync_leave_user_entries_and_other_runs_fresh_temporaries_alone() {
    let tmp = scratch();
    let (src, dst) = (tmp.path().join("src"), tmp.path().join("dst"));
    write_file(&src.join("sub/a.txt"), b"a\n");
    // A user's entries that merely look like ferry's, and another execution's temporary
    // file being written right now (ferry's exact shape, fresh).
    let kept = [
        dst.join(".ferry-tmp-notes"),
        dst.join("sub/.ferry-tmp-dir/inside.txt"),
        dst.join("sub/.ferry-tmp-v12345678-0123456789abcdef"),
        dst.join(".ferry-tmp-parts-0123456789abcdef"),
    ];
    for k in &kept {
        write_file(k, b"mine\n");
    }
    for mode in ["copy", "sync"] {
        let json = ferry_ok(mode, &src, &dst, &[]);
        assert_eq!(counter(&json, "files_failed"), 0, "{json}");
        for k in &kept {
            assert_eq!(fs::read(k).ok().as_deref(), Some(&b"mine\n"[..]), "{mode} left {} alone", k.display());
        }
    }
    assert_eq!(fs::read(dst.join("sub/a.txt")).unwrap(), b"a\n");
}
