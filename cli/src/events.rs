//! `talon events ...`: push, watch, read and export the rows of queues.

use std::collections::HashMap;
use std::io::{BufRead, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Subcommand, ValueEnum};
use serde_json::Value;
use talon_core::timefmt;
use talon_proto::api::*;

use crate::{connect, output, status_error};

/// Bytes of rows one push request carries at most (a bigger single row goes alone).
pub const PUSH_CHUNK_BYTES: usize = 4 * 1024 * 1024;
/// Rows one push request carries at most.
pub const PUSH_CHUNK_ROWS: usize = 10_000;

#[derive(Subcommand, Debug)]
pub enum EventsCmd {
    /// Push rows to a SERVER_EVENT queue: each --row, or JSON Lines from stdin
    Push {
        artifact: String,
        /// A row as a JSON object; repeatable
        #[arg(long = "row", value_name = "JSON")]
        rows: Vec<String>,
        /// Name of this push, so sending the same rows again after a failure stores each
        /// row once (a push of several requests picks one and prints it when cut off)
        #[arg(long, value_name = "ID")]
        push_id: Option<String>,
    },
    /// Print rows pushed to a queue from now on, as JSON Lines
    Watch {
        artifact: String,
        /// Exit 0 after this many rows
        #[arg(long)]
        count: Option<u64>,
        /// Exit 1 if the rows have not arrived within this many seconds
        #[arg(long, value_name = "SECS")]
        timeout: Option<f64>,
    },
    /// Print stored rows of a queue in a time range, as JSON Lines
    Read {
        artifact: String,
        /// Only rows of this client
        #[arg(long)]
        client_id: Option<String>,
        /// RFC 3339 or unix seconds
        #[arg(long, value_name = "TIME")]
        start: Option<String>,
        /// RFC 3339 or unix seconds
        #[arg(long, value_name = "TIME")]
        end: Option<String>,
    },
    /// Write stored rows into per-day files laid out like Velociraptor's
    Export {
        artifact: String,
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        #[arg(long, value_enum, default_value = "jsonl")]
        format: ExportFormat,
    },
}

/// Export file format.
#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum ExportFormat {
    Jsonl,
    Csv,
}

/// Runs an events subcommand.
pub async fn run(api: &str, org: &str, cmd: EventsCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        EventsCmd::Push {
            artifact,
            rows,
            push_id,
        } => push(api, org, &artifact, rows, push_id).await,
        EventsCmd::Watch {
            artifact,
            count,
            timeout,
        } => watch(api, org, &artifact, count, timeout).await,
        EventsCmd::Read {
            artifact,
            client_id,
            start,
            end,
        } => {
            let req = read_request(org, &artifact, client_id, start, end)?;
            let mut stream = connect(api)
                .await?
                .read(req)
                .await
                .map_err(status_error)?
                .into_inner();
            let mut out = BufWriter::new(std::io::stdout().lock());
            while let Some(row) = stream.message().await.map_err(status_error)? {
                if writeln!(out, "{}", row.json).is_err() {
                    return Ok(ExitCode::SUCCESS); // reader went away
                }
            }
            let _ = out.flush();
            Ok(ExitCode::SUCCESS)
        }
        EventsCmd::Export {
            artifact,
            out,
            format,
        } => export(api, org, &artifact, &out, format).await,
    }
}

fn read_request(
    org: &str,
    artifact: &str,
    client_id: Option<String>,
    start: Option<String>,
    end: Option<String>,
) -> anyhow::Result<ReadRequest> {
    let parse = |flag: &str, t: Option<String>| -> anyhow::Result<i64> {
        t.map(|t| timefmt::parse_time(&t).map_err(|e| anyhow::anyhow!("--{flag}: {e}")))
            .transpose()
            .map(|v| v.unwrap_or(0))
    };
    Ok(ReadRequest {
        org: org.into(),
        artifact: artifact.into(),
        client_id: client_id.unwrap_or_default(),
        start_us: parse("start", start)?,
        end_us: parse("end", end)?,
    })
}

/// A row to push and where it came from, for error messages.
struct InputRow {
    origin: String,
    json: String,
}

async fn push(
    api: &str,
    org: &str,
    artifact: &str,
    rows: Vec<String>,
    push_id: Option<String>,
) -> anyhow::Result<ExitCode> {
    let input: Vec<InputRow> = if rows.is_empty() {
        let mut v = Vec::new();
        for (i, line) in std::io::stdin().lock().split(b'\n').enumerate() {
            let line = line.context("cannot read stdin")?;
            let Ok(line) = String::from_utf8(line) else {
                anyhow::bail!("stdin line {}: not valid UTF-8", i + 1);
            };
            let line = line.strip_suffix('\r').map(str::to_string).unwrap_or(line);
            if !line.trim().is_empty() {
                v.push(InputRow {
                    origin: format!("stdin line {}", i + 1),
                    json: line,
                });
            }
        }
        v
    } else {
        rows.into_iter()
            .enumerate()
            .map(|(i, json)| InputRow {
                origin: format!("--row {}", i + 1),
                json,
            })
            .collect()
    };
    // Check every row before sending any, so bad input writes nothing.
    for r in &input {
        match serde_json::from_str::<Value>(&r.json) {
            Ok(Value::Object(_)) => {}
            Ok(_) => anyhow::bail!("{}: a row must be a JSON object", r.origin),
            Err(e) => anyhow::bail!("{}: invalid JSON: {e}", r.origin),
        }
    }
    if input.is_empty() {
        anyhow::bail!("no rows to push: give --row JSON or JSON Lines on stdin");
    }
    let mut client = connect(api).await?;
    let mut chunks = Vec::new();
    let mut start = 0;
    while start < input.len() {
        let mut end = start;
        let mut bytes = 0;
        while end < input.len()
            && end - start < PUSH_CHUNK_ROWS
            && (end == start || bytes + input[end].json.len() <= PUSH_CHUNK_BYTES)
        {
            bytes += input[end].json.len();
            end += 1;
        }
        chunks.push(start..end);
        start = end;
    }
    // A push of several requests (or one the user named) is sent as numbered parts of one
    // push id, so sending it again after a failure stores every row once.
    let push_id =
        push_id.or_else(|| (chunks.len() > 1).then(|| format!("{:032x}", rand::random::<u128>())));
    let request = |part: usize, range: &std::ops::Range<usize>, validate_only: bool| PushRequest {
        org: org.into(),
        artifact: artifact.into(),
        rows_json: input[range.clone()]
            .iter()
            .map(|r| r.json.clone().into_bytes())
            .collect(),
        validate_only,
        push_id: push_id.clone().unwrap_or_default(),
        part: if push_id.is_some() {
            part as u64 + 1
        } else {
            0
        },
    };
    // A push of several requests is checked whole by the server first, so a bad row
    // anywhere stores nothing.
    if chunks.len() > 1 {
        for (part, range) in chunks.iter().enumerate() {
            if let Err(s) = client.push(request(part, range, true)).await {
                return Err(anyhow::anyhow!(locate_row_error(
                    s.message(),
                    &input[range.clone()]
                )));
            }
        }
    }
    let mut pushed = 0usize;
    let mut already = 0usize;
    for (part, range) in chunks.iter().enumerate() {
        let (start, end) = (range.start, range.end);
        let sent = client.push(request(part, range, false)).await;
        if let Ok(r) = &sent {
            // A part stored before under this push id is not stored again.
            if push_id.is_some() && r.get_ref().rows == 0 {
                already += end - start;
            }
        }
        if let Err(s) = sent {
            let msg = locate_row_error(s.message(), &input[start..end]);
            match (&push_id, pushed) {
                (Some(id), p) if p > 0 => anyhow::bail!(
                    "{msg} ({p} earlier rows were pushed; send the same rows again with --push-id {id} to store the rest, each row once)"
                ),
                (None, p) if p > 0 => anyhow::bail!("{msg} ({p} earlier rows were pushed)"),
                _ => return Err(anyhow::anyhow!(msg)),
            }
        }
        pushed += end - start;
    }
    if already > 0 {
        println!(
            "pushed {} rows to {artifact} ({already} were stored before under this push id)",
            pushed - already
        );
    } else {
        println!("pushed {pushed} rows to {artifact}");
    }
    Ok(ExitCode::SUCCESS)
}

/// Rewrites the server's `row N: ...` into the row's origin (`stdin line 7: ...`).
fn locate_row_error(msg: &str, chunk: &[InputRow]) -> String {
    if let Some(rest) = msg.strip_prefix("row ") {
        if let Some((n, tail)) = rest.split_once(": ") {
            if let Some(r) = n.parse::<usize>().ok().and_then(|n| chunk.get(n)) {
                return format!("{}: {tail}", r.origin);
            }
        }
    }
    msg.to_string()
}

async fn watch(
    api: &str,
    org: &str,
    artifact: &str,
    count: Option<u64>,
    timeout: Option<f64>,
) -> anyhow::Result<ExitCode> {
    let deadline = timeout.map(|s| Instant::now() + Duration::from_secs_f64(s.max(0.0)));
    let mut stream = connect(api)
        .await?
        .watch(WatchRequest {
            org: org.into(),
            artifact: artifact.into(),
            watcher_name: String::new(),
        })
        .await
        .map_err(status_error)?
        .into_inner();
    let mut seen = 0u64;
    let mut out = std::io::stdout().lock();
    if count == Some(0) {
        return Ok(ExitCode::SUCCESS);
    }
    loop {
        let next = match deadline {
            Some(d) => match tokio::time::timeout_at(d.into(), stream.message()).await {
                Ok(r) => r,
                Err(_) => {
                    let want = count.map(|c| format!(" of {c}")).unwrap_or_default();
                    anyhow::bail!(
                        "timed out after {}s with {seen}{want} rows",
                        timeout.unwrap_or(0.0)
                    );
                }
            },
            None => stream.message().await,
        };
        let Some(row) = next.map_err(status_error)? else {
            anyhow::bail!("the server ended the watch after {seen} rows");
        };
        if writeln!(out, "{}", row.json)
            .and_then(|_| out.flush())
            .is_err()
        {
            return Ok(ExitCode::SUCCESS);
        }
        seen += 1;
        if count.is_some_and(|c| seen >= c) {
            return Ok(ExitCode::SUCCESS);
        }
    }
}

/// One export file being written.
enum Sink {
    Jsonl(BufWriter<std::fs::File>),
    /// CSV needs every column before its header, so rows wait in memory.
    Csv(Vec<serde_json::Map<String, Value>>),
}

async fn export(
    api: &str,
    org: &str,
    artifact: &str,
    out_dir: &Path,
    format: ExportFormat,
) -> anyhow::Result<ExitCode> {
    let mut client = connect(api).await?;
    let base = artifact.split('/').next().unwrap_or(artifact).to_string();
    let def = client
        .get_artifact(GetArtifactRequest { name: base })
        .await
        .map_err(status_error)?
        .into_inner();
    let client_queue = def.r#type == "CLIENT_EVENT";
    let mut stream = client
        .read(read_request(org, artifact, None, None, None)?)
        .await
        .map_err(status_error)?
        .into_inner();
    let ext = match format {
        ExportFormat::Jsonl => "json",
        ExportFormat::Csv => "csv",
    };
    let mut sinks: HashMap<PathBuf, Sink> = HashMap::new();
    let mut rows = 0u64;
    let started = Instant::now();
    while let Some(row) = stream.message().await.map_err(status_error)? {
        let day = timefmt::utc_day(row.timestamp_us);
        let dir = if client_queue {
            let id = if row.client_id.is_empty() {
                "server"
            } else {
                &row.client_id
            };
            out_dir
                .join("clients")
                .join(id)
                .join("monitoring")
                .join(artifact)
        } else {
            out_dir.join("server_artifacts").join(artifact)
        };
        let path = dir.join(format!("{day}.{ext}"));
        if !sinks.contains_key(&path) {
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            let sink = match format {
                ExportFormat::Jsonl => Sink::Jsonl(BufWriter::new(
                    std::fs::File::create(&path)
                        .with_context(|| format!("cannot create {}", path.display()))?,
                )),
                ExportFormat::Csv => Sink::Csv(Vec::new()),
            };
            sinks.insert(path.clone(), sink);
        }
        match sinks.get_mut(&path).expect("inserted above") {
            Sink::Jsonl(w) => writeln!(w, "{}", row.json)
                .with_context(|| format!("cannot write {}", path.display()))?,
            Sink::Csv(v) => match serde_json::from_str::<Value>(&row.json) {
                Ok(Value::Object(m)) => v.push(m),
                _ => anyhow::bail!("server sent a row that is not a JSON object"),
            },
        }
        rows += 1;
        if rows.is_multiple_of(100_000) {
            eprintln!(
                "exported {rows} rows ({:.0} s)",
                started.elapsed().as_secs_f64()
            );
        }
    }
    let files = sinks.len();
    for (path, sink) in sinks {
        match sink {
            Sink::Jsonl(mut w) => w.flush(),
            Sink::Csv(rows) => write_csv(&path, &rows),
        }
        .with_context(|| format!("cannot write {}", path.display()))?;
    }
    println!(
        "exported {rows} rows of {artifact} into {files} files under {}",
        out_dir.display()
    );
    Ok(ExitCode::SUCCESS)
}

fn write_csv(path: &Path, rows: &[serde_json::Map<String, Value>]) -> std::io::Result<()> {
    let mut columns: Vec<&str> = Vec::new();
    for r in rows {
        for k in r.keys() {
            if !columns.contains(&k.as_str()) {
                columns.push(k);
            }
        }
    }
    let mut w = BufWriter::new(std::fs::File::create(path)?);
    let header: Vec<String> = columns
        .iter()
        .map(|c| output::csv_field(Some(&Value::from(*c))))
        .collect();
    writeln!(w, "{}", header.join(","))?;
    for r in rows {
        let line: Vec<String> = columns
            .iter()
            .map(|c| output::csv_field(r.get(*c)))
            .collect();
        writeln!(w, "{}", line.join(","))?;
    }
    w.flush()
}
