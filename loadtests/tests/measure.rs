//! The measuring helper, exercised through the real binary.

use ferry_loadtests::bench::timed_run;
use std::ffi::OsString;
use std::path::Path;

fn helper() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_ferry-load"))
}

fn sh(script: &str) -> Vec<OsString> {
    vec!["-c".into(), script.into()]
}

#[test]
fn reports_exit_code_output_and_usage() {
    let t = tempfile::tempdir().unwrap();
    let log = t.path().join("run.log");
    let m = timed_run(helper(), Path::new("/bin/sh"), &sh("echo hello; echo oops >&2; exit 3"), &log, 1).unwrap();
    assert!(!m.success);
    assert_eq!(m.result.exit_code, Some(3));
    assert_eq!(m.result.signal, None);
    assert!(m.result.wall_s >= m.result.tool_wall_s);
    assert!(m.result.max_rss_kib > 0);
    assert_eq!(std::fs::read_to_string(&log).unwrap(), "hello\noops\n");
}

#[test]
fn rss_is_not_inherited_from_the_runner() {
    // Make this (test) process's peak RSS large; the tool's reported peak
    // must stay small because it is started from the fresh helper.
    let big = vec![1u8; 200 << 20];
    assert_eq!(big.iter().step_by(4096).map(|&b| b as usize).sum::<usize>(), (200 << 20) / 4096);
    let t = tempfile::tempdir().unwrap();
    let m = timed_run(helper(), Path::new("/bin/true"), &[], &t.path().join("log"), 1).unwrap();
    assert!(m.success);
    assert!(m.result.max_rss_kib < 50 * 1024, "rss {} KiB", m.result.max_rss_kib);
    drop(big);
}

#[test]
fn signals_and_missing_programs() {
    let t = tempfile::tempdir().unwrap();
    let m = timed_run(helper(), Path::new("/bin/sh"), &sh("kill -9 $$"), &t.path().join("a.log"), 1).unwrap();
    assert_eq!((m.result.exit_code, m.result.signal), (None, Some(9)));
    let e = timed_run(helper(), Path::new("/nonexistent/tool"), &[], &t.path().join("b.log"), 1).unwrap_err();
    assert!(e.to_string().contains("/nonexistent/tool"), "{e}");
}
