//! The endpoint agent: keeps one stream to a frontend (failing over in order, reconnecting
//! with jittered backoff), runs the event table's queries, batches their rows into the spool
//! and sends them, and forgets a batch only when the server acknowledges it.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::StreamExt;
use talon_core::Shutdown;
use talon_proto::client::frontend_client::FrontendClient;
use talon_proto::client::*;
use talon_vql::engine::{Host, HostResult, LogLine as VqlLog, NoHost, QueryInfo};
use talon_vql::{Row, Runner};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::spool::Spool;

/// How the agent runs.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub frontends: Vec<String>,
    pub state: PathBuf,
    pub org: String,
    pub labels: Vec<String>,
    pub hostname: Option<String>,
    /// Flush a batch after this many rows...
    pub batch_rows: usize,
    /// ...or this long after its first row.
    pub batch_wait: Duration,
    pub spool_bytes: u64,
    /// TLS (the default) or plaintext.
    pub transport: crate::transport::Transport,
}

/// Rows a query produced, for one queue.
pub(crate) struct Produced {
    pub(crate) queue: String,
    pub(crate) json: String,
    /// Told once the row is in the spool on disk (a flow's last status, before the flow
    /// is forgotten as running).
    pub(crate) spooled: Option<tokio::sync::oneshot::Sender<()>>,
}

/// Client-side host: no queues; alerts deduplicated in memory per name.
struct ClientHost {
    fired: Mutex<HashMap<String, Instant>>,
}

impl Host for ClientHost {
    fn send_event(&self, o: &str, a: &str, r: Row) -> BoxFuture<'static, HostResult<()>> {
        NoHost.send_event(o, a, r)
    }
    fn watch(&self, o: &str, a: &str) -> BoxFuture<'static, HostResult<BoxStream<'static, Row>>> {
        NoHost.watch(o, a)
    }
    fn read(
        &self,
        o: &str,
        a: &str,
        c: Option<String>,
        s: i64,
        e: i64,
    ) -> BoxStream<'static, HostResult<Row>> {
        NoHost.read(o, a, c, s, e)
    }
    fn alert_allowed(
        &self,
        _org: &str,
        name: &str,
        window_secs: i64,
    ) -> futures::future::BoxFuture<'static, bool> {
        let mut fired = self.fired.lock().expect("alert dedup");
        let now = Instant::now();
        let allowed = fired.get(name).is_none_or(|t| {
            now.duration_since(*t) >= Duration::from_secs(window_secs.max(0) as u64)
        });
        if allowed {
            fired.insert(name.to_string(), now);
        }
        Box::pin(async move { allowed })
    }
    fn artifact_definitions(&self) -> Vec<Row> {
        Vec::new()
    }
    fn metadata(&self, _: &str, _: &str) -> Option<String> {
        None
    }
}

/// Runs the agent until `shutdown`.
pub async fn run(config: AgentConfig, shutdown: Shutdown) -> anyhow::Result<()> {
    let identity = crate::transport::identity(&config.state)?;
    let id = identity.id.clone();
    let spool = Arc::new(Mutex::new(Spool::open(
        &config.state.join("spool"),
        config.spool_bytes,
    )?));
    tracing::info!(client_id = %id, pending = spool.lock().expect("spool").len(), "client starting");
    let (rows_tx, rows_rx) = mpsc::channel::<Produced>(10_000);
    let (logs_tx, logs_rx) = mpsc::unbounded_channel::<LogLine>();
    let (table_tx, table_rx) = watch::channel::<Option<EventTable>>(None);
    let (spooled_tx, _) = tokio::sync::broadcast::channel::<u64>(1024);

    let shutdown = shutdown.in_span(tracing::info_span!("client", client_id = %id));
    let queries = shutdown.spawn(
        "event-queries",
        run_queries(
            table_rx,
            rows_tx.clone(),
            logs_tx.clone(),
            config.org.clone(),
            id.clone(),
            shutdown.clone(),
        ),
    );
    let batcher = shutdown.spawn(
        "batcher",
        batch_rows(
            rows_rx,
            spool.clone(),
            spooled_tx.clone(),
            config.batch_rows,
            config.batch_wait,
            shutdown.token().clone(),
        ),
    );
    let flow_runner = Runner::new(Arc::new(ClientHost {
        fired: Mutex::new(HashMap::new()),
    }));
    let flows = crate::flows::Flows::open(
        &config.state,
        flow_runner,
        rows_tx.clone(),
        &config.org,
        &id,
        shutdown.token().clone(),
    )
    .await?;
    let logs_rx = Arc::new(tokio::sync::Mutex::new(logs_rx));

    let mut attempt = 0u32;
    let mut index = 0usize;
    while !shutdown.is_cancelled() {
        let addr = &config.frontends[index % config.frontends.len()];
        let started = Instant::now();
        match session(
            &config,
            &identity,
            addr,
            &spool,
            &spooled_tx,
            &table_tx,
            &logs_rx,
            &flows,
            shutdown.token(),
        )
        .await
        {
            Ok(()) => break,
            Err(e) => {
                tracing::warn!(frontend = %addr, error = format!("{e:#}"), "frontend session ended")
            }
        }
        if started.elapsed() > Duration::from_secs(30) {
            attempt = 0;
        }
        index += 1;
        // After trying every frontend once, wait: 200 ms at first (a restarted server is
        // back soon), doubling to 5 s, jittered so a fleet does not return in step.
        if index.is_multiple_of(config.frontends.len()) {
            let wait = reconnect_wait(&mut attempt);
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }
    shutdown.cancel();
    let _ = queries.await;
    let _ = batcher.await;
    Ok(())
}

/// The wait before the next connection attempt: quick at first, then doubling to 5 s, each
/// jittered by ±50% so a fleet does not come back in step.
pub fn reconnect_wait(attempt: &mut u32) -> Duration {
    let base = Duration::from_millis(200 << (*attempt).min(5)).min(Duration::from_secs(5));
    *attempt = attempt.saturating_add(1);
    base.mul_f64(0.5 + rand::random::<f64>())
}

fn now_nanos() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

fn hostname(config: &AgentConfig) -> String {
    config.hostname.clone().unwrap_or_else(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|s| s.trim().to_string())
            .unwrap_or_default()
    })
}

/// One connection: hello, resend the spool, then stream until it breaks or shutdown.
#[allow(clippy::too_many_arguments)]
async fn session(
    config: &AgentConfig,
    identity: &talon_core::pki::ClientIdentity,
    addr: &str,
    spool: &Arc<Mutex<Spool>>,
    spooled: &tokio::sync::broadcast::Sender<u64>,
    table_tx: &watch::Sender<Option<EventTable>>,
    logs: &Arc<tokio::sync::Mutex<mpsc::UnboundedReceiver<LogLine>>>,
    flows: &crate::flows::Flows,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let id = identity.id.as_str();
    let channel = config
        .transport
        .endpoint(addr, identity)?
        .connect_timeout(Duration::from_secs(5))
        .http2_keep_alive_interval(Duration::from_secs(20))
        .connect()
        .await?;
    let mut client = FrontendClient::new(channel).max_decoding_message_size(64 << 20);
    let (out_tx, out_rx) = mpsc::channel::<ClientMessage>(64);
    let version = table_tx.borrow().as_ref().map(|t| t.version).unwrap_or(0);
    out_tx
        .send(ClientMessage {
            msg: Some(client_message::Msg::Hello(Hello {
                client_id: id.to_string(),
                org: config.org.clone(),
                hostname: hostname(config),
                os: std::env::consts::OS.to_string(),
                labels: config.labels.clone(),
                event_table_version: version,
                last_hunt_timestamp: 0,
                version: env!("CARGO_PKG_VERSION").to_string(),
            })),
        })
        .await?;
    let mut new_batches = spooled.subscribe();
    let mut incoming = client
        .session(tokio_stream::wrappers::ReceiverStream::new(out_rx))
        .await?
        .into_inner();
    // Everything not yet acknowledged goes first, oldest first.
    let pending = spool.lock().expect("spool").pending();
    let mut sent_up_to = 0;
    for b in pending {
        sent_up_to = sent_up_to.max(b.batch_id);
        out_tx
            .send(ClientMessage {
                msg: Some(client_message::Msg::Events(b)),
            })
            .await?;
    }
    let mut logs = logs.lock().await;
    let mut keepalive = tokio::time::interval(Duration::from_secs(30));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            msg = incoming.message() => {
                let Some(msg) = msg? else { anyhow::bail!("the frontend closed the stream") };
                match msg.msg {
                    Some(server_message::Msg::EventTable(t)) => {
                        let event_table_version = t.version;
                        let _ = table_tx.send(Some(t));
                        // Say at once which table runs now.
                        out_tx.send(ClientMessage { msg: Some(client_message::Msg::Keepalive(Keepalive { event_table_version })) }).await?;
                    }
                    Some(server_message::Msg::Ack(a)) => {
                        let mut spool = spool.lock().expect("spool");
                        if !a.error.is_empty() {
                            spool.refused += 1;
                            tracing::error!(batch = a.batch_id, error = %a.error, refused = spool.refused, "the server refused a batch; dropping it");
                        }
                        spool.ack(a.batch_id);
                    }
                    Some(server_message::Msg::Welcome(w)) => tracing::info!(first_contact = w.first_contact, frontend = %addr, "connected"),
                    Some(server_message::Msg::FlowRequest(r)) => {
                        tracing::info!(flow_id = %r.flow_id, queries = r.queries.len(), "collection received");
                        flows.start(r);
                    }
                    Some(server_message::Msg::FlowCancel(c)) => flows.cancel(c).await,
                    _ => {}
                }
            }
            id = new_batches.recv() => {
                let ids: Vec<u64> = match id {
                    Ok(id) if id > sent_up_to => vec![id],
                    Ok(_) => Vec::new(),
                    // Fell behind the notifications: send whatever the spool holds past what was sent.
                    Err(_) => spool.lock().expect("spool").pending().iter().map(|b| b.batch_id).filter(|i| *i > sent_up_to).collect(),
                };
                if ids.is_empty() { continue; }
                let batches: Vec<EventBatch> = { let spool = spool.lock().expect("spool"); ids.iter().filter_map(|id| spool.get(*id)).collect() };
                for b in batches {
                    sent_up_to = sent_up_to.max(b.batch_id);
                    out_tx.send(ClientMessage { msg: Some(client_message::Msg::Events(b)) }).await?;
                }
            }
            line = logs.recv() => {
                let Some(line) = line else { continue };
                let mut lines = vec![line];
                while let Ok(l) = logs.try_recv() { lines.push(l); }
                out_tx.send(ClientMessage { msg: Some(client_message::Msg::Logs(LogBatch { lines })) }).await?;
            }
            _ = keepalive.tick() => {
                let event_table_version = table_tx.borrow().as_ref().map(|t| t.version).unwrap_or(0);
                out_tx.send(ClientMessage { msg: Some(client_message::Msg::Keepalive(Keepalive { event_table_version })) }).await?;
            }
        }
    }
}

/// Collects rows into batches: flushed after `max_rows` rows or `max_wait` after the first.
async fn batch_rows(
    mut rows: mpsc::Receiver<Produced>,
    spool: Arc<Mutex<Spool>>,
    spooled: tokio::sync::broadcast::Sender<u64>,
    max_rows: usize,
    max_wait: Duration,
    shutdown: CancellationToken,
) {
    let mut pending: Vec<Produced> = Vec::new();
    let mut deadline: Option<tokio::time::Instant> = None;
    loop {
        let flush_now = tokio::select! {
            r = rows.recv() => match r {
                Some(p) => {
                    pending.push(p);
                    deadline.get_or_insert_with(|| tokio::time::Instant::now() + max_wait);
                    pending.len() >= max_rows
                }
                None => true,
            },
            _ = async { match deadline { Some(d) => tokio::time::sleep_until(d).await, None => std::future::pending().await } } => true,
            _ = shutdown.cancelled() => true,
        };
        if flush_now && !pending.is_empty() {
            let mut by_queue: Vec<QueueRows> = Vec::new();
            let mut waiting = Vec::new();
            for mut p in pending.drain(..) {
                if let Some(w) = p.spooled.take() {
                    waiting.push(w);
                }
                match by_queue.iter_mut().find(|q| q.artifact == p.queue) {
                    Some(q) => q.rows_json.push(p.json),
                    None => by_queue.push(QueueRows {
                        artifact: p.queue,
                        rows_json: vec![p.json],
                    }),
                }
            }
            let added = spool.lock().expect("spool").add(by_queue);
            match added {
                Ok(b) => {
                    let _ = spooled.send(b.batch_id);
                    for w in waiting {
                        let _ = w.send(());
                    }
                }
                Err(e) => tracing::error!(error = %e, "cannot write the spool; rows lost"),
            }
            deadline = None;
        }
        if shutdown.is_cancelled() {
            return;
        }
    }
}

/// Runs the event table's queries, restarting them when the table changes.
async fn run_queries(
    mut table: watch::Receiver<Option<EventTable>>,
    rows: mpsc::Sender<Produced>,
    logs: mpsc::UnboundedSender<LogLine>,
    org: String,
    client_id: String,
    shutdown: Shutdown,
) {
    let runner = Runner::new(Arc::new(ClientHost {
        fired: Mutex::new(HashMap::new()),
    }));
    let mut running = shutdown.token().child_token();
    let mut current: Option<Vec<EventQuery>> = None;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            changed = table.changed() => if changed.is_err() { return },
        }
        let Some(t) = table.borrow_and_update().clone() else {
            continue;
        };
        if current.as_ref() == Some(&t.queries) {
            continue;
        }
        running.cancel();
        running = shutdown.token().child_token();
        tracing::info!(
            version = t.version,
            queries = t.queries.len(),
            "event table applied"
        );
        for q in &t.queries {
            let info = QueryInfo {
                org: org.clone(),
                artifact: q.artifact.clone(),
                artifact_type: "CLIENT_EVENT".into(),
                client_id: client_id.clone(),
                permissions: None,
            };
            let span =
                tracing::info_span!(parent: shutdown.span(), "query", artifact = %q.artifact);
            shutdown.spawn_in(
                span,
                run_query(
                    runner.clone(),
                    q.clone(),
                    info,
                    rows.clone(),
                    logs.clone(),
                    running.clone(),
                ),
            );
        }
        current = Some(t.queries);
    }
}

async fn run_query(
    runner: Runner,
    q: EventQuery,
    info: QueryInfo,
    rows: mpsc::Sender<Produced>,
    logs: mpsc::UnboundedSender<LogLine>,
    cancel: CancellationToken,
) {
    let mut backoff = Duration::from_secs(1);
    while !cancel.is_cancelled() {
        let artifact = q.artifact.clone();
        let log_tx = logs.clone();
        let sink: talon_vql::engine::LogSink = Arc::new(move |l: VqlLog| {
            let _ = log_tx.send(LogLine {
                artifact: artifact.clone(),
                level: l.level,
                message: l.message,
                timestamp_us: now_nanos() as i64 / 1000,
            });
        });
        let env = q
            .env
            .iter()
            .map(|(k, v)| (k.clone(), talon_vql::Value::Str(v.clone())))
            .collect();
        match runner.run(&q.query, env, info.clone(), cancel.child_token(), sink) {
            Ok(mut stream) => {
                while let Some(row) = stream.next().await {
                    let json = talon_vql::Value::Dict(row).to_json().to_string();
                    if rows
                        .send(Produced {
                            queue: q.queue.clone(),
                            json,
                            spooled: None,
                        })
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            }
            Err(e) => {
                let _ = logs.send(LogLine {
                    artifact: q.artifact.clone(),
                    level: "ERROR".into(),
                    message: format!("query does not parse: {e}"),
                    timestamp_us: 0,
                });
            }
        }
        if cancel.is_cancelled() {
            return;
        }
        let _ = logs.send(LogLine {
            artifact: q.artifact.clone(),
            level: "ERROR".into(),
            message: format!(
                "{}: query ended; restarting in {}s",
                q.queue,
                backoff.as_secs()
            ),
            timestamp_us: 0,
        });
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(60));
    }
}
