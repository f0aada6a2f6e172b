//! The master's shared state: user artifacts and client monitoring tables as kept in its
//! store, answered on [`StateGet`] and published on [`STATE_SUBJECT`] after every change
//! (nodes follow it with `talon_shared::node::state`).

use talon_core::Shutdown;
use talon_shared::bus::Bus;
use talon_shared::control::{ClusterState, OrgTable, StateGet, STATE_SUBJECT};
use talon_shared::frontend::FrontendService;
use talon_shared::store::Store;

/// The state as kept in the master's store.
pub fn collect(store: &Store, frontend: &FrontendService) -> anyhow::Result<ClusterState> {
    let clients = frontend.clients();
    let mut tables = Vec::new();
    for (org, version) in clients.table_versions()? {
        let entries = clients.raw_table(&org)?;
        tables.push(OrgTable {
            org,
            version,
            entries,
        });
    }
    Ok(ClusterState {
        artifacts: store.artifacts()?,
        tables,
    })
}

/// Publishes the current state (after a change).
pub async fn publish(bus: &Bus, store: &Store, frontend: &FrontendService) {
    match collect(store, frontend) {
        Ok(state) => {
            let body = serde_json::to_vec(&state).expect("state serialises");
            if let Err(e) = bus.client().publish(STATE_SUBJECT, body.into()).await {
                tracing::error!(error = %e, "cannot publish cluster state");
            }
        }
        Err(e) => tracing::error!(error = %e, "cannot collect cluster state"),
    }
}

/// Answers state requests until shutdown. A state that cannot be collected is logged and
/// answered with None, so the node keeps what it has and asks again.
pub async fn serve(
    bus: &Bus,
    store: Store,
    frontend: FrontendService,
    shutdown: &Shutdown,
) -> anyhow::Result<()> {
    bus.serve::<StateGet, _, _>(shutdown, "state-serve", move |()| {
        let state = collect(&store, &frontend);
        async move {
            state
                .map_err(|e| tracing::error!(error = %e, "cannot collect cluster state"))
                .ok()
        }
    })
    .await?;
    Ok(())
}
