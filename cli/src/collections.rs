//! `talon collect`, `talon flows ...` and `talon hunts ...`: collections and hunts. Each
//! command is one VQL call on the server (`collect_client()`, `flows()`, `hunt()` ...),
//! its arguments passed as one JSON variable (never spliced into the query text), so the
//! CLI, VQL and the permissions checked are the same thing.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use clap::Subcommand;
use serde_json::{json, Map, Value};
use talon_proto::api::query_response::Item;
use talon_proto::api::QueryRequest;

use crate::{connect, output, status_error, TableFormat};

#[derive(Debug, Subcommand)]
pub enum FlowsCmd {
    /// A client's flows, newest first
    List {
        client_id: String,
        #[arg(long, value_enum, default_value = "table")]
        format: TableFormat,
    },
    /// One flow, with its state and per-query status (JSON)
    Show { client_id: String, flow_id: String },
    /// A flow's result rows, one JSON object per line
    Results {
        client_id: String,
        flow_id: String,
        /// Only this artifact (or Artifact/Source)
        #[arg(long)]
        artifact: Option<String>,
    },
    /// A flow's log lines
    Logs { client_id: String, flow_id: String },
    /// Cancel a flow that has not ended
    Cancel { client_id: String, flow_id: String },
}

/// Runs `call` with `args` as the variable `Args` and returns its rows; a logged ERROR
/// is the command's error.
pub(crate) async fn call(
    api: &str,
    org: &str,
    query: &str,
    args: Value,
) -> anyhow::Result<Vec<Value>> {
    let mut rows = Vec::new();
    each_row(api, org, query, args, |r| {
        rows.push(r);
        true
    })
    .await?;
    Ok(rows)
}

pub(crate) async fn each_row(
    api: &str,
    org: &str,
    query: &str,
    args: Value,
    mut f: impl FnMut(Value) -> bool,
) -> anyhow::Result<()> {
    let mut client = connect(api).await?;
    let mut env = std::collections::HashMap::new();
    env.insert("Args".to_string(), args.to_string());
    let mut stream = client
        .query(QueryRequest {
            org: org.into(),
            query: format!("LET A = parse_json(data=Args) {query}"),
            env,
            timeout_secs: 0.0,
            max_rows: 0,
        })
        .await
        .map_err(status_error)?
        .into_inner();
    let mut errors = Vec::new();
    while let Some(msg) = stream.message().await.map_err(status_error)? {
        match msg.item {
            Some(Item::RowJson(j)) if !f(serde_json::from_str(&j).unwrap_or(Value::Null)) => break,
            Some(Item::RowJson(_)) => {}
            Some(Item::Log(l)) if l.level == "ERROR" => errors.push(l.message),
            Some(Item::Log(l)) => eprintln!("{}: {}", l.level, l.message),
            None => {}
        }
    }
    if !errors.is_empty() {
        anyhow::bail!("{}", errors.join("; "));
    }
    Ok(())
}

/// The column `col` of the first row: a function's answer; NULL when there is none.
pub(crate) fn first_column(rows: &[Value], col: &str) -> Value {
    rows.first()
        .and_then(|r| r.get(col))
        .cloned()
        .unwrap_or(Value::Null)
}

/// `K=V` pairs as a JSON object.
pub(crate) fn params(list: &[String]) -> anyhow::Result<Map<String, Value>> {
    let mut m = Map::new();
    for p in list {
        let Some((k, v)) = p.split_once('=') else {
            anyhow::bail!("--param {p:?}: expected K=V");
        };
        m.insert(k.to_string(), Value::String(v.to_string()));
    }
    Ok(m)
}

/// A duration as `90s`, `30m`, `12h` or `7d` (a bare number is seconds).
pub fn parse_duration(text: &str) -> anyhow::Result<Duration> {
    let t = text.trim();
    let (num, unit) = t.split_at(t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len()));
    let n: u64 = num.parse().map_err(|_| {
        anyhow::anyhow!("{text:?} is not a duration: expected e.g. 90s, 30m, 12h, 7d")
    })?;
    let secs = match unit {
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        _ => anyhow::bail!("{text:?} is not a duration: expected e.g. 90s, 30m, 12h, 7d"),
    };
    Ok(Duration::from_secs(secs))
}

pub(crate) fn s(v: &Value, k: &str) -> String {
    match v.get(k) {
        Some(Value::String(s)) => s.clone(),
        None | Some(Value::Null) => String::new(),
        Some(o) => o.to_string(),
    }
}

fn print_lines(rows: &[Value]) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    for r in rows {
        writeln!(out, "{r}")?;
    }
    Ok(())
}

/// What `talon collect` was given.
pub struct CollectArgs {
    pub client_id: String,
    pub artifacts: Vec<String>,
    pub params: Vec<String>,
    pub timeout: u64,
    pub max_rows: u64,
    pub wait: bool,
}

/// `talon collect CLIENT ARTIFACT...`: schedules a collection and prints its flow id.
pub async fn collect(api: &str, org: &str, c: CollectArgs) -> anyhow::Result<ExitCode> {
    let CollectArgs {
        client_id,
        artifacts,
        params: param,
        timeout,
        max_rows,
        wait,
    } = c;
    let args = json!({
        "client_id": client_id, "artifacts": artifacts, "env": params(&param)?,
        "timeout": timeout, "max_rows": max_rows,
    });
    let rows = call(
        api,
        org,
        "SELECT collect_client(client_id=A.client_id, artifacts=A.artifacts, env=A.env, timeout=A.timeout, max_rows=A.max_rows) AS F FROM scope()",
        args,
    )
    .await?;
    let flow = first_column(&rows, "F");
    if flow.is_null() {
        anyhow::bail!("the server made no flow");
    }
    let flow_id = s(&flow, "flow_id");
    println!("{flow_id}");
    if !wait {
        return Ok(ExitCode::SUCCESS);
    }
    // Until the flow ends: its state on stderr as it changes, exit 1 if it failed.
    let mut last = String::new();
    loop {
        let rows = call(
            api,
            org,
            "SELECT * FROM flows(client_id=A.client_id, flow_id=A.flow_id)",
            json!({"client_id": client_id, "flow_id": flow_id}),
        )
        .await?;
        let f = rows.into_iter().next().unwrap_or(Value::Null);
        let state = s(&f, "state");
        if state != last {
            eprintln!("{flow_id}: {state}");
            last = state.clone();
        }
        match state.as_str() {
            "FINISHED" => return Ok(ExitCode::SUCCESS),
            "ERROR" => {
                eprintln!("{flow_id} failed: {}", s(&f, "status"));
                return Ok(ExitCode::from(1));
            }
            _ => {}
        }
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return Ok(ExitCode::SUCCESS),
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
        }
    }
}

/// `talon artifacts collect NAME`: a flow of the client `server`; waits for it and prints
/// its result rows as JSON Lines (its log lines on stderr). Exit 1 if it failed.
pub async fn collect_server(
    api: &str,
    org: &str,
    name: &str,
    param: &[String],
) -> anyhow::Result<ExitCode> {
    let args = json!({"artifacts": [name], "env": params(param)?});
    let rows = call(
        api,
        org,
        "SELECT collect_client(client_id='server', artifacts=A.artifacts, env=A.env) AS F FROM scope()",
        args,
    )
    .await?;
    let flow = first_column(&rows, "F");
    if flow.is_null() {
        anyhow::bail!("the server made no flow");
    }
    let flow_id = s(&flow, "flow_id");
    let ids = json!({"client_id": "server", "flow_id": flow_id});
    let f = loop {
        let rows = call(
            api,
            org,
            "SELECT * FROM flows(client_id=A.client_id, flow_id=A.flow_id)",
            ids.clone(),
        )
        .await?;
        let f = rows.into_iter().next().unwrap_or(Value::Null);
        if matches!(s(&f, "state").as_str(), "FINISHED" | "ERROR") {
            break f;
        }
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return Ok(ExitCode::SUCCESS),
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    };
    for l in call(
        api,
        org,
        "SELECT * FROM flow_logs(client_id=A.client_id, flow_id=A.flow_id)",
        ids.clone(),
    )
    .await?
    {
        eprintln!("{}: {}", s(&l, "Level"), s(&l, "Message"));
    }
    let mut out = std::io::stdout().lock();
    each_row(
        api,
        org,
        "SELECT * FROM flow_results(client_id=A.client_id, flow_id=A.flow_id)",
        ids,
        |r| writeln!(out, "{r}").is_ok(),
    )
    .await?;
    eprintln!("flow {flow_id} of the server: {}", s(&f, "state"));
    if s(&f, "state") == "ERROR" {
        anyhow::bail!("{}", s(&f, "status"));
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn flows(api: &str, org: &str, cmd: FlowsCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        FlowsCmd::List { client_id, format } => {
            let rows = call(
                api,
                org,
                "SELECT * FROM flows(client_id=A.client_id)",
                json!({"client_id": client_id}),
            )
            .await?;
            match format {
                TableFormat::Json => output::print_json(&Value::Array(rows))?,
                TableFormat::Table => output::print_table(
                    &["FLOW", "STATE", "ARTIFACTS", "ROWS", "CREATOR", "STATUS"],
                    rows.iter()
                        .map(|f| {
                            let arts = f["request"]["artifacts"]
                                .as_array()
                                .map(|a| {
                                    a.iter()
                                        .map(|x| x.as_str().unwrap_or("").to_string())
                                        .collect::<Vec<_>>()
                                        .join(",")
                                })
                                .unwrap_or_default();
                            vec![
                                s(f, "session_id"),
                                s(f, "state"),
                                arts,
                                s(f, "total_collected_rows"),
                                s(&f["request"], "creator"),
                                s(f, "status"),
                            ]
                        })
                        .collect(),
                )?,
            }
        }
        FlowsCmd::Show { client_id, flow_id } => {
            let rows = call(
                api,
                org,
                "SELECT * FROM flows(client_id=A.client_id, flow_id=A.flow_id)",
                json!({"client_id": client_id, "flow_id": flow_id}),
            )
            .await?;
            output::print_json(rows.first().unwrap_or(&Value::Null))?;
        }
        FlowsCmd::Results {
            client_id,
            flow_id,
            artifact,
        } => {
            let q = if artifact.is_some() {
                "SELECT * FROM flow_results(client_id=A.client_id, flow_id=A.flow_id, artifact=A.artifact)"
            } else {
                "SELECT * FROM flow_results(client_id=A.client_id, flow_id=A.flow_id)"
            };
            let mut out = std::io::stdout().lock();
            each_row(
                api,
                org,
                q,
                json!({"client_id": client_id, "flow_id": flow_id, "artifact": artifact}),
                |r| writeln!(out, "{r}").is_ok(),
            )
            .await?;
        }
        FlowsCmd::Logs { client_id, flow_id } => {
            let rows = call(
                api,
                org,
                "SELECT * FROM flow_logs(client_id=A.client_id, flow_id=A.flow_id)",
                json!({"client_id": client_id, "flow_id": flow_id}),
            )
            .await?;
            print_lines(&rows)?;
        }
        FlowsCmd::Cancel { client_id, flow_id } => {
            let rows = call(
                api,
                org,
                "SELECT cancel_flow(client_id=A.client_id, flow_id=A.flow_id) AS C FROM scope()",
                json!({"client_id": client_id, "flow_id": flow_id}),
            )
            .await?;
            let c = first_column(&rows, "C");
            if c.is_null() {
                anyhow::bail!("the flow was not cancelled");
            }
            println!(
                "{} {}: {}",
                s(&c, "flow_id"),
                s(&c, "state"),
                s(&c, "status")
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
