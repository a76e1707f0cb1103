//! `ferry-load nfs-bench`: ferry's user-space NFS clients (NFSv3, and NFSv4.1 as EFS needs)
//! against the best peer that runs on this kind of machine, on the same small-file data, in one
//! run.
//!
//! This VM's kernel has no NFS client, so no kernel mount (and no cp, rsync or fpsync on one)
//! can take part; rclone has no NFS backend. The peer is libnfs's `nfs-cp` (Debian's
//! libnfs-utils), one process per file driven by `xargs -P`, which is what a user without a
//! mount has. The server is a private nfs-ganesha on loopback exporting a directory on the same
//! disk as the data.
//!
//! Tools (each run into an emptied destination, checked against the source by a content
//! digest before its time counts):
//! - `ferry-to-nfs`: `ferry copy DATA nfs://…` (COMMIT and read-back verification on, its
//!   defaults);
//! - `nfs-cp-to-nfs-pN`: `xargs -P N nfs-cp FILE nfs://…/FILE`. nfs-cp cannot make
//!   directories, so the peer's directories are made on the server's disk first, untimed;
//! - `ferry-from-nfs`, `nfs-cp-from-nfs-pN`: the other direction, from a copy of the data in
//!   the export into local directories (the peer's made first, untimed);
//! - `ferry41-to-nfs`, `ferry41-from-nfs`: ferry over NFSv4.1 (`?vers=4.1`) to the same
//!   server; libnfs's nfs-cp speaks only NFSv3 here, so the peers are the same.
//!
//! nfs-cp keeps no times or modes and neither commits nor reads back; ferry does all three.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use crate::error::{Error, Result};
use crate::linkbench::{summarize, ToolRun};

#[derive(Clone, Debug)]
pub struct NfsBenchOptions {
    /// The source tree (generated when missing).
    pub data: PathBuf,
    pub files: u64,
    pub dirs: u64,
    /// Where the server's export and the local destinations live.
    pub work: PathBuf,
    pub bin_dir: PathBuf,
    pub tools: Vec<String>,
    pub repeat: u32,
    pub out: Option<PathBuf>,
}

/// Ports of the private server (the shared test server uses 12049/12048).
const NFS_PORT: u16 = 12349;
const MOUNT_PORT: u16 = 12348;

fn run_err(msg: impl Into<String>) -> Error {
    Error::run(msg.into())
}

struct Bench<'a> {
    o: &'a NfsBenchOptions,
    server: ferry_common::testing::NfsServer,
    /// Relative paths of every file and directory of the data, sorted.
    files: Vec<PathBuf>,
    dirs: Vec<PathBuf>,
    bytes: u64,
    digest: u64,
    /// Runs so far: every destination gets a name of its own, because ganesha caches names
    /// and a directory removed behind its back (on its disk) would answer with a stale handle.
    runs: std::cell::Cell<u32>,
}

impl Bench<'_> {
    fn uri(&self, rel: &str) -> String {
        self.server.uri(rel)
    }

    /// The destination of a tool's run: a new name (see `runs`), its path on disk and its
    /// name in the export. The previous run's destination is removed first.
    fn fresh(&self, to_nfs: bool) -> Result<(PathBuf, String)> {
        let n = self.runs.get();
        self.runs.set(n + 1);
        if n > 0 {
            let old = format!("run{}", n - 1);
            crate::util::remove_tree(&self.server.export.join(&old))?;
            crate::util::remove_tree(&self.o.work.join("local").join(&old))?;
        }
        let name = format!("run{n}");
        let dir = if to_nfs { self.server.export.join(&name) } else { self.o.work.join("local").join(&name) };
        crate::util::remove_tree(&dir)?;
        Ok((dir, name))
    }

    fn check(&self, tool: &str, dst: &Path) -> Result<()> {
        let (st, h) = crate::tree::digest(dst)?;
        if h != self.digest {
            return Err(run_err(format!("{tool}: the copy differs from the source ({} files, {} bytes at {})", st.files, st.bytes, dst.display())));
        }
        Ok(())
    }

    fn finish(&self, tool: &str, t0: Instant, dst: &Path, note: &str) -> Result<ToolRun> {
        let seconds = t0.elapsed().as_secs_f64();
        self.check(tool, dst)?;
        Ok(ToolRun {
            tool: tool.into(),
            seconds,
            mb_per_s: self.bytes as f64 / 1e6 / seconds,
            cpu_seconds: 0.0,
            cpu_s_per_gb: 0.0,
            note: format!("{:.0} files/s; {note}", self.files.len() as f64 / seconds),
        })
    }

    fn ferry(&self, tool: &str, to_nfs: bool, v41: bool) -> Result<ToolRun> {
        let (dst, name) = self.fresh(to_nfs)?;
        let uri = |rel: &str| if v41 { self.server.uri41(rel) } else { self.uri(rel) };
        let (src, target) = if to_nfs { (self.o.data.as_os_str().to_owned(), uri(&name).into()) } else { (uri("source").into(), dst.as_os_str().to_owned()) };
        let t0 = Instant::now();
        let out = Command::new(self.o.bin_dir.join("ferry"))
            .arg("copy")
            .arg(&src)
            .arg(&target)
            .arg("--no-progress")
            .stdout(Stdio::null())
            .output()
            .map_err(|e| run_err(format!("ferry: {e}")))?;
        if !out.status.success() {
            return Err(run_err(format!("{tool}: ferry failed: {}", String::from_utf8_lossy(&out.stderr).trim())));
        }
        self.finish(tool, t0, &dst, if to_nfs { "COMMIT or FILE_SYNC, and read-back" } else { "fsync and read-back" })
    }

    fn nfs_cp(&self, tool: &str, to_nfs: bool, parallel: usize) -> Result<ToolRun> {
        let (dst, name) = self.fresh(to_nfs)?;
        std::fs::create_dir_all(&dst).map_err(|e| run_err(e.to_string()))?;
        for d in &self.dirs {
            std::fs::create_dir_all(dst.join(d)).map_err(|e| run_err(e.to_string()))?;
        }
        let (_, query) = self.uri("x").split_once('?').map(|(a, b)| (a.to_string(), b.to_string())).expect("the URI has options");
        let base = self.uri("").split_once('?').map(|(a, _)| a.trim_end_matches('/').to_string()).expect("the URI has options");
        // One line per file: `SRC DST`, both without spaces (the generator's names have none).
        let mut list = String::new();
        for f in &self.files {
            let f = f.display();
            if to_nfs {
                list.push_str(&format!("{}/{f} {base}/{name}/{f}?{query}\n", self.o.data.display()));
            } else {
                list.push_str(&format!("{base}/source/{f}?{query} {}/{f}\n", dst.display()));
            }
        }
        let t0 = Instant::now();
        let mut child = Command::new("xargs")
            .args(["-P", &parallel.to_string(), "-n", "2", "nfs-cp"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| run_err(format!("xargs: {e}")))?;
        {
            use std::io::Write;
            let mut stdin = child.stdin.take().expect("piped");
            stdin.write_all(list.as_bytes()).map_err(|e| run_err(e.to_string()))?;
        }
        let out = child.wait_with_output().map_err(|e| run_err(e.to_string()))?;
        if !out.status.success() {
            return Err(run_err(format!("{tool}: nfs-cp failed: {}", String::from_utf8_lossy(&out.stderr).lines().next().unwrap_or(""))));
        }
        self.finish(tool, t0, &dst, &format!("{parallel} nfs-cp processes at a time, one per file"))
    }
}

fn list_tree(root: &Path) -> Result<(Vec<PathBuf>, Vec<PathBuf>)> {
    let (mut files, mut dirs) = (Vec::new(), Vec::new());
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        for e in std::fs::read_dir(root.join(&rel)).map_err(|e| run_err(format!("{}: {e}", root.join(&rel).display())))? {
            let e = e.map_err(|e| run_err(e.to_string()))?;
            let r = rel.join(e.file_name());
            if e.file_type().map_err(|e| run_err(e.to_string()))?.is_dir() {
                dirs.push(r.clone());
                stack.push(r);
            } else {
                files.push(r);
            }
        }
    }
    files.sort();
    dirs.sort();
    Ok((files, dirs))
}

pub fn run(o: &NfsBenchOptions) -> Result<Vec<ToolRun>> {
    if crate::util::find_in_path("nfs-cp").is_none() || crate::util::find_in_path("ganesha.nfsd").is_none() {
        return Err(Error::usage("nfs-bench needs nfs-ganesha, nfs-ganesha-vfs, rpcbind and libnfs-utils (apt-get install them)"));
    }
    std::fs::create_dir_all(&o.work).map_err(|e| run_err(e.to_string()))?;
    if !o.data.is_dir() {
        let spec = crate::gen::DatasetSpec::resolve(
            crate::gen::Profile::Small,
            &crate::gen::ShapeOptions { files: Some(o.files), dirs: Some(o.dirs), ..Default::default() },
        )?;
        crate::gen::generate(&spec, 42, &o.data, &crate::gen::GenConfig { sync: true, ..Default::default() })?;
    }
    let (files, dirs) = list_tree(&o.data)?;
    let (st, digest) = crate::tree::digest(&o.data)?;
    let server = ferry_common::testing::NfsServer::private_at(o.work.join("server"), NFS_PORT, MOUNT_PORT)
        .ok_or_else(|| Error::usage("nfs-ganesha is not installed (apt-get install nfs-ganesha nfs-ganesha-vfs rpcbind)"))?;
    // The from-NFS source: the data, in the export, put there on the server's disk.
    let source = server.export.join("source");
    crate::util::remove_tree(&source)?;
    let cp = Command::new("cp").arg("-a").arg(&o.data).arg(&source).status().map_err(|e| run_err(e.to_string()))?;
    if !cp.success() {
        return Err(run_err("cp -a of the data into the export failed"));
    }
    crate::util::say(format!(
        "nfs-bench: {} files in {} directories, {:.1} MB; nfs-ganesha (VFS, NFSv3 and NFSv4.1) on loopback at {}",
        files.len(),
        dirs.len(),
        st.bytes as f64 / 1e6,
        server.export.display()
    ));
    let bench = Bench { o, server, files, dirs, bytes: st.bytes, digest, runs: std::cell::Cell::new(0) };
    let mut runs = Vec::new();
    let n = o.tools.len();
    let order: Vec<&String> = (0..o.repeat as usize).flat_map(|r| (0..n).map(move |i| &o.tools[(i + r) % n.max(1)])).collect();
    for tool in order {
        let r = match tool.as_str() {
            "ferry-to-nfs" => bench.ferry(tool, true, false),
            "ferry-from-nfs" => bench.ferry(tool, false, false),
            "ferry41-to-nfs" => bench.ferry(tool, true, true),
            "ferry41-from-nfs" => bench.ferry(tool, false, true),
            t if t.starts_with("nfs-cp-to-nfs-p") => match t["nfs-cp-to-nfs-p".len()..].parse() {
                Ok(p) => bench.nfs_cp(tool, true, p),
                Err(_) => Err(Error::usage(format!("{t}: give the parallelism as a number"))),
            },
            t if t.starts_with("nfs-cp-from-nfs-p") => match t["nfs-cp-from-nfs-p".len()..].parse() {
                Ok(p) => bench.nfs_cp(tool, false, p),
                Err(_) => Err(Error::usage(format!("{t}: give the parallelism as a number"))),
            },
            other => Err(Error::usage(format!(
                "unknown tool {other:?} (ferry-to-nfs, ferry-from-nfs, ferry41-to-nfs, ferry41-from-nfs, nfs-cp-to-nfs-pN, nfs-cp-from-nfs-pN)"
            ))),
        };
        match r {
            Ok(run) => {
                crate::util::say(format!("  {:<24} {:>8.2} s {:>9.1} MB/s  ({})", run.tool, run.seconds, run.mb_per_s, run.note));
                runs.push(run);
            }
            Err(e) => crate::util::say(format!("  {tool:<24} failed: {e}")),
        }
    }
    // Ratios within each direction: the peer's median time over ferry's (>1: ferry is faster).
    let medians = summarize(&o.tools, &runs);
    let median_of = |t: &str| medians.iter().find(|m| m.tool == t).map(|m| m.median_seconds);
    let mut ratios = Vec::new();
    crate::util::say(format!("nfs-bench medians over {} interleaved rounds (ratio: the peer's median / ferry's; >1 means ferry is faster):", o.repeat));
    for m in &medians {
        let ferry = if m.tool.contains("to-nfs") { median_of("ferry-to-nfs") } else { median_of("ferry-from-nfs") };
        let ratio = ferry.filter(|f| *f > 0.0 && !m.tool.starts_with("ferry")).map(|f| m.median_seconds / f);
        crate::util::say(format!(
            "  {:<24} {:>8.2} s (min {:.2}, max {:.2}) {:>9.1} MB/s  ratio {}",
            m.tool,
            m.median_seconds,
            m.min_seconds,
            m.max_seconds,
            m.median_mb_per_s,
            ratio.map(|r| format!("{r:.2}")).unwrap_or_else(|| "-".into())
        ));
        ratios.push(serde_json::json!({ "tool": m.tool, "vs_ferry_same_direction": ratio }));
    }
    // NFSv4.1 against the best (fastest) peer of its direction.
    for (ferry41, dir) in [("ferry41-to-nfs", "to-nfs"), ("ferry41-from-nfs", "from-nfs")] {
        let best_peer = medians.iter().filter(|m| m.tool.starts_with("nfs-cp") && m.tool.contains(dir)).map(|m| m.median_seconds).reduce(f64::min);
        if let (Some(f), Some(peer)) = (median_of(ferry41), best_peer) {
            let ratio = peer / f;
            crate::util::say(format!("  {ferry41}: the best peer's median / ferry over NFSv4.1 = {ratio:.2}"));
            ratios.push(serde_json::json!({ "tool": ferry41, "best_peer_vs_ferry41": ratio }));
        }
    }
    if let Some(out) = &o.out {
        let doc = serde_json::json!({ "files": bench.files.len(), "dirs": bench.dirs.len(), "bytes": bench.bytes, "rounds": o.repeat, "runs": runs, "medians": medians, "ratios": ratios });
        std::fs::write(out, serde_json::to_string_pretty(&doc).expect("serializable")).map_err(|e| run_err(format!("{}: {e}", out.display())))?;
    }
    Ok(runs)
}
