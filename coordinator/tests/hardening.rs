//! Issue 17, "secure by default": what a destination, a source or a task may hold or ask for
//! without hurting the machine ferry runs on. Drives the real binary in embedded mode.

mod support;

use std::ffi::CString;
use std::fs;
use std::path::Path;

use support::*;

/// Makes a chain of `depth` directories named `d` below `top`, one descriptor at a time
/// (paths that deep exceed PATH_MAX many times over).
fn deep_chain(top: &Path, depth: usize) {
    fs::create_dir_all(top).unwrap();
    let name = CString::new("d").unwrap();
    let mut fd = unsafe { libc::open(cstr(top).as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY) };
    assert!(fd >= 0);
    for _ in 0..depth {
        assert_eq!(unsafe { libc::mkdirat(fd, name.as_ptr(), 0o755) }, 0);
        let next = unsafe { libc::openat(fd, name.as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW) };
        assert!(next >= 0);
        unsafe { libc::close(fd) };
        fd = next;
    }
    unsafe { libc::close(fd) };
}

#[test]
fn sync_deletes_a_100000_deep_directory_chain_without_crashing() {
    let tmp = scratch();
    let (src, dst) = (tmp.path().join("src"), tmp.path().join("dst"));
    write_file(&src.join("kept.txt"), b"kept\n");
    deep_chain(&dst.join("extra"), 100_000);
    let json = ferry_ok("sync", &src, &dst, &[]);
    assert_eq!(counter(&json, "files_failed"), 0, "{json}");
    assert!(!dst.join("extra").exists(), "the chain is gone");
    assert_eq!(fs::read(dst.join("kept.txt")).unwrap(), b"kept\n");
}
