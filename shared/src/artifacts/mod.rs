//! Artifacts: the YAML model ([`model`]), the one loader ([`load`]), the embedded built-ins
//! ([`builtin`]), the repository the server serves ([`repository`]) and the VQL checks of
//! [`verify`].

pub mod builtin;
pub mod compile;
pub mod load;
pub mod model;
pub mod repository;
pub mod verify;

pub use load::{load, ArtifactKind, LoadError, LoadedArtifact};
pub use repository::Repository;
