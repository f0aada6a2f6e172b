//! The admin service's client side: client records and the client monitoring table as API
//! messages, and edits of that table.

use talon_proto::api::*;
use talon_shared::queue::validate_org;
use talon_shared::records::{ClientRecord, TableEntry};
use tonic::{Response, Status};

use super::support::audit;
use super::{org_of, AdminService};
use crate::error::ApiError;

impl AdminService {
    /// Clients of an org connected here or, in a cluster, on any node.
    pub(super) async fn connected_set(&self, org: &str) -> std::collections::HashSet<String> {
        let mut set: std::collections::HashSet<String> =
            self.frontend.connected(org).into_iter().collect();
        if self.bus.is_some() {
            set.extend(self.frontend.connected_in_cluster(org).await);
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
        let store_err = |e: talon_shared::store::Error| Status::from(ApiError::from(e));
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

    /// Adds an artifact to an org's client monitoring table; connected clients and every
    /// node get the new table.
    // Status is tonic's error type; every handler returns it.
    #[allow(clippy::result_large_err)]
    pub(super) async fn add_to_client_table(
        &self,
        who: &str,
        r: ClientMonitoringRequest,
    ) -> Result<Response<ClientMonitoringTable>, Status> {
        let org = org_of(&r.org).to_string();
        validate_org(&org).map_err(ApiError::from)?;
        let entry = TableEntry {
            artifact: r.artifact.clone(),
            label: r.label.clone(),
            params: r.params.clone().into_iter().collect(),
        };
        self.frontend
            .clients()
            .add(&self.repo, &org, entry)
            .await
            .map_err(ApiError::BadRequest)?;
        audit(
            &self.qm,
            &org,
            "client_monitoring_add",
            who,
            serde_json::json!({"artifact": r.artifact, "label": r.label, "params": r.params}),
        )
        .await;
        self.frontend.table_changed(&org);
        self.cluster_state_changed().await;
        self.client_table(&org)
    }

    /// Removes an artifact from an org's client monitoring table (for all clients, or one
    /// label).
    #[allow(clippy::result_large_err)]
    pub(super) async fn remove_from_client_table(
        &self,
        who: &str,
        r: ClientMonitoringRequest,
    ) -> Result<Response<ClientMonitoringTable>, Status> {
        let org = org_of(&r.org).to_string();
        let removed = self
            .frontend
            .clients()
            .remove(&org, &r.artifact, &r.label)
            .await
            .map_err(ApiError::from)?;
        if removed.is_none() {
            let which = if r.label.is_empty() {
                "all clients".to_string()
            } else {
                format!("label {}", r.label)
            };
            return Err(ApiError::NotFound(format!(
                "artifact {} is not in the client monitoring table for {which}",
                r.artifact
            ))
            .into());
        }
        audit(
            &self.qm,
            &org,
            "client_monitoring_remove",
            who,
            serde_json::json!({"artifact": r.artifact, "label": r.label}),
        )
        .await;
        self.frontend.table_changed(&org);
        self.cluster_state_changed().await;
        self.client_table(&org)
    }
}
