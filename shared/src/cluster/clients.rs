//! Client records across the cluster. Nodes send batched last-seen mutations on
//! `Server.Internal.ClientPing` every [`PING_PERIOD`]; the master applies them monotonically
//! (a ping never moves last seen back). The master snapshots its client table when it
//! changed, every [`SNAPSHOT_PERIOD`], and announces it on
//! `Server.Internal.ClientInfoSnapshot`; nodes then fetch it page by page over NATS (no
//! shared filesystem), and also once when they start.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::StreamExt;
use prost::Message;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use talon_core::Shutdown;
use talon_proto::bus::BusBatch;

use crate::bus::{self, Bus};
use crate::frontend::{ClientRecord, FrontendService};
use crate::queue::{QueueManager, ROOT_ORG};

/// How often nodes send last-seen mutations.
pub const PING_PERIOD: Duration = Duration::from_secs(10);
/// How often the master snapshots its client table when it changed.
pub const SNAPSHOT_PERIOD: Duration = Duration::from_secs(300);
/// Where the master serves snapshot pages.
pub const SNAPSHOT_REQUEST: &str = "talonctl.clients.snapshot";
/// Records per snapshot page (well below NATS's 1 MiB payload).
pub const SNAPSHOT_PAGE: usize = 500;
/// Ping mutations queue.
pub const PING_QUEUE: &str = "Server.Internal.ClientPing";
/// Snapshot announcements queue.
pub const SNAPSHOT_QUEUE: &str = "Server.Internal.ClientInfoSnapshot";

#[derive(Serialize, Deserialize)]
struct PageRequest {
    /// Empty: the list of orgs.
    org: String,
    offset: usize,
}

#[derive(Serialize, Deserialize, Default)]
struct Page {
    orgs: Vec<String>,
    records: Vec<ClientRecord>,
    more: bool,
}

/// Master: applies ping mutations, snapshots the table when it changed, serves pages.
pub async fn start_master(
    bus: Bus,
    qm: QueueManager,
    frontend: FrontendService,
    period: Duration,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let mut pings = bus
        .feed()
        .subscribe(bus::subject("*", false, PING_QUEUE))
        .await?;
    let mut pages = bus.client().subscribe(SNAPSHOT_REQUEST).await?;
    let (b, fe, stop) = (bus.clone(), frontend.clone(), shutdown.clone());
    shutdown.spawn("client-pings-apply", async move {
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                m = pings.next() => {
                    let Some(m) = m else { break };
                    if let Ok(batch) = BusBatch::decode(m.payload) {
                        apply_pings(&fe, batch).await;
                    }
                }
                m = pages.next() => {
                    let Some(m) = m else { break };
                    let (Some(reply), Ok(req)) = (m.reply, serde_json::from_slice::<PageRequest>(&m.payload)) else { continue };
                    let body = serde_json::to_vec(&page(&fe, &req)).expect("page serialises");
                    let _ = b.client().publish(reply, body.into()).await;
                }
            }
        }
    });
    let stop = shutdown.clone();
    shutdown.spawn("client-snapshots", async move {
        let mut tick = tokio::time::interval(period);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tick.tick() => {}
            }
            let clients = frontend.clients();
            if !clients.take_dirty() {
                continue;
            }
            let orgs = clients.orgs().unwrap_or_default();
            let count: usize = orgs
                .iter()
                .map(|o| clients.list(o).map(|l| l.len()).unwrap_or(0))
                .sum();
            if let Value::Object(row) = json!({"Orgs": orgs, "Clients": count, "Node": bus.node()})
            {
                if let Err(e) = qm
                    .push(ROOT_ORG, SNAPSHOT_QUEUE, vec![row], "server", "")
                    .await
                {
                    tracing::warn!(error = %e, "cannot announce a client snapshot");
                }
            }
        }
    });
    Ok(())
}

fn page(frontend: &FrontendService, req: &PageRequest) -> Page {
    let clients = frontend.clients();
    if req.org.is_empty() {
        return Page {
            orgs: clients.orgs().unwrap_or_default(),
            ..Page::default()
        };
    }
    let mut all = clients.list(&req.org).unwrap_or_default();
    all.sort_by(|a, b| a.client_id.cmp(&b.client_id));
    let end = (req.offset + SNAPSHOT_PAGE).min(all.len());
    Page {
        orgs: Vec::new(),
        records: all
            .get(req.offset..end)
            .map(<[_]>::to_vec)
            .unwrap_or_default(),
        more: end < all.len(),
    }
}

async fn apply_pings(frontend: &FrontendService, batch: BusBatch) {
    let clients = frontend.clients();
    for q in batch.queues {
        for r in q.rows {
            let Ok(Value::Object(row)) = serde_json::from_str::<Value>(&r.json) else {
                continue;
            };
            let (Some(id), Some(at)) = (
                row.get("ClientId").and_then(Value::as_str),
                row.get("LastSeenAt").and_then(Value::as_i64),
            ) else {
                continue;
            };
            if let Err(e) = clients.seen(&batch.org, id, at).await {
                tracing::warn!(error = %e, "cannot apply a client ping");
            }
        }
    }
}

/// Fetches the master's records of an org into this node's cache, page by page; a cached
/// record seen more recently than the master's is kept. Returns records fetched.
pub async fn fetch_snapshot(bus: &Bus, frontend: &FrontendService, org: &str) -> usize {
    let clients = frontend.clients();
    let mut offset = 0;
    loop {
        let Some(p) = request(
            bus,
            &PageRequest {
                org: org.into(),
                offset,
            },
        )
        .await
        else {
            return offset;
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

async fn request(bus: &Bus, req: &PageRequest) -> Option<Page> {
    bus.request_json(SNAPSHOT_REQUEST, req, Duration::from_secs(5))
        .await
}

/// Node: sends its clients' last activity every [`PING_PERIOD`]; with `fetch`, fetches
/// snapshots at start and whenever the master announces one (the master itself does not).
pub async fn start_node(
    bus: Bus,
    qm: QueueManager,
    frontend: FrontendService,
    fetch: bool,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    if fetch {
        follow_snapshots(bus.clone(), frontend.clone(), shutdown.clone()).await?;
    }
    let stop = shutdown.clone();
    shutdown.spawn("client-pings-send", async move {
        let mut tick = tokio::time::interval(PING_PERIOD);
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tick.tick() => {}
            }
            let mut per_org: BTreeMap<String, Vec<serde_json::Map<String, Value>>> =
                BTreeMap::new();
            for (org, client, at) in frontend.take_activity() {
                if let Value::Object(row) =
                    json!({"ClientId": client, "LastSeenAt": at, "Node": bus.node()})
                {
                    per_org.entry(org).or_default().push(row);
                }
            }
            for (org, rows) in per_org {
                if let Err(e) = qm.push(&org, PING_QUEUE, rows, "server", "").await {
                    tracing::warn!(org, error = %e, "cannot send client pings");
                }
            }
        }
    });
    Ok(())
}

async fn follow_snapshots(
    bus: Bus,
    frontend: FrontendService,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let mut snapshots = bus
        .feed()
        .subscribe(bus::subject("*", false, SNAPSHOT_QUEUE))
        .await?;
    let (b, fe, stop) = (bus, frontend, shutdown.clone());
    shutdown.spawn("client-snapshots-follow", async move {
        let orgs = request(
            &b,
            &PageRequest {
                org: String::new(),
                offset: 0,
            },
        )
        .await
        .map(|p| p.orgs)
        .unwrap_or_default();
        for org in orgs {
            let n = fetch_snapshot(&b, &fe, &org).await;
            tracing::info!(org, records = n, "client snapshot fetched");
        }
        loop {
            let m = tokio::select! {
                _ = stop.cancelled() => break,
                m = snapshots.next() => match m { Some(m) => m, None => break },
            };
            let Ok(batch) = BusBatch::decode(m.payload) else {
                continue;
            };
            for q in batch.queues {
                for r in q.rows {
                    let orgs: Vec<String> = serde_json::from_str::<Value>(&r.json)
                        .ok()
                        .and_then(|v| serde_json::from_value(v["Orgs"].clone()).ok())
                        .unwrap_or_default();
                    for org in orgs {
                        fetch_snapshot(&b, &fe, &org).await;
                    }
                }
            }
        }
    });
    Ok(())
}
