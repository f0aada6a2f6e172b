//! Artifact administration: user artifacts are validated, stored, loaded into the repository,
//! announced on `Server.Internal.ArtifactModification` and audited on `Server.Audit.Logs`.

use std::sync::Arc;

use serde_json::{json, Map, Value};
use talon_artifacts::{LoadedArtifact, Repository};
use talon_shared::control::{ArtifactModification, ControlRow};
use talon_shared::queue::{QueueManager, ROOT_ORG};
use talon_shared::store::Store;

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

/// User artifact administration: what it touches is the store (where user artifacts
/// live), the repository (where they are served from) and the queue manager (where
/// changes are announced and audited).
#[derive(Clone)]
pub struct ArtifactAdmin {
    pub store: Store,
    pub repo: Repository,
    pub qm: QueueManager,
}

impl ArtifactAdmin {
    /// Loads the user artifacts kept in the store into the repository. One that no longer
    /// loads (say, a built-in now has its name) stays stored and is reported, not dropped.
    pub fn load_stored(&self) -> anyhow::Result<usize> {
        load_stored(&self.store, &self.repo)
    }

    /// Adds (or with `replace`, updates) a user artifact from YAML.
    pub async fn set(
        &self,
        origin: &str,
        yaml: &str,
        replace: bool,
        principal: &str,
    ) -> Result<Arc<LoadedArtifact>, ApiError> {
        let repo = &self.repo;
        let a = repo.check(origin, yaml, replace)?;
        let existed = repo.get(a.name()).is_some();
        self.store.put_artifact(a.name(), &a.yaml).await?;
        let a = repo.insert(a);
        let change = if existed { Change::Update } else { Change::Add };
        announce(&self.qm, a.name(), change, principal, &a.kind.to_string()).await;
        Ok(a)
    }

    /// Deletes a user artifact.
    pub async fn delete(&self, name: &str, principal: &str) -> Result<(), ApiError> {
        match self.repo.get(name) {
            None => return Err(talon_artifacts::repository::Error::NotFound(name.into()).into()),
            Some(a) if a.built_in => {
                return Err(talon_artifacts::repository::Error::BuiltIn(name.into()).into())
            }
            Some(_) => {}
        }
        self.store.delete_artifact(name).await?;
        let a = self.repo.remove(name)?;
        announce(
            &self.qm,
            name,
            Change::Delete,
            principal,
            &a.kind.to_string(),
        )
        .await;
        Ok(())
    }
}

fn load_stored(store: &Store, repo: &Repository) -> anyhow::Result<usize> {
    let mut loaded = 0;
    for (name, yaml) in store.artifacts()? {
        match repo.check_accepted(&format!("stored artifact {name}"), &yaml) {
            Ok(a) => {
                repo.insert(a);
                loaded += 1;
            }
            Err(e) => tracing::error!(artifact = %name, error = %e, "stored artifact not loaded"),
        }
    }
    Ok(loaded)
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
