//! Cluster state every node needs at once: user artifacts and client monitoring tables.
//! The master answers requests for it on [`STATE_REQUEST`] and publishes it on
//! [`STATE_SUBJECT`] after every change; a node subscribes first and then asks, so it
//! misses no change, including one made while it was starting.

pub mod clients;
pub mod node;

use std::time::Duration;

use futures::StreamExt;
use serde::{Deserialize, Serialize};
use talon_core::Shutdown;

use crate::bus::Bus;
use crate::frontend::FrontendService;
use crate::queue::QueueManager;

/// Where the master publishes the state after a change.
pub const STATE_SUBJECT: &str = "talonctl.state";
/// Where the master answers requests for the state.
pub const STATE_REQUEST: &str = "talonctl.state.get";

/// One org's client monitoring table as stored.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct OrgTable {
    pub org: String,
    pub version: u64,
    /// `label/artifact` -> parameters JSON.
    pub entries: Vec<(String, String)>,
}

/// What the master shares with every node.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ClusterState {
    /// User artifacts, (name, YAML).
    pub artifacts: Vec<(String, String)>,
    pub tables: Vec<OrgTable>,
}

/// The state as kept in the master's store.
pub fn collect(qm: &QueueManager, frontend: &FrontendService) -> anyhow::Result<ClusterState> {
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
        artifacts: qm.store().artifacts()?,
        tables,
    })
}

/// Master: publishes the current state (after a change).
pub async fn publish(bus: &Bus, qm: &QueueManager, frontend: &FrontendService) {
    match collect(qm, frontend) {
        Ok(state) => {
            let body = serde_json::to_vec(&state).expect("state serialises");
            if let Err(e) = bus.client().publish(STATE_SUBJECT, body.into()).await {
                tracing::error!(error = %e, "cannot publish cluster state");
            }
        }
        Err(e) => tracing::error!(error = %e, "cannot collect cluster state"),
    }
}

/// Master: answers state requests until shutdown.
pub async fn serve(
    bus: Bus,
    qm: QueueManager,
    frontend: FrontendService,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let mut requests = bus.client().subscribe(STATE_REQUEST).await?;
    let stop = shutdown.clone();
    shutdown.spawn("state-serve", async move {
        loop {
            let req = tokio::select! {
                _ = stop.cancelled() => break,
                r = requests.next() => match r { Some(r) => r, None => break },
            };
            let Some(reply) = req.reply else { continue };
            match collect(&qm, &frontend) {
                Ok(state) => {
                    let body = serde_json::to_vec(&state).expect("state serialises");
                    let _ = bus.client().publish(reply, body.into()).await;
                }
                Err(e) => tracing::error!(error = %e, "cannot collect cluster state"),
            }
        }
    });
    Ok(())
}

/// Node: applies the master's state: artifacts into the repository, tables into the local
/// cache, and connected clients get their new tables.
pub async fn apply(state: &ClusterState, qm: &QueueManager, frontend: &FrontendService) {
    let repo = qm.repository();
    for (name, yaml) in &state.artifacts {
        if repo.get(name).is_some_and(|a| a.yaml == *yaml) {
            continue;
        }
        match repo.check(&format!("cluster artifact {name}"), yaml, true) {
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

/// Node: follows the master's state until shutdown. Returns once the first state has been
/// applied (or, when the master does not answer in time, once subscribed; the state then
/// arrives with the master's next publication or answer).
pub async fn follow(
    bus: Bus,
    qm: QueueManager,
    frontend: FrontendService,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let mut updates = bus.client().subscribe(STATE_SUBJECT).await?;
    bus.client().flush().await?;
    let ask = |bus: Bus| async move {
        bus.request_json::<_, ClusterState>(STATE_REQUEST, &(), Duration::from_secs(5))
            .await
    };
    let mut have = ask(bus.clone()).await;
    if let Some(s) = &have {
        apply(s, &qm, &frontend).await;
    }
    let stop = shutdown.clone();
    shutdown.spawn("state-follow", async move {
        let mut retry = tokio::time::interval(Duration::from_secs(5));
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                m = updates.next() => {
                    let Some(m) = m else { break };
                    match serde_json::from_slice::<ClusterState>(&m.payload) {
                        Ok(s) => { apply(&s, &qm, &frontend).await; have = Some(s); }
                        Err(e) => tracing::error!(error = %e, "undecodable cluster state"),
                    }
                }
                _ = retry.tick(), if have.is_none() => {
                    if let Some(s) = ask(bus.clone()).await {
                        apply(&s, &qm, &frontend).await;
                        have = Some(s);
                    }
                }
            }
        }
    });
    Ok(())
}
