//! Checking S3 locations with a client that is not ferry's: the AWS CLI (botocore), run in the
//! namespace of the site that reaches the server. And what S3 cannot hold, as README.md lists
//! it, so that tree comparisons after a trip through S3 leave exactly that out.

use std::collections::BTreeMap;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileTypeExt;
use std::path::Path;
use std::process::{Command, Stdio};

use ferry_common::testing::S3Server;
use serde_json::Value;

/// A test server's bucket, seen from the host or from inside one site's namespace.
#[derive(Clone)]
pub struct Bucket<'a> {
    pub server: &'a S3Server,
    pub netns: Option<String>,
}

/// One listed object.
#[derive(Debug, Clone)]
pub struct Object {
    pub size: u64,
    pub etag: String,
}

impl<'a> Bucket<'a> {
    pub fn on(server: &'a S3Server) -> Self {
        Bucket { server, netns: None }
    }

    pub fn in_netns(server: &'a S3Server, ns: &str) -> Self {
        Bucket { server, netns: Some(ns.to_string()) }
    }

    /// `aws s3api ARGS` against the server; the JSON it prints (`Null` for none).
    pub fn aws(&self, args: &[&str]) -> Value {
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, "aws"]);
                c
            }
            None => Command::new("aws"),
        };
        cmd.args(["--endpoint-url", &self.server.endpoint, "--output", "json", "s3api"]).args(args).stdin(Stdio::null());
        for (k, v) in self.server.env() {
            cmd.env(k, v);
        }
        let out = match cmd.output() {
            Ok(o) => o,
            Err(e) => panic!("the AWS CLI is needed (pip install awscli; .ci/run installs it): {e}"),
        };
        assert!(out.status.success(), "aws s3api {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        let text = String::from_utf8_lossy(&out.stdout);
        if text.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("aws output is not JSON ({e}): {text}"))
        }
    }

    /// Every object under `prefix` (the CLI follows continuation tokens), by key.
    pub fn objects(&self, prefix: &str) -> BTreeMap<String, Object> {
        let listed = self.aws(&["list-objects-v2", "--bucket", &self.server.bucket, "--prefix", prefix]);
        let mut out = BTreeMap::new();
        for o in listed["Contents"].as_array().map(Vec::as_slice).unwrap_or_default() {
            let key = o["Key"].as_str().expect("a listed key").to_string();
            let etag = o["ETag"].as_str().unwrap_or_default().trim_matches('"').to_string();
            out.insert(key, Object { size: o["Size"].as_u64().expect("a listed size"), etag });
        }
        out
    }

    pub fn head(&self, key: &str) -> Value {
        self.aws(&["head-object", "--bucket", &self.server.bucket, "--key", key])
    }

    /// Bytes `start..start+len` of an object.
    pub fn get_range(&self, key: &str, start: u64, len: u64, scratch: &Path) -> Vec<u8> {
        let file = scratch.join("range.bin");
        let range = format!("bytes={start}-{}", start + len - 1);
        self.aws(&["get-object", "--bucket", &self.server.bucket, "--key", key, "--range", &range, file.to_str().unwrap()]);
        std::fs::read(&file).unwrap()
    }

    /// Replaces an object's content, as another S3 client would (no ferry metadata).
    pub fn put(&self, key: &str, body: &Path) {
        self.aws(&["put-object", "--bucket", &self.server.bucket, "--key", key, "--body", body.to_str().unwrap()]);
    }
}

/// The MD5 of a file, by coreutils' `md5sum`: what a single-PUT object's ETag is.
pub fn md5_hex(path: &Path) -> String {
    let out = Command::new("md5sum").stdin(std::fs::File::open(path).unwrap()).output().expect("md5sum (coreutils) runs");
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout).split_whitespace().next().unwrap_or_default().to_string()
}

/// Whether the entry at `rel` (of the given file type) has an object under a key prefix of
/// `prefix_len` bytes: not when the name is not UTF-8, the entry is special, or the key would
/// pass S3's 1,024 bytes. Nor a name with a newline, which moto refuses (AWS takes it).
pub fn s3_holds(rel: &Path, file_type: std::fs::FileType, prefix_len: usize) -> bool {
    let Ok(text) = std::str::from_utf8(rel.as_os_str().as_bytes()) else {
        return false;
    };
    let special = file_type.is_fifo() || file_type.is_socket() || file_type.is_char_device() || file_type.is_block_device();
    !special && !text.contains('\n') && prefix_len + 1 + text.len() + usize::from(file_type.is_dir()) <= 1024
}

/// What S3 cannot hold, as README.md lists it, for a path as rsync itemizes it: names that are
/// not UTF-8, special files, keys over 1,024 bytes under `rt/` (extended attributes and hard
/// links are left out of the comparison itself). Also a key with a newline, which moto refuses.
pub fn unholdable(rel: &str) -> bool {
    rel.contains("\\x")
        || rel.contains("\\#3")
        || rel.contains("\\#2")
        || rel.contains('\u{fffd}')
        || rel.starts_with("specials/")
        || rel == "specials"
        || is_newline_name(rel)
        || too_long_for_a_key(rel)
}

/// A path that, under a short prefix such as `rt/` (and with a directory marker's `/`), is
/// longer than S3's 1,024-byte keys. The tricky tree's deep directories are 49 bytes a level,
/// so any prefix up to about 30 bytes cuts at the same level.
fn too_long_for_a_key(rel: &str) -> bool {
    "rt/".len() + rel.trim_end_matches('/').len() + 1 > 1024
}

pub fn is_newline_name(rel: &str) -> bool {
    rel.contains("new\nline") || rel.contains("new\\nline") || rel.contains("new\\#012line")
}

/// rsync's itemized differences (content by checksum, `--delete` for extra entries) between
/// two trees, minus what S3 cannot hold.
pub fn s3_differences(src: &Path, dst: &Path) -> Vec<String> {
    let out = Command::new("rsync")
        .args(["-n", "-i", "-a", "--checksum", "--delete"])
        .arg(format!("{}/", src.display()))
        .arg(format!("{}/", dst.display()))
        .env("LC_ALL", "C")
        .output()
        .expect("rsync is installed");
    assert!(out.status.success(), "rsync failed: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .filter(|l| {
            let path = l.split_once(' ').map(|x| x.1.trim_start()).unwrap_or(l);
            !unholdable(path)
        })
        .map(str::to_string)
        .collect()
}
