//! The [`Location`] conformance suite: one named check per promise of the trait's contract.
//! Every backend runs every check its [`Capabilities`] call for, against a real server
//! (`worker/tests/location_conformance.rs`), each in a fresh directory or prefix. A check
//! panics with a description of the first broken promise.

use ferry_common::model::{EntryKind, Timestamp};

use super::{commit, put_file, CommitOptions, Completed, Location, Meta, Special, Target};

/// What one real server is known not to do, although the protocol allows it. These relax a
/// check; they never skip one.
#[derive(Clone, Copy, Debug, Default)]
pub struct Quirks {
    /// Empty directories do not survive: s3s-fs turns a `dir/` marker into a bare directory
    /// on its disk and lists nothing for it.
    pub no_empty_dirs: bool,
    /// A multipart object's stored CRC32C is not the FULL_OBJECT one (moto): ferry verifies
    /// such objects by their ETag or by reading them back.
    pub no_full_object_crc: bool,
    /// A PUT refused for its checksum still leaves the object (s3s-fs checks after writing).
    pub refused_put_stays: bool,
}

/// A named check.
pub struct Check {
    pub name: &'static str,
    pub run: fn(&dyn Location, Quirks),
}

/// Every check, in the order they run.
pub const CHECKS: &[Check] = &[
    Check { name: "missing_entries_list_empty_and_stat_none", run: missing_entries_list_empty_and_stat_none },
    Check { name: "a_written_file_reads_back_exactly_with_its_metadata", run: a_written_file_reads_back_exactly_with_its_metadata },
    Check { name: "replacing_a_file_is_complete", run: replacing_a_file_is_complete },
    Check { name: "a_staged_file_is_invisible_until_published", run: a_staged_file_is_invisible_until_published },
    Check { name: "damaged_bytes_are_caught_and_never_published", run: damaged_bytes_are_caught_and_never_published },
    Check { name: "symlinks_keep_their_target", run: symlinks_keep_their_target },
    Check { name: "directories_keep_their_metadata", run: directories_keep_their_metadata },
    Check { name: "paged_listings_return_every_name_once", run: paged_listings_return_every_name_once },
    Check { name: "multipart_ranges_in_any_order_are_invisible_until_completed", run: multipart_ranges_in_any_order_are_invisible_until_completed },
    Check { name: "an_aborted_multipart_write_leaves_nothing", run: an_aborted_multipart_write_leaves_nothing },
    Check { name: "remove_takes_directories_whole_and_counts_files", run: remove_takes_directories_whole_and_counts_files },
    Check { name: "names_beyond_the_limits_fail_cleanly", run: names_beyond_the_limits_fail_cleanly },
    Check { name: "holes_stay_holes", run: holes_stay_holes },
    Check { name: "extended_attributes_round_trip", run: extended_attributes_round_trip },
    Check { name: "hard_links_share_one_file", run: hard_links_share_one_file },
    Check { name: "special_files_are_made_never_opened", run: special_files_are_made_never_opened },
    Check { name: "an_interrupted_write_resumes_from_what_it_kept", run: an_interrupted_write_resumes_from_what_it_kept },
    Check { name: "sweep_removes_temporary_debris", run: sweep_removes_temporary_debris },
    Check { name: "a_multipart_id_from_a_reader_names_only_its_own_file", run: a_multipart_id_from_a_reader_names_only_its_own_file },
];

const COMMIT: CommitOptions = CommitOptions { fsync: true, verify: true };

fn file_meta(mtime_sec: i64) -> Meta {
    Meta {
        kind: Some(EntryKind::File),
        mtime: Timestamp { sec: mtime_sec, nsec: 123_456_789 },
        atime: Some(Timestamp { sec: 1_600_000_000, nsec: 5 }),
        mode: Some(libc::S_IFREG | 0o640),
        ..Meta::default()
    }
}

fn put(loc: &dyn Location, rel: &[u8], data: &[u8], meta: &Meta) {
    put_file(loc, rel, data, meta, COMMIT).unwrap_or_else(|e| panic!("writing {}: {e}", loc.describe(rel)));
}

fn read_all(loc: &dyn Location, rel: &[u8], from: u64, len: usize) -> Vec<u8> {
    let mut src = loc.open(rel, from).unwrap_or_else(|e| panic!("open {}: {e}", loc.describe(rel)));
    let mut buf = vec![0u8; len];
    src.read_at(from, &mut buf).unwrap_or_else(|e| panic!("read {}: {e}", loc.describe(rel)));
    buf
}

fn names(loc: &dyn Location, dir: &[u8], page_size: usize) -> Vec<(Vec<u8>, EntryKind)> {
    let mut out = Vec::new();
    let mut resume: Option<Vec<u8>> = None;
    loop {
        let page = loc.list(dir, resume.as_deref(), page_size).expect("list");
        out.extend(page.entries.into_iter().map(|l| (l.name, l.meta.kind())));
        match page.resume {
            Some(r) => resume = Some(r),
            None => break,
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| ((i * 31 + seed as usize) % 251) as u8).collect()
}

pub fn missing_entries_list_empty_and_stat_none(loc: &dyn Location, _: Quirks) {
    assert!(loc.list(b"nothing-here", None, 100).expect("list missing").entries.is_empty(), "a missing directory lists empty");
    assert_eq!(loc.stat(b"nothing-here/x").expect("stat missing"), None, "stat of a missing entry is None");
    assert!(loc.remove(&[b"nothing-here".to_vec()])[0].is_ok(), "removing a missing entry succeeds");
    assert!(loc.open(b"nothing-here/x", 0).is_err(), "opening a missing file fails");
}

pub fn a_written_file_reads_back_exactly_with_its_metadata(loc: &dyn Location, _: Quirks) {
    let data = b"hello, ferry".to_vec();
    put(loc, b"d1/d2/file", &data, &file_meta(1_700_000_000));
    let m = loc.stat(b"d1/d2/file").expect("stat").expect("the file exists once committed");
    assert_eq!((m.kind(), m.size), (EntryKind::File, data.len() as u64));
    let caps = loc.capabilities();
    if caps.ns_times {
        assert_eq!(m.mtime, Timestamp { sec: 1_700_000_000, nsec: 123_456_789 }, "mtime survives to the nanosecond");
    }
    assert_eq!(m.perm(), Some(0o640), "permissions survive");
    if let (Some(stored), true) = (m.crc32c, caps.stored_checksum) {
        assert_eq!(stored, crc32c::crc32c(&data), "a stored CRC32C is the content's");
    }
    assert_eq!(read_all(loc, b"d1/d2/file", 0, data.len()), data);
    assert_eq!(read_all(loc, b"d1/d2/file", 7, 5), b"ferry", "reads from an offset return exactly that range");
    let mut src = loc.open(b"d1/d2/file", 0).expect("open");
    let mut past = vec![0u8; 100];
    assert!(src.read_at(0, &mut past).is_err(), "reading past the end fails");
    assert_eq!(loc.stat_dir(b"d1").expect("stat dir").map(|m| m.kind()), Some(EntryKind::Dir), "parents are created as directories");
}

pub fn replacing_a_file_is_complete(loc: &dyn Location, _: Quirks) {
    put(loc, b"r/file", b"first version", &file_meta(1));
    let data = pattern(3000, 7);
    put(loc, b"r/file", &data, &file_meta(2));
    assert_eq!(read_all(loc, b"r/file", 0, 3000), data);
    assert_eq!(loc.stat(b"r/file").expect("stat").map(|m| m.size), Some(3000));
}

pub fn a_staged_file_is_invisible_until_published(loc: &dyn Location, _: Quirks) {
    if !loc.capabilities().atomic_rename {
        return; // such a location puts an entry in place as it writes it
    }
    put(loc, b"s/file", b"old", &file_meta(1));
    let data = pattern(5000, 3);
    let mut sink = loc.create(b"s/file", Target::File { size: 5000, resume: None }, &file_meta(2), &Vec::new()).expect("create");
    sink.write_at(0, &data, crc32c::crc32c(&data)).expect("write");
    let staged = sink.finish(crc32c::crc32c(&data)).expect("finish");
    assert_eq!(read_all(loc, b"s/file", 0, 3), b"old", "the old entry stays until the new one is published");
    assert_eq!(names(loc, b"s", 10), vec![(b"file".to_vec(), EntryKind::File)], "temporary names are never listed");
    let mut buf = Vec::new();
    assert!(commit(loc, vec![staged], COMMIT, &mut buf)[0].is_ok());
    assert_eq!(read_all(loc, b"s/file", 0, 5000), data);
}

pub fn damaged_bytes_are_caught_and_never_published(loc: &dyn Location, q: Quirks) {
    let data = pattern(4000, 9);
    let crc = crc32c::crc32c(&data);
    let mut bad = data.clone();
    bad[10] ^= 0xff;
    let sink = loc.create(b"bad/file", Target::File { size: 4000, resume: None }, &file_meta(1), &Vec::new());
    let result = sink.and_then(|mut s| {
        // The bytes differ from what the source read: the chunk's CRC is the source's.
        s.write_at(0, &bad, crc)?;
        let staged = s.finish(crc)?;
        let mut buf = Vec::new();
        commit(loc, vec![staged], COMMIT, &mut buf).pop().expect("one result")
    });
    let err = result.expect_err("bytes that differ from the source's CRC32C are refused");
    assert!(err.kind.is_transient(), "damage is worth another attempt: {err}");
    if !q.refused_put_stays {
        assert_eq!(loc.stat(b"bad/file").expect("stat"), None, "a refused write leaves nothing under its name");
    }
}

pub fn symlinks_keep_their_target(loc: &dyn Location, _: Quirks) {
    let meta = Meta { kind: Some(EntryKind::Symlink), mtime: Timestamp { sec: 1_650_000_000, nsec: 0 }, ..Meta::default() };
    let staged = loc.make(b"l/link", &Special::Symlink { target: b"../d2/file".to_vec() }, &meta, &Vec::new()).expect("make symlink");
    let mut buf = Vec::new();
    assert!(commit(loc, vec![staged], COMMIT, &mut buf)[0].is_ok());
    let l = loc.stat(b"l/link").expect("stat symlink").expect("the symlink exists");
    assert_eq!((l.kind(), l.link_target.as_deref()), (EntryKind::Symlink, Some(&b"../d2/file"[..])), "symlinks keep their target, never followed");
    if loc.capabilities().symlink_times {
        assert_eq!(l.mtime, meta.mtime, "a symlink keeps its own mtime");
    }
}

pub fn directories_keep_their_metadata(loc: &dyn Location, q: Quirks) {
    let meta = Meta {
        kind: Some(EntryKind::Dir),
        mtime: Timestamp { sec: 1_640_000_000, nsec: 7 },
        atime: Some(Timestamp { sec: 1_640_000_001, nsec: 0 }),
        mode: Some(libc::S_IFDIR | 0o750),
        ..Meta::default()
    };
    loc.ensure_dir(b"empty").expect("ensure_dir");
    loc.set_meta(b"empty", &meta, None).expect("set directory metadata");
    if !loc.capabilities().dir_markers || q.no_empty_dirs {
        return;
    }
    let d = loc.stat_dir(b"empty").expect("stat dir").expect("an empty directory exists");
    assert_eq!(d.kind(), EntryKind::Dir);
    assert_eq!(d.perm(), Some(0o750), "directory permissions survive");
    assert_eq!(d.mtime, meta.mtime, "directory mtime survives");
    assert!(names(loc, b"", 100).contains(&(b"empty".to_vec(), EntryKind::Dir)), "an empty directory is listed");
}

pub fn paged_listings_return_every_name_once(loc: &dyn Location, _: Quirks) {
    for i in 0..25u32 {
        put(loc, format!("many/f{i:02}").as_bytes(), &i.to_le_bytes(), &file_meta(1));
    }
    put(loc, b"many/sub/x", b"x", &file_meta(1));
    let got = names(loc, b"many", 7);
    assert_eq!(got.len(), 26, "paged listing returns every name exactly once: {got:?}");
    assert!(got.contains(&(b"sub".to_vec(), EntryKind::Dir)), "subdirectories list as directories");
}

fn big_file(loc: &dyn Location) -> (Vec<u8>, u64) {
    let unit = loc.limits().part_unit(1 << 30).unwrap_or(1 << 20);
    ((0..(3 * unit + 1234)).map(|i| (i % 251) as u8).collect(), unit)
}

pub fn multipart_ranges_in_any_order_are_invisible_until_completed(loc: &dyn Location, q: Quirks) {
    let (big, unit) = big_file(loc);
    let size = big.len() as u64;
    let fm = file_meta(1_700_000_002);
    let id = loc.create_multipart(b"big/file", size, &fm).expect("create multipart");
    let ranges: Vec<(u64, u64)> = (0..size.div_ceil(unit)).map(|i| (i * unit, unit.min(size - i * unit))).collect();
    let mut tags = Vec::new();
    let mut buf = Vec::new();
    for &(offset, len) in ranges.iter().rev().chain(ranges.first()) {
        let data = &big[offset as usize..(offset + len) as usize];
        let mut sink = loc.create(b"big/file", Target::Part { upload: &id, offset, len, size }, &fm, &Vec::new()).expect("create part");
        sink.write_at(offset, data, crc32c::crc32c(data)).expect("write part");
        let staged = sink.finish(crc32c::crc32c(data)).expect("finish part");
        tags.extend(staged.part_tags.clone());
        assert!(commit(loc, vec![staged], COMMIT, &mut buf)[0].is_ok(), "a written range commits");
    }
    assert_eq!(loc.stat(b"big/file").expect("stat"), None, "nothing is visible before completion");
    let crc = crc32c::crc32c(&big);
    let done = Completed { size, meta: &fm, xattrs: &Vec::new(), crc32c: crc, part_tags: &tags };
    let staged = loc.complete_multipart(b"big/file", &id, &done).expect("complete");
    assert!(commit(loc, vec![staged], COMMIT, &mut buf)[0].is_ok(), "the completed write commits");
    let bm = loc.stat(b"big/file").expect("stat").expect("visible after completion");
    assert_eq!((bm.size, bm.mtime), (size, fm.mtime));
    if let (Some(stored), false) = (bm.crc32c, q.no_full_object_crc || bm.multipart && !loc.capabilities().stored_checksum) {
        assert_eq!(stored, crc, "the whole object's stored CRC is the FULL_OBJECT CRC32C");
    }
    assert_eq!(read_all(loc, b"big/file", 0, big.len()), big, "multipart content is exact");
    assert!(!loc.pending_multiparts(b"big/file").expect("pending").contains(&id), "a completed write is no longer pending");
}

pub fn an_aborted_multipart_write_leaves_nothing(loc: &dyn Location, _: Quirks) {
    let (big, unit) = big_file(loc);
    let fm = file_meta(1);
    let id = loc.create_multipart(b"ab/file", big.len() as u64, &fm).expect("create");
    let first = &big[..unit as usize];
    let mut sink = loc.create(b"ab/file", Target::Part { upload: &id, offset: 0, len: unit, size: big.len() as u64 }, &fm, &Vec::new()).expect("create part");
    sink.write_at(0, first, crc32c::crc32c(first)).expect("write");
    sink.finish(crc32c::crc32c(first)).expect("finish part");
    loc.abort_multipart(b"ab/file", &id).expect("abort");
    assert_eq!(loc.stat(b"ab/file").expect("stat"), None);
    assert!(!loc.pending_multiparts(b"ab/file").expect("pending").contains(&id), "an aborted write is gone");
    assert!(names(loc, b"ab", 100).is_empty(), "no debris is listed");
}

pub fn remove_takes_directories_whole_and_counts_files(loc: &dyn Location, _: Quirks) {
    for i in 0..5u32 {
        put(loc, format!("rm/d/f{i}").as_bytes(), b"x", &file_meta(1));
    }
    put(loc, b"rm/one", b"y", &file_meta(1));
    let counts: Vec<u64> = loc.remove(&[b"rm/d".to_vec(), b"rm/one".to_vec()]).into_iter().map(|r| r.expect("remove")).collect();
    assert_eq!(counts, vec![5, 1], "a directory goes with everything below it; directories are not counted");
    assert!(names(loc, b"rm", 100).is_empty(), "nothing is left");
}

pub fn names_beyond_the_limits_fail_cleanly(loc: &dyn Location, _: Quirks) {
    let (limits, caps) = (loc.limits(), loc.capabilities());
    let odd = b"bad\xffname".to_vec();
    let refused = limits.refusal(&caps, &odd, EntryKind::File, 1);
    let written = put_file(loc, &odd, b"x", &file_meta(1), COMMIT);
    match refused {
        Some(r) => assert!(written.is_err() && !r.message.is_empty(), "a name the limits refuse is refused by the location too"),
        None => assert!(written.is_ok(), "a name within the limits is held: {written:?}"),
    }
    if let Some(max) = limits.max_name_bytes {
        let long = vec![b'n'; max + 1];
        assert_eq!(limits.refusal(&caps, &long, EntryKind::File, 1).map(|r| r.code), Some("NAME_TOO_LONG"));
        assert!(put_file(loc, &long, b"x", &file_meta(1), COMMIT).is_err(), "a name over the limit fails, without a panic");
    }
}

pub fn holes_stay_holes(loc: &dyn Location, _: Quirks) {
    let size = 8u64 << 20;
    let data = pattern(4096, 1);
    let mut sink = loc.create(b"sparse", Target::File { size, resume: None }, &file_meta(1), &Vec::new()).expect("create");
    // Only the last 4 KiB hold data; the rest is never written.
    sink.write_at(size - 4096, &data, crc32c::crc32c(&data)).expect("write");
    let mut whole = vec![0u8; size as usize];
    whole[(size - 4096) as usize..].copy_from_slice(&data);
    let staged = sink.finish(crc32c::crc32c(&whole)).expect("finish");
    let mut buf = Vec::new();
    assert!(commit(loc, vec![staged], COMMIT, &mut buf)[0].is_ok(), "a sparse file checks out against the CRC of its zeros and data");
    assert_eq!(read_all(loc, b"sparse", 0, size as usize), whole, "unwritten ranges read as zeros");
    if loc.capabilities().holes {
        let mut src = loc.open(b"sparse", 0).expect("open");
        let first = src.data(0).expect("data").expect("some data");
        assert!(first.0 >= 4 << 20, "the hole is still a hole: data starts at {}", first.0);
    }
}

pub fn extended_attributes_round_trip(loc: &dyn Location, _: Quirks) {
    if !loc.capabilities().xattrs {
        return;
    }
    let xattrs = vec![(b"user.ferry".to_vec(), b"value".to_vec())];
    let mut sink = loc.create(b"x/file", Target::File { size: 1, resume: None }, &file_meta(1), &xattrs).expect("create");
    sink.write_at(0, b"z", crc32c::crc32c(b"z")).expect("write");
    let staged = sink.finish(crc32c::crc32c(b"z")).expect("finish");
    let mut buf = Vec::new();
    assert!(commit(loc, vec![staged], COMMIT, &mut buf)[0].is_ok(), "commit with xattrs");
    let got = loc.xattrs(b"x/file").expect("xattrs");
    if got.is_empty() {
        return; // the file system under the test directory keeps none (tmpfs without xattr support)
    }
    assert_eq!(got, xattrs, "extended attributes survive");
}

pub fn hard_links_share_one_file(loc: &dyn Location, _: Quirks) {
    if !loc.capabilities().hard_links {
        return;
    }
    put(loc, b"h/first", b"shared", &file_meta(1));
    assert!(loc.link(b"h/first", b"h2/alone/second").expect("link"), "a link is made, its directory with it");
    assert!(!loc.link(b"h/first", b"h2/alone/second").expect("link again"), "an existing link is left alone");
    let (a, b) = (loc.stat(b"h/first").unwrap().unwrap(), loc.stat(b"h2/alone/second").unwrap().unwrap());
    assert_eq!(a.links.map(|l| (l.0, l.1)), b.links.map(|l| (l.0, l.1)), "both names are one file");
}

pub fn special_files_are_made_never_opened(loc: &dyn Location, _: Quirks) {
    if !loc.capabilities().special_files {
        let meta = Meta { kind: Some(EntryKind::Fifo), mode: Some(libc::S_IFIFO | 0o644), ..Meta::default() };
        assert!(loc.make(b"sp/fifo", &Special::Node, &meta, &Vec::new()).is_err(), "a location without special files refuses one");
        return;
    }
    let meta = Meta { kind: Some(EntryKind::Fifo), mode: Some(libc::S_IFIFO | 0o640), mtime: Timestamp { sec: 5, nsec: 6 }, ..Meta::default() };
    let staged = loc.make(b"sp/fifo", &Special::Node, &meta, &Vec::new()).expect("make a FIFO");
    let mut buf = Vec::new();
    assert!(commit(loc, vec![staged], COMMIT, &mut buf)[0].is_ok());
    let m = loc.stat(b"sp/fifo").expect("stat").expect("the FIFO exists");
    assert_eq!((m.kind(), m.perm(), m.mtime), (EntryKind::Fifo, Some(0o640), meta.mtime));
}

pub fn an_interrupted_write_resumes_from_what_it_kept(loc: &dyn Location, _: Quirks) {
    let data = pattern(3 << 20, 5);
    let half = &data[..1 << 20];
    let target = Target::File { size: data.len() as u64, resume: Some("v1") };
    let mut sink = loc.create(b"resume/file", target, &file_meta(3), &Vec::new()).expect("create");
    sink.write_at(0, half, crc32c::crc32c(half)).expect("write");
    drop(sink); // interrupted: neither finished nor aborted
    let mut sink = loc.create(b"resume/file", target, &file_meta(3), &Vec::new()).expect("create again");
    let kept = sink.resumed();
    assert!(kept == 0 || kept == half.len() as u64, "kept {kept} bytes of {}", half.len());
    let mut buf = Vec::new();
    if kept > 0 {
        assert_eq!(sink.crc_resumed(&mut buf).expect("crc of kept bytes"), crc32c::crc32c(half), "the kept bytes are what was written");
    }
    let rest = &data[kept as usize..];
    sink.write_at(kept, rest, crc32c::crc32c(rest)).expect("write the rest");
    let staged = sink.finish(crc32c::crc32c(&data)).expect("finish");
    assert!(commit(loc, vec![staged], COMMIT, &mut buf)[0].is_ok());
    assert_eq!(read_all(loc, b"resume/file", 0, data.len()), data);
}

/// A tree's multipart id is its temporary file's name and arrives from readers: any other
/// name (a sibling, a path out of the directory) is refused, and nothing is written,
/// truncated or removed through it. An object store's ids are the store's own to check.
pub fn a_multipart_id_from_a_reader_names_only_its_own_file(loc: &dyn Location, _: Quirks) {
    if !loc.capabilities().atomic_rename {
        return;
    }
    put(loc, b"mp/victim", b"precious", &file_meta(1));
    for upload in ["victim", "../mp/victim", ".."] {
        assert!(loc.abort_multipart(b"mp/f", upload).is_err(), "abort through {upload:?}");
        let part = Target::Part { upload, offset: 0, len: 4, size: 8 };
        assert!(loc.create(b"mp/f", part, &file_meta(1), &Vec::new()).is_err(), "write through {upload:?}");
        let (meta, xattrs) = (file_meta(1), Vec::new());
        let done = Completed { size: 0, meta: &meta, xattrs: &xattrs, crc32c: 0, part_tags: &[] };
        assert!(loc.complete_multipart(b"mp/f", upload, &done).is_err(), "complete through {upload:?}");
    }
    assert_eq!(read_all(loc, b"mp/victim", 0, 8), b"precious");
}

pub fn sweep_removes_temporary_debris(loc: &dyn Location, _: Quirks) {
    put(loc, b"sw/keep", b"k", &file_meta(1));
    let mut sink = loc.create(b"sw/abandoned", Target::File { size: 10, resume: Some("v") }, &file_meta(1), &Vec::new()).expect("create");
    sink.write_at(0, b"12345", crc32c::crc32c(b"12345")).expect("write");
    drop(sink);
    loc.sweep(b"sw").expect("sweep");
    let sink = loc.create(b"sw/abandoned", Target::File { size: 10, resume: Some("v") }, &file_meta(1), &Vec::new()).expect("create again");
    assert_eq!(sink.resumed(), 0, "swept debris is not resumed");
    sink.abort();
    assert_eq!(names(loc, b"sw", 10), vec![(b"keep".to_vec(), EntryKind::File)]);
}

/// Runs every check in a fresh directory from `fresh(name)`, and fails naming each check that
/// failed.
pub fn run_all(fresh: &dyn Fn(&str) -> Box<dyn Location>, quirks: Quirks) {
    let mut failed = Vec::new();
    for check in CHECKS {
        let loc = fresh(check.name);
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (check.run)(loc.as_ref(), quirks)));
        match outcome {
            Ok(()) => eprintln!("conformance: {} ... ok", check.name),
            Err(e) => {
                let msg = e.downcast_ref::<String>().cloned().or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string())).unwrap_or_default();
                eprintln!("conformance: {} ... FAILED: {msg}", check.name);
                failed.push(format!("{}: {msg}", check.name));
            }
        }
    }
    assert!(failed.is_empty(), "{} conformance check(s) failed:\n{}", failed.len(), failed.join("\n"));
}
