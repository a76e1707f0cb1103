//! The NFSv4.1 client: session setup, the slot table, retries and recovery, the lease
//! renewal task, and one async method per operation.
//!
//! Resilience is the contract of ferry's NFSv3 `rpc!`: a call that times out or whose
//! connection breaks is sent again, on a fresh connection, with backoff, until the server has
//! been unreachable for the outage window. A resend reuses the slot and sequence id, so the
//! server answers it from its reply cache (exactly once). NFS4ERR_DELAY and NFS4ERR_GRACE are
//! waited out; a lost session is re-created, a lost client id re-established.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::super::retry::Retry;
use super::attr::{self, Ace, Attr, Bitmap, Raw, SetAttrs};
use super::error::{nfsstat4::*, Error, Result};
use super::proto::{self, ChannelAttrs, Claim, CreateKind, Fh, OpenHow, Ops, Reply, SequenceArgs, Stable, Stateid};
use super::rpc::{AuthSys, Conn, RpcError};

/// How many open-owners OPENs take turns with (see [`Client::open_owner`]).
const OPEN_OWNERS: u64 = 16;

/// How to reach and use one server.
#[derive(Clone, Debug)]
pub struct Config {
    pub addr: SocketAddr,
    /// The export's path in the server's namespace, as components (`["export"]`).
    pub export: Vec<Vec<u8>>,
    pub cred: AuthSys,
    /// TCP connections, all bound to the one session.
    pub nconnect: usize,
    /// Slots asked for in the fore channel: requests in flight at once.
    pub slots: u32,
    /// How long one request may take before it is sent again.
    pub timeout: Duration,
    /// How long the server may stay unreachable before calls fail.
    pub outage: Duration,
}

impl Config {
    /// Defaults: root credentials, 2 connections, 32 slots, 30 s per request, a 120 s outage window.
    pub fn new(addr: SocketAddr, export: &str) -> Config {
        Config {
            addr,
            export: export.split('/').filter(|c| !c.is_empty()).map(|c| c.as_bytes().to_vec()).collect(),
            cred: AuthSys::new(0, 0),
            nconnect: 2,
            slots: 32,
            timeout: Duration::from_secs(30),
            outage: Duration::from_secs(120),
        }
    }
}

/// An open file: its handle and open stateid.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Open {
    pub fh: Fh,
    pub stateid: Stateid,
}

/// One directory entry of [`Client::readdir`]. `fh` and `attr` are `None` when the server
/// could not get them (rdattr_error).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirEntry {
    pub name: Vec<u8>,
    pub cookie: u64,
    pub fh: Option<Fh>,
    pub attr: Option<Attr>,
}

/// One READDIR reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReaddirPage {
    pub entries: Vec<DirEntry>,
    pub verf: [u8; 8],
    pub eof: bool,
}

/// A special file for [`Client::mknod`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeKind {
    Fifo,
    Socket,
    Block,
    Char,
}

/// The slot table of a session: a semaphore of free slots and each slot's next sequence id.
struct Session {
    id: [u8; 16],
    clientid: u64,
    fore: ChannelAttrs,
    free: Arc<Semaphore>,
    /// (next seqid, busy) per slot.
    slots: Mutex<Vec<(u32, bool)>>,
}

/// A slot held by one call.
struct Slot {
    session: Arc<Session>,
    id: u32,
    permit: Option<OwnedSemaphorePermit>,
    /// A request went out on the slot and no reply to it was processed yet.
    pending: bool,
}

impl Slot {
    fn seqid(&self) -> u32 {
        self.session.slots.lock().unwrap_or_else(|p| p.into_inner())[self.id as usize].0
    }
    /// The server processed this seqid: the next request on the slot uses the next one.
    fn advance(&mut self) {
        let mut s = self.session.slots.lock().unwrap_or_else(|p| p.into_inner());
        let e = &mut s[self.id as usize].0;
        *e = e.wrapping_add(1);
        self.pending = false;
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if self.pending {
            // The call was abandoned (its future dropped, or an unparseable reply) after a
            // request went out: whether the server ran that seqid is unknown, and the next
            // request on the slot could be answered from the cache with another request's
            // reply. The slot stays out of use until the session is replaced.
            if let Some(p) = self.permit.take() {
                p.forget();
            }
            return;
        }
        self.session.slots.lock().unwrap_or_else(|p| p.into_inner())[self.id as usize].1 = false;
    }
}

impl Session {
    fn new(id: [u8; 16], clientid: u64, fore: ChannelAttrs) -> Session {
        let n = fore.maxrequests.clamp(1, 1024) as usize;
        Session { id, clientid, fore, free: Arc::new(Semaphore::new(n)), slots: Mutex::new(vec![(1, false); n]) }
    }
    async fn acquire(self: &Arc<Session>) -> Slot {
        let permit = self.free.clone().acquire_owned().await.expect("the semaphore is never closed");
        let mut s = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        let id = s.iter().position(|e| !e.1).expect("a permit means a free slot");
        s[id].1 = true;
        Slot { session: self.clone(), id: id as u32, permit: Some(permit), pending: false }
    }
    fn highest_slot(&self) -> u32 {
        self.slots.lock().unwrap_or_else(|p| p.into_inner()).len() as u32 - 1
    }
}

/// The connections, the client id and the session.
struct Core {
    cfg: Config,
    conns: Vec<tokio::sync::Mutex<Option<Arc<Conn>>>>,
    next: AtomicUsize,
    /// co_ownerid and co_verifier of EXCHANGE_ID.
    owner: Vec<u8>,
    verifier: [u8; 8],
    /// (client id, the CREATE_SESSION sequence id to use next).
    client: Mutex<(u64, u32)>,
    session: Mutex<Option<Arc<Session>>>,
    recovering: tokio::sync::Mutex<()>,
    /// Counters, for tests and diagnostics.
    stats: Stats,
}

/// What the client had to do to keep going.
#[derive(Debug, Default)]
pub struct Stats {
    /// Sessions created (the first included).
    pub sessions: AtomicU64,
    /// EXCHANGE_IDs sent successfully (the first included).
    pub client_ids: AtomicU64,
    /// BIND_CONN_TO_SESSION sent because the server did not bind a connection itself.
    pub binds: AtomicU64,
    /// Requests sent again after a timeout or a broken connection.
    pub resends: AtomicU64,
}

type Decode<'a, T> = &'a (dyn Fn(&mut Reply) -> Result<T> + Sync);

impl Core {
    async fn conn(&self) -> std::result::Result<Arc<Conn>, RpcError> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.conns.len();
        let mut slot = self.conns[i].lock().await;
        if let Some(c) = slot.as_ref().filter(|c| !c.is_dead()) {
            return Ok(c.clone());
        }
        let c = Arc::new(Conn::connect(self.cfg.addr, self.cfg.cred.clone(), self.cfg.timeout.min(Duration::from_secs(10))).await?);
        *slot = Some(c.clone());
        Ok(c)
    }

    fn session(&self) -> Result<Arc<Session>> {
        self.session.lock().unwrap_or_else(|p| p.into_inner()).clone().ok_or_else(|| Error::Protocol("no session".into()))
    }

    /// Sends `body` on `conn`; a transport failure kills the connection.
    async fn send(&self, conn: &Conn, body: &[u8]) -> std::result::Result<Vec<u8>, Result<String>> {
        match conn.call(proto::NFS_PROGRAM, proto::NFS_V4, proto::PROC_COMPOUND, body, self.cfg.timeout).await {
            Ok(r) => Ok(r),
            Err(RpcError::Transport(why)) => {
                conn.kill();
                Err(Ok(why))
            }
            Err(RpcError::Refused(why)) => Err(Err(Error::Refused(why))),
            Err(RpcError::Protocol(why)) => Err(Err(Error::Protocol(why))),
        }
    }

    /// A compound outside the session (EXCHANGE_ID, CREATE_SESSION, ...), or on a given
    /// slot of a session not yet in use: resent as it is on transport failures, waited out on
    /// DELAY.
    async fn plain<T>(&self, name: &'static str, seq: Option<&SequenceArgs>, ops: &Ops, decode: Decode<'_, T>) -> Result<T> {
        let mut retry = Retry::new(name, self.cfg.addr, self.cfg.outage);
        let body = proto::compound(seq, ops);
        loop {
            let Some((_, rep)) = self.attempt(&mut retry, &body, None).await? else {
                continue;
            };
            let mut r = Reply::parse(&rep)?;
            if r.status == NFS4ERR_MINOR_VERS_MISMATCH {
                return Err(Error::Refused("the server does not speak NFSv4.1 (NFS4ERR_MINOR_VERS_MISMATCH)".into()));
            }
            if seq.is_some() {
                r.sequence()?;
            }
            match decode(&mut r) {
                Err(Error::Status { code: NFS4ERR_DELAY, .. }) => retry.failed("the server is busy (NFS4ERR_DELAY)").await?,
                Err(Error::Status { code, op, .. }) => return Err(Error::Status { code, op, resent: retry.resent() }),
                other => return other,
            }
        }
    }

    async fn exchange_id(&self) -> Result<()> {
        let ops = proto::exchange_id(self.verifier, &self.owner);
        let (clientid, seq, _flags) = self.plain("EXCHANGE_ID", None, &ops, &|r| r.exchange_id()).await?;
        *self.client.lock().unwrap_or_else(|p| p.into_inner()) = (clientid, seq);
        self.stats.client_ids.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// CREATE_SESSION (and RECLAIM_COMPLETE after a new client id); installs the session.
    async fn create_session(&self, new_client: bool) -> Result<()> {
        let (clientid, seq) = *self.client.lock().unwrap_or_else(|p| p.into_inner());
        let fore = ChannelAttrs {
            maxrequestsize: 4 << 20,
            maxresponsesize: 4 << 20,
            maxresponsesize_cached: 64 << 10,
            maxoperations: 16,
            maxrequests: self.cfg.slots.max(1),
        };
        let ops = proto::create_session(clientid, seq, &fore);
        let (id, fore) = self.plain("CREATE_SESSION", None, &ops, &|r| r.create_session()).await?;
        self.client.lock().unwrap_or_else(|p| p.into_inner()).1 = seq.wrapping_add(1);
        let session = Arc::new(Session::new(id, clientid, fore));
        if new_client {
            let mut slot = session.acquire().await;
            let seq = SequenceArgs { session: id, seqid: slot.seqid(), slot: slot.id, highest_slot: session.highest_slot(), cache_this: false };
            let mut ops = Ops::new();
            ops.reclaim_complete();
            match self.plain("RECLAIM_COMPLETE", Some(&seq), &ops, &|r| r.done(proto::OP_RECLAIM_COMPLETE, "RECLAIM_COMPLETE")).await {
                Ok(()) | Err(Error::Status { code: NFS4ERR_COMPLETE_ALREADY, .. }) => slot.advance(),
                Err(e) => return Err(e),
            }
        }
        *self.session.lock().unwrap_or_else(|p| p.into_inner()) = Some(session);
        self.stats.sessions.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Replaces the session `bad` (unless another call already did), from EXCHANGE_ID on if
    /// `new_client`.
    async fn recover(&self, bad: &Arc<Session>, mut new_client: bool) -> Result<()> {
        let _one = self.recovering.lock().await;
        if !self.session()?.id.eq(&bad.id) {
            return Ok(());
        }
        loop {
            if new_client {
                self.exchange_id().await?;
            }
            match self.create_session(new_client).await {
                Err(Error::Status { code: NFS4ERR_STALE_CLIENTID | NFS4ERR_EXPIRED | NFS4ERR_SEQ_MISORDERED, .. }) if !new_client => new_client = true,
                other => return other,
            }
        }
    }

    /// One attempt at `body` on a pool connection: the connection and the reply, or `None`
    /// once a transport failure (no connection, a timeout, a broken one) has been waited out
    /// and the caller should send again. Fails when the outage window is used up. `sending`
    /// is set once the request is about to go out (a slot with a request in flight).
    async fn attempt(&self, retry: &mut Retry, body: &[u8], sending: Option<&mut bool>) -> Result<Option<(Arc<Conn>, Vec<u8>)>> {
        let conn = match self.conn().await {
            Ok(c) => c,
            Err(e) => {
                retry.failed(&e.to_string()).await?;
                return Ok(None);
            }
        };
        retry.sent();
        if let Some(flag) = sending {
            *flag = true;
        }
        match self.send(&conn, body).await {
            Ok(rep) => Ok(Some((conn, rep))),
            Err(Ok(why)) => {
                self.stats.resends.fetch_add(1, Ordering::Relaxed);
                retry.failed(&why).await?;
                Ok(None)
            }
            Err(Err(e)) => Err(e),
        }
    }

    /// BIND_CONN_TO_SESSION on `conn` (if the server does not bind connections itself).
    async fn bind(&self, conn: &Conn, session: &Session) -> Result<()> {
        self.stats.binds.fetch_add(1, Ordering::Relaxed);
        let body = proto::compound(None, &proto::bind_conn_to_session(&session.id));
        let rep = match self.send(conn, &body).await {
            Ok(r) => r,
            Err(Ok(why)) => return Err(Error::Unreachable(why)),
            Err(Err(e)) => return Err(e),
        };
        Reply::parse(&rep)?.done(proto::OP_BIND_CONN_TO_SESSION, "BIND_CONN_TO_SESSION")
    }

    /// Runs `ops` after a SEQUENCE, with the retry policy of the module documentation.
    /// `cache_this` asks the server to keep the reply for a resend (non-idempotent
    /// operations); `idempotent` calls may simply be run again on a fresh slot.
    async fn run<T>(&self, name: &'static str, ops: &Ops, cache_this: bool, decode: Decode<'_, T>) -> Result<T> {
        let mut retry = Retry::new(name, self.cfg.addr, self.cfg.outage);
        'fresh: loop {
            let session = self.session()?;
            let mut slot = session.acquire().await;
            loop {
                let seq = SequenceArgs { session: session.id, seqid: slot.seqid(), slot: slot.id, highest_slot: session.highest_slot(), cache_this };
                let body = proto::compound(Some(&seq), ops);
                let Some((conn, rep)) = self.attempt(&mut retry, &body, Some(&mut slot.pending)).await? else {
                    continue;
                };
                let mut r = Reply::parse(&rep)?;
                match r.sequence() {
                    Ok(_) => slot.advance(),
                    Err(Error::Status { code, .. }) => match code {
                        // The first send is still being worked on: ask again later, same seqid.
                        NFS4ERR_DELAY => {
                            retry.failed("the server is busy (NFS4ERR_DELAY)").await?;
                            continue;
                        }
                        NFS4ERR_CONN_NOT_BOUND_TO_SESSION => {
                            match self.bind(&conn, &session).await {
                                Ok(()) => {}
                                Err(Error::Unreachable(why)) => retry.failed(&why).await?,
                                Err(e) => return Err(e),
                            }
                            continue;
                        }
                        NFS4ERR_BADSESSION
                        | NFS4ERR_DEADSESSION
                        | NFS4ERR_SEQ_MISORDERED
                        | NFS4ERR_BADSLOT
                        | NFS4ERR_BAD_HIGH_SLOT
                        | NFS4ERR_SEQ_FALSE_RETRY => {
                            drop(slot);
                            self.recover(&session, false).await?;
                            continue 'fresh;
                        }
                        NFS4ERR_STALE_CLIENTID | NFS4ERR_EXPIRED => {
                            drop(slot);
                            self.recover(&session, true).await?;
                            continue 'fresh;
                        }
                        NFS4ERR_RETRY_UNCACHED_REP if !cache_this => {
                            // The server kept no reply for an idempotent request: run it again.
                            slot.advance();
                            continue 'fresh;
                        }
                        code => {
                            // A failed SEQUENCE leaves the server's slot as it was.
                            slot.pending = false;
                            return Err(Error::Status { code, op: "SEQUENCE", resent: retry.resent() });
                        }
                    },
                    Err(e) => return Err(e),
                }
                drop(slot);
                return match decode(&mut r) {
                    Err(Error::Status { code: NFS4ERR_DELAY, .. }) => {
                        retry.failed("the server is busy (NFS4ERR_DELAY)").await?;
                        continue 'fresh;
                    }
                    // ganesha answers a replayed request it kept no reply for this way (in
                    // the result after SEQUENCE, which succeeded).
                    Err(Error::Status { code: NFS4ERR_RETRY_UNCACHED_REP, .. }) if !cache_this => continue 'fresh,
                    Err(Error::Status { code: NFS4ERR_GRACE, .. }) => {
                        retry.failed("the server is in its grace period (NFS4ERR_GRACE)").await?;
                        continue 'fresh;
                    }
                    Err(Error::Status { code, op, .. }) => Err(Error::Status { code, op, resent: retry.resent() }),
                    other => other,
                };
            }
        }
    }
}

struct Inner {
    core: Core,
    root: Fh,
    supported: Bitmap,
    lease: Duration,
    limits: (u32, u32),
    open_owners: AtomicU64,
}

/// An NFSv4.1 client of one export. Cheap to clone; the session and connections are shared,
/// and the lease is renewed in the background until the last clone is dropped.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

fn random_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    let ok = std::fs::File::open("/dev/urandom").and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b)).is_ok();
    if !ok {
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        for (i, x) in b.iter_mut().enumerate() {
            *x = (t >> (8 * (i % 16))) as u8 ^ (std::process::id() >> (i % 4)) as u8;
        }
    }
    b
}

impl Client {
    /// Connects: EXCHANGE_ID, CREATE_SESSION, RECLAIM_COMPLETE, then looks up the export and
    /// reads its supported attributes, lease time and I/O sizes. Starts the lease renewal.
    pub async fn connect(cfg: Config) -> Result<Client> {
        let mut owner = format!("ferry:{}:", super::rpc::hostname()).into_bytes();
        owner.extend(random_bytes::<8>().iter().map(|b| format!("{b:02x}")).collect::<String>().bytes());
        let core = Core {
            conns: (0..cfg.nconnect.max(1)).map(|_| tokio::sync::Mutex::new(None)).collect(),
            cfg,
            next: AtomicUsize::new(0),
            owner,
            verifier: random_bytes(),
            client: Mutex::new((0, 0)),
            session: Mutex::new(None),
            recovering: tokio::sync::Mutex::new(()),
            stats: Stats::default(),
        };
        core.exchange_id().await?;
        core.create_session(true).await?;
        let mut ops = Ops::new();
        ops.putrootfh();
        for c in &core.cfg.export {
            ops.lookup(c);
        }
        ops.getfh().getattr(&Bitmap::of(&[attr::SUPPORTED_ATTRS, attr::LEASE_TIME, attr::MAXREAD, attr::MAXWRITE]));
        let n = core.cfg.export.len();
        let (root, raw) = core
            .run("LOOKUP", &ops, false, &|r| {
                r.done(proto::OP_PUTROOTFH, "PUTROOTFH")?;
                for _ in 0..n {
                    r.done(proto::OP_LOOKUP, "LOOKUP")?;
                }
                Ok((r.getfh()?, r.getattr()?))
            })
            .await?;
        let session = core.session()?;
        let cap = |v: Option<u64>, chan: u32| -> u32 {
            let chan = chan.saturating_sub(1024) & !4095;
            (v.unwrap_or(1 << 20).min(u32::MAX as u64) as u32).min(chan).max(4096)
        };
        let limits = (cap(raw.maxread, session.fore.maxresponsesize), cap(raw.maxwrite, session.fore.maxrequestsize));
        let inner = Arc::new(Inner {
            core,
            root,
            supported: raw.supported.unwrap_or_else(attr::wanted),
            lease: Duration::from_secs(raw.lease_time.unwrap_or(90).clamp(3, 3600) as u64),
            limits,
            open_owners: AtomicU64::new(0),
        });
        let weak = Arc::downgrade(&inner);
        tokio::spawn(renew(weak, inner.lease / 3));
        Ok(Client { inner })
    }

    /// The export's file handle.
    pub fn root(&self) -> Fh {
        self.inner.root.clone()
    }

    /// The attributes the server supports (FATTR4_SUPPORTED_ATTRS of the export).
    pub fn supported(&self) -> &Bitmap {
        &self.inner.supported
    }

    /// The largest READ and WRITE (FATTR4_MAXREAD/MAXWRITE, capped by the session's sizes).
    pub fn limits(&self) -> (u32, u32) {
        self.inner.limits
    }

    /// The lease time the server gave.
    pub fn lease(&self) -> Duration {
        self.inner.lease
    }

    fn wanted(&self) -> Bitmap {
        attr::wanted().and(&self.inner.supported)
    }

    async fn run<T>(&self, name: &'static str, ops: &Ops, cache_this: bool, decode: Decode<'_, T>) -> Result<T> {
        self.inner.core.run(name, ops, cache_this, decode).await
    }

    /// Looks `name` up in `dir`; `None` if it does not exist.
    pub async fn lookup(&self, dir: &Fh, name: &[u8]) -> Result<Option<(Fh, Attr)>> {
        let mut ops = Ops::new();
        ops.putfh(dir).lookup(name).getfh().getattr(&self.wanted());
        let r = self
            .run("LOOKUP", &ops, false, &|r| {
                r.done(proto::OP_PUTFH, "PUTFH")?;
                r.done(proto::OP_LOOKUP, "LOOKUP")?;
                Ok((r.getfh()?, r.getattr()?.attr()?))
            })
            .await;
        match r {
            Ok(v) => Ok(Some(v)),
            Err(e) if e.is(NFS4ERR_NOENT) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Looks a path up from the export's root (an empty path is the root).
    pub async fn lookup_path(&self, path: &[&[u8]]) -> Result<Option<(Fh, Attr)>> {
        let mut fh = self.inner.root.clone();
        if path.is_empty() {
            let a = self.getattr(&fh).await?;
            return Ok(Some((fh, a)));
        }
        let mut last = None;
        for chunk in path.chunks(8) {
            let mut ops = Ops::new();
            ops.putfh(&fh);
            for c in chunk {
                ops.lookup(c);
            }
            ops.getfh().getattr(&self.wanted());
            let n = chunk.len();
            let r = self
                .run("LOOKUP", &ops, false, &|r| {
                    r.done(proto::OP_PUTFH, "PUTFH")?;
                    for _ in 0..n {
                        r.done(proto::OP_LOOKUP, "LOOKUP")?;
                    }
                    Ok((r.getfh()?, r.getattr()?.attr()?))
                })
                .await;
            match r {
                Ok((f, a)) => {
                    fh = f.clone();
                    last = Some((f, a));
                }
                Err(e) if e.is(NFS4ERR_NOENT) => return Ok(None),
                Err(e) => return Err(e),
            }
        }
        Ok(last)
    }

    pub async fn getattr(&self, fh: &Fh) -> Result<Attr> {
        let mut ops = Ops::new();
        ops.putfh(fh).getattr(&self.wanted());
        self.run("GETATTR", &ops, false, &|r| {
            r.done(proto::OP_PUTFH, "PUTFH")?;
            r.getattr()?.attr()
        })
        .await
    }

    /// One page of a directory, with attributes and file handles. Start with cookie 0 and a
    /// zero verifier; go on with the last entry's cookie and the page's verifier until `eof`.
    pub async fn readdir(&self, dir: &Fh, cookie: u64, verf: [u8; 8], maxcount: u32) -> Result<ReaddirPage> {
        let mut bits = self.wanted();
        bits.set(attr::RDATTR_ERROR);
        if self.inner.supported.has(attr::FILEHANDLE) {
            bits.set(attr::FILEHANDLE);
        }
        let mut ops = Ops::new();
        ops.putfh(dir).readdir(cookie, verf, maxcount, maxcount, &bits);
        let (verf, raw, eof) = self
            .run("READDIR", &ops, false, &|r| {
                r.done(proto::OP_PUTFH, "PUTFH")?;
                r.readdir()
            })
            .await?;
        let entries = raw
            .into_iter()
            .map(|(cookie, name, raw)| {
                let failed = raw.rdattr_error.is_some_and(|e| e != 0);
                DirEntry { name, cookie, fh: raw.filehandle.clone().map(Fh), attr: if failed { None } else { raw.attr().ok() } }
            })
            .collect();
        Ok(ReaddirPage { entries, verf, eof })
    }

    /// The open-owner of the next OPEN: one of a few, in turn. NFSv4.1 needs no per-owner
    /// sequencing (the session's slots order requests), and a server keeps the state of every
    /// owner it saw until the lease ends: an owner per OPEN made ganesha hold one for each
    /// of thousands of small files. A few spread the owners' locks.
    fn open_owner(&self) -> Vec<u8> {
        format!("ferry-open-{}", self.inner.open_owners.fetch_add(1, Ordering::Relaxed) % OPEN_OWNERS).into_bytes()
    }

    async fn open(&self, dir: &Fh, how: OpenHow, access: u32, mode: u32, claim: Claim<'_>) -> Result<Open> {
        let clientid = self.inner.core.session()?.clientid;
        let mut ops = Ops::new();
        ops.putfh(dir).open(clientid, &self.open_owner(), access | proto::WANT_NO_DELEG, how, mode, claim).getfh();
        let (stateid, fh) = self
            .run("OPEN", &ops, true, &|r| {
                r.done(proto::OP_PUTFH, "PUTFH")?;
                Ok((r.open()?, r.getfh()?))
            })
            .await?;
        Ok(Open { fh, stateid })
    }

    /// Creates (`guarded`: only if it does not exist, else EXIST) and opens a regular file
    /// for reading and writing.
    pub async fn create_file(&self, dir: &Fh, name: &[u8], mode: u32, guarded: bool) -> Result<Open> {
        let how = if guarded { OpenHow::Guarded } else { OpenHow::Unchecked };
        self.open(dir, how, proto::SHARE_ACCESS_BOTH, mode, Claim::Null(name)).await
    }

    /// Opens an existing file for reading.
    pub async fn open_read(&self, dir: &Fh, name: &[u8]) -> Result<Open> {
        self.open(dir, OpenHow::NoCreate, proto::SHARE_ACCESS_READ, 0, Claim::Null(name)).await
    }

    /// Opens an existing file by its handle (CLAIM_FH), for reading or for both.
    pub async fn open_fh(&self, fh: &Fh, write: bool) -> Result<Open> {
        let access = if write { proto::SHARE_ACCESS_BOTH } else { proto::SHARE_ACCESS_READ };
        self.open(fh, OpenHow::NoCreate, access, 0, Claim::Fh).await
    }

    pub async fn close(&self, open: &Open) -> Result<()> {
        let mut ops = Ops::new();
        ops.putfh(&open.fh).close(&open.stateid);
        self.run("CLOSE", &ops, true, &|r| {
            r.done(proto::OP_PUTFH, "PUTFH")?;
            r.close().map(|_| ())
        })
        .await
    }

    /// Reads up to `count` bytes; the data and whether it reached the end of the file.
    pub async fn read(&self, fh: &Fh, stateid: &Stateid, offset: u64, count: u32) -> Result<(Vec<u8>, bool)> {
        let mut ops = Ops::new();
        ops.putfh(fh).read(stateid, offset, count);
        self.run("READ", &ops, false, &|r| {
            r.done(proto::OP_PUTFH, "PUTFH")?;
            r.read(count as usize)
        })
        .await
    }

    /// Writes `data` at `offset`: the count written, how stable it is, the write verifier.
    pub async fn write(&self, fh: &Fh, stateid: &Stateid, offset: u64, data: &[u8], stable: Stable) -> Result<(u32, Stable, [u8; 8])> {
        let mut ops = Ops::new();
        ops.putfh(fh).write(stateid, offset, stable, data);
        self.run("WRITE", &ops, false, &|r| {
            r.done(proto::OP_PUTFH, "PUTFH")?;
            r.write()
        })
        .await
    }

    /// Commits the whole file; the write verifier (compare it with the WRITEs').
    pub async fn commit(&self, fh: &Fh) -> Result<[u8; 8]> {
        let mut ops = Ops::new();
        ops.putfh(fh).commit(0, 0);
        self.run("COMMIT", &ops, false, &|r| {
            r.done(proto::OP_PUTFH, "PUTFH")?;
            r.commit()
        })
        .await
    }

    /// Sets attributes. Use [`Stateid::ANONYMOUS`] unless the size changes on an open file.
    pub async fn setattr(&self, fh: &Fh, stateid: &Stateid, attrs: &SetAttrs) -> Result<()> {
        let mut ops = Ops::new();
        ops.putfh(fh).setattr(stateid, attrs);
        self.run("SETATTR", &ops, true, &|r| {
            r.done(proto::OP_PUTFH, "PUTFH")?;
            r.setattr()
        })
        .await
    }

    /// Sets attributes of an open file and closes it, in one COMPOUND (one round trip where a
    /// file's last metadata and its CLOSE would take two). If the SETATTR fails, the file
    /// stays open: close it.
    pub async fn setattr_and_close(&self, open: &Open, attrs: &SetAttrs) -> Result<()> {
        let mut ops = Ops::new();
        ops.putfh(&open.fh).setattr(&Stateid::ANONYMOUS, attrs).close(&open.stateid);
        self.run("SETATTR", &ops, true, &|r| {
            r.done(proto::OP_PUTFH, "PUTFH")?;
            r.setattr()?;
            r.close().map(|_| ())
        })
        .await
    }

    async fn create(&self, dir: &Fh, kind: CreateKind<'_>, name: &[u8], mode: u32) -> Result<Fh> {
        let mut ops = Ops::new();
        ops.putfh(dir).create(&kind, name, mode).getfh();
        self.run("CREATE", &ops, true, &|r| {
            r.done(proto::OP_PUTFH, "PUTFH")?;
            r.create()?;
            r.getfh()
        })
        .await
    }

    pub async fn mkdir(&self, dir: &Fh, name: &[u8], mode: u32) -> Result<Fh> {
        self.create(dir, CreateKind::Dir, name, mode).await
    }

    pub async fn symlink(&self, dir: &Fh, name: &[u8], target: &[u8], mode: u32) -> Result<Fh> {
        self.create(dir, CreateKind::Symlink(target), name, mode).await
    }

    /// Creates a FIFO, socket or device (`rdev`: major, minor; ignored for FIFOs and sockets).
    pub async fn mknod(&self, dir: &Fh, name: &[u8], kind: NodeKind, rdev: (u32, u32), mode: u32) -> Result<Fh> {
        let kind = match kind {
            NodeKind::Fifo => CreateKind::Fifo,
            NodeKind::Socket => CreateKind::Socket,
            NodeKind::Block => CreateKind::Block(rdev.0, rdev.1),
            NodeKind::Char => CreateKind::Char(rdev.0, rdev.1),
        };
        self.create(dir, kind, name, mode).await
    }

    /// A hard link `dir/name` to `file`.
    pub async fn link(&self, file: &Fh, dir: &Fh, name: &[u8]) -> Result<()> {
        let mut ops = Ops::new();
        ops.putfh(file).savefh().putfh(dir).link(name);
        self.run("LINK", &ops, true, &|r| {
            r.done(proto::OP_PUTFH, "PUTFH")?;
            r.done(proto::OP_SAVEFH, "SAVEFH")?;
            r.done(proto::OP_PUTFH, "PUTFH")?;
            r.link()
        })
        .await
    }

    pub async fn readlink(&self, fh: &Fh) -> Result<Vec<u8>> {
        let mut ops = Ops::new();
        ops.putfh(fh).readlink();
        self.run("READLINK", &ops, false, &|r| {
            r.done(proto::OP_PUTFH, "PUTFH")?;
            r.readlink()
        })
        .await
    }

    /// Renames `from_dir/from` to `to_dir/to`, replacing `to` if it exists.
    pub async fn rename(&self, from_dir: &Fh, from: &[u8], to_dir: &Fh, to: &[u8]) -> Result<()> {
        let mut ops = Ops::new();
        ops.putfh(from_dir).savefh().putfh(to_dir).rename(from, to);
        self.run("RENAME", &ops, true, &|r| {
            r.done(proto::OP_PUTFH, "PUTFH")?;
            r.done(proto::OP_SAVEFH, "SAVEFH")?;
            r.done(proto::OP_PUTFH, "PUTFH")?;
            r.rename()
        })
        .await
    }

    /// Removes a file or an empty directory.
    pub async fn remove(&self, dir: &Fh, name: &[u8]) -> Result<()> {
        let mut ops = Ops::new();
        ops.putfh(dir).remove(name);
        self.run("REMOVE", &ops, true, &|r| {
            r.done(proto::OP_PUTFH, "PUTFH")?;
            r.remove()
        })
        .await
    }

    /// The NFSv4 ACL (FATTR4_ACL) as raw entries; NOTSUPP if the server has no ACLs.
    pub async fn get_acl(&self, fh: &Fh) -> Result<Vec<Ace>> {
        if !self.inner.supported.has(attr::ACL) {
            return Err(Error::Status { code: NFS4ERR_ATTRNOTSUPP, op: "GETATTR", resent: false });
        }
        let mut ops = Ops::new();
        ops.putfh(fh).getattr(&Bitmap::of(&[attr::ACL]));
        let raw: Raw = self
            .run("GETATTR", &ops, false, &|r| {
                r.done(proto::OP_PUTFH, "PUTFH")?;
                r.getattr()
            })
            .await?;
        Ok(raw.acl.unwrap_or_default())
    }

    /// Sets the NFSv4 ACL.
    pub async fn set_acl(&self, fh: &Fh, acl: &[Ace]) -> Result<()> {
        self.setattr(fh, &Stateid::ANONYMOUS, &SetAttrs { acl: Some(acl.to_vec()), ..Default::default() }).await
    }

    /// Destroys the session and the client id (best effort): the server frees their state at
    /// once instead of at lease expiry.
    pub async fn shutdown(&self) {
        let core = &self.inner.core;
        if let Ok(s) = core.session() {
            let ops = proto::destroy_session(&s.id);
            let _ =
                tokio::time::timeout(core.cfg.timeout, core.plain("DESTROY_SESSION", None, &ops, &|r| r.done(proto::OP_DESTROY_SESSION, "DESTROY_SESSION")))
                    .await;
            let ops = proto::destroy_clientid(s.clientid);
            let _ =
                tokio::time::timeout(core.cfg.timeout, core.plain("DESTROY_CLIENTID", None, &ops, &|r| r.done(proto::OP_DESTROY_CLIENTID, "DESTROY_CLIENTID")))
                    .await;
        }
    }

    /// Sends a SEQUENCE alone (what the lease renewal does).
    pub async fn renew(&self) -> Result<()> {
        self.run("SEQUENCE", &Ops::new(), false, &|_| Ok(())).await
    }

    /// Counters of sessions, client ids, connection binds and resends.
    pub fn stats(&self) -> &Stats {
        &self.inner.core.stats
    }

    /// A weak handle that turns back into a client while one exists.
    pub fn downgrade(&self) -> WeakClient {
        WeakClient(Arc::downgrade(&self.inner))
    }
}

/// A [`Client`] that does not keep the session alive.
#[derive(Clone)]
pub struct WeakClient(Weak<Inner>);

impl WeakClient {
    pub fn upgrade(&self) -> Option<Client> {
        self.0.upgrade().map(|inner| Client { inner })
    }
}

/// Renews the lease every `every` while a [`Client`] exists.
async fn renew(weak: Weak<Inner>, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        let Some(inner) = weak.upgrade() else { return };
        let _ = inner.core.run("SEQUENCE", &Ops::new(), false, &|_| Ok(())).await;
    }
}
