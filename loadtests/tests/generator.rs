//! Generator determinism and dataset shape. No timing assertions.

use ferry_loadtests::gen::{generate, DatasetSpec, GenConfig, LargeSpec, Profile, ShapeOptions, SmallSpec, CHUNK};
use ferry_loadtests::tree::{digest, scan};
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

fn cfg(threads: usize) -> GenConfig {
    GenConfig { threads, progress: false, sync: false }
}

fn small(files: u64, dirs: u64, min: u64, max: u64) -> DatasetSpec {
    DatasetSpec::Small(SmallSpec { files, dirs, min_size: min, max_size: max })
}

/// Sorted (relative path, size) listing, to show *what* differs on failure.
fn listing(root: &Path) -> Vec<(String, u64)> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, u64)>) {
        for e in fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            let m = fs::symlink_metadata(&p).unwrap();
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            if m.is_dir() {
                out.push((rel + "/", 0));
                walk(root, &p, out);
            } else {
                out.push((rel, m.len()));
            }
        }
    }
    let mut v = Vec::new();
    walk(root, root, &mut v);
    v.sort();
    v
}

#[test]
fn small_same_seed_is_identical_and_thread_count_does_not_matter() {
    let t = tempfile::tempdir().unwrap();
    let spec = small(300, 7, 0, 20_000);
    let (a, b, c) = (t.path().join("a"), t.path().join("b"), t.path().join("c"));
    generate(&spec, 1, &a, &cfg(1)).unwrap();
    generate(&spec, 1, &b, &cfg(4)).unwrap();
    generate(&spec, 2, &c, &cfg(2)).unwrap();
    assert_eq!(listing(&a), listing(&b));
    assert_eq!(digest(&a).unwrap(), digest(&b).unwrap());
    // Different seed: same shape, different sizes and contents.
    let (sa, ha) = digest(&a).unwrap();
    let (sc, hc) = digest(&c).unwrap();
    assert_eq!((sa.files, sa.dirs), (sc.files, sc.dirs));
    assert_ne!(ha, hc);
    assert_ne!(listing(&a), listing(&c));
}

#[test]
fn small_shape_counts_and_size_bounds() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("s");
    let (min, max) = (100, 5000);
    let s = generate(&small(1000, 20, min, max), 9, &dir, &cfg(2)).unwrap();
    let st = scan(&dir).unwrap();
    assert_eq!(st, s.stats, "summary must match what is on disk");
    assert_eq!(st.files, 1000);
    // 20 leaves in two levels: ceil(sqrt 20) = 5 leaves per parent, 4 parents.
    assert_eq!(st.dirs, 24);
    let mut sizes = Vec::new();
    for (path, size) in listing(&dir) {
        if path.ends_with('/') {
            continue;
        }
        assert!((min..=max).contains(&size), "{path}: {size}");
        // Files live two directories down.
        assert_eq!(path.matches('/').count(), 2, "{path}");
        sizes.push(size);
    }
    // Uniform-ish: both halves of the range are used.
    let mid = (min + max) / 2;
    assert!(sizes.iter().filter(|&&s| s < mid).count() > 300);
    assert!(sizes.iter().filter(|&&s| s >= mid).count() > 300);
    // Every leaf holds files (round-robin), none is empty.
    for e in fs::read_dir(&dir).unwrap() {
        for leaf in fs::read_dir(e.unwrap().path()).unwrap() {
            assert_eq!(fs::read_dir(leaf.unwrap().path()).unwrap().count(), 50);
        }
    }
}

#[test]
fn contents_are_incompressible_noise() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("s");
    generate(&small(3, 1, 65_536, 65_536), 3, &dir, &cfg(1)).unwrap();
    let f = listing(&dir).into_iter().find(|(p, _)| !p.ends_with('/')).unwrap();
    let bytes = fs::read(dir.join(&f.0)).unwrap();
    let mut hist = [0u32; 256];
    for b in &bytes {
        hist[*b as usize] += 1;
    }
    // 65536 random bytes: each value ~256 times; a repetitive or zero-filled
    // buffer would be wildly off.
    assert!(hist.iter().all(|&n| (150..400).contains(&n)), "{hist:?}");
}

#[test]
fn large_files_are_chunked_deterministically() {
    let t = tempfile::tempdir().unwrap();
    // Sizes that are not a multiple of the chunk, written by several threads.
    let spec = DatasetSpec::Large(LargeSpec { files: 2, file_size: 2 * CHUNK as u64 + 12_345 });
    let (a, b) = (t.path().join("a"), t.path().join("b"));
    let s = generate(&spec, 5, &a, &cfg(3)).unwrap();
    generate(&spec, 5, &b, &cfg(1)).unwrap();
    assert_eq!(s.stats.files, 2);
    assert_eq!(s.stats.bytes, 2 * (2 * CHUNK as u64 + 12_345));
    assert_eq!(digest(&a).unwrap(), digest(&b).unwrap());
    let f0 = fs::read(a.join("big-0.bin")).unwrap();
    let f1 = fs::read(a.join("big-1.bin")).unwrap();
    assert_eq!(f0.len(), 2 * CHUNK + 12_345);
    assert_ne!(f0[..4096], f1[..4096], "files must not share content");
    assert_ne!(f0[..4096], f0[CHUNK..CHUNK + 4096], "chunks must not repeat");
}

#[test]
fn mixed_has_both_parts() {
    let t = tempfile::tempdir().unwrap();
    let o = ShapeOptions { files: Some(50), dirs: Some(4), file_size: Some(100_000), large_files: Some(3), ..ShapeOptions::default() };
    let spec = DatasetSpec::resolve(Profile::Mixed, &o).unwrap();
    let dir = t.path().join("m");
    generate(&spec, 1, &dir, &cfg(2)).unwrap();
    let st = scan(&dir).unwrap();
    assert_eq!(st.files, 53);
    // small/ + large/ + 4 leaves + 2 parents.
    assert_eq!(st.dirs, 8);
    assert_eq!(fs::read_dir(dir.join("large")).unwrap().count(), 3);
}

#[test]
fn meta_creates_empty_files_per_dir() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("m");
    let spec = DatasetSpec::resolve(Profile::Meta, &ShapeOptions { files: Some(1050), files_per_dir: Some(100), ..ShapeOptions::default() }).unwrap();
    let s = generate(&spec, 1, &dir, &cfg(2)).unwrap();
    let st = scan(&dir).unwrap();
    assert_eq!(st, s.stats);
    assert_eq!(st.files, 1050);
    assert_eq!(st.bytes, 0);
    // 11 leaves (the last holds 50) under 3 parents.
    assert_eq!(st.dirs, 14);
}

#[test]
fn tricky_is_deterministic_and_has_its_oddities() {
    let t = tempfile::tempdir().unwrap();
    let (a, b, c) = (t.path().join("a"), t.path().join("b"), t.path().join("c"));
    let sa = generate(&DatasetSpec::Tricky, 1, &a, &cfg(1)).unwrap();
    generate(&DatasetSpec::Tricky, 1, &b, &cfg(1)).unwrap();
    generate(&DatasetSpec::Tricky, 2, &c, &cfg(1)).unwrap();
    let (da, db, dc) = (digest(&a).unwrap(), digest(&b).unwrap(), digest(&c).unwrap());
    assert_eq!(da, db);
    assert_ne!(da.1, dc.1);
    assert_eq!(da.0, sa.stats);

    use std::os::unix::ffi::OsStrExt;
    let names: Vec<Vec<u8>> = fs::read_dir(a.join("names")).unwrap().map(|e| e.unwrap().file_name().as_bytes().to_vec()).collect();
    assert!(names.iter().any(|n| std::str::from_utf8(n).is_err()), "non-UTF-8 name");
    assert!(names.iter().any(|n| n.contains(&b'\n')), "newline in name");
    assert!(names.iter().any(|n| n.len() == 255), "255-byte name");

    let links = a.join("links");
    assert!(!links.join("dangling").exists() && links.join("dangling").symlink_metadata().is_ok());
    assert_eq!(fs::read_link(links.join("loop-a")).unwrap(), Path::new("loop-b"));
    let hard = fs::metadata(links.join("hard-a.txt")).unwrap();
    assert_eq!(hard.nlink(), 3);
    assert_eq!(hard.ino(), fs::metadata(links.join("sub/hard-c.txt")).unwrap().ino());

    let sparse = fs::metadata(a.join("sparse/sparse-64MiB.bin")).unwrap();
    assert_eq!(sparse.len(), 64 << 20);
    assert!(sparse.blocks() * 512 < 1 << 20, "sparse file should allocate little");

    assert!(fs::symlink_metadata(a.join("special/fifo")).unwrap().file_type().is_fifo());
    assert_eq!(fs::read_dir(a.join("empty/empty-dir")).unwrap().count(), 0);
    use std::os::unix::fs::PermissionsExt;
    let ro = fs::metadata(a.join("perms/readonly-dir")).unwrap();
    assert_eq!(ro.permissions().mode() & 0o7777, 0o555);
    assert_eq!(fs::metadata(a.join("times/nanos.txt")).unwrap().mtime_nsec(), 123_456_789);
    // Deep nesting: 100 one-letter levels.
    let deepest = (0..100).fold(a.join("deep/narrow"), |p, _| p.join("d"));
    assert!(deepest.join("bottom.txt").is_file());
    // Read-only dirs would defeat TempDir's cleanup for non-root users.
    ferry_loadtests::util::remove_tree(t.path()).unwrap();
}

#[test]
fn refuses_non_empty_target() {
    let t = tempfile::tempdir().unwrap();
    fs::write(t.path().join("x"), b"x").unwrap();
    let e = generate(&small(1, 1, 0, 1), 1, t.path(), &cfg(1)).unwrap_err();
    assert_eq!(e.exit_code(), 2);
    assert!(e.to_string().contains("non-empty"), "{e}");
}
