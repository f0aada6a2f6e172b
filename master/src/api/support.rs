//! Helpers of the admin service: monitoring tables and client records as API messages,
//! auditing, and monitor errors as statuses.

use talon_proto::api::*;
use talon_shared::frontend::ClientRecord;
use talon_shared::queue::QueueManager;
use tonic::{Response, Status};

use super::AdminService;
use crate::error::to_status;

impl AdminService {
    /// Clients of an org connected here or, in a cluster, on any node.
    pub(super) async fn connected_set(&self, org: &str) -> std::collections::HashSet<String> {
        let mut set: std::collections::HashSet<String> =
            self.frontend.connected(org).into_iter().collect();
        if let Some(bus) = self.qm.bus() {
            set.extend(talon_shared::cluster::node::connected_in_cluster(bus, org).await);
        }
        set
    }

    pub(super) fn client_info(
        &self,
        connected: &std::collections::HashSet<String>,
        r: ClientRecord,
    ) -> ClientInfo {
        let connected = connected.contains(&r.client_id);
        ClientInfo {
            client_id: r.client_id,
            hostname: r.hostname,
            os: r.os,
            labels: r.labels,
            first_seen_at: r.first_seen_at,
            last_seen_at: r.last_seen_at,
            last_ip: r.last_ip,
            connected,
            version: r.version,
            last_event_table_version: r.last_event_table_version,
        }
    }

    // Status is tonic's error type; every handler returns it.
    #[allow(clippy::result_large_err)]
    pub(super) fn client_table(
        &self,
        org: &str,
    ) -> Result<Response<ClientMonitoringTable>, Status> {
        let clients = self.frontend.clients();
        let store_err = |e: talon_shared::store::Error| to_status(e.into());
        Ok(Response::new(ClientMonitoringTable {
            version: clients.version(org).map_err(store_err)?,
            entries: clients
                .table(org)
                .map_err(store_err)?
                .into_iter()
                .map(|e| ClientMonitoringEntry {
                    artifact: e.artifact,
                    label: e.label,
                    params: e.params.into_iter().collect(),
                })
                .collect(),
        }))
    }

    // Status is tonic's error type; every handler returns it.
    #[allow(clippy::result_large_err)]
    pub(super) fn table(&self, org: &str) -> Result<Response<ServerMonitoringTable>, Status> {
        let list = self.monitor.list(org).map_err(monitor_status)?;
        Ok(Response::new(ServerMonitoringTable {
            artifacts: list
                .into_iter()
                .map(|(artifact, params)| MonitoredArtifact {
                    artifact,
                    params: params.into_iter().collect(),
                })
                .collect(),
        }))
    }
}

pub(super) fn monitor_status(e: crate::monitor::Error) -> Status {
    match e {
        crate::monitor::Error::Invalid(m) => Status::invalid_argument(m),
        crate::monitor::Error::Store(e) => to_status(e.into()),
    }
}

/// Records an auditable action on `Server.Audit.Logs`.
pub(super) async fn audit(
    qm: &QueueManager,
    org: &str,
    operation: &str,
    principal: &str,
    details: serde_json::Value,
) {
    let row =
        serde_json::json!({"operation": operation, "principal": principal, "details": details});
    if let serde_json::Value::Object(m) = row {
        if let Err(e) = qm
            .push(org, "Server.Audit.Logs", vec![m], "server", "")
            .await
        {
            tracing::error!(error = %e, operation, "could not audit");
        }
    }
}
