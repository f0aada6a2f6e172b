//! Talon's engine, used by every binary.
//!
//! - [`artifacts`]: the YAML model, the one loader, the embedded built-ins and the repository.
//! - [`bus`]: the NATS bus between cluster nodes (durable batches in JetStream).
//! - [`cluster`]: state every cluster node needs: user artifacts, client monitoring tables.
//! - [`store`]: the master's redb store with its group-committing writer thread.
//! - [`queue`]: the queue manager: push and watch per (org, queue), durable and INTERNAL.
//! - [`config`]: the master's configuration: YAML and flags to an immutable `Config`.
//! - [`debug`]: the debug HTTP pages and Prometheus metrics.
//! - [`frontend`]: the client frontend: sessions, client records, client monitoring tables.
//! - [`telemetry`]: the one tracing set-up binaries install.
//! - [`timefmt`]: parsing and printing of times for CLI and API.
//! - [`vql_host`]: VQL on the server: queues, stored rows and alerts for queries.

pub mod artifacts;
pub mod bus;
pub mod cluster;
pub mod config;
pub mod debug;
pub mod frontend;
pub mod queue;
pub mod store;
pub mod telemetry;
pub mod timefmt;
pub mod vql_host;
