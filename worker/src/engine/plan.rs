//! Turning listed entries into shards: pure and deterministic, so it is tested without I/O.
//!
//! Transfer shards are bounded by both file count and bytes, the way fpart bins files. Files
//! at or above the part threshold become part shards so one huge file spreads over many movers.

use ferry_common::model::{Entry, EntryKind, Limits, LinkEntry, ScanDir, ShardBody};

/// How many parts one file may be split into. It keeps a scan page's completion transaction
/// within etcd's operation limit; the part size grows instead for enormous files.
pub const MAX_PARTS_PER_FILE: u64 = 64;

/// Directories handed to one child scan shard.
pub const DIRS_PER_SCAN_SHARD: usize = 16;

pub struct Binner<'a> {
    limits: &'a Limits,
    /// What the destination's multipart writes are made of (see
    /// [`crate::location::Limits::part_unit`]).
    dest: crate::location::Limits,
    current: Vec<Entry>,
    current_bytes: u64,
    /// Encoded-size estimate of `current`, so a shard of long paths stays under the Store's
    /// value limit.
    current_encoded: usize,
    links: Vec<LinkEntry>,
    out: Vec<ShardBody>,
    /// Part groups need unique names within the emitting shard.
    part_groups: u32,
    group_prefix: String,
}

/// A shard value must stay well under the Store's 256 KiB limit.
const MAX_ENCODED_BYTES: usize = 192 * 1024;

fn encoded_estimate(path_len: usize) -> usize {
    path_len + 48
}

impl<'a> Binner<'a> {
    pub fn new(limits: &'a Limits, dest: crate::location::Limits, group_prefix: &str) -> Self {
        Binner {
            limits,
            dest,
            current: Vec::new(),
            current_bytes: 0,
            current_encoded: 0,
            links: Vec::new(),
            out: Vec::new(),
            part_groups: 0,
            group_prefix: group_prefix.to_string(),
        }
    }

    /// Part size for a file: the configured size, grown so the file has at most
    /// [`MAX_PARTS_PER_FILE`] parts, and made a whole multiple of the destination's part unit,
    /// so every part shard writes whole parts of the destination's multipart write.
    pub fn part_size(limits: &Limits, dest: &crate::location::Limits, size: u64) -> u64 {
        let part = limits.part_size.max(size.div_ceil(MAX_PARTS_PER_FILE));
        match dest.part_unit(size) {
            Some(unit) => part.max(unit).div_ceil(unit) * unit,
            None => part,
        }
    }

    pub fn push(&mut self, entry: Entry) {
        if entry.kind == EntryKind::File && entry.size >= self.limits.part_threshold && !entry.compare_checksum {
            self.push_parts(entry);
            return;
        }
        let enc = encoded_estimate(entry.path.len());
        if !self.current.is_empty()
            && (self.current.len() as u32 >= self.limits.shard_max_files
                || self.current_bytes + entry.size > self.limits.shard_max_bytes
                || self.current_encoded + enc > MAX_ENCODED_BYTES)
        {
            self.flush();
        }
        self.current_bytes += entry.size;
        self.current_encoded += enc;
        self.current.push(entry);
    }

    fn push_parts(&mut self, file: Entry) {
        let part = Self::part_size(self.limits, &self.dest, file.size);
        let count = file.size.div_ceil(part) as u32;
        let group = format!("{}.{}", self.group_prefix, self.part_groups);
        self.part_groups += 1;
        for index in 0..count {
            let offset = index as u64 * part;
            let len = part.min(file.size - offset);
            self.out.push(ShardBody::Part { file: file.clone(), index, count, offset, len, group: group.clone() });
        }
    }

    pub fn push_link(&mut self, link: LinkEntry) {
        self.links.push(link);
        if self.links.len() as u32 >= self.limits.shard_max_files {
            self.out.push(ShardBody::Links { links: std::mem::take(&mut self.links) });
        }
    }

    fn flush(&mut self) {
        if !self.current.is_empty() {
            self.out.push(ShardBody::Transfer { entries: std::mem::take(&mut self.current) });
            self.current_bytes = 0;
            self.current_encoded = 0;
        }
    }

    /// How many shards are planned so far (for the scan page budget).
    pub fn planned(&self) -> usize {
        self.out.len() + usize::from(!self.current.is_empty()) + usize::from(!self.links.is_empty())
    }

    pub fn finish(mut self) -> Vec<ShardBody> {
        self.flush();
        if !self.links.is_empty() {
            self.out.push(ShardBody::Links { links: std::mem::take(&mut self.links) });
        }
        self.out
    }
}

/// Splits directories into child scan shard bodies.
pub fn scan_bodies(dirs: Vec<ScanDir>) -> Vec<ShardBody> {
    let mut out = Vec::new();
    let mut it = dirs.into_iter().peekable();
    while it.peek().is_some() {
        out.push(ShardBody::Scan { dirs: it.by_ref().take(DIRS_PER_SCAN_SHARD).collect() });
    }
    out
}

/// Encoded-size estimate of a directory in a scan shard.
fn scan_dir_estimate(d: &ScanDir) -> usize {
    d.path.len() + d.after.as_ref().map_or(0, |a| a.len()) + 40
}

/// The scan shards a page leaves behind: the directories it found (`subdirs`) and the ones
/// it did not finish (`rest`, the first possibly part-listed).
///
/// Found directories go out as new shards of [`DIRS_PER_SCAN_SHARD`] while the queue has
/// `room` for more scan shards, so listing spreads over the movers. What is left joins the
/// page's continuation, which then replaces the shard that ran: the number of scan keys does
/// not grow, whatever the tree's shape. Found directories go first in the continuation (depth
/// first), so what waits to be listed is about the depth of the tree times its fan-out, not a
/// breadth-first level. A continuation is split only where its value would pass
/// [`MAX_ENCODED_BYTES`].
pub fn plan_scans(subdirs: Vec<ScanDir>, rest: Vec<ScanDir>, room: usize) -> Vec<ShardBody> {
    let spread = (room * DIRS_PER_SCAN_SHARD).min(subdirs.len());
    let mut subdirs = subdirs.into_iter();
    let mut out = scan_bodies(subdirs.by_ref().take(spread).collect());
    let mut shard: Vec<ScanDir> = Vec::new();
    let mut bytes = 0;
    for d in subdirs.chain(rest) {
        let size = scan_dir_estimate(&d);
        if !shard.is_empty() && bytes + size > MAX_ENCODED_BYTES {
            out.push(ShardBody::Scan { dirs: std::mem::take(&mut shard) });
            bytes = 0;
        }
        bytes += size;
        shard.push(d);
    }
    if !shard.is_empty() {
        out.push(ShardBody::Scan { dirs: shard });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_common::model::Timestamp;

    fn file(name: &str, size: u64) -> Entry {
        Entry { path: name.as_bytes().to_vec(), kind: EntryKind::File, size, mtime: Timestamp::default(), compare_checksum: false, check_dest: false }
    }

    fn limits() -> Limits {
        Limits { shard_max_files: 3, shard_max_bytes: 100, part_threshold: 1000, part_size: 400, ..Limits::default() }
    }

    #[test]
    fn part_shards_hold_whole_parts_of_the_destination() {
        let limits = Limits::default();
        let s3 = crate::location::Limits { part_unit_min: Some(16 << 20), max_parts: Some(10_000), ..Default::default() };
        for size in [300u64 << 20, 5 << 30, 100 << 30, 5 << 40] {
            let unit = s3.part_unit(size).unwrap();
            let shard = Binner::part_size(&limits, &s3, size);
            assert_eq!(shard % unit, 0, "part shards hold whole object parts ({size})");
            assert!(size.div_ceil(shard) <= MAX_PARTS_PER_FILE);
        }
        let small = Limits { part_size: 1 << 20, ..Limits::default() };
        assert_eq!(Binner::part_size(&small, &s3, 300 << 20), 16 << 20, "never smaller than a part");
        assert_eq!(
            Binner::part_size(&small, &crate::location::Limits::default(), 300 << 20),
            (300u64 << 20).div_ceil(64),
            "a POSIX destination takes any range"
        );
    }

    #[test]
    fn shards_are_bounded_by_count_and_bytes() {
        let l = limits();
        let mut b = Binner::new(&l, crate::location::Limits::default(), "g");
        for (i, size) in [10, 10, 10, 10, 95, 1].iter().enumerate() {
            b.push(file(&format!("f{i}"), *size));
        }
        let sizes: Vec<Vec<u64>> = b
            .finish()
            .into_iter()
            .map(|s| match s {
                ShardBody::Transfer { entries } => entries.iter().map(|e| e.size).collect(),
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        assert_eq!(sizes, vec![vec![10, 10, 10], vec![10], vec![95, 1]]);
    }

    #[test]
    fn large_files_become_parts_that_cover_the_file_exactly() {
        let l = limits();
        let mut b = Binner::new(&l, crate::location::Limits::default(), "g");
        b.push(file("big", 1001));
        let parts: Vec<(u32, u32, u64, u64)> = b
            .finish()
            .into_iter()
            .map(|s| match s {
                ShardBody::Part { index, count, offset, len, .. } => (index, count, offset, len),
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        assert_eq!(parts, vec![(0, 3, 0, 400), (1, 3, 400, 400), (2, 3, 800, 201)]);
    }

    #[test]
    fn part_count_is_capped_by_growing_the_part_size() {
        let l = Limits { part_size: 1 << 20, ..Limits::default() };
        let size = 1u64 << 40;
        let part = Binner::part_size(&l, &crate::location::Limits::default(), size);
        assert!(size.div_ceil(part) <= MAX_PARTS_PER_FILE);
    }

    fn dirs(prefix: &str, n: usize, len: usize) -> Vec<ScanDir> {
        (0..n).map(|i| ScanDir { path: format!("{prefix}{i:0len$}").into_bytes(), cookie: None, after: None, included: true, links: false }).collect()
    }

    fn shapes(bodies: &[ShardBody]) -> Vec<usize> {
        bodies
            .iter()
            .map(|b| match b {
                ShardBody::Scan { dirs } => dirs.len(),
                other => panic!("unexpected {other:?}"),
            })
            .collect()
    }

    #[test]
    fn found_directories_spread_while_the_queue_has_room() {
        assert_eq!(shapes(&plan_scans(dirs("d", 40, 1), vec![], 10)), vec![16, 16, 8]);
        assert_eq!(shapes(&plan_scans(dirs("d", 40, 1), dirs("r", 3, 1), 10)), vec![16, 16, 8, 3], "the rest continues as one shard");
    }

    #[test]
    fn without_room_found_directories_join_the_continuation_first() {
        let bodies = plan_scans(dirs("d", 40, 1), dirs("r", 3, 1), 1);
        assert_eq!(shapes(&bodies), vec![16, 27]);
        let ShardBody::Scan { dirs: cont } = &bodies[1] else { unreachable!() };
        assert_eq!(cont[0].path, b"d16", "depth first: found directories are listed before the rest");
        assert_eq!(cont[26].path, b"r2");
        assert_eq!(shapes(&plan_scans(dirs("d", 512, 1), vec![], 0)), vec![512], "no new key at all");
        assert!(plan_scans(vec![], vec![], 0).is_empty());
    }

    #[test]
    fn a_continuation_splits_only_where_its_value_would_grow_too_large() {
        // 2,000 directories of 200-byte paths: about 480 KiB, so three values.
        let bodies = plan_scans(dirs("d", 2000, 200), vec![], 0);
        let sizes = shapes(&bodies);
        assert_eq!(sizes.iter().sum::<usize>(), 2000);
        assert_eq!(sizes.len(), 3, "{sizes:?}");
        for b in &bodies {
            let ShardBody::Scan { dirs } = b else { unreachable!() };
            assert!(dirs.iter().map(scan_dir_estimate).sum::<usize>() <= MAX_ENCODED_BYTES);
        }
    }
}
