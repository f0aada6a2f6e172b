//! Hunts in the manager: creation, start, pause, stop, expiry, and the offers of every
//! node's dispatcher turned into flows, one per (hunt, client), within the client limit.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde_json::json;
use talon_artifacts::ArtifactKind;
use talon_shared::collections::*;
use talon_shared::control::ControlRow;
use talon_shared::queue::now_us;
use talon_shared::store::{SettingWrite, StoredRow};

use super::{audit, compile, json_of, new_flow, Error, Manager, Result};

/// What a new hunt collects and from whom.
#[derive(Debug, Clone, Default)]
pub struct HuntSpec {
    pub artifacts: Vec<String>,
    pub params: BTreeMap<String, String>,
    pub description: String,
    /// Microseconds; 0: seven days from now.
    pub expires: i64,
    pub client_limit: u64,
    pub condition: Condition,
    pub paused: bool,
    pub timeout: u64,
    pub max_rows: u64,
}

/// A change of a hunt.
#[derive(Debug, Clone)]
pub enum HuntAction {
    Start,
    Pause,
    Stop,
    /// A new expiry, microseconds.
    Expires(i64),
    Description(String),
}

impl Manager {
    pub(super) async fn create_hunt(
        &mut self,
        org: &str,
        spec: HuntSpec,
        creator: &str,
    ) -> Result<Hunt> {
        let queries = compile(
            &self.repo,
            &spec.artifacts,
            &spec.params,
            ArtifactKind::Client,
        )?;
        let now = now_us();
        let expires = if spec.expires == 0 {
            now + DEFAULT_HUNT_EXPIRY_SECS * 1_000_000
        } else {
            spec.expires
        };
        if expires <= now {
            return Err(Error::Invalid(format!(
                "the hunt would expire in the past ({})",
                talon_core::timefmt::rfc3339(expires)
            )));
        }
        for os in [&spec.condition.os] {
            if !os.is_empty() && !["windows", "linux", "darwin"].contains(&normal_os(os).as_str()) {
                return Err(Error::Invalid(format!(
                    "unknown os {os:?}: expected windows, linux or darwin"
                )));
            }
        }
        let mut condition = spec.condition.clone();
        condition.os = if condition.os.is_empty() {
            String::new()
        } else {
            normal_os(&condition.os)
        };
        let hunt = Hunt {
            hunt_id: new_hunt_id(),
            version: 1,
            create_time: now,
            creator: creator.to_string(),
            start_time: if spec.paused { 0 } else { now },
            expires,
            hunt_description: spec.description.clone(),
            state: if spec.paused { "PAUSED" } else { "RUNNING" }.into(),
            stop_reason: String::new(),
            client_limit: spec.client_limit,
            condition,
            artifacts: spec.artifacts.clone(),
            start_request: HuntRequest {
                artifacts: spec.artifacts.clone(),
                parameters: spec.params.clone(),
                queries,
                timeout: if spec.timeout == 0 {
                    DEFAULT_FLOW_TIMEOUT_SECS
                } else {
                    spec.timeout
                },
                max_rows: spec.max_rows,
            },
            stats: HuntStats::default(),
        };
        self.store
            .set_setting(&hunts_ns(org), &hunt.hunt_id, Some(&json_of(&hunt)))
            .await?;
        self.hunts
            .insert((org.to_string(), hunt.hunt_id.clone()), hunt.clone());
        let creation = json!({"Timestamp": now / 1_000_000, "Hunt": hunt});
        if let serde_json::Value::Object(m) = creation {
            if let Err(e) = self
                .qm
                .push(org, HUNT_CREATION_QUEUE, vec![m], "server", "")
                .await
            {
                tracing::error!(org, error = %e, "cannot record the hunt's creation");
            }
        }
        self.announce(org, &hunt, true).await;
        audit(
            &self.qm,
            org,
            "CreateHunt",
            creator,
            json!({"hunt_id": hunt.hunt_id, "artifacts": hunt.artifacts}),
        )
        .await;
        Ok(hunt)
    }

    /// The hunt's new version to every dispatcher (and offered again when asked).
    async fn announce(&self, org: &str, hunt: &Hunt, trigger: bool) {
        // Dispatchers need the state and the condition, not the compiled queries.
        let mut lean = hunt.clone();
        lean.start_request.queries.clear();
        let row = HuntUpdate {
            hunt_id: hunt.hunt_id.clone(),
            version: hunt.version,
            hunt: lean,
            trigger_participation: trigger,
        };
        if let Err(e) = talon_shared::control::push(&self.qm, org, &row).await {
            tracing::error!(org, hunt_id = %hunt.hunt_id, error = %e, "cannot announce a hunt");
        }
    }

    /// At start: every running hunt is offered again (offers made while the master was
    /// down were lost; clients already taking part are not scheduled twice).
    pub(super) async fn announce_running_hunts(&self) {
        let now = now_us();
        for ((org, _), h) in &self.hunts {
            if h.accepting(now) {
                self.announce(org, h, true).await;
            }
        }
    }

    pub(super) async fn modify_hunt(
        &mut self,
        org: &str,
        hunt_id: &str,
        action: HuntAction,
        user: &str,
    ) -> Result<Hunt> {
        let key = (org.to_string(), hunt_id.to_string());
        let mut h = self
            .hunts
            .get(&key)
            .cloned()
            .ok_or_else(|| Error::NotFound(format!("no hunt {hunt_id}")))?;
        let now = now_us();
        let mut trigger = false;
        match &action {
            HuntAction::Start => {
                if h.state == "STOPPED" {
                    return Err(Error::Invalid(format!(
                        "hunt {hunt_id} is stopped ({}); a stopped hunt cannot start again",
                        h.stop_reason
                    )));
                }
                if now >= h.expires {
                    return Err(Error::Invalid(format!("hunt {hunt_id} has expired")));
                }
                h.state = "RUNNING".into();
                if h.start_time == 0 {
                    h.start_time = now;
                }
                trigger = true;
            }
            HuntAction::Pause => {
                if h.state != "RUNNING" {
                    return Err(Error::Invalid(format!(
                        "hunt {hunt_id} is {}, not RUNNING",
                        h.state
                    )));
                }
                h.state = "PAUSED".into();
            }
            HuntAction::Stop => {
                h.state = "STOPPED".into();
                h.stats.stopped = true;
                h.stop_reason = format!("stopped by {user}");
            }
            HuntAction::Expires(t) => {
                if *t <= now {
                    return Err(Error::Invalid("the new expiry is in the past".into()));
                }
                h.expires = *t;
                trigger = h.state == "RUNNING";
            }
            HuntAction::Description(d) => h.hunt_description = d.clone(),
        }
        h.version += 1;
        self.save_hunt(org, &h).await?;
        let modification = json!({
            "HuntId": hunt_id,
            "State": h.state,
            "Mutation": {"hunt_id": hunt_id, "action": format!("{action:?}"), "user": user, "version": h.version},
        });
        if let serde_json::Value::Object(m) = modification {
            let _ = self
                .qm
                .push(org, HUNT_MODIFICATION_QUEUE, vec![m], "server", "")
                .await;
        }
        self.announce(org, &h, trigger).await;
        audit(
            &self.qm,
            org,
            "ModifyHunt",
            user,
            json!({"hunt_id": hunt_id, "action": format!("{action:?}")}),
        )
        .await;
        Ok(h)
    }

    async fn save_hunt(&mut self, org: &str, h: &Hunt) -> Result<()> {
        self.store
            .set_setting(&hunts_ns(org), &h.hunt_id, Some(&json_of(h)))
            .await?;
        self.hunts
            .insert((org.to_string(), h.hunt_id.clone()), h.clone());
        Ok(())
    }

    /// Stops every running hunt past its expiry.
    pub(super) async fn expire_hunts(&mut self) {
        let now = now_us();
        let due: Vec<(String, Hunt)> = self
            .hunts
            .iter()
            .filter(|(_, h)| h.state == "RUNNING" && now >= h.expires)
            .map(|((o, _), h)| (o.clone(), h.clone()))
            .collect();
        for (org, mut h) in due {
            h.state = "STOPPED".into();
            h.stats.stopped = true;
            h.stop_reason = "expired".into();
            h.version += 1;
            match self.save_hunt(&org, &h).await {
                Ok(()) => {
                    tracing::info!(org, hunt_id = %h.hunt_id, "hunt expired");
                    self.announce(&org, &h, false).await;
                }
                Err(e) => tracing::error!(org, error = %e, "cannot stop an expired hunt"),
            }
        }
    }

    /// Offers from the dispatchers: each client matching a hunt that takes clients gets
    /// its one flow of that hunt, until the client limit.
    pub(super) async fn apply_offers(&mut self, batch: Vec<(String, StoredRow)>) -> Result<()> {
        let now = now_us();
        let mut by_org: HashMap<String, Vec<Participation>> = HashMap::new();
        for (org, row) in batch {
            match Participation::from_json(&row.json) {
                Ok(p) => by_org.entry(org).or_default().push(p),
                Err(e) => tracing::warn!(org, error = %e, "unreadable hunt offer"),
            }
        }
        for (org, offers) in by_org {
            let mut writes: Vec<SettingWrite> = Vec::new();
            let mut tasks = Vec::new();
            let mut changed: HashSet<String> = HashSet::new();
            let mut limited: HashSet<String> = HashSet::new();
            let mut taken: HashSet<(String, String)> = HashSet::new();
            for p in offers {
                if !talon_core::ids::valid_client_id(&p.client_id) {
                    continue;
                }
                let key = (org.clone(), p.hunt_id.clone());
                let Some(h) = self.hunts.get(&key) else {
                    continue;
                };
                if !h.accepting(now) {
                    continue;
                }
                if !taken.insert((p.hunt_id.clone(), p.client_id.clone()))
                    || self
                        .store
                        .setting(&hunt_clients_ns(&org, &p.hunt_id), &p.client_id)?
                        .is_some()
                {
                    continue;
                }
                // The node's word is checked against the master's record of the client
                // when there is one (a first contact may not have reached it yet).
                let (labels, os) = match self.clients.get(&org, &p.client_id)? {
                    Some(r) => (r.labels, r.os),
                    None => (p.labels.clone(), p.os.clone()),
                };
                if !h.condition.matches(&labels, &os) {
                    continue;
                }
                let h = self.hunts.get_mut(&key).expect("checked");
                if h.client_limit > 0 && h.stats.total_clients_scheduled >= h.client_limit {
                    h.stats.stopped = true;
                    h.state = "STOPPED".into();
                    h.stop_reason = format!("client limit {} reached", h.client_limit);
                    h.version += 1;
                    limited.insert(p.hunt_id.clone());
                    changed.insert(p.hunt_id.clone());
                    continue;
                }
                let flow_id = hunt_flow_id(&h.hunt_id, &p.client_id);
                let (flow, task) = new_flow(
                    flow_id.clone(),
                    &p.client_id,
                    &h.creator,
                    &h.start_request,
                    &h.hunt_id,
                );
                h.stats.total_clients_scheduled += 1;
                if h.client_limit > 0 && h.stats.total_clients_scheduled >= h.client_limit {
                    h.stats.stopped = true;
                    h.state = "STOPPED".into();
                    h.stop_reason = format!("client limit {} reached", h.client_limit);
                    h.version += 1;
                    limited.insert(p.hunt_id.clone());
                }
                changed.insert(p.hunt_id.clone());
                writes.push((
                    flows_ns(&org),
                    task_key(&p.client_id, &flow_id),
                    Some(json_of(&flow)),
                ));
                writes.push((tasks_ns(&org), task.key(&p.client_id), Some(json_of(&task))));
                writes.push((
                    hunt_clients_ns(&org, &p.hunt_id),
                    p.client_id.clone(),
                    Some(flow_id),
                ));
                tasks.push((p.client_id.clone(), task));
            }
            for id in &changed {
                let h = &self.hunts[&(org.clone(), id.clone())];
                writes.push((hunts_ns(&org), id.clone(), Some(json_of(h))));
            }
            if writes.is_empty() {
                continue;
            }
            self.store.transaction(Vec::new(), writes).await?;
            self.deliver(&org, tasks).await;
            for id in limited {
                let h = self.hunts[&(org.clone(), id.clone())].clone();
                tracing::info!(org, hunt_id = %id, reason = %h.stop_reason, "hunt stopped");
                self.announce(&org, &h, false).await;
            }
        }
        Ok(())
    }
}
