//! `talon-master`: parses flags and config, installs telemetry, runs the master until
//! SIGINT or SIGTERM.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use talon_master::config::{Config, ConfigFile, Overrides};

/// The Talon master: event queues, store, admin API. Without --nats-url it is a complete
/// standalone server.
#[derive(Parser, Debug)]
#[command(name = "talon-master", version)]
struct Args {
    /// Directory of the store and exports [default: ./talon-data]
    #[arg(long, value_name = "DIR")]
    datastore: Option<PathBuf>,
    /// Admin gRPC API address; port 0 picks a free port [default: 127.0.0.1:8001]
    #[arg(long, value_name = "HOST:PORT")]
    api_addr: Option<String>,
    /// Client frontend address (gRPC, for talon-client) [default: 127.0.0.1:8000]
    #[arg(long, value_name = "HOST:PORT")]
    frontend_addr: Option<String>,
    /// Debug HTTP address (/debug/queues, /metrics) [default: 127.0.0.1:8889]
    #[arg(long, value_name = "HOST:PORT")]
    debug_addr: Option<String>,
    /// NATS server of the cluster (e.g. nats://127.0.0.1:4222); without it, standalone
    #[arg(long, value_name = "URL")]
    nats_url: Option<String>,
    /// This node's name in the cluster [default: master]
    #[arg(long, value_name = "NAME")]
    node_name: Option<String>,
    /// YAML config file; flags override it
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Keep the server monitoring table but run none of it (to remove a bad artifact)
    #[arg(long)]
    no_monitoring: bool,
    /// Let clients connect without TLS (for tests only; clients then prove no identity)
    #[arg(long)]
    insecure_plaintext_frontend: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let config = match load_config(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("talon-master: {e:#}");
            return ExitCode::from(2);
        }
    };
    talon_core::telemetry::init(config.log_format, "info");
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("talon-master: cannot start runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(serve(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("talon-master: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn load_config(args: &Args) -> anyhow::Result<Config> {
    let (origin, file) = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| anyhow::anyhow!("cannot read config {}: {e}", path.display()))?;
            let origin = path.display().to_string();
            let file = ConfigFile::parse(&origin, &text)?;
            (origin, file)
        }
        None => ("flags".to_string(), ConfigFile::default()),
    };
    let flags = Overrides {
        datastore: args.datastore.clone(),
        api_addr: args.api_addr.clone(),
        frontend_addr: args.frontend_addr.clone(),
        debug_addr: args.debug_addr.clone(),
        nats_url: args.nats_url.clone(),
        node_name: args.node_name.clone(),
        no_monitoring: args.no_monitoring,
        insecure_plaintext_frontend: args.insecure_plaintext_frontend,
        config_dir: args.config.as_ref().and_then(|p| p.parent()).map(|d| {
            if d.as_os_str().is_empty() {
                ".".into()
            } else {
                d.to_path_buf()
            }
        }),
    };
    Ok(Config::build(&origin, file, flags)?)
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let shutdown = talon_core::Shutdown::on_signals(talon_master::SHUTDOWN_GRACE);
    let datastore = config.datastore.clone();
    talon_master::run(config, shutdown, |bound| {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "talon-master {}", env!("CARGO_PKG_VERSION"));
        let _ = writeln!(out, "datastore: {}", datastore.display());
        let _ = writeln!(out, "api: {}", bound.api);
        let _ = writeln!(out, "debug: http://{}/debug/queues", bound.debug);
        let _ = writeln!(out, "frontend: {}", bound.frontend);
        let _ = writeln!(out, "ready");
        let _ = out.flush();
    })
    .await
}
