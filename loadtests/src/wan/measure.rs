//! Measurements over a [`WanLink`]: UDP echo RTT, paced or unpaced UDP blasts
//! (loss, goodput, forwarder ceiling) and TCP bulk throughput (compared with
//! the Mathis et al. bound). All sockets are plain std sockets created by a
//! thread that joined the namespace, so no helper processes are needed, and
//! every loop has a deadline.

use super::{LinkStats, WanLink};
use crate::error::{Error, Result};
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// IPv4 + UDP header bytes: a UDP payload of `n` is an IP packet of `n + 28`.
pub const UDP_OVERHEAD: usize = 28;

fn io_err(what: &str) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |e| Error::run(format!("{what}: {e}"))
}

fn setsockopt_int(fd: i32, level: i32, opt: i32, v: i32) -> bool {
    // SAFETY: passes a valid c_int of the declared size.
    unsafe { libc::setsockopt(fd, level, opt, &v as *const i32 as *const libc::c_void, std::mem::size_of::<i32>() as libc::socklen_t) == 0 }
}

/// Large socket buffers (root may exceed rmem_max with the FORCE variants).
fn big_buffers(fd: i32, bytes: i32) {
    if !setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, bytes) {
        setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_RCVBUF, bytes);
    }
    if !setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, bytes) {
        setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_SNDBUF, bytes);
    }
}

// ---------------------------------------------------------------------------
// RTT

#[derive(Clone, Debug)]
pub struct RttStats {
    pub sent: usize,
    pub received: usize,
    /// Round-trip times of the answered probes, in send order, milliseconds.
    pub samples_ms: Vec<f64>,
    pub min_ms: f64,
    pub avg_ms: f64,
    pub median_ms: f64,
    pub max_ms: f64,
    /// Mean absolute deviation from the average (as ping's mdev, roughly).
    pub mdev_ms: f64,
}

/// Ping-like UDP echo from A to B: `count` probes, one every `interval`, each
/// waited for up to `timeout` (late answers count as lost).
pub fn udp_rtt(link: &WanLink, count: usize, interval: Duration, timeout: Duration) -> Result<RttStats> {
    let b = link.addr_b();
    let server = link.in_b(|| UdpSocket::bind(SocketAddrV4::new(b, 0)))?.map_err(io_err("bind echo server"))?;
    let server_addr = server.local_addr().map_err(io_err("echo addr"))?;
    let a = link.addr_a();
    let client = link.in_a(|| UdpSocket::bind(SocketAddrV4::new(a, 0)))?.map_err(io_err("bind echo client"))?;
    client.connect(server_addr).map_err(io_err("connect echo client"))?;
    server.set_read_timeout(Some(Duration::from_millis(50))).map_err(io_err("timeout"))?;
    let stop = AtomicBool::new(false);
    let mut samples = Vec::with_capacity(count);
    std::thread::scope(|s| -> Result<()> {
        s.spawn(|| {
            let mut buf = [0u8; 2048];
            while !stop.load(Ordering::Relaxed) {
                if let Ok((n, from)) = server.recv_from(&mut buf) {
                    let _ = server.send_to(&buf[..n], from);
                }
            }
        });
        let res = (|| -> Result<()> {
            let t0 = Instant::now();
            let mut buf = [0u8; 64];
            for seq in 0..count as u64 {
                let slot = t0 + interval * seq as u32;
                if let Some(w) = slot.checked_duration_since(Instant::now()) {
                    std::thread::sleep(w);
                }
                let mut msg = [0u8; 56];
                msg[..8].copy_from_slice(&seq.to_le_bytes());
                let sent = Instant::now();
                client.send(&msg).map_err(io_err("send probe"))?;
                let deadline = sent + timeout;
                loop {
                    let left = match deadline.checked_duration_since(Instant::now()) {
                        Some(l) if !l.is_zero() => l,
                        _ => break,
                    };
                    client.set_read_timeout(Some(left)).map_err(io_err("timeout"))?;
                    match client.recv(&mut buf) {
                        Ok(n) if n >= 8 && buf[..8] == seq.to_le_bytes() => {
                            samples.push(sent.elapsed().as_secs_f64() * 1e3);
                            break;
                        }
                        Ok(_) => continue, // a late answer to an earlier probe
                        Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::TimedOut => break,
                        Err(e) => return Err(Error::run(format!("recv probe: {e}"))),
                    }
                }
            }
            Ok(())
        })();
        stop.store(true, Ordering::Relaxed);
        res
    })?;
    Ok(rtt_summary(count, samples))
}

fn rtt_summary(sent: usize, samples: Vec<f64>) -> RttStats {
    let n = samples.len();
    if n == 0 {
        return RttStats {
            sent,
            received: 0,
            samples_ms: samples,
            min_ms: f64::NAN,
            avg_ms: f64::NAN,
            median_ms: f64::NAN,
            max_ms: f64::NAN,
            mdev_ms: f64::NAN,
        };
    }
    let avg = samples.iter().sum::<f64>() / n as f64;
    let mdev = samples.iter().map(|x| (x - avg).abs()).sum::<f64>() / n as f64;
    RttStats {
        sent,
        received: n,
        min_ms: samples.iter().copied().fold(f64::INFINITY, f64::min),
        max_ms: samples.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        median_ms: crate::stats::median(&samples).unwrap_or(f64::NAN),
        avg_ms: avg,
        mdev_ms: mdev,
        samples_ms: samples,
    }
}

// ---------------------------------------------------------------------------
// UDP blast

#[derive(Clone, Debug)]
pub struct BlastSpec {
    /// UDP payload bytes per datagram (at least 8; IP packet = payload + 28).
    pub payload: usize,
    /// Offered load in bits/s of IP packets; `None` sends as fast as
    /// possible.
    pub rate_bps: Option<f64>,
    /// How long to send.
    pub duration: Duration,
    /// Stop after this many datagrams even if `duration` has not elapsed.
    pub max_packets: Option<u64>,
    /// Read and count datagrams in B. Without it, B's socket is bound but
    /// never read (the kernel drops what does not fit in its buffer), which
    /// keeps the receiver's CPU out of a ceiling measurement.
    pub receive: bool,
}

impl Default for BlastSpec {
    fn default() -> Self {
        BlastSpec { payload: 1472, rate_bps: None, duration: Duration::from_secs(2), max_packets: None, receive: true }
    }
}

#[derive(Clone, Debug)]
pub struct BlastResult {
    pub payload: usize,
    /// Datagrams handed to the kernel successfully / refused (ENOBUFS...).
    pub sent: u64,
    pub send_errors: u64,
    pub send_secs: f64,
    /// Datagrams received in B (0 unless `receive`).
    pub received: u64,
    /// 1 - received / sent (NaN unless `receive`).
    pub loss: f64,
    /// First-to-last arrival in B.
    pub recv_secs: f64,
    /// UDP payload bits/s at the receiver over first-to-last arrival.
    pub goodput_bps: f64,
    /// Same, counting IP packets (payload + 28 bytes).
    pub ip_bps: f64,
    /// Offered IP-level load actually achieved by the sender.
    pub offered_bps: f64,
    /// Forwarder counters accumulated during the blast.
    pub fwd: LinkStats,
    /// Forwarder A->B packets written per second over the sending period.
    pub fwd_pps: f64,
    /// Forwarder A->B IP bits written per second over the sending period.
    pub fwd_bps: f64,
    /// Forwarder thread CPU utilisation over the same period (1.0 = one
    /// core fully busy); NaN if unknown.
    pub fwd_cpu: f64,
}

/// Send UDP datagrams from A to B and measure what arrives.
pub fn udp_blast(link: &WanLink, spec: &BlastSpec) -> Result<BlastResult> {
    if spec.payload < 8 || spec.payload + UDP_OVERHEAD > link.config().mtu as usize {
        return Err(Error::usage(format!("payload {} does not fit the MTU", spec.payload)));
    }
    let b = link.addr_b();
    let a = link.addr_a();
    let rx = link.in_b(|| UdpSocket::bind(SocketAddrV4::new(b, 0)))?.map_err(io_err("bind blast receiver"))?;
    big_buffers(rx.as_raw_fd(), 32 << 20);
    let rx_addr = rx.local_addr().map_err(io_err("receiver addr"))?;
    let tx = link.in_a(|| UdpSocket::bind(SocketAddrV4::new(a, 0)))?.map_err(io_err("bind blast sender"))?;
    big_buffers(tx.as_raw_fd(), 4 << 20);
    tx.connect(rx_addr).map_err(io_err("connect sender"))?;
    rx.set_read_timeout(Some(Duration::from_millis(20))).map_err(io_err("timeout"))?;

    let cfg = link.config();
    // Longest time a packet can still be on its way after the last send:
    // delay line + jitter + a full queue at the bottleneck + slack.
    let drain = cfg.delay
        + cfg.jitter
        + if cfg.rate_bps > 0 {
            Duration::from_secs_f64(cfg.queue_pkts as f64 * (spec.payload + UDP_OVERHEAD) as f64 * 8.0 / cfg.rate_bps as f64)
        } else {
            Duration::ZERO
        }
        + Duration::from_millis(300);

    let sender_done = AtomicBool::new(false);
    let done_at_ns = AtomicU64::new(0);
    let before = link.stats();
    let t_base = Instant::now();
    let (sent, send_errors, send_secs, mid) = std::thread::scope(|s| {
        let rxh = spec.receive.then(|| {
            s.spawn(|| {
                let mut buf = vec![0u8; 65536];
                let (mut n, mut bytes) = (0u64, 0u64);
                let (mut first, mut last) = (None::<Instant>, None::<Instant>);
                let mut first_len = 0usize;
                loop {
                    match rx.recv(&mut buf) {
                        Ok(len) => {
                            let now = Instant::now();
                            if first.is_none() {
                                first = Some(now);
                                first_len = len;
                            }
                            last = Some(now);
                            n += 1;
                            bytes += len as u64;
                        }
                        Err(_) => {
                            if sender_done.load(Ordering::Acquire) {
                                let done = t_base + Duration::from_nanos(done_at_ns.load(Ordering::Acquire));
                                if Instant::now() > done + drain {
                                    break;
                                }
                            }
                        }
                    }
                }
                (n, bytes, first, last, first_len)
            })
        });
        let mut msg = vec![0u8; spec.payload];
        let pkt_bits = ((spec.payload + UDP_OVERHEAD) * 8) as f64;
        let interval = spec.rate_bps.map(|r| pkt_bits / r); // seconds per packet
        let t0 = Instant::now();
        let end = t0 + spec.duration;
        let max = spec.max_packets.unwrap_or(u64::MAX);
        let (mut sent, mut errs, mut seq) = (0u64, 0u64, 0u64);
        // Forwarder counters half-way through the warm part of the send
        // period, for the ceiling (skips start-up effects).
        let mut mid: Option<(Instant, LinkStats, Option<f64>)> = None;
        'outer: loop {
            let now = Instant::now();
            if now >= end || seq >= max {
                break;
            }
            if mid.is_none() && now >= t0 + spec.duration / 5 {
                mid = Some((now, link.stats(), link.forwarder_cpu_secs()));
            }
            let due = match interval {
                Some(iv) => {
                    let d = ((now - t0).as_secs_f64() / iv) as u64 + 1;
                    if d <= seq {
                        let next = t0 + Duration::from_secs_f64(seq as f64 * iv);
                        if let Some(w) = next.checked_duration_since(Instant::now()) {
                            std::thread::sleep(w.min(Duration::from_millis(2)));
                        }
                        continue;
                    }
                    d.min(seq + 256)
                }
                None => seq + 64,
            };
            while seq < due {
                if seq >= max {
                    break 'outer;
                }
                msg[..8].copy_from_slice(&seq.to_le_bytes());
                seq += 1;
                match tx.send(&msg) {
                    Ok(_) => sent += 1,
                    Err(_) => errs += 1,
                }
            }
        }
        let send_secs = t0.elapsed().as_secs_f64();
        let end_stats = (Instant::now(), link.stats(), link.forwarder_cpu_secs());
        done_at_ns.store(t_base.elapsed().as_nanos() as u64, Ordering::Release);
        sender_done.store(true, Ordering::Release);
        let mid = mid.map(|(t, st, c)| (t, st, c, end_stats));
        let r = rxh.map(|h| h.join().expect("receiver thread"));
        (sent, errs, send_secs, (mid, r))
    });
    let (mid, r) = mid;
    let after = link.stats();
    let (fwd_pps, fwd_bps, fwd_cpu) = match mid {
        Some((t1, s1, c1, (t2, s2, c2))) => {
            let dt = (t2 - t1).as_secs_f64().max(1e-9);
            let d = s2.since(&s1).a_to_b;
            let cpu = match (c1, c2) {
                (Some(a), Some(b)) => (b - a) / dt,
                _ => f64::NAN,
            };
            (d.tx_pkts as f64 / dt, d.tx_bytes as f64 * 8.0 / dt, cpu)
        }
        None => (f64::NAN, f64::NAN, f64::NAN),
    };
    let (received, bytes, first, last, first_len) = r.unwrap_or((0, 0, None, None, 0));
    let recv_secs = match (first, last) {
        (Some(f), Some(l)) => (l - f).as_secs_f64(),
        _ => 0.0,
    };
    let (goodput, ip_bps) = if received >= 2 && recv_secs > 0.0 {
        let b = (bytes - first_len as u64) as f64 * 8.0;
        let ipb = b + ((received - 1) * UDP_OVERHEAD as u64) as f64 * 8.0;
        (b / recv_secs, ipb / recv_secs)
    } else {
        (0.0, 0.0)
    };
    Ok(BlastResult {
        payload: spec.payload,
        sent,
        send_errors,
        send_secs,
        received,
        loss: if spec.receive && sent > 0 { 1.0 - received as f64 / sent as f64 } else { f64::NAN },
        recv_secs,
        goodput_bps: goodput,
        ip_bps,
        offered_bps: sent as f64 * ((spec.payload + UDP_OVERHEAD) * 8) as f64 / send_secs.max(1e-9),
        fwd: after.since(&before),
        fwd_pps,
        fwd_bps,
        fwd_cpu,
    })
}

// ---------------------------------------------------------------------------
// TCP

#[derive(Clone, Debug)]
pub struct TcpResult {
    /// Congestion control of the sender.
    pub cc: String,
    pub bytes: u64,
    pub secs: f64,
    /// Bytes/s*8 over the whole window (including slow start).
    pub bps: f64,
    /// Over the window after the first quarter (at most 1 s) — closer to the
    /// steady state the Mathis bound describes.
    pub steady_bps: f64,
    /// Sender's MSS and smoothed RTT (from TCP_INFO at the end).
    pub mss: u32,
    pub srtt_ms: f64,
    /// Retransmitted / sent data segments (TCP_INFO).
    pub retrans_segs: u64,
    pub data_segs: u64,
}

fn tcp_info(fd: i32) -> Option<libc::tcp_info> {
    // SAFETY: tcp_info is plain old data; the kernel fills at most `len`.
    unsafe {
        let mut ti: libc::tcp_info = std::mem::zeroed();
        let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
        (libc::getsockopt(fd, libc::IPPROTO_TCP, libc::TCP_INFO, &mut ti as *mut _ as *mut libc::c_void, &mut len) == 0).then_some(ti)
    }
}

fn congestion_of(fd: i32) -> String {
    let mut buf = [0u8; 32];
    let mut len = buf.len() as libc::socklen_t;
    // SAFETY: buf is writable for len bytes.
    let rc = unsafe { libc::getsockopt(fd, libc::IPPROTO_TCP, libc::TCP_CONGESTION, buf.as_mut_ptr() as *mut libc::c_void, &mut len) };
    if rc != 0 {
        return "?".into();
    }
    let s = &buf[..len as usize];
    let end = s.iter().position(|&b| b == 0).unwrap_or(s.len());
    String::from_utf8_lossy(&s[..end]).into_owned()
}

fn set_congestion(fd: i32, cc: &str) -> Result<()> {
    // SAFETY: passes cc's bytes with their length.
    let rc = unsafe { libc::setsockopt(fd, libc::IPPROTO_TCP, libc::TCP_CONGESTION, cc.as_ptr() as *const libc::c_void, cc.len() as libc::socklen_t) };
    if rc != 0 {
        return Err(Error::run(format!("set TCP congestion control {cc}: {}", std::io::Error::last_os_error())));
    }
    Ok(())
}

/// Bulk TCP transfer A -> B for `duration`; `cc` overrides the sender's
/// congestion control for this socket (TCP_CONGESTION), otherwise the
/// namespace default applies.
pub fn tcp_throughput(link: &WanLink, duration: Duration, cc: Option<&str>) -> Result<TcpResult> {
    let b = link.addr_b();
    let listener = link.in_b(|| TcpListener::bind(SocketAddrV4::new(b, 0)))?.map_err(io_err("bind tcp listener"))?;
    let addr: SocketAddr = listener.local_addr().map_err(io_err("listener addr"))?;
    let conn_timeout = Duration::from_secs(3) + link.config().delay * 8;
    let client = link.in_a(|| TcpStream::connect_timeout(&addr, conn_timeout))?.map_err(io_err("tcp connect A -> B"))?;
    listener.set_nonblocking(true).map_err(io_err("nonblocking"))?;
    let accept_deadline = Instant::now() + conn_timeout;
    let mut server = loop {
        match listener.accept() {
            Ok((s, _)) => break s,
            Err(e) if e.kind() == ErrorKind::WouldBlock && Instant::now() < accept_deadline => std::thread::sleep(Duration::from_millis(2)),
            Err(e) => return Err(Error::run(format!("tcp accept: {e}"))),
        }
    };
    server.set_nonblocking(false).map_err(io_err("blocking"))?;
    if let Some(cc) = cc {
        set_congestion(client.as_raw_fd(), cc)?;
    }
    let used_cc = congestion_of(client.as_raw_fd());
    server.set_read_timeout(Some(Duration::from_millis(100))).map_err(io_err("timeout"))?;
    client.set_write_timeout(Some(Duration::from_millis(100))).map_err(io_err("timeout"))?;
    let stop = AtomicBool::new(false);
    let warm = (duration / 4).min(Duration::from_secs(1));
    let t0 = Instant::now();
    let end = t0 + duration;
    let (bytes, warm_bytes, info) = std::thread::scope(|s| {
        let client = &client;
        let stop = &stop;
        s.spawn(move || {
            let buf = vec![0x5au8; 256 << 10];
            let mut c = client;
            while !stop.load(Ordering::Relaxed) {
                match c.write(&buf) {
                    Ok(_) => {}
                    Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::TimedOut => {}
                    Err(_) => break,
                }
            }
        });
        let mut buf = vec![0u8; 256 << 10];
        let (mut total, mut at_warm) = (0u64, None::<u64>);
        while Instant::now() < end {
            match server.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => total += n as u64,
                Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::TimedOut => {}
                Err(_) => break,
            }
            if at_warm.is_none() && Instant::now() >= t0 + warm {
                at_warm = Some(total);
            }
        }
        let info = tcp_info(client.as_raw_fd());
        stop.store(true, Ordering::Relaxed);
        let _ = server.shutdown(std::net::Shutdown::Both);
        let _ = client.shutdown(std::net::Shutdown::Both);
        (total, at_warm.unwrap_or(0), info)
    });
    let secs = t0.elapsed().as_secs_f64().min(duration.as_secs_f64()).max(1e-9);
    let steady_secs = (secs - warm.as_secs_f64()).max(1e-9);
    let (mss, srtt_ms, retrans, segs) = match info {
        Some(ti) => (ti.tcpi_snd_mss, ti.tcpi_rtt as f64 / 1e3, ti.tcpi_total_retrans as u64, ti.tcpi_data_segs_out as u64),
        None => (0, f64::NAN, 0, 0),
    };
    Ok(TcpResult {
        cc: used_cc,
        bytes,
        secs,
        bps: bytes as f64 * 8.0 / secs,
        steady_bps: (bytes - warm_bytes) as f64 * 8.0 / steady_secs,
        mss,
        srtt_ms,
        retrans_segs: retrans,
        data_segs: segs,
    })
}

/// Mathis et al. (1997) steady-state bound for loss-based TCP:
/// `MSS / RTT * C / sqrt(p)` with C = sqrt(3/2) ≈ 1.22, in bits/s.
pub fn mathis_bps(mss_bytes: f64, rtt_s: f64, p: f64) -> f64 {
    if p <= 0.0 || rtt_s <= 0.0 {
        return f64::INFINITY;
    }
    mss_bytes * 8.0 / rtt_s * 1.22 / p.sqrt()
}

// ---------------------------------------------------------------------------
// Ceiling

#[derive(Clone, Debug)]
pub struct Ceiling {
    /// Small packets (64-byte IP): packets/s written by the forwarder.
    pub small_pps: f64,
    /// Offered small-packet rate (what the sender managed).
    pub small_offered_pps: f64,
    /// Forwarder CPU utilisation during the small / large runs (1.0 = one core).
    pub small_cpu: f64,
    pub large_cpu: f64,
    /// Full-size packets (MTU): forwarder pps and IP-level bits/s.
    pub large_pps: f64,
    pub large_bps: f64,
    pub large_offered_pps: f64,
    /// TCP bulk throughput over the unimpaired link.
    pub tcp_bps: f64,
}

/// The forwarder's own ceiling: unpaced UDP blasts (receiver not reading, so
/// the forwarder thread, which also carries B's receive path, is the limit)
/// on a link with no delay, loss or rate limit, plus one TCP transfer.
pub fn ceiling(link: &WanLink, duration: Duration) -> Result<Ceiling> {
    let mtu = link.config().mtu as usize;
    let small = udp_blast(link, &BlastSpec { payload: 64 - UDP_OVERHEAD, rate_bps: None, duration, max_packets: None, receive: false })?;
    let large = udp_blast(link, &BlastSpec { payload: mtu - UDP_OVERHEAD, rate_bps: None, duration, max_packets: None, receive: false })?;
    let tcp = tcp_throughput(link, duration, None)?;
    Ok(Ceiling {
        small_pps: small.fwd_pps,
        small_offered_pps: small.sent as f64 / small.send_secs,
        small_cpu: small.fwd_cpu,
        large_cpu: large.fwd_cpu,
        large_pps: large.fwd_pps,
        large_bps: large.fwd_bps,
        large_offered_pps: large.sent as f64 / large.send_secs,
        tcp_bps: tcp.bps,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mathis() {
        // 1448-byte MSS, 50 ms, 0.5 %: about 4.0 Mbit/s.
        let b = mathis_bps(1448.0, 0.05, 0.005);
        assert!((b - 3.997e6).abs() < 0.01e6, "{b}");
        assert!(mathis_bps(1448.0, 0.05, 0.0).is_infinite());
    }

    #[test]
    fn summary() {
        let s = rtt_summary(4, vec![50.0, 52.0, 48.0]);
        assert_eq!(s.received, 3);
        assert_eq!(s.median_ms, 50.0);
        assert_eq!(s.min_ms, 48.0);
        assert_eq!(s.max_ms, 52.0);
    }
}
