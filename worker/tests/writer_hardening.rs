//! The writer facing a hostile or broken reader (issue 17): every frame is checked against
//! what the execution allows, and bad input ends the stream with a code, never a panic.

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use ferry_common::model::{ExecutionSpec, LinkSettings, Mode, Options, Reach};
use ferry_worker::engine::write::Writer;
use ferry_worker::engine::ExecContext;
use ferry_worker::transport::frame::{self, entry_kind, Code, FileHeader, Frame};

fn spec(src: &Path, dst: &Path, options: Options) -> ExecutionSpec {
    let mut spec = ExecutionSpec::new(format!("t{:08x}", rand::random::<u32>()), Mode::Copy, src.display().to_string(), dst.display().to_string(), options);
    spec.link = LinkSettings { destination_agents: vec!["cloud".into()], ..Default::default() };
    spec
}

fn writer_ctx(src: &Path, dst: &Path, options: Options) -> ExecContext {
    ExecContext::open_for(spec(src, dst, options), Reach { source: false, destination: true }).unwrap()
}

fn header(id: u64, path: &[u8], size: u64) -> FileHeader {
    FileHeader { id, path: path.to_vec(), size, mode: 0o100644, mtime_sec: 1, ..Default::default() }
}

fn fifo(id: u64, path: &[u8]) -> FileHeader {
    FileHeader { kind: entry_kind::FIFO, mode: libc::S_IFIFO | 0o644, ..header(id, path, 0) }
}

fn encoded(h: &FileHeader) -> Vec<u8> {
    let mut raw = vec![frame::kind::HEADER, 0, 0, 0, 0];
    rmp_serde::encode::write_named(&mut raw, h).unwrap();
    let len = (raw.len() - frame::FRAME_HEADER_LEN) as u32;
    raw[1..5].copy_from_slice(&len.to_be_bytes());
    raw
}

#[test]
fn a_header_whose_mode_contradicts_its_kind_is_refused() {
    let (src, dst) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let ctx = writer_ctx(src.path(), dst.path(), Options::default());
    let mut rx = Writer::new(&ctx, true).unwrap();
    let sda = libc::makedev(8, 0);
    let hostile = [
        // "A FIFO" whose mode says block device: mknod would make a raw-disk node.
        FileHeader { mode: libc::S_IFBLK | 0o666, rdev: sda, ..fifo(1, b"disk") },
        // A FIFO carrying a device number.
        FileHeader { rdev: sda, ..fifo(2, b"disk2") },
        // A regular file whose mode says character device.
        FileHeader { mode: libc::S_IFCHR | 0o666, rdev: sda, ..header(3, b"disk3", 0) },
        // Bits above the file type.
        FileHeader { mode: 0o3_000_644, ..header(4, b"disk4", 0) },
    ];
    for h in hostile {
        assert_eq!(frame::decode(&encoded(&h)).unwrap_err().code, Code::Malformed, "the decoder refuses {h:?}");
        let mut rx_one = Writer::new(&ctx, true).unwrap();
        assert_eq!(rx_one.handle(Frame::Header(h.clone())).unwrap_err().code, Code::Malformed, "the writer refuses {h:?}");
    }
    // A consistent FIFO still goes through, and is a FIFO.
    assert!(matches!(rx.handle(Frame::Header(fifo(5, b"pipe"))).unwrap()[..], [Frame::Ack { status: frame::status::RESUME_AT, .. }]));
    rx.handle(Frame::End { id: 5, size: 0, crc32c: 0 }).unwrap();
    assert!(matches!(rx.handle(Frame::Flush).unwrap()[..], [Frame::Done(_)]));
    assert!(std::fs::symlink_metadata(dst.path().join("pipe")).unwrap().file_type().is_fifo());
    for name in ["disk", "disk2", "disk3", "disk4"] {
        assert!(std::fs::symlink_metadata(dst.path().join(name)).is_err(), "{name} was not created");
    }
}

#[test]
fn special_files_are_refused_when_the_execution_does_not_preserve_devices() {
    let (src, dst) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let ctx = writer_ctx(src.path(), dst.path(), Options { preserve_devices: false, ..Options::default() });
    let mut rx = Writer::new(&ctx, true).unwrap();
    let null = FileHeader { kind: entry_kind::CHAR_DEVICE, mode: libc::S_IFCHR | 0o666, rdev: libc::makedev(1, 3), ..header(1, b"null", 0) };
    for h in [fifo(1, b"pipe"), null] {
        assert_eq!(rx.handle(Frame::Header(h)).unwrap_err().code, Code::Malformed);
    }
    assert!(std::fs::read_dir(dst.path()).unwrap().next().is_none(), "nothing was created");
}

#[test]
fn owner_and_set_id_bits_are_not_taken_from_the_reader_when_owners_are_not_preserved() {
    let (src, dst) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let ctx = writer_ctx(src.path(), dst.path(), Options { preserve_owner: false, ..Options::default() });
    let mut rx = Writer::new(&ctx, true).unwrap();
    let data = b"#!/bin/sh\n".to_vec();
    let crc = crc32c::crc32c(&data);
    // The reader claims owner 4242 and a set-user-ID, set-group-ID program.
    let h = FileHeader { mode: libc::S_IFREG | 0o6755, owner: true, uid: 4242, gid: 4242, ..header(1, b"prog", data.len() as u64) };
    rx.handle(Frame::Header(h)).unwrap();
    rx.handle(Frame::Chunk { id: 1, offset: 0, crc32c: crc, compressed: false, raw_len: data.len() as u32, data }).unwrap();
    rx.handle(Frame::End { id: 1, size: 10, crc32c: crc }).unwrap();
    assert!(matches!(rx.handle(Frame::Flush).unwrap()[..], [Frame::Done(_)]));
    let m = std::fs::symlink_metadata(dst.path().join("prog")).unwrap();
    assert_eq!(m.mode() & 0o7777, 0o755, "set-id bits dropped");
    assert_eq!((m.uid(), m.gid()), (unsafe { libc::geteuid() }, unsafe { libc::getegid() }), "owned by the writer, not chowned");
}

#[test]
fn data_for_an_entry_without_content_ends_the_stream_without_a_panic() {
    let (src, dst) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let ctx = writer_ctx(src.path(), dst.path(), Options::default());
    let data = vec![7u8; 5];
    let crc = crc32c::crc32c(&data);
    let after_fifo: [Frame; 4] = [
        Frame::Chunk { id: 1, offset: 0, crc32c: crc, compressed: false, raw_len: 5, data: data.clone() },
        Frame::Chunk { id: 1, offset: 0, crc32c: 0, compressed: false, raw_len: 0, data: Vec::new() },
        Frame::Hole { id: 1, offset: 0, len: 5 },
        Frame::End { id: 1, size: 5, crc32c: crc },
    ];
    for f in after_fifo {
        let mut rx = Writer::new(&ctx, true).unwrap();
        rx.handle(Frame::Header(fifo(1, b"pipe"))).unwrap();
        let got = rx.handle(f.clone());
        assert!(matches!(got, Err(ref e) if matches!(e.code, Code::OutOfOrder | Code::Malformed)), "{f:?} after a FIFO's HEADER: {got:?}");
    }
    // Frames for ids never announced, or finished already.
    let mut rx = Writer::new(&ctx, true).unwrap();
    assert_eq!(rx.handle(Frame::End { id: 9, size: 0, crc32c: 0 }).unwrap_err().code, Code::OutOfOrder);
    assert_eq!(rx.handle(Frame::Hole { id: 9, offset: 0, len: 1 }).unwrap_err().code, Code::OutOfOrder);
    rx.handle(Frame::Header(fifo(1, b"pipe"))).unwrap();
    rx.handle(Frame::End { id: 1, size: 0, crc32c: 0 }).unwrap();
    assert_eq!(rx.handle(Frame::End { id: 1, size: 0, crc32c: 0 }).unwrap_err().code, Code::OutOfOrder);
}

/// The temporary name a whole file is written under (`location::version_temp_name`),
/// computed independently: predictable by anybody who can see the source.
fn version_temp(h: &FileHeader) -> String {
    let version = format!("{}:{}.{}:{}", h.size, h.mtime_sec, h.mtime_nsec, h.mode);
    let name = &h.path[..];
    let hash = ((crc32c::crc32c(name) as u64) << 32) | crc32c::crc32c_append(0x2545_f491, name) as u64;
    format!(".ferry-tmp-v{:08x}-{hash:016x}", crc32c::crc32c(version.as_bytes()))
}

/// Sends one whole file the way a reader does, from where the writer says to resume; returns
/// that offset.
fn send_file(rx: &mut Writer, h: FileHeader, data: &[u8]) -> u64 {
    let id = h.id;
    let from = match rx.handle(Frame::Header(h)).unwrap()[..] {
        [Frame::Ack { offset, status: frame::status::RESUME_AT, .. }] => offset,
        ref other => panic!("{other:?}"),
    };
    let rest = data[from as usize..].to_vec();
    let crc = crc32c::crc32c(&rest);
    rx.handle(Frame::Chunk { id, offset: from, crc32c: crc, compressed: false, raw_len: rest.len() as u32, data: rest }).unwrap();
    rx.handle(Frame::End { id, size: data.len() as u64, crc32c: crc32c::crc32c(data) }).unwrap();
    assert!(matches!(rx.handle(Frame::Flush).unwrap()[..], [Frame::Done(_)]));
    from
}

#[test]
fn a_planted_temporary_file_is_never_written_into() {
    let (src, tmp) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let dst = tmp.path().join("dst");
    std::fs::create_dir(&dst).unwrap();
    let ctx = writer_ctx(src.path(), &dst, Options::default());
    let data = b"0123456789abcdef".to_vec();
    let victim = tmp.path().join("victim");
    let theirs = |name: &str| {
        let h = header(1, name.as_bytes(), data.len() as u64);
        (dst.join(version_temp(&h)), h)
    };
    // A hard link to someone's file, a file of another user, a symlink: each at the exact
    // temporary name of an entry, each shorter than the entry (so it looks resumable).
    std::fs::write(&victim, b"precious").unwrap();
    let (t1, h1) = theirs("linked");
    std::fs::hard_link(&victim, &t1).unwrap();
    let (t2, h2) = theirs("owned");
    std::fs::write(&t2, b"0123").unwrap();
    std::os::unix::fs::chown(&t2, Some(4242), Some(4242)).unwrap();
    let (t3, h3) = theirs("followed");
    std::os::unix::fs::symlink(&victim, &t3).unwrap();
    for (h, name) in [(h1, "linked"), (h2, "owned"), (h3, "followed")] {
        let mut rx = Writer::new(&ctx, true).unwrap();
        assert_eq!(send_file(&mut rx, h, &data), 0, "{name}: nothing planted is resumed");
        assert_eq!(std::fs::read(dst.join(name)).unwrap(), data);
        let m = std::fs::symlink_metadata(dst.join(name)).unwrap();
        assert_eq!((m.uid(), m.nlink()), (unsafe { libc::geteuid() }, 1), "{name}: a file of ferry's own");
    }
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious", "the planted file's target is untouched");
    assert_eq!(std::fs::metadata(&victim).unwrap().nlink(), 1, "our name for it was dropped");

    // A multipart write's id names its temporary file: a reader cannot name another file.
    let mut rx = Writer::new(&ctx, true).unwrap();
    let part = FileHeader { part: Some(frame::PartTarget { upload: "../victim".into(), offset: 0, len: 4 }), ..header(2, b"big", 16) };
    let answer = rx.handle(Frame::Header(part)).unwrap();
    assert!(matches!(answer[..], [Frame::Reject { .. }]), "{answer:?}");
    let _ = rx.handle(Frame::Chunk { id: 2, offset: 0, crc32c: crc32c::crc32c(b"evil"), compressed: false, raw_len: 4, data: b"evil".to_vec() });
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
}

#[test]
fn a_sync_scan_of_an_empty_source_root_is_refused_unless_allowed() {
    use ferry_common::model::ScanDir;
    use ferry_worker::engine::dest::Direct;
    use ferry_worker::engine::scan::list_page;
    let (src, dst) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    std::fs::write(dst.path().join("precious"), b"keep").unwrap();
    let root = [ScanDir { path: Vec::new(), cookie: None, after: None, included: false, links: false }];
    let sync = |allow: bool| {
        let mut s = spec(src.path(), dst.path(), Options { remove_deleted: true, allow_empty_source: allow, ..Options::default() });
        s.mode = Mode::Sync;
        ExecContext::open(s).unwrap()
    };
    let ctx = sync(false);
    let e = list_page(&ctx, &Direct(ctx.dst().unwrap().as_ref()), &root).unwrap_err();
    assert!(e.message.contains("is empty") && e.message.contains("AllowEmptySource"), "{}", e.message);
    let ctx = sync(true);
    let page = list_page(&ctx, &Direct(ctx.dst().unwrap().as_ref()), &root).unwrap();
    assert_eq!(page.prunes.len(), 1, "asked for, the root is pruned");
}
