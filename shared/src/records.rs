//! Client records (hostname, OS, labels, first and last seen, last IP) and the client
//! monitoring table (CLIENT_EVENT artifacts with parameters, for all clients or per label,
//! versioned), both kept in the store's settings.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::store::{self, Store};
use talon_artifacts::compile::compile;
use talon_artifacts::{ArtifactKind, Repository};

/// What the server knows of a client.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ClientRecord {
    pub client_id: String,
    pub hostname: String,
    pub os: String,
    pub labels: Vec<String>,
    /// Seconds since the epoch.
    pub first_seen_at: i64,
    /// Microseconds since the epoch.
    pub last_seen_at: i64,
    pub last_ip: String,
    pub version: String,
    pub last_event_table_version: u64,
}

fn clients_ns(org: &str) -> String {
    format!("clients/{org}")
}

fn table_ns(org: &str) -> String {
    format!("client_monitoring/{org}")
}

const VERSION_NS: &str = "client_monitoring_version";

/// Client records and client monitoring tables over the store.
#[derive(Clone)]
pub struct Clients {
    store: Store,
    /// Set by every record change; the master's snapshotter takes it.
    dirty: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

/// One entry of a client monitoring table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TableEntry {
    pub artifact: String,
    /// Empty: every client; else clients with this label.
    pub label: String,
    pub params: BTreeMap<String, String>,
}

impl Clients {
    /// Records and tables in a store.
    pub fn new(store: Store) -> Self {
        Self {
            store,
            dirty: Default::default(),
        }
    }

    /// Whether records changed since the last call (and clears the mark).
    pub fn take_dirty(&self) -> bool {
        self.dirty.swap(false, std::sync::atomic::Ordering::AcqRel)
    }

    /// Orgs with client records.
    pub fn orgs(&self) -> store::Result<Vec<String>> {
        let mut orgs: Vec<String> = self
            .store
            .settings(VERSION_NS)?
            .into_iter()
            .map(|(o, _)| o)
            .collect();
        for o in self.store.namespaces_with_prefix("clients/")? {
            if !orgs.contains(&o) {
                orgs.push(o);
            }
        }
        Ok(orgs)
    }

    /// Moves a client's last seen time forward (never back); false when unknown or older.
    pub async fn seen(&self, org: &str, client_id: &str, at_us: i64) -> store::Result<bool> {
        match self.get(org, client_id)? {
            Some(mut r) if r.last_seen_at < at_us => {
                r.last_seen_at = at_us;
                self.put(org, &r).await?;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// A client's record.
    pub fn get(&self, org: &str, client_id: &str) -> store::Result<Option<ClientRecord>> {
        Ok(self
            .store
            .setting(&clients_ns(org), client_id)?
            .and_then(|v| serde_json::from_str(&v).ok()))
    }

    /// Every client of an org, by id.
    pub fn list(&self, org: &str) -> store::Result<Vec<ClientRecord>> {
        Ok(self
            .store
            .settings(&clients_ns(org))?
            .into_iter()
            .filter_map(|(_, v)| serde_json::from_str(&v).ok())
            .collect())
    }

    /// Clients matching a search: empty or `all`, `label:X`, `host:Y` (substring, any case),
    /// or a client id / hostname substring.
    pub fn search(&self, org: &str, search: &str) -> store::Result<Vec<ClientRecord>> {
        let search = search.trim();
        let lower = search.to_lowercase();
        Ok(self
            .list(org)?
            .into_iter()
            .filter(|c| match search.split_once(':') {
                _ if search.is_empty() || search == "all" => true,
                Some(("label", l)) => c.labels.iter().any(|x| x == l),
                Some(("host", h)) => c.hostname.to_lowercase().contains(&h.to_lowercase()),
                _ => c.client_id == search || c.hostname.to_lowercase().contains(&lower),
            })
            .collect())
    }

    /// Stores a record.
    pub async fn put(&self, org: &str, r: &ClientRecord) -> store::Result<()> {
        self.dirty.store(true, std::sync::atomic::Ordering::Release);
        let json = serde_json::to_string(r).expect("record serialises");
        self.store
            .set_setting(&clients_ns(org), &r.client_id, Some(&json))
            .await
            .map(|_| ())
    }

    /// Forgets a record; false when there was none.
    pub async fn delete(&self, org: &str, client_id: &str) -> store::Result<bool> {
        if self.get(org, client_id)?.is_none() {
            return Ok(false);
        }
        self.dirty.store(true, std::sync::atomic::Ordering::Release);
        self.store
            .set_setting(&clients_ns(org), client_id, None)
            .await
    }

    /// The table's version for an org (bumped on every change).
    pub fn version(&self, org: &str) -> store::Result<u64> {
        Ok(self
            .store
            .setting(VERSION_NS, org)?
            .and_then(|v| v.parse().ok())
            .unwrap_or(0))
    }

    /// Every entry of an org's client monitoring table.
    pub fn table(&self, org: &str) -> store::Result<Vec<TableEntry>> {
        Ok(self
            .store
            .settings(&table_ns(org))?
            .into_iter()
            .filter_map(|(k, v)| {
                let (label, artifact) = k.split_once('/')?;
                Some(TableEntry {
                    artifact: artifact.to_string(),
                    label: label.to_string(),
                    params: serde_json::from_str(&v).unwrap_or_default(),
                })
            })
            .collect())
    }

    /// Adds or changes an entry (validated: a CLIENT_EVENT artifact, known parameters).
    pub async fn add(&self, repo: &Repository, org: &str, e: TableEntry) -> Result<u64, String> {
        let a = repo
            .get(&e.artifact)
            .ok_or_else(|| format!("unknown artifact {}", e.artifact))?;
        if a.kind != ArtifactKind::ClientEvent {
            return Err(format!(
                "artifact {} is {}; the client monitoring table takes CLIENT_EVENT artifacts",
                e.artifact, a.kind
            ));
        }
        let list: Vec<(String, String)> = e.params.clone().into_iter().collect();
        compile(repo, &e.artifact, &list).map_err(|err| err.to_string())?;
        let key = format!("{}/{}", e.label, e.artifact);
        let value = serde_json::to_string(&e.params).expect("params serialise");
        self.store
            .set_setting(&table_ns(org), &key, Some(&value))
            .await
            .map_err(|err| err.to_string())?;
        self.bump(org).await.map_err(|err| err.to_string())
    }

    /// Removes an entry; the new version, or None when it was not there.
    pub async fn remove(
        &self,
        org: &str,
        artifact: &str,
        label: &str,
    ) -> store::Result<Option<u64>> {
        let key = format!("{label}/{artifact}");
        if !self.store.set_setting(&table_ns(org), &key, None).await? {
            return Ok(None);
        }
        self.bump(org).await.map(Some)
    }

    /// Orgs that have a client monitoring table, with its version.
    pub fn table_versions(&self) -> store::Result<Vec<(String, u64)>> {
        Ok(self
            .store
            .settings(VERSION_NS)?
            .into_iter()
            .map(|(org, v)| (org, v.parse().unwrap_or(0)))
            .collect())
    }

    /// An org's table as stored: `label/artifact` -> parameters JSON.
    pub fn raw_table(&self, org: &str) -> store::Result<Vec<(String, String)>> {
        self.store.settings(&table_ns(org))
    }

    /// Replaces an org's table and version with the master's (on a minion's cache).
    pub async fn replace_table(
        &self,
        org: &str,
        version: u64,
        entries: &[(String, String)],
    ) -> store::Result<()> {
        for (k, _) in self.raw_table(org)? {
            if !entries.iter().any(|(key, _)| *key == k) {
                self.store.set_setting(&table_ns(org), &k, None).await?;
            }
        }
        for (k, v) in entries {
            self.store.set_setting(&table_ns(org), k, Some(v)).await?;
        }
        self.store
            .set_setting(VERSION_NS, org, Some(&version.to_string()))
            .await?;
        Ok(())
    }

    async fn bump(&self, org: &str) -> store::Result<u64> {
        let v = self.version(org)? + 1;
        self.store
            .set_setting(VERSION_NS, org, Some(&v.to_string()))
            .await?;
        Ok(v)
    }

    /// The queries a client with these labels runs, and the table version.
    pub fn event_table(
        &self,
        repo: &Repository,
        org: &str,
        labels: &[String],
    ) -> store::Result<(u64, Vec<talon_proto::client::EventQuery>)> {
        let version = self.version(org)?;
        let mut queries = Vec::new();
        for e in self.table(org)? {
            if !e.label.is_empty() && !labels.contains(&e.label) {
                continue;
            }
            let list: Vec<(String, String)> = e.params.into_iter().collect();
            match compile(repo, &e.artifact, &list) {
                Ok(sources) => {
                    for s in sources {
                        queries.push(talon_proto::client::EventQuery {
                            artifact: e.artifact.clone(),
                            queue: s.queue,
                            precondition: s.precondition.unwrap_or_default(),
                            query: s.query,
                            env: s.env.into_iter().map(|(k, v)| (k, v.to_text())).collect(),
                        });
                    }
                }
                Err(err) => {
                    tracing::error!(org, artifact = %e.artifact, error = %err, "client monitoring artifact does not compile")
                }
            }
        }
        Ok((version, queries))
    }
}

impl ClientRecord {
    /// The record in the shape of VQL's `client_info()` (proto field names).
    pub fn to_row(&self) -> talon_vql::Row {
        use talon_vql::Value;
        let v = serde_json::json!({
            "client_id": self.client_id,
            "agent_information": {"version": self.version, "name": "talon-client"},
            "os_info": {"system": self.os, "hostname": self.hostname, "fqdn": self.hostname, "release": "", "machine": "", "mac_addresses": []},
            "first_seen_at": self.first_seen_at,
            "last_seen_at": self.last_seen_at,
            "last_ip": self.last_ip,
            "labels": self.labels,
            "last_hunt_timestamp": 0,
            "last_event_table_version": self.last_event_table_version,
        });
        match Value::from_json(&v) {
            Value::Dict(d) => d,
            _ => talon_vql::Row::new(),
        }
    }
}
