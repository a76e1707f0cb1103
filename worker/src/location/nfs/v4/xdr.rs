//! XDR encoding into a growing buffer and bounds-checked decoding from a slice. Decoding never
//! panics: every length is checked against what is left and against a caller's limit.

use super::error::Error;

/// An XDR encoder.
#[derive(Default, Clone, Debug)]
pub struct Enc {
    pub buf: Vec<u8>,
}

impl Enc {
    pub fn new() -> Enc {
        Enc { buf: Vec::with_capacity(256) }
    }
    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }
    pub fn i64(&mut self, v: i64) -> &mut Self {
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }
    pub fn bool(&mut self, v: bool) -> &mut Self {
        self.u32(v as u32)
    }
    /// Fixed-length opaque data (padded to 4 bytes).
    pub fn fixed(&mut self, v: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(v);
        self.pad(v.len());
        self
    }
    /// Variable-length opaque data or string: length, bytes, padding.
    pub fn opaque(&mut self, v: &[u8]) -> &mut Self {
        self.u32(v.len() as u32);
        self.fixed(v)
    }
    fn pad(&mut self, len: usize) {
        let pad = (4 - len % 4) % 4;
        self.buf.extend_from_slice(&[0u8; 3][..pad]);
    }
}

/// An XDR decoder over a received reply.
#[derive(Clone, Debug)]
pub struct Dec<'a> {
    buf: &'a [u8],
    pos: usize,
}

fn short(what: &str) -> Error {
    Error::Protocol(format!("the reply ends inside {what}"))
}

impl<'a> Dec<'a> {
    pub fn new(buf: &'a [u8]) -> Dec<'a> {
        Dec { buf, pos: 0 }
    }
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }
    pub fn position(&self) -> usize {
        self.pos
    }
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], Error> {
        if self.remaining() < n {
            return Err(short(what));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    pub fn u32(&mut self, what: &str) -> Result<u32, Error> {
        let b = self.take(4, what)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    pub fn u64(&mut self, what: &str) -> Result<u64, Error> {
        let b = self.take(8, what)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }
    pub fn i64(&mut self, what: &str) -> Result<i64, Error> {
        Ok(self.u64(what)? as i64)
    }
    pub fn bool(&mut self, what: &str) -> Result<bool, Error> {
        match self.u32(what)? {
            0 => Ok(false),
            1 => Ok(true),
            v => Err(Error::Protocol(format!("{what}: {v} is not an XDR boolean"))),
        }
    }
    /// Fixed-length opaque data of `n` bytes (plus padding).
    pub fn fixed(&mut self, n: usize, what: &str) -> Result<&'a [u8], Error> {
        let s = self.take(n, what)?;
        self.take((4 - n % 4) % 4, what)?;
        Ok(s)
    }
    pub fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], Error> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.fixed(N, what)?);
        Ok(a)
    }
    /// Variable-length opaque data of at most `max` bytes.
    pub fn opaque(&mut self, max: usize, what: &str) -> Result<&'a [u8], Error> {
        let n = self.u32(what)? as usize;
        if n > max {
            return Err(Error::Protocol(format!("{what} is {n} bytes long, more than the limit of {max}")));
        }
        self.fixed(n, what)
    }
    /// The element count of an array whose elements take at least `min_elem` bytes each: at
    /// most `max`, and no more than the rest of the reply could hold.
    pub fn count(&mut self, max: usize, min_elem: usize, what: &str) -> Result<usize, Error> {
        let n = self.u32(what)? as usize;
        if n > max || n.saturating_mul(min_elem.max(1)) > self.remaining() {
            return Err(Error::Protocol(format!("{what} claims {n} elements, more than the reply can hold")));
        }
        Ok(n)
    }
    /// The rest of the buffer.
    pub fn rest(&mut self) -> &'a [u8] {
        let s = &self.buf[self.pos..];
        self.pos = self.buf.len();
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_padding() {
        let mut e = Enc::new();
        e.u32(7).opaque(b"abcde").u64(u64::MAX).i64(-5).bool(true);
        assert_eq!(e.buf.len(), 4 + 4 + 8 + 8 + 8 + 4);
        let mut d = Dec::new(&e.buf);
        assert_eq!(d.u32("a").unwrap(), 7);
        assert_eq!(d.opaque(16, "b").unwrap(), b"abcde");
        assert_eq!(d.u64("c").unwrap(), u64::MAX);
        assert_eq!(d.i64("d").unwrap(), -5);
        assert!(d.bool("e").unwrap());
        assert!(d.u32("f").is_err());
    }

    #[test]
    fn hostile_lengths_are_refused() {
        let mut e = Enc::new();
        e.u32(u32::MAX);
        assert!(Dec::new(&e.buf).opaque(usize::MAX, "x").is_err());
        assert!(Dec::new(&e.buf).count(usize::MAX, 4, "x").is_err());
    }
}
