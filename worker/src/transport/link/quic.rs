//! QUIC endpoints for the link (quinn over UDP, TLS 1.3 with mutual authentication).
//!
//! - The writer side ([`serve`]) accepts connections from agents of the same CA. Each
//!   bidirectional stream carries one reader's batches or requests; it runs on the blocking
//!   pool, driving a [`Writer`], because writing files blocks.
//! - The reader side ([`LinkClient`]) keeps one connection per writer (or several, see
//!   [`LinkTuning::connections`]) and opens a stream per batch. A reader thread sends with
//!   blocking calls; a task drains the writer's answers into a channel, so the two directions
//!   never wait on each other.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};

use super::pki::{Admission, AgentCert, Identity, PkiError};
use crate::engine::write::Writer;
use crate::engine::ExecContext;
use crate::transport::frame::{self, decode, decode_preamble, encode, encode_preamble, Code, Frame, ProtocolError, PREAMBLE_LEN};
use crate::transport::wire::{refused, LinkError, Wire};

/// A link silent this long is declared dead.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(8);

/// Congestion controllers quinn offers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Congestion {
    Cubic,
    Bbr,
    NewReno,
}

impl std::str::FromStr for Congestion {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "cubic" => Ok(Congestion::Cubic),
            "bbr" => Ok(Congestion::Bbr),
            "newreno" | "new-reno" => Ok(Congestion::NewReno),
            other => Err(format!("unknown congestion controller {other:?} (use cubic, bbr or newreno)")),
        }
    }
}

/// Transport settings. Windows are sized for the bandwidth-delay product: a stream's window
/// must hold what one stream has in flight for a round trip, or it stalls every RTT.
#[derive(Clone, Debug)]
pub struct LinkTuning {
    pub congestion: Congestion,
    /// Per-stream receive window (bytes).
    pub stream_window: u64,
    /// Per-connection receive and send windows (bytes).
    pub connection_window: u64,
    /// First datagram size; with `mtu_discovery`, the path MTU is probed upwards from here.
    pub initial_mtu: u16,
    pub mtu_discovery: bool,
    /// Highest datagram size path MTU discovery tries. A reader lowers it further to what
    /// the kernel's route to each writer carries ([`route_payload`]): 1,472 on Ethernet,
    /// 8,972 on jumbo frames, 65,507 on loopback. Every datagram costs CPU, so on loopback
    /// 64 KB datagrams carry 1.4x the throughput of 1,452-byte ones at 0.6x the CPU.
    pub max_mtu: u16,
    /// Generic segmentation offload: one syscall sends many datagrams.
    pub gso: bool,
    /// Generic receive offload: one syscall receives many datagrams.
    pub gro: bool,
    /// Connections per writer; streams spread over them.
    pub connections: usize,
}

impl Default for LinkTuning {
    fn default() -> Self {
        // 1 Gbit/s × 150 ms = 18.75 MB in flight: the stream window covers it with room.
        LinkTuning {
            congestion: Congestion::Bbr,
            stream_window: 32 << 20,
            connection_window: 128 << 20,
            initial_mtu: 1400,
            mtu_discovery: true,
            max_mtu: MAX_UDP_PAYLOAD,
            gso: true,
            gro: true,
            connections: 1,
        }
    }
}

impl LinkTuning {
    pub fn transport(&self) -> quinn::TransportConfig {
        let mut t = quinn::TransportConfig::default();
        let var = |v: u64| quinn::VarInt::from_u64(v).unwrap_or(quinn::VarInt::MAX);
        t.stream_receive_window(var(self.stream_window));
        t.receive_window(var(self.connection_window));
        t.send_window(self.connection_window);
        t.max_concurrent_bidi_streams(var(256));
        t.max_concurrent_uni_streams(var(0));
        t.initial_mtu(self.initial_mtu.max(1200));
        if self.mtu_discovery {
            let mut d = quinn::MtuDiscoveryConfig::default();
            d.upper_bound(self.max_mtu.max(self.initial_mtu.max(1200)));
            // A burst of losses among large datagrams reads as a black hole and drops them to
            // 1,200 bytes; quinn waits a minute before climbing again, which on loopback costs
            // half the throughput for that minute. Ten seconds bounds the cost of a false alarm.
            d.black_hole_cooldown(Duration::from_secs(10));
            t.mtu_discovery_config(Some(d));
        } else {
            t.mtu_discovery_config(None);
        }
        t.enable_segmentation_offload(self.gso);
        t.keep_alive_interval(Some(Duration::from_secs(2)));
        // A connection silent for this long is dead: the reader reconnects (to another writer
        // if this one stays away) and resumes from what the writer kept.
        t.max_idle_timeout(Some(quinn::IdleTimeout::try_from(IDLE_TIMEOUT).expect("fits")));
        match self.congestion {
            Congestion::Cubic => t.congestion_controller_factory(Arc::new(quinn::congestion::CubicConfig::default())),
            Congestion::Bbr => t.congestion_controller_factory(Arc::new(quinn::congestion::BbrConfig::default())),
            Congestion::NewReno => t.congestion_controller_factory(Arc::new(quinn::congestion::NewRenoConfig::default())),
        };
        t
    }
}

fn pki_err(e: impl std::fmt::Display) -> PkiError {
    PkiError(e.to_string())
}

pub fn server_config(id: &Identity, tuning: &LinkTuning) -> Result<quinn::ServerConfig, PkiError> {
    let crypto = QuicServerConfig::try_from(id.server_tls()?).map_err(pki_err)?;
    let mut cfg = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    cfg.transport_config(Arc::new(tuning.transport()));
    Ok(cfg)
}

fn client_config(crypto: Arc<QuicClientConfig>, tuning: &LinkTuning) -> quinn::ClientConfig {
    let mut cfg = quinn::ClientConfig::new(crypto);
    cfg.transport_config(Arc::new(tuning.transport()));
    cfg
}

/// IP and UDP headers around a datagram's payload.
fn datagram_overhead(peer: SocketAddr) -> u16 {
    if peer.is_ipv4() {
        20 + 8
    } else {
        40 + 8
    }
}

/// The largest datagram payload the kernel's route to `peer` carries: the outgoing
/// interface's MTU (or a smaller path MTU the kernel has learned) less the IP and UDP headers.
/// Loopback carries 65,507 bytes, a plain Ethernet 1,472, a jumbo-frame LAN 8,972. `None`
/// when the kernel cannot say.
pub fn route_payload(peer: SocketAddr) -> Option<u16> {
    use std::os::fd::AsRawFd;
    let local: SocketAddr = if peer.is_ipv4() { "0.0.0.0:0".parse().ok()? } else { "[::]:0".parse().ok()? };
    let socket = std::net::UdpSocket::bind(local).ok()?;
    socket.connect(peer).ok()?;
    let (level, name) = if peer.is_ipv4() { (libc::IPPROTO_IP, libc::IP_MTU) } else { (libc::IPPROTO_IPV6, libc::IPV6_MTU) };
    let mut mtu: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: the fd is open for the call, and `mtu`/`len` describe a c_int the kernel fills.
    let ok = unsafe { libc::getsockopt(socket.as_raw_fd(), level, name, (&mut mtu as *mut libc::c_int).cast(), &mut len) } == 0;
    let payload = i64::from(mtu) - i64::from(datagram_overhead(peer));
    (ok && payload > 0).then(|| payload.clamp(1200, i64::from(MAX_UDP_PAYLOAD)) as u16)
}

/// Live link connections by the peer agent's name (its certificate's, or the name it was
/// dialed by), for the agent's health record and per-peer statistics. Closed connections
/// drop out when the list is read.
#[derive(Default)]
pub struct Peers {
    conns: Mutex<Vec<(String, quinn::Connection)>>,
}

impl Peers {
    pub fn add(&self, name: &str, conn: &quinn::Connection) {
        self.conns.lock().unwrap_or_else(|p| p.into_inner()).push((name.to_string(), conn.clone()));
    }

    /// The open connections, by peer name.
    pub fn live(&self) -> Vec<(String, quinn::Connection)> {
        let mut conns = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        conns.retain(|(_, c)| c.close_reason().is_none());
        conns.clone()
    }
}

/// Executions this agent writes for, by id: filled as the agent joins them.
#[derive(Clone, Default)]
pub struct Registry {
    execs: Arc<Mutex<HashMap<String, Arc<ExecContext>>>>,
    /// Readers connected to this writer.
    pub peers: Arc<Peers>,
}

impl Registry {
    pub fn insert(&self, ctx: Arc<ExecContext>) {
        self.execs.lock().unwrap_or_else(|p| p.into_inner()).insert(ctx.spec.id.clone(), ctx);
    }

    pub fn remove(&self, exec: &str) {
        self.execs.lock().unwrap_or_else(|p| p.into_inner()).remove(exec);
    }

    fn get(&self, exec: &str) -> Option<Arc<ExecContext>> {
        self.execs.lock().unwrap_or_else(|p| p.into_inner()).get(exec).cloned()
    }
}

/// Counters of a writer endpoint, for logs, tests and metrics.
#[derive(Default)]
pub struct ServeStats {
    pub refused_handshakes: std::sync::atomic::AtomicU64,
    pub streams: std::sync::atomic::AtomicU64,
    pub stream_errors: std::sync::atomic::AtomicU64,
}

/// UDP socket buffers, sized to hold a whole connection window: a peer never has more than
/// that in flight, so a writer that falls behind for a moment (on two cores, behind its own
/// reader) makes the sender wait instead of losing datagrams. The kernel's default (about
/// 200 KiB) lost 45 % of datagrams on loopback and sent the path MTU down to 1,200; 32 MiB
/// still lost up to 1 in 35 of the 64 KB datagrams loopback carries, 128 MiB none. The
/// kernel takes the memory only while datagrams wait.
fn socket_buffer(tuning: &LinkTuning) -> i32 {
    tuning.connection_window.clamp(32 << 20, 1 << 30) as i32
}

/// Sets both socket buffers; as root past `net.core.{r,w}mem_max` (the FORCE options),
/// otherwise as far as those limits allow.
fn big_socket_buffers(socket: &std::net::UdpSocket, bytes: i32) {
    use std::os::fd::AsRawFd;
    let fd = socket.as_raw_fd();
    let set =
        |opt: i32| unsafe { libc::setsockopt(fd, libc::SOL_SOCKET, opt, (&bytes as *const i32).cast(), std::mem::size_of::<i32>() as libc::socklen_t) == 0 };
    if !set(libc::SO_RCVBUFFORCE) {
        set(libc::SO_RCVBUF);
    }
    if !set(libc::SO_SNDBUFFORCE) {
        set(libc::SO_SNDBUF);
    }
}

/// The most UDP payload one datagram, or one send, may carry (IPv4's limit, the lower of the
/// two). A GSO batch is one send, so its segments times their size must stay under it.
pub const MAX_UDP_PAYLOAD: u16 = 65_507;
const MAX_UDP_SEND: usize = MAX_UDP_PAYLOAD as usize;

/// How a GSO batch of `len` bytes in segments of `segment` bytes is cut into sends the kernel
/// takes: whole segments, at most [`MAX_UDP_SEND`] bytes each.
pub fn gso_sends(len: usize, segment: usize) -> impl Iterator<Item = std::ops::Range<usize>> {
    let per_send = (MAX_UDP_SEND / segment.max(1)).max(1) * segment.max(1);
    (0..len).step_by(per_send).map(move |start| start..(start + per_send).min(len))
}

/// quinn's UDP socket, with GSO batches that fit one send. quinn batches up to 10 datagrams
/// whatever their size; at a 9,000-byte MTU that is 90,000 bytes, which the kernel refuses
/// whole. Every such batch was lost, the connection read the loss as a black hole and fell
/// back to 1,200-byte datagrams: that is why jumbo MTUs had measured no faster than 1,452.
#[derive(Debug)]
struct WholeSends {
    inner: Arc<dyn quinn::AsyncUdpSocket>,
}

impl quinn::AsyncUdpSocket for WholeSends {
    fn create_io_poller(self: Arc<Self>) -> std::pin::Pin<Box<dyn quinn::UdpPoller>> {
        self.inner.clone().create_io_poller()
    }

    fn try_send(&self, transmit: &quinn::udp::Transmit) -> std::io::Result<()> {
        let Some(segment) = transmit.segment_size.filter(|_| transmit.contents.len() > MAX_UDP_SEND) else {
            return self.inner.try_send(transmit);
        };
        for (i, range) in gso_sends(transmit.contents.len(), segment).enumerate() {
            let contents = &transmit.contents[range];
            let part = quinn::udp::Transmit { contents, segment_size: (contents.len() > segment).then_some(segment), ..transmit.clone() };
            match self.inner.try_send(&part) {
                Ok(()) => {}
                // Nothing has gone yet: quinn waits for the socket and offers the batch again.
                Err(e) if i == 0 => return Err(e),
                // The rest is lost like any datagram, and QUIC's loss recovery resends it;
                // reporting an error now would make quinn send the first part twice.
                Err(_) => return Ok(()),
            }
        }
        Ok(())
    }

    fn poll_recv(
        &self,
        cx: &mut std::task::Context,
        bufs: &mut [std::io::IoSliceMut<'_>],
        meta: &mut [quinn::udp::RecvMeta],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.inner.poll_recv(cx, bufs, meta)
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.inner.max_transmit_segments()
    }

    fn max_receive_segments(&self) -> usize {
        self.inner.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}

/// A UDP endpoint that accepts datagrams as large as the tuning allows: quinn's default
/// refuses peers' datagrams above 1,472 bytes, which would cap path MTU discovery.
fn endpoint(addr: SocketAddr, server: Option<quinn::ServerConfig>, tuning: &LinkTuning) -> std::io::Result<quinn::Endpoint> {
    let mut cfg = quinn::EndpointConfig::default();
    cfg.max_udp_payload_size(tuning.max_mtu.clamp(1472, MAX_UDP_PAYLOAD)).map_err(|e| std::io::Error::other(e.to_string()))?;
    let socket = std::net::UdpSocket::bind(addr)?;
    big_socket_buffers(&socket, socket_buffer(tuning));
    let fd = std::os::fd::AsRawFd::as_raw_fd(&socket);
    let runtime = quinn::default_runtime().ok_or_else(|| std::io::Error::other("no async runtime"))?;
    let socket = Arc::new(WholeSends { inner: runtime.wrap_udp_socket(socket)? });
    if !tuning.gro {
        // quinn turns GRO on where the kernel has it; this is for measuring its effect.
        const UDP_GRO: libc::c_int = 104;
        let off: libc::c_int = 0;
        // SAFETY: `fd` belongs to the socket just wrapped, which is alive; `off` is a c_int.
        unsafe { libc::setsockopt(fd, libc::SOL_UDP, UDP_GRO, (&off as *const libc::c_int).cast(), std::mem::size_of::<libc::c_int>() as libc::socklen_t) };
    }
    quinn::Endpoint::new_with_abstract_socket(cfg, server, socket, runtime)
}

/// Binds the writer endpoint. Must be called inside a tokio runtime.
pub fn bind(addr: SocketAddr, id: &Identity, tuning: &LinkTuning) -> Result<quinn::Endpoint, PkiError> {
    let cfg = server_config(id, tuning)?;
    endpoint(addr, Some(cfg), tuning).map_err(|e| PkiError(format!("cannot listen for links on {addr}: {e} (choose another --link-listen address)")))
}

/// Most streams one peer agent may have open on this writer, over all its connections: a
/// stream holds a blocking thread and two descriptors per announced file.
pub const MAX_STREAMS_PER_PEER: usize = 512;

/// The QUIC application error code a writer closes a connection with when it refuses the peer.
const REFUSED: u32 = 0x1f;

/// The agent at the other end of a connection, as its certificate (checked against our CA
/// during the handshake) names it.
pub fn peer_agent(conn: &quinn::Connection) -> Result<AgentCert, PkiError> {
    let certs = conn
        .peer_identity()
        .and_then(|any| any.downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>().ok())
        .ok_or_else(|| PkiError("the peer presented no certificate".into()))?;
    AgentCert::parse(certs.first().ok_or_else(|| PkiError("the peer presented no certificate".into()))?)
}

/// Accepts connections until the endpoint closes. A peer is admitted when its certificate is
/// from our CA (the handshake) and not revoked ([`Admission`]); each of its streams must then
/// name an execution whose source agents its certificate matches.
pub async fn serve(endpoint: quinn::Endpoint, registry: Registry, stats: Arc<ServeStats>, admission: Arc<Admission>) {
    let per_peer: Arc<Mutex<HashMap<String, Arc<tokio::sync::Semaphore>>>> = Arc::default();
    while let Some(incoming) = endpoint.accept().await {
        let (registry, stats, admission, per_peer) = (registry.clone(), stats.clone(), admission.clone(), per_peer.clone());
        tokio::spawn(async move {
            let remote = incoming.remote_address();
            let conn = match incoming.await {
                Ok(c) => c,
                Err(e) => {
                    // No certificate, a certificate from another CA, or not TLS 1.3.
                    stats.refused_handshakes.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tracing::warn!(peer = %remote, error = %e, "LinkRefused: handshake failed");
                    return;
                }
            };
            let admitted = match peer_agent(&conn) {
                Ok(peer) => admission.admit(&peer, true).await.map(|()| peer),
                Err(e) => Err(e.to_string()),
            };
            let peer = match admitted {
                Ok(peer) => Arc::new(peer),
                Err(why) => {
                    stats.refused_handshakes.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tracing::warn!(peer = %remote, reason = %why, "LinkRefused");
                    conn.close(quinn::VarInt::from_u32(REFUSED), why.as_bytes());
                    return;
                }
            };
            tracing::info!(peer = %remote, agent = %peer.name, "LinkAccepted");
            registry.peers.add(&peer.name, &conn);
            super::stats::watch(conn.clone(), peer.name.clone());
            let permits = per_peer
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .entry(peer.name.clone())
                .or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(MAX_STREAMS_PER_PEER)))
                .clone();
            while let Ok((send, recv)) = conn.accept_bi().await {
                stats.streams.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let (registry, stats, admission, peer, permits) = (registry.clone(), stats.clone(), admission.clone(), peer.clone(), permits.clone());
                tokio::spawn(async move {
                    let result = match permits.try_acquire_owned() {
                        Ok(permit) => serve_admitted(send, recv, &registry, &peer, &admission, permit).await,
                        Err(_) => refuse(send, err(Code::Limit, format!("agent {} has {MAX_STREAMS_PER_PEER} streams open here already", peer.name))).await,
                    };
                    if let Err(e) = result {
                        stats.stream_errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        tracing::warn!(peer = %remote, agent = %peer.name, code = ?e.code, error = %e.detail, "LinkStreamError");
                    }
                });
            }
        });
    }
}

fn err(code: Code, detail: impl Into<String>) -> ProtocolError {
    ProtocolError { code, detail: detail.into() }
}

/// Ends a stream with an ERROR frame.
async fn refuse(mut send: quinn::SendStream, e: ProtocolError) -> Result<(), ProtocolError> {
    let _ = write_frames(&mut send, &[Frame::Error { code: e.code as u16, message: e.detail.clone() }]).await;
    let _ = send.finish();
    Err(e)
}

/// Checks a stream before it costs a thread or a buffer: the preamble, then HELLO, then the
/// execution (waiting for this writer to join it), then that the peer may write for it. Only
/// then does the stream get a blocking thread and its frames get read ahead.
async fn serve_admitted(
    mut send: quinn::SendStream,
    recv: quinn::RecvStream,
    registry: &Registry,
    peer: &AgentCert,
    admission: &Admission,
    permit: tokio::sync::OwnedSemaphorePermit,
) -> Result<(), ProtocolError> {
    let mut reader = FrameReader::new(recv);
    let opening = async {
        reader.preamble().await?;
        send.write_all(&encode_preamble()).await.map_err(|e| err(Code::Io, e.to_string()))?;
        match reader.next().await? {
            Some(Frame::Hello(h)) => Ok(Some(h)),
            Some(_) => Err(err(Code::OutOfOrder, "a stream must start with HELLO")),
            None => Ok(None),
        }
    };
    let hello = match tokio::time::timeout(FRAME_DEADLINE, opening).await {
        Ok(Ok(Some(h))) => h,
        Ok(Ok(None)) => return Ok(()),
        Ok(Err(e)) => return refuse(send, e).await,
        Err(_) => return refuse(send, err(Code::Io, format!("no HELLO within {} s", FRAME_DEADLINE.as_secs()))).await,
    };
    if let Err(why) = admission.admit(peer, false).await {
        return refuse(send, err(Code::Forbidden, why)).await;
    }
    let deadline = tokio::time::Instant::now() + JOIN_WAIT;
    let ctx = loop {
        if let Some(c) = registry.get(&hello.exec) {
            break c;
        }
        if tokio::time::Instant::now() >= deadline {
            let detail = format!("this agent does not write for execution {:?} (not running, or the destination is not bound to this agent)", hello.exec);
            return refuse(send, err(Code::UnknownExecution, detail)).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    if !ctx.spec.link.reach(&peer.name, &peer.labels).source {
        let detail = format!(
            "agent {} (labels {:?}) may not write for execution {}: it reads its source through agents {:?}",
            peer.name, peer.labels, hello.exec, ctx.spec.link.source_agents
        );
        return refuse(send, err(Code::Forbidden, detail)).await;
    }
    let handle = tokio::runtime::Handle::current();
    let agent = peer.name.clone();
    let span = tracing::debug_span!("link_receive", otel.name = "link receive", peer = %agent);
    ferry_common::traces::adopt(&span, hello.trace.as_deref());
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        let _in = span.enter();
        serve_stream(&handle, send, reader, &ctx, &agent)
    })
    .await
    .map_err(|e| err(Code::Io, format!("stream task failed: {e}")))?
}

/// Reads frames from a QUIC stream, never buffering more than one frame's limit.
pub struct FrameReader {
    recv: quinn::RecvStream,
    buf: Vec<u8>,
}

impl FrameReader {
    pub fn new(recv: quinn::RecvStream) -> Self {
        FrameReader { recv, buf: Vec::with_capacity(64 << 10) }
    }

    pub async fn preamble(&mut self) -> Result<(), ProtocolError> {
        let mut p = [0u8; PREAMBLE_LEN];
        self.recv.read_exact(&mut p).await.map_err(|e| ProtocolError { code: Code::Malformed, detail: format!("stream ended before its preamble: {e}") })?;
        decode_preamble(&p).map(|_| ())
    }

    /// The next frame; `Ok(None)` at a clean end of stream. A CHUNK's data is received straight
    /// into its own buffer (no staging copy): at 1,000 MB/s every copy shows.
    pub async fn next(&mut self) -> Result<Option<Frame>, ProtocolError> {
        let mut head = [0u8; frame::FRAME_HEADER_LEN];
        match self.recv.read_exact(&mut head).await {
            Ok(()) => {}
            Err(quinn::ReadExactError::FinishedEarly(0)) => return Ok(None),
            Err(e) => return Err(lost(e)),
        }
        let len = frame::check_frame_header(&head)?;
        if head[0] == frame::kind::CHUNK {
            let mut fixed = [0u8; frame::CHUNK_HEAD_LEN - frame::FRAME_HEADER_LEN];
            if len < fixed.len() {
                return Err(ProtocolError { code: Code::Malformed, detail: "chunk frame shorter than its fixed fields".into() });
            }
            self.recv.read_exact(&mut fixed).await.map_err(lost)?;
            let f = frame::decode_chunk_fields(&fixed, len - fixed.len())?;
            // Appended from the stream's own chunks: one copy, and no zeroing first.
            let want = len - fixed.len();
            let mut data = Vec::with_capacity(want);
            while data.len() < want {
                match self.recv.read_chunk(want - data.len(), true).await {
                    Ok(Some(c)) => data.extend_from_slice(&c.bytes),
                    Ok(None) => return Err(lost(quinn::ReadExactError::FinishedEarly(data.len()))),
                    Err(e) => return Err(lost(quinn::ReadExactError::ReadError(e))),
                }
            }
            return Ok(Some(Frame::Chunk { id: f.id, offset: f.offset, crc32c: f.crc32c, compressed: f.compressed, raw_len: f.raw_len, data }));
        }
        self.buf.clear();
        self.buf.extend_from_slice(&head);
        self.buf.resize(frame::FRAME_HEADER_LEN + len, 0);
        self.recv.read_exact(&mut self.buf[frame::FRAME_HEADER_LEN..]).await.map_err(lost)?;
        match decode(&self.buf)? {
            Some((f, _)) => Ok(Some(f)),
            None => Err(ProtocolError { code: Code::Malformed, detail: "incomplete frame".into() }),
        }
    }
}

fn lost(e: quinn::ReadExactError) -> ProtocolError {
    match e {
        quinn::ReadExactError::FinishedEarly(_) => ProtocolError { code: Code::Malformed, detail: "stream ended inside a frame".into() },
        quinn::ReadExactError::ReadError(e) => ProtocolError { code: Code::Io, detail: format!("stream lost: {e}") },
    }
}

async fn write_frames(send: &mut quinn::SendStream, frames: &[Frame]) -> Result<(), ProtocolError> {
    let mut out = Vec::new();
    for f in frames {
        encode(f, &mut out)?;
    }
    send.write_all(&out).await.map_err(|e| ProtocolError { code: Code::Io, detail: format!("cannot answer: {e}") })
}

/// How long a writer waits for an execution it has not joined yet.
const JOIN_WAIT: Duration = Duration::from_secs(15);

/// How long a writer waits for the next frame of a stream before ending it: a reader that
/// went quiet without closing must not hold a thread and its files for ever.
pub const FRAME_DEADLINE: Duration = Duration::from_secs(120);

/// Frames read ahead of the writer's file I/O. The reading runs as a task on the runtime, so
/// the blocking thread is woken once per frame rather than once per arriving packet.
const READ_AHEAD: usize = 8;

/// Serves an admitted stream (past its HELLO) on a blocking thread.
fn serve_stream(
    rt: &tokio::runtime::Handle,
    mut send: quinn::SendStream,
    mut reader: FrameReader,
    ctx: &ExecContext,
    agent: &str,
) -> Result<(), ProtocolError> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<Option<Frame>, ProtocolError>>(READ_AHEAD);
    let reading = rt.spawn(async move {
        loop {
            let next = match tokio::time::timeout(FRAME_DEADLINE, reader.next()).await {
                Ok(next) => next,
                Err(_) => Err(err(Code::Io, format!("no frame for {} s", FRAME_DEADLINE.as_secs()))),
            };
            let end = !matches!(next, Ok(Some(_)));
            if tx.send(next).await.is_err() || end {
                return;
            }
        }
    });
    let mut next = || rt.block_on(rx.recv()).unwrap_or(Ok(None));
    let result = (|| -> Result<(), ProtocolError> {
        let mut writer = Writer::new(ctx, true).map_err(|e| err(Code::UnknownExecution, e.to_string()))?;
        let served = (|| {
            while let Some(frame) = next()? {
                let replies = writer.handle(frame)?;
                if !replies.is_empty() {
                    rt.block_on(write_frames(&mut send, &replies))?;
                }
            }
            Ok(())
        })();
        let st = &writer.stats;
        tracing::debug!(agent = %agent, files = st.files_written, bytes = st.bytes_written, resumed = st.bytes_resumed, bad_chunks = st.chunks_rejected, current = st.entries_current, "LinkStreamServed");
        served
    })();
    reading.abort();
    if let Err(e) = &result {
        let _ = rt.block_on(write_frames(&mut send, &[Frame::Error { code: e.code as u16, message: e.detail.clone() }]));
    }
    let _ = send.finish();
    result
}

/// The reader side: connections to writers, by address.
pub struct LinkClient {
    endpoint: quinn::Endpoint,
    /// Replaced when the agent's certificate is renewed; open connections keep theirs.
    crypto: Mutex<Arc<QuicClientConfig>>,
    runtime: tokio::runtime::Handle,
    tuning: LinkTuning,
    conns: Mutex<HashMap<(SocketAddr, usize), quinn::Connection>>,
    next: std::sync::atomic::AtomicUsize,
    admission: Arc<Admission>,
    /// Writers this reader is connected to.
    pub peers: Peers,
}

impl LinkClient {
    /// Must be called inside a tokio runtime.
    pub fn new(id: &Identity, tuning: LinkTuning) -> Result<LinkClient, PkiError> {
        let bind: SocketAddr = "0.0.0.0:0".parse().expect("valid");
        let endpoint = endpoint(bind, None, &tuning).map_err(|e| PkiError(format!("cannot open a UDP socket for links: {e}")))?;
        let crypto = Arc::new(QuicClientConfig::try_from(id.client_tls()?).map_err(pki_err)?);
        Ok(LinkClient {
            endpoint,
            crypto: Mutex::new(crypto),
            runtime: tokio::runtime::Handle::current(),
            tuning,
            conns: Mutex::new(HashMap::new()),
            next: Default::default(),
            admission: Arc::default(),
            peers: Peers::default(),
        })
    }

    /// New connections present `id` (after a renewal).
    pub fn set_identity(&self, id: &Identity) -> Result<(), PkiError> {
        let crypto = Arc::new(QuicClientConfig::try_from(id.client_tls()?).map_err(pki_err)?);
        *self.crypto.lock().unwrap_or_else(|p| p.into_inner()) = crypto;
        Ok(())
    }

    /// Refuses writers whose certificates `admission` refuses (revoked ones).
    pub fn with_admission(mut self, admission: Arc<Admission>) -> LinkClient {
        self.admission = admission;
        self
    }

    fn connection(&self, addr: SocketAddr, name: &str) -> Result<quinn::Connection, LinkError> {
        let slot = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % self.tuning.connections.max(1);
        let key = (addr, slot);
        if let Some(c) = self.conns.lock().unwrap_or_else(|p| p.into_inner()).get(&key) {
            if c.close_reason().is_none() {
                return Ok(c.clone());
            }
        }
        let _in_runtime = self.runtime.enter();
        // Path MTU discovery climbs no higher than this route carries: probes past it are lost
        // for certain, and loopback's 64 KB would never be tried from a fixed Ethernet bound.
        let mut tuning = self.tuning.clone();
        tuning.max_mtu = route_payload(addr).map_or(tuning.max_mtu, |route| route.min(tuning.max_mtu));
        let config = client_config(self.crypto.lock().unwrap_or_else(|p| p.into_inner()).clone(), &tuning);
        // Detached: the connection's driver task outlives the shard that happens to connect.
        let connecting = ferry_common::traces::detached(|| self.endpoint.connect_with(config, addr, name))
            .map_err(|e| LinkError::Down(format!("cannot connect to {name} at {addr}: {e}")))?;
        let conn = self
            .runtime
            .block_on(async { tokio::time::timeout(Duration::from_secs(10), connecting).await })
            .map_err(|_| LinkError::Down(format!("no answer from {name} at {addr} within 10 s")))?
            .map_err(|e| LinkError::Down(format!("cannot connect to {name} at {addr}: {e}")))?;
        // The handshake proved the certificate names `name`; it must not be revoked either.
        let admitted = match peer_agent(&conn) {
            Ok(peer) => self.runtime.block_on(self.admission.admit(&peer, true)),
            Err(e) => Err(e.to_string()),
        };
        if let Err(why) = admitted {
            conn.close(quinn::VarInt::from_u32(REFUSED), why.as_bytes());
            return Err(LinkError::Down(format!("writer {name} at {addr} refused: {why}")));
        }
        super::stats::watch(conn.clone(), name.to_string());
        self.conns.lock().unwrap_or_else(|p| p.into_inner()).insert(key, conn.clone());
        self.peers.add(name, &conn);
        Ok(conn)
    }

    /// The writer `name` at `addr` as its certificate names it, connecting if need be: a
    /// reader checks what the writer may hold before it opens a stream.
    pub fn writer_agent(&self, addr: SocketAddr, name: &str) -> Result<AgentCert, LinkError> {
        let conn = self.connection(addr, name)?;
        peer_agent(&conn).map_err(|e| LinkError::Down(format!("{name} at {addr}: {e}")))
    }

    /// The path of the first connection to `addr`: its MTU, round trip and losses.
    pub fn path_stats(&self, addr: SocketAddr) -> Option<quinn::PathStats> {
        self.conns.lock().unwrap_or_else(|p| p.into_inner()).get(&(addr, 0)).map(|c| c.stats().path)
    }

    /// Opens a stream to the writer `name` at `addr` (blocking; call from the blocking pool).
    pub fn open(&self, addr: SocketAddr, name: &str) -> Result<QuicWire, LinkError> {
        let conn = self.connection(addr, name)?;
        let _in_runtime = self.runtime.enter();
        let (mut send, recv) = self
            .runtime
            .block_on(async { tokio::time::timeout(Duration::from_secs(10), conn.open_bi()).await })
            .map_err(|_| LinkError::Down(format!("{name} at {addr} opened no stream within 10 s")))?
            .map_err(|e| LinkError::Down(format!("stream to {name} at {addr}: {e}")))?;
        self.runtime.block_on(send.write_all(&encode_preamble())).map_err(|e| LinkError::Down(e.to_string()))?;
        // Writes run as a task too: the reader's thread waits only when WRITE_AHEAD frames are
        // queued, not on every acknowledgement that frees send buffer.
        let (wtx, mut wrx) = tokio::sync::mpsc::channel::<Vec<bytes::Bytes>>(WRITE_AHEAD);
        let failed = Arc::new(Mutex::new(None::<String>));
        let failure = failed.clone();
        self.runtime.spawn(async move {
            while let Some(mut parts) = wrx.recv().await {
                if let Err(e) = send.write_all_chunks(&mut parts).await {
                    *failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(format!("send: {e}"));
                    return;
                }
            }
            let _ = send.finish();
        });
        // Bounded: a writer that answers faster than the reader reads is held back by the
        // stream's flow control, not buffered here without limit.
        let (tx, rx) = tokio::sync::mpsc::channel(ANSWERS_AHEAD);
        self.runtime.spawn(async move {
            let mut reader = FrameReader::new(recv);
            if let Err(e) = reader.preamble().await {
                let _ = tx.send(Err(e)).await;
                return;
            }
            loop {
                match reader.next().await {
                    Ok(Some(f)) => {
                        if tx.send(Ok(f)).await.is_err() {
                            return;
                        }
                    }
                    Ok(None) => return,
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                }
            }
        });
        Ok(QuicWire { runtime: self.runtime.clone(), send: Some(wtx), failed, rx, buf: Vec::new(), conn })
    }
}

/// Frames queued ahead of the stream by a reader.
const WRITE_AHEAD: usize = 8;

/// A writer's answers queued for the reader before the stream's flow control holds it back.
const ANSWERS_AHEAD: usize = 64;

/// A reader's stream to a writer.
pub struct QuicWire {
    runtime: tokio::runtime::Handle,
    /// Feeds the task that owns the quinn send stream; dropping it finishes the stream.
    send: Option<tokio::sync::mpsc::Sender<Vec<bytes::Bytes>>>,
    failed: Arc<Mutex<Option<String>>>,
    conn: quinn::Connection,
    rx: tokio::sync::mpsc::Receiver<Result<Frame, ProtocolError>>,
    buf: Vec<u8>,
}

/// A send that makes no progress for this long means the writer is stuck. A dead connection
/// is noticed sooner (QUIC's idle timeout fails the send); a slow link must never count as
/// down, or a reconnect would race the stream still draining.
const SEND_STALL: Duration = Duration::from_secs(600);

impl Wire for QuicWire {
    fn send(&mut self, frame: Frame) -> Result<(), LinkError> {
        // Chunk data is handed to quinn as it is (Bytes takes the Vec without copying).
        let mut parts = match frame {
            Frame::Chunk { id, offset, crc32c, compressed, raw_len, data } => {
                let head = frame::encode_chunk_head(id, offset, crc32c, compressed, raw_len, data.len()).map_err(LinkError::Refused)?;
                vec![bytes::Bytes::copy_from_slice(&head), bytes::Bytes::from(data)]
            }
            other => {
                self.buf.clear();
                frame::encode(&other, &mut self.buf).map_err(LinkError::Refused)?;
                vec![bytes::Bytes::copy_from_slice(&self.buf)]
            }
        };
        let down = |failed: &Mutex<Option<String>>| {
            LinkError::Down(failed.lock().unwrap_or_else(|p| p.into_inner()).clone().unwrap_or_else(|| "the stream closed".into()))
        };
        let Some(send) = self.send.as_ref() else {
            return Err(LinkError::Down("the stream is finished".into()));
        };
        if let Ok(permit) = send.try_reserve() {
            permit.send(std::mem::take(&mut parts));
            return Ok(());
        }
        match self.runtime.block_on(async { tokio::time::timeout(SEND_STALL, send.send(parts)).await }) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(down(&self.failed)),
            Err(_) => Err(LinkError::Down(format!("no progress sending for {} s", SEND_STALL.as_secs()))),
        }
    }

    fn recv(&mut self, wait: Option<Duration>) -> Result<Option<Frame>, LinkError> {
        use tokio::sync::mpsc::error::TryRecvError;
        let closed = || LinkError::Down("the writer closed the stream".into());
        let got = match wait {
            None => match self.rx.try_recv() {
                Ok(f) => f,
                Err(TryRecvError::Empty) => return Ok(None),
                Err(TryRecvError::Disconnected) => return Err(closed()),
            },
            Some(t) => match self.runtime.block_on(async { tokio::time::timeout(t, self.rx.recv()).await }) {
                Ok(Some(f)) => f,
                Err(_) => return Ok(None),
                Ok(None) => return Err(closed()),
            },
        };
        match got {
            Ok(Frame::Error { code, message }) => Err(refused(code, message)),
            Ok(f) => Ok(Some(f)),
            Err(e) if e.code == Code::Io => Err(LinkError::Down(e.detail)),
            Err(e) => Err(LinkError::Refused(e)),
        }
    }
}

impl Drop for QuicWire {
    fn drop(&mut self) {
        // Closing the queue lets the writing task send what is queued and finish the stream.
        self.send.take();
        let p = self.conn.stats().path;
        tracing::debug!(
            mtu = p.current_mtu,
            rtt_ms = p.rtt.as_millis() as u64,
            cwnd = p.cwnd,
            lost_packets = p.lost_packets,
            sent_packets = p.sent_packets,
            congestion_events = p.congestion_events,
            "LinkStreamDone"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gso_batches_are_cut_into_sends_of_whole_segments_under_64_kib() {
        // quinn's ten 9,000-byte datagrams: 90,000 bytes, which one send cannot carry.
        let cuts: Vec<_> = gso_sends(90_000, 9_000).collect();
        assert_eq!(cuts, vec![0..63_000, 63_000..90_000]);
        // A short last datagram stays in the last send.
        assert_eq!(gso_sends(9_000 * 9 + 100, 9_000).collect::<Vec<_>>(), vec![0..63_000, 63_000..81_100]);
        // Ten Ethernet-sized datagrams fit one send; a 64 KB datagram goes alone.
        assert_eq!(gso_sends(14_520, 1_452).collect::<Vec<_>>(), vec![0..14_520]);
        assert_eq!(gso_sends(2 * 65_000, 65_000).collect::<Vec<_>>(), vec![0..65_000, 65_000..130_000]);
        for (len, seg) in [(90_000, 9_000), (130_000, 65_000), (65_507, 65_507), (1, 1_200)] {
            let cuts: Vec<_> = gso_sends(len, seg).collect();
            assert!(cuts.iter().all(|r| r.len() <= MAX_UDP_SEND && (r.start % seg == 0)), "{len}/{seg}: {cuts:?}");
            assert_eq!(cuts.iter().map(|r| r.len()).sum::<usize>(), len);
        }
    }

    #[test]
    fn an_oversized_gso_batch_arrives_as_every_one_of_its_datagrams() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let _guard = rt.enter();
        let receiver = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        big_socket_buffers(&receiver, 4 << 20);
        receiver.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let sender = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let socket = Arc::new(WholeSends { inner: quinn::Runtime::wrap_udp_socket(&quinn::TokioRuntime, sender).unwrap() });
        if quinn::AsyncUdpSocket::max_transmit_segments(&*socket) < 10 {
            return; // no GSO on this kernel: quinn never builds batches
        }
        let mut poller = quinn::AsyncUdpSocket::create_io_poller(socket.clone());
        rt.block_on(std::future::poll_fn(|cx| poller.as_mut().poll_writable(cx))).unwrap();
        // Ten 9,000-byte datagrams, each filled with its index: 90,000 bytes in one batch.
        let contents: Vec<u8> = (0..10u8).flat_map(|i| std::iter::repeat_n(i, 9_000)).collect();
        let transmit =
            quinn::udp::Transmit { destination: receiver.local_addr().unwrap(), ecn: None, contents: &contents, segment_size: Some(9_000), src_ip: None };
        quinn::AsyncUdpSocket::try_send(&*socket, &transmit).unwrap();
        let mut buf = vec![0u8; 65_536];
        let arrived: Vec<(usize, u8)> = (0..10).map(|_| receiver.recv(&mut buf).map(|n| (n, buf[0])).unwrap()).collect();
        assert_eq!(arrived, (0..10u8).map(|i| (9_000, i)).collect::<Vec<_>>());
    }

    #[test]
    fn the_route_tells_how_large_a_datagram_may_grow() {
        // Loopback's MTU is 65,536: a datagram may carry all UDP allows.
        assert_eq!(route_payload("127.0.0.1:9".parse().unwrap()), Some(MAX_UDP_PAYLOAD));
    }
}
