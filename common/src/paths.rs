//! Relative paths as raw bytes. File names on POSIX are arbitrary bytes except `/` and NUL, so
//! ferry never converts them through UTF-8.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// Joins a root and a relative byte path ("" means the root itself).
pub fn join(root: &Path, rel: &[u8]) -> PathBuf {
    if rel.is_empty() {
        root.to_path_buf()
    } else {
        root.join(OsStr::from_bytes(rel))
    }
}

/// `parent/name` for relative paths, where "" is the root.
pub fn child(parent: &[u8], name: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(parent.len() + 1 + name.len());
    if !parent.is_empty() {
        p.extend_from_slice(parent);
        p.push(b'/');
    }
    p.extend_from_slice(name);
    p
}

/// Splits "a/b/c" into ("a/b", "c"); the root's children have parent "".
pub fn split(rel: &[u8]) -> (&[u8], &[u8]) {
    match rel.iter().rposition(|&b| b == b'/') {
        Some(i) => (&rel[..i], &rel[i + 1..]),
        None => (&[], rel),
    }
}

/// A relative path is safe when it has no empty, `.` or `..` component, no leading `/` and no
/// NUL. Everything that crosses a process boundary is checked with this before use.
pub fn is_safe_relative(rel: &[u8]) -> bool {
    if rel.is_empty() {
        return true;
    }
    !rel.contains(&0) && rel.split(|&b| b == b'/').all(|c| !c.is_empty() && c != b"." && c != b"..")
}

/// Human-readable form for logs and reports: UTF-8 stays as is, other bytes become `\xNN`,
/// and a backslash becomes `\\` only when escaping was needed.
pub fn display(rel: &[u8]) -> String {
    match std::str::from_utf8(rel) {
        Ok(s) => s.to_string(),
        Err(_) => {
            let mut out = String::with_capacity(rel.len() + 8);
            for chunk in rel.utf8_chunks() {
                for c in chunk.valid().chars() {
                    if c == '\\' {
                        out.push_str("\\\\");
                    } else {
                        out.push(c);
                    }
                }
                for b in chunk.invalid() {
                    out.push_str(&format!("\\x{b:02x}"));
                }
            }
            out
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsafe_relative_paths_are_refused() {
        for bad in [&b"../x"[..], b"/etc/passwd", b"a/../b", b"a//b", b"./a", b"a/.", b"a\0b", b"a/"] {
            assert!(!is_safe_relative(bad), "{:?}", String::from_utf8_lossy(bad));
        }
        for good in [&b"a"[..], b"a/b", b"..a", b"a..", b"caf\xe9/x\ny"] {
            assert!(is_safe_relative(good));
        }
    }

    #[test]
    fn display_escapes_only_invalid_utf8() {
        assert_eq!(display(b"a\\b"), "a\\b");
        assert_eq!(display(b"caf\xe9\\"), "caf\\xe9\\\\");
    }

    #[test]
    fn split_and_child_are_inverse() {
        assert_eq!(split(b"a/b/c"), (&b"a/b"[..], &b"c"[..]));
        assert_eq!(split(b"c"), (&b""[..], &b"c"[..]));
        assert_eq!(child(b"", b"c"), b"c");
        assert_eq!(child(b"a/b", b"c"), b"a/b/c");
    }
}
