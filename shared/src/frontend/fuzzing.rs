//! What the client-frame fuzz target (`fuzz/fuzz_targets/client_frames.rs`) drives: a
//! frontend connection fed arbitrary bytes in chunks, exactly as its socket would feed it.
//! Built only with the `fuzzing` feature.

use super::FrontendService;

/// Feeds `bytes` to a new connection of `fe`, `chunk` bytes at a time (at least 1). An
/// error ends the connection, as it would a real one; nothing may panic.
pub fn feed(fe: &FrontendService, bytes: &[u8], chunk: usize) {
    super::conn::fuzz_feed(fe, bytes, chunk)
}
