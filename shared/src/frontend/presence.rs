//! Presence across the cluster, over the replicated queues: a node asks with a row on
//! `Server.Internal.Ping` in the client's org, and every node whose frontend answers pings
//! replies with a row on `Server.Internal.Pong` carrying the same `NotifyTarget`. Any
//! `Connected: true` from another node wins; the asker waits at most [`PING_WAIT`].
//! Both rows are ordinary INTERNAL rows, so the debug pages and `watch_monitoring()` see
//! the cluster's own presence traffic.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::FrontendService;
use crate::control::{self, ControlRow, Ping, Pong};
use crate::queue::Result;

/// How long a presence ping collects answers.
pub const PING_WAIT: Duration = Duration::from_millis(300);

/// Numbers this process's pings, so each waits for its own pongs only.
static NEXT_PING: AtomicU64 = AtomicU64::new(1);

impl FrontendService {
    /// Answers presence pings of every org until shutdown: one Pong per Ping, saying
    /// whether the client is connected here (or listing the org's clients here).
    pub fn answer_pings(&self) -> Result<()> {
        let mut pings = self.inner.qm.watch_every_org(Ping::QUEUE, "presence")?;
        let (this, stop) = (self.clone(), self.inner.shutdown.clone());
        self.inner.shutdown.spawn("presence-answers", async move {
            loop {
                let (org, row) = tokio::select! {
                    _ = stop.cancelled() => break,
                    r = pings.next() => match r { Some(r) => r, None => break },
                };
                let ping = match Ping::from_json(&row.json) {
                    Ok(p) if p.node == this.inner.node => continue, // our own question
                    Ok(p) => p,
                    Err(e) => {
                        tracing::warn!(org, error = %e, "unreadable presence ping");
                        continue;
                    }
                };
                let pong = Pong {
                    connected: !ping.list && this.is_connected(&org, &ping.client_id),
                    clients: if ping.list {
                        this.connected(&org)
                    } else {
                        Vec::new()
                    },
                    client_id: ping.client_id,
                    notify_target: ping.notify_target,
                    node: this.inner.node.clone(),
                };
                if let Err(e) = control::push(&this.inner.qm, &org, &pong).await {
                    tracing::warn!(org, error = %e, "cannot answer a presence ping");
                }
            }
        });
        Ok(())
    }

    /// Sends a ping and hands each answer from another node to `answer` until it returns
    /// true (then true) or [`PING_WAIT`] passes (then false).
    async fn ask_nodes(
        &self,
        org: &str,
        client_id: &str,
        list: bool,
        mut answer: impl FnMut(Pong) -> bool,
    ) -> bool {
        let qm = &self.inner.qm;
        let node = self.inner.node.clone();
        let target = format!("{node}/{}", NEXT_PING.fetch_add(1, Ordering::Relaxed));
        // Watch first, so no answer can come before the watcher exists.
        let mut pongs = match qm.watch(org, Pong::QUEUE, "presence-ask").await {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!(org, error = %e, "cannot watch presence answers");
                return false;
            }
        };
        let ping = Ping {
            client_id: client_id.to_string(),
            notify_target: target.clone(),
            list,
            node: node.clone(),
        };
        if let Err(e) = control::push(qm, org, &ping).await {
            tracing::warn!(org, error = %e, "cannot send a presence ping");
            return false;
        }
        let deadline = tokio::time::sleep(PING_WAIT);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                _ = &mut deadline => return false,
                ev = pongs.next() => {
                    let Ok(ev) = ev else { return false };
                    let Ok(pong) = Pong::from_json(&ev.row.json) else { continue };
                    if pong.notify_target == target && pong.node != node && answer(pong) {
                        return true;
                    }
                }
            }
        }
    }

    /// Asks every other node whether a client is connected there; any yes wins.
    pub async fn connected_elsewhere(&self, org: &str, client_id: &str) -> bool {
        self.ask_nodes(org, client_id, false, |p| p.connected).await
    }

    /// Clients of an org connected to any other node that answers within [`PING_WAIT`].
    pub async fn connected_in_cluster(&self, org: &str) -> HashSet<String> {
        let mut all = HashSet::new();
        self.ask_nodes(org, "", true, |p| {
            all.extend(p.clients);
            false
        })
        .await;
        all
    }
}
