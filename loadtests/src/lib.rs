//! `ferry-load`: deterministic dataset generation and wall-clock benchmarks of
//! ferry against the usual local copy tools (cp, rsync, rclone, fpsync).
//!
//! The binary (`src/main.rs`) is a thin clap layer; everything testable lives
//! here so `cargo test -p ferry-loadtests` covers generator determinism,
//! dataset shape and the statistics used in reports.

pub mod bench;
pub mod chaos;
pub mod cluster;
pub mod error;
pub mod gen;
pub mod lan;
pub mod linkbench;
pub mod nfsbench;
pub mod report;
pub mod rng;
pub mod scale;
pub mod size;
pub mod stats;
pub mod storebench;
pub mod synth;
pub mod tree;
pub mod util;
pub mod wan;

pub use error::{Error, Result};
