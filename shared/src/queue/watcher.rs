//! A watcher: a cursor on one queue that yields every row pushed after it started, in order.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::broadcast::{self, error::RecvError};

use super::{Published, QueueState, Result, WatcherEntry};
use crate::bus::Bus;
use crate::store::{Store, StoredRow};

/// Where a lagging watcher reads the rows it missed.
pub enum CatchUp {
    /// INTERNAL queues: nowhere; missed rows are counted as dropped.
    None,
    /// Durable queues of a standalone master: its store.
    Store(Store),
    /// Durable queues in a cluster: JetStream, through the queue's index of batches.
    Bus(Box<Bus>),
}

/// Rows a lagging durable watcher reads from the store at a time.
pub const CATCH_UP_CHUNK: usize = 10_000;

/// One row as a watcher sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Position of the row in its queue.
    pub seq: u64,
    pub row: StoredRow,
}

/// Yields the rows of one queue; dropping it stops watching.
pub struct Watcher {
    state: Arc<QueueState>,
    rx: broadcast::Receiver<Arc<Published>>,
    /// The seq this watcher wants next.
    next_seq: u64,
    /// The batch being read: its first seq, rows, and the index of the next row.
    current: Option<(u64, Arc<Vec<StoredRow>>, usize)>,
    backlog: VecDeque<(u64, StoredRow)>,
    /// Set while rows before this seq must come from the store.
    catch_up_until: Option<u64>,
    source: CatchUp,
    /// This watcher's key in the queue's registry, and its published cursor.
    id: u64,
    cursor: Arc<AtomicU64>,
}

impl Watcher {
    pub(super) fn new(state: Arc<QueueState>, source: CatchUp, name: &str) -> Self {
        let (rx, next_seq) = {
            let head = state.head.lock().expect("queue head");
            (state.tx.subscribe(), *head + 1)
        };
        let id = state.next_watcher_id.fetch_add(1, Ordering::Relaxed);
        let cursor = Arc::new(AtomicU64::new(next_seq));
        state.watchers.lock().expect("watchers lock").insert(
            id,
            WatcherEntry {
                name: name.to_string(),
                cursor: cursor.clone(),
            },
        );
        Self {
            id,
            cursor,
            state,
            rx,
            next_seq,
            current: None,
            backlog: VecDeque::new(),
            catch_up_until: None,
            source,
        }
    }

    /// The queue's name.
    pub fn queue(&self) -> &str {
        &self.state.name
    }

    /// The next row; waits until one is pushed. Fails only when the store cannot be read.
    pub async fn next(&mut self) -> Result<Event> {
        loop {
            if let Some((seq, row)) = self.backlog.pop_front() {
                self.next_seq = seq + 1;
                self.cursor.store(self.next_seq, Ordering::Relaxed);
                return Ok(Event { seq, row });
            }
            if let Some(end) = self.catch_up_until {
                if self.next_seq < end {
                    self.catch_up(end).await?;
                    continue;
                }
                self.catch_up_until = None;
            }
            if let Some((first_seq, rows, idx)) = &mut self.current {
                while *idx < rows.len() {
                    let seq = *first_seq + *idx as u64;
                    let row = &rows[*idx];
                    *idx += 1;
                    if seq == self.next_seq {
                        self.next_seq += 1;
                        self.cursor.store(self.next_seq, Ordering::Relaxed);
                        return Ok(Event {
                            seq,
                            row: row.clone(),
                        });
                    }
                }
                self.current = None;
            }
            match self.rx.recv().await {
                Ok(batch) => {
                    let end = batch.first_seq + batch.len;
                    if end <= self.next_seq {
                        continue; // already seen, read from the store while catching up
                    }
                    // A batch whose rows the buffer gave up (over its byte budget) is a gap
                    // up to its end.
                    let Some(rows) = batch.rows() else {
                        if !matches!(self.source, CatchUp::None) {
                            self.catch_up_until = Some(end);
                        } else {
                            let lost = end - self.next_seq;
                            self.state.dropped.fetch_add(lost, Ordering::Relaxed);
                            tracing::warn!(queue = %self.state.name, org = %self.state.org, lost, "slow watcher of an INTERNAL queue dropped rows (buffer over its byte budget)");
                            self.next_seq = end;
                        }
                        continue;
                    };
                    if batch.first_seq > self.next_seq {
                        if !matches!(self.source, CatchUp::None) {
                            self.catch_up_until = Some(batch.first_seq);
                        } else {
                            let lost = batch.first_seq - self.next_seq;
                            self.state.dropped.fetch_add(lost, Ordering::Relaxed);
                            tracing::warn!(queue = %self.state.name, org = %self.state.org, lost, "slow watcher of an INTERNAL queue dropped rows");
                            self.next_seq = batch.first_seq;
                        }
                    }
                    self.current = Some((batch.first_seq, rows, 0));
                }
                // Lagged: the next batch received shows the gap, which is handled above.
                Err(RecvError::Lagged(_)) => continue,
                // The queue state is held by this watcher, so the sender outlives it.
                Err(RecvError::Closed) => std::future::pending::<()>().await,
            }
        }
    }

    async fn catch_up(&mut self, end: u64) -> Result<()> {
        let store = match &self.source {
            CatchUp::Store(s) => s.clone(),
            CatchUp::Bus(bus) => {
                let bus = bus.clone();
                self.catch_up_from_bus(&bus, end).await;
                return Ok(());
            }
            CatchUp::None => unreachable!("only durable watchers catch up"),
        };
        let stream = self.state.stream.clone();
        let from = self.next_seq;
        let rows =
            tokio::task::spawn_blocking(move || store.read_seq(&stream, from, end, CATCH_UP_CHUNK))
                .await
                .expect("store read task")?;
        if rows.is_empty() {
            // Purged by retention before this watcher got to them.
            let lost = end - from;
            self.state.dropped.fetch_add(lost, Ordering::Relaxed);
            self.next_seq = end;
        } else {
            if rows[0].0 > from {
                let lost = rows[0].0 - from;
                self.state.dropped.fetch_add(lost, Ordering::Relaxed);
            }
            self.state
                .caught_up
                .fetch_add(rows.len() as u64, Ordering::Relaxed);
            self.backlog.extend(rows);
        }
        Ok(())
    }
}

impl Watcher {
    /// Re-reads the batches covering [next seq, `end`) from JetStream by their stream seqs;
    /// what the index no longer covers, or cannot be read, is counted as dropped.
    async fn catch_up_from_bus(&mut self, bus: &Bus, end: u64) {
        let from = self.next_seq;
        let entries: Vec<(u64, u64, u64)> = self
            .state
            .index
            .lock()
            .expect("queue index")
            .iter()
            .filter(|(first, _, n)| first + n > from && *first < end)
            .copied()
            .collect();
        let mut expected = from;
        for (first, stream_seq, n) in entries {
            let rows = match bus.stored_batch(stream_seq).await {
                Ok(b) if b.org == self.state.org => b
                    .queues
                    .into_iter()
                    .find(|q| q.queue == self.state.name)
                    .map(|q| q.rows)
                    .unwrap_or_default(),
                Ok(_) => Vec::new(),
                Err(e) => {
                    tracing::warn!(queue = %self.state.name, stream_seq, error = %e, "cannot re-read a batch for a lagging watcher");
                    Vec::new()
                }
            };
            if rows.len() as u64 != n {
                continue; // counted as dropped below
            }
            for (i, r) in rows.into_iter().enumerate() {
                let seq = first + i as u64;
                if seq >= expected && seq < end {
                    if seq > expected {
                        self.state
                            .dropped
                            .fetch_add(seq - expected, Ordering::Relaxed);
                    }
                    self.backlog.push_back((seq, crate::bus::stored_row(r)));
                    self.state.caught_up.fetch_add(1, Ordering::Relaxed);
                    expected = seq + 1;
                }
            }
        }
        // Rows found are served first; what is still missing after them is counted on the
        // next call, which finds nothing more for them.
        if self.backlog.is_empty() {
            self.state.dropped.fetch_add(end - from, Ordering::Relaxed);
            tracing::warn!(queue = %self.state.name, lost = end - from, "a lagging watcher could not re-read every row");
            self.next_seq = end;
        }
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.state
            .watchers
            .lock()
            .expect("watchers lock")
            .remove(&self.id);
    }
}
