//! `talon-minion`: parses flags, installs telemetry, runs a minion until SIGINT or SIGTERM.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

/// A Talon frontend node of a cluster: clients connect here; rows go over NATS.
#[derive(Parser, Debug)]
#[command(name = "talon-minion", version)]
struct Args {
    /// The minion's config: minion-NAME.config.yaml of `talon config generate` (frontend
    /// certificate, a NATS user bound to its node name), or server.config.yaml with NATS
    /// credentials in the URL; flags override it
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// NATS server of the cluster, e.g. nats://127.0.0.1:4222 [default: the config's]
    #[arg(long, value_name = "URL")]
    nats_url: Option<String>,
    /// Client frontend address (gRPC); port 0 picks a free port [default: 127.0.0.1:8100]
    #[arg(long, value_name = "HOST:PORT")]
    frontend_addr: Option<String>,
    /// Debug HTTP address (/debug/queues, /debug/watch, /metrics) [default: 127.0.0.1:8989]
    #[arg(long, value_name = "HOST:PORT")]
    debug_addr: Option<String>,
    /// Let clients connect without TLS (for tests only)
    #[arg(long)]
    insecure_plaintext_frontend: bool,
    /// This node's name in the cluster [default: minion-<hostname>-<pid>]
    #[arg(long, value_name = "NAME")]
    node_name: Option<String>,
    /// Directory of the cache store [default: a temporary directory]
    #[arg(long, value_name = "DIR")]
    cache_dir: Option<PathBuf>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let node = args
        .node_name
        .clone()
        .unwrap_or_else(|| format!("minion-{}", std::process::id()));
    let mut config = talon_minion::Config::new("", &node);
    if let Some(path) = &args.config {
        let file = match talon_minion::ServerConfigFile::read(path) {
            Ok(f) => f,
            Err(e) => {
                eprintln!("talon-minion: {}: {e:#}", path.display());
                return ExitCode::from(2);
            }
        };
        // A minion config's NATS user may publish only under its node name.
        if let (Some(flag), Some(bound)) = (&args.node_name, &file.node_name) {
            if flag != bound {
                eprintln!(
                    "talon-minion: --node-name {flag} is not {bound}, the node name of {} (its NATS user is bound to it)",
                    path.display()
                );
                return ExitCode::from(2);
            }
        }
        if let Err(e) = config.apply(file) {
            eprintln!("talon-minion: {}: {e:#}", path.display());
            return ExitCode::from(2);
        }
    }
    if let Some(n) = &args.node_name {
        config.node_name = n.clone();
    }
    if let Some(url) = &args.nats_url {
        config.nats_url = url.clone();
    }
    if config.nats_url.is_empty() {
        eprintln!("talon-minion: --nats-url URL is required (or nats.url in --config)");
        return ExitCode::from(2);
    }
    config.insecure_plaintext_frontend |= args.insecure_plaintext_frontend;
    for (flag, value, slot) in [
        (
            "--frontend-addr",
            &args.frontend_addr,
            &mut config.frontend_addr,
        ),
        ("--debug-addr", &args.debug_addr, &mut config.debug_addr),
    ] {
        let Some(value) = value else { continue };
        match value.parse() {
            Ok(a) => *slot = a,
            Err(e) => {
                eprintln!("talon-minion: {flag} {value:?}: {e}");
                return ExitCode::from(2);
            }
        }
    }
    config.cache_dir = args.cache_dir;
    talon_core::telemetry::init(Default::default(), "info");
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("talon-minion: cannot start runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(serve(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("talon-minion: {e:#}");
            ExitCode::from(1)
        }
    }
}

async fn serve(config: talon_minion::Config) -> anyhow::Result<()> {
    let shutdown = talon_core::Shutdown::on_signals(talon_minion::SHUTDOWN_GRACE);
    let node = config.node_name.clone();
    talon_minion::run(config, shutdown, |bound| {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(
            out,
            "talon-minion {} node {node}",
            env!("CARGO_PKG_VERSION")
        );
        let _ = writeln!(out, "frontend: {}", bound.frontend);
        let _ = writeln!(out, "debug: http://{}/debug/queues", bound.debug);
        let _ = writeln!(out, "ready");
        let _ = out.flush();
    })
    .await
}
