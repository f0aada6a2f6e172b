//! Talon's engine, what master and minion share (the endpoint agent and the CLI never
//! link it). Ground floor first:
//!
//! - [`store`]: the redb store with its group-committing writer thread.
//! - [`bus`]: the NATS bus between cluster nodes (durable batches in JetStream) and the
//!   typed request/reply helper of the control plane.
//! - [`queue`]: the queue manager: push and watch per (org, queue), durable and INTERNAL,
//!   its durable log (store or bus) chosen at construction.
//! - [`records`]: client records and client monitoring tables.
//! - [`control`]: the cluster's own messages, typed (queue rows and exchanges).
//! - [`frontend`]: the client frontend: sessions, notifications, presence.
//! - [`node`]: services every cluster node runs (reports, label following, client pings,
//!   the master's shared state on minions).
//! - [`logs`]: monitoring log lines and alerts of server and client queries.
//! - [`vql_host`]: VQL on the server: queues, stored rows and alerts for queries.
//! - [`query_pool`]: the runtime queries run on, apart from the node's other work, and
//!   their limits.
//! - [`security`]: TLS of the frontend and the API, peer identities from certificates.
//! - [`debug`]: the debug HTTP pages and Prometheus metrics.
//! - [`lifecycle`]: the one shutdown order of a node.
//! - [`parts`]: what a node is made of, assembled once by master and minion.

pub mod bus;
pub mod collections;
pub mod control;
pub mod debug;
pub mod frontend;
pub mod lifecycle;
pub mod logs;
pub mod node;
pub mod parts;
pub mod query_pool;
pub mod queue;
pub mod records;
pub mod security;
pub mod store;
pub mod vql_host;
