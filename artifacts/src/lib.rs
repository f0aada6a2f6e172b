//! Talon's artifacts, linked by the server engine and the CLI (which verifies offline):
//! the YAML model ([`model`]), the one loader ([`load`]), the built-ins embedded from
//! `definitions/` ([`builtin`]), the repository the server serves ([`repository`]), the
//! compiler of sources into runnable queries ([`compile`]) and the VQL checks of
//! [`verify`]. It knows nothing of stores, queues or the network.

pub mod builtin;
pub mod compile;
pub mod load;
pub mod model;
pub mod repository;
pub mod verify;

pub use load::{load, ArtifactKind, LoadError, LoadedArtifact};
pub use repository::Repository;

/// The registry of every VQL function and plugin, for [`verify::verify`].
pub use talon_vql::registry::Registry;
