//! How entries reach the writer: the second axis of the data path (the first is where data
//! lives, [`crate::location`]). A reader hands a shard's entries either to a writer in the
//! same process ([`InProcess`]) or, over a QUIC link, to a writer agent that reaches the
//! destination ([`Remote`]). The frames are the same either way (docs/protocol.md), and so is
//! the writer ([`crate::engine::write::Writer`]).
//!
//! - [`frame`]: the wire format, its only encoder and decoder.
//! - [`wire`]: a stream as the reader sees it, over QUIC or in-process.
//! - [`link`]: the QUIC endpoints (quinn) and their mutual TLS ([`link::pki`]).
//! - [`remote`]: the destination as a reader sees it through a writer agent.

pub mod frame;
pub mod link;
pub mod remote;
pub mod wire;

use crate::engine::write::Writer;
use crate::engine::ExecContext;
use ferry_common::model::LinkSettings;
use wire::{LinkError, LocalWire, Wire};

/// Opens streams to a writer for one execution.
pub trait Connector: Send + Sync {
    /// A new stream, to the writer `attempt` picks (a connector spreads streams over its
    /// writers, and moves on from one that failed).
    fn open(&self, attempt: u32) -> Result<Box<dyn Wire + '_>, LinkError>;
    /// Whether streams cross a network: chunks are then compressed when asked, and checked
    /// against their CRC32C on arrival.
    fn remote(&self) -> bool;
}

/// Connects in-process: the reader reaches the destination itself, so the writer's state
/// machine runs on the reader's thread.
pub struct InProcess<'a> {
    pub ctx: &'a ExecContext,
}

impl Connector for InProcess<'_> {
    fn open(&self, _attempt: u32) -> Result<Box<dyn Wire + '_>, LinkError> {
        let writer = Writer::new(self.ctx, false).map_err(|e| LinkError::Down(e.to_string()))?;
        Ok(Box::new(LocalWire::new(writer)))
    }

    fn remote(&self) -> bool {
        false
    }
}

/// An agent's link equipment, shared by all its movers: the client that dials writers, the
/// registry the writer endpoint serves from, and the BytesPerSecond bucket.
#[derive(Default)]
pub struct LinkAgent {
    pub name: String,
    pub labels: Vec<String>,
    /// `None` on an agent without a certificate: it can only take shards that need no hop.
    pub client: Option<link::quic::LinkClient>,
    pub registry: link::quic::Registry,
    pub rate: crate::rate::RateLimiter,
    /// What the agent's heartbeat reports: bytes moved and recent failures.
    pub vitals: crate::vitals::Vitals,
}

impl LinkAgent {
    /// The agents this one has a live link connection with, either way, by name.
    pub fn peers(&self) -> Vec<String> {
        let mut names: Vec<String> = self.registry.peers.live().into_iter().map(|(name, _)| name).collect();
        if let Some(client) = &self.client {
            names.extend(client.peers.live().into_iter().map(|(name, _)| name));
        }
        names.sort();
        names.dedup();
        names
    }
}

/// A writer agent as the reader finds it in the Store.
#[derive(Clone, Debug)]
pub struct WriterAgent {
    pub name: String,
    pub addr: std::net::SocketAddr,
}

/// Looks up the writers of an execution again (`None` when the Store cannot answer now).
pub type WriterLookup<'a> = &'a (dyn Fn() -> Option<Vec<WriterAgent>> + Send + Sync);

/// Dials the writers of an execution over QUIC, choosing each time by [`WriterChoice`].
pub struct Remote<'a> {
    client: &'a link::quic::LinkClient,
    choice: std::sync::Mutex<WriterChoice>,
    lookup: Option<WriterLookup<'a>>,
    binding: &'a LinkSettings,
}

impl<'a> Remote<'a> {
    /// `writers` as the shard found them, `start` where this shard begins in that list (so
    /// shards spread over all writers), and `lookup` to find them again. `binding` says which
    /// agents may write the destination: a writer's certificate must match it, whatever its
    /// registration in the Store claims.
    pub fn new(
        client: &'a link::quic::LinkClient,
        binding: &'a LinkSettings,
        writers: Vec<WriterAgent>,
        start: usize,
        lookup: Option<WriterLookup<'a>>,
    ) -> Self {
        Remote { client, choice: std::sync::Mutex::new(WriterChoice { writers, start, refused: Vec::new() }), lookup, binding }
    }
}

/// Reconnects to the same writer before moving on to another.
const TRIES_PER_WRITER: u32 = 8;

/// Which writer a reader dials on each attempt. It stays with one writer across a few
/// reconnects (its partial files are there), then moves on to the next. The list is looked up
/// again when it is empty (every writer was between leases) and whenever the reader moves on,
/// so a writer that rejoined, or a new one, is found without giving the shard up.
#[derive(Debug)]
pub struct WriterChoice {
    pub writers: Vec<WriterAgent>,
    pub start: usize,
    /// Writers whose certificates do not allow them this destination: never dialled again.
    pub refused: Vec<String>,
}

impl WriterChoice {
    pub fn pick(&mut self, attempt: u32, lookup: Option<WriterLookup<'_>>) -> Option<WriterAgent> {
        if self.writers.is_empty() || (attempt > 0 && attempt.is_multiple_of(TRIES_PER_WRITER)) {
            if let Some(found) = lookup.and_then(|lookup| lookup()) {
                self.writers = found;
            }
        }
        self.writers.retain(|w| !self.refused.contains(&w.name));
        let n = self.writers.len();
        (n > 0).then(|| self.writers[(self.start + (attempt / TRIES_PER_WRITER) as usize) % n].clone())
    }
}

impl Connector for Remote<'_> {
    fn open(&self, attempt: u32) -> Result<Box<dyn Wire + '_>, LinkError> {
        loop {
            let w = self
                .choice
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .pick(attempt, self.lookup)
                .ok_or_else(|| LinkError::Down("no agent that reaches the destination is online with a link address".into()))?;
            // The handshake proves the writer is `w.name`; its certificate's labels, not its
            // registration, say whether it may hold the destination.
            let peer = self.client.writer_agent(w.addr, &w.name)?;
            if self.binding.reach(&peer.name, &peer.labels).destination {
                return Ok(Box::new(self.client.open(w.addr, &w.name)?));
            }
            tracing::warn!(writer = %w.name, addr = %w.addr, labels = ?peer.labels, "WriterRefused: its certificate does not allow it this destination; skipping it");
            self.choice.lock().unwrap_or_else(|p| p.into_inner()).refused.push(w.name);
        }
    }

    fn remote(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn agent(name: &str, port: u16) -> WriterAgent {
        WriterAgent { name: name.into(), addr: std::net::SocketAddr::from(([127, 0, 0, 1], port)) }
    }

    #[test]
    fn an_empty_list_is_looked_up_again_on_every_attempt_until_a_writer_is_back() {
        let calls = AtomicUsize::new(0);
        let lookup = || {
            let n = calls.fetch_add(1, Ordering::SeqCst);
            // The Store cannot answer once, then the rejoined writer is back.
            match n {
                0 => None,
                1 => Some(Vec::new()),
                _ => Some(vec![agent("w2", 7000)]),
            }
        };
        let mut choice = WriterChoice { writers: Vec::new(), start: 5, refused: Vec::new() };
        assert!(choice.pick(0, Some(&lookup)).is_none());
        assert!(choice.pick(1, Some(&lookup)).is_none());
        assert_eq!(choice.pick(2, Some(&lookup)).map(|w| w.name), Some("w2".to_string()));
        // Found: no more lookups while the reader stays with that writer.
        assert_eq!(choice.pick(3, Some(&lookup)).map(|w| w.name), Some("w2".to_string()));
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[test]
    fn moving_on_to_another_writer_refreshes_the_list() {
        let calls = AtomicUsize::new(0);
        let lookup = || {
            calls.fetch_add(1, Ordering::SeqCst);
            Some(vec![agent("w2", 7000), agent("w4", 7001)])
        };
        let mut choice = WriterChoice { writers: vec![agent("w2", 7000)], start: 0, refused: Vec::new() };
        for attempt in 0..TRIES_PER_WRITER {
            assert_eq!(choice.pick(attempt, Some(&lookup)).unwrap().name, "w2");
        }
        assert_eq!(calls.load(Ordering::SeqCst), 0, "no lookup while the first writer is retried");
        assert_eq!(choice.pick(TRIES_PER_WRITER, Some(&lookup)).unwrap().name, "w4", "the writer that joined later is dialled next");
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn without_a_lookup_the_first_list_is_kept() {
        let mut choice = WriterChoice { writers: Vec::new(), start: 0, refused: Vec::new() };
        assert!(choice.pick(0, None).is_none());
        let mut choice = WriterChoice { writers: vec![agent("a", 1), agent("b", 2)], start: 1, refused: Vec::new() };
        assert_eq!(choice.pick(0, None).unwrap().name, "b");
        assert_eq!(choice.pick(TRIES_PER_WRITER, None).unwrap().name, "a");
    }
}
