//! The built-in artifacts of `artifacts/definitions/`, embedded in every binary.

use std::sync::OnceLock;

use include_dir::{include_dir, Dir};

use super::load::{load_with, LoadError, LoadedArtifact};

static DIR: Dir<'static> = include_dir!("$CARGO_MANIFEST_DIR/definitions");

/// Every embedded YAML file as (path, text), sorted by path.
pub fn files() -> Vec<(&'static str, &'static str)> {
    let mut out = Vec::new();
    collect(&DIR, &mut out);
    out.sort();
    out
}

fn collect(dir: &'static Dir<'static>, out: &mut Vec<(&'static str, &'static str)>) {
    for f in dir.files() {
        let path = f.path().to_str().unwrap_or_default();
        if path.ends_with(".yaml") {
            if let Some(text) = f.contents_utf8() {
                out.push((path, text));
            }
        }
    }
    for d in dir.dirs() {
        collect(d, out);
    }
}

/// Loads every embedded artifact; an error here is a bug in `artifacts/`.
pub fn load_all() -> Result<Vec<LoadedArtifact>, LoadError> {
    files()
        .into_iter()
        .map(|(path, text)| load_with(&format!("artifacts/{path}"), text, true))
        .collect()
}

/// The built-in artifacts, loaded once.
pub fn all() -> &'static [LoadedArtifact] {
    static ALL: OnceLock<Vec<LoadedArtifact>> = OnceLock::new();
    ALL.get_or_init(|| load_all().unwrap_or_else(|e| panic!("built-in artifact is invalid: {e}")))
}

/// The built-in artifact of that name.
pub fn find(name: &str) -> Option<&'static LoadedArtifact> {
    all().iter().find(|a| a.def.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ArtifactKind;

    /// Every queue SPEC-EVENT-QUEUES §2 names, with its type.
    const SPEC_QUEUES: &[(&str, ArtifactKind)] = &[
        ("Server.Audit.Logs", ArtifactKind::ServerEvent),
        ("Server.Internal.Alerts", ArtifactKind::ServerEvent),
        (
            "Server.Internal.ArtifactModification",
            ArtifactKind::ServerEvent,
        ),
        ("Server.Internal.ClientDelete", ArtifactKind::ServerEvent),
        (
            "Server.Internal.MetadataModifications",
            ArtifactKind::ServerEvent,
        ),
        ("Server.Internal.TimelineAdd", ArtifactKind::ServerEvent),
        ("System.Hunt.Creation", ArtifactKind::ServerEvent),
        ("Server.Monitor.Health", ArtifactKind::ServerEvent),
        (
            "Server.Internal.ArtifactDescription",
            ArtifactKind::Internal,
        ),
        ("Server.Internal.ClientConflict", ArtifactKind::Internal),
        ("Server.Internal.ClientInfo", ArtifactKind::Internal),
        ("Server.Internal.ClientInfoSnapshot", ArtifactKind::Internal),
        ("Server.Internal.ClientPing", ArtifactKind::Internal),
        ("Server.Internal.ClientScheduled", ArtifactKind::Internal),
        ("Server.Internal.ClientTasks", ArtifactKind::Internal),
        ("Server.Internal.Enrollment", ArtifactKind::Internal),
        ("Server.Internal.FrontendMetrics", ArtifactKind::Internal),
        ("Server.Internal.HuntModification", ArtifactKind::Internal),
        ("Server.Internal.HuntUpdate", ArtifactKind::Internal),
        ("Server.Internal.Interrogation", ArtifactKind::Internal),
        ("Server.Internal.Inventory", ArtifactKind::Internal),
        ("Server.Internal.Label", ArtifactKind::Internal),
        (
            "Server.Internal.MasterRegistrations",
            ArtifactKind::Internal,
        ),
        ("Server.Internal.Notifications", ArtifactKind::Internal),
        ("Server.Internal.Ping", ArtifactKind::Internal),
        ("Server.Internal.Pong", ArtifactKind::Internal),
        ("Server.Internal.UserManager", ArtifactKind::Internal),
        ("System.Hunt.Participation", ArtifactKind::Internal),
        ("System.Flow.Completion", ArtifactKind::ClientEvent),
        ("Generic.Client.Stats", ArtifactKind::ClientEvent),
    ];

    #[test]
    fn every_spec_queue_is_built_in_with_its_type_and_description() {
        for (name, kind) in SPEC_QUEUES {
            let a = find(name).unwrap_or_else(|| panic!("{name} missing from artifacts/"));
            assert_eq!(a.kind, *kind, "{name}");
            let d = a.def.description.as_deref().unwrap_or("");
            assert!(d.len() > 20, "{name} needs a description with its columns");
            assert!(
                !a.def.column_types.is_empty(),
                "{name} needs its row columns"
            );
        }
    }

    #[test]
    fn every_embedded_file_loads() {
        let all = load_all().unwrap();
        assert_eq!(all.len(), files().len());
        let mut names: Vec<_> = all.iter().map(|a| a.def.name.clone()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), all.len(), "duplicate built-in names");
    }
}
