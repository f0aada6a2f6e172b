//! Services every cluster node runs (master and minions), each over the replicated queues
//! or the typed control exchanges, each a task of the node's shutdown tree:
//!
//! - presence answers (`Server.Internal.Ping` -> `Server.Internal.Pong`, in the frontend);
//! - [`reports`]: the node's report every [`reports::METRICS_PERIOD`] on
//!   `Server.Internal.FrontendMetrics`;
//! - [`labels`]: label edits made on another node, applied to this node's cache and sessions;
//! - [`client_records`]: connected clients' last activity sent as `Server.Internal.ClientPing`,
//!   and on minions the master's client snapshots fetched;
//! - [`state`]: on minions, the master's shared state (user artifacts, client tables).

pub mod client_records;
pub mod labels;
pub mod reports;
pub mod state;

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use talon_core::Shutdown;

use crate::bus::Bus;
use crate::control::Role;
use crate::frontend::FrontendService;
use crate::queue::QueueManager;

/// Starts a node's services. `applied` is the master's persister progress (its lag is
/// reported), None on a minion. Returns once every subscription is in place.
pub async fn start(
    bus: Bus,
    qm: QueueManager,
    frontend: FrontendService,
    role: Role,
    applied: Option<Arc<AtomicU64>>,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    frontend.answer_pings()?;
    labels::follow(&qm, &frontend, &shutdown)?;
    client_records::start(
        bus.clone(),
        qm.clone(),
        frontend.clone(),
        role == Role::Minion,
        shutdown.clone(),
    )
    .await?;
    reports::start(bus, qm, frontend, role, applied, &shutdown);
    Ok(())
}
