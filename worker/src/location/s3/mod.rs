//! S3 and S3-compatible object storage: `s3://bucket/prefix`.
//!
//! Directories are key prefixes: listing one is a ListObjectsV2 with delimiter `/`, whose
//! common prefixes are the subdirectories. A directory's own metadata lives on a zero-byte
//! marker object `dir/`. POSIX metadata travels as user metadata ([`meta`]). Every upload
//! carries its CRC32C, computed at the source, so the server checks the bytes on arrival;
//! multipart uploads are completed with the FULL_OBJECT CRC32C of the whole file (the part
//! CRCs combined), so HeadObject with checksum mode returns the very CRC the source read
//! produced.
//!
//! The SDK is async; [`Location`] is blocking. Each location owns a small runtime for the
//! SDK's I/O and blocks the calling thread (a blocking-pool thread) on it.
//!
//! Reading is one GET per object, streamed ([`io::S3Source`]); writing buffers one object
//! (up to 16 MiB, one PUT) or one part at a time ([`io::S3Sink`]).

pub mod error;
pub mod etag;
pub mod instrument;
mod io;
pub mod meta;

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{Region, RequestChecksumCalculation, ResponseChecksumValidation};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{
    ChecksumAlgorithm, ChecksumMode, ChecksumType, CompletedMultipartUpload, CompletedPart, Delete, ObjectIdentifier, ServerSideEncryption, StorageClass,
};
use aws_sdk_s3::Client;
use ferry_common::error::{ErrorKind, FerryError};
use ferry_common::model::{EntryKind, S3Settings, Timestamp};

use self::error::classify;
use super::{
    Capabilities, Completed, Durable, Limits, Listed, Location, Meta, Page, Profile, Sink, Source, Special, Staged, StoredPart, Target, Token, Xattrs,
};

/// S3's limits on multipart uploads.
pub const MAX_PARTS: u64 = 10_000;
pub const MIN_PART_SIZE: u64 = 5 << 20;
pub const MAX_OBJECT_SIZE: u64 = 5 << 40;
/// Longest key, prefix included.
pub const MAX_KEY_BYTES: usize = 1024;
/// Objects up to this size are uploaded in one request, and this is the smallest part of a
/// multipart upload: what one writer buffers at a time.
pub const OBJECT_PART_MIN: u64 = 16 << 20;

/// What an S3 location holds: files, symlinks (as objects holding their target) and
/// directory markers, with POSIX metadata in user metadata, each with a stored CRC32C.
pub fn profile(url: &S3Url) -> Profile {
    Profile {
        capabilities: Capabilities {
            hard_links: false,
            holes: false,
            xattrs: false,
            special_files: false,
            ownership: true,
            ns_times: true,
            symlink_times: true,
            dir_markers: true,
            atomic_rename: false,
            stored_checksum: true,
            // CopyObject could copy within a store without the bytes passing by; nothing uses
            // it yet, so it is not declared.
            server_side_copy: false,
            complete_listing: false,
            cheap_stat: false,
            object_tags: true,
        },
        limits: Limits {
            max_name_bytes: None,
            max_path_bytes: Some(MAX_KEY_BYTES.saturating_sub(url.prefix.len())),
            utf8_names: true,
            max_file_bytes: Some(MAX_OBJECT_SIZE),
            part_unit_min: Some(OBJECT_PART_MIN),
            max_parts: Some(MAX_PARTS),
        },
    }
}

/// A parsed `s3://bucket/prefix` URI.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct S3Url {
    pub bucket: String,
    /// Empty, or ends with `/`.
    pub prefix: String,
}

impl S3Url {
    pub fn parse(uri: &str) -> Result<S3Url, String> {
        let rest = uri.strip_prefix("s3://").ok_or_else(|| format!("{uri} is not an s3:// URI"))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let valid_bucket = (3..=63).contains(&bucket.len())
            && bucket.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-')
            && !bucket.starts_with(['.', '-'])
            && !bucket.ends_with(['.', '-']);
        if !valid_bucket {
            return Err(format!("{uri}: '{bucket}' is not a valid bucket name (3-63 lowercase letters, digits, '.' and '-'; write s3://bucket/prefix)"));
        }
        let trimmed = prefix.trim_end_matches('/');
        if trimmed.split('/').any(|c| c == "." || c == "..") || trimmed.contains("//") || trimmed.starts_with('/') {
            return Err(format!("{uri}: the prefix must not contain '.', '..' or empty components (write s3://bucket/a/b)"));
        }
        let prefix = if trimmed.is_empty() { String::new() } else { format!("{trimmed}/") };
        Ok(S3Url { bucket: bucket.to_string(), prefix })
    }
}

/// CRC32C as S3 spells it: base64 of the four big-endian bytes.
pub fn crc_to_base64(crc: u32) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let b = crc.to_be_bytes();
    let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
    let chars = [n >> 18, (n >> 12) & 63, (n >> 6) & 63, n & 63, (b[3] as u32) >> 2, ((b[3] as u32) & 3) << 4];
    let mut s: String = chars.iter().map(|&i| ALPHABET[i as usize] as char).collect();
    s.push_str("==");
    s
}

/// The inverse of [`crc_to_base64`]; `None` for anything that is not a plain CRC32C (a
/// composite multipart checksum looks like `xxxx-3`).
pub fn crc_from_base64(s: &str) -> Option<u32> {
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let s = s.as_bytes();
    if s.len() != 8 || &s[6..] != b"==" {
        return None;
    }
    let mut n: u64 = 0;
    for &c in &s[..6] {
        n = n << 6 | val(c)? as u64;
    }
    // 36 bits were read; the last 4 are padding.
    Some((n >> 4) as u32)
}

/// The `<Part>` elements of a ListParts body the SDK could not parse. Only used when the
/// whole list fits one response (it is not truncated).
fn parse_list_parts_fallback(body: &[u8]) -> Option<Vec<StoredPart>> {
    let text = std::str::from_utf8(body).ok()?;
    if !text.contains("<ListPartsResponse") || text.contains("<IsTruncated>true</IsTruncated>") {
        return None;
    }
    let field = |part: &str, name: &str| -> Option<String> {
        let open = format!("<{name}>");
        let start = part.find(&open)? + open.len();
        let end = part[start..].find(&format!("</{name}>"))? + start;
        Some(part[start..end].replace("&quot;", "\"").replace("&#34;", "\""))
    };
    let mut parts = Vec::new();
    for chunk in text.split("<Part>").skip(1) {
        let part = chunk.split("</Part>").next()?;
        parts.push(StoredPart {
            number: field(part, "PartNumber")?.parse().ok()?,
            size: field(part, "Size")?.parse().ok()?,
            crc32c: field(part, "ChecksumCRC32C").and_then(|c| crc_from_base64(&c)),
            etag: field(part, "ETag")?.trim_matches('"').to_string(),
        });
    }
    Some(parts)
}

/// An object's [`Meta`] from the headers HEAD and GET both return.
fn object_meta(
    key: &str,
    content_length: Option<i64>,
    user: Option<&HashMap<String, String>>,
    last_modified: Option<&aws_sdk_s3::primitives::DateTime>,
    checksum_type: Option<&ChecksumType>,
    crc32c: Option<&str>,
    etag: Option<&str>,
) -> Meta {
    let mut m = Meta { size: content_length.unwrap_or(0).max(0) as u64, ..Meta::default() };
    meta::from_user_metadata(user, timestamp(last_modified), key.ends_with('/'), &mut m);
    // A multipart object's CRC is only the whole content's when it is FULL_OBJECT; a
    // composite checksum (a CRC of part CRCs) cannot be compared with the source's.
    let whole = match checksum_type {
        Some(ChecksumType::FullObject) => true,
        Some(ChecksumType::Composite) => false,
        _ => !etag.unwrap_or("").contains('-'),
    };
    m.crc32c = crc32c.filter(|_| whole).and_then(crc_from_base64);
    m.multipart = etag.unwrap_or("").contains('-');
    m.etag = etag.map(|t| t.trim_matches('"').to_string());
    m
}

fn timestamp(dt: Option<&aws_sdk_s3::primitives::DateTime>) -> Timestamp {
    dt.map(|d| Timestamp { sec: d.secs(), nsec: d.subsec_nanos() }).unwrap_or_default()
}

pub struct S3Location {
    url: S3Url,
    settings: S3Settings,
    client: Client,
    /// Runs the SDK's I/O; shut down in the background on drop, because a runtime must not be
    /// dropped from async code, and the last reference may go there.
    runtime: Option<tokio::runtime::Runtime>,
}

impl Drop for S3Location {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// The AWS configuration from the standard chain (environment, profiles, instance and
/// container roles) with the execution's region and endpoint. Shared by every AWS API ferry
/// calls (S3, and EFS to resolve file-system IDs).
pub(crate) async fn load_aws_config(settings: &S3Settings) -> aws_config::SdkConfig {
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
    if let Some(r) = &settings.region {
        loader = loader.region(Region::new(r.clone()));
    }
    if let Some(e) = &settings.endpoint_url {
        loader = loader.endpoint_url(e);
    }
    loader.load().await
}

impl S3Location {
    /// Builds the client from the standard AWS chain (environment, profiles, instance and
    /// container roles) plus the execution's settings. Makes no request.
    pub fn open(uri: &str, settings: &S3Settings) -> Result<Self, FerryError> {
        let url = S3Url::parse(uri).map_err(FerryError::config)?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("ferry-s3")
            .enable_all()
            .build()
            .map_err(|e| FerryError::new(ErrorKind::Other, format!("cannot start the S3 client's runtime: {e}")))?;
        // Loaded on the runtime's own thread: this may be called from inside async code.
        let sdk = std::thread::scope(|scope| scope.spawn(|| runtime.block_on(load_aws_config(settings))).join())
            .map_err(|_| FerryError::new(ErrorKind::Other, "loading the AWS configuration failed"))?;
        let mut conf = aws_sdk_s3::config::Builder::from(&sdk)
            .force_path_style(settings.path_style)
            // Throttling and 5xx: exponential backoff with jitter, in the SDK.
            .retry_config(RetryConfig::standard().with_max_attempts(5).with_initial_backoff(Duration::from_millis(200)))
            .timeout_config(TimeoutConfig::builder().connect_timeout(Duration::from_secs(5)).read_timeout(Duration::from_secs(120)).build())
            // ferry sends its own CRC32C, computed while reading the source, and checks what it
            // reads itself: the SDK must not add a second checksum of its own.
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
            .interceptor(instrument::S3Metrics);
        if sdk.region().is_none() {
            // S3-compatible stores rarely care; AWS redirects with a clear error if wrong.
            conf = conf.region(Region::new("us-east-1"));
        }
        Ok(S3Location { url, settings: settings.clone(), client: Client::from_conf(conf.build()), runtime: Some(runtime) })
    }

    fn block<F: Future>(&self, f: F) -> F::Output {
        self.runtime.as_ref().expect("present until drop").block_on(f)
    }

    /// One cheap request that fails the way a whole run would: a missing bucket, refused
    /// credentials, a wrong region or an unreachable endpoint.
    pub fn probe(&self) -> Result<(), FerryError> {
        let target = format!("s3://{}/{}", self.url.bucket, self.url.prefix);
        self.block(async {
            self.client
                .list_objects_v2()
                .bucket(&self.url.bucket)
                .prefix(&self.url.prefix)
                .max_keys(1)
                .customize()
                .config_override(aws_sdk_s3::config::Config::builder().retry_config(RetryConfig::standard().with_max_attempts(2)))
                .send()
                .await
        })
        .map(|_| ())
        .map_err(|e| classify("list", &target, &e))
    }

    /// Storage class and encryption for every object written (both kinds of upload).
    fn storage_class(&self) -> Option<StorageClass> {
        self.settings.storage_class.as_deref().map(StorageClass::from)
    }

    fn sse(&self) -> Option<ServerSideEncryption> {
        self.settings.sse.as_deref().map(ServerSideEncryption::from)
    }

    /// The object key of `rel`; S3 keys are UTF-8, so other names cannot be stored.
    fn key(&self, rel: &[u8]) -> Result<String, FerryError> {
        let rel = std::str::from_utf8(rel).map_err(|_| {
            FerryError::new(ErrorKind::Unsupported, format!("{}: S3 keys must be UTF-8 and this name is not", ferry_common::paths::display(rel)))
        })?;
        Ok(format!("{}{rel}", self.url.prefix))
    }

    fn dir_prefix(&self, dir: &[u8]) -> Result<String, FerryError> {
        Ok(if dir.is_empty() { self.url.prefix.clone() } else { format!("{}/", self.key(dir)?) })
    }

    /// The key of a directory's marker object.
    fn marker_key(&self, rel: &[u8]) -> Result<String, FerryError> {
        self.dir_prefix(rel)
    }

    fn target(&self, key: &str) -> String {
        format!("s3://{}/{key}", self.url.bucket)
    }

    fn head_key(&self, key: &str) -> Result<Option<Meta>, FerryError> {
        let r = self.block(self.client.head_object().bucket(&self.url.bucket).key(key).checksum_mode(ChecksumMode::Enabled).send());
        match r {
            Ok(out) => {
                Ok(Some(object_meta(key, out.content_length(), out.metadata(), out.last_modified(), out.checksum_type(), out.checksum_crc32_c(), out.e_tag())))
            }
            Err(e) => {
                let err = classify("stat", &self.target(key), &e);
                if err.kind == ErrorKind::NotFound {
                    Ok(None)
                } else {
                    Err(err)
                }
            }
        }
    }

    /// Object tags of `rel` as a URL-encoded query string (ObjectTags PRESERVE).
    fn object_tags(&self, rel: &[u8]) -> Result<Option<String>, FerryError> {
        let key = self.key(rel)?;
        let out = match self.block(self.client.get_object_tagging().bucket(&self.url.bucket).key(&key).send()) {
            Ok(out) => out,
            Err(e) => {
                let err = classify("read tags of", &self.target(&key), &e);
                // A server without tagging (s3s-fs, some gateways) holds no tags: the object
                // is copied without any rather than not at all.
                if err.kind == ErrorKind::Unsupported {
                    static SAID: std::sync::Once = std::sync::Once::new();
                    SAID.call_once(|| tracing::warn!(error = %err, "the source server has no object tags; objects are copied without them"));
                    return Ok(None);
                }
                return Err(err);
            }
        };
        if out.tag_set().is_empty() {
            return Ok(None);
        }
        let enc = |s: &str| -> String {
            s.bytes().map(|b| if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) { (b as char).to_string() } else { format!("%{b:02X}") }).collect()
        };
        Ok(Some(out.tag_set().iter().map(|t| format!("{}={}", enc(t.key()), enc(t.value()))).collect::<Vec<_>>().join("&")))
    }
}

impl S3Location {
    /// Writes one whole object with its metadata and `meta.tags` (ObjectTags PRESERVE).
    /// `crc32c` is the body's CRC as the source read it: the server refuses a body that does
    /// not match. Returns the ETag the stored object should carry (the body's MD5).
    fn put_object(&self, key: &str, body: Vec<u8>, meta: &Meta, kind: EntryKind, crc32c: u32) -> Result<String, FerryError> {
        let md5 = etag::md5_hex(&body);
        let req = self
            .client
            .put_object()
            .bucket(&self.url.bucket)
            .key(key)
            .set_metadata(Some(meta::to_user_metadata(meta, kind)))
            .checksum_crc32_c(crc_to_base64(crc32c))
            .body(ByteStream::from(body))
            .set_storage_class(self.storage_class())
            .set_server_side_encryption(self.sse())
            .set_ssekms_key_id(self.settings.sse_kms_key_id.clone())
            .set_tagging(meta.tags.clone());
        // The body's integrity rides on its CRC32C, which the server checks: signing a SHA-256
        // of every body as well would double the hashing on both ends for nothing.
        self.block(req.customize().disable_payload_signing().send()).map_err(|e| classify("upload", &self.target(key), &e))?;
        Ok(md5)
    }

    /// Stores one part; returns its tag, checked against the MD5 of the bytes sent where the
    /// store's tags are MD5s (the CRC32C sent with it is checked by the store itself).
    fn put_part(&self, key: &str, upload: &str, number: u32, data: Vec<u8>, crc32c: u32) -> Result<Option<String>, FerryError> {
        let md5 = etag::md5_hex(&data);
        let req = self
            .client
            .upload_part()
            .bucket(&self.url.bucket)
            .key(key)
            .upload_id(upload)
            .part_number(number as i32)
            .checksum_crc32_c(crc_to_base64(crc32c))
            .body(ByteStream::from(data));
        let tag = self
            .block(req.customize().disable_payload_signing().send())
            .map(|out| out.e_tag().map(|t| t.trim_matches('"').to_ascii_lowercase()))
            .map_err(|e| classify(&format!("upload part {number} of"), &self.target(key), &e))?;
        match &tag {
            Some(t) if etag::is_md5(t) && *t != md5 => Err(FerryError::new(
                ErrorKind::Corrupt,
                format!("part {number} of {} was stored with MD5 {t}, not the MD5 of the bytes sent", self.target(key)),
            )),
            _ => Ok(tag.filter(|t| etag::is_md5(t)).or(Some(md5))),
        }
    }

    /// Completes an upload from the parts the server lists, with the whole object's CRC32C.
    /// Returns the ETag the object should carry: the MD5 of the part MD5s, from the server's
    /// tags or else from `recorded` (servers that list parts without tags).
    fn complete(&self, key: &str, upload: &str, size: u64, crc32c: u32, recorded: &[(u32, String)]) -> Result<Option<String>, FerryError> {
        let stored = self.list_parts_of(key, upload)?;
        let mut by_number: HashMap<u32, StoredPart> = stored.into_iter().map(|p| (p.number, p)).collect();
        let count = by_number.keys().copied().max().unwrap_or(0);
        let mut completed = Vec::with_capacity(count as usize);
        let mut tags = Vec::with_capacity(count as usize);
        let mut total = 0u64;
        for n in 1..=count {
            let p = by_number
                .remove(&n)
                .ok_or_else(|| FerryError::new(ErrorKind::Unavailable, format!("part {n} of {} is missing from its upload", self.target(key))))?;
            total += p.size;
            let tag = Some(p.etag.to_ascii_lowercase()).filter(|t| etag::is_md5(t)).or_else(|| recorded.iter().find(|(m, _)| *m == n).map(|(_, t)| t.clone()));
            tags.push(tag.unwrap_or_default());
            let mut b = CompletedPart::builder().part_number(n as i32).e_tag(format!("\"{}\"", p.etag));
            if let Some(c) = p.crc32c {
                b = b.checksum_crc32_c(crc_to_base64(c));
            }
            completed.push(b.build());
        }
        if total != size {
            return Err(FerryError::new(
                ErrorKind::Unavailable,
                format!("the parts of {} hold {total} bytes, not {size}; the upload starts over", self.target(key)),
            ));
        }
        let req = self
            .client
            .complete_multipart_upload()
            .bucket(&self.url.bucket)
            .key(key)
            .upload_id(upload)
            .checksum_crc32_c(crc_to_base64(crc32c))
            .checksum_type(ChecksumType::FullObject)
            .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(completed)).build());
        self.block(req.send()).map_err(|e| classify("complete the upload of", &self.target(key), &e))?;
        Ok(etag::multipart(&tags))
    }

    fn start_multipart(&self, key: &str, meta: &Meta) -> Result<String, FerryError> {
        let req = self
            .client
            .create_multipart_upload()
            .bucket(&self.url.bucket)
            .key(key)
            .set_metadata(Some(meta::to_user_metadata(meta, EntryKind::File)))
            .checksum_algorithm(ChecksumAlgorithm::Crc32C)
            .checksum_type(ChecksumType::FullObject)
            .set_storage_class(self.storage_class())
            .set_server_side_encryption(self.sse())
            .set_ssekms_key_id(self.settings.sse_kms_key_id.clone())
            .set_tagging(meta.tags.clone());
        let out = self.block(req.send()).map_err(|e| classify("start the upload of", &self.target(key), &e))?;
        out.upload_id().map(str::to_string).ok_or_else(|| FerryError::new(ErrorKind::Other, format!("the server gave no upload id for {}", self.target(key))))
    }

    fn abort_upload(&self, key: &str, upload: &str) -> Result<(), FerryError> {
        match self.block(self.client.abort_multipart_upload().bucket(&self.url.bucket).key(key).upload_id(upload).send()) {
            Ok(_) => Ok(()),
            Err(e) => {
                let err = classify("abort the upload of", &self.target(key), &e);
                if err.kind == ErrorKind::NotFound {
                    Ok(())
                } else {
                    Err(err)
                }
            }
        }
    }

    fn list_parts_of(&self, key: &str, upload: &str) -> Result<Vec<StoredPart>, FerryError> {
        let mut parts = Vec::new();
        let mut marker: Option<String> = None;
        loop {
            let req = self.client.list_parts().bucket(&self.url.bucket).key(key).upload_id(upload).set_part_number_marker(marker.clone());
            let out = match self.block(req.send()) {
                Ok(out) => out,
                Err(e) => {
                    // moto answers with a `ListPartsResponse` root the SDK refuses; its
                    // parts are still right there in the body.
                    if let Some(listed) = e.raw_response().and_then(|r| r.body().bytes()).and_then(parse_list_parts_fallback) {
                        parts.extend(listed);
                        break;
                    }
                    return Err(classify("list the uploaded parts of", &self.target(key), &e));
                }
            };
            for p in out.parts() {
                parts.push(StoredPart {
                    number: p.part_number().unwrap_or(0).max(0) as u32,
                    size: p.size().unwrap_or(0).max(0) as u64,
                    crc32c: p.checksum_crc32_c().and_then(crc_from_base64),
                    etag: p.e_tag().unwrap_or("").trim_matches('"').to_string(),
                });
            }
            if !out.is_truncated().unwrap_or(false) {
                break;
            }
            marker = out.next_part_number_marker().map(str::to_string);
            if marker.is_none() {
                break;
            }
        }
        Ok(parts)
    }

    /// Reads `[0, size)` of an object for its CRC32C.
    fn read_crc(&self, rel: &[u8], size: u64, buf: &mut Vec<u8>) -> Result<u32, FerryError> {
        let mut src = self.open(rel, 0)?;
        super::crc_of(src.as_mut(), 0, size, buf)
    }

    /// The key of `rel` if it exists, and every key below `rel/`.
    fn keys_under(&self, rel: &[u8]) -> Result<Vec<String>, FerryError> {
        let own = self.key(rel)?;
        let mut keys = Vec::new();
        // Listed rather than HEADed: the object, if any, sorts first under its own name, and
        // file-backed servers fail a HEAD of a name that is a directory on disk.
        let first = self
            .block(self.client.list_objects_v2().bucket(&self.url.bucket).prefix(&own).max_keys(1).send())
            .map_err(|e| classify("list", &self.target(&own), &e))?;
        if first.contents().first().and_then(|o| o.key()) == Some(own.as_str()) {
            keys.push(own);
        }
        let below = self.marker_key(rel)?;
        let mut token: Option<String> = None;
        loop {
            let out = self
                .block(self.client.list_objects_v2().bucket(&self.url.bucket).prefix(&below).set_continuation_token(token.clone()).send())
                .map_err(|e| classify("list", &self.target(&below), &e))?;
            keys.extend(out.contents().iter().filter_map(|o| o.key().map(str::to_string)));
            token = out.next_continuation_token().map(str::to_string);
            if token.is_none() {
                return Ok(keys);
            }
        }
    }
}

impl Location for S3Location {
    fn describe(&self, rel: &[u8]) -> String {
        format!("s3://{}/{}{}", self.url.bucket, self.url.prefix, ferry_common::paths::display(rel))
    }

    fn capabilities(&self) -> Capabilities {
        profile(&self.url).capabilities
    }

    fn limits(&self) -> Limits {
        profile(&self.url).limits
    }

    fn list(&self, dir: &[u8], resume: Option<&[u8]>, max: usize) -> Result<Page, FerryError> {
        let prefix = self.dir_prefix(dir)?;
        let mut page = Page::default();
        let mut start_after = resume.map(|r| String::from_utf8_lossy(r).into_owned());
        loop {
            let mut req = self.client.list_objects_v2().bucket(&self.url.bucket).prefix(&prefix).delimiter("/").max_keys(1000);
            if let Some(s) = &start_after {
                req = req.start_after(s);
            }
            let out = self.block(req.send()).map_err(|e| classify("list", &self.target(&prefix), &e))?;
            // Merge objects and common prefixes in key order, so "resume after the last key"
            // is exact.
            let mut keys: Vec<(String, Option<Listed>)> = Vec::new();
            for o in out.contents() {
                let Some(key) = o.key() else { continue };
                let name = &key[prefix.len().min(key.len())..];
                if name.is_empty() {
                    continue; // this directory's own marker
                }
                let meta =
                    Meta { kind: Some(EntryKind::File), size: o.size().unwrap_or(0).max(0) as u64, mtime: timestamp(o.last_modified()), ..Meta::default() };
                keys.push((key.to_string(), Some(Listed { name: name.as_bytes().to_vec(), meta, complete: false, cursor: key.as_bytes().to_vec() })));
            }
            for p in out.common_prefixes() {
                let Some(key) = p.prefix() else { continue };
                let name = key[prefix.len().min(key.len())..].trim_end_matches('/');
                // After a common prefix `a/`, resume at `a0` ('/' + 1): everything in between
                // is under `a/` and was rolled into it.
                let cursor = format!("{}0", key.trim_end_matches('/')).into_bytes();
                let listed = (!name.is_empty()).then(|| Listed {
                    name: name.as_bytes().to_vec(),
                    meta: Meta { kind: Some(EntryKind::Dir), ..Meta::default() },
                    complete: false,
                    cursor,
                });
                keys.push((key.to_string(), listed));
            }
            keys.sort_by(|a, b| a.0.cmp(&b.0));
            let last = keys.last().map(|(k, _)| k.clone());
            page.entries.extend(keys.into_iter().filter_map(|(_, l)| l));
            match (out.is_truncated().unwrap_or(false), last) {
                (true, Some(last)) => {
                    // After a common prefix `a/`, resume at `a0` ('/' + 1): everything in
                    // between is under `a/` and was rolled into it.
                    let next = match last.strip_suffix('/') {
                        Some(stem) => format!("{stem}0"),
                        None => last,
                    };
                    if page.entries.len() >= max {
                        page.resume = Some(next.into_bytes());
                        return Ok(page);
                    }
                    start_after = Some(next);
                }
                _ => return Ok(page),
            }
        }
    }

    fn stat(&self, rel: &[u8]) -> Result<Option<Meta>, FerryError> {
        let key = self.key(rel)?;
        if !key.is_empty() {
            match self.head_key(&key) {
                Ok(Some(mut m)) => {
                    if m.kind() == EntryKind::Symlink {
                        meta::check_link_size(&self.describe(rel), m.size)?;
                        let mut src = self.open(rel, 0)?;
                        let mut target = vec![0u8; m.size as usize];
                        src.read_at(0, &mut target)?;
                        m.link_target = Some(target);
                    }
                    return Ok(Some(m));
                }
                Ok(None) => {}
                // Some file-backed servers (s3s-fs) fail a HEAD of a name that is a directory
                // on their disk; the directory answer below is the right one then.
                Err(e) => return self.stat_dir(rel)?.map(Some).ok_or(e),
            }
        }
        self.stat_dir(rel)
    }

    fn stat_dir(&self, rel: &[u8]) -> Result<Option<Meta>, FerryError> {
        let marker = self.marker_key(rel)?;
        if marker.is_empty() {
            return Ok(Some(Meta { kind: Some(EntryKind::Dir), ..Meta::default() }));
        }
        // List before HEAD: the marker, when there is one, sorts first under its prefix, and
        // a directory without one (written by another tool, or on a server that keeps no
        // markers) exists when anything is below it.
        let out = self
            .block(self.client.list_objects_v2().bucket(&self.url.bucket).prefix(&marker).max_keys(1).send())
            .map_err(|e| classify("list", &self.target(&marker), &e))?;
        if out.contents().first().and_then(|o| o.key()) == Some(marker.as_str()) {
            if let Some(m) = self.head_key(&marker)? {
                return Ok(Some(m));
            }
        }
        Ok((out.key_count().unwrap_or(0) > 0).then(|| Meta { kind: Some(EntryKind::Dir), ..Meta::default() }))
    }

    fn xattrs(&self, _rel: &[u8]) -> Result<Xattrs, FerryError> {
        Ok(Vec::new())
    }

    fn tags(&self, rel: &[u8]) -> Result<Option<String>, FerryError> {
        self.object_tags(rel)
    }

    fn open(&self, rel: &[u8], from: u64) -> Result<Box<dyn Source + '_>, FerryError> {
        Ok(Box::new(io::S3Source::open(self, rel, from)?))
    }

    fn create(&self, rel: &[u8], target: Target<'_>, meta: &Meta, _xattrs: &Xattrs) -> Result<Box<dyn Sink + '_>, FerryError> {
        Ok(Box::new(io::S3Sink::create(self, rel, target, meta)?))
    }

    fn make(&self, rel: &[u8], special: &Special, meta: &Meta, _xattrs: &Xattrs) -> Result<Staged, FerryError> {
        let Special::Symlink { target } = special else {
            return Err(FerryError::new(ErrorKind::Unsupported, format!("{}: an object store cannot hold a {}", self.describe(rel), meta.kind().as_str())));
        };
        // A symlink is an object holding its target, with the symlink's mode.
        let m = Meta { mode: Some(libc::S_IFLNK | 0o777), ..meta.clone() };
        let key = self.key(rel)?;
        let etag = self.put_object(&key, target.clone(), &m, EntryKind::Symlink, crc32c::crc32c(target))?;
        Ok(Staged {
            rel: rel.to_vec(),
            kind: EntryKind::Symlink,
            size: 0,
            crc32c: None,
            token: Token::Placed { etag: Some(etag) },
            part_tags: Vec::new(),
            resumed: 0,
        })
    }

    /// Directories are key prefixes: nothing to create before their contents.
    fn ensure_dir(&self, _rel: &[u8]) -> Result<(), FerryError> {
        Ok(())
    }

    /// A directory's metadata lives on its `dir/` marker object, which also keeps an empty
    /// directory. An object's metadata cannot change without rewriting it.
    fn set_meta(&self, rel: &[u8], meta: &Meta, _xattrs: Option<&Xattrs>) -> Result<(), FerryError> {
        if meta.kind() != EntryKind::Dir {
            return Err(FerryError::new(ErrorKind::Unsupported, format!("{}: an object's metadata is only written with its content", self.describe(rel))));
        }
        let key = self.marker_key(rel)?;
        if key.is_empty() {
            return Ok(()); // the bucket root has no marker: its metadata is not kept
        }
        self.put_object(&key, Vec::new(), meta, EntryKind::Dir, crc32c::crc32c(b"")).map(|_| ())
    }

    fn link(&self, target: &[u8], rel: &[u8]) -> Result<bool, FerryError> {
        Err(FerryError::new(ErrorKind::Unsupported, format!("{}: an object store cannot hold a hard link to {}", self.describe(rel), self.describe(target))))
    }

    /// A PUT or a completed upload is durable when the server answers.
    fn sync(&self, _staged: &[Staged], _what: Durable) -> Result<(), FerryError> {
        Ok(())
    }

    /// Checks what was stored against the source without downloading it where possible: the
    /// store's own CRC32C when it keeps one, else its MD5 ETag, else by reading it back.
    fn check(&self, staged: &Staged, buf: &mut Vec<u8>) -> Result<Option<String>, FerryError> {
        let (Some(want), Token::Placed { etag: expected }) = (staged.crc32c, &staged.token) else {
            return Ok(None);
        };
        let rel = &staged.rel;
        let m =
            self.stat(rel)?.ok_or_else(|| FerryError::new(ErrorKind::Unavailable, format!("{} is missing right after it was written", self.describe(rel))))?;
        if m.size != staged.size {
            return Err(FerryError::new(ErrorKind::Corrupt, format!("{} holds {} bytes after writing {}", self.describe(rel), m.size, staged.size)));
        }
        match m.crc32c {
            Some(c) if c == want => return Ok(None),
            Some(_) if !m.multipart => {
                return Err(FerryError::new(ErrorKind::Corrupt, format!("stored CRC32C of {} differs from the source's {want:08x}", self.describe(rel))));
            }
            _ => {}
        }
        let stored_tag = m.etag.as_deref().map(str::to_ascii_lowercase);
        if let (Some(stored), Some(expected)) = (&stored_tag, expected) {
            if stored == expected {
                return Ok(Some("verified by MD5 ETag: the store keeps no whole-object CRC32C".into()));
            }
            if etag::is_md5(stored) || stored.contains('-') && !m.multipart {
                return Err(FerryError::new(
                    ErrorKind::Corrupt,
                    format!("stored ETag of {} is {stored}, expected {expected} from the source", self.describe(rel)),
                ));
            }
        }
        let got = self.read_crc(rel, staged.size, buf)?;
        if got != want {
            return Err(FerryError::new(
                ErrorKind::Corrupt,
                format!("CRC32C mismatch after writing {}: source {want:08x}, destination {got:08x}", self.describe(rel)),
            ));
        }
        Ok(Some("verified by reading back: the store keeps neither a CRC32C nor an MD5 ETag".into()))
    }

    /// Written objects are in place already.
    fn publish(&self, _staged: &Staged) -> Result<(), FerryError> {
        Ok(())
    }

    /// An object that failed its check is visible already: it goes, so its name never holds
    /// bytes known to be wrong.
    fn discard(&self, staged: &Staged) {
        if let Token::Placed { .. } = staged.token {
            let _ = self.remove(std::slice::from_ref(&staged.rel));
        }
    }

    /// Lists the keys of every entry (a directory brings everything below it), then deletes
    /// them all with DeleteObjects, 1,000 keys per request across entries.
    fn remove(&self, rels: &[Vec<u8>]) -> Vec<Result<u64, FerryError>> {
        let mut results: Vec<Result<u64, FerryError>> = Vec::with_capacity(rels.len());
        let mut keys: Vec<(usize, String)> = Vec::new();
        for (i, rel) in rels.iter().enumerate() {
            match self.keys_under(rel) {
                Ok(found) => {
                    results.push(Ok(found.iter().filter(|k| !k.ends_with('/')).count() as u64));
                    keys.extend(found.into_iter().map(|k| (i, k)));
                }
                Err(e) => results.push(Err(e)),
            }
        }
        for batch in keys.chunks(1000) {
            let objects: Vec<ObjectIdentifier> = batch.iter().filter_map(|(_, k)| ObjectIdentifier::builder().key(k).build().ok()).collect();
            let sent = Delete::builder().set_objects(Some(objects)).quiet(true).build().map_err(|e| FerryError::new(ErrorKind::Other, e.to_string())).and_then(
                |delete| {
                    self.block(self.client.delete_objects().bucket(&self.url.bucket).delete(delete).send())
                        .map_err(|e| classify("delete objects in", &self.target(&self.url.prefix), &e))
                },
            );
            let mut fail = |i: usize, err: FerryError| {
                if results[i].is_ok() {
                    results[i] = Err(err);
                }
            };
            match sent {
                Err(err) => batch.iter().for_each(|(i, _)| fail(*i, err.clone())),
                Ok(out) => {
                    for e in out.errors() {
                        let key = e.key().unwrap_or("?");
                        let err = FerryError::new(
                            ErrorKind::PermissionDenied,
                            format!("cannot delete s3://{}/{key}: {}", self.url.bucket, e.message().unwrap_or("refused")),
                        );
                        if let Some((i, _)) = batch.iter().find(|(_, k)| k == key) {
                            fail(*i, err);
                        }
                    }
                }
            }
        }
        results
    }

    /// Unfinished uploads are the debris here; each is aborted when its key is next
    /// completed, or by the execution that started it when it fails.
    fn sweep(&self, _dir: &[u8]) -> Result<(), FerryError> {
        Ok(())
    }

    fn create_multipart(&self, rel: &[u8], _size: u64, meta: &Meta) -> Result<String, FerryError> {
        self.start_multipart(&self.key(rel)?, meta)
    }

    fn pending_multiparts(&self, rel: &[u8]) -> Result<Vec<String>, FerryError> {
        let key = self.key(rel)?;
        let mut found: Vec<(Timestamp, String)> = Vec::new();
        let (mut key_marker, mut id_marker): (Option<String>, Option<String>) = (None, None);
        loop {
            let req = self
                .client
                .list_multipart_uploads()
                .bucket(&self.url.bucket)
                .prefix(&key)
                .set_key_marker(key_marker.clone())
                .set_upload_id_marker(id_marker.clone());
            let out = match self.block(req.send()) {
                Ok(out) => out,
                Err(e) => {
                    let err = classify("list unfinished uploads of", &self.target(&key), &e);
                    if err.kind == ErrorKind::Unsupported {
                        // The server cannot list uploads (s3s-fs): none can be resumed or
                        // cleaned up across runs, and the upload starts over.
                        tracing::debug!(error = %err, "cannot list unfinished uploads");
                        return Ok(Vec::new());
                    }
                    return Err(err);
                }
            };
            for u in out.uploads() {
                if u.key() == Some(key.as_str()) {
                    if let Some(id) = u.upload_id() {
                        found.push((timestamp(u.initiated()), id.to_string()));
                    }
                }
            }
            if !out.is_truncated().unwrap_or(false) {
                break;
            }
            key_marker = out.next_key_marker().map(str::to_string);
            id_marker = out.next_upload_id_marker().map(str::to_string);
            if key_marker.is_none() && id_marker.is_none() {
                break;
            }
        }
        found.sort();
        Ok(found.into_iter().map(|(_, id)| id).collect())
    }

    fn list_parts(&self, rel: &[u8], upload: &str) -> Result<Vec<StoredPart>, FerryError> {
        self.list_parts_of(&self.key(rel)?, upload)
    }

    fn complete_multipart(&self, rel: &[u8], upload: &str, done: &Completed<'_>) -> Result<Staged, FerryError> {
        let Completed { size, crc32c, part_tags, .. } = *done;
        let key = self.key(rel)?;
        let etag = self.complete(&key, upload, size, crc32c, part_tags)?;
        Ok(Staged { rel: rel.to_vec(), kind: EntryKind::File, size, crc32c: Some(crc32c), token: Token::Placed { etag }, part_tags: Vec::new(), resumed: 0 })
    }

    fn abort_multipart(&self, rel: &[u8], upload: &str) -> Result<(), FerryError> {
        self.abort_upload(&self.key(rel)?, upload)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_parse_or_explain() {
        assert_eq!(S3Url::parse("s3://bkt").unwrap(), S3Url { bucket: "bkt".into(), prefix: String::new() });
        assert_eq!(S3Url::parse("s3://bkt/a/b/").unwrap(), S3Url { bucket: "bkt".into(), prefix: "a/b/".into() });
        for bad in ["s3://", "s3://B", "s3://a", "s3://bkt/../x", "s3://bkt/a//b", "s3://-bkt/x"] {
            assert!(S3Url::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn crc_base64_round_trips_and_matches_s3() {
        // CRC32C("hello") = 0x9a71bb4c, which S3 reports as "mnG7TA==".
        assert_eq!(crc_to_base64(crc32c::crc32c(b"hello")), "mnG7TA==");
        for c in [0u32, 1, 0xffff_ffff, 0x9a71_bb4c, 0x1234_5678] {
            assert_eq!(crc_from_base64(&crc_to_base64(c)), Some(c));
        }
        assert_eq!(crc_from_base64("mnG7TA==-3"), None);
    }

    #[test]
    fn keys_are_limited_with_their_prefix() {
        let p = profile(&S3Url::parse("s3://bkt/some/prefix").unwrap());
        assert_eq!(p.limits.max_path_bytes, Some(MAX_KEY_BYTES - "some/prefix/".len()));
        let long = vec![b'a'; 1100];
        assert_eq!(p.limits.refusal(&p.capabilities, &long, EntryKind::File, 1).map(|r| r.code), Some("PATH_TOO_LONG"));
        assert_eq!(p.limits.refusal(&p.capabilities, b"caf\xe9", EntryKind::File, 1).map(|r| r.code), Some("NAME_NOT_UTF8"));
        assert_eq!(p.limits.refusal(&p.capabilities, b"fifo", EntryKind::Fifo, 0).map(|r| r.code), Some("SPECIAL_FILE"));
        assert_eq!(p.limits.refusal(&p.capabilities, b"ok", EntryKind::File, 1), None);
    }

    #[test]
    fn object_parts_stay_within_s3_limits() {
        let limits = profile(&S3Url::parse("s3://bkt").unwrap()).limits;
        for size in [300u64 << 20, 5 << 30, 100 << 30, MAX_OBJECT_SIZE] {
            let unit = limits.part_unit(size).unwrap();
            assert!(size.div_ceil(unit) <= MAX_PARTS, "{size}: {unit}");
            assert!((MIN_PART_SIZE..=5 << 30).contains(&unit));
        }
    }
}
