//! A TCP proxy in front of a real server that fails on command, for outage tests: while it is
//! down, every connection it carries is cut, and each new connection gets either an HTTP 503
//! (S3's `ServiceUnavailable`) or a reset, in turn. Up again, it forwards as before.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub struct FaultProxy {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    down: AtomicBool,
    stopped: AtomicBool,
    /// Both ends of every forwarded connection, to cut them when the proxy goes down.
    open: Mutex<Vec<TcpStream>>,
    /// Connections refused while down, by how.
    refused_503: AtomicU64,
    refused_reset: AtomicU64,
}

const UNAVAILABLE: &str =
    "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>ServiceUnavailable</Code><Message>Please reduce your request rate.</Message></Error>";

impl FaultProxy {
    /// Listens on a free loopback port and forwards to `upstream`.
    pub fn start(upstream: SocketAddr) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared::default());
        let s = shared.clone();
        std::thread::spawn(move || {
            let mut turn = 0u64;
            for conn in listener.incoming() {
                if s.stopped.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(client) = conn else { continue };
                if s.down.load(Ordering::SeqCst) {
                    turn += 1;
                    refuse(&s, client, turn.is_multiple_of(2));
                    continue;
                }
                let Ok(server) = TcpStream::connect(upstream) else {
                    reset(client);
                    continue;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                {
                    let mut open = s.open.lock().unwrap();
                    open.retain(|c| c.peer_addr().is_ok());
                    open.push(client.try_clone().unwrap());
                    open.push(server.try_clone().unwrap());
                }
                pump(client.try_clone().unwrap(), server.try_clone().unwrap());
                pump(server, client);
            }
        });
        FaultProxy { addr, shared }
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Cuts every open connection and refuses new ones until [`FaultProxy::up`].
    pub fn down(&self) {
        self.shared.down.store(true, Ordering::SeqCst);
        for c in self.shared.open.lock().unwrap().drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
    }

    pub fn up(&self) {
        self.shared.down.store(false, Ordering::SeqCst);
    }

    /// Connections refused while down: (answered 503, reset).
    pub fn refused(&self) -> (u64, u64) {
        (self.shared.refused_503.load(Ordering::SeqCst), self.shared.refused_reset.load(Ordering::SeqCst))
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.shared.stopped.store(true, Ordering::SeqCst);
        self.down();
        // Wakes the accept loop so that it sees the stop.
        let _ = TcpStream::connect(self.addr);
    }
}

fn pump(mut from: TcpStream, mut to: TcpStream) {
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut from, &mut to);
        let _ = to.shutdown(Shutdown::Write);
    });
}

/// A connection made while down: a 503 once the request has started to arrive, or a reset.
fn refuse(s: &Shared, mut client: TcpStream, answer_503: bool) {
    if !answer_503 {
        s.refused_reset.fetch_add(1, Ordering::SeqCst);
        reset(client);
        return;
    }
    s.refused_503.fetch_add(1, Ordering::SeqCst);
    let _ = client.set_read_timeout(Some(Duration::from_millis(500)));
    let mut head = [0u8; 4096];
    let _ = client.read(&mut head);
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{UNAVAILABLE}",
        UNAVAILABLE.len()
    );
    let _ = client.write_all(answer.as_bytes());
    let _ = client.shutdown(Shutdown::Both);
}

/// Closes with an RST instead of a FIN (SO_LINGER with a zero timeout), as a crashed server
/// or a middlebox does.
fn reset(client: TcpStream) {
    let linger = libc::linger { l_onoff: 1, l_linger: 0 };
    // SAFETY: setsockopt on a socket this function owns, with a correctly sized value.
    unsafe {
        libc::setsockopt(
            client.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &linger as *const libc::linger as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
    drop(client);
}
