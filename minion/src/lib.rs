//! A Talon minion: a frontend node of a cluster. It terminates client connections with the
//! shared frontend, pushes their rows over the NATS bus (acknowledged to a client only once
//! JetStream holds them), feeds its local watchers from the bus, and keeps the master's
//! user artifacts and client monitoring tables in a local cache store. It owns no data:
//! kill it and its clients reconnect elsewhere.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use talon_artifacts::Repository;
use talon_core::Shutdown;
use talon_shared::bus::Bus;
use talon_shared::frontend::{FrontendService, DEFAULT_MAX_MESSAGE_BYTES};
use talon_shared::queue::{Limits, QueueManager};
use talon_shared::store::Store;
use tokio::net::TcpListener;

/// How long in-flight work gets at shutdown.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// A minion's settings.
#[derive(Debug, Clone)]
pub struct Config {
    pub nats_url: String,
    pub node_name: String,
    pub frontend_addr: SocketAddr,
    pub debug_addr: SocketAddr,
    /// Where the cache store lives; None: a temporary directory removed at exit.
    pub cache_dir: Option<PathBuf>,
    pub max_client_message_bytes: usize,
}

impl Config {
    /// Defaults for a node name and NATS URL.
    pub fn new(nats_url: &str, node_name: &str) -> Self {
        Self {
            nats_url: nats_url.to_string(),
            node_name: node_name.to_string(),
            frontend_addr: "127.0.0.1:8100".parse().expect("address"),
            debug_addr: "127.0.0.1:8989".parse().expect("address"),
            cache_dir: None,
            max_client_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
        }
    }
}

/// The addresses a running minion bound.
#[derive(Debug, Clone, Copy)]
pub struct Bound {
    pub frontend: SocketAddr,
    pub debug: SocketAddr,
}

/// Runs a minion until `stop` fires; `on_ready` is called once it serves clients with
/// the master's state (or, if the master is not up, once it serves clients at all). Then
/// it shuts down in the one order of [`talon_shared::lifecycle::shut_down`].
pub async fn run(
    config: Config,
    stop: Shutdown,
    on_ready: impl FnOnce(Bound),
) -> anyhow::Result<()> {
    let tree = Shutdown::for_node(&config.node_name, SHUTDOWN_GRACE);
    let intake = tree.child();
    let services = tree.child();
    let temp = tempfile::tempdir().context("cannot create a cache directory")?;
    let cache_dir = config
        .cache_dir
        .clone()
        .unwrap_or_else(|| temp.path().into());
    std::fs::create_dir_all(&cache_dir)
        .with_context(|| format!("cannot create cache directory {}", cache_dir.display()))?;
    let store = Store::open(&cache_dir.join("cache.redb"))?;
    let bus = Bus::connect(&config.nats_url, &config.node_name).await?;
    let qm = QueueManager::clustered(
        Repository::with_builtins(),
        store.clone(),
        Limits::default(),
        bus.clone(),
        services.clone(),
    )
    .await?;
    let frontend = FrontendService::new(qm.clone(), &config.node_name, services.clone());
    talon_shared::node::state::follow(bus.clone(), qm.clone(), frontend.clone(), services.clone())
        .await?;
    talon_shared::node::start(
        bus.clone(),
        qm.clone(),
        frontend.clone(),
        talon_shared::control::Role::Minion,
        None,
        services.clone(),
    )
    .await?;

    let frontend_listener = talon_shared::frontend::listen(config.frontend_addr)
        .with_context(|| format!("cannot listen on frontend address {}", config.frontend_addr))?;
    let debug_listener = TcpListener::bind(config.debug_addr)
        .await
        .with_context(|| format!("cannot listen on debug address {}", config.debug_addr))?;
    let bound = Bound {
        frontend: frontend_listener.local_addr()?,
        debug: debug_listener.local_addr()?,
    };
    intake.spawn(
        "frontend",
        talon_shared::frontend::serve(
            frontend,
            frontend_listener,
            config.max_client_message_bytes,
            config.max_client_message_bytes,
            intake.clone(),
        ),
    );
    let debug_shutdown = intake.clone();
    let router = talon_shared::debug::router(qm.clone());
    intake.spawn("debug-http", async move {
        axum::serve(debug_listener, router)
            .with_graceful_shutdown(debug_shutdown.cancelled_owned())
            .await
    });
    tracing::info!(node = %config.node_name, nats = %config.nats_url, "minion serving");
    on_ready(bound);

    stop.cancelled().await;
    talon_shared::lifecycle::shut_down(talon_shared::lifecycle::Parts {
        tree: &tree,
        intake: &intake,
        services: &services,
        bus: Some(&bus),
        store: &store,
    })
    .await;
    drop(temp);
    Ok(())
}
