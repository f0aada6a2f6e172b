//! Watching an INTERNAL queue in every org at once. The cluster's own control rows (client
//! pings, client info, label edits, snapshot announcements, presence pings) are pushed in
//! the org they are about, and a node's services consume them for every org, including
//! orgs that appear later; they do so here, through the queue manager like any other
//! consumer, instead of decoding batches off NATS subjects by hand.
//!
//! A tap is a bounded broadcast channel per queue name; every batch published to that
//! queue in any org (pushed here or delivered from the bus) is offered to it. INTERNAL
//! rows are live only: a tap watcher that falls behind skips and counts what it missed.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use tokio::sync::broadcast;

use crate::store::StoredRow;

/// Batches a tap buffers for its slowest watcher.
pub const TAP_BUFFER_BATCHES: usize = 1024;

/// A batch of one org's queue, as a tap receives it.
pub(crate) struct Tapped {
    org: String,
    rows: Arc<Vec<StoredRow>>,
}

/// Every tap of a queue manager, shared with its queue states.
#[derive(Default)]
pub(crate) struct Taps {
    by_queue: RwLock<HashMap<String, Tap>>,
}

struct Tap {
    tx: broadcast::Sender<Arc<Tapped>>,
    dropped: Arc<AtomicU64>,
}

impl Taps {
    /// Offers a published batch to the queue's tap, if it has one.
    pub(crate) fn offer(&self, org: &str, queue: &str, rows: &Arc<Vec<StoredRow>>) {
        let taps = self.by_queue.read().expect("taps lock");
        if let Some(tap) = taps.get(queue) {
            // An error only means no tap watcher is left.
            let _ = tap.tx.send(Arc::new(Tapped {
                org: org.to_string(),
                rows: rows.clone(),
            }));
        }
    }

    /// True when some service taps this queue (a node then keeps a state for every org
    /// the queue's rows arrive in).
    pub(crate) fn has(&self, queue: &str) -> bool {
        self.by_queue.read().expect("taps lock").contains_key(queue)
    }

    /// A new watcher of a queue's tap, made on first use.
    pub(crate) fn watch(&self, queue: &str, name: &str) -> OrgsWatcher {
        let mut taps = self.by_queue.write().expect("taps lock");
        let tap = taps.entry(queue.to_string()).or_insert_with(|| Tap {
            tx: broadcast::channel(TAP_BUFFER_BATCHES).0,
            dropped: Arc::default(),
        });
        OrgsWatcher {
            queue: queue.to_string(),
            name: name.to_string(),
            rx: tap.tx.subscribe(),
            pending: VecDeque::new(),
            dropped: tap.dropped.clone(),
        }
    }

    /// Rows every tap watcher of a queue skipped because it fell behind.
    pub(crate) fn dropped(&self, queue: &str) -> u64 {
        self.by_queue
            .read()
            .expect("taps lock")
            .get(queue)
            .map_or(0, |t| t.dropped.load(Ordering::Relaxed))
    }
}

/// A watcher of one INTERNAL queue in every org.
pub struct OrgsWatcher {
    queue: String,
    name: String,
    rx: broadcast::Receiver<Arc<Tapped>>,
    pending: VecDeque<(String, StoredRow)>,
    dropped: Arc<AtomicU64>,
}

impl OrgsWatcher {
    /// The next row with its org; None once the queue manager is gone.
    pub async fn next(&mut self) -> Option<(String, StoredRow)> {
        loop {
            if let Some(row) = self.pending.pop_front() {
                return Some(row);
            }
            match self.rx.recv().await {
                Ok(batch) => self
                    .pending
                    .extend(batch.rows.iter().map(|r| (batch.org.clone(), r.clone()))),
                Err(broadcast::error::RecvError::Lagged(batches)) => {
                    self.dropped.fetch_add(batches, Ordering::Relaxed);
                    tracing::warn!(
                        queue = %self.queue,
                        watcher = %self.name,
                        batches,
                        "a watcher of every org fell behind; INTERNAL batches skipped"
                    );
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }
}
