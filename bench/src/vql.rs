//! `talon-bench vql`: parse rate over the project's artifacts, and a filter over a million
//! in-memory rows beside a hand-written Rust loop doing the same filter.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{json, Map, Value as J};
use talon_vql::engine::QueryInfo;
use talon_vql::value::{Row, StoredQuery, Value};
use talon_vql::Runner;
use tokio_util::sync::CancellationToken;

const FILTER: &str = "SELECT * FROM Q WHERE x =~ 'ab' AND y > 5";

/// Every query text of the built-in artifacts and the VQL scenario files.
fn artifact_queries() -> Vec<String> {
    let mut out = Vec::new();
    let scenarios = concat!(env!("CARGO_MANIFEST_DIR"), "/../vql/tests/scenarios");
    if let Ok(dir) = std::fs::read_dir(scenarios) {
        for f in dir.flatten() {
            let text = std::fs::read_to_string(f.path()).unwrap_or_default();
            let cases: Vec<J> = serde_json::from_str(&text).unwrap_or_default();
            out.extend(
                cases
                    .iter()
                    .filter(|c| c.get("error").is_none())
                    .filter_map(|c| c["query"].as_str().map(str::to_string)),
            );
        }
    }
    for a in talon_artifacts::builtin::all() {
        for s in &a.def.sources {
            out.extend(s.query.clone());
            out.extend(s.precondition.clone());
        }
        out.extend(a.def.export.clone());
        out.extend(a.def.precondition.clone());
    }
    out
}

fn rows(n: usize) -> Vec<Row> {
    // A fixed pseudo-random sequence, so both sides see the same rows.
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let alphabet = b"abcdefgh";
    (0..n)
        .map(|_| {
            let s: String = (0..12)
                .map(|_| alphabet[(next() % 8) as usize] as char)
                .collect();
            let mut r = Row::new();
            r.insert("x".into(), Value::Str(s));
            r.insert("y".into(), Value::Int((next() % 10) as i64));
            r
        })
        .collect()
}

pub async fn run(rows_n: usize, seconds: f64) -> anyhow::Result<()> {
    let mut figures = Map::new();
    // Parse rate.
    let queries = artifact_queries();
    let statements: usize = queries
        .iter()
        .map(|q| talon_vql::parse(q).map(|p| p.stmts.len()).unwrap_or(0))
        .sum();
    let budget = Duration::from_secs_f64(seconds);
    let start = Instant::now();
    let mut parsed = 0usize;
    while start.elapsed() < budget {
        for q in &queries {
            parsed += talon_vql::parse(q).map(|p| p.stmts.len()).unwrap_or(0);
        }
    }
    let parse_rate = parsed as f64 / start.elapsed().as_secs_f64();
    println!(
        "parse: {} queries ({statements} statements) of the built-in artifacts and VQL scenarios: {parse_rate:.0} statements/s",
        queries.len()
    );
    figures.insert("parse_statements_per_s".into(), json!(parse_rate.round()));

    // Filter over rows.
    let data = Arc::new(rows(rows_n));
    let re = regex::Regex::new("(?i)ab")?;
    let t0 = Instant::now();
    let mut kept = Vec::new();
    for r in data.iter() {
        let x_ok = matches!(r.get("x"), Some(Value::Str(s)) if re.is_match(s));
        let y_ok = matches!(r.get("y"), Some(Value::Int(y)) if *y > 5);
        if x_ok && y_ok {
            kept.push(r.clone());
        }
    }
    let loop_secs = t0.elapsed().as_secs_f64();
    let loop_kept = kept.len();
    drop(kept);

    let runner = Runner::default();
    let env = vec![(
        "Q".to_string(),
        Value::Query(StoredQuery::Rows(data.clone())),
    )];
    let t0 = Instant::now();
    let stream = runner
        .run(
            FILTER,
            env,
            QueryInfo::default(),
            CancellationToken::new(),
            Arc::new(|_| {}),
        )
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let vql_kept = stream.count().await;
    let vql_secs = t0.elapsed().as_secs_f64();
    anyhow::ensure!(
        vql_kept == loop_kept,
        "VQL kept {vql_kept} rows, the loop {loop_kept}"
    );
    let (vql_rate, loop_rate) = (rows_n as f64 / vql_secs, rows_n as f64 / loop_secs);
    println!("filter `{FILTER}` over {rows_n} rows ({vql_kept} kept):");
    println!("  vql        {vql_rate:>12.0} rows/s");
    println!("  rust loop  {loop_rate:>12.0} rows/s");
    println!("  ratio      {:>12.3}", vql_rate / loop_rate);
    figures.insert(
        "filter".into(),
        json!({"rows": rows_n, "kept": vql_kept, "vql_rows_per_s": vql_rate.round(), "loop_rows_per_s": loop_rate.round(), "ratio": (vql_rate / loop_rate * 1000.0).round() / 1000.0}),
    );
    println!("{}", J::Object(figures));
    Ok(())
}
