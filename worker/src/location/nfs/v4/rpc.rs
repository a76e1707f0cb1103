//! ONC RPC (RFC 5531) over TCP with record marking and AUTH_SYS. One [`Conn`] carries many
//! requests at once: a writer task sends whole records (so a caller that gives up never leaves
//! half a record on the wire), a reader task reassembles fragments and hands each reply to the
//! caller waiting for its xid. A closed or broken socket fails every waiting call and marks the
//! connection dead; nothing spins.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::xdr::{Dec, Enc};

/// The largest reply record accepted (a READ of a few MiB plus headers fits easily).
pub const MAX_RECORD: usize = 64 << 20;

/// An AUTH_SYS credential (RFC 5531 appendix A).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthSys {
    pub machine: Vec<u8>,
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups; at most 16 are sent.
    pub gids: Vec<u32>,
}

impl AuthSys {
    /// This machine's host name (from /proc), with `uid`, `gid` and `gid` as the only
    /// supplementary group.
    pub fn new(uid: u32, gid: u32) -> AuthSys {
        AuthSys { machine: hostname().into_bytes(), uid, gid, gids: vec![gid] }
    }

    fn encode(&self, e: &mut Enc) {
        let mut body = Enc::new();
        body.u32(std::process::id());
        body.opaque(&self.machine[..self.machine.len().min(255)]);
        body.u32(self.uid).u32(self.gid);
        let gids = &self.gids[..self.gids.len().min(16)];
        body.u32(gids.len() as u32);
        for g in gids {
            body.u32(*g);
        }
        e.u32(1).opaque(&body.buf);
    }
}

/// This machine's host name, or "localhost".
pub fn hostname() -> String {
    let h = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let h = h.trim();
    if h.is_empty() {
        "localhost".into()
    } else {
        h.into()
    }
}

/// Why one RPC failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RpcError {
    /// Sending again (on a new connection) may help: a timeout, a closed or broken
    /// connection, a garbled record.
    Transport(String),
    /// The server refused the call (credentials, program, version).
    Refused(String),
    /// The reply is malformed.
    Protocol(String),
}

impl std::fmt::Display for RpcError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RpcError::Transport(s) | RpcError::Refused(s) | RpcError::Protocol(s) => f.write_str(s),
        }
    }
}

type Waiters = Arc<Mutex<Option<HashMap<u32, oneshot::Sender<Vec<u8>>>>>>;

/// One TCP connection with any number of calls in flight.
pub struct Conn {
    addr: SocketAddr,
    cred: AuthSys,
    xid: AtomicU32,
    /// `None` once the connection is dead: no new call may wait on it.
    waiters: Waiters,
    dead: Arc<AtomicBool>,
    tx: mpsc::UnboundedSender<Vec<u8>>,
    reader: JoinHandle<()>,
    writer: JoinHandle<()>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.reader.abort();
        self.writer.abort();
    }
}

fn random_u32() -> u32 {
    let mut b = [0u8; 4];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        use std::io::Read;
        if f.read_exact(&mut b).is_ok() {
            return u32::from_ne_bytes(b);
        }
    }
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u32).unwrap_or(0);
    t ^ std::process::id().rotate_left(16)
}

fn kill(waiters: &Waiters, dead: &AtomicBool) {
    dead.store(true, Ordering::SeqCst);
    // Dropping the senders wakes every waiting call with an error.
    waiters.lock().unwrap_or_else(|p| p.into_inner()).take();
}

/// Reads one record (all its fragments); `Ok(None)` at a clean end of stream.
async fn read_record(r: &mut tokio::net::tcp::OwnedReadHalf) -> Result<Option<Vec<u8>>, String> {
    let mut record = Vec::new();
    loop {
        let mut h = [0u8; 4];
        match r.read_exact(&mut h).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && record.is_empty() => return Ok(None),
            Err(e) => return Err(format!("reading a reply: {e}")),
        }
        let h = u32::from_be_bytes(h);
        let len = (h & 0x7fff_ffff) as usize;
        if record.len() + len > MAX_RECORD {
            return Err(format!("the server sent a record of more than {MAX_RECORD} bytes"));
        }
        let start = record.len();
        record.resize(start + len, 0);
        r.read_exact(&mut record[start..]).await.map_err(|e| format!("reading a reply: {e}"))?;
        if h & 0x8000_0000 != 0 {
            return Ok(Some(record));
        }
    }
}

impl Conn {
    /// Connects to `addr` (with a deadline) and starts the reader and writer tasks.
    pub async fn connect(addr: SocketAddr, cred: AuthSys, timeout: Duration) -> Result<Conn, RpcError> {
        let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| RpcError::Transport(format!("connecting to {addr} timed out")))?
            .map_err(|e| RpcError::Transport(format!("cannot connect to {addr}: {e}")))?;
        let _ = stream.set_nodelay(true);
        let (mut r, mut w) = stream.into_split();
        let waiters: Waiters = Arc::new(Mutex::new(Some(HashMap::new())));
        let dead = Arc::new(AtomicBool::new(false));
        let (tx, mut rx) = mpsc::unbounded_channel::<Vec<u8>>();
        let writer = {
            let (waiters, dead) = (waiters.clone(), dead.clone());
            tokio::spawn(async move {
                while let Some(rec) = rx.recv().await {
                    if w.write_all(&rec).await.is_err() {
                        break;
                    }
                }
                kill(&waiters, &dead);
            })
        };
        let reader = {
            let (waiters, dead) = (waiters.clone(), dead.clone());
            tokio::spawn(async move {
                while let Ok(Some(rec)) = read_record(&mut r).await {
                    if rec.len() < 8 {
                        break;
                    }
                    let xid = u32::from_be_bytes([rec[0], rec[1], rec[2], rec[3]]);
                    let waiter = waiters.lock().unwrap_or_else(|p| p.into_inner()).as_mut().and_then(|m| m.remove(&xid));
                    // A reply nobody waits for (the caller gave up) or a call from the server
                    // (there is no back channel) is dropped.
                    if let Some(w) = waiter {
                        let _ = w.send(rec);
                    }
                }
                kill(&waiters, &dead);
            })
        };
        Ok(Conn { addr, cred, xid: AtomicU32::new(random_u32()), waiters, dead, tx, reader, writer })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Whether the connection has failed (it should be replaced).
    pub fn is_dead(&self) -> bool {
        self.dead.load(Ordering::SeqCst)
    }

    /// Marks the connection as failed (after a timeout, say): calls still waiting on it fail.
    pub fn kill(&self) {
        kill(&self.waiters, &self.dead);
    }

    /// One call of `prog`/`vers`/`proc` with XDR-encoded `args`; the reply's results (after
    /// the RPC header), or an error. Gives up after `timeout`.
    pub async fn call(&self, prog: u32, vers: u32, proc_: u32, args: &[u8], timeout: Duration) -> Result<Vec<u8>, RpcError> {
        let xid = self.xid.fetch_add(1, Ordering::Relaxed);
        let mut e = Enc { buf: Vec::with_capacity(args.len() + 128) };
        e.u32(0); // the record mark, filled in below
        e.u32(xid).u32(0).u32(2).u32(prog).u32(vers).u32(proc_);
        self.cred.encode(&mut e);
        e.u32(0).u32(0); // AUTH_NONE verifier
        e.buf.extend_from_slice(args);
        let len = (e.buf.len() - 4) as u32;
        e.buf[..4].copy_from_slice(&(0x8000_0000 | len).to_be_bytes());

        let (tx, rx) = oneshot::channel();
        {
            let mut w = self.waiters.lock().unwrap_or_else(|p| p.into_inner());
            match w.as_mut() {
                Some(m) => m.insert(xid, tx),
                None => return Err(RpcError::Transport(format!("the connection to {} is closed", self.addr))),
            };
        }
        if self.tx.send(e.buf).is_err() {
            self.forget(xid);
            return Err(RpcError::Transport(format!("the connection to {} is closed", self.addr)));
        }
        let rec = match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(rec)) => rec,
            Ok(Err(_)) => return Err(RpcError::Transport(format!("the connection to {} broke", self.addr))),
            Err(_) => {
                self.forget(xid);
                return Err(RpcError::Transport(format!("no reply from {} within {} s", self.addr, timeout.as_secs_f32())));
            }
        };
        parse_reply(&rec).map(|off| rec[off..].to_vec())
    }

    fn forget(&self, xid: u32) {
        if let Some(m) = self.waiters.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
            m.remove(&xid);
        }
    }
}

/// Checks an RPC reply header; the offset of the results.
pub fn parse_reply(rec: &[u8]) -> Result<usize, RpcError> {
    let p = |e: super::error::Error| RpcError::Protocol(e.to_string());
    let mut d = Dec::new(rec);
    let _xid = d.u32("the xid").map_err(p)?;
    if d.u32("the message type").map_err(p)? != 1 {
        return Err(RpcError::Protocol("the server sent a call where a reply was expected".into()));
    }
    match d.u32("the reply status").map_err(p)? {
        0 => {
            let _flavor = d.u32("the verifier").map_err(p)?;
            d.opaque(400, "the verifier").map_err(p)?;
            match d.u32("the accept status").map_err(p)? {
                0 => Ok(d.position()),
                1 => Err(RpcError::Refused("the server does not serve NFS on this port (PROG_UNAVAIL)".into())),
                2 => {
                    let lo = d.u32("the version range").map_err(p)?;
                    let hi = d.u32("the version range").map_err(p)?;
                    Err(RpcError::Refused(format!("the server speaks NFS versions {lo} to {hi} only, not 4 (PROG_MISMATCH)")))
                }
                3 => Err(RpcError::Refused("the server does not know the COMPOUND procedure (PROC_UNAVAIL)".into())),
                4 => Err(RpcError::Protocol("the server could not decode the request (GARBAGE_ARGS)".into())),
                5 => Err(RpcError::Transport("the server had an internal error (SYSTEM_ERR)".into())),
                s => Err(RpcError::Protocol(format!("unknown RPC accept status {s}"))),
            }
        }
        1 => match d.u32("the reject status").map_err(p)? {
            0 => Err(RpcError::Refused("the server does not speak RPC version 2 (RPC_MISMATCH)".into())),
            1 => {
                let why = d.u32("the auth status").unwrap_or(0);
                Err(RpcError::Refused(format!("the server refused the AUTH_SYS credentials (auth_stat {why})")))
            }
            s => Err(RpcError::Protocol(format!("unknown RPC reject status {s}"))),
        },
        s => Err(RpcError::Protocol(format!("unknown RPC reply status {s}"))),
    }
}
