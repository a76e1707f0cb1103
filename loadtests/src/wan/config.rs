//! Link parameters and their command-line spellings (`25ms`, `0.5%`,
//! `50mbit`), modelled on the units of `tc`/netem so the numbers in an issue
//! can be pasted unchanged.

use std::time::Duration;

/// Everything that shapes one emulated link. The same parameters apply to each
/// direction independently (as two netem qdiscs, one on each side, would):
/// a 25 ms `delay` therefore means a 50 ms round trip.
#[derive(Clone, Debug, PartialEq)]
pub struct WanConfig {
    /// One-way propagation delay added to every packet.
    pub delay: Duration,
    /// Uniform jitter: each packet's delay is `delay ± jitter` (never below
    /// zero). Packets are not reordered unless `reorder` is set: a packet is
    /// never released before the one in front of it.
    pub jitter: Duration,
    /// Random loss probability per packet, 0.0..=1.0 (0.005 = 0.5 %). Applied
    /// after the rate limiter ("lost on the wire"), so lost packets still use
    /// bottleneck capacity.
    pub loss: f64,
    /// Bottleneck rate in bits per second of IP packets; 0 = unlimited.
    pub rate_bps: u64,
    /// Drop-tail limit: a packet arriving while this many packets wait for the
    /// rate limiter is dropped. Only meaningful with a rate.
    pub queue_pkts: usize,
    /// Drop-tail limit in bytes of waiting packets; 0 = no byte limit.
    pub queue_bytes: u64,
    /// Seed of the loss and jitter generators (each direction derives its
    /// own streams from it), so a run is reproducible packet by packet.
    pub seed: u64,
    /// With jitter, let a later packet overtake an earlier one (netem's
    /// behaviour). Off by default: real WAN paths rarely reorder and TCP
    /// treats reordering as loss.
    pub reorder: bool,
    /// MTU of both TUN devices (fixed for the link's lifetime).
    pub mtu: u32,
    /// Base name of the namespaces: `NAME-a` / `NAME-b`. `None` gives the
    /// per-process names `fwan-a-<pid>-<n>` / `fwan-b-<pid>-<n>` (fixed for
    /// the link's lifetime).
    pub name: Option<String>,
    /// TCP congestion control to set inside both namespaces right after they
    /// are created (e.g. `cubic`); `None` keeps what the namespace inherited
    /// from the root namespace (fixed for the link's lifetime).
    pub congestion: Option<String>,
}

impl Default for WanConfig {
    fn default() -> Self {
        WanConfig {
            delay: Duration::ZERO,
            jitter: Duration::ZERO,
            loss: 0.0,
            rate_bps: 0,
            queue_pkts: 1000,
            queue_bytes: 0,
            seed: 1,
            reorder: false,
            mtu: 1500,
            name: None,
            congestion: None,
        }
    }
}

impl WanConfig {
    /// Reject values the forwarder cannot honour.
    pub fn validate(&self) -> Result<(), String> {
        if !(0.0..=1.0).contains(&self.loss) || self.loss.is_nan() {
            return Err(format!("loss must be within 0..=100 %, got {}", self.loss));
        }
        if self.jitter > self.delay {
            return Err(format!("jitter ({}) larger than delay ({}) is not supported", fmt_duration(self.jitter), fmt_duration(self.delay)));
        }
        if self.delay > Duration::from_secs(10) {
            return Err("delay above 10 s is not supported".into());
        }
        if !(576..=9000).contains(&self.mtu) {
            return Err(format!("mtu must be within 576..=9000, got {}", self.mtu));
        }
        if self.queue_pkts == 0 {
            return Err("queue must be at least 1 packet".into());
        }
        if let Some(n) = &self.name {
            let ok =
                !n.is_empty() && n.len() <= 200 && n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.') && !n.starts_with('.');
            if !ok {
                return Err(format!("invalid link name {n:?} (use letters, digits, '-', '_', '.')"));
            }
        }
        if let Some(c) = &self.congestion {
            if c.is_empty() || !c.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                return Err(format!("invalid congestion control name {c:?}"));
            }
        }
        Ok(())
    }

    /// One-line human description, e.g. `delay 25ms ±0ms, loss 0.50 %, rate 50.0 Mbit/s, queue 1000 pkts`.
    pub fn describe(&self) -> String {
        let mut s = format!(
            "delay {} ±{}, loss {:.2} %, rate {}, queue {} pkts",
            fmt_duration(self.delay),
            fmt_duration(self.jitter),
            self.loss * 100.0,
            fmt_rate(self.rate_bps),
            self.queue_pkts
        );
        if self.queue_bytes > 0 {
            s.push_str(&format!(" / {} B", self.queue_bytes));
        }
        if self.reorder {
            s.push_str(", reorder");
        }
        if self.mtu != 1500 {
            s.push_str(&format!(", mtu {}", self.mtu));
        }
        s
    }
}

/// `25ms`, `0.5ms`, `250us`, `1s`, `0` (a bare number is milliseconds, as
/// in netem).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let v: f64 = num.parse().map_err(|_| format!("invalid duration {s:?}: bad number"))?;
    let secs = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "ms" | "msec" => v / 1e3,
        "s" | "sec" => v,
        "us" | "usec" | "µs" => v / 1e6,
        "ns" => v / 1e9,
        other => return Err(format!("invalid duration {s:?}: unknown unit {other:?}")),
    };
    if !secs.is_finite() || !(0.0..=3600.0).contains(&secs) {
        return Err(format!("invalid duration {s:?}: out of range"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// `0.5%` or `0.005` -> 0.005.
pub fn parse_loss(s: &str) -> Result<f64, String> {
    let t = s.trim();
    let (num, pct) = match t.strip_suffix('%') {
        Some(n) => (n.trim(), true),
        None => (t, false),
    };
    let v: f64 = num.parse().map_err(|_| format!("invalid loss {s:?}: bad number"))?;
    let p = if pct { v / 100.0 } else { v };
    if !(0.0..=1.0).contains(&p) {
        return Err(format!("invalid loss {s:?}: must be within 0..100 %"));
    }
    Ok(p)
}

/// Rates in bits per second with decimal prefixes, as in tc: `1gbit`,
/// `50mbit`, `512kbit`, `1000000` (bit/s), `0`/`none`/`unlimited`. A `/s`
/// or `ps` suffix is accepted (`50mbit/s`, `50mbps` both mean bits). Plain
/// tc `bps` (bytes/s) is rejected as ambiguous.
pub fn parse_rate(s: &str) -> Result<u64, String> {
    let t = s.trim().to_ascii_lowercase();
    if matches!(t.as_str(), "none" | "unlimited" | "0") {
        return Ok(0);
    }
    let t = t.strip_suffix("/s").unwrap_or(&t);
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let v: f64 = num.parse().map_err(|_| format!("invalid rate {s:?}: bad number"))?;
    let mult = match unit.trim() {
        "" | "bit" => 1e0,
        "k" | "kbit" | "kbps" => 1e3,
        "m" | "mbit" | "mbps" => 1e6,
        "g" | "gbit" | "gbps" => 1e9,
        "t" | "tbit" | "tbps" => 1e12,
        other => return Err(format!("invalid rate {s:?}: unknown unit {other:?} (use bit, kbit, mbit, gbit)")),
    };
    let r = v * mult;
    if !r.is_finite() || !(0.0..=1e13).contains(&r) {
        return Err(format!("invalid rate {s:?}: out of range"));
    }
    if r > 0.0 && r < 8000.0 {
        return Err(format!("invalid rate {s:?}: below 8 kbit/s"));
    }
    Ok(r.round() as u64)
}

pub fn fmt_duration(d: Duration) -> String {
    let us = d.as_micros();
    if (us / 1000) * 1000 == us {
        format!("{}ms", us / 1000)
    } else {
        format!("{:.3}ms", d.as_secs_f64() * 1e3)
    }
}

pub fn fmt_rate(bps: u64) -> String {
    if bps == 0 {
        "unlimited".into()
    } else {
        fmt_mbit(bps as f64)
    }
}

/// Bits per second as `12.3 Mbit/s`.
pub fn fmt_mbit(bps: f64) -> String {
    if bps >= 1e9 {
        format!("{:.2} Gbit/s", bps / 1e9)
    } else if bps >= 1e6 {
        format!("{:.1} Mbit/s", bps / 1e6)
    } else {
        format!("{:.1} kbit/s", bps / 1e3)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("25ms"), Ok(Duration::from_millis(25)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("0ms"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("250us"), Ok(Duration::from_micros(250)));
        assert_eq!(parse_duration("10"), Ok(Duration::from_millis(10)));
        assert!(parse_duration("x").is_err());
        assert!(parse_duration("5h").is_err());
        assert!(parse_duration("-1ms").is_err());
    }

    #[test]
    fn losses() {
        assert_eq!(parse_loss("0.5%"), Ok(0.005));
        assert_eq!(parse_loss("5 %"), Ok(0.05));
        assert_eq!(parse_loss("0.01"), Ok(0.01));
        assert!(parse_loss("101%").is_err());
        assert!(parse_loss("2").is_err());
        assert!(parse_loss("abc").is_err());
    }

    #[test]
    fn rates() {
        assert_eq!(parse_rate("1gbit"), Ok(1_000_000_000));
        assert_eq!(parse_rate("50mbit"), Ok(50_000_000));
        assert_eq!(parse_rate("50Mbit/s"), Ok(50_000_000));
        assert_eq!(parse_rate("2.5mbps"), Ok(2_500_000));
        assert_eq!(parse_rate("512kbit"), Ok(512_000));
        assert_eq!(parse_rate("1000000"), Ok(1_000_000));
        assert_eq!(parse_rate("unlimited"), Ok(0));
        assert_eq!(parse_rate("0"), Ok(0));
        assert!(parse_rate("10bps").is_err());
        assert!(parse_rate("100").is_err());
        assert!(parse_rate("fast").is_err());
    }

    #[test]
    fn validation() {
        assert!(WanConfig::default().validate().is_ok());
        let bad = WanConfig { jitter: Duration::from_millis(5), ..WanConfig::default() };
        assert!(bad.validate().is_err());
        let bad = WanConfig { name: Some("a/b".into()), ..WanConfig::default() };
        assert!(bad.validate().is_err());
        let bad = WanConfig { loss: 1.5, ..WanConfig::default() };
        assert!(bad.validate().is_err());
    }
}
