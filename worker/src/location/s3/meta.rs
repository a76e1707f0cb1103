//! POSIX metadata as S3 user metadata, in the convention of DataSync and Storage Gateway file
//! shares, so objects written by either tool read back the same way:
//!
//! | key (after `x-amz-meta-`) | value                          |
//! |---------------------------|--------------------------------|
//! | `file-mtime`              | nanoseconds since the epoch, `1700000000123456789ns` |
//! | `file-atime`              | same                           |
//! | `file-owner`              | uid, decimal                   |
//! | `file-group`              | gid, decimal                   |
//! | `file-permissions`        | the full `st_mode` in octal with a leading 0, `0100644`; the file-type bits tell a symlink (`0120777`, the object body is the target) and a directory marker (`0040755`, key ending in `/`) |
//!
//! Objects written by other tools have none of these; rclone's `mtime` (seconds with a
//! fraction) is read as a fallback, and otherwise the object's Last-Modified time is used.

use std::collections::HashMap;

use ferry_common::error::{ErrorKind, FerryError};
use ferry_common::model::{EntryKind, Timestamp};

use crate::location::Meta;

pub const MTIME: &str = "file-mtime";
pub const ATIME: &str = "file-atime";
pub const OWNER: &str = "file-owner";
pub const GROUP: &str = "file-group";
pub const PERMISSIONS: &str = "file-permissions";
const RCLONE_MTIME: &str = "mtime";

fn format_time(t: Timestamp) -> String {
    format!("{}ns", t.sec as i128 * 1_000_000_000 + t.nsec as i128)
}

fn parse_time(s: &str) -> Option<Timestamp> {
    let ns: i128 = s.strip_suffix("ns")?.parse().ok()?;
    let sec = ns.div_euclid(1_000_000_000);
    Some(Timestamp { sec: i64::try_from(sec).ok()?, nsec: ns.rem_euclid(1_000_000_000) as u32 })
}

fn parse_rclone_time(s: &str) -> Option<Timestamp> {
    let (sec, frac) = s.split_once('.').unwrap_or((s, ""));
    let sec: i64 = sec.parse().ok()?;
    let digits: String = frac.chars().take(9).collect();
    let nsec = if digits.is_empty() { 0 } else { format!("{digits:0<9}").parse().ok()? };
    Some(Timestamp { sec, nsec })
}

/// The user metadata for an entry.
pub fn to_user_metadata(meta: &Meta, kind: EntryKind) -> HashMap<String, String> {
    let mut m = HashMap::new();
    m.insert(MTIME.to_string(), format_time(meta.mtime));
    if let Some(a) = meta.atime {
        m.insert(ATIME.to_string(), format_time(a));
    }
    if let Some(uid) = meta.uid {
        m.insert(OWNER.to_string(), uid.to_string());
    }
    if let Some(gid) = meta.gid {
        m.insert(GROUP.to_string(), gid.to_string());
    }
    let type_bits = match kind {
        EntryKind::Dir => libc::S_IFDIR,
        EntryKind::Symlink => libc::S_IFLNK,
        _ => libc::S_IFREG,
    };
    let perm = meta.mode.map(|m| m & 0o7777).unwrap_or(match kind {
        EntryKind::Dir => 0o755,
        EntryKind::Symlink => 0o777,
        _ => 0o644,
    });
    m.insert(PERMISSIONS.to_string(), format!("0{:o}", type_bits | perm));
    m
}

/// Longest symlink target a "symlink" object may hold (PATH_MAX): its body is read whole into
/// memory, and whoever writes to the bucket chooses its size.
pub const MAX_LINK_TARGET: u64 = 4096;

/// Refuses a symlink object too large to be a target, before it is read.
pub fn check_link_size(what: &str, size: u64) -> Result<(), FerryError> {
    if size > MAX_LINK_TARGET {
        return Err(FerryError::new(
            ErrorKind::Unsupported,
            format!("{what} is marked a symlink but holds {size} bytes, more than a symlink target may ({MAX_LINK_TARGET}); fix its file-permissions metadata, or exclude it"),
        ));
    }
    Ok(())
}

/// Fills `meta` from user metadata; `last_modified` is the fallback mtime. `is_marker` is a
/// key ending in `/`.
///
/// Whoever can write to the bucket writes this metadata, so none of it is trusted further
/// than the execution asks: owner and group, and with them the set-user-ID and set-group-ID
/// bits, reach a destination only when owners are preserved (Uid/Gid not NONE); the writer
/// drops them otherwise (`engine::write`), whatever the source.
pub fn from_user_metadata(user: Option<&HashMap<String, String>>, last_modified: Timestamp, is_marker: bool, meta: &mut Meta) {
    let get = |k: &str| user.and_then(|u| u.get(k)).map(|s| s.trim());
    meta.mtime = get(MTIME).and_then(parse_time).or_else(|| get(RCLONE_MTIME).and_then(parse_rclone_time)).unwrap_or(last_modified);
    meta.atime = get(ATIME).and_then(parse_time);
    meta.uid = get(OWNER).and_then(|s| s.parse().ok());
    meta.gid = get(GROUP).and_then(|s| s.parse().ok());
    meta.mode = get(PERMISSIONS).and_then(|s| u32::from_str_radix(s, 8).ok());
    meta.kind = Some(if is_marker {
        EntryKind::Dir
    } else {
        match meta.mode.map(|m| m & libc::S_IFMT) {
            Some(libc::S_IFLNK) => EntryKind::Symlink,
            _ => EntryKind::File,
        }
    });
    if let (Some(mode), Some(kind)) = (meta.mode, meta.kind) {
        // A mode whose type bits disagree with what the object is (a marker with file bits)
        // would make the restored entry lie about itself: keep only the permission bits.
        let want = match kind {
            EntryKind::Dir => libc::S_IFDIR,
            EntryKind::Symlink => libc::S_IFLNK,
            _ => libc::S_IFREG,
        };
        meta.mode = Some(want | (mode & 0o7777));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_symlink_object_larger_than_path_max_is_refused_before_it_is_read() {
        assert!(check_link_size("s3://b/link", MAX_LINK_TARGET).is_ok());
        let e = check_link_size("s3://b/link", 5 << 30).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Unsupported);
        assert!(e.message.contains("s3://b/link") && e.message.contains("4096"), "{}", e.message);
    }

    #[test]
    fn metadata_round_trips_including_negative_and_nanosecond_times() {
        for (kind, mode) in [(EntryKind::File, 0o100640), (EntryKind::Symlink, 0o120777), (EntryKind::Dir, 0o40700)] {
            let meta = Meta {
                kind: Some(kind),
                mtime: Timestamp { sec: -5, nsec: 123_456_789 },
                atime: Some(Timestamp { sec: 1_700_000_000, nsec: 1 }),
                mode: Some(mode),
                uid: Some(1234),
                gid: Some(0),
                ..Meta::default()
            };
            let user = to_user_metadata(&meta, kind);
            let mut back = Meta::default();
            from_user_metadata(Some(&user), Timestamp::default(), kind == EntryKind::Dir, &mut back);
            assert_eq!((back.kind, back.mtime, back.atime, back.mode, back.uid, back.gid), (meta.kind, meta.mtime, meta.atime, meta.mode, meta.uid, meta.gid));
        }
    }

    #[test]
    fn foreign_objects_fall_back_to_rclone_mtime_then_last_modified() {
        let lm = Timestamp { sec: 99, nsec: 0 };
        let mut m = Meta::default();
        from_user_metadata(None, lm, false, &mut m);
        assert_eq!((m.mtime, m.kind, m.mode), (lm, Some(EntryKind::File), None));
        let rclone: HashMap<_, _> = [("mtime".to_string(), "1700000000.5".to_string())].into();
        from_user_metadata(Some(&rclone), lm, false, &mut m);
        assert_eq!(m.mtime, Timestamp { sec: 1_700_000_000, nsec: 500_000_000 });
        let junk: HashMap<_, _> = [(MTIME.to_string(), "soon".to_string()), (PERMISSIONS.to_string(), "rwx".to_string())].into();
        from_user_metadata(Some(&junk), lm, false, &mut m);
        assert_eq!((m.mtime, m.mode), (lm, None));
    }
}
