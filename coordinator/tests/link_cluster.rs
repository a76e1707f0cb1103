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

    // Each agent's health record names the other as a link peer (records are rewritten every
    // 10 s; the links stay up on keep-alives).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let listed = Command::new(bin("ferry")).args(["workers", "--json", "--etcd", &etcd.endpoint]).output().unwrap();
        let workers: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap_or_default();
        let peers = |name: &str| workers.as_array().and_then(|l| l.iter().find(|w| w["name"] == name)).map(|w| w["link_peers"].clone()).unwrap_or_default();
        if peers("agent-cloud") == serde_json::json!(["agent-onprem"]) && peers("agent-onprem") == serde_json::json!(["agent-cloud"]) {
            break;
        }
        assert!(Instant::now() < deadline, "the agents do not list each other as link peers: {workers}\n{}", describe());
        std::thread::sleep(Duration::from_millis(500));
    }
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

/// The user and group databases of an agent at another site: `extra` lines appended to this
/// host's own (so root and the system accounts stay).
fn user_db(dir: &Path, site: &str, users: &[(&str, u32)], groups: &[(&str, u32)]) -> (std::path::PathBuf, std::path::PathBuf) {
    let mut passwd = std::fs::read_to_string("/etc/passwd").unwrap();
    let mut group = std::fs::read_to_string("/etc/group").unwrap();
    for (name, id) in users {
        passwd += &format!("{name}:x:{id}:{id}::/nonexistent:/usr/sbin/nologin\n");
    }
    for (name, id) in groups {
        group += &format!("{name}:x:{id}:\n");
    }
    let (p, g) = (dir.join(format!("passwd-{site}")), dir.join(format!("group-{site}")));
    std::fs::write(&p, passwd).unwrap();
    std::fs::write(&g, group).unwrap();
    (p, g)
}

fn owner_of(p: &Path) -> (u32, u32) {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::symlink_metadata(p).unwrap();
    (m.uid(), m.gid())
}

/// Uid/Gid NAME and BOTH across two hosts whose user databases disagree: the reader names the
/// source's ids with its own database, the writer's agent answers with its own ids for those
/// names. An id without a name on either side is dropped by NAME (with its group: owner and
/// group are set together) and kept as a number by BOTH. An idle rerun compares owners the same way and copies nothing.
#[test]
fn owners_travel_by_name_between_hosts_with_different_user_databases() {
    if !have_root_and_ip() {
        return;
    }
    let dbs = tempfile::tempdir().unwrap();
    // "ferryalice" and "ferrystaff" exist at both sites with different ids; "ferrybob" only
    // at the source's; id 4103 is nobody's anywhere.
    let onprem_db = user_db(dbs.path(), "onprem", &[("ferryalice", 4101), ("ferrybob", 4102)], &[("ferrystaff", 4201)]);
    let cloud_db = user_db(dbs.path(), "cloud", &[("ferryalice", 5101)], &[("ferrystaff", 5201)]);
    let agents = vec![
        AgentSpec::new("agent-onprem", "onprem").user_db(onprem_db.0, onprem_db.1),
        AgentSpec::new("agent-cloud", "cloud").user_db(cloud_db.0, cloud_db.1),
    ];
    let Some(fleet) = Fleet::start(agents) else {
        return;
    };
    let src = fleet.work.path().join("src");
    std::fs::create_dir_all(src.join("sub")).unwrap();
    let chown = |rel: &str, uid: u32, gid: u32| std::os::unix::fs::lchown(src.join(rel), Some(uid), Some(gid)).unwrap();
    for (rel, uid) in [("alice.txt", 4101), ("sub/bob.txt", 4102), ("nobody.txt", 4103)] {
        std::fs::write(src.join(rel), rel).unwrap();
        chown(rel, uid, 4201);
    }
    std::os::unix::fs::symlink("alice.txt", src.join("link")).unwrap();
    chown("link", 4101, 4201);
    chown("sub", 4101, 4201);

    let copy = |dst: &Path, ids: &str| {
        let out = fleet
            .ferry("copy", &src, dst)
            .args(["--json", "--source-agents", "onprem", "--destination-agents", "cloud", "--owner-ids", ids])
            .timeout(Duration::from_secs(120))
            .run();
        assert_eq!(out.code, Some(0), "{}\n{}", out.describe(), fleet.agent_logs());
        out.json()
    };
    let by_name = fleet.work.path().join("by-name");
    copy(&by_name, "name");
    assert_eq!(owner_of(&by_name.join("alice.txt")), (5101, 5201), "alice and staff by their names at the destination");
    assert_eq!(owner_of(&by_name.join("link")), (5101, 5201), "a symlink's owner too");
    assert_eq!(owner_of(&by_name.join("sub")), (5101, 5201), "a directory's owner too");
    assert_eq!(owner_of(&by_name.join("sub/bob.txt")), (0, 0), "bob is unknown at the destination: not carried by NAME (nor his group: they travel together)");
    assert_eq!(owner_of(&by_name.join("nobody.txt")), (0, 0), "an id without a name is not carried by NAME");
    let log = fleet.agent_log("agent-onprem");
    assert!(log.contains("ferrybob") && log.contains("(id 4102 at the source) does not exist on the destination's host"), "{log}");
    assert!(log.contains("user id 4103 has no name on the host that reads the source"), "{log}");

    let again = copy(&by_name, "name");
    assert_eq!(counter(&again, "files_transferred"), 0, "owners compared by name: an idle rerun copies nothing\n{again}");

    let both = fleet.work.path().join("both");
    copy(&both, "both");
    assert_eq!(owner_of(&both.join("alice.txt")), (5101, 5201));
    assert_eq!(owner_of(&both.join("sub/bob.txt")), (4102, 5201), "BOTH falls back to the number");
    assert_eq!(owner_of(&both.join("nobody.txt")), (4103, 5201));
    let again = copy(&both, "both");
    assert_eq!(counter(&again, "files_transferred"), 0, "{again}");

    let numeric = fleet.work.path().join("numeric");
    copy(&numeric, "numeric");
    assert_eq!(owner_of(&numeric.join("alice.txt")), (4101, 4201), "the default carries the numbers as they are");
}

/// rsync's view of what differs between two trees (content by checksum), ignoring directory
/// times (a directory's mtime moves as its entries are written) and a symlink's time, which
/// an NFSv3 server does not keep (see README, NFS).
fn rsync_differences(a: &Path, b: &Path) -> Vec<String> {
    let diff = Command::new("rsync")
        .args(["-anci", "--delete"])
        .arg(format!("{}/", a.display()))
        .arg(format!("{}/", b.display()))
        .output()
        .expect("rsync is installed");
    assert!(diff.status.success(), "{}", String::from_utf8_lossy(&diff.stderr));
    String::from_utf8_lossy(&diff.stdout)
        .lines()
        .filter(|l| !l.starts_with(".d..t"))
        .filter(|l| !(l.starts_with(".L") && l.as_bytes().get(4) == Some(&b't')))
        .map(str::to_string)
        .collect()
}

/// An NFS export that only one agent reaches (the server listens on the host's loopback; the
/// other agent lives in a namespace of its own) is served by that agent to the other through
/// the link, in both directions: local files at one site → `nfs://` at the other, and back.
#[test]
fn an_nfs_export_that_one_agent_alone_reaches_is_served_to_another_over_the_link() {
    if !have_root_and_ip() {
        return;
    }
    let Some(nfs) = ferry_common::testing::NfsServer::shared() else {
        return;
    };
    let Some(fleet) = Fleet::start(vec![AgentSpec::new("agent-site", "site"), AgentSpec::new("agent-nas", "nas").on_host()]) else {
        return;
    };
    let src = fleet.work.path().join("src");
    std::fs::create_dir_all(src.join("a/b")).unwrap();
    for i in 0..200 {
        std::fs::write(src.join(format!("a/b/f{i:03}")), format!("{i}\n").repeat(i * 7 + 1)).unwrap();
    }
    std::fs::write(src.join("large.bin"), (0..24u32 << 20).map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8).collect::<Vec<u8>>()).unwrap();
    std::os::unix::fs::symlink("a/b/f001", src.join("link")).unwrap();
    std::fs::create_dir_all(src.join("empty")).unwrap();
    let (on_disk, uri) = nfs.fresh("bound");
    let run = |sub: &str, from: &str, to: &str, readers: &str, writers: &str| {
        let started = Instant::now();
        let out =
            fleet.ferry(sub, from, to).args(["--json", "--source-agents", readers, "--destination-agents", writers]).timeout(Duration::from_secs(180)).run();
        assert_eq!(out.code, Some(0), "{}\n{}", out.describe(), fleet.agent_logs());
        eprintln!("{sub} {from} -> {to}: {:?}", started.elapsed());
        out.json()
    };
    let to_nas = run("copy", src.to_str().unwrap(), &uri, "site", "nas");
    assert_eq!(counter(&to_nas, "files_failed"), 0, "{to_nas}");
    assert!(rsync_differences(&src, &on_disk).is_empty(), "site → nas: {:?}", rsync_differences(&src, &on_disk));
    let idle = run("copy", src.to_str().unwrap(), &uri, "site", "nas");
    assert_eq!(counter(&idle, "files_transferred"), 0, "an idle rerun through the link copies nothing\n{idle}");

    let back = fleet.work.path().join("back");
    let from_nas = run("copy", &uri, back.to_str().unwrap(), "nas", "site");
    assert_eq!(counter(&from_nas, "files_failed"), 0, "{from_nas}");
    assert!(rsync_differences(&src, &back).is_empty(), "nas → site: {:?}", rsync_differences(&src, &back));
}
