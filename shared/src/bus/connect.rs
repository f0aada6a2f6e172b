//! Reaching NATS: credentials from the URL (`user:password@`, `token@`) or from the
//! node's config (user and password, token, NKey seed, `.creds` file), TLS checked against
//! the deployment CA (under a configured name when the URL's host is not on the
//! certificate), and retry with backoff until the server answers.

use std::sync::Arc;
use std::time::Duration;

use talon_core::deploy::NatsAuth;

/// First and longest wait between attempts to reach NATS at start.
const CONNECT_BACKOFF: (Duration, Duration) = (Duration::from_millis(500), Duration::from_secs(30));

/// Connects to NATS, retrying with backoff until it answers: every failed attempt is
/// logged as an error with its cause (unreachable, refused credentials, TLS), so a node
/// waiting for its bus says why. Cancelled by dropping the future (a node's shutdown).
pub(super) async fn connect_with_retry(
    url: &str,
    name: String,
    auth: &NatsAuth,
) -> async_nats::Client {
    let mut wait = CONNECT_BACKOFF.0;
    let (servers, credentials) = split_credentials(url);
    loop {
        let options = match options(&credentials, auth).await {
            Ok(o) => o,
            Err(e) => {
                // A config that cannot work (a bad CA, an unreadable creds file): said
                // each attempt, so the operator sees it while the node waits.
                tracing::error!(error = %e, retry_in_ms = wait.as_millis() as u64, "NATS credentials or TLS settings are unusable; retrying");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(CONNECT_BACKOFF.1);
                continue;
            }
        };
        let attempt = options
            .name(name.clone())
            .max_reconnects(None)
            .connection_timeout(Duration::from_secs(5))
            .event_callback(|e| async move {
                match e {
                    async_nats::Event::SlowConsumer(sid) => {
                        tracing::warn!(
                            sid,
                            "NATS: this node is a slow consumer; rows to its watchers were dropped"
                        )
                    }
                    async_nats::Event::ServerError(e) => {
                        tracing::error!(error = %e, "NATS server error")
                    }
                    async_nats::Event::ClientError(e) => {
                        tracing::error!(error = %e, "NATS client error")
                    }
                    async_nats::Event::Disconnected => {
                        tracing::warn!("NATS: disconnected; reconnecting")
                    }
                    other => tracing::info!(event = %other, "NATS"),
                }
            })
            .connect(servers.as_str())
            .await;
        match attempt {
            Ok(client) => return client,
            Err(e) => {
                tracing::error!(
                    url = %redact(url),
                    error = %e,
                    retry_in_ms = wait.as_millis() as u64,
                    "cannot connect to NATS; retrying"
                );
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(CONNECT_BACKOFF.1);
            }
        }
    }
}

/// The connect options of the URL's credentials, else the config's, with TLS when the
/// config names a CA.
async fn options(url: &Credentials, auth: &NatsAuth) -> anyhow::Result<async_nats::ConnectOptions> {
    let mut o = match (url, auth) {
        (Credentials::UserPassword(u, p), _) => {
            async_nats::ConnectOptions::with_user_and_password(u.clone(), p.clone())
        }
        (Credentials::Token(t), _) => async_nats::ConnectOptions::with_token(t.clone()),
        (
            Credentials::None,
            NatsAuth {
                creds_file: Some(path),
                ..
            },
        ) => async_nats::ConnectOptions::with_credentials_file(path.clone())
            .await
            .map_err(|e| anyhow::anyhow!("nats creds_file {}: {e}", path.display()))?,
        (
            Credentials::None,
            NatsAuth {
                nkey_seed: Some(seed),
                ..
            },
        ) => async_nats::ConnectOptions::with_nkey(seed.clone()),
        (Credentials::None, NatsAuth { token: Some(t), .. }) => {
            async_nats::ConnectOptions::with_token(t.clone())
        }
        (
            Credentials::None,
            NatsAuth {
                user: Some(u),
                password,
                ..
            },
        ) => async_nats::ConnectOptions::with_user_and_password(
            u.clone(),
            password.clone().unwrap_or_default(),
        ),
        (Credentials::None, _) => async_nats::ConnectOptions::new(),
    };
    if let Some(ca) = &auth.ca_certificate {
        o = o
            .require_tls(true)
            .tls_client_config(tls_config(ca, auth.server_name.as_deref())?);
    }
    Ok(o)
}

/// TLS to NATS: the server's certificate checked against `ca_pem`, for `name` when given
/// (else for the URL's host).
fn tls_config(ca_pem: &str, name: Option<&str>) -> anyhow::Result<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in crate::security::certs("nats.ca_certificate", ca_pem)? {
        roots.add(cert)?;
    }
    let provider = crate::security::provider();
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let config = match name {
        None => builder.with_root_certificates(roots).with_no_client_auth(),
        Some(name) => {
            let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()?;
            let name = rustls::pki_types::ServerName::try_from(name.to_string())
                .map_err(|e| anyhow::anyhow!("nats.server_name {name:?}: {e}"))?;
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(NamedServer { inner, name }))
                .with_no_client_auth()
        }
    };
    Ok(config)
}

/// Checks a server's certificate, chain and all, for a fixed name rather than the host
/// dialled (so `nats://10.0.0.5:4222` can be checked as `talon-nats`).
#[derive(Debug)]
struct NamedServer {
    inner: Arc<rustls::client::WebPkiServerVerifier>,
    name: rustls::pki_types::ServerName<'static>,
}

impl rustls::client::danger::ServerCertVerifier for NamedServer {
    fn verify_server_cert(
        &self,
        end_entity: &rustls::pki_types::CertificateDer<'_>,
        intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        ocsp: &[u8],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        self.inner
            .verify_server_cert(end_entity, intermediates, &self.name, ocsp, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// How a node proves itself to NATS, taken from the URL's user part.
enum Credentials {
    None,
    UserPassword(String, String),
    Token(String),
}

/// Takes the credentials out of a NATS URL (`nats://user:pass@host:port`,
/// `nats://token@host:port`; several URLs separated by commas share the first one's), and
/// returns the URLs without them: the client library does not read them from the URL.
fn split_credentials(url: &str) -> (String, Credentials) {
    let mut credentials = Credentials::None;
    let servers: Vec<String> = url
        .split(',')
        .map(|one| {
            let one = one.trim();
            let Some(scheme) = one.find("://") else {
                return one.to_string();
            };
            let rest = &one[scheme + 3..];
            let host_start = rest.find('/').unwrap_or(rest.len());
            let Some(at) = rest[..host_start].rfind('@') else {
                return one.to_string();
            };
            if matches!(credentials, Credentials::None) {
                credentials = match rest[..at].split_once(':') {
                    Some((user, password)) => {
                        Credentials::UserPassword(user.to_string(), password.to_string())
                    }
                    None => Credentials::Token(rest[..at].to_string()),
                };
            }
            format!("{}{}", &one[..scheme + 3], &rest[at + 1..])
        })
        .collect();
    (servers.join(","), credentials)
}

/// A URL with any password replaced, for logs.
pub fn redact(url: &str) -> String {
    let one = |u: &str| match (u.find("://"), u.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let user = u[scheme + 3..at].split(':').next().unwrap_or_default();
            format!("{}{user}:***{}", &u[..scheme + 3], &u[at..])
        }
        _ => u.to_string(),
    };
    url.split(',').map(one).collect::<Vec<_>>().join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_come_out_of_the_url_and_never_into_logs() {
        let (servers, c) =
            split_credentials("nats://talon:s3cret@10.0.0.1:4222,nats://10.0.0.2:4222");
        assert_eq!(servers, "nats://10.0.0.1:4222,nats://10.0.0.2:4222");
        assert!(matches!(c, Credentials::UserPassword(u, p) if u == "talon" && p == "s3cret"));
        let (servers, c) = split_credentials("tls://tok@host:4222");
        assert_eq!(servers, "tls://host:4222");
        assert!(matches!(c, Credentials::Token(t) if t == "tok"));
        let (servers, c) = split_credentials("nats://127.0.0.1:4222");
        assert_eq!(servers, "nats://127.0.0.1:4222");
        assert!(matches!(c, Credentials::None));
        assert_eq!(redact("nats://talon:s3cret@h:1"), "nats://talon:***@h:1");
    }
}
