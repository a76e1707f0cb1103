//! The codec for every value ferry persists in the Store.
//!
//! Layout: one version byte ([`FORMAT_V1`]), then the value as a MessagePack map (rmp-serde
//! `to_vec_named`). Maps rather than arrays, so fields can be added with `#[serde(default)]`
//! without breaking older readers; the version byte lets a future layout change be detected
//! instead of misread.

use serde::{de::DeserializeOwned, Serialize};

pub const FORMAT_V1: u8 = 0xF1;

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("stored value is empty")]
    Empty,
    #[error("stored value has format marker {0:#04x}, this ferry reads {FORMAT_V1:#04x} (upgrade ferry)")]
    UnknownVersion(u8),
    #[error("stored value does not decode: {0}")]
    Decode(#[from] rmp_serde::decode::Error),
    #[error("value does not encode: {0}")]
    Encode(#[from] rmp_serde::encode::Error),
}

pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, CodecError> {
    let mut out = Vec::with_capacity(128);
    out.push(FORMAT_V1);
    rmp_serde::encode::write_named(&mut out, value)?;
    Ok(out)
}

pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    match bytes.split_first() {
        None => Err(CodecError::Empty),
        Some((&FORMAT_V1, rest)) => Ok(rmp_serde::from_slice(rest)?),
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
    fn unknown_marker_and_garbage_are_errors_not_panics() {
        assert!(matches!(decode::<V1>(&[]), Err(CodecError::Empty)));
        assert!(matches!(decode::<V1>(&[0x01, 0x80]), Err(CodecError::UnknownVersion(1))));
        assert!(decode::<V1>(&[0xF1, 0xFF, 0x00]).is_err());
    }
}
