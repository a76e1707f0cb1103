//! The server stops answering (SIGSTOP) for 5 s in the middle of writes and creates: every
//! call completes, and non-idempotent ones exactly once (the reply cache answers the resend).

use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use crate::common::*;
use ferry_worker::location::nfs::v4::client::Client;
use ferry_worker::location::nfs::v4::proto::Stable;

/// The two tests disturb the server: one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_complete_across_a_5_second_stall() {
    let _one = SERIAL.lock().await;
    let srv = private_server();
    let mut cfg = config_at(&srv);
    cfg.timeout = Duration::from_secs(1);
    cfg.outage = Duration::from_secs(60);
    cfg.nconnect = 2;
    let c = Client::connect(cfg).await.unwrap();
    let (dir, disk) = scratch_in(&c, &srv, "outage").await;
    let f = c.create_file(&dir, b"data", 0o644, true).await.unwrap();
    let piece = vec![7u8; 64 << 10];
    for i in 0..4u64 {
        c.write(&f.fh, &f.stateid, i * piece.len() as u64, &piece, Stable::Unstable).await.unwrap();
    }
    signal(&srv, "-STOP");
    let pid = srv.pid().expect("the server runs");
    let resume = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(5)).await;
        signal_pid(pid, "-CONT");
    });
    // writes, a guarded create, a mkdir and a rename, all sent while the server is stopped
    let mut tasks = Vec::new();
    for i in 4..12u64 {
        let (c, f, piece) = (c.clone(), f.clone(), piece.clone());
        tasks.push(tokio::spawn(async move { c.write(&f.fh, &f.stateid, i * piece.len() as u64, &piece, Stable::Unstable).await.map(|_| ()) }));
    }
    let (c2, d2) = (c.clone(), dir.clone());
    tasks.push(tokio::spawn(async move { c2.create_file(&d2, b"new", 0o600, true).await.map(|_| ()) }));
    let (c2, d2) = (c.clone(), dir.clone());
    tasks.push(tokio::spawn(async move { c2.mkdir(&d2, b"sub", 0o755).await.map(|_| ()) }));
    let started = std::time::Instant::now();
    for t in tasks {
        t.await.unwrap().expect("completes after the stall, exactly once (no EXIST)");
    }
    resume.await.unwrap();
    assert!(started.elapsed() >= Duration::from_secs(4), "the calls waited for the server");
    assert!(c.stats().resends.load(Relaxed) > 0, "requests were resent");
    c.commit(&f.fh).await.unwrap();
    c.close(&f).await.unwrap();
    let on_disk = std::fs::read(disk.join("data")).unwrap();
    assert_eq!(on_disk.len(), 12 * piece.len());
    assert!(on_disk.iter().all(|&b| b == 7));
    assert!(disk.join("new").is_file() && disk.join("sub").is_dir());
    eprintln!("stats after the stall: {:?}", c.stats());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_restart_gets_a_new_client_id_and_session() {
    let _one = SERIAL.lock().await;
    let srv = private_server();
    let mut cfg = config_at(&srv);
    cfg.timeout = Duration::from_secs(2);
    cfg.outage = Duration::from_secs(60);
    let c = Client::connect(cfg).await.unwrap();
    let (dir, _) = scratch_in(&c, &srv, "restart").await;
    let f = c.create_file(&dir, b"f", 0o644, true).await.unwrap();
    tokio::task::block_in_place(|| {
        srv.stop();
        srv.start();
    });
    // the handles survive (VFS handles), the session and client id do not
    let a = c.getattr(&dir).await.unwrap();
    assert_eq!(a.kind, ferry_worker::location::nfs::v4::attr::Kind::Dir);
    c.mkdir(&dir, b"after", 0o755).await.unwrap();
    assert!(c.stats().sessions.load(Relaxed) >= 2, "{:?}", c.stats());
    assert!(c.stats().client_ids.load(Relaxed) >= 2, "{:?}", c.stats());
    // the open state is gone with the server's memory
    let e = c.write(&f.fh, &f.stateid, 0, b"x", Stable::FileSync).await.unwrap_err();
    eprintln!("WRITE with an open stateid from before the restart: {e}");
    let f = c.open_fh(&f.fh, true).await.unwrap();
    c.write(&f.fh, &f.stateid, 0, b"x", Stable::FileSync).await.unwrap();
    c.close(&f).await.unwrap();
    eprintln!("stats after the restart: {:?}", c.stats());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_call_does_not_poison_its_slot() {
    let _one = SERIAL.lock().await;
    let srv = private_server();
    let mut cfg = config_at(&srv);
    cfg.slots = 2;
    cfg.timeout = Duration::from_secs(1);
    let c = Client::connect(cfg).await.unwrap();
    let (dir, disk) = scratch_in(&c, &srv, "abandon").await;
    signal(&srv, "-STOP");
    let (c2, d2) = (c.clone(), dir.clone());
    let call = tokio::spawn(async move { c2.mkdir(&d2, b"abandoned", 0o755).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    call.abort();
    let _ = call.await;
    signal(&srv, "-CONT");
    // every later call gets its own reply, not the cached one of the abandoned request
    for i in 0..10 {
        let name = format!("d{i}");
        let fh = c.mkdir(&dir, name.as_bytes(), 0o700).await.unwrap();
        assert_eq!(c.getattr(&fh).await.unwrap().mode, 0o700);
        assert!(disk.join(&name).is_dir());
        assert_eq!(c.getattr(&dir).await.unwrap().kind, ferry_worker::location::nfs::v4::attr::Kind::Dir);
    }
}

/// Slow (lease + 15 s): run with `cargo test -- --ignored`.
#[tokio::test]
#[ignore]
async fn the_lease_is_renewed_while_idle() {
    let c = Client::connect(config()).await.unwrap();
    let (dir, _) = scratch(&c, "lease").await;
    let f = c.create_file(&dir, b"f", 0o644, true).await.unwrap();
    tokio::time::sleep(c.lease() + Duration::from_secs(15)).await;
    // the session and the open survived the idle time
    c.write(&f.fh, &f.stateid, 0, b"still open", Stable::FileSync).await.unwrap();
    c.close(&f).await.unwrap();
    assert_eq!(c.stats().sessions.load(Relaxed), 1);
    assert_eq!(c.stats().client_ids.load(Relaxed), 1);
}
