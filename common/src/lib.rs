//! ferry-common: what the coordinator and the workers agree on.
//!
//! Domain types ([`model`]), the persisted-value codec ([`codec`]), the Store key layout
//! ([`keys`]), CRC32C helpers ([`crc`]), path filters ([`filter`]), error kinds ([`error`]),
//! telemetry setup, and the coordination [`store`]. No actors and no storage backends live
//! here, so that every crate can depend on it cheaply.

pub mod codec;
pub mod config;
pub mod crc;
pub mod error;
pub mod execlog;
pub mod filter;
pub mod keys;
pub mod metrics;
pub mod model;
pub mod paths;
pub mod process;
pub mod schedule;
pub mod store;
pub mod task;
pub mod telemetry;
pub mod testing;
pub mod tokens;
pub mod traces;
