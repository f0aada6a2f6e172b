//! The queue manager in a cluster: pushes go over the NATS bus (durable ones return once
//! JetStream holds them) and every node feeds its local watchers from the bus.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use futures::StreamExt;
use talon_core::Shutdown;
use talon_proto::bus::BusBatch;

use super::{PushClock, QueueManager, QueueState, Result};
use crate::bus::{self, Bus};
use crate::store::StoredRow;

impl QueueManager {
    /// The bus, in a cluster (the queue manager's own; every service is handed the bus
    /// it uses).
    pub(crate) fn bus(&self) -> Option<&Bus> {
        match &self.inner.log {
            super::Log::Bus(b) => Some(&b.0),
            super::Log::Store => None,
        }
    }

    /// Where the bus delivery tasks run (a standalone node has none).
    fn delivery_shutdown(&self) -> Shutdown {
        match &self.inner.log {
            super::Log::Bus(b) => b.1.clone(),
            super::Log::Store => Shutdown::default(),
        }
    }

    /// Sends a push over the bus in queue order (under the queue's push lock), then waits
    /// for JetStream without it.
    pub(super) async fn push_over_bus(
        &self,
        bus: &Bus,
        state: &Arc<QueueState>,
        rows: Arc<Vec<StoredRow>>,
        clock: tokio::sync::MutexGuard<'_, PushClock>,
        once: Option<(&str, &str, u64)>,
    ) -> Result<()> {
        let n = self.inner.next_msg.fetch_add(1, Ordering::Relaxed);
        // A push part's id is its own, so JetStream stores a resent part once.
        let msg_id = match once {
            Some((scope, push_id, part)) => format!("{scope}/{}/{push_id}/{part}", state.org),
            None => format!("{}/{}/{n}", bus.node(), boot_id()),
        };
        let durable = state.kind.is_durable();
        // In a cluster nothing else holds the rows: take them without copying.
        let rows = Arc::try_unwrap(rows).unwrap_or_else(|shared| (*shared).clone());
        let acks = bus
            .send(
                &state.org,
                durable,
                vec![(state.name.clone(), rows)],
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
        name: super::BatchName,
        stamped: Vec<(Arc<QueueState>, Vec<StoredRow>)>,
    ) -> Result<bool> {
        let msg_id = format!("{org}/{client}/{:x}/{}", name.incarnation, name.id);
        let counts: Vec<(Arc<QueueState>, u64)> = stamped
            .iter()
            .map(|(s, r)| (s.clone(), r.len() as u64))
            .collect();
        let rows: Vec<(String, Vec<StoredRow>)> = stamped
            .into_iter()
            .map(|(s, r)| (s.name.clone(), r))
            .collect();
        bus.send(org, true, rows, Some((client, name)), &msg_id)
            .await?
            .wait()
            .await?;
        for (state, n) in counts {
            state.pushed.fetch_add(n, Ordering::Relaxed);
        }
        Ok(true)
    }

    /// Hands a bus message to this node's watchers of its queues (with its stream seq when
    /// it came from JetStream, so lagging watchers can re-read it). Queues nobody here has
    /// touched are skipped; a message that does not decode is logged and skipped.
    fn deliver_message(
        &self,
        subject: &str,
        payload: prost::bytes::Bytes,
        stream_seq: Option<u64>,
    ) {
        match bus::decode_batch(subject, payload) {
            Ok(b) => self.deliver_stored(b, stream_seq),
            Err(e) => tracing::error!(subject, error = %e, "bus batch skipped"),
        }
    }

    fn deliver_stored(&self, batch: BusBatch, stream_seq: Option<u64>) {
        let org = batch.org;
        for q in batch.queues {
            let state = self
                .inner
                .queues
                .read()
                .expect("queues lock")
                .get(&(org.clone(), q.queue.clone()))
                .cloned();
            // A queue some service watches in every org gets a state in each org its rows
            // arrive in; other queues nobody here has touched are skipped.
            let state = match state {
                Some(s) => s,
                None if self.inner.taps.has(&q.queue) => match self.state(&org, &q.queue) {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::warn!(org, queue = %q.queue, error = %e, "bus rows of an unusable queue skipped");
                        continue;
                    }
                },
                None => continue,
            };
            let rows: Vec<StoredRow> = q.rows.into_iter().map(bus::stored_row).collect();
            if !rows.is_empty() {
                state.publish_next(Arc::new(rows), stream_seq);
            }
        }
    }

    /// Follows the INTERNAL subjects of the bus for local watchers until shutdown (durable
    /// queues are followed once watched, see [`QueueManager::follow_durable`]). Returns
    /// once the subscription is registered with the server.
    pub(super) async fn start_delivery(&self) -> Result<()> {
        let Some(bus) = self.bus() else {
            return Ok(());
        };
        let mut sub = subscribe(bus, bus::INTERNAL_SUBJECTS.to_string()).await?;
        let qm = self.clone();
        let shutdown = self.delivery_shutdown();
        let stop = shutdown.clone();
        shutdown.spawn("bus-internal-feed", async move {
            loop {
                let msg = tokio::select! {
                    _ = stop.cancelled() => break,
                    m = sub.next() => match m { Some(m) => m, None => break },
                };
                qm.deliver_message(&msg.subject, msg.payload, None);
            }
        });
        Ok(())
    }

    /// In a cluster, makes sure this node follows a durable queue's subject before its
    /// first watcher starts, so the watcher sees every row pushed after `watch` returns
    /// (the subscription is confirmed by a round trip to the server).
    pub(super) async fn follow_durable(&self, state: &QueueState) -> Result<()> {
        let Some(bus) = self.bus() else {
            return Ok(());
        };
        if !state.kind.is_durable() || state.followed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        let subject = bus::queue_subjects(&state.org, true, &state.name);
        match bus.follow_durable(subject).await {
            Ok(messages) => {
                self.spawn_stream_delivery(messages, &state.org, &state.name);
                Ok(())
            }
            Err(e) => {
                state.followed.store(false, Ordering::Release);
                Err(e.into())
            }
        }
    }

    fn spawn_stream_delivery(
        &self,
        mut messages: async_nats::jetstream::consumer::push::Ordered,
        org: &str,
        queue: &str,
    ) {
        let qm = self.clone();
        let shutdown = self.delivery_shutdown();
        let stop = shutdown.clone();
        let span = tracing::info_span!(parent: shutdown.span(), "bus-durable-feed", org = %org, queue = %queue);
        shutdown.spawn_in(span, async move {
            loop {
                let msg = tokio::select! {
                    _ = stop.cancelled() => break,
                    m = messages.next() => match m {
                        Some(Ok(m)) => m,
                        Some(Err(e)) => {
                            tracing::warn!(error = %e, "durable feed interrupted; it resumes by itself");
                            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                            continue;
                        }
                        None => break,
                    },
                };
                let seq = msg.info().ok().map(|i| i.stream_sequence);
                qm.deliver_message(&msg.subject, msg.payload.clone(), seq);
            }
        });
    }
}

/// Subscribes on the feed connection and waits until the server has the subscription.
async fn subscribe(bus: &Bus, subject: String) -> Result<async_nats::Subscriber> {
    let sub = bus
        .feed()
        .subscribe(subject)
        .await
        .map_err(|e| bus::Error::Publish(e.into()))?;
    bus.feed()
        .flush()
        .await
        .map_err(|e| bus::Error::Publish(e.into()))?;
    Ok(sub)
}

/// Distinguishes this process's message ids from an earlier run's of the same node.
fn boot_id() -> i64 {
    static BOOT: std::sync::OnceLock<i64> = std::sync::OnceLock::new();
    *BOOT.get_or_init(super::now_us)
}
