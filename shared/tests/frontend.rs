//! The frontend over real gRPC on loopback: a notification naming a connected client wakes
//! it (it receives its event table again); one naming another client does not; a burst
//! inside the debounce window wakes it once.

use std::time::Duration;

use serde_json::json;
use talon_proto::client::frontend_client::FrontendClient;
use talon_proto::client::*;
use talon_shared::parts::Parts;
use talon_shared::queue::ROOT_ORG;

async fn next(stream: &mut tonic::Streaming<ServerMessage>) -> ServerMessage {
    tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("a message")
        .unwrap()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notification_wakes_the_named_client() {
    let dir = tempfile::tempdir().unwrap();
    let parts = Parts::standalone("test", dir.path().join("t.redb"))
        .await
        .unwrap();
    let (qm, frontend, shutdown) = (
        parts.qm.clone(),
        parts.frontend.clone(),
        parts.intake.clone(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    parts.intake.spawn(
        "frontend",
        talon_shared::frontend::serve(frontend, listener, None, 1 << 20, 1 << 20, shutdown),
    );
    let mut client = FrontendClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let id = "C.00000000000000ab";
    tx.send(ClientMessage {
        msg: Some(client_message::Msg::Hello(Hello {
            client_id: id.into(),
            ..Hello::default()
        })),
    })
    .await
    .unwrap();
    let mut stream = client
        .session(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    assert!(matches!(
        next(&mut stream).await.msg,
        Some(server_message::Msg::Welcome(_))
    ));
    assert!(matches!(
        next(&mut stream).await.msg,
        Some(server_message::Msg::EventTable(_))
    ));
    let notify = |target: &'static str| {
        let qm = qm.clone();
        async move {
            let row = json!({"Target": target, "Tag": "test"});
            qm.push(
                ROOT_ORG,
                "Server.Internal.Notifications",
                vec![row.as_object().unwrap().clone()],
                "server",
                "",
            )
            .await
            .unwrap();
        }
    };
    notify("C.00000000000000ff").await;
    notify(id).await;
    // Exactly one wake-up arrives: the one for this client.
    assert!(matches!(
        next(&mut stream).await.msg,
        Some(server_message::Msg::EventTable(_))
    ));
    let quiet = tokio::time::timeout(Duration::from_millis(300), stream.message()).await;
    assert!(quiet.is_err(), "an unexpected message: {quiet:?}");
    // A burst inside the debounce window: one wake-up, not five, and not none.
    for _ in 0..5 {
        notify(id).await;
    }
    assert!(matches!(
        next(&mut stream).await.msg,
        Some(server_message::Msg::EventTable(_))
    ));
    let quiet = tokio::time::timeout(Duration::from_millis(1500), stream.message()).await;
    assert!(quiet.is_err(), "a burst woke the client twice: {quiet:?}");
    drop(tx);
}
