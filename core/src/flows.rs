//! The flow response protocol both ends speak: clients answer a collection with rows of
//! [`RESPONSES_QUEUE`] (`{FlowId, Source, Row}`, `{FlowId, Source, Log}`,
//! `{FlowId, Source, Status}`, `{FlowId, CancelAck}`), and the master's flow manager reads
//! them. Status codes are Velociraptor's `VeloStatus`.

/// Where clients send flow responses (a CLIENT_EVENT queue, so they are spooled and
/// acknowledged as event rows are).
pub const RESPONSES_QUEUE: &str = "Server.Internal.FlowResponses";

/// The query ended well.
pub const STATUS_OK: i64 = 0;
/// The query started (sent when it starts, and on progress).
pub const STATUS_PROGRESS: i64 = 4;
/// The query failed: its `error_message` says why.
pub const STATUS_GENERIC_ERROR: i64 = 10;
/// The client does not know the flow (it restarted while the flow ran).
pub const STATUS_UNKNOWN_FLOW: i64 = 11;

/// A collection's default time limit on the client.
pub const DEFAULT_FLOW_TIMEOUT_SECS: u64 = 600;
