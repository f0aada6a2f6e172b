//! What the queue manager tells the debug pages and the API about its queues: per queue,
//! its type, rows pushed, dropped and caught up, and each watcher with how far behind it is.

use std::sync::atomic::{AtomicU64, Ordering};

use super::{QueueManager, QueueState, ROOT_ORG};

/// Statistics of one queue.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct QueueStats {
    pub org: String,
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub durable: bool,
    pub watchers: u64,
    pub rows_pushed: u64,
    pub rows_dropped: u64,
    /// Rows lagging watchers read back from the store instead of the in-memory buffer.
    pub rows_caught_up: u64,
    /// Each watcher by name, with how many rows it is behind.
    pub watcher_list: Vec<WatcherStats>,
}

/// One watcher of a queue.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct WatcherStats {
    pub name: String,
    /// Rows pushed that this watcher has not yet taken.
    pub lag: u64,
}

impl QueueState {
    fn watcher_stats(&self) -> Vec<WatcherStats> {
        let head = *self.head.lock().expect("queue head");
        self.watchers
            .lock()
            .expect("watchers lock")
            .values()
            .map(|w| WatcherStats {
                name: w.name.clone(),
                lag: (head + 1).saturating_sub(w.cursor.load(Ordering::Relaxed)),
            })
            .collect()
    }
}

impl QueueManager {
    /// Statistics of every queue of an org: each known queue, whether used yet or not.
    pub fn stats(&self, org: &str) -> Vec<QueueStats> {
        let map = self.inner.queues.read().expect("queues lock");
        let mut out = Vec::new();
        for a in self.inner.repo.list() {
            for q in a.queue_names() {
                let s = map.get(&(org.to_string(), q.clone()));
                let get = |f: fn(&QueueState) -> &AtomicU64| {
                    s.map(|s| f(s).load(Ordering::Relaxed)).unwrap_or(0)
                };
                let watcher_list = s.map(|s| s.watcher_stats()).unwrap_or_default();
                out.push(QueueStats {
                    org: org.into(),
                    name: q,
                    kind: a.kind.to_string(),
                    durable: a.kind.is_durable(),
                    watchers: watcher_list.len() as u64,
                    rows_pushed: get(|s| &s.pushed),
                    rows_dropped: get(|s| &s.dropped),
                    rows_caught_up: get(|s| &s.caught_up),
                    watcher_list,
                });
            }
        }
        out
    }

    /// Every org that has a queue in use, sorted.
    pub fn orgs(&self) -> Vec<String> {
        let map = self.inner.queues.read().expect("queues lock");
        let mut orgs: Vec<String> = map.keys().map(|(o, _)| o.clone()).collect();
        orgs.push(ROOT_ORG.into());
        orgs.sort();
        orgs.dedup();
        orgs
    }
}
