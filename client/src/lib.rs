//! `talon-client`, the endpoint agent: [`agent`] (the stream to a frontend, queries,
//! batching), [`spool`] (unacknowledged batches on disk), [`transport`] (TLS with the
//! client's own key, which names it) and [`simulate`] (load testing).

pub mod agent;
pub mod flows;
pub mod simulate;
pub mod spool;
pub mod transport;
