//! The deployment the tests run under: one CA, certificates and configs made with
//! `talon_core::deploy::generate` (as `talon config generate` makes them) once per build,
//! in `target/tmp/talon-test-deployment`, and shared by every test process: masters and
//! minions start with its `server.config.yaml`, clients with its `client.config.yaml`,
//! the CLI with its `admin.api.yaml`, nats-server with its `nats.conf` (TLS and users).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use talon_core::deploy;

/// The shared deployment's directory.
pub fn dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let target = crate::bin_dir()
            .parent()
            .expect("target/<profile> has a parent")
            .join("tmp");
        let dir = target.join("talon-test-deployment");
        if dir.join(deploy::SERVER_CONFIG).exists() {
            return dir;
        }
        // Made aside and renamed into place, so parallel test processes agree on one.
        let tmp = target.join(format!("talon-test-deployment.{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        let plan = deploy::Plan {
            // Every minion name the tests start.
            minions: MINIONS.iter().map(|m| m.to_string()).collect(),
            ..deploy::Plan::default()
        };
        deploy::generate(&tmp, &plan).expect("generate the test deployment");
        // nats.conf names its certificate files by absolute path: the final one.
        let conf = tmp.join(deploy::NATS_CONF);
        let text = std::fs::read_to_string(&conf).expect("nats.conf");
        let tmp_abs = std::fs::canonicalize(&tmp).expect("canonical path");
        let final_abs = tmp_abs.with_file_name("talon-test-deployment");
        std::fs::write(
            &conf,
            text.replace(&*tmp_abs.to_string_lossy(), &final_abs.to_string_lossy()),
        )
        .expect("write nats.conf");
        if std::fs::rename(&tmp, &dir).is_err() {
            let _ = std::fs::remove_dir_all(&tmp);
        }
        assert!(dir.join(deploy::SERVER_CONFIG).exists());
        dir
    })
}

/// The minions the test deployment has a NATS user for.
pub const MINIONS: &[&str] = &["minion-a", "minion-b", "minion-late", "m"];

/// A minion's `minion-NAME.config.yaml`.
pub fn minion_config(name: &str) -> PathBuf {
    assert!(
        MINIONS.contains(&name),
        "minion {name} has no NATS user in the test deployment (tests/src/deployment.rs MINIONS)"
    );
    dir().join(deploy::minion_config(name))
}

/// `server.config.yaml`.
pub fn server_config() -> PathBuf {
    dir().join(deploy::SERVER_CONFIG)
}

/// `client.config.yaml`.
pub fn client_config() -> PathBuf {
    dir().join(deploy::CLIENT_CONFIG)
}

/// `admin.api.yaml`: the administrator.
pub fn admin_config() -> PathBuf {
    dir().join(deploy::ADMIN_API_CONFIG)
}

/// `nats.conf`.
pub fn nats_conf() -> PathBuf {
    dir().join(deploy::NATS_CONF)
}

/// The `nats:` section (master's and minions' credentials).
pub fn nats() -> deploy::NatsSection {
    let file: serde_yaml::Value =
        deploy::read(&server_config()).expect("the test deployment's server config");
    serde_yaml::from_value(file["nats"].clone()).expect("a nats section")
}

/// The client config's CA (to check frontends against).
pub fn client() -> deploy::ClientConfig {
    deploy::read(&client_config()).expect("the test deployment's client config")
}

/// An admin API client for `api` as the identity of `config`.
pub async fn admin_client(
    api: std::net::SocketAddr,
    config: &Path,
) -> talon_proto::api::admin_client::AdminClient<tonic::transport::Channel> {
    talon_proto::api::admin_client::AdminClient::new(admin_channel(api, config).await)
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20)
}

/// A channel to the admin API at `api` as the identity of `config`, made as the CLI makes
/// its own.
pub async fn admin_channel(api: std::net::SocketAddr, config: &Path) -> tonic::transport::Channel {
    let id: deploy::ApiClientConfig = deploy::read(config).expect("an API config");
    talon_cli::channel(&api.to_string(), &id)
        .await
        .expect("connect admin API")
}

/// A frontend channel to `addr` over TLS presenting `identity` (a client's key), made as
/// the agent makes its own.
pub async fn frontend_channel(
    addr: std::net::SocketAddr,
    identity: &talon_core::pki::ClientIdentity,
) -> Result<tonic::transport::Channel, tonic::transport::Error> {
    talon_client::transport::Transport::of(&client())
        .endpoint(&addr.to_string(), identity)
        .expect("a frontend endpoint")
        .connect()
        .await
}

/// Adds the test deployment's security sections (`tls`, `nats`, `initial_users`) to the
/// master config at `path` when it has none, so a test's own config runs under the same
/// CA as everything else.
pub fn merge_into(path: &Path) {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut own: serde_yaml::Mapping = if text.trim().is_empty() {
        serde_yaml::Mapping::new()
    } else {
        match serde_yaml::from_str(&text) {
            Ok(m) => m,
            // Not a mapping (a test of bad configs): leave it as it is.
            Err(_) => return,
        }
    };
    if own.contains_key("tls") {
        return;
    }
    let shared: serde_yaml::Mapping =
        deploy::read(&server_config()).expect("the test deployment's server config");
    for key in ["tls", "nats", "initial_users"] {
        if own.contains_key(key) {
            continue;
        }
        let mut value = shared[key].clone();
        if key == "tls" {
            value["ca_private_key_file"] = serde_yaml::Value::String(
                dir().join(deploy::CA_KEY).to_string_lossy().into_owned(),
            );
        }
        own.insert(key.into(), value);
    }
    std::fs::write(path, serde_yaml::to_string(&own).expect("YAML")).expect("write config");
}

/// A blocking TLS connection to a frontend presenting `identity`, handshake done: for raw
/// HTTP/2 bytes (a client that writes and then never reads, say).
pub fn raw_tls(
    addr: &str,
    identity: &talon_core::pki::ClientIdentity,
) -> rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in talon_shared::security::certs("ca", &client().ca_certificate).unwrap() {
        roots.add(cert).unwrap();
    }
    let mut config =
        rustls::ClientConfig::builder_with_provider(talon_shared::security::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_client_auth_cert(
                talon_shared::security::certs("client", &identity.cert_pem).unwrap(),
                talon_shared::security::private_key("client", &identity.key_pem).unwrap(),
            )
            .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let name = rustls::pki_types::ServerName::try_from(talon_core::pki::FRONTEND_NAME).unwrap();
    let mut conn = rustls::ClientConnection::new(std::sync::Arc::new(config), name).unwrap();
    let mut sock = std::net::TcpStream::connect(addr).unwrap();
    while conn.is_handshaking() {
        conn.complete_io(&mut sock).unwrap();
    }
    rustls::StreamOwned::new(conn, sock)
}
