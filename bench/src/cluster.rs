//! Cluster benchmark parts, run by `scripts/bench-cluster`:
//! - `jetstream`: the raw baseline: async-nats JetStream publishing of the same payloads
//!   Talon sends (protobuf bus batches of rows of the same size), with the same number of
//!   publishers each waiting for its ack, into a stream of its own.
//! - `watch`: a watcher on a node's debug HTTP server that counts rows as they arrive and
//!   measures each row's latency from its simulated client (`SentUs`).

use std::io::{BufRead, BufReader, Write};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use prost::Message;
use serde_json::json;
use talon_proto::bus::{BusBatch, BusRow, QueueRows};

/// Publishes `rows` rows in batches of `batch` from `publishers` concurrent publishers,
/// each waiting for JetStream's ack before its next batch; prints rows/s.
/// How the baseline reaches NATS: the same TLS and user as Talon's nodes, so both pay the
/// same transport.
#[derive(Debug, Clone, Default)]
pub struct NatsLogin {
    pub user: Option<String>,
    pub password: Option<String>,
    /// CA file (PEM) to check the server against; with it, TLS is required.
    pub tls_ca: Option<std::path::PathBuf>,
}

pub async fn jetstream_baseline(
    url: &str,
    login: NatsLogin,
    rows: usize,
    batch: usize,
    row_bytes: usize,
    publishers: usize,
) -> anyhow::Result<()> {
    let mut options = match (login.user, login.password) {
        (Some(u), p) => {
            async_nats::ConnectOptions::with_user_and_password(u, p.unwrap_or_default())
        }
        _ => async_nats::ConnectOptions::new(),
    };
    if let Some(ca) = login.tls_ca {
        options = options.add_root_certificates(ca).require_tls(true);
    }
    let client = options.connect(url).await?;
    let js = jetstream::new(client);
    let _ = js.delete_stream("BENCH_RAW").await;
    js.create_stream(jetstream::stream::Config {
        name: "BENCH_RAW".into(),
        subjects: vec!["bench.raw.>".into()],
        storage: jetstream::stream::StorageType::File,
        ..Default::default()
    })
    .await?;
    let row = format!(
        "{{\"Pad\":\"{}\"}}",
        "x".repeat(row_bytes.saturating_sub(10))
    );
    let payload = BusBatch {
        org: "root".into(),
        node: "bench".into(),
        queues: vec![QueueRows {
            queue: "Generic.Client.Stats".into(),
            rows: (0..batch)
                .map(|_| BusRow {
                    ts_us: 1,
                    client: "C.0123456789abcdef".into(),
                    json: row.clone(),
                })
                .collect(),
        }],
        client_id: "C.0123456789abcdef".into(),
        batch_id: 1,
        incarnation: 1,
        part: 0,
    }
    .encode_to_vec();
    let messages = rows.div_ceil(batch);
    let start = Instant::now();
    let mut tasks = Vec::new();
    let spawner = talon_core::Shutdown::default();
    for p in 0..publishers {
        let (js, payload) = (js.clone(), payload.clone());
        let mine = messages / publishers + usize::from(p < messages % publishers);
        tasks.push(spawner.spawn("publisher", async move {
            for i in 0..mine {
                let mut h = async_nats::HeaderMap::new();
                h.insert("Nats-Msg-Id", format!("{p}/{i}").as_str());
                js.publish_with_headers(format!("bench.raw.{p}"), h, payload.clone().into())
                    .await?
                    .await?;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let secs = start.elapsed().as_secs_f64();
    let _ = js.delete_stream("BENCH_RAW").await;
    let rate = (messages * batch) as f64 / secs;
    println!(
        "raw JetStream: {} rows in {} messages of {batch} rows ({} bytes each), {publishers} publishers: {rate:.0} rows/s",
        messages * batch,
        messages,
        payload.len()
    );
    println!(
        "{}",
        json!({"raw_jetstream_rows_per_s": rate.round(), "rows": messages * batch, "batch": batch, "publishers": publishers, "payload_bytes": payload.len()})
    );
    Ok(())
}

/// One row in this many has its latency taken.
const LATENCY_SAMPLE: usize = 16;

/// The `SentUs` field of a row, found without parsing the row.
fn sent_us(line: &[u8]) -> Option<i64> {
    const KEY: &[u8] = b"\"SentUs\":";
    let at = line.windows(KEY.len()).position(|w| w == KEY)? + KEY.len();
    let digits = line[at..].iter().take_while(|b| b.is_ascii_digit()).count();
    std::str::from_utf8(&line[at..at + digits])
        .ok()?
        .parse()
        .ok()
}

/// Watches `queue` on the node whose debug server is `debug` until `rows` rows arrived or
/// `timeout` passed, or for `idle` seconds none came; prints arrival rate and latency
/// from `SentUs`.
pub fn watch(debug: &str, queue: &str, rows: usize, timeout: f64, idle: f64) -> anyhow::Result<()> {
    let mut s = std::net::TcpStream::connect(debug)?;
    // Rows stop coming when the clients stop: end after `idle` without one.
    s.set_read_timeout(Some(Duration::from_secs_f64(idle)))?;
    write!(s, "GET /debug/watch?queue={queue} HTTP/1.0\r\n\r\n")?;
    let mut reader = BufReader::new(s);
    // Say we are watching (the script waits for this line before starting clients).
    eprintln!("watching");
    let deadline = Instant::now() + Duration::from_secs_f64(timeout);
    let mut latencies_us: Vec<i64> = Vec::with_capacity(rows / LATENCY_SAMPLE + 1);
    let (mut first, mut last) = (None, Instant::now());
    let mut seen = 0usize;
    // Lines are counted, not parsed: the watcher shares the cores with what it measures.
    let mut line = Vec::with_capacity(1024);
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line) {
            Ok(0) => break,
            Ok(_) => {}
            Err(_) if seen == 0 && Instant::now() < deadline => continue,
            Err(_) => break,
        }
        if line.first() != Some(&b'{') {
            continue;
        }
        let now = Instant::now();
        first.get_or_insert(now);
        last = now;
        seen += 1;
        if seen.is_multiple_of(LATENCY_SAMPLE) {
            if let Some(sent) = sent_us(&line) {
                latencies_us.push(chrono::Utc::now().timestamp_micros() - sent);
            }
        }
        if seen >= rows || now >= deadline {
            break;
        }
    }
    latencies_us.sort_unstable();
    let pct = |p: f64| -> f64 {
        if latencies_us.is_empty() {
            return 0.0;
        }
        let i = ((latencies_us.len() as f64 * p).ceil() as usize).clamp(1, latencies_us.len());
        latencies_us[i - 1] as f64 / 1000.0
    };
    let span = first
        .map(|f| last.duration_since(f).as_secs_f64())
        .unwrap_or(0.0);
    let rate = if span > 0.0 { seen as f64 / span } else { 0.0 };
    println!(
        "remote watcher: {seen} rows, {rate:.0} rows/s while arriving, latency from client p50 {:.1} ms, p99 {:.1} ms",
        pct(0.5),
        pct(0.99)
    );
    println!(
        "{}",
        json!({"rows_seen": seen, "watch_rows_per_s": rate.round(), "latency_ms": {"p50": pct(0.5), "p99": pct(0.99)}})
    );
    Ok(())
}
