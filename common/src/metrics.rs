//! Prometheus metrics: one recorder per process, rendered by the process's own HTTP server at
//! `/metrics` (the coordinator's API, `ferry-worker --metrics-listen`).
//!
//! Code records through the `metrics` macros with the names below. Until [`install`] runs the
//! macros go to `metrics`' no-op recorder, so a process that serves no `/metrics` (the
//! embedded `ferry copy`) pays a relaxed load per call and keeps nothing.
//!
//! Every label value comes from a small fixed set (directions, outcomes, shard kinds, S3
//! operations and error codes, Store operations) or is bounded by the fleet (`peer`, an agent
//! name). Nothing carries an execution, task, shard or file name.

use std::sync::OnceLock;
use std::time::Duration;

use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Files by `direction` (`read`, `write`) and `outcome`.
pub const WORKER_FILES: &str = "ferry_worker_files_total";
/// Bytes by `direction` and `outcome`.
pub const WORKER_BYTES: &str = "ferry_worker_bytes_total";
/// Shard wall time by `kind`.
pub const SHARD_DURATION: &str = "ferry_shard_duration_seconds";
/// Movers by `state` (`busy`, `idle`).
pub const MOVERS: &str = "ferry_movers";
pub const THROTTLED_BYTES: &str = "ferry_throttled_bytes_total";
/// A histogram: `_sum` is the seconds waited.
pub const THROTTLE_WAIT: &str = "ferry_throttle_wait_seconds";
pub const S3_REQUESTS: &str = "ferry_s3_requests_total";
pub const S3_RETRIES: &str = "ferry_s3_retries_total";
pub const S3_ERRORS: &str = "ferry_s3_errors_total";
pub const LINK_SENT_BYTES: &str = "ferry_link_sent_bytes_total";
pub const LINK_RECEIVED_BYTES: &str = "ferry_link_received_bytes_total";
pub const LINK_LOST_PACKETS: &str = "ferry_link_lost_packets_total";
pub const LINK_RTT: &str = "ferry_link_rtt_seconds";
pub const LINK_CWND: &str = "ferry_link_congestion_window_bytes";
pub const LINK_RESENT_CHUNKS: &str = "ferry_link_resent_chunks_total";
pub const STORE_REQUEST_DURATION: &str = "ferry_store_request_duration_seconds";
pub const STORE_ERRORS: &str = "ferry_store_errors_total";

/// Shards take from milliseconds (a small directory page) to many minutes (a 64 MiB part over
/// a slow link).
const SHARD_BUCKETS: &[f64] = &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0];
/// etcd round trips: sub-millisecond on loopback, tens of milliseconds across sites, seconds
/// when it is struggling.
const STORE_BUCKETS: &[f64] = &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// One wait in the limiter: a chunk's worth at the configured rate, from microseconds to
/// seconds on a slow limit.
const WAIT_BUCKETS: &[f64] = &[0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// How often histograms drop samples that aged out (the exporter leaves this to its user).
const UPKEEP: Duration = Duration::from_secs(5);

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process's recorder (once; later calls return the same handle) and starts its
/// upkeep thread. Fails only when another recorder was installed first.
pub fn install() -> Result<&'static PrometheusHandle, String> {
    if let Some(h) = HANDLE.get() {
        return Ok(h);
    }
    let mut result = Ok(());
    let handle = HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Full(SHARD_DURATION.into()), SHARD_BUCKETS)
            .and_then(|b| b.set_buckets_for_metric(Matcher::Full(STORE_REQUEST_DURATION.into()), STORE_BUCKETS))
            .and_then(|b| b.set_buckets_for_metric(Matcher::Full(THROTTLE_WAIT.into()), WAIT_BUCKETS))
            .expect("bucket lists are not empty")
            .build_recorder();
        let handle = recorder.handle();
        if let Err(e) = metrics::set_global_recorder(recorder) {
            result = Err(format!("cannot install the metrics recorder: {e} (another recorder was installed first)"));
        }
        describe();
        let upkeep = handle.clone();
        let _ = std::thread::Builder::new().name("ferry-metrics-upkeep".into()).spawn(move || loop {
            std::thread::sleep(UPKEEP);
            upkeep.run_upkeep();
        });
        handle
    });
    result.map(|()| handle)
}

/// The Prometheus text exposition of everything recorded, or `None` before [`install`].
pub fn render() -> Option<String> {
    HANDLE.get().map(PrometheusHandle::render)
}

/// The content type of [`render`]'s text.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

fn describe() {
    describe_counter!(
        WORKER_FILES,
        "Entries this process settled, by direction and outcome. direction=\"read\": shards this agent read the source for (outcome transferred), or verified the destination of (verified, mismatched). direction=\"write\": entries this agent committed at the destination (transferred), or decided not to write (skipped), deleted (deleted) or gave up on (failed, including large files whose parts failed)."
    );
    describe_counter!(
        WORKER_BYTES,
        Unit::Bytes,
        "Bytes of the entries counted in ferry_worker_files_total, by the same direction and outcome (a file's size, not bytes on the wire)."
    );
    describe_histogram!(SHARD_DURATION, Unit::Seconds, "Wall time of each shard this process ran, from claim to completion, by shard kind.");
    describe_gauge!(MOVERS, "Movers of this agent now running a shard (state=\"busy\") or waiting for one (state=\"idle\").");
    describe_counter!(THROTTLED_BYTES, Unit::Bytes, "Bytes that had to wait in the BytesPerSecond limiter before they were sent.");
    describe_histogram!(
        THROTTLE_WAIT,
        Unit::Seconds,
        "Each wait a sender spent in the BytesPerSecond limiter; _sum is the total seconds waited (a histogram, since Prometheus counters of seconds must end in _total)."
    );
    describe_counter!(S3_REQUESTS, "S3 requests sent, by operation; each retry counts as another request.");
    describe_counter!(S3_RETRIES, "S3 requests that were retries of an earlier attempt, by operation.");
    describe_counter!(S3_ERRORS, "S3 attempts answered with an error or that got no answer, by operation and code (the S3 error code, the HTTP status when there is none, or \"io\" for a failed connection). A retried attempt counts too.");
    describe_counter!(
        LINK_SENT_BYTES,
        Unit::Bytes,
        "UDP payload bytes sent on QUIC links to each peer agent (quinn's count, headers and retransmissions included)."
    );
    describe_counter!(LINK_RECEIVED_BYTES, Unit::Bytes, "UDP payload bytes received on QUIC links from each peer agent.");
    describe_counter!(LINK_LOST_PACKETS, "Packets quinn declared lost on links to each peer agent.");
    describe_gauge!(
        LINK_RTT,
        Unit::Seconds,
        "Smoothed round-trip time of the link to each peer agent, as of the last sample (taken every 5 s; with several connections, the last one sampled)."
    );
    describe_gauge!(
        LINK_CWND,
        Unit::Bytes,
        "Congestion window of the link to each peer agent, as of the last sample (taken every 5 s; with several connections, the last one sampled)."
    );
    describe_counter!(LINK_RESENT_CHUNKS, "Chunks a writer asked this agent to send again (RESEND_FROM after a bad CRC32C or a whole-file mismatch).");
    describe_histogram!(
        STORE_REQUEST_DURATION,
        Unit::Seconds,
        "Round-trip time of each coordination Store (etcd) request, by operation, failed ones included."
    );
    describe_counter!(STORE_ERRORS, "Coordination Store (etcd) requests that failed, by operation.");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn install_twice_gives_one_recorder_and_histograms_have_buckets() {
        let a = install().unwrap() as *const _;
        let b = install().unwrap() as *const _;
        assert_eq!(a, b);
        metrics::histogram!(SHARD_DURATION, "kind" => "transfer").record(0.2);
        metrics::counter!(WORKER_BYTES, "direction" => "write", "outcome" => "transferred").increment(7);
        let text = render().unwrap();
        assert!(text.contains("ferry_shard_duration_seconds_bucket{kind=\"transfer\",le=\"0.25\"} 1"), "{text}");
        assert!(text.contains("ferry_worker_bytes_total{direction=\"write\",outcome=\"transferred\"} 7"), "{text}");
        assert!(text.contains("# HELP ferry_worker_bytes_total"), "{text}");
    }
}
