//! The server monitoring table: per org, the SERVER_EVENT artifacts (with parameters) the
//! master runs continuously, one query per source, rows pushed to the source's queue. Log
//! lines go to the artifact's monitoring log; ALERT lines become alerts. A query that fails
//! or ends is logged and restarted with backoff. The table is kept in the store.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use futures::StreamExt;
use talon_artifacts::compile::compile;
use talon_artifacts::ArtifactKind;
use talon_artifacts::Repository;
use talon_core::Shutdown;
use talon_shared::queue::QueueManager;
use talon_shared::store::Store;
use talon_shared::vql_host::{append_log, Output, Vql};
use talon_vql::engine::{LogLine, QueryInfo};
use tokio_util::sync::CancellationToken;

/// Settings namespace of the table; keys are `org/artifact`, values an [`Entry`] as JSON.
const NAMESPACE: &str = "server_monitoring";
/// First restart delay; doubles up to [`MAX_BACKOFF`], and resets after a long run.
pub const MIN_BACKOFF: Duration = Duration::from_secs(1);
/// Longest restart delay.
pub const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// Rows pushed to a queue in one commit at most.
const PUSH_BATCH_ROWS: usize = 1000;

/// Parameters of one monitored artifact.
pub type Params = BTreeMap<String, String>;

/// One artifact of the table: its parameters, who added it, and the permissions its
/// queries run with (those the user had in the org when adding it).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Entry {
    pub params: Params,
    pub principal: String,
    pub permissions: Vec<String>,
}

impl Entry {
    /// An entry as stored; a table written before entries named their principal (a bare
    /// parameter map) runs as `server` with every permission, as it did then.
    fn parse(json: &str) -> Entry {
        if let Ok(e) = serde_json::from_str::<Entry>(json) {
            return e;
        }
        Entry {
            params: serde_json::from_str(json).unwrap_or_default(),
            principal: "server".into(),
            permissions: talon_core::acl::Permissions::all()
                .names()
                .into_iter()
                .map(String::from)
                .collect(),
        }
    }

    /// The permissions, as a set (unknown names are dropped).
    pub fn permission_set(&self) -> talon_core::acl::Permissions {
        let list: Vec<_> = self
            .permissions
            .iter()
            .filter_map(|n| talon_core::acl::Permission::parse(n))
            .collect();
        talon_core::acl::Permissions::of(&list)
    }

    /// The principal the queries run as: `server:<user>`.
    pub fn run_as(&self) -> String {
        if self.principal == "server" {
            "server".into()
        } else {
            format!("server:{}", self.principal)
        }
    }
}

/// Errors of table changes.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Store(#[from] talon_shared::store::Error),
}

/// A cheap handle on the server monitoring service.
#[derive(Clone)]
pub struct ServerMonitor {
    inner: Arc<Inner>,
}

struct Inner {
    qm: QueueManager,
    store: Store,
    repo: Repository,
    vql: Vql,
    running: Mutex<HashMap<(String, String), CancellationToken>>,
    /// How each running source is doing, for the debug page: by (org, queue).
    status: Mutex<HashMap<(String, String), SourceStatus>>,
    /// Set by `--no-monitoring`: the table is edited, nothing on it starts.
    suspended: std::sync::atomic::AtomicBool,
    shutdown: Shutdown,
}

impl ServerMonitor {
    /// A monitor whose table lives in `store`, whose artifacts come from `repo`, whose
    /// queries run with `vql` under `shutdown` and push to `qm`.
    pub fn new(
        qm: QueueManager,
        store: Store,
        repo: Repository,
        vql: Vql,
        shutdown: Shutdown,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                qm,
                store,
                repo,
                vql,
                running: Mutex::new(HashMap::new()),
                status: Mutex::new(HashMap::new()),
                suspended: Default::default(),
                shutdown,
            }),
        }
    }

    /// Starts every artifact of the stored table.
    pub fn start_stored(&self) -> Result<usize, Error> {
        let entries = self.inner.store.settings(NAMESPACE)?;
        let n = entries.len();
        for (key, value) in entries {
            let Some((org, artifact)) = key.split_once('/') else {
                continue;
            };
            self.start(org, artifact, Entry::parse(&value));
        }
        Ok(n)
    }

    /// The table of an org: artifact -> entry.
    pub fn list(&self, org: &str) -> Result<BTreeMap<String, Entry>, Error> {
        let prefix = format!("{org}/");
        Ok(self
            .inner
            .store
            .settings(NAMESPACE)?
            .into_iter()
            .filter_map(|(k, v)| {
                let artifact = k.strip_prefix(&prefix)?.to_string();
                Some((artifact, Entry::parse(&v)))
            })
            .collect())
    }

    /// Adds (or re-parameterises) an artifact and (re)starts it, to run as `principal`
    /// with `permissions`.
    pub async fn add(
        &self,
        org: &str,
        artifact: &str,
        params: Params,
        principal: &str,
        permissions: talon_core::acl::Permissions,
    ) -> Result<(), Error> {
        talon_shared::queue::validate_org(org).map_err(|e| Error::Invalid(e.to_string()))?;
        let repo = &self.inner.repo;
        let a = repo
            .get(artifact)
            .ok_or_else(|| Error::Invalid(format!("unknown artifact {artifact}")))?;
        if a.kind != ArtifactKind::ServerEvent {
            return Err(Error::Invalid(format!(
                "artifact {artifact} is {}; the server monitoring table takes SERVER_EVENT artifacts",
                a.kind
            )));
        }
        let list: Vec<(String, String)> = params.clone().into_iter().collect();
        compile(repo, artifact, &list).map_err(|e| Error::Invalid(e.to_string()))?;
        let entry = Entry {
            params,
            principal: principal.to_string(),
            permissions: permissions.names().into_iter().map(String::from).collect(),
        };
        let value = serde_json::to_string(&entry).expect("entries serialise");
        self.inner
            .store
            .set_setting(NAMESPACE, &format!("{org}/{artifact}"), Some(&value))
            .await?;
        self.start(org, artifact, entry);
        Ok(())
    }

    /// Removes an artifact and stops its queries; false when it was not in the table.
    pub async fn remove(&self, org: &str, artifact: &str) -> Result<bool, Error> {
        let removed = self
            .inner
            .store
            .set_setting(NAMESPACE, &format!("{org}/{artifact}"), None)
            .await?;
        if let Some(token) = self
            .inner
            .running
            .lock()
            .expect("running lock")
            .remove(&(org.to_string(), artifact.to_string()))
        {
            token.cancel();
        }
        Ok(removed)
    }

    /// From now on nothing on the table runs (what is running stops); the table can still
    /// be edited, so a master started with `--no-monitoring` can be repaired.
    pub fn suspend(&self) {
        self.inner
            .suspended
            .store(true, std::sync::atomic::Ordering::Relaxed);
        for (_, token) in self.inner.running.lock().expect("running lock").drain() {
            token.cancel();
        }
    }

    /// Whether monitoring is suspended.
    pub fn suspended(&self) -> bool {
        self.inner
            .suspended
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    fn start(&self, org: &str, artifact: &str, entry: Entry) {
        if self.suspended() {
            tracing::warn!(
                org,
                artifact,
                "server monitoring is suspended; not starting"
            );
            return;
        }
        let token = self.inner.shutdown.token().child_token();
        let key = (org.to_string(), artifact.to_string());
        if let Some(old) = self
            .inner
            .running
            .lock()
            .expect("running lock")
            .insert(key, token.clone())
        {
            old.cancel();
        }
        let list: Vec<(String, String)> = entry.params.clone().into_iter().collect();
        let sources = match compile(&self.inner.repo, artifact, &list) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(org, artifact, error = %e, "monitoring artifact cannot start");
                return;
            }
        };
        for s in sources {
            let span = tracing::info_span!(
                parent: self.inner.shutdown.span(),
                "monitor",
                org = %org,
                artifact = %artifact,
                queue = %s.queue
            );
            let runner = SourceRunner {
                inner: self.inner.clone(),
                org: org.to_string(),
                artifact: artifact.to_string(),
                queue: s.queue,
                params: list.clone(),
                principal: entry.run_as(),
                permissions: entry.permission_set(),
                cancel: token.clone(),
            };
            self.inner.shutdown.spawn_in(span, runner.run());
        }
    }
}

/// How one running source of the table is doing.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SourceStatus {
    pub org: String,
    pub artifact: String,
    pub queue: String,
    /// Who its queries run as.
    pub principal: String,
    /// When it first started, and when its current run started (RFC 3339).
    pub started: String,
    pub run_started: String,
    pub restarts: u64,
    pub last_error: Option<String>,
    pub last_error_at: Option<String>,
}

impl ServerMonitor {
    /// Every running source, by org and queue.
    pub fn status(&self) -> Vec<SourceStatus> {
        let mut all: Vec<SourceStatus> = self
            .inner
            .status
            .lock()
            .expect("status lock")
            .values()
            .cloned()
            .collect();
        all.sort_by(|a, b| (&a.org, &a.queue).cmp(&(&b.org, &b.queue)));
        all
    }

    /// The last `n` monitoring log lines of an artifact, oldest first.
    pub fn last_log_lines(&self, org: &str, artifact: &str, n: u64) -> Vec<serde_json::Value> {
        let stream = talon_shared::vql_host::log_stream(org, artifact);
        let store = &self.inner.store;
        let last = store.last_seq(&stream).unwrap_or(0);
        store
            .read_seq(&stream, last.saturating_sub(n) + 1, last + 1, n as usize)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|(_, r)| serde_json::from_str(&r.json).ok())
            .collect()
    }
}

struct SourceRunner {
    inner: Arc<Inner>,
    org: String,
    artifact: String,
    queue: String,
    params: Vec<(String, String)>,
    /// Who the queries run as, and what they may do.
    principal: String,
    permissions: talon_core::acl::Permissions,
    cancel: CancellationToken,
}

impl SourceRunner {
    async fn log(&self, level: &str, message: String) {
        let line = LogLine {
            level: level.into(),
            message,
        };
        append_log(&self.inner.store, &self.org, &self.artifact, &line).await;
    }

    fn note(&self, f: impl FnOnce(&mut SourceStatus)) {
        let now = talon_core::timefmt::rfc3339(talon_shared::queue::now_us());
        let key = (self.org.clone(), self.queue.clone());
        let mut all = self.inner.status.lock().expect("status lock");
        let s = all.entry(key).or_insert_with(|| SourceStatus {
            org: self.org.clone(),
            artifact: self.artifact.clone(),
            queue: self.queue.clone(),
            principal: self.principal.clone(),
            started: now.clone(),
            run_started: now.clone(),
            restarts: 0,
            last_error: None,
            last_error_at: None,
        });
        f(s);
    }

    fn note_error(&self, error: String) {
        let now = talon_core::timefmt::rfc3339(talon_shared::queue::now_us());
        self.note(|s| {
            s.restarts += 1;
            s.last_error = Some(error);
            s.last_error_at = Some(now.clone());
            s.run_started = now;
        });
    }

    async fn run(self) {
        let mut backoff = MIN_BACKOFF;
        self.note(|_| {});
        while !self.cancel.is_cancelled() {
            let started = Instant::now();
            match self.run_once().await {
                Ok(()) if self.cancel.is_cancelled() => break,
                Ok(()) => {
                    self.note_error("query ended".into());
                    self.log(
                        "ERROR",
                        format!(
                            "{}: query ended; restarting in {}s",
                            self.queue,
                            backoff.as_secs()
                        ),
                    )
                    .await
                }
                Err(e) => {
                    self.note_error(e.clone());
                    self.log(
                        "ERROR",
                        format!("{}: {e}; restarting in {}s", self.queue, backoff.as_secs()),
                    )
                    .await
                }
            }
            if started.elapsed() > MAX_BACKOFF {
                backoff = MIN_BACKOFF;
            }
            tokio::select! {
                _ = self.cancel.cancelled() => break,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
        // The last line of a run: after it, this source pushes nothing more. Its status
        // goes with the artifact (an update's new run keeps it).
        let still_listed = self
            .inner
            .running
            .lock()
            .expect("running lock")
            .contains_key(&(self.org.clone(), self.artifact.clone()));
        if !still_listed {
            self.inner
                .status
                .lock()
                .expect("status lock")
                .remove(&(self.org.clone(), self.queue.clone()));
        }
        self.log("INFO", format!("{}: stopped", self.queue)).await;
        tracing::info!(org = %self.org, queue = %self.queue, "monitoring query stopped");
    }

    /// Runs the source once, until it ends or is cancelled.
    async fn run_once(&self) -> Result<(), String> {
        // Compiled afresh each time, so a changed artifact takes effect on restart.
        let sources =
            compile(&self.inner.repo, &self.artifact, &self.params).map_err(|e| e.to_string())?;
        let source = sources
            .into_iter()
            .find(|s| s.queue == self.queue)
            .ok_or_else(|| format!("artifact {} no longer has this source", self.artifact))?;
        let info = QueryInfo {
            org: self.org.clone(),
            artifact: self.artifact.clone(),
            artifact_type: "SERVER_EVENT".into(),
            client_id: "server".into(),
            permissions: Some(self.permissions),
        };
        if let Some(p) = &source.precondition {
            let mut rows = self
                .inner
                .vql
                .run(
                    p,
                    source.env.clone(),
                    info.clone(),
                    &self.principal,
                    self.cancel.child_token(),
                )
                .map_err(|e| format!("precondition does not parse: {e}"))?;
            let mut met = false;
            while let Some(o) = rows.next().await {
                if matches!(o, Output::Row(_)) {
                    met = true;
                }
            }
            if !met {
                self.log(
                    "INFO",
                    format!("{}: precondition not met; not running", self.queue),
                )
                .await;
                self.cancel.cancelled().await;
                return Ok(());
            }
        }
        let outputs = self
            .inner
            .vql
            .run(
                &source.query,
                source.env,
                info,
                &self.principal,
                self.cancel.child_token(),
            )
            .map_err(|e| format!("query does not parse: {e}"))?;
        let mut chunks = outputs.ready_chunks(PUSH_BATCH_ROWS);
        while let Some(chunk) = chunks.next().await {
            let mut rows = Vec::new();
            for o in chunk {
                match o {
                    Output::Row(json) => {
                        if let Ok(serde_json::Value::Object(m)) = serde_json::from_str(&json) {
                            rows.push(m);
                        }
                    }
                    Output::Log(l) => {
                        append_log(&self.inner.store, &self.org, &self.artifact, &l).await
                    }
                }
            }
            if !rows.is_empty() {
                self.inner
                    .qm
                    .push(&self.org, &self.queue, rows, "server", "")
                    .await
                    .map_err(|e| format!("cannot push rows: {e}"))?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use talon_shared::parts::Parts;
    use talon_shared::queue::ROOT_ORG;

    const ONCE: &str =
        "name: Custom.Once\ntype: SERVER_EVENT\nsources:\n- query: SELECT 1 AS X FROM scope()\n";

    /// A query that keeps ending is restarted after 1, 2, 4 and 8 s (paused time: the
    /// clock moves only when every task waits on it).
    #[tokio::test(start_paused = true)]
    async fn a_query_that_keeps_ending_backs_off_doubling() {
        let dir = tempfile::tempdir().unwrap();
        let parts = Parts::standalone("test", dir.path().join("t.redb"))
            .await
            .unwrap();
        parts
            .repo
            .insert(parts.repo.check("test", ONCE, false).unwrap());
        let vql = Vql::new(
            parts.qm.clone(),
            parts.store.clone(),
            parts.repo.clone(),
            parts.services.clone(),
        );
        let monitor = ServerMonitor::new(
            parts.qm.clone(),
            parts.store.clone(),
            parts.repo.clone(),
            vql,
            parts.services.clone(),
        );
        let mut rows = parts
            .qm
            .watch(ROOT_ORG, "Custom.Once", "test")
            .await
            .unwrap();
        monitor
            .add(
                ROOT_ORG,
                "Custom.Once",
                Params::new(),
                "admin",
                talon_core::acl::Permissions::all(),
            )
            .await
            .unwrap();
        let mut runs = Vec::new();
        for _ in 0..5 {
            rows.next().await.unwrap();
            runs.push(Instant::now());
        }
        let gaps: Vec<u64> = runs
            .windows(2)
            .map(|w| (w[1] - w[0]).as_millis() as u64)
            .collect();
        assert_eq!(gaps, [1000, 2000, 4000, 8000]);
        assert!(monitor.remove(ROOT_ORG, "Custom.Once").await.unwrap());
        parts.shut_down().await;
    }
}
