//! A flow's record (Velociraptor's `ArtifactCollectorContext` field names) and how one
//! client response changes it.

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use talon_shared::collections::*;

/// One parameter, as Velociraptor's `env` entries.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EnvEntry {
    pub key: String,
    pub value: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SpecParameters {
    pub env: Vec<EnvEntry>,
}

/// The parameters given for one artifact.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Spec {
    pub artifact: String,
    pub parameters: SpecParameters,
}

/// What was asked (`ArtifactCollectorArgs`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Request {
    pub creator: String,
    pub client_id: String,
    pub flow_id: String,
    pub artifacts: Vec<String>,
    pub specs: Vec<Spec>,
    pub timeout: u64,
    #[serde(default)]
    pub max_rows: u64,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub hunt_id: String,
}

/// One query's status (`VeloStatus`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct QueryStat {
    pub status: i64,
    #[serde(default)]
    pub error_message: String,
    #[serde(rename = "Artifact", default)]
    pub artifact: String,
    #[serde(default)]
    pub result_rows: u64,
    #[serde(default)]
    pub log_rows: u64,
    /// Nanoseconds.
    #[serde(default)]
    pub duration: i64,
    #[serde(default)]
    pub first_active: i64,
    #[serde(default)]
    pub last_active: i64,
    #[serde(default)]
    pub query_id: u64,
    #[serde(default)]
    pub total_queries: u64,
    #[serde(default)]
    pub names_with_response: Vec<String>,
}

impl QueryStat {
    fn ended(&self) -> bool {
        self.status != STATUS_PROGRESS
    }
}

/// A flow as stored.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Flow {
    pub session_id: String,
    pub client_id: String,
    pub request: Request,
    /// Microseconds, as every time here but `inflight_time` (seconds, as Velociraptor).
    pub create_time: i64,
    #[serde(default)]
    pub start_time: i64,
    #[serde(default)]
    pub active_time: i64,
    #[serde(default)]
    pub inflight_time: i64,
    /// Stored: RUNNING, FINISHED or ERROR (WAITING, IN_PROGRESS, UNRESPONSIVE are read).
    pub state: String,
    #[serde(default)]
    pub status: String,
    #[serde(default)]
    pub artifacts_with_results: Vec<String>,
    #[serde(default)]
    pub total_collected_rows: u64,
    #[serde(default)]
    pub total_logs: u64,
    /// Flows upload no files yet; Velociraptor's fields, always 0, for artifacts that read them.
    #[serde(default)]
    pub total_uploaded_files: u64,
    #[serde(default)]
    pub total_uploaded_bytes: u64,
    /// Nanoseconds.
    #[serde(default)]
    pub execution_duration: i64,
    #[serde(default)]
    pub query_stats: Vec<QueryStat>,
    pub total_requests: u64,
    #[serde(default)]
    pub outstanding_requests: u64,
    /// The first log line that matched the error pattern: the flow ends as ERROR.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub error_log: String,
    /// When the flow ended, microseconds.
    #[serde(default)]
    pub end_time: i64,
}

impl Flow {
    /// Whether the flow has ended.
    pub fn is_final(&self) -> bool {
        self.state == "FINISHED" || self.state == "ERROR"
    }

    /// The state as read now: a RUNNING flow is WAITING once sent, IN_PROGRESS once the
    /// client reports, UNRESPONSIVE after five minutes without a report.
    pub fn state_now(&self, now_us: i64) -> &'static str {
        match self.state.as_str() {
            "FINISHED" => "FINISHED",
            "ERROR" => "ERROR",
            _ if self.active_time > 0 && now_us - self.active_time > UNRESPONSIVE_AFTER_US => {
                "UNRESPONSIVE"
            }
            _ if !self.query_stats.is_empty() => "IN_PROGRESS",
            _ if self.inflight_time > 0 => "WAITING",
            _ => "RUNNING",
        }
    }

    /// The flow as users read it (its state as of now).
    pub fn view(&self, now_us: i64) -> Value {
        let mut v = serde_json::to_value(self).unwrap_or(Value::Null);
        if let Value::Object(m) = &mut v {
            m.insert("state".into(), self.state_now(now_us).into());
            m.remove("error_log");
        }
        v
    }

    /// The `System.Flow.Completion` row.
    pub fn completion_row(&self) -> Map<String, Value> {
        let row = json!({
            "Timestamp": self.end_time / 1_000_000,
            "Flow": self.view(self.end_time),
            "FlowId": self.session_id,
            "ClientId": self.client_id,
        });
        match row {
            Value::Object(m) => m,
            _ => unreachable!(),
        }
    }

    /// Ends the flow: ERROR when a query failed or a log line matched the error pattern
    /// (the first such message is the status), else FINISHED.
    pub fn finish(&mut self, now_us: i64) {
        let failed = self
            .query_stats
            .iter()
            .find(|q| q.status != STATUS_OK && q.ended());
        if let Some(q) = failed {
            self.state = "ERROR".into();
            self.status = if q.error_message.is_empty() {
                format!("{} failed", q.artifact)
            } else {
                q.error_message.clone()
            };
        } else if !self.error_log.is_empty() {
            self.state = "ERROR".into();
            self.status = self.error_log.clone();
        } else {
            self.state = "FINISHED".into();
        }
        self.outstanding_requests = 0;
        self.end_time = now_us;
        // As the client measured it, when it said (from its first query's start to its
        // last query's end); else as the server saw it.
        let last = self
            .query_stats
            .iter()
            .map(|q| q.last_active)
            .max()
            .unwrap_or(0);
        let end = if last > 0 { last } else { now_us };
        if self.start_time > 0 {
            self.execution_duration = (end - self.start_time).max(0) * 1000;
        }
    }

    /// Applies a query status from the client; true when the flow has now ended.
    pub fn apply_status(&mut self, source: &str, status: &Value, now_us: i64) -> bool {
        let code = status.get("status").and_then(Value::as_i64).unwrap_or(0);
        let text = |k: &str| {
            status
                .get(k)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string()
        };
        let num = |k: &str| status.get(k).and_then(Value::as_i64).unwrap_or(0);
        if code == STATUS_UNKNOWN_FLOW {
            // The client lost the whole flow.
            self.query_stats.push(QueryStat {
                status: code,
                error_message: text("error_message"),
                artifact: source.to_string(),
                ..QueryStat::default()
            });
            self.finish(now_us);
            return true;
        }
        let query_id = num("query_id").max(0) as u64;
        // Only the queries the flow has: a client cannot grow the record without end.
        if query_id >= self.total_requests.max(1) {
            return false;
        }
        let stat = match self
            .query_stats
            .iter_mut()
            .position(|q| q.query_id == query_id && q.artifact == source)
        {
            Some(i) => &mut self.query_stats[i],
            None => {
                self.query_stats.push(QueryStat {
                    artifact: source.to_string(),
                    query_id,
                    ..QueryStat::default()
                });
                self.query_stats.last_mut().expect("pushed")
            }
        };
        stat.status = code;
        stat.error_message = text("error_message");
        stat.result_rows = num("result_rows").max(0) as u64;
        stat.log_rows = num("log_rows").max(0) as u64;
        stat.duration = num("duration");
        stat.first_active = num("first_active");
        stat.last_active = num("last_active");
        stat.total_queries = num("total_queries").max(0) as u64;
        if stat.result_rows > 0 {
            stat.names_with_response = vec![source.to_string()];
        }
        let ended = self.query_stats.iter().filter(|q| q.ended()).count() as u64;
        self.outstanding_requests = self.total_requests.saturating_sub(ended);
        if ended >= self.total_requests {
            self.finish(now_us);
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow(queries: u64) -> Flow {
        Flow {
            session_id: "F.A".into(),
            client_id: "C.0123456789abcdef".into(),
            state: "RUNNING".into(),
            total_requests: queries,
            outstanding_requests: queries,
            create_time: 1,
            ..Flow::default()
        }
    }

    #[test]
    fn states_follow_the_rules() {
        let mut f = flow(2);
        assert_eq!(f.state_now(10), "RUNNING");
        f.inflight_time = 5;
        assert_eq!(f.state_now(10), "WAITING");
        assert!(!f.apply_status("A", &json!({"status": STATUS_PROGRESS}), 10));
        f.active_time = 10;
        assert_eq!(f.state_now(11), "IN_PROGRESS");
        assert_eq!(f.state_now(10 + UNRESPONSIVE_AFTER_US + 1), "UNRESPONSIVE");
        assert!(!f.apply_status("A", &json!({"status": STATUS_OK, "result_rows": 3}), 12));
        assert!(f.apply_status("B", &json!({"status": STATUS_OK, "query_id": 1}), 13));
        assert_eq!(f.state, "FINISHED");
        assert_eq!(f.state_now(10 + UNRESPONSIVE_AFTER_US + 1), "FINISHED");
    }

    #[test]
    fn an_error_log_fails_the_flow_only_when_it_ends() {
        let mut f = flow(1);
        f.error_log = "Symbol foo not found".into();
        assert!(!f.is_final());
        assert!(f.apply_status("A", &json!({"status": STATUS_OK}), 5));
        assert_eq!(f.state, "ERROR");
        assert_eq!(f.status, "Symbol foo not found");
    }

    #[test]
    fn an_unknown_flow_ends_it_as_an_error() {
        let mut f = flow(3);
        assert!(f.apply_status(
            "",
            &json!({"status": STATUS_UNKNOWN_FLOW, "error_message": "gone"}),
            5
        ));
        assert_eq!((f.state.as_str(), f.status.as_str()), ("ERROR", "gone"));
        let row = f.completion_row();
        assert_eq!(row["FlowId"], "F.A");
        assert_eq!(row["Flow"]["session_id"], "F.A");
        assert_eq!(row["Flow"]["state"], "ERROR");
    }
}
