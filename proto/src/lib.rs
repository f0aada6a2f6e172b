//! Generated protobuf and gRPC code of Talon's contracts; no logic lives here.
//!
//! - [`api`]: the admin API of the master (`api.proto`).

/// The admin API (`proto/api.proto`).
pub mod api {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("talon.api");
}
