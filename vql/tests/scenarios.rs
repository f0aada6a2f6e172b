//! Behaviour from data: each `tests/scenarios/*.json` file is a list of cases, a query in and
//! rows (or a parse error, or log lines) out.

use std::path::Path;

use serde_json::Value as J;
use talon_vql::Runner;

fn run_file(path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap();
    let cases: Vec<J> =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let runner = Runner::default();
    let mut failures = Vec::new();
    for case in cases {
        let name = case["name"].as_str().unwrap_or("?").to_string();
        let query = case["query"].as_str().unwrap();
        let result = rt.block_on(runner.collect(query));
        let where_ = format!("{} / {name}", path.file_name().unwrap().to_string_lossy());
        match (result, case.get("error")) {
            (Err(e), Some(want)) => {
                let want = want.as_str().unwrap();
                if !e.to_string().contains(want) {
                    failures.push(format!("{where_}: error {e:?} does not contain {want:?}"));
                }
            }
            (Err(e), None) => failures.push(format!("{where_}: unexpected error {e}")),
            (Ok((rows, _)), Some(want)) => failures.push(format!(
                "{where_}: expected error {want}, got {} rows",
                rows.len()
            )),
            (Ok((rows, logs)), None) => {
                let got: Vec<J> = rows
                    .iter()
                    .map(|r| talon_vql::Value::Dict(r.clone()).to_json())
                    .collect();
                if let Some(want) = case.get("rows") {
                    if &J::Array(got.clone()) != want {
                        failures.push(format!(
                            "{where_}:\n  want {want}\n  got  {}",
                            J::Array(got)
                        ));
                    }
                }
                if let Some(n) = case.get("log_count").and_then(J::as_u64) {
                    if logs.len() as u64 != n {
                        failures.push(format!(
                            "{where_}: {} log lines, wanted {n}: {logs:?}",
                            logs.len()
                        ));
                    }
                }
                if let Some(want) = case.get("logs") {
                    let lines: Vec<String> = logs
                        .iter()
                        .map(|l| format!("{}:{}", l.level, l.message))
                        .collect();
                    for w in want.as_array().unwrap() {
                        let w = w.as_str().unwrap();
                        if !lines.iter().any(|l| l.contains(w)) {
                            failures.push(format!(
                                "{where_}: no log line contains {w:?}; logs: {lines:?}"
                            ));
                        }
                    }
                }
            }
        }
    }
    failures
}

#[test]
fn scenario_files() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/scenarios");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(!files.is_empty());
    let failures: Vec<String> = files.iter().flat_map(|f| run_file(f)).collect();
    assert!(
        failures.is_empty(),
        "{} failing cases:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
