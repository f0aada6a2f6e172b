//! `talon-client`, the endpoint agent: [`agent`] (the stream to a frontend, queries,
//! batching) and [`spool`] (unacknowledged batches on disk).

pub mod agent;
pub mod spool;
