//! The deployment's public key infrastructure, made with `rcgen` (no hand-written crypto):
//! one CA; server certificates for the frontend, the API and NATS; API user certificates;
//! and each client's own key with a self-signed certificate, whose public key names the
//! client (`C.` + the first 16 hex digits of the SHA-256 of its SubjectPublicKeyInfo, as
//! Velociraptor derives a client id from its key).
//!
//! Every key is ECDSA P-256. Files holding a key are written with mode 0600.

use std::path::Path;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SanType,
};
use sha2::{Digest, Sha256};

/// The name the frontend's certificate holds and every client checks, whatever address
/// it dials (so a frontend can move without new certificates).
pub const FRONTEND_NAME: &str = "talon-frontend";
/// The name the API server's certificate holds and the CLI checks.
pub const API_NAME: &str = "talon-api";
/// The name the NATS server's certificate holds and nodes check.
pub const NATS_NAME: &str = "talon-nats";
/// Years a CA or a server certificate is valid.
pub const CA_YEARS: i32 = 10;
/// Years a user certificate is valid.
pub const USER_YEARS: i32 = 2;

/// PKI errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("certificate: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("{what}: not a PEM {expected}")]
    Pem {
        what: String,
        expected: &'static str,
    },
}

/// A certificate and its private key, both PEM.
#[derive(Debug, Clone)]
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

/// The deployment CA.
pub struct Ca {
    pub cert_pem: String,
    key_pem: String,
    params: CertificateParams,
    key: KeyPair,
}

fn validity(params: &mut CertificateParams, years: i32) {
    use chrono::Datelike;
    let now = chrono::Utc::now();
    // A day back, for clocks a little behind.
    let from = now - chrono::Duration::days(1);
    params.not_before = rcgen::date_time_ymd(from.year(), from.month() as u8, from.day() as u8);
    params.not_after = rcgen::date_time_ymd(now.year() + years, now.month() as u8, 1);
}

impl Ca {
    /// A new CA named `name`.
    pub fn generate(name: &str) -> Result<Ca, Error> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, name);
        params
            .distinguished_name
            .push(DnType::OrganizationName, "Talon");
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        validity(&mut params, CA_YEARS);
        let cert = params.clone().self_signed(&key)?;
        Ok(Ca {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            params,
            key,
        })
    }

    /// The CA of a certificate and key kept as PEM.
    pub fn load(cert_pem: &str, key_pem: &str) -> Result<Ca, Error> {
        let key = KeyPair::from_pem(key_pem)?;
        let params = CertificateParams::from_ca_cert_pem(cert_pem)?;
        Ok(Ca {
            cert_pem: cert_pem.to_string(),
            key_pem: key_pem.to_string(),
            params,
            key,
        })
    }

    /// The CA's private key, PEM.
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    fn sign(&self, params: CertificateParams) -> Result<Issued, Error> {
        let key = KeyPair::generate()?;
        let issuer = self.params.clone().self_signed(&self.key)?;
        let cert = params.signed_by(&key, &issuer, &self.key)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// A server certificate for `name` (the name clients check) and `extra` names and
    /// addresses (DNS names or IP addresses).
    pub fn issue_server(&self, name: &str, extra: &[String]) -> Result<Issued, Error> {
        let mut names = vec![name.to_string(), "localhost".to_string()];
        names.extend(extra.iter().cloned());
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        for n in names {
            params
                .subject_alt_names
                .push(match n.parse::<std::net::IpAddr>() {
                    Ok(ip) => SanType::IpAddress(ip),
                    Err(_) => SanType::DnsName(n.as_str().try_into()?),
                });
        }
        params
            .subject_alt_names
            .push(SanType::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()));
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        validity(&mut params, CA_YEARS);
        self.sign(params)
    }

    /// An API user's certificate: its common name is the user's name.
    pub fn issue_user(&self, user: &str) -> Result<Issued, Error> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, user);
        params
            .distinguished_name
            .push(DnType::OrganizationalUnitName, "api user");
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        validity(&mut params, USER_YEARS);
        self.sign(params)
    }
}

/// A client's identity: its key, a self-signed certificate for it, and the id both name.
#[derive(Debug, Clone)]
pub struct ClientIdentity {
    pub id: String,
    pub key_pem: String,
    pub cert_pem: String,
}

impl ClientIdentity {
    /// A new key, or the identity of `key_pem` (a client's kept key).
    pub fn new(key_pem: Option<&str>) -> Result<ClientIdentity, Error> {
        let key = match key_pem {
            Some(pem) => KeyPair::from_pem(pem)?,
            None => KeyPair::generate()?,
        };
        let id = client_id_of_spki(&key.public_key_der());
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, &id);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        validity(&mut params, CA_YEARS);
        let cert = params.self_signed(&key)?;
        Ok(ClientIdentity {
            id,
            key_pem: key.serialize_pem(),
            cert_pem: cert.pem(),
        })
    }
}

/// The client id a public key names: `C.` and the first 16 hex digits of the SHA-256 of
/// its DER SubjectPublicKeyInfo.
pub fn client_id_of_spki(spki_der: &[u8]) -> String {
    let digest = Sha256::digest(spki_der);
    format!("C.{}", hex(&digest[..8]))
}

/// SHA-256 of some bytes, hex: how the store recognises a user's certificate (its DER) and
/// a bearer token.
pub fn fingerprint(der: &[u8]) -> String {
    hex(&Sha256::digest(der))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The DER of the first PEM block of `pem` (a certificate); `what` names it in errors.
pub fn cert_der(what: &str, pem_text: &str) -> Result<Vec<u8>, Error> {
    pem::parse(pem_text)
        .ok()
        .filter(|p| p.tag() == "CERTIFICATE")
        .map(|p| p.into_contents())
        .ok_or_else(|| Error::Pem {
            what: what.to_string(),
            expected: "certificate",
        })
}

/// A random secret of `len` letters and digits (NATS passwords, bearer tokens).
pub fn random_secret(len: usize) -> String {
    use rand::Rng;
    rand::thread_rng()
        .sample_iter(&rand::distributions::Alphanumeric)
        .take(len)
        .map(char::from)
        .collect()
}

/// Writes a file only its owner can read (mode 0600), whole or not at all.
pub fn write_secret(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    {
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
        let mut f = opts.open(&tmp)?;
        #[cfg(unix)]
        f.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
        f.write_all(contents.as_bytes())?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_id_is_its_keys_hash_and_survives_a_reload() {
        let a = ClientIdentity::new(None).unwrap();
        assert!(crate::ids::valid_client_id(&a.id), "{}", a.id);
        let again = ClientIdentity::new(Some(&a.key_pem)).unwrap();
        assert_eq!(again.id, a.id);
        let b = ClientIdentity::new(None).unwrap();
        assert_ne!(b.id, a.id);
    }

    #[test]
    fn a_loaded_ca_issues_certificates() {
        let ca = Ca::generate("Test CA").unwrap();
        let again = Ca::load(&ca.cert_pem, ca.key_pem()).unwrap();
        let user = again.issue_user("alice").unwrap();
        let der = cert_der("user", &user.cert_pem).unwrap();
        assert_eq!(fingerprint(&der).len(), 64);
        assert!(cert_der("key", &user.key_pem).is_err());
    }

    #[test]
    fn secrets_are_written_owner_only() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k.pem");
        write_secret(&p, "secret").unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&p).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "secret");
    }
}
