//! Bad input gets a clear error, nothing is written, and the server keeps serving.

use talon_proto::api::{PushRequest, SetArtifactRequest};
use talon_tests::*;

const QUEUE: &str = "Server.Audit.Logs";

fn stored(master: &Master) -> usize {
    json_lines(&ok(&master.talon(&["events", "read", QUEUE]))).len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_rows_and_targets_are_refused_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("talon.yaml");
    std::fs::write(&config, "max_row_bytes: 1024\n").unwrap();
    let master = Master::start(
        &dir.path().join("data"),
        &["--config", config.to_str().unwrap()],
    );
    ok(&master.talon(&["events", "push", QUEUE, "--row", r#"{"keep":1}"#]));
    assert_eq!(stored(&master), 1);

    let cases: Vec<(Vec<&str>, Option<&str>, &str)> = vec![
        (vec!["events", "push", QUEUE], Some("{\"a\":1}\n{\"a\":\n"), "stdin line 2: invalid JSON"),
        (vec!["events", "push", QUEUE], Some("{\"a\":1}\n[1,2]\n"), "stdin line 2: a row must be a JSON object"),
        (vec!["events", "push", "No.Such.Queue", "--row", "{}"], None, "unknown artifact No.Such.Queue"),
        (vec!["events", "push", "Server.Internal.Ping", "--row", "{}"], None, "queue Server.Internal.Ping is INTERNAL; API users may push only to SERVER_EVENT queues"),
        (vec!["events", "push", "Generic.Client.Stats", "--row", "{}"], None, "queue Generic.Client.Stats is CLIENT_EVENT; API users may push only to SERVER_EVENT queues"),
        (vec!["events", "read", "Server.Internal.Ping"], None, "queue Server.Internal.Ping is INTERNAL; its rows are not stored"),
        (vec!["events", "watch", "No.Such.Queue", "--count", "1"], None, "unknown artifact No.Such.Queue"),
        (vec!["--org", "no org!", "events", "push", QUEUE, "--row", "{}"], None, "invalid org \"no org!\""),
    ];
    for (args, stdin, want) in &cases {
        let out = match stdin {
            Some(s) => master.talon_stdin(args, s),
            None => master.talon(args),
        };
        let err = fails(&out, 1);
        assert!(err.contains(want), "{args:?}: want {want:?}, got {err:?}");
        assert_eq!(
            err.trim_end().lines().count(),
            1,
            "one line on stderr: {err:?}"
        );
    }

    // An oversized row, between good ones: the whole push is refused, naming the row.
    let big = format!("{{\"pad\":\"{}\"}}", "x".repeat(2000));
    let stdin = format!("{{\"a\":1}}\n{big}\n{{\"a\":2}}\n");
    let err = fails(&master.talon_stdin(&["events", "push", QUEUE], &stdin), 1);
    assert!(
        err.contains("stdin line 2: 2010 bytes is over the row size limit of 1024 bytes"),
        "{err}"
    );

    // The same through the API directly: invalid JSON and non-objects, named by index.
    let mut client = master.client().await;
    for (rows, want) in [
        (vec!["{\"a\":1}", "{nope"], "row 1: invalid JSON"),
        (
            vec!["\"text\""],
            "row 0: a row must be a JSON object, got a string",
        ),
        (vec!["null"], "row 0: a row must be a JSON object, got null"),
    ] {
        let e = client
            .push(PushRequest {
                org: String::new(),
                artifact: QUEUE.into(),
                rows_json: rows.into_iter().map(|r| r.as_bytes().to_vec()).collect(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(e.message().contains(want), "{}", e.message());
    }
    // Text that is not UTF-8 is refused naming its row (it once failed the decode with
    // INTERNAL).
    let e = client
        .push(PushRequest {
            artifact: QUEUE.into(),
            rows_json: vec![b"{\"a\":1}".to_vec(), b"{\"b\":\"\xff\"}".to_vec()],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    assert!(
        e.message().contains("row 1: not valid UTF-8"),
        "{}",
        e.message()
    );
    // Invalid protobuf on the wire: the server refuses the call and keeps serving.
    let raw = raw_grpc_call(master.api, "/talon.api.Admin/Push", &[0x0a, 0xff, 0xff]).await;
    assert!(raw.contains("Internal") && raw.contains("decode"), "{raw}");

    assert_eq!(stored(&master), 1, "nothing was written by bad input");
    ok(&master.talon(&["events", "push", QUEUE, "--row", r#"{"keep":2}"#]));
    assert_eq!(stored(&master), 2, "the server keeps serving");
}

/// A CLI push of more rows than one request carries is checked whole first: a bad row at
/// line 12 001 stores nothing (it once left 10 000 rows stored, duplicated by a retry).
/// Bytes that are not UTF-8 are refused naming their line.
#[test]
fn a_large_cli_push_is_all_or_nothing_and_names_the_bad_line() {
    let dir = tempfile::tempdir().unwrap();
    let master = Master::start(&dir.path().join("data"), &[]);
    let mut lines: Vec<String> = (0..15_000).map(|i| format!("{{\"i\":{i}}}")).collect();
    let big = format!("{{\"pad\":\"{}\"}}", "x".repeat(10 * 1024 * 1024 + 1));
    lines[12_000] = big;
    let err = fails(
        &master.talon_stdin(&["events", "push", QUEUE], &lines.join("\n")),
        1,
    );
    assert!(
        err.contains("stdin line 12001:") && err.contains("over the row size limit"),
        "{err}"
    );
    assert_eq!(stored(&master), 0, "nothing of a refused push is stored");
    lines[12_000] = "{\"i\":12000}".into();
    let out = ok(&master.talon_stdin(&["events", "push", QUEUE], &lines.join("\n")));
    assert!(out.contains("pushed 15000 rows"), "{out}");
    assert_eq!(stored(&master), 15_000);

    // Naming a push makes sending it again store nothing twice.
    let named = lines[..3].join("\n");
    for _ in 0..2 {
        ok(&master.talon_stdin(&["events", "push", QUEUE, "--push-id", "deploy-7"], &named));
    }
    assert_eq!(stored(&master), 15_003);

    let mut bytes = b"{\"a\":1}\n{\"b\":\"".to_vec();
    bytes.extend_from_slice(&[0xff, 0xfe]);
    bytes.extend_from_slice(b"\"}\n");
    let mut child = std::process::Command::new(bin("talon"))
        .env("TALON_API", master.api.to_string())
        .env("TALON_API_CONFIG", &master.api_config)
        .args(["events", "push", QUEUE])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(&bytes).unwrap();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("stdin line 2: not valid UTF-8"), "{err}");
    assert_eq!(stored(&master), 15_003);
}

#[test]
fn the_default_row_limit_is_10_mib() {
    let dir = tempfile::tempdir().unwrap();
    let master = Master::start(&dir.path().join("data"), &[]);
    let big = format!("{{\"pad\":\"{}\"}}", "x".repeat(10 * 1024 * 1024));
    let err = fails(&master.talon_stdin(&["events", "push", QUEUE], &big), 1);
    assert!(
        err.contains("over the row size limit of 10485760 bytes"),
        "{err}"
    );
    let fits = format!("{{\"pad\":\"{}\"}}", "x".repeat(9 * 1024 * 1024));
    ok(&master.talon_stdin(&["events", "push", QUEUE], &fits));
    assert_eq!(stored(&master), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_artifacts_are_refused_with_their_place() {
    let dir = tempfile::tempdir().unwrap();
    let master = Master::start(&dir.path().join("data"), &[]);
    let files = dir.path();
    let write = |name: &str, text: &str| {
        let p = files.join(name);
        std::fs::write(&p, text).unwrap();
        p.to_str().unwrap().to_string()
    };
    let bad_yaml = write(
        "bad.yaml",
        "name: Custom.Bad\ntype: SERVER_EVENT\nsources:\n  - query: [unclosed\n",
    );
    let broken = write("broken.yaml", "name: Custom.Broken\n  type: x\n");
    let other_type = write(
        "alerts.yaml",
        "name: Server.Internal.Alerts\ntype: INTERNAL\n",
    );
    let bad_name = write("name.yaml", "description: x\nname: Custom.9Lives\n");
    let unknown_key = write(
        "key.yaml",
        "name: Custom.K\n\nparameters:\n- name: P\n  defualt: 1\n",
    );

    let err = fails(&master.talon(&["artifacts", "add", &bad_yaml]), 1);
    assert!(
        err.contains(&format!(
            "{bad_yaml}:4:12: sources[0].query: invalid type: sequence, expected a string"
        )),
        "{err}"
    );
    let err = fails(&master.talon(&["artifacts", "add", &broken]), 1);
    assert!(
        err.contains(&format!(
            "{broken}:2:7: mapping values are not allowed in this context"
        )),
        "{err}"
    );
    let err = fails(&master.talon(&["artifacts", "add", &other_type]), 1);
    assert!(err.contains(&format!("{other_type}:1:1: artifact Server.Internal.Alerts is the built-in SERVER_EVENT queue and cannot be redefined as INTERNAL")), "{err}");
    let err = fails(&master.talon(&["artifacts", "add", &bad_name]), 1);
    assert!(
        err.contains(&format!(
            "{bad_name}:2:1: artifact name \"Custom.9Lives\": part \"9Lives\" starts with a digit"
        )),
        "{err}"
    );
    let err = fails(&master.talon(&["artifacts", "add", &unknown_key]), 1);
    assert!(
        err.contains(&format!(
            "{unknown_key}:5:3: parameters[0]: unknown field `defualt`"
        )),
        "{err}"
    );

    // verify reports the same, offline, one line per file, exit 1.
    let out = talon_tests::talon(
        "127.0.0.1:1",
        &["artifacts", "verify", files.to_str().unwrap()],
        None,
    );
    fails(&out, 1);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout.lines().count(), 5, "{stdout}");
    assert!(
        stdout.contains(&format!(
            "{unknown_key}:5:3: parameters[0]: unknown field `defualt`"
        )),
        "{stdout}"
    );

    // Through the API: nothing was added, and the server still serves.
    let mut c = master.client().await;
    let e = c
        .add_artifact(SetArtifactRequest {
            yaml: "name: [".into(),
            origin: "api.yaml".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().starts_with("api.yaml:1:"), "{}", e.message());
    let list = ok(&master.talon(&["artifacts", "list", "--format", "json"]));
    assert!(!list.contains("Custom."), "{list}");
    ok(&master.talon(&["events", "push", QUEUE, "--row", "{}"]));
}

/// Sends one raw HTTP/2 gRPC request with `body` as the message; returns what came back.
async fn raw_grpc_call(addr: std::net::SocketAddr, path: &str, body: &[u8]) -> String {
    let channel =
        talon_tests::deployment::admin_channel(addr, &talon_tests::deployment::admin_config())
            .await;
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let codec = talon_tests::RawCodec;
    let res: Result<tonic::Response<Vec<u8>>, tonic::Status> = grpc
        .unary(
            tonic::Request::new(body.to_vec()),
            path.parse().unwrap(),
            codec,
        )
        .await;
    match res {
        Ok(r) => format!("grpc-status: 0 ({} bytes)", r.into_inner().len()),
        Err(s) => format!("grpc-status: {:?} {}", s.code(), s.message()),
    }
}

/// A query that calls itself (directly, through a parameter, or through another stored
/// query) used to overflow the master's stack and abort it; it now stops with an error
/// naming the query, and the master keeps answering.
#[test]
fn a_self_referencing_query_is_stopped_and_the_master_survives() {
    let dir = tempfile::tempdir().unwrap();
    let master = Master::start(&dir.path().join("data"), &[]);
    for q in [
        "LET q = SELECT * FROM q SELECT * FROM q",
        "LET a = SELECT * FROM b LET b = SELECT * FROM a SELECT * FROM a",
    ] {
        let out = master.talon(&["query", q]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("recursed deeper than 25 calls"),
            "{q}: {stderr}"
        );
        assert!(
            String::from_utf8_lossy(&out.stdout).trim().is_empty(),
            "{q}"
        );
    }
    assert_eq!(
        ok(&master.talon(&["query", "SELECT 1 AS one FROM scope()"])).trim(),
        r#"{"one":1}"#,
        "the master still answers: {}",
        master.stderr()
    );
}

/// Item 1 of the hardening issue, the artifact side: `artifacts verify` (and so `add`)
/// accepted a source whose LET query reads itself; both now refuse it, naming the LET.
/// A LET with parameters may recurse towards a base case and is accepted.
#[test]
fn an_artifact_whose_query_reads_itself_is_refused_by_verify_and_add() {
    let dir = tempfile::tempdir().unwrap();
    let master = Master::start(&dir.path().join("data"), &[]);
    let endless = dir.path().join("loop.yaml");
    std::fs::write(
        &endless,
        "name: Custom.Loop\ntype: SERVER_EVENT\nsources:\n- query: |\n    LET a = SELECT * FROM b\n    LET b = SELECT * FROM a\n    SELECT * FROM a\n",
    )
    .unwrap();
    let file = endless.to_str().unwrap();
    let out = master.talon(&["artifacts", "verify", file]);
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("LET a is a query that reads itself"),
        "{text}"
    );
    assert!(text.contains(":5:"), "the place in the file: {text}");
    let err = fails(&master.talon(&["artifacts", "add", file]), 1);
    assert!(err.contains("reads itself"), "{err}");
    let countdown = dir.path().join("countdown.yaml");
    std::fs::write(
        &countdown,
        "name: Custom.Countdown\ntype: SERVER\nsources:\n- query: |\n    LET f(n) = SELECT * FROM if(condition=n > 0, then={SELECT * FROM f(n=n - 1)}, else={SELECT n AS N FROM scope()})\n    SELECT * FROM f(n=3)\n",
    )
    .unwrap();
    ok(&master.talon(&["artifacts", "verify", countdown.to_str().unwrap()]));
}
