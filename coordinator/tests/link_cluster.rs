//! Two agents at two "sites": each `ferry-worker` runs in its own network namespace with its
//! own address on a bridge, one labelled `onprem` (reaches the source), one `cloud` (reaches
//! the destination). `ferry copy --source-agents onprem --destination-agents cloud` makes the
//! onprem agent stream everything to the cloud agent over QUIC. Mid-transfer the cloud
//! agent's link is cut (`ip link set ... down`) for 10 s: the copy must complete, identical by
//! rsync's own comparison, and the counters must show it resumed rather than restarted. A
//! chunk corrupted by a test hook must be detected and resent.
//!
//! Needs root and iproute2 (CI runs as root; outside CI the test skips without them).

mod support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::counter;
use support::sites::{bin, have_root_and_ip, ip, AgentSpec, Fleet};

fn make_tree(root: &Path) {
    // One large file (cut mid-transfer), many small ones, an empty directory, a symlink.
    let big: Vec<u8> = (0..96u32 << 20).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    std::fs::create_dir_all(root.join("data/deep/er")).unwrap();
    std::fs::create_dir_all(root.join("empty")).unwrap();
    std::fs::write(root.join("data/big.bin"), big).unwrap();
    for i in 0..300 {
        std::fs::write(root.join(format!("data/deep/er/small-{i:03}.txt")), format!("file {i}\n").repeat(i % 50 + 1)).unwrap();
    }
    std::fs::write(root.join("data/compressible.log"), "the same line again and again\n".repeat(100_000)).unwrap();
    std::os::unix::fs::symlink("deep/er/small-001.txt", root.join("data/link")).unwrap();
}

#[test]
fn agents_in_two_namespaces_copy_over_quic_through_a_cut_link() {
    if !have_root_and_ip() {
        return;
    }
    let onprem = AgentSpec::new("agent-onprem", "onprem").env("FERRY_TEST_CORRUPT_CHUNK", "data/deep/er/small-007.txt");
    let Some(fleet) = Fleet::start(vec![onprem, AgentSpec::new("agent-cloud", "cloud")]) else {
        return;
    };
    let etcd = &fleet.etcd;
    let (src, dst) = (fleet.work.path().join("src"), fleet.work.path().join("dst"));
    // The destination does not exist yet: the submitter of a bound copy may not see it, so the
    // writing agent creates it (an agent that could not open it would refuse the execution).
    make_tree(&src);
    // Labels and the writer's link address are what readers route by.
    let listed = Command::new(bin("ferry")).args(["workers", "--json", "--etcd", &etcd.endpoint]).output().unwrap();
    let workers: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    let cloud = workers.as_array().unwrap().iter().find(|w| w["name"] == "agent-cloud").expect("cloud agent listed");
    assert_eq!(cloud["labels"], serde_json::json!(["cloud"]));
    assert_eq!(cloud["link"], serde_json::json!(format!("{}:7400", fleet.sites.sites[1].addr)));

    let ferry = bin("ferry");
    let mut copy = Command::new(&ferry)
        .args([
            "copy",
            "--json",
            "--no-progress",
            "--etcd",
            &etcd.endpoint,
            "--source-agents",
            "onprem",
            "--destination-agents",
            "cloud",
            "--compress",
            "--bwlimit",
            "8M",
        ])
        .arg(&src)
        .arg(&dst)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the large file is partly written at the destination, then cut the cloud
    // agent off for 10 s.
    let deadline = Instant::now() + Duration::from_secs(90);
    let partial = loop {
        let found = std::fs::read_dir(dst.join("data")).ok().and_then(|d| {
            d.filter_map(Result::ok).find(|e| e.file_name().to_string_lossy().starts_with(".ferry-tmp-") && e.metadata().is_ok_and(|m| m.len() >= 16 << 20))
        });
        if let Some(e) = found {
            break e.metadata().unwrap().len();
        }
        assert!(Instant::now() < deadline, "the large file never started arriving");
        std::thread::sleep(Duration::from_millis(100));
    };
    let cloud_if = &fleet.sites.sites[1].host_if;
    ip(&["link", "set", cloud_if, "down"]);
    std::thread::sleep(Duration::from_secs(10));
    ip(&["link", "set", cloud_if, "up"]);

    let deadline = Instant::now() + Duration::from_secs(240);
    while copy.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "the copy did not finish");
        std::thread::sleep(Duration::from_millis(200));
    }
    let out = copy.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let describe = || {
        format!(
            "stdout: {stdout}\nstderr: {}\nonprem: {}\ncloud: {}",
            String::from_utf8_lossy(&out.stderr),
            fleet.agent_log("agent-onprem"),
            fleet.agent_log("agent-cloud")
        )
    };
    assert!(out.status.success(), "copy failed\n{}", describe());
    let json: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}\n{}", describe()));
    // An independent check: rsync finds nothing to change, content compared by checksum.
    let diff = Command::new("rsync")
        .args(["-anci", "--delete"])
        .arg(format!("{}/", src.display()))
        .arg(format!("{}/", dst.display()))
        .output()
        .expect("rsync is installed");
    assert!(diff.status.success());
    let changes: Vec<_> = String::from_utf8_lossy(&diff.stdout).lines().filter(|l| !l.starts_with(".d..t")).map(str::to_string).collect();
    assert!(changes.is_empty(), "rsync found differences: {changes:?}\n{}", describe());
    assert_eq!(counter(&json, "files_failed"), 0, "{}", describe());
    assert!(counter(&json, "bytes_resumed") > 0, "the cut transfer resumed (partial file was {partial} bytes)\n{}", describe());
    assert!(counter(&json, "bytes_resumed") >= partial.min(16 << 20), "resumed from what was written, not from 0\n{}", describe());
    assert!(counter(&json, "chunks_resent") >= 1, "the corrupted chunk was detected and resent\n{}", describe());
    assert!(counter(&json, "bytes_compressed") > 1 << 20, "the compressible file was compressed\n{}", describe());
    let cloud_log = fleet.agent_log("agent-cloud");
    assert!(cloud_log.contains("chunk failed its CRC32C"), "the writer logged the bad chunk\n{}", describe());
}

/// The part shards of one 1 GiB file are read by two agents at the source site and streamed to
/// one writer agent at the destination, which assembles the file. Each reader's debug log
/// names the shards it claimed: both must have claimed part shards, and the file must be
/// identical.
#[test]
fn part_shards_of_one_large_file_spread_over_two_reader_agents() {
    if !have_root_and_ip() {
        return;
    }
    let debug = |a: AgentSpec| a.env("RUST_LOG", "info,ferry_worker::mover=debug");
    let agents = vec![debug(AgentSpec::new("reader-1", "onprem")), debug(AgentSpec::new("reader-2", "onprem")), AgentSpec::new("writer", "cloud")];
    let Some(fleet) = Fleet::start(agents) else {
        return;
    };
    let (src, dst) = (fleet.work.path().join("src"), fleet.work.path().join("dst"));
    std::fs::create_dir_all(&src).unwrap();
    // 1 GiB in 1 MiB blocks that all differ (a misplaced part would not go unnoticed).
    let mut block: Vec<u8> = (0..1u32 << 20).map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8).collect();
    let mut f = std::io::BufWriter::new(std::fs::File::create(src.join("one.gib")).unwrap());
    for i in 0..1024u32 {
        block[..4].copy_from_slice(&i.to_le_bytes());
        std::io::Write::write_all(&mut f, &block).unwrap();
    }
    std::io::Write::flush(&mut f).unwrap();
    drop(f);

    let out = fleet.ferry("copy", &src, &dst).args(["--json", "--source-agents", "onprem", "--destination-agents", "cloud"]).run();
    assert_eq!(out.code, Some(0), "{}\n{}", out.describe(), fleet.agent_logs());
    let json = out.json();
    assert_eq!(counter(&json, "files_failed"), 0, "{json}");
    assert_eq!(counter(&json, "bytes_transferred"), 1 << 30, "{json}");
    // Every part shard is named in exactly one reader's log (a claim may be retried, so count
    // distinct shards).
    let parts = |name: &str| -> std::collections::BTreeSet<String> {
        fleet
            .agent_log(name)
            .lines()
            .filter(|l| l.contains("ShardClaimed"))
            .filter_map(|l| l.split("shard=").nth(1))
            .map(|s| s.split_whitespace().next().unwrap_or_default().to_string())
            .filter(|id| id.starts_with("1b-"))
            .collect()
    };
    let (one, two) = (parts("reader-1"), parts("reader-2"));
    eprintln!("part shards claimed: reader-1 {}, reader-2 {}", one.len(), two.len());
    assert!(!one.is_empty() && !two.is_empty(), "both readers claim part shards: reader-1 {one:?}, reader-2 {two:?}\n{}", fleet.agent_logs());
    assert!(one.len() + two.len() >= 16, "1 GiB makes 16 parts of 64 MiB: {one:?} {two:?}");
    let same = Command::new("cmp").arg(src.join("one.gib")).arg(dst.join("one.gib")).status().expect("cmp runs");
    assert!(same.success(), "the assembled file differs from the source");
}
