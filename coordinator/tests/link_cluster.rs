//! Two agents at two "sites": each `ferry-worker` runs in its own network namespace with its
//! own address on a bridge, one labelled `onprem` (reaches the source), one `cloud` (reaches
//! the destination). `ferry copy --source-agents onprem --destination-agents cloud` makes the
//! onprem agent stream everything to the cloud agent over QUIC. Mid-transfer the cloud
//! agent's link is cut (`ip link set ... down`) for 10 s: the copy must complete, identical by
//! rsync's own comparison, and the counters must show it resumed rather than restarted. A
//! chunk corrupted by a test hook must be detected and resent.
//!
//! Needs root and iproute2 (CI runs as root; outside CI the test skips without them).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ferry_common::testing::EtcdServer;

fn bin(name: &str) -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_ferry")).with_file_name(name)
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(out.status.success(), "ip {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A bridge and two namespaces with veth pairs on it; removed on drop.
struct Sites {
    bridge: String,
    host_ip: String,
    ns: Vec<(String, String, String)>, // (namespace, host-side veth, address)
}

impl Sites {
    fn create() -> Sites {
        let tag = std::process::id() % 10_000;
        let subnet = 100 + (std::process::id() % 100);
        let bridge = format!("fybr{tag}");
        let host_ip = format!("10.78.{subnet}.1");
        ip(&["link", "add", &bridge, "type", "bridge"]);
        let mut sites = Sites { bridge: bridge.clone(), host_ip: host_ip.clone(), ns: Vec::new() };
        ip(&["addr", "add", &format!("{host_ip}/24"), "dev", &bridge]);
        ip(&["link", "set", &bridge, "up"]);
        for (i, site) in ["onprem", "cloud"].iter().enumerate() {
            let ns = format!("fy-{site}-{tag}");
            let (host_if, ns_if) = (format!("fy{tag}h{i}"), format!("fy{tag}n{i}"));
            let addr = format!("10.78.{subnet}.{}", 11 + i);
            ip(&["netns", "add", &ns]);
            sites.ns.push((ns.clone(), host_if.clone(), addr.clone()));
            ip(&["link", "add", &host_if, "type", "veth", "peer", "name", &ns_if]);
            ip(&["link", "set", &ns_if, "netns", &ns]);
            ip(&["link", "set", &host_if, "master", &bridge, "up"]);
            ip(&["-n", &ns, "addr", "add", &format!("{addr}/24"), "dev", &ns_if]);
            ip(&["-n", &ns, "link", "set", &ns_if, "up"]);
            ip(&["-n", &ns, "link", "set", "lo", "up"]);
        }
        sites
    }
}

impl Drop for Sites {
    fn drop(&mut self) {
        for (ns, host_if, _) in &self.ns {
            let _ = Command::new("ip").args(["link", "del", host_if]).status();
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        let _ = Command::new("ip").args(["link", "del", &self.bridge]).status();
    }
}

struct Killed(Vec<Child>);

impl Drop for Killed {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

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

fn counter(json: &serde_json::Value, name: &str) -> u64 {
    json["counters"][name].as_u64().unwrap_or_else(|| panic!("no counter {name} in {json}"))
}

fn have_root_and_ip() -> bool {
    let root = unsafe { libc::geteuid() } == 0;
    let ip = Command::new("ip").arg("-V").output().is_ok_and(|o| o.status.success());
    if !(root && ip) {
        assert!(std::env::var("CI").as_deref() != Ok("true"), "CI must run as root with iproute2 installed");
        eprintln!("skipping: needs root and iproute2");
        return false;
    }
    true
}

#[test]
fn agents_in_two_namespaces_copy_over_quic_through_a_cut_link() {
    if !have_root_and_ip() {
        return;
    }
    let sites = Sites::create();
    let Some(etcd) = EtcdServer::start_also_on(Some(&sites.host_ip)) else {
        return;
    };
    let endpoint = etcd.endpoint_on(&sites.host_ip);
    let work = tempfile::tempdir().unwrap();
    let (src, dst, ca, logs) = (work.path().join("src"), work.path().join("dst"), work.path().join("ca"), work.path().join("logs"));
    std::fs::create_dir_all(&logs).unwrap();
    // The destination does not exist yet: the submitter of a bound copy may not see it, so the
    // writing agent creates it (an agent that could not open it would refuse the execution).
    make_tree(&src);

    let ferry = bin("ferry");
    let ok = |cmd: &mut Command| {
        let out = cmd.output().expect("run ferry");
        assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    ok(Command::new(&ferry).args(["ca", "init", "--ca-dir"]).arg(&ca));
    let mut procs = Killed(Vec::new());
    let coord_log = std::fs::File::create(logs.join("coordinator.log")).unwrap();
    procs.0.push(Command::new(&ferry).args(["coordinator", "--name", "c1", "--etcd", &etcd.endpoint]).stderr(coord_log).spawn().unwrap());
    // The CA holder signs enrollments as the agents ask.
    procs.0.push(Command::new(&ferry).args(["ca", "serve", "--etcd", &etcd.endpoint, "--ca-dir"]).arg(&ca).stderr(Stdio::null()).spawn().unwrap());
    for (i, (site, (ns, _, addr))) in ["onprem", "cloud"].iter().zip(&sites.ns).enumerate() {
        let token = ok(Command::new(&ferry).args(["ca", "token", "--ttl", "5m", "--etcd", &etcd.endpoint])).trim().to_string();
        let log = std::fs::File::create(logs.join(format!("{site}.log"))).unwrap();
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns]).arg(bin("ferry-worker"));
        cmd.args(["--etcd", &endpoint, "--name", &format!("agent-{site}"), "--labels", site, "--lease-ttl", "30", "--movers", "4"]);
        cmd.arg("--tls-dir").arg(work.path().join(format!("tls-{i}"))).args(["--enroll-token", &token]);
        cmd.args(["--link-listen", &format!("{addr}:7400")]);
        if *site == "onprem" {
            cmd.env("FERRY_TEST_CORRUPT_CHUNK", "data/deep/er/small-007.txt");
        }
        procs.0.push(cmd.stderr(log).spawn().unwrap());
    }
    // Both agents enrolled and registered.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = ok(Command::new(&ferry).args(["workers", "--json", "--etcd", &etcd.endpoint]));
        if out.matches("\"ONLINE\"").count() == 2 {
            // Labels and the writer's link address are what readers route by.
            let workers: serde_json::Value = serde_json::from_str(&out).unwrap();
            let cloud = workers.as_array().unwrap().iter().find(|w| w["name"] == "agent-cloud").expect("cloud agent listed");
            assert_eq!(cloud["labels"], serde_json::json!(["cloud"]));
            assert_eq!(cloud["link"], serde_json::json!(format!("{}:7400", sites.ns[1].2)));
            break;
        }
        assert!(Instant::now() < deadline, "agents did not register: {out}\n{}", std::fs::read_to_string(logs.join("cloud.log")).unwrap_or_default());
        std::thread::sleep(Duration::from_millis(200));
    }

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
    let cloud_if = &sites.ns[1].1;
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
            std::fs::read_to_string(logs.join("onprem.log")).unwrap_or_default(),
            std::fs::read_to_string(logs.join("cloud.log")).unwrap_or_default()
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
    let cloud_log = std::fs::read_to_string(logs.join("cloud.log")).unwrap_or_default();
    assert!(cloud_log.contains("chunk failed its CRC32C"), "the writer logged the bad chunk\n{}", describe());
    drop(procs);
    drop(etcd);
}
