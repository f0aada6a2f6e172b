//! Services every cluster node runs: answering presence pings, serving nothing else but
//! reporting itself every [`METRICS_PERIOD`] on `Server.Internal.FrontendMetrics`, and
//! following label edits made elsewhere so its connected clients get their new tables.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use prost::Message;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use talon_core::Shutdown;
use talon_proto::bus::BusBatch;

use crate::bus::Bus;
use crate::frontend::{ClientRecord, FrontendService};
use crate::queue::{now_us, QueueManager, ROOT_ORG};

/// Where nodes answer "is this client connected to you?".
pub const PING_SUBJECT: &str = "talonctl.ping";
/// Where the master answers client record lookups.
pub const CLIENT_LOOKUP: &str = "talonctl.client.get";
/// How often a node reports itself.
pub const METRICS_PERIOD: Duration = Duration::from_secs(10);
/// A node is alive while its last report is younger than this.
pub const ALIVE_WINDOW: Duration = Duration::from_secs(60);
/// How long a presence ping collects answers.
pub const PING_WAIT: Duration = Duration::from_millis(300);
/// The queue node reports go to.
pub const METRICS_QUEUE: &str = "Server.Internal.FrontendMetrics";

/// A client presence question: one client, or (`list`) every client of the org.
#[derive(Serialize, Deserialize)]
struct Ping {
    org: String,
    #[serde(default)]
    client_id: String,
    #[serde(default)]
    list: bool,
}

/// One node's report, a row of `Server.Internal.FrontendMetrics`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct NodeReport {
    pub node: String,
    pub role: String,
    /// Seconds since the epoch.
    pub timestamp: i64,
    pub cpu_percent: f64,
    pub rss_bytes: u64,
    pub connected_clients: BTreeMap<String, u64>,
    pub bus_connected: bool,
    /// Master only: durable messages not yet in the store.
    #[serde(default)]
    pub persister_lag: Option<u64>,
}

/// CPU use of this process between two samples.
pub struct CpuSampler {
    last: Option<(std::time::Instant, u64)>,
}

impl Default for CpuSampler {
    fn default() -> Self {
        Self::new()
    }
}

impl CpuSampler {
    /// A sampler; its first sample covers the time since the process started.
    pub fn new() -> Self {
        Self { last: None }
    }

    /// Percent of one core used since the last sample.
    pub fn sample(&mut self) -> f64 {
        let ticks = process_ticks();
        let now = std::time::Instant::now();
        let pct = match self.last {
            Some((t, prev)) => {
                let secs = now.duration_since(t).as_secs_f64().max(1e-3);
                (ticks.saturating_sub(prev) as f64 / 100.0) / secs * 100.0
            }
            None => 0.0,
        };
        self.last = Some((now, ticks));
        (pct * 10.0).round() / 10.0
    }
}

fn process_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0);
    let stime: u64 = f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
    utime + stime
}

/// Resident memory of this process in bytes.
pub fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

/// Sends a ping to every node and hands each answer to `answer` until it returns true
/// (then true) or [`PING_WAIT`] passes (then false).
async fn ask_nodes(bus: &Bus, ping: &Ping, mut answer: impl FnMut(Value) -> bool) -> bool {
    let inbox = bus.client().new_inbox();
    let Ok(mut answers) = bus.client().subscribe(inbox.clone()).await else {
        return false;
    };
    let body = serde_json::to_vec(ping).expect("ping serialises");
    if bus
        .client()
        .publish_with_reply(PING_SUBJECT, inbox, body.into())
        .await
        .is_err()
    {
        return false;
    }
    let deadline = tokio::time::sleep(PING_WAIT);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            _ = &mut deadline => return false,
            m = answers.next() => {
                let Some(m) = m else { return false };
                if let Ok(v) = serde_json::from_slice::<Value>(&m.payload) {
                    if answer(v) {
                        return true;
                    }
                }
            }
        }
    }
}

/// Asks every other node whether a client is connected there; any yes wins.
pub async fn connected_elsewhere(bus: &Bus, org: &str, client_id: &str) -> bool {
    let ping = Ping {
        org: org.into(),
        client_id: client_id.into(),
        list: false,
    };
    ask_nodes(bus, &ping, |v| {
        v.get("Node").and_then(Value::as_str) != Some(bus.node())
            && v.get("Connected") == Some(&Value::Bool(true))
    })
    .await
}

/// Clients of an org connected to any node that answers within [`PING_WAIT`].
pub async fn connected_in_cluster(bus: &Bus, org: &str) -> std::collections::HashSet<String> {
    let mut all = std::collections::HashSet::new();
    let ping = Ping {
        org: org.into(),
        client_id: String::new(),
        list: true,
    };
    ask_nodes(bus, &ping, |v| {
        let clients = v.get("Clients").and_then(Value::as_array);
        all.extend(
            clients
                .into_iter()
                .flatten()
                .filter_map(|c| c.as_str().map(String::from)),
        );
        false
    })
    .await;
    all
}

/// Asks the master for a client's record.
pub async fn lookup_client(bus: &Bus, org: &str, client_id: &str) -> Option<ClientRecord> {
    let q = Ping {
        org: org.into(),
        client_id: client_id.into(),
        list: false,
    };
    bus.request_json::<_, Option<ClientRecord>>(CLIENT_LOOKUP, &q, Duration::from_secs(2))
        .await
        .flatten()
}

/// Master: answers client record lookups from its store.
pub async fn serve_lookups(
    bus: Bus,
    frontend: FrontendService,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let mut sub = bus.client().subscribe(CLIENT_LOOKUP).await?;
    let stop = shutdown.clone();
    shutdown.spawn("client-lookups", async move {
        loop {
            let m = tokio::select! {
                _ = stop.cancelled() => break,
                m = sub.next() => match m { Some(m) => m, None => break },
            };
            let (Some(reply), Ok(q)) = (m.reply, serde_json::from_slice::<Ping>(&m.payload)) else {
                continue;
            };
            let rec = frontend.clients().get(&q.org, &q.client_id).ok().flatten();
            let body = serde_json::to_vec(&rec).expect("record serialises");
            let _ = bus.client().publish(reply, body.into()).await;
        }
    });
    Ok(())
}

/// Starts a node's services: ping answers, label following, reports, and client ping
/// mutations (with client snapshots fetched on every node but the master). `applied` is
/// the master's persister progress (its lag is reported), None on a minion.
pub async fn start(
    bus: Bus,
    qm: QueueManager,
    frontend: FrontendService,
    role: &'static str,
    applied: Option<Arc<AtomicU64>>,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let mut pings = bus.client().subscribe(PING_SUBJECT).await?;
    let mut labels = bus
        .client()
        .subscribe(crate::bus::subject("*", false, "Server.Internal.Label"))
        .await?;
    bus.client().flush().await?;
    super::clients::start_node(
        bus.clone(),
        qm.clone(),
        frontend.clone(),
        role != "master",
        shutdown.clone(),
    )
    .await?;
    let (b, fe, stop) = (bus.clone(), frontend.clone(), shutdown.clone());
    shutdown.spawn("presence-and-labels", async move {
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                m = pings.next() => {
                    let Some(m) = m else { break };
                    let (Some(reply), Ok(p)) = (m.reply, serde_json::from_slice::<Ping>(&m.payload)) else { continue };
                    let body = if p.list {
                        serde_json::json!({"Node": b.node(), "Clients": fe.connected(&p.org)})
                    } else {
                        serde_json::json!({"Node": b.node(), "Connected": fe.is_connected(&p.org, &p.client_id)})
                    };
                    let _ = b.client().publish(reply, body.to_string().into()).await;
                }
                m = labels.next() => {
                    let Some(m) = m else { break };
                    if let Ok(batch) = BusBatch::decode(m.payload) {
                        if batch.node != b.node() {
                            relabelled_elsewhere(&fe, batch).await;
                        }
                    }
                }
            }
        }
    });
    let stop = shutdown.clone();
    shutdown.spawn("node-report", async move {
        let mut sampler = CpuSampler::new();
        let mut tick = tokio::time::interval(METRICS_PERIOD);
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tick.tick() => {}
            }
            let lag = match &applied {
                Some(a) => stream_last_seq(&bus)
                    .await
                    .map(|last| last.saturating_sub(a.load(Ordering::Relaxed))),
                None => None,
            };
            let report = NodeReport {
                node: bus.node().to_string(),
                role: role.to_string(),
                timestamp: now_us() / 1_000_000,
                cpu_percent: sampler.sample(),
                rss_bytes: rss_bytes(),
                connected_clients: frontend.connected_counts(),
                bus_connected: bus.connected(),
                persister_lag: lag,
            };
            if let Ok(Value::Object(row)) = serde_json::to_value(&report) {
                if let Err(e) = qm
                    .push(ROOT_ORG, METRICS_QUEUE, vec![row], "server", "")
                    .await
                {
                    tracing::warn!(error = %e, "cannot report node metrics");
                }
            }
        }
    });
    Ok(())
}

/// The durable stream's last seq.
pub async fn stream_last_seq(bus: &Bus) -> Option<u64> {
    let mut s = bus.jetstream().get_stream(crate::bus::STREAM).await.ok()?;
    s.info().await.ok().map(|i| i.state.last_sequence)
}

/// Applies label rows pushed by another node to this node's cache and sessions.
async fn relabelled_elsewhere(frontend: &FrontendService, batch: BusBatch) {
    let clients = frontend.clients();
    for q in batch.queues {
        for r in q.rows {
            let Ok(Value::Object(row)) = serde_json::from_str::<Value>(&r.json) else {
                continue;
            };
            let get = |k: &str| row.get(k).and_then(Value::as_str).unwrap_or("").to_string();
            let (client, op, label) = (get("ClientId"), get("Operation"), get("Label"));
            let Ok(Some(mut rec)) = clients.get(&batch.org, &client) else {
                continue;
            };
            match op.as_str() {
                "set" if !rec.labels.contains(&label) => rec.labels.push(label),
                "remove" => rec.labels.retain(|l| *l != label),
                _ => continue,
            }
            if clients.put(&batch.org, &rec).await.is_ok() {
                frontend.labels_changed(&batch.org, &client, rec.labels.clone());
            }
        }
    }
}
