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
}

/// A writer agent as the reader finds it in the Store.
#[derive(Clone, Debug)]
pub struct WriterAgent {
    pub name: String,
    pub addr: std::net::SocketAddr,
}

/// Dials the writers of an execution over QUIC. It stays with one writer across a few
/// reconnects (its partial files are there) and then moves on to the next.
pub struct Remote<'a> {
    pub client: &'a link::quic::LinkClient,
    pub writers: Vec<WriterAgent>,
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

    fn remote(&self) -> bool {
        true
    }
}
