//! The master's flow and hunt manager: the single writer of flow and hunt state.
//!
//! One task ([`Manager::run`]) takes every change in order: collections and cancels asked
//! for through the API or VQL, hunt creations and changes, hunt offers from every node's
//! dispatcher (`System.Hunt.Participation`), delivery notes (`Server.Internal.ClientScheduled`)
//! and the clients' responses. Responses are read from the store
//! (`Server.Internal.FlowResponses`, written there by the frontend standalone or by the
//! persister in a cluster) from a cursor kept beside the state they produce: each round's
//! result rows, log lines, flow records, hunt counts and the cursor are one transaction,
//! so a crash repeats a round whole or not at all. A round's completion rows are stored
//! as pending in that same transaction and pushed with an id of their own
//! ([`QueueManager::push_once`]), so each ended flow has exactly one
//! `System.Flow.Completion` row, whatever restarts.

pub mod flow;
mod hunts;
mod port;
mod server;

pub use server::SERVER_CLIENT;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value};
use talon_artifacts::{ArtifactKind, Repository};
use talon_core::Shutdown;
use talon_shared::collections::*;
use talon_shared::control::ControlRow;
use talon_shared::queue::{now_us, stream_key, QueueManager};
use talon_shared::records::Clients;
use talon_shared::store::{SettingWrite, Store, StoredRow};
use tokio::sync::{mpsc, oneshot};

pub use flow::Flow;
pub use hunts::{HuntAction, HuntSpec};

/// How often the manager looks for new responses.
const POLL: Duration = Duration::from_millis(100);
/// Response rows one round takes at most.
const ROUND_ROWS: usize = 5000;
/// Settings namespace of the response cursor per org.
const CURSOR_NS: &str = "flow_cursor";
/// Settings namespace of completion rows stored but not yet pushed, per org.
const PENDING_NS: &str = "flow_completions";
/// Push scope of completion rows.
const COMPLETION_SCOPE: &str = "flowcompletion";

/// A failed request, with what was wrong.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    #[error("store: {0}")]
    Store(#[from] talon_shared::store::Error),
    #[error("queue: {0}")]
    Queue(#[from] talon_shared::queue::Error),
    #[error("the flow manager is shut down")]
    Closed,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What to collect from one client.
#[derive(Debug, Clone, Default)]
pub struct CollectSpec {
    pub client_id: String,
    pub artifacts: Vec<String>,
    pub params: BTreeMap<String, String>,
    pub timeout: u64,
    pub max_rows: u64,
}

enum Command {
    Collect {
        org: String,
        spec: CollectSpec,
        creator: String,
        reply: oneshot::Sender<Result<Flow>>,
    },
    Cancel {
        org: String,
        client_id: String,
        flow_id: String,
        user: String,
        reply: oneshot::Sender<Result<Flow>>,
    },
    CreateHunt {
        org: String,
        spec: HuntSpec,
        creator: String,
        reply: oneshot::Sender<Result<Hunt>>,
    },
    ModifyHunt {
        org: String,
        hunt_id: String,
        action: HuntAction,
        user: String,
        reply: oneshot::Sender<Result<Hunt>>,
    },
}

/// The handle the API and VQL use; cheap to clone.
#[derive(Clone)]
pub struct Collections {
    inner: Arc<Inner>,
}

struct Inner {
    qm: QueueManager,
    store: Store,
    repo: Repository,
    cmd: mpsc::Sender<Command>,
    /// Runs server flows; set once the VQL host exists (it holds this handle too).
    vql: std::sync::OnceLock<talon_shared::vql_host::Vql>,
    /// Running server flows, to cancel.
    running: std::sync::Mutex<HashMap<(String, String), tokio_util::sync::CancellationToken>>,
    shutdown: Shutdown,
}

/// The manager task's state.
pub struct Manager {
    qm: QueueManager,
    store: Store,
    repo: Repository,
    clients: Clients,
    cmd: mpsc::Receiver<Command>,
    error_regex: regex::Regex,
    hunts: HashMap<(String, String), Hunt>,
}

impl Collections {
    /// The handle and its manager (to be run with [`Manager::run`]).
    pub fn new(
        qm: QueueManager,
        store: Store,
        repo: Repository,
        error_regex: regex::Regex,
        shutdown: Shutdown,
    ) -> Result<(Self, Manager)> {
        let (tx, rx) = mpsc::channel(256);
        let mut hunts = HashMap::new();
        for (org, h) in stored_hunts(&store)? {
            hunts.insert((org, h.hunt_id.clone()), h);
        }
        let manager = Manager {
            clients: Clients::new(store.clone()),
            qm: qm.clone(),
            store: store.clone(),
            repo: repo.clone(),
            cmd: rx,
            error_regex,
            hunts,
        };
        let this = Self {
            inner: Arc::new(Inner {
                qm,
                store,
                repo,
                cmd: tx,
                vql: std::sync::OnceLock::new(),
                running: std::sync::Mutex::default(),
                shutdown,
            }),
        };
        Ok((this, manager))
    }

    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<Result<T>>) -> Command) -> Result<T> {
        let (reply, rx) = oneshot::channel();
        self.inner
            .cmd
            .send(make(reply))
            .await
            .map_err(|_| Error::Closed)?;
        rx.await.map_err(|_| Error::Closed)?
    }

    /// Schedules a collection on a client; the flow as made.
    pub async fn collect(&self, org: &str, spec: CollectSpec, creator: &str) -> Result<Flow> {
        self.ask(|reply| Command::Collect {
            org: org.into(),
            spec,
            creator: creator.into(),
            reply,
        })
        .await
    }

    /// The VQL that runs server flows.
    pub fn set_vql(&self, vql: talon_shared::vql_host::Vql) {
        let _ = self.inner.vql.set(vql);
    }

    /// Collects SERVER artifacts on the server (a flow of the client `server`), run with
    /// `permissions` (None: every permission) on the query pool.
    pub async fn collect_server(
        &self,
        org: &str,
        spec: CollectSpec,
        creator: &str,
        permissions: Option<talon_core::acl::Permissions>,
    ) -> Result<Flow> {
        let vql = self
            .inner
            .vql
            .get()
            .cloned()
            .ok_or_else(|| Error::Invalid("server collections are not available yet".into()))?;
        let queries = compile(
            &self.inner.repo,
            &spec.artifacts,
            &spec.params,
            ArtifactKind::Server,
        )?;
        let (timeout, max_rows) = (spec.timeout, spec.max_rows);
        let f = self.collect(org, spec, creator).await?;
        let token = self.inner.shutdown.token().child_token();
        let key = (org.to_string(), f.session_id.clone());
        self.inner
            .running
            .lock()
            .expect("running")
            .insert(key.clone(), token.clone());
        let work = server::ServerFlow {
            org: org.to_string(),
            flow_id: f.session_id.clone(),
            creator: creator.to_string(),
            queries,
            timeout,
            max_rows,
            permissions,
        };
        let (qm, this) = (self.inner.qm.clone(), self.clone());
        self.inner.shutdown.spawn("server-flow", async move {
            server::run(vql, qm, work, token).await;
            this.inner.running.lock().expect("running").remove(&key);
        });
        Ok(f)
    }

    /// Cancels a flow that has not ended.
    pub async fn cancel(&self, org: &str, client: &str, flow_id: &str, user: &str) -> Result<Flow> {
        let f = self
            .ask(|reply| Command::Cancel {
                org: org.into(),
                client_id: client.into(),
                flow_id: flow_id.into(),
                user: user.into(),
                reply,
            })
            .await?;
        if client == SERVER_CLIENT {
            let key = (org.to_string(), flow_id.to_string());
            if let Some(t) = self.inner.running.lock().expect("running").get(&key) {
                t.cancel();
            }
        }
        Ok(f)
    }

    /// Makes a hunt.
    pub async fn create_hunt(&self, org: &str, spec: HuntSpec, creator: &str) -> Result<Hunt> {
        self.ask(|reply| Command::CreateHunt {
            org: org.into(),
            spec,
            creator: creator.into(),
            reply,
        })
        .await
    }

    /// Starts, pauses or stops a hunt, or changes its expiry.
    pub async fn modify_hunt(
        &self,
        org: &str,
        hunt_id: &str,
        action: HuntAction,
        user: &str,
    ) -> Result<Hunt> {
        self.ask(|reply| Command::ModifyHunt {
            org: org.into(),
            hunt_id: hunt_id.into(),
            action,
            user: user.into(),
            reply,
        })
        .await
    }

    /// One flow.
    pub fn flow(&self, org: &str, client: &str, flow_id: &str) -> Result<Flow> {
        load_flow(&self.inner.store, org, client, flow_id)?
            .ok_or_else(|| Error::NotFound(format!("no flow {flow_id} of client {client}")))
    }

    /// A client's flows, newest first.
    pub fn flows(&self, org: &str, client: &str) -> Result<Vec<Flow>> {
        let mut out: Vec<Flow> = self
            .inner
            .store
            .settings_with_prefix(&flows_ns(org), &format!("{client}/"))?
            .into_iter()
            .filter_map(|(_, j)| serde_json::from_str(&j).ok())
            .collect();
        out.sort_by_key(|f: &Flow| std::cmp::Reverse(f.create_time));
        Ok(out)
    }

    /// Result rows of a flow (one source, or every source with results), as stored JSON.
    pub fn results(
        &self,
        org: &str,
        client: &str,
        flow_id: &str,
        source: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>> {
        let f = self.flow(org, client, flow_id)?;
        let sources: Vec<String> = match source {
            Some(s) => f
                .artifacts_with_results
                .iter()
                .filter(|a| *a == s || a.split('/').next() == Some(s))
                .cloned()
                .collect(),
            None => f.artifacts_with_results.clone(),
        };
        let mut out = Vec::new();
        for s in sources {
            let stream = result_stream(org, client, flow_id, &s);
            let rows =
                self.inner
                    .store
                    .read_seq(&stream, 1, u64::MAX, limit.saturating_sub(out.len()))?;
            out.extend(rows.into_iter().map(|(_, r)| r.json));
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    /// Log lines of a flow.
    pub fn logs(
        &self,
        org: &str,
        client: &str,
        flow_id: &str,
        limit: usize,
    ) -> Result<Vec<String>> {
        let stream = log_stream(org, client, flow_id);
        Ok(self
            .inner
            .store
            .read_seq(&stream, 1, u64::MAX, limit)?
            .into_iter()
            .map(|(_, r)| r.json)
            .collect())
    }

    /// Every hunt of an org, newest first.
    pub fn hunts(&self, org: &str) -> Result<Vec<Hunt>> {
        let mut out: Vec<Hunt> = self
            .inner
            .store
            .settings(&hunts_ns(org))?
            .into_iter()
            .filter_map(|(_, j)| serde_json::from_str(&j).ok())
            .collect();
        out.sort_by_key(|h: &Hunt| std::cmp::Reverse(h.create_time));
        Ok(out)
    }

    /// One hunt.
    pub fn hunt(&self, org: &str, hunt_id: &str) -> Result<Hunt> {
        let json = self
            .inner
            .store
            .setting(&hunts_ns(org), hunt_id)?
            .ok_or_else(|| Error::NotFound(format!("no hunt {hunt_id}")))?;
        serde_json::from_str(&json).map_err(|e| Error::Invalid(format!("hunt {hunt_id}: {e}")))
    }

    /// The clients of a hunt with their flows.
    pub fn hunt_flows(&self, org: &str, hunt_id: &str) -> Result<Vec<(String, Option<Flow>)>> {
        self.hunt(org, hunt_id)?;
        let mut out = Vec::new();
        for (client, flow_id) in self.inner.store.settings(&hunt_clients_ns(org, hunt_id))? {
            let f = load_flow(&self.inner.store, org, &client, &flow_id)?;
            out.push((client, f));
        }
        Ok(out)
    }

    /// The artifact repository (to check names).
    pub fn repository(&self) -> &Repository {
        &self.inner.repo
    }
}

fn load_flow(store: &Store, org: &str, client: &str, flow_id: &str) -> Result<Option<Flow>> {
    match store.setting(&flows_ns(org), &task_key(client, flow_id))? {
        Some(j) => serde_json::from_str(&j)
            .map(Some)
            .map_err(|e| Error::Invalid(format!("flow {flow_id}: {e}"))),
        None => Ok(None),
    }
}

fn json_of<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).expect("records serialise")
}

/// Compiles artifacts for a collection: every one must exist and be of `kind`.
fn compile(
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
fn new_flow(
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
                    let mut batch = vec![first];
                    while batch.len() < 10_000 {
                        match futures::FutureExt::now_or_never(offers.next()) {
                            Some(Some(r)) => batch.push(r),
                            _ => break,
                        }
                    }
                    if let Err(e) = self.apply_offers(batch).await {
                        tracing::error!(error = %e, "cannot apply hunt offers");
                    }
                }
                note = sent.next() => {
                    let Some(first) = note else { break };
                    let mut batch = vec![first];
                    while batch.len() < 10_000 {
                        match futures::FutureExt::now_or_never(sent.next()) {
                            Some(Some(r)) => batch.push(r),
                            _ => break,
                        }
                    }
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

    async fn handle(&mut self, cmd: Command) {
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

    async fn collect(&mut self, org: &str, spec: CollectSpec, creator: &str) -> Result<Flow> {
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
    async fn deliver(&self, org: &str, tasks: Vec<(String, Task)>) {
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

    async fn cancel(&mut self, org: &str, client: &str, flow_id: &str, user: &str) -> Result<Flow> {
        let mut f = load_flow(&self.store, org, client, flow_id)?
            .ok_or_else(|| Error::NotFound(format!("no flow {flow_id} of client {client}")))?;
        if f.is_final() {
            return Err(Error::Invalid(format!(
                "flow {flow_id} has already ended ({})",
                f.state
            )));
        }
        let now = now_us();
        f.state = "ERROR".into();
        f.status = if f.status.is_empty() {
            format!("Cancelled by {user}")
        } else {
            format!("Cancelled by {user}: {}", f.status)
        };
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

    /// A hunt flow that ended: its hunt's counts, by the one rule of [`HuntStats`].
    fn hunt_counts(&mut self, org: &str, f: &Flow) -> Vec<SettingWrite> {
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
    async fn apply_sent(&mut self, batch: Vec<(String, StoredRow)>) -> Result<()> {
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

    /// Orgs that may have responses: every org with client records.
    fn orgs(&self) -> Result<Vec<String>> {
        let mut orgs = self.clients.orgs()?;
        if !orgs.iter().any(|o| o == "root") {
            orgs.push("root".into());
        }
        Ok(orgs)
    }

    /// One round per org with new responses.
    async fn apply_responses(&mut self) -> Result<()> {
        for org in self.orgs()? {
            loop {
                let more = self.apply_round(&org).await?;
                if !more {
                    break;
                }
            }
        }
        Ok(())
    }

    /// Applies up to [`ROUND_ROWS`] new responses of an org; true when more wait.
    async fn apply_round(&mut self, org: &str) -> Result<bool> {
        let stream = stream_key(org, RESPONSES_QUEUE);
        let cursor: u64 = self
            .store
            .setting(CURSOR_NS, org)?
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let head = self.store.last_seq(&stream)?;
        if head <= cursor {
            return Ok(false);
        }
        let rows = self
            .store
            .read_seq(&stream, cursor + 1, head + 1, ROUND_ROWS)?;
        let Some(last) = rows.last().map(|(s, _)| *s) else {
            return Ok(false);
        };
        let now = now_us();
        let mut flows: HashMap<(String, String), Option<Flow>> = HashMap::new();
        let mut dirty: Vec<(String, String)> = Vec::new();
        let mut appends: HashMap<String, Vec<StoredRow>> = HashMap::new();
        let mut writes: Vec<SettingWrite> = Vec::new();
        let mut ended: Vec<Flow> = Vec::new();
        for (_, stored) in rows {
            let Ok(Value::Object(row)) = serde_json::from_str::<Value>(&stored.json) else {
                continue;
            };
            let client = stored.client.clone();
            let flow_id = row
                .get("FlowId")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            let source = row
                .get("Source")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            if !valid_flow_id(&flow_id) || client.is_empty() {
                continue;
            }
            let key = (client.clone(), flow_id.clone());
            if row.contains_key("CancelAck") {
                writes.push((
                    tasks_ns(org),
                    format!("{}~cancel", task_key(&client, &flow_id)),
                    None,
                ));
                continue;
            }
            if !flows.contains_key(&key) {
                let f = load_flow(&self.store, org, &client, &flow_id)?;
                flows.insert(key.clone(), f);
            }
            let Some(Some(f)) = flows.get_mut(&key) else {
                tracing::debug!(org, client_id = %client, flow_id, "a response for an unknown flow; skipped");
                continue;
            };
            if f.is_final() {
                continue;
            }
            if f.start_time == 0 {
                f.start_time = now;
                writes.push((tasks_ns(org), task_key(&client, &flow_id), None));
            }
            f.active_time = now;
            if !dirty.contains(&key) {
                dirty.push(key.clone());
            }
            if let Some(r) = row.get("Row") {
                let json = r.to_string();
                appends
                    .entry(result_stream(org, &client, &flow_id, &source))
                    .or_default()
                    .push(StoredRow {
                        ts_us: now,
                        client: client.clone(),
                        json,
                    });
                f.total_collected_rows += 1;
                if !f.artifacts_with_results.contains(&source) {
                    f.artifacts_with_results.push(source.clone());
                }
            } else if let Some(l) = row.get("Log") {
                let level = l.get("level").and_then(Value::as_str).unwrap_or("DEFAULT");
                let message = l.get("message").and_then(Value::as_str).unwrap_or_default();
                let line = serde_json::json!({
                    "Timestamp": l.get("timestamp").and_then(Value::as_i64).unwrap_or(now) / 1_000_000,
                    "Level": level,
                    "Message": message,
                    "Artifact": source,
                });
                appends
                    .entry(log_stream(org, &client, &flow_id))
                    .or_default()
                    .push(StoredRow {
                        ts_us: now,
                        client: client.clone(),
                        json: line.to_string(),
                    });
                f.total_logs += 1;
                if f.error_log.is_empty() && self.error_regex.is_match(message) {
                    f.error_log = message.to_string();
                }
            } else if let Some(s) = row.get("Status") {
                // The client's clock says when the collection really started.
                if let Some(t) = s.get("first_active").and_then(Value::as_i64) {
                    if t > 0 && (f.start_time == now || t < f.start_time) {
                        f.start_time = t;
                    }
                }
                if f.apply_status(&source, s, now) {
                    ended.push(f.clone());
                }
            }
        }
        for key in &dirty {
            if let Some(Some(f)) = flows.get(key) {
                writes.push((flows_ns(org), task_key(&key.0, &key.1), Some(json_of(f))));
            }
        }
        // The final records of ended flows (ended holds a copy taken when each ended).
        let ended: Vec<Flow> = ended
            .into_iter()
            .filter_map(|e| {
                flows
                    .get(&(e.client_id.clone(), e.session_id.clone()))
                    .cloned()
                    .flatten()
            })
            .collect();
        let round = format!("round/{last}");
        let completions: Vec<Map<String, Value>> = ended.iter().map(Flow::completion_row).collect();
        for f in &ended {
            writes.extend(self.hunt_counts(org, f));
        }
        if !completions.is_empty() {
            writes.push((
                PENDING_NS.to_string(),
                format!("{org}/{round}"),
                Some(json_of(&completions)),
            ));
        }
        writes.push((
            CURSOR_NS.to_string(),
            org.to_string(),
            Some(last.to_string()),
        ));
        self.store
            .transaction(appends.into_iter().collect(), writes)
            .await?;
        if !completions.is_empty() {
            self.push_completions(org, &round, completions).await;
        }
        Ok(last < head)
    }

    /// Pushes a round's completion rows once, then forgets them as pending.
    async fn push_completions(&self, org: &str, round: &str, rows: Vec<Map<String, Value>>) {
        let id = format!("{org}/{round}");
        match self
            .qm
            .push_once(org, COMPLETION_QUEUE, rows, "server", COMPLETION_SCOPE, &id)
            .await
        {
            Ok(_) => {
                if let Err(e) = self.store.set_setting(PENDING_NS, &id, None).await {
                    tracing::error!(error = %e, "cannot clear pushed completions; they are pushed again (once) at restart");
                }
            }
            Err(e) => {
                tracing::error!(org, error = %e, "cannot push flow completions; they stay pending until the next start")
            }
        }
    }

    /// Completions a crash left stored but maybe not pushed: pushed (once) now.
    async fn push_pending_completions(&self) -> Result<()> {
        for (id, json) in self.store.settings(PENDING_NS)? {
            let Some((org, round)) = id.split_once('/') else {
                continue;
            };
            let rows: Vec<Map<String, Value>> = serde_json::from_str(&json).unwrap_or_default();
            self.push_completions(org, round, rows).await;
        }
        Ok(())
    }
}

/// Answers other nodes: a connecting client's pending tasks, and every hunt.
pub async fn serve_nodes(
    bus: &talon_shared::bus::Bus,
    store: &Store,
    shutdown: &Shutdown,
) -> anyhow::Result<()> {
    let s = store.clone();
    bus.serve::<TasksGet, _, _>(shutdown, "client-tasks", move |q| {
        let tasks = pending_tasks(&s, &q.org, &q.client_id).unwrap_or_default();
        async move { tasks }
    })
    .await?;
    let s = store.clone();
    bus.serve::<HuntsGet, _, _>(shutdown, "hunts", move |_| {
        let hunts = stored_hunts(&s).unwrap_or_default();
        async move { hunts }
    })
    .await?;
    Ok(())
}

/// Records an auditable action on `Server.Audit.Logs`.
async fn audit(qm: &QueueManager, org: &str, operation: &str, principal: &str, details: Value) {
    let row =
        serde_json::json!({"operation": operation, "principal": principal, "details": details});
    if let Value::Object(m) = row {
        if let Err(e) = qm
            .push(org, "Server.Audit.Logs", vec![m], "server", "")
            .await
        {
            tracing::error!(error = %e, operation, "could not audit");
        }
    }
}
