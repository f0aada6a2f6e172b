//! The master's configuration as a pure pipeline: YAML text -> parsed (unknown keys refused)
//! -> flag overrides -> validated (every problem reported at once) -> immutable [`Config`].

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

use talon_core::telemetry::LogFormat;
use talon_shared::queue::{DEFAULT_BUFFER_BATCHES, DEFAULT_MAX_ROW_BYTES};

/// The validated configuration of a master.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub datastore: PathBuf,
    pub api_addr: SocketAddr,
    pub frontend_addr: SocketAddr,
    pub debug_addr: SocketAddr,
    pub max_row_bytes: usize,
    pub queue_buffer_batches: usize,
    /// Bytes of rows each queue holds in memory for its watchers.
    pub queue_buffer_bytes: usize,
    /// The store's page cache, bytes.
    pub store_cache_bytes: usize,
    pub retention: Retention,
    pub log_format: LogFormat,
    /// Largest message a client may send on its stream.
    pub max_client_message_bytes: usize,
    /// NATS server(s) of the cluster; None runs standalone.
    pub nats_url: Option<String>,
    /// This node's name in the cluster.
    pub node_name: String,
    /// Threads of the query pool, where every query runs apart from the API, the frontend
    /// and the store.
    pub query_threads: usize,
    /// Limits of an API query that gives none itself; monitoring queries have none.
    pub query_limits: talon_shared::query_pool::QueryLimits,
    /// False (`--no-monitoring`): the server monitoring table is kept but not run, so a
    /// bad artifact on it can be removed.
    pub monitoring: bool,
    /// The deployment's certificates; None: those of `<datastore>/config/`, made on the
    /// first start.
    pub tls: Option<talon_core::deploy::ServerTls>,
    /// The directory of the config file (relative paths in it are resolved against it).
    pub config_dir: Option<PathBuf>,
    pub nats: Option<talon_core::deploy::NatsSection>,
    pub initial_users: Vec<talon_core::deploy::InitialUser>,
    /// Clients may connect without TLS (for tests; never the default).
    pub insecure_plaintext_frontend: bool,
    /// Bearer tokens (SHA-256, hex) that open the debug pages off loopback.
    pub debug_token_sha256: Vec<String>,
    /// A flow log line matching this marks the flow as failed (Velociraptor's
    /// `Frontend.collection_error_regex`); checked to compile.
    pub collection_error_regex: String,
    /// The `mail:` section: defaults of `mail()` and how the outbox retries.
    pub mail: MailConfig,
}

/// The `mail:` section, with Velociraptor's field names (`Mail` in its config) and Talon's
/// outbox settings.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MailConfig {
    /// SMTP server host; a `mail()` call or secret may name its own.
    pub server: Option<String>,
    /// Default 587.
    pub server_port: Option<u16>,
    pub from: Option<String>,
    pub auth_username: Option<String>,
    pub auth_password: Option<String>,
    #[serde(default)]
    pub skip_verify: bool,
    /// PEM of a CA to trust besides the system's roots.
    pub root_ca: Option<String>,
    /// `starttls` (required), `tls` (implicit, port 465), `opportunistic` or `none`;
    /// default: `tls` on port 465, `starttls` when credentials are set, else
    /// `opportunistic`.
    pub tls: Option<String>,
    /// Tries per mail before it is marked failed (default 5).
    pub max_attempts: Option<u32>,
    /// Seconds before the first retry, doubling each time up to an hour (default 30).
    pub retry_secs: Option<u64>,
}

/// The TLS modes `mail.tls` accepts.
pub const MAIL_TLS_MODES: &[&str] = &["starttls", "tls", "opportunistic", "none"];

/// The flow error pattern as the manager matches it: case-insensitive, size-bounded.
pub fn error_regex(pattern: &str) -> Result<regex::Regex, regex::Error> {
    regex::RegexBuilder::new(pattern)
        .case_insensitive(true)
        .size_limit(1 << 20)
        .build()
}

/// Default wall time of an API query, seconds (Velociraptor's default for a collection).
pub const DEFAULT_QUERY_TIMEOUT_SECS: u64 = 600;
/// Default rows an API query may produce.
pub const DEFAULT_QUERY_MAX_ROWS: u64 = 10_000_000;

/// Days rows are kept; 0 keeps them forever.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Retention {
    #[serde(default)]
    pub default_days: u32,
    #[serde(default)]
    pub queues: BTreeMap<String, u32>,
}

impl Retention {
    /// Retention of one queue in days.
    pub fn days_for(&self, queue: &str) -> u32 {
        self.queues.get(queue).copied().unwrap_or(self.default_days)
    }
}

/// The YAML file's shape; every key optional.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    pub datastore: Option<PathBuf>,
    pub api_addr: Option<String>,
    pub frontend_addr: Option<String>,
    pub debug_addr: Option<String>,
    pub max_row_bytes: Option<usize>,
    pub queue_buffer_batches: Option<usize>,
    pub queue_buffer_mb: Option<usize>,
    pub store_cache_mb: Option<usize>,
    pub retention: Option<Retention>,
    pub log_format: Option<LogFormat>,
    pub max_client_message_bytes: Option<usize>,
    pub nats_url: Option<String>,
    pub node_name: Option<String>,
    /// 0: one per core.
    pub query_threads: Option<usize>,
    /// 0: no limit.
    pub query_timeout_secs: Option<u64>,
    /// 0: no limit.
    pub query_max_rows: Option<u64>,
    pub tls: Option<talon_core::deploy::ServerTls>,
    pub nats: Option<talon_core::deploy::NatsSection>,
    pub initial_users: Option<Vec<talon_core::deploy::InitialUser>>,
    pub insecure_plaintext_frontend: Option<bool>,
    /// Bearer tokens (their SHA-256, hex) that open the debug pages off loopback.
    pub debug_token_sha256: Option<Vec<String>>,
    pub collection_error_regex: Option<String>,
    pub mail: Option<MailConfig>,
}

/// Values given on the command line; they win over the file.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub datastore: Option<PathBuf>,
    pub api_addr: Option<String>,
    pub frontend_addr: Option<String>,
    pub debug_addr: Option<String>,
    pub nats_url: Option<String>,
    pub node_name: Option<String>,
    pub no_monitoring: bool,
    pub insecure_plaintext_frontend: bool,
    /// The config file's directory.
    pub config_dir: Option<PathBuf>,
}

/// Configuration errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{origin}:{line}:{column}: {message}")]
    Parse {
        origin: String,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{origin}: {}", .problems.join("; "))]
    Invalid {
        origin: String,
        problems: Vec<String>,
    },
}

/// Defaults of ARCHITECTURE "Surfaces and defaults".
pub const DEFAULT_DATASTORE: &str = "./talon-data";
pub const DEFAULT_API_ADDR: &str = "127.0.0.1:8001";
pub const DEFAULT_FRONTEND_ADDR: &str = "127.0.0.1:8000";
pub const DEFAULT_DEBUG_ADDR: &str = "127.0.0.1:8889";

impl ConfigFile {
    /// Parses YAML; `origin` names the file in errors.
    pub fn parse(origin: &str, text: &str) -> Result<Self, Error> {
        if text.trim().is_empty() {
            return Ok(Self::default());
        }
        serde_yaml::from_str(text).map_err(|e| {
            let (line, column) = e
                .location()
                .map(|l| (l.line(), l.column()))
                .unwrap_or((1, 1));
            let message = e.to_string();
            let message = message
                .find(" at line ")
                .map(|i| message[..i].to_string())
                .unwrap_or(message);
            Error::Parse {
                origin: origin.into(),
                line,
                column,
                message,
            }
        })
    }
}

impl Config {
    /// Merges file and overrides over the defaults and validates the result.
    pub fn build(origin: &str, file: ConfigFile, flags: Overrides) -> Result<Config, Error> {
        let mut problems = Vec::new();
        let mut addr = |what: &str, flag: Option<String>, file: Option<String>, default: &str| {
            let text = flag.or(file).unwrap_or_else(|| default.to_string());
            text.parse::<SocketAddr>().unwrap_or_else(|_| {
                problems.push(format!(
                    "{what} {text:?} is not HOST:PORT (for example 127.0.0.1:0)"
                ));
                default.parse().expect("default address parses")
            })
        };
        let api_addr = addr("api_addr", flags.api_addr, file.api_addr, DEFAULT_API_ADDR);
        let frontend_addr = addr(
            "frontend_addr",
            flags.frontend_addr,
            file.frontend_addr,
            DEFAULT_FRONTEND_ADDR,
        );
        let debug_addr = addr(
            "debug_addr",
            flags.debug_addr,
            file.debug_addr,
            DEFAULT_DEBUG_ADDR,
        );
        let max_row_bytes = file.max_row_bytes.unwrap_or(DEFAULT_MAX_ROW_BYTES);
        if max_row_bytes < 64 {
            problems.push(format!(
                "max_row_bytes {max_row_bytes} is below the minimum of 64"
            ));
        }
        let queue_buffer_batches = file.queue_buffer_batches.unwrap_or(DEFAULT_BUFFER_BATCHES);
        if queue_buffer_batches == 0 {
            problems.push("queue_buffer_batches must be at least 1".to_string());
        }
        let retention = file.retention.unwrap_or_default();
        for name in retention.queues.keys() {
            if talon_artifacts::load::validate_name(name.split('/').next().unwrap_or(name)).is_err()
            {
                problems.push(format!("retention.queues: {name:?} is not a queue name"));
            }
        }
        for (key, value) in [
            ("queue_buffer_mb", file.queue_buffer_mb),
            ("store_cache_mb", file.store_cache_mb),
        ] {
            if value.is_some_and(|mb| mb == 0 || mb > 1 << 20) {
                problems.push(format!("{key} must be between 1 and 1048576"));
            }
        }
        if file.query_threads.is_some_and(|n| n > 256) {
            problems.push("query_threads is over the maximum of 256".to_string());
        }
        let pattern = file
            .collection_error_regex
            .clone()
            .unwrap_or_else(|| talon_shared::collections::DEFAULT_ERROR_REGEX.to_string());
        if let Err(e) = error_regex(&pattern) {
            problems.push(format!("collection_error_regex: {e}"));
        }
        let mail = file.mail.clone().unwrap_or_default();
        if let Some(t) = &mail.tls {
            if !MAIL_TLS_MODES.contains(&t.as_str()) {
                problems.push(format!(
                    "mail.tls {t:?} is not one of {}",
                    MAIL_TLS_MODES.join(", ")
                ));
            }
        }
        if mail.max_attempts == Some(0) {
            problems.push("mail.max_attempts must be at least 1".to_string());
        }
        if !problems.is_empty() {
            return Err(Error::Invalid {
                origin: origin.into(),
                problems,
            });
        }
        Ok(Config {
            datastore: flags
                .datastore
                .or(file.datastore)
                .unwrap_or_else(|| PathBuf::from(DEFAULT_DATASTORE)),
            api_addr,
            frontend_addr,
            debug_addr,
            max_row_bytes,
            queue_buffer_batches,
            queue_buffer_bytes: file
                .queue_buffer_mb
                .map(|mb| mb.max(1) << 20)
                .unwrap_or(talon_shared::queue::DEFAULT_BUFFER_BYTES),
            store_cache_bytes: file
                .store_cache_mb
                .map(|mb| mb.max(1) << 20)
                .unwrap_or(talon_shared::store::DEFAULT_CACHE_BYTES),
            retention,
            log_format: file.log_format.unwrap_or_default(),
            max_client_message_bytes: file
                .max_client_message_bytes
                .unwrap_or(talon_shared::frontend::DEFAULT_MAX_MESSAGE_BYTES),
            nats_url: flags.nats_url.or(file.nats_url),
            node_name: flags
                .node_name
                .or(file.node_name)
                .unwrap_or_else(|| "master".to_string()),
            query_threads: match file.query_threads.unwrap_or(0) {
                0 => talon_shared::query_pool::default_threads(),
                n => n,
            },
            query_limits: talon_shared::query_pool::QueryLimits {
                timeout: match file
                    .query_timeout_secs
                    .unwrap_or(DEFAULT_QUERY_TIMEOUT_SECS)
                {
                    0 => None,
                    s => Some(std::time::Duration::from_secs(s)),
                },
                max_rows: match file.query_max_rows.unwrap_or(DEFAULT_QUERY_MAX_ROWS) {
                    0 => None,
                    n => Some(n),
                },
            },
            monitoring: !flags.no_monitoring,
            tls: file.tls,
            config_dir: flags.config_dir,
            nats: file.nats,
            initial_users: file.initial_users.unwrap_or_default(),
            insecure_plaintext_frontend: flags.insecure_plaintext_frontend
                || file.insecure_plaintext_frontend.unwrap_or(false),
            debug_token_sha256: file.debug_token_sha256.unwrap_or_default(),
            collection_error_regex: pattern,
            mail,
        })
    }

    /// The embedded defaults.
    pub fn defaults() -> Config {
        Self::build("defaults", ConfigFile::default(), Overrides::default())
            .expect("defaults are valid")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_file_and_defaults_fill_in() {
        let file = ConfigFile::parse(
            "c.yaml",
            "api_addr: 127.0.0.1:9001\ndebug_addr: 127.0.0.1:9002\nretention: {default_days: 30, queues: {Server.Audit.Logs: 0}}\n",
        )
        .unwrap();
        let flags = Overrides {
            api_addr: Some("127.0.0.1:0".into()),
            ..Overrides::default()
        };
        let c = Config::build("c.yaml", file, flags).unwrap();
        assert_eq!(c.api_addr.port(), 0);
        assert_eq!(c.debug_addr.port(), 9002);
        assert_eq!(c.frontend_addr.port(), 8000);
        assert_eq!(c.retention.days_for("Server.Audit.Logs"), 0);
        assert_eq!(c.retention.days_for("X"), 30);
        assert_eq!(c.max_row_bytes, 10 * 1024 * 1024);
    }

    #[test]
    fn unknown_keys_and_bad_values_are_reported() {
        let e = ConfigFile::parse("c.yaml", "api_adr: x\n").unwrap_err();
        assert!(
            e.to_string()
                .starts_with("c.yaml:1:1: unknown field `api_adr`"),
            "{e}"
        );
        let file = ConfigFile::parse("c.yaml", "api_addr: nope\ndebug_addr: also\n").unwrap();
        let e = Config::build("c.yaml", file, Overrides::default()).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("api_addr \"nope\"") && msg.contains("debug_addr \"also\""),
            "{msg}"
        );
    }
}
