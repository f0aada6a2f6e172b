//! gRPC messages on a session stream: taking whole client messages from what arrived, and
//! the response headers and trailers (with the status) this server sends.

use prost::Message;
use talon_proto::client::ClientMessage;
use tonic::Status;

use super::http2::{self, flag, kind};

/// Takes one whole gRPC message from the front of `inbox`, if it holds one.
#[allow(clippy::result_large_err)]
pub(super) fn take_message(
    inbox: &mut Vec<u8>,
    max: usize,
) -> Result<Option<ClientMessage>, Status> {
    if inbox.len() < 5 {
        return Ok(None);
    }
    if inbox[0] != 0 {
        return Err(Status::unimplemented(
            "compressed messages are not supported",
        ));
    }
    let len = u32::from_be_bytes([inbox[1], inbox[2], inbox[3], inbox[4]]) as usize;
    if len > max {
        return Err(Status::out_of_range(format!(
            "client message length too large: found {len} bytes, the limit is {max} bytes"
        )));
    }
    if inbox.len() < 5 + len {
        return Ok(None);
    }
    let msg = ClientMessage::decode(&inbox[5..5 + len])
        .map_err(|e| Status::invalid_argument(format!("could not decode the client message: {e}")));
    if inbox.len() == 5 + len {
        *inbox = Vec::new();
    } else {
        inbox.drain(..5 + len);
    }
    msg.map(Some)
}

fn put_status_headers(block: &mut Vec<u8>) {
    block.push(http2::STATUS_200);
    http2::put_literal(block, "content-type", b"application/grpc");
}

pub(super) fn put_response_headers(out: &mut Vec<u8>, stream: u32) {
    let mut block = Vec::with_capacity(32);
    put_status_headers(&mut block);
    http2::put_frame(out, kind::HEADERS, flag::END_HEADERS, stream, &block);
}

pub(super) fn put_trailers(out: &mut Vec<u8>, stream: u32, trailers_only: bool, status: &Status) {
    let mut block = Vec::with_capacity(64);
    if trailers_only {
        put_status_headers(&mut block);
    }
    let code = (status.code() as i32).to_string();
    http2::put_literal(&mut block, "grpc-status", code.as_bytes());
    if !status.message().is_empty() {
        let text: String = status.message().chars().take(4096).collect();
        http2::put_literal(&mut block, "grpc-message", &http2::grpc_message(&text));
    }
    http2::put_frame(
        out,
        kind::HEADERS,
        flag::END_HEADERS | flag::END_STREAM,
        stream,
        &block,
    );
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::frontend::http2::{Head, FRAME_HEADER};

    /// A message as gRPC frames it on the stream.
    pub(in crate::frontend::conn) fn framed(msg: &ClientMessage) -> Vec<u8> {
        let body = msg.encode_to_vec();
        let mut out = vec![0];
        out.extend_from_slice(&(body.len() as u32).to_be_bytes());
        out.extend_from_slice(&body);
        out
    }

    #[test]
    fn messages_are_taken_whole_and_one_at_a_time() {
        let keepalive = ClientMessage {
            msg: Some(talon_proto::client::client_message::Msg::Keepalive(
                Default::default(),
            )),
        };
        let mut inbox = framed(&keepalive);
        inbox.extend_from_slice(&framed(&keepalive));
        let half = inbox.len() - 1;
        let mut partial = inbox[..half].to_vec();
        assert_eq!(
            take_message(&mut partial, 100).unwrap(),
            Some(keepalive.clone())
        );
        assert_eq!(
            take_message(&mut partial, 100).unwrap(),
            None,
            "half a message"
        );
        assert_eq!(
            take_message(&mut inbox, 100).unwrap(),
            Some(keepalive.clone())
        );
        assert_eq!(take_message(&mut inbox, 100).unwrap(), Some(keepalive));
        assert!(inbox.is_empty() && inbox.capacity() == 0, "nothing kept");
    }

    #[test]
    fn oversized_compressed_and_undecodable_messages_are_refused() {
        let mut big = vec![0, 0, 1, 0, 0];
        let e = take_message(&mut big, 1000).unwrap_err();
        assert_eq!(e.code(), tonic::Code::OutOfRange);
        assert!(
            e.message().contains("found 65536 bytes, the limit is 1000"),
            "{e:?}"
        );
        let e = take_message(&mut vec![1, 0, 0, 0, 0], 1000).unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unimplemented);
        let e = take_message(&mut vec![0, 0, 0, 0, 3, 0x0a, 0xff, 0xff], 1000).unwrap_err();
        assert!(e.message().contains("could not decode"), "{e:?}");
    }

    #[test]
    fn trailers_carry_the_status_code_and_encoded_message() {
        let mut out = Vec::new();
        put_trailers(&mut out, 1, true, &Status::not_found("no 100%"));
        let head = Head::parse(&out);
        assert_eq!(head.flags, flag::END_HEADERS | flag::END_STREAM);
        let headers = loona_hpack::Decoder::new()
            .decode(&out[FRAME_HEADER..])
            .unwrap();
        let names: Vec<_> = headers
            .iter()
            .map(|(n, v)| {
                (
                    String::from_utf8_lossy(n).into_owned(),
                    String::from_utf8_lossy(v).into_owned(),
                )
            })
            .collect();
        assert_eq!(
            names,
            vec![
                (":status".into(), "200".into()),
                ("content-type".into(), "application/grpc".into()),
                ("grpc-status".into(), "5".into()),
                ("grpc-message".into(), "no 100%25".into()),
            ]
        );
    }
}
