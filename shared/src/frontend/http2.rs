//! HTTP/2 framing (RFC 9113) for the frontend's own server side of gRPC client streams.
//!
//! Only what a server of one gRPC method needs: frame headers, the frames it sends, the
//! padding and priority fields of frames it receives, and HPACK literals for the few
//! headers it sends. Header blocks it receives are decoded by `loona-hpack`.

/// What every client connection starts with.
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Length of a frame header.
pub const FRAME_HEADER: usize = 9;
/// The largest frame payload either side may send unless told otherwise.
pub const DEFAULT_MAX_FRAME: usize = 16_384;
/// Every flow-control window's size before settings or window updates change it.
pub const DEFAULT_WINDOW: i64 = 65_535;
/// The largest a flow-control window may grow.
pub const MAX_WINDOW: i64 = (1 << 31) - 1;

/// Frame types.
pub mod kind {
    pub const DATA: u8 = 0;
    pub const HEADERS: u8 = 1;
    pub const PRIORITY: u8 = 2;
    pub const RST_STREAM: u8 = 3;
    pub const SETTINGS: u8 = 4;
    pub const PUSH_PROMISE: u8 = 5;
    pub const PING: u8 = 6;
    pub const GOAWAY: u8 = 7;
    pub const WINDOW_UPDATE: u8 = 8;
    pub const CONTINUATION: u8 = 9;
}

/// Frame flags.
pub mod flag {
    pub const END_STREAM: u8 = 0x1;
    pub const ACK: u8 = 0x1;
    pub const END_HEADERS: u8 = 0x4;
    pub const PADDED: u8 = 0x8;
    pub const PRIORITY: u8 = 0x20;
}

/// Settings identifiers.
pub mod setting {
    pub const HEADER_TABLE_SIZE: u16 = 1;
    pub const ENABLE_PUSH: u16 = 2;
    pub const MAX_CONCURRENT_STREAMS: u16 = 3;
    pub const INITIAL_WINDOW_SIZE: u16 = 4;
    pub const MAX_FRAME_SIZE: u16 = 5;
    pub const MAX_HEADER_LIST_SIZE: u16 = 6;
}

/// Error codes of RST_STREAM and GOAWAY.
pub mod code {
    pub const NO_ERROR: u32 = 0;
    pub const PROTOCOL_ERROR: u32 = 1;
    pub const FLOW_CONTROL_ERROR: u32 = 3;
    pub const STREAM_CLOSED: u32 = 5;
    pub const FRAME_SIZE_ERROR: u32 = 6;
    pub const REFUSED_STREAM: u32 = 7;
    pub const CANCEL: u32 = 8;
    pub const COMPRESSION_ERROR: u32 = 9;
}

/// A fault that ends the whole connection with a GOAWAY carrying `code` and `reason`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnError {
    pub code: u32,
    pub reason: String,
}

impl ConnError {
    pub fn new(code: u32, reason: impl Into<String>) -> Self {
        Self {
            code,
            reason: reason.into(),
        }
    }

    pub fn protocol(reason: impl Into<String>) -> Self {
        Self::new(code::PROTOCOL_ERROR, reason)
    }
}

impl std::fmt::Display for ConnError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HTTP/2 error {}: {}", self.code, self.reason)
    }
}

/// A frame's header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    pub len: usize,
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
}

impl Head {
    /// Reads a frame header from the first nine bytes of `b` (which must hold them).
    pub fn parse(b: &[u8]) -> Head {
        Head {
            len: (usize::from(b[0]) << 16) | (usize::from(b[1]) << 8) | usize::from(b[2]),
            kind: b[3],
            flags: b[4],
            stream: u32::from_be_bytes([b[5], b[6], b[7], b[8]]) & 0x7fff_ffff,
        }
    }
}

/// Appends a frame header.
pub fn put_head(out: &mut Vec<u8>, len: usize, kind: u8, flags: u8, stream: u32) {
    let len = len as u32;
    out.extend_from_slice(&[(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags]);
    out.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
}

/// Appends a whole frame.
pub fn put_frame(out: &mut Vec<u8>, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
    put_head(out, payload.len(), kind, flags, stream);
    out.extend_from_slice(payload);
}

/// Appends a SETTINGS frame with the given (identifier, value) pairs.
pub fn put_settings(out: &mut Vec<u8>, settings: &[(u16, u32)]) {
    put_head(out, settings.len() * 6, kind::SETTINGS, 0, 0);
    for (id, value) in settings {
        out.extend_from_slice(&id.to_be_bytes());
        out.extend_from_slice(&value.to_be_bytes());
    }
}

/// Appends a WINDOW_UPDATE frame.
pub fn put_window_update(out: &mut Vec<u8>, stream: u32, increment: u32) {
    put_frame(
        out,
        kind::WINDOW_UPDATE,
        0,
        stream,
        &(increment & 0x7fff_ffff).to_be_bytes(),
    );
}

/// Appends an RST_STREAM frame.
pub fn put_rst(out: &mut Vec<u8>, stream: u32, error: u32) {
    put_frame(out, kind::RST_STREAM, 0, stream, &error.to_be_bytes());
}

/// Appends a GOAWAY frame naming the last stream this side will process.
pub fn put_goaway(out: &mut Vec<u8>, last_stream: u32, error: u32, reason: &str) {
    let reason = &reason.as_bytes()[..reason.len().min(256)];
    put_head(out, 8 + reason.len(), kind::GOAWAY, 0, 0);
    out.extend_from_slice(&(last_stream & 0x7fff_ffff).to_be_bytes());
    out.extend_from_slice(&error.to_be_bytes());
    out.extend_from_slice(reason);
}

/// The payload of a DATA or HEADERS frame without its padding (and, for HEADERS, without
/// its priority fields).
pub fn unpad(head: &Head, payload: &[u8]) -> Result<std::ops::Range<usize>, ConnError> {
    let mut start = 0;
    let mut end = payload.len();
    if head.flags & flag::PADDED != 0 {
        let pad = usize::from(
            *payload
                .first()
                .ok_or_else(|| ConnError::protocol("a padded frame without its pad length"))?,
        );
        start = 1;
        end = end
            .checked_sub(pad)
            .filter(|&e| e >= start)
            .ok_or_else(|| ConnError::protocol("padding longer than the frame"))?;
    }
    if head.kind == kind::HEADERS && head.flags & flag::PRIORITY != 0 {
        start += 5;
        if start > end {
            return Err(ConnError::new(
                code::FRAME_SIZE_ERROR,
                "a HEADERS frame too short for its priority fields",
            ));
        }
    }
    Ok(start..end)
}

/// Parsed SETTINGS values that matter to this server.
pub fn parse_settings(payload: &[u8]) -> Result<Vec<(u16, u32)>, ConnError> {
    if !payload.len().is_multiple_of(6) {
        return Err(ConnError::new(
            code::FRAME_SIZE_ERROR,
            "a SETTINGS frame whose length is not a multiple of 6",
        ));
    }
    Ok(payload
        .chunks_exact(6)
        .map(|c| {
            (
                u16::from_be_bytes([c[0], c[1]]),
                u32::from_be_bytes([c[2], c[3], c[4], c[5]]),
            )
        })
        .collect())
}

/// Appends an HPACK integer with an `n`-bit prefix; `high` holds the bits above the prefix.
fn put_int(out: &mut Vec<u8>, mut value: usize, n: u32, high: u8) {
    let max = (1usize << n) - 1;
    if value < max {
        out.push(high | value as u8);
        return;
    }
    out.push(high | max as u8);
    value -= max;
    while value >= 128 {
        out.push((value % 128) as u8 | 0x80);
        value /= 128;
    }
    out.push(value as u8);
}

/// Appends one header as an HPACK literal that is never indexed by either side's tables
/// (so sending it changes no decoder state).
pub fn put_literal(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    out.push(0x00);
    put_int(out, name.len(), 7, 0);
    out.extend_from_slice(name.as_bytes());
    put_int(out, value.len(), 7, 0);
    out.extend_from_slice(value);
}

/// `:status 200` from HPACK's static table (index 8).
pub const STATUS_200: u8 = 0x88;

/// A grpc-message value: percent-encoded as gRPC asks (bytes outside printable ASCII, and
/// `%` itself).
pub fn grpc_message(text: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len());
    for &b in text.as_bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(b);
        } else {
            out.extend_from_slice(format!("%{b:02X}").as_bytes());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_headers_round_trip() {
        let mut out = Vec::new();
        put_frame(&mut out, kind::DATA, flag::END_STREAM, 0x8000_0003, b"abc");
        let head = Head::parse(&out);
        assert_eq!(
            head,
            Head {
                len: 3,
                kind: kind::DATA,
                flags: flag::END_STREAM,
                stream: 3
            }
        );
        assert_eq!(&out[FRAME_HEADER..], b"abc");
    }

    #[test]
    fn literals_decode_with_hpack() {
        let mut block = vec![STATUS_200];
        put_literal(&mut block, "content-type", b"application/grpc");
        let long = "x".repeat(300);
        put_literal(&mut block, "grpc-message", long.as_bytes());
        let headers = loona_hpack::Decoder::new().decode(&block).unwrap();
        assert_eq!(headers[0], (b":status".to_vec(), b"200".to_vec()));
        assert_eq!(
            headers[1],
            (b"content-type".to_vec(), b"application/grpc".to_vec())
        );
        assert_eq!(headers[2].1, long.as_bytes());
    }

    #[test]
    fn padding_and_priority_are_stripped_and_checked() {
        let head = Head {
            len: 0,
            kind: kind::HEADERS,
            flags: flag::PADDED | flag::PRIORITY,
            stream: 1,
        };
        // pad length 2, 5 priority bytes, block "ab", 2 pad bytes
        let payload = [2, 0, 0, 0, 0, 16, b'a', b'b', 0, 0];
        assert_eq!(&payload[unpad(&head, &payload).unwrap()], b"ab");
        let err = unpad(&head, &[9, 0, 0]).unwrap_err();
        assert_eq!(err.code, code::PROTOCOL_ERROR, "{err}");
        assert!(unpad(&head, &[0, 1]).is_err(), "too short for priority");
    }

    #[test]
    fn settings_must_come_in_sixes() {
        assert_eq!(
            parse_settings(&[0, 4, 0, 1, 0, 0]).unwrap(),
            vec![(setting::INITIAL_WINDOW_SIZE, 65_536)]
        );
        assert_eq!(
            parse_settings(&[0, 4, 0]).unwrap_err().code,
            code::FRAME_SIZE_ERROR
        );
    }

    #[test]
    fn grpc_messages_are_percent_encoded() {
        assert_eq!(grpc_message("50% ok\né"), b"50%25 ok%0A%C3%A9".to_vec());
    }
}
