//! `talon-client simulate`: many simulated clients in one process, each with its own key
//! (and so id) and stream, each pushing rows at a set rate; progress while running, one JSON line at the end.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use talon_core::Shutdown;
use talon_proto::client::frontend_client::FrontendClient;
use talon_proto::client::*;

/// What to simulate.
#[derive(Debug, Clone)]
pub struct SimConfig {
    pub frontends: Vec<String>,
    pub clients: usize,
    /// Rows per second per client (0: idle clients that only keep their stream).
    pub rate: f64,
    pub duration: Duration,
    pub row_bytes: usize,
    pub artifact: String,
    pub org: String,
    /// TLS (each simulated client with a key of its own) or plaintext.
    pub transport: crate::transport::Transport,
    /// Answer each new event table (one with queries) with one row to `artifact`.
    pub row_on_table: bool,
}

#[derive(Default)]
struct Totals {
    /// Sessions connected now.
    connected: AtomicU64,
    /// The most sessions connected at once.
    peak: AtomicU64,
    sent: AtomicU64,
    acked: AtomicU64,
    errors: AtomicU64,
    /// Event tables received that hold at least one query.
    tables: AtomicU64,
    /// Sessions that ended and were connected again.
    reconnects: AtomicU64,
    /// Collections received and answered.
    flows: AtomicU64,
    latencies_us: Mutex<Vec<u64>>,
}

/// Errors printed in full; later ones are only counted.
const ERRORS_SHOWN: u64 = 5;

impl Totals {
    /// Counts an error, printing the first few so a failed run says why.
    fn error(&self, n: usize, what: impl std::fmt::Display) {
        if self.errors.fetch_add(1, Ordering::Relaxed) < ERRORS_SHOWN {
            eprintln!("simulated client {n}: {what}");
        }
    }
}

/// A row shaped like `Generic.Client.Stats`, padded to about `bytes`; `SentUs` is when its
/// batch was made (unix microseconds), for latency measurements downstream.
fn row(i: u64, bytes: usize, sent_us: i64) -> String {
    let base = format!(
        "{{\"Timestamp\":{},\"CPUPercent\":1.5,\"RSS\":{},\"SentUs\":{sent_us},\"Pad\":\"\"}}",
        1_763_800_000 + i,
        10_000_000 + i
    );
    let pad = bytes.saturating_sub(base.len() + 60);
    base.replace("\"Pad\":\"\"", &format!("\"Pad\":\"{}\"", "x".repeat(pad)))
}

/// One simulated client: sessions one after another, as the real agent, reconnecting after
/// a short jittered wait (200 ms doubling to 5 s) until the run stops.
async fn one_client(n: usize, cfg: Arc<SimConfig>, totals: Arc<Totals>, stop: Shutdown) {
    let mut attempt = 0u32;
    // A key of its own, so its id is derived from it as a real client's.
    let identity = match talon_core::pki::ClientIdentity::new(None) {
        Ok(i) => i,
        Err(e) => {
            totals.error(n, format_args!("cannot make a key: {e}"));
            return;
        }
    };
    loop {
        let started = Instant::now();
        if !one_session(n, &identity, &cfg, &totals, &stop).await || stop.is_cancelled() {
            return;
        }
        if started.elapsed() > Duration::from_secs(30) {
            attempt = 0;
        }
        totals.reconnects.fetch_add(1, Ordering::Relaxed);
        let wait = crate::agent::reconnect_wait(&mut attempt);
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// One session of a simulated client; true when it ended (or never started) and the
/// client should connect again, false when the run stopped.
async fn one_session(
    n: usize,
    identity: &talon_core::pki::ClientIdentity,
    cfg: &Arc<SimConfig>,
    totals: &Arc<Totals>,
    stop: &Shutdown,
) -> bool {
    let (cfg, totals, stop) = (cfg.clone(), totals.clone(), stop.clone());
    let who = n;
    let addr = &cfg.frontends[n % cfg.frontends.len()];
    let endpoint = match cfg.transport.endpoint(addr, identity) {
        Ok(e) => e,
        Err(e) => {
            totals.error(who, format_args!("bad frontend {addr}: {e:#}"));
            return true;
        }
    };
    let channel = match endpoint.connect().await {
        Ok(channel) => channel,
        Err(e) => {
            totals.error(who, format_args!("cannot connect to {addr}: {e:?}"));
            return true;
        }
    };
    // As the real agent: an event table may be large.
    let mut client = FrontendClient::new(channel).max_decoding_message_size(64 << 20);
    let (tx, rx) = tokio::sync::mpsc::channel::<ClientMessage>(16);
    let hello = Hello {
        client_id: identity.id.clone(),
        org: cfg.org.clone(),
        hostname: format!("sim-{n}"),
        os: "linux".into(),
        ..Hello::default()
    };
    let _ = tx
        .send(ClientMessage {
            msg: Some(client_message::Msg::Hello(hello)),
        })
        .await;
    let incoming = match client
        .session(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
    {
        Ok(r) => r.into_inner(),
        Err(e) => {
            let mut why = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                why.push_str(&format!(": {s}"));
                source = s.source();
            }
            totals.error(who, format_args!("session refused: {why}"));
            return true;
        }
    };
    let now = totals.connected.fetch_add(1, Ordering::Relaxed) + 1;
    totals.peak.fetch_max(now, Ordering::Relaxed);
    let ended = one_stream(who, &cfg, &totals, &stop, tx, incoming).await;
    totals.connected.fetch_sub(1, Ordering::Relaxed);
    ended
}

/// Streams a connected session until it ends (true) or the run stops (false).
async fn one_stream(
    who: usize,
    cfg: &Arc<SimConfig>,
    totals: &Arc<Totals>,
    stop: &Shutdown,
    tx: tokio::sync::mpsc::Sender<ClientMessage>,
    mut incoming: tonic::Streaming<ServerMessage>,
) -> bool {
    let sent_at: Arc<Mutex<std::collections::HashMap<u64, (Instant, u64)>>> = Arc::default();
    // Answers to collections, sent by the loop below so batch ids stay in order.
    let (answers_tx, mut answers) = tokio::sync::mpsc::unbounded_channel::<(String, Vec<String>)>();
    let (row_on_table, artifact, row_bytes) =
        (cfg.row_on_table, cfg.artifact.clone(), cfg.row_bytes);
    let mut acks = {
        let (totals, sent_at, stop_acks) = (totals.clone(), sent_at.clone(), stop.clone());
        stop.spawn("sim-acks", async move {
            let stop = stop_acks;
            loop {
                let m = tokio::select! {
                    _ = stop.cancelled() => return,
                    m = incoming.next() => m,
                };
                match m {
                    Some(Ok(ServerMessage {
                        msg: Some(server_message::Msg::Ack(a)),
                    })) => {
                        if let Some((t, rows)) = sent_at.lock().expect("sent").remove(&a.batch_id) {
                            if a.error.is_empty() {
                                totals.acked.fetch_add(rows, Ordering::Relaxed);
                            } else {
                                totals.error(
                                    who,
                                    format_args!("batch {} refused: {}", a.batch_id, a.error),
                                );
                            }
                            totals
                                .latencies_us
                                .lock()
                                .expect("latencies")
                                .push(t.elapsed().as_micros() as u64);
                        }
                    }
                    Some(Ok(ServerMessage {
                        msg: Some(server_message::Msg::EventTable(t)),
                    })) => {
                        if !t.queries.is_empty() {
                            totals.tables.fetch_add(1, Ordering::Relaxed);
                            if row_on_table {
                                let sent_us = chrono::Utc::now().timestamp_micros();
                                let r = row(t.version, row_bytes, sent_us);
                                let _ = answers_tx.send((artifact.clone(), vec![r]));
                            }
                        }
                    }
                    Some(Ok(ServerMessage {
                        msg: Some(server_message::Msg::FlowRequest(r)),
                    })) => {
                        totals.flows.fetch_add(1, Ordering::Relaxed);
                        let queue = talon_core::flows::RESPONSES_QUEUE.to_string();
                        let _ = answers_tx.send((queue, answer(&r, who)));
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => {
                        totals.error(who, format_args!("session ended: {e}"));
                        return;
                    }
                    None => {
                        totals.error(who, "session ended without a status");
                        return;
                    }
                }
            }
        })
    };
    // Send a batch every 100 ms (fewer for slow rates), carrying the rows due by then.
    let tick = Duration::from_millis(100);
    let mut interval = tokio::time::interval(tick);
    let start = Instant::now();
    let (mut due, mut sent, mut batch_id) = (0.0f64, 0u64, 0u64);
    // Each session is a spool incarnation of its own: its batch ids start again at 1.
    let incarnation: u64 = rand::random();
    let mut ended = false;
    loop {
        let answer = tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            // The server ended the session (its acks stream is over).
            _ = &mut acks => { ended = true; break }
            a = answers.recv() => a,
            _ = interval.tick() => None,
        };
        if let Some((queue, rows)) = answer {
            batch_id += 1;
            sent_at
                .lock()
                .expect("sent")
                .insert(batch_id, (Instant::now(), 0));
            let msg = ClientMessage {
                msg: Some(client_message::Msg::Events(EventBatch {
                    batch_id,
                    incarnation,
                    queues: vec![QueueRows {
                        artifact: queue,
                        rows_json: rows,
                    }],
                })),
            };
            if tx.send(msg).await.is_err() {
                ended = true;
                break;
            }
            continue;
        }
        if cfg.rate <= 0.0 {
            continue;
        }
        due = cfg.rate * start.elapsed().as_secs_f64();
        let n = due as u64 - sent;
        if n == 0 {
            continue;
        }
        let sent_us = chrono::Utc::now().timestamp_micros();
        let rows: Vec<String> = (0..n)
            .map(|i| row(sent + i, cfg.row_bytes, sent_us))
            .collect();
        batch_id += 1;
        sent_at
            .lock()
            .expect("sent")
            .insert(batch_id, (Instant::now(), n));
        let msg = ClientMessage {
            msg: Some(client_message::Msg::Events(EventBatch {
                batch_id,
                incarnation,
                queues: vec![QueueRows {
                    artifact: cfg.artifact.clone(),
                    rows_json: rows,
                }],
            })),
        };
        if tx.send(msg).await.is_err() {
            totals.error(who, "the session's stream closed");
            ended = true;
            break;
        }
        sent += n;
        totals.sent.fetch_add(n, Ordering::Relaxed);
    }
    let _ = due;
    if ended {
        return true;
    }
    // Wait briefly for outstanding acks.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !sent_at.lock().expect("sent").is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    acks.abort();
    false
}

/// A simulated client's answer to a collection: each query starts, returns one small row
/// and ends well.
fn answer(r: &FlowRequest, who: usize) -> Vec<String> {
    let now = chrono::Utc::now().timestamp_micros();
    let total = r.queries.len();
    let mut rows = Vec::with_capacity(3 * total);
    for (i, q) in r.queries.iter().enumerate() {
        let status = |code: i64, result_rows: u64| {
            serde_json::json!({"FlowId": r.flow_id, "Source": q.queue, "Status": {
                "status": code, "Artifact": q.queue, "query_id": i, "total_queries": total,
                "result_rows": result_rows, "first_active": now, "last_active": now,
            }})
            .to_string()
        };
        rows.push(status(talon_core::flows::STATUS_PROGRESS, 0));
        rows.push(
            serde_json::json!({"FlowId": r.flow_id, "Source": q.queue,
                "Row": {"Simulated": who, "Hostname": format!("sim-{who}")}})
            .to_string(),
        );
        rows.push(status(talon_core::flows::STATUS_OK, 1));
    }
    rows
}

fn pct(v: &[u64], p: f64) -> u64 {
    if v.is_empty() {
        return 0;
    }
    v[((v.len() - 1) as f64 * p).round() as usize]
}

/// Runs the simulation; prints progress every second and the JSON summary last.
pub async fn run(cfg: SimConfig) -> anyhow::Result<()> {
    let cfg = Arc::new(cfg);
    let totals = Arc::new(Totals::default());
    let stop = Shutdown::default();
    let mut tasks = Vec::with_capacity(cfg.clients);
    for n in 0..cfg.clients {
        tasks.push(stop.spawn_in(
            tracing::debug_span!("sim-client", n),
            one_client(n, cfg.clone(), totals.clone(), stop.clone()),
        ));
        if n % 200 == 199 {
            tokio::task::yield_now().await;
        }
    }
    let start = Instant::now();
    let mut last_acked = 0;
    while start.elapsed() < cfg.duration {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let acked = totals.acked.load(Ordering::Relaxed);
        eprintln!(
            "{:>4.0}s connected {} sent {} acked {} ({} rows/s) errors {} tables {} reconnects {} collections {}",
            start.elapsed().as_secs_f64(),
            totals.connected.load(Ordering::Relaxed),
            totals.sent.load(Ordering::Relaxed),
            acked,
            acked - last_acked,
            totals.errors.load(Ordering::Relaxed),
            totals.tables.load(Ordering::Relaxed),
            totals.reconnects.load(Ordering::Relaxed),
            totals.flows.load(Ordering::Relaxed)
        );
        last_acked = acked;
    }
    stop.cancel();
    for t in tasks {
        let _ = t.await;
    }
    let mut lat = std::mem::take(&mut *totals.latencies_us.lock().expect("latencies"));
    lat.sort_unstable();
    // Rates are over the sending period, not the wait for the last acks.
    let secs = cfg.duration.as_secs_f64();
    let acked = totals.acked.load(Ordering::Relaxed);
    println!(
        "{}",
        serde_json::json!({
            "clients_connected": totals.peak.load(Ordering::Relaxed),
            "rows_sent": totals.sent.load(Ordering::Relaxed),
            "rows_acked": acked,
            "acked_rows_per_s": (acked as f64 / secs).round(),
            "errors": totals.errors.load(Ordering::Relaxed),
            "tables_received": totals.tables.load(Ordering::Relaxed),
            "reconnects": totals.reconnects.load(Ordering::Relaxed),
            "collections_answered": totals.flows.load(Ordering::Relaxed),
            "ack_latency_ms": {"p50": pct(&lat, 0.5) as f64 / 1000.0, "p99": pct(&lat, 0.99) as f64 / 1000.0},
        })
    );
    Ok(())
}
