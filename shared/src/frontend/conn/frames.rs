//! Frames a client sends: the preface, then DATA, HEADERS (and CONTINUATION), SETTINGS,
//! PING, WINDOW_UPDATE, RST_STREAM and GOAWAY, each checked and applied to the connection.

use tonic::Status;

use super::http2::{self, code, flag, kind, setting, ConnError, Head};
use super::{Conn, OutQueue, Stream, MAX_HEADER_BLOCK, RECV_WINDOW, SESSION_PATH};

impl Conn {
    /// Bytes from the socket.
    pub(super) fn receive(&mut self, chunk: &[u8]) -> Result<(), ConnError> {
        if self.rbuf.is_empty() {
            let used = self.process(chunk)?;
            self.rbuf.extend_from_slice(&chunk[used..]);
        } else {
            let mut buf = std::mem::take(&mut self.rbuf);
            buf.extend_from_slice(chunk);
            let used = self.process(&buf)?;
            if used == buf.len() {
                buf = Vec::new();
            } else {
                buf.drain(..used);
            }
            self.rbuf = buf;
        }
        Ok(())
    }

    /// Handles every whole frame in `buf`; returns how many bytes it used.
    fn process(&mut self, buf: &[u8]) -> Result<usize, ConnError> {
        let mut at = 0;
        if self.preface_seen < http2::PREFACE.len() {
            let want = &http2::PREFACE[self.preface_seen..];
            let n = want.len().min(buf.len());
            if buf[..n] != want[..n] {
                return Err(ConnError::protocol(
                    "not an HTTP/2 client: the connection preface is missing",
                ));
            }
            self.preface_seen += n;
            at = n;
        }
        while buf.len() - at >= http2::FRAME_HEADER {
            let head = Head::parse(&buf[at..]);
            if head.len > http2::DEFAULT_MAX_FRAME {
                return Err(ConnError::new(
                    code::FRAME_SIZE_ERROR,
                    format!(
                        "a frame of {} bytes is over the {} allowed",
                        head.len,
                        http2::DEFAULT_MAX_FRAME
                    ),
                ));
            }
            let end = at + http2::FRAME_HEADER + head.len;
            if buf.len() < end {
                break;
            }
            self.frame(head, &buf[at + http2::FRAME_HEADER..end])?;
            at = end;
        }
        Ok(at)
    }

    fn frame(&mut self, head: Head, payload: &[u8]) -> Result<(), ConnError> {
        if let Some((stream, _, _)) = &self.continuation {
            if head.kind != kind::CONTINUATION || head.stream != *stream {
                return Err(ConnError::protocol(
                    "a header block was interrupted before its END_HEADERS",
                ));
            }
        }
        match head.kind {
            kind::DATA => self.data(head, payload),
            kind::HEADERS => {
                if head.stream == 0 {
                    return Err(ConnError::protocol("HEADERS on stream 0"));
                }
                let range = http2::unpad(&head, payload)?;
                let block = payload[range].to_vec();
                let end_stream = head.flags & flag::END_STREAM != 0;
                if head.flags & flag::END_HEADERS != 0 {
                    self.headers(head.stream, end_stream, &block)
                } else {
                    self.continuation = Some((head.stream, end_stream, block));
                    Ok(())
                }
            }
            kind::CONTINUATION => {
                let Some((stream, end_stream, mut block)) = self.continuation.take() else {
                    return Err(ConnError::protocol("CONTINUATION without a header block"));
                };
                block.extend_from_slice(payload);
                if block.len() > MAX_HEADER_BLOCK {
                    return Err(ConnError::protocol(format!(
                        "a header block over {MAX_HEADER_BLOCK} bytes"
                    )));
                }
                if head.flags & flag::END_HEADERS != 0 {
                    self.headers(stream, end_stream, &block)
                } else {
                    self.continuation = Some((stream, end_stream, block));
                    Ok(())
                }
            }
            kind::SETTINGS => self.settings(head, payload),
            kind::PING => {
                if payload.len() != 8 || head.stream != 0 {
                    return Err(ConnError::new(code::FRAME_SIZE_ERROR, "a malformed PING"));
                }
                if head.flags & flag::ACK != 0 {
                    self.ping_outstanding = false;
                } else {
                    http2::put_frame(&mut self.wbuf, kind::PING, flag::ACK, 0, payload);
                }
                Ok(())
            }
            kind::WINDOW_UPDATE => self.window_update(head, payload),
            kind::RST_STREAM => {
                if payload.len() != 4 || head.stream == 0 {
                    return Err(ConnError::protocol("a malformed RST_STREAM"));
                }
                if self.stream.as_ref().is_some_and(|s| s.id == head.stream) {
                    let stream = self.stream.take().expect("stream");
                    self.end_session(stream.session);
                }
                Ok(())
            }
            kind::GOAWAY => {
                // The client opens no more streams; the current one may go on.
                Ok(())
            }
            kind::PUSH_PROMISE => Err(ConnError::protocol("a client may not push")),
            // PRIORITY and unknown kinds carry nothing this server uses.
            _ => Ok(()),
        }
    }

    fn data(&mut self, head: Head, payload: &[u8]) -> Result<(), ConnError> {
        if head.stream == 0 {
            return Err(ConnError::protocol("DATA on stream 0"));
        }
        let len = payload.len() as i64;
        if len > self.recv_window {
            return Err(ConnError::new(
                code::FLOW_CONTROL_ERROR,
                "the client sent beyond the connection's window",
            ));
        }
        self.recv_window -= len;
        let range = http2::unpad(&head, payload)?;
        let current = self.stream.as_mut().filter(|s| s.id == head.stream);
        match current {
            Some(s) if !s.remote_done => {
                if len > s.recv_window {
                    return Err(ConnError::new(
                        code::FLOW_CONTROL_ERROR,
                        "the client sent beyond the stream's window",
                    ));
                }
                s.recv_window -= len;
                if s.ending.is_none() {
                    s.inbox.extend_from_slice(&payload[range]);
                    s.owed += len as u32;
                } else {
                    // The stream is being answered; what still comes is dropped.
                    self.owed += len as u32;
                }
                if head.flags & flag::END_STREAM != 0 {
                    s.remote_done = true;
                }
            }
            Some(_) => {
                return Err(ConnError::new(
                    code::STREAM_CLOSED,
                    "DATA after the client ended its stream",
                ))
            }
            // A stream already answered and closed: its data is dropped.
            None => self.owed += len as u32,
        }
        Ok(())
    }

    fn headers(&mut self, id: u32, end_stream: bool, block: &[u8]) -> Result<(), ConnError> {
        let mut method_post = false;
        let mut path_ok = false;
        let mut path = String::new();
        let mut grpc_type = false;
        let mut encoding = String::new();
        self.hpack
            .decode_with_cb(block, |name, value| match &*name {
                b":method" => method_post = &*value == b"POST",
                b":path" => {
                    path_ok = &*value == SESSION_PATH;
                    path = String::from_utf8_lossy(&value).into_owned();
                }
                b"content-type" => grpc_type = value.starts_with(b"application/grpc"),
                b"grpc-encoding" => encoding = String::from_utf8_lossy(&value).into_owned(),
                _ => {}
            })
            .map_err(|e| {
                ConnError::new(
                    code::COMPRESSION_ERROR,
                    format!("a header block HPACK cannot decode: {e}"),
                )
            })?;
        if let Some(s) = self.stream.as_mut().filter(|s| s.id == id) {
            // Trailers from the client end its side; gRPC clients send none, but they are
            // valid HTTP/2.
            if !end_stream {
                return Err(ConnError::protocol(
                    "a second header block without END_STREAM",
                ));
            }
            s.remote_done = true;
            return Ok(());
        }
        if id.is_multiple_of(2) {
            return Err(ConnError::protocol(format!(
                "stream {id} is not a client stream"
            )));
        }
        if id <= self.last_stream {
            // A stream this side already answered and reset: what still comes is ignored.
            return Ok(());
        }
        self.last_stream = id;
        if self.stream.is_some() || self.going_away {
            http2::put_rst(&mut self.wbuf, id, code::REFUSED_STREAM);
            return Ok(());
        }
        let ending = if !method_post || !path_ok {
            Some(Status::unimplemented(format!(
                "this frontend serves only POST {}; not {path:?}",
                String::from_utf8_lossy(SESSION_PATH)
            )))
        } else if !grpc_type {
            Some(Status::invalid_argument(
                "content-type must be application/grpc",
            ))
        } else if !encoding.is_empty() && encoding != "identity" {
            Some(Status::unimplemented(format!(
                "message compression {encoding:?} is not supported"
            )))
        } else {
            None
        };
        self.stream = Some(Box::new(Stream {
            id,
            send_window: self.peer_initial_window,
            recv_window: i64::from(RECV_WINDOW),
            owed: 0,
            remote_done: end_stream,
            headers_sent: false,
            inbox: Vec::new(),
            outbox: OutQueue::default(),
            session: None,
            ending,
        }));
        Ok(())
    }

    fn settings(&mut self, head: Head, payload: &[u8]) -> Result<(), ConnError> {
        if head.stream != 0 {
            return Err(ConnError::protocol("SETTINGS on a stream"));
        }
        if head.flags & flag::ACK != 0 {
            return Ok(());
        }
        for (id, value) in http2::parse_settings(payload)? {
            match id {
                setting::INITIAL_WINDOW_SIZE => {
                    let value = i64::from(value);
                    if value > http2::MAX_WINDOW {
                        return Err(ConnError::new(
                            code::FLOW_CONTROL_ERROR,
                            "an initial window size over 2^31-1",
                        ));
                    }
                    if let Some(s) = self.stream.as_mut() {
                        s.send_window += value - self.peer_initial_window;
                    }
                    self.peer_initial_window = value;
                }
                setting::MAX_FRAME_SIZE => {
                    if !(16_384..=16_777_215).contains(&value) {
                        return Err(ConnError::protocol(format!(
                            "a max frame size of {value} is out of range"
                        )));
                    }
                    self.peer_max_frame = value as usize;
                }
                _ => {}
            }
        }
        http2::put_frame(&mut self.wbuf, kind::SETTINGS, flag::ACK, 0, &[]);
        Ok(())
    }

    fn window_update(&mut self, head: Head, payload: &[u8]) -> Result<(), ConnError> {
        if payload.len() != 4 {
            return Err(ConnError::new(
                code::FRAME_SIZE_ERROR,
                "a malformed WINDOW_UPDATE",
            ));
        }
        let inc = i64::from(
            u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]) & 0x7fff_ffff,
        );
        if inc == 0 {
            return Err(ConnError::protocol("a WINDOW_UPDATE of 0"));
        }
        let window = if head.stream == 0 {
            &mut self.send_window
        } else {
            match self.stream.as_mut().filter(|s| s.id == head.stream) {
                Some(s) => &mut s.send_window,
                None => return Ok(()),
            }
        };
        *window += inc;
        if *window > http2::MAX_WINDOW {
            return Err(ConnError::new(
                code::FLOW_CONTROL_ERROR,
                "a window grown over 2^31-1",
            ));
        }
        Ok(())
    }
}
