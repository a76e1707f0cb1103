//! The S3 bench scenarios' server handling and an end-to-end `--tiny` run.
//! Skipped (with a note on stderr) when s3s-fs, or every tool, is missing.
//! No timing assertions: only that the runs happen and upload everything.

use ferry_loadtests::bench::s3peer::{self, S3Server};
use ferry_loadtests::bench::{run_bench, BenchOptions, Scenario};
use ferry_loadtests::gen::ShapeOptions;
use ferry_loadtests::report::Status;
use ferry_loadtests::util;
use std::net::TcpStream;
use std::path::{Path, PathBuf};

fn s3s_fs() -> Option<PathBuf> {
    match s3peer::find_s3s_fs() {
        Ok(p) => Some(p),
        Err(why) => {
            eprintln!("skipping: {why}");
            None
        }
    }
}

#[test]
fn server_starts_clears_and_dies_with_its_guard() {
    let Some(program) = s3s_fs() else { return };
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("root");
    let srv = S3Server::start(&program, &root, &t.path().join("s3s-fs.log")).unwrap();
    let addr = format!("127.0.0.1:{}", srv.port);
    assert!(TcpStream::connect(&addr).is_ok());
    let pid = srv.pid().unwrap();
    assert!(srv.cpu_s().is_some());

    // Objects and sidecars go; the bucket stays.
    let obj = srv.prefix_dir("ferry-1").join("a/b");
    std::fs::create_dir_all(&obj).unwrap();
    std::fs::write(obj.join("x"), b"x").unwrap();
    std::fs::write(root.join(".bucket-YmVuY2g.object-eA.metadata.json"), b"{}").unwrap();
    srv.clear().unwrap();
    let left: Vec<_> = std::fs::read_dir(&root).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(left, [s3peer::BUCKET]);
    assert_eq!(std::fs::read_dir(root.join(s3peer::BUCKET)).unwrap().count(), 0);

    drop(srv);
    // Killed and reaped (no zombie left in /proc), root removed.
    assert!(!Path::new(&format!("/proc/{pid}")).exists());
    assert!(!root.exists());
}

#[test]
fn tiny_s3_small_uploads_everything() {
    let Some(_) = s3s_fs() else { return };
    let ws = util::workspace_root();
    let ferry = std::env::var_os("FERRY_BIN").map(PathBuf::from).unwrap_or_else(|| util::target_dir(&ws).join("release/ferry"));
    let have_ferry = util::is_executable(&ferry);
    let have_rclone = util::find_in_path("rclone").is_some();
    if !have_ferry && !have_rclone {
        eprintln!("skipping: neither ferry ({}) nor rclone is available", ferry.display());
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let opts = BenchOptions {
        scenario: Scenario::S3Small,
        runs: 1,
        warmup: 0,
        out: Some(t.path().join("out")),
        ferry: have_ferry.then(|| ferry.clone()),
        data: Some(t.path().join("data")),
        tiny: true,
        shape: ShapeOptions { files: Some(20), dirs: Some(3), ..ShapeOptions::default() },
        seed: 7,
        tools: None,
        threads: 2,
        baseline: None,
        traces: false,
        helper: Some(PathBuf::from(env!("CARGO_BIN_EXE_ferry-load"))),
    };
    let o = run_bench(&opts).unwrap();
    assert!(o.ok, "{}", ferry_loadtests::report::render_table(&o.report));
    assert_eq!(o.report.scenario, "s3-small");
    assert_eq!(o.report.dataset.stats.files, 20);
    for tool in &o.report.tools {
        if tool.status == Status::Skipped {
            eprintln!("{}: skipped: {:?}", tool.name, tool.reason);
            continue;
        }
        assert_eq!(tool.status, Status::Ok, "{}: {:?}", tool.name, tool.reason);
        assert_eq!(tool.runs.len(), 1, "{}", tool.name);
        assert!(tool.sanity.as_ref().is_some_and(|s| s.ok), "{}", tool.name);
    }
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(&o.json).unwrap()).unwrap();
    assert!(json["s3_server"]["endpoint"].as_str().unwrap().starts_with("http://127.0.0.1:"));
    // The server's root is gone with the server.
    let leftovers: Vec<_> = walk(&t.path().join("data")).into_iter().filter(|p| p.ends_with("s3-root")).collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                out.push(p.clone());
                if !p.ends_with("src") {
                    out.extend(walk(&p));
                }
            }
        }
    }
    out
}
