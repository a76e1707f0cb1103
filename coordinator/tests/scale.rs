//! Memory stays bounded by configuration, not by the size of the tree.

use std::os::unix::process::ExitStatusExt;
use std::process::Command;

use ferry_common::testing::make_empty_tree;

/// Runs a command and returns (exit code, peak RSS in KiB) from wait4's rusage.
fn run_with_rusage(cmd: &mut Command) -> (i32, i64) {
    let child = cmd.spawn().expect("spawn ferry");
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(r, pid, "wait4 failed: {}", std::io::Error::last_os_error());
    let code = std::process::ExitStatus::from_raw(status).code().unwrap_or(-1);
    std::mem::forget(child);
    (code, usage.ru_maxrss)
}

#[test]
fn a_million_file_tree_copies_within_300_mib_rss() {
    let tmp = tempfile::Builder::new().prefix("ferry-scale-").tempdir_in("/var/tmp").unwrap();
    let src = tmp.path().join("src");
    // 1,000 directories of 1,000 empty files, plus one directory of 20,000 so listing pages.
    make_empty_tree(&src, 1000, 1000);
    let wide = src.join("wide");
    std::fs::create_dir_all(&wide).unwrap();
    for f in 0..20_000 {
        std::fs::File::create(wide.join(format!("w{f:05}"))).unwrap();
    }
    let dst = tmp.path().join("dst");
    let report = tmp.path().join("report.jsonl");
    let (code, rss_kib) = run_with_rusage(
        Command::new(env!("CARGO_BIN_EXE_ferry"))
            .args(["copy", "--no-progress", "--json", "--report"])
            .arg(&report)
            .arg(&src)
            .arg(&dst)
            .stdout(std::process::Stdio::null()),
    );
    assert_eq!(code, 0, "copy of the million-file tree must succeed");
    let rss_mib = rss_kib / 1024;
    eprintln!("peak RSS for 1,020,000 files: {rss_mib} MiB");
    assert!(rss_mib <= 300, "peak RSS {rss_mib} MiB exceeds the 300 MiB bound");
    // Every entry is in the report exactly once (files + directories, root excluded).
    let lines = std::fs::read_to_string(&report).unwrap();
    let entries = lines.lines().filter(|l| l.contains("\"type\":\"entry\"")).count();
    assert_eq!(entries, 1_000_000 + 20_000 + 1000 + 10 + 1);
    assert_eq!(std::fs::read_dir(dst.join("wide")).unwrap().count(), 20_000);
}
