//! The NATS bus between cluster nodes. Durable batches go to one JetStream stream and a
//! push succeeds only once JetStream has acknowledged every part; INTERNAL batches go to
//! core NATS. Every node subscribes to the row subjects and hands batches to its local
//! watchers, so a row travels producer -> NATS -> each node in one hop.
//!
//! Subjects: `talon.<org>.d.@<node>.<Queue>` (durable, in stream [`STREAM`]) and
//! `talon.<org>.i.@<node>.<Queue>` (INTERNAL), naming the node that sent the rows (so NATS
//! permissions can bind a node's user to its name, and receivers check the payload's node
//! against it); cluster control on `talonctl.>`.

use std::time::Duration;

use async_nats::jetstream;
use prost::Message;
use talon_proto::bus::{BusBatch, BusRow, QueueRows};

use crate::store::StoredRow;

mod connect;
pub mod control;
pub use connect::redact;
pub use control::{AskError, Exchange, ServeError};

/// The JetStream stream holding every durable row of the cluster.
pub const STREAM: &str = "TALON_EVENTS";
/// Subjects the stream captures.
pub const DURABLE_SUBJECTS: &str = "talon.*.d.>";
/// INTERNAL subjects every node follows for its watchers (durable queues are followed one
/// by one, once a local watcher needs them).
pub const INTERNAL_SUBJECTS: &str = "talon.*.i.>";
/// Largest payload of one bus message; NATS's default maximum is 1 MiB.
pub const MAX_PAYLOAD_BYTES: usize = 256 * 1024;
/// How long JetStream remembers message ids, so a retried publish is stored once.
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(20 * 60);
/// How long the stream keeps a row: the master must store it within this time (the store
/// keeps rows as long as retention says).
pub const STREAM_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);
/// How long a durable publish waits for JetStream's ack.
pub const PUBLISH_TIMEOUT: Duration = Duration::from_secs(10);

/// The error a NATS call failed with, kept as the source.
pub type Source = Box<dyn std::error::Error + Send + Sync>;

/// Bus errors; each keeps the NATS error it came from.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot connect to NATS at {url}: {source}")]
    Connect {
        url: String,
        #[source]
        source: async_nats::ConnectError,
    },
    #[error("NATS publish failed: {0}")]
    Publish(#[source] Source),
    #[error("JetStream did not acknowledge within {0:?}")]
    Timeout(Duration),
    #[error("JetStream {what}: {source}")]
    JetStream {
        what: &'static str,
        #[source]
        source: Source,
    },
    #[error("NATS is unreachable; nothing was sent")]
    Unreachable,
}

impl Error {
    fn js(what: &'static str, e: impl std::error::Error + Send + Sync + 'static) -> Self {
        Error::JetStream {
            what,
            source: Box::new(e),
        }
    }
}

/// Bus result.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The subject of a queue's rows from node `node`: `talon.<org>.<d|i>.@<node>.<Queue>` (a
/// '.' of the org name becomes '~', which org names never hold, so the org stays one
/// token). The node token lets NATS permissions bind a node's user to its name: a node may
/// publish only on its own subjects, and receivers drop a batch whose payload names
/// another node than its subject.
pub fn subject(org: &str, durable: bool, node: &str, queue: &str) -> String {
    let org = org.replace('.', "~");
    format!(
        "talon.{org}.{}.@{node}.{queue}",
        if durable { 'd' } else { 'i' }
    )
}

/// Every node's subject of a queue, for following it.
pub fn queue_subjects(org: &str, durable: bool, queue: &str) -> String {
    let org = org.replace('.', "~");
    format!("talon.{org}.{}.*.{queue}", if durable { 'd' } else { 'i' })
}

/// Whether a batch naming `node` may have come on `subject`: its node token is `@node`.
/// A subject without a node token (published before subjects named nodes) is taken as it
/// is; NATS permissions of a deployment keep minions from publishing such subjects.
pub fn sender_matches(subject: &str, node: &str) -> bool {
    match subject.split('.').nth(3).and_then(|t| t.strip_prefix('@')) {
        Some(token) => token == node,
        None => true,
    }
}

pub use talon_core::ids::valid_node;

/// A message taken off the bus that is not a batch it may carry.
#[derive(Debug, thiserror::Error)]
pub enum BadBatch {
    #[error("undecodable bus batch: {0}")]
    Undecodable(#[from] prost::DecodeError),
    #[error("a bus batch claiming node {node} on {subject}, another node's subject")]
    WrongSender { subject: String, node: String },
}

/// The batch of a message that came on `subject`: decoded, and refused when its payload
/// names another node than its subject ([`sender_matches`]). Every receiver (watchers,
/// catch-up reads, the persister) takes batches through this.
pub fn decode_batch(subject: &str, payload: prost::bytes::Bytes) -> Result<BusBatch, BadBatch> {
    let batch = BusBatch::decode(payload)?;
    if !sender_matches(subject, &batch.node) {
        return Err(BadBatch::WrongSender {
            subject: subject.to_string(),
            node: batch.node,
        });
    }
    Ok(batch)
}

/// A row as it travels on the bus, back into a stored row.
pub fn stored_row(r: BusRow) -> StoredRow {
    StoredRow {
        ts_us: r.ts_us,
        client: r.client,
        json: r.json,
    }
}

/// A connection to the bus; cheap to clone.
#[derive(Clone)]
pub struct Bus {
    client: async_nats::Client,
    /// A second connection for what watchers receive, so that a node too slow for its
    /// watchers' traffic (which NATS cuts off) never disturbs publishing or persisting.
    feed: async_nats::Client,
    js: jetstream::Context,
    /// JetStream over the feed connection, for the consumers that feed watchers.
    feed_js: jetstream::Context,
    node: String,
}

impl Bus {
    /// Connects (retrying in the background until NATS is reachable) and makes sure the
    /// durable stream exists.
    pub async fn connect(
        url: &str,
        node: &str,
        auth: &talon_core::deploy::NatsAuth,
    ) -> Result<Self> {
        let client = connect::connect_with_retry(url, node.to_string(), auth).await;
        let feed = connect::connect_with_retry(url, format!("{node}-feed"), auth).await;
        let js = jetstream::new(client.clone());
        let feed_js = jetstream::new(feed.clone());
        let bus = Self {
            client,
            feed_js,
            feed,
            js,
            node: node.to_string(),
        };
        bus.ensure_stream().await?;
        Ok(bus)
    }

    /// Creates the durable stream if it is missing (file storage, message-id dedup).
    pub async fn ensure_stream(&self) -> Result<jetstream::stream::Stream> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let r = self
                .js
                .get_or_create_stream(jetstream::stream::Config {
                    name: STREAM.to_string(),
                    subjects: vec![DURABLE_SUBJECTS.to_string()],
                    storage: jetstream::stream::StorageType::File,
                    duplicate_window: DUPLICATE_WINDOW,
                    max_age: STREAM_MAX_AGE,
                    max_message_size: (MAX_PAYLOAD_BYTES * 2) as i32,
                    ..Default::default()
                })
                .await;
            match r {
                Ok(s) => return Ok(s),
                Err(e) if tokio::time::Instant::now() < deadline => {
                    tracing::warn!(error = %e, "waiting for JetStream");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e) => return Err(Error::js("stream", e)),
            }
        }
    }

    /// The NATS client.
    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    /// The connection watcher traffic arrives on.
    pub fn feed(&self) -> &async_nats::Client {
        &self.feed
    }

    /// The JetStream context.
    pub fn jetstream(&self) -> &jetstream::Context {
        &self.js
    }

    /// Follows the rows stored on a durable subject from now on, each with its stream seq
    /// (an ordered consumer over the feed connection: gaps and reconnects are repaired by
    /// JetStream, and a duplicate publish is seen once).
    pub async fn follow_durable(
        &self,
        subject: String,
    ) -> Result<jetstream::consumer::push::Ordered> {
        let stream = self
            .feed_js
            .get_stream(STREAM)
            .await
            .map_err(|e| Error::js("get stream", e))?;
        let consumer = stream
            .create_consumer(jetstream::consumer::push::OrderedConfig {
                deliver_subject: self.feed.new_inbox(),
                filter_subject: subject,
                deliver_policy: jetstream::consumer::DeliverPolicy::New,
                ..Default::default()
            })
            .await
            .map_err(|e| Error::js("create consumer", e))?;
        consumer
            .messages()
            .await
            .map_err(|e| Error::js("consumer messages", e))
    }

    /// A stored message of the durable stream, by stream seq (to catch a watcher up).
    pub async fn stored_batch(&self, seq: u64) -> Result<BusBatch> {
        let stream = self
            .js
            .get_stream(STREAM)
            .await
            .map_err(|e| Error::js("get stream", e))?;
        let m = stream
            .get_raw_message(seq)
            .await
            .map_err(|e| Error::js("get message", e))?;
        decode_batch(&m.subject, m.payload).map_err(|e| Error::js("message decode", e))
    }

    /// This node's name.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// Closes both connections at shutdown: what was published is flushed to the server
    /// and subscriptions are drained (at most [`PUBLISH_TIMEOUT`]).
    pub async fn close(&self) {
        for c in [&self.client, &self.feed] {
            match tokio::time::timeout(PUBLISH_TIMEOUT, c.drain()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "NATS connection did not drain"),
                Err(_) => tracing::warn!("NATS connection did not drain in time"),
            }
        }
    }

    /// True while the connection to the server is up.
    pub fn connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    /// Sends rows of queues of an org, in order. For durable batches the returned [`Acks`]
    /// resolve once JetStream has stored every part (a part repeated under the same
    /// `msg_id` within [`DUPLICATE_WINDOW`] is stored once); INTERNAL batches need no ack.
    pub async fn send(
        &self,
        org: &str,
        durable: bool,
        rows: Vec<(String, Vec<StoredRow>)>,
        client: Option<(&str, crate::queue::BatchName)>,
        msg_id: &str,
    ) -> Result<Acks> {
        // A send while disconnected would wait in the client's buffer and could be stored
        // after the caller was told it failed; refuse it at once instead.
        if !self.connected() {
            return Err(Error::Unreachable);
        }
        let parts = split(org, &self.node, rows, client);
        let mut acks = Vec::with_capacity(parts.len());
        for (part, (queue, batch)) in parts.into_iter().enumerate() {
            let subject = subject(org, durable, &self.node, &queue);
            let payload = batch.encode_to_vec();
            if durable {
                let mut headers = async_nats::HeaderMap::new();
                headers.insert("Nats-Msg-Id", format!("{msg_id}/{part}").as_str());
                let ack = self
                    .js
                    .publish_with_headers(subject, headers, payload.into())
                    .await
                    .map_err(|e| Error::Publish(e.into()))?;
                acks.push(ack);
            } else {
                self.client
                    .publish(subject, payload.into())
                    .await
                    .map_err(|e| Error::Publish(e.into()))?;
            }
        }
        Ok(Acks(acks))
    }
}

/// JetStream acks a durable send waits for.
pub struct Acks(Vec<jetstream::context::PublishAckFuture>);

impl Acks {
    /// Resolves once every part is stored; an error or a timeout means the push failed
    /// (it may still have been stored, and a retry under the same id is stored once).
    pub async fn wait(self) -> Result<()> {
        for ack in self.0 {
            match tokio::time::timeout(PUBLISH_TIMEOUT, ack).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(Error::Publish(e.into())),
                Err(_) => return Err(Error::Timeout(PUBLISH_TIMEOUT)),
            }
        }
        Ok(())
    }
}

/// Splits rows into batches of at most [`MAX_PAYLOAD_BYTES`] (a single larger row goes
/// alone), each named by the subject queue of its first rows; parts are numbered in order.
fn split(
    org: &str,
    node: &str,
    rows: Vec<(String, Vec<StoredRow>)>,
    client: Option<(&str, crate::queue::BatchName)>,
) -> Vec<(String, BusBatch)> {
    let new_batch = |part: usize| BusBatch {
        org: org.to_string(),
        node: node.to_string(),
        queues: Vec::new(),
        client_id: client.map(|c| c.0.to_string()).unwrap_or_default(),
        batch_id: client.map(|c| c.1.id).unwrap_or(0),
        incarnation: client.map(|c| c.1.incarnation).unwrap_or(0),
        part: part as u32,
    };
    let mut out: Vec<(String, BusBatch)> = Vec::new();
    let mut current = new_batch(0);
    let mut subject_queue = String::new();
    let mut size = 0usize;
    for (queue, rows) in rows {
        for r in rows {
            let row_size = r.json.len() + r.client.len() + 16;
            if size > 0 && size + row_size > MAX_PAYLOAD_BYTES {
                let done = std::mem::replace(&mut current, new_batch(out.len() + 1));
                out.push((std::mem::take(&mut subject_queue), done));
                size = 0;
            }
            if subject_queue.is_empty() {
                subject_queue = queue.clone();
            }
            if current.queues.last().is_none_or(|q| q.queue != queue) {
                current.queues.push(QueueRows {
                    queue: queue.clone(),
                    rows: Vec::new(),
                });
                size += queue.len() + 8;
            }
            let q = current.queues.last_mut().expect("queue rows just pushed");
            q.rows.push(BusRow {
                ts_us: r.ts_us,
                client: r.client,
                json: r.json,
            });
            size += row_size;
        }
    }
    if !current.queues.is_empty() {
        out.push((subject_queue, current));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(n: usize) -> StoredRow {
        StoredRow {
            ts_us: 1,
            client: String::new(),
            json: "x".repeat(n),
        }
    }

    #[test]
    fn batches_are_split_below_the_payload_limit_in_order() {
        let rows: Vec<StoredRow> = (0..100).map(|_| row(10_000)).collect();
        let parts = split(
            "root",
            "n1",
            vec![("Q.A".into(), rows)],
            Some((
                "C.1",
                crate::queue::BatchName {
                    incarnation: 3,
                    id: 7,
                },
            )),
        );
        assert!(parts.len() >= 4, "{} parts", parts.len());
        let mut total = 0;
        for (i, (queue, b)) in parts.iter().enumerate() {
            assert_eq!(queue, "Q.A");
            assert_eq!(b.part as usize, i);
            assert_eq!((b.client_id.as_str(), b.batch_id), ("C.1", 7));
            assert!(b.encoded_len() <= MAX_PAYLOAD_BYTES + 64);
            total += b.queues.iter().map(|q| q.rows.len()).sum::<usize>();
        }
        assert_eq!(total, 100);
        assert_eq!(subject("root", true, "m1", "Q.A"), "talon.root.d.@m1.Q.A");
        assert_eq!(queue_subjects("root", true, "Q.A"), "talon.root.d.*.Q.A");
        assert!(sender_matches("talon.root.d.@m1.Q.A", "m1"));
        assert!(!sender_matches("talon.root.d.@m1.Q.A", "m2"));
        assert!(
            sender_matches("talon.root.d.Q.A", "m2"),
            "a subject from before node tokens"
        );
        assert!(valid_node("minion-a_1").is_ok() && valid_node("a.b").is_err());
    }
}
