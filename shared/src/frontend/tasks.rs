//! Collections and hunts on the node that holds a client: the master's tasks are sent to
//! the client at once when it is connected here (`Server.Internal.ClientTasks`), and the
//! tasks still pending when it connects (read from the master's store, or asked of the
//! master over the bus); and the hunt dispatcher, which keeps every hunt's newest version
//! (`Server.Internal.HuntUpdate`) and offers each running hunt to every matching client
//! connected here, when the hunt starts and when a client connects later
//! (`System.Hunt.Participation`). The master decides; a node only delivers and offers.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::collections::{
    self, ClientScheduled, ClientTasks, Hunt, HuntUpdate, HuntsGet, Participation, Task, TasksGet,
};
use crate::control::{ClientRef, ControlRow};
use crate::queue::now_us;

use super::{FrontendService, Outbox};

/// How often a node retries asking the master for a client's tasks or for the hunts.
const RETRY: Duration = Duration::from_secs(2);

/// The hunts a node's dispatcher knows, newest version of each.
#[derive(Default)]
pub(super) struct Dispatcher {
    hunts: HashMap<(String, String), Hunt>,
}

impl FrontendService {
    /// Makes this node read tasks and hunts from its own store (the master's) rather than
    /// ask the master over the bus.
    pub fn hold_collections_locally(&self) {
        self.inner.local_collections.store(true, Ordering::Relaxed);
    }

    /// Starts following tasks and hunt updates in every org, and loads the hunts (from
    /// the store here, or from the master, retrying until it answers).
    pub fn start_collections(&self) -> crate::queue::Result<()> {
        let mut tasks = self
            .inner
            .qm
            .watch_every_org(ClientTasks::QUEUE, "frontend-tasks")?;
        let mut updates = self
            .inner
            .qm
            .watch_every_org(HuntUpdate::QUEUE, "hunt-dispatcher")?;
        let (this, stop) = (self.clone(), self.inner.shutdown.clone());
        self.inner.shutdown.spawn("client-tasks", async move {
            loop {
                let (org, row) = tokio::select! {
                    _ = stop.cancelled() => break,
                    r = tasks.next() => match r { Some(r) => r, None => break },
                };
                let Ok(t) = ClientTasks::from_json(&row.json) else {
                    tracing::warn!(org, "unreadable client task row");
                    continue;
                };
                let tx = this.session_outbox(&org, &t.client_id);
                if let Some(tx) = tx {
                    for task in &t.tasks {
                        this.send_task(&org, &t.client_id, &tx, task).await;
                    }
                }
            }
        });
        let (this, stop) = (self.clone(), self.inner.shutdown.clone());
        self.inner.shutdown.spawn("hunt-dispatcher", async move {
            this.load_hunts(&stop).await;
            loop {
                let (org, row) = tokio::select! {
                    _ = stop.cancelled() => break,
                    r = updates.next() => match r { Some(r) => r, None => break },
                };
                match HuntUpdate::from_json(&row.json) {
                    Ok(u) => this.apply_hunt(&org, u.hunt, u.trigger_participation).await,
                    Err(e) => tracing::warn!(org, error = %e, "unreadable hunt update"),
                }
            }
        });
        Ok(())
    }

    /// Every hunt, from the store here or from the master.
    async fn load_hunts(&self, stop: &talon_core::Shutdown) {
        loop {
            let loaded = if self.inner.local_collections.load(Ordering::Relaxed) {
                collections::stored_hunts(&self.inner.store).map_err(|e| e.to_string())
            } else if let Some(bus) = &self.inner.bus {
                bus.ask::<HuntsGet>(&()).await.map_err(|e| e.to_string())
            } else {
                Ok(Vec::new())
            };
            match loaded {
                Ok(hunts) => {
                    let n = hunts.len();
                    for (org, h) in hunts {
                        self.apply_hunt(&org, h, true).await;
                    }
                    tracing::info!(hunts = n, "hunt dispatcher loaded the hunts");
                    return;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "hunt dispatcher cannot load the hunts yet; retrying")
                }
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(RETRY) => {}
            }
        }
    }

    /// Applies a hunt's version unless an equal or newer one is held; offers it to the
    /// connected clients it matches when asked to and it takes clients.
    async fn apply_hunt(&self, org: &str, hunt: Hunt, trigger: bool) {
        let key = (org.to_string(), hunt.hunt_id.clone());
        let hunt = {
            let mut d = self.inner.dispatcher.lock().expect("dispatcher");
            if d.hunts.get(&key).is_none_or(|h| h.version < hunt.version) {
                d.hunts.insert(key.clone(), hunt);
            }
            d.hunts[&key].clone()
        };
        if !(trigger && hunt.accepting(now_us())) {
            return;
        }
        let clients: Vec<(String, Vec<String>, String)> = {
            let sessions = self.inner.sessions.lock().expect("sessions");
            sessions
                .iter()
                .filter(|((o, _), s)| o == org && hunt.condition.matches(&s.labels, &s.os))
                .map(|((_, c), s)| (c.clone(), s.labels.clone(), s.os.clone()))
                .collect()
        };
        self.offer(org, &hunt.hunt_id, clients).await;
    }

    /// Offers every running hunt of the org that matches to a client that just connected.
    pub(super) async fn offer_hunts(&self, org: &str, client: &str, labels: &[String], os: &str) {
        let now = now_us();
        let hunts: Vec<String> = {
            let d = self.inner.dispatcher.lock().expect("dispatcher");
            d.hunts
                .iter()
                .filter(|((o, _), h)| o == org && h.accepting(now))
                .filter(|(_, h)| h.condition.matches(labels, os))
                .map(|((_, id), _)| id.clone())
                .collect()
        };
        for h in hunts {
            let who = (client.to_string(), labels.to_vec(), os.to_string());
            self.offer(org, &h, vec![who]).await;
        }
    }

    async fn offer(&self, org: &str, hunt_id: &str, clients: Vec<(String, Vec<String>, String)>) {
        if clients.is_empty() {
            return;
        }
        let timestamp = now_us() / 1_000_000;
        let rows = clients
            .iter()
            .map(|(c, labels, os)| {
                Participation {
                    hunt_id: hunt_id.to_string(),
                    client_id: c.clone(),
                    flow_id: collections::hunt_flow_id(hunt_id, c),
                    timestamp,
                    node: self.inner.node.clone(),
                    labels: labels.clone(),
                    os: os.clone(),
                }
                .to_row()
            })
            .collect();
        if let Err(e) = self
            .inner
            .qm
            .push(org, Participation::QUEUE, rows, "server", "")
            .await
        {
            tracing::error!(org, hunt_id, error = %e, "cannot offer a hunt");
        }
    }

    /// Sends a client that just connected the tasks waiting for it. In a cluster the
    /// master is asked; while it does not answer, the node keeps asking as long as the
    /// client stays connected.
    pub(super) fn deliver_pending(&self, org: &str, client: &str, tx: Outbox, session_id: u64) {
        let (this, org, client) = (self.clone(), org.to_string(), client.to_string());
        let stop = self.inner.shutdown.clone();
        self.inner.shutdown.spawn("pending-tasks", async move {
            loop {
                let tasks = if this.inner.local_collections.load(Ordering::Relaxed)
                    || this.inner.bus.is_none()
                {
                    collections::pending_tasks(&this.inner.store, &org, &client)
                        .map_err(|e| e.to_string())
                } else if let Some(bus) = &this.inner.bus {
                    let q = ClientRef {
                        org: org.clone(),
                        client_id: client.clone(),
                    };
                    bus.ask::<TasksGet>(&q).await.map_err(|e| e.to_string())
                } else {
                    Ok(Vec::new())
                };
                match tasks {
                    Ok(tasks) => {
                        for t in &tasks {
                            this.send_task(&org, &client, &tx, t).await;
                        }
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(org, client_id = %client, error = %e, "cannot fetch the client's tasks yet; retrying")
                    }
                }
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(RETRY) => {}
                }
                if !this.session_is(&org, &client, session_id) {
                    return;
                }
            }
        });
    }

    /// Sends one task; a collection sent is announced, so the flow reads as WAITING.
    async fn send_task(&self, org: &str, client: &str, tx: &Outbox, task: &Task) {
        if tx.send(task.to_message().into()).await.is_err() {
            return;
        }
        if let Task::Collect { flow_id, .. } = task {
            let row = ClientScheduled {
                client_id: client.to_string(),
                flow_id: flow_id.clone(),
                node: self.inner.node.clone(),
            };
            self.announce(org, &row).await;
        }
    }

    fn session_outbox(&self, org: &str, client: &str) -> Option<Outbox> {
        self.inner
            .sessions
            .lock()
            .expect("sessions")
            .get(&(org.to_string(), client.to_string()))
            .map(|s| s.tx.clone())
    }

    fn session_is(&self, org: &str, client: &str, session_id: u64) -> bool {
        self.inner
            .sessions
            .lock()
            .expect("sessions")
            .get(&(org.to_string(), client.to_string()))
            .is_some_and(|s| s.id == session_id)
    }
}
