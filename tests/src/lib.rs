//! Harness for Talon's cross-process tests: starts real `talon-master` processes on free
//! loopback ports with temporary datastores, runs the real `talon` CLI against them, and
//! stops every process it started (by its own pid) when dropped.

pub mod cluster;
pub mod deployment;
pub mod peers;
pub mod sandbox;
pub use cluster::{cluster, sandbox_cluster, start_master, Cluster, Minion, Nats, COUNTER};

use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use talon_proto::api::admin_client::AdminClient;
use tonic::transport::Channel;

/// How long a master gets to print `ready`.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);

/// `target/<profile>`, where the workspace binaries are built.
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    exe.parent()
        .and_then(Path::parent)
        .expect("test executable lives in target/<profile>/deps")
        .to_path_buf()
}

/// Path of a workspace binary built next to the test executable (`target/<profile>/NAME`).
pub fn bin(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.exists(),
        "{} is missing: build the binaries first with `cargo build --workspace --bins` (scripts/test does this)",
        path.display()
    );
    path
}

/// Polls `check` until it returns true or `timeout` passes; returns whether it succeeded.
pub fn wait_until(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if check() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A running `talon-master` process.
pub struct Master {
    child: Option<Child>,
    /// A master of the in-process sandbox instead of a process.
    in_process: Option<sandbox::InProcess>,
    pub datastore: PathBuf,
    pub api: SocketAddr,
    pub debug: SocketAddr,
    pub frontend: SocketAddr,
    stderr_log: PathBuf,
    /// The API identity its CLI calls use.
    pub api_config: PathBuf,
}

impl Master {
    /// Starts a master on free ports with `datastore` and the test deployment's config
    /// (unless `extra` names a `--config`); `extra` are further flags.
    pub fn start(datastore: &Path, extra: &[&str]) -> Master {
        if let Some(i) = extra.iter().position(|a| *a == "--config") {
            if let Some(path) = extra.get(i + 1) {
                deployment::merge_into(Path::new(path));
            }
            return Self::spawn(datastore, extra, deployment::admin_config());
        }
        let config = deployment::server_config();
        let mut flags = vec!["--config", config.to_str().expect("UTF-8 path")];
        flags.extend_from_slice(extra);
        Self::spawn(datastore, &flags, deployment::admin_config())
    }

    /// Starts a master with no config, as on a fresh machine: it makes its deployment in
    /// `<datastore>/config/`, whose administrator the CLI calls then use.
    pub fn start_fresh(datastore: &Path, extra: &[&str]) -> Master {
        let admin = datastore
            .join("config")
            .join(talon_core::deploy::ADMIN_API_CONFIG);
        Self::spawn(datastore, extra, admin)
    }

    fn spawn(datastore: &Path, extra: &[&str], api_config: PathBuf) -> Master {
        let stderr_log = datastore.with_extension("stderr.log");
        let log = std::fs::File::create(&stderr_log).expect("create master log");
        let mut child = Command::new(bin("talon-master"))
            .arg("--datastore")
            .arg(datastore)
            .args(["--api-addr", "127.0.0.1:0"])
            .args(if extra.contains(&"--debug-addr") {
                &[][..]
            } else {
                &["--debug-addr", "127.0.0.1:0"][..]
            })
            .args(if extra.contains(&"--frontend-addr") {
                &[][..]
            } else {
                &["--frontend-addr", "127.0.0.1:0"][..]
            })
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn talon-master");
        let rx = lines_of(&mut child);
        let mut master = Master {
            child: Some(child),
            in_process: None,
            datastore: datastore.to_path_buf(),
            api: "0.0.0.0:0".parse().unwrap(),
            debug: "0.0.0.0:0".parse().unwrap(),
            frontend: "0.0.0.0:0".parse().unwrap(),
            stderr_log,
            api_config,
        };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) if line == "ready" => break,
                Ok(line) => {
                    if let Some(a) = line.strip_prefix("api: ") {
                        master.api = a.parse().expect("api address");
                    } else if let Some(f) = line.strip_prefix("frontend: ") {
                        master.frontend = f.parse().expect("frontend address");
                    } else if let Some(d) = line.strip_prefix("debug: http://") {
                        let d = d.trim_end_matches("/debug/queues");
                        master.debug = d.parse().expect("debug address");
                    }
                }
                Err(_) => panic!("master did not become ready: {}", master.stderr()),
            }
        }
        master
    }

    pub(crate) fn from_in_process(
        datastore: &Path,
        api: SocketAddr,
        debug: SocketAddr,
        frontend: SocketAddr,
        node: sandbox::InProcess,
    ) -> Master {
        Master {
            child: None,
            in_process: Some(node),
            datastore: datastore.to_path_buf(),
            api,
            debug,
            frontend,
            stderr_log: datastore.with_extension("stderr.log"),
            api_config: deployment::admin_config(),
        }
    }

    /// What the master wrote on stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_log).unwrap_or_default()
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// `kill -9` and reap.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends SIGTERM and waits (up to 30 s) for the exit status.
    pub fn terminate(&mut self) -> ExitStatus {
        let mut c = self.child.take().expect("running");
        // kill(1) on our own child's pid, which we have not reaped yet (no unsafe libc call).
        let sent = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status()
            .expect("run kill");
        assert!(sent.success(), "kill -TERM {} failed", c.id());
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = c.try_wait().expect("wait master") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                panic!("master did not exit within 30 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Runs the `talon` CLI against this master.
    pub fn talon(&self, args: &[&str]) -> Output {
        talon_as(&self.api.to_string(), &self.api_config, args, None)
    }

    /// Runs the `talon` CLI with `stdin` as its input.
    pub fn talon_stdin(&self, args: &[&str], stdin: &str) -> Output {
        talon_as(&self.api.to_string(), &self.api_config, args, Some(stdin))
    }

    /// Runs the `talon` CLI as the user of API config `user`.
    pub fn talon_user(&self, user: &Path, args: &[&str]) -> Output {
        talon_as(&self.api.to_string(), user, args, None)
    }

    /// Starts `talon` in the background (for watches), its stdout piped.
    pub fn talon_spawn(&self, args: &[&str]) -> Child {
        Command::new(bin("talon"))
            .env("TALON_API", self.api.to_string())
            .env("TALON_API_CONFIG", &self.api_config)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn talon")
    }

    /// The statistics of one queue of an org, from `talon queues --format json`.
    pub fn queue_stats(&self, org: &str, queue: &str) -> serde_json::Value {
        let out = ok(&self.talon(&["--org", org, "queues", "--format", "json"]));
        let all: serde_json::Value = serde_json::from_str(&out).expect("queues JSON");
        all.as_array()
            .and_then(|a| a.iter().find(|q| q["name"] == queue).cloned())
            .unwrap_or_else(|| panic!("queue {queue} not listed"))
    }

    /// Starts `talon ARGS` in the background and waits until `queue` of `org` has `watchers`
    /// watchers (so rows pushed next are seen); returns the process and its stdout lines.
    pub fn spawn_watching(
        &self,
        args: &[&str],
        org: &str,
        queue: &str,
        watchers: u64,
    ) -> (KillOnDrop, mpsc::Receiver<String>) {
        let mut child = KillOnDrop(self.talon_spawn(args));
        let rx = lines_of(&mut child.0);
        assert!(
            wait_until(Duration::from_secs(20), || self.queue_stats(org, queue)
                ["watchers"]
                == watchers),
            "{queue} never had {watchers} watchers"
        );
        (child, rx)
    }

    /// Watches for one row of a `root` queue (`events watch QUEUE --count 1`); returns once
    /// the watch is registered.
    pub fn watch_one(&self, queue: &str) -> (KillOnDrop, mpsc::Receiver<String>) {
        self.spawn_watching(
            &["events", "watch", queue, "--count", "1"],
            "root",
            queue,
            1,
        )
    }

    /// A watch of a `root` queue over the admin API, registered when this returns; a
    /// stream nobody reads stalls, which is how tests make a lagging watcher.
    pub async fn watch_stream(&self, queue: &str) -> tonic::Streaming<talon_proto::api::EventRow> {
        self.client()
            .await
            .watch(talon_proto::api::WatchRequest {
                artifact: queue.into(),
                ..Default::default()
            })
            .await
            .expect("watch")
            .into_inner()
    }

    /// A gRPC admin client (mutual TLS, as the administrator).
    pub async fn client(&self) -> AdminClient<Channel> {
        deployment::admin_client(self.api, &self.api_config).await
    }

    /// The stored rows of `queue` of root from `client` (`events read --client-id`).
    pub fn client_rows(&self, queue: &str, client: &str) -> Vec<serde_json::Value> {
        json_lines(&ok(&self.talon(&[
            "events",
            "read",
            queue,
            "--client-id",
            client,
        ])))
    }

    /// Where its clients' config is (frontends and the CA).
    pub fn client_config(&self) -> PathBuf {
        self.api_config
            .parent()
            .expect("a config directory")
            .join(talon_core::deploy::CLIENT_CONFIG)
    }

    /// GET a path of the debug server; returns (status line, body).
    pub fn http_get(&self, path: &str) -> (String, String) {
        let mut s = std::net::TcpStream::connect(self.debug).expect("connect debug");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").unwrap();
        let mut resp = String::new();
        s.read_to_string(&mut resp).expect("read response");
        let (head, body) = resp.split_once("\r\n\r\n").unwrap_or((&resp, ""));
        (
            head.lines().next().unwrap_or("").to_string(),
            body.to_string(),
        )
    }
}

impl Drop for Master {
    fn drop(&mut self) {
        // An in-process master shuts down in order; a process is killed.
        self.in_process.take();
        self.kill9();
    }
}

/// Runs the `talon` CLI with `TALON_API` set to `api`, as the test deployment's
/// administrator.
pub fn talon(api: &str, args: &[&str], stdin: Option<&str>) -> Output {
    talon_as(api, &deployment::admin_config(), args, stdin)
}

/// Runs the `talon` CLI against `api` as the identity of `api_config`.
pub fn talon_as(api: &str, api_config: &Path, args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(bin("talon"))
        .env("TALON_API", api)
        .env("TALON_API_CONFIG", api_config)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn talon");
    if let Some(text) = stdin {
        let mut i = child.stdin.take().unwrap();
        i.write_all(text.as_bytes()).unwrap();
    }
    child.wait_with_output().expect("talon output")
}

/// stdout of a CLI run, asserting it succeeded.
pub fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "talon failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// stderr of a CLI run, asserting it exited with `code`.
pub fn fails(out: &Output, code: i32) -> String {
    assert_eq!(
        out.status.code(),
        Some(code),
        "expected exit {code}; stdout: {} stderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Parses JSON Lines.
pub fn json_lines(text: &str) -> Vec<serde_json::Value> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON line {l:?}: {e}")))
        .collect()
}

/// Reads a background CLI's stdout lines on a thread, so tests can poll them.
pub fn lines_of(child: &mut Child) -> mpsc::Receiver<String> {
    lines_from(child.stdout.take().expect("piped stdout"))
}

/// The lines of any pipe (a child's stderr, say), read on a thread of their own.
pub fn lines_from(pipe: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Kills a background child (by its own pid) when dropped.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A free loopback port (bound and released), for a process that must keep its address
/// across restarts.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running `talon-client`, killed (by its own pid) when dropped.
pub struct Client {
    pub child: Child,
    pub state: PathBuf,
    log: PathBuf,
}

impl Client {
    /// Starts `talon-client --frontend FRONTENDS --state STATE` with extra flags, over TLS
    /// with the test deployment's client config (unless `extra` names `--config` or
    /// `--insecure-plaintext`).
    pub fn start(frontends: &str, state: &Path, extra: &[&str]) -> Client {
        std::fs::create_dir_all(state).unwrap();
        let log = state.join("client.log");
        let config = deployment::client_config();
        let own = extra.contains(&"--config") || extra.contains(&"--insecure-plaintext");
        let child = Command::new(bin("talon-client"))
            .args(if own {
                vec![]
            } else {
                vec!["--config", config.to_str().expect("UTF-8 path")]
            })
            .args(["--frontend", frontends, "--state"])
            .arg(state)
            .args(["--batch-ms", "200"])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::from(std::fs::File::create(&log).unwrap()))
            .spawn()
            .expect("spawn talon-client");
        Client {
            child,
            state: state.to_path_buf(),
            log,
        }
    }

    /// The client id its key names (waits until it made the key).
    pub fn id(&self) -> String {
        let path = self.state.join("client.key");
        let read = || {
            let pem = std::fs::read_to_string(&path).ok()?;
            talon_core::pki::ClientIdentity::new(Some(&pem))
                .ok()
                .map(|i| i.id)
        };
        assert!(
            wait_until(Duration::from_secs(20), || read().is_some()),
            "no client key in {}",
            self.state.display()
        );
        read().expect("a client key")
    }

    /// What it logged.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A codec that passes bytes through, to send malformed protobuf.
#[derive(Clone, Copy)]
pub struct RawCodec;

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;
    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }
    fn decoder(&mut self) -> Self::Decoder {
        RawCodec
    }
}

impl tonic::codec::Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(
        &mut self,
        item: Vec<u8>,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        use bytes::BufMut;
        dst.put_slice(&item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Vec<u8>>, tonic::Status> {
        use bytes::Buf;
        let mut v = vec![0; src.remaining()];
        src.copy_to_slice(&mut v);
        Ok(Some(v))
    }
}

/// Pushes rows `{"i": 0..batches*10, "pad": 1 KB}` to `queue` of root in `batches` pushes of
/// 10, each within 10 s (a push that waits on a stalled watcher fails the test).
pub async fn push_padded_rows(api: SocketAddr, queue: &str, batches: usize) {
    let mut client = deployment::admin_client(api, &deployment::admin_config()).await;
    let pad = "x".repeat(1000);
    for b in 0..batches {
        let rows: Vec<String> = (0..10)
            .map(|i| format!("{{\"i\":{},\"pad\":\"{pad}\"}}", b * 10 + i))
            .collect();
        let push = client.push(talon_proto::api::PushRequest {
            org: String::new(),
            artifact: queue.into(),
            rows_json: rows.into_iter().map(String::into_bytes).collect(),
            ..Default::default()
        });
        tokio::time::timeout(Duration::from_secs(10), push)
            .await
            .expect("a push was blocked by the stalled watcher")
            .unwrap();
    }
}
