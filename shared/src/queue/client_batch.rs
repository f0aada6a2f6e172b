//! Client event batches: applied atomically across queues and at most once per
//! (client, spool incarnation, batch id).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::{now_us, ClientRow, Error, QueueManager, QueueState, Result};
use crate::store::{self, StoredRow};
use talon_artifacts::ArtifactKind;

/// The largest batch id accepted: a client making a batch a microsecond for a century
/// stays far below it, so an id above it was forged or corrupted, and is refused.
pub const MAX_BATCH_ID: u64 = 1 << 53;

/// Names a client's event batch: the spool incarnation it was made in (a random number the
/// client picks each time it opens its spool) and its id there (from 1, growing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchName {
    pub incarnation: u64,
    pub id: u64,
}

impl BatchName {
    /// Refuses what no client can have sent honestly.
    fn check(&self) -> Result<()> {
        let reason = match self.id {
            0 => "batch ids start at 1",
            id if id > MAX_BATCH_ID => "it is above 2^53, more batches than a client can make",
            _ => return Ok(()),
        };
        Err(Error::InvalidBatch {
            id: self.id,
            reason,
        })
    }
}

impl QueueManager {
    /// Pushes a client's event batch (rows per CLIENT_EVENT queue) atomically and at most
    /// once: rows get a `ClientId` column, `_ts` and `_Source` (the client id). Returns once
    /// durable: true when applied, false when this batch of this spool incarnation was
    /// applied before.
    pub async fn push_client_batch<R: ClientRow>(
        &self,
        org: &str,
        client: &str,
        name: BatchName,
        batch: Vec<(String, Vec<R>)>,
    ) -> Result<bool> {
        name.check()?;
        let mut per_queue: Vec<(Arc<QueueState>, Vec<R>)> = Vec::new();
        for (queue, rows) in batch {
            let state = self.state(org, &queue)?;
            // The server writes System.* queues (flow completions) itself; a client row
            // there would be a forged completion.
            if queue.starts_with("System.") {
                return Err(Error::WrongKind {
                    queue,
                    kind: state.kind,
                    action: "System.* queues are written by the server, not by clients",
                });
            }
            if state.kind != ArtifactKind::ClientEvent {
                return Err(Error::WrongKind {
                    queue,
                    kind: state.kind,
                    action: "clients may push only to CLIENT_EVENT queues",
                });
            }
            match per_queue.iter_mut().find(|(s, _)| Arc::ptr_eq(s, &state)) {
                Some((_, r)) => r.extend(rows),
                None => per_queue.push((state, rows)),
            }
        }
        // Locks are taken in name order, so two batches never wait on each other.
        per_queue.sort_by(|a, b| a.0.name.cmp(&b.0.name));
        let limit = self.inner.limits.max_row_bytes;
        let stamped_limit = super::stamped_limit(limit, client);
        let now = now_us();
        let ts_s = now.div_euclid(1_000_000);
        let client_json = serde_json::to_string(client).expect("a string");
        let mut stamped = Vec::with_capacity(per_queue.len());
        for (state, rows) in per_queue {
            let in_queue = |e: Error| Error::InQueue {
                queue: state.name.clone(),
                source: Box::new(e),
            };
            let mut out = Vec::with_capacity(rows.len());
            for (index, row) in rows.into_iter().enumerate() {
                let too_large = |size| Error::RowTooLarge { index, size, limit };
                if let Some(size) = row.text_len().filter(|n| *n > limit) {
                    return Err(in_queue(too_large(size)));
                }
                let json = row
                    .stamp(client, &client_json, ts_s, index)
                    .map_err(in_queue)?;
                if json.len() > stamped_limit {
                    return Err(in_queue(too_large(json.len())));
                }
                out.push(StoredRow {
                    ts_us: now,
                    client: client.to_string(),
                    json,
                });
            }
            stamped.push((state, out));
        }
        if let Some(bus) = self.bus() {
            return self
                .push_client_batch_over_bus(bus, org, client, name, stamped)
                .await;
        }
        let states: Vec<Arc<QueueState>> = stamped.iter().map(|(s, _)| s.clone()).collect();
        let mut guards = Vec::with_capacity(states.len());
        for state in &states {
            guards.push(state.push_order.lock().await);
        }
        let mut appends = Vec::new();
        let mut on_commit: Vec<crate::store::OnCommit> = Vec::new();
        let mut counts = Vec::new();
        for ((state, mut rows), guard) in stamped.into_iter().zip(guards.iter_mut()) {
            let ts_us = now.max(guard.last_ts_us);
            guard.last_ts_us = ts_us;
            for r in &mut rows {
                r.ts_us = ts_us;
            }
            let rows = Arc::new(rows);
            counts.push((state.clone(), rows.len() as u64));
            appends.push((state.stream.clone(), rows.clone()));
            let publisher = state.clone();
            on_commit.push(Box::new(move |first| {
                if !rows.is_empty() {
                    publisher.publish(first, rows)
                }
            }));
        }
        let done = self
            .inner
            .store
            .enqueue_client_batch(
                store::client_batch_key(org, client, name.incarnation),
                name.id,
                appends,
                on_commit,
            )
            .await?;
        drop(guards);
        let applied = done.await.map_err(|_| store::Error::Closed)??;
        if applied {
            for (state, n) in counts {
                state.pushed.fetch_add(n, Ordering::Relaxed);
            }
        }
        Ok(applied)
    }
}
