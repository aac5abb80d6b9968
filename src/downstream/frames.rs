//! The websocket layer towards clients, driven without blocking.
//!
//! Reading: tungstenite's [`WebSocketContext`] parses client frames (masking,
//! fragmentation, control frames, size limits) from bytes the connection
//! read itself. Writing: server frames are unmasked, so the writer lays down
//! tungstenite's [`FrameHeader`] and the payload directly into its output
//! buffer, splicing each client's sequence number without extra copies.

use crate::compression::{zlib_message::ZlibMessage, zlib_stream::ZlibStream, zstd_stream::ZstdStream};
use std::io::{self, Read, Write};
use tungstenite::protocol::{
    frame::{
        coding::{Control, Data, OpCode},
        FrameHeader,
    },
    Role, WebSocketConfig, WebSocketContext,
};
pub use tungstenite::Message;

/// Largest payload a client may send (Discord's limit).
pub const MAX_CLIENT_PAYLOAD: usize = 4096;

/// How messages to this client are encoded.
#[derive(Debug)]
pub enum Encoding {
    /// Plain JSON in text frames.
    Json,
    /// One zlib stream for the whole connection, binary frames.
    ZlibStream(Box<ZlibStream>),
    /// One zstd stream for the whole connection, each message flushed; binary frames.
    ZstdStream(Box<ZstdStream>),
    /// Identify `compress: true`: every message a complete zlib stream of its own.
    ZlibMessage(Box<ZlibMessage>),
}

/// Frames outgoing messages for one client.
#[derive(Debug)]
pub struct FrameWriter {
    encoding: Encoding,
    scratch: Vec<u8>,
    /// Payload bytes before compression (for metrics and benchmarks).
    pub bytes_in: u64,
    /// Bytes put on the wire.
    pub bytes_out: u64,
}

impl FrameWriter {
    /// A writer for the given encoding.
    pub fn new(encoding: Encoding) -> Self {
        Self { encoding, scratch: Vec::new(), bytes_in: 0, bytes_out: 0 }
    }

    /// Appends one complete message made of `parts` to `out`.
    pub fn message(&mut self, parts: &[&[u8]], out: &mut Vec<u8>) {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        self.bytes_in += len as u64;
        let before = out.len();
        self.scratch.clear();
        match &mut self.encoding {
            Encoding::Json => {
                header(OpCode::Data(Data::Text), len, out);
                for p in parts {
                    out.extend_from_slice(p);
                }
                self.bytes_out += (out.len() - before) as u64;
                return;
            }
            Encoding::ZlibStream(z) => z.compress(parts, &mut self.scratch),
            Encoding::ZstdStream(z) => z.compress(parts, &mut self.scratch),
            Encoding::ZlibMessage(z) => z.compress(parts, &mut self.scratch),
        }
        header(OpCode::Data(Data::Binary), self.scratch.len(), out);
        out.extend_from_slice(&self.scratch);
        self.bytes_out += (out.len() - before) as u64;
    }

    /// Appends a close frame (`reason` cut to the 123 bytes a close frame holds, on a character boundary).
    pub fn close(&mut self, code: u16, reason: &str, out: &mut Vec<u8>) {
        let mut end = reason.len().min(123);
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        let reason = &reason.as_bytes()[..end];
        header(OpCode::Control(Control::Close), 2 + reason.len(), out);
        out.extend_from_slice(&code.to_be_bytes());
        out.extend_from_slice(reason);
    }
}

fn header(opcode: OpCode, len: usize, out: &mut Vec<u8>) {
    let h = FrameHeader { opcode, ..FrameHeader::default() };
    h.format(len as u64, out).expect("writing to a Vec cannot fail");
}

/// Reads client frames from bytes the connection supplies.
pub struct FrameReader {
    ctx: WebSocketContext,
    /// Input a stopped [`Self::feed`] left unread, read first by the next.
    held: Vec<u8>,
}

impl std::fmt::Debug for FrameReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FrameReader")
    }
}

/// Why reading client frames stopped.
#[derive(Debug)]
pub enum ReadError {
    /// A message larger than Discord allows: close 4002.
    TooLarge,
    /// Broken websocket framing: close 1002.
    Protocol(String),
    /// The client completed the close handshake.
    Closed,
}

struct MemIo<'a> {
    input: &'a [u8],
    output: &'a mut Vec<u8>,
}

impl Read for MemIo<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.input.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = buf.len().min(self.input.len());
        buf[..n].copy_from_slice(&self.input[..n]);
        self.input = &self.input[n..];
        Ok(n)
    }
}

impl Write for MemIo<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.output.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Default for FrameReader {
    fn default() -> Self {
        Self::new()
    }
}

impl FrameReader {
    /// A reader for a server-side connection.
    pub fn new() -> Self {
        let mut config = WebSocketConfig::default();
        // Room for control frames and a little slack; the 4096-byte rule is checked per message.
        config.max_message_size = Some(64 << 10);
        config.max_frame_size = Some(64 << 10);
        // Clients send a few small payloads a minute: tungstenite's 128 KiB
        // default read buffer (zero-filled on the first read) would cost
        // every connection that much resident memory.
        config.read_buffer_size = 4 << 10;
        config.write_buffer_size = 0;
        Self { ctx: WebSocketContext::new(Role::Server, Some(config)), held: Vec::new() }
    }

    /// Feeds bytes read from the socket. Complete text/binary messages go to
    /// `on_message`; bytes tungstenite wants sent (pongs, close replies) are
    /// appended to `replies`. When `on_message` returns false the feed stops
    /// there, and the next one (even of no bytes) goes on with the rest.
    pub fn feed(
        &mut self,
        input: &[u8],
        replies: &mut Vec<u8>,
        mut on_message: impl FnMut(Message) -> bool,
    ) -> Result<(), ReadError> {
        let joined;
        let input = if self.held.is_empty() {
            input
        } else {
            joined = [std::mem::take(&mut self.held).as_slice(), input].concat();
            &joined
        };
        let mut io = MemIo { input, output: replies };
        loop {
            match self.ctx.read(&mut io) {
                Ok(msg @ (Message::Text(_) | Message::Binary(_))) => {
                    let len = match &msg {
                        Message::Text(t) => t.len(),
                        Message::Binary(b) => b.len(),
                        _ => 0,
                    };
                    if len > MAX_CLIENT_PAYLOAD {
                        return Err(ReadError::TooLarge);
                    }
                    if !on_message(msg) {
                        // What tungstenite has not read yet (beyond its 4 KiB reads).
                        self.held = io.input.to_vec();
                        return Ok(());
                    }
                }
                Ok(Message::Close(_)) => {
                    let _ = self.ctx.flush(&mut io);
                    return Err(ReadError::Closed);
                }
                Ok(_) => {
                    let _ = self.ctx.flush(&mut io);
                }
                Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                    let _ = self.ctx.flush(&mut io);
                    return Ok(());
                }
                Err(tungstenite::Error::Capacity(_)) => return Err(ReadError::TooLarge),
                Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => {
                    return Err(ReadError::Closed)
                }
                Err(e) => return Err(ReadError::Protocol(e.to_string())),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A masked client text frame.
    fn client_frame(payload: &[u8]) -> Vec<u8> {
        let mut out = vec![0x81];
        match payload.len() {
            n if n < 126 => out.push(0x80 | n as u8),
            n => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
        }
        let mask = [0x37, 0xfa, 0x21, 0x3d];
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
        out
    }

    #[test]
    fn a_long_close_reason_is_cut_on_a_character_boundary() {
        // The reason can echo what a client sent (`?v=é…`).
        let reason = format!("invalid API version {}: use v=10", "é".repeat(80));
        let mut out = Vec::new();
        FrameWriter::new(Encoding::Json).close(4012, &reason, &mut out);
        assert_eq!(out[1] as usize, out.len() - 2, "one frame, a 7-bit length");
        assert_eq!(&out[2..4], &4012u16.to_be_bytes());
        let sent = std::str::from_utf8(&out[4..]).expect("the reason stays UTF-8");
        assert!(sent.len() <= 123 && reason.starts_with(sent), "{sent:?}");
        assert_eq!(sent.len(), 122);
    }

    #[test]
    fn a_stopped_feed_loses_nothing() {
        // An Identify with 6 KB of commands pipelined behind it in one read:
        // more than tungstenite reads at once.
        let messages: Vec<Vec<u8>> = (0..4).map(|i| vec![b'a' + i; if i == 0 { 300 } else { 2000 }]).collect();
        let input: Vec<u8> = messages.iter().flat_map(|m| client_frame(m)).collect();
        let mut reader = FrameReader::new();
        let mut got = Vec::new();
        let mut replies = Vec::new();
        reader
            .feed(&input, &mut replies, |msg| {
                got.push(msg.into_data().to_vec());
                false
            })
            .unwrap();
        assert_eq!(got.len(), 1, "stopped after the first message");
        reader
            .feed(&[], &mut replies, |msg| {
                got.push(msg.into_data().to_vec());
                true
            })
            .unwrap();
        assert_eq!(got, messages);
    }
}
