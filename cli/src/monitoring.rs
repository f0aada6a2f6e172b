//! `talon monitoring ...`, `talon artifacts collect`, `talon metadata ...`.

use std::process::ExitCode;

use clap::Subcommand;
use talon_proto::api::*;

use crate::{connect, output, status_error, TableFormat};

#[derive(Subcommand, Debug)]
pub enum MonitoringCmd {
    /// The server monitoring table: SERVER_EVENT artifacts the master runs continuously
    #[command(subcommand)]
    Server(ServerCmd),
    /// The client monitoring table: CLIENT_EVENT artifacts clients run
    #[command(subcommand)]
    Client(crate::clients::ClientTableCmd),
    /// Print the monitoring log of a server monitoring artifact
    Logs {
        name: String,
        /// Only the last N lines
        #[arg(long)]
        count: Option<usize>,
    },
}

#[derive(Subcommand, Debug)]
pub enum ServerCmd {
    /// List the table
    List {
        #[arg(long, value_enum, default_value = "table")]
        format: TableFormat,
    },
    /// Add an artifact (it starts at once); again to change its parameters
    Add {
        name: String,
        /// A parameter as K=V; repeatable
        #[arg(long = "param", value_name = "K=V")]
        params: Vec<String>,
    },
    /// Remove an artifact (its queries stop)
    Remove { name: String },
}

#[derive(Subcommand, Debug)]
pub enum MetadataCmd {
    /// Set a server metadata key
    Set { key: String, value: String },
    /// Print one key's value, or every key as JSON
    Get { key: Option<String> },
}

/// Splits `K=V` arguments.
pub fn parse_params(
    params: &[String],
) -> anyhow::Result<std::collections::HashMap<String, String>> {
    params
        .iter()
        .map(|p| match p.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
            _ => anyhow::bail!("--param {p:?}: expected K=V"),
        })
        .collect()
}

fn print_table(t: ServerMonitoringTable, format: TableFormat) -> anyhow::Result<()> {
    match format {
        TableFormat::Json => {
            let v: Vec<_> = t
                .artifacts
                .iter()
                .map(|a| {
                    serde_json::json!({
                        "artifact": a.artifact, "params": a.params,
                        "principal": a.principal, "permissions": a.permissions,
                    })
                })
                .collect();
            output::print_json(&serde_json::Value::Array(v))?;
        }
        TableFormat::Table => {
            let rows = t
                .artifacts
                .iter()
                .map(|a| {
                    let mut p: Vec<_> = a.params.iter().map(|(k, v)| format!("{k}={v}")).collect();
                    p.sort();
                    vec![
                        a.artifact.clone(),
                        p.join(" "),
                        if a.principal == "server" {
                            "server".to_string()
                        } else {
                            format!("server:{}", a.principal)
                        },
                        a.permissions.join(" "),
                    ]
                })
                .collect();
            output::print_table(&["ARTIFACT", "PARAMETERS", "RUNS AS", "PERMISSIONS"], rows)?;
        }
    }
    Ok(())
}

/// Runs a monitoring subcommand.
pub async fn run(api: &str, org: &str, cmd: MonitoringCmd) -> anyhow::Result<ExitCode> {
    let mut c = connect(api).await?;
    let req = |artifact: String, params| ServerMonitoringRequest {
        org: org.into(),
        artifact,
        params,
    };
    match cmd {
        MonitoringCmd::Server(ServerCmd::List { format }) => {
            let t = c
                .list_server_monitoring(req(String::new(), Default::default()))
                .await
                .map_err(status_error)?;
            print_table(t.into_inner(), format)?;
        }
        MonitoringCmd::Server(ServerCmd::Add { name, params }) => {
            let params = parse_params(&params)?;
            c.add_server_monitoring(req(name.clone(), params))
                .await
                .map_err(status_error)?;
            println!("added {name} to the server monitoring table");
        }
        MonitoringCmd::Server(ServerCmd::Remove { name }) => {
            c.remove_server_monitoring(req(name.clone(), Default::default()))
                .await
                .map_err(status_error)?;
            println!("removed {name} from the server monitoring table");
        }
        MonitoringCmd::Client(_) => unreachable!("dispatched in lib.rs"),
        MonitoringCmd::Logs { name, count } => {
            let query = format!(
                "SELECT * FROM monitoring_logs(artifact={})",
                vql_string(&name)
            );
            let mut stream = c
                .query(QueryRequest {
                    org: org.into(),
                    query,
                    ..Default::default()
                })
                .await
                .map_err(status_error)?
                .into_inner();
            let mut lines = std::collections::VecDeque::new();
            while let Some(m) = stream.message().await.map_err(status_error)? {
                match m.item {
                    Some(query_response::Item::RowJson(j)) => {
                        let v: serde_json::Value = serde_json::from_str(&j).unwrap_or_default();
                        let ts = v["Timestamp"]
                            .as_i64()
                            .map(|s| talon_core::timefmt::rfc3339(s * 1_000_000))
                            .unwrap_or_default();
                        lines.push_back(format!(
                            "{ts} {}: {}",
                            v["Level"].as_str().unwrap_or(""),
                            v["Message"].as_str().unwrap_or("")
                        ));
                        if count.is_some_and(|n| lines.len() > n) {
                            lines.pop_front();
                        }
                    }
                    Some(query_response::Item::Log(l)) => anyhow::bail!("{}", l.message),
                    None => {}
                }
            }
            for l in lines {
                println!("{l}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A VQL string literal.
pub fn vql_string(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// `talon artifacts collect NAME [--param K=V]...`: runs a SERVER artifact, prints its rows.
pub async fn collect(api: &str, org: &str, name: &str, raw: &[String]) -> anyhow::Result<ExitCode> {
    let params = parse_params(raw)?;
    let mut c = connect(api).await?;
    let a = c
        .get_artifact(GetArtifactRequest { name: name.into() })
        .await
        .map_err(status_error)?
        .into_inner();
    if a.r#type != "SERVER" {
        anyhow::bail!(
            "artifact {name} is {}; collect runs SERVER artifacts",
            a.r#type
        );
    }
    let _ = params;
    crate::collections::collect_server(api, org, name, raw).await
}

/// Runs a metadata subcommand.
pub async fn metadata(api: &str, org: &str, cmd: MetadataCmd) -> anyhow::Result<ExitCode> {
    let mut c = connect(api).await?;
    match cmd {
        MetadataCmd::Set { key, value } => {
            c.set_metadata(SetMetadataRequest {
                org: org.into(),
                key: key.clone(),
                value,
            })
            .await
            .map_err(status_error)?;
            println!("set {key}");
        }
        MetadataCmd::Get { key } => {
            let m = c
                .get_metadata(GetMetadataRequest {
                    org: org.into(),
                    key: key.clone().unwrap_or_default(),
                })
                .await
                .map_err(status_error)?
                .into_inner();
            match key {
                Some(k) => println!("{}", m.values.get(&k).cloned().unwrap_or_default()),
                None => {
                    let sorted: std::collections::BTreeMap<_, _> = m.values.into_iter().collect();
                    output::print_json(&serde_json::to_value(sorted)?)?;
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
