//! `smb://` spoken by ferry itself against a real samba (support/samba.rs), checked by tools
//! that are not ferry's: `diff -r` on the shares' directories on disk for content,
//! `smbcacls --sddl` for security descriptors, `smbclient -c allinfo` for DOS attributes and
//! times, and the Linux times samba keeps on disk (100 ns FILETIMEs).
//!
//! What POSIX trees do not hold is left out of SMB → local comparisons, as README.md lists it:
//! creation time, DOS attributes, security descriptors.

mod support;

use std::fs;
use std::path::Path;
use std::process::Command;

use support::samba::{SambaServer, PASSWORD};
use support::*;

fn smb(f: Ferry) -> Ferry {
    f.env("FERRY_SMB_PASSWORD", PASSWORD)
}

fn run_ok(f: Ferry) -> serde_json::Value {
    let out = smb(f).arg("--json").run();
    out.assert_code(0);
    out.json()
}

/// `diff -r`: the same names and bytes.
fn assert_same_content(a: &Path, b: &Path, when: &str) {
    let out = Command::new("diff").arg("-r").arg(a).arg(b).output().expect("diff is installed");
    assert!(out.status.success(), "{when}: diff -r {} {}:\n{}", a.display(), b.display(), String::from_utf8_lossy(&out.stdout));
    assert_no_temp_leftovers(b);
}

/// The lines of `allinfo` that a copy must keep: creation and write times, attributes.
fn allinfo(server: &SambaServer, share: &str, path: &str) -> Vec<String> {
    let out = server.smbclient(share, &format!("allinfo \"{path}\""));
    let kept: Vec<String> =
        out.lines().filter(|l| l.starts_with("create_time:") || l.starts_with("write_time:") || l.starts_with("attributes:")).map(str::to_string).collect();
    assert_eq!(kept.len(), 3, "allinfo {path}: {out}");
    kept
}

fn sddl(server: &SambaServer, share: &str, path: &str) -> String {
    server.smbcacls(share, path, &["--sddl"]).trim().to_string()
}

/// The owner and the DACL of an SDDL string: what OWNER_DACL copies (DataSync's flags leave
/// the primary group out).
fn owner_dacl(sddl: &str) -> (String, String) {
    let owner = sddl.strip_prefix("O:").and_then(|s| s.split("G:").next()).unwrap_or_default().to_string();
    let dacl = sddl.split_once("D:").map(|(_, d)| d.to_string()).unwrap_or_default();
    (owner, dacl)
}

/// The source tree, written on samba's disk, then given attributes, an owner and ACEs
/// through samba. Times are multiples of 100 ns, which SMB carries exactly.
fn build_source(server: &SambaServer, disk: &Path, share_rel: &str) {
    write_file(&disk.join("top.txt"), b"top level\n");
    write_file(&disk.join("dir/big.bin"), &random_bytes((1 << 20) + 7));
    write_file(&disk.join("dir/sub/deep.txt"), b"deep\n");
    write_file(&disk.join("hidden.txt"), b"hidden\n");
    write_file(&disk.join("readonly.txt"), b"read-only\n");
    write_file(&disk.join("Grüße 日本.txt"), "ünïcödé\n".as_bytes());
    write_file(&disk.join("empty"), b"");
    fs::create_dir_all(disk.join("emptydir")).unwrap();
    let mut chmod = Command::new("chmod");
    chmod.arg("-R").arg("a+rwX").arg(disk);
    assert!(chmod.status().unwrap().success());
    for (i, f) in ["top.txt", "dir/big.bin", "dir/sub/deep.txt", "hidden.txt", "readonly.txt", "Grüße 日本.txt", "empty"].iter().enumerate() {
        set_times(&disk.join(f), (1_650_000_000 + i as i64, 0), (1_700_000_000 + i as i64, 123_456_700));
    }
    let uid = String::from_utf8(Command::new("id").args(["-u", support::samba::USER]).output().unwrap().stdout).unwrap();
    server.smbcacls("share", &format!("{share_rel}/top.txt"), &["--chown", &format!("S-1-22-1-{}", uid.trim())]);
    server.smbcacls("share", &format!("{share_rel}/top.txt"), &["-a", "ACL:S-1-5-32-551:ALLOWED/0x0/FULL"]);
    server.smbcacls("share", &format!("{share_rel}/dir"), &["-a", "ACL:S-1-5-32-551:ALLOWED/OI|CI/FULL"]);
    server.smbcacls("share", &format!("{share_rel}/readonly.txt"), &["-a", "ACL:S-1-5-32-550:DENIED/0x0/0x00000040"]);
    // Creation times of their own (samba stores them in user.DOSATTRIB; without one it
    // reports a time derived from the others, which moves when the file is read).
    let created: Vec<String> = FILES
        .iter()
        .chain(&["dir", "dir/sub", "emptydir"])
        .enumerate()
        .map(|(i, f)| format!("utimes \"{share_rel}/{f}\" 2021:01:{:02}-03:04:05 -1 -1 -1", i + 1))
        .collect();
    server.smbclient("share", &created.join("; "));
    server.smbclient("share", &format!("setmode \"{share_rel}/hidden.txt\" +hs; setmode \"{share_rel}/readonly.txt\" +r"));
    // Directory times last: writing into them moved them.
    set_times(&disk.join("dir/sub"), (1_600_000_000, 0), (1_600_000_100, 500));
    set_times(&disk.join("dir"), (1_600_000_000, 0), (1_600_000_200, 700));
    set_times(&disk.join("emptydir"), (1_600_000_000, 0), (1_600_000_300, 900));
}

const FILES: [&str; 7] = ["top.txt", "dir/big.bin", "dir/sub/deep.txt", "hidden.txt", "readonly.txt", "Grüße 日本.txt", "empty"];

#[test]
fn acls_attributes_and_times_copy_smb_to_smb_and_content_and_times_to_local() {
    let Some(server) = SambaServer::shared() else {
        return;
    };
    let work = scratch();
    let (src_disk, src_uri) = server.fresh("share", "acl-src");
    let src_rel = src_uri.rsplit('/').next().unwrap().to_string();
    build_source(server, &src_disk, &src_rel);
    let (dst_disk, dst_uri) = server.fresh("share2", "acl-dst");
    let dst_rel = dst_uri.rsplit('/').next().unwrap().to_string();

    // SMB → SMB, across two shares, with the password from a 0600 file.
    let pwfile = server.password_file();
    let json = run_ok(Ferry::new("copy", &src_uri, &dst_uri).arg("--smb-password-file").arg(&pwfile).env("FERRY_SMB_PASSWORD", ""));
    assert_eq!(counter(&json, "files_failed"), 0, "{json}");
    assert_eq!(counter(&json, "files_verified"), FILES.len() as u64, "{json}");
    assert_same_content(&src_disk, &dst_disk, "smb -> smb");
    for f in FILES {
        let (s, d) = (format!("{src_rel}/{f}"), format!("{dst_rel}/{f}"));
        assert_eq!(allinfo(server, "share2", &d), allinfo(server, "share", &s), "{f}: creation, write time and attributes");
        assert_eq!(owner_dacl(&sddl(server, "share2", &d)), owner_dacl(&sddl(server, "share", &s)), "{f}: security descriptor (owner, DACL)");
        assert_eq!(mtime_of(&dst_disk.join(f)), mtime_of(&src_disk.join(f)), "{f}: mtime to 100 ns on disk");
    }
    for d in ["dir", "dir/sub", "emptydir"] {
        assert_eq!(mtime_of(&dst_disk.join(d)), mtime_of(&src_disk.join(d)), "{d}: directory mtime");
        let (dst, src) = (sddl(server, "share2", &format!("{dst_rel}/{d}")), sddl(server, "share", &format!("{src_rel}/{d}")));
        assert_eq!(owner_dacl(&dst), owner_dacl(&src), "{d}: directory security descriptor (owner, DACL)");
    }
    assert!(sddl(server, "share2", &format!("{dst_rel}/top.txt")).contains("(A;;0x001f01ff;;;BO)"), "the added ACE is on the copy");
    assert!(sddl(server, "share2", &format!("{dst_rel}/dir")).contains("(A;OICI;0x001f01ff;;;BO)"), "the inheritable ACE is on the copied directory");
    let uid = String::from_utf8(Command::new("id").args(["-u", support::samba::USER]).output().unwrap().stdout).unwrap();
    assert!(sddl(server, "share2", &format!("{dst_rel}/top.txt")).starts_with(&format!("O:S-1-22-1-{}", uid.trim())), "the owner is carried");
    assert!(allinfo(server, "share2", &format!("{dst_rel}/hidden.txt"))[2].contains("HS"), "hidden and system");
    assert!(allinfo(server, "share2", &format!("{dst_rel}/readonly.txt"))[2].contains('R'), "read-only");

    let idle = run_ok(Ferry::new("copy", &src_uri, &dst_uri));
    assert_eq!((counter(&idle, "files_transferred"), counter(&idle, "bytes_transferred")), (0, 0), "an idle rerun smb -> smb copied: {idle}");

    // A changed source replaces a read-only copy, which stays read-only.
    fs::write(src_disk.join("readonly.txt"), b"read-only, changed\n").unwrap();
    set_times(&src_disk.join("readonly.txt"), (1_650_000_000, 0), (1_700_000_100, 0));
    let json = run_ok(Ferry::new("copy", &src_uri, &dst_uri));
    assert_eq!((counter(&json, "files_transferred"), counter(&json, "files_failed")), (1, 0), "{json}");
    assert_eq!(fs::read(dst_disk.join("readonly.txt")).unwrap(), b"read-only, changed\n");
    assert!(allinfo(server, "share2", &format!("{dst_rel}/readonly.txt"))[2].contains('R'), "still read-only");

    // NONE: a fresh copy keeps the destination's own (inherited) descriptor.
    let (_, none_uri) = server.fresh("share2", "acl-none");
    let none_rel = none_uri.rsplit('/').next().unwrap().to_string();
    run_ok(Ferry::new("copy", &src_uri, &none_uri).args(["--smb-security-descriptor", "none"]));
    assert!(!sddl(server, "share2", &format!("{none_rel}/top.txt")).contains(";;;BO)"), "with none, the source's ACE is not copied");

    // SMB → local: content and times; nothing SMB-only lands as extended attributes.
    let local = work.path().join("local");
    let json = run_ok(Ferry::new("copy", &src_uri, &local));
    assert_eq!(counter(&json, "files_failed"), 0, "{json}");
    assert_same_content(&src_disk, &local, "smb -> local");
    for f in FILES {
        assert_eq!(mtime_of(&local.join(f)), mtime_of(&src_disk.join(f)), "{f}: mtime smb -> local");
        assert!(get_xattr(&local.join(f), "user.ferry.smb.sd").is_none());
    }
    let out = Command::new("getfattr").arg("-R").arg("-d").arg("-m").arg("-").arg(&local).output().expect("getfattr is installed");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("ferry"), "no pseudo attribute reached the local tree: {}", String::from_utf8_lossy(&out.stdout));
    let idle = run_ok(Ferry::new("copy", &src_uri, &local));
    assert_eq!((counter(&idle, "files_transferred"), counter(&idle, "bytes_transferred")), (0, 0), "an idle rerun smb -> local copied: {idle}");
}

#[test]
fn local_to_smb_keeps_nanoseconds_and_modes_and_sync_deletes() {
    let Some(server) = SambaServer::shared() else {
        return;
    };
    let work = scratch();
    let src = work.path().join("src");
    write_file(&src.join("a.txt"), b"a\n");
    write_file(&src.join("d/b.bin"), &random_bytes(3 << 20));
    write_file(&src.join("d/e/c.txt"), b"c\n");
    write_file(&src.join("gone/x.txt"), b"x\n");
    write_file(&src.join("gone.txt"), b"gone\n");
    symlink("a.txt", &src.join("link"));
    chmod(&src.join("a.txt"), 0o640);
    set_times(&src.join("a.txt"), (1_600_000_000, 1), (1_700_000_000, 123_456_789));
    let (disk, uri) = server.fresh("share", "from-local");

    let json = run_ok(Ferry::new("copy", &src, &uri));
    assert_eq!(counter(&json, "files_failed"), 0, "{json}");
    let idle = run_ok(Ferry::new("copy", &src, &uri));
    assert_eq!((counter(&idle, "files_transferred"), counter(&idle, "bytes_transferred")), (0, 0), "an idle rerun local -> smb copied: {idle}");
    for f in ["a.txt", "d/b.bin", "d/e/c.txt", "gone.txt"] {
        assert!(fs::read(src.join(f)).unwrap() == fs::read(disk.join(f)).unwrap(), "{f}: content on samba's disk");
    }
    // samba keeps 100 ns; the rest of the nanoseconds come back from ferry's EA.
    assert_eq!(mtime_of(&disk.join("a.txt")), (1_700_000_000, 123_456_700));
    let back = work.path().join("back");
    run_ok(Ferry::new("copy", &uri, &back));
    assert_eq!(mtime_of(&back.join("a.txt")), (1_700_000_000, 123_456_789), "nanoseconds survive local -> smb -> local");
    assert_eq!(fs::symlink_metadata(back.join("a.txt")).unwrap().permissions().mode() & 0o7777, 0o640, "the mode survives");
    assert_eq!(fs::read_link(back.join("link")).unwrap(), Path::new("a.txt"), "the symlink survives");

    // Sync: a changed file, a new one, a deleted file and a deleted directory.
    write_file(&src.join("a.txt"), b"changed\n");
    write_file(&src.join("new.txt"), b"new\n");
    fs::remove_file(src.join("gone.txt")).unwrap();
    fs::remove_dir_all(src.join("gone")).unwrap();
    let sync = run_ok(Ferry::new("sync", &src, &uri));
    assert_eq!(counter(&sync, "files_deleted"), 2, "a file, and a directory with the file it held: {sync}");
    assert!(!disk.join("gone").exists() && !disk.join("gone.txt").exists());
    assert_eq!(fs::read(disk.join("a.txt")).unwrap(), b"changed\n");
    assert_eq!(fs::read(disk.join("new.txt")).unwrap(), b"new\n");
    assert_no_temp_leftovers(&disk);

    // SMB → SMB sync deletes too.
    let (disk2, uri2) = server.fresh("share2", "sync-dst");
    run_ok(Ferry::new("copy", &uri, &uri2));
    fs::remove_file(disk.join("new.txt")).unwrap();
    let sync = run_ok(Ferry::new("sync", &uri, &uri2));
    assert_eq!(counter(&sync, "files_deleted"), 1, "{sync}");
    assert!(!disk2.join("new.txt").exists());
    assert_same_content(&disk, &disk2, "smb -> smb after sync");
}

use std::os::unix::fs::PermissionsExt;

#[test]
fn bad_passwords_shares_and_servers_get_one_line_and_exit_2() {
    let Some(server) = SambaServer::shared() else {
        return;
    };
    let work = scratch();
    let src = work.path().join("src");
    write_file(&src.join("f"), b"x");
    let (_, good) = server.fresh("share", "bad-input");
    let cases: Vec<(Ferry, &str)> = vec![
        (Ferry::new("copy", &src, &good).env("FERRY_SMB_PASSWORD", "wrong"), "refused"),
        (Ferry::new("copy", &src, &good).env("FERRY_SMB_PASSWORD", ""), "FERRY_SMB_PASSWORD"),
        (smb(Ferry::new("copy", &src, server.uri("nosuchshare", "x"))), "no share 'nosuchshare'"),
        (smb(Ferry::new("copy", &src, server.uri("denied", "x"))), "access denied"),
        (smb(Ferry::new("copy", &src, "smb://ferrytest@127.0.0.1:1/share/x")), "unreachable"),
        (smb(Ferry::new("copy", &src, "smb://ferrytest:Ferry-Pw1@127.0.0.1/share/x")), "holds a password"),
        (smb(Ferry::new("copy", server.uri("share", "no/such/dir"), work.path().join("dst"))), "does not exist"),
    ];
    for (f, says) in cases {
        let out = f.run();
        out.assert_code(2);
        let line = out.stderr.trim();
        assert!(line.contains(says) && line.lines().count() == 1, "one line naming the problem ({says})\n{}", out.describe());
        assert!(!line.contains("Ferry-Pw1") && !line.contains("wrong"), "no password is shown\n{}", out.describe());
    }
    // A password file others may read is refused.
    let pw = work.path().join("pw");
    fs::write(&pw, PASSWORD).unwrap();
    fs::set_permissions(&pw, fs::Permissions::from_mode(0o644)).unwrap();
    let out = Ferry::new("copy", &src, &good).arg("--smb-password-file").arg(&pw).run();
    out.assert_code(2);
    assert!(out.stderr.contains(&format!("chmod 600 {}", pw.display())) && out.stderr.trim().lines().count() == 1, "{}", out.describe());
}

#[test]
fn a_share_that_requires_encryption_is_copied_encrypted() {
    let Some(server) = SambaServer::shared() else {
        return;
    };
    let work = scratch();
    let src = work.path().join("src");
    write_file(&src.join("secret.bin"), &random_bytes(3 << 20));
    let (disk, uri) = server.fresh("enc", "enc");
    run_ok(Ferry::new("copy", &src, &uri));
    assert_same_content(&src, &disk, "local -> encrypted share");
    let back = work.path().join("back");
    run_ok(Ferry::new("copy", &uri, &back));
    assert_same_content(&src, &back, "encrypted share -> local");
}
