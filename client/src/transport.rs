//! How a client reaches a frontend: over TLS, checking the frontend's certificate against
//! the deployment CA and presenting the certificate of its own key (whose hash is its client
//! id), or in plaintext where the operator turned that on for tests.

use std::path::Path;

use talon_core::deploy::ClientConfig;
use talon_core::pki::ClientIdentity;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

/// File of the client's private key in its state directory (mode 0600).
pub const KEY_FILE: &str = "client.key";

/// How to reach frontends.
#[derive(Debug, Clone)]
pub enum Transport {
    /// TLS against `ca_pem`, the frontend's certificate naming `server_name`.
    Tls { ca_pem: String, server_name: String },
    /// No TLS (`--insecure-plaintext`): for tests only.
    Plaintext,
}

impl Transport {
    /// The TLS transport of a client config.
    pub fn of(config: &ClientConfig) -> Transport {
        Transport::Tls {
            ca_pem: config.ca_certificate.clone(),
            server_name: config
                .server_name
                .clone()
                .unwrap_or_else(|| talon_core::pki::FRONTEND_NAME.to_string()),
        }
    }

    /// An endpoint for `addr` (HOST:PORT) presenting `identity`.
    pub fn endpoint(&self, addr: &str, identity: &ClientIdentity) -> anyhow::Result<Endpoint> {
        let host = addr
            .strip_prefix("https://")
            .or_else(|| addr.strip_prefix("http://"))
            .unwrap_or(addr);
        Ok(match self {
            Transport::Plaintext => Endpoint::from_shared(format!("http://{host}"))?,
            Transport::Tls {
                ca_pem,
                server_name,
            } => Endpoint::from_shared(format!("https://{host}"))?.tls_config(
                ClientTlsConfig::new()
                    .ca_certificate(Certificate::from_pem(ca_pem))
                    .identity(Identity::from_pem(&identity.cert_pem, &identity.key_pem))
                    .domain_name(server_name.clone()),
            )?,
        })
    }
}

/// The client's identity: the key kept in `state` (made, mode 0600, on first start) and
/// the id it names.
pub fn identity(state: &Path) -> anyhow::Result<ClientIdentity> {
    std::fs::create_dir_all(state)?;
    let path = state.join(KEY_FILE);
    match std::fs::read_to_string(&path) {
        Ok(pem) => ClientIdentity::new(Some(&pem))
            .map_err(|e| anyhow::anyhow!("{}: not a client key: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let id = ClientIdentity::new(None)?;
            talon_core::pki::write_secret(&path, &id.key_pem)?;
            Ok(id)
        }
        Err(e) => Err(anyhow::anyhow!("cannot read {}: {e}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_is_made_once_and_names_the_same_id_after() {
        let dir = tempfile::tempdir().unwrap();
        let a = identity(dir.path()).unwrap();
        let b = identity(dir.path()).unwrap();
        assert_eq!(a.id, b.id);
        std::fs::write(dir.path().join(KEY_FILE), "garbage").unwrap();
        let e = identity(dir.path()).unwrap_err().to_string();
        assert!(e.contains("not a client key"), "{e}");
    }
}
