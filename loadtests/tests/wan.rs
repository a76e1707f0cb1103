//! The user-space WAN emulator, end to end: real namespaces, TUN devices and
//! sockets. Needs root; without it the tests fail under CI=true and skip
//! otherwise. The tests serialise on a lock so their traffic does not compete
//! for the (2-core) CPU; each stays well under 30 s.

use ferry_loadtests::wan::measure::{self, BlastSpec, UDP_OVERHEAD};
use ferry_loadtests::wan::{sys, WanConfig, WanLink};
use std::sync::Mutex;
use std::time::Duration;

static LOCK: Mutex<()> = Mutex::new(());

/// Whether the environment can run the emulator; panics under CI when not.
fn ready() -> bool {
    let mut missing = Vec::new();
    if !sys::is_root() {
        missing.push("root");
    }
    if !std::path::Path::new("/dev/net/tun").exists() {
        missing.push("/dev/net/tun");
    }
    if ferry_loadtests::util::find_in_path("ip").is_none() {
        missing.push("ip (iproute2)");
    }
    if missing.is_empty() {
        return true;
    }
    let msg = format!("WAN emulator tests need {}", missing.join(", "));
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{msg} (CI=true, not skipping)");
    }
    eprintln!("skipping: {msg}");
    false
}

fn lock() -> std::sync::MutexGuard<'static, ()> {
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

#[test]
fn rtt_is_twice_the_one_way_delay() {
    if !ready() {
        return;
    }
    let _g = lock();
    let link = WanLink::start(WanConfig { delay: Duration::from_millis(25), ..WanConfig::default() }).unwrap();
    let r = measure::udp_rtt(&link, 20, Duration::from_millis(50), Duration::from_secs(1)).unwrap();
    eprintln!(
        "RTT over 25 ms one-way: {}/{} answered, median {:.2} ms, min/avg/max {:.2}/{:.2}/{:.2} ms",
        r.received, r.sent, r.median_ms, r.min_ms, r.avg_ms, r.max_ms
    );
    assert!(r.received >= 18, "too few echoes: {}/{}", r.received, r.sent);
    assert!((45.0..=55.0).contains(&r.median_ms), "median RTT {:.2} ms not within 10 % of 50 ms (samples {:?})", r.median_ms, r.samples_ms);
}

#[test]
fn random_loss_matches_configuration() {
    if !ready() {
        return;
    }
    let _g = lock();
    let link = WanLink::start(WanConfig { loss: 0.05, seed: 7, ..WanConfig::default() }).unwrap();
    // 40 000 draws of a Bernoulli(0.05): sigma = 0.11 percentage points, so
    // the ±0.5 point band is > 4.5 sigma even before counting that the seeded
    // generator makes the outcome reproducible.
    let n = 40_000;
    let b = measure::udp_blast(
        &link,
        &BlastSpec {
            payload: 100,
            rate_bps: Some(10_000.0 * ((100 + UDP_OVERHEAD) * 8) as f64),
            duration: Duration::from_secs(10),
            max_packets: Some(n),
            receive: true,
        },
    )
    .unwrap();
    let fwd = b.fwd.a_to_b;
    eprintln!(
        "sent {} received {} -> loss {:.3} %; forwarder: read {} lost {} ({:.3} %)",
        b.sent,
        b.received,
        b.loss * 100.0,
        fwd.rx_pkts,
        fwd.lost,
        fwd.lost as f64 * 100.0 / fwd.rx_pkts.max(1) as f64
    );
    assert_eq!(b.sent, n, "sender could not send all datagrams");
    assert!((0.045..=0.055).contains(&b.loss), "measured loss {:.3} % not within 4.5..5.5 %", b.loss * 100.0);
}

#[test]
fn rate_limit_caps_udp_goodput() {
    if !ready() {
        return;
    }
    let _g = lock();
    let rate = 50_000_000u64;
    let link = WanLink::start(WanConfig { rate_bps: rate, queue_pkts: 1000, ..WanConfig::default() }).unwrap();
    let b = measure::udp_blast(
        &link,
        &BlastSpec { payload: 1472, rate_bps: Some(rate as f64 * 1.2), duration: Duration::from_secs(3), max_packets: None, receive: true },
    )
    .unwrap();
    eprintln!(
        "offered {:.1} Mbit/s, goodput {:.2} Mbit/s (IP {:.2} Mbit/s) over {:.2} s, queue drops {}",
        b.offered_bps / 1e6,
        b.goodput_bps / 1e6,
        b.ip_bps / 1e6,
        b.recv_secs,
        b.fwd.a_to_b.queue_drops
    );
    assert!((45e6..=55e6).contains(&b.goodput_bps), "goodput {:.2} Mbit/s not within 10 % of 50 Mbit/s", b.goodput_bps / 1e6);
}

fn gone(ns: &str) -> bool {
    !sys::netns_exists(ns) && !sys::list_netns().iter().any(|n| n == ns)
}

#[test]
fn namespaces_are_removed_on_drop_and_on_panic() {
    if !ready() {
        return;
    }
    let _g = lock();
    let link = WanLink::start(WanConfig::default()).unwrap();
    let (a, b) = (link.ns_a().to_owned(), link.ns_b().to_owned());
    assert!(a.contains(&std::process::id().to_string()));
    assert!(sys::netns_exists(&a) && sys::netns_exists(&b));
    assert!(link.is_running());
    drop(link);
    assert!(gone(&a) && gone(&b), "namespaces {a}, {b} left behind");

    // Unwinding from a panic drops the link too.
    let (tx, rx) = std::sync::mpsc::channel();
    let h = std::thread::spawn(move || {
        let link = WanLink::start(WanConfig::default()).unwrap();
        tx.send((link.ns_a().to_owned(), link.ns_b().to_owned())).unwrap();
        panic!("deliberate panic while the link is up");
    });
    assert!(h.join().is_err());
    let (a, b) = rx.recv().unwrap();
    assert!(gone(&a) && gone(&b), "namespaces {a}, {b} left after panic");
}

#[test]
fn congestion_control_helper_restores_root_default() {
    if !ready() {
        return;
    }
    let _g = lock();
    let avail = sys::sysctl_read("net.ipv4.tcp_available_congestion_control").unwrap();
    let root = sys::sysctl_read(sys::CC_KEY).unwrap();
    let Some(other) = ["cubic", "reno", "bbr"].into_iter().find(|c| *c != root && avail.split_whitespace().any(|a| a == *c)) else {
        eprintln!("skipping: no second congestion control available ({avail})");
        return;
    };
    let link = WanLink::start_with_congestion(WanConfig::default(), other).unwrap();
    assert_eq!(sys::sysctl_read(sys::CC_KEY).unwrap(), root, "root not restored");
    assert_eq!(sys::sysctl_read_in(link.ns_a(), sys::CC_KEY).unwrap(), other);
    assert_eq!(sys::sysctl_read_in(link.ns_b(), sys::CC_KEY).unwrap(), other);
    drop(link);
    // A failing start (bad algorithm) restores the root value as well.
    assert!(WanLink::start_with_congestion(WanConfig::default(), "no_such_cc").is_err());
    assert_eq!(sys::sysctl_read(sys::CC_KEY).unwrap(), root);
}

#[test]
fn set_config_applies_while_running() {
    if !ready() {
        return;
    }
    let _g = lock();
    let link = WanLink::start(WanConfig { loss: 1.0, ..WanConfig::default() }).unwrap();
    let spec = BlastSpec {
        payload: 100,
        rate_bps: Some(1000.0 * ((100 + UDP_OVERHEAD) * 8) as f64),
        duration: Duration::from_secs(5),
        max_packets: Some(200),
        receive: true,
    };
    let b = measure::udp_blast(&link, &spec).unwrap();
    assert_eq!((b.sent, b.received), (200, 0), "loss 100 % lets packets through");
    link.set_config(WanConfig::default()).unwrap();
    assert_eq!(link.config().loss, 0.0);
    let b = measure::udp_blast(&link, &spec).unwrap();
    assert_eq!((b.sent, b.received), (200, 200), "loss 0 % drops packets");
    assert!(link.set_config(WanConfig { loss: 2.0, ..WanConfig::default() }).is_err());
}
