//! The README's tour, run as written: every command of the `sh` blocks under "A
//! five-minute tour", "VQL", "Server monitoring", "Endpoints", "Collections and hunts",
//! "Automation" and "Debug pages", one bash script with
//! `set -euo pipefail`, against a real master (and the real client the tour starts), in a
//! scratch directory that links the repository's `docs/` and `tests/`. Only what cannot be verbatim in
//! a test is replaced: the build line (the binaries under test are put on PATH instead)
//! and the default addresses (the master here listens on free ports).

use std::time::Duration;

use talon_tests::*;

const SECTIONS: &[&str] = &[
    "## A five-minute tour",
    "## VQL",
    "### Server monitoring",
    "## Endpoints",
    "## Collections and hunts",
    "## Automation",
    "## Debug pages",
];

/// The `sh` blocks of the section under `heading`, up to the next heading of any level.
fn blocks(readme: &str, heading: &str) -> Vec<String> {
    let start = readme
        .lines()
        .position(|l| l == heading)
        .unwrap_or_else(|| panic!("README has no {heading:?}"));
    let mut out = Vec::new();
    let mut current: Option<String> = None;
    for line in readme.lines().skip(start + 1) {
        match &mut current {
            None if line.starts_with('#') => break,
            None if line == "```sh" => current = Some(String::new()),
            None => {}
            Some(_) if line == "```" => out.push(current.take().expect("open block")),
            Some(block) => {
                block.push_str(line);
                block.push('\n');
            }
        }
    }
    assert!(!out.is_empty(), "{heading}: no sh block");
    out
}

#[test]
fn the_readme_tour_runs_as_written() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf();
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    // As on a fresh machine: no config; the master makes its deployment in
    // ./talon-data/config/, where the CLI and the tour's client find it.
    let master = Master::start_fresh(&work.join("talon-data"), &[]);
    // The one change the tour cannot make itself: this master's frontend is on a free port.
    let client_config = master.client_config();
    let text = std::fs::read_to_string(&client_config).unwrap();
    std::fs::write(
        &client_config,
        text.replace("127.0.0.1:0", &master.frontend.to_string()),
    )
    .unwrap();
    std::os::unix::fs::symlink(root.join("docs"), work.join("docs")).unwrap();
    // The Automation section's local SMTP server is the test suite's.
    std::os::unix::fs::symlink(root.join("tests"), work.join("tests")).unwrap();

    let bin_dir = bin("talon").parent().unwrap().to_path_buf();
    let (debug, frontend) = {
        let (_, body) = master.http_get("/debug/queues");
        assert!(!body.is_empty());
        (master.debug.to_string(), master.frontend.to_string())
    };
    let mut script =
        String::from("set -euo pipefail\ntrap 'kill $(jobs -p) 2>/dev/null || true' EXIT\n");
    for section in SECTIONS {
        for block in blocks(&readme, section) {
            for line in block.lines() {
                let line = if line.starts_with("cargo build") {
                    format!("export PATH={}:$PATH", bin_dir.display())
                } else {
                    line.replace("127.0.0.1:8889", &debug)
                        .replace("127.0.0.1:8000", &frontend)
                };
                script.push_str(&line);
                script.push('\n');
            }
        }
    }
    let out = std::process::Command::new("bash")
        .arg("-c")
        .arg(&script)
        .current_dir(&work)
        .env("TALON_API", master.api.to_string())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the tour failed ({:?})\n--- stderr\n{stderr}\n--- stdout\n{stdout}\n--- script\n{script}",
        out.status
    );
    // What the tour says it shows, it shows.
    assert!(stdout.contains(r#"{"X":false}"#), "{stdout}");
    assert!(
        stdout.contains("added Custom.Deploys (SERVER_EVENT)"),
        "{stdout}"
    );
    assert!(stdout.contains("talon_queue_rows_pushed_total"), "{stdout}");
    assert!(work
        .join("export/server_artifacts/Server.Audit.Logs")
        .is_dir());
    // The Automation section's mail went out, and the alert was mailed and messaged.
    assert!(
        stdout.contains(r#""ErrorStatus":"OK: Message Sent""#),
        "{stdout}"
    );
    assert!(
        wait_until(Duration::from_secs(30), || std::fs::read_dir(
            work.join("mailbox")
        )
        .map(|d| d.count() >= 2)
        .unwrap_or(false)),
        "the alert was not mailed"
    );
    assert!(wait_until(Duration::from_secs(30), || ok(
        &master.talon(&["messages", "list"])
    )
    .contains("disk full")));
    let deploys = json_lines(&ok(&master.talon(&["events", "read", "Custom.Deploys"])));
    assert_eq!(deploys.len(), 1);
    assert_eq!(deploys[0]["app"], "web");
    let stats = ok(&master.talon(&["events", "read", "Generic.Client.Stats"]));
    assert!(stats.contains("ClientId"), "{stats}");
    // The client labelled `windows` reported new processes (the simulator, at least), so
    // Server.Powershell.EncodedCommand has input.
    assert!(
        wait_until(Duration::from_secs(20), || !ok(&master.talon(&[
            "events",
            "read",
            "Windows.Events.ProcessCreation"
        ]))
        .trim()
        .is_empty()),
        "no process creation rows"
    );
}
