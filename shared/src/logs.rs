//! Where the log lines and alerts of monitoring queries go, for server queries (the
//! server monitoring table) and client queries (their log batches) alike: each line to
//! the artifact's monitoring log (a store stream of its own), each ALERT line also as a
//! row of `Server.Internal.Alerts`.

use serde_json::{Map, Value};
use talon_vql::engine::LogLine;

use crate::queue::{now_us, stream_key, QueueManager};
use crate::store::{Store, StoredRow};

/// Queue that receives alerts.
pub const ALERTS_QUEUE: &str = "Server.Internal.Alerts";

/// The store stream holding a monitoring artifact's log lines (a client's artifact is
/// named `client_id \x1f artifact`).
pub fn log_stream(org: &str, artifact: &str) -> String {
    stream_key(org, &format!("{artifact}\u{1f}logs"))
}

/// Appends one log line of a monitoring artifact to its monitoring log.
pub async fn append_log(store: &Store, org: &str, artifact: &str, line: &LogLine) {
    let ts = now_us();
    let mut row = Map::new();
    row.insert("Timestamp".into(), Value::from(ts / 1_000_000));
    row.insert("Level".into(), line.level.clone().into());
    row.insert("Message".into(), line.message.clone().into());
    row.insert("Artifact".into(), artifact.into());
    let stored = StoredRow {
        ts_us: ts,
        client: String::new(),
        json: Value::Object(row).to_string(),
    };
    if let Err(e) = store.append(log_stream(org, artifact), vec![stored]).await {
        tracing::error!(error = %e, artifact, "could not store a monitoring log line");
    }
}

/// The `Server.Internal.Alerts` row of an ALERT line: the JSON object the line carries
/// (or `{name: line}`), with who raised it.
pub fn alert_row(
    message: &str,
    client_id: &str,
    artifact: &str,
    artifact_type: &str,
) -> Map<String, Value> {
    let mut row = match serde_json::from_str::<Value>(message) {
        Ok(Value::Object(m)) => m,
        _ => Map::from_iter([("name".to_string(), Value::from(message))]),
    };
    row.insert("client_id".into(), client_id.into());
    row.insert("artifact".into(), artifact.into());
    row.insert("artifact_type".into(), artifact_type.into());
    row.insert("flow_id".into(), "".into());
    row
}

/// Pushes an alert row as `source`; a failure is logged loudly.
pub async fn store_alert(qm: &QueueManager, org: &str, source: &str, row: Map<String, Value>) {
    if let Err(e) = qm.push(org, ALERTS_QUEUE, vec![row], source, "").await {
        tracing::error!(org, error = %e, "could not store an alert");
    }
}
