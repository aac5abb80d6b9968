//! The client side of a websocket to Discord (RFC 6455), by hand.
//!
//! Each dispatch from Discord is one text frame; the shard copies it once,
//! straight out of this reader's buffer. A general-purpose websocket library
//! split every frame off its read buffer as shared bytes, zero-filled the
//! buffer before each read and polled through several adapter layers: about
//! a sixth of the proxy's CPU per relayed event. Only what a gateway client
//! needs is here: the upgrade handshake, unmasked frames in (text, binary,
//! fragmented, ping, pong, close), masked frames out.

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use std::{io, ops::Range};

use super::{
    connection::GatewayStream,
    transport::{Compression, Decoder},
};

/// Largest message accepted from Discord (a GUILD_CREATE of a very large
/// guild is a few MiB).
const MAX_MESSAGE: usize = 64 << 20;
/// Read buffer while events trickle in (one or a few per read).
const READ_MIN: usize = 16 << 10;
/// Read buffer in a burst: it doubles up to this while reads fill it, and
/// goes back to [`READ_MIN`] after [`SMALL_READS`] small reads in a row, so
/// hundreds of quiet shards do not each hold a burst-sized buffer.
const READ_CHUNK: usize = 128 << 10;
/// Small reads in a row after which a grown read buffer is given back.
const SMALL_READS: u32 = 16;
/// Longest HTTP upgrade response accepted.
const MAX_RESPONSE_HEAD: usize = 16 << 10;

const OP_CONTINUATION: u8 = 0;
const OP_TEXT: u8 = 1;
const OP_BINARY: u8 = 2;
const OP_CLOSE: u8 = 8;
const OP_PING: u8 = 9;
const OP_PONG: u8 = 10;

/// A message from Discord.
#[derive(Debug, PartialEq, Eq)]
pub enum Incoming<'a> {
    /// A text message (valid UTF-8), borrowed until the next read.
    Text(&'a str),
    /// A binary message (Discord sends them only with transport
    /// compression, which [`GatewaySocket::next`] decodes into text).
    Binary(&'a [u8]),
    /// A close frame: its code (1005 when it had none) and reason.
    Close(u16, String),
}

/// An open gateway websocket.
pub struct GatewaySocket {
    stream: GatewayStream,
    frames: FrameBuffer,
    out: Vec<u8>,
    /// Transport compression's context, fresh for every connection.
    decoder: Option<Decoder>,
    /// The last decompressed message.
    inflated: Vec<u8>,
    /// Counts the bytes of compressed messages received, when set.
    compressed_bytes: Option<prometheus::IntCounter>,
}

/// The reading side of a gateway websocket without its socket: the read
/// buffer and the message being put together from fragments.
/// [`GatewaySocket::next`] fills it from the stream; public so that frame
/// parsing can be driven from plain bytes (the fuzz targets).
#[doc(hidden)]
pub struct FrameBuffer {
    /// Bytes read and not yet parsed are `buf[start..end]`.
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// Reads in a row that returned less than half of [`READ_MIN`].
    small_reads: u32,
    /// A fragmented message being put together, and its opcode.
    fragments: Vec<u8>,
    fragmented: Option<u8>,
    /// The last message, when it had to be put together from fragments.
    assembled: Vec<u8>,
}

/// What [`FrameBuffer::parse`] found at the start of the unparsed bytes.
#[doc(hidden)]
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// The next frame is not all there: read until `buf[start..]` holds
    /// this many bytes (0: its header is incomplete).
    Need(usize),
    /// A ping, its payload at this range of the buffer: answer with a pong.
    Ping(Range<usize>),
    /// A complete message: [`FrameBuffer::message`] reads it.
    Message(Complete),
}

/// A complete message, as [`Step::Message`] gives it.
#[doc(hidden)]
#[derive(Debug, PartialEq, Eq)]
pub enum Complete {
    /// A text frame, its payload at this range of the buffer.
    Text(Range<usize>),
    /// A text message put together from fragments.
    Assembled,
    /// A binary frame, its payload at this range of the buffer.
    Binary(Range<usize>),
    /// A binary message put together from fragments.
    AssembledBinary,
    /// A close frame, its payload at this range of the buffer.
    Close(Range<usize>),
}

fn protocol_error(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("websocket protocol error: {what}"))
}

/// A frame header parsed from `b`: (fin, opcode, payload length, header length).
fn parse_header(b: &[u8]) -> io::Result<Option<(bool, u8, usize, usize)>> {
    if b.len() < 2 {
        return Ok(None);
    }
    let (fin, rsv, opcode) = (b[0] & 0x80 != 0, b[0] & 0x70, b[0] & 0x0f);
    if rsv != 0 {
        return Err(protocol_error("reserved bits set without an extension"));
    }
    if b[1] & 0x80 != 0 {
        return Err(protocol_error("a server frame is masked"));
    }
    let (len, header) = match b[1] & 0x7f {
        126 => {
            let Some(ext) = b.get(2..4) else { return Ok(None) };
            (u64::from(u16::from_be_bytes([ext[0], ext[1]])), 4)
        }
        127 => {
            let Some(ext) = b.get(2..10) else { return Ok(None) };
            (u64::from_be_bytes(ext.try_into().expect("8 bytes")), 10)
        }
        n => (u64::from(n), 2),
    };
    if opcode >= OP_CLOSE && (!fin || len > 125) {
        return Err(protocol_error("a control frame is fragmented or longer than 125 bytes"));
    }
    if len > MAX_MESSAGE as u64 {
        return Err(protocol_error("a message is larger than 64 MiB"));
    }
    Ok(Some((fin, opcode, len as usize, header)))
}

/// Appends a masked client frame.
fn write_frame(out: &mut Vec<u8>, opcode: u8, payload: &[u8]) {
    out.push(0x80 | opcode);
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n if n <= usize::from(u16::MAX) => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    let mask = fastrand::u32(..).to_ne_bytes();
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
}

impl GatewaySocket {
    /// Performs the upgrade handshake for `path` (with its query, which
    /// asks for `compression`) on `host_header`.
    pub async fn handshake(
        mut stream: GatewayStream,
        host_header: &str,
        path: &str,
        compression: Compression,
    ) -> io::Result<Self> {
        let key = tungstenite::handshake::client::generate_key();
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {host_header}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nUser-Agent: gateway-proxy\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await?;
        stream.flush().await?;
        let mut buf = vec![0u8; READ_CHUNK];
        let mut end = 0;
        let head_len = loop {
            let n = stream.read(&mut buf[end..]).await?;
            if n == 0 {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "closed during the websocket handshake"));
            }
            end += n;
            if let Some(at) = buf[..end].windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            if end >= MAX_RESPONSE_HEAD {
                return Err(protocol_error("the upgrade response head is too long"));
            }
        };
        // Discord answers through Cloudflare, which adds headers of its own.
        let mut headers = [httparse::EMPTY_HEADER; 124];
        let mut response = httparse::Response::new(&mut headers);
        response.parse(&buf[..head_len]).map_err(|e| protocol_error(&format!("bad upgrade response: {e}")))?;
        if response.code != Some(101) {
            return Err(io::Error::other(format!(
                "the gateway answered the upgrade with HTTP {}",
                response.code.map_or("?".into(), |c| c.to_string())
            )));
        }
        let header = |name: &str| {
            response.headers.iter().find(|h| h.name.eq_ignore_ascii_case(name)).map(|h| h.value.trim_ascii())
        };
        let expected = tungstenite::handshake::derive_accept_key(key.as_bytes());
        if header("Sec-WebSocket-Accept") != Some(expected.as_bytes()) {
            return Err(protocol_error("wrong Sec-WebSocket-Accept"));
        }
        if !header("Upgrade").is_some_and(|u| u.eq_ignore_ascii_case(b"websocket")) {
            return Err(protocol_error("no `Upgrade: websocket` in the response"));
        }
        Ok(Self {
            stream,
            frames: FrameBuffer::new(buf, head_len, end),
            out: Vec::with_capacity(512),
            decoder: Decoder::new(compression)?,
            inflated: Vec::new(),
            compressed_bytes: None,
        })
    }

    /// Counts the bytes of compressed messages received into `counter`.
    pub fn count_compressed_bytes(&mut self, counter: prometheus::IntCounter) {
        self.compressed_bytes = Some(counter);
    }

    /// The next message. Cancel-safe: state changes only once a whole frame
    /// has been read, so a dropped call loses nothing. `Ok(None)` when the
    /// connection ended without a close frame.
    pub async fn next(&mut self) -> io::Result<Option<Incoming<'_>>> {
        loop {
            match self.frames.parse()? {
                Step::Need(need) => {
                    let n = self.stream.read(self.frames.read_space(need)).await?;
                    if !self.frames.filled(n) {
                        return Ok(None);
                    }
                }
                Step::Ping(payload) => {
                    let payload = self.frames.payload(payload).to_vec();
                    self.send_frame(OP_PONG, &payload).await?;
                }
                Step::Message(message @ (Complete::Binary(_) | Complete::AssembledBinary))
                    if self.decoder.is_some() =>
                {
                    let Incoming::Binary(bytes) = self.frames.message(message)? else {
                        unreachable!("a binary message reads as binary")
                    };
                    if let Some(counter) = &self.compressed_bytes {
                        counter.inc_by(bytes.len() as u64);
                    }
                    let decoder = self.decoder.as_mut().expect("checked above");
                    if decoder.decode(bytes, &mut self.inflated)? {
                        return Ok(Some(Incoming::Text(utf8(&self.inflated)?)));
                    }
                }
                Step::Message(message) => return self.frames.message(message).map(Some),
            }
        }
    }

    async fn send_frame(&mut self, opcode: u8, payload: &[u8]) -> io::Result<()> {
        self.out.clear();
        write_frame(&mut self.out, opcode, payload);
        self.stream.write_all(&self.out).await?;
        self.stream.flush().await
    }

    /// Sends a text message.
    pub async fn send_text(&mut self, text: &str) -> io::Result<()> {
        self.send_frame(OP_TEXT, text.as_bytes()).await
    }

    /// Sends a close frame with `code` and `reason`, then waits for
    /// Discord's close (or the end of the stream), reading nothing else.
    pub async fn close(&mut self, code: u16, reason: &str) -> io::Result<()> {
        let mut payload = code.to_be_bytes().to_vec();
        payload.extend_from_slice(reason.as_bytes());
        self.send_frame(OP_CLOSE, &payload).await?;
        while let Some(message) = self.next().await? {
            if matches!(message, Incoming::Close(..)) {
                break;
            }
        }
        Ok(())
    }
}

impl FrameBuffer {
    /// A reader whose buffer `buf` already holds `buf[start..end]` unparsed
    /// (what followed the upgrade response).
    pub fn new(buf: Vec<u8>, start: usize, end: usize) -> Self {
        Self {
            buf,
            start,
            end,
            small_reads: SMALL_READS,
            fragments: Vec::new(),
            fragmented: None,
            assembled: Vec::new(),
        }
    }

    /// Parses the next frame of the unparsed bytes, consuming it if it is
    /// complete. Fragments are put together here; pongs are skipped.
    pub fn parse(&mut self) -> io::Result<Step> {
        loop {
            let Some((fin, opcode, len, header)) = parse_header(&self.buf[self.start..self.end])? else {
                return Ok(Step::Need(0));
            };
            if self.end - self.start < header + len {
                return Ok(Step::Need(header + len));
            }
            let at = self.start + header;
            self.start = at + len;
            match opcode {
                OP_PING => return Ok(Step::Ping(at..at + len)),
                OP_PONG => {}
                OP_CLOSE => return Ok(Step::Message(Complete::Close(at..at + len))),
                OP_TEXT | OP_BINARY if self.fragmented.is_some() => {
                    return Err(protocol_error("a new message inside a fragmented one"));
                }
                OP_TEXT | OP_BINARY if !fin => {
                    self.fragmented = Some(opcode);
                    self.fragments.clear();
                    self.fragments.extend_from_slice(&self.buf[at..at + len]);
                }
                OP_CONTINUATION => {
                    let Some(first) = self.fragmented else {
                        return Err(protocol_error("a continuation frame with nothing to continue"));
                    };
                    if self.fragments.len() + len > MAX_MESSAGE {
                        return Err(protocol_error("a message is larger than 64 MiB"));
                    }
                    self.fragments.extend_from_slice(&self.buf[at..at + len]);
                    if fin {
                        self.fragmented = None;
                        self.assembled = std::mem::take(&mut self.fragments);
                        return Ok(Step::Message(if first == OP_TEXT {
                            Complete::Assembled
                        } else {
                            Complete::AssembledBinary
                        }));
                    }
                }
                OP_TEXT => return Ok(Step::Message(Complete::Text(at..at + len))),
                OP_BINARY => return Ok(Step::Message(Complete::Binary(at..at + len))),
                _ => return Err(protocol_error("unknown opcode")),
            }
        }
    }

    /// The message [`Self::parse`] found (text is checked to be UTF-8 here).
    pub fn message(&self, message: Complete) -> io::Result<Incoming<'_>> {
        Ok(match message {
            Complete::Text(payload) => Incoming::Text(utf8(&self.buf[payload])?),
            Complete::Assembled => Incoming::Text(utf8(&self.assembled)?),
            Complete::Binary(payload) => Incoming::Binary(&self.buf[payload]),
            Complete::AssembledBinary => Incoming::Binary(&self.assembled),
            Complete::Close(payload) => {
                let (code, reason) = match &self.buf[payload] {
                    [a, b, reason @ ..] => (u16::from_be_bytes([*a, *b]), String::from_utf8_lossy(reason).into_owned()),
                    _ => (1005, String::new()),
                };
                Incoming::Close(code, reason)
            }
        })
    }

    /// The payload bytes at `range` of the buffer (a [`Step::Ping`]'s).
    pub fn payload(&self, range: Range<usize>) -> &[u8] {
        &self.buf[range]
    }

    /// Where the next read goes, with room for a frame of `need` bytes
    /// (never empty); report what was read with [`Self::filled`].
    pub fn read_space(&mut self, need: usize) -> &mut [u8] {
        let pending = self.end - self.start;
        if pending == 0 && self.buf.len() > READ_MIN && self.small_reads >= SMALL_READS {
            // Reads have been small for a while: the burst (or a very large
            // message) is over; give the memory back.
            self.buf = vec![0; READ_MIN];
            (self.start, self.end) = (0, 0);
        }
        if self.start > 0 && (pending == 0 || self.start + need.max(pending + 1) > self.buf.len()) {
            // Move the partial frame to the front.
            self.buf.copy_within(self.start..self.end, 0);
            (self.start, self.end) = (0, pending);
        }
        if self.buf.len() < need.max(self.end + 1) {
            self.buf.resize(need.max(self.end + 1).next_power_of_two(), 0);
        }
        &mut self.buf[self.end..]
    }

    /// Records that `n` bytes were read into [`Self::read_space`]; false at
    /// end of stream (`n == 0`).
    pub fn filled(&mut self, n: usize) -> bool {
        self.end += n;
        self.small_reads = if n < READ_MIN / 2 { self.small_reads.saturating_add(1) } else { 0 };
        if self.end == self.buf.len() && self.buf.len() < READ_CHUNK {
            // The read filled the buffer: a burst; read more at a time.
            self.buf.resize(self.buf.len() * 2, 0);
        }
        n > 0
    }
}

/// Every dispatch is validated as UTF-8 before it is relayed as text; the
/// vectorised check costs a fraction of the standard one on 1 KB payloads.
fn utf8(bytes: &[u8]) -> io::Result<&str> {
    simdutf8::basic::from_utf8(bytes).map_err(|_| protocol_error("a text message is not UTF-8"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unmask(frame: &[u8]) -> (u8, Vec<u8>) {
        let (_, opcode, len, header) = {
            // Client frames are masked: parse by hand here.
            let len = match frame[1] & 0x7f {
                126 => u16::from_be_bytes([frame[2], frame[3]]) as usize,
                127 => u64::from_be_bytes(frame[2..10].try_into().unwrap()) as usize,
                n => n as usize,
            };
            let header = match frame[1] & 0x7f {
                126 => 4,
                127 => 10,
                _ => 2,
            };
            (true, frame[0] & 0x0f, len, header)
        };
        let mask = &frame[header..header + 4];
        let payload = frame[header + 4..header + 4 + len].iter().enumerate().map(|(i, b)| b ^ mask[i & 3]).collect();
        (opcode, payload)
    }

    #[test]
    fn client_frames_are_masked_and_sized() {
        for len in [0usize, 1, 125, 126, 65_535, 65_536, 200_000] {
            let payload: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let mut out = Vec::new();
            write_frame(&mut out, OP_TEXT, &payload);
            assert_eq!(out[0], 0x80 | OP_TEXT);
            assert!(out[1] & 0x80 != 0, "masked");
            assert_eq!(unmask(&out), (OP_TEXT, payload));
        }
    }

    #[test]
    fn text_must_be_utf8() {
        assert_eq!(utf8("é𝄞 ok".as_bytes()).unwrap(), "é𝄞 ok");
        for bad in [
            &b"\xff"[..],
            b"\xc3",
            b"ok\xed\xa0\x80",
            &[b'a'; 100].iter().copied().chain([0xc0, 0x80]).collect::<Vec<_>>(),
        ] {
            assert!(utf8(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn server_headers_parse_or_are_refused() {
        assert_eq!(parse_header(&[0x81, 5]).unwrap(), Some((true, OP_TEXT, 5, 2)));
        assert_eq!(parse_header(&[0x01, 126, 1, 0]).unwrap(), Some((false, OP_TEXT, 256, 4)));
        assert_eq!(parse_header(&[0x82, 127, 0, 0, 0, 0, 0, 1, 0, 0]).unwrap(), Some((true, OP_BINARY, 65_536, 10)));
        assert_eq!(parse_header(&[0x81]).unwrap(), None);
        assert_eq!(parse_header(&[0x81, 126, 1]).unwrap(), None);
        for bad in
            [&[0x81u8, 0x85][..], &[0xc1, 1], &[0x09, 0], &[0x88, 126, 0, 200], &[0x82, 127, 0, 0, 0, 0, 0x10, 0, 0, 0]]
        {
            assert!(parse_header(bad).is_err(), "{bad:?}");
        }
    }

    /// A server frame (unmasked).
    fn server_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![if fin { 0x80 } else { 0 } | opcode];
        match payload.len() {
            n if n < 126 => out.push(n as u8),
            n if n <= 65_535 => {
                out.push(126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(payload);
        out
    }

    #[test]
    fn reads_what_a_gateway_sends_in_any_pieces() {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let big = "x".repeat(300_000);
        let big2 = big.clone();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut req = Vec::new();
            let mut byte = [0u8; 1];
            while !req.ends_with(b"\r\n\r\n") {
                s.read_exact(&mut byte).unwrap();
                req.push(byte[0]);
            }
            let req = String::from_utf8(req).unwrap();
            assert!(req.starts_with("GET /?v=10&encoding=json HTTP/1.1\r\n"), "{req}");
            let key = req.lines().find_map(|l| l.strip_prefix("Sec-WebSocket-Key: ")).unwrap();
            let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
            // Many headers, as a CDN in front of the gateway adds.
            let filler: String = (0..80).map(|i| format!("X-Filler-{i}: {}\r\n", "v".repeat(40))).collect();
            let mut wire = format!(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n{filler}Connection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
            )
            .into_bytes();
            wire.extend(server_frame(true, OP_TEXT, br#"{"op":10}"#));
            wire.extend(server_frame(true, OP_PING, b"hb"));
            wire.extend(server_frame(false, OP_TEXT, "é".as_bytes()));
            wire.extend(server_frame(false, OP_CONTINUATION, b"-mid-"));
            wire.extend(server_frame(true, OP_CONTINUATION, b"end"));
            wire.extend(server_frame(true, OP_BINARY, b"\x00\x01"));
            wire.extend(server_frame(true, OP_TEXT, big2.as_bytes()));
            wire.extend(server_frame(true, OP_TEXT, b"after"));
            wire.extend(server_frame(true, OP_CLOSE, b"\x0f\xa4Authentication failed."));
            // In awkward pieces: a header split, frames glued together.
            for piece in wire.chunks(7_777) {
                s.write_all(piece).unwrap();
                s.flush().unwrap();
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            // The client answered the ping with a masked pong carrying its payload.
            let mut head = [0u8; 2];
            s.read_exact(&mut head).unwrap();
            assert_eq!(head[0], 0x80 | OP_PONG);
            assert_eq!(head[1], 0x80 | 2);
            let mut rest = [0u8; 6];
            s.read_exact(&mut rest).unwrap();
            let payload: Vec<u8> = rest[4..].iter().enumerate().map(|(i, b)| b ^ rest[i & 3]).collect();
            assert_eq!(payload, b"hb");
        });
        let got = glommio::LocalExecutorBuilder::default()
            .spawn(move || async move {
                let tcp = glommio::net::TcpStream::connect(addr).await.unwrap();
                let mut ws = GatewaySocket::handshake(
                    GatewayStream::Plain(tcp),
                    "localhost",
                    "/?v=10&encoding=json",
                    Compression::None,
                )
                .await
                .unwrap();
                let mut got = Vec::new();
                loop {
                    match ws.next().await.unwrap() {
                        Some(Incoming::Text(t)) => {
                            got.push(if t.len() > 1000 { format!("big {}", t.len()) } else { t.to_owned() })
                        }
                        Some(Incoming::Binary(_)) => got.push("binary".to_owned()),
                        Some(Incoming::Close(code, reason)) => {
                            got.push(format!("close {code} {reason}"));
                            break;
                        }
                        None => break,
                    }
                }
                got
            })
            .unwrap()
            .join()
            .unwrap();
        server.join().unwrap();
        assert_eq!(
            got,
            [
                r#"{"op":10}"#.to_owned(),
                "é-mid-end".to_owned(),
                "binary".to_owned(),
                format!("big {}", big.len()),
                "after".to_owned(),
                "close 4004 Authentication failed.".to_owned()
            ]
        );
    }
}
