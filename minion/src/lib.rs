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
use talon_shared::control::Role;
use talon_shared::frontend::DEFAULT_MAX_MESSAGE_BYTES;
use talon_shared::parts::{Parts, Settings};
use talon_shared::queue::Limits;
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
    /// The frontend's certificate (from `server.config.yaml`); None with
    /// `insecure_plaintext_frontend` only.
    pub tls: Option<talon_core::deploy::ServerTls>,
    /// Clients may connect without TLS (tests only).
    pub insecure_plaintext_frontend: bool,
    /// How to authenticate to NATS.
    pub nats_auth: talon_core::deploy::NatsAuth,
    /// Bearer tokens (SHA-256, hex) that open the debug pages off loopback.
    pub debug_token_sha256: Vec<String>,
}

/// The parts of `server.config.yaml` a minion reads; the master's other keys are ignored.
#[derive(Debug, Default, serde::Deserialize)]
pub struct ServerConfigFile {
    pub frontend_addr: Option<String>,
    pub debug_addr: Option<String>,
    pub nats_url: Option<String>,
    /// The node name its NATS user is bound to (`minion-NAME.config.yaml`).
    pub node_name: Option<String>,
    pub tls: Option<talon_core::deploy::ServerTls>,
    pub nats: Option<talon_core::deploy::NatsSection>,
    pub insecure_plaintext_frontend: Option<bool>,
    pub debug_token_sha256: Option<Vec<String>>,
}

impl ServerConfigFile {
    /// Reads a server config file.
    pub fn read(path: &std::path::Path) -> anyhow::Result<ServerConfigFile> {
        Ok(talon_core::deploy::read(path)?)
    }
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
            tls: None,
            insecure_plaintext_frontend: false,
            nats_auth: Default::default(),
            debug_token_sha256: Vec::new(),
        }
    }

    /// Takes the TLS, NATS and address settings of a server config file.
    pub fn apply(&mut self, file: ServerConfigFile) -> anyhow::Result<()> {
        if let Some(a) = file.frontend_addr {
            self.frontend_addr = a.parse().with_context(|| format!("frontend_addr {a:?}"))?;
        }
        if let Some(a) = file.debug_addr {
            self.debug_addr = a.parse().with_context(|| format!("debug_addr {a:?}"))?;
        }
        if let Some(n) = file.node_name {
            self.node_name = n;
        }
        if let Some(nats) = file.nats {
            if let Some(url) = nats.url {
                self.nats_url = url;
            }
            self.nats_auth = nats.minion;
        }
        if let Some(url) = file.nats_url {
            self.nats_url = url;
        }
        self.tls = file.tls;
        self.debug_token_sha256 = file.debug_token_sha256.unwrap_or_default();
        self.insecure_plaintext_frontend |= file.insecure_plaintext_frontend.unwrap_or(false);
        Ok(())
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
    let temp = tempfile::tempdir().context("cannot create a cache directory")?;
    let cache_dir = config
        .cache_dir
        .clone()
        .unwrap_or_else(|| temp.path().into());
    let settings = Settings {
        node: config.node_name.clone(),
        store_path: cache_dir.join("cache.redb"),
        limits: Limits::default(),
        store_cache_bytes: talon_shared::store::DEFAULT_CACHE_BYTES,
        nats_url: Some(config.nats_url.clone()),
        nats_auth: config.nats_auth.clone(),
        grace: SHUTDOWN_GRACE,
    };
    let frontend_tls = match (&config.tls, config.insecure_plaintext_frontend) {
        (_, true) => {
            tracing::warn!("clients may connect without TLS (--insecure-plaintext-frontend): for tests only");
            None
        }
        (Some(tls), false) => Some(talon_shared::security::frontend_config(tls)?),
        (None, false) => anyhow::bail!(
            "no frontend certificate: give --config server.config.yaml (from `talon config generate`, or <datastore>/config/ of the master)"
        ),
    };
    // Joining the bus waits for NATS as long as it takes; a stop meanwhile ends the wait.
    let parts = tokio::select! {
        parts = Parts::assemble(settings, Repository::with_builtins()) => parts?,
        _ = stop.cancelled() => {
            tracing::info!("stopped before the node was assembled");
            return Ok(());
        }
    };
    let bus = parts.bus.clone().expect("a minion always has a bus");
    talon_shared::node::state::follow(bus, parts.frontend.clone(), parts.services.clone()).await?;
    parts.start_node_services(Role::Minion, None).await?;

    let frontend_listener = talon_shared::frontend::listen(config.frontend_addr)
        .with_context(|| format!("cannot listen on frontend address {}", config.frontend_addr))?;
    let debug_listener = TcpListener::bind(config.debug_addr)
        .await
        .with_context(|| format!("cannot listen on debug address {}", config.debug_addr))?;
    let bound = Bound {
        frontend: frontend_listener.local_addr()?,
        debug: debug_listener.local_addr()?,
    };
    parts.serve_frontend(
        frontend_listener,
        frontend_tls,
        config.max_client_message_bytes,
        config.max_client_message_bytes,
    );
    parts.serve_debug(
        debug_listener,
        axum::Router::new(),
        Vec::new(),
        std::sync::Arc::new(talon_shared::debug::ConfigTokens(
            config.debug_token_sha256.clone(),
        )),
    )?;
    tracing::info!(node = %config.node_name, nats = %talon_shared::bus::redact(&config.nats_url), "minion serving");
    on_ready(bound);

    stop.cancelled().await;
    parts.shut_down().await;
    drop(temp);
    Ok(())
}
