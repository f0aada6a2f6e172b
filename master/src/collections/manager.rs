//! The manager task: applies commands, hunt offers and delivery notes in order (see the
//! module above), and the helpers flows are made with.

use std::collections::{BTreeMap, HashMap};

use serde_json::{Map, Value};
use talon_artifacts::{ArtifactKind, Repository};
use talon_core::Shutdown;
use talon_shared::collections::*;
use talon_shared::control::ControlRow;
use talon_shared::queue::{now_us, QueueManager};
use talon_shared::records::Clients;
use talon_shared::store::{SettingWrite, Store, StoredRow};
use tokio::sync::mpsc;

use super::server::SERVER_CLIENT;
use super::{audit, flow, CollectSpec, Command, Error, Flow, Result, PENDING_NS, POLL};

/// The manager task's state.
pub struct Manager {
    pub(super) qm: QueueManager,
    pub(super) store: Store,
    pub(super) repo: Repository,
    pub(super) clients: Clients,
    pub(super) cmd: mpsc::Receiver<Command>,
    pub(super) error_regex: regex::Regex,
    pub(super) hunts: HashMap<(String, String), Hunt>,
}

pub(super) fn load_flow(
    store: &Store,
    org: &str,
    client: &str,
    flow_id: &str,
) -> Result<Option<Flow>> {
    match store.setting(&flows_ns(org), &task_key(client, flow_id))? {
        Some(j) => serde_json::from_str(&j)
            .map(Some)
            .map_err(|e| Error::Invalid(format!("flow {flow_id}: {e}"))),
        None => Ok(None),
    }
}

pub(super) fn json_of<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).expect("records serialise")
}

/// Compiles artifacts for a collection: every one must exist and be of `kind`.
pub(super) fn compile(
    repo: &Repository,
    artifacts: &[String],
    params: &BTreeMap<String, String>,
    kind: ArtifactKind,
) -> Result<Vec<TaskQuery>> {
    if artifacts.is_empty() {
        return Err(Error::Invalid("no artifact given".into()));
    }
    let params: Vec<(String, String)> = params.clone().into_iter().collect();
    let mut out = Vec::new();
    for name in artifacts {
        let a = repo
            .get(name)
            .ok_or_else(|| Error::NotFound(format!("unknown artifact {name}")))?;
        if a.kind != kind {
            return Err(Error::Invalid(format!(
                "{name} is a {:?} artifact; only {:?} artifacts can be collected here",
                a.kind, kind
            )));
        }
        // Only the parameters an artifact declares are its own.
        let own: Vec<(String, String)> = params
            .iter()
            .filter(|(k, _)| a.def.parameters.iter().any(|p| &p.name == k))
            .cloned()
            .collect();
        let compiled = talon_artifacts::compile::compile_artifact(repo, &a, &own)
            .map_err(|e| Error::Invalid(format!("{name}: {e}")))?;
        for c in compiled {
            out.push(TaskQuery {
                artifact: name.clone(),
                source: c.queue,
                precondition: c.precondition.unwrap_or_default(),
                query: c.query,
                env: c.env.into_iter().map(|(k, v)| (k, v.to_text())).collect(),
            });
        }
    }
    for k in params.iter().map(|(k, _)| k) {
        let declared = artifacts.iter().any(|n| {
            repo.get(n)
                .is_some_and(|a| a.def.parameters.iter().any(|p| &p.name == k))
        });
        if !declared {
            return Err(Error::Invalid(format!(
                "parameter {k} is not a parameter of {}",
                artifacts.join(", ")
            )));
        }
    }
    Ok(out)
}

/// A new flow record and its task: `what` is the collection (a hunt's start request, or
/// one made for a single client).
pub(super) fn new_flow(
    flow_id: String,
    client: &str,
    creator: &str,
    what: &HuntRequest,
    hunt_id: &str,
) -> (Flow, Task) {
    let (artifacts, params, queries) = (&what.artifacts, &what.parameters, what.queries.clone());
    let max_rows = what.max_rows;
    let timeout = if what.timeout == 0 {
        DEFAULT_FLOW_TIMEOUT_SECS
    } else {
        what.timeout
    };
    let specs = artifacts
        .iter()
        .map(|a| flow::Spec {
            artifact: a.clone(),
            parameters: flow::SpecParameters {
                env: params
                    .iter()
                    .map(|(k, v)| flow::EnvEntry {
                        key: k.clone(),
                        value: v.clone(),
                    })
                    .collect(),
            },
        })
        .collect();
    let flow = Flow {
        session_id: flow_id.clone(),
        client_id: client.to_string(),
        request: flow::Request {
            creator: creator.to_string(),
            client_id: client.to_string(),
            flow_id: flow_id.clone(),
            artifacts: artifacts.to_vec(),
            specs,
            timeout,
            max_rows,
            hunt_id: hunt_id.to_string(),
        },
        create_time: now_us(),
        state: "RUNNING".into(),
        total_requests: queries.len() as u64,
        outstanding_requests: queries.len() as u64,
        ..Flow::default()
    };
    let task = Task::Collect {
        flow_id,
        queries,
        timeout_secs: timeout,
        max_rows,
    };
    (flow, task)
}

impl Manager {
    /// Runs until `stop`: first pushes completions a crash left pending and re-offers
    /// every running hunt, then applies changes in order.
    pub async fn run(mut self, stop: Shutdown) {
        if let Err(e) = self.push_pending_completions().await {
            tracing::error!(error = %e, "cannot push pending flow completions");
        }
        // What a server flow stored before a restart is filed first; one still running
        // then was cut off (it runs in this process) and ends as an unknown flow.
        if let Err(e) = self.apply_responses().await {
            tracing::error!(error = %e, "cannot apply flow responses");
        }
        if let Err(e) = self.end_cut_off_server_flows().await {
            tracing::error!(error = %e, "cannot end server flows a restart cut off");
        }
        let mut offers = match self
            .qm
            .watch_every_org(Participation::QUEUE, "hunt-manager")
        {
            Ok(w) => w,
            Err(e) => {
                tracing::error!(error = %e, "the hunt manager cannot follow hunt offers");
                return;
            }
        };
        let mut sent = match self
            .qm
            .watch_every_org(ClientScheduled::QUEUE, "flow-manager")
        {
            Ok(w) => w,
            Err(e) => {
                tracing::error!(error = %e, "the flow manager cannot follow deliveries");
                return;
            }
        };
        self.announce_running_hunts().await;
        let mut poll = tokio::time::interval(POLL);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut ticks = 0u64;
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                cmd = self.cmd.recv() => match cmd {
                    Some(cmd) => self.handle(cmd).await,
                    None => break,
                },
                offer = offers.next() => {
                    let Some(first) = offer else { break };
                    let batch = drain(first, &mut offers);
                    if let Err(e) = self.apply_offers(batch).await {
                        tracing::error!(error = %e, "cannot apply hunt offers");
                    }
                }
                note = sent.next() => {
                    let Some(first) = note else { break };
                    let batch = drain(first, &mut sent);
                    if let Err(e) = self.apply_sent(batch).await {
                        tracing::error!(error = %e, "cannot note delivered flows");
                    }
                }
                _ = poll.tick() => {
                    ticks += 1;
                    if let Err(e) = self.apply_responses().await {
                        tracing::error!(error = %e, "cannot apply flow responses");
                    }
                    if ticks.is_multiple_of(10) {
                        self.expire_hunts().await;
                    }
                }
            }
        }
    }

    pub(super) async fn handle(&mut self, cmd: Command) {
        match cmd {
            Command::Collect {
                org,
                spec,
                creator,
                reply,
            } => {
                let _ = reply.send(self.collect(&org, spec, &creator).await);
            }
            Command::Cancel {
                org,
                client_id,
                flow_id,
                user,
                reply,
            } => {
                let _ = reply.send(self.cancel(&org, &client_id, &flow_id, &user).await);
            }
            Command::CreateHunt {
                org,
                spec,
                creator,
                reply,
            } => {
                let _ = reply.send(self.create_hunt(&org, spec, &creator).await);
            }
            Command::ModifyHunt {
                org,
                hunt_id,
                action,
                user,
                reply,
            } => {
                let _ = reply.send(self.modify_hunt(&org, &hunt_id, action, &user).await);
            }
        }
    }

    pub(super) async fn collect(
        &mut self,
        org: &str,
        spec: CollectSpec,
        creator: &str,
    ) -> Result<Flow> {
        if spec.client_id == SERVER_CLIENT {
            return self.collect_on_server(org, spec, creator).await;
        }
        if !talon_core::ids::valid_client_id(&spec.client_id) {
            return Err(Error::Invalid(format!(
                "invalid client id {:?}: expected C. and 16 hex digits",
                spec.client_id
            )));
        }
        if self.clients.get(org, &spec.client_id)?.is_none() {
            return Err(Error::NotFound(format!(
                "unknown client {} in org {org}",
                spec.client_id
            )));
        }
        let queries = compile(
            &self.repo,
            &spec.artifacts,
            &spec.params,
            ArtifactKind::Client,
        )?;
        let what = HuntRequest {
            artifacts: spec.artifacts.clone(),
            parameters: spec.params.clone(),
            queries,
            timeout: spec.timeout,
            max_rows: spec.max_rows,
        };
        let (flow, task) = new_flow(new_flow_id(), &spec.client_id, creator, &what, "");
        let key = task_key(&spec.client_id, &flow.session_id);
        self.store
            .transaction(
                Vec::new(),
                vec![
                    (flows_ns(org), key.clone(), Some(json_of(&flow))),
                    (
                        tasks_ns(org),
                        task.key(&spec.client_id),
                        Some(json_of(&task)),
                    ),
                ],
            )
            .await?;
        self.deliver(org, vec![(spec.client_id.clone(), task)])
            .await;
        audit(
            &self.qm,
            org,
            "CollectClient",
            creator,
            serde_json::json!({"client_id": spec.client_id, "flow_id": flow.session_id, "artifacts": spec.artifacts}),
        )
        .await;
        Ok(flow)
    }

    /// A server flow's record (its queries are run by [`Collections::collect_server`]).
    async fn collect_on_server(
        &mut self,
        org: &str,
        spec: CollectSpec,
        creator: &str,
    ) -> Result<Flow> {
        let queries = compile(
            &self.repo,
            &spec.artifacts,
            &spec.params,
            ArtifactKind::Server,
        )?;
        let what = HuntRequest {
            artifacts: spec.artifacts.clone(),
            parameters: spec.params.clone(),
            queries,
            timeout: spec.timeout,
            max_rows: spec.max_rows,
        };
        let (mut flow, _) = new_flow(new_flow_id(), SERVER_CLIENT, creator, &what, "");
        flow.inflight_time = now_us() / 1_000_000;
        self.store
            .set_setting(
                &flows_ns(org),
                &task_key(SERVER_CLIENT, &flow.session_id),
                Some(&json_of(&flow)),
            )
            .await?;
        audit(
            &self.qm,
            org,
            "CollectServer",
            creator,
            serde_json::json!({"flow_id": flow.session_id, "artifacts": spec.artifacts}),
        )
        .await;
        Ok(flow)
    }

    /// Tasks to the node holding each client (live delivery; a client not connected
    /// gets them from the store when it connects).
    pub(super) async fn deliver(&self, org: &str, tasks: Vec<(String, Task)>) {
        if tasks.is_empty() {
            return;
        }
        let rows: Vec<Map<String, Value>> = tasks
            .into_iter()
            .map(|(client, task)| {
                ClientTasks {
                    client_id: client,
                    flow_id: task.flow_id().to_string(),
                    tasks: vec![task],
                }
                .to_row()
            })
            .collect();
        if let Err(e) = self
            .qm
            .push(org, ClientTasks::QUEUE, rows, "server", "")
            .await
        {
            tracing::error!(org, error = %e, "cannot send tasks to the nodes; clients get them when they connect");
        }
    }

    /// Server flows still RUNNING at start: the process that ran them is gone.
    async fn end_cut_off_server_flows(&mut self) -> Result<()> {
        for org in self.orgs()? {
            let prefix = format!("{SERVER_CLIENT}/");
            for (_, json) in self.store.settings_with_prefix(&flows_ns(&org), &prefix)? {
                let Ok(f) = serde_json::from_str::<Flow>(&json) else {
                    continue;
                };
                if !f.is_final() {
                    tracing::warn!(org, flow_id = %f.session_id, "a server flow was cut off by a restart");
                    let why = "Unknown flow: the server restarted while the collection ran";
                    self.end_flow(&org, SERVER_CLIENT, &f.session_id, why.into())
                        .await?;
                }
            }
        }
        Ok(())
    }

    pub(super) async fn cancel(
        &mut self,
        org: &str,
        client: &str,
        flow_id: &str,
        user: &str,
    ) -> Result<Flow> {
        let f = load_flow(&self.store, org, client, flow_id)?
            .ok_or_else(|| Error::NotFound(format!("no flow {flow_id} of client {client}")))?;
        if f.is_final() {
            return Err(Error::Invalid(format!(
                "flow {flow_id} has already ended ({})",
                f.state
            )));
        }
        let status = if f.status.is_empty() {
            format!("Cancelled by {user}")
        } else {
            format!("Cancelled by {user}: {}", f.status)
        };
        let f = self.end_flow(org, client, flow_id, status).await?;
        audit(
            &self.qm,
            org,
            "CancelFlow",
            user,
            serde_json::json!({"client_id": client, "flow_id": flow_id}),
        )
        .await;
        Ok(f)
    }

    /// Ends a flow that has not ended as ERROR with `status`: its completion row, its
    /// hunt's counts, and a cancel for its client.
    async fn end_flow(
        &mut self,
        org: &str,
        client: &str,
        flow_id: &str,
        status: String,
    ) -> Result<Flow> {
        let mut f = load_flow(&self.store, org, client, flow_id)?
            .ok_or_else(|| Error::NotFound(format!("no flow {flow_id} of client {client}")))?;
        let now = now_us();
        f.state = "ERROR".into();
        f.status = status;
        f.outstanding_requests = 0;
        f.end_time = now;
        if f.start_time > 0 {
            f.execution_duration = (now - f.start_time) * 1000;
        }
        let cancel = Task::Cancel {
            flow_id: flow_id.to_string(),
            reason: f.status.clone(),
        };
        let round = format!("cancel/{client}/{flow_id}");
        let on_server = client == SERVER_CLIENT;
        let mut writes = vec![
            (flows_ns(org), task_key(client, flow_id), Some(json_of(&f))),
            (tasks_ns(org), task_key(client, flow_id), None),
            (
                tasks_ns(org),
                cancel.key(client),
                (!on_server).then(|| json_of(&cancel)),
            ),
            (
                PENDING_NS.to_string(),
                format!("{org}/{round}"),
                Some(json_of(&vec![f.completion_row()])),
            ),
        ];
        writes.extend(self.hunt_counts(org, &f));
        self.store.transaction(Vec::new(), writes).await?;
        self.push_completions(org, &round, vec![f.completion_row()])
            .await;
        if !on_server {
            self.deliver(org, vec![(client.to_string(), cancel)]).await;
        }
        Ok(f)
    }

    /// A hunt flow that ended: its hunt's counts, by the one rule of [`HuntStats`].
    pub(super) fn hunt_counts(&mut self, org: &str, f: &Flow) -> Vec<SettingWrite> {
        if f.request.hunt_id.is_empty() {
            return Vec::new();
        }
        let key = (org.to_string(), f.request.hunt_id.clone());
        let Some(h) = self.hunts.get_mut(&key) else {
            return Vec::new();
        };
        h.stats.total_finished_clients += 1;
        if f.total_collected_rows > 0 {
            h.stats.total_clients_with_results += 1;
        }
        if f.state == "ERROR" {
            h.stats.total_clients_with_errors += 1;
        }
        h.stats.total_collected_rows += f.total_collected_rows;
        vec![(hunts_ns(org), h.hunt_id.clone(), Some(json_of(&*h)))]
    }

    /// Delivery notes: flows sent to their clients read as WAITING.
    pub(super) async fn apply_sent(&mut self, batch: Vec<(String, StoredRow)>) -> Result<()> {
        let mut writes = Vec::new();
        let now_s = now_us() / 1_000_000;
        for (org, row) in batch {
            let Ok(s) = ClientScheduled::from_json(&row.json) else {
                continue;
            };
            if let Some(mut f) = load_flow(&self.store, &org, &s.client_id, &s.flow_id)? {
                if !f.is_final() && f.inflight_time == 0 {
                    f.inflight_time = now_s;
                    writes.push((
                        flows_ns(&org),
                        task_key(&s.client_id, &s.flow_id),
                        Some(json_of(&f)),
                    ));
                }
            }
        }
        if !writes.is_empty() {
            self.store.transaction(Vec::new(), writes).await?;
        }
        Ok(())
    }
}

/// A batch of what a watcher of every org holds now: `first` and whatever is ready,
/// up to 10 000 rows.
fn drain(
    first: (String, StoredRow),
    w: &mut talon_shared::queue::OrgsWatcher,
) -> Vec<(String, StoredRow)> {
    let mut batch = vec![first];
    while batch.len() < 10_000 {
        match futures::FutureExt::now_or_never(w.next()) {
            Some(Some(r)) => batch.push(r),
            _ => break,
        }
    }
    batch
}
