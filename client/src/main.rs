//! `talon-client`: runs the endpoint agent until SIGINT or SIGTERM.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use talon_client::agent::{run, AgentConfig};

/// The Talon endpoint agent.
#[derive(Parser, Debug)]
#[command(name = "talon-client", version, args_conflicts_with_subcommands = true)]
struct Args {
    #[command(subcommand)]
    command: Option<Cmd>,
    /// Frontend addresses, tried in order
    #[arg(long, value_delimiter = ',', value_name = "ADDR[,ADDR...]")]
    frontend: Vec<String>,
    /// Directory of the client id and the spool
    #[arg(long, value_name = "DIR", default_value = "./talon-client-state")]
    state: PathBuf,
    /// Labels to report, comma separated
    #[arg(long, value_delimiter = ',')]
    labels: Vec<String>,
    /// Org to join
    #[arg(long, default_value = "root")]
    org: String,
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
    /// Simulate many clients in one process (load tests)
    Simulate {
        #[arg(
            long,
            value_delimiter = ',',
            required = true,
            value_name = "ADDR[,ADDR...]"
        )]
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
    },
}

fn main() -> ExitCode {
    let a = Args::parse();
    talon_core::telemetry::init(
        talon_core::telemetry::LogFormat::Text,
        "warn,talon_client=info",
    );
    if let Some(Cmd::Simulate {
        frontend,
        clients,
        rate,
        duration,
        row_bytes,
        artifact,
        org,
    }) = a.command
    {
        let cfg = talon_client::simulate::SimConfig {
            frontends: frontend,
            clients,
            rate,
            duration: Duration::from_secs_f64(duration),
            row_bytes,
            artifact,
            org,
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
    if a.frontend.is_empty() {
        eprintln!("talon-client: --frontend ADDR is required");
        return ExitCode::from(2);
    }
    let config = AgentConfig {
        frontends: a.frontend,
        state: a.state,
        org: a.org,
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
