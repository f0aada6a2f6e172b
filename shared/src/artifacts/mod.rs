//! Artifacts: the YAML model ([`model`]), the one loader ([`load`]), the embedded built-ins
//! ([`builtin`]) and the repository the server serves ([`repository`]).

pub mod builtin;
pub mod load;
pub mod model;
pub mod repository;

pub use load::{load, ArtifactKind, LoadError, LoadedArtifact};
pub use repository::Repository;
