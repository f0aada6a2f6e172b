//! Flows of the client `server`: SERVER artifacts run on the master's query pool with the
//! permissions of whoever asked, and answer exactly as a client does (rows of
//! `Server.Internal.FlowResponses` under the client id `server`), so the manager files
//! their results and completes them the same way.

use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{json, Map, Value};
use talon_core::acl::Permissions;
use talon_shared::collections::*;
use talon_shared::queue::{now_us, QueueManager};
use talon_shared::vql_host::{Output, QueryLimits, Vql};
use talon_vql::engine::QueryInfo;
use tokio_util::sync::CancellationToken;

/// The client id of server flows.
pub const SERVER_CLIENT: &str = "server";
/// Responses pushed per batch at most.
const BATCH: usize = 1000;

/// One server flow's work.
pub(super) struct ServerFlow {
    pub org: String,
    pub flow_id: String,
    pub creator: String,
    pub queries: Vec<TaskQuery>,
    pub timeout: u64,
    pub max_rows: u64,
    pub permissions: Option<Permissions>,
}

fn response(flow_id: &str, source: &str, field: &str, value: Value) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("FlowId".into(), flow_id.into());
    m.insert("Source".into(), source.into());
    m.insert(field.into(), value);
    m
}

async fn flush(qm: &QueueManager, org: &str, batch: &mut Vec<Map<String, Value>>) {
    if batch.is_empty() {
        return;
    }
    let rows = std::mem::take(batch);
    if let Err(e) = qm
        .push(org, RESPONSES_QUEUE, rows, SERVER_CLIENT, SERVER_CLIENT)
        .await
    {
        tracing::error!(org, error = %e, "cannot store a server flow's responses");
    }
}

/// Runs the flow's queries one after another within its limits.
pub(super) async fn run(vql: Vql, qm: QueueManager, f: ServerFlow, cancel: CancellationToken) {
    let timeout = Duration::from_secs(if f.timeout == 0 {
        DEFAULT_FLOW_TIMEOUT_SECS
    } else {
        f.timeout
    });
    let started = Instant::now();
    let total = f.queries.len();
    let mut batch = Vec::new();
    for (i, q) in f.queries.iter().enumerate() {
        let first = now_us();
        let base = json!({"Artifact": q.source, "query_id": i, "total_queries": total, "first_active": first});
        let mut status = base.clone();
        status["status"] = STATUS_PROGRESS.into();
        batch.push(response(&f.flow_id, &q.source, "Status", status));
        // Said at once, so the flow reads IN_PROGRESS while a slow query runs.
        flush(&qm, &f.org, &mut batch).await;
        let mut flushed = Instant::now();
        let info = QueryInfo {
            org: f.org.clone(),
            artifact: q.artifact.clone(),
            artifact_type: "SERVER".into(),
            client_id: SERVER_CLIENT.into(),
            permissions: f.permissions,
        };
        let env = q
            .env
            .iter()
            .map(|(k, v)| (k.clone(), talon_vql::Value::Str(v.clone())))
            .collect();
        let limits = QueryLimits {
            timeout: Some(timeout.saturating_sub(started.elapsed())),
            max_rows: (f.max_rows > 0).then_some(f.max_rows),
        };
        let (mut rows, mut logs) = (0u64, 0u64);
        let mut error = String::new();
        match vql.run_limited(
            &q.query,
            env,
            info,
            &f.creator,
            cancel.child_token(),
            limits,
        ) {
            Err(e) => error = format!("query does not parse: {e}"),
            Ok(mut out) => {
                while let Some(o) = out.next().await {
                    match o {
                        Output::Row(json) => {
                            let row = serde_json::from_str(&json).unwrap_or(Value::Null);
                            batch.push(response(&f.flow_id, &q.source, "Row", row));
                            rows += 1;
                        }
                        Output::Log(l) => {
                            logs += 1;
                            let line = json!({"level": l.level, "message": l.message, "timestamp": now_us()});
                            batch.push(response(&f.flow_id, &q.source, "Log", line));
                        }
                    }
                    if batch.len() >= BATCH || flushed.elapsed() >= Duration::from_secs(1) {
                        flush(&qm, &f.org, &mut batch).await;
                        flushed = Instant::now();
                    }
                }
            }
        }
        if cancel.is_cancelled() {
            error = "Cancelled".into();
        } else if error.is_empty() && started.elapsed() >= timeout {
            error = format!(
                "Timeout: the collection ran longer than {} s",
                timeout.as_secs()
            );
        } else if error.is_empty() && f.max_rows > 0 && rows >= f.max_rows {
            error = format!(
                "Row limit reached: max_rows {} (the query was stopped)",
                f.max_rows
            );
        }
        let mut status = base;
        status["status"] = if error.is_empty() {
            STATUS_OK
        } else {
            STATUS_GENERIC_ERROR
        }
        .into();
        status["error_message"] = error.into();
        status["result_rows"] = rows.into();
        status["log_rows"] = logs.into();
        status["last_active"] = now_us().into();
        status["duration"] = ((now_us() - first) * 1000).into();
        batch.push(response(&f.flow_id, &q.source, "Status", status));
        flush(&qm, &f.org, &mut batch).await;
    }
}
