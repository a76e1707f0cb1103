//! `nfs://` spoken by ferry itself (no kernel mount) against a real nfs-ganesha, checked by
//! tools that are not ferry's: rsync `--checksum` on the export's directory on disk, and
//! libnfs's own client (`nfs-cat`) reading through the server.
//!
//! What NFSv3 cannot carry is left out of the comparisons, as README.md lists it: extended
//! attributes, and (on ganesha, whose VFS backend ignores them) a symlink's own times.

mod support;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use ferry_common::testing::NfsServer;
use support::*;

/// `rsync -n -i -a -H --checksum`: content, type, permissions, owner, times, symlink targets,
/// devices and hard links; no `-X`, NFSv3 has no extended attributes. A symlink whose only
/// difference is its time (`.L...t`) is what the server could not keep.
fn differences(a: &Path, b: &Path) -> Vec<String> {
    let out = Command::new("rsync")
        .args(["-n", "-i", "-a", "-H", "--checksum", "--delete"])
        .arg(format!("{}/", a.display()))
        .arg(format!("{}/", b.display()))
        .env("LC_ALL", "C")
        .output()
        .expect("rsync is installed");
    assert!(out.status.success(), "rsync failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .filter(|l| !(l.starts_with(".L") && l.as_bytes().get(4) == Some(&b't')))
        .map(str::to_string)
        .collect()
}

fn assert_same(reference: &Path, times: &BTreeMap<PathBuf, Times>, copy: &Path, when: &str) {
    let diff = differences(reference, copy);
    assert!(diff.is_empty(), "{when}: rsync sees differences between {} and {}:\n{}", reference.display(), copy.display(), diff.join("\n"));
    let tdiff: Vec<String> = time_differences(times, copy, false).into_iter().filter(|d| !d.contains("(symlink)")).collect();
    assert!(tdiff.is_empty(), "{when}: times differ:\n{}", tdiff.join("\n"));
    assert_no_temp_leftovers(copy);
}

fn run_ok(f: Ferry) -> serde_json::Value {
    let out = f.arg("--json").run();
    out.assert_code(0);
    out.json()
}

#[test]
fn tricky_tree_to_nfs3_and_back_exact_idle_and_synced() {
    let Some(server) = NfsServer::shared() else {
        return;
    };
    tricky_tree_round_trip(server, server.fresh("tricky"));
}

#[test]
fn tricky_tree_to_nfs41_and_back_exact_idle_and_synced() {
    let Some(server) = NfsServer::shared() else {
        return;
    };
    tricky_tree_round_trip(server, server.fresh41("tricky41"));
}

/// The tricky tree to the export directory behind `uri` (whose path on the server's disk is
/// `on_disk`), back, idle reruns both ways, then a sync with deletions.
fn tricky_tree_round_trip(server: &NfsServer, (on_disk, uri): (PathBuf, String)) {
    let work = scratch();
    let reference = work.path().join("reference");
    build_tricky_tree(&reference);
    let times = time_snapshot(&reference);

    let json = run_ok(Ferry::new("copy", &reference, &uri));
    assert_eq!(counter(&json, "files_failed"), 0, "{json}");
    assert_same(&reference, &times, &on_disk, "local -> nfs");
    // libnfs's client reads the same bytes through the server (over NFSv3).
    let rel = format!("{}/files/mib_plus_seven", on_disk.file_name().unwrap().to_string_lossy());
    let v3 = server.uri(&rel);
    let (path, query) = v3.split_once('?').unwrap();
    let out = Command::new("nfs-cat").arg(format!("{path}?{query}")).output().expect("nfs-cat (libnfs-utils) is installed");
    let rel = "files/mib_plus_seven";
    assert!(out.status.success(), "nfs-cat failed: {}", String::from_utf8_lossy(&out.stderr));
    assert!(out.stdout == fs::read(reference.join(rel)).unwrap(), "nfs-cat reads other bytes than the source's {rel}");

    let idle = run_ok(Ferry::new("copy", &reference, &uri));
    assert_eq!((counter(&idle, "files_transferred"), counter(&idle, "bytes_transferred")), (0, 0), "an idle rerun to nfs copied: {idle}");

    let back = work.path().join("back");
    run_ok(Ferry::new("copy", &uri, &back));
    // Symlinks carry the server's times now: compare against the export, not the reference.
    assert_same(&on_disk, &time_snapshot(&on_disk), &back, "nfs -> local");
    let idle = run_ok(Ferry::new("copy", &uri, &back));
    assert_eq!((counter(&idle, "files_transferred"), counter(&idle, "bytes_transferred")), (0, 0), "an idle rerun from nfs copied: {idle}");

    // Changes, an addition and deletions, then sync with point-in-time verification.
    write_file(&reference.join("top.txt"), b"changed at the source\n");
    set_times(&reference.join("top.txt"), (1_700_000_000, 1), (1_700_000_000, 987_654_321));
    fs::remove_file(reference.join("files/one")).unwrap();
    fs::remove_dir_all(reference.join("perms/sticky")).unwrap();
    write_file(&reference.join("added/new.txt"), b"added after the first copy\n");
    let times = time_snapshot(&reference);
    let sync = run_ok(Ferry::new("sync", &reference, &uri).args(["--verify", "point-in-time-consistent"]));
    assert_eq!(counter(&sync, "files_deleted"), 2, "a file, and a directory with the file it held: {sync}");
    assert!(counter(&sync, "files_verified") > 0, "{sync}");
    assert_same(&reference, &times, &on_disk, "after the sync");
    let clean = run_ok(Ferry::new("verify", &reference, &uri));
    assert_eq!(counter(&clean, "files_failed"), 0, "{clean}");
}

/// A tree of small files and a few large ones, enough to take a few seconds over NFS.
fn dataset(root: &Path) {
    for d in 0..20 {
        for f in 0..100 {
            write_file(&root.join(format!("d{d}/f{f}")), &random_bytes(1000 + f * 37));
        }
    }
    for i in 0..4 {
        write_file(&root.join(format!("large/{i}")), &random_bytes(24 << 20));
    }
}

fn wait_for_files(dir: &Path, at_least: usize, within: Duration) {
    let start = Instant::now();
    while walk_tolerant(dir).len() < at_least {
        assert!(start.elapsed() < within, "the copy did not get going within {within:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_copy_over_nfs3_survives_the_server_stopping_for_ten_seconds_and_a_kill_9_then_rerun() {
    let Some(server) = NfsServer::private(12149, 12148) else {
        return;
    };
    outage_and_kill(&server, NfsServer::fresh);
}

#[test]
fn a_copy_over_nfs41_survives_the_server_stopping_for_ten_seconds_and_a_kill_9_then_rerun() {
    let Some(server) = NfsServer::private(12249, 12248) else {
        return;
    };
    outage_and_kill(&server, NfsServer::fresh41);
}

/// A copy to a fresh directory of `server` (made by `fresh`) survives the server stopping for
/// 10 s mid-copy; another, killed with SIGKILL mid-copy, is finished exactly by a rerun.
fn outage_and_kill(server: &NfsServer, fresh: fn(&NfsServer, &str) -> (PathBuf, String)) {
    let work = scratch();
    let src = work.path().join("src");
    dataset(&src);
    let times = time_snapshot(&src);

    // The server goes away mid-copy for 10 s: the copy waits and completes by itself.
    let (on_disk, uri) = fresh(server, "outage");
    let mut child = Ferry::new("copy", &src, &uri).arg("--json").spawn_detached(&work.path().join("outage.err"));
    wait_for_files(&on_disk, 200, Duration::from_secs(60));
    server.stop();
    std::thread::sleep(Duration::from_secs(10));
    server.start();
    let status = child.wait().unwrap();
    let err = fs::read_to_string(work.path().join("outage.err")).unwrap_or_default();
    assert!(status.success(), "the copy failed after the server came back: {status}\n{err}");
    assert_same(&src, &times, &on_disk, "after the outage");

    // kill -9 mid-copy, then a rerun: exact, and no temporary file left.
    let (on_disk, uri) = fresh(server, "killed");
    let mut child = Ferry::new("copy", &src, &uri).spawn_detached(&work.path().join("killed.err"));
    wait_for_files(&on_disk, 300, Duration::from_secs(60));
    child.kill().unwrap();
    child.wait().unwrap();
    let rerun = run_ok(Ferry::new("copy", &src, &uri));
    assert!(counter(&rerun, "files_transferred") > 0, "the rerun finishes the job: {rerun}");
    assert_same(&src, &times, &on_disk, "after kill -9 and a rerun");
}

#[test]
fn unreachable_servers_and_unknown_exports_get_one_line_and_exit_2() {
    let Some(server) = NfsServer::shared() else {
        return;
    };
    let work = scratch();
    let src = work.path().join("src");
    write_file(&src.join("f"), b"x");
    let cases = [
        ("nfs://127.0.0.1/srv/x?nfsport=1&mountport=1".to_string(), "cannot reach the MOUNT service"),
        (format!("nfs://127.0.0.1/not/exported?nfsport={}&mountport={}", server.nfs_port, server.mount_port), "no such export"),
        ("nfs://127.0.0.1/e?bogus=1".to_string(), "unknown option 'bogus'"),
    ];
    for (uri, says) in cases {
        for out in [Ferry::new("copy", &src, &uri).run(), Ferry::new("copy", &uri, work.path().join("dst")).run()] {
            out.assert_code(2);
            let line = out.stderr.trim();
            assert!(line.contains(says) && line.lines().count() == 1, "one line naming the problem ({says})\n{}", out.describe());
        }
    }
    // Exports that refuse: root squash (when run as root, owners are kept, and the probe
    // file's owner cannot be set) and read-only.
    if unsafe { libc::geteuid() } == 0 {
        let out = Ferry::new("copy", &src, server.refusing_uri("squashed", "dst")).run();
        out.assert_code(2);
        assert!(out.stderr.contains("squashes root") && out.stderr.trim().lines().count() == 1, "{}", out.describe());
    }
    let out = Ferry::new("copy", &src, server.refusing_uri("readonly", "dst")).run();
    out.assert_code(2);
    assert!(out.stderr.contains("read-only") && out.stderr.trim().lines().count() == 1, "{}", out.describe());
    // An export whose client list leaves this host out: ganesha neither lists it to this host
    // nor tells it from a missing one, and the line says both, in either direction.
    for out in [
        Ferry::new("copy", &src, server.refusing_uri("denied", "dst")).run(),
        Ferry::new("copy", server.refusing_uri("denied", ""), work.path().join("dst3")).run(),
    ] {
        out.assert_code(2);
        let line = out.stderr.trim();
        assert!(line.contains("no such export for this host") && line.contains("client list") && line.lines().count() == 1, "{}", out.describe());
    }

    // The same over NFSv4.1: no MOUNT service, so the export is looked up in the server's
    // namespace.
    let cases = [
        ("nfs://127.0.0.1:1/export/x?vers=4.1".to_string(), "cannot reach the NFSv4.1 service"),
        (format!("nfs://127.0.0.1:{}/nonesuch/x?vers=4.1", server.nfs_port), "no such export /nonesuch"),
        (format!("nfs://127.0.0.1:{}/export/x?vers=4.1&mountport=5", server.nfs_port), "needs no MOUNT"),
    ];
    for (uri, says) in cases {
        for out in [Ferry::new("copy", &src, &uri).run(), Ferry::new("copy", &uri, work.path().join("dst")).run()] {
            out.assert_code(2);
            let line = out.stderr.trim();
            assert!(line.contains(says) && line.lines().count() == 1, "one line naming the problem ({says})\n{}", out.describe());
        }
    }
    let v41 = |export: &str| format!("nfs://127.0.0.1:{}/{export}/dst?vers=4.1", server.nfs_port);
    if unsafe { libc::geteuid() } == 0 {
        let out = Ferry::new("copy", &src, v41("squashed")).run();
        out.assert_code(2);
        assert!(out.stderr.contains("squashes root") && out.stderr.trim().lines().count() == 1, "{}", out.describe());
    }
    let out = Ferry::new("copy", &src, v41("readonly")).run();
    out.assert_code(2);
    assert!(out.stderr.contains("read-only") && out.stderr.trim().lines().count() == 1, "{}", out.describe());
    let out = Ferry::new("copy", &src, v41("denied")).run();
    out.assert_code(2);
    let line = out.stderr.trim();
    assert!(line.contains("no such export /denied for this host") && line.contains("client list") && line.lines().count() == 1, "{}", out.describe());

    // A file where the source directory should be.
    let (on_disk, uri) = server.fresh("notadir");
    fs::remove_dir(&on_disk).unwrap();
    write_file(&on_disk, b"a file");
    let out = Ferry::new("copy", &uri, work.path().join("dst2")).run();
    out.assert_code(2);
    assert!(out.stderr.contains("is not a directory"), "{}", out.describe());
}
