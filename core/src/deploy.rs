//! The files of a deployment, as `talon config generate` writes them and every binary
//! reads them:
//!
//! - `server.config.yaml`: master and minions (addresses, the CA certificate, the
//!   frontend's and the API's certificates and keys, NATS credentials, the initial
//!   administrator); the CA's key is beside it in `ca.key`, which only the master needs.
//! - `client.config.yaml`: clients (frontend addresses and the CA certificate).
//! - `admin.api.yaml`: the administrator's API client identity (the CLI's `--api-config`).
//! - `ca.crt`: the CA certificate alone (public), for tools that check TLS.
//! - `minion-<NAME>.config.yaml`: one per minion: the frontend's certificate and key, and a
//!   NATS user of that minion's own, bound to its node name.
//! - `nats.conf`, `nats.crt`, `nats.key`: a nats-server with TLS, an account, a user for
//!   the master, and one per minion that may publish only under its own node name.
//!
//! Every file holding a key or a password is written with mode 0600.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::pki::{self, Ca};

/// File names, so scripts and docs can rely on them.
pub const SERVER_CONFIG: &str = "server.config.yaml";
pub const CLIENT_CONFIG: &str = "client.config.yaml";
pub const ADMIN_API_CONFIG: &str = "admin.api.yaml";
pub const NATS_CONF: &str = "nats.conf";
pub const CA_KEY: &str = "ca.key";
pub const CA_CERT: &str = "ca.crt";
/// The administrator `generate` makes.
pub const ADMIN_USER: &str = "admin";

/// The TLS section of `server.config.yaml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerTls {
    pub ca_certificate: String,
    /// The CA's key file (relative to the config file); only the master, which issues
    /// user certificates, needs it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_private_key_file: Option<PathBuf>,
    pub frontend_certificate: String,
    pub frontend_private_key: String,
    pub api_certificate: String,
    pub api_private_key: String,
}

/// How a node authenticates to NATS (any of them; the URL may carry user:password too).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsAuth {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// An NKey seed (`SU...`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nkey_seed: Option<String>,
    /// A `.creds` file (JWT and NKey seed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creds_file: Option<PathBuf>,
    /// The CA the NATS server's certificate is checked against (PEM); with it, TLS is
    /// required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_certificate: Option<String>,
    /// The name the NATS server's certificate must hold [default: the URL's host].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
}

/// The `nats:` section of `server.config.yaml`: the master's and the minions' credentials.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsSection {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(default, skip_serializing_if = "NatsAuth::is_empty")]
    pub master: NatsAuth,
    #[serde(default, skip_serializing_if = "NatsAuth::is_empty")]
    pub minion: NatsAuth,
}

impl NatsAuth {
    /// Nothing set.
    pub fn is_empty(&self) -> bool {
        *self == NatsAuth::default()
    }
}

/// `minion-<NAME>.config.yaml`: what one minion needs.
#[derive(Debug, Clone, Serialize)]
pub struct MinionConfigOut {
    pub node_name: String,
    pub tls: ServerTls,
    pub nats: NatsSection,
}

/// The file name of a minion's config.
pub fn minion_config(name: &str) -> String {
    format!("minion-{name}.config.yaml")
}

/// A user the master adds to its store on start when no user of that name exists.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InitialUser {
    pub name: String,
    pub role: String,
    /// SHA-256 of the user's certificate (DER), hex.
    pub certificate_sha256: String,
    /// SHA-256 of the user's bearer token for the debug pages, hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub debug_token_sha256: Option<String>,
}

/// The keys of `server.config.yaml` that `generate` writes (the master reads more).
#[derive(Debug, Clone, Serialize)]
pub struct ServerConfigOut {
    pub frontend_addr: String,
    pub api_addr: String,
    pub debug_addr: String,
    pub tls: ServerTls,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nats: Option<NatsSection>,
    pub initial_users: Vec<InitialUser>,
}

/// `client.config.yaml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    /// Frontend addresses, tried in order.
    pub frontends: Vec<String>,
    pub ca_certificate: String,
    /// The name the frontend's certificate must hold [default: talon-frontend].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub org: Option<String>,
}

/// An API client identity (`admin.api.yaml`, and what `talon user add` writes).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiClientConfig {
    pub name: String,
    pub api_addr: String,
    pub ca_certificate: String,
    pub certificate: String,
    pub private_key: String,
    /// The name the API server's certificate must hold [default: talon-api].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
    /// Bearer token for the debug pages when they are off loopback
    /// (`Authorization: Bearer TOKEN`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub debug_token: Option<String>,
}

/// SHA-256 of a bearer token, hex: how configs and the store keep tokens.
pub fn token_sha256(token: &str) -> String {
    pki::fingerprint(token.as_bytes())
}

/// What to generate.
#[derive(Debug, Clone)]
pub struct Plan {
    pub frontend_addr: String,
    pub api_addr: String,
    pub debug_addr: String,
    /// Addresses clients dial (default: `frontend_addr`).
    pub public_frontends: Vec<String>,
    /// Further DNS names or IP addresses for the server certificates.
    pub names: Vec<String>,
    /// Write `nats.conf` and the NATS credentials.
    pub nats: bool,
    /// The NATS listen address for `nats.conf`.
    pub nats_listen: String,
    /// Minions, by node name: each gets a config and a NATS user of its own.
    pub minions: Vec<String>,
}

impl Default for Plan {
    fn default() -> Self {
        Plan {
            frontend_addr: "127.0.0.1:8000".into(),
            api_addr: "127.0.0.1:8001".into(),
            debug_addr: "127.0.0.1:8889".into(),
            public_frontends: Vec::new(),
            names: Vec::new(),
            nats: true,
            nats_listen: "127.0.0.1:4222".into(),
            minions: vec!["m1".into(), "m2".into()],
        }
    }
}

/// Errors of generating or reading deployment files.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Pki(#[from] pki::Error),
    #[error("{}: {source}", .path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {message}", .path.display())]
    Parse { path: PathBuf, message: String },
    #[error("{}: already holds a deployment ({}); choose another directory or remove it", .dir.display(), SERVER_CONFIG)]
    Exists { dir: PathBuf },
    #[error("--minion: {0}")]
    Minion(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes a new deployment into `dir` (made if missing); refuses a directory that already
/// holds one, so a CA is never replaced by accident.
pub fn generate(dir: &Path, plan: &Plan) -> Result<(), Error> {
    for m in &plan.minions {
        crate::ids::valid_node(m).map_err(Error::Minion)?;
    }
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    if dir.join(SERVER_CONFIG).exists() {
        return Err(Error::Exists {
            dir: dir.to_path_buf(),
        });
    }
    let ca = Ca::generate(&format!("Talon CA {}", pki::random_secret(8)))?;
    let frontend = ca.issue_server(pki::FRONTEND_NAME, &plan.names)?;
    let api = ca.issue_server(pki::API_NAME, &plan.names)?;
    let admin = ca.issue_user(ADMIN_USER)?;
    let admin_token = pki::random_secret(40);
    let admin_der = pki::cert_der("admin certificate", &admin.cert_pem)?;

    let mut minion_auth = Vec::new();
    let nats = if plan.nats {
        let nats_cert = ca.issue_server(pki::NATS_NAME, &plan.names)?;
        let master_pw = pki::random_secret(32);
        let crt = dir.join("nats.crt");
        let key = dir.join("nats.key");
        std::fs::write(&crt, &nats_cert.cert_pem).map_err(io(&crt))?;
        pki::write_secret(&key, &nats_cert.key_pem).map_err(io(&key))?;
        let abs = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
        let auth = |user: &str, password: String| NatsAuth {
            user: Some(user.into()),
            password: Some(password),
            ca_certificate: Some(ca.cert_pem.clone()),
            server_name: Some(pki::NATS_NAME.into()),
            ..NatsAuth::default()
        };
        let minions: Vec<(String, String)> = plan
            .minions
            .iter()
            .map(|m| (m.clone(), pki::random_secret(32)))
            .collect();
        for (m, pw) in &minions {
            minion_auth.push((m.clone(), auth(&format!("talon-minion-{m}"), pw.clone())));
        }
        let conf = nats_conf(
            &plan.nats_listen,
            &abs(&crt),
            &abs(&key),
            &master_pw,
            &minions,
        );
        let path = dir.join(NATS_CONF);
        pki::write_secret(&path, &conf).map_err(io(&path))?;
        Some(NatsSection {
            url: None,
            master: auth("talon-master", master_pw),
            minion: NatsAuth::default(),
        })
    } else {
        None
    };

    let ca_key = dir.join(CA_KEY);
    pki::write_secret(&ca_key, ca.key_pem()).map_err(io(&ca_key))?;
    // The CA certificate alone, public: for tools that check Talon's or NATS's TLS.
    let ca_crt = dir.join(CA_CERT);
    std::fs::write(&ca_crt, &ca.cert_pem).map_err(io(&ca_crt))?;
    let server = ServerConfigOut {
        frontend_addr: plan.frontend_addr.clone(),
        api_addr: plan.api_addr.clone(),
        debug_addr: plan.debug_addr.clone(),
        tls: ServerTls {
            ca_certificate: ca.cert_pem.clone(),
            ca_private_key_file: Some(PathBuf::from(CA_KEY)),
            frontend_certificate: frontend.cert_pem,
            frontend_private_key: frontend.key_pem,
            api_certificate: api.cert_pem,
            api_private_key: api.key_pem,
        },
        nats,
        initial_users: vec![InitialUser {
            name: ADMIN_USER.into(),
            role: "administrator".into(),
            certificate_sha256: pki::fingerprint(&admin_der),
            debug_token_sha256: Some(token_sha256(&admin_token)),
        }],
    };
    let client = ClientConfig {
        frontends: if plan.public_frontends.is_empty() {
            vec![plan.frontend_addr.clone()]
        } else {
            plan.public_frontends.clone()
        },
        ca_certificate: ca.cert_pem.clone(),
        server_name: None,
        org: None,
    };
    let admin = ApiClientConfig {
        name: ADMIN_USER.into(),
        api_addr: plan.api_addr.clone(),
        ca_certificate: ca.cert_pem.clone(),
        certificate: admin.cert_pem,
        private_key: admin.key_pem,
        server_name: None,
        debug_token: Some(admin_token),
    };
    let head = "# Talon deployment file made by `talon config generate`; it holds keys: keep it private.\n";
    for (name, auth) in minion_auth {
        let minion = MinionConfigOut {
            node_name: name.clone(),
            tls: ServerTls {
                ca_private_key_file: None,
                ..server.tls.clone()
            },
            nats: NatsSection {
                url: None,
                master: NatsAuth::default(),
                minion: auth,
            },
        };
        let path = dir.join(minion_config(&name));
        pki::write_secret(&path, &format!("{head}{}", yaml(&minion))).map_err(io(&path))?;
    }
    for (name, body) in [
        (ADMIN_API_CONFIG, yaml(&admin)),
        (CLIENT_CONFIG, yaml(&client)),
        // Last: its presence marks a complete deployment.
        (SERVER_CONFIG, yaml(&server)),
    ] {
        let path = dir.join(name);
        pki::write_secret(&path, &format!("{head}{body}")).map_err(io(&path))?;
    }
    Ok(())
}

fn yaml<T: Serialize>(value: &T) -> String {
    serde_yaml::to_string(value).expect("deployment files serialise")
}

/// A nats-server configuration: JetStream, TLS with the deployment's NATS certificate, one
/// account for Talon with an unrestricted user for the master and one per minion that may
/// publish rows only under its own node name (`talon.*.*.@<node>.>`), answer JetStream flow
/// control (`$JS.FC.>`), never touch the master's persister consumer, send the control
/// requests a minion sends, use JetStream but not delete, purge or change its stream, and
/// subscribe to rows, state announcements and its own replies; no anonymous access.
fn nats_conf(
    listen: &str,
    crt: &Path,
    key: &Path,
    master_pw: &str,
    minions: &[(String, String)],
) -> String {
    let mut users = format!("      {{ user: \"talon-master\", password: \"{master_pw}\" }}\n");
    // The master's persister consumer is the master's alone: a minion that pulled from it,
    // acked its messages, or deleted or remade it would keep rows from the store.
    let persister = [
        "$JS.API.CONSUMER.CREATE.TALON_EVENTS.talon-persister",
        "$JS.API.CONSUMER.CREATE.TALON_EVENTS.talon-persister.>",
        "$JS.API.CONSUMER.DURABLE.CREATE.TALON_EVENTS.talon-persister",
        "$JS.API.CONSUMER.DELETE.TALON_EVENTS.talon-persister",
        "$JS.API.CONSUMER.MSG.NEXT.TALON_EVENTS.talon-persister",
        "$JS.ACK.TALON_EVENTS.talon-persister.>",
    ]
    .map(|s| format!("\"{s}\""))
    .join(", ");
    for (m, pw) in minions {
        users.push_str(&format!(
            "      {{ user: \"talon-minion-{m}\", password: \"{pw}\", permissions: {{\n\
             \x20         publish: {{\n\
             \x20           allow: [\"talon.*.d.@{m}.>\", \"talon.*.i.@{m}.>\", \"talonctl.state.get\", \"talonctl.clients.snapshot\", \"talonctl.client.get\", \"talonctl.registrations\", \"talonctl.tasks.get\", \"talonctl.hunts.get\", \"_INBOX.>\", \"$JS.API.>\", \"$JS.ACK.>\", \"$JS.FC.>\"]\n\
             \x20           deny: [\"$JS.API.STREAM.DELETE.>\", \"$JS.API.STREAM.PURGE.>\", \"$JS.API.STREAM.UPDATE.>\", \"$JS.API.STREAM.MSG.DELETE.>\", {persister}]\n\
             \x20         }}\n\
             \x20         subscribe: {{ allow: [\"talon.>\", \"talonctl.state\", \"_INBOX.>\"] }}\n\
             \x20     }} }}\n"
        ));
    }
    format!(
        "# nats-server configuration made by `talon config generate`: TLS, one account, no anonymous users.\n\
         # Run: nats-server -c nats.conf\n\
         listen: \"{listen}\"\n\
         jetstream {{\n  store_dir: \"./nats-data\"\n}}\n\
         tls {{\n  cert_file: \"{crt}\"\n  key_file: \"{key}\"\n  timeout: 5\n}}\n\
         accounts {{\n  TALON {{\n    jetstream: enabled\n    users: [\n{users}    ]\n  }}\n}}\n",
        crt = crt.display(),
        key = key.display(),
    )
}

/// Reads and parses a YAML deployment file.
pub fn read<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T, Error> {
    let text = std::fs::read_to_string(path).map_err(io(path))?;
    serde_yaml::from_str(&text).map_err(|e| Error::Parse {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generate_writes_every_file_private_and_refuses_to_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        generate(dir.path(), &Plan::default()).unwrap();
        for name in [
            SERVER_CONFIG,
            CLIENT_CONFIG,
            ADMIN_API_CONFIG,
            NATS_CONF,
            CA_KEY,
            "nats.key",
        ] {
            let path = dir.path().join(name);
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                let mode = std::fs::metadata(&path).unwrap().permissions().mode();
                assert_eq!(mode & 0o077, 0, "{name} is readable by others");
            }
        }
        let client: ClientConfig = read(&dir.path().join(CLIENT_CONFIG)).unwrap();
        assert_eq!(client.frontends, vec!["127.0.0.1:8000"]);
        let admin: ApiClientConfig = read(&dir.path().join(ADMIN_API_CONFIG)).unwrap();
        assert_eq!(admin.name, "admin");
        let conf = std::fs::read_to_string(dir.path().join(NATS_CONF)).unwrap();
        assert!(conf.contains("talon-minion-m1") && conf.contains("tls {"));
        assert!(conf.contains(r#""talon.*.d.@m2.>""#), "{conf}");
        let m1 = std::fs::read_to_string(dir.path().join(minion_config("m1"))).unwrap();
        assert!(m1.contains("node_name: m1") && m1.contains("talon-minion-m1"));
        assert!(!m1.contains("ca_private_key_file") && !m1.contains("talon-master"));
        let server = std::fs::read_to_string(dir.path().join(SERVER_CONFIG)).unwrap();
        assert!(
            !server.contains("talon-minion"),
            "minions' passwords stay in their own files"
        );
        let e = generate(dir.path(), &Plan::default()).unwrap_err();
        assert!(e.to_string().contains("already holds a deployment"), "{e}");
    }
}
