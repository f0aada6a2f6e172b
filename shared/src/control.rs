//! The cluster's own messages, typed. Rows of the INTERNAL queues the nodes talk over
//! (each a [`ControlRow`] naming its queue, with Velociraptor's PascalCase column names
//! and the node it came from), and the request/reply [`Exchange`]s that are not queues
//! (the master's shared state, snapshot pages, client lookups, registrations). Nothing
//! else in the engine builds or reads a control message by hand.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::bus::Exchange;
use crate::queue::{QueueManager, Result as QueueResult};
use crate::records::ClientRecord;

/// A row of one INTERNAL (or SERVER_EVENT) queue the nodes use among themselves.
pub trait ControlRow: Serialize + DeserializeOwned {
    /// The queue the row belongs to.
    const QUEUE: &'static str;

    /// The row as a JSON object, ready to push.
    fn to_row(&self) -> Map<String, Value> {
        match serde_json::to_value(self) {
            Ok(Value::Object(m)) => m,
            _ => unreachable!("control rows are structs"),
        }
    }

    /// Reads a row as stored (its `_ts` and `_Source` are ignored).
    fn from_json(json: &str) -> serde_json::Result<Self> {
        serde_json::from_str(json)
    }
}

/// Pushes a control row to its queue in `org` as the server.
pub async fn push<R: ControlRow>(qm: &QueueManager, org: &str, row: &R) -> QueueResult<u64> {
    qm.push(org, R::QUEUE, vec![row.to_row()], "server", "")
        .await
}

/// A label added to or removed from a client (`Server.Internal.Label`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct LabelEdit {
    pub client_id: String,
    /// `set` or `remove`.
    pub operation: String,
    pub label: String,
    /// The node that made the edit (others apply it to their caches and sessions).
    #[serde(default)]
    pub node: String,
}

impl ControlRow for LabelEdit {
    const QUEUE: &'static str = "Server.Internal.Label";
}

/// A second connection refused for a connected client id (`Server.Internal.ClientConflict`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ClientConflict {
    pub client_id: String,
    pub remote_addr: String,
    pub node: String,
}

impl ControlRow for ClientConflict {
    const QUEUE: &'static str = "Server.Internal.ClientConflict";
}

/// A client's first contact (`Server.Internal.Enrollment`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Enrollment {
    pub client_id: String,
    pub hostname: String,
    pub remote_addr: String,
}

impl ControlRow for Enrollment {
    const QUEUE: &'static str = "Server.Internal.Enrollment";
}

/// A client's hello, with its whole record (`Server.Internal.ClientInfo`); the master
/// merges records other nodes send.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ClientInfo {
    pub client_id: String,
    pub hostname: String,
    #[serde(rename = "OS")]
    pub os: String,
    pub labels: Vec<String>,
    /// Seconds since the epoch.
    pub last_seen_at: i64,
    pub last_ip: String,
    pub node: String,
    pub record: ClientRecord,
}

impl ControlRow for ClientInfo {
    const QUEUE: &'static str = "Server.Internal.ClientInfo";
}

/// A connected client's last activity, sent by its node (`Server.Internal.ClientPing`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ClientPing {
    pub client_id: String,
    /// Microseconds since the epoch.
    pub last_seen_at: i64,
    pub node: String,
}

impl ControlRow for ClientPing {
    const QUEUE: &'static str = "Server.Internal.ClientPing";
}

/// The master's client table changed; nodes fetch its pages
/// (`Server.Internal.ClientInfoSnapshot`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct SnapshotAnnouncement {
    pub orgs: Vec<String>,
    pub clients: usize,
    pub node: String,
}

impl ControlRow for SnapshotAnnouncement {
    const QUEUE: &'static str = "Server.Internal.ClientInfoSnapshot";
}

/// One node's report (`Server.Internal.FrontendMetrics`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct NodeReport {
    pub node: String,
    pub role: Role,
    /// Seconds since the epoch.
    pub timestamp: i64,
    pub cpu_percent: f64,
    pub rss_bytes: u64,
    pub connected_clients: BTreeMap<String, u64>,
    pub bus_connected: bool,
    /// Master only: durable messages not yet in the store.
    #[serde(default)]
    pub persister_lag: Option<u64>,
}

impl ControlRow for NodeReport {
    const QUEUE: &'static str = "Server.Internal.FrontendMetrics";
}

/// What a node is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Master,
    Minion,
}

impl Role {
    /// The role's name, as reports and `talon cluster status` show it.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Master => "master",
            Role::Minion => "minion",
        }
    }
}

/// Per-org health totals the master writes every report period (`Server.Monitor.Health`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Health {
    pub nodes: Vec<String>,
    pub nodes_alive: usize,
    pub connected_clients: u64,
}

impl ControlRow for Health {
    const QUEUE: &'static str = "Server.Monitor.Health";
}

/// The queues the master watches (`Server.Internal.MasterRegistrations`, and the answer
/// of [`RegistrationsGet`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Registrations {
    pub node: String,
    /// `org/queue`, sorted.
    pub queues: Vec<String>,
}

impl ControlRow for Registrations {
    const QUEUE: &'static str = "Server.Internal.MasterRegistrations";
}

/// A presence question to every node (`Server.Internal.Ping`): is `client_id` connected
/// to you (or, with `list`, which clients of the org are)? Answers go to
/// `Server.Internal.Pong` carrying the same `NotifyTarget`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Ping {
    #[serde(default)]
    pub client_id: String,
    pub notify_target: String,
    #[serde(default)]
    pub list: bool,
    /// The asking node.
    pub node: String,
}

impl ControlRow for Ping {
    const QUEUE: &'static str = "Server.Internal.Ping";
}

/// A node's answer to a [`Ping`] (`Server.Internal.Pong`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Pong {
    #[serde(default)]
    pub client_id: String,
    pub notify_target: String,
    pub connected: bool,
    /// The answering node.
    pub node: String,
    /// With a listing ping: the org's clients connected to the answering node.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub clients: Vec<String>,
}

impl ControlRow for Pong {
    const QUEUE: &'static str = "Server.Internal.Pong";
}

/// A user artifact changed (`Server.Internal.ArtifactModification`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ArtifactModification {
    pub artifact: String,
    /// `add`, `update` or `delete`.
    pub op: String,
    pub principal: String,
}

impl ControlRow for ArtifactModification {
    const QUEUE: &'static str = "Server.Internal.ArtifactModification";
}

/// One org's client monitoring table as stored.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct OrgTable {
    pub org: String,
    pub version: u64,
    /// `label/artifact` -> parameters JSON.
    pub entries: Vec<(String, String)>,
}

/// What the master shares with every node: user artifacts and client monitoring tables.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ClusterState {
    /// User artifacts, (name, YAML).
    pub artifacts: Vec<(String, String)>,
    pub tables: Vec<OrgTable>,
}

/// Where the master publishes the [`ClusterState`] after every change.
pub const STATE_SUBJECT: &str = "talonctl.state";

/// A node asks the master for the [`ClusterState`]; None when the master cannot read
/// it now (the node keeps what it has and asks again).
pub struct StateGet;

impl Exchange for StateGet {
    const SUBJECT: &'static str = "talonctl.state.get";
    const TIMEOUT: Duration = Duration::from_secs(5);
    type Question = ();
    type Answer = Option<ClusterState>;
}

/// A page of the master's client records: an empty `org` asks for the list of orgs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PageRequest {
    pub org: String,
    pub offset: usize,
}

/// One page of client records (or, for an empty org, the orgs).
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct Page {
    pub orgs: Vec<String>,
    pub records: Vec<ClientRecord>,
    pub more: bool,
}

/// A node fetches the master's client snapshot page by page.
pub struct SnapshotPage;

impl Exchange for SnapshotPage {
    const SUBJECT: &'static str = "talonctl.clients.snapshot";
    const TIMEOUT: Duration = Duration::from_secs(5);
    type Question = PageRequest;
    type Answer = Page;
}

/// One client of an org.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClientRef {
    pub org: String,
    pub client_id: String,
}

/// A node asks the master for a client's record (a minion's cache may not know it).
pub struct ClientLookup;

impl Exchange for ClientLookup {
    const SUBJECT: &'static str = "talonctl.client.get";
    const TIMEOUT: Duration = Duration::from_secs(2);
    type Question = ClientRef;
    type Answer = Option<ClientRecord>;
}

/// A node asks the master which queues it watches.
pub struct RegistrationsGet;

impl Exchange for RegistrationsGet {
    const SUBJECT: &'static str = "talonctl.registrations";
    const TIMEOUT: Duration = Duration::from_secs(2);
    type Question = ();
    type Answer = Registrations;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_keep_velociraptor_column_names() {
        let row = ClientInfo {
            client_id: "C.0123456789abcdef".into(),
            hostname: "h".into(),
            os: "linux".into(),
            labels: vec!["a".into()],
            last_seen_at: 1,
            last_ip: "127.0.0.1:1".into(),
            node: "master".into(),
            record: ClientRecord::default(),
        }
        .to_row();
        let keys: Vec<&str> = row.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "ClientId",
                "Hostname",
                "OS",
                "Labels",
                "LastSeenAt",
                "LastIp",
                "Node",
                "Record"
            ]
        );
        let report = serde_json::to_value(NodeReport {
            node: "m".into(),
            role: Role::Master,
            timestamp: 0,
            cpu_percent: 0.0,
            rss_bytes: 0,
            connected_clients: BTreeMap::new(),
            bus_connected: true,
            persister_lag: None,
        })
        .unwrap();
        assert_eq!(report["Role"], "master");
    }

    #[test]
    fn a_stored_row_reads_back_with_its_stamps_ignored() {
        let pong = Pong::from_json(
            r#"{"ClientId":"C.1","NotifyTarget":"n/1","Connected":true,"Node":"a","_ts":1,"_Source":"server"}"#,
        )
        .unwrap();
        assert!(pong.connected);
        assert!(pong.clients.is_empty());
        assert!(Pong::from_json(r#"{"Connected":"yes"}"#).is_err());
    }
}
