//! The frontend's own HTTP/2 server side, spoken to byte by byte over loopback: it keeps
//! to the client's flow-control window, refuses a second concurrent stream, ends a
//! connection that is not HTTP/2 or sends an oversized frame with a GOAWAY naming why,
//! without disturbing a real gRPC client's stream, takes client messages larger than the
//! window it grants, and ends streams with UNAVAILABLE on shutdown.

use std::time::Duration;

use prost::Message;
use talon_core::Shutdown;
use talon_proto::client::frontend_client::FrontendClient;
use talon_proto::client::*;
use talon_shared::frontend::http2::{self, code, flag, kind, setting, Head};
use talon_shared::parts::Parts;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

struct Server {
    addr: std::net::SocketAddr,
    shutdown: Shutdown,
    served: tokio::task::JoinHandle<std::io::Result<()>>,
    _dir: tempfile::TempDir,
}

async fn server() -> Server {
    server_with_limit(1 << 20).await
}

async fn server_with_limit(max_message: usize) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let parts = Parts::standalone("test", dir.path().join("t.redb"))
        .await
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = parts.intake.clone();
    let served = parts.intake.spawn(
        "frontend",
        talon_shared::frontend::serve(
            parts.frontend.clone(),
            listener,
            None,
            max_message,
            max_message,
            shutdown.clone(),
        ),
    );
    Server {
        addr,
        shutdown,
        served,
        _dir: dir,
    }
}

fn grpc_frame(msg: &impl Message) -> Vec<u8> {
    let body = msg.encode_to_vec();
    let mut out = vec![0];
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

fn hello(id: &str) -> ClientMessage {
    ClientMessage {
        msg: Some(client_message::Msg::Hello(Hello {
            client_id: id.into(),
            hostname: "raw".into(),
            ..Hello::default()
        })),
    }
}

type Outgoing = tokio::sync::mpsc::Sender<ClientMessage>;

/// A real gRPC client's session stream: the sender of its messages and the server's
/// stream, after the welcome.
async fn session(s: &Server, id: &str) -> (Outgoing, tonic::Streaming<ServerMessage>) {
    let mut client = FrontendClient::connect(format!("http://{}", s.addr))
        .await
        .unwrap()
        .max_encoding_message_size(8 << 20);
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(hello(id)).await.unwrap();
    let mut stream = client
        .session(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let welcome = stream.message().await.unwrap().expect("welcome");
    assert!(matches!(welcome.msg, Some(server_message::Msg::Welcome(_))));
    (tx, stream)
}

/// The next server message that `pick` accepts, or how the stream ended.
async fn next_matching<T>(
    stream: &mut tonic::Streaming<ServerMessage>,
    mut pick: impl FnMut(ServerMessage) -> Option<T>,
) -> Result<T, tonic::Status> {
    loop {
        let m = tokio::time::timeout(Duration::from_secs(20), stream.message())
            .await
            .expect("an answer within 20 s")?
            .expect("a message or a status, not a silent end");
        if let Some(t) = pick(m) {
            return Ok(t);
        }
    }
}

/// A client that writes frames by hand.
struct Raw {
    sock: TcpStream,
    buf: Vec<u8>,
}

impl Raw {
    /// Connects and sends the preface and settings with the given initial window.
    async fn connect(addr: std::net::SocketAddr, initial_window: u32) -> Raw {
        let mut sock = TcpStream::connect(addr).await.unwrap();
        let mut out = http2::PREFACE.to_vec();
        http2::put_settings(&mut out, &[(setting::INITIAL_WINDOW_SIZE, initial_window)]);
        sock.write_all(&out).await.unwrap();
        Raw {
            sock,
            buf: Vec::new(),
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.sock.write_all(bytes).await.unwrap();
    }

    /// Opens a session stream with hello.
    async fn open(&mut self, stream: u32, id: &str) {
        let mut block = Vec::new();
        for (name, value) in [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", "/talon.client.Frontend/Session"),
            (":authority", "test"),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
        ] {
            http2::put_literal(&mut block, name, value.as_bytes());
        }
        let mut out = Vec::new();
        http2::put_frame(&mut out, kind::HEADERS, flag::END_HEADERS, stream, &block);
        http2::put_frame(&mut out, kind::DATA, 0, stream, &grpc_frame(&hello(id)));
        self.send(&out).await;
    }

    /// The next frame, or None when the server closed the connection.
    async fn frame(&mut self) -> Option<(Head, Vec<u8>)> {
        loop {
            if self.buf.len() >= http2::FRAME_HEADER {
                let head = Head::parse(&self.buf);
                if self.buf.len() >= http2::FRAME_HEADER + head.len {
                    let payload =
                        self.buf[http2::FRAME_HEADER..http2::FRAME_HEADER + head.len].to_vec();
                    self.buf.drain(..http2::FRAME_HEADER + head.len);
                    return Some((head, payload));
                }
            }
            let mut chunk = [0u8; 4096];
            let n = tokio::time::timeout(Duration::from_secs(10), self.sock.read(&mut chunk))
                .await
                .expect("the server answers within 10 s")
                .unwrap_or(0);
            if n == 0 {
                return None;
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Frames until one of `kind` (acknowledging settings and pings on the way).
    async fn until(&mut self, want: u8) -> (Head, Vec<u8>) {
        loop {
            let (head, payload) = self.frame().await.expect("a frame before the close");
            if head.kind == want {
                return (head, payload);
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_messages_keep_to_the_clients_window() {
    let s = server().await;
    // A 7-byte window: welcome and table must come in frames of at most 7 bytes, each
    // only after the client grants more.
    let mut raw = Raw::connect(s.addr, 7).await;
    raw.open(1, "C.00000000000000a1").await;
    let mut data = Vec::new();
    let mut frames = 0;
    let mut messages = Vec::new();
    while messages.len() < 2 {
        let (head, payload) = raw.frame().await.expect("frames");
        if head.kind != kind::DATA {
            continue;
        }
        assert_eq!(head.stream, 1);
        assert!(
            payload.len() <= 7,
            "a DATA frame of {} bytes",
            payload.len()
        );
        frames += 1;
        data.extend_from_slice(&payload);
        while data.len() >= 5 {
            let len = u32::from_be_bytes([data[1], data[2], data[3], data[4]]) as usize;
            if data.len() < 5 + len {
                break;
            }
            messages.push(ServerMessage::decode(&data[5..5 + len]).unwrap());
            data.drain(..5 + len);
        }
        let mut grant = Vec::new();
        http2::put_window_update(&mut grant, 1, payload.len() as u32);
        raw.send(&grant).await;
    }
    assert!(frames > 2, "the messages were split: {frames} frames");
    assert!(matches!(
        messages[0].msg,
        Some(server_message::Msg::Welcome(ref w)) if w.client_id == "C.00000000000000a1"
    ));
    assert!(matches!(
        messages[1].msg,
        Some(server_message::Msg::EventTable(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_concurrent_stream_is_refused_and_the_first_goes_on() {
    let s = server().await;
    let mut raw = Raw::connect(s.addr, 1 << 20).await;
    raw.open(1, "C.00000000000000a2").await;
    raw.until(kind::DATA).await;
    raw.open(3, "C.00000000000000a3").await;
    let (head, payload) = raw.until(kind::RST_STREAM).await;
    assert_eq!(head.stream, 3);
    assert_eq!(payload, code::REFUSED_STREAM.to_be_bytes());
    // Stream 1 still answers a keepalive.
    let keepalive = ClientMessage {
        msg: Some(client_message::Msg::Keepalive(Keepalive::default())),
    };
    let mut out = Vec::new();
    http2::put_frame(&mut out, kind::DATA, 0, 1, &grpc_frame(&keepalive));
    raw.send(&out).await;
    loop {
        let (head, payload) = raw.until(kind::DATA).await;
        assert_eq!(head.stream, 1);
        if payload.len() >= 5
            && matches!(
                ServerMessage::decode(&payload[5..]).map(|m| m.msg),
                Ok(Some(server_message::Msg::Keepalive(_)))
            )
        {
            break;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_connections_get_a_goaway_naming_why_and_others_stream_on() {
    let s = server().await;
    let (tx, mut stream) = session(&s, "C.00000000000000a4").await;

    // Not HTTP/2 at all.
    let mut sock = TcpStream::connect(s.addr).await.unwrap();
    sock.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut raw = Raw {
        sock,
        buf: Vec::new(),
    };
    let (head, payload) = raw.until(kind::GOAWAY).await;
    assert_eq!(head.stream, 0);
    assert_eq!(payload[4..8], code::PROTOCOL_ERROR.to_be_bytes());
    assert!(String::from_utf8_lossy(&payload[8..]).contains("connection preface is missing"));
    assert!(raw.frame().await.is_none(), "the connection is closed");

    // A frame larger than the 16 KiB this server allows.
    let mut raw = Raw::connect(s.addr, 65_535).await;
    let mut out = Vec::new();
    http2::put_head(&mut out, 20_000, kind::DATA, 0, 1);
    out.resize(out.len() + 100, 0);
    raw.send(&out).await;
    let (_, payload) = raw.until(kind::GOAWAY).await;
    assert_eq!(payload[4..8], code::FRAME_SIZE_ERROR.to_be_bytes());
    assert!(String::from_utf8_lossy(&payload[8..]).contains("20000 bytes"));

    // HEADERS whose block HPACK cannot decode (an index far past both tables).
    let mut raw = Raw::connect(s.addr, 65_535).await;
    let mut out = Vec::new();
    http2::put_frame(
        &mut out,
        kind::HEADERS,
        flag::END_HEADERS,
        1,
        &[0xff, 0xff, 0x7f],
    );
    raw.send(&out).await;
    let (_, payload) = raw.until(kind::GOAWAY).await;
    assert_eq!(payload[4..8], code::COMPRESSION_ERROR.to_be_bytes());

    // The good client's stream goes on.
    tx.send(ClientMessage {
        msg: Some(client_message::Msg::Keepalive(Keepalive::default())),
    })
    .await
    .unwrap();
    next_matching(&mut stream, |m| {
        matches!(m.msg, Some(server_message::Msg::Keepalive(_))).then_some(())
    })
    .await
    .expect("a keepalive answer");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_streams_with_unavailable_and_serve_returns() {
    let s = server().await;
    let (tx, mut stream) = session(&s, "C.00000000000000a5").await;
    s.shutdown.cancel();
    let status = next_matching(&mut stream, |_| None::<()>)
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(status.message().contains("shutting down"), "{status:?}");
    tokio::time::timeout(Duration::from_secs(10), s.served)
        .await
        .expect("serve returns once its connections closed")
        .unwrap()
        .unwrap();
    drop(tx);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_message_larger_than_the_window_arrives_whole() {
    let s = server_with_limit(8 << 20).await;
    let (tx, mut stream) = session(&s, "C.00000000000000a6").await;
    // 3 MiB of rows in one message, three times the 1 MiB window the server grants.
    let rows: Vec<String> = (0..3072)
        .map(|i| format!("{{\"N\":{i},\"Pad\":\"{}\"}}", "x".repeat(1000)))
        .collect();
    tx.send(ClientMessage {
        msg: Some(client_message::Msg::Events(EventBatch {
            batch_id: 7,
            incarnation: 1,
            queues: vec![QueueRows {
                artifact: "Generic.Client.Stats".into(),
                rows_json: rows,
            }],
        })),
    })
    .await
    .unwrap();
    let ack = next_matching(&mut stream, |m| match m.msg {
        Some(server_message::Msg::Ack(ack)) => Some(ack),
        _ => None,
    })
    .await
    .unwrap();
    assert_eq!(ack.batch_id, 7);
    assert_eq!(ack.error, "", "the batch was accepted");
}
