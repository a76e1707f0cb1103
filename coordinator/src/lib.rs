//! ferry-coordinator: the `ferry` CLI, the execution driver and reconciler, reports, and
//! embedded mode (the coordinator and worker actors in one process).

pub mod api;
pub mod ca;
pub mod cli;
pub mod cli_api;
pub mod cluster;
pub mod console;
pub mod control;
pub mod daemon;
pub mod driver;
pub mod embedded;
pub mod exec_logs;
pub mod progress;
pub mod report;
pub mod tls;
