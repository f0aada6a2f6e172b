//! Fuzzes the client frontend's connection: bytes as a client's socket would deliver them
//! (HTTP/2 frames, HPACK headers, gRPC messages, protobuf client messages), fed in chunks
//! of a size the input picks. Errors end the connection; nothing may panic.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use talon_shared::frontend::FrontendService;

/// One frontend over a scratch store for the whole run, and the runtime its tasks use.
struct Node {
    runtime: tokio::runtime::Runtime,
    frontend: FrontendService,
    _dir: tempfile::TempDir,
}

fn node() -> &'static Node {
    static NODE: OnceLock<Node> = OnceLock::new();
    NODE.get_or_init(|| {
        let runtime = tokio::runtime::Runtime::new().expect("runtime");
        let dir = tempfile::tempdir().expect("scratch dir");
        let parts = runtime
            .block_on(talon_shared::parts::Parts::standalone(
                "fuzz",
                dir.path().join("t.redb"),
            ))
            .expect("a standalone node");
        let frontend = parts.frontend.clone();
        // The node lives for the whole run.
        std::mem::forget(parts);
        Node {
            runtime,
            frontend,
            _dir: dir,
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&chunk, bytes)) = data.split_first() else {
        return;
    };
    let node = node();
    let _in_runtime = node.runtime.enter();
    talon_shared::frontend::fuzzing::feed(&node.frontend, bytes, usize::from(chunk) + 1);
});
