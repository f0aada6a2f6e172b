//! The shipped Server.Powershell.EncodedCommand artifact, run as the monitoring table runs
//! it, over rows pushed to the Windows.Events.ProcessCreation queue by a client.

use std::time::Duration;

use futures::StreamExt;
use serde_json::json;
use talon_artifacts::compile::compile;
use talon_shared::parts::Parts;
use talon_shared::queue::ROOT_ORG;
use talon_shared::vql_host::{Output, Vql};
use talon_vql::engine::QueryInfo;
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encoded_powershell_is_decoded_and_alerted() {
    let dir = tempfile::tempdir().unwrap();
    let parts = Parts::standalone("test", dir.path().join("t.redb"))
        .await
        .unwrap();
    let qm = parts.qm.clone();
    let vql = Vql::new(
        qm.clone(),
        parts.store.clone(),
        parts.repo.clone(),
        parts.services.clone(),
    );
    let sources = compile(&parts.repo, "Server.Powershell.EncodedCommand", &[]).unwrap();
    let info = QueryInfo {
        artifact: "Server.Powershell.EncodedCommand".into(),
        artifact_type: "SERVER_EVENT".into(),
        ..QueryInfo::default()
    };
    let cancel = CancellationToken::new();
    let mut out = vql
        .run(
            &sources[0].query,
            sources[0].env.clone(),
            info,
            "server",
            cancel.clone(),
        )
        .unwrap();
    let mut alerts = qm
        .watch(ROOT_ORG, "Server.Internal.Alerts", "test")
        .await
        .unwrap();

    // The watcher is registered once the query has started; rows pushed after that count.
    let watching = || {
        qm.stats(ROOT_ORG)
            .iter()
            .any(|s| s.name == "Windows.Events.ProcessCreation" && s.watchers == 1)
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut first = Box::pin(out.next());
    while !watching() {
        assert!(
            std::time::Instant::now() < deadline,
            "the query never watched the queue"
        );
        tokio::select! {
            o = &mut first => panic!("query ended early: {o:?}"),
            _ = tokio::time::sleep(Duration::from_millis(20)) => {}
        }
    }
    // "Write-Output hi" as UTF-16LE base64.
    let blob = "VwByAGkAdABlAC0ATwB1AHQAcAB1AHQAIABoAGkA";
    let rows = [
        json!({"ClientId": "C.0123456789abcdef", "Pid": 10, "Name": "notepad.exe", "CommandLine": "notepad.exe -enc x"}),
        json!({"ClientId": "C.0123456789abcdef", "Pid": 11, "Name": "powershell.exe", "CommandLine": format!("powershell.exe -NoProfile -EncodedCommand {blob}")}),
        json!({"ClientId": "C.0123456789abcdef", "Pid": 12, "Name": "powershell.exe", "CommandLine": "powershell.exe -File x.ps1"}),
        json!({"ClientId": "C.fedcba9876543210", "Pid": 13, "Name": "pwsh", "CommandLine": format!("pwsh -e {blob}")}),
    ];
    for r in rows {
        let m = r.as_object().unwrap().clone();
        let client = m["ClientId"].as_str().unwrap().to_string();
        qm.push(
            ROOT_ORG,
            "Windows.Events.ProcessCreation",
            vec![m],
            &client,
            &client,
        )
        .await
        .unwrap();
    }
    let mut got = Vec::new();
    drop(first);
    while got.len() < 2 {
        let o = tokio::time::timeout(Duration::from_secs(10), out.next())
            .await
            .expect("rows")
            .expect("query runs");
        match o {
            Output::Row(j) => got.push(serde_json::from_str::<serde_json::Value>(&j).unwrap()),
            Output::Log(l) => eprintln!("log: {l:?}"),
        }
    }
    assert_eq!(got[0]["Pid"], 11);
    assert_eq!(got[0]["Script"], "Write-Output hi");
    assert_eq!(got[1]["Pid"], 13);
    assert_eq!(got[1]["ClientId"], "C.fedcba9876543210");
    // Each distinct command line raised one alert.
    for _ in 0..2 {
        let ev = tokio::time::timeout(Duration::from_secs(10), alerts.next())
            .await
            .unwrap()
            .unwrap();
        let v: serde_json::Value = serde_json::from_str(&ev.row.json).unwrap();
        assert!(
            v["name"]
                .as_str()
                .unwrap()
                .starts_with("PowerShell encoded command on C."),
            "{v}"
        );
        assert_eq!(v["artifact"], "Server.Powershell.EncodedCommand");
    }
    cancel.cancel();
}
