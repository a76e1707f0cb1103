//! Link metrics per peer agent, sampled from quinn's connection statistics: bytes sent and
//! received, packets lost (counters, added as deltas so several connections to one peer add
//! up), and the last sample's RTT and congestion window (gauges).

use std::time::Duration;

use ferry_common::metrics as m;

/// How often a live connection is sampled.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(5);

/// What one connection has reported so far.
#[derive(Default)]
struct Reported {
    sent: u64,
    received: u64,
    lost: u64,
}

fn sample(conn: &quinn::Connection, peer: &str, last: &mut Reported) {
    let s = conn.stats();
    let label = peer.to_string();
    metrics::counter!(m::LINK_SENT_BYTES, "peer" => label.clone()).increment(s.udp_tx.bytes.saturating_sub(last.sent));
    metrics::counter!(m::LINK_RECEIVED_BYTES, "peer" => label.clone()).increment(s.udp_rx.bytes.saturating_sub(last.received));
    metrics::counter!(m::LINK_LOST_PACKETS, "peer" => label.clone()).increment(s.path.lost_packets.saturating_sub(last.lost));
    metrics::gauge!(m::LINK_RTT, "peer" => label.clone()).set(s.path.rtt.as_secs_f64());
    metrics::gauge!(m::LINK_CWND, "peer" => label).set(s.path.cwnd as f64);
    *last = Reported { sent: s.udp_tx.bytes, received: s.udp_rx.bytes, lost: s.path.lost_packets };
}

/// Samples `conn` every [`SAMPLE_EVERY`] and once more when it closes. `peer` is the agent
/// name its certificate proved: bounded by the fleet. Must be called inside a tokio runtime.
pub fn watch(conn: quinn::Connection, peer: String) {
    tokio::spawn(async move {
        let mut last = Reported::default();
        sample(&conn, &peer, &mut last);
        loop {
            tokio::select! {
                _ = conn.closed() => break,
                _ = tokio::time::sleep(SAMPLE_EVERY) => sample(&conn, &peer, &mut last),
            }
        }
        sample(&conn, &peer, &mut last);
    });
}
