//! A connection fed mangled bytes: errors or work, never a panic.

use super::grpc::tests::framed;
use super::*;
use crate::frontend::http2::flag;
use talon_core::Shutdown;
use talon_proto::client::ClientMessage;

/// What a real client sends first: preface, settings, a session request with hello, a
/// window update, a ping and a keepalive message.
fn client_bytes() -> Vec<u8> {
    let mut out = http2::PREFACE.to_vec();
    http2::put_settings(&mut out, &[(setting::INITIAL_WINDOW_SIZE, 100)]);
    let mut block = Vec::new();
    for (name, value) in [
        (":method", "POST"),
        (":path", "/talon.client.Frontend/Session"),
        ("content-type", "application/grpc"),
    ] {
        http2::put_literal(&mut block, name, value.as_bytes());
    }
    http2::put_frame(&mut out, kind::HEADERS, flag::END_HEADERS, 1, &block);
    let hello = ClientMessage {
        msg: Some(talon_proto::client::client_message::Msg::Hello(
            talon_proto::client::Hello {
                client_id: "C.0000000000000001".into(),
                ..Default::default()
            },
        )),
    };
    http2::put_frame(&mut out, kind::DATA, flag::PADDED, 1, &{
        let mut p = vec![2];
        p.extend_from_slice(&framed(&hello));
        p.extend_from_slice(&[0, 0]);
        p
    });
    http2::put_window_update(&mut out, 1, 1000);
    http2::put_frame(&mut out, kind::PING, 0, 0, &[7; 8]);
    let keepalive = ClientMessage {
        msg: Some(talon_proto::client::client_message::Msg::Keepalive(
            Default::default(),
        )),
    };
    http2::put_frame(
        &mut out,
        kind::DATA,
        flag::END_STREAM,
        1,
        &framed(&keepalive),
    );
    out
}

#[tokio::test]
async fn mangled_client_bytes_give_errors_never_panics() {
    let dir = tempfile::tempdir().unwrap();
    let parts = crate::parts::Parts::standalone("test", dir.path().join("t.redb"))
        .await
        .unwrap();
    let fe = parts.frontend.clone();
    let limits = Limits {
        max_decode: 1 << 16,
        max_encode: 1 << 16,
    };
    let valid = client_bytes();
    // The unmangled bytes are a session: hello is taken as work, nothing fails.
    let mut c = Conn::new(fe.clone(), "t".into(), limits, Shutdown::default());
    c.receive(&valid).unwrap();
    assert!(c.next_work().unwrap().is_some(), "hello becomes work");
    // Mangled copies (bytes changed, cut, repeated), fed in chunks of every size.
    let mut seed = 0x2545_f491_4f6c_dd1d_u64;
    let mut next = move |below: usize| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed % below as u64) as usize
    };
    let (mut errors, mut works) = (0, 0);
    for _ in 0..50_000 {
        let mut bytes = valid.clone();
        for _ in 0..1 + next(4) {
            match next(3) {
                0 => {
                    let at = next(bytes.len());
                    bytes[at] = next(256) as u8;
                }
                1 => bytes.truncate(next(bytes.len()) + 1),
                _ => {
                    let at = next(bytes.len());
                    let piece = bytes[at..(at + next(32)).min(bytes.len())].to_vec();
                    bytes.splice(at..at, piece);
                }
            }
        }
        let mut c = Conn::new(fe.clone(), "t".into(), limits, Shutdown::default());
        let mut rest = &bytes[..];
        while !rest.is_empty() {
            let n = (1 + next(64)).min(rest.len());
            if let Err(e) = c.receive(&rest[..n]) {
                assert!(!e.reason.is_empty());
                errors += 1;
                break;
            }
            rest = &rest[n..];
            match c.next_work() {
                Ok(Some(_)) => works += 1,
                Ok(None) => {}
                Err(_) => break,
            }
            c.grant();
            c.pump().unwrap();
        }
    }
    assert!(
        errors > 100 && works > 100,
        "{errors} errors, {works} works"
    );
}
