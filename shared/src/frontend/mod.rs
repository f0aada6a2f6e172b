//! The client frontend (shared, so minions can run it too): one bidirectional gRPC stream
//! per client. It records clients, refuses a second connection with a connected client's
//! id, sends each client its event table (again whenever the table changes), pushes event
//! batches to CLIENT_EVENT queues and acknowledges a batch only once it is durable.
//!
//! Client connections are served by the frontend's own HTTP/2 server side ([`conn`],
//! [`http2`]) rather than a general one: tens of thousands of mostly idle streams are the
//! normal load, and a general server keeps tens of kilobytes of buffers per connection.

mod conn;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub mod http2;
mod notify;
mod presence;
mod tables;
mod tasks;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use talon_core::ids::valid_client_id;

use talon_proto::client::*;
use tokio::sync::mpsc;
use tonic::Status;

use crate::queue::{now_us, validate_org, QueueManager};
use crate::records::{ClientRecord, Clients};
pub use notify::{NOTIFICATIONS_QUEUE, WAKE_DEBOUNCE};
pub use presence::PING_WAIT;
pub use tables::RelabelError;

use crate::control::{self, ClientConflict, ClientInfo, ControlRow, Enrollment};

/// Server messages queued per client at most; a client that does not read is cut off.
pub const SESSION_QUEUE: usize = 256;
/// Default largest message a client may send.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// Connections the kernel queues for the frontend before it accepts them (capped by the
/// kernel's `net.core.somaxconn`): after a restart every client reconnects at once, and an
/// overflowing queue turns connections into resets.
pub const LISTEN_BACKLOG: u32 = 4096;

/// Listens for client connections on `addr` with [`LISTEN_BACKLOG`].
pub fn listen(addr: std::net::SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Serves the frontend's gRPC service on `listener` until `shutdown`, then waits for its
/// connections to close (each ends its stream with UNAVAILABLE so the client reconnects).
/// Client messages may be up to `max_decode` bytes, server messages up to `max_encode`;
/// a ping goes to each client every 20 s and an unanswered one ends its connection.
pub async fn serve(
    frontend: FrontendService,
    listener: tokio::net::TcpListener,
    tls: Option<std::sync::Arc<rustls::ServerConfig>>,
    max_decode: usize,
    max_encode: usize,
    shutdown: talon_core::Shutdown,
) -> std::io::Result<()> {
    let limits = conn::Limits {
        max_decode,
        max_encode,
    };
    // Connections are tracked on their own, so serve can wait for them to close.
    let conns = shutdown.subtree();
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((sock, remote)) => {
                conns.spawn_in(
                    tracing::debug_span!(parent: conns.span(), "conn", remote = %remote),
                    conn::run(frontend.clone(), sock, tls.clone(), limits, conns.clone()),
                );
            }
            Err(e) => {
                // Out of file descriptors, usually: wait a moment rather than spin.
                tracing::warn!(error = %e, "frontend cannot accept a connection");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
    conns.drain().await;
    Ok(())
}

/// A message for a session's client.
/// Items are boxed: a channel allocates its slots in blocks, and a boxed slot is 8 bytes
/// where an unboxed one is hundreds, which matters with tens of thousands of idle clients.
type ServerItem = Box<Outgoing>;

/// What a session sends its client.
enum Outgoing {
    /// A message for this client alone, encoded by its connection.
    Message(ServerMessage),
    /// A message encoded once (gRPC-framed) and shared by every client it goes to: an
    /// event table, the same for every client with the same labels.
    Framed(bytes::Bytes),
}

impl Outgoing {
    /// The message, decoded again when it was framed (for tests).
    #[cfg(test)]
    fn message(&self) -> ServerMessage {
        use prost::Message;
        match self {
            Outgoing::Message(m) => m.clone(),
            Outgoing::Framed(f) => ServerMessage::decode(&f[5..]).expect("framed by frame()"),
        }
    }
}

impl From<ServerMessage> for ServerItem {
    fn from(m: ServerMessage) -> Self {
        Box::new(Outgoing::Message(m))
    }
}

/// Event tables encoded for (org, labels), kept while the table version and the
/// repository are unchanged.
#[derive(Default)]
struct TableCache {
    entries: HashMap<(String, Vec<String>), CachedTable>,
}

struct CachedTable {
    version: u64,
    generation: u64,
    framed: bytes::Bytes,
}

/// Distinct (org, labels) tables cached at most; beyond it the cache starts again.
const TABLE_CACHE_ENTRIES: usize = 256;

/// A message framed as gRPC sends it: no compression, length, bytes.
fn frame(msg: &ServerMessage) -> bytes::Bytes {
    use prost::Message;
    let len = msg.encoded_len();
    let mut buf = Vec::with_capacity(5 + len);
    buf.push(0);
    buf.extend_from_slice(&(len as u32).to_be_bytes());
    msg.encode(&mut buf).expect("a Vec grows");
    buf.into()
}

/// Where a session's server messages go.
type Outbox = mpsc::Sender<ServerItem>;

/// A session that `open` accepted: what its connection keeps.
struct Opened {
    key: (String, String),
    session_id: u64,
    tx: Outbox,
    rx: mpsc::Receiver<ServerItem>,
}

struct Session {
    id: u64,
    labels: Vec<String>,
    /// As the agent reports it (`linux`, `windows`, `macos`).
    os: String,
    tx: Outbox,
}

/// The frontend service; cheap to clone.
#[derive(Clone)]
pub struct FrontendService {
    inner: Arc<Inner>,
}

struct Inner {
    qm: QueueManager,
    store: crate::store::Store,
    repo: talon_artifacts::Repository,
    /// In a cluster, the bus (presence and client lookups go to other nodes).
    bus: Option<crate::bus::Bus>,
    clients: Clients,
    node: String,
    sessions: Mutex<HashMap<(String, String), Session>>,
    next_session: AtomicU64,
    /// Last wake-up per client, and whether a delayed one is scheduled.
    wakes: Mutex<HashMap<(String, String), (tokio::time::Instant, bool)>>,
    /// Last activity per connected client since last taken, for cluster ping mutations.
    activity: Mutex<HashMap<(String, String), i64>>,
    /// Orgs whose `Server.Internal.Notifications` this frontend already follows.
    notified_orgs: Mutex<std::collections::HashSet<String>>,
    /// Where the frontend's own tasks (notification followers, delayed wake-ups) run.
    shutdown: talon_core::Shutdown,
    tables: Mutex<TableCache>,
    /// When each connected client's keepalive was last written to its record, and the
    /// table version it said.
    seen_written: Mutex<HashMap<(String, String), (i64, u64)>>,
    /// Whether tasks and hunts are read from this node's store (the master) rather than
    /// asked of the master.
    local_collections: std::sync::atomic::AtomicBool,
    dispatcher: Mutex<tasks::Dispatcher>,
}

/// A connected client's record is rewritten for its keepalives at most this often (and
/// whenever its table version changes).
pub const SEEN_WRITE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(60);

impl FrontendService {
    /// A frontend pushing to `qm`, keeping client records in `store`, compiling event
    /// tables from `repo`, and in a cluster asking other nodes over `bus`; `node` names
    /// this node in conflict reports; its background tasks run under `shutdown`.
    pub fn new(
        qm: QueueManager,
        store: crate::store::Store,
        repo: talon_artifacts::Repository,
        bus: Option<crate::bus::Bus>,
        node: &str,
        shutdown: talon_core::Shutdown,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                clients: Clients::new(store.clone()),
                store,
                repo,
                bus,
                qm,
                node: node.to_string(),
                sessions: Mutex::new(HashMap::new()),
                tables: Mutex::default(),
                seen_written: Mutex::default(),
                local_collections: std::sync::atomic::AtomicBool::new(false),
                dispatcher: Mutex::default(),
                next_session: AtomicU64::new(1),
                activity: Mutex::new(HashMap::new()),
                wakes: Mutex::new(HashMap::new()),
                notified_orgs: Mutex::new(std::collections::HashSet::new()),
                shutdown,
            }),
        }
    }

    /// Client records and tables.
    pub fn clients(&self) -> &Clients {
        &self.inner.clients
    }

    /// Connected clients of an org.
    pub fn connected(&self, org: &str) -> Vec<String> {
        let s = self.inner.sessions.lock().expect("sessions");
        let mut v: Vec<String> = s
            .keys()
            .filter(|(o, _)| o == org)
            .map(|(_, c)| c.clone())
            .collect();
        v.sort();
        v
    }

    /// Whether a client is connected to this node.
    pub fn is_connected(&self, org: &str, client: &str) -> bool {
        self.inner
            .sessions
            .lock()
            .expect("sessions")
            .contains_key(&(org.to_string(), client.to_string()))
    }

    /// Connected clients per org on this node.
    pub fn connected_counts(&self) -> std::collections::BTreeMap<String, u64> {
        let mut counts = std::collections::BTreeMap::new();
        for (org, _) in self.inner.sessions.lock().expect("sessions").keys() {
            *counts.entry(org.clone()).or_insert(0) += 1;
        }
        counts
    }

    /// Takes the last activity of clients active since the last call: (org, client, µs).
    pub fn take_activity(&self) -> Vec<(String, String, i64)> {
        std::mem::take(&mut *self.inner.activity.lock().expect("activity"))
            .into_iter()
            .map(|((o, c), t)| (o, c, t))
            .collect()
    }

    /// The artifact repository event tables are compiled from.
    pub fn repository(&self) -> &talon_artifacts::Repository {
        &self.inner.repo
    }

    /// This node's name.
    pub fn node(&self) -> &str {
        &self.inner.node
    }

    /// The event table for a client of `org` with `labels`, encoded once and shared by
    /// every client with the same labels while neither the table nor the artifacts change.
    // Status is tonic's error type; the session handlers return it.
    #[allow(clippy::result_large_err)]
    fn table_message(&self, org: &str, labels: &[String]) -> Result<ServerItem, Status> {
        let unavailable = |e: crate::store::Error| Status::unavailable(e.to_string());
        // Both are read before compiling, so a change while compiling is never cached
        // under the new numbers.
        let generation = self.inner.repo.generation();
        let version = self.inner.clients.version(org).map_err(unavailable)?;
        let mut key = (org.to_string(), labels.to_vec());
        key.1.sort();
        key.1.dedup();
        if let Some(c) = self.inner.tables.lock().expect("tables").entries.get(&key) {
            if c.version == version && c.generation == generation {
                return Ok(Box::new(Outgoing::Framed(c.framed.clone())));
            }
        }
        let (version, queries) = self
            .inner
            .clients
            .event_table(&self.inner.repo, org, labels)
            .map_err(unavailable)?;
        let framed = frame(&ServerMessage {
            msg: Some(server_message::Msg::EventTable(EventTable {
                version,
                queries,
            })),
        });
        let mut cache = self.inner.tables.lock().expect("tables");
        if cache.entries.len() >= TABLE_CACHE_ENTRIES {
            cache.entries.clear();
        }
        cache.entries.insert(
            key,
            CachedTable {
                version,
                generation,
                framed: framed.clone(),
            },
        );
        Ok(Box::new(Outgoing::Framed(framed)))
    }

    async fn announce<R: ControlRow>(&self, org: &str, row: &R) {
        if let Err(e) = control::push(&self.inner.qm, org, row).await {
            tracing::error!(queue = R::QUEUE, error = %e, "could not announce");
        }
    }
}

impl FrontendService {
    /// Opens a session with the stream's first message, which must be hello: checks the
    /// id, refuses a client connected here or on another node, records the client and
    /// queues the welcome and the event table.
    async fn open(
        self,
        first: ClientMessage,
        remote: String,
        peer: Option<String>,
    ) -> Result<Opened, Status> {
        let Some(client_message::Msg::Hello(hello)) = first.msg else {
            return Err(Status::invalid_argument("the first message must be hello"));
        };
        if !valid_client_id(&hello.client_id) {
            return Err(Status::invalid_argument(format!(
                "invalid client id {:?}: expected C. and 16 hex digits",
                hello.client_id
            )));
        }
        // Under TLS the id is the key's: a copied id without its key is refused.
        if let Some(peer) = &peer {
            if &hello.client_id != peer {
                tracing::warn!(remote = %remote, claimed = %hello.client_id, key = %peer, "client refused: its id is not its key's");
                return Err(Status::permission_denied(format!(
                    "client id {:?} is not the id of the key this connection presented ({peer})",
                    hello.client_id
                )));
            }
        }
        let org = if hello.org.is_empty() {
            "root".to_string()
        } else {
            hello.org.clone()
        };
        validate_org(&org).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let key = (org.clone(), hello.client_id.clone());
        let (tx, rx) = mpsc::channel(SESSION_QUEUE);
        let session_id = self.inner.next_session.fetch_add(1, Ordering::Relaxed);
        let conflict = {
            let mut sessions = self.inner.sessions.lock().expect("sessions");
            if sessions.contains_key(&key) {
                true
            } else {
                sessions.insert(
                    key.clone(),
                    Session {
                        id: session_id,
                        labels: hello.labels.clone(),
                        os: hello.os.clone(),
                        tx: tx.clone(),
                    },
                );
                false
            }
        };
        // In a cluster the id may be connected on another node: any node saying so wins.
        let conflict = conflict || {
            let elsewhere =
                self.inner.bus.is_some() && self.connected_elsewhere(&org, &hello.client_id).await;
            if elsewhere {
                self.end(&key, session_id).await;
            }
            elsewhere
        };
        if conflict {
            let conflict = ClientConflict {
                client_id: hello.client_id.clone(),
                remote_addr: remote.clone(),
                node: self.inner.node.clone(),
            };
            self.announce(&org, &conflict).await;
            return Err(Status::already_exists(format!(
                "client {} is already connected; refusing a second connection from {remote}",
                hello.client_id
            )));
        }
        self.follow_notifications(&org).await;
        let welcome = self.start(&org, &hello, &remote).await;
        let table = self.table_message(&org, &hello.labels);
        match (welcome, table) {
            (Ok(w), Ok(t)) => {
                let _ = tx.send(w.into()).await;
                let _ = tx.send(t).await;
                self.deliver_pending(&org, &hello.client_id, tx.clone(), session_id);
                let labels = self
                    .inner
                    .sessions
                    .lock()
                    .expect("sessions")
                    .get(&key)
                    .map(|s| s.labels.clone())
                    .unwrap_or_default();
                self.offer_hunts(&org, &hello.client_id, &labels, &hello.os)
                    .await;
            }
            (Err(e), _) | (_, Err(e)) => {
                self.end(&key, session_id).await;
                return Err(e);
            }
        }
        Ok(Opened {
            key,
            session_id,
            tx,
            rx,
        })
    }
}

impl FrontendService {
    /// Records the client and announces it; the Welcome message.
    async fn start(&self, org: &str, hello: &Hello, remote: &str) -> Result<ServerMessage, Status> {
        let clients = &self.inner.clients;
        let mut existing = clients
            .get(org, &hello.client_id)
            .map_err(|e| Status::unavailable(e.to_string()))?;
        if existing.is_none() {
            // A minion's cache may not know a client the master does.
            if let Some(bus) = &self.inner.bus {
                let question = control::ClientRef {
                    org: org.to_string(),
                    client_id: hello.client_id.clone(),
                };
                existing = match bus.ask::<control::ClientLookup>(&question).await {
                    Ok(found) => found,
                    Err(e) => {
                        tracing::warn!(org, client_id = %hello.client_id, error = %e, "master lookup failed; treating the client as new here");
                        None
                    }
                };
            }
        }
        let first_contact = existing.is_none();
        let now = now_us();
        let mut record = existing.unwrap_or_else(|| ClientRecord {
            client_id: hello.client_id.clone(),
            first_seen_at: now / 1_000_000,
            ..ClientRecord::default()
        });
        record.hostname = hello.hostname.clone();
        record.os = hello.os.clone();
        if !hello.labels.is_empty() || first_contact {
            let mut labels = record.labels.clone();
            for l in &hello.labels {
                if !labels.contains(l) {
                    labels.push(l.clone());
                }
            }
            record.labels = labels;
        }
        record.last_seen_at = now;
        record.last_ip = remote.to_string();
        record.version = hello.version.clone();
        record.last_event_table_version = hello.event_table_version;
        clients
            .put(org, &record)
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        if first_contact {
            let enrollment = Enrollment {
                client_id: hello.client_id.clone(),
                hostname: hello.hostname.clone(),
                remote_addr: remote.to_string(),
            };
            self.announce(org, &enrollment).await;
        }
        let info = ClientInfo {
            client_id: hello.client_id.clone(),
            hostname: record.hostname.clone(),
            os: record.os.clone(),
            labels: record.labels.clone(),
            last_seen_at: now / 1_000_000,
            last_ip: remote.to_string(),
            node: self.inner.node.clone(),
            record: record.clone(),
        };
        self.announce(org, &info).await;
        // The session follows the record's labels (the server may hold more than the hello).
        if let Some(s) = self
            .inner
            .sessions
            .lock()
            .expect("sessions")
            .get_mut(&(org.to_string(), hello.client_id.clone()))
        {
            s.labels = record.labels.clone();
        }
        Ok(ServerMessage {
            msg: Some(server_message::Msg::Welcome(Welcome {
                client_id: hello.client_id.clone(),
                first_contact,
            })),
        })
    }

    async fn end(&self, key: &(String, String), session_id: u64) {
        let removed = {
            let mut s = self.inner.sessions.lock().expect("sessions");
            if s.get(key).is_some_and(|sess| sess.id == session_id) {
                s.remove(key);
                true
            } else {
                false
            }
        };
        if removed {
            self.inner
                .seen_written
                .lock()
                .expect("seen written")
                .remove(key);
            if let Ok(Some(mut r)) = self.inner.clients.get(&key.0, &key.1) {
                r.last_seen_at = now_us();
                let _ = self.inner.clients.put(&key.0, &r).await;
            }
        }
    }

    /// Handles one client message of an open session; an error ends the session.
    async fn handle(
        &self,
        key: &(String, String),
        tx: &Outbox,
        msg: ClientMessage,
    ) -> Result<(), Status> {
        let (org, client) = (key.0.as_str(), key.1.as_str());
        // Activity is collected for the cluster's ping mutations only.
        if self.inner.bus.is_some() {
            self.inner
                .activity
                .lock()
                .expect("activity")
                .insert(key.clone(), now_us());
        }
        match msg.msg {
            Some(client_message::Msg::Events(batch)) => {
                let ack = self.apply_batch(org, client, batch).await?;
                let _ = tx.send(ack.into()).await;
            }
            Some(client_message::Msg::Logs(logs)) => self.apply_logs(org, client, logs).await,
            Some(client_message::Msg::Keepalive(k)) => {
                self.note_alive(key, k.event_table_version).await;
                let keepalive = ServerMessage {
                    msg: Some(server_message::Msg::Keepalive(Keepalive::default())),
                };
                let _ = tx.send(keepalive.into()).await;
            }
            Some(client_message::Msg::Hello(_)) => {
                return Err(Status::invalid_argument(
                    "hello may only be sent once per stream",
                ))
            }
            Some(client_message::Msg::Flow(_)) => {
                return Err(Status::unimplemented("flows are not supported yet"))
            }
            None => return Err(Status::invalid_argument("empty client message")),
        }
        Ok(())
    }

    /// Pushes a batch; the ack is sent only after it is durable. Rows that can never be
    /// accepted get an ack with an error (the client drops them, counted); a store failure
    /// ends the session without an ack, so the client keeps the batch and resends it.
    async fn apply_batch(
        &self,
        org: &str,
        client: &str,
        batch: EventBatch,
    ) -> Result<ServerMessage, Status> {
        let batch_id = batch.batch_id;
        let name = crate::queue::BatchName {
            incarnation: batch.incarnation,
            id: batch_id,
        };
        let ack = |error: String| ServerMessage {
            msg: Some(server_message::Msg::Ack(Ack { batch_id, error })),
        };
        // Rows are checked and stamped as text: a bad row refuses the batch, naming its
        // queue and index.
        let rows: Vec<(String, Vec<String>)> = batch
            .queues
            .into_iter()
            .map(|q| (q.artifact, q.rows_json))
            .collect();
        match self
            .inner
            .qm
            .push_client_batch(org, client, name, rows)
            .await
        {
            Ok(_) => Ok(ack(String::new())),
            Err(crate::queue::Error::Store(e)) => {
                Err(Status::unavailable(format!("store unavailable: {e}")))
            }
            // Not known to be durable: no ack, so the client keeps the batch and resends it.
            Err(crate::queue::Error::Bus(e)) => {
                Err(Status::unavailable(format!("bus unavailable: {e}")))
            }
            Err(e) => Ok(ack(e.to_string())),
        }
    }

    /// A connected client said it is alive and runs `version`: its record follows, written
    /// when the version changed or at most once a [`SEEN_WRITE_INTERVAL`].
    async fn note_alive(&self, key: &(String, String), version: u64) {
        let now = now_us();
        {
            let mut written = self.inner.seen_written.lock().expect("seen written");
            let last = written.get(key).copied();
            let due = last.is_none_or(|(at, v)| {
                v != version || now - at >= SEEN_WRITE_INTERVAL.as_micros() as i64
            });
            if !due {
                return;
            }
            written.insert(key.clone(), (now, version));
        }
        let clients = &self.inner.clients;
        match clients.get(&key.0, &key.1) {
            Ok(Some(mut r)) => {
                r.last_seen_at = r.last_seen_at.max(now);
                r.last_event_table_version = version;
                if let Err(e) = clients.put(&key.0, &r).await {
                    tracing::warn!(client_id = %key.1, error = %e, "cannot record a client's keepalive");
                }
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(client_id = %key.1, error = %e, "cannot read a client's record")
            }
        }
    }

    async fn apply_logs(&self, org: &str, client: &str, logs: LogBatch) {
        for l in logs.lines {
            let line = talon_vql::engine::LogLine {
                level: l.level.clone(),
                message: l.message.clone(),
            };
            crate::logs::append_log(
                &self.inner.store,
                org,
                &format!("{client}\u{1f}{}", l.artifact),
                &line,
            )
            .await;
            if l.level == "ALERT" {
                let row = crate::logs::alert_row(&l.message, client, &l.artifact, "CLIENT_EVENT");
                crate::logs::store_alert(&self.inner.qm, org, client, row).await;
            }
        }
    }
}
