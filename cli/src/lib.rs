//! The `talon` admin CLI over the master's gRPC API.
//!
//! - [`artifacts`]: list, show, add, delete, and offline verify.
//! - [`clients`]: clients, labels and the client monitoring table.
//! - [`cluster`]: the nodes of the cluster.
//! - [`events`]: push, watch, read and export rows of queues.
//! - [`monitoring`]: the server monitoring table, monitoring logs, collect, metadata.
//! - [`output`]: tables, JSON and CSV.
//! - [`query`]: run VQL on the server.

pub mod artifacts;
pub mod clients;
pub mod cluster;
pub mod events;
pub mod monitoring;
pub mod output;
pub mod query;

use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use talon_proto::api::admin_client::AdminClient;
use tonic::metadata::MetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

/// Largest gRPC message the CLI sends or accepts.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// talon: administer a Talon server.
#[derive(Parser, Debug)]
#[command(name = "talon", version)]
pub struct Cli {
    /// Admin API address of the master
    #[arg(
        long,
        global = true,
        env = "TALON_API",
        default_value = "127.0.0.1:8001"
    )]
    pub api: String,
    /// Org to act in
    #[arg(long, global = true, default_value = "root")]
    pub org: String,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Manage artifact definitions
    #[command(subcommand)]
    Artifacts(artifacts::ArtifactsCmd),
    /// Push, watch, read and export queue rows
    #[command(subcommand)]
    Events(events::EventsCmd),
    /// Run VQL on the server, streaming rows as they arrive (log lines go to stderr)
    Query {
        /// The VQL text
        vql: String,
        #[arg(long, value_enum, default_value = "jsonl")]
        format: query::QueryFormat,
        /// Stop after this many seconds (event queries run until then or Ctrl-C), exit 0
        #[arg(long, value_name = "SECS")]
        timeout: Option<f64>,
        /// A variable for the query, as KEY=VALUE; repeatable
        #[arg(long = "env", value_name = "K=V")]
        env: Vec<String>,
    },
    /// The server monitoring table and monitoring logs
    #[command(subcommand)]
    Monitoring(monitoring::MonitoringCmd),
    /// Clients: list, show, label
    #[command(subcommand)]
    Clients(clients::ClientsCmd),
    /// The nodes of the cluster
    #[command(subcommand)]
    Cluster(cluster::ClusterCmd),
    /// Server metadata (read by VQL's server_metadata())
    #[command(subcommand)]
    Metadata(monitoring::MetadataCmd),
    /// List the queues of the org with their statistics
    Queues {
        #[arg(long, value_enum, default_value = "table")]
        format: TableFormat,
    },
}

/// Output of listings.
#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum TableFormat {
    Table,
    Json,
}

/// An admin client that names the calling user on every call.
pub type Client = AdminClient<InterceptedService<Channel, Principal>>;

/// Adds the principal header to each call.
#[derive(Clone)]
pub struct Principal(MetadataValue<tonic::metadata::Ascii>);

impl tonic::service::Interceptor for Principal {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        req.metadata_mut()
            .insert("x-talon-principal", self.0.clone());
        Ok(req)
    }
}

/// Connects to the API at `addr` (HOST:PORT or a URL).
pub async fn connect(addr: &str) -> anyhow::Result<Client> {
    let url = if addr.contains("://") {
        addr.to_string()
    } else {
        format!("http://{addr}")
    };
    let channel = Channel::from_shared(url.clone())
        .with_context(|| format!("invalid --api address {addr:?}"))?
        .connect_timeout(std::time::Duration::from_secs(5))
        .connect()
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot connect to the Talon API at {addr}: {}",
                source_chain(&e)
            )
        })?;
    let user = std::env::var("USER").unwrap_or_else(|_| "cli".into());
    let principal = MetadataValue::try_from(format!("cli:{user}"))
        .unwrap_or_else(|_| MetadataValue::from_static("cli"));
    Ok(AdminClient::with_interceptor(channel, Principal(principal))
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES))
}

fn source_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// Turns a gRPC status into an error whose text is the server's message.
pub fn status_error(s: tonic::Status) -> anyhow::Error {
    if s.code() == tonic::Code::Unavailable || s.code() == tonic::Code::Unknown {
        anyhow::anyhow!("{} ({:?})", s.message(), s.code())
    } else {
        anyhow::anyhow!("{}", s.message())
    }
}

/// Runs one command; returns the exit code for success paths that are not 0.
pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Artifacts(artifacts::ArtifactsCmd::Collect { name, params }) => {
            monitoring::collect(&cli.api, &cli.org, &name, &params).await
        }
        Command::Artifacts(cmd) => artifacts::run(&cli.api, cmd).await,
        Command::Events(cmd) => events::run(&cli.api, &cli.org, cmd).await,
        Command::Monitoring(monitoring::MonitoringCmd::Client(cmd)) => {
            clients::table(&cli.api, &cli.org, cmd).await
        }
        Command::Monitoring(cmd) => monitoring::run(&cli.api, &cli.org, cmd).await,
        Command::Clients(cmd) => clients::run(&cli.api, &cli.org, cmd).await,
        Command::Cluster(cmd) => cluster::run(&cli.api, cmd).await,
        Command::Metadata(cmd) => monitoring::metadata(&cli.api, &cli.org, cmd).await,
        Command::Query {
            vql,
            format,
            timeout,
            env,
        } => query::run(&cli.api, &cli.org, vql, format, timeout, env).await,
        Command::Queues { format } => {
            let mut c = connect(&cli.api).await?;
            let r = c
                .list_queues(talon_proto::api::ListQueuesRequest { org: cli.org })
                .await
                .map_err(status_error)?
                .into_inner();
            match format {
                TableFormat::Json => {
                    let v: Vec<_> = r
                        .queues
                        .iter()
                        .map(|q| {
                            serde_json::json!({
                                "name": q.name, "type": q.r#type, "durable": q.durable,
                                "watchers": q.watchers, "rows_pushed": q.rows_pushed,
                                "rows_dropped": q.rows_dropped, "rows_caught_up": q.rows_caught_up,
                            })
                        })
                        .collect();
                    output::print_json(&serde_json::Value::Array(v))?;
                }
                TableFormat::Table => {
                    let rows = r
                        .queues
                        .iter()
                        .map(|q| {
                            vec![
                                q.name.clone(),
                                q.r#type.clone(),
                                q.watchers.to_string(),
                                q.rows_pushed.to_string(),
                                q.rows_dropped.to_string(),
                            ]
                        })
                        .collect();
                    output::print_table(
                        &["NAME", "TYPE", "WATCHERS", "ROWS PUSHED", "ROWS DROPPED"],
                        rows,
                    )?;
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
