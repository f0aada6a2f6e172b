//! The master's cluster services: client records reported by other nodes merged into the
//! store, node reports (`Server.Internal.FrontendMetrics`) aggregated into
//! `Server.Monitor.Health` every 10 s, and the node table behind `talon cluster status`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use prost::Message;
use serde_json::{json, Value};
use talon_core::Shutdown;
use talon_proto::bus::BusBatch;
use talon_shared::bus::{self, Bus};
use talon_shared::cluster::node::{NodeReport, ALIVE_WINDOW, METRICS_PERIOD, METRICS_QUEUE};
use talon_shared::frontend::{ClientRecord, FrontendService};
use talon_shared::queue::{QueueManager, ROOT_ORG};

/// Where the master answers what it watches (its registrations).
pub const REGISTRATIONS_REQUEST: &str = "talonctl.registrations";
/// How often the master checks whether the queues it watches changed.
pub const REGISTRATIONS_CHECK: Duration = Duration::from_secs(1);

/// The queue per-org health totals go to.
pub const HEALTH_QUEUE: &str = "Server.Monitor.Health";

/// The last report of every node, when it arrived.
#[derive(Clone, Default)]
pub struct Nodes {
    inner: Arc<Mutex<BTreeMap<String, (Instant, NodeReport)>>>,
}

impl Nodes {
    /// Records a report.
    pub fn record(&self, r: NodeReport) {
        self.inner
            .lock()
            .expect("nodes")
            .insert(r.node.clone(), (Instant::now(), r));
    }

    /// Every node: (age of its last report, the report).
    pub fn list(&self) -> Vec<(Duration, NodeReport)> {
        self.inner
            .lock()
            .expect("nodes")
            .values()
            .map(|(t, r)| (t.elapsed(), r.clone()))
            .collect()
    }

    /// Nodes alive (last report under 60 s old).
    pub fn alive(&self) -> Vec<NodeReport> {
        self.list()
            .into_iter()
            .filter(|(age, _)| *age < ALIVE_WINDOW)
            .map(|(_, r)| r)
            .collect()
    }
}

/// Starts the master's cluster services.
pub async fn start(
    bus: Bus,
    qm: QueueManager,
    frontend: FrontendService,
    nodes: Nodes,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    talon_shared::cluster::node::serve_lookups(bus.clone(), frontend.clone(), shutdown.clone())
        .await?;
    let mut infos = bus
        .client()
        .subscribe(bus::subject("*", false, "Server.Internal.ClientInfo"))
        .await?;
    let (b, fe, stop) = (bus.clone(), frontend.clone(), shutdown.clone());
    shutdown.spawn("client-info-merge", async move {
        loop {
            let m = tokio::select! {
                _ = stop.cancelled() => break,
                m = infos.next() => match m { Some(m) => m, None => break },
            };
            let Ok(batch) = BusBatch::decode(m.payload) else {
                continue;
            };
            if batch.node != b.node() {
                merge_client_info(&fe, &batch).await;
            }
        }
    });
    start_registrations(bus.clone(), qm.clone(), shutdown.clone()).await?;
    let mut metrics = qm.watch(ROOT_ORG, METRICS_QUEUE, "master-metrics").await?;
    let (n, stop) = (nodes.clone(), shutdown.clone());
    shutdown.spawn("node-reports", async move {
        loop {
            let ev = tokio::select! {
                _ = stop.cancelled() => break,
                ev = metrics.next() => match ev { Ok(ev) => ev, Err(_) => break },
            };
            match serde_json::from_str::<NodeReport>(&ev.row.json) {
                Ok(r) => n.record(r),
                Err(e) => tracing::warn!(error = %e, "unreadable node report"),
            }
        }
    });
    let stop = shutdown.clone();
    shutdown.spawn("health", async move {
        let mut tick = tokio::time::interval(METRICS_PERIOD);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tick.tick() => {}
            }
            write_health(&qm, &nodes).await;
        }
    });
    Ok(())
}

/// Writes one `Server.Monitor.Health` row per org: nodes alive and clients connected.
async fn write_health(qm: &QueueManager, nodes: &Nodes) {
    let alive = nodes.alive();
    let mut per_org: BTreeMap<String, u64> = BTreeMap::new();
    per_org.entry(ROOT_ORG.to_string()).or_insert(0);
    for r in &alive {
        for (org, c) in &r.connected_clients {
            *per_org.entry(org.clone()).or_insert(0) += c;
        }
    }
    let names: Vec<&str> = alive.iter().map(|r| r.node.as_str()).collect();
    for (org, clients) in per_org {
        let row = json!({"Nodes": names, "NodesAlive": alive.len(), "ConnectedClients": clients});
        if let Value::Object(m) = row {
            if let Err(e) = qm.push(&org, HEALTH_QUEUE, vec![m], "server", "").await {
                tracing::warn!(org, error = %e, "cannot write health");
            }
        }
    }
}

/// Merges a client record another node reported: the newer sighting wins, and last seen
/// never goes back.
async fn merge_client_info(frontend: &FrontendService, batch: &BusBatch) {
    let clients = frontend.clients();
    for q in &batch.queues {
        for r in &q.rows {
            let Ok(Value::Object(row)) = serde_json::from_str::<Value>(&r.json) else {
                continue;
            };
            let Some(Ok(rec)) = row
                .get("Record")
                .map(|v| serde_json::from_value::<ClientRecord>(v.clone()))
            else {
                continue;
            };
            let merged = match clients.get(&batch.org, &rec.client_id) {
                Ok(Some(old)) if old.last_seen_at > rec.last_seen_at => continue,
                Ok(Some(old)) => ClientRecord {
                    first_seen_at: old.first_seen_at.min(rec.first_seen_at),
                    ..rec
                },
                _ => rec,
            };
            if let Err(e) = clients.put(&batch.org, &merged).await {
                tracing::error!(error = %e, "cannot store a client record");
            }
        }
    }
}

/// The queues the master watches, as `org/queue`.
fn watched(qm: &QueueManager) -> Vec<String> {
    let mut out: Vec<String> = qm
        .orgs()
        .iter()
        .flat_map(|o| qm.stats(o))
        .filter(|q| q.watchers > 0)
        .map(|q| format!("{}/{}", q.org, q.name))
        .collect();
    out.sort();
    out
}

/// Publishes the queues the master watches on `Server.Internal.MasterRegistrations` when
/// they change, and answers a node asking for them (a node that starts gets them at once).
/// Nothing depends on them for delivery: every durable row goes to JetStream and every
/// node follows what its own watchers need, so there is no window in which rows are lost.
async fn start_registrations(bus: Bus, qm: QueueManager, shutdown: Shutdown) -> anyhow::Result<()> {
    let mut requests = bus.client().subscribe(REGISTRATIONS_REQUEST).await?;
    let stop = shutdown.clone();
    shutdown.spawn("registrations", async move {
        let mut tick = tokio::time::interval(REGISTRATIONS_CHECK);
        let mut last: Option<Vec<String>> = None;
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                r = requests.next() => {
                    let Some(r) = r else { break };
                    if let Some(reply) = r.reply {
                        let body = json!({"Node": bus.node(), "Queues": watched(&qm)}).to_string();
                        let _ = bus.client().publish(reply, body.into()).await;
                    }
                }
                _ = tick.tick() => {
                    let now = watched(&qm);
                    if last.as_ref() != Some(&now) {
                        if let Value::Object(row) = json!({"Node": bus.node(), "Queues": now}) {
                            let _ = qm.push(ROOT_ORG, "Server.Internal.MasterRegistrations", vec![row], "server", "").await;
                        }
                        last = Some(now);
                    }
                }
            }
        }
    });
    Ok(())
}
