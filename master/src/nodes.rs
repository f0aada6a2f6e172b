//! The master's view of the nodes: the last report of every node
//! (`Server.Internal.FrontendMetrics`), behind `talon cluster status`, and per-org health
//! totals written to `Server.Monitor.Health` every report period.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use talon_core::Shutdown;
use talon_shared::control::{self, ControlRow, Health, NodeReport};
use talon_shared::node::reports::{ALIVE_WINDOW, METRICS_PERIOD};
use talon_shared::queue::{QueueManager, ROOT_ORG};

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

/// Follows node reports and writes health rows until shutdown.
pub async fn start(qm: &QueueManager, nodes: &Nodes, shutdown: &Shutdown) -> anyhow::Result<()> {
    let mut reports = qm
        .watch(ROOT_ORG, NodeReport::QUEUE, "master-metrics")
        .await?;
    let (n, stop) = (nodes.clone(), shutdown.clone());
    shutdown.spawn("node-reports", async move {
        loop {
            let ev = tokio::select! {
                _ = stop.cancelled() => break,
                ev = reports.next() => match ev { Ok(ev) => ev, Err(_) => break },
            };
            match NodeReport::from_json(&ev.row.json) {
                Ok(r) => n.record(r),
                Err(e) => tracing::warn!(error = %e, "unreadable node report"),
            }
        }
    });
    let (qm, nodes, stop) = (qm.clone(), nodes.clone(), shutdown.clone());
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
    let names: Vec<String> = alive.iter().map(|r| r.node.clone()).collect();
    for (org, clients) in per_org {
        let health = Health {
            nodes: names.clone(),
            nodes_alive: alive.len(),
            connected_clients: clients,
        };
        if let Err(e) = control::push(qm, &org, &health).await {
            tracing::warn!(org, error = %e, "cannot write health");
        }
    }
}
