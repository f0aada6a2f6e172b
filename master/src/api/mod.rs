//! The admin gRPC API (`proto/api.proto`) over the queue manager and artifact repository;
//! client records and monitoring tables are in `clients`, other conversions and auditing
//! in `support`.

mod auth;
mod client_admin;
mod nodes;
mod query;
mod support;
use support::audit;

use std::pin::Pin;

use futures::{Stream, StreamExt};
use talon_artifacts::{ArtifactKind, LoadedArtifact};
use talon_core::acl::Permission;
use talon_proto::api::admin_server::Admin;
use talon_proto::api::*;
use talon_shared::queue::{QueueManager, ROOT_ORG};
use talon_shared::vql_host::{metadata_namespace, Vql};

use crate::monitor::ServerMonitor;
use talon_core::Shutdown;
use talon_shared::frontend::FrontendService;
use tonic::{Request, Response, Status};

use crate::artifacts::ArtifactAdmin;
use crate::error::ApiError;
use talon_artifacts::Repository;
use talon_shared::bus::Bus;
use talon_shared::store::Store;

/// Rows a `Read` call buffers between the store thread and the gRPC stream.
const READ_BUFFER_ROWS: usize = 1024;

/// What the admin service touches, handed to it by `master::run`.
pub struct AdminParts {
    pub qm: QueueManager,
    /// Server metadata lives in the store's settings.
    pub store: Store,
    /// Artifacts as served (listing, showing).
    pub repo: Repository,
    /// In a cluster, the bus (state announcements; cluster status).
    pub bus: Option<Bus>,
    pub artifacts: ArtifactAdmin,
    pub vql: Vql,
    pub monitor: ServerMonitor,
    pub frontend: FrontendService,
    pub nodes: crate::nodes::Nodes,
    /// Streams and queries end when this fires.
    pub shutdown: Shutdown,
    /// Limits of a query that gives none.
    pub query_limits: talon_shared::query_pool::QueryLimits,
    pub users: crate::users::Users,
    /// The CA that issues users' certificates (None: this master cannot add users).
    pub ca: Option<std::sync::Arc<talon_core::pki::Ca>>,
    /// The API address new users' configs name.
    pub api_addr: String,
}

/// The admin service.
pub struct AdminService {
    qm: QueueManager,
    store: Store,
    repo: Repository,
    bus: Option<Bus>,
    artifacts: ArtifactAdmin,
    vql: Vql,
    monitor: ServerMonitor,
    frontend: FrontendService,
    nodes: crate::nodes::Nodes,
    cpu: std::sync::Arc<std::sync::Mutex<talon_shared::node::reports::CpuSampler>>,
    shutdown: Shutdown,
    query_limits: talon_shared::query_pool::QueryLimits,
    users: crate::users::Users,
    ca: Option<std::sync::Arc<talon_core::pki::Ca>>,
    api_addr: String,
}

impl AdminService {
    /// A service over its parts.
    pub fn new(p: AdminParts) -> Self {
        Self {
            qm: p.qm,
            store: p.store,
            repo: p.repo,
            bus: p.bus,
            artifacts: p.artifacts,
            vql: p.vql,
            monitor: p.monitor,
            frontend: p.frontend,
            nodes: p.nodes,
            cpu: Default::default(),
            shutdown: p.shutdown,
            query_limits: p.query_limits,
            users: p.users,
            ca: p.ca,
            api_addr: p.api_addr,
        }
    }
}

type RowStream = Pin<Box<dyn Stream<Item = Result<EventRow, Status>> + Send>>;

pub(super) fn org_of(org: &str) -> &str {
    if org.is_empty() {
        ROOT_ORG
    } else {
        org
    }
}

fn artifact_msg(a: &LoadedArtifact) -> Artifact {
    Artifact {
        name: a.def.name.clone(),
        r#type: a.kind.to_string(),
        description: a.def.description.clone().unwrap_or_default(),
        built_in: a.built_in,
        yaml: a.yaml.clone(),
    }
}

fn event_row(row: talon_shared::store::StoredRow) -> EventRow {
    EventRow {
        json: row.json,
        timestamp_us: row.ts_us,
        client_id: row.client,
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn push(&self, req: Request<PushRequest>) -> Result<Response<PushResponse>, Status> {
        let caller = self.allow(&req, Permission::Publish)?;
        let who = caller.name.clone();
        let r = req.into_inner();
        let org = org_of(&r.org);
        let kind = self.qm.kind(&r.artifact).map_err(ApiError::from)?;
        if kind != ArtifactKind::ServerEvent {
            return Err(Status::from(ApiError::PushRefused {
                queue: r.artifact,
                kind: kind.to_string(),
            }));
        }
        let mut texts = Vec::with_capacity(r.rows_json.len());
        for (index, bytes) in r.rows_json.into_iter().enumerate() {
            match String::from_utf8(bytes) {
                Ok(t) => texts.push(t),
                Err(_) => {
                    return Err(Status::from(ApiError::BadRequest(format!(
                        "row {index}: not valid UTF-8"
                    ))))
                }
            }
        }
        let rows = self.qm.parse_rows(&texts).map_err(ApiError::from)?;
        if r.validate_only {
            return Ok(Response::new(PushResponse {
                rows: rows.len() as u64,
            }));
        }
        let n = if r.push_id.is_empty() {
            self.qm.push(org, &r.artifact, rows, &who, "").await
        } else {
            let (id, part) = (&r.push_id, r.part);
            self.qm
                .push_part(org, &r.artifact, rows, &who, id, part)
                .await
        }
        .map_err(ApiError::from)?;
        Ok(Response::new(PushResponse { rows: n }))
    }

    type WatchStream = RowStream;

    async fn watch(&self, req: Request<WatchRequest>) -> Result<Response<RowStream>, Status> {
        let caller = self.allow(&req, Permission::ReadResults)?;
        let who = caller.name.clone();
        let r = req.into_inner();
        let name = if r.watcher_name.is_empty() {
            who
        } else {
            r.watcher_name
        };
        let watcher = self
            .qm
            .watch(org_of(&r.org), &r.artifact, &name)
            .await
            .map_err(ApiError::from)?;
        let shutdown = self.shutdown.clone();
        let stream = futures::stream::unfold(Some(watcher), move |w| {
            let shutdown = shutdown.clone();
            async move {
                let mut w = w?;
                tokio::select! {
                    _ = shutdown.cancelled() => None,
                    ev = w.next() => match ev {
                        Ok(ev) => Some((Ok(event_row(ev.row)), Some(w))),
                        Err(e) => Some((Err(Status::from(ApiError::from(e))), None)),
                    },
                }
            }
        });
        Ok(Response::new(stream.boxed()))
    }

    type ReadStream = RowStream;

    async fn read(&self, req: Request<ReadRequest>) -> Result<Response<RowStream>, Status> {
        self.allow(&req, Permission::ReadResults)?;
        let r = req.into_inner();
        let end = if r.end_us == 0 { i64::MAX } else { r.end_us };
        if end < r.start_us {
            return Err(Status::from(ApiError::BadRequest(format!(
                "end {} is before start {}",
                r.end_us, r.start_us
            ))));
        }
        let client = (!r.client_id.is_empty()).then_some(r.client_id);
        let (tx, rx) = tokio::sync::mpsc::channel(READ_BUFFER_ROWS);
        // Check the queue before answering, so a bad name is an error, not an empty stream.
        self.qm
            .check_stored(org_of(&r.org), &r.artifact)
            .map_err(ApiError::from)?;
        let qm = self.qm.clone();
        let org = org_of(&r.org).to_string();
        let span = tracing::info_span!(parent: self.shutdown.span(), "api-read", org = %org, queue = %r.artifact);
        self.shutdown.spawn_in(span, async move {
            let err_tx = tx.clone();
            let res = qm
                .read(&org, &r.artifact, client, r.start_us, end, move |_, row| {
                    tx.blocking_send(Ok(event_row(row))).is_ok()
                })
                .await;
            if let Err(e) = res {
                let _ = err_tx.send(Err(Status::from(ApiError::from(e)))).await;
            }
        });
        Ok(Response::new(
            tokio_stream::wrappers::ReceiverStream::new(rx).boxed(),
        ))
    }

    async fn list_queues(
        &self,
        req: Request<ListQueuesRequest>,
    ) -> Result<Response<ListQueuesResponse>, Status> {
        self.allow(&req, Permission::ReadResults)?;
        let org = org_of(&req.get_ref().org).to_string();
        talon_shared::queue::validate_org(&org).map_err(ApiError::from)?;
        let queues = self
            .qm
            .stats(&org)
            .into_iter()
            .map(|s| QueueStats {
                name: s.name,
                r#type: s.kind,
                watchers: s.watchers,
                rows_pushed: s.rows_pushed,
                rows_dropped: s.rows_dropped,
                durable: s.durable,
                rows_caught_up: s.rows_caught_up,
            })
            .collect();
        Ok(Response::new(ListQueuesResponse { queues }))
    }

    async fn list_artifacts(
        &self,
        req: Request<ListArtifactsRequest>,
    ) -> Result<Response<ListArtifactsResponse>, Status> {
        self.authorize(&req, ROOT_ORG, Permission::ReadResults)?;
        let artifacts = self
            .repo
            .list()
            .iter()
            .map(|a| ArtifactSummary {
                name: a.def.name.clone(),
                r#type: a.kind.to_string(),
                description: summary(a.def.description.as_deref().unwrap_or_default()),
                built_in: a.built_in,
            })
            .collect();
        Ok(Response::new(ListArtifactsResponse { artifacts }))
    }

    async fn get_artifact(
        &self,
        req: Request<GetArtifactRequest>,
    ) -> Result<Response<Artifact>, Status> {
        self.authorize(&req, ROOT_ORG, Permission::ReadResults)?;
        let name = &req.get_ref().name;
        match self.repo.get(name) {
            Some(a) => Ok(Response::new(artifact_msg(&a))),
            None => Err(Status::from(ApiError::from(
                talon_artifacts::repository::Error::NotFound(name.clone()),
            ))),
        }
    }

    async fn add_artifact(
        &self,
        req: Request<SetArtifactRequest>,
    ) -> Result<Response<Artifact>, Status> {
        self.set_artifact(req, false).await
    }

    async fn update_artifact(
        &self,
        req: Request<SetArtifactRequest>,
    ) -> Result<Response<Artifact>, Status> {
        self.set_artifact(req, true).await
    }

    type QueryStream = Pin<Box<dyn Stream<Item = Result<QueryResponse, Status>> + Send>>;

    async fn query(
        &self,
        req: Request<QueryRequest>,
    ) -> Result<Response<Self::QueryStream>, Status> {
        self.query_call(req)
    }

    async fn list_server_monitoring(
        &self,
        req: Request<ServerMonitoringRequest>,
    ) -> Result<Response<ServerMonitoringTable>, Status> {
        self.allow(&req, Permission::ReadResults)?;
        self.table(org_of(&req.get_ref().org))
    }

    async fn add_server_monitoring(
        &self,
        req: Request<ServerMonitoringRequest>,
    ) -> Result<Response<ServerMonitoringTable>, Status> {
        let caller = self.allow(&req, Permission::CollectServer)?;
        let who = caller.name.clone();
        let r = req.into_inner();
        let org = org_of(&r.org).to_string();
        self.monitor
            .add(
                &org,
                &r.artifact,
                r.params.clone().into_iter().collect(),
                &caller.name,
                caller.permissions,
            )
            .await
            .map_err(ApiError::from)?;
        audit(
            &self.qm,
            &org,
            "server_monitoring_add",
            &who,
            serde_json::json!({"artifact": r.artifact, "params": r.params}),
        )
        .await;
        self.table(&org)
    }

    async fn remove_server_monitoring(
        &self,
        req: Request<ServerMonitoringRequest>,
    ) -> Result<Response<ServerMonitoringTable>, Status> {
        let caller = self.allow(&req, Permission::CollectServer)?;
        let who = caller.name.clone();
        let r = req.into_inner();
        let org = org_of(&r.org).to_string();
        if !self
            .monitor
            .remove(&org, &r.artifact)
            .await
            .map_err(ApiError::from)?
        {
            return Err(ApiError::NotFound(format!(
                "artifact {} is not in the server monitoring table of org {org}",
                r.artifact
            ))
            .into());
        }
        audit(
            &self.qm,
            &org,
            "server_monitoring_remove",
            &who,
            serde_json::json!({"artifact": r.artifact}),
        )
        .await;
        self.table(&org)
    }

    async fn set_metadata(
        &self,
        req: Request<SetMetadataRequest>,
    ) -> Result<Response<Metadata>, Status> {
        let caller = self.allow(&req, Permission::OrgAdmin)?;
        let who = caller.name.clone();
        let r = req.into_inner();
        let org = org_of(&r.org).to_string();
        talon_shared::queue::validate_org(&org).map_err(ApiError::from)?;
        if r.key.is_empty() {
            return Err(ApiError::BadRequest("metadata key is empty".into()).into());
        }
        self.store
            .set_setting(&metadata_namespace(&org), &r.key, Some(&r.value))
            .await
            .map_err(ApiError::from)?;
        let row = serde_json::json!({"client_id": "server", "key": r.key, "value": r.value, "principal": who});
        if let serde_json::Value::Object(m) = row {
            if let Err(e) = self
                .qm
                .push(
                    &org,
                    "Server.Internal.MetadataModifications",
                    vec![m],
                    &who,
                    "",
                )
                .await
            {
                tracing::error!(error = %e, "could not announce a metadata change");
            }
        }
        self.metadata_of(&org, &r.key)
    }

    async fn get_metadata(
        &self,
        req: Request<GetMetadataRequest>,
    ) -> Result<Response<Metadata>, Status> {
        self.allow(&req, Permission::ReadResults)?;
        let r = req.into_inner();
        self.metadata_of(org_of(&r.org), &r.key)
    }

    async fn list_clients(
        &self,
        req: Request<ListClientsRequest>,
    ) -> Result<Response<ListClientsResponse>, Status> {
        self.allow(&req, Permission::ReadResults)?;
        let r = req.into_inner();
        let org = org_of(&r.org).to_string();
        let found = self
            .frontend
            .clients()
            .search(&org, &r.search)
            .map_err(ApiError::from)?;
        let connected = self.connected_set(&org).await;
        let clients = found
            .into_iter()
            .map(|c| self.client_info(&connected, c))
            .collect();
        Ok(Response::new(ListClientsResponse { clients }))
    }

    async fn get_client(
        &self,
        req: Request<GetClientRequest>,
    ) -> Result<Response<ClientInfo>, Status> {
        self.allow(&req, Permission::ReadResults)?;
        let r = req.into_inner();
        let org = org_of(&r.org).to_string();
        match self
            .frontend
            .clients()
            .get(&org, &r.client_id)
            .map_err(ApiError::from)?
        {
            Some(c) => {
                let connected = self.connected_set(&org).await;
                Ok(Response::new(self.client_info(&connected, c)))
            }
            None => Err(
                ApiError::NotFound(format!("unknown client {} in org {org}", r.client_id)).into(),
            ),
        }
    }

    async fn delete_client(
        &self,
        req: Request<DeleteClientRequest>,
    ) -> Result<Response<DeleteClientResponse>, Status> {
        let caller = self.allow(&req, Permission::OrgAdmin)?;
        let who = caller.name.clone();
        let r = req.into_inner();
        let org = org_of(&r.org).to_string();
        talon_shared::queue::validate_org(&org).map_err(ApiError::from)?;
        let deleted = self
            .frontend
            .clients()
            .delete(&org, &r.client_id)
            .await
            .map_err(ApiError::from)?;
        if !deleted {
            return Err(
                ApiError::NotFound(format!("unknown client {} in org {org}", r.client_id)).into(),
            );
        }
        let row = serde_json::json!({
            "ClientId": r.client_id,
            "Principal": who,
            "Reason": r.reason,
        });
        let row = match row {
            serde_json::Value::Object(m) => m,
            _ => unreachable!("an object literal"),
        };
        if let Err(e) = self
            .qm
            .push(&org, "Server.Internal.ClientDelete", vec![row], &who, "")
            .await
        {
            tracing::error!(client_id = %r.client_id, error = %e, "could not announce a client deletion");
        }
        audit(
            &self.qm,
            &org,
            "client_delete",
            &who,
            serde_json::json!({"client_id": r.client_id, "reason": r.reason}),
        )
        .await;
        Ok(Response::new(DeleteClientResponse {}))
    }

    async fn label_client(
        &self,
        req: Request<LabelClientRequest>,
    ) -> Result<Response<ClientInfo>, Status> {
        let caller = self.allow(&req, Permission::LabelClient)?;
        let who = caller.name.clone();
        let r = req.into_inner();
        let org = org_of(&r.org).to_string();
        let c = self
            .frontend
            .relabel(&org, &r.client_id, &r.add, &r.remove, &who)
            .await
            .map_err(ApiError::from)?;
        audit(
            &self.qm,
            &org,
            "client_label",
            &who,
            serde_json::json!({"client_id": c.client_id, "add": r.add, "remove": r.remove}),
        )
        .await;
        let connected = self.connected_set(&org).await;
        Ok(Response::new(self.client_info(&connected, c)))
    }

    async fn list_client_monitoring(
        &self,
        req: Request<ClientMonitoringRequest>,
    ) -> Result<Response<ClientMonitoringTable>, Status> {
        self.allow(&req, Permission::ReadResults)?;
        self.client_table(org_of(&req.get_ref().org))
    }

    async fn add_client_monitoring(
        &self,
        req: Request<ClientMonitoringRequest>,
    ) -> Result<Response<ClientMonitoringTable>, Status> {
        let caller = self.allow(&req, Permission::CollectClient)?;
        let who = caller.name.clone();
        self.add_to_client_table(&who, req.into_inner()).await
    }

    async fn remove_client_monitoring(
        &self,
        req: Request<ClientMonitoringRequest>,
    ) -> Result<Response<ClientMonitoringTable>, Status> {
        let caller = self.allow(&req, Permission::CollectClient)?;
        let who = caller.name.clone();
        self.remove_from_client_table(&who, req.into_inner()).await
    }

    async fn cluster_status(
        &self,
        req: Request<ClusterStatusRequest>,
    ) -> Result<Response<ClusterStatusResponse>, Status> {
        self.authorize(&req, ROOT_ORG, Permission::ServerAdmin)?;
        Ok(Response::new(self.cluster_status_now()))
    }

    async fn delete_artifact(
        &self,
        req: Request<DeleteArtifactRequest>,
    ) -> Result<Response<DeleteArtifactResponse>, Status> {
        let caller = self.authorize(&req, ROOT_ORG, Permission::ArtifactWriter)?;
        let who = caller.name.clone();
        self.artifacts
            .delete(&req.get_ref().name, &who)
            .await
            .map_err(Status::from)?;
        self.cluster_state_changed().await;
        Ok(Response::new(DeleteArtifactResponse {}))
    }

    async fn add_user(
        &self,
        req: Request<AddUserRequest>,
    ) -> Result<Response<AddUserResponse>, Status> {
        self.add_user_call(req).await
    }

    async fn list_users(
        &self,
        req: Request<ListUsersRequest>,
    ) -> Result<Response<ListUsersResponse>, Status> {
        self.list_users_call(req).await
    }

    async fn remove_user(
        &self,
        req: Request<RemoveUserRequest>,
    ) -> Result<Response<RemoveUserResponse>, Status> {
        self.remove_user_call(req).await
    }

    async fn who_am_i(&self, req: Request<WhoAmIRequest>) -> Result<Response<User>, Status> {
        self.who_am_i_call(req).await
    }
}

impl AdminService {
    /// The metadata of an org: every key, or `key` alone (NOT_FOUND when missing).
    #[allow(clippy::result_large_err)]
    fn metadata_of(&self, org: &str, key: &str) -> Result<Response<Metadata>, Status> {
        let all = self
            .store
            .settings(&metadata_namespace(org))
            .map_err(ApiError::from)?;
        let values: std::collections::HashMap<String, String> = all
            .into_iter()
            .filter(|(k, _)| key.is_empty() || k == key)
            .collect();
        if !key.is_empty() && values.is_empty() {
            return Err(ApiError::NotFound(format!("no metadata key {key} in org {org}")).into());
        }
        Ok(Response::new(Metadata { values }))
    }

    async fn set_artifact(
        &self,
        req: Request<SetArtifactRequest>,
        replace: bool,
    ) -> Result<Response<Artifact>, Status> {
        let caller = self.authorize(&req, ROOT_ORG, Permission::ArtifactWriter)?;
        let who = caller.name.clone();
        let r = req.into_inner();
        let origin = if r.origin.is_empty() {
            "<request>".to_string()
        } else {
            r.origin
        };
        let a = self
            .artifacts
            .set(&origin, &r.yaml, replace, &who)
            .await
            .map_err(Status::from)?;
        self.cluster_state_changed().await;
        Ok(Response::new(artifact_msg(&a)))
    }

    /// In a cluster, tells every node the new artifacts and client monitoring tables.
    async fn cluster_state_changed(&self) {
        if let Some(bus) = &self.bus {
            crate::state::publish(bus, &self.store, &self.frontend).await;
        }
    }
}

/// Characters of an artifact's description a listing shows; `artifacts show` has it all.
const LISTED_DESCRIPTION_CHARS: usize = 512;

/// The start of a description, so a listing stays small however long descriptions are.
fn summary(description: &str) -> String {
    match description.char_indices().nth(LISTED_DESCRIPTION_CHARS) {
        Some((cut, _)) => format!("{}...", &description[..cut]),
        None => description.to_string(),
    }
}
