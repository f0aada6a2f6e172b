//! The queue manager: push and watch per (org, queue).
//!
//! Durable queues (SERVER_EVENT, CLIENT_EVENT) are logs in the store: a push returns once its
//! rows are committed, and each committed batch is then published, in commit order, on a
//! bounded broadcast channel. A watcher is a cursor (the next seq it wants): when it falls
//! behind the channel it reads the missed rows from the store, so it loses nothing and never
//! blocks a producer. INTERNAL queues live in memory only; a watcher that falls behind skips
//! ahead and the skipped rows are counted as dropped.

mod buffer;
mod bus_log;
mod client_batch;
mod client_row;
pub mod every_org;
mod stats;
mod watcher;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use serde_json::{Map, Value};
use tokio::sync::broadcast;

use crate::store::{self, Store, StoredRow};
pub use every_org::OrgsWatcher;
pub use stats::{QueueStats, WatcherStats};
use talon_artifacts::{ArtifactKind, Repository};
pub use watcher::{Event, Watcher};

/// The default org.
pub use talon_core::ids::ROOT_ORG;
/// Default largest accepted row, in bytes of JSON.
pub const DEFAULT_MAX_ROW_BYTES: usize = 10 * 1024 * 1024;
/// Default number of batches a queue buffers in memory for its watchers.
pub const DEFAULT_BUFFER_BATCHES: usize = 1024;

/// Queue errors; each names what was wrong.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("unknown artifact {0}: no queue of that name")]
    UnknownQueue(String),
    #[error("queue {queue} is {kind}; {action}")]
    WrongKind {
        queue: String,
        kind: ArtifactKind,
        action: &'static str,
    },
    #[error("row {index}: invalid JSON: {message}")]
    InvalidJson { index: usize, message: String },
    #[error("row {index}: a row must be a JSON object, got {got}")]
    NotAnObject { index: usize, got: &'static str },
    #[error("row {index}: {size} bytes is over the row size limit of {limit} bytes")]
    RowTooLarge {
        index: usize,
        size: usize,
        limit: usize,
    },
    #[error("{queue}: {source}")]
    InQueue { queue: String, source: Box<Error> },
    #[error("invalid org {0:?}: use letters, digits, '_', '-' and '.'")]
    InvalidOrg(String),
    #[error("batch id {id} cannot be right: {reason}")]
    InvalidBatch { id: u64, reason: &'static str },
    #[error(transparent)]
    Store(#[from] store::Error),
    #[error(transparent)]
    Bus(#[from] crate::bus::Error),
}

/// A row as pushed: a JSON object.
pub type JsonRow = Map<String, Value>;
pub use client_batch::{BatchName, MAX_BATCH_ID};
pub use client_row::ClientRow;

/// Result alias of the queue manager.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Limits of the queue manager.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_row_bytes: usize,
    /// Batches a queue holds in memory for its watchers at most...
    pub buffer_batches: usize,
    /// ...and bytes of rows (the newest batch is always held).
    pub buffer_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_row_bytes: DEFAULT_MAX_ROW_BYTES,
            buffer_batches: DEFAULT_BUFFER_BATCHES,
            buffer_bytes: DEFAULT_BUFFER_BYTES,
        }
    }
}

/// A watcher's entry in its queue's registry.
pub(crate) struct WatcherEntry {
    pub name: String,
    /// The next seq the watcher wants, updated as it reads.
    pub cursor: Arc<AtomicU64>,
}

pub use buffer::DEFAULT_BUFFER_BYTES;
use buffer::{Buffer, Published};

/// One (org, queue): its broadcast channel, cursor head and counters.
pub(crate) struct QueueState {
    pub org: String,
    pub name: String,
    pub kind: ArtifactKind,
    pub stream: String,
    tx: broadcast::Sender<Arc<Published>>,
    buffer: Buffer,
    /// Last published seq; held while publishing and while subscribing, so a new watcher's
    /// cursor and its receiver agree.
    head: Mutex<u64>,
    /// Serialises pushes so timestamps grow with seq; held only until the rows are queued.
    push_order: tokio::sync::Mutex<PushClock>,
    pub watchers: Mutex<BTreeMap<u64, WatcherEntry>>,
    pub next_watcher_id: AtomicU64,
    pub pushed: AtomicU64,
    pub dropped: AtomicU64,
    pub caught_up: AtomicU64,
    /// In a cluster: this node follows the queue's bus subject (durable queues).
    followed: std::sync::atomic::AtomicBool,
    /// In a cluster, for durable queues: (first local seq, stream seq, rows) of the latest
    /// batches delivered here, so a lagging watcher can re-read them from JetStream.
    index: Mutex<std::collections::VecDeque<(u64, u64, u64)>>,
    /// The queue manager's every-org watchers, offered each published batch.
    taps: Arc<every_org::Taps>,
}

/// Batches a durable queue's index remembers in a cluster.
pub const CLUSTER_INDEX_BATCHES: usize = 65_536;

#[derive(Default)]
struct PushClock {
    last_ts_us: i64,
    /// Next seq of an INTERNAL queue (durable seqs come from the store).
    next_internal: u64,
}

impl QueueState {
    /// Publishes rows that arrived from the bus, numbered after the last published seq.
    fn publish_next(&self, rows: Arc<Vec<StoredRow>>, stream_seq: Option<u64>) {
        let mut head = self.head.lock().expect("queue head");
        let first_seq = *head + 1;
        *head += rows.len() as u64;
        if let Some(seq) = stream_seq {
            let mut index = self.index.lock().expect("queue index");
            if index.len() == CLUSTER_INDEX_BATCHES {
                index.pop_front();
            }
            index.push_back((first_seq, seq, rows.len() as u64));
        }
        self.taps.offer(&self.org, &self.name, &rows);
        let _ = self.tx.send(self.buffer.wrap(first_seq, rows));
    }

    fn publish(&self, first_seq: u64, rows: Arc<Vec<StoredRow>>) {
        let mut head = self.head.lock().expect("queue head");
        *head = first_seq + rows.len() as u64 - 1;
        self.taps.offer(&self.org, &self.name, &rows);
        // An error only means nobody is watching.
        let _ = self.tx.send(self.buffer.wrap(first_seq, rows));
    }
}

/// The queue manager handle; cheap to clone.
#[derive(Clone)]
pub struct QueueManager {
    inner: Arc<Inner>,
}

struct Inner {
    repo: Repository,
    store: Store,
    limits: Limits,
    queues: RwLock<HashMap<(String, String), Arc<QueueState>>>,
    /// Where durable rows go, chosen at construction.
    log: Log,
    /// Numbers this node's durable pushes for their bus message ids.
    next_msg: AtomicU64,
    /// Watchers of INTERNAL queues in every org.
    taps: Arc<every_org::Taps>,
}

/// The durable log of a queue manager, chosen when it is built: the store (standalone), or
/// in a cluster the bus (pushes go to JetStream, watchers are fed from it) with the
/// shutdown node its delivery tasks run under.
enum Log {
    Store,
    /// Boxed: the bus handle is large and the store variant is the common one.
    Bus(Box<(crate::bus::Bus, talon_core::Shutdown)>),
}

/// The store stream of one org's queue.
pub fn stream_key(org: &str, queue: &str) -> String {
    format!("{org}\u{1f}{queue}")
}

/// Splits a store stream back into (org, queue).
pub fn split_stream_key(stream: &str) -> Option<(&str, &str)> {
    stream.split_once('\u{1f}')
}

/// Checks an org id.
pub fn validate_org(org: &str) -> Result<()> {
    if talon_core::ids::valid_org(org) {
        Ok(())
    } else {
        Err(Error::InvalidOrg(org.into()))
    }
}

/// Microseconds since the epoch.
pub fn now_us() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

impl QueueManager {
    /// A standalone queue manager: durable rows go to `store`.
    pub fn new(repo: Repository, store: Store, limits: Limits) -> Self {
        Self::with_log(repo, store, limits, Log::Store)
    }

    /// A cluster node's queue manager: durable rows go over `bus` to JetStream and local
    /// watchers are fed from the bus by tasks under `shutdown`. Returns once this node
    /// follows the bus's INTERNAL subjects. `store` still answers reads (on the master,
    /// where the persister fills it).
    pub async fn clustered(
        repo: Repository,
        store: Store,
        limits: Limits,
        bus: crate::bus::Bus,
        shutdown: talon_core::Shutdown,
    ) -> Result<Self> {
        let qm = Self::with_log(repo, store, limits, Log::Bus(Box::new((bus, shutdown))));
        qm.start_delivery().await?;
        Ok(qm)
    }

    fn with_log(repo: Repository, store: Store, limits: Limits, log: Log) -> Self {
        Self {
            inner: Arc::new(Inner {
                repo,
                store,
                limits,
                queues: RwLock::new(HashMap::new()),
                log,
                next_msg: AtomicU64::new(0),
                taps: Arc::default(),
            }),
        }
    }

    /// The limits in force.
    pub fn limits(&self) -> &Limits {
        &self.inner.limits
    }

    /// The kind of a queue, or an error naming the unknown artifact.
    pub fn kind(&self, queue: &str) -> Result<ArtifactKind> {
        self.inner
            .repo
            .queue_kind(queue)
            .ok_or_else(|| Error::UnknownQueue(queue.into()))
    }

    fn state(&self, org: &str, queue: &str) -> Result<Arc<QueueState>> {
        validate_org(org)?;
        let kind = self.kind(queue)?;
        let key = (org.to_string(), queue.to_string());
        if let Some(s) = self.inner.queues.read().expect("queues lock").get(&key) {
            if s.kind == kind {
                return Ok(s.clone());
            }
        }
        let mut map = self.inner.queues.write().expect("queues lock");
        if let Some(s) = map.get(&key) {
            if s.kind == kind {
                return Ok(s.clone());
            }
        }
        let stream = stream_key(org, queue);
        let head = if kind.is_durable() {
            self.inner.store.last_seq(&stream)?
        } else {
            0
        };
        let (tx, _) = broadcast::channel(self.inner.limits.buffer_batches.max(1));
        let state = Arc::new(QueueState {
            org: org.into(),
            name: queue.into(),
            kind,
            stream,
            tx,
            buffer: Buffer::new(self.inner.limits.buffer_bytes),
            head: Mutex::new(head),
            push_order: tokio::sync::Mutex::new(PushClock {
                last_ts_us: 0,
                next_internal: head + 1,
            }),
            watchers: Mutex::new(BTreeMap::new()),
            next_watcher_id: AtomicU64::new(0),
            pushed: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            caught_up: AtomicU64::new(0),
            followed: std::sync::atomic::AtomicBool::new(false),
            index: Mutex::new(std::collections::VecDeque::new()),
            taps: self.inner.taps.clone(),
        });
        map.insert(key, state.clone());
        Ok(state)
    }

    /// Parses rows given as JSON text, checking each is an object within the size limit.
    /// Nothing is pushed when any row is bad.
    pub fn parse_rows<S: AsRef<str>>(&self, rows: &[S]) -> Result<Vec<Map<String, Value>>> {
        rows.iter()
            .enumerate()
            .map(|(index, text)| {
                let text = text.as_ref();
                let limit = self.inner.limits.max_row_bytes;
                if text.len() > limit {
                    return Err(Error::RowTooLarge {
                        index,
                        size: text.len(),
                        limit,
                    });
                }
                parse_object(text, index)
            })
            .collect()
    }

    /// Pushes rows to a queue of an org as `source` (for client rows, `client` is the client
    /// id). `_ts` and `_Source` are added to each row. Returns once durable rows are committed.
    pub async fn push(
        &self,
        org: &str,
        queue: &str,
        rows: Vec<Map<String, Value>>,
        source: &str,
        client: &str,
    ) -> Result<u64> {
        self.push_as(org, queue, rows, source, client, None, &[])
            .await
    }

    /// Pushes part `part` (from 1) of the push called `push_id` to a durable queue: a part
    /// already stored under that push id is not stored again (it returns 0), so a push cut
    /// off midway can be sent again whole and stores each row once. The 16 newest push ids
    /// are remembered standalone; in a cluster, JetStream's duplicate window (20 minutes).
    pub async fn push_part(
        &self,
        org: &str,
        queue: &str,
        rows: Vec<Map<String, Value>>,
        source: &str,
        push_id: &str,
        part: u64,
    ) -> Result<u64> {
        if push_id.is_empty() || push_id.len() > 128 || part == 0 || part > MAX_BATCH_ID {
            return Err(Error::InvalidBatch {
                id: part,
                reason: "a push part needs a push id of 1 to 128 bytes and a part from 1",
            });
        }
        self.push_as(
            org,
            queue,
            rows,
            source,
            "",
            Some((PUSH_KEY_CLIENT, push_id, part)),
            &[],
        )
        .await
    }

    /// Pushes rows to a durable queue at most once per `(scope, id)`: pushed again with the
    /// same id, nothing is stored (it returns 0). Standalone the 16 newest ids of a scope
    /// are remembered; in a cluster, JetStream's duplicate window (20 minutes). A service
    /// that may repeat a push after a crash (the flow manager's completions) names it so.
    /// `clients` names the client each row belongs to (by index; none: server rows), so
    /// per-client reads find them.
    #[allow(clippy::too_many_arguments)]
    pub async fn push_once(
        &self,
        org: &str,
        queue: &str,
        rows: Vec<Map<String, Value>>,
        clients: &[String],
        source: &str,
        scope: &str,
        id: &str,
    ) -> Result<u64> {
        if id.is_empty() || id.len() > 128 || scope.is_empty() || scope.len() > 64 {
            return Err(Error::InvalidBatch {
                id: 0,
                reason: "a push needs an id of 1 to 128 bytes and a scope of 1 to 64",
            });
        }
        self.push_as(org, queue, rows, source, "", Some((scope, id, 1)), clients)
            .await
    }

    #[allow(clippy::too_many_arguments)]
    async fn push_as(
        &self,
        org: &str,
        queue: &str,
        rows: Vec<Map<String, Value>>,
        source: &str,
        client: &str,
        once: Option<(&str, &str, u64)>,
        row_clients: &[String],
    ) -> Result<u64> {
        let state = self.state(org, queue)?;
        if once.is_some() && !state.kind.is_durable() {
            return Err(Error::WrongKind {
                queue: queue.into(),
                kind: state.kind,
                action: "only durable queues take pushes with a push id",
            });
        }
        let n = rows.len() as u64;
        if n == 0 {
            return Ok(0);
        }
        // The limit is the row's; the stamps the server adds do not count against it.
        let limit = stamped_limit(self.inner.limits.max_row_bytes, source);
        // Rows are stamped and serialised before taking the queue's push lock, so producers
        // of one queue serialise in parallel; the lock only orders timestamps and seqs. A
        // clamp below can move the stored time later than `_ts` by microseconds, never more.
        let now = now_us();
        let ts_s = now.div_euclid(1_000_000);
        let mut stored = Vec::with_capacity(rows.len());
        let mut size_hint = 256;
        for (index, row) in rows.iter().enumerate() {
            let json = stamp(row, ts_s, source, size_hint);
            if json.len() > limit {
                return Err(Error::RowTooLarge {
                    index,
                    size: json.len(),
                    limit,
                });
            }
            size_hint = json.len() + 16;
            let client = row_clients.get(index).map_or(client, String::as_str);
            stored.push(StoredRow {
                ts_us: now,
                client: client.to_string(),
                json,
            });
        }
        drop(rows);
        let mut clock = state.push_order.lock().await;
        let ts_us = now.max(clock.last_ts_us);
        clock.last_ts_us = ts_us;
        if ts_us != now {
            for r in &mut stored {
                r.ts_us = ts_us;
            }
        }
        let rows = Arc::new(stored);
        if let Some(bus) = self.bus() {
            self.push_over_bus(bus, &state, rows, clock, once).await?;
        } else if let Some((scope, push_id, part)) = once {
            // Stored with the part's dedup mark in one transaction, as a client's batch is.
            let publisher = state.clone();
            let published = rows.clone();
            let done = self
                .inner
                .store
                .enqueue_client_batch(
                    store::client_batch_key(org, scope, push_key(push_id)),
                    part,
                    vec![(state.stream.clone(), rows)],
                    vec![Box::new(move |first| publisher.publish(first, published))],
                )
                .await?;
            drop(clock);
            if !done.await.map_err(|_| store::Error::Closed)?? {
                return Ok(0);
            }
        } else if state.kind.is_durable() {
            let publisher = state.clone();
            let published = rows.clone();
            let done = self
                .inner
                .store
                .enqueue_append(
                    state.stream.clone(),
                    rows,
                    Box::new(move |first| publisher.publish(first, published)),
                )
                .await?;
            drop(clock);
            done.await.map_err(|_| store::Error::Closed)??;
        } else {
            let first = clock.next_internal;
            clock.next_internal += n;
            state.publish(first, rows);
        }
        state.pushed.fetch_add(n, Ordering::Relaxed);
        Ok(n)
    }

    /// Watches a queue from now on. `name` identifies the watcher on debug pages. In a
    /// cluster it returns once this node follows the queue on the bus, so the watcher sees
    /// every row pushed after `watch` returns.
    pub async fn watch(&self, org: &str, queue: &str, name: &str) -> Result<Watcher> {
        let state = self.state(org, queue)?;
        // A lagging watcher of a durable queue re-reads what it missed: from the store, or
        // in a cluster (where rows arrive with node-local seqs) from JetStream.
        self.follow_durable(&state).await?;
        let source = match (state.kind.is_durable(), self.bus()) {
            (false, _) => watcher::CatchUp::None,
            (true, None) => watcher::CatchUp::Store(self.inner.store.clone()),
            (true, Some(bus)) => watcher::CatchUp::Bus(Box::new(bus.clone())),
        };
        Ok(Watcher::new(state, source, name))
    }

    /// Watches an INTERNAL queue in every org, from now on (see [`every_org`]).
    pub fn watch_every_org(&self, queue: &str, name: &str) -> Result<OrgsWatcher> {
        let kind = self.kind(queue)?;
        if kind.is_durable() {
            return Err(Error::WrongKind {
                queue: queue.into(),
                kind,
                action: "only INTERNAL queues can be watched in every org",
            });
        }
        Ok(self.inner.taps.watch(queue, name))
    }

    /// Rows the every-org watchers of a queue skipped because they fell behind.
    pub fn every_org_dropped(&self, queue: &str) -> u64 {
        self.inner.taps.dropped(queue)
    }

    /// Checks that a queue of an org exists and keeps its rows.
    pub fn check_stored(&self, org: &str, queue: &str) -> Result<()> {
        validate_org(org)?;
        let kind = self.kind(queue)?;
        if !kind.is_durable() {
            return Err(Error::WrongKind {
                queue: queue.into(),
                kind,
                action: "its rows are not stored, watch it instead",
            });
        }
        Ok(())
    }

    /// Visits stored rows of a durable queue with `start_us <= ts <= end_us`, oldest first.
    /// Runs on the blocking pool; `visit` returns false to stop.
    pub async fn read(
        &self,
        org: &str,
        queue: &str,
        client: Option<String>,
        start_us: i64,
        end_us: i64,
        visit: impl FnMut(u64, StoredRow) -> bool + Send + 'static,
    ) -> Result<()> {
        self.check_stored(org, queue)?;
        let store = self.inner.store.clone();
        let stream = stream_key(org, queue);
        tokio::task::spawn_blocking(move || {
            store.read_time(&stream, start_us, end_us, client.as_deref(), visit)
        })
        .await
        .expect("store read task")?;
        Ok(())
    }

    /// Deletes stored rows older than each queue's retention; `days_for(queue)` gives the
    /// retention in days, 0 keeping rows forever. Returns the number of rows deleted.
    pub async fn apply_retention(
        &self,
        now_us: i64,
        days_for: impl Fn(&str) -> u32,
    ) -> Result<u64> {
        let store = self.inner.store.clone();
        let streams = tokio::task::spawn_blocking(move || store.streams())
            .await
            .expect("store streams task")?;
        let mut deleted = 0;
        for (stream, _) in streams {
            let Some((_, queue)) = split_stream_key(&stream) else {
                continue;
            };
            let days = days_for(queue);
            if days == 0 {
                continue;
            }
            let cutoff = now_us - i64::from(days) * 86_400 * 1_000_000;
            deleted += self.inner.store.purge(stream.clone(), cutoff).await?;
        }
        Ok(deleted)
    }
}

/// Serialises a row with `_ts` and `_Source` set, structurally: the row's own entries of
/// those names are replaced, never duplicated, and no text is spliced.
pub(crate) fn stamp(row: &Map<String, Value>, ts_s: i64, source: &str, size_hint: usize) -> String {
    use serde::ser::{SerializeMap, Serializer};
    let mut out = Vec::with_capacity(size_hint);
    let mut ser = serde_json::Serializer::new(&mut out);
    let result = (|| {
        let mut map = ser.serialize_map(None)?;
        for (k, v) in row {
            if k != "_ts" && k != "_Source" {
                map.serialize_entry(k, v)?;
            }
        }
        map.serialize_entry("_ts", &ts_s)?;
        map.serialize_entry("_Source", source)?;
        map.end()
    })();
    result.expect("a JSON map always serialises");
    String::from_utf8(out).expect("serde_json writes UTF-8")
}

/// Pushes with a push id are deduplicated like a client's batches, under this name (no
/// client id looks like it) and a hash of the push id.
const PUSH_KEY_CLIENT: &str = "push";

/// FNV-1a of the push id: the same number in every process and release.
fn push_key(push_id: &str) -> u64 {
    push_id.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The size a row of `limit` bytes may reach once stamped with `_ts`, `_Source` and (for
/// client rows) `ClientId` naming `source`: a row of exactly the limit is accepted.
pub(crate) fn stamped_limit(limit: usize, source: &str) -> usize {
    // `,"_ts":-9223372036854775808,"_Source":"...","ClientId":"..."`, every character of
    // the source escaped at worst as \uXXXX.
    limit + 96 + 12 * source.len()
}

/// Deepest nesting of arrays and objects a row may have, from the API and from clients
/// alike (what serde_json's recursion limit lets through).
pub const MAX_JSON_DEPTH: usize = 127;

/// Refuses a row nested deeper than [`MAX_JSON_DEPTH`], scanning the text once (outside
/// strings), so no parser has to recurse that deep first.
pub(crate) fn check_depth(text: &str, index: usize) -> Result<()> {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for b in text.bytes() {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'{' | b'[' => {
                depth += 1;
                if depth > MAX_JSON_DEPTH {
                    return Err(Error::InvalidJson {
                        index,
                        message: format!("nested deeper than {MAX_JSON_DEPTH} levels"),
                    });
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

/// Row `index` parsed as a JSON object, or why it is not one.
fn parse_object(text: &str, index: usize) -> Result<JsonRow> {
    check_depth(text, index)?;
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(other) => Err(Error::NotAnObject {
            index,
            got: json_type(&other),
        }),
        Err(e) => Err(Error::InvalidJson {
            index,
            message: e.to_string(),
        }),
    }
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests;
