//! Walking a tree: counts for sanity checks, a content digest for determinism
//! checks, and a read-everything pass to warm the page cache before timing.
//!
//! Symlinks are never followed (the tricky profile has loops), and only
//! regular files are opened (opening a FIFO for reading would block).

use crate::error::{at, Context, Result};
use serde::{Deserialize, Serialize};
use std::fs::{self, File};
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// Entry counts below (not including) the root.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TreeStats {
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    /// FIFOs, sockets, devices.
    pub other: u64,
    /// Sum of regular-file sizes (apparent size, holes included).
    pub bytes: u64,
}

/// 64-bit FNV-1a. Not cryptographic: it only has to notice that two trees
/// generated from the same seed differ, and it is dependency-free and stable
/// across Rust releases (unlike `DefaultHasher`).
#[derive(Clone, Debug)]
pub struct Fnv64(u64);

impl Default for Fnv64 {
    fn default() -> Self {
        Fnv64(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv64 {
    const PRIME: u64 = 0x0000_0100_0000_01b3;

    pub fn bytes(&mut self, b: &[u8]) {
        for &x in b {
            self.0 = (self.0 ^ u64::from(x)).wrapping_mul(Self::PRIME);
        }
    }

    pub fn u64(&mut self, v: u64) {
        self.bytes(&v.to_le_bytes());
    }

    /// Content hashing a word at a time (8x fewer multiplies than `bytes`),
    /// so digesting the 2 GiB large profile is not dominated by hashing.
    pub fn words(&mut self, b: &[u8]) {
        let mut it = b.chunks_exact(8);
        for w in &mut it {
            let v = u64::from_le_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]]);
            self.0 = (self.0 ^ v).wrapping_mul(Self::PRIME).rotate_left(29);
        }
        self.bytes(it.remainder());
    }

    pub fn finish(&self) -> u64 {
        self.0
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Count,
    Digest,
    Warm,
}

/// Count entries (cheap: metadata only).
pub fn scan(root: &Path) -> Result<TreeStats> {
    let mut st = TreeStats::default();
    walk(root, root, Mode::Count, &mut st, &mut Fnv64::default(), &mut Vec::new())?;
    Ok(st)
}

/// Read every regular file once so the timed runs all start from a warm page
/// cache (otherwise whichever tool goes first pays for the cold reads).
pub fn warm(root: &Path) -> Result<TreeStats> {
    let mut st = TreeStats::default();
    let mut buf = vec![0u8; 1 << 20];
    walk(root, root, Mode::Warm, &mut st, &mut Fnv64::default(), &mut buf)?;
    Ok(st)
}

/// Counts plus a digest over names, entry kinds, sizes, symlink targets and
/// file contents, visited in sorted byte order. Modes and timestamps are left
/// out on purpose: umask and generation time differ between otherwise
/// identical trees.
pub fn digest(root: &Path) -> Result<(TreeStats, u64)> {
    let mut st = TreeStats::default();
    let mut h = Fnv64::default();
    let mut buf = vec![0u8; 1 << 20];
    walk(root, root, Mode::Digest, &mut st, &mut h, &mut buf)?;
    Ok((st, h.finish()))
}

fn walk(root: &Path, dir: &Path, mode: Mode, st: &mut TreeStats, h: &mut Fnv64, buf: &mut Vec<u8>) -> Result<()> {
    let mut entries: Vec<fs::DirEntry> =
        fs::read_dir(dir).ctx(|| at("read directory", dir))?.collect::<std::io::Result<_>>().ctx(|| at("read directory", dir))?;
    if mode == Mode::Digest {
        entries.sort_by(|a, b| a.file_name().as_bytes().cmp(b.file_name().as_bytes()));
    }
    for e in entries {
        let path = e.path();
        let meta = fs::symlink_metadata(&path).ctx(|| at("stat", &path))?;
        let ft = meta.file_type();
        if mode == Mode::Digest {
            let rel = path.strip_prefix(root).unwrap_or(&path);
            h.bytes(rel.as_os_str().as_bytes());
            h.bytes(&[0]);
        }
        if ft.is_dir() {
            st.dirs += 1;
            if mode == Mode::Digest {
                h.bytes(b"d");
            }
            walk(root, &path, mode, st, h, buf)?;
        } else if ft.is_symlink() {
            st.symlinks += 1;
            if mode == Mode::Digest {
                let target = fs::read_link(&path).ctx(|| at("readlink", &path))?;
                h.bytes(b"l");
                h.bytes(target.as_os_str().as_bytes());
                h.bytes(&[0]);
            }
        } else if ft.is_file() {
            st.files += 1;
            st.bytes += meta.len();
            match mode {
                Mode::Count => {}
                Mode::Warm => {
                    read_file(&path, buf, |_| {})?;
                }
                Mode::Digest => {
                    h.bytes(b"f");
                    h.u64(meta.len());
                    let mut fh = Fnv64::default();
                    read_file(&path, buf, |chunk| fh.words(chunk))?;
                    h.u64(fh.finish());
                }
            }
        } else {
            st.other += 1;
            if mode == Mode::Digest {
                h.bytes(b"o");
            }
        }
    }
    Ok(())
}

/// Read a file in full-buffer chunks (short reads are topped up) so the
/// chunk boundaries seen by the hasher depend only on the content.
fn read_file(path: &Path, buf: &mut [u8], mut each: impl FnMut(&[u8])) -> Result<()> {
    let mut f = File::open(path).ctx(|| at("open", path))?;
    loop {
        let mut n = 0;
        while n < buf.len() {
            match f.read(&mut buf[n..]) {
                Ok(0) => break,
                Ok(r) => n += r,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(crate::Error::run(format!("{}: {e}", at("read", path)))),
            }
        }
        if n == 0 {
            return Ok(());
        }
        each(&buf[..n]);
        if n < buf.len() {
            return Ok(());
        }
    }
}

/// Every regular file below `root` with its size, sorted by path (unreadable directories are
/// skipped): the list the link bench sends and the chaos check expects in the report.
pub fn regular_files(root: &Path) -> Vec<(PathBuf, u64)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let Ok(m) = e.metadata() else { continue };
            if m.is_dir() {
                stack.push(e.path());
            } else if m.is_file() {
                out.push((e.path(), m.len()));
            }
        }
    }
    out.sort();
    out
}
