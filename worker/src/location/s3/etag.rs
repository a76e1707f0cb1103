//! S3 entity tags as a second, independent content check. On S3 (without SSE-KMS) and on most
//! compatible stores, a single upload's ETag is the MD5 of its bytes, a part's ETag is the MD5
//! of the part, and a multipart object's ETag is the MD5 of the parts' binary MD5s followed by
//! `-N`. Where a store keeps no whole-object CRC32C, matching these against MD5s computed from
//! the source bytes verifies what is stored without downloading it.

use md5::{Digest, Md5};

/// Whether `tag` has the shape of a plain MD5 (32 hex digits).
pub fn is_md5(tag: &str) -> bool {
    tag.len() == 32 && tag.bytes().all(|b| b.is_ascii_hexdigit())
}

pub fn md5_hex(data: &[u8]) -> String {
    Md5::digest(data).iter().map(|b| format!("{b:02x}")).collect()
}

/// The ETag of a multipart object made of parts with these ETags; `None` unless every part
/// tag is a plain MD5.
pub fn multipart(part_tags: &[String]) -> Option<String> {
    let mut all = Vec::with_capacity(part_tags.len() * 16);
    for t in part_tags {
        if !is_md5(t) {
            return None;
        }
        for i in 0..16 {
            all.push(u8::from_str_radix(&t[2 * i..2 * i + 2], 16).ok()?);
        }
    }
    Some(format!("{}-{}", md5_hex(&all), part_tags.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multipart_etag_is_the_md5_of_part_md5s() {
        // Two parts "a" and "b": md5(md5("a") ++ md5("b")) with the part count.
        let tags = vec![md5_hex(b"a"), md5_hex(b"b")];
        let mut both = Md5::digest(b"a").to_vec();
        both.extend_from_slice(&Md5::digest(b"b"));
        assert_eq!(multipart(&tags), Some(format!("{}-2", md5_hex(&both))));
        assert_eq!(multipart(&["not-md5".to_string()]), None);
        assert!(is_md5(&md5_hex(b"")) && !is_md5("abc-2"));
    }
}
