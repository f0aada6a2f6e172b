//! What a node is made of, assembled once in `master::run` or `minion::run`: the shutdown
//! tree with its two subsystems, the store, the artifact repository, in a cluster the
//! bus, the queue manager built with its durable log, and the frontend. Services are then
//! handed exactly the parts they use (a constructor says what a room may touch); the
//! pieces master and minion both start (client frontend, debug pages, node services, the
//! shutdown order) are started here, once.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use talon_artifacts::Repository;
use talon_core::Shutdown;
use tokio::net::TcpListener;

use crate::bus::Bus;
use crate::control::Role;
use crate::frontend::FrontendService;
use crate::queue::{Limits, QueueManager};
use crate::store::Store;

/// How a node is assembled.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The node's name (in reports, conflicts, task spans).
    pub node: String,
    /// The redb file: the master's store, or a minion's cache.
    pub store_path: PathBuf,
    pub limits: Limits,
    /// The store's page cache.
    pub store_cache_bytes: usize,
    /// NATS to join; None: standalone.
    pub nats_url: Option<String>,
    /// How to authenticate to NATS (beyond credentials in the URL).
    pub nats_auth: talon_core::deploy::NatsAuth,
    /// How long tasks get to stop at shutdown.
    pub grace: Duration,
}

impl Settings {
    /// A standalone node with default limits storing in `store_path` (tests use it).
    pub fn standalone(node: &str, store_path: PathBuf) -> Self {
        Self {
            node: node.to_string(),
            store_path,
            limits: Limits::default(),
            store_cache_bytes: crate::store::DEFAULT_CACHE_BYTES,
            nats_url: None,
            nats_auth: Default::default(),
            grace: talon_core::shutdown::DEFAULT_GRACE,
        }
    }
}

/// The parts of a running node. Clones of handles are cheap.
pub struct Parts {
    pub node: String,
    /// The root of the node's shutdown tree.
    pub tree: Shutdown,
    /// Listeners and what they serve.
    pub intake: Shutdown,
    /// Everything else that runs in the background.
    pub services: Shutdown,
    pub store: Store,
    pub repo: Repository,
    /// In a cluster, the bus.
    pub bus: Option<Bus>,
    pub qm: QueueManager,
    pub frontend: FrontendService,
}

impl Parts {
    /// Opens the store, joins the bus when a NATS URL is given, and builds the queue
    /// manager (its durable log the store, or the bus) and the frontend over `repo`.
    pub async fn assemble(settings: Settings, repo: Repository) -> anyhow::Result<Parts> {
        crate::bus::valid_node(&settings.node).map_err(anyhow::Error::msg)?;
        let tree = Shutdown::for_node(&settings.node, settings.grace);
        let intake = tree.child();
        let services = tree.child();
        if let Some(dir) = settings.store_path.parent() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create directory {}", dir.display()))?;
        }
        let store = Store::open_with_cache(&settings.store_path, settings.store_cache_bytes)?;
        let bus = match &settings.nats_url {
            Some(url) => Some(Bus::connect(url, &settings.node, &settings.nats_auth).await?),
            None => None,
        };
        let qm = match &bus {
            Some(bus) => {
                QueueManager::clustered(
                    repo.clone(),
                    store.clone(),
                    settings.limits.clone(),
                    bus.clone(),
                    services.clone(),
                )
                .await?
            }
            None => QueueManager::new(repo.clone(), store.clone(), settings.limits.clone()),
        };
        let frontend = FrontendService::new(
            qm.clone(),
            store.clone(),
            repo.clone(),
            bus.clone(),
            &settings.node,
            services.clone(),
        );
        Ok(Parts {
            node: settings.node,
            tree,
            intake,
            services,
            store,
            repo,
            bus,
            qm,
            frontend,
        })
    }

    /// A standalone node `node` with the built-in artifacts, storing in `store_path` (what
    /// in-process tests assemble).
    pub async fn standalone(node: &str, store_path: PathBuf) -> anyhow::Result<Parts> {
        Self::assemble(
            Settings::standalone(node, store_path),
            Repository::with_builtins(),
        )
        .await
    }

    /// Serves client connections on `listener` until intake stops.
    pub fn serve_frontend(
        &self,
        listener: TcpListener,
        tls: Option<std::sync::Arc<rustls::ServerConfig>>,
        max_decode: usize,
        max_encode: usize,
    ) {
        if let Err(e) = self.frontend.start_collections() {
            tracing::error!(error = %e, "cannot follow client tasks and hunts");
        }
        self.intake.spawn(
            "frontend",
            crate::frontend::serve(
                self.frontend.clone(),
                listener,
                tls,
                max_decode,
                max_encode,
                self.intake.clone(),
            ),
        );
    }

    /// Serves the debug pages, with `extra` routes of the node's own, until intake stops:
    /// open on a loopback address, behind `auth`'s bearer tokens on any other.
    pub fn serve_debug(
        &self,
        listener: TcpListener,
        extra: axum::Router,
        extra_index: Vec<crate::debug::view::IndexEntry>,
        auth: std::sync::Arc<dyn crate::debug::DebugAuth>,
    ) -> anyhow::Result<SocketAddr> {
        let addr = listener.local_addr()?;
        let mut router = crate::debug::router(crate::debug::Pages {
            node: self.node.clone(),
            extra: std::sync::Arc::new(extra_index),
            qm: self.qm.clone(),
            bus: self.bus.clone(),
            frontend: self.frontend.clone(),
            stop: self.intake.clone(),
        })
        .merge(extra);
        if !addr.ip().is_loopback() {
            tracing::info!(%addr, "debug pages off loopback: bearer tokens required");
            router = router.layer(axum::middleware::from_fn_with_state(
                auth,
                crate::debug::require_token,
            ));
        }
        let stop = self.intake.clone();
        self.intake.spawn("debug-http", async move {
            axum::serve(listener, router)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await
        });
        Ok(addr)
    }

    /// In a cluster, starts the services every node runs; `applied` is the master's
    /// persister progress (None on a minion). Standalone, does nothing.
    pub async fn start_node_services(
        &self,
        role: Role,
        applied: Option<Arc<AtomicU64>>,
    ) -> anyhow::Result<()> {
        let Some(bus) = &self.bus else {
            return Ok(());
        };
        crate::node::start(
            bus.clone(),
            self.qm.clone(),
            self.frontend.clone(),
            role,
            applied,
            self.services.clone(),
        )
        .await
    }

    /// Shuts the node down in the one order of [`crate::lifecycle::shut_down`].
    pub async fn shut_down(&self) -> bool {
        crate::lifecycle::shut_down(crate::lifecycle::Parts {
            tree: &self.tree,
            intake: &self.intake,
            services: &self.services,
            bus: self.bus.as_ref(),
            store: &self.store,
        })
        .await
    }
}
