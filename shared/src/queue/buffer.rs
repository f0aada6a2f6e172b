//! A queue's in-memory buffer of published batches, bounded in bytes as well as batches.
//!
//! Batches reach watchers over a broadcast channel, which keeps a batch until every watcher
//! has taken it: one stalled watcher would otherwise hold the last `buffer_batches` batches
//! whatever their size. Here every published batch is counted in the queue's held bytes
//! until it is dropped; once they pass the budget the oldest batches give up their rows
//! (the newest is always kept). A watcher that then finds a batch without rows treats it as
//! a gap: a durable queue's watcher reads those rows from the store, an INTERNAL queue's
//! counts them as dropped.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};

use crate::store::StoredRow;

/// Default bytes of rows one queue holds in memory for its watchers.
pub const DEFAULT_BUFFER_BYTES: usize = 64 * 1024 * 1024;

/// A batch made durable (or, for INTERNAL queues, accepted), as watchers receive it.
pub(crate) struct Published {
    pub first_seq: u64,
    /// Rows in the batch, whether or not they are still held.
    pub len: u64,
    bytes: usize,
    rows: Mutex<Option<Arc<Vec<StoredRow>>>>,
    held: Arc<AtomicUsize>,
}

impl Published {
    /// The batch's rows, or None when the buffer gave them up.
    pub fn rows(&self) -> Option<Arc<Vec<StoredRow>>> {
        self.rows.lock().expect("published rows").clone()
    }

    fn evict(&self) {
        if self.rows.lock().expect("published rows").take().is_some() {
            self.held.fetch_sub(self.bytes, Ordering::AcqRel);
        }
    }
}

impl Drop for Published {
    fn drop(&mut self) {
        if self
            .rows
            .get_mut()
            .expect("published rows")
            .take()
            .is_some()
        {
            self.held.fetch_sub(self.bytes, Ordering::AcqRel);
        }
    }
}

/// The accounting of one queue's buffer.
pub(crate) struct Buffer {
    budget: usize,
    held: Arc<AtomicUsize>,
    /// Batches published and perhaps still buffered, oldest first.
    recent: Mutex<VecDeque<Weak<Published>>>,
}

/// What a row costs the buffer: its text and its fixed fields.
fn row_bytes(r: &StoredRow) -> usize {
    r.json.len() + r.client.len() + std::mem::size_of::<StoredRow>()
}

impl Buffer {
    pub fn new(budget: usize) -> Self {
        Self {
            budget,
            held: Arc::default(),
            recent: Mutex::default(),
        }
    }

    /// Bytes of rows held now.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::Acquire)
    }

    /// Wraps a batch for publishing and gives up the rows of older batches while the
    /// buffer is over its budget.
    pub fn wrap(&self, first_seq: u64, rows: Arc<Vec<StoredRow>>) -> Arc<Published> {
        let bytes = rows.iter().map(row_bytes).sum();
        self.held.fetch_add(bytes, Ordering::AcqRel);
        let published = Arc::new(Published {
            first_seq,
            len: rows.len() as u64,
            bytes,
            rows: Mutex::new(Some(rows)),
            held: self.held.clone(),
        });
        let mut recent = self.recent.lock().expect("buffer recent");
        while self.held() > self.budget {
            let Some(oldest) = recent.pop_front() else {
                break;
            };
            if let Some(p) = oldest.upgrade() {
                p.evict();
            }
        }
        // Batches every watcher has taken are gone already; forget them.
        while recent.front().is_some_and(|w| w.strong_count() == 0) {
            recent.pop_front();
        }
        recent.push_back(Arc::downgrade(&published));
        published
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(n: usize, size: usize) -> Arc<Vec<StoredRow>> {
        Arc::new(
            (0..n)
                .map(|_| StoredRow {
                    ts_us: 1,
                    client: String::new(),
                    json: "x".repeat(size),
                })
                .collect(),
        )
    }

    #[test]
    fn held_batches_stay_within_the_budget_and_the_newest_is_kept() {
        let buffer = Buffer::new(10_000);
        let kept: Vec<Arc<Published>> = (0..50).map(|i| buffer.wrap(i, rows(2, 1000))).collect();
        assert!(buffer.held() <= 10_000, "{}", buffer.held());
        assert!(kept.last().unwrap().rows().is_some());
        assert!(kept[0].rows().is_none(), "the oldest gave up its rows");
        // One batch over the budget on its own is still delivered.
        let big = buffer.wrap(100, rows(1, 50_000));
        assert!(big.rows().is_some());
        assert!(kept.last().unwrap().rows().is_none());
        drop(kept);
        drop(big);
        assert_eq!(buffer.held(), 0, "dropped batches are no longer counted");
    }
}
