//! ferry-coordinator: the `ferry` CLI, the execution driver and reconciler, reports, and
//! embedded mode (the coordinator and worker actors in one process).

pub mod ca;
pub mod cli;
pub mod cluster;
pub mod driver;
pub mod embedded;
pub mod progress;
pub mod report;
