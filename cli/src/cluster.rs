//! `talon cluster`: the nodes of the cluster as the master last heard of them.

use std::process::ExitCode;

use clap::Subcommand;
use serde_json::json;
use talon_proto::api::ClusterStatusRequest;

use crate::{connect, output, status_error, TableFormat};

#[derive(Subcommand, Debug)]
pub enum ClusterCmd {
    /// Every node: role, alive, age of its last report, clients, CPU, RSS, bus, persister lag
    Status {
        #[arg(long, value_enum, default_value = "table")]
        format: TableFormat,
    },
}

/// Runs a cluster subcommand.
pub async fn run(api: &str, cmd: ClusterCmd) -> anyhow::Result<ExitCode> {
    let mut c = connect(api).await?;
    let ClusterCmd::Status { format } = cmd;
    let r = c
        .cluster_status(ClusterStatusRequest {})
        .await
        .map_err(status_error)?
        .into_inner();
    let lag = |l: i64| (l >= 0).then_some(l);
    match format {
        TableFormat::Json => output::print_json(&json!({
            "mode": r.mode,
            "nodes": r.nodes.iter().map(|n| json!({
                "node": n.node, "role": n.role, "alive": n.alive,
                "report_age_seconds": (n.report_age_seconds * 10.0).round() / 10.0,
                "connected_clients": n.connected_clients, "cpu_percent": n.cpu_percent,
                "rss_bytes": n.rss_bytes, "bus_connected": n.bus_connected,
                "persister_lag": lag(n.persister_lag),
            })).collect::<Vec<_>>(),
        }))?,
        TableFormat::Table => {
            let rows = r
                .nodes
                .iter()
                .map(|n| {
                    vec![
                        n.node.clone(),
                        n.role.clone(),
                        if n.alive { "yes" } else { "no" }.into(),
                        format!("{:.0}s", n.report_age_seconds),
                        n.connected_clients.to_string(),
                        format!("{:.1}%", n.cpu_percent),
                        format!("{:.1} MB", n.rss_bytes as f64 / 1e6),
                        if r.mode == "standalone" {
                            "none".into()
                        } else if n.bus_connected {
                            "connected".into()
                        } else {
                            "down".into()
                        },
                        lag(n.persister_lag)
                            .map(|l| l.to_string())
                            .unwrap_or_else(|| "-".into()),
                    ]
                })
                .collect();
            output::print_table(
                &[
                    "NODE", "ROLE", "ALIVE", "REPORT", "CLIENTS", "CPU", "RSS", "BUS", "LAG",
                ],
                rows,
            )?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
