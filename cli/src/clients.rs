//! `talon clients ...` and `talon monitoring client ...`.

use std::process::ExitCode;

use clap::Subcommand;
use talon_proto::api::*;

use crate::monitoring::parse_params;
use crate::{connect, output, status_error, TableFormat};

#[derive(Subcommand, Debug)]
pub enum ClientsCmd {
    /// List clients
    List {
        #[arg(long, value_enum, default_value = "table")]
        format: TableFormat,
        /// label:X, host:Y, or a client id
        #[arg(long)]
        search: Option<String>,
    },
    /// Show one client as JSON
    Show { id: String },
    /// Forget a client's record (its rows stay); it enrolls as new when it next connects
    Delete {
        id: String,
        /// Why (kept in Server.Internal.ClientDelete and the audit log)
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Add or remove a label
    Label {
        id: String,
        #[arg(long, required_unless_present = "remove")]
        add: Vec<String>,
        #[arg(long)]
        remove: Vec<String>,
    },
}

#[derive(Subcommand, Debug)]
pub enum ClientTableCmd {
    /// List the client monitoring table
    List {
        #[arg(long, value_enum, default_value = "table")]
        format: TableFormat,
    },
    /// Add a CLIENT_EVENT artifact for every client, or for clients with --label
    Add {
        name: String,
        #[arg(long, default_value = "")]
        label: String,
        #[arg(long = "param", value_name = "K=V")]
        params: Vec<String>,
    },
    /// Remove an artifact (for every client, or for --label)
    Remove {
        name: String,
        #[arg(long, default_value = "")]
        label: String,
    },
}

fn client_json(c: &ClientInfo) -> serde_json::Value {
    serde_json::json!({
        "client_id": c.client_id, "hostname": c.hostname, "os": c.os, "labels": c.labels,
        "first_seen_at": c.first_seen_at, "last_seen_at": c.last_seen_at, "last_ip": c.last_ip,
        "connected": c.connected, "version": c.version, "last_event_table_version": c.last_event_table_version,
    })
}

/// Runs a clients subcommand.
pub async fn run(api: &str, org: &str, cmd: ClientsCmd) -> anyhow::Result<ExitCode> {
    let mut c = connect(api).await?;
    match cmd {
        ClientsCmd::List { format, search } => {
            let r = c
                .list_clients(ListClientsRequest {
                    org: org.into(),
                    search: search.unwrap_or_default(),
                })
                .await
                .map_err(status_error)?
                .into_inner();
            match format {
                TableFormat::Json => output::print_json(&serde_json::Value::Array(
                    r.clients.iter().map(client_json).collect(),
                ))?,
                TableFormat::Table => {
                    let rows = r
                        .clients
                        .iter()
                        .map(|c| {
                            vec![
                                c.client_id.clone(),
                                c.hostname.clone(),
                                c.os.clone(),
                                c.labels.join(","),
                                if c.connected {
                                    "yes".into()
                                } else {
                                    "no".into()
                                },
                                talon_core::timefmt::rfc3339(c.last_seen_at),
                            ]
                        })
                        .collect();
                    output::print_table(
                        &[
                            "CLIENT",
                            "HOSTNAME",
                            "OS",
                            "LABELS",
                            "CONNECTED",
                            "LAST SEEN",
                        ],
                        rows,
                    )?;
                }
            }
        }
        ClientsCmd::Show { id } => {
            let info = c
                .get_client(GetClientRequest {
                    org: org.into(),
                    client_id: id,
                })
                .await
                .map_err(status_error)?
                .into_inner();
            output::print_json(&client_json(&info))?;
        }
        ClientsCmd::Delete { id, reason } => {
            c.delete_client(DeleteClientRequest {
                org: org.into(),
                client_id: id.clone(),
                reason,
            })
            .await
            .map_err(status_error)?;
            println!("deleted {id}");
        }
        ClientsCmd::Label { id, add, remove } => {
            let info = c
                .label_client(LabelClientRequest {
                    org: org.into(),
                    client_id: id,
                    add,
                    remove,
                })
                .await
                .map_err(status_error)?
                .into_inner();
            println!("{} labels: {}", info.client_id, info.labels.join(","));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs a client monitoring table subcommand.
pub async fn table(api: &str, org: &str, cmd: ClientTableCmd) -> anyhow::Result<ExitCode> {
    let mut c = connect(api).await?;
    let req = |artifact: String, label: String, params| ClientMonitoringRequest {
        org: org.into(),
        artifact,
        label,
        params,
    };
    let t = match cmd {
        ClientTableCmd::List { format } => {
            let t = c
                .list_client_monitoring(req(String::new(), String::new(), Default::default()))
                .await
                .map_err(status_error)?
                .into_inner();
            match format {
                TableFormat::Json => {
                    let v: Vec<_> = t.entries.iter().map(|e| serde_json::json!({"artifact": e.artifact, "label": e.label, "params": e.params})).collect();
                    output::print_json(&serde_json::json!({"version": t.version, "entries": v}))?;
                }
                TableFormat::Table => {
                    let rows = t
                        .entries
                        .iter()
                        .map(|e| {
                            let mut p: Vec<_> =
                                e.params.iter().map(|(k, v)| format!("{k}={v}")).collect();
                            p.sort();
                            vec![
                                e.artifact.clone(),
                                if e.label.is_empty() {
                                    "(all)".into()
                                } else {
                                    e.label.clone()
                                },
                                p.join(" "),
                            ]
                        })
                        .collect();
                    println!("version {}", t.version);
                    output::print_table(&["ARTIFACT", "LABEL", "PARAMETERS"], rows)?;
                }
            }
            return Ok(ExitCode::SUCCESS);
        }
        ClientTableCmd::Add {
            name,
            label,
            params,
        } => {
            let params = parse_params(&params)?;
            c.add_client_monitoring(req(name, label, params))
                .await
                .map_err(status_error)?
                .into_inner()
        }
        ClientTableCmd::Remove { name, label } => c
            .remove_client_monitoring(req(name, label, Default::default()))
            .await
            .map_err(status_error)?
            .into_inner(),
    };
    println!("client monitoring table is now version {}", t.version);
    Ok(ExitCode::SUCCESS)
}
