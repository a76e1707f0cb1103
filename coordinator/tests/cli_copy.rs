//! End-to-end behaviour of `ferry copy`, `ferry sync` and `ferry verify`, driving the real
//! binary in embedded mode against local trees.

mod support;

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::*;

/// A scratch directory with `src` and (not yet created) `dst` inside.
struct Pair {
    tmp: tempfile::TempDir,
    src: PathBuf,
    dst: PathBuf,
}

fn pair() -> Pair {
    let tmp = scratch();
    let src = tmp.path().join("src");
    let dst = tmp.path().join("dst");
    fs::create_dir(&src).unwrap();
    Pair { tmp, src, dst }
}

impl Pair {
    fn path(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }
}

/// A few plain files and directories, for tests that are about behaviour rather than about
/// awkward entries.
fn build_small_tree(root: &Path) {
    write_file(&root.join("a.txt"), b"alpha\n");
    write_file(&root.join("sub/b.bin"), &random_bytes(70_000));
    write_file(&root.join("sub/deeper/c.txt"), b"gamma\n");
    write_file(&root.join("big.bin"), &random_bytes((3 * MIB + 11) as usize));
    fs::create_dir_all(root.join("empty")).unwrap();
    symlink("a.txt", &root.join("link"));
    stamp_times(root);
}

/// Regular files under `root`: (count, total bytes).
fn regular_files(root: &Path) -> (u64, u64) {
    let mut n = 0;
    let mut bytes = 0;
    for rel in walk(root) {
        let m = fs::symlink_metadata(root.join(rel)).unwrap();
        if m.is_file() {
            n += 1;
            bytes += m.len();
        }
    }
    (n, bytes)
}

fn exists(p: &Path) -> bool {
    fs::symlink_metadata(p).is_ok()
}

fn failure_for(json: &Value, rel: &str) -> Option<(String, String)> {
    failures(json).into_iter().find(|(p, _)| p == rel)
}

// ---------------------------------------------------------------------------------------------

/// Guards the guards: a `cp -a` copy of the tricky tree passes the same checks that ferry's
/// copies must pass, so a failure elsewhere is ferry's, not the helpers'.
#[test]
fn helpers_accept_an_archive_copy_of_the_tricky_tree() {
    let p = pair();
    build_tricky_tree(&p.src);
    let before = time_snapshot(&p.src);
    let st = std::process::Command::new("cp").arg("-a").arg("--sparse=always").arg(&p.src).arg(&p.dst).status().expect("run cp");
    assert!(st.success(), "cp -a failed: {st}");
    assert_exact_copy(&p.src, &p.dst, &before, true);
    assert!(allocated_bytes(&p.dst.join(SPARSE_FILE)) < 32 * MIB);

    // And the helpers do see a difference when there is one.
    set_times(&p.dst.join("files/one"), (1, 1), (2, 2));
    assert!(!time_differences(&before, &p.dst, false).is_empty());
    change_content_keep_size_and_times(&p.dst.join(MIB_PLUS_SEVEN));
    let diffs = compare_trees(&p.src, &p.dst);
    assert!(diffs.iter().any(|l| l.ends_with(MIB_PLUS_SEVEN)), "rsync missed a content change: {diffs:?}");
    assert_eq!(crc32c(b"123456789"), 0xe306_9283, "CRC32C check value");
}

#[test]
fn tricky_tree_copies_exactly() {
    let p = pair();
    build_tricky_tree(&p.src);
    let before = time_snapshot(&p.src);

    let json = ferry_ok("copy", &p.src, &p.dst, &[]);
    assert_summary_shape(&json);
    assert_eq!(counter(&json, "files_failed"), 0, "{json}");
    assert!(failures(&json).is_empty(), "{json}");
    assert!(counter(&json, "files_transferred") > 0, "{json}");
    assert!(counter(&json, "bytes_transferred") >= MIB + 7, "{json}");
    assert!(counter(&json, "files_prepared") >= counter(&json, "files_transferred"), "{json}");

    // Holes stay holes.
    let sparse = p.dst.join(SPARSE_FILE);
    assert_eq!(fs::metadata(&sparse).unwrap().len(), SPARSE_SIZE);
    let alloc = allocated_bytes(&sparse);
    assert!(alloc < 32 * MIB, "the sparse file was filled in: {alloc} bytes allocated for {SPARSE_SIZE}");

    assert_exact_copy(&p.src, &p.dst, &before, true);
    assert_eq!(get_xattr(&p.dst.join("xattr/dir"), "user.test").as_deref(), Some(&b"value"[..]));

    // The source is only read.
    let touched = time_differences(&before, &p.src, false);
    assert!(touched.is_empty(), "copy modified the source:\n{}", touched.join("\n"));
}

/// Directory times are set while the copy runs now, by the shard that follows the directory's
/// last write (docs/store-layout.md, "Settle"). A directory listed over several scan pages
/// (4,096 entries each) settles after its last page's writes, its subdirectories are made by
/// the page that lists them, and in sync mode its deletions come first: every time must still
/// be the source's.
#[test]
fn a_directory_listed_over_several_pages_ends_with_the_source_times() {
    let p = pair();
    let big = p.src.join("big");
    fs::create_dir_all(big.join("sub/deeper")).unwrap();
    for i in 0..9_000 {
        fs::File::create(big.join(format!("f{i:05}"))).unwrap();
    }
    write_file(&big.join("sub/deeper/leaf"), b"leaf\n");
    write_file(&p.src.join("top"), b"top\n");
    for (rel, t) in [("big/sub/deeper", 1_000_000_300), ("big/sub", 1_000_000_200), ("big", 1_000_000_100), ("", 1_000_000_000)] {
        set_times(&p.src.join(rel), (t, 0), (t, 7));
    }
    let before = time_snapshot(&p.src);
    let json = ferry_ok("copy", &p.src, &p.dst, &[]);
    assert_eq!(counter(&json, "files_failed"), 0, "{json}");
    let diffs = time_differences(&before, &p.dst, false);
    assert!(diffs.is_empty(), "directory times differ:\n{}", diffs.join("\n"));

    // Sync: deletions in the big directory (an extra file at the destination) come before its
    // times are set.
    write_file(&p.dst.join("big/extra"), b"not in the source\n");
    fs::remove_file(p.src.join("big/f00003")).unwrap();
    set_times(&p.src.join("big"), (1_000_000_150, 0), (1_000_000_150, 9));
    let before = time_snapshot(&p.src);
    ferry_ok("sync", &p.src, &p.dst, &[]);
    assert!(!exists(&p.dst.join("big/extra")) && !exists(&p.dst.join("big/f00003")));
    let diffs = time_differences(&before, &p.dst, false);
    assert!(diffs.is_empty(), "directory times differ after sync:\n{}", diffs.join("\n"));
}

#[test]
fn second_run_copies_nothing() {
    let p = pair();
    build_tricky_tree(&p.src);
    let before = time_snapshot(&p.src);
    ferry_ok("copy", &p.src, &p.dst, &[]);
    let first = fingerprint(&p.dst);

    let json = ferry_ok("copy", &p.src, &p.dst, &[]);
    assert_eq!(counter(&json, "files_transferred"), 0, "{json}");
    assert_eq!(counter(&json, "bytes_transferred"), 0, "{json}");
    assert_eq!(counter(&json, "files_failed"), 0, "{json}");
    assert!(counter(&json, "files_skipped") > 0, "{json}");

    // Nothing was rewritten (same inodes, same everything).
    let second = fingerprint(&p.dst);
    let changed: Vec<_> =
        first.iter().filter(|(k, v)| second.get(*k) != Some(v)).map(|(k, v)| format!("{:?}: {v} -> {:?}", escape_rel(k), second.get(k))).collect();
    assert!(changed.is_empty(), "the second run changed the destination:\n{}", changed.join("\n"));
    assert_exact_copy(&p.src, &p.dst, &before, true);
}

#[test]
fn sync_leaves_exact_mirror() {
    let p = pair();
    build_tricky_tree(&p.src);
    ferry_ok("copy", &p.src, &p.dst, &[]);

    // Source: one file rewritten with the same size but new bytes and a new mtime; files
    // added; files, one name of a hard-link set and whole directories deleted.
    let changed = p.src.join(MIB_PLUS_SEVEN);
    write_file(&changed, &random_bytes((MIB + 7) as usize));
    set_times(&changed, (1_650_000_000, 1), (1_650_000_000, 555_555_555));
    write_file(&p.src.join("added/new.txt"), b"new\n");
    write_file(&p.src.join("files/added.bin"), &random_bytes(50_000));
    fs::remove_file(p.src.join("files/one")).unwrap();
    fs::remove_file(p.src.join("hard/b")).unwrap();
    fs::remove_dir_all(p.src.join("deep")).unwrap();
    fs::remove_dir_all(p.src.join("perms/ro_dir")).unwrap();

    // Destination: extraneous entries of several kinds, one inside a read-only directory.
    write_file(&p.dst.join("extraneous.txt"), b"not in source\n");
    write_file(&p.dst.join("extra_dir/a/b/c.txt"), b"not in source\n");
    chmod(&p.dst.join("extra_dir/a"), 0o555);
    symlink("nowhere", &p.dst.join("links/extra_link"));
    mkfifo(&p.dst.join("specials/extra_fifo"));
    write_file(&p.dst.join("names/extra"), b"not in source\n");

    let before = time_snapshot(&p.src);
    let json = ferry_ok("sync", &p.src, &p.dst, &[]);
    assert_eq!(counter(&json, "files_failed"), 0, "{json}");
    assert!(counter(&json, "files_deleted") > 0, "{json}");
    assert!(counter(&json, "files_transferred") > 0, "{json}");
    // Atimes of unchanged files reflect ferry's earlier reads of the source; compare mtimes.
    assert_exact_copy(&p.src, &p.dst, &before, false);
}

#[test]
fn sync_replaces_entries_whose_type_changed() {
    let p = pair();
    let s = |x: &str| p.src.join(x);
    write_file(&s("a"), b"file that becomes a dir\n");
    write_file(&s("b/x"), b"dir that becomes a file\n");
    write_file(&s("b/y/z"), b"deeper\n");
    symlink("a", &s("c"));
    write_file(&s("d"), b"file that becomes a symlink\n");
    mkfifo(&s("e"));
    stamp_times(&p.src);
    ferry_ok("copy", &p.src, &p.dst, &[]);

    fs::remove_file(s("a")).unwrap();
    write_file(&s("a/child"), b"now a dir\n");
    fs::remove_dir_all(s("b")).unwrap();
    write_file(&s("b"), b"now a file\n");
    fs::remove_file(s("c")).unwrap();
    write_file(&s("c"), b"now a regular file\n");
    fs::remove_file(s("d")).unwrap();
    symlink("b", &s("d"));
    fs::remove_file(s("e")).unwrap();
    write_file(&s("e/inside"), b"fifo became a dir\n");

    let before = time_snapshot(&p.src);
    let json = ferry_ok("sync", &p.src, &p.dst, &[]);
    assert_eq!(counter(&json, "files_failed"), 0, "{json}");
    assert_exact_copy(&p.src, &p.dst, &before, false);
}

#[test]
fn copy_keeps_extraneous_destination_files() {
    let p = pair();
    build_small_tree(&p.src);
    write_file(&p.dst.join("extra.txt"), b"mine\n");
    write_file(&p.dst.join("sub/extra"), b"mine too\n");
    let json = ferry_ok("copy", &p.src, &p.dst, &[]);
    assert_eq!(counter(&json, "files_deleted"), 0, "{json}");
    assert_eq!(fs::read(p.dst.join("extra.txt")).unwrap(), b"mine\n");
    assert_eq!(fs::read(p.dst.join("sub/extra")).unwrap(), b"mine too\n");
    for rel in walk(&p.src) {
        let m = fs::symlink_metadata(p.src.join(&rel)).unwrap();
        if m.is_file() {
            assert!(same_content(&p.src.join(&rel), &p.dst.join(&rel)), "{} not copied", rel.display());
        }
    }
}

#[test]
fn checksum_mode_detects_same_size_same_mtime_change() {
    let p = pair();
    build_small_tree(&p.src);
    ferry_ok("copy", &p.src, &p.dst, &[]);
    let rel = "sub/b.bin";
    let old = fs::read(p.dst.join(rel)).unwrap();
    change_content_keep_size_and_times(&p.src.join(rel));

    // Size and mtime agree, so the default comparison skips the file.
    let json = ferry_ok("copy", &p.src, &p.dst, &[]);
    assert_eq!(counter(&json, "files_transferred"), 0, "{json}");
    assert_eq!(fs::read(p.dst.join(rel)).unwrap(), old, "the default mode must compare size and mtime only");

    // CRC32C comparison sees it, and only it.
    let before = time_snapshot(&p.src);
    let report = p.path("report.jsonl");
    let out = Ferry::new("copy", &p.src, &p.dst).args(["--checksum", "--json", "--report"]).arg(&report).run();
    out.assert_code(0);
    let json = out.json();
    assert_eq!(counter(&json, "bytes_transferred"), 70_000, "{json}");
    let rep = read_report(&report);
    let files_sent: Vec<&str> = rep
        .entries
        .iter()
        .filter(|e| e["kind"] == "file" && matches!(e["status"].as_str(), Some("transferred" | "verified")))
        .map(|e| e["path"].as_str().unwrap())
        .collect();
    assert_eq!(files_sent, [rel], "files transferred by --checksum");
    assert!(same_content(&p.src.join(rel), &p.dst.join(rel)), "--checksum did not transfer {rel}");
    assert_exact_copy(&p.src, &p.dst, &before, false);
}

#[test]
fn all_mode_recopies_everything() {
    let p = pair();
    build_small_tree(&p.src);
    ferry_ok("copy", &p.src, &p.dst, &[]);
    let (files, bytes) = regular_files(&p.src);
    let json = ferry_ok("copy", &p.src, &p.dst, &["--all"]);
    assert!(counter(&json, "files_transferred") >= files, "{files} files in the source; {json}");
    assert!(counter(&json, "bytes_transferred") >= bytes, "{bytes} bytes in the source; {json}");
    let before = time_snapshot(&p.src);
    assert_exact_copy(&p.src, &p.dst, &before, false);
}

/// Checks that every entry below `src` appears exactly once in the report, with a status from
/// `allowed` and the right kind; no entry names a path outside the source (the root itself may
/// appear once). Returns the entries by source-relative path.
fn assert_report_covers_tree<'a>(rep: &'a Report, src: &Path, allowed: &[&str]) -> BTreeMap<PathBuf, &'a Value> {
    let (mut problems, by_path, _) = report_problems(rep, src, allowed);
    if problems.len() > 60 {
        problems.truncate(60);
        problems.push("...".into());
    }
    assert!(problems.is_empty(), "report does not account for the tree:\n{}", problems.join("\n"));
    by_path
}

#[test]
fn report_accounts_every_entry_once() {
    let p = pair();
    build_tricky_tree(&p.src);
    let report = p.path("report.jsonl");
    let out = Ferry::new("copy", &p.src, &p.dst).arg("--json").arg("--report").arg(&report).run();
    out.assert_code(0);
    let json = out.json();
    let rep = read_report(&report);

    let entries = assert_report_covers_tree(&rep, &p.src, &["transferred", "verified", "skipped"]);
    // Regular files carry their size and the CRC32C of their content.
    let mut checked = 0;
    for (rel, e) in &entries {
        let src = p.src.join(rel);
        let m = fs::symlink_metadata(&src).unwrap();
        if e["kind"] != "file" || !matches!(e["status"].as_str(), Some("transferred" | "verified")) {
            continue;
        }
        assert_eq!(e["size"].as_u64(), Some(m.len()), "size of {}: {e}", escape_rel(rel));
        if m.len() <= 2 * MIB {
            let want = format!("{:08x}", crc32c(&read_noatime(&src)));
            assert_eq!(e["crc32c"].as_str(), Some(want.as_str()), "crc32c of {}: {e}", escape_rel(rel));
            checked += 1;
        }
    }
    assert!(checked >= 10, "only {checked} file entries carried a checkable size and CRC");

    // The summary line is the --json object.
    assert_summary_shape(&rep.summary);
    assert_eq!(rep.summary["status"], "SUCCESS");
    assert_eq!(rep.summary["execution"], json["execution"]);
    assert_eq!(rep.summary["counters"], json["counters"], "report summary and --json disagree");
    assert_eq!(counter(&rep.summary, "files_failed"), 0);

    // A second run accounts for everything again, and skips every file.
    let report2 = p.path("report2.jsonl");
    Ferry::new("copy", &p.src, &p.dst).arg("--report").arg(&report2).run().assert_code(0);
    let rep2 = read_report(&report2);
    let entries2 = assert_report_covers_tree(&rep2, &p.src, &["transferred", "verified", "skipped"]);
    for (rel, e) in entries2 {
        if matches!(e["kind"].as_str(), Some("file" | "hardlink")) {
            assert_eq!(e["status"], "skipped", "unchanged {} was not skipped: {e}", escape_rel(&rel));
        }
    }
}

#[test]
fn no_specials_skips_and_reports() {
    let p = pair();
    build_tricky_tree(&p.src);
    let report = p.path("report.jsonl");
    let out = Ferry::new("copy", &p.src, &p.dst).args(["--no-specials", "--json", "--report"]).arg(&report).run();
    out.assert_code(0);
    let json = out.json();
    assert!(counter(&json, "files_skipped") >= 3, "{json}");
    let rep = read_report(&report);
    for (rel, kind) in SPECIALS {
        assert!(!exists(&p.dst.join(rel)), "{rel} was created despite --no-specials");
        let e = rep.entry(rel);
        assert_eq!(e["status"], "skipped", "{e}");
        assert_eq!(e["kind"], kind, "{e}");
    }
    // Everything else is copied exactly.
    let others: Vec<_> = compare_trees(&p.src, &p.dst).into_iter().filter(|l| !SPECIALS.iter().any(|(rel, _)| l.ends_with(rel))).collect();
    assert!(others.is_empty(), "differences besides the special files:\n{}", others.join("\n"));
    assert_no_temp_leftovers(&p.dst);
}

fn build_filter_tree(root: &Path) {
    for rel in [
        "keep.txt",
        "a.tmp",
        "sub/b.tmp",
        "sub/keep.txt",
        "skipdir/x.txt",
        "skipdir/deeper/y.txt",
        "skipdirx/keep.txt",
        "sub/skipdir/keep.txt",
        ".snapshot/s1",
        "sub/.snapshot/s2",
        "sub/snapshot/keep.txt",
        "sub/.snapshotx/keep.txt",
        "inc/a.txt",
        "inc/sub/b.txt",
        "incx/d.txt",
    ] {
        write_file(&root.join(rel), format!("content of {rel}\n").as_bytes());
    }
}

fn assert_filtered(src: &Path, dst: &Path, present: &[&str], absent: &[&str]) {
    for rel in present {
        assert!(same_content(&src.join(rel), &dst.join(rel)), "{rel} should have been copied");
    }
    for rel in absent {
        assert!(!exists(&dst.join(rel)), "{rel} should have been filtered out");
    }
}

#[test]
fn exclude_filters() {
    let p = pair();
    build_filter_tree(&p.src);

    let not_tmp_or_skipdir = (
        &["keep.txt", "sub/keep.txt", "skipdirx/keep.txt", "sub/skipdir/keep.txt", ".snapshot/s1", "sub/.snapshot/s2", "inc/a.txt"][..],
        &["a.tmp", "sub/b.tmp", "skipdir"][..],
    );
    let one = p.path("one");
    ferry_ok("copy", &p.src, &one, &["--exclude", "*.tmp|/skipdir"]);
    assert_filtered(&p.src, &one, not_tmp_or_skipdir.0, not_tmp_or_skipdir.1);

    // Repeating the flag is the same as joining with '|'.
    let two = p.path("two");
    ferry_ok("copy", &p.src, &two, &["--exclude", "*.tmp", "--exclude", "/skipdir"]);
    assert_filtered(&p.src, &two, not_tmp_or_skipdir.0, not_tmp_or_skipdir.1);

    let three = p.path("three");
    ferry_ok("copy", &p.src, &three, &["--exclude", "*/.snapshot"]);
    assert_filtered(
        &p.src,
        &three,
        &["sub/snapshot/keep.txt", "sub/.snapshotx/keep.txt", "a.tmp", "skipdir/x.txt", "keep.txt"],
        &[".snapshot", "sub/.snapshot"],
    );
}

#[test]
fn include_filter_limits_transfer_to_matching_paths() {
    let p = pair();
    build_filter_tree(&p.src);
    ferry_ok("copy", &p.src, &p.dst, &["--include", "/inc|/inc/*"]);
    assert_filtered(&p.src, &p.dst, &["inc/a.txt", "inc/sub/b.txt"], &["incx", "keep.txt", "sub", "skipdir", "a.tmp"]);
}

#[test]
fn dry_run_writes_nothing() {
    let p = pair();
    build_small_tree(&p.src);

    // Into a destination that does not exist yet.
    for sub in ["copy", "sync"] {
        ferry_ok(sub, &p.src, &p.dst, &["--dry-run"]);
        assert!(!exists(&p.dst), "{sub} --dry-run created the destination");
    }

    // Into a stale destination with extraneous files.
    ferry_ok("copy", &p.src, &p.dst, &[]);
    write_file(&p.src.join("sub/b.bin"), &random_bytes(1234));
    write_file(&p.src.join("new.txt"), b"new\n");
    fs::remove_file(p.src.join("a.txt")).unwrap();
    write_file(&p.dst.join("extraneous.txt"), b"extra\n");
    let fp = fingerprint(&p.dst);
    for (sub, extra) in [("sync", &[][..]), ("copy", &["--all"][..]), ("copy", &["--checksum"][..])] {
        let mut args = vec!["--dry-run"];
        args.extend_from_slice(extra);
        let json = ferry_ok(sub, &p.src, &p.dst, &args);
        assert_eq!(counter(&json, "files_failed"), 0, "{json}");
        assert_eq!(fingerprint(&p.dst), fp, "{sub} {args:?} changed the destination");
    }
}

#[test]
fn verify_reports_differences() {
    let p = pair();
    build_small_tree(&p.src);
    ferry_ok("copy", &p.src, &p.dst, &[]);

    let json = ferry_ok("verify", &p.src, &p.dst, &[]);
    assert_summary_shape(&json);
    assert_eq!(counter(&json, "files_failed"), 0, "{json}");
    assert!(counter(&json, "files_verified") > 0, "{json}");

    // A destination file with other content (and size).
    let mut f = fs::OpenOptions::new().append(true).open(p.dst.join("sub/b.bin")).unwrap();
    f.write_all(b"tampered").unwrap();
    drop(f);
    let out = Ferry::new("verify", &p.src, &p.dst).arg("--json").run();
    out.assert_code(1);
    let json = out.json();
    assert_eq!(json["status"], "ERROR", "{}", out.describe());
    assert!(failure_for(&json, "sub/b.bin").is_some(), "failures do not name sub/b.bin\n{}", out.describe());
    let plain = Ferry::new("verify", &p.src, &p.dst).run();
    plain.assert_code(1);
    assert!(plain.stdout.contains("sub/b.bin") || plain.stderr.contains("sub/b.bin"), "verify does not name the differing file\n{}", plain.describe());

    // A destination file that is missing.
    fs::remove_file(p.dst.join("sub/deeper/c.txt")).unwrap();
    let out = Ferry::new("verify", &p.src, &p.dst).arg("--json").run();
    out.assert_code(1);
    assert!(failure_for(&out.json(), "sub/deeper/c.txt").is_some(), "missing file not named\n{}", out.describe());
}

#[test]
fn verify_detects_same_size_same_mtime_change() {
    let p = pair();
    build_small_tree(&p.src);
    ferry_ok("copy", &p.src, &p.dst, &[]);
    change_content_keep_size_and_times(&p.dst.join("sub/b.bin"));
    let out = Ferry::new("verify", &p.src, &p.dst).arg("--json").run();
    out.assert_code(1);
    assert!(failure_for(&out.json(), "sub/b.bin").is_some(), "verify must compare content\n{}", out.describe());
}

#[test]
fn point_in_time_verify_passes_on_clean_copy() {
    let p = pair();
    build_tricky_tree(&p.src);
    let before = time_snapshot(&p.src);
    let json = ferry_ok("copy", &p.src, &p.dst, &["--verify", "point-in-time-consistent"]);
    assert_eq!(counter(&json, "files_failed"), 0, "{json}");
    assert!(counter(&json, "files_verified") > 0, "{json}");
    assert_exact_copy(&p.src, &p.dst, &before, true);
}

/// Runs a copy with `FERRY_TEST_CORRUPT=victim` and checks that verification catches it.
fn check_corruption_is_caught(p: &Pair, victim: &str) {
    let report = p.path("report.jsonl");
    let out = Ferry::new("copy", &p.src, &p.dst).env("FERRY_TEST_CORRUPT", victim).arg("--json").arg("--report").arg(&report).run();
    out.assert_code(1);
    let json = out.json();
    assert_eq!(json["status"], "ERROR", "{}", out.describe());
    assert!(counter(&json, "files_failed") >= 1, "{}", out.describe());
    let (_, reason) = failure_for(&json, victim).unwrap_or_else(|| panic!("{victim} not among failures\n{}", out.describe()));
    assert!(reason.to_uppercase().contains("CRC"), "reason should mention the CRC: {reason:?}");

    let e = read_report(&report).entry(victim).clone();
    assert_eq!(e["status"], "failed", "{e}");
    assert!(e["reason"].as_str().unwrap_or("").to_uppercase().contains("CRC"), "{e}");

    // Never the corrupt bytes under the final name.
    let dst = p.dst.join(victim);
    assert!(!exists(&dst) || same_content(&p.src.join(victim), &dst), "corrupt content was left under the final name {}", dst.display());
    // Everything else arrived intact.
    for rel in walk(&p.src) {
        let s = p.src.join(&rel);
        if rel != Path::new(victim) && fs::symlink_metadata(&s).unwrap().is_file() {
            assert!(same_content(&s, &p.dst.join(&rel)), "{} was not copied", rel.display());
        }
    }
    assert_no_temp_leftovers(&p.dst);

    // A clean rerun repairs the destination.
    ferry_ok("copy", &p.src, &p.dst, &[]);
    let diffs = compare_trees(&p.src, &p.dst);
    assert!(diffs.is_empty(), "rerun left differences:\n{}", diffs.join("\n"));
}

#[test]
fn corruption_is_caught() {
    let p = pair();
    write_file(&p.src.join("victim.bin"), &random_bytes(256 * 1024));
    write_file(&p.src.join("ok.bin"), &random_bytes(100_000));
    write_file(&p.src.join("sub/ok.txt"), b"fine\n");
    check_corruption_is_caught(&p, "victim.bin");
}

#[test]
fn corruption_of_large_file_is_caught() {
    let p = pair();
    write_file(&p.src.join("big/victim.bin"), &random_bytes((48 * MIB + 3) as usize));
    write_file(&p.src.join("ok.bin"), &random_bytes(100_000));
    check_corruption_is_caught(&p, "big/victim.bin");
}

#[test]
fn source_changed_is_reported() {
    let p = pair();
    let victim = "grow.bin";
    let size = 8 * MIB;
    write_file(&p.src.join(victim), &random_bytes(size as usize));
    write_file(&p.src.join("a.txt"), b"alpha\n");
    write_file(&p.src.join("sub/b.txt"), b"beta\n");
    let report = p.path("report.jsonl");
    let out = Ferry::new("copy", &p.src, &p.dst).env("FERRY_TEST_SOURCE_CHANGE", victim).arg("--json").arg("--report").arg(&report).run();
    assert!(fs::metadata(p.src.join(victim)).unwrap().len() > size, "the FERRY_TEST_SOURCE_CHANGE hook did not append to the source\n{}", out.describe());
    out.assert_code(1);
    let json = out.json();
    assert_eq!(json["status"], "ERROR", "{}", out.describe());
    let (_, reason) = failure_for(&json, victim).unwrap_or_else(|| panic!("{victim} not among failures\n{}", out.describe()));
    assert!(reason.to_lowercase().contains("source changed"), "reason: {reason:?}");
    let e = read_report(&report).entry(victim).clone();
    assert_eq!(e["status"], "failed", "{e}");
    assert!(e["reason"].as_str().unwrap_or("").to_lowercase().contains("source changed"), "{e}");
    for rel in ["a.txt", "sub/b.txt"] {
        assert!(same_content(&p.src.join(rel), &p.dst.join(rel)), "{rel} was not copied");
    }
    assert_no_temp_leftovers(&p.dst);
}

#[test]
fn crash_midway_then_rerun_completes() {
    let p = pair();
    // ~20,000 small files (1..32 KiB) cut from a random pool, plus three 64 MiB files.
    let pool = random_bytes(4 * MIB as usize);
    let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
    for i in 0..20_000u64 {
        seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        let size = (KIB + (seed >> 33) % (31 * KIB + 1)) as usize;
        let off = ((seed >> 7) as usize) % (pool.len() - size);
        let rel = format!("s{:02}/d{:02}/f{i:05}.bin", i % 20, (i / 20) % 10);
        write_file(&p.src.join(rel), &pool[off..off + size]);
    }
    for k in 0..3 {
        write_file(&p.src.join(format!("big/huge{k}.bin")), &random_bytes((64 * MIB) as usize));
    }

    let stderr_log = p.path("killed-run.stderr");
    let mut child = Ferry::new("copy", &p.src, &p.dst).args(["--movers", "4"]).spawn_detached(&stderr_log);
    let start = Instant::now();
    let mut finished_early = None;
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            finished_early = Some(st);
            break;
        }
        // Kill once some files are in place and others are still in flight.
        let (mut finals, mut temps) = (0, 0);
        for r in walk_tolerant(&p.dst) {
            if fs::symlink_metadata(p.dst.join(&r)).map(|m| m.is_file()).unwrap_or(false) {
                if is_temp_name(&r) {
                    temps += 1;
                } else {
                    finals += 1;
                }
            }
        }
        if (finals >= 100 && temps > 0) || start.elapsed() > Duration::from_secs(30) {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    match finished_early {
        None => {
            // The whole process group, in case ferry runs helpers of its own.
            let rc = unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
            assert_eq!(rc, 0, "kill: {}", std::io::Error::last_os_error());
            child.wait().unwrap();
        }
        Some(st) => eprintln!("note: ferry finished ({st}) before it could be killed; nothing was interrupted"),
    }

    // No partial or foreign file under a final name: everything not temporary matches its source.
    let mut bad = Vec::new();
    let (mut temps, mut finals) = (0, 0);
    if exists(&p.dst) {
        for rel in walk(&p.dst) {
            let d = fs::symlink_metadata(p.dst.join(&rel)).unwrap();
            if is_temp_name(&rel) {
                temps += 1;
                continue;
            }
            match fs::symlink_metadata(p.src.join(&rel)) {
                Err(_) => bad.push(format!("{}: not in the source", rel.display())),
                Ok(s) if kind_of(&s) != kind_of(&d) => {
                    bad.push(format!("{}: a {} in the destination, a {} in the source", rel.display(), kind_of(&d), kind_of(&s)))
                }
                Ok(s) if s.is_file() => {
                    finals += 1;
                    if !same_content(&p.src.join(&rel), &p.dst.join(&rel)) {
                        bad.push(format!("{}: {} bytes, differs from the source ({} bytes)", rel.display(), d.len(), s.len()));
                    }
                }
                Ok(_) => {}
            }
        }
    }
    eprintln!("after the kill: {finals} files under final names, {temps} temporary files");
    bad.truncate(50);
    assert!(
        bad.is_empty(),
        "partial or wrong files under final names after SIGKILL:\n{}\nstderr of the killed run:\n{}",
        bad.join("\n"),
        fs::read_to_string(&stderr_log).unwrap_or_default()
    );

    // A rerun finishes the job and cleans up.
    let before = time_snapshot(&p.src);
    let json = ferry_ok("copy", &p.src, &p.dst, &["--movers", "4"]);
    assert_eq!(counter(&json, "files_failed"), 0, "{json}");
    assert_exact_copy(&p.src, &p.dst, &before, false);
}

#[test]
fn json_log_format_writes_only_json_lines() {
    let p = pair();
    build_small_tree(&p.src);
    let out = Ferry::new("copy", &p.src, &p.dst).args(["--log-format", "json"]).run();
    out.assert_code(0);
    for line in out.stderr.lines().filter(|l| !l.trim().is_empty()) {
        let v: Result<Value, _> = serde_json::from_str(line);
        assert!(matches!(v, Ok(Value::Object(_))), "not a JSON log line: {line:?}\n{}", out.describe());
    }
    let before = time_snapshot(&p.src);
    assert_exact_copy(&p.src, &p.dst, &before, false);
}

/// A release build carries no test hooks: `FERRY_TEST_*` variables left in a user's
/// environment change nothing. `FERRY_RELEASE_BIN` names a `ferry` built without the
/// `fault-injection` feature (.ci/run builds one); the test binary, built with it, shows that
/// the same environment does corrupt a copy where the hooks exist.
#[test]
fn a_release_build_ignores_the_fault_injection_variables() {
    let Some(release) = std::env::var_os("FERRY_RELEASE_BIN") else {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "FERRY_RELEASE_BIN must name a ferry built without the fault-injection feature (.ci/run builds one)"
        );
        eprintln!("skipping: FERRY_RELEASE_BIN is not set");
        return;
    };
    let hooks = [("FERRY_TEST_CORRUPT", "sub/b.bin"), ("FERRY_TEST_SOURCE_CHANGE", "a.txt"), ("FERRY_TEST_CORRUPT_CHUNK", "big.bin")];
    let p = pair();
    build_small_tree(&p.src);
    let before = time_snapshot(&p.src);
    let mut cmd = std::process::Command::new(&release);
    cmd.arg("copy").arg(&p.src).arg(&p.dst).args(["--no-progress", "--json"]).envs(hooks);
    let out = cmd.output().expect("run the release binary");
    assert!(out.status.success(), "the release build failed: {}", String::from_utf8_lossy(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(counter(&json, "files_failed"), 0, "{json}");
    assert_exact_copy(&p.src, &p.dst, &before, false);

    // The hooks are real where they are compiled in: the same environment fails a copy.
    let hooked = p.path("hooked");
    let mut f = Ferry::new("copy", &p.src, &hooked).arg("--json");
    for (k, v) in hooks {
        f = f.env(k, v);
    }
    assert_eq!(f.run().code, Some(1), "the test build's hooks corrupt sub/b.bin, and verification catches it");
}

/// POSIX ACLs (access and default) and, as root, `trusted.*` attributes survive a local copy,
/// checked with `getfacl` and `getfattr`; an idle rerun leaves them alone.
#[test]
fn posix_acls_and_trusted_xattrs_survive_a_local_copy() {
    use std::process::Command;
    let run = |cmd: &str, args: &[&str]| {
        let out = Command::new(cmd).args(args).output().unwrap_or_else(|e| panic!("{cmd} is installed (acl, attr): {e}"));
        assert!(out.status.success(), "{cmd} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let t = scratch();
    let src = t.path().join("src");
    write_file(&src.join("shared/file"), b"acl'd");
    write_file(&src.join("plain"), b"no acl");
    let (file, dir) = (src.join("shared/file"), src.join("shared"));
    run("setfacl", &["-m", "u:1234:rw,g:2345:r", file.to_str().unwrap()]);
    run("setfacl", &["-d", "-m", "u:1234:rwx,o::-", dir.to_str().unwrap()]);
    let root = unsafe { libc::geteuid() } == 0;
    if root {
        run("setfattr", &["-n", "trusted.ferry", "-v", "0x00ff10", file.to_str().unwrap()]);
    }
    let dst = t.path().join("dst");
    let first = ferry_ok("copy", &src, &dst, &[]);
    assert_eq!(counter(&first, "files_failed"), 0, "{first}");
    // Listings are compared with the tree's own root stripped from the names.
    let acls = |root: &Path| run("getfacl", &["-R", "-p", "-n", root.to_str().unwrap()]).replace(root.to_str().unwrap(), "ROOT");
    // getfattr drops the leading '/' of the names it prints.
    let attrs = |root: &Path| {
        run("getfattr", &["-R", "-h", "-d", "-m", "-", "-e", "hex", root.to_str().unwrap()]).replace(root.to_str().unwrap().trim_start_matches('/'), "ROOT")
    };
    assert_eq!(acls(&dst), acls(&src), "getfacl sees other ACLs at the destination");
    assert!(acls(&dst).contains("user:1234:rw-") && acls(&dst).contains("default:user:1234:rwx"), "{}", acls(&dst));
    assert_eq!(attrs(&dst), attrs(&src), "getfattr sees other attributes at the destination");
    if root {
        assert!(attrs(&dst).contains("trusted.ferry=0x00ff10"), "{}", attrs(&dst));
    }
    let idle = ferry_ok("copy", &src, &dst, &[]);
    assert_eq!(counter(&idle, "files_transferred"), 0, "an idle rerun copied: {idle}");
    assert_eq!(acls(&dst), acls(&src));
}

/// A small tmpfs mounted for one test, unmounted when dropped.
struct SmallFs {
    dir: PathBuf,
}

impl SmallFs {
    /// `None` when this process may not mount (not root) outside CI; under `CI=true`, where
    /// .ci/run runs as root, that is a failure.
    fn mount(dir: &Path, size: &str) -> Option<SmallFs> {
        fs::create_dir_all(dir).unwrap();
        let out = std::process::Command::new("mount").args(["-t", "tmpfs", "-o", &format!("size={size}"), "ferry-test-full"]).arg(dir).output().unwrap();
        if !out.status.success() {
            let why = String::from_utf8_lossy(&out.stderr).trim().to_string();
            assert!(std::env::var("CI").as_deref() != Ok("true"), "cannot mount a tmpfs for the full-destination test: {why}");
            eprintln!("skipping: cannot mount a tmpfs ({why})");
            return None;
        }
        Some(SmallFs { dir: dir.to_path_buf() })
    }

    fn grow(&self, size: &str) {
        let out = std::process::Command::new("mount").args(["-o", &format!("remount,size={size}")]).arg(&self.dir).output().unwrap();
        assert!(out.status.success(), "remount {}: {}", self.dir.display(), String::from_utf8_lossy(&out.stderr));
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}

/// A destination that fills up mid-copy: the files that did not fit are reported failed with
/// NO_SPACE and a hint, nothing partial is left under a real name or a temporary one, every
/// file that did land is whole, and a rerun after space is freed finishes the job.
#[test]
fn a_full_destination_fails_cleanly_and_a_rerun_finishes_after_space_is_freed() {
    let p = pair();
    for i in 0..12 {
        write_file(&p.src.join(format!("d{}/f{i}.bin", i % 3)), &random_bytes(MIB as usize + 4097 * i));
    }
    let Some(small) = SmallFs::mount(&p.dst, "6m") else {
        return;
    };
    let out = Ferry::new("copy", &p.src, &p.dst).arg("--json").run();
    out.assert_code(1);
    let json = out.json();
    assert_eq!(json["status"], "ERROR", "{}", out.describe());
    let fails = failures(&json);
    assert!(!fails.is_empty() && fails.iter().all(|(_, why)| why.to_lowercase().contains("space")), "{fails:?}\n{}", out.describe());
    // The writer's NO_SPACE reaches the report as such, with its hint once (it used to turn
    // into an internal error on the way, with a second hint to report a bug).
    assert!(
        fails.iter().filter(|(f, _)| p.src.join(f).is_file()).all(|(_, why)| why.matches("free space").count() == 1 && !why.contains("report a bug")),
        "the failures say what to do, once: {fails:?}"
    );
    assert_no_temp_leftovers(&p.dst);
    let landed: Vec<PathBuf> = walk(&p.dst).into_iter().filter(|r| p.dst.join(r).is_file()).collect();
    for rel in &landed {
        assert!(same_content(&p.src.join(rel), &p.dst.join(rel)), "{} is at the destination but not whole", rel.display());
        assert!(!fails.iter().any(|(f, _)| Path::new(f) == rel), "{} is reported failed but landed", rel.display());
    }
    let failed_files = fails.iter().filter(|(f, _)| p.src.join(f).is_file()).count();
    assert_eq!(landed.len() + failed_files, 12, "every file either landed whole or is reported failed: {landed:?} {fails:?}");

    small.grow("64m");
    let again = ferry_ok("copy", &p.src, &p.dst, &[]);
    assert_eq!(counter(&again, "files_failed"), 0, "{again}");
    let diff = compare_trees(&p.src, &p.dst);
    assert!(diff.is_empty(), "the rerun did not finish the job:\n{}", diff.join("\n"));
    assert_no_temp_leftovers(&p.dst);
}
