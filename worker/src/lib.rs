//! ferry-worker: the agent side of ferry. The data path has two axes:
//!
//! - [`location`]: where data lives. One trait with a written contract and declared
//!   capabilities, one conformance suite, and a backend per kind of storage (`local/`, `s3/`).
//! - [`transport`]: how entries reach the writer: in-process, or over a QUIC link to an agent
//!   that reaches the destination. The frames are the same either way.
//!
//! [`engine`] holds every shard kind, written once against those two. [`queue`] claims and
//! completes shards through the Store with the fencing transaction from the design, and
//! [`retry`] decides when a failure is tried again; [`node`] and [`agent`] are the actors and
//! the agent loop that drive them.

pub mod agent;
pub mod build_info;
pub mod engine;
pub mod health;
pub mod lease;
pub mod location;
pub mod mover;
pub mod node;
pub mod queue;
pub mod rate;
pub mod report;
pub mod retry;
pub mod transport;
pub mod vitals;
