//! Artifact administration: user artifacts are validated, stored, loaded into the repository,
//! announced on `Server.Internal.ArtifactModification` and audited on `Server.Audit.Logs`.

use std::sync::Arc;

use serde_json::{json, Map, Value};
use talon_artifacts::{LoadedArtifact, Repository};
use talon_shared::control::{ArtifactModification, ControlRow};
use talon_shared::queue::{QueueManager, ROOT_ORG};

use crate::error::ApiError;

/// Queue on which artifact changes are announced.
pub const MODIFICATION_QUEUE: &str = ArtifactModification::QUEUE;
/// Queue of auditable user actions.
pub const AUDIT_QUEUE: &str = "Server.Audit.Logs";

/// What was done to an artifact.
#[derive(Debug, Clone, Copy)]
pub enum Change {
    Add,
    Update,
    Delete,
}

impl Change {
    fn op(self) -> &'static str {
        match self {
            Change::Add => "add",
            Change::Update => "update",
            Change::Delete => "delete",
        }
    }
}

/// Loads the user artifacts kept in the store into the repository. One that no longer loads
/// (say, a built-in now has its name) stays stored and is reported, not dropped.
pub fn load_stored(qm: &QueueManager) -> anyhow::Result<usize> {
    let repo = qm.repository();
    let mut loaded = 0;
    for (name, yaml) in qm.store().artifacts()? {
        match repo.check(&format!("stored artifact {name}"), &yaml, true) {
            Ok(a) => {
                repo.insert(a);
                loaded += 1;
            }
            Err(e) => tracing::error!(artifact = %name, error = %e, "stored artifact not loaded"),
        }
    }
    Ok(loaded)
}

/// Adds (or with `replace`, updates) a user artifact from YAML.
pub async fn set(
    qm: &QueueManager,
    origin: &str,
    yaml: &str,
    replace: bool,
    principal: &str,
) -> Result<Arc<LoadedArtifact>, ApiError> {
    let repo: &Repository = qm.repository();
    let a = repo.check(origin, yaml, replace)?;
    let existed = repo.get(a.name()).is_some();
    qm.store().put_artifact(a.name(), &a.yaml).await?;
    let a = repo.insert(a);
    let change = if existed { Change::Update } else { Change::Add };
    announce(qm, a.name(), change, principal, &a.kind.to_string()).await;
    Ok(a)
}

/// Deletes a user artifact.
pub async fn delete(qm: &QueueManager, name: &str, principal: &str) -> Result<(), ApiError> {
    let repo = qm.repository();
    match repo.get(name) {
        None => return Err(talon_artifacts::repository::Error::NotFound(name.into()).into()),
        Some(a) if a.built_in => {
            return Err(talon_artifacts::repository::Error::BuiltIn(name.into()).into())
        }
        Some(_) => {}
    }
    qm.store().delete_artifact(name).await?;
    let a = repo.remove(name)?;
    announce(qm, name, Change::Delete, principal, &a.kind.to_string()).await;
    Ok(())
}

async fn announce(qm: &QueueManager, name: &str, change: Change, principal: &str, kind: &str) {
    let modification = ArtifactModification {
        artifact: name.to_string(),
        op: change.op().to_string(),
        principal: principal.to_string(),
    }
    .to_row();
    let audit = obj(json!({
        "operation": format!("artifact_{}", change.op()),
        "principal": principal,
        "details": { "artifact": name, "type": kind },
    }));
    for (queue, row) in [(MODIFICATION_QUEUE, modification), (AUDIT_QUEUE, audit)] {
        if let Err(e) = qm.push(ROOT_ORG, queue, vec![row], "server", "").await {
            // The change itself is committed; a failed announcement is loud but not fatal.
            tracing::error!(queue, artifact = name, error = %e, "could not record artifact change");
        }
    }
}

fn obj(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => unreachable!("json! object literal"),
    }
}
