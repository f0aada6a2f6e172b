//! `talon hunts ...`: hunts as VQL calls (`hunt()`, `hunts()`, `hunt_update()`,
//! `hunt_results()`, `hunt_flows()`), through the same helpers as `talon flows`.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use clap::Subcommand;
use serde_json::{json, Value};

use crate::collections::{call, each_row, first_column, params, parse_duration, s};
use crate::{output, TableFormat};

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
            let h = first_column(&rows, "H");
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
    let u = first_column(&rows, "U");
    if u.is_null() {
        anyhow::bail!("hunt {hunt_id} was not changed");
    }
    println!("{}", progress(&u["Hunt"]));
    Ok(())
}
