//! ferry-worker: the agent side of ferry.
//!
//! - [`storage`]: locations: the local POSIX tree and S3, behind one `Location` trait.
//! - [`link`]: the agent-to-agent data plane's wire format.
//! - [`exec`]: what a worker does with each kind of shard: list, plan, copy, verify. Plain
//!   functions and structs, driven by the actors.
//! - [`queue`]: claiming and completing shards through the Store, with the fencing
//!   transaction from the design.
//! - [`node`]: the actors: a worker node that holds the lease and runs N movers.

pub mod agent;
pub mod exec;
pub mod lease;
pub mod link;
pub mod node;
pub mod queue;
pub mod report;
pub mod storage;
