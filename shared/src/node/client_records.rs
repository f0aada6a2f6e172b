//! Client records across the cluster, the node's half. Every [`PING_PERIOD`] a node sends
//! its connected clients' last activity as `Server.Internal.ClientPing` rows (the master
//! applies them, never moving last seen back). A minion fetches the master's client
//! records page by page ([`SnapshotPage`]) when it starts and whenever the master
//! announces a snapshot on `Server.Internal.ClientInfoSnapshot` (no shared filesystem).

use std::collections::BTreeMap;
use std::time::Duration;

use talon_core::Shutdown;

use crate::bus::Bus;
use crate::control::{ClientPing, ControlRow, PageRequest, SnapshotAnnouncement, SnapshotPage};
use crate::frontend::FrontendService;
use crate::queue::QueueManager;

/// How often nodes send last-activity pings.
pub const PING_PERIOD: Duration = Duration::from_secs(10);

/// Starts the node's half: pings; with `fetch` (minions), snapshot fetching.
pub async fn start(
    bus: Bus,
    qm: QueueManager,
    frontend: FrontendService,
    fetch: bool,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    if fetch {
        follow_snapshots(bus.clone(), &qm, frontend.clone(), &shutdown)?;
    }
    let stop = shutdown.clone();
    shutdown.spawn("client-pings-send", async move {
        let mut tick = tokio::time::interval(PING_PERIOD);
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tick.tick() => {}
            }
            let mut per_org: BTreeMap<String, Vec<serde_json::Map<String, serde_json::Value>>> =
                BTreeMap::new();
            for (org, client, at) in frontend.take_activity() {
                let ping = ClientPing {
                    client_id: client,
                    last_seen_at: at,
                    node: bus.node().to_string(),
                };
                per_org.entry(org).or_default().push(ping.to_row());
            }
            for (org, rows) in per_org {
                if let Err(e) = qm.push(&org, ClientPing::QUEUE, rows, "server", "").await {
                    tracing::warn!(org, error = %e, "cannot send client pings");
                }
            }
        }
    });
    Ok(())
}

/// Fetches the master's records of an org into this node's cache, page by page; a cached
/// record seen more recently than the master's is kept. Returns records fetched.
pub async fn fetch_snapshot(bus: &Bus, frontend: &FrontendService, org: &str) -> usize {
    let clients = frontend.clients();
    let mut offset = 0;
    loop {
        let question = PageRequest {
            org: org.into(),
            offset,
        };
        let p = match bus.ask::<SnapshotPage>(&question).await {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(org, offset, error = %e, "client snapshot page not fetched");
                return offset;
            }
        };
        for r in &p.records {
            let newer_here = clients
                .get(org, &r.client_id)
                .ok()
                .flatten()
                .is_some_and(|c| c.last_seen_at > r.last_seen_at);
            if !newer_here {
                let _ = clients.put(org, r).await;
            }
        }
        offset += p.records.len();
        if !p.more || p.records.is_empty() {
            return offset;
        }
    }
}

fn follow_snapshots(
    bus: Bus,
    qm: &QueueManager,
    frontend: FrontendService,
    shutdown: &Shutdown,
) -> anyhow::Result<()> {
    let mut snapshots = qm.watch_every_org(SnapshotAnnouncement::QUEUE, "snapshot-follower")?;
    let stop = shutdown.clone();
    shutdown.spawn("client-snapshots-follow", async move {
        let first = PageRequest {
            org: String::new(),
            offset: 0,
        };
        let orgs = match bus.ask::<SnapshotPage>(&first).await {
            Ok(p) => p.orgs,
            Err(e) => {
                tracing::warn!(error = %e, "no client snapshot at start; waiting for the next");
                Vec::new()
            }
        };
        for org in orgs {
            let n = fetch_snapshot(&bus, &frontend, &org).await;
            tracing::info!(org, records = n, "client snapshot fetched");
        }
        loop {
            let (_, row) = tokio::select! {
                _ = stop.cancelled() => break,
                r = snapshots.next() => match r { Some(r) => r, None => break },
            };
            match SnapshotAnnouncement::from_json(&row.json) {
                Ok(a) => {
                    for org in a.orgs {
                        fetch_snapshot(&bus, &frontend, &org).await;
                    }
                }
                Err(e) => tracing::warn!(error = %e, "unreadable snapshot announcement"),
            }
        }
    });
    Ok(())
}
