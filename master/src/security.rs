//! The master's security set-up: the deployment's certificates from its config, or from
//! `<datastore>/config/` (made there on the first start, so a master with no config is
//! secure from its first minute), and the CA that issues API users' certificates.

use std::path::{Path, PathBuf};

use anyhow::Context;
use talon_core::deploy::{self, InitialUser, NatsSection, ServerTls};
use talon_core::pki::Ca;

use crate::config::{Config, ConfigFile};

/// Where a master without TLS in its config keeps its deployment, under the datastore.
pub const DATASTORE_CONFIG_DIR: &str = "config";

/// The master's security, resolved.
pub struct Security {
    pub tls: ServerTls,
    /// None when the CA's key is not at hand (then no user can be added).
    pub ca: Option<Ca>,
    pub initial_users: Vec<InitialUser>,
    pub nats: Option<NatsSection>,
    /// The directory the deployment files are in.
    pub dir: PathBuf,
}

impl Security {
    /// The security of `config`: its TLS section, or the datastore's deployment (made if
    /// missing).
    pub fn resolve(config: &Config) -> anyhow::Result<Security> {
        if let Some(tls) = &config.tls {
            let dir = config.config_dir.clone().unwrap_or_else(|| ".".into());
            return Ok(Security {
                ca: load_ca(tls, &dir)?,
                tls: tls.clone(),
                initial_users: config.initial_users.clone(),
                nats: config.nats.clone(),
                dir,
            });
        }
        let dir = config.datastore.join(DATASTORE_CONFIG_DIR);
        let path = dir.join(deploy::SERVER_CONFIG);
        if !path.exists() {
            let plan = deploy::Plan {
                frontend_addr: config.frontend_addr.to_string(),
                api_addr: config.api_addr.to_string(),
                debug_addr: config.debug_addr.to_string(),
                ..deploy::Plan::default()
            };
            deploy::generate(&dir, &plan).with_context(|| {
                format!(
                    "cannot make the deployment's certificates in {}",
                    dir.display()
                )
            })?;
            tracing::info!(dir = %dir.display(), "made a deployment CA, certificates and the administrator's API identity");
        }
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let file = ConfigFile::parse(&path.display().to_string(), &text)?;
        let tls = file
            .tls
            .with_context(|| format!("{}: no tls section", path.display()))?;
        let mut initial_users = file.initial_users.unwrap_or_default();
        initial_users.extend(config.initial_users.iter().cloned());
        Ok(Security {
            ca: load_ca(&tls, &dir)?,
            tls,
            initial_users,
            nats: config.nats.clone().or(file.nats),
            dir,
        })
    }
}

fn load_ca(tls: &ServerTls, dir: &Path) -> anyhow::Result<Option<Ca>> {
    let Some(file) = &tls.ca_private_key_file else {
        return Ok(None);
    };
    let path = dir.join(file);
    let key = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "cannot read the CA's key {} (tls.ca_private_key_file)",
            path.display()
        )
    })?;
    let ca = Ca::load(&tls.ca_certificate, &key)
        .with_context(|| format!("{}: not the key of tls.ca_certificate", path.display()))?;
    Ok(Some(ca))
}
