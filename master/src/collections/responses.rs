//! Filing client responses: rounds from a cursor, one transaction each, and the round's
//! completion rows pushed once.

use std::collections::HashMap;

use serde_json::{Map, Value};
use talon_shared::collections::*;
use talon_shared::queue::{now_us, stream_key};
use talon_shared::store::{SettingWrite, StoredRow};

use super::manager::{json_of, load_flow};
use super::{
    Flow, Manager, Result, COMPLETION_SCOPE, CURSOR_NS, MAX_FLOW_LOGS, PENDING_NS, ROUND_ROWS,
};

impl Manager {
    /// Orgs that may have responses: every org with client records.
    pub(super) fn orgs(&self) -> Result<Vec<String>> {
        // Orgs with clients, and orgs with flows (a server flow in an org without clients).
        let mut orgs = self.clients.orgs()?;
        for o in self.store.namespaces_with_prefix("flows/")? {
            if !orgs.contains(&o) {
                orgs.push(o);
            }
        }
        if !orgs.iter().any(|o| o == "root") {
            orgs.push("root".into());
        }
        Ok(orgs)
    }

    /// One round per org with new responses.
    pub(super) async fn apply_responses(&mut self) -> Result<()> {
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
    pub(super) async fn apply_round(&mut self, org: &str) -> Result<bool> {
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
            // A client answers only for what it was asked: the sources of the flow's
            // artifacts (the rest would be streams and record entries without end).
            let asked = source.is_empty()
                || f.request.artifacts.iter().any(|a| {
                    source == *a
                        || source
                            .strip_prefix(a.as_str())
                            .is_some_and(|rest| rest.starts_with('/'))
                });
            if !asked {
                tracing::warn!(org, client_id = %client, flow_id, source, "a response for a source the flow did not ask for; dropped");
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
                // The row limit holds whatever the client does.
                if f.request.max_rows > 0 && f.total_collected_rows >= f.request.max_rows {
                    continue;
                }
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
                f.total_logs += 1;
                if f.total_logs > MAX_FLOW_LOGS {
                    continue;
                }
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
                if f.error_log.is_empty() && self.error_regex.is_match(message) {
                    f.error_log = message.chars().take(1000).collect();
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
    pub(super) async fn push_completions(
        &self,
        org: &str,
        round: &str,
        rows: Vec<Map<String, Value>>,
    ) {
        let id = format!("{org}/{round}");
        // Each row is its flow's client's, as Velociraptor's completions are.
        let clients: Vec<String> = rows
            .iter()
            .map(|r| {
                r.get("ClientId")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string()
            })
            .collect();
        match self
            .qm
            .push_once(
                org,
                COMPLETION_QUEUE,
                rows,
                &clients,
                "server",
                COMPLETION_SCOPE,
                &id,
            )
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
    pub(super) async fn push_pending_completions(&self) -> Result<()> {
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
