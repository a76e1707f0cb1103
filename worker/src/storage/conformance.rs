//! The [`Location`] conformance suite: every backend must pass it (see the trait's contract).
//! Tests call [`run_location_suite`] with a location rooted at an empty scratch directory or
//! prefix; it panics with a description of the first broken promise.

use ferry_common::model::{EntryKind, Timestamp};

use super::{Content, Location, Meta};

fn file_meta(mtime_sec: i64) -> Meta {
    Meta {
        kind: Some(EntryKind::File),
        mtime: Timestamp { sec: mtime_sec, nsec: 123_456_789 },
        atime: Some(Timestamp { sec: 1_600_000_000, nsec: 5 }),
        mode: Some(libc::S_IFREG | 0o640),
        ..Meta::default()
    }
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

fn read_all(loc: &dyn Location, rel: &[u8], len: u64) -> Vec<u8> {
    let mut buf = Vec::new();
    loc.read(rel, 0, len, &mut buf).expect("read");
    buf
}

/// What a backend can hold beyond the contract's core.
#[derive(Clone, Copy, Debug)]
pub struct Capabilities {
    /// Empty directories and directory metadata survive (S3 keeps them on `dir/` marker
    /// objects; s3s-fs turns a marker into a bare directory on its disk and lists nothing).
    pub dir_markers: bool,
    /// A multipart object's stored CRC32C is the FULL_OBJECT CRC (AWS). moto stores another
    /// value; ferry then verifies such objects by reading them back.
    pub full_object_crc: bool,
    /// A put refused for a bad checksum leaves nothing behind. s3s-fs checks the CRC only
    /// after it has written the object, and leaves it.
    pub refused_put_leaves_nothing: bool,
}

pub fn run_location_suite(loc: &dyn Location, caps: Capabilities) {
    // Missing things: an empty listing, no stat, remove is a no-op.
    assert!(loc.list(b"nothing-here", None, 100).expect("list missing").entries.is_empty(), "a missing directory lists empty");
    assert_eq!(loc.stat(b"nothing-here/x").expect("stat missing"), None, "stat of a missing entry is None");
    assert!(loc.remove(&[b"nothing-here".to_vec()])[0].is_ok(), "removing a missing entry succeeds");

    // Whole writes: content, metadata and parents appear together.
    let data = b"hello, ferry".to_vec();
    let crc = crc32c::crc32c(&data);
    loc.put(b"d1/d2/file", Content::File(&data), &file_meta(1_700_000_000), Some(crc)).expect("put");
    let m = loc.stat(b"d1/d2/file").expect("stat").expect("the file exists after put");
    assert_eq!((m.kind(), m.size), (EntryKind::File, data.len() as u64));
    assert_eq!(m.mtime, Timestamp { sec: 1_700_000_000, nsec: 123_456_789 }, "mtime survives to the nanosecond");
    assert_eq!(m.mode.map(|m| m & 0o7777), Some(0o640), "permissions survive");
    if let Some(stored) = m.crc32c {
        assert_eq!(stored, crc, "a stored CRC32C is the content's");
    }
    assert_eq!(read_all(loc, b"d1/d2/file", data.len() as u64), data);
    let mut part = Vec::new();
    loc.read(b"d1/d2/file", 7, 5, &mut part).expect("ranged read");
    assert_eq!(part, b"ferry", "ranged reads return exactly the range");
    assert!(loc.read(b"d1/d2/file", 0, 100, &mut part).is_err(), "reading past the end fails");

    // Replacing is atomic and complete.
    let data2 = vec![7u8; 3000];
    loc.put(b"d1/d2/file", Content::File(&data2), &file_meta(1_700_000_001), Some(crc32c::crc32c(&data2))).expect("replace");
    assert_eq!(read_all(loc, b"d1/d2/file", 3000), data2);

    // Symlinks and directories.
    let link_meta = Meta { kind: Some(EntryKind::Symlink), mtime: Timestamp { sec: 1_650_000_000, nsec: 0 }, ..Meta::default() };
    loc.put(b"d1/link", Content::Symlink(b"d2/file"), &link_meta, None).expect("put symlink");
    let l = loc.stat(b"d1/link").expect("stat symlink").expect("symlink exists");
    assert_eq!((l.kind(), l.link_target.as_deref()), (EntryKind::Symlink, Some(&b"d2/file"[..])), "symlinks keep their target");
    let dir_meta = Meta { kind: Some(EntryKind::Dir), mtime: Timestamp { sec: 1_640_000_000, nsec: 7 }, mode: Some(libc::S_IFDIR | 0o750), ..Meta::default() };
    loc.put(b"empty", Content::Dir, &dir_meta, None).expect("put dir");
    if caps.dir_markers {
        let d = loc.stat_dir(b"empty").expect("stat dir").expect("an empty directory exists");
        assert_eq!(d.kind(), EntryKind::Dir);
        assert_eq!(d.mode.map(|m| m & 0o7777), Some(0o750), "directory permissions survive");
        assert_eq!(d.mtime, dir_meta.mtime, "directory mtime survives");
    }
    assert_eq!(loc.stat_dir(b"d1").expect("stat implied dir").map(|m| m.kind()), Some(EntryKind::Dir), "parents are directories");

    // Listing: every child once, directories marked, across small pages.
    let got = names(loc, b"d1", 1);
    assert_eq!(got.iter().map(|(n, _)| n.as_slice()).collect::<Vec<_>>(), vec![&b"d2"[..], b"link"], "d1 lists d2 and link");
    assert_eq!(got[0].1, EntryKind::Dir, "d2 lists as a directory");
    let root = names(loc, b"", 1);
    let root_names: Vec<_> = root.iter().map(|(n, _)| n.as_slice()).collect();
    let want_root: Vec<&[u8]> = if caps.dir_markers { vec![b"d1", b"empty"] } else { vec![b"d1"] };
    assert_eq!(root_names, want_root, "the root lists d1 and the empty directory, nothing else");
    for i in 0..25u32 {
        let body = i.to_le_bytes();
        loc.put(format!("many/f{i:02}").as_bytes(), Content::File(&body), &file_meta(1), Some(crc32c::crc32c(&body))).expect("put many");
    }
    assert_eq!(names(loc, b"many", 7).len(), 25, "paged listing returns every name exactly once");

    // Multipart: parts in any order, rewritten, invisible until complete.
    let big: Vec<u8> = (0..(3 * super::s3::MIN_PART_SIZE + 1234)).map(|i| (i % 251) as u8).collect();
    let psize = super::s3::MIN_PART_SIZE as usize;
    let chunks: Vec<&[u8]> = big.chunks(psize).collect();
    let fm = file_meta(1_700_000_002);
    let id = loc.create_multipart(b"big/file", big.len() as u64, &fm).expect("create multipart");
    for (i, c) in chunks.iter().enumerate().rev() {
        let tag = loc.put_part(b"big/file", &id, i as u32 + 1, (i * psize) as u64, c, crc32c::crc32c(c)).expect("put part");
        if let Some(t) = tag.filter(|t| super::s3::etag::is_md5(t)) {
            assert_eq!(t, super::s3::etag::md5_hex(c), "an MD5 part tag is the part's MD5");
        }
    }
    loc.put_part(b"big/file", &id, 1, 0, chunks[0], crc32c::crc32c(chunks[0])).expect("rewrite a part");
    assert_eq!(loc.stat(b"big/file").expect("stat"), None, "nothing is visible before completion");
    for p in loc.list_parts(b"big/file", &id).expect("list parts") {
        let c = chunks[(p.number - 1) as usize];
        assert_eq!(p.size, c.len() as u64, "listed parts have their size");
        if let Some(pc) = p.crc32c {
            assert_eq!(pc, crc32c::crc32c(c), "listed part CRCs are the part's");
        }
    }
    let numbers: Vec<u32> = (1..=chunks.len() as u32).collect();
    let tag = loc.complete_multipart(b"big/file", &id, &numbers, big.len() as u64, &fm, crc32c::crc32c(&big)).expect("complete");
    let bm = loc.stat(b"big/file").expect("stat").expect("visible after completion");
    if let Some(t) = tag {
        assert_eq!(bm.etag.as_deref(), Some(t.as_str()), "the completed object carries the tag complete_multipart promised");
    }
    assert_eq!((bm.size, bm.mtime), (big.len() as u64, fm.mtime));
    if let (Some(stored), true) = (bm.crc32c, caps.full_object_crc) {
        assert_eq!(stored, crc32c::crc32c(&big), "the whole object's stored CRC is the FULL_OBJECT CRC32C");
    }
    assert_eq!(read_all(loc, b"big/file", big.len() as u64), big, "multipart content is exact");
    assert!(!loc.pending_multiparts(b"big/file").expect("pending").contains(&id), "a completed upload is no longer pending");

    // Abort leaves nothing.
    let id = loc.create_multipart(b"big/aborted", big.len() as u64, &fm).expect("create");
    loc.put_part(b"big/aborted", &id, 1, 0, chunks[0], crc32c::crc32c(chunks[0])).expect("put part");
    loc.abort_multipart(b"big/aborted", &id).expect("abort");
    assert_eq!(loc.stat(b"big/aborted").expect("stat"), None);
    assert!(!loc.pending_multiparts(b"big/aborted").expect("pending").contains(&id), "an aborted upload is gone");
    assert_eq!(names(loc, b"big", 100), vec![(b"file".to_vec(), EntryKind::File)], "no debris is listed");

    // A wrong CRC is refused where the location checks it, and never becomes visible.
    if loc.put(b"bad", Content::File(b"abc"), &file_meta(1), Some(crc32c::crc32c(b"abd"))).is_err() && caps.refused_put_leaves_nothing {
        assert_eq!(loc.stat(b"bad").expect("stat"), None, "a refused write leaves nothing");
    }

    // Remove: a directory goes with everything below it; counts exclude directories.
    let counts = loc.remove(&[b"many".to_vec(), b"d1/d2/file".to_vec()]);
    assert_eq!(counts.into_iter().map(|r| r.expect("remove")).collect::<Vec<_>>(), vec![25, 1]);
    assert!(names(loc, b"many", 100).is_empty(), "a removed directory lists empty");
    assert_eq!(loc.stat(b"d1/d2/file").expect("stat"), None);

    // Names a store cannot hold fail cleanly, without a panic.
    let r = loc.put(b"bad\xffname", Content::File(b"x"), &file_meta(1), None);
    if let Err(e) = r {
        assert!(!e.message.is_empty());
    }
}
