//! Small OS helpers: workspace discovery, PATH lookup, UTC timestamps without
//! a date crate, robust tree removal, free space and filesystem type.

use crate::error::{at, Context, Error, Result};
use std::ffi::CString;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// The workspace root: the nearest ancestor of the current directory whose
/// Cargo.toml declares `[workspace]`; failing that, the directory this crate
/// was compiled from (so the binary still works when run from elsewhere).
pub fn workspace_root() -> PathBuf {
    if let Ok(mut dir) = std::env::current_dir() {
        loop {
            let manifest = dir.join("Cargo.toml");
            if fs::read_to_string(&manifest).map(|s| s.lines().any(|l| l.trim() == "[workspace]")).unwrap_or(false) {
                return dir;
            }
            if !dir.pop() {
                break;
            }
        }
    }
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    here.parent().unwrap_or(here).to_path_buf()
}

/// Cargo's target directory for the workspace (honours CARGO_TARGET_DIR).
pub fn target_dir(ws: &Path) -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) if !d.is_empty() => {
            let d = PathBuf::from(d);
            if d.is_absolute() {
                d
            } else {
                ws.join(d)
            }
        }
        _ => ws.join("target"),
    }
}

/// Locate an executable in PATH, like `which`.
pub fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join(name)).find(|p| is_executable(p))
}

pub fn is_executable(p: &Path) -> bool {
    fs::metadata(p).map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0).unwrap_or(false)
}

/// Current UTC time as (`20260102T030405Z`, `2026-01-02T03:04:05Z`).
pub fn utc_timestamp() -> (String, String) {
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
    let (y, mo, d, h, mi, s) = civil_from_unix(secs);
    (format!("{y:04}{mo:02}{d:02}T{h:02}{mi:02}{s:02}Z"), format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z"))
}

/// Unix seconds to a proleptic Gregorian UTC date/time (Howard Hinnant's
/// days-from-civil inverse), to avoid pulling in a date crate for one string.
pub fn civil_from_unix(secs: i64) -> (i64, u32, u32, u32, u32, u32) {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d, (rem / 3600) as u32, ((rem % 3600) / 60) as u32, (rem % 60) as u32)
}

/// Remove a tree if present. Read-only directories (the tricky profile has
/// some) would make a plain `remove_dir_all` fail for non-root users, so on
/// failure we grant the owner rwx on every directory and retry once.
pub fn remove_tree(path: &Path) -> Result<()> {
    match fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::run(format!("{}: {e}", at("stat", path)))),
        Ok(m) if !m.is_dir() => return fs::remove_file(path).ctx(|| at("remove", path)),
        Ok(_) => {}
    }
    if fs::remove_dir_all(path).is_ok() {
        return Ok(());
    }
    make_dirs_writable(path);
    fs::remove_dir_all(path).ctx(|| at("remove tree", path))
}

fn make_dirs_writable(dir: &Path) {
    let Ok(meta) = fs::symlink_metadata(dir) else {
        return;
    };
    if !meta.is_dir() {
        return;
    }
    let mode = meta.permissions().mode();
    if mode & 0o700 != 0o700 {
        let _ = fs::set_permissions(dir, fs::Permissions::from_mode(mode | 0o700));
    }
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd.flatten() {
            make_dirs_writable(&e.path());
        }
    }
}

fn cpath(p: &Path) -> Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| Error::usage(format!("path contains a NUL byte: {p:?}")))
}

/// Bytes available to an unprivileged user on the filesystem holding `p`.
pub fn free_bytes(p: &Path) -> Result<u64> {
    let c = cpath(p)?;
    // SAFETY: `c` is a valid NUL-terminated path and `st` is plain old data
    // that statvfs fully initialises on success.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(Error::run(format!("{}: {}", at("statvfs", p), io::Error::last_os_error())));
    }
    Ok(st.f_bavail as u64 * st.f_frsize as u64)
}

/// Filesystem type name of `p` (for the report: results on tmpfs and on ext4
/// are not comparable).
pub fn fs_type(p: &Path) -> Option<String> {
    let c = cpath(p).ok()?;
    // SAFETY: as above, statfs fills a plain-old-data struct.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    #[allow(clippy::unnecessary_cast)]
    let magic = st.f_type as i64 as u64 & 0xFFFF_FFFF;
    Some(
        match magic {
            0xEF53 => "ext2/3/4",
            0x5846_5342 => "xfs",
            0x9123_683E => "btrfs",
            0x0102_1994 => "tmpfs",
            0x794C_7630 => "overlayfs",
            0x2FC1_2FC1 => "zfs",
            0x6969 => "nfs",
            0x6573_5546 => "fuse",
            0xF2F5_2010 => "f2fs",
            _ => return Some(format!("unknown (0x{magic:x})")),
        }
        .to_string(),
    )
}

/// `uname -sr` equivalent.
pub fn kernel() -> Option<String> {
    // SAFETY: utsname is plain old data filled by uname on success.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    if unsafe { libc::uname(&mut u) } != 0 {
        return None;
    }
    let field = |f: &[libc::c_char]| {
        let bytes: Vec<u8> = f.iter().take_while(|&&c| c != 0).map(|&c| c as u8).collect();
        String::from_utf8_lossy(&bytes).into_owned()
    };
    Some(format!("{} {}", field(&u.sysname), field(&u.release)))
}

/// Print a line to stdout, ignoring a closed pipe (`ferry-load ... | head`)
/// instead of panicking like `println!` would.
pub fn say(line: impl AsRef<str>) {
    use std::io::Write;
    let mut out = io::stdout().lock();
    let _ = writeln!(out, "{}", line.as_ref());
}

/// utime+stime of a live process in seconds, plus those of its reaped children when asked
/// (`None` once it is gone).
pub fn process_cpu_seconds(pid: u32, with_reaped_children: bool) -> Option<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name (which may contain spaces): state is 0,
    // utime 11, stime 12, cutime 13, cstime 14.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let fields: &[usize] = if with_reaped_children { &[11, 12, 13, 14] } else { &[11, 12] };
    let ticks = fields.iter().map(|&i| f.get(i)?.parse::<u64>().ok()).sum::<Option<u64>>()?;
    // SAFETY: sysconf has no memory-safety preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (hz > 0).then(|| ticks as f64 / hz as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_unix(0), (1970, 1, 1, 0, 0, 0));
        assert_eq!(civil_from_unix(951_782_400), (2000, 2, 29, 0, 0, 0));
        assert_eq!(civil_from_unix(1_700_000_000), (2023, 11, 14, 22, 13, 20));
        assert_eq!(civil_from_unix(-1), (1969, 12, 31, 23, 59, 59));
    }

    #[test]
    fn remove_tree_handles_readonly_dirs_and_missing() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("a/b");
        fs::create_dir_all(&d).unwrap();
        fs::write(d.join("f"), b"x").unwrap();
        fs::set_permissions(&d, fs::Permissions::from_mode(0o555)).unwrap();
        remove_tree(&t.path().join("a")).unwrap();
        assert!(!t.path().join("a").exists());
        remove_tree(&t.path().join("missing")).unwrap();
    }
}
