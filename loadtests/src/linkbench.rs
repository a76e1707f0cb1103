//! `ferry-load link-bench`: ferry's agent-to-agent QUIC link against TCP tools on the same
//! data, in one run, on loopback or through the user-space WAN emulator.
//!
//! The source side (namespace A of the WAN link, or loopback) runs etcd, a coordinator, the
//! reading agent and every client; the destination side (namespace B) runs the writing agent
//! and every server. Each tool copies the same tree into an emptied destination; the copy is
//! checked (sizes and CRC32C of every file) before its time counts.
//!
//! Tools:
//! - `ferry[-VARIANT]`: `ferry copy --source-agents onprem --destination-agents cloud`, with
//!   fsync and read-back verification on (its defaults); variants change one link setting;
//! - `rsync-daemon`: rsync over its own protocol on TCP (`rsync://`), `--whole-file`;
//! - `rsync-ssh`: rsync over ssh (needs Debian's openssh-server);
//! - `tls-tcp`: one TLS 1.3 stream over TCP (rustls, mutual auth, same certificates) carrying
//!   the same bytes, written to files without fsync: the bar for "one encrypted TCP stream".
//!
//! CPU is the user+system time of every process involved, servers included (read from
//! /proc before and after, reaped children counted).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::wan::{WanConfig, WanLink};

#[derive(Clone, Debug)]
pub struct LinkBenchOptions {
    pub data: PathBuf,
    pub work: PathBuf,
    pub large_files: u64,
    pub large_size: u64,
    pub small_files: u64,
    pub tools: Vec<String>,
    pub wan: Option<WanConfig>,
    /// Two namespaces on a veth pair (a LAN), instead of loopback.
    pub lan: bool,
    /// The LAN's MTU: 1500 (Ethernet) or 9000 (jumbo frames, common inside data centres).
    pub lan_mtu: u32,
    pub bin_dir: PathBuf,
    /// An earlier build's `ferry` and `ferry-worker`, run as the `ferry-baseline[-variant]`
    /// tools with their own etcd and coordinator, interleaved with the others.
    pub baseline_bin_dir: Option<PathBuf>,
    pub out: Option<PathBuf>,
    /// Rounds of every tool, each round in a rotated order.
    pub repeat: u32,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct ToolRun {
    pub tool: String,
    pub seconds: f64,
    pub mb_per_s: f64,
    pub cpu_seconds: f64,
    pub cpu_s_per_gb: f64,
    pub note: String,
}

/// One tool's results over the rounds.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ToolMedian {
    pub tool: String,
    pub rounds: usize,
    pub median_seconds: f64,
    pub min_seconds: f64,
    pub max_seconds: f64,
    pub median_mb_per_s: f64,
    /// This tool's median time over ferry's (the `ferry` tool): above 1, ferry is faster.
    pub vs_ferry: Option<f64>,
}

/// Medians per tool, in the order the tools were given, with ratios against `ferry`.
pub fn summarize(tools: &[String], runs: &[ToolRun]) -> Vec<ToolMedian> {
    let secs = |t: &str| runs.iter().filter(|r| r.tool == t).map(|r| r.seconds).collect::<Vec<_>>();
    let ferry = crate::stats::median(&secs("ferry"));
    tools
        .iter()
        .filter_map(|t| {
            let s = crate::stats::summarize(&secs(t))?;
            let mbps = crate::stats::median(&runs.iter().filter(|r| &r.tool == t).map(|r| r.mb_per_s).collect::<Vec<_>>())?;
            Some(ToolMedian {
                tool: t.clone(),
                rounds: s.n,
                median_seconds: s.median,
                min_seconds: s.min,
                max_seconds: s.max,
                median_mb_per_s: mbps,
                vs_ferry: ferry.filter(|f| *f > 0.0).map(|f| s.median / f),
            })
        })
        .collect()
}

fn run_err(msg: impl Into<String>) -> Error {
    Error::run(msg.into())
}

/// Two hosts emulated by network namespaces: a LAN (veth pair) or a WAN (the user-space
/// emulator).
enum Pair {
    Lan(crate::lan::LanPair),
    Wan(WanLink),
}

impl Pair {
    fn ns(&self) -> [&str; 2] {
        match self {
            Pair::Lan(l) => [l.ns_a(), l.ns_b()],
            Pair::Wan(w) => [w.ns_a(), w.ns_b()],
        }
    }
    fn addrs(&self) -> [std::net::Ipv4Addr; 2] {
        match self {
            Pair::Lan(_) => [crate::lan::ADDR_A, crate::lan::ADDR_B],
            Pair::Wan(w) => [w.addr_a(), w.addr_b()],
        }
    }
}

/// Where commands run: plain processes on loopback, or `ip netns exec` into the two
/// namespaces of a LAN pair or of the WAN link.
struct Sites {
    link: Option<Pair>,
}

impl Sites {
    fn src_addr(&self) -> String {
        self.link.as_ref().map(|l| l.addrs()[0].to_string()).unwrap_or_else(|| "127.0.0.1".into())
    }
    fn dst_addr(&self) -> String {
        self.link.as_ref().map(|l| l.addrs()[1].to_string()).unwrap_or_else(|| "127.0.0.1".into())
    }
    fn at_src(&self, program: &Path) -> Command {
        match &self.link {
            Some(l) => crate::wan::ns_command(l.ns()[0], &program.to_string_lossy()),
            None => Command::new(program),
        }
    }
    fn at_dst(&self, program: &Path) -> Command {
        match &self.link {
            Some(l) => crate::wan::ns_command(l.ns()[1], &program.to_string_lossy()),
            None => Command::new(program),
        }
    }
    fn set_tcp_cc(&self, algo: &str) -> Result<()> {
        if let Some(l) = &self.link {
            for ns in l.ns() {
                let st = Command::new("ip")
                    .args(["netns", "exec", ns, "sysctl", "-qw", &format!("net.ipv4.tcp_congestion_control={algo}")])
                    .status()
                    .map_err(|e| run_err(format!("sysctl: {e}")))?;
                if !st.success() {
                    return Err(run_err(format!("cannot set TCP congestion control {algo} in {ns}")));
                }
            }
        } else {
            std::fs::write("/proc/sys/net/ipv4/tcp_congestion_control", algo).map_err(|e| run_err(format!("cannot set TCP congestion control {algo}: {e}")))?;
        }
        Ok(())
    }
}

/// Kills its processes when dropped.
struct Procs(Vec<Child>);

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        }
        std::thread::sleep(Duration::from_millis(300));
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn children_cpu() -> f64 {
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Waits for a TCP server to listen. Servers in namespace B cannot be probed from here, and
/// a one-connection server must not be (`probe` false): those get a moment instead.
fn wait_port(addr: &str, sites: &Sites, probe: bool) {
    if sites.link.is_some() || !probe {
        std::thread::sleep(Duration::from_millis(1500));
        return;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(addr).is_err() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
}

// ---- data ----

fn xorshift_fill(buf: &mut [u8], seed: &mut u64) {
    for chunk in buf.chunks_mut(8) {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        let b = seed.to_le_bytes();
        chunk.copy_from_slice(&b[..chunk.len()]);
    }
}

/// Incompressible files: `large` of `size` bytes, and `small` files of 4–64 KiB in 10 dirs.
fn make_data(o: &LinkBenchOptions) -> Result<(u64, u64)> {
    let marker = o.data.join(format!(".linkbench-{}x{}-{}", o.large_files, o.large_size, o.small_files));
    let mut bytes = 0;
    let mut files = 0;
    if !marker.exists() {
        let _ = std::fs::remove_dir_all(&o.data);
        std::fs::create_dir_all(&o.data).map_err(|e| run_err(format!("{}: {e}", o.data.display())))?;
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        let mut buf = vec![0u8; 4 << 20];
        for i in 0..o.large_files {
            let mut f = std::fs::File::create(o.data.join(format!("large-{i}.bin"))).map_err(|e| run_err(e.to_string()))?;
            let mut left = o.large_size;
            while left > 0 {
                let n = left.min(buf.len() as u64) as usize;
                xorshift_fill(&mut buf[..n], &mut seed);
                f.write_all(&buf[..n]).map_err(|e| run_err(e.to_string()))?;
                left -= n as u64;
            }
        }
        for i in 0..o.small_files {
            let dir = o.data.join(format!("small/d{}", i % 10));
            std::fs::create_dir_all(&dir).map_err(|e| run_err(e.to_string()))?;
            let n = 4096 + (seed % (60 << 10)) as usize;
            xorshift_fill(&mut buf[..n], &mut seed);
            std::fs::write(dir.join(format!("f{i:06}")), &buf[..n]).map_err(|e| run_err(e.to_string()))?;
        }
        std::fs::write(&marker, b"").map_err(|e| run_err(e.to_string()))?;
    }
    for (path, len) in crate::tree::regular_files(&o.data) {
        if !path.file_name().is_some_and(|n| n.to_string_lossy().starts_with(".linkbench")) {
            bytes += len;
            files += 1;
        }
    }
    Ok((files, bytes))
}

/// Every source file is at the destination with the same size and CRC32C.
fn check_copy(src: &Path, dst: &Path) -> Result<()> {
    let mut buf = vec![0u8; 4 << 20];
    let crc = |p: &Path, buf: &mut [u8]| -> std::io::Result<u32> {
        let mut f = std::fs::File::open(p)?;
        let mut c = 0u32;
        loop {
            let n = f.read(buf)?;
            if n == 0 {
                return Ok(c);
            }
            c = crc32c::crc32c_append(c, &buf[..n]);
        }
    };
    for (path, len) in crate::tree::regular_files(src) {
        let rel = path.strip_prefix(src).expect("under src");
        if rel.to_string_lossy().starts_with(".linkbench") {
            continue;
        }
        let other = dst.join(rel);
        let m = std::fs::metadata(&other).map_err(|e| run_err(format!("{} missing at the destination: {e}", rel.display())))?;
        if m.len() != len || crc(&path, &mut buf).ok() != crc(&other, &mut buf).ok() {
            return Err(run_err(format!("{} differs at the destination", rel.display())));
        }
    }
    Ok(())
}

// ---- the TLS-over-TCP reference stream ----

/// `ferry-load tls-sink`: accepts one TLS connection and writes the files it carries.
pub fn tls_sink(listen: &str, dir: &Path, tls: &Path) -> Result<()> {
    let id = ferry_worker::transport::link::pki::Identity::load(tls).map_err(|e| run_err(e.to_string()))?;
    let cfg = Arc::new(id.server_tls().map_err(|e| run_err(e.to_string()))?);
    let l = TcpListener::bind(listen).map_err(|e| run_err(format!("listen {listen}: {e}")))?;
    let (sock, _) = l.accept().map_err(|e| run_err(e.to_string()))?;
    let conn = rustls::ServerConnection::new(cfg).map_err(|e| run_err(e.to_string()))?;
    let mut s = std::io::BufReader::with_capacity(1 << 20, rustls::StreamOwned::new(conn, sock));
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let mut len = [0u8; 4];
        if s.read_exact(&mut len).is_err() {
            return Ok(());
        }
        let mut name = vec![0u8; u32::from_be_bytes(len) as usize];
        s.read_exact(&mut name).map_err(|e| run_err(e.to_string()))?;
        let mut size = [0u8; 8];
        s.read_exact(&mut size).map_err(|e| run_err(e.to_string()))?;
        let rel = String::from_utf8_lossy(&name).into_owned();
        if rel.is_empty() {
            return Ok(());
        }
        let path = dir.join(&rel);
        std::fs::create_dir_all(path.parent().expect("has parent")).map_err(|e| run_err(e.to_string()))?;
        let mut f = std::fs::File::create(&path).map_err(|e| run_err(e.to_string()))?;
        let mut left = u64::from_be_bytes(size);
        while left > 0 {
            let n = left.min(buf.len() as u64) as usize;
            s.read_exact(&mut buf[..n]).map_err(|e| run_err(e.to_string()))?;
            f.write_all(&buf[..n]).map_err(|e| run_err(e.to_string()))?;
            left -= n as u64;
        }
    }
}

/// `ferry-load tls-send`: sends every file under `dir` over one TLS connection.
pub fn tls_send(connect: &str, dir: &Path, tls: &Path) -> Result<()> {
    let id = ferry_worker::transport::link::pki::Identity::load(tls).map_err(|e| run_err(e.to_string()))?;
    let cfg = Arc::new(id.client_tls().map_err(|e| run_err(e.to_string()))?);
    let sock = TcpStream::connect(connect).map_err(|e| run_err(format!("connect {connect}: {e}")))?;
    let name = rustls::pki_types::ServerName::try_from("dst1").expect("valid").to_owned();
    let conn = rustls::ClientConnection::new(cfg, name).map_err(|e| run_err(e.to_string()))?;
    let mut s = std::io::BufWriter::with_capacity(1 << 20, rustls::StreamOwned::new(conn, sock));
    let mut buf = vec![0u8; 1 << 20];
    for (path, len) in crate::tree::regular_files(dir) {
        let rel = path.strip_prefix(dir).expect("under dir").to_string_lossy().into_owned();
        if rel.starts_with(".linkbench") {
            continue;
        }
        s.write_all(&(rel.len() as u32).to_be_bytes())
            .and_then(|_| s.write_all(rel.as_bytes()))
            .and_then(|_| s.write_all(&len.to_be_bytes()))
            .map_err(|e| run_err(e.to_string()))?;
        let mut f = std::fs::File::open(&path).map_err(|e| run_err(e.to_string()))?;
        loop {
            let n = f.read(&mut buf).map_err(|e| run_err(e.to_string()))?;
            if n == 0 {
                break;
            }
            s.write_all(&buf[..n]).map_err(|e| run_err(e.to_string()))?;
        }
    }
    s.write_all(&0u32.to_be_bytes()).and_then(|_| s.write_all(&0u64.to_be_bytes())).map_err(|e| run_err(e.to_string()))?;
    let mut stream = s.into_inner().map_err(|e| run_err(e.to_string()))?;
    stream.conn.send_close_notify();
    stream.flush().map_err(|e| run_err(e.to_string()))?;
    // Wait for the sink to close first: closing with its session tickets unread would reset
    // the connection and discard the tail of the data.
    let _ = stream.sock.shutdown(std::net::Shutdown::Write);
    let mut sink = [0u8; 4096];
    while matches!(stream.sock.read(&mut sink), Ok(n) if n > 0) {}
    Ok(())
}

// ---- the run ----

struct Bench<'a> {
    o: &'a LinkBenchOptions,
    sites: Sites,
    etcd: String,
    /// The baseline build's etcd URL, when there is one.
    baseline_etcd: Option<String>,
    dst: PathBuf,
    bytes: u64,
}

impl Bench<'_> {
    fn clear_dst(&self) -> Result<()> {
        let _ = std::fs::remove_dir_all(&self.dst);
        std::fs::create_dir_all(&self.dst).map_err(|e| run_err(e.to_string()))
    }

    fn finish(&self, tool: &str, t0: Instant, cpu: f64, note: &str) -> Result<ToolRun> {
        let seconds = t0.elapsed().as_secs_f64();
        check_copy(&self.o.data, &self.dst).map_err(|e| run_err(format!("{tool}: {e}")))?;
        let gb = self.bytes as f64 / 1e9;
        Ok(ToolRun { tool: tool.into(), seconds, mb_per_s: self.bytes as f64 / 1e6 / seconds, cpu_seconds: cpu, cpu_s_per_gb: cpu / gb, note: note.into() })
    }

    fn ferry(&self, tool: &str) -> Result<ToolRun> {
        let (variant, etcd, bin_dir) = match (tool.strip_prefix("ferry-baseline"), &self.o.baseline_bin_dir, &self.baseline_etcd) {
            (Some(v), Some(dir), Some(etcd)) => (v, etcd.as_str(), dir.as_path()),
            (Some(_), _, _) => return Err(Error::usage("the ferry-baseline tools need --baseline-bin-dir")),
            (None, _, _) => (tool.strip_prefix("ferry").unwrap_or(""), self.etcd.as_str(), self.o.bin_dir.as_path()),
        };
        let variant = variant.trim_start_matches('-');
        let mut worker_flags: Vec<String> = Vec::new();
        let mut copy_flags: Vec<String> = Vec::new();
        for v in variant.split('+').filter(|v| !v.is_empty()) {
            match v {
                "cubic" => worker_flags.extend(["--congestion".into(), "cubic".into()]),
                "newreno" => worker_flags.extend(["--congestion".into(), "newreno".into()]),
                "nogso" => worker_flags.push("--link-no-gso".into()),
                "nogro" => worker_flags.push("--link-no-gro".into()),
                "2conn" => worker_flags.extend(["--link-connections".into(), "2".into()]),
                "nosync" => copy_flags.extend(["--no-fsync".into(), "--verify".into(), "none".into()]),
                "compress" => copy_flags.push("--compress".into()),
                mtu if mtu.strip_prefix("mtu").is_some_and(|n| n.parse::<u16>().is_ok()) => worker_flags.extend(["--link-max-mtu".into(), mtu[3..].into()]),
                other => {
                    return Err(Error::usage(format!(
                        "unknown ferry variant {other:?} (cubic, newreno, mtuN, nogso, nogro, 2conn, nosync, compress; join with +)"
                    )))
                }
            }
        }
        self.clear_dst()?;
        let w = &self.o.work;
        let worker = bin_dir.join("ferry-worker");
        let mut procs = Procs(Vec::new());
        let dst_addr = format!("{}:7420", self.sites.dst_addr());
        let mut writer = self.sites.at_dst(&worker);
        writer
            .args(["--etcd", etcd, "--insecure-etcd", "--name", "dst1", "--labels", "cloud", "--link-listen", &dst_addr, "--movers", "8"])
            .arg("--tls-dir")
            .arg(w.join("tls-dst"))
            .args(&worker_flags);
        procs.0.push(
            writer
                .stderr(std::fs::File::create(w.join(format!("{tool}-dst.log"))).map_err(|e| run_err(e.to_string()))?)
                .spawn()
                .map_err(|e| run_err(format!("ferry-worker: {e}")))?,
        );
        let mut reader = self.sites.at_src(&worker);
        reader
            .args(["--etcd", etcd, "--insecure-etcd", "--name", "src1", "--labels", "onprem", "--movers", "8"])
            .arg("--tls-dir")
            .arg(w.join("tls-src"))
            .args(&worker_flags);
        procs.0.push(
            reader
                .stderr(std::fs::File::create(w.join(format!("{tool}-src.log"))).map_err(|e| run_err(e.to_string()))?)
                .spawn()
                .map_err(|e| run_err(format!("ferry-worker: {e}")))?,
        );
        std::thread::sleep(Duration::from_secs(2));
        let pids: Vec<u32> = procs.0.iter().map(|c| c.id()).collect();
        let before: f64 = pids.iter().map(|&p| crate::util::process_cpu_seconds(p, true).unwrap_or(0.0)).sum::<f64>() + children_cpu();
        let t0 = Instant::now();
        let mut copy = self.sites.at_src(&bin_dir.join("ferry"));
        copy.args(["copy", "--no-progress", "--json", "--etcd", etcd, "--insecure-etcd", "--source-agents", "onprem", "--destination-agents", "cloud"])
            .args(&copy_flags)
            .arg(&self.o.data)
            .arg(&self.dst);
        let out = copy.stderr(Stdio::inherit()).output().map_err(|e| run_err(format!("ferry copy: {e}")))?;
        let cpu = pids.iter().map(|&p| crate::util::process_cpu_seconds(p, true).unwrap_or(0.0)).sum::<f64>() + children_cpu() - before;
        if !out.status.success() {
            return Err(run_err(format!("{tool}: ferry copy failed: {}", String::from_utf8_lossy(&out.stdout))));
        }
        let run = self.finish(tool, t0, cpu, &format!("fsync+verify {}", if copy_flags.iter().any(|f| f == "--no-fsync") { "off" } else { "on" }));
        drop(procs);
        run
    }

    fn rsync_daemon(&self, tool: &str) -> Result<ToolRun> {
        self.clear_dst()?;
        let w = &self.o.work;
        let conf = w.join("rsyncd.conf");
        std::fs::write(&conf, format!("use chroot = no\nuid = root\ngid = root\n[dst]\npath = {}\nread only = false\n", self.dst.display()))
            .map_err(|e| run_err(e.to_string()))?;
        let addr = self.sites.dst_addr();
        let mut procs = Procs(Vec::new());
        let mut d = self.sites.at_dst(Path::new("/usr/bin/rsync"));
        d.args(["--daemon", "--no-detach", "--port", "8730", "--address", &addr]).arg(format!("--config={}", conf.display()));
        procs.0.push(d.stderr(Stdio::null()).spawn().map_err(|e| run_err(format!("rsync --daemon: {e}")))?);
        wait_port(&format!("{addr}:8730"), &self.sites, true);
        let pid = procs.0[0].id();
        let before = crate::util::process_cpu_seconds(pid, true).unwrap_or(0.0) + children_cpu();
        let t0 = Instant::now();
        let st = self
            .sites
            .at_src(Path::new("/usr/bin/rsync"))
            .args(["-a", "--whole-file"])
            .arg(format!("{}/", self.o.data.display()))
            .arg(format!("rsync://{addr}:8730/dst/"))
            .status()
            .map_err(|e| run_err(e.to_string()))?;
        std::thread::sleep(Duration::from_millis(200)); // let the daemon reap its child
        let cpu = crate::util::process_cpu_seconds(pid, true).unwrap_or(0.0) + children_cpu() - before;
        if !st.success() {
            return Err(run_err(format!("{tool}: rsync failed")));
        }
        self.finish(tool, t0, cpu, "no fsync")
    }

    fn rsync_ssh(&self, tool: &str) -> Result<ToolRun> {
        let sshd = Path::new("/usr/sbin/sshd");
        if !sshd.exists() {
            return Err(run_err("rsync-ssh needs sshd (apt-get install openssh-server)"));
        }
        self.clear_dst()?;
        let w = &self.o.work;
        let (host_key, user_key, auth) = (w.join("ssh_host_ed25519"), w.join("id_ed25519"), w.join("authorized_keys"));
        for k in [&host_key, &user_key] {
            if !k.exists() {
                let st = Command::new("ssh-keygen")
                    .args(["-q", "-t", "ed25519", "-N", "", "-f"])
                    .arg(k)
                    .status()
                    .map_err(|e| run_err(format!("ssh-keygen: {e}")))?;
                if !st.success() {
                    return Err(run_err("ssh-keygen failed"));
                }
            }
        }
        std::fs::copy(user_key.with_extension("pub"), &auth).map_err(|e| run_err(e.to_string()))?;
        std::fs::create_dir_all("/run/sshd").map_err(|e| run_err(e.to_string()))?;
        let addr = self.sites.dst_addr();
        let mut procs = Procs(Vec::new());
        let mut d = self.sites.at_dst(sshd);
        d.args([
            "-D",
            "-e",
            "-p",
            "2222",
            "-o",
            &format!("ListenAddress={addr}"),
            "-o",
            "PermitRootLogin=yes",
            "-o",
            "StrictModes=no",
            "-o",
            "UsePAM=no",
            "-o",
            "PidFile=none",
        ])
        .arg("-h")
        .arg(&host_key)
        .arg("-o")
        .arg(format!("AuthorizedKeysFile={}", auth.display()));
        procs
            .0
            .push(d.stderr(std::fs::File::create(w.join("sshd.log")).map_err(|e| run_err(e.to_string()))?).spawn().map_err(|e| run_err(format!("sshd: {e}")))?);
        wait_port(&format!("{addr}:2222"), &self.sites, true);
        let pid = procs.0[0].id();
        let before = crate::util::process_cpu_seconds(pid, true).unwrap_or(0.0) + children_cpu();
        let t0 = Instant::now();
        let ssh =
            format!("ssh -p 2222 -i {} -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o BatchMode=yes -o LogLevel=ERROR", user_key.display());
        let st = self
            .sites
            .at_src(Path::new("/usr/bin/rsync"))
            .args(["-a", "--whole-file", "-e", &ssh])
            .arg(format!("{}/", self.o.data.display()))
            .arg(format!("root@{addr}:{}/", self.dst.display()))
            .status()
            .map_err(|e| run_err(e.to_string()))?;
        std::thread::sleep(Duration::from_millis(300));
        let cpu = crate::util::process_cpu_seconds(pid, true).unwrap_or(0.0) + children_cpu() - before;
        if !st.success() {
            return Err(run_err(format!("{tool}: rsync over ssh failed (see {})", w.join("sshd.log").display())));
        }
        self.finish(tool, t0, cpu, "no fsync; ssh's default cipher")
    }

    fn tls_tcp(&self, tool: &str) -> Result<ToolRun> {
        self.clear_dst()?;
        let w = &self.o.work;
        let me = std::env::current_exe().map_err(|e| run_err(e.to_string()))?;
        let addr = format!("{}:8740", self.sites.dst_addr());
        let before = children_cpu();
        let mut sink = self.sites.at_dst(&me);
        sink.args(["tls-sink", "--listen", &addr]).arg("--dir").arg(&self.dst).arg("--tls").arg(w.join("tls-dst"));
        let mut sink = sink.spawn().map_err(|e| run_err(e.to_string()))?;
        wait_port(&addr, &self.sites, false);
        let t0 = Instant::now();
        let st = self
            .sites
            .at_src(&me)
            .args(["tls-send", "--connect", &addr])
            .arg("--dir")
            .arg(&self.o.data)
            .arg("--tls")
            .arg(w.join("tls-src"))
            .status()
            .map_err(|e| run_err(e.to_string()))?;
        let sunk = sink.wait().map_err(|e| run_err(e.to_string()))?;
        let cpu = children_cpu() - before;
        if !st.success() || !sunk.success() {
            return Err(run_err(format!("{tool}: the TLS stream failed")));
        }
        self.finish(tool, t0, cpu, "one stream, no fsync")
    }
}

/// Starts etcd (client port `port`, peer port `port + 1`) and a coordinator from `bin_dir` on
/// the source side; returns etcd's client URL. `tag` keeps the data and log names apart.
fn start_control(o: &LinkBenchOptions, sites: &Sites, bin_dir: &Path, port: u16, tag: &str, procs: &mut Procs) -> Result<String> {
    let etcd_url = format!("http://{}:{port}", sites.src_addr());
    let etcd_dir = o.work.join(format!("etcd{tag}"));
    let _ = std::fs::remove_dir_all(&etcd_dir);
    let mut etcd = sites.at_src(Path::new("etcd"));
    let peer = format!("http://{}:{}", sites.src_addr(), port + 1);
    let initial = format!("lb={peer}");
    etcd.args(["--name", "lb", "--listen-client-urls", &etcd_url, "--advertise-client-urls", &etcd_url, "--listen-peer-urls", &peer])
        .args(["--initial-advertise-peer-urls", &peer, "--initial-cluster", &initial, "--log-level", "error"])
        .arg("--data-dir")
        .arg(&etcd_dir);
    procs.0.push(etcd.stdout(Stdio::null()).stderr(Stdio::null()).spawn().map_err(|e| run_err(format!("etcd: {e} (apt-get install etcd-server)")))?);
    std::thread::sleep(Duration::from_secs(2));
    let mut coord = sites.at_src(&bin_dir.join("ferry"));
    // The test bed's etcd listens on the namespaces' bridge: plaintext there is this bench's choice.
    coord.args(["coordinator", "--name", "lb", "--etcd", &etcd_url, "--insecure-etcd"]);
    let log = std::fs::File::create(o.work.join(format!("coordinator{tag}.log"))).map_err(|e| run_err(e.to_string()))?;
    procs.0.push(coord.stderr(log).spawn().map_err(|e| run_err(format!("ferry coordinator: {e}")))?);
    std::thread::sleep(Duration::from_secs(1));
    Ok(etcd_url)
}

pub fn run(o: &LinkBenchOptions) -> Result<Vec<ToolRun>> {
    std::fs::create_dir_all(&o.work).map_err(|e| run_err(e.to_string()))?;
    let (files, bytes) = make_data(o)?;
    crate::util::say(format!(
        "link-bench: {files} files, {:.2} GB; {}",
        bytes as f64 / 1e9,
        o.wan.as_ref().map(|c| format!("WAN {}", c.describe())).unwrap_or_else(|| if o.lan {
            format!("LAN pair (two namespaces, veth, MTU {})", o.lan_mtu)
        } else {
            "loopback".into()
        })
    ));
    // Warm the source into the page cache once, so every tool reads it from memory.
    for (p, _) in crate::tree::regular_files(&o.data) {
        let _ = std::fs::read(p);
    }
    let sites = Sites {
        link: match (&o.wan, o.lan) {
            (Some(_), true) => return Err(Error::usage("--lan and --wan-delay exclude each other (a LAN pair has no emulated delay)")),
            (Some(c), false) => Some(Pair::Wan(WanLink::start(c.clone())?)),
            (None, true) => Some(Pair::Lan(crate::lan::LanPair::start(o.lan_mtu)?)),
            (None, false) => None,
        },
    };
    // Certificates for both agents (and for the TLS reference stream).
    let ca_dir = o.work.join("ca");
    let _ = std::fs::remove_dir_all(&ca_dir);
    ferry_worker::transport::link::pki::init_ca(&ca_dir).map_err(|e| run_err(e.to_string()))?;
    let ca = ferry_worker::transport::link::pki::Ca::load(&ca_dir).map_err(|e| run_err(e.to_string()))?;
    for (name, dir, label) in [("src1", "tls-src", "onprem"), ("dst1", "tls-dst", "cloud")] {
        let _ = std::fs::remove_dir_all(o.work.join(dir));
        ferry_worker::transport::link::pki::Identity::issue(&ca, name, &[label.to_string()], 2)
            .and_then(|id| id.save(&o.work.join(dir)))
            .map_err(|e| run_err(e.to_string()))?;
    }
    // etcd and a coordinator on the source side; a second pair for the baseline build.
    let mut procs = Procs(Vec::new());
    let etcd_url = start_control(o, &sites, &o.bin_dir, 23950, "", &mut procs)?;
    let baseline_etcd = match &o.baseline_bin_dir {
        Some(dir) => Some(start_control(o, &sites, dir, 23960, "-baseline", &mut procs)?),
        None => None,
    };
    let bench = Bench { o, sites, etcd: etcd_url, baseline_etcd, dst: o.work.join("dst"), bytes };
    let machine_cc = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_congestion_control").map(|s| s.trim().to_string()).unwrap_or_else(|_| "bbr".into());
    let mut runs = Vec::new();
    let n = o.tools.len();
    // Round r starts at tool r: every tool takes every position once per `n` rounds.
    let order: Vec<&String> = (0..o.repeat as usize).flat_map(|r| (0..n).map(move |i| &o.tools[(i + r) % n.max(1)])).collect();
    for tool in order {
        let (name, cc) = match tool.rsplit_once('@') {
            Some((n, cc)) => (n, Some(cc)),
            None => (tool.as_str(), None),
        };
        if let Some(cc) = cc {
            bench.sites.set_tcp_cc(cc)?;
        }
        let r = match name {
            n if n.starts_with("ferry") => bench.ferry(n),
            "rsync-daemon" => bench.rsync_daemon(name),
            "rsync-ssh" => bench.rsync_ssh(name),
            "tls-tcp" => bench.tls_tcp(name),
            other => Err(Error::usage(format!(
                "unknown tool {other:?} (ferry[-variant], rsync-daemon, rsync-ssh, tls-tcp; add @cubic or @bbr for TCP congestion control)"
            ))),
        };
        if cc.is_some() {
            // Back to the machine's own default for the next tool.
            let _ = bench.sites.set_tcp_cc(&machine_cc);
        }
        match r {
            Ok(mut run) => {
                run.tool = tool.clone();
                crate::util::say(format!(
                    "  {:<24} {:>8.2} s {:>9.1} MB/s {:>7.2} CPU-s/GB  ({})",
                    run.tool, run.seconds, run.mb_per_s, run.cpu_s_per_gb, run.note
                ));
                runs.push(run);
            }
            Err(e) => crate::util::say(format!("  {tool:<24} failed: {e}")),
        }
    }
    let summary = summarize(&o.tools, &runs);
    if o.repeat > 1 {
        crate::util::say(format!(
            "link-bench medians over {} interleaved rounds (time ratio: the tool's median / ferry's; >1 means ferry is faster):",
            o.repeat
        ));
        for m in &summary {
            crate::util::say(format!(
                "  {:<24} {:>8.2} s (min {:.2}, max {:.2}) {:>9.1} MB/s  ratio {}",
                m.tool,
                m.median_seconds,
                m.min_seconds,
                m.max_seconds,
                m.median_mb_per_s,
                m.vs_ferry.map(|r| format!("{r:.2}")).unwrap_or_else(|| "-".into())
            ));
        }
    }
    if let Some(out) = &o.out {
        let doc = serde_json::json!({ "files": files, "bytes": bytes, "wan": o.wan.as_ref().map(|c| c.describe()), "lan": o.lan, "lan_mtu": o.lan.then_some(o.lan_mtu), "rounds": o.repeat, "runs": runs, "medians": summary });
        std::fs::write(out, serde_json::to_string_pretty(&doc).expect("serializable")).map_err(|e| run_err(e.to_string()))?;
        let bars: Vec<crate::report::Bar> = summary
            .iter()
            .map(|m| crate::report::Bar {
                name: m.tool.clone(),
                median: m.median_seconds,
                min: m.min_seconds,
                max: m.max_seconds,
                ferry: m.tool.starts_with("ferry"),
                failed: false,
            })
            .collect();
        let place = o.wan.as_ref().map(|c| format!("WAN {}", c.describe())).unwrap_or_else(|| {
            if o.lan {
                format!("LAN pair (veth, MTU {})", o.lan_mtu)
            } else {
                "loopback".into()
            }
        });
        let title = format!("link-bench, {place} — median seconds over {} rounds (lower is better)", o.repeat);
        let subtitle = format!("{files} files, {:.2} GB; ferry with fsync and read-back verification", bytes as f64 / 1e9);
        let svg = out.with_extension("svg");
        std::fs::write(&svg, crate::report::render_bars(&title, &subtitle, &bars)).map_err(|e| run_err(format!("{}: {e}", svg.display())))?;
    }
    drop(procs);
    Ok(runs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(tool: &str, seconds: f64) -> ToolRun {
        ToolRun { tool: tool.into(), seconds, mb_per_s: 1000.0 / seconds, cpu_seconds: 0.0, cpu_s_per_gb: 0.0, note: String::new() }
    }

    #[test]
    fn medians_and_ratios_against_ferry() {
        let tools = vec!["ferry".to_string(), "rsync-daemon".to_string(), "absent".to_string()];
        let runs = [run("ferry", 2.0), run("rsync-daemon", 5.0), run("ferry", 4.0), run("rsync-daemon", 3.0), run("ferry", 3.0), run("rsync-daemon", 9.0)];
        let s = summarize(&tools, &runs);
        assert_eq!(s.len(), 2, "a tool with no successful run has no median");
        assert_eq!((s[0].median_seconds, s[0].rounds, s[0].vs_ferry), (3.0, 3, Some(1.0)));
        assert_eq!((s[1].median_seconds, s[1].min_seconds, s[1].max_seconds), (5.0, 3.0, 9.0));
        assert!((s[1].vs_ferry.unwrap() - 5.0 / 3.0).abs() < 1e-9);
    }
}
