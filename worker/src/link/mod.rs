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
use ferry_common::model::{Entry, EntryStatus, VerifyMode};

use crate::exec::transfer::{Buffers, Retries};
use crate::exec::{ExecContext, Outcome};
use sender::{Batch, SendSettings, Settled};
use wire::{LinkError, Wire};

/// Opens streams to a writer for one execution.
pub trait Connector: Send + Sync {
    /// A new stream, to the writer `attempt` picks (a connector spreads streams over its
    /// writers, and moves on from one that failed).
    fn open(&self, ctx: &ExecContext, attempt: u32) -> Result<Box<dyn Wire + '_>, LinkError>;
}

/// How long a reader keeps reconnecting before it gives the shard back as failed (to be
/// retried as a new attempt). A link cut shorter than this resumes transparently.
pub const RECONNECT_FOR: Duration = Duration::from_secs(120);

/// Runs a Transfer shard over a link.
pub fn run_transfer_linked(ctx: &ExecContext, connector: &dyn Connector, settings: &SendSettings, entries: Vec<Entry>, attempt: u32, bufs: &mut Buffers) -> Outcome {
    let mut out = Outcome::default();
    if ctx.options().dry_run {
        for e in entries {
            out.record(e.path, e.kind, EntryStatus::Skipped, e.size, None, Some("dry run: would copy".into()));
        }
        return out;
    }
    let mut batch = Batch::new(entries);
    let started = Instant::now();
    let mut backoff = Duration::from_millis(200);
    let mut tries = 0u32;
    let mut last_error: Option<FerryError> = None;
    while !batch.is_settled() {
        if ctx.fence().is_err() {
            out.abandoned = true;
            return out;
        }
        let result = connector.open(ctx, tries).and_then(|mut wire| sender::send_batch(ctx, settings, wire.as_mut(), &mut batch, bufs));
        tries += 1;
        match result {
            Ok(()) => {}
            Err(LinkError::Down(why)) => {
                if started.elapsed() >= RECONNECT_FOR {
                    last_error = Some(FerryError::new(ErrorKind::Unavailable, format!("link to the destination agents down for {} s: {why}", RECONNECT_FOR.as_secs())));
                    break;
                }
                tracing::warn!(error = %why, retry_in_ms = backoff.as_millis() as u64, "link down; reconnecting to resume");
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
            Err(LinkError::Refused(e)) => {
                last_error = Some(FerryError::new(ErrorKind::Unavailable, format!("destination agent ended the stream: {e}")));
                if tries >= 3 {
                    break;
                }
            }
        }
    }
    let c = out.counters();
    c.bytes_resumed += batch.bytes_resumed;
    c.chunks_resent += batch.chunks_resent;
    c.bytes_compressed += batch.bytes_compressed;
    let verify = ctx.options().verify != VerifyMode::None;
    let mut retries = Retries::new(ctx, attempt);
    for (entry, settled) in batch.entries.into_iter().zip(batch.settled) {
        match settled {
            Some(Settled::Transferred { crc }) => {
                if entry.kind == ferry_common::model::EntryKind::File {
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
    fn open(&self, _ctx: &ExecContext, _attempt: u32) -> Result<Box<dyn Wire + '_>, LinkError> {
        Ok(Box::new(wire::LocalWire::new(receiver::Receiver::new(self.ctx.clone()))))
    }
}

/// An agent's link equipment, shared by all its movers: the client that dials writers, the
/// registry the writer endpoint serves from, and the BytesPerSecond bucket.
#[derive(Default)]
pub struct LinkAgent {
    pub name: String,
    pub labels: Vec<String>,
    /// `None` on an agent without a certificate: it can only take shards that need no hop.
    pub client: Option<quic::LinkClient>,
    pub registry: quic::Registry,
    pub rate: rate::RateLimiter,
}

impl Default for rate::RateLimiter {
    fn default() -> Self {
        rate::RateLimiter::new(0)
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
    fn open(&self, _ctx: &ExecContext, attempt: u32) -> Result<Box<dyn Wire + '_>, LinkError> {
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
