//! The RPC layer against a scripted TCP server: replies matched by xid in any order,
//! multi-fragment replies, a closed socket and a silent server turned into errors.

use std::time::Duration;

use ferry_worker::location::nfs::v4::rpc::{AuthSys, Conn, RpcError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

async fn read_call(s: &mut TcpStream) -> (u32, Vec<u8>) {
    let mut h = [0u8; 4];
    s.read_exact(&mut h).await.unwrap();
    let len = (u32::from_be_bytes(h) & 0x7fff_ffff) as usize;
    let mut rec = vec![0u8; len];
    s.read_exact(&mut rec).await.unwrap();
    let xid = u32::from_be_bytes(rec[..4].try_into().unwrap());
    // the arguments are the last 4 bytes in these tests
    (xid, rec[len - 4..].to_vec())
}

/// An accepted reply with `body`, cut into fragments of `frag` bytes.
fn reply(xid: u32, body: &[u8], frag: usize) -> Vec<u8> {
    let mut r = Vec::new();
    for w in [xid, 1, 0, 0, 0, 0] {
        r.extend_from_slice(&w.to_be_bytes());
    }
    r.extend_from_slice(body);
    let mut out = Vec::new();
    let chunks: Vec<&[u8]> = r.chunks(frag).collect();
    for (i, c) in chunks.iter().enumerate() {
        let last = if i + 1 == chunks.len() { 0x8000_0000 } else { 0 };
        out.extend_from_slice(&(last | c.len() as u32).to_be_bytes());
        out.extend_from_slice(c);
    }
    out
}

#[tokio::test]
async fn replies_in_any_order_and_in_fragments() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        let mut calls = Vec::new();
        for _ in 0..3 {
            calls.push(read_call(&mut s).await);
        }
        // answer in reverse order, the echo of each call's argument, in 5-byte fragments
        for (xid, arg) in calls.into_iter().rev() {
            let body: Vec<u8> = arg.iter().cycle().take(1000).copied().collect();
            s.write_all(&reply(xid, &body, 5)).await.unwrap();
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    });
    let c = std::sync::Arc::new(Conn::connect(addr, AuthSys::new(1, 2), Duration::from_secs(5)).await.unwrap());
    let mut tasks = Vec::new();
    for i in 0..3u32 {
        let c = c.clone();
        tasks.push(tokio::spawn(async move { (i, c.call(100003, 4, 1, &i.to_be_bytes(), Duration::from_secs(5)).await) }));
    }
    for t in tasks {
        let (i, r) = t.await.unwrap();
        let body = r.unwrap();
        assert_eq!(body.len(), 1000);
        assert!(body.chunks(4).all(|c| c == i.to_be_bytes()));
    }
    server.abort();
}

#[tokio::test]
async fn a_closed_socket_is_an_error_not_a_hang() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        read_call(&mut s).await;
        drop(s);
    });
    let c = Conn::connect(addr, AuthSys::new(0, 0), Duration::from_secs(5)).await.unwrap();
    let started = std::time::Instant::now();
    let e = c.call(100003, 4, 1, &[0; 4], Duration::from_secs(30)).await.unwrap_err();
    assert!(matches!(e, RpcError::Transport(_)), "{e:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(c.is_dead());
    let e = c.call(100003, 4, 1, &[0; 4], Duration::from_secs(30)).await.unwrap_err();
    assert!(matches!(e, RpcError::Transport(_)), "{e:?}");
}

#[tokio::test]
async fn a_silent_server_times_out() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (s, _) = l.accept().await.unwrap();
        tokio::time::sleep(Duration::from_secs(30)).await;
        drop(s);
    });
    let c = Conn::connect(addr, AuthSys::new(0, 0), Duration::from_secs(5)).await.unwrap();
    let e = c.call(100003, 4, 1, &[0; 4], Duration::from_millis(300)).await.unwrap_err();
    assert!(matches!(&e, RpcError::Transport(m) if m.contains("no reply")), "{e:?}");
    server.abort();
}

#[tokio::test]
async fn a_refused_credential_is_refused() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        let (xid, _) = read_call(&mut s).await;
        let mut r = Vec::new();
        for w in [0x8000_0014u32, xid, 1, 1, 1, 1] {
            r.extend_from_slice(&w.to_be_bytes());
        }
        s.write_all(&r).await.unwrap();
        tokio::time::sleep(Duration::from_secs(1)).await;
    });
    let c = Conn::connect(addr, AuthSys::new(0, 0), Duration::from_secs(5)).await.unwrap();
    let e = c.call(100003, 4, 1, &[0; 4], Duration::from_secs(5)).await.unwrap_err();
    assert!(matches!(e, RpcError::Refused(_)), "{e:?}");
}
