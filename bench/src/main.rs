//! `talon-bench`: Talon's benchmarks. Each prints its figures beside a raw baseline measured
//! in the same run; the last line of output is one JSON object with every figure.

use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use serde_json::{json, Map, Value};
use talon_artifacts::Repository;
use talon_shared::queue::{Limits, QueueManager, ROOT_ORG};
use talon_shared::store::Store;

mod cluster;
mod vql;

#[derive(Parser)]
#[command(name = "talon-bench")]
struct Args {
    #[command(subcommand)]
    bench: Bench,
}

#[derive(Subcommand)]
enum Bench {
    /// Durable push rate beside raw redb inserts of the same rows, and watch latency
    Store {
        /// Approximate bytes of JSON per row
        #[arg(long, default_value_t = 200)]
        row_bytes: usize,
        /// Seconds each measurement runs at most
        #[arg(long, default_value_t = 5.0)]
        seconds: f64,
        /// Rows timed for watch latency
        #[arg(long, default_value_t = 2000)]
        latency_samples: usize,
    },
    /// Raw async-nats JetStream publishing of Talon-shaped batches (the cluster baseline)
    Jetstream {
        #[arg(long)]
        nats_url: String,
        /// NATS user and password (as Talon's nodes use)
        #[arg(long)]
        user: Option<String>,
        #[arg(long)]
        password: Option<String>,
        /// CA certificate file (PEM): connect over TLS checked against it
        #[arg(long, value_name = "FILE")]
        tls_ca: Option<std::path::PathBuf>,
        #[arg(long, default_value_t = 1_000_000)]
        rows: usize,
        /// Rows per message
        #[arg(long, default_value_t = 100)]
        batch: usize,
        #[arg(long, default_value_t = 200)]
        row_bytes: usize,
        /// Concurrent publishers, each waiting for its ack
        #[arg(long, default_value_t = 100)]
        publishers: usize,
    },
    /// Counts a queue's rows arriving at a node's debug watch, with latency from SentUs
    Watch {
        /// The node's debug HTTP address
        #[arg(long)]
        debug: String,
        #[arg(long, default_value = "Generic.Client.Stats")]
        queue: String,
        /// Stop after this many rows
        #[arg(long)]
        rows: usize,
        /// Stop after this many seconds
        #[arg(long, default_value_t = 120.0)]
        timeout: f64,
        /// Stop once rows have come and none came for this many seconds
        #[arg(long, default_value_t = 3.0)]
        idle: f64,
    },
    /// VQL parse rate, and a filter over in-memory rows beside a hand-written Rust loop
    Vql {
        /// Rows to filter
        #[arg(long, default_value_t = 1_000_000)]
        rows: usize,
        /// Seconds the parse measurement runs
        #[arg(long, default_value_t = 3.0)]
        seconds: f64,
    },
}

const QUEUE: &str = "Server.Audit.Logs";
const BATCHES: [usize; 3] = [1, 100, 10_000];
const CONCURRENT_PRODUCERS: usize = 64;

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let rt = tokio::runtime::Runtime::new()?;
    match args.bench {
        Bench::Vql { rows, seconds } => rt.block_on(vql::run(rows, seconds)),
        Bench::Jetstream {
            nats_url,
            user,
            password,
            tls_ca,
            rows,
            batch,
            row_bytes,
            publishers,
        } => rt.block_on(cluster::jetstream_baseline(
            &nats_url,
            cluster::NatsLogin {
                user,
                password,
                tls_ca,
            },
            rows,
            batch,
            row_bytes,
            publishers,
        )),
        Bench::Watch {
            debug,
            queue,
            rows,
            timeout,
            idle,
        } => cluster::watch(&debug, &queue, rows, timeout, idle),
        Bench::Store {
            row_bytes,
            seconds,
            latency_samples,
        } => rt.block_on(store_bench(
            row_bytes,
            Duration::from_secs_f64(seconds),
            latency_samples,
        )),
    }
}

/// A row of about `bytes` bytes of JSON, once `_ts` and `_Source` are added.
fn make_row(i: usize, bytes: usize) -> Map<String, Value> {
    let base = json!({"Timestamp": 1_763_800_000 + i, "Host": "host-0042", "Event": "ProcessStart", "Pid": i % 65536, "Data": ""});
    let mut m = base.as_object().unwrap().clone();
    let overhead = serde_json::to_string(&m).unwrap().len() + 40; // + _ts, _Source
    m.insert(
        "Data".into(),
        Value::from("x".repeat(bytes.saturating_sub(overhead))),
    );
    m
}

/// Rows per second of raw redb: one transaction per batch, one insert per row.
fn raw_redb(rows: &[Vec<u8>], batch: usize, budget: Duration) -> anyhow::Result<(usize, f64)> {
    const T: redb::TableDefinition<(&str, u64), &[u8]> = redb::TableDefinition::new("raw");
    let dir = tempfile::tempdir()?;
    let db = redb::Database::create(dir.path().join("raw.redb"))?;
    let start = Instant::now();
    let mut done = 0;
    let mut seq = 0u64;
    while start.elapsed() < budget {
        let w = db.begin_write()?;
        {
            let mut t = w.open_table(T)?;
            for _ in 0..batch {
                let row = &rows[seq as usize % rows.len()];
                seq += 1;
                t.insert(("root\u{1f}Server.Audit.Logs", seq), row.as_slice())?;
            }
        }
        w.commit()?;
        done += batch;
    }
    Ok((done, done as f64 / start.elapsed().as_secs_f64()))
}

async fn open_manager(dir: &tempfile::TempDir) -> anyhow::Result<(QueueManager, Store)> {
    let store = Store::open(&dir.path().join("talon.redb"))?;
    let qm = QueueManager::new(
        Repository::with_builtins(),
        store.clone(),
        Limits::default(),
    );
    Ok((qm, store))
}

/// Rows per second through the queue manager's durable push, one producer. Only the push
/// calls are timed: building the caller's rows is the caller's work.
async fn talon_push(
    rows: &[Map<String, Value>],
    batch: usize,
    budget: Duration,
) -> anyhow::Result<(usize, f64)> {
    let dir = tempfile::tempdir()?;
    let (qm, store) = open_manager(&dir).await?;
    let mut pushing = Duration::ZERO;
    let mut done = 0;
    while pushing < budget {
        let chunk: Vec<_> = (0..batch)
            .map(|i| rows[(done + i) % rows.len()].clone())
            .collect();
        let t0 = Instant::now();
        qm.push(ROOT_ORG, QUEUE, chunk, "bench", "").await?;
        pushing += t0.elapsed();
        done += batch;
    }
    let rate = done as f64 / pushing.as_secs_f64();
    store.close().await;
    Ok((done, rate))
}

/// Rows per second of single-row pushes from many concurrent producers (group commit).
async fn talon_concurrent(
    rows: Arc<Vec<Map<String, Value>>>,
    budget: Duration,
) -> anyhow::Result<(usize, f64)> {
    let dir = tempfile::tempdir()?;
    let (qm, store) = open_manager(&dir).await?;
    let start = Instant::now();
    let mut tasks = Vec::new();
    let spawner = talon_core::Shutdown::default();
    for p in 0..CONCURRENT_PRODUCERS {
        let qm = qm.clone();
        let rows = rows.clone();
        tasks.push(spawner.spawn("producer", async move {
            let mut n = 0;
            while start.elapsed() < budget {
                let row = rows[(p + n) % rows.len()].clone();
                qm.push(ROOT_ORG, QUEUE, vec![row], "bench", "")
                    .await
                    .expect("push");
                n += 1;
            }
            n
        }));
    }
    let mut done = 0;
    for t in tasks {
        done += t.await?;
    }
    let rate = done as f64 / start.elapsed().as_secs_f64();
    store.close().await;
    Ok((done, rate))
}

/// Microseconds from the start of a single-row push to its arrival at a watcher.
async fn watch_latency(rows: &[Map<String, Value>], samples: usize) -> anyhow::Result<Vec<f64>> {
    let dir = tempfile::tempdir()?;
    let (qm, store) = open_manager(&dir).await?;
    let mut watcher = qm.watch(ROOT_ORG, QUEUE, "bench").await?;
    let mut lat = Vec::with_capacity(samples);
    for i in 0..samples {
        let t0 = Instant::now();
        let push = qm.push(
            ROOT_ORG,
            QUEUE,
            vec![rows[i % rows.len()].clone()],
            "bench",
            "",
        );
        let (pushed, got) = tokio::join!(push, watcher.next());
        pushed?;
        got?;
        lat.push(t0.elapsed().as_secs_f64() * 1e6);
    }
    store.close().await;
    lat.sort_by(|a, b| a.total_cmp(b));
    Ok(lat)
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

async fn store_bench(row_bytes: usize, budget: Duration, samples: usize) -> anyhow::Result<()> {
    let rows: Vec<Map<String, Value>> = (0..20_000).map(|i| make_row(i, row_bytes)).collect();
    // The raw baseline stores the same rows as Talon does: JSON with _ts and _Source.
    let raw_rows: Vec<Vec<u8>> = rows
        .iter()
        .map(|r| {
            let mut r = r.clone();
            r.insert("_ts".into(), Value::from(1_763_800_000i64));
            r.insert("_Source".into(), Value::from("bench"));
            serde_json::to_vec(&r).unwrap()
        })
        .collect();
    let avg = raw_rows.iter().map(Vec::len).sum::<usize>() / raw_rows.len();
    println!(
        "durable push, rows of {avg} bytes, {:.0} s per measurement",
        budget.as_secs_f64()
    );
    println!(
        "{:>8}  {:>14}  {:>14}  {:>6}",
        "batch", "talon rows/s", "redb rows/s", "ratio"
    );
    let mut figures = Map::new();
    for batch in BATCHES {
        let (_, raw) = raw_redb(&raw_rows, batch, budget)?;
        let (_, talon) = talon_push(&rows, batch, budget).await?;
        println!(
            "{batch:>8}  {talon:>14.0}  {raw:>14.0}  {:>6.2}",
            talon / raw
        );
        figures.insert(
            format!("batch_{batch}"),
            json!({"talon_rows_per_s": talon.round(), "redb_rows_per_s": raw.round(), "ratio": (talon / raw * 100.0).round() / 100.0}),
        );
    }
    let (_, raw1) = raw_redb(&raw_rows, 1, budget)?;
    let (_, conc) = talon_concurrent(Arc::new(rows.clone()), budget).await?;
    println!(
        "{:>8}  {conc:>14.0}  {raw1:>14.0}  {:>6.2}   ({CONCURRENT_PRODUCERS} concurrent producers of single rows: group commit)",
        "1 x 64",
        conc / raw1
    );
    figures.insert(
        "batch_1_x64_producers".into(),
        json!({"talon_rows_per_s": conc.round(), "redb_rows_per_s": raw1.round(), "ratio": (conc / raw1 * 100.0).round() / 100.0}),
    );
    let lat = watch_latency(&rows, samples).await?;
    let (p50, p99) = (pct(&lat, 0.5), pct(&lat, 0.99));
    println!("watch latency (push start to watcher), {samples} single-row pushes: p50 {p50:.0} us, p99 {p99:.0} us");
    figures.insert(
        "watch_latency_us".into(),
        json!({"p50": p50.round(), "p99": p99.round(), "samples": samples}),
    );
    figures.insert("row_bytes".into(), json!(avg));
    println!("{}", Value::Object(figures));
    Ok(())
}
