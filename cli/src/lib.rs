//! The `talon` admin CLI over the master's gRPC API.
//!
//! - [`artifacts`]: list, show, add, delete, and offline verify.
//! - [`automation`]: the mail outbox, secrets and user messages.
//! - [`clients`]: clients, labels and the client monitoring table.
//! - [`cluster`]: the nodes of the cluster.
//! - [`events`]: push, watch, read and export rows of queues.
//! - [`monitoring`]: the server monitoring table, monitoring logs, collect, metadata.
//! - [`output`]: tables, JSON and CSV.
//! - [`query`]: run VQL on the server.
//! - [`security`]: `config generate`, API users, and the identity the CLI calls with.

pub mod artifacts;
pub mod automation;
pub mod clients;
pub mod cluster;
pub mod collections;
pub mod events;
pub mod hunts;
pub mod monitoring;
pub mod output;
pub mod query;
pub mod security;

use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use talon_proto::api::admin_client::AdminClient;
use tonic::transport::Channel;

/// Largest gRPC message the CLI sends or accepts.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// talon: administer a Talon server.
#[derive(Parser, Debug)]
#[command(name = "talon", version)]
pub struct Cli {
    /// Admin API address of the master [default: the API config's api_addr]
    #[arg(long, global = true, env = "TALON_API", value_name = "HOST:PORT")]
    pub api: Option<String>,
    /// API client config (certificate and key) to call with [default: ./talon-data/config/admin.api.yaml,
    /// which a master started here makes]
    #[arg(long, global = true, env = "TALON_API_CONFIG", value_name = "FILE")]
    pub api_config: Option<std::path::PathBuf>,
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
    /// Collect CLIENT artifacts from one client (a flow); prints the flow id
    Collect {
        client_id: String,
        #[arg(required = true)]
        artifacts: Vec<String>,
        /// A parameter, K=V; repeatable
        #[arg(long = "param", value_name = "K=V")]
        params: Vec<String>,
        /// Seconds the collection may run on the client (default 600)
        #[arg(long, default_value_t = 0)]
        timeout: u64,
        /// Rows per query at most
        #[arg(long, default_value_t = 0)]
        max_rows: u64,
        /// Wait until the flow ends (its states on stderr); exit 1 if it failed
        #[arg(long)]
        wait: bool,
    },
    /// Flows (collections) of a client: list, show, results, logs, cancel
    #[command(subcommand)]
    Flows(collections::FlowsCmd),
    /// Hunts: create, list, show, start, pause, stop, results, clients
    #[command(subcommand)]
    Hunts(hunts::HuntsCmd),
    /// The server monitoring table and monitoring logs
    #[command(subcommand)]
    Monitoring(monitoring::MonitoringCmd),
    /// The mail outbox: every mail() and its state
    #[command(subcommand)]
    Mail(automation::MailCmd),
    /// Typed secrets (SMTP Creds, HTTP Secrets) that mail() and http_client() use
    #[command(subcommand)]
    Secrets(automation::SecretsCmd),
    /// User messages (from user_message() and Server.Monitor.Alerts.UserMessage)
    #[command(subcommand)]
    Messages(automation::MessagesCmd),
    /// Clients: list, show, label
    #[command(subcommand)]
    Clients(clients::ClientsCmd),
    /// The nodes of the cluster
    #[command(subcommand)]
    Cluster(cluster::ClusterCmd),
    /// Server metadata (read by VQL's server_metadata())
    #[command(subcommand)]
    Metadata(monitoring::MetadataCmd),
    /// Make a deployment: CA, certificates, configs for servers, clients, the administrator
    /// and nats-server
    #[command(subcommand)]
    Config(security::ConfigCmd),
    /// API users: add (writes the user's API config), list, remove, whoami
    #[command(subcommand)]
    User(security::UserCmd),
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

/// An admin client.
pub type Client = AdminClient<Channel>;

/// The identity every connection of this process uses, set once by [`run`].
static IDENTITY: std::sync::OnceLock<Option<talon_core::deploy::ApiClientConfig>> =
    std::sync::OnceLock::new();

/// Connects to the API at `addr` (HOST:PORT) with mutual TLS, as the identity of
/// `--api-config`.
pub async fn connect(addr: &str) -> anyhow::Result<Client> {
    let Some(Some(id)) = IDENTITY.get() else {
        anyhow::bail!(
            "no API identity: pass --api-config FILE or set TALON_API_CONFIG (a master writes its administrator's to <datastore>/config/{})",
            talon_core::deploy::ADMIN_API_CONFIG
        );
    };
    let channel = channel(addr, id).await?;
    Ok(AdminClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES))
}

/// A channel to the API at `addr` (HOST:PORT) with mutual TLS, as the identity `id`: the
/// API's certificate checked against the config's CA under its server name.
pub async fn channel(
    addr: &str,
    id: &talon_core::deploy::ApiClientConfig,
) -> anyhow::Result<Channel> {
    let host = addr
        .strip_prefix("https://")
        .or_else(|| addr.strip_prefix("http://"))
        .unwrap_or(addr);
    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(&id.ca_certificate))
        .identity(tonic::transport::Identity::from_pem(
            &id.certificate,
            &id.private_key,
        ))
        .domain_name(
            id.server_name
                .clone()
                .unwrap_or_else(|| talon_core::pki::API_NAME.to_string()),
        );
    Channel::from_shared(format!("https://{host}"))
        .with_context(|| format!("invalid --api address {addr:?}"))?
        .tls_config(tls)
        .context("the API config's certificates")?
        .connect_timeout(std::time::Duration::from_secs(5))
        .connect()
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot connect to the Talon API at {addr}: {}",
                source_chain(&e)
            )
        })
}

/// Where the CLI looks for an identity when given none.
pub const DEFAULT_API_CONFIG: &str = "talon-data/config/admin.api.yaml";

/// The API address and identity of `cli`: the identity of --api-config, else the local
/// master's administrator (when readable); the address of --api, else the identity's.
fn resolve(cli: &Cli) -> anyhow::Result<String> {
    let identity = match &cli.api_config {
        Some(path) => Some(
            talon_core::deploy::read::<talon_core::deploy::ApiClientConfig>(path)
                .with_context(|| "the API config (--api-config / TALON_API_CONFIG)")?,
        ),
        None => talon_core::deploy::read(std::path::Path::new(DEFAULT_API_CONFIG)).ok(),
    };
    let addr = cli
        .api
        .clone()
        .or_else(|| identity.as_ref().map(|i| i.api_addr.clone()))
        .unwrap_or_else(|| "127.0.0.1:8001".to_string());
    let _ = IDENTITY.set(identity);
    Ok(addr)
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
    if let Command::Config(cmd) = &cli.command {
        return security::config(cmd);
    }
    let api = resolve(&cli)?;
    match cli.command {
        Command::Config(_) => unreachable!("handled above"),
        Command::User(cmd) => security::user(&api, &cli.org, cmd).await,
        Command::Artifacts(artifacts::ArtifactsCmd::Collect { name, params }) => {
            monitoring::collect(&api, &cli.org, &name, &params).await
        }
        Command::Artifacts(cmd) => artifacts::run(&api, cmd).await,
        Command::Events(cmd) => events::run(&api, &cli.org, cmd).await,
        Command::Monitoring(monitoring::MonitoringCmd::Client(cmd)) => {
            clients::table(&api, &cli.org, cmd).await
        }
        Command::Monitoring(cmd) => monitoring::run(&api, &cli.org, cmd).await,
        Command::Clients(cmd) => clients::run(&api, &cli.org, cmd).await,
        Command::Cluster(cmd) => cluster::run(&api, cmd).await,
        Command::Collect {
            client_id,
            artifacts,
            params,
            timeout,
            max_rows,
            wait,
        } => {
            let args = collections::CollectArgs {
                client_id,
                artifacts,
                params,
                timeout,
                max_rows,
                wait,
            };
            collections::collect(&api, &cli.org, args).await
        }
        Command::Flows(cmd) => collections::flows(&api, &cli.org, cmd).await,
        Command::Hunts(cmd) => hunts::hunts(&api, &cli.org, cmd).await,
        Command::Mail(cmd) => automation::mail(&api, &cli.org, cmd).await,
        Command::Secrets(cmd) => automation::secrets(&api, &cli.org, cmd).await,
        Command::Messages(cmd) => automation::messages(&api, &cli.org, cmd).await,
        Command::Metadata(cmd) => monitoring::metadata(&api, &cli.org, cmd).await,
        Command::Query {
            vql,
            format,
            timeout,
            env,
        } => query::run(&api, &cli.org, vql, format, timeout, env).await,
        Command::Queues { format } => {
            let mut c = connect(&api).await?;
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
