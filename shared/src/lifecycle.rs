//! The one shutdown order of a node, written once for master and minion: stop intake
//! (listeners, client streams, API calls), cancel services (monitoring, cluster loops,
//! persister), drain every task within the grace period, close the bus, close the store.
//! Nothing acknowledged is lost on the way: a push is acknowledged only once durable, and
//! the store commits what is queued before it closes.

use talon_core::Shutdown;

use crate::bus::Bus;
use crate::store::Store;

/// The parts of a node the shutdown order touches.
pub struct Parts<'a> {
    /// The root of the node's tree: every task is tracked under it.
    pub tree: &'a Shutdown,
    /// Listeners and the streams they serve.
    pub intake: &'a Shutdown,
    /// Everything else that runs in the background.
    pub services: &'a Shutdown,
    /// In a cluster, the bus.
    pub bus: Option<&'a Bus>,
    pub store: &'a Store,
}

/// Shuts a node down in order; false if some task outlived the grace period.
pub async fn shut_down(parts: Parts<'_>) -> bool {
    tracing::info!("shutting down: stopping intake");
    parts.intake.cancel();
    tracing::info!("shutting down: cancelling services");
    parts.services.cancel();
    let drained = parts.tree.drain().await;
    if let Some(bus) = parts.bus {
        bus.close().await;
        tracing::info!("bus closed");
    }
    // Everything acknowledged is already committed; this waits for writes queued behind
    // it and closes the file cleanly.
    parts.store.close().await;
    tracing::info!("store closed");
    drained
}
