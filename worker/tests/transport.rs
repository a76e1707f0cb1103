//! The reader and the writer together, over both transports: in-process (the same state
//! machines, no network) and over QUIC on loopback with real certificates.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ferry_common::model::{Entry, EntryKind, EntryStatus, ExecutionSpec, LinkSettings, Mode, Options, PartSet, Reach};
use ferry_worker::engine::dest::{Dest, Direct};
use ferry_worker::engine::read::SendSettings;
use ferry_worker::engine::transfer::run_transfer;
use ferry_worker::engine::write::Writer;
use ferry_worker::engine::{parts, ExecContext};
use ferry_worker::rate::RateLimiter;
use ferry_worker::retry::Tries;
use ferry_worker::transport::frame::{self, Code, FileHeader, Frame};
use ferry_worker::transport::link::pki::{init_ca, revoke, Admission, Ca, Identity};
use ferry_worker::transport::link::quic::{self, LinkClient, LinkTuning, Registry, ServeStats};
use ferry_worker::transport::wire::{LinkError, LocalWire, Wire};
use ferry_worker::transport::{Connector, InProcess};

fn spec(src: &Path, dst: &Path) -> ExecutionSpec {
    let mut spec =
        ExecutionSpec::new(format!("t{:08x}", rand::random::<u32>()), Mode::Copy, src.display().to_string(), dst.display().to_string(), Options::default());
    spec.link = LinkSettings { destination_agents: vec!["cloud".into()], ..Default::default() };
    spec
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 13) as u8).collect()
}

/// An entry the writer compares with the destination before writing (as a scan that cannot
/// see the destination plans it).
fn entry(path: &[u8], kind: EntryKind, size: u64) -> Entry {
    Entry { path: path.to_vec(), kind, size, mtime: Default::default(), compare_checksum: false, check_dest: true }
}

/// A small tree: files around the chunk size, an empty file, a symlink, a FIFO, nesting.
fn make_tree(root: &Path) -> Vec<Entry> {
    let files: Vec<(&str, usize)> = vec![("a.txt", 10), ("empty", 0), ("d/big.bin", (3 << 20) + 17), ("d/e/f/deep", 1 << 20), ("compressible", 2 << 20)];
    let mut entries = Vec::new();
    for (i, (p, len)) in files.iter().enumerate() {
        let path = root.join(p);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let data = if *p == "compressible" { vec![b'z'; *len] } else { pattern(*len, i as u8) };
        std::fs::write(&path, data).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        entries.push(entry(p.as_bytes(), EntryKind::File, *len as u64));
    }
    set_xattr(&root.join("a.txt"), "user.ferry.test", b"kept across the link");
    std::os::unix::fs::symlink("../outside/target", root.join("d/link")).unwrap();
    entries.push(entry(b"d/link", EntryKind::Symlink, 0));
    let fifo = std::ffi::CString::new(root.join("fifo").to_str().unwrap()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
    entries.push(entry(b"fifo", EntryKind::Fifo, 0));
    entries
}

fn set_xattr(path: &Path, name: &str, value: &[u8]) {
    let (p, n) = (std::ffi::CString::new(path.to_str().unwrap()).unwrap(), std::ffi::CString::new(name).unwrap());
    assert_eq!(
        unsafe { libc::setxattr(p.as_ptr(), n.as_ptr(), value.as_ptr().cast(), value.len(), 0,) },
        0,
        "user xattrs are supported on the test filesystem"
    );
}

fn get_xattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    let (p, n) = (std::ffi::CString::new(path.to_str().unwrap()).unwrap(), std::ffi::CString::new(name).unwrap());
    let mut buf = vec![0u8; 256];
    let got = unsafe { libc::getxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    (got >= 0).then(|| buf[..got as usize].to_vec())
}

fn assert_same_tree(src: &Path, dst: &Path, entries: &[Entry]) {
    for e in entries {
        let rel = std::str::from_utf8(&e.path).unwrap();
        let (a, b) = (std::fs::symlink_metadata(src.join(rel)).unwrap(), std::fs::symlink_metadata(dst.join(rel)).unwrap());
        assert_eq!(a.mode(), b.mode(), "{rel} mode");
        assert_eq!((a.mtime(), a.mtime_nsec()), (b.mtime(), b.mtime_nsec()), "{rel} mtime");
        match e.kind {
            EntryKind::File => assert!(std::fs::read(src.join(rel)).unwrap() == std::fs::read(dst.join(rel)).unwrap(), "{rel} content"),
            EntryKind::Symlink => assert_eq!(std::fs::read_link(src.join(rel)).unwrap(), std::fs::read_link(dst.join(rel)).unwrap()),
            _ => {}
        }
    }
    if src.join("a.txt").exists() {
        assert_eq!(get_xattr(&dst.join("a.txt"), "user.ferry.test").as_deref(), Some(&b"kept across the link"[..]), "xattrs cross the link");
    }
    let leftovers: Vec<_> = walk(dst).into_iter().filter(|p| p.contains(".ferry-tmp-")).collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
}

fn walk(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(root).unwrap() {
        let e = e.unwrap();
        out.push(e.path().display().to_string());
        if e.file_type().unwrap().is_dir() {
            out.extend(walk(&e.path()));
        }
    }
    out
}

fn settings(rate: &RateLimiter, compress: bool) -> SendSettings<'_> {
    SendSettings { agent: "reader", compress, rate }
}

#[test]
fn a_batch_arrives_whole_and_a_second_run_sends_nothing() {
    let (src, dst) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let entries = make_tree(src.path());
    let ctx = ExecContext::open(spec(src.path(), dst.path())).unwrap();
    let rate = RateLimiter::new(0);
    let mut buf = Vec::new();
    let out = run_transfer(&ctx, &Compressing(InProcess { ctx: &ctx }), &settings(&rate, true), entries.clone(), Tries::FIRST, &mut buf);
    assert!(out.result.failures.is_empty(), "{:?}", out.result.failures);
    assert_eq!(out.result.counters.files_transferred, entries.len() as u64);
    assert!(out.result.counters.bytes_compressed > (2 << 20) - 4096, "the compressible file was compressed: {:?}", out.result.counters);
    assert!(out.report.iter().filter(|r| r.kind == EntryKind::File).all(|r| r.crc32c.is_some()));
    assert_same_tree(src.path(), dst.path(), &entries);

    let again = run_transfer(&ctx, &InProcess { ctx: &ctx }, &settings(&rate, false), entries.clone(), Tries::FIRST, &mut buf);
    assert_eq!(again.result.counters.files_transferred, 0);
    assert_eq!(again.result.counters.files_skipped, entries.len() as u64, "{:?}", again.report);
}

#[test]
fn a_corrupted_chunk_is_detected_resent_and_counted() {
    let (src, dst) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let entries = make_tree(src.path());
    let mut ctx = ExecContext::open(spec(src.path(), dst.path())).unwrap();
    ctx.hooks.corrupt_chunk = Some(b"d/big.bin".to_vec());
    let rate = RateLimiter::new(0);
    // Chunks are checked on arrival where they cross a network.
    let out = run_transfer(&ctx, &Networked(InProcess { ctx: &ctx }), &settings(&rate, false), entries.clone(), Tries::FIRST, &mut Vec::new());
    assert!(out.result.failures.is_empty(), "{:?}", out.result.failures);
    assert_eq!(out.result.counters.chunks_resent, 1);
    assert_same_tree(src.path(), dst.path(), &entries);
}

/// An in-process writer that checks chunks as one across a network does.
struct Networked<'a>(InProcess<'a>);

impl Connector for Networked<'_> {
    fn open(&self, _attempt: u32) -> Result<Box<dyn Wire + '_>, LinkError> {
        Ok(Box::new(LocalWire::new(Writer::new(self.0.ctx, true).unwrap())))
    }
    fn remote(&self) -> bool {
        true
    }
}

/// An in-process writer whose reader compresses, as across a link.
struct Compressing<'a>(InProcess<'a>);

impl Connector for Compressing<'_> {
    fn open(&self, attempt: u32) -> Result<Box<dyn Wire + '_>, LinkError> {
        self.0.open(attempt)
    }
    fn remote(&self) -> bool {
        true
    }
}

/// Goes down after `budget` chunks, once per connection, then reconnects.
struct Flaky<'a> {
    ctx: &'a ExecContext,
    budget: usize,
    /// How many of the first streams are cut.
    cuts: usize,
    opened: AtomicUsize,
}

struct FlakyWire<'a> {
    inner: LocalWire<'a>,
    chunks_left: Option<usize>,
}

impl Wire for FlakyWire<'_> {
    fn send(&mut self, frame: Frame) -> Result<(), LinkError> {
        if let (Frame::Chunk { .. }, Some(left)) = (&frame, self.chunks_left.as_mut()) {
            if *left == 0 {
                return Err(LinkError::Down("cut".into()));
            }
            *left -= 1;
        }
        self.inner.send(frame)
    }
    fn recv(&mut self, wait: Option<Duration>) -> Result<Option<Frame>, LinkError> {
        self.inner.recv(wait)
    }
}

impl Connector for Flaky<'_> {
    fn open(&self, _attempt: u32) -> Result<Box<dyn Wire + '_>, LinkError> {
        let n = self.opened.fetch_add(1, Ordering::SeqCst);
        let chunks_left = (n < self.cuts).then_some(self.budget);
        Ok(Box::new(FlakyWire { inner: LocalWire::new(Writer::new(self.ctx, true).unwrap()), chunks_left }))
    }
    fn remote(&self) -> bool {
        true
    }
}

#[test]
fn a_dropped_link_resumes_from_the_last_chunk_written() {
    let (src, dst) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let big = pattern(9 << 20, 7);
    std::fs::write(src.path().join("big"), &big).unwrap();
    let entries = vec![entry(b"big", EntryKind::File, big.len() as u64)];
    let ctx = ExecContext::open(spec(src.path(), dst.path())).unwrap();
    let flaky = Flaky { ctx: &ctx, budget: 4, cuts: 2, opened: AtomicUsize::new(0) };
    let rate = RateLimiter::new(0);
    let out = run_transfer(&ctx, &flaky, &settings(&rate, false), entries.clone(), Tries::FIRST, &mut Vec::new());
    assert!(out.result.failures.is_empty(), "{:?}", out.result.failures);
    assert_eq!(flaky.opened.load(Ordering::SeqCst), 3, "two cuts, three streams");
    // The writer kept 4 MiB at the first reconnect and 8 MiB at the second.
    assert_eq!(out.result.counters.bytes_resumed, 12 << 20, "resumed from the last chunk written, not from byte 0");
    assert_eq!(out.report[0].status, EntryStatus::Transferred);
    assert!(std::fs::read(dst.path().join("big")).unwrap() == big);
}

fn header(id: u64, path: &[u8], size: u64) -> FileHeader {
    FileHeader { id, path: path.to_vec(), size, mode: 0o100644, mtime_sec: 1, ..Default::default() }
}

#[test]
fn the_writer_never_writes_outside_its_root() {
    let (outside, dst, src) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    // A symlink already at the destination, pointing out of the root.
    std::os::unix::fs::symlink(outside.path(), dst.path().join("evil")).unwrap();
    let ctx = ExecContext::open_for(spec(src.path(), dst.path()), Reach { source: false, destination: true }).unwrap();
    let mut rx = Writer::new(&ctx, true).unwrap();
    // A symlink sent by the reader, then a file "through" it.
    let link = FileHeader {
        kind: frame::entry_kind::SYMLINK,
        target: outside.path().display().to_string().into_bytes(),
        size: 0,
        mode: 0o120777,
        ..header(1, b"sneaky", 0)
    };
    assert!(matches!(rx.handle(Frame::Header(link)).unwrap()[..], [Frame::Ack { status: frame::status::RESUME_AT, .. }]));
    rx.handle(Frame::End { id: 1, size: 0, crc32c: 0 }).unwrap();
    rx.handle(Frame::Flush).unwrap();
    for (id, path) in [(2u64, &b"evil/passwd"[..]), (3, b"sneaky/passwd")] {
        let data = b"owned".to_vec();
        rx.handle(Frame::Header(header(id, path, 5))).unwrap();
        rx.handle(Frame::Chunk { id, offset: 0, crc32c: crc32c::crc32c(&data), compressed: false, raw_len: 5, data }).unwrap();
        rx.handle(Frame::End { id, size: 5, crc32c: crc32c::crc32c(b"owned") }).unwrap();
    }
    rx.handle(Frame::Flush).unwrap();
    assert!(std::fs::read_dir(outside.path()).unwrap().next().is_none(), "nothing was written outside the root");
    // The symlinks in the way were replaced by directories inside the root.
    assert!(std::fs::symlink_metadata(dst.path().join("evil")).unwrap().is_dir());

    // Hostile paths never get past the decoder, whatever the sender does.
    for bad in [&b"../x"[..], b"/etc/passwd", b"a/../../x"] {
        let mut raw = vec![frame::kind::HEADER, 0, 0, 0, 0];
        rmp_serde::encode::write_named(&mut raw, &header(9, bad, 0)).unwrap();
        let len = (raw.len() - frame::FRAME_HEADER_LEN) as u32;
        raw[1..5].copy_from_slice(&len.to_be_bytes());
        assert_eq!(frame::decode(&raw).unwrap_err().code, Code::UnsafePath);
    }
    // Out-of-order and oversized input ends the stream with a code, never a panic.
    assert_eq!(rx.handle(Frame::Chunk { id: 77, offset: 0, crc32c: 0, compressed: false, raw_len: 1, data: vec![1] }).unwrap_err().code, Code::OutOfOrder);
    rx.handle(Frame::Header(header(4, b"small", 2))).unwrap();
    let data = vec![0u8; 3];
    assert_eq!(
        rx.handle(Frame::Chunk { id: 4, offset: 0, crc32c: crc32c::crc32c(&data), compressed: false, raw_len: 3, data }).unwrap_err().code,
        Code::Malformed
    );
}

// ---- over QUIC ----

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

fn identities(dir: &Path, names: &[&str]) -> Vec<Identity> {
    init_ca(dir).unwrap();
    let ca = Ca::load(dir).unwrap();
    names.iter().map(|n| Identity::issue(&ca, n, &[], 30).unwrap()).collect()
}

struct Remote<'a> {
    client: &'a LinkClient,
    addr: std::net::SocketAddr,
}

impl Connector for Remote<'_> {
    fn open(&self, _attempt: u32) -> Result<Box<dyn Wire + '_>, LinkError> {
        Ok(Box::new(self.client.open(self.addr, "writer")?))
    }
    fn remote(&self) -> bool {
        true
    }
}

/// Sends `entries` of `src` to a writer agent for `dst` over QUIC on loopback, with real
/// certificates and `tuning` on both ends. Returns the reader's outcome and its path to the
/// writer afterwards.
fn send_over_quic(src: &Path, dst: &Path, entries: &[Entry], tuning: &LinkTuning, compress: bool) -> (ferry_worker::engine::Outcome, quinn::PathStats) {
    let cadir = tempfile::tempdir().unwrap();
    let ids = identities(cadir.path(), &["writer", "reader"]);
    let spec = spec(src, dst);
    let writer_ctx = Arc::new(ExecContext::open_for(spec.clone(), Reach { source: false, destination: true }).unwrap());
    let reader_ctx = ExecContext::open_for(spec, Reach { source: true, destination: false }).unwrap();
    let rt = runtime();
    let _guard = rt.enter();
    let endpoint = quic::bind("127.0.0.1:0".parse().unwrap(), &ids[0], tuning).unwrap();
    let addr = endpoint.local_addr().unwrap();
    let registry = Registry::default();
    registry.insert(writer_ctx);
    rt.spawn(quic::serve(endpoint, registry, Arc::new(ServeStats::default()), Arc::default()));
    let client = LinkClient::new(&ids[1], tuning.clone()).unwrap();
    let rate = RateLimiter::new(0);
    let out = std::thread::scope(|s| {
        s.spawn(|| run_transfer(&reader_ctx, &Remote { client: &client, addr }, &settings(&rate, compress), entries.to_vec(), Tries::FIRST, &mut Vec::new()))
            .join()
            .unwrap()
    });
    let path = client.path_stats(addr).expect("a connection to the writer");
    (out, path)
}

#[test]
fn a_batch_crosses_quic_with_mutual_tls() {
    let (src, dst) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let entries = make_tree(src.path());
    let (out, _) = send_over_quic(src.path(), dst.path(), &entries, &LinkTuning::default(), true);
    assert!(out.result.failures.is_empty(), "{:?}", out.result.failures);
    assert_eq!(out.result.counters.files_transferred, entries.len() as u64);
    assert_same_tree(src.path(), dst.path(), &entries);
}

/// Sends one file of `size` bytes over QUIC with `tuning` and returns the reader's path to
/// the writer afterwards.
fn path_after_sending(tuning: &LinkTuning, size: usize) -> quinn::PathStats {
    let (src, dst) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    std::fs::write(src.path().join("big"), pattern(size, 9)).unwrap();
    let entries = vec![entry(b"big", EntryKind::File, size as u64)];
    let (out, path) = send_over_quic(src.path(), dst.path(), &entries, tuning, false);
    assert!(out.result.failures.is_empty(), "{:?}", out.result.failures);
    assert_same_tree(src.path(), dst.path(), &entries);
    path
}

#[test]
fn datagrams_grow_to_what_the_route_carries() {
    // Loopback carries 64 KB datagrams; path MTU discovery finds that without being told.
    let path = path_after_sending(&LinkTuning::default(), 48 << 20);
    assert!(path.current_mtu > 9_000, "loopback should carry datagrams far above Ethernet's: {path:?}");
}

#[test]
fn path_mtu_discovery_climbs_to_the_configured_ceiling_and_no_further() {
    // A jumbo-frame ceiling. Ten such datagrams are more than one UDP send carries; before GSO
    // batches were cut to fit, the losses made the connection fall back to 1,200 bytes (the
    // cut itself is tested against a socket in link::quic).
    let tuning = LinkTuning { max_mtu: 8_972, ..LinkTuning::default() };
    let path = path_after_sending(&tuning, 48 << 20);
    assert!(path.current_mtu > 4_000 && path.current_mtu <= 8_972, "{path:?}");
    assert_eq!(path.black_holes_detected, 0, "{path:?}");
}

#[test]
fn peers_without_a_certificate_from_the_cluster_ca_are_refused() {
    let (ca1, ca2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let ours = identities(ca1.path(), &["writer"]);
    let theirs = identities(ca2.path(), &["intruder"]);
    let rt = runtime();
    let _guard = rt.enter();
    let endpoint = quic::bind("127.0.0.1:0".parse().unwrap(), &ours[0], &LinkTuning::default()).unwrap();
    let addr = endpoint.local_addr().unwrap();
    let stats = Arc::new(ServeStats::default());
    rt.spawn(quic::serve(endpoint, Registry::default(), stats.clone(), Arc::default()));

    // A certificate from another CA.
    let client = LinkClient::new(&theirs[0], LinkTuning::default()).unwrap();
    let err = std::thread::scope(|s| {
        s.spawn(|| {
            client.open(addr, "writer").and_then(|mut w| {
                w.send(Frame::Flush)?;
                w.recv(Some(Duration::from_secs(5)))
            })
        })
        .join()
        .unwrap()
    });
    assert!(err.is_err(), "a certificate from another CA must be refused");

    // No certificate at all: a client that trusts our CA but presents nothing.
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::pem::PemObject::pem_slice_iter(ours[0].ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![ferry_worker::transport::link::pki::ALPN.to_vec()];
    let cfg = quinn::ClientConfig::new(Arc::new(quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap()));
    let anon = rt.block_on(async {
        let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        ep.set_default_client_config(cfg);
        let conn = ep.connect(addr, "writer").unwrap().await?;
        // The server refuses the missing certificate after the client's handshake flight.
        let (mut send, mut recv) = conn.open_bi().await?;
        send.write_all(&frame::encode_preamble()).await?;
        let mut b = [0u8; 8];
        tokio::time::timeout(Duration::from_secs(5), recv.read_exact(&mut b)).await.map_err(|_| std::io::Error::other("timeout"))??;
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
    });
    assert!(anon.is_err(), "a client without a certificate must be refused");
    std::thread::sleep(Duration::from_millis(200));
    assert!(stats.refused_handshakes.load(Ordering::Relaxed) >= 1, "the writer logged the refusal");
}

#[test]
fn key_files_are_private_and_world_readable_keys_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ids = identities(dir.path(), &["w1"]);
    assert_eq!(std::fs::metadata(dir.path().join("ca.key")).unwrap().permissions().mode() & 0o777, 0o600);
    let agent = dir.path().join("agent");
    ids[0].save(&agent).unwrap();
    assert_eq!(std::fs::metadata(agent.join("agent.key")).unwrap().permissions().mode() & 0o777, 0o600);
    assert!(Identity::load(&agent).is_ok());
    std::fs::set_permissions(agent.join("agent.key"), std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = Identity::load(&agent).expect_err("refused").to_string();
    assert!(err.contains("readable by others") && err.contains("chmod 600"), "{err}");
    assert!(init_ca(dir.path()).is_err(), "an existing CA is never replaced");
    assert!(ferry_worker::transport::link::pki::check_agent_name("bad name!").is_err());
}

#[test]
fn two_streams_never_write_the_same_file_at_once() {
    let (src, dst) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let ctx = ExecContext::open_for(spec(src.path(), dst.path()), Reach { source: false, destination: true }).unwrap();
    let (mut old, mut new) = (Writer::new(&ctx, true).unwrap(), Writer::new(&ctx, true).unwrap());
    let data = b"hello".to_vec();
    assert!(matches!(old.handle(Frame::Header(header(1, b"f", 5))).unwrap()[..], [Frame::Ack { status: frame::status::RESUME_AT, .. }]));
    std::thread::scope(|s| {
        // A reconnected reader's new stream while the old one still holds the file: it waits
        // for the old stream to let go, instead of two writers on one temporary file (and
        // instead of a refusal that would burn the reader's attempts while the old stream
        // drains).
        let waiting = s.spawn(|| new.handle(Frame::Header(header(1, b"f", 5))).unwrap());
        std::thread::sleep(std::time::Duration::from_millis(300));
        assert!(!waiting.is_finished(), "the new stream must wait while the old one writes the file");
        old.handle(Frame::Chunk { id: 1, offset: 0, crc32c: crc32c::crc32c(&data), compressed: false, raw_len: 5, data: data.clone() }).unwrap();
        old.handle(Frame::End { id: 1, size: 5, crc32c: crc32c::crc32c(&data) }).unwrap();
        assert!(matches!(old.handle(Frame::Flush).unwrap()[..], [Frame::Done(ref d)] if d.end == 5));
        let replies = waiting.join().unwrap();
        assert!(
            matches!(replies[..], [Frame::Ack { status: frame::status::CURRENT, .. }]),
            "once released, the waiting stream finds the file current: {replies:?}"
        );
    });
    // Settled: the file is free again (and now current).
    assert!(
        matches!(new.handle(Frame::Header(header(2, b"f", 5))).unwrap()[..], [Frame::Ack { status: frame::status::CURRENT, .. }]),
        "{:?}",
        std::fs::metadata(dst.path().join("f"))
    );
    // A stream that dies mid-file lets go of it.
    let mut dying = Writer::new(&ctx, true).unwrap();
    dying.handle(Frame::Header(header(1, b"g", 5))).unwrap();
    drop(dying);
    assert!(matches!(new.handle(Frame::Header(header(3, b"g", 5))).unwrap()[..], [Frame::Ack { status: frame::status::RESUME_AT, .. }]));
}

/// A file large enough to be written in parts, `huge` in `src`: its bytes and its entry.
fn large_file(src: &Path, seed: u8) -> (Vec<u8>, Entry) {
    let size = (24 << 20) + 5;
    let big = pattern(size, seed);
    std::fs::write(src.join("huge"), &big).unwrap();
    let mtime = std::fs::metadata(src.join("huge")).unwrap();
    let mtime = ferry_common::model::Timestamp { sec: mtime.mtime(), nsec: mtime.mtime_nsec() as u32 };
    (big, Entry { path: b"huge".to_vec(), kind: EntryKind::File, size: size as u64, mtime, compare_checksum: false, check_dest: false })
}

/// Writes `file` as parts of `part` bytes, from `readers` reader contexts taking turns, into
/// one multipart write at a writer that reaches `dst`; then commits it there.
fn copy_in_parts(readers: &[ExecContext], writer: &ExecContext, file: &Entry, part: u64) -> ferry_worker::engine::Outcome {
    let rate = RateLimiter::new(0);
    let meta = parts::upload_meta(&readers[0], file).unwrap();
    let (upload, _) = Direct(writer.dst().unwrap().as_ref()).open_upload(&file.path, file.size, &meta).unwrap();
    let mut set = PartSet { upload_id: Some(upload.clone()), ..PartSet::default() };
    for (i, offset) in (0..file.size).step_by(part as usize).enumerate() {
        let reader = &readers[i % readers.len()];
        let len = part.min(file.size - offset);
        // The reader is at another site: its ranges cross to the writer's process.
        let flaky = Flaky { ctx: writer, budget: 2, cuts: usize::from(i == 1), opened: AtomicUsize::new(0) };
        let done =
            parts::run_part(reader, &flaky, &settings(&rate, false), file, frame::PartTarget { upload: upload.clone(), offset, len }, &mut Vec::new()).unwrap();
        set.done.push((i as u32, done.crc, len));
        set.source = set.source.or(done.source);
    }
    parts::run_commit(writer, file, &set, None, &mut Vec::new())
}

#[test]
fn a_large_file_is_written_in_parts_by_two_readers_and_put_in_place_once_whole() {
    let (src, dst) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (big, file) = large_file(src.path(), 3);
    let s = spec(src.path(), dst.path());
    let readers = [
        ExecContext::open_for(s.clone(), Reach { source: true, destination: false }).unwrap(),
        ExecContext::open_for(s.clone(), Reach { source: true, destination: false }).unwrap(),
    ];
    let writer = ExecContext::open_for(s, Reach { source: false, destination: true }).unwrap();
    let out = copy_in_parts(&readers, &writer, &file, 8 << 20);
    assert!(out.result.failures.is_empty(), "{:?}", out.result.failures);
    assert_eq!(out.report[0].status, EntryStatus::Transferred);
    assert_eq!(out.report[0].crc32c, Some(crc32c::crc32c(&big)), "the part CRCs combine into the file's");
    assert!(std::fs::read(dst.path().join("huge")).unwrap() == big);
    assert_same_tree(src.path(), dst.path(), &[file]);
}

// ---- who may hold a link: certificates decide, not registrations ----

/// A CA with agents `(name, labels)`.
fn labelled(dir: &Path, agents: &[(&str, &[&str])]) -> Vec<Identity> {
    init_ca(dir).unwrap();
    let ca = Ca::load(dir).unwrap();
    agents.iter().map(|(n, l)| Identity::issue(&ca, n, &l.iter().map(|s| s.to_string()).collect::<Vec<_>>(), 30).unwrap()).collect()
}

/// Starts a writer agent with `id` for `ctx` on loopback; returns its address and counters.
fn serve_writer(rt: &tokio::runtime::Runtime, id: &Identity, ctx: ExecContext, admission: Arc<Admission>) -> (std::net::SocketAddr, Arc<ServeStats>) {
    let _guard = rt.enter();
    let endpoint = quic::bind("127.0.0.1:0".parse().unwrap(), id, &LinkTuning::default()).unwrap();
    let addr = endpoint.local_addr().unwrap();
    let registry = Registry::default();
    registry.insert(Arc::new(ctx));
    let stats = Arc::new(ServeStats::default());
    rt.spawn(quic::serve(endpoint, registry, stats.clone(), admission));
    (addr, stats)
}

fn bound_spec(src: &Path, dst: &Path) -> ExecutionSpec {
    let mut s = spec(src, dst);
    s.link = LinkSettings { source_agents: vec!["onprem".into()], destination_agents: vec!["cloud".into()], ..Default::default() };
    s
}

fn files_under(root: &Path) -> usize {
    walk(root).iter().filter(|p| root.join(p).is_file()).count()
}

#[test]
fn a_writer_takes_nothing_from_an_agent_the_execution_does_not_read_through() {
    let (cadir, src, dst) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let ids = labelled(cadir.path(), &[("writer", &["cloud"]), ("reader", &["onprem"]), ("stranger", &["cloud"])]);
    let entries = make_tree(src.path());
    let spec = bound_spec(src.path(), dst.path());
    let rt = runtime();
    let writer_ctx = ExecContext::open_for(spec.clone(), Reach { source: false, destination: true }).unwrap();
    let (addr, stats) = serve_writer(&rt, &ids[0], writer_ctx, Arc::default());
    let reader_ctx = ExecContext::open_for(spec, Reach { source: true, destination: false }).unwrap();
    let rate = RateLimiter::new(0);
    let _guard = rt.enter();

    // An enrolled agent with the destination's label, but not one the source is read through.
    let stranger = LinkClient::new(&ids[2], LinkTuning::default()).unwrap();
    let out = std::thread::scope(|s| {
        s.spawn(|| run_transfer(&reader_ctx, &Remote { client: &stranger, addr }, &settings(&rate, false), entries.clone(), Tries::FIRST, &mut Vec::new()))
            .join()
            .unwrap()
    });
    assert_eq!(out.result.counters.files_transferred, 0, "{:?}", out.result.counters);
    assert_eq!(files_under(dst.path()), 0, "nothing from the stranger reached the destination");
    assert!(stats.stream_errors.load(Ordering::Relaxed) >= 1);

    // The agent the execution reads through is served.
    let reader = LinkClient::new(&ids[1], LinkTuning::default()).unwrap();
    let out = std::thread::scope(|s| {
        s.spawn(|| run_transfer(&reader_ctx, &Remote { client: &reader, addr }, &settings(&rate, false), entries.clone(), Tries::FIRST, &mut Vec::new()))
            .join()
            .unwrap()
    });
    assert!(out.result.failures.is_empty(), "{:?}", out.result.failures);
    assert_same_tree(src.path(), dst.path(), &entries);
}

#[test]
fn a_reader_sends_nothing_to_a_writer_whose_certificate_lacks_the_destination_label() {
    let (cadir, src, dst, elsewhere) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let ids = labelled(cadir.path(), &[("writer", &["cloud"]), ("reader", &["onprem"]), ("impostor", &[])]);
    let entries = make_tree(src.path());
    let spec = bound_spec(src.path(), dst.path());
    let rt = runtime();
    let (real, _) = serve_writer(&rt, &ids[0], ExecContext::open_for(spec.clone(), Reach { source: false, destination: true }).unwrap(), Arc::default());
    // The impostor registered itself with the destination's label (its registration is only
    // what it says); it would write whatever came to a destination of its own.
    let mut its_spec = spec.clone();
    its_spec.destination = elsewhere.path().display().to_string();
    let (impostor, impostor_stats) =
        serve_writer(&rt, &ids[2], ExecContext::open_for(its_spec, Reach { source: false, destination: true }).unwrap(), Arc::default());
    let reader_ctx = ExecContext::open_for(spec.clone(), Reach { source: true, destination: false }).unwrap();
    let _guard = rt.enter();
    let client = LinkClient::new(&ids[1], LinkTuning::default()).unwrap();
    let rate = RateLimiter::new(0);
    let writers = vec![
        ferry_worker::transport::WriterAgent { name: "impostor".into(), addr: impostor },
        ferry_worker::transport::WriterAgent { name: "writer".into(), addr: real },
    ];
    let connector = ferry_worker::transport::Remote::new(&client, &spec.link, writers, 0, None);
    let out = std::thread::scope(|s| {
        s.spawn(|| run_transfer(&reader_ctx, &connector, &settings(&rate, false), entries.clone(), Tries::FIRST, &mut Vec::new())).join().unwrap()
    });
    assert!(out.result.failures.is_empty(), "{:?}", out.result.failures);
    assert_same_tree(src.path(), dst.path(), &entries);
    assert_eq!(files_under(elsewhere.path()), 0, "the impostor received nothing");
    assert_eq!(impostor_stats.streams.load(Ordering::Relaxed), 0, "no stream was even opened to the impostor");
}

#[test]
fn a_revoked_agent_is_refused_at_its_next_handshake_in_both_directions() {
    let (cadir, src, dst) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let ids = labelled(cadir.path(), &[("writer", &["cloud"]), ("reader", &["onprem"])]);
    std::fs::write(src.path().join("f"), b"data").unwrap();
    let entries = vec![entry(b"f", EntryKind::File, 4)];
    let spec = bound_spec(src.path(), dst.path());
    let rt = runtime();
    let store: ferry_common::store::SharedStore = Arc::new(ferry_common::store::MemStore::new());
    let admission = Arc::new(Admission::with_store(store.clone()));
    let (addr, stats) = serve_writer(&rt, &ids[0], ExecContext::open_for(spec.clone(), Reach { source: false, destination: true }).unwrap(), admission.clone());
    let reader_ctx = ExecContext::open_for(spec, Reach { source: true, destination: false }).unwrap();
    let rate = RateLimiter::new(0);
    let _guard = rt.enter();
    rt.block_on(revoke(&store, "reader")).unwrap();

    let client = LinkClient::new(&ids[1], LinkTuning::default()).unwrap();
    let out = std::thread::scope(|s| {
        s.spawn(|| run_transfer(&reader_ctx, &Remote { client: &client, addr }, &settings(&rate, false), entries.clone(), Tries::FIRST, &mut Vec::new()))
            .join()
            .unwrap()
    });
    assert_eq!(out.result.counters.files_transferred, 0);
    assert!(!dst.path().join("f").exists());
    assert!(stats.refused_handshakes.load(Ordering::Relaxed) >= 1, "the writer refused the revoked reader's connection");

    // And a reader that checks revocations never hands data to a revoked writer.
    rt.block_on(revoke(&store, "writer")).unwrap();
    let checking = LinkClient::new(&ids[1], LinkTuning::default()).unwrap().with_admission(admission);
    let e = std::thread::scope(|s| s.spawn(|| checking.open(addr, "writer").map(|_| ())).join().unwrap()).unwrap_err();
    assert!(e.to_string().contains("revoked"), "{e}");
}
