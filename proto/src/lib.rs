//! Generated protobuf and gRPC code of Talon's contracts; no logic lives here.
//!
//! - [`api`]: the admin API of the master (`api.proto`).
//! - [`client`]: the endpoint protocol between clients and frontends (`client.proto`).

/// The admin API (`proto/api.proto`).
pub mod api {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("talon.api");
}

/// The endpoint protocol (`proto/client.proto`).
pub mod client {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("talon.client");
}
