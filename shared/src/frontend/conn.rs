//! One client connection: the server side of HTTP/2 carrying one gRPC session stream at a
//! time, written so that an idle connection holds almost nothing.
//!
//! A connection is one task. It keeps no read or write buffer while idle (bytes are read
//! into a stack chunk and only a partial frame is kept), decodes header blocks without
//! indexing anything it sends, and runs the session's work (open, one client message) as
//! a boxed future that exists only while it runs. Flow control is the backpressure: the
//! client's window is granted back only while no work is running, so a client can never
//! have more than [`RECV_WINDOW`] bytes waiting here beyond the message being read.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use prost::Message;
use talon_proto::client::{ClientMessage, ServerMessage};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::Status;

use super::http2::{self, code, flag, kind, setting, ConnError, Head};
use super::{FrontendService, Opened, ServerItem};

/// The one method served.
const SESSION_PATH: &[u8] = b"/talon.client.Frontend/Session";
/// Window granted to each stream and to the connection for client messages.
const RECV_WINDOW: u32 = 1 << 20;
/// Bytes read from the socket at a time (on the stack).
const READ_CHUNK: usize = 16 * 1024;
/// Encoded server messages held for the client's window before the outbox is left alone.
const PENDING_LIMIT: usize = 256 * 1024;
/// Bytes waiting to be written beyond which the client is no longer read.
const WRITE_LIMIT: usize = 4 << 20;
/// Largest request header block accepted.
const MAX_HEADER_BLOCK: usize = 64 * 1024;
/// A ping goes out this often; a connection whose ping is unanswered a period later ends.
pub const KEEPALIVE: Duration = Duration::from_secs(20);
/// How long a closing connection may take to finish its running work.
const CLOSE_GRACE: Duration = Duration::from_secs(10);

/// Message size limits of a connection.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_decode: usize,
    pub max_encode: usize,
}

type Work = Pin<Box<dyn Future<Output = Done> + Send>>;

/// What a piece of session work came to.
enum Done {
    Opened(Result<Opened, Status>),
    Handled(Result<(), Status>),
}

/// The stream being served.
struct Stream {
    id: u32,
    send_window: i64,
    recv_window: i64,
    /// Bytes received on the stream and not yet granted back.
    owed: u32,
    /// The client has ended its side.
    remote_done: bool,
    headers_sent: bool,
    /// Client bytes not yet taken as messages (empty, without capacity, while idle).
    inbox: Vec<u8>,
    /// Encoded server messages waiting for window.
    outbox: Vec<u8>,
    session: Option<Opened>,
    /// How the stream ends, once known; sent as trailers when the outbox is empty.
    ending: Option<Status>,
}

struct Conn {
    fe: FrontendService,
    remote: String,
    limits: Limits,
    tasks: TaskTracker,
    /// A partial frame (or the partial preface) carried over to the next read.
    rbuf: Vec<u8>,
    wbuf: Vec<u8>,
    preface_seen: usize,
    peer_max_frame: usize,
    peer_initial_window: i64,
    send_window: i64,
    recv_window: i64,
    owed: u32,
    /// A header block still waiting for CONTINUATION frames: stream, END_STREAM, block.
    continuation: Option<(u32, bool, Vec<u8>)>,
    last_stream: u32,
    stream: Option<Box<Stream>>,
    hpack: loona_hpack::Decoder<'static>,
    ping_outstanding: bool,
    going_away: bool,
}

/// Serves one accepted connection until it ends or `shutdown`.
pub async fn run(
    fe: FrontendService,
    sock: TcpStream,
    limits: Limits,
    shutdown: CancellationToken,
    tasks: TaskTracker,
) {
    let remote = sock.peer_addr().map(|a| a.to_string()).unwrap_or_default();
    let _ = sock.set_nodelay(true);
    let mut c = Conn::new(fe, remote, limits, tasks);
    let mut work: Option<Work> = None;
    let mut keepalive =
        tokio::time::interval_at(tokio::time::Instant::now() + KEEPALIVE, KEEPALIVE);
    // After a stall, the next ping waits a whole period for its answer.
    keepalive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let outcome: Result<(), ConnError> = loop {
        if work.is_none() {
            match c.next_work() {
                Ok(w) => work = w,
                Err(e) => break Err(e),
            }
        }
        if work.is_none() {
            c.grant();
        }
        if let Err(e) = c.pump() {
            break Err(e);
        }
        if c.going_away && work.is_none() && c.stream.is_none() && c.wbuf.is_empty() {
            break Ok(());
        }
        if !c.wbuf.is_empty() {
            match sock.try_write(&c.wbuf) {
                Ok(n) => c.wrote(n),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(_) => break Ok(()),
            }
        }
        let wants_outbox = c.wants_outbox();
        tokio::select! {
            _ = shutdown.cancelled(), if !c.going_away => {
                c.going_away = true;
                http2::put_goaway(&mut c.wbuf, c.last_stream, code::NO_ERROR, "server shutting down");
            }
            done = async { work.as_mut().expect("work").await }, if work.is_some() => {
                work = None;
                c.done(done);
            }
            // A client that sends but does not read stops being read (its pings and
            // settings would otherwise pile up answers here).
            ready = sock.readable(), if c.wbuf.len() < WRITE_LIMIT => {
                if ready.is_err() {
                    break Ok(());
                }
                let mut chunk = [0u8; READ_CHUNK];
                match sock.try_read(&mut chunk) {
                    Ok(0) => break Ok(()),
                    Ok(n) => {
                        if let Err(e) = c.receive(&chunk[..n]) {
                            break Err(e);
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(_) => break Ok(()),
                }
            }
            ready = sock.writable(), if !c.wbuf.is_empty() => {
                if ready.is_err() {
                    break Ok(());
                }
            }
            item = recv(c.outbox_receiver()), if wants_outbox => {
                if let Some(item) = item {
                    c.queue(*item);
                }
            }
            _ = keepalive.tick() => {
                if c.ping_outstanding {
                    tracing::info!(remote = %c.remote, "client connection unanswered for {} s; closing it", 2 * KEEPALIVE.as_secs());
                    break Ok(());
                }
                c.ping_outstanding = true;
                http2::put_frame(&mut c.wbuf, kind::PING, 0, 0, &[0; 8]);
            }
        }
    };
    if let Err(e) = &outcome {
        tracing::warn!(remote = %c.remote, error = %e, "closing a client connection");
        http2::put_goaway(&mut c.wbuf, c.last_stream, e.code, &e.reason);
        let _ = tokio::time::timeout(Duration::from_secs(1), write_all(&sock, &c.wbuf)).await;
    }
    if let Some(w) = work {
        if let Ok(done) = tokio::time::timeout(CLOSE_GRACE, w).await {
            c.done(done);
        }
    }
    if let Some(stream) = c.stream.take() {
        c.end_session(stream.session);
    }
    if outcome.is_err() {
        // Boxed: its read buffer then exists only while a connection closes.
        Box::pin(linger_close(sock)).await;
    }
}

/// Closes after a GOAWAY so the client gets to read it: closing with unread bytes sends a
/// reset, which can discard the GOAWAY before the client reads it.
async fn linger_close(mut sock: TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _ = sock.shutdown().await;
    let mut chunk = [0u8; 4096];
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        while let Ok(n) = sock.read(&mut chunk).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
}

async fn recv(rx: Option<&mut tokio::sync::mpsc::Receiver<ServerItem>>) -> Option<ServerItem> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

async fn write_all(sock: &TcpStream, mut buf: &[u8]) -> std::io::Result<()> {
    while !buf.is_empty() {
        sock.writable().await?;
        match sock.try_write(buf) {
            Ok(n) => buf = &buf[n..],
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

impl Conn {
    /// A connection's state, with this side's settings and window queued to send.
    fn new(fe: FrontendService, remote: String, limits: Limits, tasks: TaskTracker) -> Conn {
        let mut c = Conn {
            fe,
            remote,
            limits,
            tasks,
            rbuf: Vec::new(),
            wbuf: Vec::new(),
            preface_seen: 0,
            peer_max_frame: http2::DEFAULT_MAX_FRAME,
            peer_initial_window: http2::DEFAULT_WINDOW,
            send_window: http2::DEFAULT_WINDOW,
            recv_window: i64::from(RECV_WINDOW),
            owed: 0,
            continuation: None,
            last_stream: 0,
            stream: None,
            hpack: loona_hpack::Decoder::new(),
            ping_outstanding: false,
            going_away: false,
        };
        http2::put_settings(
            &mut c.wbuf,
            &[
                (setting::ENABLE_PUSH, 0),
                (setting::MAX_CONCURRENT_STREAMS, 1),
                (setting::INITIAL_WINDOW_SIZE, RECV_WINDOW),
                (setting::MAX_HEADER_LIST_SIZE, MAX_HEADER_BLOCK as u32),
            ],
        );
        http2::put_window_update(&mut c.wbuf, 0, RECV_WINDOW - http2::DEFAULT_WINDOW as u32);
        c
    }

    fn wrote(&mut self, n: usize) {
        if n == self.wbuf.len() {
            // Nothing is kept between writes: an idle connection holds no buffer.
            self.wbuf = Vec::new();
        } else {
            self.wbuf.drain(..n);
        }
    }

    fn outbox_receiver(&mut self) -> Option<&mut tokio::sync::mpsc::Receiver<ServerItem>> {
        self.stream
            .as_mut()
            .and_then(|s| s.session.as_mut())
            .map(|s| &mut s.rx)
    }

    /// Whether the session's outbox should be drained now.
    fn wants_outbox(&self) -> bool {
        self.stream.as_ref().is_some_and(|s| {
            s.session.is_some() && s.ending.is_none() && s.outbox.len() < PENDING_LIMIT
        })
    }

    /// Encodes a server message onto the stream's outbox, or ends the stream if it is over
    /// the limit.
    fn queue(&mut self, msg: ServerMessage) {
        let max = self.limits.max_encode;
        let Some(s) = self.stream.as_mut() else {
            return;
        };
        let len = msg.encoded_len();
        if len > max {
            s.ending = Some(Status::out_of_range(format!(
                "server message length too large: found {len} bytes, the limit is {max} bytes"
            )));
            return;
        }
        s.outbox.reserve(5 + len);
        s.outbox.push(0);
        s.outbox.extend_from_slice(&(len as u32).to_be_bytes());
        msg.encode(&mut s.outbox).expect("reserved");
    }

    /// Bytes from the socket.
    fn receive(&mut self, chunk: &[u8]) -> Result<(), ConnError> {
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
            outbox: Vec::new(),
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

    /// Grants the client's window back for what was received.
    fn grant(&mut self) {
        let mut conn = std::mem::take(&mut self.owed);
        if let Some(s) = self.stream.as_mut() {
            let owed = std::mem::take(&mut s.owed);
            if owed > 0 && !s.remote_done {
                http2::put_window_update(&mut self.wbuf, s.id, owed);
                s.recv_window += i64::from(owed);
            }
            conn += owed;
        }
        if conn > 0 {
            http2::put_window_update(&mut self.wbuf, 0, conn);
            self.recv_window += i64::from(conn);
        }
    }

    /// The next piece of work, taking the next whole client message; ends a finished stream.
    fn next_work(&mut self) -> Result<Option<Work>, ConnError> {
        let going_away = self.going_away;
        let Some(s) = self.stream.as_mut() else {
            return Ok(None);
        };
        if s.ending.is_none() && going_away {
            s.ending = Some(Status::unavailable("the frontend is shutting down"));
        }
        if s.ending.is_some() {
            return Ok(None);
        }
        match take_message(&mut s.inbox, self.limits.max_decode) {
            Err(status) => s.ending = Some(status),
            Ok(Some(msg)) => {
                let fe = self.fe.clone();
                return Ok(Some(match &s.session {
                    None => {
                        let remote = self.remote.clone();
                        Box::pin(async move { Done::Opened(fe.open(msg, remote).await) })
                    }
                    Some(session) => {
                        let (key, tx) = (session.key.clone(), session.tx.clone());
                        Box::pin(async move { Done::Handled(fe.handle(&key, &tx, msg).await) })
                    }
                }));
            }
            Ok(None) if s.remote_done => {
                s.ending = Some(if !s.inbox.is_empty() {
                    Status::invalid_argument("the stream ended inside a message")
                } else if s.session.is_none() {
                    Status::invalid_argument("the stream ended before hello")
                } else {
                    Status::ok("")
                });
            }
            Ok(None) => {}
        }
        if s.ending.is_some() {
            // What the session already queued goes out before the end.
            let mut queued = Vec::new();
            if let Some(session) = s.session.as_mut() {
                while let Ok(item) = session.rx.try_recv() {
                    queued.push(item);
                }
            }
            for item in queued {
                self.queue(*item);
            }
        }
        Ok(None)
    }

    fn done(&mut self, done: Done) {
        match done {
            Done::Opened(Ok(opened)) => match self.stream.as_mut() {
                Some(s) if s.session.is_none() => s.session = Some(opened),
                // The stream went away while the session opened.
                _ => self.end_session(Some(opened)),
            },
            Done::Opened(Err(status)) | Done::Handled(Err(status)) => {
                if let Some(s) = self.stream.as_mut() {
                    s.ending.get_or_insert(status);
                }
            }
            Done::Handled(Ok(())) => {}
        }
    }

    /// Sends what the windows allow, and the trailers once everything else is out.
    fn pump(&mut self) -> Result<(), ConnError> {
        let Some(s) = self.stream.as_mut() else {
            return Ok(());
        };
        while !s.outbox.is_empty()
            && s.send_window > 0
            && self.send_window > 0
            && self.wbuf.len() < WRITE_LIMIT
        {
            let n = (s.outbox.len() as i64)
                .min(s.send_window)
                .min(self.send_window)
                .min(self.peer_max_frame as i64) as usize;
            if !s.headers_sent {
                put_response_headers(&mut self.wbuf, s.id);
                s.headers_sent = true;
            }
            http2::put_frame(&mut self.wbuf, kind::DATA, 0, s.id, &s.outbox[..n]);
            s.send_window -= n as i64;
            self.send_window -= n as i64;
            if n == s.outbox.len() {
                s.outbox = Vec::new();
            } else {
                s.outbox.drain(..n);
            }
        }
        if s.outbox.is_empty() {
            if let Some(status) = s.ending.take() {
                put_trailers(&mut self.wbuf, s.id, !s.headers_sent, &status);
                if !s.remote_done {
                    // The answer is complete: the client need send no more.
                    http2::put_rst(&mut self.wbuf, s.id, code::NO_ERROR);
                }
                let stream = self.stream.take().expect("stream");
                // Bytes that stay unread are given back to the connection.
                self.owed += stream.owed;
                self.end_session(stream.session);
            }
        }
        Ok(())
    }

    /// Ends a session in a task of its own (it writes the client's last seen time).
    fn end_session(&self, session: Option<Opened>) {
        if let Some(session) = session {
            let fe = self.fe.clone();
            self.tasks
                .spawn(async move { fe.end(&session.key, session.session_id).await });
        }
    }
}

/// Takes one whole gRPC message from the front of `inbox`, if it holds one.
#[allow(clippy::result_large_err)]
fn take_message(inbox: &mut Vec<u8>, max: usize) -> Result<Option<ClientMessage>, Status> {
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

fn put_response_headers(out: &mut Vec<u8>, stream: u32) {
    let mut block = Vec::with_capacity(32);
    put_status_headers(&mut block);
    http2::put_frame(out, kind::HEADERS, flag::END_HEADERS, stream, &block);
}

fn put_trailers(out: &mut Vec<u8>, stream: u32, trailers_only: bool, status: &Status) {
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
mod tests {
    use super::*;

    fn framed(msg: &ClientMessage) -> Vec<u8> {
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
        let store = crate::store::Store::open(&dir.path().join("t.redb")).unwrap();
        let qm = crate::queue::QueueManager::new(
            crate::artifacts::Repository::with_builtins(),
            store,
            crate::queue::Limits::default(),
        );
        let fe = FrontendService::new(qm, "test");
        let limits = Limits {
            max_decode: 1 << 16,
            max_encode: 1 << 16,
        };
        let valid = client_bytes();
        // The unmangled bytes are a session: hello is taken as work, nothing fails.
        let mut c = Conn::new(fe.clone(), "t".into(), limits, TaskTracker::new());
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
            let mut c = Conn::new(fe.clone(), "t".into(), limits, TaskTracker::new());
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

    #[test]
    fn trailers_carry_the_status_code_and_encoded_message() {
        let mut out = Vec::new();
        put_trailers(&mut out, 1, true, &Status::not_found("no 100%"));
        let head = Head::parse(&out);
        assert_eq!(head.flags, flag::END_HEADERS | flag::END_STREAM);
        let headers = loona_hpack::Decoder::new()
            .decode(&out[http2::FRAME_HEADER..])
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
