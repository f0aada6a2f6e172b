//! `talon query 'VQL'`: runs VQL on the server, streaming rows (and log lines on stderr).

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use clap::ValueEnum;
use serde_json::Value;
use talon_proto::api::query_response::Item;
use talon_proto::api::QueryRequest;

use crate::{connect, output, status_error};

/// How rows are printed.
#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum QueryFormat {
    /// One JSON object per line, as rows arrive
    Jsonl,
    /// One JSON array at the end
    Json,
    /// An aligned table at the end
    Table,
}

/// Runs a query; an event query runs until `timeout` or Ctrl-C, then exits 0. A query
/// that logged an ERROR and produced no row failed: it exits 1.
pub async fn run(
    api: &str,
    org: &str,
    query: String,
    format: QueryFormat,
    timeout: Option<f64>,
    env: Vec<String>,
) -> anyhow::Result<ExitCode> {
    let mut vars = std::collections::HashMap::new();
    for e in env {
        let Some((k, v)) = e.split_once('=') else {
            anyhow::bail!("--env {e:?}: expected KEY=VALUE");
        };
        vars.insert(k.to_string(), v.to_string());
    }
    // The clock starts now: a server slow to answer counts against --timeout too.
    let deadline =
        timeout.map(|s| tokio::time::Instant::now() + Duration::from_secs_f64(s.max(0.0)));
    let mut client = connect(api).await?;
    let call = client.query(QueryRequest {
        org: org.into(),
        query,
        env: vars,
        timeout_secs: timeout.unwrap_or(0.0).max(0.0),
        max_rows: 0,
    });
    let answered = match deadline {
        Some(d) => match tokio::time::timeout_at(d, call).await {
            Ok(answered) => answered,
            Err(_) => {
                eprintln!("no answer within the timeout");
                return Ok(ExitCode::SUCCESS);
            }
        },
        None => call.await,
    };
    let mut stream = answered.map_err(status_error)?.into_inner();
    let mut rows: Vec<Value> = Vec::new();
    let (mut rows_seen, mut errors) = (0u64, 0u64);
    let mut out = std::io::stdout().lock();
    loop {
        let next = tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            } => break,
            m = stream.message() => m.map_err(status_error)?,
        };
        let Some(msg) = next else { break };
        match &msg.item {
            Some(Item::RowJson(_)) => rows_seen += 1,
            Some(Item::Log(l)) if l.level == "ERROR" => errors += 1,
            _ => {}
        }
        match msg.item {
            Some(Item::RowJson(json)) => match format {
                QueryFormat::Jsonl => {
                    if writeln!(out, "{json}").and_then(|_| out.flush()).is_err() {
                        return Ok(ExitCode::SUCCESS);
                    }
                }
                _ => rows.push(serde_json::from_str(&json).unwrap_or(Value::Null)),
            },
            Some(Item::Log(l)) => eprintln!("{}: {}", l.level, l.message),
            None => {}
        }
    }
    match format {
        QueryFormat::Jsonl => {}
        QueryFormat::Json => output::print_json(&Value::Array(rows))?,
        QueryFormat::Table => {
            let mut cols: Vec<String> = Vec::new();
            for r in &rows {
                if let Value::Object(m) = r {
                    for k in m.keys() {
                        if !cols.contains(k) {
                            cols.push(k.clone());
                        }
                    }
                }
            }
            let cells = rows
                .iter()
                .map(|r| {
                    cols.iter()
                        .map(|c| match r.get(c) {
                            None | Some(Value::Null) => String::new(),
                            Some(Value::String(s)) => s.clone(),
                            Some(v) => v.to_string(),
                        })
                        .collect()
                })
                .collect();
            let header: Vec<&str> = cols.iter().map(String::as_str).collect();
            output::print_table(&header, cells)?;
        }
    }
    if errors > 0 && rows_seen == 0 {
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}
