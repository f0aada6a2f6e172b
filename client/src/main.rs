//! `talon-client`: runs the endpoint agent until SIGINT or SIGTERM.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use talon_client::agent::{run, AgentConfig};
use tokio_util::sync::CancellationToken;

/// The Talon endpoint agent.
#[derive(Parser, Debug)]
#[command(name = "talon-client", version)]
struct Args {
    /// Frontend addresses, tried in order
    #[arg(
        long,
        value_delimiter = ',',
        required = true,
        value_name = "ADDR[,ADDR...]"
    )]
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

fn main() -> ExitCode {
    let a = Args::parse();
    talon_shared::telemetry::init(talon_shared::telemetry::LogFormat::Text, "info");
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
    let shutdown = CancellationToken::new();
    let signals = shutdown.clone();
    let result = rt.block_on(async move {
        tokio::spawn(async move {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("SIGTERM handler");
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            signals.cancel();
        });
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
