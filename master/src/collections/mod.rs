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
mod manager;
mod port;
mod responses;
mod server;

pub use server::SERVER_CLIENT;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use talon_artifacts::{ArtifactKind, Repository};
use talon_core::Shutdown;
use talon_shared::collections::*;
use talon_shared::queue::QueueManager;
use talon_shared::records::Clients;
use talon_shared::store::Store;
use tokio::sync::{mpsc, oneshot};

pub use flow::Flow;
pub use hunts::{HuntAction, HuntSpec};
pub use manager::Manager;
use manager::{compile, json_of, load_flow, new_flow};

/// How often the manager looks for new responses.
const POLL: Duration = Duration::from_millis(100);
/// Response rows one round takes at most.
const ROUND_ROWS: usize = 5000;
/// Settings namespace of the response cursor per org.
const CURSOR_NS: &str = "flow_cursor";
/// Settings namespace of completion rows stored but not yet pushed, per org.
const PENDING_NS: &str = "flow_completions";
/// Log lines kept per flow at most; a client sending more has the rest counted, not kept.
const MAX_FLOW_LOGS: u64 = 100_000;
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

    /// Result rows of a flow (one source, or every source with results), as stored JSON,
    /// read page by page on the blocking pool as the reader asks for more, so a large
    /// result is never held whole.
    pub fn results(
        &self,
        org: &str,
        client: &str,
        flow_id: &str,
        source: Option<&str>,
    ) -> Result<futures::stream::BoxStream<'static, String>> {
        use futures::StreamExt;
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
        let streams: Vec<String> = sources
            .iter()
            .map(|s| result_stream(org, client, flow_id, s))
            .collect();
        let store = self.inner.store.clone();
        Ok(futures::stream::iter(streams)
            .flat_map(move |stream| stored_pages(store.clone(), stream))
            .boxed())
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

/// Rows to read from the store at a time.
const PAGE: usize = 5000;

/// A stream's rows from seq 1 on, page by page on the blocking pool.
fn stored_pages(store: Store, stream: String) -> futures::stream::BoxStream<'static, String> {
    use futures::StreamExt;
    futures::stream::unfold(Some(1u64), move |from| {
        let (store, stream) = (store.clone(), stream.clone());
        async move {
            let from = from?;
            let page =
                tokio::task::spawn_blocking(move || store.read_seq(&stream, from, u64::MAX, PAGE))
                    .await
                    .ok()?
                    .map_err(|e| tracing::error!(error = %e, "cannot read flow results"))
                    .ok()?;
            let next = (page.len() == PAGE)
                .then(|| page.last().map(|(s, _)| s + 1))
                .flatten();
            Some((
                page.into_iter().map(|(_, r)| r.json).collect::<Vec<_>>(),
                next,
            ))
        }
    })
    .flat_map(futures::stream::iter)
    .boxed()
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
        // What a dispatcher needs: the hunts that take clients now, without their
        // compiled queries (the answer must stay under NATS's message size however many
        // hunts were ever made).
        let now = talon_shared::queue::now_us();
        let hunts: Vec<(String, Hunt)> = stored_hunts(&s)
            .unwrap_or_default()
            .into_iter()
            .filter(|(_, h)| h.accepting(now))
            .map(|(o, mut h)| {
                h.start_request.queries.clear();
                (o, h)
            })
            .collect();
        async move { hunts }
    })
    .await?;
    Ok(())
}

/// Records an auditable action on `Server.Audit.Logs`.
pub(super) async fn audit(
    qm: &QueueManager,
    org: &str,
    operation: &str,
    principal: &str,
    details: Value,
) {
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
