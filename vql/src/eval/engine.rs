//! The engine: the registry of functions and plugins, the host the server provides (queues,
//! stored rows, alert dedup), and the per-query context (logging, cancellation, caches).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use futures::future::BoxFuture;
use futures::stream::BoxStream;
use tokio_util::sync::CancellationToken;

use crate::eval::value::{Row, Value};

/// Where a query runs; functions and plugins declare where they may run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    Server,
    Client,
    Both,
}

/// A log line of a query.
#[derive(Debug, Clone, PartialEq)]
pub struct LogLine {
    /// DEFAULT, INFO, WARN, ERROR, DEBUG or ALERT.
    pub level: String,
    pub message: String,
}

/// What a host could not do for a query. Functions and plugins log it as the query's
/// error; the variants say whether the capability is missing here, the request was
/// refused, the thing named does not exist, or the server itself failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum HostError {
    /// There is no server where the query runs (on a client, in the CLI's offline checks).
    #[error("no server: {0} are not available here")]
    NoServer(&'static str),
    /// The capability exists, but not on this host.
    #[error("{0}")]
    NotHere(String),
    /// The query asked for something it may not do.
    #[error("{0}")]
    Refused(String),
    /// The thing named does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The server failed (store, bus, compiler); the source is kept.
    #[error("{0}")]
    Failed(#[source] Arc<dyn std::error::Error + Send + Sync>),
}

impl HostError {
    /// A server failure, keeping its source.
    pub fn failed(e: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self::Failed(Arc::new(e))
    }
}

/// A host call's result.
pub type HostResult<T> = Result<T, HostError>;

/// What the server provides to queries: queues, stored rows, persistent alert dedup.
pub trait Host: Send + Sync {
    /// Pushes one row to an event queue of the org (send_event).
    fn send_event(&self, org: &str, artifact: &str, row: Row)
        -> BoxFuture<'static, HostResult<()>>;
    /// Watches an event queue from now on; resolves once the watch is in place.
    fn watch(
        &self,
        org: &str,
        artifact: &str,
    ) -> BoxFuture<'static, HostResult<BoxStream<'static, Row>>>;
    /// Stored rows of a queue in a time range (microseconds), oldest first.
    fn read(
        &self,
        org: &str,
        artifact: &str,
        client_id: Option<String>,
        start_us: i64,
        end_us: i64,
    ) -> BoxStream<'static, HostResult<Row>>;
    /// True when an alert of this name may fire now (and records it); false inside the window.
    fn alert_allowed(&self, org: &str, name: &str, window_secs: i64) -> BoxFuture<'static, bool>;
    /// Every artifact definition as a row.
    fn artifact_definitions(&self) -> Vec<Row>;
    /// A server metadata value.
    fn metadata(&self, org: &str, key: &str) -> Option<String>;
    /// Client records of an org as rows (`client_info` shape); `search` as in the CLI.
    fn clients(&self, org: &str, search: &str) -> Vec<Row> {
        let _ = (org, search);
        Vec::new()
    }
    /// Changes or checks a client's labels (`op` set, remove, check).
    fn label(
        &self,
        org: &str,
        client_id: &str,
        labels: Vec<String>,
        op: &str,
    ) -> BoxFuture<'static, HostResult<Value>> {
        let _ = (org, client_id, labels, op);
        Box::pin(async { Err(HostError::NotHere("no clients here".into())) })
    }
    /// Every server metadata key of an org.
    fn metadata_all(&self, org: &str) -> Row {
        let _ = org;
        Row::new()
    }
    /// The runnable sources of an artifact called as `Artifact.Name(...)`.
    fn artifact_query(
        &self,
        name: &str,
        params: Vec<(String, String)>,
    ) -> HostResult<Vec<ArtifactQuery>> {
        let _ = params;
        Err(HostError::NotHere(format!(
            "artifact {name} cannot be run here"
        )))
    }
    /// Collections and hunts (`collect_client`, `flows`, `hunt` ...): `call` names the
    /// function or plugin, `args` its arguments; the answer is its rows (one for a
    /// function). Only the master has them.
    fn collections(&self, org: &str, call: &str, args: Row) -> BoxStream<'static, HostResult<Row>> {
        let _ = (org, args);
        let e = HostError::NotHere(format!("{call}: collections are kept by the master"));
        Box::pin(futures::stream::once(async move { Err(e) }))
    }
    /// Automation (`mail`, `http_client`, secrets, user messages): `call` names the
    /// function or plugin, `args` its arguments; the answer is its rows. Only the master
    /// has it.
    fn automation(&self, org: &str, call: &str, args: Row) -> BoxStream<'static, HostResult<Row>> {
        let _ = (org, args);
        let e = HostError::NotHere(format!("{call}: only the master sends mail and HTTP"));
        Box::pin(futures::stream::once(async move { Err(e) }))
    }
    /// The org's monitoring tables as `get_server_monitoring()` and
    /// `get_client_monitoring()` return them.
    fn monitoring_tables(&self, org: &str) -> (Value, Value) {
        let _ = org;
        (Value::Null, Value::Null)
    }
    /// Log lines of a server monitoring artifact in a time range (microseconds).
    fn read_logs(
        &self,
        org: &str,
        artifact: &str,
        start_us: i64,
        end_us: i64,
    ) -> BoxStream<'static, HostResult<Row>> {
        let _ = (org, start_us, end_us);
        let e = HostError::NotHere(format!("no monitoring logs of {artifact} here"));
        Box::pin(futures::stream::once(async move { Err(e) }))
    }
}

/// One runnable source of an artifact.
#[derive(Debug, Clone)]
pub struct ArtifactQuery {
    /// `Artifact` or `Artifact/Source`.
    pub name: String,
    pub precondition: Option<String>,
    pub query: String,
    pub env: Vec<(String, Value)>,
}

/// A host with no server behind it: event functions report that they are unavailable.
pub struct NoHost;

impl Host for NoHost {
    fn send_event(&self, _: &str, _: &str, _: Row) -> BoxFuture<'static, HostResult<()>> {
        Box::pin(async { Err(HostError::NoServer("events")) })
    }
    fn watch(&self, _: &str, _: &str) -> BoxFuture<'static, HostResult<BoxStream<'static, Row>>> {
        Box::pin(async { Err(HostError::NoServer("events")) })
    }
    fn read(
        &self,
        _: &str,
        _: &str,
        _: Option<String>,
        _: i64,
        _: i64,
    ) -> BoxStream<'static, HostResult<Row>> {
        Box::pin(futures::stream::once(async {
            Err(HostError::NoServer("stored rows"))
        }))
    }
    fn alert_allowed(&self, _: &str, _: &str, _: i64) -> BoxFuture<'static, bool> {
        Box::pin(async { true })
    }
    fn artifact_definitions(&self) -> Vec<Row> {
        Vec::new()
    }
    fn metadata(&self, _: &str, _: &str) -> Option<String> {
        None
    }
}

/// Facts about the running query, used by alert() and log().
#[derive(Debug, Clone)]
pub struct QueryInfo {
    pub org: String,
    /// The artifact whose query this is, if any.
    pub artifact: String,
    pub artifact_type: String,
    /// `server` for server-side queries.
    pub client_id: String,
    /// What the query's principal may do; None: anything (a client's own queries).
    pub permissions: Option<talon_core::acl::Permissions>,
}

impl Default for QueryInfo {
    fn default() -> Self {
        Self {
            org: "root".into(),
            artifact: String::new(),
            artifact_type: "SERVER_MONITORING".into(),
            client_id: "server".into(),
            permissions: None,
        }
    }
}

/// Receives a query's log lines.
pub type LogSink = Arc<dyn Fn(LogLine) + Send + Sync>;

/// State shared by one running query tree.
pub struct Context {
    pub engine: Arc<crate::eval::registry::Registry>,
    pub host: Arc<dyn Host>,
    pub info: QueryInfo,
    pub cancel: CancellationToken,
    log: LogSink,
    /// Shared, not cloned: a cloned `Regex` would start a new match-cache pool.
    pub(crate) regex_cache: Mutex<HashMap<String, Option<Arc<regex::Regex>>>>,
    pub(crate) log_dedup: Mutex<HashMap<String, Instant>>,
    /// Calls refused for want of a permission, each logged once.
    denied: Mutex<std::collections::HashSet<String>>,
    /// Names looked up and not found, each logged once (not once per row).
    missing: Mutex<std::collections::HashSet<String>>,
    /// Directories `tempdir()` made; removed when the query tree ends.
    pub(crate) temp_dirs: Mutex<Vec<std::path::PathBuf>>,
}

impl Drop for Context {
    fn drop(&mut self) {
        for d in self
            .temp_dirs
            .get_mut()
            .map(std::mem::take)
            .unwrap_or_default()
        {
            if let Err(e) = std::fs::remove_dir_all(&d) {
                tracing::warn!(dir = %d.display(), error = %e, "tempdir() not removed");
            }
        }
    }
}

impl Context {
    /// A context for one query tree.
    pub fn new(
        engine: Arc<crate::eval::registry::Registry>,
        host: Arc<dyn Host>,
        info: QueryInfo,
        cancel: CancellationToken,
        log: LogSink,
    ) -> Arc<Self> {
        Arc::new(Self {
            engine,
            host,
            info,
            cancel,
            log,
            regex_cache: Mutex::new(HashMap::new()),
            log_dedup: Mutex::new(HashMap::new()),
            denied: Mutex::new(Default::default()),
            missing: Mutex::new(Default::default()),
            temp_dirs: Mutex::new(Vec::new()),
        })
    }

    /// Logs "Symbol NAME not found" the first time this query tree misses `name`.
    pub fn symbol_not_found(&self, name: &str) {
        let mut missing = self.missing.lock().expect("missing");
        // Bounded: a query cannot grow the set without end.
        if missing.len() < 1024 && missing.insert(name.to_string()) {
            drop(missing);
            self.log("ERROR", format!("Symbol {name} not found"));
        }
    }

    /// Whether the query's principal holds `p`; when not, logs once per query (per `what`)
    /// that `what` was refused.
    pub fn allowed(&self, p: talon_core::acl::Permission, what: &str) -> bool {
        match self.info.permissions {
            None => true,
            Some(perms) if perms.has(p) => true,
            Some(_) => {
                let first = self.denied.lock().expect("denied").insert(what.to_string());
                if first {
                    self.log(
                        "ERROR",
                        format!("Permission denied: {what} needs the {p} permission"),
                    );
                }
                false
            }
        }
    }

    /// Logs a line at a level.
    pub fn log(&self, level: &str, message: impl Into<String>) {
        (self.log)(LogLine {
            level: level.into(),
            message: message.into(),
        });
    }

    /// A case-insensitive regex, compiled once per query tree; None when invalid.
    pub fn regex(&self, pattern: &str) -> Option<Arc<regex::Regex>> {
        let mut cache = self.regex_cache.lock().expect("regex cache");
        if let Some(r) = cache.get(pattern) {
            return r.clone();
        }
        let compiled = regex::Regex::new(&format!("(?i){pattern}"))
            .ok()
            .map(Arc::new);
        if compiled.is_none() {
            self.log("ERROR", format!("invalid regex {pattern:?}"));
        }
        cache.insert(pattern.to_string(), compiled.clone());
        compiled
    }
}

pub use crate::limits::{CALL_WEIGHT, MAX_DEPTH, MAX_NESTING};

/// Shorthand for a NULL value.
pub fn null() -> Value {
    Value::Null
}
