//! The persister (master, in a cluster): consumes the durable stream into the store. Each
//! message's rows are committed with its stream seq, so a replay after a crash of the
//! master, a restart of NATS or a lost ack applies nothing twice; a message that cannot be
//! decoded is logged, counted and passed over, never blocking the ones behind it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy};
use futures::StreamExt;
use talon_proto::bus::BusBatch;
use talon_shared::bus::Bus;
use talon_shared::queue::stream_key;
use talon_shared::store::{Store, StoredRow};
use tokio_util::sync::CancellationToken;

/// The persister's durable consumer.
pub const CONSUMER: &str = "talon-persister";
/// Messages fetched and committed together at most.
pub const FETCH_MESSAGES: usize = 1000;
/// How long fetched messages wait for their ack before JetStream hands them out again.
pub const ACK_WAIT: Duration = Duration::from_secs(30);
/// Bytes fetched at once at most (NATS cuts off a connection with 64 MiB pending).
pub const FETCH_BYTES: usize = 16 << 20;
/// Fetches handed to the store and not yet acknowledged, at most.
pub const FETCHES_IN_FLIGHT: usize = 4;

/// Figures of the persister, for metrics and `cluster status`.
#[derive(Default)]
pub struct Progress {
    /// Last stream seq applied.
    pub applied: Arc<AtomicU64>,
    /// Messages that could not be decoded, passed over.
    pub undecodable: AtomicU64,
    /// Rows stored since start (a replayed message adds none).
    pub rows: AtomicU64,
}

impl Progress {
    /// The figures as JSON, for `/debug/persister`.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "applied_seq": self.applied.load(Ordering::Relaxed),
            "rows_stored": self.rows.load(Ordering::Relaxed),
            "undecodable": self.undecodable.load(Ordering::Relaxed),
        })
    }
}

/// Runs until shutdown, reconnecting after errors.
pub async fn run(bus: Bus, store: Store, progress: Arc<Progress>, shutdown: CancellationToken) {
    if let Ok(seq) = store.bus_applied() {
        progress.applied.store(seq, Ordering::Relaxed);
    }
    while !shutdown.is_cancelled() {
        if let Err(e) = consume(&bus, &store, &progress, &shutdown).await {
            tracing::warn!(error = %e, "persister interrupted; resuming");
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }
}

async fn consume(
    bus: &Bus,
    store: &Store,
    progress: &Progress,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let stream = bus.ensure_stream().await?;
    let applied = store.bus_applied()?;
    // The store, not the consumer, knows what is applied: the consumer is made afresh from
    // the message after it on every (re)start, so messages handed to an earlier master
    // that died before storing them come again, in order (the store skips by stream seq,
    // which is only sound when messages are applied in order).
    match stream.delete_consumer(CONSUMER).await {
        Ok(_) => {}
        Err(e) if e.to_string().contains("not found") => {}
        Err(e) => tracing::debug!(error = %e, "could not delete the old persister consumer"),
    }
    let consumer: async_nats::jetstream::consumer::Consumer<pull::Config> = stream
        .get_or_create_consumer(
            CONSUMER,
            pull::Config {
                durable_name: Some(CONSUMER.to_string()),
                ack_policy: AckPolicy::All,
                ack_wait: ACK_WAIT,
                deliver_policy: if applied == 0 {
                    DeliverPolicy::All
                } else {
                    DeliverPolicy::ByStartSequence {
                        start_sequence: applied + 1,
                    }
                },
                max_ack_pending: -1,
                ..Default::default()
            },
        )
        .await?;
    // Fetching and acknowledging overlap: the next fetch goes out while the store commits
    // the last one. A fetch is acknowledged (all up to its last message) only once every
    // message of it is committed, in order.
    let (done_tx, mut done_rx) = tokio::sync::mpsc::channel::<Fetched>(FETCHES_IN_FLIGHT);
    let fetching = async move {
        loop {
            let mut batch = tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                b = consumer
                    .fetch()
                    .max_messages(FETCH_MESSAGES)
                    .max_bytes(FETCH_BYTES)
                    .expires(Duration::from_millis(500))
                    .messages() => b?,
            };
            let mut waits = Vec::new();
            let mut last = None;
            while let Some(m) = batch.next().await {
                let m = match m {
                    Ok(m) => m,
                    // The server ends a fetch early (say, the next message would pass
                    // FETCH_BYTES): keep what came and fetch again.
                    Err(e) if last.is_some() => {
                        tracing::debug!(error = %e, "fetch ended early");
                        break;
                    }
                    Err(e) => return Err(anyhow::anyhow!("{e}")),
                };
                let seq = m
                    .info()
                    .map_err(|e| anyhow::anyhow!("{e}"))?
                    .stream_sequence;
                let (appends, client) = match talon_shared::bus::decode_batch(
                    &m.subject,
                    m.payload.clone(),
                ) {
                    Ok(b) => to_appends(b),
                    Err(e) => {
                        progress.undecodable.fetch_add(1, Ordering::Relaxed);
                        tracing::error!(seq, subject = %m.subject, error = %e, "bus message passed over");
                        (Vec::new(), None)
                    }
                };
                let rows: usize = appends.iter().map(|(_, r)| r.len()).sum();
                waits.push((
                    seq,
                    rows as u64,
                    store.enqueue_bus(seq, appends, client).await?,
                ));
                last = Some(m);
            }
            if let Some(last) = last {
                if done_tx.send((waits, last)).await.is_err() {
                    return Ok(());
                }
            }
        }
    };
    let acking = async {
        while let Some((waits, last)) = done_rx.recv().await {
            for (seq, rows, w) in waits {
                if w.await.map_err(|_| anyhow::anyhow!("store closed"))?? {
                    progress.rows.fetch_add(rows, Ordering::Relaxed);
                }
                progress.applied.store(seq, Ordering::Relaxed);
            }
            last.ack().await.map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        anyhow::Ok(())
    };
    tokio::try_join!(fetching, acking)?;
    Ok(())
}

/// One fetch on its way into the store: (stream seq, rows, commit) per message, and the
/// fetch's last message, acknowledged once all are committed.
type Fetched = (
    Vec<(
        u64,
        u64,
        tokio::sync::oneshot::Receiver<talon_shared::store::Result<bool>>,
    )>,
    async_nats::jetstream::Message,
);

type Appends = Vec<(String, Vec<StoredRow>)>;

fn to_appends(b: BusBatch) -> (Appends, Option<(String, u64, u32)>) {
    let client = (!b.client_id.is_empty()).then(|| {
        let key = talon_shared::store::client_batch_key(&b.org, &b.client_id, b.incarnation);
        (key, b.batch_id, b.part)
    });
    let appends = b
        .queues
        .into_iter()
        .map(|q| {
            let rows = q
                .rows
                .into_iter()
                .map(talon_shared::bus::stored_row)
                .collect();
            (stream_key(&b.org, &q.queue), rows)
        })
        .collect();
    (appends, client)
}
