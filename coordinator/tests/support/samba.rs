//! A real samba for the `smb://` tests: one smbd on 127.0.0.1:445 (smbcacls talks to no other
//! port), its configuration, state and shares under /var/tmp/ferry-test-smb, started by the
//! first test that asks and shared by every test binary after it (.ci/run stops it at the
//! end). Debian's `samba`, `samba-vfs-modules` (acl_xattr: full NT security descriptors) and
//! `smbclient` (smbclient, smbcacls: the independent checkers). Needs root (port 445, a Unix
//! account for the SMB user).
//!
//! Also used by `worker/tests/location_conformance.rs` (included by path), so it needs
//! nothing but std and libc.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

pub const ROOT: &str = "/var/tmp/ferry-test-smb";
pub const USER: &str = "ferrytest";
pub const PASSWORD: &str = "Ferry-Pw1";

/// The shares: two plain ones (SMB → SMB across shares), one that requires encryption, and
/// one this user may not connect to.
pub const SHARES: [&str; 4] = ["share", "share2", "enc", "denied"];

pub struct SambaServer {
    pub root: PathBuf,
}

fn installed() -> bool {
    Path::new("/usr/sbin/smbd").exists()
        && Path::new("/usr/bin/smbcacls").exists()
        && Path::new("/usr/bin/smbclient").exists()
        && ["/usr/lib/x86_64-linux-gnu/samba/vfs/acl_xattr.so", "/usr/lib/aarch64-linux-gnu/samba/vfs/acl_xattr.so"].iter().any(|p| Path::new(p).exists())
}

fn run(cmd: &mut Command, what: &str) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(out.status.success(), "{what} failed: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
}

impl SambaServer {
    /// The shared server, started if it is not running. `None` when samba is not installed,
    /// outside CI; under `CI=true` that is a failure.
    pub fn shared() -> Option<&'static SambaServer> {
        static SHARED: std::sync::OnceLock<Option<SambaServer>> = std::sync::OnceLock::new();
        SHARED
            .get_or_init(|| {
                if !installed() {
                    if std::env::var("CI").as_deref() == Ok("true") {
                        panic!("samba is not installed; .ci/run installs samba, samba-vfs-modules and smbclient (under CI=true no test skips for lack of a server)");
                    }
                    eprintln!("skipping: samba is not installed (apt-get install samba samba-vfs-modules smbclient)");
                    return None;
                }
                let server = SambaServer { root: PathBuf::from(ROOT) };
                server.start();
                Some(server)
            })
            .as_ref()
    }

    fn conf(&self) -> PathBuf {
        self.root.join("smb.conf")
    }

    fn pid(&self) -> Option<i32> {
        let pid: i32 = std::fs::read_to_string(self.root.join("smbd.pid")).ok()?.trim().parse().ok()?;
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
        comm.contains("smbd").then_some(pid)
    }

    /// Writes the configuration and the user, and starts smbd unless ours runs already. One
    /// start at a time on this machine (test binaries run side by side).
    fn start(&self) {
        let lock = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open("/tmp/ferry-samba-start.lock").expect("open the start lock");
        // SAFETY: flock on a descriptor this function owns; released when `lock` is closed.
        assert_eq!(unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&lock), libc::LOCK_EX) }, 0, "lock the samba start lock");
        let r = &self.root;
        for d in ["p", "l", "s", "c", "n"] {
            std::fs::create_dir_all(r.join(d)).expect("create samba's state directories");
        }
        for share in SHARES {
            let p = r.join(share);
            std::fs::create_dir_all(&p).expect("create a share directory");
            std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o777)).expect("chmod a share directory");
        }
        let d = r.display();
        let mut conf = format!(
            "[global]\n\
             server role = standalone server\n\
             smb ports = 445\n\
             interfaces = 127.0.0.1\n\
             bind interfaces only = yes\n\
             disable netbios = yes\n\
             server min protocol = SMB2_10\n\
             passdb backend = tdbsam:{d}/passdb.tdb\n\
             private dir = {d}/p\n\
             lock directory = {d}/l\n\
             state directory = {d}/s\n\
             cache directory = {d}/c\n\
             pid directory = {d}\n\
             ncalrpc dir = {d}/n\n\
             log file = {d}/log.%m\n\
             log level = 1\n\
             load printers = no\n\
             printcap name = /dev/null\n\
             disable spoolss = yes\n\
             vfs objects = acl_xattr\n\
             store dos attributes = yes\n\
             ea support = yes\n\
             map acl inherit = yes\n"
        );
        for share in SHARES {
            conf.push_str(&format!("\n[{share}]\n    path = {d}/{share}\n    read only = no\n"));
            match share {
                "enc" => conf.push_str(&format!("    admin users = {USER}\n    smb encrypt = required\n")),
                "denied" => conf.push_str("    valid users = root\n"),
                _ => conf.push_str(&format!("    admin users = {USER}\n")),
            }
        }
        let old = std::fs::read_to_string(self.conf()).unwrap_or_default();
        if old != conf {
            std::fs::write(self.conf(), &conf).expect("write smb.conf");
            if let Some(pid) = self.pid() {
                // SAFETY: kill(2) on the pid our smbd wrote; SIGHUP makes it reload smb.conf.
                unsafe { libc::kill(pid, libc::SIGHUP) };
            }
        }
        let known = Command::new("id").arg("-u").arg(USER).output().map(|o| o.status.success()).unwrap_or(false);
        if !known {
            run(Command::new("useradd").args(["-M", "-s", "/usr/sbin/nologin", USER]), "useradd");
        }
        let listed = Command::new("pdbedit")
            .arg("-s")
            .arg(self.conf())
            .arg("-L")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).contains(&format!("{USER}:")))
            .unwrap_or(false);
        if !listed {
            let mut child = Command::new("smbpasswd")
                .arg("-c")
                .arg(self.conf())
                .args(["-s", "-a", USER])
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::null())
                .spawn()
                .expect("run smbpasswd");
            use std::io::Write;
            child.stdin.take().unwrap().write_all(format!("{PASSWORD}\n{PASSWORD}\n").as_bytes()).unwrap();
            assert!(child.wait().unwrap().success(), "smbpasswd -a {USER} failed");
        }
        std::fs::write(self.password_file(), PASSWORD).expect("write the password file");
        std::fs::set_permissions(self.password_file(), std::os::unix::fs::PermissionsExt::from_mode(0o600)).expect("chmod the password file");
        if self.pid().is_some() && std::net::TcpStream::connect(("127.0.0.1", 445)).is_ok() {
            return;
        }
        // smbd daemonizes itself (-D) and so belongs to init, not to this test: the server
        // outlives the binary and the next one reuses it. Inherited descriptors beyond the
        // standard ones are closed first (a build lock held by an ancestor stays free).
        let mut smbd = Command::new("/usr/sbin/smbd");
        smbd.arg("-D").arg("-s").arg(self.conf()).stdin(std::process::Stdio::null()).stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null());
        // SAFETY: only close(2), which is async-signal-safe, between fork and exec.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut smbd, || {
                for fd in 3..1024 {
                    libc::close(fd);
                }
                Ok(())
            });
        }
        run(&mut smbd, "start smbd");
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.pid().is_none() || std::net::TcpStream::connect(("127.0.0.1", 445)).is_err() {
            assert!(Instant::now() < deadline, "smbd did not start listening on 127.0.0.1:445; see {}/log.smbd", r.display());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A 0600 file holding the password, for `--smb-password-file`.
    pub fn password_file(&self) -> PathBuf {
        self.root.join("password")
    }

    /// A fresh, empty directory of `share` for one test: its path on disk and its URI.
    pub fn fresh(&self, share: &str, name: &str) -> (PathBuf, String) {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let rel = format!("{name}-{}-{n}", std::process::id());
        let dir = self.root.join(share).join(&rel);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create a test directory in the share");
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o777)).expect("chmod the test directory");
        (dir, self.uri(share, &rel))
    }

    /// The URI of `rel` in `share`.
    pub fn uri(&self, share: &str, rel: &str) -> String {
        format!("smb://{USER}@127.0.0.1/{share}/{rel}")
    }

    /// Runs `smbclient //127.0.0.1/SHARE -c COMMANDS` as the test user; its stdout.
    pub fn smbclient(&self, share: &str, commands: &str) -> String {
        let out = Command::new("smbclient")
            .arg(format!("//127.0.0.1/{share}"))
            .arg("-s")
            .arg(self.conf())
            .arg("-U")
            .arg(format!("{USER}%{PASSWORD}"))
            .arg("-c")
            .arg(commands)
            .output()
            .expect("run smbclient");
        assert!(out.status.success(), "smbclient -c '{commands}' failed: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `smbcacls //127.0.0.1/SHARE PATH ARGS…` as the test user; its stdout.
    pub fn smbcacls(&self, share: &str, path: &str, args: &[&str]) -> String {
        let out = Command::new("smbcacls")
            .arg(format!("//127.0.0.1/{share}"))
            .arg(path)
            .arg("-s")
            .arg(self.conf())
            .arg("-U")
            .arg(format!("{USER}%{PASSWORD}"))
            .args(args)
            .output()
            .expect("run smbcacls");
        assert!(out.status.success(), "smbcacls {path} {args:?} failed: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}
