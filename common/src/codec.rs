//! The codec for every value ferry persists in the Store.
//!
//! Layout: one version byte ([`FORMAT_V1`]), then the value as a MessagePack map (rmp-serde
//! `to_vec_named`). Maps rather than arrays, so fields can be added with `#[serde(default)]`
//! without breaking older readers; the version byte lets a future layout change be detected
//! instead of misread.
//!
//! A value whose map is larger than [`COMPRESS_ABOVE`] bytes is stored as [`FORMAT_V1_ZSTD`]
//! instead: the same map, zstd-compressed (level 1). Shard bodies of hundreds of paths, with
//! every field name repeated per entry, shrink several times, and that is less for etcd to
//! write to its log, keep in memory until a snapshot and hold in its history (etcd was most of
//! a large run's CPU). A compressed value never expands past [`MAX_EXPANDED`] bytes: a hostile
//! one is an error, not an allocation.

use serde::{de::DeserializeOwned, Serialize};

pub const FORMAT_V1: u8 = 0xF1;
/// [`FORMAT_V1`], zstd-compressed.
pub const FORMAT_V1_ZSTD: u8 = 0xF2;
/// Maps at most this long are stored as they are: compressing them gains little.
pub const COMPRESS_ABOVE: usize = 2048;
/// The most a compressed value may expand to (the Store refuses values of over 1.5 MiB).
pub const MAX_EXPANDED: usize = 8 << 20;

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("stored value is empty")]
    Empty,
    #[error("stored value has format marker {0:#04x}, this ferry reads {FORMAT_V1:#04x} and {FORMAT_V1_ZSTD:#04x} (upgrade ferry)")]
    UnknownVersion(u8),
    #[error("stored value does not decode: {0}")]
    Decode(#[from] rmp_serde::decode::Error),
    #[error("value does not encode: {0}")]
    Encode(#[from] rmp_serde::encode::Error),
    #[error("stored value does not decompress (damaged, or larger than {MAX_EXPANDED} bytes): {0}")]
    Decompress(String),
}

pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, CodecError> {
    let mut out = Vec::with_capacity(128);
    out.push(FORMAT_V1);
    rmp_serde::encode::write_named(&mut out, value)?;
    if out.len() > COMPRESS_ABOVE + 1 {
        if let Ok(packed) = zstd::bulk::compress(&out[1..], 1) {
            if packed.len() + 1 < out.len() {
                let mut z = Vec::with_capacity(packed.len() + 1);
                z.push(FORMAT_V1_ZSTD);
                z.extend_from_slice(&packed);
                return Ok(z);
            }
        }
    }
    Ok(out)
}

pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    match bytes.split_first() {
        None => Err(CodecError::Empty),
        Some((&FORMAT_V1, rest)) => Ok(rmp_serde::from_slice(rest)?),
        Some((&FORMAT_V1_ZSTD, rest)) => {
            let map = zstd::bulk::decompress(rest, MAX_EXPANDED).map_err(|e| CodecError::Decompress(e.to_string()))?;
            Ok(rmp_serde::from_slice(&map)?)
        }
        Some((&v, _)) => Err(CodecError::UnknownVersion(v)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    struct V1 {
        a: u32,
    }
    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    struct V2 {
        a: u32,
        #[serde(default)]
        b: Option<String>,
    }

    #[test]
    fn exact_bytes_of_a_small_value() {
        // 0xF1 marker, fixmap(1), fixstr "a", positive fixint 7.
        assert_eq!(encode(&V1 { a: 7 }).unwrap(), vec![0xF1, 0x81, 0xA1, b'a', 0x07]);
    }

    #[test]
    fn newer_fields_are_optional_for_old_values() {
        let old = encode(&V1 { a: 3 }).unwrap();
        assert_eq!(decode::<V2>(&old).unwrap(), V2 { a: 3, b: None });
    }

    #[test]
    fn large_values_are_stored_compressed_and_read_back() {
        #[derive(Serialize, Deserialize, Debug, PartialEq)]
        struct Paths {
            paths: Vec<String>,
        }
        let v = Paths { paths: (0..1000).map(|i| format!("projects/alpha/build/output/file-{i:05}.o")).collect() };
        let plain_len = rmp_serde::to_vec_named(&v).unwrap().len();
        let bytes = encode(&v).unwrap();
        assert_eq!(bytes[0], FORMAT_V1_ZSTD);
        assert!(bytes.len() * 4 < plain_len, "{} bytes compressed from {plain_len}", bytes.len());
        assert_eq!(decode::<Paths>(&bytes).unwrap(), v);
        assert_eq!(encode(&V1 { a: 1 }).unwrap()[0], FORMAT_V1, "small values stay as they are");
    }

    #[test]
    fn a_compressed_value_that_expands_too_far_is_an_error() {
        let bomb = zstd::bulk::compress(&vec![0u8; MAX_EXPANDED + 1], 19).unwrap();
        let mut bytes = vec![FORMAT_V1_ZSTD];
        bytes.extend(bomb);
        assert!(matches!(decode::<V1>(&bytes), Err(CodecError::Decompress(_))));
        assert!(matches!(decode::<V1>(&[FORMAT_V1_ZSTD, 1, 2, 3]), Err(CodecError::Decompress(_))));
    }

    #[test]
    fn unknown_marker_and_garbage_are_errors_not_panics() {
        assert!(matches!(decode::<V1>(&[]), Err(CodecError::Empty)));
        assert!(matches!(decode::<V1>(&[0x01, 0x80]), Err(CodecError::UnknownVersion(1))));
        assert!(decode::<V1>(&[0xF1, 0xFF, 0x00]).is_err());
    }
}
