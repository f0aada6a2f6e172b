//! VQL on the server: the [`Host`] over the queue manager and store, and [`Vql`], which runs
//! a query as a stream of rows and log lines, turning ALERT log lines into rows of
//! `Server.Internal.Alerts`.

use std::sync::Arc;

use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::StreamExt;
use serde_json::Map;
use talon_vql::engine::{ArtifactQuery, Host, HostError, HostResult, LogLine, QueryInfo};
use talon_vql::registry::Registry;
use talon_vql::{ParseError, Row, Runner, Value};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub use crate::query_pool::{QueryLimits, QueryPool};
use crate::queue::{now_us, QueueManager};
use crate::store::Store;
use talon_artifacts::ArtifactKind;
use talon_artifacts::Repository;

pub use crate::logs::{append_log, log_stream, ALERTS_QUEUE};

/// A master service that answers VQL calls: collections and hunts (the flow and hunt
/// manager), automation (mail, HTTP, secrets, user messages).
pub trait ServicePort: Send + Sync {
    /// Answers the function or plugin `call` with `args` (a JSON object) for
    /// `principal` in `org`: its rows as JSON objects (one for a function).
    fn call(
        &self,
        org: &str,
        principal: &str,
        call: &str,
        args: serde_json::Value,
    ) -> BoxStream<'static, HostResult<serde_json::Value>>;
}

/// The server's side of VQL for one principal.
pub struct ServerHost {
    qm: QueueManager,
    store: Store,
    repo: Repository,
    principal: String,
    frontend: Option<crate::frontend::FrontendService>,
    collections: Option<Arc<dyn ServicePort>>,
    automation: Option<Arc<dyn ServicePort>>,
}

fn row_of_json(json: &str) -> Row {
    match serde_json::from_str::<serde_json::Value>(json) {
        Ok(v @ serde_json::Value::Object(_)) => match Value::from_json(&v) {
            Value::Dict(d) => d,
            _ => Row::new(),
        },
        _ => Row::new(),
    }
}

fn json_map(row: &Row) -> Map<String, serde_json::Value> {
    match Value::Dict(row.clone()).to_json() {
        serde_json::Value::Object(m) => m,
        _ => Map::new(),
    }
}

/// A queue manager error as the VQL host reports it: what does not exist is NotFound,
/// what a query may not do is Refused, the rest is a server failure with its source.
fn host_error(e: crate::queue::Error) -> HostError {
    use crate::queue::Error as Q;
    match e {
        Q::UnknownQueue(_) => HostError::NotFound(e.to_string()),
        Q::WrongKind { .. } | Q::InvalidOrg(_) | Q::RowTooLarge { .. } => {
            HostError::Refused(e.to_string())
        }
        other => HostError::failed(other),
    }
}

impl Host for ServerHost {
    fn send_event(
        &self,
        org: &str,
        artifact: &str,
        row: Row,
    ) -> BoxFuture<'static, HostResult<()>> {
        let qm = self.qm.clone();
        let (org, artifact, source) = (
            org.to_string(),
            artifact.to_string(),
            self.principal.clone(),
        );
        Box::pin(async move {
            let kind = qm.kind(&artifact).map_err(host_error)?;
            if kind != ArtifactKind::ServerEvent {
                return Err(HostError::Refused(format!(
                    "queue {artifact} is {kind}; send_event may write SERVER_EVENT queues only"
                )));
            }
            qm.push(&org, &artifact, vec![json_map(&row)], &source, "")
                .await
                .map(|_| ())
                .map_err(host_error)
        })
    }

    fn watch(
        &self,
        org: &str,
        artifact: &str,
    ) -> BoxFuture<'static, HostResult<BoxStream<'static, Row>>> {
        let qm = self.qm.clone();
        let (org, artifact) = (org.to_string(), artifact.to_string());
        let name = format!("vql:{}", self.principal);
        Box::pin(async move {
            let watcher = qm.watch(&org, &artifact, &name).await.map_err(host_error)?;
            Ok(futures::stream::unfold(watcher, |mut w| async move {
                match w.next().await {
                    Ok(ev) => Some((row_of_json(&ev.row.json), w)),
                    Err(e) => {
                        tracing::error!(error = %e, "watch_monitoring stopped");
                        None
                    }
                }
            })
            .boxed())
        })
    }

    fn read(
        &self,
        org: &str,
        artifact: &str,
        client_id: Option<String>,
        start_us: i64,
        end_us: i64,
    ) -> BoxStream<'static, HostResult<Row>> {
        if let Err(e) = self.qm.check_stored(org, artifact) {
            return futures::stream::once(async move { Err(host_error(e)) }).boxed();
        }
        let stream = crate::queue::stream_key(org, artifact);
        stored_rows(self.store.clone(), stream, client_id, start_us, end_us)
    }

    fn alert_allowed(&self, org: &str, name: &str, window_secs: i64) -> BoxFuture<'static, bool> {
        let store = self.store.clone();
        let (org, name) = (org.to_string(), name.to_string());
        Box::pin(async move {
            match store
                .alert_allowed(&org, &name, now_us(), window_secs.saturating_mul(1_000_000))
                .await
            {
                Ok(allowed) => allowed,
                Err(e) => {
                    // Better a duplicate alert than a lost one.
                    tracing::error!(error = %e, alert = %name, "alert dedup unavailable");
                    true
                }
            }
        })
    }

    fn artifact_definitions(&self) -> Vec<Row> {
        self.repo
            .list()
            .iter()
            .map(|a| {
                let v = serde_json::to_value(&a.def).unwrap_or_default();
                let mut row = match Value::from_json(&v) {
                    Value::Dict(d) => d,
                    _ => Row::new(),
                };
                row.insert("type".into(), Value::from(a.kind.as_str()));
                row.insert("built_in".into(), Value::Bool(a.built_in));
                // Every definition has these columns, empty when it has none (a queue
                // with no sources has an empty `sources`, not a missing one).
                for list in ["sources", "parameters", "column_types", "precondition"] {
                    if !row.contains_key(list) {
                        let empty = if list == "precondition" {
                            Value::Null
                        } else {
                            Value::List(Vec::new())
                        };
                        row.insert(list.into(), empty);
                    }
                }
                row
            })
            .collect()
    }

    fn metadata(&self, org: &str, key: &str) -> Option<String> {
        self.store.setting(&metadata_namespace(org), key).ok()?
    }

    fn clients(&self, org: &str, search: &str) -> Vec<Row> {
        crate::records::Clients::new(self.store.clone())
            .search(org, search)
            .unwrap_or_default()
            .iter()
            .map(crate::records::ClientRecord::to_row)
            .collect()
    }

    fn label(
        &self,
        org: &str,
        client_id: &str,
        labels: Vec<String>,
        op: &str,
    ) -> BoxFuture<'static, HostResult<Value>> {
        let (org, id, op, who) = (
            org.to_string(),
            client_id.to_string(),
            op.to_string(),
            self.principal.clone(),
        );
        let frontend = self.frontend.clone();
        let clients = crate::records::Clients::new(self.store.clone());
        Box::pin(async move {
            if op == "check" {
                let c = clients
                    .get(&org, &id)
                    .map_err(HostError::failed)?
                    .ok_or_else(|| HostError::NotFound(format!("unknown client {id}")))?;
                return Ok(Value::Bool(labels.iter().all(|l| c.labels.contains(l))));
            }
            let frontend = frontend
                .ok_or_else(|| HostError::NotHere("labels cannot be changed here".into()))?;
            let (add, remove) = if op == "set" {
                (labels.clone(), Vec::new())
            } else {
                (Vec::new(), labels.clone())
            };
            frontend
                .relabel(&org, &id, &add, &remove, &who)
                .await
                .map_err(HostError::failed)?;
            let mut out = Row::new();
            out.insert("ClientId".into(), Value::Str(id));
            out.insert(
                "Labels".into(),
                Value::List(labels.into_iter().map(Value::Str).collect()),
            );
            out.insert("Op".into(), Value::Str(op));
            Ok(Value::Dict(out))
        })
    }

    fn metadata_all(&self, org: &str) -> Row {
        self.store
            .settings(&metadata_namespace(org))
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, Value::Str(v)))
            .collect()
    }

    fn artifact_query(
        &self,
        name: &str,
        params: Vec<(String, String)>,
    ) -> HostResult<Vec<ArtifactQuery>> {
        let compiled = talon_artifacts::compile::compile(&self.repo, name, &params)
            .map_err(HostError::failed)?;
        Ok(compiled
            .into_iter()
            .map(|c| ArtifactQuery {
                name: c.queue,
                precondition: c.precondition,
                query: c.query,
                env: c.env,
            })
            .collect())
    }

    fn collections(&self, org: &str, call: &str, args: Row) -> BoxStream<'static, HostResult<Row>> {
        let Some(port) = &self.collections else {
            let e = HostError::NotHere(format!("{call}: collections are kept by the master"));
            return Box::pin(futures::stream::once(async move { Err(e) }));
        };
        port_call(port.as_ref(), org, &self.principal, call, args)
    }

    fn automation(&self, org: &str, call: &str, args: Row) -> BoxStream<'static, HostResult<Row>> {
        let Some(port) = &self.automation else {
            let e = HostError::NotHere(format!("{call}: only the master sends mail and HTTP"));
            return Box::pin(futures::stream::once(async move { Err(e) }));
        };
        port_call(port.as_ref(), org, &self.principal, call, args)
    }

    fn monitoring_tables(&self, org: &str) -> (Value, Value) {
        monitoring_tables(&self.store, org)
    }

    fn read_logs(
        &self,
        org: &str,
        artifact: &str,
        start_us: i64,
        end_us: i64,
    ) -> BoxStream<'static, HostResult<Row>> {
        stored_rows(
            self.store.clone(),
            log_stream(org, artifact),
            None,
            start_us,
            end_us,
        )
    }
}

/// Settings namespace of the server monitoring table (the master's `monitor`): keys
/// `org/artifact`, values entries whose `params` are the parameters.
const SERVER_MONITORING_NS: &str = "server_monitoring";

/// One table's artifacts in Velociraptor's shape: `{artifacts: [names], specs: [{artifact,
/// parameters: {env: [{key, value}]}}]}`.
fn table_value(entries: Vec<(String, std::collections::BTreeMap<String, String>)>) -> Value {
    let names = entries
        .iter()
        .map(|(a, _)| Value::from(a.as_str()))
        .collect();
    let specs = entries
        .into_iter()
        .map(|(artifact, params)| {
            let env = params
                .into_iter()
                .map(|(k, v)| {
                    let mut d = Row::new();
                    d.insert("key".into(), Value::Str(k));
                    d.insert("value".into(), Value::Str(v));
                    Value::Dict(d)
                })
                .collect();
            let mut p = Row::new();
            p.insert("env".into(), Value::List(env));
            let mut d = Row::new();
            d.insert("artifact".into(), Value::Str(artifact));
            d.insert("parameters".into(), Value::Dict(p));
            // In Velociraptor a spec is a record, not a dict, so `foreach(row=...specs)`
            // yields it as `_value` (its artifacts read `_value.artifact`); Talon's spec is
            // a dict, which foreach yields as the row itself, so it carries itself as
            // `_value` too.
            let whole = Value::Dict(d.clone());
            d.insert("_value".into(), whole);
            Value::Dict(d)
        })
        .collect();
    let mut d = Row::new();
    d.insert("artifacts".into(), Value::List(names));
    d.insert("specs".into(), Value::List(specs));
    Value::Dict(d)
}

/// The server and client monitoring tables of an org, as `get_server_monitoring()` and
/// `get_client_monitoring()` (`{artifacts: <table>, label_events: [{label, artifacts}]}`).
fn monitoring_tables(store: &Store, org: &str) -> (Value, Value) {
    let server: Vec<_> = store
        .settings_with_prefix(SERVER_MONITORING_NS, &format!("{org}/"))
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| {
            let artifact = k.split_once('/').map(|(_, a)| a.to_string()).unwrap_or(k);
            let params = serde_json::from_str::<serde_json::Value>(&v)
                .ok()
                .and_then(|j| {
                    let p = j.get("params").cloned().unwrap_or(j);
                    serde_json::from_value(p).ok()
                })
                .unwrap_or_default();
            (artifact, params)
        })
        .collect();
    let table = crate::records::Clients::new(store.clone())
        .table(org)
        .unwrap_or_default();
    let mut all = Vec::new();
    let mut labels: std::collections::BTreeMap<String, Vec<_>> = Default::default();
    for e in table {
        if e.label.is_empty() {
            all.push((e.artifact, e.params));
        } else {
            labels
                .entry(e.label)
                .or_default()
                .push((e.artifact, e.params));
        }
    }
    let label_events = labels
        .into_iter()
        .map(|(label, entries)| {
            let mut d = Row::new();
            d.insert("label".into(), Value::Str(label));
            d.insert("artifacts".into(), table_value(entries));
            Value::Dict(d)
        })
        .collect();
    let mut client = Row::new();
    client.insert("artifacts".into(), table_value(all));
    client.insert("label_events".into(), Value::List(label_events));
    (table_value(server), Value::Dict(client))
}

/// A call to a service port: the arguments as JSON, the answers back as rows.
fn port_call(
    port: &dyn ServicePort,
    org: &str,
    principal: &str,
    call: &str,
    args: Row,
) -> BoxStream<'static, HostResult<Row>> {
    let args = Value::Dict(args).to_json();
    port.call(org, principal, call, args)
        .map(|r| {
            r.map(|v| match Value::from_json(&v) {
                Value::Dict(d) => d,
                other => {
                    let mut d = Row::new();
                    d.insert("_value".into(), other);
                    d
                }
            })
        })
        .boxed()
}

/// Rows of a store stream in a time range, read on the blocking pool as JSON rows.
fn stored_rows(
    store: crate::store::Store,
    stream: String,
    client: Option<String>,
    start_us: i64,
    end_us: i64,
) -> BoxStream<'static, HostResult<Row>> {
    let (tx, rx) = mpsc::channel::<HostResult<Row>>(1024);
    tokio::task::spawn_blocking(move || {
        let res = store.read_time(&stream, start_us, end_us, client.as_deref(), |_, r| {
            tx.blocking_send(Ok(row_of_json(&r.json))).is_ok()
        });
        if let Err(e) = res {
            let _ = tx.blocking_send(Err(HostError::failed(e)));
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx).boxed()
}

/// The settings namespace of an org's server metadata.
pub fn metadata_namespace(org: &str) -> String {
    format!("metadata/{org}")
}

/// One item of a running query's output.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// A row as a JSON object.
    Row(String),
    Log(LogLine),
}

/// Runs VQL on the server.
#[derive(Clone)]
pub struct Vql {
    qm: QueueManager,
    store: Store,
    repo: Repository,
    registry: Arc<Registry>,
    frontend: Option<crate::frontend::FrontendService>,
    collections: Option<Arc<dyn ServicePort>>,
    automation: Option<Arc<dyn ServicePort>>,
    /// Where the tasks that store a query's alerts run.
    shutdown: talon_core::Shutdown,
    /// Where queries run; None: on the caller's runtime (tests).
    pool: Option<QueryPool>,
}

impl Vql {
    /// VQL over a queue manager (events), a store (stored rows, alert dedup, metadata,
    /// client records) and a repository (artifacts as VQL), with the built-in functions
    /// and plugins; the tasks that store alerts run under `shutdown`.
    pub fn new(
        qm: QueueManager,
        store: Store,
        repo: Repository,
        shutdown: talon_core::Shutdown,
    ) -> Self {
        Self {
            qm,
            store,
            repo,
            registry: Arc::new(Registry::builtin()),
            frontend: None,
            collections: None,
            automation: None,
            shutdown,
            pool: None,
        }
    }

    /// VQL whose queries run on `pool`, apart from the node's other work.
    pub fn with_pool(mut self, pool: QueryPool) -> Self {
        self.pool = Some(pool);
        self
    }

    /// VQL that can also see and label the clients of a frontend.
    pub fn with_frontend(mut self, frontend: crate::frontend::FrontendService) -> Self {
        self.frontend = Some(frontend);
        self
    }

    /// VQL that can make and read collections and hunts.
    pub fn with_collections(mut self, port: Arc<dyn ServicePort>) -> Self {
        self.collections = Some(port);
        self
    }

    /// VQL that can send mail and HTTP requests and keep secrets and user messages.
    pub fn with_automation(mut self, port: Arc<dyn ServicePort>) -> Self {
        self.automation = Some(port);
        self
    }

    /// The function and plugin registry.
    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// Parses and starts a query with no limits (server monitoring); see [`Vql::run_limited`].
    pub fn run(
        &self,
        query: &str,
        env: Vec<(String, Value)>,
        info: QueryInfo,
        principal: &str,
        cancel: CancellationToken,
    ) -> Result<BoxStream<'static, Output>, ParseError> {
        self.run_limited(query, env, info, principal, cancel, QueryLimits::NONE)
    }

    /// Parses and starts a query on the query pool; its rows and log lines arrive in order
    /// on the stream, which ends after the query does and every alert it raised is stored,
    /// or with an ERROR line when a limit stopped it. Dropping the stream or cancelling
    /// `cancel` stops the query.
    pub fn run_limited(
        &self,
        query: &str,
        env: Vec<(String, Value)>,
        info: QueryInfo,
        principal: &str,
        cancel: CancellationToken,
        limits: QueryLimits,
    ) -> Result<BoxStream<'static, Output>, ParseError> {
        let host = Arc::new(ServerHost {
            qm: self.qm.clone(),
            store: self.store.clone(),
            repo: self.repo.clone(),
            principal: principal.to_string(),
            frontend: self.frontend.clone(),
            collections: self.collections.clone(),
            automation: self.automation.clone(),
        });
        let runner = Runner {
            registry: self.registry.clone(),
            host,
        };
        let (log_tx, mut log_rx) = mpsc::unbounded_channel::<LogLine>();
        // Alerts are stored as they are raised, whether or not the caller keeps reading;
        // the stream ends only after every one of them is stored.
        let alerts = self.shutdown.subtree();
        let (alert_tasks, qm, alert_info) = (alerts.clone(), self.qm.clone(), info.clone());
        let sink: talon_vql::engine::LogSink = Arc::new(move |l| {
            if l.level == "ALERT" {
                let (qm, info, message) = (qm.clone(), alert_info.clone(), l.message.clone());
                alert_tasks.spawn("store-alert", async move {
                    let row = crate::logs::alert_row(
                        &message,
                        &info.client_id,
                        &info.artifact,
                        &info.artifact_type,
                    );
                    crate::logs::store_alert(&qm, &info.org, "server", row).await
                });
            }
            let _ = log_tx.send(l);
        });
        let mut rows = runner.run(query, env, info, cancel.clone(), sink)?;
        let outputs = Box::pin(async_stream::stream! {
            let mut rows_done = false;
            loop {
                tokio::select! {
                    biased;
                    log = log_rx.recv() => match log {
                        Some(l) => yield Output::Log(l),
                        None => break,
                    },
                    row = rows.next(), if !rows_done => match row {
                        Some(r) => yield Output::Row(Value::Dict(r).to_json().to_string()),
                        None => {
                            rows_done = true;
                            // Dropping the query drops the log sink, closing the channel.
                            rows = futures::stream::empty().boxed();
                        }
                    },
                }
            }
            // Every alert is stored before the stream ends (a store that cannot answer
            // within the grace period is reported by drain).
            alerts.drain().await;
        });
        Ok(crate::query_pool::drive(
            self.pool.as_ref(),
            outputs,
            limits,
            cancel,
        ))
    }
}
