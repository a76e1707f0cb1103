//! Every operation against the private nfs-ganesha, checked on disk where possible.

use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::sync::Arc;

use crate::common::*;
use ferry_worker::location::nfs::v4::attr::{Kind, SetAttrs};
use ferry_worker::location::nfs::v4::client::NodeKind;
use ferry_worker::location::nfs::v4::error::{nfsstat4, Error};
use ferry_worker::location::nfs::v4::proto::{Stable, Stateid};

#[tokio::test]
async fn round_trip_of_every_operation() {
    let c = client().await;
    let (dir, disk) = scratch(&c, "roundtrip").await;
    let (maxread, maxwrite) = c.limits();
    assert!(maxread >= 4096 && maxwrite >= 4096, "{maxread} {maxwrite}");

    // create, write, read, close
    let f = c.create_file(&dir, b"file", 0o640, true).await.unwrap();
    let (n, committed, verf) = c.write(&f.fh, &f.stateid, 0, b"hello world", Stable::FileSync).await.unwrap();
    assert_eq!(n, 11);
    assert_eq!(committed, Stable::FileSync);
    let (data, eof) = c.read(&f.fh, &f.stateid, 0, 100).await.unwrap();
    assert_eq!(data, b"hello world");
    assert!(eof);
    let (n, _, _) = c.write(&f.fh, &f.stateid, 11, b"!", Stable::Unstable).await.unwrap();
    assert_eq!(n, 1);
    let cverf = c.commit(&f.fh).await.unwrap();
    assert_eq!(cverf, verf, "the verifier stays while the server runs");
    c.close(&f).await.unwrap();
    assert_eq!(std::fs::read(disk.join("file")).unwrap(), b"hello world!");
    assert_eq!(std::fs::metadata(disk.join("file")).unwrap().permissions().mode() & 0o7777, 0o640);

    // a guarded create of an existing file fails with EXIST
    let e = c.create_file(&dir, b"file", 0o640, true).await.unwrap_err();
    assert!(e.is(nfsstat4::NFS4ERR_EXIST), "{e}");
    // unchecked opens it
    let f2 = c.create_file(&dir, b"file", 0o600, false).await.unwrap();
    c.close(&f2).await.unwrap();

    // lookup, getattr, lookup_path
    let (fh, a) = c.lookup(&dir, b"file").await.unwrap().unwrap();
    assert_eq!(fh, f.fh);
    assert_eq!(a.kind, Kind::Reg);
    assert_eq!(a.size, 12);
    assert_eq!(a.mode, 0o640);
    assert_eq!(a.nlink, 1);
    assert_eq!((a.uid, a.gid), (0, 0));
    assert_eq!(a.fileid, std::fs::metadata(disk.join("file")).unwrap().ino());
    assert_eq!(c.getattr(&fh).await.unwrap(), a);
    assert_eq!(c.lookup(&dir, b"missing").await.unwrap(), None);
    let here = unique("roundtrip");
    let (pfh, pa) = c.lookup_path(&[here.as_bytes(), b"file"]).await.unwrap().unwrap();
    assert_eq!((pfh, pa.fileid), (fh.clone(), a.fileid));
    assert_eq!(c.lookup_path(&[here.as_bytes(), b"nope", b"x"]).await.unwrap(), None);
    assert_eq!(c.lookup_path(&[]).await.unwrap().unwrap().1.kind, Kind::Dir);

    // open_read and open_fh
    let r = c.open_read(&dir, b"file").await.unwrap();
    assert_eq!(c.read(&r.fh, &r.stateid, 6, 100).await.unwrap().0, b"world!");
    c.close(&r).await.unwrap();
    let r = c.open_fh(&fh, true).await.unwrap();
    c.close(&r).await.unwrap();

    // setattr: mode, owner, group, size
    // in one SETATTR ganesha changes the mode before the owner, and the chown clears setuid
    c.setattr(&fh, &Stateid::ANONYMOUS, &SetAttrs { mode: Some(0o4755), uid: Some(1234), gid: Some(5678), size: Some(5), ..Default::default() }).await.unwrap();
    assert_eq!(c.getattr(&fh).await.unwrap().mode, 0o755);
    c.setattr(&fh, &Stateid::ANONYMOUS, &SetAttrs { mode: Some(0o4755), ..Default::default() }).await.unwrap();
    let a = c.getattr(&fh).await.unwrap();
    assert_eq!((a.mode, a.uid, a.gid, a.size), (0o4755, 1234, 5678, 5));
    assert_eq!((a.owner.as_slice(), a.owner_group.as_slice()), (&b"1234"[..], &b"5678"[..]));
    let m = std::fs::metadata(disk.join("file")).unwrap();
    assert_eq!((m.uid(), m.gid(), m.len(), m.mode() & 0o7777), (1234, 5678, 5, 0o4755));

    // mkdir, symlink, readlink
    let sub = c.mkdir(&dir, b"sub", 0o700).await.unwrap();
    assert_eq!(c.getattr(&sub).await.unwrap().kind, Kind::Dir);
    assert_eq!(std::fs::metadata(disk.join("sub")).unwrap().permissions().mode() & 0o7777, 0o700);
    let ln = c.symlink(&dir, b"ln", b"../some/target", 0o777).await.unwrap();
    assert_eq!(c.readlink(&ln).await.unwrap(), b"../some/target");
    assert_eq!(std::fs::read_link(disk.join("ln")).unwrap().to_str(), Some("../some/target"));
    assert_eq!(c.getattr(&ln).await.unwrap().kind, Kind::Symlink);

    // hard link
    c.link(&fh, &sub, b"hard").await.unwrap();
    assert_eq!(c.getattr(&fh).await.unwrap().nlink, 2);
    assert_eq!(std::fs::metadata(disk.join("sub/hard")).unwrap().ino(), a.fileid);

    // rename across directories, remove
    c.rename(&sub, b"hard", &dir, b"hard2").await.unwrap();
    assert!(disk.join("hard2").exists() && !disk.join("sub/hard").exists());
    c.remove(&dir, b"hard2").await.unwrap();
    assert_eq!(c.getattr(&fh).await.unwrap().nlink, 1);
    let e = c.remove(&dir, b"hard2").await.unwrap_err();
    assert!(matches!(e, Error::Status { code: nfsstat4::NFS4ERR_NOENT, op: "REMOVE", resent: false }), "{e:?}");
    c.remove(&dir, b"sub").await.unwrap();
    assert!(!disk.join("sub").exists());
    c.renew().await.unwrap();
}

#[tokio::test]
async fn rename_over_an_existing_file_replaces_it() {
    let c = client().await;
    let (dir, disk) = scratch(&c, "renameover").await;
    for (name, body) in [(&b"a"[..], &b"new"[..]), (b"b", b"old contents")] {
        let f = c.create_file(&dir, name, 0o644, true).await.unwrap();
        c.write(&f.fh, &f.stateid, 0, body, Stable::FileSync).await.unwrap();
        c.close(&f).await.unwrap();
    }
    c.rename(&dir, b"a", &dir, b"b").await.unwrap();
    assert_eq!(std::fs::read(disk.join("b")).unwrap(), b"new");
    assert!(!disk.join("a").exists());
    assert_eq!(c.lookup(&dir, b"a").await.unwrap(), None);
}

#[tokio::test]
async fn a_non_utf8_name_round_trips() {
    let c = client().await;
    let (dir, disk) = scratch(&c, "nonutf8").await;
    let name: &[u8] = b"caf\xe9-\xff\xfe";
    let f = c.create_file(&dir, name, 0o644, true).await.unwrap();
    c.close(&f).await.unwrap();
    let on_disk: Vec<Vec<u8>> =
        std::fs::read_dir(&disk).unwrap().map(|e| std::os::unix::ffi::OsStrExt::as_bytes(e.unwrap().file_name().as_os_str()).to_vec()).collect();
    assert_eq!(on_disk, vec![name.to_vec()]);
    assert!(c.lookup(&dir, name).await.unwrap().is_some());
    let page = c.readdir(&dir, 0, [0; 8], 64 << 10).await.unwrap();
    assert_eq!(page.entries.iter().map(|e| e.name.clone()).collect::<Vec<_>>(), vec![name.to_vec()]);
    let sub = c.mkdir(&dir, b"d\x80", 0o755).await.unwrap();
    c.symlink(&sub, b"l\xc3\x28", b"t\xff", 0o777).await.unwrap();
    let (l, _) = c.lookup(&sub, b"l\xc3\x28").await.unwrap().unwrap();
    assert_eq!(c.readlink(&l).await.unwrap(), b"t\xff");
    c.rename(&dir, name, &sub, b"\xe9\xe9").await.unwrap();
    c.remove(&sub, b"\xe9\xe9").await.unwrap();
}

#[tokio::test]
async fn times_keep_nanoseconds_and_dates_before_1970() {
    let c = client().await;
    let (dir, disk) = scratch(&c, "times").await;
    let f = c.create_file(&dir, b"t", 0o644, true).await.unwrap();
    c.close(&f).await.unwrap();
    let atime = (-86_400 * 365 * 10 - 17, 123_456_789); // 1960
    let mtime = (1_700_000_000, 999_999_999);
    c.setattr(&f.fh, &Stateid::ANONYMOUS, &SetAttrs { atime: Some(atime), mtime: Some(mtime), ..Default::default() }).await.unwrap();
    let a = c.getattr(&f.fh).await.unwrap();
    assert_eq!(a.atime, atime);
    assert_eq!(a.mtime, mtime);
    assert!(a.ctime.0 > 1_700_000_000);
    let m = std::fs::metadata(disk.join("t")).unwrap();
    assert_eq!((m.atime(), m.atime_nsec() as u32), atime);
    assert_eq!((m.mtime(), m.mtime_nsec() as u32), mtime);
    // directories too
    c.setattr(&dir, &Stateid::ANONYMOUS, &SetAttrs { mtime: Some((-1, 1)), ..Default::default() }).await.unwrap();
    assert_eq!(c.getattr(&dir).await.unwrap().mtime, (-1, 1));
}

#[tokio::test]
async fn mknod_makes_fifos_sockets_and_devices() {
    let c = client().await;
    let (dir, disk) = scratch(&c, "mknod").await;
    let fifo = c.mknod(&dir, b"fifo", NodeKind::Fifo, (0, 0), 0o640).await.unwrap();
    let sock = c.mknod(&dir, b"sock", NodeKind::Socket, (0, 0), 0o600).await.unwrap();
    let blk = c.mknod(&dir, b"blk", NodeKind::Block, (8, 1), 0o660).await.unwrap();
    let chr = c.mknod(&dir, b"chr", NodeKind::Char, (1, 3), 0o666).await.unwrap();
    assert_eq!(c.getattr(&fifo).await.unwrap().kind, Kind::Fifo);
    assert_eq!(c.getattr(&sock).await.unwrap().kind, Kind::Socket);
    let b = c.getattr(&blk).await.unwrap();
    assert_eq!((b.kind, b.rdev, b.mode), (Kind::Block, (8, 1), 0o660));
    let ch = c.getattr(&chr).await.unwrap();
    assert_eq!((ch.kind, ch.rdev), (Kind::Char, (1, 3)));
    let ft = |n: &str| std::fs::symlink_metadata(disk.join(n)).unwrap();
    assert!(ft("fifo").file_type().is_fifo());
    assert!(ft("sock").file_type().is_socket());
    assert!(ft("blk").file_type().is_block_device());
    assert_eq!(ft("blk").rdev(), (8 << 8) | 1);
    assert!(ft("chr").file_type().is_char_device());
    assert_eq!(ft("chr").rdev(), (1 << 8) | 3);
}

#[tokio::test]
async fn a_hard_link_has_two_links() {
    let c = client().await;
    let (dir, disk) = scratch(&c, "hardlink").await;
    let f = c.create_file(&dir, b"one", 0o644, true).await.unwrap();
    c.close(&f).await.unwrap();
    c.link(&f.fh, &dir, b"two").await.unwrap();
    let (fh2, a2) = c.lookup(&dir, b"two").await.unwrap().unwrap();
    assert_eq!(a2.nlink, 2);
    assert_eq!(c.getattr(&f.fh).await.unwrap().fileid, a2.fileid);
    assert_eq!(fh2, f.fh);
    assert_eq!(std::fs::metadata(disk.join("one")).unwrap().nlink(), 2);
    let e = c.link(&f.fh, &dir, b"two").await.unwrap_err();
    assert!(e.is(nfsstat4::NFS4ERR_EXIST), "{e}");
}

#[tokio::test]
async fn readdir_pages_through_3000_entries() {
    let c = client().await;
    let (dir, disk) = scratch(&c, "bigdir").await;
    // made on disk: fast; ganesha sees them through its VFS FSAL
    for i in 0..3000 {
        std::fs::write(disk.join(format!("entry-{i:05}")), i.to_string()).unwrap();
    }
    let (mut cookie, mut verf) = (0u64, [0u8; 8]);
    let mut names = Vec::new();
    let mut pages = 0;
    loop {
        let page = c.readdir(&dir, cookie, verf, 32 << 10).await.unwrap();
        pages += 1;
        for e in &page.entries {
            let a = e.attr.as_ref().expect("attributes");
            assert_eq!(a.kind, Kind::Reg);
            let i: u64 = std::str::from_utf8(&e.name[6..]).unwrap().parse().unwrap();
            assert_eq!(a.size, i.to_string().len() as u64);
            assert!(e.fh.is_some());
            names.push(e.name.clone());
        }
        if page.eof {
            break;
        }
        cookie = page.entries.last().expect("a page that is not the end has entries").cookie;
        verf = page.verf;
    }
    assert!(pages > 3, "{pages} pages");
    names.sort();
    let want: Vec<Vec<u8>> = (0..3000).map(|i| format!("entry-{i:05}").into_bytes()).collect();
    assert_eq!(names, want);
    // an independent client (libnfs, NFSv3) sees the same 3000 files
    let url = shared().uri(&format!("{}/", unique("bigdir")));
    if let Ok(out) = std::process::Command::new("nfs-ls").arg(&url).output() {
        assert!(out.status.success(), "nfs-ls: {}", String::from_utf8_lossy(&out.stderr));
        let listed = String::from_utf8_lossy(&out.stdout).lines().filter(|l| l.contains("entry-")).count();
        assert_eq!(listed, 3000);
    }
    // an entry's handle works
    let page = c.readdir(&dir, 0, [0; 8], 4096).await.unwrap();
    let e = &page.entries[0];
    let i: usize = std::str::from_utf8(&e.name[6..]).unwrap().parse().unwrap();
    let (data, _) = c.read(e.fh.as_ref().unwrap(), &Stateid::ANONYMOUS, 0, 100).await.unwrap();
    assert_eq!(data, i.to_string().as_bytes());
}

#[tokio::test]
async fn five_mib_written_unstable_in_parallel_then_committed() {
    let mut cfg = config();
    cfg.nconnect = 4;
    let c = ferry_worker::location::nfs::v4::client::Client::connect(cfg).await.unwrap();
    let (dir, disk) = scratch(&c, "parallel").await;
    let f = c.create_file(&dir, b"big", 0o644, true).await.unwrap();
    let mut data = vec![0u8; 5 << 20];
    let mut x = 0x9e3779b97f4a7c15u64;
    for b in data.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    let data = Arc::new(data);
    let piece = 256 << 10;
    let mut tasks = Vec::new();
    for t in 0..6usize {
        let (c, f, data) = (c.clone(), f.clone(), data.clone());
        tasks.push(tokio::spawn(async move {
            let mut verfs = Vec::new();
            for (i, chunk) in data.chunks(piece).enumerate() {
                if i % 6 != t {
                    continue;
                }
                let (n, _, v) = c.write(&f.fh, &f.stateid, (i * piece) as u64, chunk, Stable::Unstable).await.unwrap();
                assert_eq!(n as usize, chunk.len());
                verfs.push(v);
            }
            verfs
        }));
    }
    let mut verfs = Vec::new();
    for t in tasks {
        verfs.extend(t.await.unwrap());
    }
    let v = c.commit(&f.fh).await.unwrap();
    assert!(verfs.iter().all(|w| *w == v), "the write verifiers match the commit's");
    let (maxread, _) = c.limits();
    let mut back = Vec::new();
    loop {
        let (d, eof) = c.read(&f.fh, &f.stateid, back.len() as u64, maxread).await.unwrap();
        back.extend_from_slice(&d);
        if eof || d.is_empty() {
            break;
        }
    }
    c.close(&f).await.unwrap();
    assert!(back == *data, "read back byte-exact");
    assert!(std::fs::read(disk.join("big")).unwrap() == *data, "on disk byte-exact");
    // and through an independent client (libnfs, NFSv3)
    let url = shared().uri(&format!("{}/big", unique("parallel")));
    if let Ok(out) = std::process::Command::new("nfs-cat").arg(&url).output() {
        assert!(out.status.success(), "nfs-cat: {}", String::from_utf8_lossy(&out.stderr));
        assert!(out.stdout == *data, "nfs-cat reads the same bytes");
    }
}

#[tokio::test]
async fn reads_with_the_special_stateids() {
    let c = client().await;
    let (dir, _) = scratch(&c, "anon").await;
    let f = c.create_file(&dir, b"f", 0o644, true).await.unwrap();
    c.write(&f.fh, &f.stateid, 0, b"data", Stable::FileSync).await.unwrap();
    c.close(&f).await.unwrap();
    let zeros = c.read(&f.fh, &Stateid::ANONYMOUS, 0, 10).await;
    let ones = c.read(&f.fh, &Stateid::BYPASS, 0, 10).await;
    let wzeros = c.write(&f.fh, &Stateid::ANONYMOUS, 4, b"!", Stable::FileSync).await;
    eprintln!("READ all-zeros: {zeros:?}\nREAD all-ones: {ones:?}\nWRITE all-zeros: {wzeros:?}");
    assert_eq!(zeros.unwrap().0, b"data");
    assert_eq!(ones.unwrap().0, b"data");
    assert!(wzeros.is_ok());
}

#[tokio::test]
async fn several_connections_share_one_session() {
    let mut cfg = config();
    cfg.nconnect = 3;
    cfg.slots = 8;
    let c = ferry_worker::location::nfs::v4::client::Client::connect(cfg).await.unwrap();
    let root = c.root();
    let mut tasks = Vec::new();
    for _ in 0..40 {
        let (c, root) = (c.clone(), root.clone());
        tasks.push(tokio::spawn(async move { c.getattr(&root).await.unwrap() }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().kind, Kind::Dir);
    }
    let s = c.stats();
    use std::sync::atomic::Ordering::Relaxed;
    assert_eq!(s.binds.load(Relaxed), 0, "ganesha binds a new connection on its first SEQUENCE (SP4_NONE)");
    assert_eq!(s.sessions.load(Relaxed), 1);
}

#[tokio::test]
async fn the_lease_task_ends_with_the_last_clone() {
    let c = client().await;
    assert!(c.lease().as_secs() >= 3);
    let c2 = c.clone();
    let weak = c.downgrade();
    drop(c);
    assert!(weak.upgrade().is_some());
    drop(c2);
    // the renewal task holds the client only while it renews
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    assert!(weak.upgrade().is_none());
}

#[tokio::test]
async fn errors_say_what_happened() {
    let c = client().await;
    let e = c.getattr(&ferry_worker::location::nfs::v4::proto::Fh(vec![1, 2, 3])).await.unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("NFS4ERR_"), "{msg}");
    eprintln!("{msg}");
    let mut cfg = config();
    cfg.addr = "127.0.0.1:1".parse().unwrap();
    cfg.outage = std::time::Duration::from_secs(1);
    let e = ferry_worker::location::nfs::v4::client::Client::connect(cfg).await.err().unwrap();
    assert!(matches!(e, Error::Unreachable(_)), "{e}");
    eprintln!("{e}");
}

#[tokio::test]
async fn server_facts() {
    let c = client().await;
    let bits: Vec<u32> = c.supported().bits().collect();
    eprintln!("supported attributes: {bits:?}");
    eprintln!("limits (maxread, maxwrite): {:?}, lease: {:?}", c.limits(), c.lease());
    for b in [
        ferry_worker::location::nfs::v4::attr::TYPE,
        ferry_worker::location::nfs::v4::attr::MODE,
        ferry_worker::location::nfs::v4::attr::OWNER,
        ferry_worker::location::nfs::v4::attr::FILEHANDLE,
        ferry_worker::location::nfs::v4::attr::RAWDEV,
    ] {
        assert!(c.supported().has(b), "attribute {b}");
    }
    let (dir, _) = scratch(&c, "acl").await;
    match c.get_acl(&dir).await {
        Ok(acl) => eprintln!("ACL of a new directory: {acl:?}"),
        Err(e) => eprintln!("GETATTR(ACL): {e}"),
    }
}
