//! The NFSv3 connection pool: `nconnect` TCP connections to one server, each carrying one
//! request at a time (what `nfs3_client` does), so as many requests are in flight as there
//! are connections.
//!
//! Every call goes through [`rpc!`], which gives it a connection, a deadline and a retry
//! policy:
//! - a request that times out, or whose connection breaks, is sent again on a fresh
//!   connection, with backoff, until the server has been unreachable for [`OUTAGE`];
//! - `NFS3ERR_JUKEBOX` (the server is busy) waits and sends again;
//! - every other status is the caller's to interpret. A call that was sent more than once
//!   says so ([`Fail::Status::resent`]): the first may have been carried out, so a
//!   non-idempotent call (CREATE, MKDIR, REMOVE, RENAME, LINK) that fails with EXIST or NOENT
//!   after a resend may have succeeded, and the caller checks.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use nfs3_client::nfs3_types::nfs3::{nfsstat3, Nfs3Result};
use nfs3_client::nfs3_types::rpc::{auth_unix, opaque_auth};
use nfs3_client::nfs3_types::xdr_codec::Opaque;
use nfs3_client::Nfs3Client;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{Mutex, OwnedMutexGuard};

/// How long a server may stay unreachable before calls fail: a restart, a failover or a
/// network blip of this length is waited out.
pub const OUTAGE: Duration = Duration::from_secs(120);

/// A TCP connection as `nfs3_client` wants it. Its own read loop spins on a connection the
/// server closed (a read of 0 bytes), so a closed connection is an error here.
pub struct Conn(pub TcpStream);

impl nfs3_client::io::AsyncRead for Conn {
    async fn async_read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.0.read(buf).await?;
        if n == 0 && !buf.is_empty() {
            return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "the server closed the connection"));
        }
        Ok(n)
    }
}

impl nfs3_client::io::AsyncWrite for Conn {
    async fn async_write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.write(buf).await
    }
}

pub type Client = Nfs3Client<Conn>;

/// Why a call failed.
#[derive(Clone, Debug)]
pub enum Fail {
    /// The server answered with this status. `resent`: the request went out more than once.
    Status { status: nfsstat3, resent: bool },
    /// No answer within [`OUTAGE`]: the server or the network is down.
    Unreachable(String),
    /// The server refused the credentials or does not speak NFSv3.
    Refused(String),
}

/// An AUTH_SYS credential.
pub fn credential(uid: u32, gid: u32) -> opaque_auth<'static> {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    opaque_auth::auth_unix(&auth_unix {
        stamp: std::process::id(),
        machinename: Opaque::owned(host.trim().as_bytes().iter().take(255).copied().collect()),
        uid,
        gid,
        gids: vec![gid],
    })
}

/// Opens a TCP connection; from a privileged port when `privileged` (servers export with
/// `secure` by default, which refuses others).
pub async fn connect(addr: SocketAddr, privileged: bool) -> std::io::Result<TcpStream> {
    let stream = if privileged {
        let mut last = None;
        let start = 600 + (std::process::id() as u16 % 400);
        let mut found = None;
        for i in 0..424u16 {
            let port = 600 + (start - 600 + i) % 424;
            let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
            let local = if addr.is_ipv4() { IpAddr::V4(Ipv4Addr::UNSPECIFIED) } else { IpAddr::V6(Ipv6Addr::UNSPECIFIED) };
            match socket.bind(SocketAddr::new(local, port)) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => continue,
                Err(e) => return Err(e),
            }
            match socket.connect(addr).await {
                Ok(s) => {
                    found = Some(s);
                    break;
                }
                // The same local port to the same server is still in TIME_WAIT.
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse || e.raw_os_error() == Some(libc::EADDRNOTAVAIL) => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        found.ok_or_else(|| last.unwrap_or_else(|| std::io::Error::other("no privileged port is free")))?
    } else {
        TcpStream::connect(addr).await?
    };
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// `nconnect` connections to one NFS server.
pub struct Pool {
    addr: SocketAddr,
    privileged: bool,
    cred: opaque_auth<'static>,
    slots: Vec<Arc<Mutex<Option<Client>>>>,
    next: AtomicUsize,
    /// How long one request may take.
    pub timeout: Duration,
}

/// A connection held for one request.
pub struct Held(OwnedMutexGuard<Option<Client>>);

impl Held {
    pub fn client(&mut self) -> &mut Client {
        self.0.as_mut().expect("connected before it is handed out")
    }

    /// Forgets a connection whose state is unknown (a timeout, a broken stream).
    pub fn broken(&mut self) {
        *self.0 = None;
    }
}

impl Pool {
    pub fn new(addr: SocketAddr, privileged: bool, cred: opaque_auth<'static>, connections: usize, timeout: Duration) -> Pool {
        Pool { addr, privileged, cred, slots: (0..connections.max(1)).map(|_| Arc::new(Mutex::new(None))).collect(), next: AtomicUsize::new(0), timeout }
    }

    /// A free connection (or the next one in turn, once free), connected.
    pub async fn connection(&self) -> std::io::Result<Held> {
        let n = self.slots.len();
        let first = self.next.fetch_add(1, Ordering::Relaxed);
        let mut guard = None;
        for i in 0..n {
            if let Ok(g) = self.slots[(first + i) % n].clone().try_lock_owned() {
                guard = Some(g);
                break;
            }
        }
        let mut guard = match guard {
            Some(g) => g,
            None => self.slots[first % n].clone().lock_owned().await,
        };
        if guard.is_none() {
            let stream = tokio::time::timeout(self.timeout.min(Duration::from_secs(10)), connect(self.addr, self.privileged))
                .await
                .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connecting timed out"))??;
            *guard = Some(Nfs3Client::new_with_auth(Conn(stream), self.cred.clone(), opaque_auth::default()));
        }
        Ok(Held(guard))
    }
}

pub use super::retry::Retry;

impl From<super::retry::Unreachable> for Fail {
    fn from(u: super::retry::Unreachable) -> Fail {
        Fail::Unreachable(u.0)
    }
}

/// What one attempt came to.
pub enum Attempt<T> {
    Done(T),
    Status(nfsstat3),
    /// Sending again may help: a timeout, a broken connection, a garbled reply.
    Transport(String),
    Refused(String),
}

/// What one send came back with: within the deadline or not, without a panic in the client
/// or with one, and the client's own result.
pub type Outcome<T, E> = Result<std::thread::Result<Result<Nfs3Result<T, E>, nfs3_client::error::Error>>, tokio::time::error::Elapsed>;

/// Sorts one attempt's outcome.
pub fn settle<T, E>(outcome: Outcome<T, E>) -> Attempt<T> {
    use nfs3_client::error::{Error, RpcError};
    match outcome {
        Err(_) => Attempt::Transport("the request timed out".into()),
        // nfs3_client asserts on replies it cannot parse (a multi-fragment record).
        Ok(Err(_)) => Attempt::Transport("the reply could not be parsed".into()),
        Ok(Ok(Ok(Nfs3Result::Ok(v)))) => Attempt::Done(v),
        Ok(Ok(Ok(Nfs3Result::Err((status, _))))) => Attempt::Status(status),
        Ok(Ok(Err(Error::Rpc(RpcError::Auth)))) => Attempt::Refused("the server refused the AUTH_SYS credentials".into()),
        Ok(Ok(Err(Error::Rpc(e @ (RpcError::ProgUnavail | RpcError::ProgMismatch | RpcError::ProcUnavail | RpcError::RpcMismatch))))) => {
            Attempt::Refused(format!("the server does not serve NFSv3 on this port ({e})"))
        }
        Ok(Ok(Err(e))) => Attempt::Transport(e.to_string()),
    }
}

/// Runs one NFSv3 call with the pool's connection, deadline and retry policy:
/// `rpc!(pool, "LOOKUP", |c| c.lookup(&args))` evaluates to `Result<LOOKUP3resok, Fail>`.
macro_rules! rpc {
    ($pool:expr, $op:expr, |$c:ident| $call:expr) => {{
        use futures::FutureExt as _;
        let pool: &$crate::location::nfs::rpc::Pool = $pool;
        let mut retry = $crate::location::nfs::rpc::Retry::new($op, pool.addr(), $crate::location::nfs::rpc::OUTAGE);
        // An inner block, so `?` on the retry accounting ends this call, not the caller.
        async {
            loop {
                let mut held = match pool.connection().await {
                    Ok(h) => h,
                    Err(e) => {
                        retry.failed(&format!("cannot connect: {e}")).await?;
                        continue;
                    }
                };
                retry.sent();
                let outcome = {
                    let $c = held.client();
                    tokio::time::timeout(pool.timeout, std::panic::AssertUnwindSafe($call).catch_unwind()).await
                };
                match $crate::location::nfs::rpc::settle(outcome) {
                    $crate::location::nfs::rpc::Attempt::Done(v) => break Ok::<_, $crate::location::nfs::rpc::Fail>(v),
                    $crate::location::nfs::rpc::Attempt::Status(nfs3_client::nfs3_types::nfs3::nfsstat3::NFS3ERR_JUKEBOX) => {
                        retry.failed("the server is busy (NFS3ERR_JUKEBOX)").await?
                    }
                    $crate::location::nfs::rpc::Attempt::Status(status) => {
                        break Err($crate::location::nfs::rpc::Fail::Status { status, resent: retry.resent() })
                    }
                    $crate::location::nfs::rpc::Attempt::Refused(why) => break Err($crate::location::nfs::rpc::Fail::Refused(why)),
                    $crate::location::nfs::rpc::Attempt::Transport(why) => {
                        held.broken();
                        drop(held);
                        retry.failed(&why).await?;
                    }
                }
            }
        }
        .await
    }};
}
pub(crate) use rpc;

impl Pool {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}
