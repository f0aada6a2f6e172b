//! Talon's ground floor, linked by every binary including the endpoint agent and the CLI:
//! nothing here opens a store, a socket or a bus.
//!
//! - [`acl`]: roles and permissions (Velociraptor's names).
//! - [`pki`]: the deployment CA, server and user certificates, client keys and ids.
//! - [`deploy`]: the files `talon config generate` writes, and their shapes.
//! - [`ids`]: client ids and org ids, and the root org.
//! - [`timefmt`]: parsing and printing of times for CLI and API.
//! - [`telemetry`]: the one tracing set-up binaries install.
//! - [`shutdown`]: the shutdown tree: one token, one task tracker, a grace period, and the
//!   only place a task is spawned.

pub mod acl;
pub mod deploy;
pub mod flows;
pub mod ids;
pub mod pki;
pub mod shutdown;
pub mod telemetry;
pub mod timefmt;

pub use shutdown::Shutdown;
