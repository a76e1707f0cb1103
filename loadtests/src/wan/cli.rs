//! `ferry-load wan ...`: run an emulated link in the foreground, measure one
//! (`selftest`), or clean up namespaces of dead runs.

use super::config::{fmt_duration, fmt_mbit, fmt_rate};
use super::measure::{self, BlastSpec, UDP_OVERHEAD};
use super::{sys, LinkStats, WanConfig, WanLink};
use crate::error::{Error, Result};
use crate::size::parse_size;
use crate::util::say;
use clap::{Args, Subcommand};
use std::sync::mpsc;
use std::time::{Duration, Instant};

#[derive(Args)]
pub struct WanArgs {
    #[command(subcommand)]
    pub cmd: WanCmd,
}

#[derive(Subcommand)]
pub enum WanCmd {
    /// Run an emulated WAN link between two new network namespaces until
    /// SIGINT/SIGTERM (or --duration), then delete them.
    Up(UpArgs),
    /// Set up a link, measure RTT, UDP loss and rate, TCP throughput against
    /// the Mathis bound and the forwarder's own ceiling; print a table; clean
    /// up. Exit code 1 if RTT, loss or rate is more than 10 % off.
    Selftest(SelftestArgs),
    /// Delete namespaces left behind by ferry-load processes that are gone.
    Cleanup,
}

/// Link shape. Each option applies to both directions independently.
#[derive(Args, Clone, Default)]
pub struct LinkArgs {
    /// One-way delay, e.g. 25ms (RTT is twice this) [up: 0, selftest: 25ms].
    #[arg(long, value_parser = super::parse_duration)]
    pub delay: Option<Duration>,
    /// Uniform jitter added to the delay (±), e.g. 2ms; no reordering unless
    /// --reorder.
    #[arg(long, value_parser = super::parse_duration)]
    pub jitter: Option<Duration>,
    /// Random loss per packet and direction, e.g. 0.5% or 0.005 [up: 0,
    /// selftest: 0.5%].
    #[arg(long, value_parser = super::parse_loss)]
    pub loss: Option<f64>,
    /// Bottleneck rate in bits/s, e.g. 1gbit, 50mbit; 0 = unlimited [up: 0,
    /// selftest: 100mbit].
    #[arg(long, value_parser = super::parse_rate)]
    pub rate: Option<u64>,
    /// Drop-tail queue limit in packets waiting for the rate limiter [1000].
    #[arg(long)]
    pub queue: Option<usize>,
    /// Additional queue limit in bytes, e.g. 256KiB (0 = none).
    #[arg(long, value_parser = parse_size)]
    pub queue_bytes: Option<u64>,
    /// Seed of the loss/jitter generators [1].
    #[arg(long)]
    pub seed: Option<u64>,
    /// Allow jitter to reorder packets (as netem does).
    #[arg(long)]
    pub reorder: bool,
    /// MTU of the TUN devices [1500].
    #[arg(long)]
    pub mtu: Option<u32>,
    /// TCP congestion control to set inside both namespaces (e.g. cubic);
    /// default: inherited from the root namespace.
    #[arg(long)]
    pub cc: Option<String>,
}

impl LinkArgs {
    fn config(&self, base: WanConfig) -> WanConfig {
        WanConfig {
            delay: self.delay.unwrap_or(base.delay),
            jitter: self.jitter.unwrap_or(base.jitter),
            loss: self.loss.unwrap_or(base.loss),
            rate_bps: self.rate.unwrap_or(base.rate_bps),
            queue_pkts: self.queue.unwrap_or(base.queue_pkts),
            queue_bytes: self.queue_bytes.unwrap_or(base.queue_bytes),
            seed: self.seed.unwrap_or(base.seed),
            reorder: self.reorder || base.reorder,
            mtu: self.mtu.unwrap_or(base.mtu),
            congestion: self.cc.clone().or(base.congestion),
            name: base.name,
        }
    }
}

#[derive(Args)]
pub struct UpArgs {
    #[command(flatten)]
    pub link: LinkArgs,
    /// Namespaces are NAME-a and NAME-b [default: fwan-a-<pid>-0 / fwan-b-<pid>-0].
    #[arg(long)]
    pub name: Option<String>,
    /// Print forwarder counters every N seconds.
    #[arg(long)]
    pub stats: Option<u64>,
    /// Stop by itself after this long, e.g. 60s.
    #[arg(long, value_parser = super::parse_duration)]
    pub duration: Option<Duration>,
}

#[derive(Args)]
pub struct SelftestArgs {
    /// Link under test [defaults: --delay 25ms --loss 0.5% --rate 100mbit --queue 1000].
    #[command(flatten)]
    pub link: LinkArgs,
    /// Seconds per UDP throughput and ceiling measurement.
    #[arg(long, default_value_t = 3)]
    pub secs: u64,
    /// Seconds per TCP transfer (the first quarter, at most 1 s, is
    /// warm-up and excluded from the steady-state figure).
    #[arg(long, default_value_t = 8)]
    pub tcp_secs: u64,
    /// Datagrams of the loss measurement.
    #[arg(long, default_value_t = 20_000)]
    pub loss_packets: u64,
    /// Congestion controls to run the TCP transfer with (comma-separated;
    /// unavailable ones are skipped; `none` for no TCP measurement).
    #[arg(long, value_delimiter = ',', default_value = "cubic,bbr")]
    pub tcp: Vec<String>,
    /// Skip the forwarder ceiling measurement.
    #[arg(long)]
    pub no_ceiling: bool,
}

pub fn run(a: WanArgs) -> Result<i32> {
    // Before any thread exists: termination signals go to one thread only.
    sys::block_term_signals();
    match a.cmd {
        WanCmd::Up(u) => cmd_up(u),
        WanCmd::Selftest(s) => cmd_selftest(s),
        WanCmd::Cleanup => {
            let removed = sys::sweep_stale();
            if removed.is_empty() {
                say("no stale namespaces");
            }
            for n in removed {
                say(format!("removed {n}"));
            }
            Ok(0)
        }
    }
}

fn check_env() -> Result<()> {
    if !sys::is_root() {
        return Err(Error::run("wan needs root (network namespaces, TUN devices)"));
    }
    if !std::path::Path::new("/dev/net/tun").exists() {
        return Err(Error::run("/dev/net/tun missing (modprobe tun)"));
    }
    if crate::util::find_in_path("ip").is_none() {
        return Err(Error::run("`ip` (iproute2) not found in PATH"));
    }
    Ok(())
}

fn cmd_up(u: UpArgs) -> Result<i32> {
    check_env()?;
    let cfg = u.link.config(WanConfig { name: u.name.clone(), ..WanConfig::default() });
    let (tx, rx) = mpsc::channel::<i32>();
    sys::spawn_signal_thread(move |sig| {
        let _ = tx.send(sig);
    });
    let link = WanLink::start(cfg)?;
    let c = link.config();
    say(format!("WAN link up: {}", c.describe()));
    say(format!("  A: namespace {}  dev {}  {}", link.ns_a(), super::IFNAME, link.addr_a()));
    say(format!("  B: namespace {}  dev {}  {}", link.ns_b(), super::IFNAME, link.addr_b()));
    say(format!("  run programs on either side with `ip netns exec {} CMD ...` (B is {} from A)", link.ns_a(), link.addr_b()));
    say("stop with Ctrl-C / SIGTERM");
    let started = Instant::now();
    let tick = Duration::from_secs(u.stats.unwrap_or(1).max(1));
    let mut last = link.stats();
    let mut last_t = Instant::now();
    let why = loop {
        let mut wait = tick;
        if let Some(d) = u.duration {
            match d.checked_sub(started.elapsed()) {
                Some(left) if !left.is_zero() => wait = wait.min(left),
                _ => break "duration elapsed".to_string(),
            }
        }
        match rx.recv_timeout(wait) {
            Ok(sig) => break format!("signal {sig}"),
            Err(mpsc::RecvTimeoutError::Disconnected) => break "signal thread gone".into(),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
        if !link.is_running() {
            break "forwarder stopped unexpectedly".into();
        }
        if u.stats.is_some() {
            let now = link.stats();
            let dt = last_t.elapsed().as_secs_f64();
            say(stats_line(&now.since(&last), dt));
            last = now;
            last_t = Instant::now();
        }
    };
    let total = link.stats();
    let secs = started.elapsed().as_secs_f64();
    link.close()?;
    say(format!("stopping ({why}); namespaces deleted"));
    say(format!("totals over {secs:.1} s:"));
    say(stats_detail(&total));
    Ok(0)
}

fn stats_line(d: &LinkStats, dt: f64) -> String {
    let r = |x: u64| x as f64 / dt.max(1e-9);
    format!(
        "A->B {:>9.0} pps {:>12}  lost {} qdrop {} queued {} | B->A {:>9.0} pps {:>12}  lost {} qdrop {} queued {}",
        r(d.a_to_b.tx_pkts),
        fmt_mbit(r(d.a_to_b.tx_bytes) * 8.0),
        d.a_to_b.lost,
        d.a_to_b.queue_drops,
        d.a_to_b.queued,
        r(d.b_to_a.tx_pkts),
        fmt_mbit(r(d.b_to_a.tx_bytes) * 8.0),
        d.b_to_a.lost,
        d.b_to_a.queue_drops,
        d.b_to_a.queued,
    )
}

fn stats_detail(s: &LinkStats) -> String {
    let one = |n: &str, d: &super::DirStats| {
        format!(
            "  {n}: read {} pkts / {} B, forwarded {} pkts / {} B, lost {}, queue drops {}, overflow {}, write errors {}",
            d.rx_pkts, d.rx_bytes, d.tx_pkts, d.tx_bytes, d.lost, d.queue_drops, d.overflow_drops, d.write_errors
        )
    };
    format!("{}\n{}", one("A->B", &s.a_to_b), one("B->A", &s.b_to_a))
}

struct Row {
    what: String,
    expected: String,
    measured: String,
    verdict: String,
}

fn within(measured: f64, expected: f64, tol: f64) -> bool {
    measured.is_finite() && (measured - expected).abs() <= tol * expected.abs()
}

fn verdict(ok: bool) -> String {
    if ok { "ok" } else { "OFF" }.into()
}

fn cmd_selftest(s: SelftestArgs) -> Result<i32> {
    check_env()?;
    // On a termination signal: delete our namespaces and exit.
    sys::spawn_signal_thread(|sig| {
        eprintln!("ferry-load wan: signal {sig}, cleaning up");
        sys::cleanup_registered();
        std::process::exit(128 + sig);
    });
    let cfg = s.link.config(WanConfig { delay: Duration::from_millis(25), loss: 0.005, rate_bps: 100_000_000, ..WanConfig::default() });
    cfg.validate().map_err(Error::usage)?;
    let dur = Duration::from_secs(s.secs.max(1));
    let root_cc = sys::sysctl_read(sys::CC_KEY).unwrap_or_else(|_| "?".into());
    let avail = sys::sysctl_read("net.ipv4.tcp_available_congestion_control").unwrap_or_default();
    say(format!("wan selftest on {} (root tcp_congestion_control {root_cc}; available: {avail})", crate::util::kernel().unwrap_or_default()));
    let mut rows: Vec<Row> = Vec::new();
    let mut failed = false;

    if !s.no_ceiling {
        say("measuring forwarder ceiling (no delay, loss or rate limit) ...");
        let link = WanLink::start(WanConfig { mtu: cfg.mtu, ..WanConfig::default() })?;
        let c = measure::ceiling(&link, dur.min(Duration::from_secs(3)))?;
        let st = link.stats();
        drop(link);
        rows.push(Row {
            what: "ceiling: 64 B packets".into(),
            expected: format!("offered {:.0} kpps", c.small_offered_pps / 1e3),
            measured: format!(
                "{:.0} kpps at {:.0} % forwarder CPU (~{:.0} kpps per busy core)",
                c.small_pps / 1e3,
                c.small_cpu * 100.0,
                c.small_pps / c.small_cpu / 1e3
            ),
            verdict: "-".into(),
        });
        rows.push(Row {
            what: format!("ceiling: {} B packets", cfg.mtu),
            expected: format!("offered {:.0} kpps", c.large_offered_pps / 1e3),
            measured: format!(
                "{:.0} kpps = {} at {:.0} % forwarder CPU (~{} per busy core)",
                c.large_pps / 1e3,
                fmt_mbit(c.large_bps),
                c.large_cpu * 100.0,
                fmt_mbit(c.large_bps / c.large_cpu)
            ),
            verdict: "-".into(),
        });
        rows.push(Row { what: "ceiling: TCP (default cc)".into(), expected: "-".into(), measured: fmt_mbit(c.tcp_bps), verdict: "-".into() });
        if st.a_to_b.write_errors + st.b_to_a.write_errors > 0 {
            say(format!("note: {} TUN write errors during the ceiling run", st.a_to_b.write_errors + st.b_to_a.write_errors));
        }
    }

    say(format!("measuring link: {} ...", cfg.describe()));
    let link = WanLink::start(cfg.clone())?;

    // RTT.
    let exp_rtt = 2.0 * cfg.delay.as_secs_f64() * 1e3;
    let to = (cfg.delay + cfg.jitter) * 8 + Duration::from_secs(1);
    let rtt = measure::udp_rtt(&link, 20, Duration::from_millis(50), to)?;
    let ok = exp_rtt < 1.0 || within(rtt.median_ms, exp_rtt, 0.10);
    failed |= !ok;
    rows.push(Row {
        what: format!("RTT, UDP echo ({}/{} answered)", rtt.received, rtt.sent),
        expected: format!("{exp_rtt:.2} ms{}", if cfg.jitter.is_zero() { String::new() } else { format!(" ±{}", fmt_duration(cfg.jitter * 2)) }),
        measured: format!("median {:.2}, min/avg/max {:.2}/{:.2}/{:.2} ms", rtt.median_ms, rtt.min_ms, rtt.avg_ms, rtt.max_ms),
        verdict: verdict(ok),
    });

    // Random loss: small datagrams, paced well below the rate limit so no
    // queue drop mixes in.
    if cfg.loss > 0.0 {
        let pkt_bits = ((100 + UDP_OVERHEAD) * 8) as f64;
        let mut pps: f64 = 10_000.0;
        if cfg.rate_bps > 0 {
            pps = pps.min(cfg.rate_bps as f64 * 0.5 / pkt_bits);
        }
        let n = s.loss_packets.max(100);
        let b = measure::udp_blast(
            &link,
            &BlastSpec {
                payload: 100,
                rate_bps: Some(pps * pkt_bits),
                duration: Duration::from_secs_f64(n as f64 / pps + 1.0).min(Duration::from_secs(60)),
                max_packets: Some(n),
                receive: true,
            },
        )?;
        let ok = within(b.loss, cfg.loss, 0.10);
        failed |= !ok;
        rows.push(Row {
            what: format!("UDP loss ({} datagrams)", b.sent),
            expected: format!("{:.2} %", cfg.loss * 100.0),
            measured: format!("{:.2} % (forwarder dropped {:.2} %)", b.loss * 100.0, b.fwd.a_to_b.lost as f64 * 100.0 / b.fwd.a_to_b.rx_pkts.max(1) as f64),
            verdict: verdict(ok),
        });
    }

    // Rate: offer 20 % more than the limit; the receiver sees the limit
    // (less the random loss, which happens after the bottleneck).
    if cfg.rate_bps > 0 {
        let payload = cfg.mtu as usize - UDP_OVERHEAD;
        let b = measure::udp_blast(&link, &BlastSpec { payload, rate_bps: Some(cfg.rate_bps as f64 * 1.2), duration: dur, max_packets: None, receive: true })?;
        let exp_ip = cfg.rate_bps as f64 * (1.0 - cfg.loss);
        let exp_good = exp_ip * payload as f64 / (payload + UDP_OVERHEAD) as f64;
        let ok = within(b.goodput_bps, exp_good, 0.10);
        failed |= !ok;
        rows.push(Row {
            what: format!("UDP goodput (offered {})", fmt_mbit(b.offered_bps)),
            expected: format!("{} (IP {})", fmt_mbit(exp_good), fmt_mbit(exp_ip)),
            measured: format!("{} (IP {}), queue drops {}", fmt_mbit(b.goodput_bps), fmt_mbit(b.ip_bps), b.fwd.a_to_b.queue_drops),
            verdict: verdict(ok),
        });
    }

    // TCP vs Mathis.
    for cc in &s.tcp {
        if cc.is_empty() || cc == "none" {
            continue;
        }
        if !avail.split_whitespace().any(|a| a == cc) {
            say(format!("skipping TCP with {cc}: not available"));
            continue;
        }
        let t = measure::tcp_throughput(&link, Duration::from_secs(s.tcp_secs.max(2)), Some(cc))?;
        let mss = if t.mss > 0 { t.mss as f64 } else { cfg.mtu as f64 - 52.0 };
        let base_rtt = if rtt.min_ms.is_finite() { rtt.min_ms / 1e3 } else { 2.0 * cfg.delay.as_secs_f64() };
        let bound = measure::mathis_bps(mss, base_rtt, cfg.loss);
        let cap = if cfg.rate_bps > 0 { cfg.rate_bps as f64 } else { f64::INFINITY };
        let retrans = if t.data_segs > 0 { t.retrans_segs as f64 * 100.0 / t.data_segs as f64 } else { f64::NAN };
        rows.push(Row {
            what: format!("TCP {} (steady, after warm-up)", t.cc),
            expected: if bound.is_finite() {
                format!("Mathis {}{}", fmt_mbit(bound), if cap < bound { format!(" (rate {})", fmt_rate(cfg.rate_bps)) } else { String::new() })
            } else {
                format!("rate {}", fmt_rate(cfg.rate_bps))
            },
            measured: format!(
                "{} = {:.2}x bound; whole run {}, srtt {:.1} ms, retrans {:.2} %",
                fmt_mbit(t.steady_bps),
                t.steady_bps / bound.min(cap),
                fmt_mbit(t.bps),
                t.srtt_ms,
                retrans
            ),
            verdict: "-".into(),
        });
    }
    let st = link.stats();
    link.close()?;

    say("");
    print_table(&rows);
    say("");
    say("forwarder counters of the measured link:");
    say(stats_detail(&st));
    say("TCP rows are informative: the Mathis bound models loss-based (Reno/CUBIC-like) TCP; BBR is not loss-based and may exceed it.");
    Ok(if failed { 1 } else { 0 })
}

fn print_table(rows: &[Row]) {
    let head = Row { what: "measurement".into(), expected: "configured / expected".into(), measured: "measured".into(), verdict: "".into() };
    let w1 = rows.iter().chain([&head]).map(|r| r.what.len()).max().unwrap_or(0);
    let w2 = rows.iter().chain([&head]).map(|r| r.expected.len()).max().unwrap_or(0);
    let w3 = rows.iter().chain([&head]).map(|r| r.measured.len()).max().unwrap_or(0);
    for r in std::iter::once(&head).chain(rows) {
        say(format!("{:<w1$}  {:<w2$}  {:<w3$}  {}", r.what, r.expected, r.measured, r.verdict));
    }
}
