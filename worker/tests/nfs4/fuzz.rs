//! Random and truncated byte strings fed to every reply decoder never panic.

use ferry_worker::location::nfs::v4::attr::{Bitmap, Raw};
use ferry_worker::location::nfs::v4::proto::{self, Reply};
use ferry_worker::location::nfs::v4::rpc::parse_reply;
use ferry_worker::location::nfs::v4::xdr::{Dec, Enc};

struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    /// Mostly small numbers, sometimes huge ones: the lengths that break decoders.
    fn word(&mut self) -> u32 {
        match self.next() % 8 {
            0 => u32::MAX,
            1 => self.next() as u32,
            2 => 0,
            3 => 1,
            _ => (self.next() % 40) as u32,
        }
    }
    fn bytes(&mut self) -> Vec<u8> {
        let words = (self.next() % 64) as usize;
        let mut b = Vec::new();
        for _ in 0..words {
            b.extend_from_slice(&self.word().to_be_bytes());
        }
        let extra = (self.next() % 4) as usize;
        b.truncate(b.len().saturating_sub(extra));
        b
    }
}

/// Every decoder, on one buffer (as the body of a compound's next result).
fn decode_all(buf: &[u8]) {
    let _ = parse_reply(buf);
    let _ = Raw::decode(&mut Dec::new(buf));
    let _ = Bitmap::decode(&mut Dec::new(buf));
    if let Ok(mut r) = Reply::parse(buf) {
        let _ = r.sequence();
    }
    type D = fn(&mut Reply) -> bool;
    let decoders: &[D] = &[
        |r| r.getfh().is_ok(),
        |r| r.getattr().is_ok(),
        |r| r.open().is_ok(),
        |r| r.close().is_ok(),
        |r| r.read(1 << 20).is_ok(),
        |r| r.write().is_ok(),
        |r| r.commit().is_ok(),
        |r| r.readdir().is_ok(),
        |r| r.setattr().is_ok(),
        |r| r.create().is_ok(),
        |r| r.link().is_ok(),
        |r| r.readlink().is_ok(),
        |r| r.remove().is_ok(),
        |r| r.rename().is_ok(),
        |r| r.exchange_id().is_ok(),
        |r| r.create_session().is_ok(),
        |r| r.sequence().is_ok(),
        |r| r.done(proto::OP_PUTFH, "PUTFH").is_ok(),
    ];
    for (i, d) in decoders.iter().enumerate() {
        // as it comes, and behind a well-formed compound header naming the right operation
        if let Ok(mut r) = Reply::parse(buf) {
            let _ = d(&mut r);
        }
        let ops = [10, 9, 18, 4, 25, 38, 5, 26, 34, 6, 11, 27, 28, 29, 42, 43, 53, 22];
        let mut e = Enc::new();
        e.u32(0).opaque(b"").u32(1).u32(ops[i]).u32(0);
        e.buf.extend_from_slice(buf);
        let mut r = Reply::parse(&e.buf).unwrap();
        let _ = d(&mut r);
    }
}

#[test]
fn random_replies_never_panic() {
    let mut rng = XorShift(0x2545f4914f6cdd1d);
    for _ in 0..30_000 {
        decode_all(&rng.bytes());
    }
}

/// A well-formed READDIR reply with attributes, then every truncation and many corruptions of it.
#[test]
fn truncated_and_corrupted_replies_never_panic() {
    let mut e = Enc::new();
    e.u32(0).opaque(b"").u32(1).u32(26).u32(0); // READDIR OK
    e.fixed(&[1; 8]);
    for i in 0..3u64 {
        e.bool(true).u64(i + 3).opaque(format!("name{i}").as_bytes());
        let mut attrs = Enc::new();
        attrs.u32(1).u64(42).u64(7).u64(9); // type, size, fsid
        attrs.u32(0); // rdattr_error
        attrs.opaque(&[9; 20]); // filehandle
        attrs.u32(0o644).opaque(b"1000").opaque(b"100@dom"); // mode, owner, group
        attrs.i64(-5).u32(3); // time_access
        Bitmap::of(&[1, 4, 8, 11, 19, 33, 36, 37, 47]).encode(&mut e);
        e.opaque(&attrs.buf);
    }
    e.bool(false).bool(true);
    let good = e.buf.clone();
    let mut r = Reply::parse(&good).unwrap();
    let (_, entries, eof) = r.readdir().unwrap();
    assert_eq!(entries.len(), 3);
    assert!(eof);
    let a = entries[0].2.attr().unwrap();
    assert_eq!((a.uid, a.gid, a.atime, a.size), (1000, 100, (-5, 3), 42));
    for n in 0..good.len() {
        decode_all(&good[..n]);
        assert!(Reply::parse(&good[..n]).and_then(|mut r| r.readdir()).is_err());
    }
    let mut rng = XorShift(99);
    for _ in 0..20_000 {
        let mut b = good.clone();
        for _ in 0..1 + rng.next() % 4 {
            let at = (rng.next() as usize) % (b.len() / 4) * 4;
            b[at..at + 4].copy_from_slice(&rng.word().to_be_bytes());
        }
        decode_all(&b);
    }
}
