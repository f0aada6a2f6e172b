//! The master's redb store: event rows keyed for ordered and time-range reads, and user
//! artifacts. All writes go through one writer thread that group-commits whatever is queued,
//! so a push costs one fsync per group, never one per row.
//!
//! Event rows live in blocks of consecutive rows ([`block`]), one entry per block keyed by
//! `(stream, first seq)`, where a stream is one org's queue and `seq` is dense per stream
//! (1, 2, 3 ...). Timestamps never go backwards inside a stream, so a time range is found by
//! binary search over blocks and read in order.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;

use redb::{Database, ReadableTable, TableDefinition};

mod block;
mod writer;
use tokio::sync::{mpsc, oneshot};
use writer::Writer;

/// Blocks of event rows by (stream, first seq).
const EVENT_BLOCKS: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("event_blocks");
/// Event rows one per entry, as stores made before blocks hold them; moved into blocks when
/// such a store is opened.
const EVENTS: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("events");
const ARTIFACTS: TableDefinition<&str, &str> = TableDefinition::new("artifacts");
/// Last seq ever assigned per stream, so seqs never restart even when retention empties one.
const HEADS: TableDefinition<&str, u64> = TableDefinition::new("heads");
/// The last event batch applied per client spool incarnation (a [`client_batch_key`]),
/// written in the same transaction as the batch's rows, so a resent batch is never stored
/// twice.
const CLIENT_BATCHES: TableDefinition<&str, u64> = TableDefinition::new("client_batches");
/// When each client spool incarnation (a [`client_batch_key`]) was first seen (unix
/// microseconds): a client keeps at most [`MAX_INCARNATIONS`], the oldest forgotten first.
const CLIENT_INCARNATIONS: TableDefinition<&str, i64> = TableDefinition::new("client_incarnations");
/// Small settings by (namespace, key): monitoring tables, server metadata.
const SETTINGS: TableDefinition<(&str, &str), &str> = TableDefinition::new("settings");
/// Cluster: the last JetStream stream seq the persister applied (key `persister`),
/// committed with the rows it covers, so a replay after a crash applies nothing twice.
const BUS_APPLIED: TableDefinition<&str, u64> = TableDefinition::new("bus_applied");
/// Cluster: the last (batch id, part) applied per client key, parts of a batch in order.
const CLIENT_PARTS: TableDefinition<&str, (u64, u32)> = TableDefinition::new("client_parts");
/// When each alert name of an org last fired (unix microseconds), for alert() dedup.
const ALERTS: TableDefinition<(&str, &str), i64> = TableDefinition::new("alert_dedup");

/// Spool incarnations remembered per client. A client picks a new one each time it starts,
/// and resends only batches of the incarnations whose batches it still holds; a batch of a
/// forgotten incarnation would be stored again (a duplicate, never a loss).
pub const MAX_INCARNATIONS: usize = 16;

/// The deduplication key of a client's spool incarnation: `org \x1f client \x1f incarnation`.
pub fn client_batch_key(org: &str, client: &str, incarnation: u64) -> String {
    format!("{org}\u{1f}{client}\u{1f}{incarnation:016x}")
}

/// Default page cache of the store.
pub const DEFAULT_CACHE_BYTES: usize = 128 * 1024 * 1024;

/// Pending write requests the writer thread holds at most; producers wait beyond that.
pub const WRITE_QUEUE_DEPTH: usize = 1024;
/// Rows one group commit takes at most before committing.
pub const MAX_GROUP_ROWS: usize = 200_000;

/// Store errors.
/// Store errors; cloneable, so every request of a failed group commit gets the error,
/// sources kept.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    #[error("store {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: std::sync::Arc<redb::DatabaseError>,
    },
    #[error("store: {0}")]
    Redb(#[source] std::sync::Arc<redb::Error>),
    #[error("store is shut down")]
    Closed,
    #[error("stored row {stream}#{seq} is corrupt")]
    Corrupt { stream: String, seq: u64 },
}

/// Result alias of the store.
pub type Result<T, E = Error> = std::result::Result<T, E>;

macro_rules! redb_err {
    ($($t:ty),*) => {$(
        impl From<$t> for Error {
            fn from(e: $t) -> Self {
                Error::Redb(std::sync::Arc::new(redb::Error::from(e)))
            }
        }
    )*};
}
redb_err!(
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

/// One setting written by a [`Store::transaction`]: (namespace, key, value or None to
/// delete).
pub type SettingWrite = (String, String, Option<String>);

/// One stored event row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRow {
    /// Server time the row was accepted, microseconds since the epoch.
    pub ts_us: i64,
    /// The client the row belongs to; empty for server rows.
    pub client: String,
    /// The row as a JSON object.
    pub json: String,
}

impl StoredRow {
    /// Bytes of the row's encoding.
    fn encoded_len(&self) -> usize {
        10 + self.client.len() + self.json.len()
    }

    /// Appends the row's encoding, with `ts_us` as its time: as a block holds each row,
    /// and as a store made before blocks held it.
    fn encode_at(&self, ts_us: i64, out: &mut Vec<u8>) {
        out.extend_from_slice(&ts_us.to_le_bytes());
        out.extend_from_slice(&(self.client.len() as u16).to_le_bytes());
        out.extend_from_slice(self.client.as_bytes());
        out.extend_from_slice(self.json.as_bytes());
    }

    fn decode(b: &[u8]) -> Option<Self> {
        let ts_us = i64::from_le_bytes(b.get(0..8)?.try_into().ok()?);
        let n = u16::from_le_bytes(b.get(8..10)?.try_into().ok()?) as usize;
        let client = std::str::from_utf8(b.get(10..10 + n)?).ok()?.to_string();
        let json = std::str::from_utf8(b.get(10 + n..)?).ok()?.to_string();
        Some(Self {
            ts_us,
            client,
            json,
        })
    }
}

/// Called on the writer thread right after the commit that made a batch durable, in commit
/// order, with the first sequence number of the batch.
pub type OnCommit = Box<dyn FnOnce(u64) + Send>;

enum Command {
    Append {
        stream: String,
        rows: Arc<Vec<StoredRow>>,
        on_commit: OnCommit,
        reply: oneshot::Sender<Result<u64>>,
    },
    PutArtifact {
        name: String,
        yaml: String,
        reply: oneshot::Sender<Result<()>>,
    },
    DeleteArtifact {
        name: String,
        reply: oneshot::Sender<Result<bool>>,
    },
    Purge {
        stream: String,
        before_us: i64,
        reply: oneshot::Sender<Result<u64>>,
    },
    Shutdown {
        reply: oneshot::Sender<()>,
    },
    AppendBatch {
        appends: Vec<(String, Arc<Vec<StoredRow>>)>,
        on_commit: Vec<OnCommit>,
        /// (`org \x1f client`, batch id)
        dedup: (String, u64),
        reply: oneshot::Sender<Result<bool>>,
    },
    SetSetting {
        namespace: String,
        key: String,
        /// None deletes.
        value: Option<String>,
        reply: oneshot::Sender<Result<bool>>,
    },
    /// Rows appended and settings written (None deletes) in one transaction.
    Transaction {
        appends: Vec<(String, Vec<StoredRow>)>,
        settings: Vec<SettingWrite>,
        reply: oneshot::Sender<Result<bool>>,
    },
    ApplyBus {
        /// The JetStream stream seq of the message.
        seq: u64,
        appends: Vec<(String, Vec<StoredRow>)>,
        /// (`org \x1f client`, batch id, part) of a client batch.
        client: Option<(String, u64, u32)>,
        reply: oneshot::Sender<Result<bool>>,
    },
    AlertDedup {
        org: String,
        name: String,
        now_us: i64,
        window_us: i64,
        reply: oneshot::Sender<Result<bool>>,
    },
}

/// A cheap handle on the store; clones share one database and one writer thread.
#[derive(Clone)]
pub struct Store {
    db: Arc<Database>,
    tx: mpsc::Sender<Command>,
    writer: Arc<std::sync::Mutex<Option<JoinHandle<()>>>>,
}

impl Store {
    /// Opens (or creates) the store at `path` and starts its writer thread.
    pub fn open(path: &Path) -> Result<Self> {
        Self::open_with_cache(path, DEFAULT_CACHE_BYTES)
    }

    /// Opens (creating) the store at `path` with a page cache of `cache_bytes` (redb's own
    /// default, 1 GiB, is what a long read would otherwise grow the process by).
    pub fn open_with_cache(path: &Path, cache_bytes: usize) -> Result<Self> {
        let db = Database::builder()
            .set_cache_size(cache_bytes)
            .create(path)
            .map_err(|source| Error::Open {
                path: path.to_path_buf(),
                source: std::sync::Arc::new(source),
            })?;
        {
            let w = db.begin_write()?;
            w.open_table(EVENT_BLOCKS)?;
            let moved = block::move_rows_into_blocks(&w)?;
            if moved > 0 {
                tracing::info!(
                    rows = moved,
                    "moved event rows of an older store into blocks"
                );
            }
            w.open_table(ARTIFACTS)?;
            w.open_table(HEADS)?;
            w.open_table(ALERTS)?;
            w.open_table(SETTINGS)?;
            w.open_table(CLIENT_BATCHES)?;
            w.open_table(CLIENT_INCARNATIONS)?;
            w.open_table(BUS_APPLIED)?;
            w.open_table(CLIENT_PARTS)?;
            w.commit()?;
        }
        let db = Arc::new(db);
        let (tx, rx) = mpsc::channel(WRITE_QUEUE_DEPTH);
        let writer_db = db.clone();
        let handle = std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || Writer::new(writer_db).run(rx))
            .expect("spawn store writer thread");
        Ok(Self {
            db,
            tx,
            writer: Arc::new(std::sync::Mutex::new(Some(handle))),
        })
    }

    /// Queues rows for appending to a stream. Requests are committed in the order they are
    /// queued; the returned receiver resolves once the rows are durable, with their first seq.
    pub async fn enqueue_append(
        &self,
        stream: String,
        rows: Arc<Vec<StoredRow>>,
        on_commit: OnCommit,
    ) -> Result<oneshot::Receiver<Result<u64>>> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::Append {
                stream,
                rows,
                on_commit,
                reply,
            })
            .await
            .map_err(|_| Error::Closed)?;
        Ok(rx)
    }

    /// Sends a command built around a reply channel and waits for the writer's answer.
    async fn request<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T>>) -> Command,
    ) -> Result<T> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(make(reply)).await.map_err(|_| Error::Closed)?;
        rx.await.map_err(|_| Error::Closed)?
    }

    /// Appends a client's event batch to several streams in one transaction, unless a batch
    /// with this id (or a later one) of this client spool incarnation (a
    /// [`client_batch_key`]) was applied already. Resolves once
    /// durable: true when applied now, false when it had been applied before. Each
    /// `on_commit` runs with its stream's first seq, in commit order.
    pub async fn enqueue_client_batch(
        &self,
        client_key: String,
        batch_id: u64,
        appends: Vec<(String, Arc<Vec<StoredRow>>)>,
        on_commit: Vec<OnCommit>,
    ) -> Result<oneshot::Receiver<Result<bool>>> {
        let (reply, rx) = oneshot::channel();
        let cmd = Command::AppendBatch {
            appends,
            on_commit,
            dedup: (client_key, batch_id),
            reply,
        };
        self.tx.send(cmd).await.map_err(|_| Error::Closed)?;
        Ok(rx)
    }

    /// Queues a message of the cluster's durable stream for applying: its rows are
    /// appended (timestamps clamped so they never go back within a stream) in the same
    /// transaction that records `seq` as applied. Resolves once durable: false when `seq`
    /// or this client batch part was applied before.
    pub async fn enqueue_bus(
        &self,
        seq: u64,
        appends: Vec<(String, Vec<StoredRow>)>,
        client: Option<(String, u64, u32)>,
    ) -> Result<oneshot::Receiver<Result<bool>>> {
        let (reply, rx) = oneshot::channel();
        let cmd = Command::ApplyBus {
            seq,
            appends,
            client,
            reply,
        };
        self.tx.send(cmd).await.map_err(|_| Error::Closed)?;
        Ok(rx)
    }

    /// The last stream seq the persister applied, 0 when none.
    pub fn bus_applied(&self) -> Result<u64> {
        let r = self.db.begin_read()?;
        let t = r.open_table(BUS_APPLIED)?;
        Ok(t.get("persister")?.map(|v| v.value()).unwrap_or(0))
    }

    /// The last batch id applied for a [`client_batch_key`], 0 when none.
    pub fn last_client_batch(&self, client_key: &str) -> Result<u64> {
        let r = self.db.begin_read()?;
        let t = r.open_table(CLIENT_BATCHES)?;
        Ok(t.get(client_key)?.map(|v| v.value()).unwrap_or(0))
    }

    /// Appends rows and waits until they are durable; returns the first new seq.
    pub async fn append(&self, stream: String, rows: Vec<StoredRow>) -> Result<u64> {
        let rx = self
            .enqueue_append(stream, Arc::new(rows), Box::new(|_| {}))
            .await?;
        rx.await.map_err(|_| Error::Closed)?
    }

    /// Stores a user artifact's YAML.
    pub async fn put_artifact(&self, name: &str, yaml: &str) -> Result<()> {
        self.request(|reply| Command::PutArtifact {
            name: name.into(),
            yaml: yaml.into(),
            reply,
        })
        .await
    }

    /// Deletes a user artifact; false when it was not stored.
    pub async fn delete_artifact(&self, name: &str) -> Result<bool> {
        self.request(|reply| Command::DeleteArtifact {
            name: name.into(),
            reply,
        })
        .await
    }

    /// Deletes the rows of a stream older than `before_us`; returns how many went.
    pub async fn purge(&self, stream: String, before_us: i64) -> Result<u64> {
        self.request(|reply| Command::Purge {
            stream,
            before_us,
            reply,
        })
        .await
    }

    /// Whether an alert of `name` may fire at `now_us` given a dedup window: true (and the
    /// time recorded, durably) when it last fired longer ago than the window or never.
    pub async fn alert_allowed(
        &self,
        org: &str,
        name: &str,
        now_us: i64,
        window_us: i64,
    ) -> Result<bool> {
        self.request(|reply| Command::AlertDedup {
            org: org.into(),
            name: name.into(),
            now_us,
            window_us,
            reply,
        })
        .await
    }

    /// Sets (or with None, deletes) a setting; true when something changed.
    pub async fn set_setting(
        &self,
        namespace: &str,
        key: &str,
        value: Option<&str>,
    ) -> Result<bool> {
        self.request(|reply| Command::SetSetting {
            namespace: namespace.into(),
            key: key.into(),
            value: value.map(str::to_string),
            reply,
        })
        .await
    }

    /// Appends rows to streams and writes settings in one transaction: all of it is
    /// durable, or none.
    pub async fn transaction(
        &self,
        appends: Vec<(String, Vec<StoredRow>)>,
        settings: Vec<SettingWrite>,
    ) -> Result<()> {
        self.request(|reply| Command::Transaction {
            appends,
            settings,
            reply,
        })
        .await
        .map(|_| ())
    }

    /// The settings of a namespace whose keys start with `prefix`, sorted by key.
    pub fn settings_with_prefix(
        &self,
        namespace: &str,
        prefix: &str,
    ) -> Result<Vec<(String, String)>> {
        let r = self.db.begin_read()?;
        let t = r.open_table(SETTINGS)?;
        let mut out = Vec::new();
        for item in t.range((namespace, prefix)..)? {
            let (k, v) = item?;
            let (ns, key) = k.value();
            if ns != namespace || !key.starts_with(prefix) {
                break;
            }
            out.push((key.to_string(), v.value().to_string()));
        }
        Ok(out)
    }

    /// One setting.
    pub fn setting(&self, namespace: &str, key: &str) -> Result<Option<String>> {
        let r = self.db.begin_read()?;
        let t = r.open_table(SETTINGS)?;
        Ok(t.get((namespace, key))?.map(|v| v.value().to_string()))
    }

    /// Settings namespaces starting with `prefix`, with the prefix removed. Skips from
    /// one namespace to the next, so a namespace of many keys (10 000 client records)
    /// costs one step, not one per key.
    pub fn namespaces_with_prefix(&self, prefix: &str) -> Result<Vec<String>> {
        let r = self.db.begin_read()?;
        let t = r.open_table(SETTINGS)?;
        let mut out: Vec<String> = Vec::new();
        let mut from = prefix.to_string();
        loop {
            let Some(item) = t.range((from.as_str(), "")..)?.next() else {
                break;
            };
            let (k, _) = item?;
            let ns = k.value().0.to_string();
            let Some(rest) = ns.strip_prefix(prefix) else {
                break;
            };
            out.push(rest.to_string());
            // Every key of `ns` sorts before (ns + NUL, "").
            from = format!("{ns}\u{0}");
        }
        Ok(out)
    }

    /// Every setting of a namespace as (key, value), sorted by key.
    pub fn settings(&self, namespace: &str) -> Result<Vec<(String, String)>> {
        let r = self.db.begin_read()?;
        let t = r.open_table(SETTINGS)?;
        let mut out = Vec::new();
        for item in t.range((namespace, "")..)? {
            let (k, v) = item?;
            let (ns, key) = k.value();
            if ns != namespace {
                break;
            }
            out.push((key.to_string(), v.value().to_string()));
        }
        Ok(out)
    }

    /// Every stored user artifact as (name, yaml).
    pub fn artifacts(&self) -> Result<Vec<(String, String)>> {
        let r = self.db.begin_read()?;
        let t = r.open_table(ARTIFACTS)?;
        let mut out = Vec::new();
        for item in t.iter()? {
            let (k, v) = item?;
            out.push((k.value().to_string(), v.value().to_string()));
        }
        Ok(out)
    }

    /// Every stream that holds rows, with its row count.
    pub fn streams(&self) -> Result<Vec<(String, u64)>> {
        let r = self.db.begin_read()?;
        let t = r.open_table(EVENT_BLOCKS)?;
        let mut out: Vec<(String, u64)> = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let next = match &cursor {
                None => t.first()?,
                Some(s) => t
                    .range((s.as_str(), u64::MAX)..)?
                    .find(|r| {
                        r.as_ref()
                            .map(|(k, _)| k.value().0 != s.as_str())
                            .unwrap_or(true)
                    })
                    .transpose()?,
            };
            let Some((k, _)) = next else { break };
            let stream = k.value().0.to_string();
            let (first, last) = block::bounds(&t, &stream)?.unwrap_or((0, 0));
            out.push((stream.clone(), last + 1 - first));
            cursor = Some(stream);
        }
        Ok(out)
    }

    /// The last committed seq of a stream, 0 when it has none.
    pub fn last_seq(&self, stream: &str) -> Result<u64> {
        let r = self.db.begin_read()?;
        let t = r.open_table(HEADS)?;
        Ok(t.get(stream)?.map(|v| v.value()).unwrap_or(0))
    }

    /// Rows of a stream with `from <= seq < to`, at most `limit`, in order.
    pub fn read_seq(
        &self,
        stream: &str,
        from: u64,
        to: u64,
        limit: usize,
    ) -> Result<Vec<(u64, StoredRow)>> {
        let r = self.db.begin_read()?;
        let t = r.open_table(EVENT_BLOCKS)?;
        let mut out = Vec::new();
        if from >= to || limit == 0 {
            return Ok(out);
        }
        let start = block::holding(&t, stream, from)?.map_or(from, |(first, _, _)| first);
        for item in t.range((stream, start)..(stream, to))? {
            let (k, v) = item?;
            let first = k.value().1;
            for (i, row) in block::decode(stream, first, v.value())?
                .into_iter()
                .enumerate()
            {
                let seq = first + i as u64;
                if seq < from {
                    continue;
                }
                if seq >= to {
                    return Ok(out);
                }
                out.push((seq, row));
                if out.len() >= limit {
                    return Ok(out);
                }
            }
        }
        Ok(out)
    }

    /// Visits the rows of a stream with `start_us <= ts <= end_us` (and of `client`, when
    /// given) in order; the visitor returns false to stop.
    pub fn read_time(
        &self,
        stream: &str,
        start_us: i64,
        end_us: i64,
        client: Option<&str>,
        mut visit: impl FnMut(u64, StoredRow) -> bool,
    ) -> Result<()> {
        let r = self.db.begin_read()?;
        let t = r.open_table(EVENT_BLOCKS)?;
        let Some((first, last)) = block::bounds(&t, stream)? else {
            return Ok(());
        };
        // The first block whose last row is at or after start_us (ts is non-decreasing).
        let (mut lo, mut hi, mut start) = (first, last + 1, None);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match block::holding(&t, stream, mid)? {
                Some((block_first, count, last_ts)) if last_ts < start_us => {
                    lo = block_first + count;
                }
                Some((block_first, _, _)) => {
                    start = Some(block_first);
                    hi = block_first;
                }
                None => lo = mid + 1,
            }
        }
        let Some(start) = start else {
            return Ok(());
        };
        for item in t.range((stream, start)..=(stream, last))? {
            let (k, v) = item?;
            let first = k.value().1;
            for (i, row) in block::decode(stream, first, v.value())?
                .into_iter()
                .enumerate()
            {
                if row.ts_us < start_us {
                    continue;
                }
                if row.ts_us > end_us {
                    return Ok(());
                }
                if client.is_some_and(|c| c != row.client) {
                    continue;
                }
                if !visit(first + i as u64, row) {
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    /// Commits everything queued before this call, then stops the writer; later writes fail
    /// with [`Error::Closed`]. Safe to call more than once.
    pub async fn close(&self) {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Command::Shutdown { reply }).await.is_ok() {
            let _ = rx.await;
        }
        let handle = self.writer.lock().expect("writer lock").take();
        if let Some(h) = handle {
            let _ = tokio::task::spawn_blocking(move || h.join()).await;
        }
    }
}

#[cfg(test)]
mod tests;
