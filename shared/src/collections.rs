//! Collections (flows) and hunts: what every node shares about them. The master's flow
//! and hunt manager (`master/src/collections.rs`) is the single writer of flow and hunt
//! state; nodes deliver its tasks to the clients they hold ([`ClientTasks`] rows, and the
//! tasks still pending when a client connects) and offer running hunts to their clients
//! ([`Participation`] rows), which the manager turns into flows.
//!
//! Stored in the master's settings: tasks (`tasks/<org>`, `client/flow`), flows
//! (`flows/<org>`, `client/flow`, Velociraptor's `ArtifactCollectorContext` field names),
//! hunts (`hunts/<org>`, hunt id) and hunt clients (`hunt_clients/<org>/<hunt>`, client);
//! result rows and log lines in streams of their own ([`result_stream`], [`log_stream`]).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use talon_proto::client::{server_message, EventQuery, FlowCancel, FlowRequest, ServerMessage};

use crate::bus::Exchange;
use crate::control::{ClientRef, ControlRow};
use crate::store::{self, Store};

pub use talon_core::flows::*;
/// One row per ended flow.
pub const COMPLETION_QUEUE: &str = "System.Flow.Completion";
/// One row per hunt made.
pub const HUNT_CREATION_QUEUE: &str = "System.Hunt.Creation";
/// Each applied change of a hunt, as the manager applied it.
pub const HUNT_MODIFICATION_QUEUE: &str = "Server.Internal.HuntModification";

/// A running flow with no report for this long reads as UNRESPONSIVE.
pub const UNRESPONSIVE_AFTER_US: i64 = 300 * 1_000_000;
/// A hunt's default life.
pub const DEFAULT_HUNT_EXPIRY_SECS: i64 = 7 * 24 * 3600;
/// Log lines that mark a flow as failed unless the config says otherwise
/// (`collection_error_regex`).
pub const DEFAULT_ERROR_REGEX: &str = "Error:|Symbol.+?not found|Field.+?is required";

/// One query of a collection task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskQuery {
    pub artifact: String,
    /// `Artifact` or `Artifact/Source`.
    pub source: String,
    #[serde(default)]
    pub precondition: String,
    pub query: String,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
}

/// What a client is asked to do.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind")]
pub enum Task {
    Collect {
        flow_id: String,
        queries: Vec<TaskQuery>,
        timeout_secs: u64,
        max_rows: u64,
    },
    Cancel {
        flow_id: String,
        reason: String,
    },
}

impl Task {
    /// The flow the task is about.
    pub fn flow_id(&self) -> &str {
        match self {
            Task::Collect { flow_id, .. } | Task::Cancel { flow_id, .. } => flow_id,
        }
    }

    /// Where the task is kept until the client answers it: a cancel beside its flow.
    pub fn key(&self, client: &str) -> String {
        match self {
            Task::Collect { flow_id, .. } => task_key(client, flow_id),
            Task::Cancel { flow_id, .. } => format!("{}~cancel", task_key(client, flow_id)),
        }
    }

    /// The message the client receives.
    pub fn to_message(&self) -> ServerMessage {
        let msg = match self {
            Task::Collect {
                flow_id,
                queries,
                timeout_secs,
                max_rows,
            } => server_message::Msg::FlowRequest(FlowRequest {
                flow_id: flow_id.clone(),
                queries: queries
                    .iter()
                    .map(|q| EventQuery {
                        artifact: q.artifact.clone(),
                        queue: q.source.clone(),
                        precondition: q.precondition.clone(),
                        query: q.query.clone(),
                        env: q.env.clone().into_iter().collect(),
                    })
                    .collect(),
                timeout_secs: *timeout_secs,
                max_rows: *max_rows,
                max_batch_rows: 0,
            }),
            Task::Cancel { flow_id, reason } => server_message::Msg::FlowCancel(FlowCancel {
                flow_id: flow_id.clone(),
                reason: reason.clone(),
            }),
        };
        ServerMessage { msg: Some(msg) }
    }
}

/// Tasks for a client, to the node that holds it (`Server.Internal.ClientTasks`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ClientTasks {
    pub client_id: String,
    pub flow_id: String,
    pub tasks: Vec<Task>,
}

impl ControlRow for ClientTasks {
    const QUEUE: &'static str = "Server.Internal.ClientTasks";
}

/// A node sent a collection to its client (`Server.Internal.ClientScheduled`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ClientScheduled {
    pub client_id: String,
    pub flow_id: String,
    #[serde(default)]
    pub node: String,
}

impl ControlRow for ClientScheduled {
    const QUEUE: &'static str = "Server.Internal.ClientScheduled";
}

/// A node offers a hunt to a client it holds (`System.Hunt.Participation`); the manager
/// schedules the flow unless the client takes part already or the hunt cannot take it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Participation {
    pub hunt_id: String,
    pub client_id: String,
    pub flow_id: String,
    /// Unix seconds.
    pub timestamp: i64,
    #[serde(default)]
    pub node: String,
    /// The client's labels and OS as the node knows them (the master uses its own record
    /// when it has one; a client on its first contact may not be recorded there yet).
    #[serde(default)]
    pub labels: Vec<String>,
    #[serde(default)]
    pub os: String,
}

impl ControlRow for Participation {
    const QUEUE: &'static str = "System.Hunt.Participation";
}

/// A hunt's new version, from the manager to every dispatcher (`Server.Internal.HuntUpdate`);
/// a dispatcher never applies an older version than it holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct HuntUpdate {
    pub hunt_id: String,
    pub version: u64,
    pub hunt: Hunt,
    /// Offer the hunt again to every connected client it matches.
    #[serde(default)]
    pub trigger_participation: bool,
}

impl ControlRow for HuntUpdate {
    const QUEUE: &'static str = "Server.Internal.HuntUpdate";
}

/// Which clients a hunt is for. Include labels (any of them) and the OS combine; an
/// exclude label always wins.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Condition {
    #[serde(default)]
    pub labels: Vec<String>,
    #[serde(default)]
    pub excluded_labels: Vec<String>,
    /// `windows`, `linux` or `darwin`; empty for any.
    #[serde(default)]
    pub os: String,
}

impl Condition {
    /// Whether a client with these labels and OS (as its agent reports it) takes part.
    pub fn matches(&self, labels: &[String], os: &str) -> bool {
        let has = |l: &String| labels.iter().any(|x| x.eq_ignore_ascii_case(l));
        if self.excluded_labels.iter().any(has) {
            return false;
        }
        if !self.labels.is_empty() && !self.labels.iter().any(has) {
            return false;
        }
        self.os.is_empty() || normal_os(os) == normal_os(&self.os)
    }
}

/// The OS names hunts use (`darwin` for macOS, as Velociraptor).
pub fn normal_os(os: &str) -> String {
    match os.to_ascii_lowercase().as_str() {
        "macos" | "darwin" | "osx" => "darwin".into(),
        other => other.to_string(),
    }
}

/// Counts of a hunt, kept by one rule: scheduled when its flow is made; finished, with
/// results (rows > 0), with errors and rows when its flow ends.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HuntStats {
    pub total_clients_scheduled: u64,
    pub total_finished_clients: u64,
    pub total_clients_with_results: u64,
    pub total_clients_with_errors: u64,
    pub total_collected_rows: u64,
    /// Why no more clients are scheduled (client limit, expiry, a user), if so.
    #[serde(default)]
    pub stopped: bool,
}

/// A hunt as stored and announced, with Velociraptor's field names.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Hunt {
    pub hunt_id: String,
    pub version: u64,
    /// Microseconds.
    pub create_time: i64,
    pub creator: String,
    #[serde(default)]
    pub start_time: i64,
    pub expires: i64,
    #[serde(default)]
    pub hunt_description: String,
    /// PAUSED, RUNNING or STOPPED.
    pub state: String,
    /// Why a stopped hunt stopped ("client limit 10 reached", "expired", "stopped by bob").
    #[serde(default)]
    pub stop_reason: String,
    /// 0: no limit.
    #[serde(default)]
    pub client_limit: u64,
    pub condition: Condition,
    pub artifacts: Vec<String>,
    /// What each client's flow collects: the compiled queries and the limits.
    pub start_request: HuntRequest,
    pub stats: HuntStats,
}

/// The collection a hunt schedules on each client.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HuntRequest {
    pub artifacts: Vec<String>,
    #[serde(default)]
    pub parameters: BTreeMap<String, String>,
    pub queries: Vec<TaskQuery>,
    pub timeout: u64,
    #[serde(default)]
    pub max_rows: u64,
}

impl Hunt {
    /// Whether the hunt schedules clients now.
    pub fn accepting(&self, now_us: i64) -> bool {
        self.state == "RUNNING" && now_us < self.expires && !self.stats.stopped
    }
}

/// Settings namespace of an org's pending tasks.
pub fn tasks_ns(org: &str) -> String {
    format!("tasks/{org}")
}

/// Settings namespace of an org's flows.
pub fn flows_ns(org: &str) -> String {
    format!("flows/{org}")
}

/// Settings namespace of an org's hunts.
pub fn hunts_ns(org: &str) -> String {
    format!("hunts/{org}")
}

/// Settings namespace of the clients taking part in a hunt (client -> flow id).
pub fn hunt_clients_ns(org: &str, hunt_id: &str) -> String {
    format!("hunt_clients/{org}/{hunt_id}")
}

/// Key of a client's task or flow.
pub fn task_key(client: &str, flow_id: &str) -> String {
    format!("{client}/{flow_id}")
}

/// Stream of a flow's result rows of one source.
pub fn result_stream(org: &str, client: &str, flow_id: &str, source: &str) -> String {
    format!("{org}\u{1f}flow\u{1f}{client}\u{1f}{flow_id}\u{1f}{source}")
}

/// Stream of a flow's log lines.
pub fn log_stream(org: &str, client: &str, flow_id: &str) -> String {
    format!("{org}\u{1f}flow\u{1f}{client}\u{1f}{flow_id}\u{1f}@logs")
}

/// Tasks waiting for a client, read from the store that holds them (the master's).
pub fn pending_tasks(store: &Store, org: &str, client: &str) -> store::Result<Vec<Task>> {
    let prefix = format!("{client}/");
    Ok(store
        .settings_with_prefix(&tasks_ns(org), &prefix)?
        .into_iter()
        .filter_map(|(key, json)| match serde_json::from_str(&json) {
            Ok(t) => Some(t),
            Err(e) => {
                tracing::error!(org, key, error = %e, "unreadable task; skipped");
                None
            }
        })
        .collect())
}

/// Every hunt of every org, as stored.
pub fn stored_hunts(store: &Store) -> store::Result<Vec<(String, Hunt)>> {
    let mut out = Vec::new();
    for org in store.namespaces_with_prefix("hunts/")? {
        for (_, json) in store.settings(&hunts_ns(&org))? {
            if let Ok(h) = serde_json::from_str::<Hunt>(&json) {
                out.push((org.clone(), h));
            }
        }
    }
    Ok(out)
}

/// A node asks the master for a connecting client's pending tasks.
pub struct TasksGet;

impl Exchange for TasksGet {
    const SUBJECT: &'static str = "talonctl.tasks.get";
    const TIMEOUT: Duration = Duration::from_secs(2);
    type Question = ClientRef;
    type Answer = Vec<Task>;
}

/// A node asks the master for every hunt (a dispatcher starting up).
pub struct HuntsGet;

impl Exchange for HuntsGet {
    const SUBJECT: &'static str = "talonctl.hunts.get";
    const TIMEOUT: Duration = Duration::from_secs(5);
    type Question = ();
    type Answer = Vec<(String, Hunt)>;
}

fn base32(bytes: &[u8]) -> String {
    data_encoding::BASE32_NOPAD.encode(bytes)
}

/// A new flow id: `F.` and 13 base32 digits of a random number, as Velociraptor's.
pub fn new_flow_id() -> String {
    format!("F.{}", base32(&rand::random::<[u8; 8]>()))
}

/// A new hunt id: `H.` and 13 base32 digits.
pub fn new_hunt_id() -> String {
    format!("H.{}", base32(&rand::random::<[u8; 8]>()))
}

/// The flow of a client in a hunt: one id per (hunt, client), so a client offered a hunt
/// twice is scheduled once. Ends in `.H`, as Velociraptor's hunt flows do.
pub fn hunt_flow_id(hunt_id: &str, client: &str) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(format!("{hunt_id}/{client}").as_bytes());
    format!("F.{}.H", base32(&digest[..8]))
}

/// Whether a flow id has the shape this server makes (`F.` + base32, optionally `.H`).
pub fn valid_flow_id(id: &str) -> bool {
    let Some(rest) = id.strip_prefix("F.") else {
        return false;
    };
    let body = rest.strip_suffix(".H").unwrap_or(rest);
    !body.is_empty()
        && body.len() <= 32
        && body
            .bytes()
            .all(|c| c.is_ascii_uppercase() || (b'2'..=b'7').contains(&c))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_have_velociraptor_shapes() {
        let f = new_flow_id();
        assert!(valid_flow_id(&f), "{f}");
        assert_eq!(f.len(), 15);
        let h = hunt_flow_id("H.ABC", "C.0123456789abcdef");
        assert!(h.ends_with(".H") && valid_flow_id(&h), "{h}");
        assert_eq!(h, hunt_flow_id("H.ABC", "C.0123456789abcdef"));
        assert_ne!(h, hunt_flow_id("H.ABD", "C.0123456789abcdef"));
        assert!(!valid_flow_id("F.abc"));
        assert!(!valid_flow_id("F."));
        assert!(!valid_flow_id("F.A/../B"));
        assert!(new_hunt_id().starts_with("H."));
    }

    #[test]
    fn conditions_combine_and_exclusions_win() {
        let labels = |l: &[&str]| l.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let c = Condition {
            labels: labels(&["web", "db"]),
            excluded_labels: labels(&["prod"]),
            os: "linux".into(),
        };
        assert!(c.matches(&labels(&["web"]), "linux"));
        assert!(
            !c.matches(&labels(&["web"]), "windows"),
            "OS and labels combine"
        );
        assert!(
            !c.matches(&labels(&["web", "prod"]), "linux"),
            "exclusion wins"
        );
        assert!(!c.matches(&labels(&["mail"]), "linux"));
        let any = Condition::default();
        assert!(any.matches(&[], "macos"));
        let mac = Condition {
            os: "darwin".into(),
            ..Condition::default()
        };
        assert!(mac.matches(&[], "macos"));
    }
}
