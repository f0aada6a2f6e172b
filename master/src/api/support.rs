//! Helpers of the admin service: the server monitoring table as an API message, auditing,
//! and monitor errors as statuses.

use talon_proto::api::*;
use talon_shared::queue::QueueManager;
use tonic::{Response, Status};

use super::AdminService;

impl AdminService {
    // Status is tonic's error type; every handler returns it.
    #[allow(clippy::result_large_err)]
    pub(super) fn table(&self, org: &str) -> Result<Response<ServerMonitoringTable>, Status> {
        let list = self
            .monitor
            .list(org)
            .map_err(crate::error::ApiError::from)?;
        Ok(Response::new(ServerMonitoringTable {
            artifacts: list
                .into_iter()
                .map(|(artifact, e)| MonitoredArtifact {
                    artifact,
                    params: e.params.into_iter().collect(),
                    principal: e.principal,
                    permissions: e.permissions,
                })
                .collect(),
        }))
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
