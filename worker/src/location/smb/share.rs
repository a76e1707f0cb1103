//! A connected SMB share and the operations ferry needs on it.
//!
//! [`Share`] is cheap to clone and may be used from many tokio tasks at once: smb-rs
//! multiplexes requests over each TCP connection (one reader task, one writer task, a
//! message-id → reply map, credits from a semaphore), so concurrent calls are pipelined.
//! [`ConnectOptions::connections`] opens more than one connection (each its own session) and
//! spreads operations over them round-robin.
//!
//! Handles ([`Reader`], [`NewFile`]) must be closed explicitly inside a tokio runtime: smb-rs
//! closes a dropped handle with `tokio::spawn`, which panics outside one.

use std::io::Cursor;
use std::ops::AsyncFnOnce;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use smb::binrw_util::prelude::FileTime;
use smb::connection::{AuthMethodsConfig, EncryptionMode};
use smb::{
    Client, ClientConfig, CreateDisposition, CreateOptions, Directory, File, FileAccessMask, FileAllInformation, FileAttributes, FileBasicInformation,
    FileCreateArgs, FileDispositionInformation, FileIdBothDirectoryInformation, FileRenameInformation, Resource, SecurityDescriptor, Tree, UncPath,
};

use super::error::{self, status, Error, Result};
use super::info::{attr, Basic, Info, SdFlags, WinTime};

/// Whether the session must be encrypted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Encryption {
    /// Fail unless the whole session is encrypted (SMB 3.x with AES-CCM/GCM).
    Required,
    /// Encrypt when the server or the share asks for it (`smb encrypt = required`), sign otherwise.
    #[default]
    IfServerAsks,
}

/// Less common knobs of [`Share::connect_with`].
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// TCP connections (each with its own session and tree connect); operations are spread
    /// over them round-robin. 1 is enough for pipelining; more only help a server that
    /// serves one connection on one core (samba: one smbd process per connection).
    pub connections: usize,
    /// Time allowed for one request's reply.
    pub timeout: Duration,
    /// Largest READ or WRITE sent, further limited by what the server negotiated.
    pub max_io: u32,
    /// How long a directory listing may wait for its next entry before it is called stuck.
    pub list_stall: Duration,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions { connections: 1, timeout: Duration::from_secs(60), max_io: 1 << 20, list_stall: Duration::from_secs(60) }
    }
}

struct Conn {
    client: Client,
    tree: Arc<Tree>,
}

struct Inner {
    host: String,
    share: String,
    conns: Vec<Conn>,
    next: AtomicUsize,
    max_read: u32,
    max_write: u32,
    list_stall: Duration,
}

/// A connected share. Clone it freely; [`Share::close`] logs off.
#[derive(Clone)]
pub struct Share {
    inner: Arc<Inner>,
}

/// Converts a share-relative path with `/` separators into the form smb-rs sends: `\`
/// separators, no leading separator, `""` for the share's root.
pub fn smb_path(path: &str) -> Result<String> {
    let mut out = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => continue,
            ".." => return Err(Error::Other(format!("'{path}': '..' is not allowed in a share path"))),
            p if p.contains(['\\', '\0']) => {
                return Err(Error::Other(format!("'{path}': SMB names cannot contain '\\' or NUL; rename the entry")));
            }
            p => out.push(p),
        }
    }
    Ok(out.join("\\"))
}

fn access() -> FileAccessMask {
    FileAccessMask::new()
}

fn open_args(access: FileAccessMask, options: CreateOptions) -> FileCreateArgs {
    FileCreateArgs { disposition: CreateDisposition::Open, attributes: FileAttributes::new(), options, desired_access: access.with_synchronize(true) }
}

fn attrs_to_smb(a: u32) -> FileAttributes {
    FileAttributes::from_bytes(a.to_le_bytes())
}

fn attrs_of(a: FileAttributes) -> u32 {
    u32::from_le_bytes(a.into_bytes())
}

fn basic_to_smb(b: &Basic, is_dir: bool) -> FileBasicInformation {
    let t = |t: Option<WinTime>| FileTime::from(t.map_or(0, |t| t.0));
    let attributes = match b.attributes {
        None => 0,
        Some(a) => {
            let a = (a & !attr::DIRECTORY & !attr::NORMAL) | if is_dir { attr::DIRECTORY } else { 0 };
            if a == 0 {
                attr::NORMAL
            } else {
                a
            }
        }
    };
    FileBasicInformation {
        creation_time: t(b.creation),
        last_access_time: t(b.last_access),
        last_write_time: t(b.last_write),
        change_time: t(b.change),
        file_attributes: attrs_to_smb(attributes),
    }
}

fn info_of_all(a: &FileAllInformation) -> Info {
    let is_dir = bool::from(a.standard.directory);
    Info {
        is_dir,
        size: if is_dir { 0 } else { a.standard.end_of_file },
        allocation_size: a.standard.allocation_size,
        creation: WinTime(*a.basic.creation_time),
        last_access: WinTime(*a.basic.last_access_time),
        last_write: WinTime(*a.basic.last_write_time),
        change: WinTime(*a.basic.change_time),
        attributes: attrs_of(a.basic.file_attributes),
        file_id: a.internal.index_number,
        nlink: Some(a.standard.number_of_links),
        ea_size: a.ea.ea_size,
    }
}

fn info_of_entry(e: &FileIdBothDirectoryInformation) -> Info {
    let attributes = attrs_of(e.file_attributes);
    let is_dir = attributes & attr::DIRECTORY != 0;
    Info {
        is_dir,
        size: if is_dir { 0 } else { e.end_of_file },
        allocation_size: e.allocation_size,
        creation: WinTime(*e.creation_time),
        last_access: WinTime(*e.last_access_time),
        last_write: WinTime(*e.last_write_time),
        change: WinTime(*e.change_time),
        attributes,
        file_id: e.file_id,
        nlink: None,
        ea_size: e.ea_size.unwrap_or(0),
    }
}

/// Serializes a parsed security descriptor back to self-relative bytes.
fn sd_bytes(sd: &SecurityDescriptor, path: &str) -> Result<Vec<u8>> {
    let mut out = Cursor::new(Vec::new());
    binrw::BinWrite::write_le(sd, &mut out).map_err(|e| Error::Other(format!("'{path}': cannot encode the security descriptor: {e}")))?;
    Ok(out.into_inner())
}

/// Parses self-relative security descriptor bytes.
pub fn parse_sd(bytes: &[u8]) -> Result<SecurityDescriptor> {
    binrw::BinRead::read_le(&mut Cursor::new(bytes)).map_err(|e| {
        Error::Other(format!(
            "not a self-relative security descriptor smb-rs can parse ({e}); NULL DACLs and \
             callback/alarm ACEs are not supported"
        ))
    })
}

/// How one connection attempt failed: a signature check worth one more attempt, or for good.
enum Attempt {
    SignatureCheck(Error),
    Failed(Error),
}

/// Where and as whom one connection is made.
#[derive(Clone, Copy)]
struct Target<'a> {
    host: &'a str,
    port: u16,
    share: &'a str,
    domain: Option<&'a str>,
    user: &'a str,
    password: &'a str,
    encryption: Encryption,
}

impl Share {
    /// Connects (negotiate, NTLM session setup, tree connect) with default options.
    pub async fn connect(host: &str, port: u16, share: &str, domain: Option<&str>, user: &str, password: &str, encryption: Encryption) -> Result<Share> {
        Self::connect_with(host, port, share, domain, user, password, encryption, &ConnectOptions::default()).await
    }

    #[allow(clippy::too_many_arguments)]
    pub async fn connect_with(
        host: &str,
        port: u16,
        share: &str,
        domain: Option<&str>,
        user: &str,
        password: &str,
        encryption: Encryption,
        opts: &ConnectOptions,
    ) -> Result<Share> {
        if host.contains(':') {
            return Err(Error::Other(format!("host '{host}': IPv6 addresses are not supported by smb-rs; use a name or an IPv4 address")));
        }
        let target = Target { host, port, share, domain, user, password, encryption };
        let mut conns = Vec::new();
        let (mut max_read, mut max_write) = (opts.max_io, opts.max_io);
        for _ in 0..opts.connections.max(1) {
            let c = match Self::connect_one(&target, opts).await {
                Ok(c) => c,
                Err(e) => {
                    for c in conns {
                        let _ = Self::close_conn(c).await;
                    }
                    return Err(e);
                }
            };
            if let Ok(conn) = c.client.get_connection(host).await {
                if let Some(ci) = conn.conn_info() {
                    max_read = max_read.min(ci.negotiation.max_read_size);
                    max_write = max_write.min(ci.negotiation.max_write_size);
                }
            }
            conns.push(c);
        }
        Ok(Share {
            inner: Arc::new(Inner {
                host: host.to_string(),
                share: share.to_string(),
                conns,
                next: AtomicUsize::new(0),
                max_read: max_read.max(4096),
                max_write: max_write.max(4096),
                list_stall: opts.list_stall,
            }),
        })
    }

    async fn connect_one(t: &Target<'_>, opts: &ConnectOptions) -> Result<Conn> {
        // A connection whose setup fails its signature check is made again, twice at most.
        // smb-rs sometimes rejects the signature of a setup response from samba (seen against
        // samba 4.17 on loopback in roughly one connection in a hundred), and a fresh
        // connection is fine. A tampering path fails every attempt, and the error stands.
        let mut attempt = 0;
        loop {
            match Self::connect_attempt(t, opts).await {
                Err(Attempt::SignatureCheck(e)) if attempt < 2 => {
                    attempt += 1;
                    // DEBUG: a retry that works is nothing to act on, and a WARN would be a
                    // second line beside a bad-input error's one line on the terminal.
                    tracing::debug!(host = t.host, share = t.share, attempt, error = %e, "SMB connection setup failed its signature check; connecting again");
                    tokio::time::sleep(Duration::from_millis(100 * attempt)).await;
                }
                Err(Attempt::SignatureCheck(e)) | Err(Attempt::Failed(e)) => return Err(e),
                Ok(c) => return Ok(c),
            }
        }
    }

    async fn connect_attempt(t: &Target<'_>, opts: &ConnectOptions) -> std::result::Result<Conn, Attempt> {
        let Target { host, port, share, domain, user, password, encryption } = *t;
        let mut cfg = ClientConfig { dfs: false, ..Default::default() };
        cfg.connection.port = Some(port);
        cfg.connection.timeout = Some(opts.timeout);
        cfg.connection.encryption_mode = match encryption {
            Encryption::Required => EncryptionMode::Required,
            Encryption::IfServerAsks => EncryptionMode::Allowed,
        };
        cfg.connection.auth_methods = AuthMethodsConfig { ntlm: true, kerberos: false };
        let client = Client::new(cfg);
        let other = |e: smb::Error| Attempt::Failed(Error::Other(format!("smb://{host}/{share}: {e}")));
        let root = UncPath::new(host).and_then(|u| u.with_share(share)).map_err(other)?;
        let name = match domain {
            Some(d) if !d.is_empty() => format!("{d}\\{user}"),
            _ => user.to_string(),
        };
        let res = client.share_connect(&root, &name, password.to_string()).await;
        let res = match res {
            Ok(()) => client.get_tree(&root).await,
            Err(e) => Err(e),
        };
        match res {
            Ok(tree) => Ok(Conn { client, tree }),
            Err(e) => {
                let _ = client.close().await;
                let signature = matches!(&e, smb::Error::TranformFailed(t) if matches!(t.phase, smb::connection::transformer::TransformPhase::SignVerify));
                let e = Self::connect_error(e, host, share, &name, encryption);
                Err(if signature { Attempt::SignatureCheck(e) } else { Attempt::Failed(e) })
            }
        }
    }

    fn connect_error(e: smb::Error, host: &str, share: &str, user: &str, enc: Encryption) -> Error {
        match error::status_of(&e) {
            Some(s @ (status::LOGON_FAILURE | status::ACCOUNT_DISABLED | status::ACCOUNT_RESTRICTION | status::PASSWORD_EXPIRED)) => {
                Error::LogonFailure { user: user.to_string(), host: host.to_string(), status: s }
            }
            Some(status::BAD_NETWORK_NAME) => Error::BadShare { share: share.to_string(), host: host.to_string() },
            Some(s @ status::ACCESS_DENIED) if enc == Encryption::IfServerAsks => {
                Error::AccessDenied { path: format!("//{host}/{share} (tree connect; the share may require encryption or deny this user)"), status: s }
            }
            Some(s) => error::from_status(s, &format!("//{host}/{share}"), host, || e.to_string()),
            None => match e {
                smb::Error::NegotiationError(_) | smb::Error::InvalidConfiguration(_) if enc == Encryption::Required => Error::Other(format!(
                    "smb://{host}/{share}: encryption required but not available ({e}): the server \
                         must speak SMB 3.x with encryption, or connect with encryption IfServerAsks"
                )),
                other => error::map(other, &format!("//{host}/{share}"), host),
            },
        }
    }

    async fn close_conn(c: Conn) -> Result<()> {
        drop(c.tree);
        c.client.close().await.map_err(|e| Error::Other(format!("closing: {e}")))
    }

    /// Logs off and closes the connections (when this is the last clone, else does nothing).
    pub async fn close(self) -> Result<()> {
        if let Ok(inner) = Arc::try_unwrap(self.inner) {
            for c in inner.conns {
                Self::close_conn(c).await?;
            }
        }
        Ok(())
    }

    pub fn host(&self) -> &str {
        &self.inner.host
    }
    pub fn share_name(&self) -> &str {
        &self.inner.share
    }
    /// Largest READ and WRITE this share sends.
    pub fn io_sizes(&self) -> (u32, u32) {
        (self.inner.max_read, self.inner.max_write)
    }

    fn tree(&self) -> &Arc<Tree> {
        let n = self.inner.conns.len();
        let i = if n == 1 { 0 } else { self.inner.next.fetch_add(1, Ordering::Relaxed) % n };
        &self.inner.conns[i].tree
    }

    fn err(&self, e: smb::Error, path: &str) -> Error {
        error::map(e, path, &self.inner.host)
    }
    fn io_err(&self, e: std::io::Error, path: &str) -> Error {
        error::map_io(e, path, &self.inner.host)
    }

    /// Opens `path` (share-relative, `/`-separated) and returns the resource.
    async fn open(&self, path: &str, args: &FileCreateArgs) -> Result<Resource> {
        let p = smb_path(path)?;
        self.tree().create(&p, args).await.map_err(|e| self.err(e, path))
    }

    async fn close_res(&self, r: &Resource, path: &str) -> Result<()> {
        let res = match r {
            Resource::File(f) => f.close().await,
            Resource::Directory(d) => d.close().await,
            Resource::Pipe(p) => p.close().await,
        };
        res.map_err(|e| self.err(e, path))
    }

    /// Runs `f` on a handle opened with `args`, then closes it whatever `f` returned.
    async fn with_open<T, F>(&self, path: &str, args: &FileCreateArgs, f: F) -> Result<T>
    where
        F: AsyncFnOnce(&smb::ResourceHandle) -> std::result::Result<T, smb::Error>,
    {
        let r = self.open(path, args).await?;
        let out = f(handle_of(&r)).await.map_err(|e| self.err(e, path));
        let closed = self.close_res(&r, path).await;
        let out = out?;
        closed?;
        Ok(out)
    }

    /// Metadata of `path` (`""` = the share's root), `None` when it does not exist.
    pub async fn stat(&self, path: &str) -> Result<Option<Info>> {
        let args = open_args(access().with_file_read_attributes(true), CreateOptions::new());
        let r = self.with_open(path, &args, async |h| h.query_info::<FileAllInformation>().await).await;
        match r {
            Ok(a) => Ok(Some(info_of_all(&a))),
            Err(Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Like [`Share::stat`], with the value of the extended attribute (SMB EA) `ea` when the
    /// entry has one of that name, read through the same handle.
    pub async fn stat_ea(&self, path: &str, ea: &str) -> Result<Option<(Info, Option<Vec<u8>>)>> {
        let args = open_args(access().with_file_read_attributes(true).with_file_read_ea(true), CreateOptions::new());
        let r = self
            .with_open(path, &args, async |h| {
                let all = h.query_info::<FileAllInformation>().await?;
                let value = if all.ea.ea_size > 0 { query_ea(h, ea).await } else { None };
                Ok((all, value))
            })
            .await;
        match r {
            Ok((a, v)) => Ok(Some((info_of_all(&a), v))),
            Err(Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Sets the extended attribute (SMB EA) `name` of an existing file or directory.
    pub async fn set_ea(&self, path: &str, name: &str, value: &[u8]) -> Result<()> {
        let args = open_args(access().with_file_read_attributes(true).with_file_write_ea(true), CreateOptions::new());
        self.with_open(path, &args, async |h| h.set_info(ea_info(name, value)).await).await
    }

    /// Opens an existing file for writing (and reading, times, attributes, renaming), like
    /// [`Share::create_new`] does a new one.
    pub async fn open_write(&self, path: &str) -> Result<NewFile> {
        self.open_new(path, CreateDisposition::Open).await
    }

    /// The entries of directory `dir`, without `.` and `..`, in the server's order.
    pub async fn list(&self, dir: &str) -> Result<Vec<(String, Info)>> {
        let args = open_args(access().with_file_read_data(true).with_file_read_attributes(true), CreateOptions::new().with_directory_file(true));
        let d = match self.open(dir, &args).await? {
            Resource::Directory(d) => Arc::new(d),
            other => {
                let _ = self.close_res(&other, dir).await;
                return Err(Error::WrongType { path: dir.to_string(), status: status::NOT_A_DIRECTORY });
            }
        };
        // smb-rs's listing stream hands batches over with `Notify::notify_waiters()`, which
        // can lose the wake-up when consumer and fetcher run on two worker threads (both then
        // wait forever). On a current-thread runtime the fetcher reaches its wait before the
        // consumer runs, so the listing runs on one of its own, on a blocking thread.
        let stall = self.inner.list_stall;
        let d2 = d.clone();
        let listed = tokio::task::spawn_blocking(move || -> std::result::Result<Vec<(String, Info)>, ListFail> {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| ListFail::Other(format!("cannot start the listing's runtime: {e}")))?;
            rt.block_on(async move {
                let mut s = Directory::query::<FileIdBothDirectoryInformation>(&d2, "*").await.map_err(ListFail::Smb)?;
                let mut out = Vec::new();
                loop {
                    match tokio::time::timeout(stall, s.next()).await {
                        Err(_) => return Err(ListFail::Stalled),
                        Ok(None) => break,
                        Ok(Some(Err(e))) => return Err(ListFail::Smb(e)),
                        Ok(Some(Ok(e))) => {
                            let name = String::from_utf16_lossy(&e.file_name);
                            if name != "." && name != ".." {
                                out.push((name, info_of_entry(&e)));
                            }
                        }
                    }
                }
                Ok(out)
            })
        })
        .await;
        let closed = d.close().await.map_err(|e| self.err(e, dir));
        let out = match listed {
            Ok(Ok(v)) => v,
            Ok(Err(ListFail::Smb(e))) => return Err(self.err(e, dir)),
            Ok(Err(ListFail::Stalled)) => {
                return Err(Error::Other(format!("listing '{dir}' stalled for {stall:?} (no entry arrived): retry; the server may be overloaded")));
            }
            Ok(Err(ListFail::Other(s))) => return Err(Error::Other(s)),
            Err(e) => return Err(Error::Other(format!("listing '{dir}': task failed: {e}"))),
        };
        closed?;
        Ok(out)
    }

    /// Opens a file for reading; the handle serves any number of reads, from any task.
    pub async fn open_read(&self, path: &str) -> Result<Reader> {
        let args = open_args(
            access().with_file_read_data(true).with_file_read_attributes(true).with_read_control(true),
            CreateOptions::new().with_non_directory_file(true),
        );
        match self.open(path, &args).await? {
            Resource::File(f) => Ok(Reader { share: self.clone(), path: path.to_string(), file: Arc::new(f) }),
            other => {
                let _ = self.close_res(&other, path).await;
                Err(Error::WrongType { path: path.to_string(), status: status::FILE_IS_A_DIRECTORY })
            }
        }
    }

    /// Opens, reads up to `buf.len()` bytes at `pos`, closes. Returns the bytes read (short only at EOF).
    pub async fn read_at(&self, path: &str, pos: u64, buf: &mut [u8]) -> Result<usize> {
        let r = self.open_read(path).await?;
        let n = r.read_at(pos, buf).await;
        let c = r.close().await;
        let n = n?;
        c?;
        Ok(n)
    }

    /// Creates `path` as a NEW empty file (fails with [`Error::Exists`] when the name is
    /// taken) and opens it for writing, setting times and attributes, renaming and deleting.
    pub async fn create_new(&self, path: &str) -> Result<NewFile> {
        self.open_new(path, CreateDisposition::Create).await
    }

    async fn open_new(&self, path: &str, disposition: CreateDisposition) -> Result<NewFile> {
        let args = FileCreateArgs {
            disposition,
            attributes: attrs_to_smb(attr::ARCHIVE),
            options: CreateOptions::new().with_non_directory_file(true),
            desired_access: access()
                .with_file_read_data(true)
                .with_file_write_data(true)
                .with_file_append_data(true)
                .with_file_read_attributes(true)
                .with_file_write_attributes(true)
                .with_file_read_ea(true)
                .with_file_write_ea(true)
                .with_delete(true)
                .with_read_control(true)
                .with_write_dacl(true)
                .with_write_owner(true)
                .with_synchronize(true),
        };
        match self.open(path, &args).await? {
            Resource::File(f) => Ok(NewFile { share: self.clone(), path: Mutex::new(path.to_string()), file: Arc::new(f), attrs_set: Mutex::new(None) }),
            other => {
                let _ = self.close_res(&other, path).await;
                Err(Error::WrongType { path: path.to_string(), status: status::FILE_IS_A_DIRECTORY })
            }
        }
    }

    /// Creates directory `path` (its parent must exist); [`Error::Exists`] when the name is taken.
    pub async fn mkdir(&self, path: &str) -> Result<()> {
        let args = FileCreateArgs {
            disposition: CreateDisposition::Create,
            attributes: FileAttributes::new(),
            options: CreateOptions::new().with_directory_file(true),
            desired_access: access().with_file_read_attributes(true).with_synchronize(true),
        };
        let r = self.open(path, &args).await?;
        self.close_res(&r, path).await
    }

    async fn delete(&self, path: &str, dir: bool) -> Result<()> {
        let options = if dir { CreateOptions::new().with_directory_file(true) } else { CreateOptions::new().with_non_directory_file(true) };
        let args = open_args(access().with_delete(true).with_file_read_attributes(true), options);
        self.with_open(path, &args, async |h| h.set_info(FileDispositionInformation::default()).await).await
    }

    /// Removes a file. A read-only file gives [`Error::AccessDenied`] (STATUS_CANNOT_DELETE):
    /// clear the attribute first (see [`Share::set_basic`]).
    pub async fn remove_file(&self, path: &str) -> Result<()> {
        self.delete(path, false).await
    }

    /// Removes an empty directory ([`Error::NotEmpty`] otherwise).
    pub async fn remove_dir(&self, path: &str) -> Result<()> {
        self.delete(path, true).await
    }

    /// Renames `from` to `to` (both share-relative). With `replace`, an existing file `to` is
    /// replaced; if it is read-only its read-only attribute is cleared first and the rename
    /// retried (samba, like Windows, refuses to replace a read-only file).
    pub async fn rename(&self, from: &str, to: &str, replace: bool) -> Result<()> {
        let args = open_args(access().with_delete(true).with_file_read_attributes(true), CreateOptions::new());
        let r = self.open(from, &args).await?;
        let h = handle_of(&r);
        let out = rename_handle(self, h, from, to, replace).await;
        let closed = self.close_res(&r, from).await;
        out?;
        closed
    }

    /// Sets times and attributes of an existing file or directory.
    pub async fn set_basic(&self, path: &str, b: &Basic) -> Result<()> {
        let args = open_args(access().with_file_read_attributes(true).with_file_write_attributes(true), CreateOptions::new());
        let r = self.open(path, &args).await?;
        let info = basic_to_smb(b, r.is_dir());
        let out = handle_of(&r).set_info(info).await.map_err(|e| self.err(e, path));
        let closed = self.close_res(&r, path).await;
        out?;
        closed
    }

    /// The parts of `path`'s security descriptor selected by `flags`, as self-relative bytes.
    /// With `flags.sacl` the user needs SeSecurityPrivilege ([`Error::PrivilegeNotHeld`]).
    /// The bytes are re-encoded by smb-rs: same meaning as the server's, not the same layout.
    pub async fn get_sd(&self, path: &str, flags: SdFlags) -> Result<Vec<u8>> {
        if flags.is_empty() {
            return Ok(Vec::new());
        }
        let args = open_args(access().with_read_control(true).with_access_system_security(flags.sacl).with_file_read_attributes(true), CreateOptions::new());
        // samba answers a SACL query on a file without SACL with SACL_PRESENT and offset 0 (a
        // NULL SACL), which smb-rs 0.11.2 refuses to parse. So the SACL is queried on its own
        // and that parse failure read as "no SACL".
        let main = SdFlags { sacl: false, ..flags };
        let sd = self
            .with_open(path, &args, async |h| {
                let mut sd = if main.is_empty() { None } else { Some(query_sd(h, main).await?) };
                if flags.sacl {
                    match query_sd(h, SdFlags { sacl: true, ..SdFlags::NONE }).await {
                        Ok(s) => match sd.as_mut() {
                            Some(sd) => {
                                sd.sacl = s.sacl;
                                sd.control.set_sacl_present(sd.sacl.is_some());
                            }
                            None => sd = Some(s),
                        },
                        Err(e) if format!("{e:?}").contains("offset_sacl") => {}
                        Err(e) => return Err(e),
                    }
                }
                sd.ok_or(smb::Error::InvalidState("empty security descriptor query".into()))
            })
            .await?;
        sd_bytes(&sd, path)
    }

    /// Writes the parts of a self-relative security descriptor selected by `flags` to `path`.
    pub async fn set_sd(&self, path: &str, sd: &[u8], flags: SdFlags) -> Result<()> {
        if flags.is_empty() {
            return Ok(());
        }
        let parsed = parse_sd(sd)?;
        let args = open_args(
            // READ_CONTROL too: samba 4.17 refuses (ACCESS_DENIED) an open asking
            // ACCESS_SYSTEM_SECURITY without it, even with SeSecurityPrivilege.
            access()
                .with_write_dacl(flags.dacl)
                .with_write_owner(flags.owner || flags.group)
                .with_access_system_security(flags.sacl)
                .with_read_control(true)
                .with_file_read_attributes(true),
            CreateOptions::new(),
        );
        self.with_open(path, &args, async |h| h.set_security_info(parsed, flags.to_smb()).await).await
    }
}

async fn query_sd(h: &smb::ResourceHandle, flags: SdFlags) -> std::result::Result<SecurityDescriptor, smb::Error> {
    match h.query_security_info(flags.to_smb()).await {
        Err(smb::Error::BufferTooSmall { required, .. }) => h.query_security_info_with_options(flags.to_smb(), Some(required.unwrap_or(1 << 16))).await,
        other => other,
    }
}

fn ea_info(name: &str, value: &[u8]) -> smb::FileFullEaInformation {
    smb::FileFullEaInformation::from(vec![smb::FileFullEaInformationInner { flags: smb::EaFlags::new(), ea_name: name.into(), ea_value: value.to_vec() }])
}

/// The value of EA `name`, `None` when it is missing or empty (servers answer a missing name
/// with an empty value or an error).
async fn query_ea(h: &smb::ResourceHandle, name: &str) -> Option<Vec<u8>> {
    let eas = h.query_full_ea_info_with_options(vec![name], Some(64 << 10)).await.ok()?;
    let found = eas.iter().find(|e| e.ea_name.to_string().eq_ignore_ascii_case(name)).map(|e| e.ea_value.clone());
    found.filter(|v| !v.is_empty())
}

enum ListFail {
    Smb(smb::Error),
    Stalled,
    Other(String),
}

/// The common handle of a resource (never panics, unlike `unwrap_file`/`unwrap_dir`).
fn handle_of(r: &Resource) -> &smb::ResourceHandle {
    match r {
        Resource::File(f) => f,
        Resource::Directory(d) => d,
        Resource::Pipe(p) => p,
    }
}

async fn rename_handle(share: &Share, h: &smb::ResourceHandle, from: &str, to: &str, replace: bool) -> Result<()> {
    let target = smb_path(to)?;
    let info = || FileRenameInformation { replace_if_exists: replace.into(), root_directory: 0, file_name: target.as_str().into() };
    match h.set_info(info()).await {
        Ok(()) => Ok(()),
        Err(e) => {
            let err = share.err(e, from);
            // A read-only destination cannot be replaced: clear its attribute and retry.
            let readonly_dst = if replace && matches!(err, Error::AccessDenied { .. }) {
                share.stat(to).await.ok().flatten().filter(|d| d.readonly() && !d.is_dir)
            } else {
                None
            };
            if let Some(dst) = readonly_dst {
                share.set_basic(to, &Basic { attributes: Some(dst.attributes & !attr::READONLY), ..Basic::default() }).await?;
                return h.set_info(info()).await.map_err(|e| share.err(e, &format!("{from} -> {to}")));
            }
            Err(match err {
                Error::Exists { .. } => Error::Exists { path: to.to_string() },
                e => e,
            })
        }
    }
}

/// Splits `len` bytes at `pos` into requests of at most `max` bytes.
fn pieces(pos: u64, len: usize, max: u32) -> impl Iterator<Item = (u64, std::ops::Range<usize>)> {
    let max = max as usize;
    (0..len).step_by(max).map(move |o| (pos + o as u64, o..(o + max).min(len)))
}

/// A file open for reading. Share it (`Arc`) across tasks; close it when done.
pub struct Reader {
    share: Share,
    path: String,
    file: Arc<File>,
}

impl Reader {
    /// Reads up to `buf.len()` bytes at `pos` (requests of the negotiated size, in flight
    /// together). Returns the bytes read: fewer only at the end of the file, as known at open.
    pub async fn read_at(&self, pos: u64, buf: &mut [u8]) -> Result<usize> {
        read_file(&self.share, &self.file, &self.path, pos, buf).await
    }

    /// Metadata of the open file.
    pub async fn info(&self) -> Result<Info> {
        self.file.query_info::<FileAllInformation>().await.map(|a| info_of_all(&a)).map_err(|e| self.share.err(e, &self.path))
    }

    pub fn path(&self) -> &str {
        &self.path
    }

    pub async fn close(&self) -> Result<()> {
        self.file.close().await.map_err(|e| self.share.err(e, &self.path))
    }
}

/// Reads up to `buf.len()` bytes at `pos` of an open file (requests of the negotiated size,
/// in flight together). Returns the bytes read: fewer only at the end of the file.
async fn read_file(share: &Share, file: &File, path: &str, pos: u64, buf: &mut [u8]) -> Result<usize> {
    {
        let max = share.inner.max_read as usize;
        let futs = buf.chunks_mut(max).enumerate().map(|(i, chunk)| {
            let f = file;
            async move {
                let want = chunk.len();
                let mut got = 0;
                while got < want {
                    let n = f.read_block(&mut chunk[got..], pos + (i * max + got) as u64, None, false).await?;
                    if n == 0 {
                        break;
                    }
                    got += n;
                }
                Ok::<usize, std::io::Error>(got)
            }
        });
        let counts = futures::future::try_join_all(futs).await.map_err(|e| share.io_err(e, path))?;
        let mut total = 0;
        for (i, n) in counts.iter().enumerate() {
            total += n;
            if *n < max.min(buf.len() - i * max) {
                break;
            }
        }
        Ok(total)
    }
}

/// A file created by [`Share::create_new`], open for writing. All methods take `&self`, so an
/// `Arc<NewFile>` can be written from many tasks at once.
pub struct NewFile {
    share: Share,
    path: Mutex<String>,
    file: Arc<File>,
    /// The attributes last set through this handle, re-applied after a rename (samba, like
    /// NTFS, sets ARCHIVE on the renamed file).
    attrs_set: Mutex<Option<u32>>,
}

impl NewFile {
    /// Its current share-relative name (changes with [`NewFile::rename`]).
    pub fn path(&self) -> String {
        self.path.lock().map(|p| p.clone()).unwrap_or_default()
    }

    /// Writes all of `data` at `pos`, in requests of the negotiated size sent together.
    pub async fn write_at(&self, pos: u64, data: &[u8]) -> Result<()> {
        let max = self.share.inner.max_write;
        let futs = pieces(pos, data.len(), max).map(|(off, range)| {
            let f = &self.file;
            let piece = &data[range];
            async move {
                let mut done = 0;
                while done < piece.len() {
                    let n = f.write_block(&piece[done..], off + done as u64, None).await?;
                    if n == 0 {
                        return Err(std::io::Error::new(std::io::ErrorKind::WriteZero, "server accepted 0 bytes"));
                    }
                    done += n;
                }
                Ok(())
            }
        });
        futures::future::try_join_all(futs).await.map(|_| ()).map_err(|e| self.share.io_err(e, &self.path()))
    }

    /// Reads up to `buf.len()` bytes at `pos` through this handle (short only at the end).
    pub async fn read_at(&self, pos: u64, buf: &mut [u8]) -> Result<usize> {
        read_file(&self.share, &self.file, &self.path(), pos, buf).await
    }

    /// Sets the extended attribute (SMB EA) `name` through this handle.
    pub async fn set_ea(&self, name: &str, value: &[u8]) -> Result<()> {
        self.file.set_info(ea_info(name, value)).await.map_err(|e| self.share.err(e, &self.path()))
    }

    /// Sets the end of file (truncates or extends with zeros).
    pub async fn set_len(&self, len: u64) -> Result<()> {
        use smb::resource::SetLen;
        self.file.set_len(len).await.map_err(|e| self.share.err(e, &self.path()))
    }

    /// SMB2 FLUSH: asks the server to make the data durable (samba: fsync, `strict sync = yes`).
    pub async fn flush(&self) -> Result<()> {
        self.file.flush().await.map_err(|e| self.share.io_err(e, &self.path()))
    }

    /// Sets times and attributes through this handle (do it after the last write).
    pub async fn set_basic(&self, b: &Basic) -> Result<()> {
        self.file.set_info(basic_to_smb(b, false)).await.map_err(|e| self.share.err(e, &self.path()))?;
        if let (Some(a), Ok(mut set)) = (b.attributes, self.attrs_set.lock()) {
            *set = Some(a);
        }
        Ok(())
    }

    /// Metadata of the open file.
    pub async fn info(&self) -> Result<Info> {
        self.file.query_info::<FileAllInformation>().await.map(|a| info_of_all(&a)).map_err(|e| self.share.err(e, &self.path()))
    }

    /// Owner and DACL (and SACL, with the privilege) through the open handle: only the parts
    /// the handle was opened for (WRITE_DAC, WRITE_OWNER); a SACL goes through [`Share::set_sd`].
    pub async fn set_sd(&self, sd: &[u8], flags: SdFlags) -> Result<()> {
        if flags.is_empty() {
            return Ok(());
        }
        let parsed = parse_sd(sd)?;
        self.file.set_security_info(parsed, flags.to_smb()).await.map_err(|e| self.share.err(e, &self.path()))
    }

    /// Renames the open file (the handle stays open on its new name). Samba sets ARCHIVE on a
    /// renamed file: attributes set through this handle before are set again after it.
    pub async fn rename(&self, to: &str, replace: bool) -> Result<()> {
        let from = self.path();
        rename_handle(&self.share, &self.file, &from, to, replace).await?;
        if let Ok(mut p) = self.path.lock() {
            *p = to.to_string();
        }
        let set = self.attrs_set.lock().ok().and_then(|a| *a);
        if let Some(a) = set.filter(|a| a & attr::ARCHIVE == 0) {
            let b = Basic { attributes: Some(a), ..Basic::default() };
            self.file.set_info(basic_to_smb(&b, false)).await.map_err(|e| self.share.err(e, to))?;
        }
        Ok(())
    }

    /// Marks the file for deletion when closed (to abandon a temporary file).
    pub async fn delete_on_close(&self) -> Result<()> {
        self.file.set_info(FileDispositionInformation::default()).await.map_err(|e| self.share.err(e, &self.path()))
    }

    pub async fn close(&self) -> Result<()> {
        self.file.close().await.map_err(|e| self.share.err(e, &self.path()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        assert_eq!(smb_path("").unwrap(), "");
        assert_eq!(smb_path("/a//b/").unwrap(), "a\\b");
        assert_eq!(smb_path("./a/./ü.txt").unwrap(), "a\\ü.txt");
        assert!(smb_path("a/../b").is_err());
        assert!(smb_path("a\\b").is_err());
    }

    #[test]
    fn split() {
        let v: Vec<_> = pieces(10, 5, 2).collect();
        assert_eq!(v, vec![(10, 0..2), (12, 2..4), (14, 4..5)]);
        assert_eq!(pieces(0, 0, 2).count(), 0);
    }

    #[test]
    fn basic_attrs() {
        let b = Basic { attributes: Some(0), ..Basic::default() };
        assert_eq!(attrs_of(basic_to_smb(&b, false).file_attributes), attr::NORMAL);
        let b = Basic { attributes: Some(attr::READONLY | attr::DIRECTORY), ..Basic::default() };
        assert_eq!(attrs_of(basic_to_smb(&b, false).file_attributes), attr::READONLY);
        assert_eq!(attrs_of(basic_to_smb(&Basic::default(), true).file_attributes), 0);
    }
}
