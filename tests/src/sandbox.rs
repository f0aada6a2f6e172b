//! The in-process sandbox: masters and minions run as `talon_master::run` and
//! `talon_minion::run`, each on a tokio runtime of its own inside the test process, on
//! port 0, beside a real `nats-server` process (whose guard stops it by pid on drop). For
//! the tests that do not need `kill -9`, SIGTERM or a binary's exit code: those keep real
//! processes ([`crate::Master::start`], [`crate::Minion::start`]). A node stops (in the
//! binaries' shutdown order) when its handle is dropped.

use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

use talon_core::Shutdown;

use crate::{Master, Minion, START_TIMEOUT};

/// A node running in this process; dropping it shuts the node down and waits for it.
pub struct InProcess {
    stop: Shutdown,
    thread: Option<std::thread::JoinHandle<anyhow::Result<()>>>,
}

impl InProcess {
    /// Runs `node` (a `run` function given its stop signal and a ready callback) on a
    /// runtime of its own; returns once it called back with its bound addresses.
    fn start<B, F, Fut>(name: &str, node: F) -> (InProcess, B)
    where
        B: Send + 'static,
        F: FnOnce(Shutdown, Box<dyn FnOnce(B) + Send>) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = anyhow::Result<()>>,
    {
        let stop = Shutdown::new(Duration::from_secs(5));
        let (tx, rx) = mpsc::channel();
        let node_stop = stop.clone();
        let thread = std::thread::Builder::new()
            .name(format!("sandbox-{name}"))
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()?;
                rt.block_on(node(
                    node_stop,
                    Box::new(move |b| {
                        let _ = tx.send(b);
                    }),
                ))
            })
            .expect("spawn a sandbox thread");
        match rx.recv_timeout(START_TIMEOUT) {
            Ok(bound) => (
                InProcess {
                    stop,
                    thread: Some(thread),
                },
                bound,
            ),
            Err(_) => {
                let outcome = if thread.is_finished() {
                    format!("{:?}", thread.join())
                } else {
                    "still starting".to_string()
                };
                panic!("in-process {name} did not become ready: {outcome}")
            }
        }
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        self.stop.cancel();
        if let Some(t) = self.thread.take() {
            match t.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => eprintln!("in-process node ended with an error: {e:#}"),
                Err(_) if std::thread::panicking() => {}
                Err(_) => panic!("an in-process node panicked"),
            }
        }
    }
}

impl Master {
    /// A master in this process on free ports with `datastore`, joined to `nats_url`.
    pub fn in_process(datastore: &Path, nats_url: Option<&str>) -> Master {
        let flags = talon_master::config::Overrides {
            datastore: Some(datastore.to_path_buf()),
            api_addr: Some("127.0.0.1:0".into()),
            frontend_addr: Some("127.0.0.1:0".into()),
            debug_addr: Some("127.0.0.1:0".into()),
            nats_url: nats_url.map(String::from),
            node_name: None,
            no_monitoring: false,
            insecure_plaintext_frontend: false,
            config_dir: Some(crate::deployment::dir().to_path_buf()),
        };
        let path = crate::deployment::server_config();
        let file = talon_master::config::ConfigFile::parse(
            "sandbox",
            &std::fs::read_to_string(&path).expect("the test deployment's server config"),
        )
        .expect("the test deployment's server config parses");
        let config = talon_master::config::Config::build("sandbox", file, flags)
            .expect("a sandbox master's config");
        let (node, bound) = InProcess::start("master", move |stop, ready| {
            talon_master::run(config, stop, ready)
        });
        let bound: talon_master::Bound = bound;
        Master::from_in_process(datastore, bound.api, bound.debug, bound.frontend, node)
    }
}

impl Minion {
    /// A minion named `name` in this process on free ports, joined to `nats_url`.
    pub fn in_process(nats_url: &str, name: &str) -> Minion {
        let mut config = talon_minion::Config::new(nats_url, name);
        config
            .apply(
                talon_minion::ServerConfigFile::read(&crate::deployment::minion_config(name))
                    .expect("the test deployment's minion config"),
            )
            .expect("the test deployment's server config applies");
        config.nats_url = nats_url.to_string();
        config.frontend_addr = "127.0.0.1:0".parse().expect("address");
        config.debug_addr = "127.0.0.1:0".parse().expect("address");
        let (node, bound) = InProcess::start(name, move |stop, ready| {
            talon_minion::run(config, stop, ready)
        });
        let bound: talon_minion::Bound = bound;
        Minion::from_in_process(name, bound.frontend, bound.debug, node)
    }
}
