//! The Talon master: opens the store, loads artifacts, runs the queue manager, the admin gRPC
//! API, the debug HTTP server and retention, and shuts them down in one place.
//!
//! - [`api`]: the admin gRPC service.
//! - [`artifacts`]: user artifact administration (store, announce, audit).
//! - [`config`]: the master's configuration: YAML and flags to an immutable `Config`.
//! - [`client_records`]: in a cluster, client pings and records from other nodes, client
//!   snapshots and lookups.
//! - [`nodes`]: in a cluster, node reports and health totals.
//! - [`registrations`]: in a cluster, the queues the master watches.
//! - [`state`]: in a cluster, the shared state (user artifacts, client tables) for nodes.
//! - [`error`]: API errors and their gRPC status codes.
//! - [`monitor`]: the server monitoring table and its running queries.
//! - [`persister`]: in a cluster, the durable stream into the store.

pub mod api;
pub mod artifacts;
pub mod client_records;
pub mod config;
pub mod error;
pub mod monitor;
pub mod nodes;
pub mod persister;
pub mod registrations;
pub mod state;

use std::net::SocketAddr;
use std::time::Duration;

use crate::config::Config;
use anyhow::Context;
use talon_artifacts::Repository;
use talon_core::Shutdown;
use talon_proto::api::admin_server::AdminServer;
use talon_shared::queue::{self, Limits, QueueManager};
use talon_shared::store::Store;
use tokio::net::TcpListener;

/// File name of the redb store inside the datastore directory.
pub const STORE_FILE: &str = "talon.redb";
/// How often retention runs.
pub const RETENTION_PERIOD: Duration = Duration::from_secs(3600);
/// How long in-flight API calls get to finish at shutdown.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// Slack above the row size limit for the gRPC message carrying it.
const MESSAGE_SLACK_BYTES: usize = 1024 * 1024;

/// The addresses a running master bound.
#[derive(Debug, Clone, Copy)]
pub struct Bound {
    pub api: SocketAddr,
    pub debug: SocketAddr,
    pub frontend: SocketAddr,
}

/// Runs a master until `stop` fires; `on_ready` is called once every listener is bound.
/// Then it shuts down in the one order of [`talon_shared::lifecycle::shut_down`].
pub async fn run(
    config: Config,
    stop: Shutdown,
    on_ready: impl FnOnce(Bound),
) -> anyhow::Result<()> {
    let tree = Shutdown::for_node(&config.node_name, SHUTDOWN_GRACE);
    // Listeners and the calls and streams they serve.
    let intake = tree.child();
    // Everything that runs in the background.
    let services = tree.child();
    std::fs::create_dir_all(&config.datastore)
        .with_context(|| format!("cannot create datastore {}", config.datastore.display()))?;
    let store_path = config.datastore.join(STORE_FILE);
    let store = Store::open(&store_path)?;
    let limits = Limits {
        max_row_bytes: config.max_row_bytes,
        buffer_batches: config.queue_buffer_batches,
    };
    // Standalone or cluster is decided here, once: the queue manager's durable log is the
    // store, or with a NATS URL the bus.
    let cluster_bus = match &config.nats_url {
        Some(url) => Some(talon_shared::bus::Bus::connect(url, &config.node_name).await?),
        None => None,
    };
    let repo = Repository::with_builtins();
    let qm = match &cluster_bus {
        Some(bus) => {
            QueueManager::clustered(repo, store.clone(), limits, bus.clone(), services.clone())
                .await?
        }
        None => QueueManager::new(repo, store.clone(), limits),
    };
    let user_artifacts = artifacts::load_stored(&qm)?;
    tracing::info!(datastore = %config.datastore.display(), user_artifacts, "store open");

    let api_listener = TcpListener::bind(config.api_addr)
        .await
        .with_context(|| format!("cannot listen on api address {}", config.api_addr))?;
    let debug_listener = TcpListener::bind(config.debug_addr)
        .await
        .with_context(|| format!("cannot listen on debug address {}", config.debug_addr))?;
    let frontend_listener = talon_shared::frontend::listen(config.frontend_addr)
        .with_context(|| format!("cannot listen on frontend address {}", config.frontend_addr))?;
    let bound = Bound {
        api: api_listener.local_addr()?,
        debug: debug_listener.local_addr()?,
        frontend: frontend_listener.local_addr()?,
    };

    let frontend = talon_shared::frontend::FrontendService::new(
        qm.clone(),
        &config.node_name,
        services.clone(),
    );
    let nodes = nodes::Nodes::default();
    let mut persister_progress = None;
    if let (Some(bus), Some(url)) = (cluster_bus.clone(), &config.nats_url) {
        let progress = std::sync::Arc::new(persister::Progress::default());
        persister_progress = Some(progress.clone());
        services.spawn(
            "persister",
            persister::run(
                bus.clone(),
                qm.clone(),
                progress.clone(),
                services.token().clone(),
            ),
        );
        // The master's half of the cluster services first, so nothing a node sends
        // once this master is up arrives before its consumer exists.
        client_records::start(
            &bus,
            &qm,
            &frontend,
            client_records::SNAPSHOT_PERIOD,
            &services,
        )
        .await?;
        nodes::start(&qm, &nodes, &services).await?;
        registrations::start(&bus, &qm, &services).await?;
        state::serve(&bus, qm.clone(), frontend.clone(), &services).await?;
        talon_shared::node::start(
            bus.clone(),
            qm.clone(),
            frontend.clone(),
            talon_shared::control::Role::Master,
            Some(progress.applied.clone()),
            services.clone(),
        )
        .await?;
        state::publish(&bus, &qm, &frontend).await;
        tracing::info!(nats = %url, node = %config.node_name, "joined the cluster");
    }
    let vql = talon_shared::vql_host::Vql::new(qm.clone(), services.clone())
        .with_frontend(frontend.clone());
    let monitor = monitor::ServerMonitor::new(qm.clone(), vql.clone(), services.clone());
    let monitored = monitor.start_stored()?;
    tracing::info!(monitored, "server monitoring table started");
    let max_message = config.max_row_bytes.saturating_mul(2) + MESSAGE_SLACK_BYTES;
    intake.spawn(
        "frontend",
        talon_shared::frontend::serve(
            frontend.clone(),
            frontend_listener,
            config.max_client_message_bytes,
            config.max_client_message_bytes.max(max_message),
            intake.clone(),
        ),
    );
    let admin = AdminServer::new(api::AdminService::new(
        qm.clone(),
        vql,
        monitor,
        frontend,
        nodes,
        intake.clone(),
    ))
    .max_decoding_message_size(max_message)
    .max_encoding_message_size(max_message);
    let api_shutdown = intake.clone();
    let api_task = intake.spawn("admin-api", async move {
        tonic::transport::Server::builder()
            .add_service(admin)
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(api_listener),
                api_shutdown.cancelled_owned(),
            )
            .await
    });
    let debug_shutdown = intake.clone();
    let mut debug_router = talon_shared::debug::router(qm.clone());
    if let Some(progress) = persister_progress {
        // What the persister has stored, for operators and the cluster benchmark.
        debug_router = debug_router.route(
            "/debug/persister",
            axum::routing::get(move || {
                let progress = progress.clone();
                async move {
                    (
                        [(axum::http::header::CONTENT_TYPE, "application/json")],
                        progress.to_json().to_string(),
                    )
                }
            }),
        );
    }
    intake.spawn("debug-http", async move {
        axum::serve(debug_listener, debug_router)
            .with_graceful_shutdown(debug_shutdown.cancelled_owned())
            .await
    });
    let retention = config.retention.clone();
    let retention_qm = qm.clone();
    let retention_shutdown = services.clone();
    services.spawn("retention", async move {
        let mut tick = tokio::time::interval(RETENTION_PERIOD);
        loop {
            tokio::select! {
                _ = retention_shutdown.cancelled() => break,
                _ = tick.tick() => {}
            }
            match retention_qm
                .apply_retention(queue::now_us(), |q| retention.days_for(q))
                .await
            {
                Ok(0) => {}
                Ok(n) => tracing::info!(rows = n, "retention deleted old rows"),
                Err(e) => tracing::error!(error = %e, "retention failed"),
            }
        }
    });
    on_ready(bound);

    stop.cancelled().await;
    talon_shared::lifecycle::shut_down(talon_shared::lifecycle::Parts {
        tree: &tree,
        intake: &intake,
        services: &services,
        bus: cluster_bus.as_ref(),
        store: &store,
    })
    .await;
    if api_task.is_finished() {
        if let Ok(Err(e)) = api_task.await {
            return Err(e).context("api server failed");
        }
    }
    Ok(())
}
