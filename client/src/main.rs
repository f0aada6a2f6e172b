//! `talon-client`: runs the endpoint agent until SIGINT or SIGTERM.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use talon_client::agent::{run, AgentConfig};
use talon_client::transport::Transport;

/// The Talon endpoint agent.
#[derive(Parser, Debug)]
#[command(name = "talon-client", version, args_conflicts_with_subcommands = true)]
struct Args {
    #[command(subcommand)]
    command: Option<Cmd>,
    /// Client config (frontends and the deployment CA), as `talon config generate` or a
    /// master's first start writes it
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Frontend addresses, tried in order [default: the config's]
    #[arg(long, value_delimiter = ',', value_name = "ADDR[,ADDR...]")]
    frontend: Vec<String>,
    /// Connect without TLS, proving no identity (for tests against a frontend started with
    /// --insecure-plaintext-frontend)
    #[arg(long)]
    insecure_plaintext: bool,
    /// Directory of the client's key and the spool
    #[arg(long, value_name = "DIR", default_value = "./talon-client-state")]
    state: PathBuf,
    /// Labels to report, comma separated
    #[arg(long, value_delimiter = ',')]
    labels: Vec<String>,
    /// Org to join [default: the config's, else root]
    #[arg(long)]
    org: Option<String>,
    /// Hostname to report (default: the machine's)
    #[arg(long)]
    hostname: Option<String>,
    /// Flush a batch after this many rows
    #[arg(long, default_value_t = 1000)]
    batch_rows: usize,
    /// Flush a batch this many milliseconds after its first row
    #[arg(long, default_value_t = 1000)]
    batch_ms: u64,
    /// Largest spool on disk, bytes
    #[arg(long, default_value_t = talon_client::spool::DEFAULT_SPOOL_BYTES)]
    spool_bytes: u64,
}

#[derive(clap::Subcommand, Debug)]
enum Cmd {
    /// Print the client id (derived from the key in --state, made there if missing)
    Id {
        /// Directory of the client's key and the spool
        #[arg(long, value_name = "DIR", default_value = "./talon-client-state")]
        state: PathBuf,
    },
    /// Simulate many clients in one process (load tests)
    Simulate {
        /// Frontend addresses [default: the config's]
        #[arg(long, value_delimiter = ',', value_name = "ADDR[,ADDR...]")]
        frontend: Vec<String>,
        /// Number of clients
        #[arg(long, default_value_t = 10)]
        clients: usize,
        /// Rows per second per client (0: idle)
        #[arg(long, default_value_t = 1.0)]
        rate: f64,
        /// Seconds to run
        #[arg(long, default_value_t = 10.0)]
        duration: f64,
        /// Approximate bytes per row
        #[arg(long, default_value_t = 200)]
        row_bytes: usize,
        /// CLIENT_EVENT queue the rows go to
        #[arg(long, default_value = "Generic.Client.Stats")]
        artifact: String,
        #[arg(long, default_value = "root")]
        org: String,
        /// Client config (the deployment CA); each simulated client makes its own key
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Connect without TLS
        #[arg(long)]
        insecure_plaintext: bool,
        /// Answer each new event table with one row to --artifact (a round trip of plain
        /// event rows, the baseline of scripts/bench-hunt)
        #[arg(long)]
        row_on_table: bool,
    },
}

/// The transport of `--config` / `--insecure-plaintext`, and the config file's contents.
fn transport_of(
    config: Option<&std::path::Path>,
    plaintext: bool,
) -> anyhow::Result<(Transport, Option<talon_core::deploy::ClientConfig>)> {
    match (config, plaintext) {
        (Some(_), true) => anyhow::bail!("--config and --insecure-plaintext exclude each other"),
        (None, true) => Ok((Transport::Plaintext, None)),
        (Some(path), false) => {
            let file: talon_core::deploy::ClientConfig = talon_core::deploy::read(path)?;
            Ok((Transport::of(&file), Some(file)))
        }
        (None, false) => anyhow::bail!(
            "no client config: give --config FILE (client.config.yaml, from `talon config generate` or <datastore>/config/ of a master); --insecure-plaintext connects without TLS, for tests"
        ),
    }
}

fn main() -> ExitCode {
    let a = Args::parse();
    talon_core::telemetry::init(
        talon_core::telemetry::LogFormat::Text,
        "warn,talon_client=info",
    );
    if let Some(Cmd::Id { state }) = &a.command {
        return match talon_client::transport::identity(state) {
            Ok(id) => {
                println!("{}", id.id);
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("talon-client: {e:#}");
                ExitCode::from(1)
            }
        };
    }
    if let Some(Cmd::Simulate {
        frontend,
        clients,
        rate,
        duration,
        row_bytes,
        artifact,
        org,
        config,
        insecure_plaintext,
        row_on_table,
    }) = a.command
    {
        let (transport, file) = match transport_of(config.as_deref(), insecure_plaintext) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("talon-client: {e:#}");
                return ExitCode::from(2);
            }
        };
        let frontend = if frontend.is_empty() {
            file.map(|f| f.frontends).unwrap_or_default()
        } else {
            frontend
        };
        if frontend.is_empty() {
            eprintln!("talon-client: no frontend: give --config FILE or --frontend ADDR");
            return ExitCode::from(2);
        }
        let cfg = talon_client::simulate::SimConfig {
            transport,
            frontends: frontend,
            clients,
            rate,
            duration: Duration::from_secs_f64(duration),
            row_bytes,
            artifact,
            org,
            row_on_table,
        };
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        return match rt.block_on(talon_client::simulate::run(cfg)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("talon-client: {e:#}");
                ExitCode::from(1)
            }
        };
    }
    let (transport, file) = match transport_of(a.config.as_deref(), a.insecure_plaintext) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("talon-client: {e:#}");
            return ExitCode::from(2);
        }
    };
    let frontends = if a.frontend.is_empty() {
        file.as_ref()
            .map(|f| f.frontends.clone())
            .unwrap_or_default()
    } else {
        a.frontend
    };
    if frontends.is_empty() {
        eprintln!(
            "talon-client: no frontend: give --config FILE (client.config.yaml) or --frontend ADDR"
        );
        return ExitCode::from(2);
    }
    let org = a
        .org
        .or_else(|| file.as_ref().and_then(|f| f.org.clone()))
        .unwrap_or_else(|| "root".to_string());
    let config = AgentConfig {
        frontends,
        transport,
        state: a.state,
        org,
        labels: a.labels.into_iter().filter(|l| !l.is_empty()).collect(),
        hostname: a.hostname,
        batch_rows: a.batch_rows.max(1),
        batch_wait: Duration::from_millis(a.batch_ms),
        spool_bytes: a.spool_bytes,
    };
    let rt = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("talon-client: cannot start runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = rt.block_on(async move {
        let shutdown = talon_core::Shutdown::on_signals(talon_core::shutdown::DEFAULT_GRACE);
        run(config, shutdown).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("talon-client: {e:#}");
            ExitCode::from(1)
        }
    }
}
