//! The artifact repository a server serves: the embedded built-ins plus user artifacts.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use super::builtin;
use super::load::{load, ArtifactKind, LoadError, LoadedArtifact};

/// Repository errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Invalid(#[from] LoadError),
    #[error("artifact {0} already exists")]
    Exists(String),
    #[error("artifact {0} not found")]
    NotFound(String),
    #[error("artifact {0} is built in and cannot be changed or deleted")]
    BuiltIn(String),
}

/// A cheap cloneable handle on the set of known artifacts.
#[derive(Clone)]
pub struct Repository {
    inner: Arc<RwLock<BTreeMap<String, Arc<LoadedArtifact>>>>,
    /// Bumped on every change, so what is compiled from the artifacts can be cached.
    generation: Arc<std::sync::atomic::AtomicU64>,
}

impl Default for Repository {
    fn default() -> Self {
        Self::with_builtins()
    }
}

impl Repository {
    /// A repository holding the embedded built-in artifacts.
    pub fn with_builtins() -> Self {
        let map = builtin::all()
            .iter()
            .map(|a| (a.def.name.clone(), Arc::new(a.clone())))
            .collect();
        Self {
            inner: Arc::new(RwLock::new(map)),
            generation: Default::default(),
        }
    }

    /// A number that changes whenever an artifact is added, replaced or removed.
    pub fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::Acquire)
    }

    fn changed(&self) {
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    }

    /// Every artifact, sorted by name.
    pub fn list(&self) -> Vec<Arc<LoadedArtifact>> {
        self.inner
            .read()
            .expect("repository lock")
            .values()
            .cloned()
            .collect()
    }

    /// The artifact of that name.
    pub fn get(&self, name: &str) -> Option<Arc<LoadedArtifact>> {
        self.inner
            .read()
            .expect("repository lock")
            .get(name)
            .cloned()
    }

    /// The kind of the queue called `name` (`Artifact` or `Artifact/Source`), if one exists.
    pub fn queue_kind(&self, name: &str) -> Option<ArtifactKind> {
        let map = self.inner.read().expect("repository lock");
        let (artifact, _) = name.split_once('/').unwrap_or((name, ""));
        let a = map.get(artifact)?;
        a.queue_names().iter().any(|q| q == name).then_some(a.kind)
    }

    /// Validates YAML into an artifact without adding it, as `talon artifacts verify` does
    /// (size, syntax, source shape, known functions and plugins). `replace` allows an
    /// existing user artifact of the same name.
    pub fn check(&self, origin: &str, yaml: &str, replace: bool) -> Result<LoadedArtifact, Error> {
        let registry = talon_vql::registry::Registry::builtin();
        self.check_at(origin, yaml, replace, &registry, super::verify::Level::Full)
    }

    /// Validates an artifact this server accepted before (stored, or sent by the master):
    /// only what running it needs, so one stored by an older release that calls a function
    /// since renamed is still loaded (and fails visibly when it runs) rather than lost.
    pub fn check_accepted(&self, origin: &str, yaml: &str) -> Result<LoadedArtifact, Error> {
        let registry = talon_vql::registry::Registry::new();
        self.check_at(
            origin,
            yaml,
            true,
            &registry,
            super::verify::Level::Structure,
        )
    }

    fn check_at(
        &self,
        origin: &str,
        yaml: &str,
        replace: bool,
        registry: &talon_vql::registry::Registry,
        level: super::verify::Level,
    ) -> Result<LoadedArtifact, Error> {
        let a = load(origin, yaml)?;
        let exports: Vec<String> = a
            .def
            .imports
            .iter()
            .filter_map(|i| self.get(i)?.def.export.clone())
            .collect();
        let problems = super::verify::verify_with_imports(&a, registry, level, origin, &exports);
        if let Some(first) = problems.into_iter().next() {
            return Err(Error::Invalid(first));
        }
        match self.get(a.name()) {
            Some(existing) if existing.built_in => Err(Error::BuiltIn(a.def.name)),
            Some(_) if !replace => Err(Error::Exists(a.def.name)),
            _ => Ok(a),
        }
    }

    /// Adds or replaces a checked artifact.
    pub fn insert(&self, a: LoadedArtifact) -> Arc<LoadedArtifact> {
        let a = Arc::new(a);
        self.inner
            .write()
            .expect("repository lock")
            .insert(a.def.name.clone(), a.clone());
        self.changed();
        a
    }

    /// Removes a user artifact.
    pub fn remove(&self, name: &str) -> Result<Arc<LoadedArtifact>, Error> {
        let mut map = self.inner.write().expect("repository lock");
        match map.get(name) {
            None => Err(Error::NotFound(name.into())),
            Some(a) if a.built_in => Err(Error::BuiltIn(name.into())),
            Some(_) => {
                let gone = map.remove(name).expect("present");
                self.changed();
                Ok(gone)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queues_resolve_by_artifact_and_source() {
        let r = Repository::with_builtins();
        assert_eq!(
            r.queue_kind("Server.Audit.Logs"),
            Some(ArtifactKind::ServerEvent)
        );
        assert_eq!(r.queue_kind("Nope"), None);
        let a = r
            .check("t", "name: A.B\ntype: SERVER_EVENT\nsources:\n- name: S\n  query: SELECT 1 FROM scope()\n", false)
            .unwrap();
        r.insert(a);
        assert_eq!(r.queue_kind("A.B/S"), Some(ArtifactKind::ServerEvent));
        assert_eq!(r.queue_kind("A.B"), None);
        assert!(matches!(
            r.check("t", "name: A.B\n", false),
            Err(Error::Exists(_))
        ));
        assert!(matches!(
            r.remove("Server.Audit.Logs"),
            Err(Error::BuiltIn(_))
        ));
        r.remove("A.B").unwrap();
        assert!(matches!(r.remove("A.B"), Err(Error::NotFound(_))));
    }
}
