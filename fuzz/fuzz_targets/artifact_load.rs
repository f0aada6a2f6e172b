//! Fuzzes the artifact loader and verifier, what `talon artifacts add` and `verify` run on
//! a user's YAML: any input gives an artifact or errors naming a place, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use talon_artifacts::verify::{verify, Level};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(a) = talon_artifacts::load::load("fuzz.yaml", &text) {
        let registry = talon_vql::registry::Registry::builtin();
        for e in verify(&a, &registry, Level::Full, "fuzz.yaml") {
            assert!(e.line >= 1 && !e.message.is_empty(), "{e}");
        }
        let _ = talon_artifacts::compile::compile(
            &{
                let r = talon_artifacts::Repository::with_builtins();
                r.insert(a);
                r
            },
            &text_name(&text),
            &[],
        );
    }
});

/// The artifact's name line, if any (compile looks artifacts up by name).
fn text_name(text: &str) -> String {
    text.lines()
        .find_map(|l| l.strip_prefix("name:"))
        .map(|n| n.trim().to_string())
        .unwrap_or_default()
}
