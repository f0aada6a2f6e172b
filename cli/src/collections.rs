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

#[derive(Debug, Subcommand)]
pub enum HuntsCmd {
    /// Make a hunt of CLIENT artifacts (running unless --paused)
    Create {
        #[arg(required = true)]
        artifacts: Vec<String>,
        /// A parameter, K=V; repeatable
        #[arg(long = "param", value_name = "K=V")]
        params: Vec<String>,
        #[arg(long, default_value = "")]
        description: String,
        /// How long it runs: 90s, 30m, 12h, 7d (default 7d)
        #[arg(long)]
        expires: Option<String>,
        /// Clients scheduled at most (0: no limit)
        #[arg(long, default_value_t = 0)]
        client_limit: u64,
        /// Only clients with one of these labels; repeatable
        #[arg(long = "label")]
        labels: Vec<String>,
        /// Never clients with one of these labels (wins over --label); repeatable
        #[arg(long = "exclude-label")]
        exclude_labels: Vec<String>,
        /// Only clients of this OS: windows, linux or darwin
        #[arg(long)]
        os: Option<String>,
        /// Make it paused (start it with `talon hunts start`)
        #[arg(long)]
        paused: bool,
        /// Seconds each client's collection may run (default 600)
        #[arg(long, default_value_t = 0)]
        timeout: u64,
        /// Rows per query at most on each client
        #[arg(long, default_value_t = 0)]
        max_rows: u64,
    },
    /// Every hunt, newest first
    List {
        #[arg(long, value_enum, default_value = "table")]
        format: TableFormat,
    },
    /// One hunt (JSON); with --watch a live progress line until it ends or Ctrl-C
    Show {
        hunt_id: String,
        #[arg(long)]
        watch: bool,
    },
    /// Start a paused hunt
    Start { hunt_id: String },
    /// Pause a running hunt (clients already scheduled keep their flows)
    Pause { hunt_id: String },
    /// Stop a hunt for good
    Stop { hunt_id: String },
    /// Result rows of every client of a hunt, with FlowId and ClientId
    Results {
        hunt_id: String,
        #[arg(long)]
        artifact: Option<String>,
    },
    /// The clients of a hunt with their flows' states
    Clients {
        hunt_id: String,
        #[arg(long, value_enum, default_value = "table")]
        format: TableFormat,
    },
}

/// Runs `call` with `args` as the variable `Args` and returns its rows; a logged ERROR
/// is the command's error.
async fn call(api: &str, org: &str, query: &str, args: Value) -> anyhow::Result<Vec<Value>> {
    let mut rows = Vec::new();
    each_row(api, org, query, args, |r| {
        rows.push(r);
        true
    })
    .await?;
    Ok(rows)
}

async fn each_row(
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

/// `K=V` pairs as a JSON object.
fn params(list: &[String]) -> anyhow::Result<Map<String, Value>> {
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

fn s(v: &Value, k: &str) -> String {
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
    let flow = rows
        .first()
        .and_then(|r| r.get("F"))
        .cloned()
        .unwrap_or(Value::Null);
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
    let flow = rows
        .first()
        .and_then(|r| r.get("F"))
        .cloned()
        .unwrap_or(Value::Null);
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
            let c = rows
                .first()
                .and_then(|r| r.get("C"))
                .cloned()
                .unwrap_or(Value::Null);
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

fn progress(h: &Value) -> String {
    let st = &h["stats"];
    format!(
        "{} {}: scheduled {} finished {} with results {} errors {} rows {}{}",
        s(h, "hunt_id"),
        s(h, "state"),
        s(st, "total_clients_scheduled"),
        s(st, "total_finished_clients"),
        s(st, "total_clients_with_results"),
        s(st, "total_clients_with_errors"),
        s(st, "total_collected_rows"),
        match s(h, "stop_reason") {
            r if r.is_empty() => String::new(),
            r => format!(" ({r})"),
        }
    )
}

async fn one_hunt(api: &str, org: &str, hunt_id: &str) -> anyhow::Result<Value> {
    let rows = call(
        api,
        org,
        "SELECT * FROM hunts(hunt_id=A.hunt_id)",
        json!({"hunt_id": hunt_id}),
    )
    .await?;
    rows.into_iter()
        .next()
        .ok_or_else(|| anyhow::anyhow!("no hunt {hunt_id}"))
}

pub async fn hunts(api: &str, org: &str, cmd: HuntsCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        HuntsCmd::Create {
            artifacts,
            params: p,
            description,
            expires,
            client_limit,
            labels,
            exclude_labels,
            os,
            paused,
            timeout,
            max_rows,
        } => {
            let expires = match expires {
                Some(e) => {
                    let d = parse_duration(&e)?;
                    json!(chrono::Utc::now().timestamp() + d.as_secs() as i64)
                }
                None => Value::Null,
            };
            let args = json!({
                "artifacts": artifacts, "env": params(&p)?, "description": description,
                "expires": expires, "client_limit": client_limit, "include_labels": labels,
                "exclude_labels": exclude_labels, "os": os.unwrap_or_default(), "pause": paused,
                "timeout": timeout, "max_rows": max_rows,
            });
            let rows = call(api, org, "SELECT hunt(artifacts=A.artifacts, env=A.env, description=A.description, expires=A.expires, client_limit=A.client_limit, include_labels=A.include_labels, exclude_labels=A.exclude_labels, os=A.os, pause=A.pause, timeout=A.timeout, max_rows=A.max_rows) AS H FROM scope()", args).await?;
            let h = rows
                .first()
                .and_then(|r| r.get("H"))
                .cloned()
                .unwrap_or(Value::Null);
            if h.is_null() {
                anyhow::bail!("the server made no hunt");
            }
            println!("{}", s(&h, "HuntId"));
        }
        HuntsCmd::List { format } => {
            let rows = call(api, org, "SELECT * FROM hunts()", json!({})).await?;
            match format {
                TableFormat::Json => output::print_json(&Value::Array(rows))?,
                TableFormat::Table => output::print_table(
                    &[
                        "HUNT",
                        "STATE",
                        "ARTIFACTS",
                        "SCHEDULED",
                        "FINISHED",
                        "ERRORS",
                        "DESCRIPTION",
                    ],
                    rows.iter()
                        .map(|h| {
                            vec![
                                s(h, "hunt_id"),
                                s(h, "state"),
                                h["artifacts"]
                                    .as_array()
                                    .map(|a| {
                                        a.iter()
                                            .map(|x| x.as_str().unwrap_or("").to_string())
                                            .collect::<Vec<_>>()
                                            .join(",")
                                    })
                                    .unwrap_or_default(),
                                s(&h["stats"], "total_clients_scheduled"),
                                s(&h["stats"], "total_finished_clients"),
                                s(&h["stats"], "total_clients_with_errors"),
                                s(h, "hunt_description"),
                            ]
                        })
                        .collect(),
                )?,
            }
        }
        HuntsCmd::Show { hunt_id, watch } => {
            if !watch {
                output::print_json(&one_hunt(api, org, &hunt_id).await?)?;
                return Ok(ExitCode::SUCCESS);
            }
            // A live progress line: rewritten in place on a terminal, one per change otherwise.
            let tty = std::io::IsTerminal::is_terminal(&std::io::stdout());
            let mut last = String::new();
            loop {
                let h = one_hunt(api, org, &hunt_id).await?;
                let line = progress(&h);
                if line != last {
                    let mut out = std::io::stdout().lock();
                    if tty {
                        write!(out, "\r\x1b[2K{line}")?;
                    } else {
                        writeln!(out, "{line}")?;
                    }
                    out.flush()?;
                    last = line;
                }
                let st = &h["stats"];
                let scheduled = st["total_clients_scheduled"].as_u64().unwrap_or(0);
                let finished = st["total_finished_clients"].as_u64().unwrap_or(0);
                let over = s(&h, "state") != "RUNNING" && finished >= scheduled;
                if over {
                    if tty {
                        println!();
                    }
                    return Ok(ExitCode::SUCCESS);
                }
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {
                        if tty { println!(); }
                        return Ok(ExitCode::SUCCESS);
                    }
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
        HuntsCmd::Start { hunt_id } => update(api, org, &hunt_id, "start").await?,
        HuntsCmd::Pause { hunt_id } => update(api, org, &hunt_id, "pause").await?,
        HuntsCmd::Stop { hunt_id } => update(api, org, &hunt_id, "stop").await?,
        HuntsCmd::Results { hunt_id, artifact } => {
            let q = if artifact.is_some() {
                "SELECT * FROM hunt_results(hunt_id=A.hunt_id, artifact=A.artifact)"
            } else {
                "SELECT * FROM hunt_results(hunt_id=A.hunt_id)"
            };
            let mut out = std::io::stdout().lock();
            each_row(
                api,
                org,
                q,
                json!({"hunt_id": hunt_id, "artifact": artifact}),
                |r| writeln!(out, "{r}").is_ok(),
            )
            .await?;
        }
        HuntsCmd::Clients { hunt_id, format } => {
            let rows = call(
                api,
                org,
                "SELECT * FROM hunt_flows(hunt_id=A.hunt_id)",
                json!({"hunt_id": hunt_id}),
            )
            .await?;
            match format {
                TableFormat::Json => output::print_json(&Value::Array(rows))?,
                TableFormat::Table => output::print_table(
                    &["CLIENT", "FLOW", "STATE", "ROWS", "STATUS"],
                    rows.iter()
                        .map(|r| {
                            vec![
                                s(r, "ClientId"),
                                s(r, "FlowId"),
                                s(&r["Flow"], "state"),
                                s(&r["Flow"], "total_collected_rows"),
                                s(&r["Flow"], "status"),
                            ]
                        })
                        .collect(),
                )?,
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn update(api: &str, org: &str, hunt_id: &str, what: &str) -> anyhow::Result<()> {
    let q = format!("SELECT hunt_update(hunt_id=A.hunt_id, {what}=TRUE) AS U FROM scope()");
    let rows = call(api, org, &q, json!({"hunt_id": hunt_id})).await?;
    let u = rows
        .first()
        .and_then(|r| r.get("U"))
        .cloned()
        .unwrap_or(Value::Null);
    if u.is_null() {
        anyhow::bail!("hunt {hunt_id} was not changed");
    }
    println!("{}", progress(&u["Hunt"]));
    Ok(())
}
