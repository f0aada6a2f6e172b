//! Fuzzes the VQL parser: any input gives a syntax tree or an error, never a panic; and a
//! parsed query's canonical text parses again.
#![no_main]

use libfuzzer_sys::fuzz_target;
use talon_vql::ast::Stmt;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(program) = talon_vql::parse(&text) {
        for stmt in &program.stmts {
            if let Stmt::Select(s) = stmt {
                let canonical = talon_vql::format::select(s);
                assert!(
                    talon_vql::parse(&canonical).is_ok(),
                    "canonical text does not parse: {canonical:?} (from {text:?})"
                );
            }
        }
    }
});
