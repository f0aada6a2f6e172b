//! The node's report every [`METRICS_PERIOD`] on `Server.Internal.FrontendMetrics`: CPU,
//! memory, connected clients per org, bus state and (on the master) persister lag. The
//! master keeps the last report of every node and totals them into health rows.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use talon_core::Shutdown;

use crate::bus::Bus;
use crate::control::{self, NodeReport, Role};
use crate::frontend::FrontendService;
use crate::queue::{now_us, QueueManager, ROOT_ORG};

/// How often a node reports itself.
pub const METRICS_PERIOD: Duration = Duration::from_secs(10);
/// A node is alive while its last report is younger than this.
pub const ALIVE_WINDOW: Duration = Duration::from_secs(60);

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

/// Reports this node every [`METRICS_PERIOD`] until shutdown.
pub fn start(
    bus: Bus,
    qm: QueueManager,
    frontend: FrontendService,
    role: Role,
    applied: Option<Arc<AtomicU64>>,
    shutdown: &Shutdown,
) {
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
                role,
                timestamp: now_us() / 1_000_000,
                cpu_percent: sampler.sample(),
                rss_bytes: rss_bytes(),
                connected_clients: frontend.connected_counts(),
                bus_connected: bus.connected(),
                persister_lag: lag,
            };
            if let Err(e) = control::push(&qm, ROOT_ORG, &report).await {
                tracing::warn!(error = %e, "cannot report node metrics");
            }
        }
    });
}

/// The durable stream's last seq.
pub async fn stream_last_seq(bus: &Bus) -> Option<u64> {
    let mut s = bus.jetstream().get_stream(crate::bus::STREAM).await.ok()?;
    s.info().await.ok().map(|i| i.state.last_sequence)
}
