//! The master's shared state on a node: user artifacts and client monitoring tables. The
//! master publishes it on [`STATE_SUBJECT`] after every change and answers [`StateGet`];
//! a node subscribes first and then asks, so it misses no change, including one made
//! while it was starting.

use std::time::Duration;

use futures::StreamExt;
use talon_core::Shutdown;

use crate::bus::Bus;
use crate::control::{ClusterState, StateGet, STATE_SUBJECT};
use crate::frontend::FrontendService;

/// How often a node that has no state yet asks again.
pub const STATE_RETRY: Duration = Duration::from_secs(5);

/// Applies the master's state: artifacts into the repository, tables into the local
/// cache, and connected clients get their new tables.
pub async fn apply(state: &ClusterState, frontend: &FrontendService) {
    let repo = frontend.repository();
    for (name, yaml) in &state.artifacts {
        if repo.get(name).is_some_and(|a| a.yaml == *yaml) {
            continue;
        }
        match repo.check_accepted(&format!("cluster artifact {name}"), yaml) {
            Ok(a) => {
                repo.insert(a);
            }
            Err(e) => tracing::error!(artifact = %name, error = %e, "cluster artifact not loaded"),
        }
    }
    for a in repo.list() {
        if !a.built_in && !state.artifacts.iter().any(|(n, _)| n == a.name()) {
            let _ = repo.remove(a.name());
        }
    }
    for t in &state.tables {
        let clients = frontend.clients();
        if clients.version(&t.org).ok() == Some(t.version)
            && clients.raw_table(&t.org).ok().as_ref() == Some(&t.entries)
        {
            continue;
        }
        match clients.replace_table(&t.org, t.version, &t.entries).await {
            Ok(()) => frontend.table_changed(&t.org),
            Err(e) => {
                tracing::error!(org = %t.org, error = %e, "cannot cache client monitoring table")
            }
        }
    }
}

/// Follows the master's state until shutdown. Returns once the first state has been
/// applied (or, when the master does not answer in time, once subscribed; the state then
/// arrives with the master's next publication or answer).
pub async fn follow(bus: Bus, frontend: FrontendService, shutdown: Shutdown) -> anyhow::Result<()> {
    let mut updates = bus.client().subscribe(STATE_SUBJECT).await?;
    bus.client().flush().await?;
    let ask = |bus: Bus| async move {
        match bus.ask::<StateGet>(&()).await {
            Ok(Some(state)) => Some(state),
            Ok(None) => {
                tracing::warn!("the master cannot read its state now; asking again later");
                None
            }
            Err(e) => {
                tracing::warn!(error = %e, "the master's state is not here yet");
                None
            }
        }
    };
    let mut have = ask(bus.clone()).await;
    if let Some(s) = &have {
        apply(s, &frontend).await;
    }
    let stop = shutdown.clone();
    shutdown.spawn("state-follow", async move {
        let mut retry = tokio::time::interval(STATE_RETRY);
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                m = updates.next() => {
                    let Some(m) = m else { break };
                    match serde_json::from_slice::<ClusterState>(&m.payload) {
                        Ok(s) => { apply(&s, &frontend).await; have = Some(s); }
                        Err(e) => tracing::error!(error = %e, "undecodable cluster state"),
                    }
                }
                _ = retry.tick(), if have.is_none() => {
                    if let Some(s) = ask(bus.clone()).await {
                        apply(&s, &frontend).await;
                        have = Some(s);
                    }
                }
            }
        }
    });
    Ok(())
}
