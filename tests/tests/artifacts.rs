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
        // The certificate's user, never a header.
        assert_eq!(r["principal"], "admin", "{r}");
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

/// Item 6 of the hardening issue: a 20 MB artifact was stored and audited while `add`
/// reported failure, and `add` accepted unknown functions that `verify` refused. Now one
/// size limit is checked before anything is stored, and add and verify check the same.
#[test]
fn add_and_verify_refuse_the_same_artifacts_and_nothing_refused_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let master = Master::start(&dir.path().join("data"), &[]);
    let write = |name: &str, text: &str| {
        let f = dir.path().join(name);
        std::fs::write(&f, text).unwrap();
        f.to_str().unwrap().to_string()
    };
    let huge = write(
        "huge.yaml",
        &format!(
            "name: Custom.Huge\ndescription: {}\ntype: SERVER_EVENT\n",
            "x".repeat(9 << 20)
        ),
    );
    let unknown = write(
        "unknown.yaml",
        "name: Custom.Unknown\ntype: SERVER_EVENT\nsources:\n- query: SELECT no_such_function() FROM scope()\n",
    );
    for (file, why) in [
        (&huge, "over the limit of 8388608 bytes (8 MiB)"),
        (&unknown, "no_such_function"),
    ] {
        let added = fails(&master.talon(&["artifacts", "add", file]), 1);
        assert!(added.contains(why), "add: {added}");
        let verified = master.talon(&["artifacts", "verify", file]);
        assert!(!verified.status.success(), "verify accepted {file}");
        let verified = String::from_utf8_lossy(&verified.stdout).to_string()
            + &String::from_utf8_lossy(&verified.stderr);
        assert!(verified.contains(why), "verify: {verified}");
    }
    // Nothing refused was stored, announced or audited, and listing works.
    let list = ok(&master.talon(&["artifacts", "list"]));
    assert!(
        !list.contains("Custom.Huge") && !list.contains("Custom.Unknown"),
        "{list}"
    );
    let audit = ok(&master.talon(&["events", "read", "Server.Audit.Logs"]));
    assert!(
        !audit.contains("Custom.Huge") && !audit.contains("Custom.Unknown"),
        "{audit}"
    );

    // Long descriptions do not make the listing large: it shows their start.
    let long = write(
        "long.yaml",
        &format!(
            "name: Custom.Long\ndescription: {}\ntype: SERVER_EVENT\n",
            "y".repeat(7 << 20)
        ),
    );
    ok(&master.talon(&["artifacts", "add", &long]));
    let list = ok(&master.talon(&["artifacts", "list", "--format", "json"]));
    assert!(
        list.contains("Custom.Long") && list.len() < 100_000,
        "{} bytes",
        list.len()
    );
    let shown = ok(&master.talon(&["artifacts", "show", "Custom.Long"]));
    assert!(shown.len() > 7 << 20);
}
