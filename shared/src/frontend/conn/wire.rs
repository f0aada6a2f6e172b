//! A client connection's socket, plain or under TLS, with the non-blocking `try_read` /
//! `try_write` the connection loop is written around.
//!
//! TLS is rustls's `ServerConnection` driven by hand rather than `tokio-rustls`' stream: the
//! loop already waits on readiness and reads into a stack chunk, and this way a connection
//! owns no buffer of its own beyond what rustls keeps.

use std::io::{self, Read, Write};
use std::sync::Arc;

use tokio::net::TcpStream;

/// The socket and, under TLS, the TLS state.
pub(super) struct Wire {
    pub(super) sock: TcpStream,
    tls: Option<Box<rustls::ServerConnection>>,
    /// Decrypted bytes rustls holds that were not read yet.
    plaintext: usize,
}

/// `io::Read` / `io::Write` on a non-blocking socket for rustls.
struct Io<'a>(&'a TcpStream);

impl Read for Io<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.try_read(buf)
    }
}

impl Write for Io<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.try_write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn would_block() -> io::Error {
    io::ErrorKind::WouldBlock.into()
}

impl Wire {
    /// A plaintext connection.
    pub(super) fn plain(sock: TcpStream) -> Wire {
        Wire {
            sock,
            tls: None,
            plaintext: 0,
        }
    }

    /// A TLS connection of `config` (its handshake runs as bytes arrive).
    pub(super) fn tls(sock: TcpStream, config: Arc<rustls::ServerConfig>) -> io::Result<Wire> {
        let conn = rustls::ServerConnection::new(config).map_err(io::Error::other)?;
        Ok(Wire {
            sock,
            tls: Some(Box::new(conn)),
            plaintext: 0,
        })
    }

    /// Whether the TLS handshake is still running.
    pub(super) fn handshaking(&self) -> bool {
        self.tls.as_ref().is_some_and(|t| t.is_handshaking())
    }

    /// The client id the peer's certificate key names, once the handshake is done.
    pub(super) fn peer_client_id(&self) -> Option<String> {
        let tls = self.tls.as_ref()?;
        let cert = tls.peer_certificates()?.first()?;
        crate::security::client_id_of_cert(cert.as_ref())
    }

    /// Whether TLS bytes are waiting for the socket.
    pub(super) fn pending(&self) -> bool {
        self.tls.as_ref().is_some_and(|t| t.wants_write())
    }

    /// Writes what TLS has waiting; WouldBlock when the socket is full.
    pub(super) fn flush(&mut self) -> io::Result<()> {
        if let Some(tls) = self.tls.as_mut() {
            while tls.wants_write() {
                if tls.write_tls(&mut Io(&self.sock))? == 0 {
                    return Err(io::ErrorKind::WriteZero.into());
                }
            }
        }
        Ok(())
    }

    /// Writes some of `buf`; the bytes taken, or WouldBlock.
    pub(super) fn try_write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.tls.is_none() {
            return self.sock.try_write(buf);
        }
        self.flush()?;
        let tls = self.tls.as_mut().expect("tls");
        let n = tls.writer().write(buf)?;
        match self.flush() {
            Err(e) if e.kind() != io::ErrorKind::WouldBlock => return Err(e),
            _ => {}
        }
        if n == 0 && !buf.is_empty() {
            return Err(would_block());
        }
        Ok(n)
    }

    /// Waits until reading may give bytes (at once when TLS holds decrypted ones).
    pub(super) async fn readable(&self) -> io::Result<()> {
        if self.plaintext > 0 {
            return Ok(());
        }
        self.sock.readable().await
    }

    /// Reads some plaintext into `buf`: the count, 0 at the end, or WouldBlock.
    pub(super) fn try_read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let Wire {
            sock,
            tls,
            plaintext,
        } = self;
        let Some(tls) = tls.as_mut() else {
            return sock.try_read(buf);
        };
        loop {
            match tls.reader().read(buf) {
                // 0: the peer sent close_notify.
                Ok(n) => {
                    *plaintext = plaintext.saturating_sub(n);
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => *plaintext = 0,
                Err(e) => return Err(e),
            }
            if tls.read_tls(&mut Io(sock))? == 0 {
                return Ok(0);
            }
            let state = match tls.process_new_packets() {
                Ok(state) => state,
                Err(e) => {
                    // Send the alert that says why, if the socket takes it.
                    let _ = tls.write_tls(&mut Io(sock));
                    return Err(io::Error::new(io::ErrorKind::InvalidData, e));
                }
            };
            *plaintext = state.plaintext_bytes_to_read();
            // Handshake answers go out now; what the socket does not take waits.
            while tls.wants_write() {
                match tls.write_tls(&mut Io(sock)) {
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => return Err(e),
                }
            }
        }
    }

    /// Sends TLS close_notify (if TLS) and shuts the socket's write side.
    pub(super) async fn shutdown(&mut self) {
        use tokio::io::AsyncWriteExt;
        if let Some(tls) = self.tls.as_mut() {
            tls.send_close_notify();
        }
        let _ = self.write_pending().await;
        let _ = self.sock.shutdown().await;
    }

    /// Writes every TLS byte waiting, waiting for the socket as needed.
    pub(super) async fn write_pending(&mut self) -> io::Result<()> {
        while self.pending() {
            self.sock.writable().await?;
            match self.flush() {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                other => other?,
            }
        }
        Ok(())
    }

    /// Writes all of `buf`, waiting for the socket as needed.
    pub(super) async fn write_all(&mut self, mut buf: &[u8]) -> io::Result<()> {
        while !buf.is_empty() {
            self.sock.writable().await?;
            match self.try_write(buf) {
                Ok(n) => buf = &buf[n..],
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        self.write_pending().await
    }
}
