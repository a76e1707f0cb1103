//! The one rule for "does the destination already hold this?", and the one rule for "how do
//! these two entries differ?". Pure functions of the two sides' metadata and the options, so
//! the scan, the writer and verification all decide the same way, and tests need no I/O.

use ferry_common::model::{EntryKind, Options, OverwriteMode, TransferMode};

use crate::location::{Capabilities, Meta};

/// The options that bear on the decision.
#[derive(Clone, Copy, Debug)]
pub struct Rules {
    /// TransferMode ALL: copy whatever exists.
    pub all: bool,
    /// OverwriteMode NEVER: leave whatever exists.
    pub never_overwrite: bool,
    /// Compare content by CRC32C instead of trusting size and mtime.
    pub checksum: bool,
    /// Owner and group must match (they are preserved, and the destination can set them).
    pub owner: bool,
    /// The destination keeps a symlink's own times: without it, a symlink with the right
    /// target is not made again for its time alone (it would be on every run).
    pub symlink_times: bool,
}

impl Rules {
    pub fn new(opts: &Options, owner: bool, dst: &Capabilities) -> Rules {
        Rules {
            all: opts.transfer_mode == TransferMode::All,
            never_overwrite: opts.overwrite == OverwriteMode::Never,
            checksum: opts.checksum,
            owner,
            symlink_times: dst.symlink_times,
        }
    }

    /// Whether the two entries' times count as the same.
    fn same_time(&self, src: &Meta, dst: &Meta) -> bool {
        src.mtime == dst.mtime || (src.kind() == EntryKind::Symlink && !self.symlink_times)
    }
}

/// What to do with an entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Copy,
    /// The destination holds it: skip, for this reason.
    Skip(&'static str),
    /// Same size: compare content by CRC32C, then metadata.
    CompareContent,
    /// The destination's metadata is not known well enough: `stat` it and decide again.
    NeedMeta,
}

/// Whether the destination entry `dst` holds the source entry `src` already. Each comes with
/// whether its metadata is complete, or only what an object listing carries (size and the
/// store's own time).
pub fn verdict((src, src_complete): (&Meta, bool), dst: Option<(&Meta, bool)>, rules: Rules) -> Verdict {
    let Some((d, dst_complete)) = dst else {
        return Verdict::Copy;
    };
    let complete = src_complete && dst_complete;
    if rules.never_overwrite {
        return Verdict::Skip("exists at the destination (OverwriteMode NEVER)");
    }
    if rules.all || (src.kind() == EntryKind::Dir) != (d.kind() == EntryKind::Dir) {
        return Verdict::Copy;
    }
    if !complete {
        // A listing knows directories and object sizes; a symlink lists as an object, and
        // an object's listed time is the store's, not the file's.
        return if src.kind() == EntryKind::File && d.kind() == EntryKind::File && d.size != src.size { Verdict::Copy } else { Verdict::NeedMeta };
    }
    if src.kind() != d.kind() {
        return Verdict::Copy;
    }
    let same_content = match src.kind() {
        EntryKind::File if src.size != d.size => return Verdict::Copy,
        EntryKind::File if rules.checksum => return Verdict::CompareContent,
        EntryKind::File => true,
        EntryKind::Symlink => match (&src.link_target, &d.link_target) {
            (Some(a), Some(b)) => a == b,
            _ => return Verdict::NeedMeta,
        },
        EntryKind::CharDev | EntryKind::BlockDev => src.rdev == d.rdev,
        _ => true,
    };
    if same_content && rules.same_time(src, d) && same_meta(src, d, rules.owner) {
        Verdict::Skip(if rules.checksum { "unchanged" } else { "unchanged (size and mtime)" })
    } else {
        Verdict::Copy
    }
}

/// After a content comparison: whether the content was the same, and whether the metadata
/// still needs refreshing.
pub fn after_content(src: &Meta, dst: &Meta, same_crc: bool, rules: Rules) -> Verdict {
    match same_crc {
        false => Verdict::Copy,
        true if src.mtime == dst.mtime && same_meta(src, dst, rules.owner) => Verdict::Skip("unchanged (CRC32C)"),
        // Same bytes, other metadata: the caller refreshes it in place where it can.
        true => Verdict::CompareContent,
    }
}

/// Permissions and (when they matter) owner agree, where both sides know them. A symlink has
/// no permissions of its own.
fn same_meta(a: &Meta, b: &Meta, owner: bool) -> bool {
    let perm_same = a.kind() == EntryKind::Symlink || a.perm().is_none() || b.perm().is_none() || kept_perm(a, owner) == kept_perm(b, owner);
    let owner_same = !owner || a.uid.is_none() || b.uid.is_none() || (a.uid, a.gid) == (b.uid, b.gid);
    perm_same && owner_same
}

/// The permissions a copy carries: without the owner, a file's set-user-ID and set-group-ID
/// bits are dropped (a writer running as root would otherwise make a set-id root program
/// out of anybody's file), so they are not compared either.
pub fn kept_perm(m: &Meta, owner: bool) -> Option<u32> {
    let set_id = if owner || m.kind() == EntryKind::Dir { 0 } else { libc::S_ISUID | libc::S_ISGID };
    m.perm().map(|p| p & !set_id)
}

/// How a directory's metadata at the destination differs from what it should be: `true`
/// when it must be set.
pub fn dir_differs(want: &Meta, cur: &Meta, owner: bool) -> bool {
    cur.mtime != want.mtime || !same_meta(want, cur, owner)
}

/// What differs between a source entry and its destination copy, apart from content, for
/// verification; `None` when nothing does.
pub fn difference(s: &Meta, d: &Meta, rules: Rules) -> Option<String> {
    let owner = rules.owner;
    let (ks, kd) = (s.kind(), d.kind());
    if ks != kd {
        return Some(format!("type differs: {} at the source, {} at the destination", ks.as_str(), kd.as_str()));
    }
    if ks != EntryKind::Symlink {
        if let (Some(a), Some(b)) = (kept_perm(s, owner), kept_perm(d, owner)) {
            if a != b {
                return Some(format!("permissions differ: {a:o} vs {b:o}"));
            }
        }
    }
    if owner {
        if let (Some(a), Some(b)) = (s.uid.zip(s.gid), d.uid.zip(d.gid)) {
            if a != b {
                return Some(format!("owner differs: {}:{} vs {}:{}", a.0, a.1, b.0, b.1));
            }
        }
    }
    if ks != EntryKind::Dir && !rules.same_time(s, d) {
        return Some("mtime differs".into());
    }
    match ks {
        EntryKind::File if s.size != d.size => Some(format!("size differs: {} vs {}", s.size, d.size)),
        EntryKind::Symlink if s.link_target != d.link_target => Some("symlink target differs".into()),
        EntryKind::CharDev | EntryKind::BlockDev if s.rdev != d.rdev => Some("device number differs".into()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_common::model::Timestamp;

    fn file(size: u64, mtime: i64, perm: u32) -> Meta {
        Meta {
            kind: Some(EntryKind::File),
            size,
            mtime: Timestamp { sec: mtime, nsec: 7 },
            mode: Some(libc::S_IFREG | perm),
            uid: Some(1),
            gid: Some(2),
            ..Meta::default()
        }
    }

    fn rules() -> Rules {
        Rules { all: false, never_overwrite: false, checksum: false, owner: true, symlink_times: true }
    }

    #[test]
    fn same_size_mtime_mode_and_owner_is_unchanged_anything_else_is_copied() {
        let s = file(10, 5, 0o644);
        assert_eq!(verdict((&s, true), None, rules()), Verdict::Copy);
        assert_eq!(verdict((&s, true), Some((&s, true)), rules()), Verdict::Skip("unchanged (size and mtime)"));
        for d in [file(11, 5, 0o644), file(10, 6, 0o644), file(10, 5, 0o600), Meta { uid: Some(9), ..file(10, 5, 0o644) }] {
            assert_eq!(verdict((&s, true), Some((&d, true)), rules()), Verdict::Copy, "{d:?}");
        }
        let other_owner = Meta { uid: Some(9), ..file(10, 5, 0o644) };
        assert!(
            matches!(verdict((&s, true), Some((&other_owner, true)), Rules { owner: false, ..rules() }), Verdict::Skip(_)),
            "owners matter only when preserved"
        );
    }

    #[test]
    fn unknown_metadata_is_not_a_difference_but_an_incomplete_listing_is_looked_at() {
        let s = file(10, 5, 0o644);
        let listed = Meta { kind: Some(EntryKind::File), size: 10, ..Meta::default() };
        assert_eq!(verdict((&s, true), Some((&listed, false)), rules()), Verdict::NeedMeta);
        assert_eq!(verdict((&s, true), Some((&Meta { size: 3, ..listed.clone() }, false)), rules()), Verdict::Copy, "a listed size that differs decides");
        assert_eq!(verdict((&listed, false), Some((&s, true)), rules()), Verdict::NeedMeta, "an object listing's time is not the file's");
        let object = Meta { mode: None, uid: None, gid: None, ..file(10, 5, 0) };
        assert!(matches!(verdict((&s, true), Some((&object, true)), rules()), Verdict::Skip(_)), "what a side does not keep cannot differ");
    }

    #[test]
    fn options_override_the_comparison() {
        let s = file(10, 5, 0o644);
        let d = file(10, 6, 0o644);
        assert_eq!(
            verdict((&s, true), Some((&d, true)), Rules { never_overwrite: true, ..rules() }),
            Verdict::Skip("exists at the destination (OverwriteMode NEVER)")
        );
        assert_eq!(verdict((&s, true), Some((&s, true)), Rules { all: true, ..rules() }), Verdict::Copy);
        assert_eq!(verdict((&s, true), Some((&d, true)), Rules { checksum: true, ..rules() }), Verdict::CompareContent);
        assert_eq!(after_content(&s, &d, true, rules()), Verdict::CompareContent, "same bytes, other mtime: refresh the metadata");
        assert_eq!(after_content(&s, &s, true, rules()), Verdict::Skip("unchanged (CRC32C)"));
        assert_eq!(after_content(&s, &s, false, rules()), Verdict::Copy);
    }

    #[test]
    fn symlinks_compare_targets_and_devices_their_numbers() {
        let link = |t: &[u8]| Meta { kind: Some(EntryKind::Symlink), link_target: Some(t.to_vec()), mode: Some(libc::S_IFLNK | 0o777), ..Meta::default() };
        assert!(matches!(verdict((&link(b"a"), true), Some((&link(b"a"), true)), rules()), Verdict::Skip(_)));
        assert_eq!(verdict((&link(b"a"), true), Some((&link(b"b"), true)), rules()), Verdict::Copy);
        assert_eq!(verdict((&link(b"a"), true), Some((&Meta { link_target: None, ..link(b"a") }, true)), rules()), Verdict::NeedMeta);
        let dev = |r: u64| Meta { kind: Some(EntryKind::CharDev), rdev: r, ..Meta::default() };
        assert_eq!(verdict((&dev(1), true), Some((&dev(2), true)), rules()), Verdict::Copy);
        assert_eq!(difference(&dev(1), &dev(2), rules()).as_deref(), Some("device number differs"));
        assert_eq!(difference(&file(1, 1, 0o600), &file(1, 1, 0o644), rules()).as_deref(), Some("permissions differ: 600 vs 644"));
        assert_eq!(difference(&file(1, 1, 0o600), &file(1, 1, 0o600), rules()), None);
    }
}
