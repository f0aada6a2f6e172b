//! Talon's engine, what master and minion share (the endpoint agent and the CLI never
//! link it).
//!
//! - [`bus`]: the NATS bus between cluster nodes (durable batches in JetStream).
//! - [`cluster`]: state every cluster node needs: user artifacts, client monitoring tables.
//! - [`store`]: the master's redb store with its group-committing writer thread.
//! - [`queue`]: the queue manager: push and watch per (org, queue), durable and INTERNAL.
//! - [`debug`]: the debug HTTP pages and Prometheus metrics.
//! - [`frontend`]: the client frontend: sessions, client records, client monitoring tables.
//! - [`lifecycle`]: the one shutdown order of a node.
//! - [`vql_host`]: VQL on the server: queues, stored rows and alerts for queries.

pub mod bus;
pub mod cluster;
pub mod debug;
pub mod frontend;
pub mod lifecycle;
pub mod queue;
pub mod store;
pub mod vql_host;
