//! The queue manager in a cluster: pushes go over the NATS bus (durable ones return once
//! JetStream holds them) and every node feeds its local watchers from the bus.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use futures::StreamExt;
use prost::Message;
use talon_proto::bus::BusBatch;
use tokio_util::sync::CancellationToken;

use super::{PushClock, QueueManager, QueueState, Result};
use crate::bus::{self, Bus};
use crate::store::StoredRow;

impl QueueManager {
    /// Joins a cluster: from now on pushes go over `bus`. Call before serving.
    pub fn attach_bus(&self, bus: Bus) {
        let _ = self.inner.bus.set(bus);
    }

    /// The bus, in a cluster.
    pub fn bus(&self) -> Option<&Bus> {
        self.inner.bus.get()
    }

    /// Sends a push over the bus in queue order (under the queue's push lock), then waits
    /// for JetStream without it.
    pub(super) async fn push_over_bus(
        &self,
        bus: &Bus,
        state: &Arc<QueueState>,
        rows: Arc<Vec<StoredRow>>,
        clock: tokio::sync::MutexGuard<'_, PushClock>,
    ) -> Result<()> {
        let n = self.inner.next_msg.fetch_add(1, Ordering::Relaxed);
        let msg_id = format!("{}/{}/{n}", bus.node(), boot_id());
        let durable = state.kind.is_durable();
        let acks = bus
            .send(
                &state.org,
                durable,
                vec![(state.name.clone(), &rows[..])],
                None,
                &msg_id,
            )
            .await?;
        drop(clock);
        acks.wait().await?;
        Ok(())
    }

    /// Sends a client's event batch over the bus; JetStream's message ids and the
    /// persister's (client, batch, part) check make a resent batch count once.
    pub(super) async fn push_client_batch_over_bus(
        &self,
        bus: &Bus,
        org: &str,
        client: &str,
        batch_id: u64,
        stamped: Vec<(Arc<QueueState>, Vec<StoredRow>)>,
    ) -> Result<bool> {
        let msg_id = format!("{org}/{client}/{batch_id}");
        let rows: Vec<(String, &[StoredRow])> = stamped
            .iter()
            .map(|(s, r)| (s.name.clone(), &r[..]))
            .collect();
        bus.send(org, true, rows, Some((client, batch_id)), &msg_id)
            .await?
            .wait()
            .await?;
        for (state, rows) in &stamped {
            state.pushed.fetch_add(rows.len() as u64, Ordering::Relaxed);
        }
        Ok(true)
    }

    /// Hands a batch from the bus to this node's watchers of its queues. Queues nobody
    /// here has touched are skipped.
    pub fn deliver(&self, batch: BusBatch) {
        let org = batch.org;
        for q in batch.queues {
            let state = self
                .inner
                .queues
                .read()
                .expect("queues lock")
                .get(&(org.clone(), q.queue))
                .cloned();
            let Some(state) = state else { continue };
            let rows: Vec<StoredRow> = q
                .rows
                .into_iter()
                .map(|r| StoredRow {
                    ts_us: r.ts_us,
                    client: r.client,
                    json: r.json,
                })
                .collect();
            if !rows.is_empty() {
                state.publish_next(Arc::new(rows));
            }
        }
    }

    /// Follows every row subject of the bus and delivers to local watchers until shutdown.
    /// Returns once the subscription is registered with the server.
    pub async fn start_delivery(&self, shutdown: CancellationToken) -> Result<()> {
        let Some(bus) = self.inner.bus.get() else {
            return Ok(());
        };
        let mut sub = bus
            .client()
            .subscribe(bus::ROW_SUBJECTS)
            .await
            .map_err(|e| bus::Error::Publish(e.to_string()))?;
        bus.client()
            .flush()
            .await
            .map_err(|e| bus::Error::Publish(e.to_string()))?;
        let qm = self.clone();
        tokio::spawn(async move {
            loop {
                let msg = tokio::select! {
                    _ = shutdown.cancelled() => break,
                    m = sub.next() => match m { Some(m) => m, None => break },
                };
                match BusBatch::decode(msg.payload) {
                    Ok(b) => qm.deliver(b),
                    Err(e) => {
                        tracing::error!(subject = %msg.subject, error = %e, "undecodable bus batch skipped")
                    }
                }
            }
        });
        Ok(())
    }
}

/// Distinguishes this process's message ids from an earlier run's of the same node.
fn boot_id() -> i64 {
    static BOOT: std::sync::OnceLock<i64> = std::sync::OnceLock::new();
    *BOOT.get_or_init(super::now_us)
}
