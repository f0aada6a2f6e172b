//! Collections on the client: each `FlowRequest` runs once (a flow id seen before is
//! ignored), its queries one after another within the flow's time limit and each query's
//! row limit, and everything it produces (result rows, log lines, each query's status when
//! it starts and ends) goes out as rows of `Server.Internal.FlowResponses` through the
//! same batcher and spool as event rows, so it survives disconnects and is stored once.
//!
//! Which flows run and which were seen is kept in `<state>/flows.json` (written to a
//! temporary file and renamed): a flow still listed as running when the agent starts was
//! cut off by a restart, and is reported once as UNKNOWN_FLOW.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{json, Value as Json};
use talon_core::flows::*;
use talon_proto::client::{EventQuery, FlowCancel, FlowRequest};
use talon_vql::engine::{LogLine as VqlLog, QueryInfo};
use talon_vql::Runner;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::agent::Produced;

/// Flow ids remembered as seen, so a task delivered again is not run again.
const SEEN_FLOWS: usize = 4096;

#[derive(Default, serde::Serialize, serde::Deserialize)]
struct FlowState {
    running: Vec<String>,
    seen: VecDeque<String>,
}

/// The client's collections.
#[derive(Clone)]
pub struct Flows {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    state: Mutex<FlowState>,
    cancels: Mutex<HashMap<String, CancellationToken>>,
    runner: Runner,
    rows: mpsc::Sender<Produced>,
    org: String,
    client_id: String,
    stop: CancellationToken,
}

impl Flows {
    /// Opens the flow state in `state_dir` and reports flows a restart cut off (the
    /// batcher must be running: the reports wait until they are spooled).
    pub(crate) async fn open(
        state_dir: &Path,
        runner: Runner,
        rows: mpsc::Sender<Produced>,
        org: &str,
        client_id: &str,
        stop: CancellationToken,
    ) -> anyhow::Result<Self> {
        let path = state_dir.join("flows.json");
        let state: FlowState = match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b).unwrap_or_else(|e| {
                tracing::error!(path = %path.display(), error = %e, "unreadable flow state; starting afresh");
                FlowState::default()
            }),
            Err(_) => FlowState::default(),
        };
        let this = Self {
            inner: Arc::new(Inner {
                path,
                state: Mutex::new(state),
                cancels: Mutex::default(),
                runner,
                rows,
                org: org.to_string(),
                client_id: client_id.to_string(),
                stop,
            }),
        };
        let cut_off = std::mem::take(&mut this.inner.state.lock().expect("flows").running);
        for flow_id in &cut_off {
            tracing::warn!(
                flow_id,
                "a collection was cut off by a restart; reporting it"
            );
            let status = json!({
                "status": STATUS_UNKNOWN_FLOW,
                "error_message": "Unknown flow: the client restarted while the collection ran",
            });
            // Forgotten as running only once the report is on disk.
            let (tx, rx) = tokio::sync::oneshot::channel();
            this.send_row(flow_id, "", "Status", status, Some(tx)).await;
            let _ = rx.await;
        }
        this.save()?;
        Ok(this)
    }

    fn save(&self) -> anyhow::Result<()> {
        let bytes = serde_json::to_vec(&*self.inner.state.lock().expect("flows"))?;
        let tmp = self.inner.path.with_extension("json.tmp");
        std::fs::write(&tmp, bytes)?;
        std::fs::rename(&tmp, &self.inner.path)?;
        Ok(())
    }

    async fn send(&self, flow_id: &str, source: &str, field: &str, value: Json) {
        self.send_row(flow_id, source, field, value, None).await;
    }

    async fn send_row(
        &self,
        flow_id: &str,
        source: &str,
        field: &str,
        value: Json,
        spooled: Option<tokio::sync::oneshot::Sender<()>>,
    ) {
        let mut row = serde_json::Map::new();
        row.insert("FlowId".into(), flow_id.into());
        row.insert("Source".into(), source.into());
        row.insert(field.into(), value);
        let p = Produced {
            queue: RESPONSES_QUEUE.to_string(),
            json: Json::Object(row).to_string(),
            spooled,
        };
        let _ = self.inner.rows.send(p).await;
    }

    /// Starts a flow unless it was seen before.
    pub fn start(&self, req: FlowRequest) {
        {
            let mut s = self.inner.state.lock().expect("flows");
            if s.seen.contains(&req.flow_id) {
                tracing::debug!(flow_id = %req.flow_id, "collection seen before; ignored");
                return;
            }
            s.seen.push_back(req.flow_id.clone());
            while s.seen.len() > SEEN_FLOWS {
                s.seen.pop_front();
            }
            s.running.push(req.flow_id.clone());
        }
        if let Err(e) = self.save() {
            tracing::error!(error = %e, "cannot record the flow state");
        }
        let cancel = self.inner.stop.child_token();
        self.inner
            .cancels
            .lock()
            .expect("cancels")
            .insert(req.flow_id.clone(), cancel.clone());
        let this = self.clone();
        tokio::spawn(async move {
            let flow_id = req.flow_id.clone();
            this.run(req, cancel).await;
            this.inner.cancels.lock().expect("cancels").remove(&flow_id);
            // Stopped by shutdown, the flow stays listed: the next start reports it.
            if this.inner.stop.is_cancelled() {
                return;
            }
            this.inner
                .state
                .lock()
                .expect("flows")
                .running
                .retain(|f| f != &flow_id);
            if let Err(e) = this.save() {
                tracing::error!(error = %e, "cannot record the flow state");
            }
        });
    }

    /// Cancels a flow if it runs, and says the cancel arrived either way.
    pub async fn cancel(&self, c: FlowCancel) {
        let token = self
            .inner
            .cancels
            .lock()
            .expect("cancels")
            .get(&c.flow_id)
            .cloned();
        if let Some(t) = token {
            tracing::info!(flow_id = %c.flow_id, reason = %c.reason, "collection cancelled");
            t.cancel();
        }
        self.send(&c.flow_id, "", "CancelAck", Json::Bool(true))
            .await;
    }

    async fn run(&self, req: FlowRequest, cancel: CancellationToken) {
        let timeout = Duration::from_secs(if req.timeout_secs == 0 {
            DEFAULT_FLOW_TIMEOUT_SECS
        } else {
            req.timeout_secs
        });
        let deadline = tokio::time::Instant::now() + timeout;
        let total = req.queries.len();
        for (i, q) in req.queries.iter().enumerate() {
            let started = now_us();
            let base = json!({"Artifact": q.queue, "query_id": i, "total_queries": total});
            let mut status = base.clone();
            status["status"] = STATUS_PROGRESS.into();
            status["first_active"] = started.into();
            self.send(&req.flow_id, &q.queue, "Status", status).await;
            let (code, error, rows, logs) = if cancel.is_cancelled() {
                (STATUS_GENERIC_ERROR, "Cancelled".to_string(), 0, 0)
            } else {
                self.run_query(&req, q, deadline, timeout, &cancel).await
            };
            let mut status = base;
            status["status"] = code.into();
            status["error_message"] = error.into();
            status["result_rows"] = rows.into();
            status["log_rows"] = logs.into();
            status["first_active"] = started.into();
            status["last_active"] = now_us().into();
            status["duration"] = ((now_us() - started) * 1000).into();
            if i + 1 < total {
                self.send(&req.flow_id, &q.queue, "Status", status).await;
                continue;
            }
            // The flow is forgotten as running only once its last status is on disk: a
            // crash before that reports it as cut off rather than leaving it unanswered.
            let (tx, rx) = tokio::sync::oneshot::channel();
            self.send_row(&req.flow_id, &q.queue, "Status", status, Some(tx))
                .await;
            let _ = rx.await;
        }
    }

    /// One query: (status, error message, rows, log lines).
    async fn run_query(
        &self,
        req: &FlowRequest,
        q: &EventQuery,
        deadline: tokio::time::Instant,
        timeout: Duration,
        cancel: &CancellationToken,
    ) -> (i64, String, u64, u64) {
        let (log_tx, mut log_rx) = mpsc::unbounded_channel::<VqlLog>();
        let sink: talon_vql::engine::LogSink = Arc::new(move |l: VqlLog| {
            let _ = log_tx.send(l);
        });
        let info = QueryInfo {
            org: self.inner.org.clone(),
            artifact: q.artifact.clone(),
            artifact_type: "CLIENT".into(),
            client_id: self.inner.client_id.clone(),
            permissions: None,
        };
        let env: Vec<(String, talon_vql::Value)> = q
            .env
            .iter()
            .map(|(k, v)| (k.clone(), talon_vql::Value::Str(v.clone())))
            .collect();
        let query_cancel = cancel.child_token();
        let (mut rows, mut logs) = (0u64, 0u64);
        let mut outcome: Option<(i64, String)> = None;
        if !q.precondition.is_empty() {
            match self.inner.runner.run(
                &q.precondition,
                env.clone(),
                info.clone(),
                query_cancel.child_token(),
                sink.clone(),
            ) {
                Ok(mut s) => {
                    if s.next().await.is_none() {
                        let line = json!({"level": "INFO", "message": format!("{}: precondition not met; skipped", q.queue), "timestamp": now_us()});
                        self.send(&req.flow_id, &q.queue, "Log", line).await;
                        return (STATUS_OK, String::new(), 0, 1);
                    }
                }
                Err(e) => return (STATUS_GENERIC_ERROR, format!("precondition: {e}"), 0, 0),
            }
        }
        let mut stream =
            match self
                .inner
                .runner
                .run(&q.query, env, info, query_cancel.clone(), sink)
            {
                Ok(s) => s,
                Err(e) => {
                    return (
                        STATUS_GENERIC_ERROR,
                        format!("query does not parse: {e}"),
                        0,
                        0,
                    )
                }
            };
        let started = Instant::now();
        loop {
            tokio::select! {
                row = stream.next() => {
                    let Some(row) = row else { break };
                    let value = talon_vql::Value::Dict(row).to_json();
                    self.send(&req.flow_id, &q.queue, "Row", value).await;
                    rows += 1;
                    if req.max_rows > 0 && rows >= req.max_rows {
                        query_cancel.cancel();
                        outcome = Some((STATUS_GENERIC_ERROR, format!("Row limit reached: max_rows {} (the query was stopped)", req.max_rows)));
                        break;
                    }
                }
                line = log_rx.recv() => {
                    if let Some(l) = line {
                        logs += 1;
                        let line = json!({"level": l.level, "message": l.message, "timestamp": now_us()});
                        self.send(&req.flow_id, &q.queue, "Log", line).await;
                    }
                }
                _ = tokio::time::sleep_until(deadline) => {
                    query_cancel.cancel();
                    outcome = Some((STATUS_GENERIC_ERROR, format!("Timeout: the collection ran longer than {} s (after {:.1} s in this query)", timeout.as_secs(), started.elapsed().as_secs_f64())));
                    break;
                }
                _ = cancel.cancelled() => {
                    outcome = Some((STATUS_GENERIC_ERROR, "Cancelled".into()));
                    break;
                }
            }
        }
        drop(stream);
        while let Ok(l) = log_rx.try_recv() {
            logs += 1;
            let line = json!({"level": l.level, "message": l.message, "timestamp": now_us()});
            self.send(&req.flow_id, &q.queue, "Log", line).await;
        }
        let (code, error) = outcome.unwrap_or((STATUS_OK, String::new()));
        (code, error, rows, logs)
    }
}

fn now_us() -> i64 {
    chrono::Utc::now().timestamp_micros()
}
