//! `talon-client`, the endpoint agent: [`agent`] (the stream to a frontend, queries,
//! batching), [`spool`] (unacknowledged batches on disk) and [`simulate`] (load testing).

pub mod agent;
pub mod simulate;
pub mod spool;
