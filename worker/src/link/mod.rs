//! The data plane between agents at different sites. docs/protocol.md is the specification.
//!
//! - [`frame`]: the wire format, its only encoder and decoder.
//! - [`receiver`]: the writer's side of a stream, a plain state machine.
//! - [`sender`]: the reader's side: one Transfer shard's entries over one stream.
//! - [`wire`]: a stream as the reader sees it, over QUIC or in-process.
//! - [`quic`]: the QUIC endpoints (quinn), with mutual TLS 1.3 from [`pki`].
//! - [`rate`]: the per-agent BytesPerSecond token bucket.
//!
//! [`run_transfer_linked`] runs a Transfer shard of an execution whose locations are bound
//! to agents: it sends the entries through a [`Connector`] and turns what the writer
//! acknowledged into the shard's outcome.

pub mod frame;
pub mod pki;
pub mod quic;
pub mod rate;
pub mod receiver;
pub mod sender;
pub mod wire;

use std::time::{Duration, Instant};

use ferry_common::error::{ErrorKind, FerryError};
use ferry_common::model::{Counters, Entry, EntryKind, EntryStatus, VerifyMode};

use crate::exec::transfer::{Buffers, Retries};
use crate::exec::{ExecContext, Outcome};
use sender::{Batch, SendSettings, Settled};
use wire::{LinkError, Wire};

/// Opens streams to a writer for one execution.
pub trait Connector: Send + Sync {
    /// A new stream, to the writer `attempt` picks (a connector spreads streams over its
    /// writers, and moves on from one that failed).
    fn open(&self, attempt: u32) -> Result<Box<dyn Wire + '_>, LinkError>;
}

/// How long a reader keeps reconnecting before it gives the shard back as failed (to be
/// retried as a new attempt). A link cut shorter than this resumes transparently.
pub const RECONNECT_FOR: Duration = Duration::from_secs(120);

/// Files at least this large are split over several streams.
pub const STRIPE_MIN: u64 = 256 << 20;
/// Bytes per stripe, at least.
const STRIPE_BYTES: u64 = 128 << 20;
/// The most stripes a file is split into.
pub const MAX_STRIPES_PER_FILE: u64 = 4;

/// Stripes per large file by default: they spread reading, CRC and writing over cores, so
/// half the cores, at most 4. Measured on 2 cores (BENCHMARKS.md), 4 stripes cost 13 % of
/// throughput on loopback: there the default, 1, sends a large file on one stream.
pub fn default_stripes() -> u64 {
    let cores = std::thread::available_parallelism().map(|n| n.get() as u64).unwrap_or(1);
    (cores / 2).clamp(1, MAX_STRIPES_PER_FILE)
}

/// The stripes a file of `size` bytes is sent as, or none (one stream). Boundaries fall on
/// chunk multiples so no chunk straddles two stripes.
pub fn stripes_of(size: u64, chunk: u64, max_stripes: u64) -> Vec<frame::Stripe> {
    if size < STRIPE_MIN || chunk == 0 || max_stripes < 2 {
        return Vec::new();
    }
    let count = (size / STRIPE_BYTES).clamp(2, max_stripes.min(MAX_STRIPES_PER_FILE));
    let per = size.div_ceil(count).div_ceil(chunk) * chunk;
    let n = size.div_ceil(per);
    if n < 2 {
        return Vec::new();
    }
    (0..n).map(|i| frame::Stripe { index: i as u32, count: n as u32, start: i * per, len: per.min(size - i * per) }).collect()
}

/// Sends one batch over streams from `connector`, reconnecting while the link is down.
/// Returns the last error for entries left unsettled.
fn send_with_retries(ctx: &ExecContext, connector: &dyn Connector, settings: &SendSettings, batch: &mut Batch, bufs: &mut Buffers) -> Result<Option<FerryError>, Abandoned> {
    let started = Instant::now();
    let mut backoff = Duration::from_millis(200);
    let mut tries = 0u32;
    while !batch.is_settled() {
        if ctx.fence().is_err() {
            return Err(Abandoned);
        }
        let result = connector.open(tries).and_then(|mut wire| sender::send_batch(ctx, settings, wire.as_mut(), batch, bufs));
        tries += 1;
        // A writer that does not know the execution yet is joining it (it just started, or
        // came back after a crash): wait for it like for a link that is down.
        let result = match result {
            Err(LinkError::Refused(e)) if e.code == frame::Code::UnknownExecution => Err(LinkError::Down(e.to_string())),
            other => other,
        };
        match result {
            Ok(()) => {}
            Err(LinkError::Down(why)) => {
                if started.elapsed() >= RECONNECT_FOR {
                    return Ok(Some(FerryError::new(ErrorKind::Unavailable, format!("link to the destination agents down for {} s: {why}", RECONNECT_FOR.as_secs()))));
                }
                tracing::warn!(error = %why, retry_in_ms = backoff.as_millis() as u64, "link down; reconnecting to resume");
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
            Err(LinkError::Refused(e)) => {
                if tries >= 3 {
                    return Ok(Some(FerryError::new(ErrorKind::Unavailable, format!("destination agent ended the stream: {e}"))));
                }
            }
        }
    }
    Ok(None)
}

/// The worker lost its lease while sending.
struct Abandoned;

/// Sends a large file as stripes on parallel streams (same writer: the connector picks it from
/// the shard, not the stream). The file is in place when every stripe is acknowledged and one
/// of them completed it.
fn send_striped(ctx: &ExecContext, connector: &dyn Connector, settings: &SendSettings, entry: &Entry, stripes: &[frame::Stripe], chunk: usize) -> Result<(Settled, Counters), Abandoned> {
    let results: Vec<Result<Batch, Abandoned>> = std::thread::scope(|scope| {
        let handles: Vec<_> = stripes
            .iter()
            .map(|&stripe| {
                scope.spawn(move || {
                    let mut batch = Batch::new(vec![entry.clone()]);
                    batch.stripe = Some(stripe);
                    let mut bufs = Buffers::new(chunk);
                    let err = send_with_retries(ctx, connector, settings, &mut batch, &mut bufs)?;
                    if let (Some(e), None) = (err, &batch.settled[0]) {
                        batch.settled[0] = Some(Settled::Failed(e));
                    }
                    Ok(batch)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or(Err(Abandoned))).collect()
    });
    let mut counters = Counters::default();
    let mut crc = 0u32;
    let mut completed = false;
    let mut failure = None;
    for (stripe, r) in stripes.iter().zip(results) {
        let batch = r?;
        counters.add(&batch.counters);
        completed |= batch.completed_file;
        match batch.settled.into_iter().next().flatten() {
            Some(Settled::Transferred { crc: c }) => crc = ferry_common::crc::combine(crc, c, stripe.len),
            Some(Settled::Current) => return Ok((Settled::Current, counters)),
            Some(Settled::Failed(e)) => failure = failure.or(Some(e)),
            None => failure = failure.or(Some(FerryError::new(ErrorKind::Unavailable, "a stripe was not acknowledged"))),
        }
    }
    Ok(match failure {
        Some(e) => (Settled::Failed(e), counters),
        None if !completed => (Settled::Failed(FerryError::new(ErrorKind::Unavailable, "the stripes of this file reached different writers; sending it again")), counters),
        None => (Settled::Transferred { crc }, counters),
    })
}

/// Runs a Transfer shard over a link: large files as stripes on parallel streams, the rest as
/// one batch on one stream.
pub fn run_transfer_linked(ctx: &ExecContext, connector: &dyn Connector, settings: &SendSettings, entries: Vec<Entry>, attempt: u32, bufs: &mut Buffers) -> Outcome {
    let mut out = Outcome::default();
    if ctx.options().dry_run {
        for e in entries {
            out.record(e.path, e.kind, EntryStatus::Skipped, e.size, None, Some("dry run: would copy".into()));
        }
        return out;
    }
    let chunk = bufs.data.len().min(frame::MAX_CHUNK);
    let (mut single, mut striped) = (Vec::new(), Vec::new());
    for e in entries {
        let stripes = if e.kind == EntryKind::File { stripes_of(e.size, chunk as u64, settings.max_stripes) } else { Vec::new() };
        if stripes.is_empty() {
            single.push(e);
        } else {
            striped.push((e, stripes));
        }
    }
    let mut settled: Vec<(Entry, Option<Settled>)> = Vec::new();
    let mut last_error = None;
    if !single.is_empty() {
        let mut batch = Batch::new(single);
        match send_with_retries(ctx, connector, settings, &mut batch, bufs) {
            Ok(e) => last_error = e,
            Err(Abandoned) => {
                out.abandoned = true;
                return out;
            }
        }
        out.counters().add(&batch.counters);
        settled.extend(batch.entries.into_iter().zip(batch.settled));
    }
    for (entry, stripes) in striped {
        match send_striped(ctx, connector, settings, &entry, &stripes, chunk) {
            Ok((s, counters)) => {
                out.counters().add(&counters);
                settled.push((entry, Some(s)));
            }
            Err(Abandoned) => {
                out.abandoned = true;
                return out;
            }
        }
    }
    let verify = ctx.options().verify != VerifyMode::None;
    let mut retries = Retries::new(ctx, attempt);
    for (entry, settled) in settled {
        match settled {
            Some(Settled::Transferred { crc }) => {
                if entry.kind == EntryKind::File {
                    let c = out.counters();
                    c.bytes_written += entry.size;
                    if verify {
                        c.files_verified += 1;
                        c.bytes_verified += entry.size;
                    }
                    out.record(entry.path, entry.kind, EntryStatus::Transferred, entry.size, Some(crc), None);
                } else {
                    out.record(entry.path, entry.kind, EntryStatus::Transferred, 0, None, None);
                }
            }
            Some(Settled::Current) => out.record(entry.path, entry.kind, EntryStatus::Skipped, entry.size, None, Some("unchanged (checked by the destination agent)".into())),
            Some(Settled::Failed(e)) => retries.fail(&mut out, entry, e),
            None => {
                let e = last_error.clone().unwrap_or_else(|| FerryError::new(ErrorKind::Unavailable, "link gave up"));
                retries.fail(&mut out, entry, e);
            }
        }
    }
    retries.finish(&mut out);
    out
}

/// Connects in-process: the reader can reach the destination itself, so no network hop is
/// made; the writer's state machine runs on the reader's thread.
pub struct InProcess {
    pub ctx: std::sync::Arc<ExecContext>,
}

impl Connector for InProcess {
    fn open(&self, _attempt: u32) -> Result<Box<dyn Wire + '_>, LinkError> {
        Ok(Box::new(wire::LocalWire::new(receiver::Receiver::new(self.ctx.clone()))))
    }
}

/// An agent's link equipment, shared by all its movers: the client that dials writers, the
/// registry the writer endpoint serves from, and the BytesPerSecond bucket.
pub struct LinkAgent {
    pub name: String,
    pub labels: Vec<String>,
    /// `None` on an agent without a certificate: it can only take shards that need no hop.
    pub client: Option<quic::LinkClient>,
    pub registry: quic::Registry,
    pub rate: rate::RateLimiter,
    /// Stripes per large file (1: one stream per file).
    pub max_stripes: u64,
}

impl Default for LinkAgent {
    fn default() -> Self {
        LinkAgent { name: String::new(), labels: Vec::new(), client: None, registry: Default::default(), rate: Default::default(), max_stripes: default_stripes() }
    }
}

/// A writer agent as the reader finds it in the Store.
#[derive(Clone, Debug)]
pub struct Writer {
    pub name: String,
    pub addr: std::net::SocketAddr,
}

/// Dials the writers of an execution over QUIC. It stays with one writer across a few
/// reconnects (its partial files are there) and then moves on to the next.
pub struct Remote<'a> {
    pub client: &'a quic::LinkClient,
    pub writers: Vec<Writer>,
    /// Where this shard starts in the writer list, so shards spread over all writers.
    pub start: usize,
}

/// Reconnects to the same writer before moving on to another.
const TRIES_PER_WRITER: u32 = 8;

impl Connector for Remote<'_> {
    fn open(&self, attempt: u32) -> Result<Box<dyn Wire + '_>, LinkError> {
        if self.writers.is_empty() {
            return Err(LinkError::Down("no agent that reaches the destination is online with a link address".into()));
        }
        let w = &self.writers[(self.start + (attempt / TRIES_PER_WRITER) as usize) % self.writers.len()];
        Ok(Box::new(self.client.open(w.addr, &w.name)?))
    }
}

/// Shard kinds an agent with `reach` takes in a linked execution (letters of
/// `ShardBody::kind_letter`): readers scan and send, writers make hard links and set
/// directory metadata; part, commit, prune and verify shards need both sides.
pub fn claimable_kinds(reach: ferry_common::model::Reach) -> Option<Vec<char>> {
    match (reach.source, reach.destination) {
        (true, true) => None,
        (true, false) => Some(vec!['s', 'c']),
        (false, true) => Some(vec!['l', 'm']),
        (false, false) => Some(Vec::new()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stripes_cover_the_file_on_chunk_boundaries() {
        assert!(stripes_of(STRIPE_MIN - 1, 1 << 20, 4).is_empty());
        assert!(stripes_of(1 << 30, 1 << 20, 1).is_empty(), "one stripe means one stream");
        assert_eq!(stripes_of(1 << 30, 1 << 20, 2).len(), 2);
        for size in [STRIPE_MIN, STRIPE_MIN + 1, 1 << 30, (5 << 30) + 12345] {
            let s = stripes_of(size, 1 << 20, 4);
            assert!((2..=MAX_STRIPES_PER_FILE as usize).contains(&s.len()), "{size}: {s:?}");
            let mut next = 0;
            for (i, st) in s.iter().enumerate() {
                assert_eq!((st.index as usize, st.count as usize, st.start), (i, s.len(), next));
                assert!(st.len > 0 && (st.start % (1 << 20)) == 0);
                next = st.start + st.len;
            }
            assert_eq!(next, size);
        }
    }
}
