//! The admin service's view of the cluster: every node as the master last heard of it, or
//! in standalone mode the master itself, measured now.

use talon_proto::api::{ClusterStatusResponse, NodeStatus};
use talon_shared::node::reports::{rss_bytes, ALIVE_WINDOW};

use super::AdminService;

impl AdminService {
    /// The cluster's nodes, for `ClusterStatus`.
    pub(super) fn cluster_status_now(&self) -> ClusterStatusResponse {
        if self.bus.is_none() {
            let cpu = self.cpu.lock().expect("cpu sampler").sample();
            let node = NodeStatus {
                node: self.frontend.node().to_string(),
                role: "master".into(),
                alive: true,
                report_age_seconds: 0.0,
                connected_clients: self.frontend.connected_counts().values().sum(),
                cpu_percent: cpu,
                rss_bytes: rss_bytes(),
                bus_connected: false,
                persister_lag: -1,
            };
            return ClusterStatusResponse {
                mode: "standalone".into(),
                nodes: vec![node],
            };
        }
        let nodes = self
            .nodes
            .list()
            .into_iter()
            .map(|(age, r)| NodeStatus {
                alive: age < ALIVE_WINDOW,
                report_age_seconds: age.as_secs_f64(),
                connected_clients: r.connected_clients.values().sum(),
                cpu_percent: r.cpu_percent,
                rss_bytes: r.rss_bytes,
                bus_connected: r.bus_connected,
                persister_lag: r.persister_lag.map(|l| l as i64).unwrap_or(-1),
                node: r.node,
                role: r.role.as_str().to_string(),
            })
            .collect();
        ClusterStatusResponse {
            mode: "cluster".into(),
            nodes,
        }
    }
}
