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
use talon_core::Shutdown;
use tokio::net::TcpStream;
use tonic::Status;
use wire::Wire;

use super::http2::{self, code, kind, setting, ConnError};
use super::{FrontendService, Opened, Outgoing, ServerItem};
use grpc::{put_response_headers, put_trailers, take_message};

mod frames;
mod grpc;
#[cfg(test)]
mod tests;
mod wire;

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
/// Bytes of DATA frames copied into the write buffer at a time: the rest stays in the
/// outbox, where a message shared by many connections is held once.
const DATA_HIGH_WATER: usize = 32 * 1024;
/// Largest request header block accepted.
const MAX_HEADER_BLOCK: usize = 64 * 1024;
/// A ping goes out this often; a connection whose ping is unanswered a period later ends.
pub const KEEPALIVE: Duration = Duration::from_secs(20);
/// How long a client gets to complete the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a closing connection may take to finish its running work.
const CLOSE_GRACE: Duration = Duration::from_secs(10);

/// Feeds `bytes` to a new connection of `fe`, `chunk` bytes at a time, as its socket would,
/// taking the session work it yields and pumping the answer (the fuzz target's entry).
#[cfg(feature = "fuzzing")]
pub(super) fn fuzz_feed(fe: &FrontendService, bytes: &[u8], chunk: usize) {
    let limits = Limits {
        max_decode: 1 << 16,
        max_encode: 1 << 16,
    };
    let mut c = Conn::new(fe.clone(), "fuzz".into(), limits, Shutdown::default());
    for piece in bytes.chunks(chunk.max(1)) {
        if c.receive(piece).is_err() || c.next_work().is_err() {
            return;
        }
        c.grant();
        if c.pump().is_err() {
            return;
        }
    }
}

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
    outbox: OutQueue,
    session: Option<Opened>,
    /// How the stream ends, once known; sent as trailers when the outbox is empty.
    ending: Option<Status>,
}

/// Encoded server messages waiting for window, as the pieces they were made in: a table
/// shared by a thousand clients is held once, however long they take to read it. Holds no
/// allocation while empty.
#[derive(Default)]
struct OutQueue {
    pieces: std::collections::VecDeque<bytes::Bytes>,
    len: usize,
}

impl OutQueue {
    fn push(&mut self, piece: bytes::Bytes) {
        self.len += piece.len();
        self.pieces.push_back(piece);
    }

    fn len(&self) -> usize {
        self.len
    }

    fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Up to `max` bytes from the front (never across pieces).
    fn front(&self, max: usize) -> &[u8] {
        match self.pieces.front() {
            Some(p) => &p[..p.len().min(max)],
            None => &[],
        }
    }

    fn consume(&mut self, n: usize) {
        let front = self.pieces.front_mut().expect("consumed what was there");
        if n == front.len() {
            self.pieces.pop_front();
            if self.pieces.is_empty() {
                self.pieces = Default::default();
            }
        } else {
            let _ = front.split_to(n);
        }
        self.len -= n;
    }
}

struct Conn {
    fe: FrontendService,
    remote: String,
    limits: Limits,
    tasks: Shutdown,
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
    /// Under TLS, the client id the client's key names (its hello must say the same).
    peer: Option<String>,
}

/// Serves one accepted connection until it ends or `shutdown`; with `tls`, a TLS one whose
/// client presents the certificate of its key.
pub async fn run(
    fe: FrontendService,
    sock: TcpStream,
    tls: Option<std::sync::Arc<rustls::ServerConfig>>,
    limits: Limits,
    shutdown: Shutdown,
) {
    let remote = sock.peer_addr().map(|a| a.to_string()).unwrap_or_default();
    let _ = sock.set_nodelay(true);
    let mut wire = match tls {
        None => Wire::plain(sock),
        Some(config) => match Wire::tls(sock, config) {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!(remote = %remote, error = %e, "cannot start TLS");
                return;
            }
        },
    };
    // The connection keeps one handle on its node of the tree (to spawn its session's
    // end) and one token to watch: each is in every idle connection's future.
    let stop = shutdown.token().clone();
    let mut c = Conn::new(fe, remote, limits, shutdown);
    let mut work: Option<Work> = None;
    let mut keepalive =
        tokio::time::interval_at(tokio::time::Instant::now() + KEEPALIVE, KEEPALIVE);
    // After a stall, the next ping waits a whole period for its answer.
    keepalive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let handshake_deadline = tokio::time::Instant::now() + HANDSHAKE_TIMEOUT;
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
            match wire.try_write(&c.wbuf) {
                Ok(n) => {
                    c.wrote(n);
                    // All written and more DATA the windows allow: copy the next piece.
                    if c.wbuf.is_empty() && c.can_send_data() {
                        continue;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(_) => break Ok(()),
            }
        } else if wire.pending() {
            match wire.flush() {
                Err(e) if e.kind() != std::io::ErrorKind::WouldBlock => break Ok(()),
                _ => {}
            }
        }
        let wants_outbox = c.wants_outbox();
        let handshaking = wire.handshaking();
        let wants_write = !c.wbuf.is_empty() || wire.pending();
        tokio::select! {
            _ = stop.cancelled(), if !c.going_away => {
                c.going_away = true;
                http2::put_goaway(&mut c.wbuf, c.last_stream, code::NO_ERROR, "server shutting down");
            }
            done = async { work.as_mut().expect("work").await }, if work.is_some() => {
                work = None;
                c.done(done);
            }
            // A client that sends but does not read stops being read (its pings and
            // settings would otherwise pile up answers here).
            ready = wire.readable(), if c.wbuf.len() < WRITE_LIMIT => {
                if ready.is_err() {
                    break Ok(());
                }
                let mut chunk = [0u8; READ_CHUNK];
                let read = wire.try_read(&mut chunk);
                // The handshake ends on a read: the client's key is known from then on.
                if handshaking && !wire.handshaking() {
                    c.peer = wire.peer_client_id();
                }
                match read {
                    Ok(0) => break Ok(()),
                    Ok(n) => {
                        if let Err(e) = c.receive(&chunk[..n]) {
                            break Err(e);
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(e) => {
                        if e.kind() == std::io::ErrorKind::InvalidData {
                            tracing::info!(remote = %c.remote, error = %e, "client connection refused: TLS");
                        }
                        break Ok(());
                    }
                }
            }
            ready = wire.sock.writable(), if wants_write => {
                if ready.is_err() {
                    break Ok(());
                }
            }
            _ = tokio::time::sleep_until(handshake_deadline), if handshaking => {
                tracing::info!(remote = %c.remote, "client connection closed: no TLS handshake within {} s", HANDSHAKE_TIMEOUT.as_secs());
                break Ok(());
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
        let _ = tokio::time::timeout(Duration::from_secs(1), wire.write_all(&c.wbuf)).await;
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
        Box::pin(linger_close(wire)).await;
    }
}

/// Closes after a GOAWAY so the client gets to read it: closing with unread bytes sends a
/// reset, which can discard the GOAWAY before the client reads it.
async fn linger_close(mut wire: Wire) {
    wire.shutdown().await;
    let mut chunk = [0u8; 4096];
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        loop {
            if wire.readable().await.is_err() {
                break;
            }
            match wire.try_read(&mut chunk) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(_) => break,
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

impl Conn {
    /// A connection's state, with this side's settings and window queued to send.
    fn new(fe: FrontendService, remote: String, limits: Limits, tasks: Shutdown) -> Conn {
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
            peer: None,
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

    /// Puts a server message on the stream's outbox (encoding it, unless it was encoded
    /// once for many clients), or ends the stream if it is over the limit.
    fn queue(&mut self, item: Outgoing) {
        let max = self.limits.max_encode;
        let Some(s) = self.stream.as_mut() else {
            return;
        };
        let len = match &item {
            Outgoing::Message(msg) => msg.encoded_len(),
            Outgoing::Framed(framed) => framed.len().saturating_sub(5),
        };
        if len > max {
            s.ending = Some(Status::out_of_range(format!(
                "server message length too large: found {len} bytes, the limit is {max} bytes"
            )));
            return;
        }
        match item {
            Outgoing::Message(msg) => s.outbox.push(super::frame(&msg)),
            Outgoing::Framed(framed) => s.outbox.push(framed),
        }
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
                        let peer = self.peer.clone();
                        Box::pin(async move { Done::Opened(fe.open(msg, remote, peer).await) })
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

    /// Whether DATA is waiting that the windows would let out now.
    fn can_send_data(&self) -> bool {
        self.send_window > 0
            && self
                .stream
                .as_ref()
                .is_some_and(|s| !s.outbox.is_empty() && s.send_window > 0)
    }

    /// Sends what the windows allow, and the trailers once everything else is out.
    fn pump(&mut self) -> Result<(), ConnError> {
        let Some(s) = self.stream.as_mut() else {
            return Ok(());
        };
        while !s.outbox.is_empty()
            && s.send_window > 0
            && self.send_window > 0
            && self.wbuf.len() < DATA_HIGH_WATER
        {
            let n = (s.send_window)
                .min(self.send_window)
                .min(self.peer_max_frame as i64) as usize;
            let piece = s.outbox.front(n);
            let n = piece.len();
            if !s.headers_sent {
                put_response_headers(&mut self.wbuf, s.id);
                s.headers_sent = true;
            }
            http2::put_frame(&mut self.wbuf, kind::DATA, 0, s.id, piece);
            s.send_window -= n as i64;
            self.send_window -= n as i64;
            s.outbox.consume(n);
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
            self.tasks.spawn("session-end", async move {
                fe.end(&session.key, session.session_id).await
            });
        }
    }
}
