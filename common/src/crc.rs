//! CRC32C (Castagnoli) helpers. CRC32C is ferry's one integrity checksum: computed while the
//! source is read, checked on arrival, and compared with what S3 stores at rest.

/// Extends `crc` over `data` (streaming form).
#[inline]
pub fn extend(crc: u32, data: &[u8]) -> u32 {
    crc32c::crc32c_append(crc, data)
}

/// CRC of `a ++ b`, given CRC(a), CRC(b) and b's length. This is how part and chunk CRCs
/// build the whole-file CRC without reading anything twice.
#[inline]
pub fn combine(crc_a: u32, crc_b: u32, len_b: u64) -> u32 {
    crc32c::crc32c_combine(crc_a, crc_b, len_b as usize)
}

/// CRC of `len` zero bytes, in O(log len) combines, so holes in sparse files are never read.
pub fn zeros(len: u64) -> u32 {
    const BLOCK: usize = 64 * 1024;
    static ZERO: [u8; BLOCK] = [0u8; BLOCK];
    if len <= BLOCK as u64 {
        return crc32c::crc32c(&ZERO[..len as usize]);
    }
    // Binary decomposition: block_crc doubles each step.
    let mut result: Option<(u32, u64)> = None;
    let mut block_crc = crc32c::crc32c(&ZERO);
    let mut block_len = BLOCK as u64;
    let mut remaining = len / BLOCK as u64;
    let tail = len % BLOCK as u64;
    while remaining > 0 {
        if remaining & 1 == 1 {
            result = Some(match result {
                None => (block_crc, block_len),
                Some((crc, l)) => (combine(crc, block_crc, block_len), l + block_len),
            });
        }
        block_crc = combine(block_crc, block_crc, block_len);
        block_len *= 2;
        remaining >>= 1;
    }
    let (crc, _) = result.expect("len > BLOCK so at least one block");
    combine(crc, crc32c::crc32c(&ZERO[..tail as usize]), tail)
}

/// Lowercase 8-digit hex, the form reports and S3 (after base64) use.
pub fn to_hex(crc: u32) -> String {
    format!("{crc:08x}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn zeros_matches_direct_computation() {
        for len in [0u64, 1, 4095, 65536, 65537, 3 * 65536 + 17, 1 << 20] {
            let direct = crc32c::crc32c(&vec![0u8; len as usize]);
            assert_eq!(zeros(len), direct, "len {len}");
        }
    }

    proptest! {
        #[test]
        fn combine_equals_crc_of_concatenation(a in proptest::collection::vec(any::<u8>(), 0..2000),
                                               b in proptest::collection::vec(any::<u8>(), 0..2000)) {
            let whole = crc32c::crc32c(&[a.clone(), b.clone()].concat());
            prop_assert_eq!(combine(crc32c::crc32c(&a), crc32c::crc32c(&b), b.len() as u64), whole);
            prop_assert_eq!(extend(crc32c::crc32c(&a), &b), whole);
        }
    }
}
