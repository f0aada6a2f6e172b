//! Security on a node, from the deployment files of `talon_core::deploy`: the frontend's
//! and the API's TLS configurations (rustls over ring), the identity a peer's certificate
//! names, and bearer tokens for the debug pages off loopback.
//!
//! The frontend accepts any client certificate whose key signs the handshake: a client's
//! certificate is self-signed, and what it proves is possession of the key its client id
//! is derived from. The API accepts only certificates issued by the deployment CA.

use std::sync::Arc;

use anyhow::Context;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use talon_core::deploy::ServerTls;

/// The crypto provider every TLS configuration here uses.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The client id a certificate's public key names; None for a certificate that does not
/// parse.
pub fn client_id_of_cert(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    Some(talon_core::pki::client_id_of_spki(
        cert.tbs_certificate.subject_pki.raw,
    ))
}

/// A certificate's subject common name.
pub fn common_name(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let cn = cert.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_string)
}

/// The certificates of a PEM text.
pub fn certs(what: &str, pem: &str) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs: Vec<_> = rustls_pemfile::certs(&mut pem.as_bytes())
        .collect::<Result<_, _>>()
        .with_context(|| format!("{what}: not PEM"))?;
    anyhow::ensure!(!certs.is_empty(), "{what}: no certificate in it");
    Ok(certs)
}

/// The private key of a PEM text.
pub fn private_key(what: &str, pem: &str) -> anyhow::Result<PrivateKeyDer<'static>> {
    rustls_pemfile::private_key(&mut pem.as_bytes())
        .with_context(|| format!("{what}: not PEM"))?
        .with_context(|| format!("{what}: no private key in it"))
}

/// The frontend's TLS configuration: its certificate, and a client certificate required
/// from every client (any key; the key names the client).
pub fn frontend_config(tls: &ServerTls) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let provider = provider();
    let verifier = Arc::new(ClientKeyVerifier {
        algorithms: provider.signature_verification_algorithms,
    });
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .context("TLS versions")?
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            certs("tls.frontend_certificate", &tls.frontend_certificate)?,
            private_key("tls.frontend_private_key", &tls.frontend_private_key)?,
        )
        .context("tls.frontend_certificate and tls.frontend_private_key do not match")?;
    // gRPC is HTTP/2, which clients ask for by ALPN.
    config.alpn_protocols = vec![b"h2".to_vec()];
    // Clients keep one long connection: no session tickets or cache to hold.
    config.send_tls13_tickets = 0;
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    Ok(Arc::new(config))
}

/// Accepts a client certificate of any key, checking that the key signed the handshake.
#[derive(Debug)]
struct ClientKeyVerifier {
    algorithms: rustls::crypto::WebPkiSupportedAlgorithms,
}

impl ClientCertVerifier for ClientKeyVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        match client_id_of_cert(end_entity.as_ref()) {
            Some(_) => Ok(ClientCertVerified::assertion()),
            None => Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::BadEncoding,
            )),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// The admin API's TLS: its certificate, and a client certificate issued by the deployment
/// CA required from every caller.
pub fn api_tls(tls: &ServerTls) -> tonic::transport::ServerTlsConfig {
    tonic::transport::ServerTlsConfig::new()
        .identity(tonic::transport::Identity::from_pem(
            &tls.api_certificate,
            &tls.api_private_key,
        ))
        .client_ca_root(tonic::transport::Certificate::from_pem(&tls.ca_certificate))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_certificate_names_the_id_of_its_key() {
        let id = talon_core::pki::ClientIdentity::new(None).unwrap();
        let der = talon_core::pki::cert_der("client", &id.cert_pem).unwrap();
        assert_eq!(client_id_of_cert(&der).as_deref(), Some(id.id.as_str()));
        assert_eq!(common_name(&der).as_deref(), Some(id.id.as_str()));
        assert_eq!(client_id_of_cert(b"not a certificate"), None);
    }
}
