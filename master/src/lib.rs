//! The Talon master: opens the store, loads artifacts, runs the queue manager, the admin gRPC
//! API, the debug HTTP server and retention, and shuts them down in one place.
//!
//! - [`api`]: the admin gRPC service.
//! - [`artifacts`]: user artifact administration (store, announce, audit).
//! - [`automation`]: mail (the durable outbox), HTTP, secrets and user messages for VQL.
//! - [`config`]: the master's configuration: YAML and flags to an immutable `Config`.
//! - [`client_records`]: in a cluster, client pings and records from other nodes, client
//!   snapshots and lookups.
//! - [`nodes`]: in a cluster, node reports and health totals.
//! - [`registrations`]: in a cluster, the queues the master watches.
//! - [`security`]: the deployment's certificates (made on first start) and the CA.
//! - [`users`]: API users and their roles per org.
//! - [`state`]: in a cluster, the shared state (user artifacts, client tables) for nodes.
//! - [`error`]: API errors and their gRPC status codes.
//! - [`monitor`]: the server monitoring table and its running queries (its debug page
//!   in `monitor_page`).
//! - [`persister`]: in a cluster, the durable stream into the store.

pub mod api;
mod args;
pub mod artifacts;
pub mod automation;
pub mod client_records;
pub mod collections;
pub mod config;
pub mod error;
pub mod monitor;
mod monitor_page;
pub mod nodes;
pub mod persister;
pub mod registrations;
pub mod security;
pub mod state;
pub mod users;

use std::net::SocketAddr;
use std::time::Duration;

use crate::config::Config;
use anyhow::Context;
use talon_artifacts::Repository;
use talon_core::Shutdown;
use talon_proto::api::admin_server::AdminServer;
use talon_shared::control::Role;
use talon_shared::parts::{Parts, Settings};
use talon_shared::queue::{self, Limits, QueueManager};
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
    std::fs::create_dir_all(&config.datastore)
        .with_context(|| format!("cannot create datastore {}", config.datastore.display()))?;
    let security = security::Security::resolve(&config)?;
    let frontend_tls = if config.insecure_plaintext_frontend {
        tracing::warn!(
            "clients may connect without TLS (insecure_plaintext_frontend): for tests only"
        );
        None
    } else {
        Some(talon_shared::security::frontend_config(&security.tls)?)
    };
    // Standalone or cluster is decided here, once: the queue manager's durable log is the
    // store, or with a NATS URL the bus.
    let settings = Settings {
        node: config.node_name.clone(),
        store_path: config.datastore.join(STORE_FILE),
        limits: Limits {
            max_row_bytes: config.max_row_bytes,
            buffer_batches: config.queue_buffer_batches,
            buffer_bytes: config.queue_buffer_bytes,
        },
        store_cache_bytes: config.store_cache_bytes,
        nats_url: config
            .nats_url
            .clone()
            .or_else(|| security.nats.as_ref().and_then(|n| n.url.clone())),
        nats_auth: security
            .nats
            .as_ref()
            .map(|n| n.master.clone())
            .unwrap_or_default(),
        grace: SHUTDOWN_GRACE,
    };
    // Joining the bus waits for NATS as long as it takes; a stop meanwhile ends the wait.
    let parts = tokio::select! {
        parts = Parts::assemble(settings, Repository::with_builtins()) => parts?,
        _ = stop.cancelled() => {
            tracing::info!("stopped before the node was assembled");
            return Ok(());
        }
    };
    let artifacts = artifacts::ArtifactAdmin {
        store: parts.store.clone(),
        repo: parts.repo.clone(),
        qm: parts.qm.clone(),
    };
    let user_artifacts = artifacts.load_stored()?;
    let users = users::Users::new(parts.store.clone());
    users.ensure(&security.initial_users).await?;
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

    let nodes = nodes::Nodes::default();
    let mut debug_extra = axum::Router::new();
    let mut debug_index = Vec::new();
    if let Some(bus) = &parts.bus {
        let progress = start_cluster(&parts, bus, &nodes).await?;
        // What the persister has stored, for operators and the cluster benchmark.
        debug_index.push(talon_shared::debug::view::IndexEntry::new(
            "Cluster",
            "Persister",
            "/debug/persister",
            "what the persister has stored from the durable stream (JSON)",
        ));
        debug_extra = debug_extra.route(
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
        let nats = config.nats_url.as_deref().map(talon_shared::bus::redact);
        tracing::info!(nats = ?nats, node = %config.node_name, "joined the cluster");
    }
    let (collections, manager) = collections::Collections::new(
        parts.qm.clone(),
        parts.store.clone(),
        parts.repo.clone(),
        config::error_regex(&config.collection_error_regex)?,
        parts.services.clone(),
    )?;
    parts.frontend.hold_collections_locally();
    if let Some(bus) = &parts.bus {
        collections::serve_nodes(bus, &parts.store, &parts.services).await?;
    }
    parts
        .services
        .spawn("flow-manager", manager.run(parts.services.clone()));
    let automation = automation::Automation::new(parts.store.clone(), config.mail.clone())
        .context("cannot open the mail outbox")?;
    parts.services.spawn(
        "mail-outbox",
        automation.outbox.clone().run(parts.services.clone()),
    );
    debug_extra = debug_extra.merge(automation::pages::routes(
        automation.clone(),
        &config.node_name,
    ));
    debug_index.extend(automation::pages::index());
    let pool = talon_shared::query_pool::QueryPool::new(config.query_threads)
        .context("cannot start the query pool")?;
    let vql = talon_shared::vql_host::Vql::new(
        parts.qm.clone(),
        parts.store.clone(),
        parts.repo.clone(),
        parts.services.clone(),
    )
    .with_frontend(parts.frontend.clone())
    .with_collections(std::sync::Arc::new(collections.clone()))
    .with_automation(std::sync::Arc::new(automation.clone()))
    .with_pool(pool);
    collections.set_vql(vql.clone());
    let monitor = monitor::ServerMonitor::new(
        parts.qm.clone(),
        parts.store.clone(),
        parts.repo.clone(),
        vql.clone(),
        parts.services.clone(),
    );
    debug_extra = debug_extra.merge(monitor_page::routes(monitor.clone(), &config.node_name));
    debug_index.push(monitor_page::index());
    if config.monitoring {
        let monitored = monitor.start_stored()?;
        tracing::info!(monitored, "server monitoring table started");
    } else {
        monitor.suspend();
        tracing::warn!(
            "server monitoring suspended (--no-monitoring): the table can be edited, nothing on it runs"
        );
    }
    let max_message = config.max_row_bytes.saturating_mul(2) + MESSAGE_SLACK_BYTES;
    parts.serve_frontend(
        frontend_listener,
        frontend_tls,
        config.max_client_message_bytes,
        config.max_client_message_bytes.max(max_message),
    );
    let admin = AdminServer::new(api::AdminService::new(api::AdminParts {
        qm: parts.qm.clone(),
        store: parts.store.clone(),
        repo: parts.repo.clone(),
        bus: parts.bus.clone(),
        artifacts,
        vql,
        monitor,
        frontend: parts.frontend.clone(),
        nodes,
        shutdown: parts.intake.clone(),
        query_limits: config.query_limits,
        users,
        ca: security.ca.map(std::sync::Arc::new),
        api_addr: bound.api.to_string(),
    }))
    .max_decoding_message_size(max_message)
    .max_encoding_message_size(max_message);
    let api_tls = talon_shared::security::api_tls(&security.tls);
    let api_shutdown = parts.intake.clone();
    let api_task = parts.intake.spawn("admin-api", async move {
        tonic::transport::Server::builder()
            .tls_config(api_tls)?
            .add_service(admin)
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(api_listener),
                api_shutdown.cancelled_owned(),
            )
            .await
    });
    let debug_auth = std::sync::Arc::new(users::DebugTokens {
        users: users::Users::new(parts.store.clone()),
        config_tokens: config.debug_token_sha256.clone(),
    });
    parts.serve_debug(debug_listener, debug_extra, debug_index, debug_auth)?;
    start_retention(&parts.qm, config.retention.clone(), &parts.services);
    on_ready(bound);

    stop.cancelled().await;
    parts.shut_down().await;
    if api_task.is_finished() {
        if let Ok(Err(e)) = api_task.await {
            return Err(e).context("api server failed");
        }
    }
    Ok(())
}

/// The master's cluster services, then the services every node runs; returns the
/// persister's progress. The master's consumers start first, so nothing a node sends
/// once this master is up arrives before its consumer exists.
async fn start_cluster(
    parts: &Parts,
    bus: &talon_shared::bus::Bus,
    nodes: &nodes::Nodes,
) -> anyhow::Result<std::sync::Arc<persister::Progress>> {
    let services = &parts.services;
    let progress = std::sync::Arc::new(persister::Progress::default());
    services.spawn(
        "persister",
        persister::run(
            bus.clone(),
            parts.store.clone(),
            progress.clone(),
            services.token().clone(),
        ),
    );
    client_records::start(
        bus,
        &parts.qm,
        &parts.frontend,
        client_records::SNAPSHOT_PERIOD,
        services,
    )
    .await?;
    nodes::start(&parts.qm, nodes, services).await?;
    registrations::start(bus, &parts.qm, services).await?;
    state::serve(bus, parts.store.clone(), parts.frontend.clone(), services).await?;
    parts
        .start_node_services(Role::Master, Some(progress.applied.clone()))
        .await?;
    state::publish(bus, &parts.store, &parts.frontend).await;
    Ok(progress)
}

/// Deletes rows older than their queue's retention every [`RETENTION_PERIOD`].
fn start_retention(qm: &QueueManager, retention: config::Retention, shutdown: &Shutdown) {
    let (qm, stop) = (qm.clone(), shutdown.clone());
    shutdown.spawn("retention", async move {
        let mut tick = tokio::time::interval(RETENTION_PERIOD);
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tick.tick() => {}
            }
            match qm
                .apply_retention(queue::now_us(), |q| retention.days_for(q))
                .await
            {
                Ok(0) => {}
                Ok(n) => tracing::info!(rows = n, "retention deleted old rows"),
                Err(e) => tracing::error!(error = %e, "retention failed"),
            }
        }
    });
}
