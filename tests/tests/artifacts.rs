//! Artifact administration end to end: add, list, show, replace, delete; each change is
//! announced on Server.Internal.ArtifactModification and audited on Server.Audit.Logs, and
//! user artifacts survive a restart.

use std::time::Duration;

use talon_tests::*;

const CUSTOM: &str =
    "name: Custom.Events\ndescription: Rows from our own tooling\ntype: SERVER_EVENT\n";

#[test]
fn artifact_changes_are_stored_announced_and_audited() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("data");
    let file = dir.path().join("custom.yaml");
    std::fs::write(&file, CUSTOM).unwrap();
    let file = file.to_str().unwrap();
    let mut master = Master::start(&store, &[]);
    let (_mods, mods_rx) = master.spawn_watching(
        &[
            "events",
            "watch",
            "Server.Internal.ArtifactModification",
            "--count",
            "3",
        ],
        "root",
        "Server.Internal.ArtifactModification",
        1,
    );

    assert_eq!(
        ok(&master.talon(&["artifacts", "add", file])).trim(),
        "added Custom.Events (SERVER_EVENT)"
    );
    let err = fails(&master.talon(&["artifacts", "add", file]), 1);
    assert!(
        err.contains("artifact Custom.Events already exists (use --replace to update it)"),
        "{err}"
    );
    std::fs::write(file, CUSTOM.replace("our own", "the new")).unwrap();
    ok(&master.talon(&["artifacts", "add", "--replace", file]));
    assert!(ok(&master.talon(&["artifacts", "show", "Custom.Events"])).contains("the new tooling"));

    // The new artifact's queue exists at once and takes rows.
    ok(&master.talon(&["events", "push", "Custom.Events", "--row", r#"{"x":1}"#]));
    let list: serde_json::Value = serde_json::from_str(&ok(&master.talon(&[
        "artifacts",
        "list",
        "--format",
        "json",
    ])))
    .unwrap();
    let custom = list
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == "Custom.Events")
        .unwrap();
    assert_eq!(custom["built_in"], false);
    assert_eq!(custom["type"], "SERVER_EVENT");
    assert!(list.as_array().unwrap().len() >= 31);

    // Built-ins cannot be deleted; user artifacts survive restarts.
    let err = fails(
        &master.talon(&["artifacts", "delete", "Server.Audit.Logs"]),
        1,
    );
    assert!(
        err.contains("artifact Server.Audit.Logs is built in and cannot be changed or deleted"),
        "{err}"
    );
    master.kill9();
    let master = Master::start(&store, &[]);
    assert!(ok(&master.talon(&["artifacts", "show", "Custom.Events"])).contains("the new tooling"));
    ok(&master.talon(&["artifacts", "delete", "Custom.Events"]));
    let err = fails(&master.talon(&["artifacts", "show", "Custom.Events"]), 1);
    assert!(err.contains("artifact Custom.Events not found"), "{err}");
    let err = fails(
        &master.talon(&["events", "push", "Custom.Events", "--row", "{}"]),
        1,
    );
    assert!(err.contains("unknown artifact Custom.Events"), "{err}");

    // Every change was announced (the first master's watcher saw add and update) and audited.
    let seen: Vec<serde_json::Value> = (0..2)
        .map(|_| {
            serde_json::from_str(&mods_rx.recv_timeout(Duration::from_secs(10)).unwrap()).unwrap()
        })
        .collect();
    assert_eq!(seen[0]["op"], "add");
    assert_eq!(seen[1]["op"], "update");
    let stored = json_lines(&ok(&master.talon(&[
        "events",
        "read",
        "Server.Internal.ArtifactModification",
    ])));
    let ops: Vec<_> = stored
        .iter()
        .map(|r| r["op"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ops, ["add", "update", "delete"]);
    let audit = json_lines(&ok(&master.talon(&["events", "read", "Server.Audit.Logs"])));
    let ops: Vec<_> = audit
        .iter()
        .map(|r| r["operation"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ops, ["artifact_add", "artifact_update", "artifact_delete"]);
    for r in &audit {
        assert!(r["principal"].as_str().unwrap().starts_with("cli:"), "{r}");
        assert_eq!(r["details"]["artifact"], "Custom.Events");
    }
}

#[test]
fn verify_accepts_the_projects_own_artifacts_offline() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../artifacts/definitions");
    let examples = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/examples");
    // No server is listening at this address: verify must not need one.
    let out = talon("127.0.0.1:1", &["artifacts", "verify", dir, examples], None);
    let stdout = ok(&out);
    assert!(stdout.lines().count() >= 33, "{stdout}");
    assert!(stdout.lines().all(|l| l.starts_with("OK ")), "{stdout}");
}
