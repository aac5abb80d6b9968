//! The reader of Discord's websocket frames (src/upstream/websocket.rs),
//! driven through `FrameBuffer`, the synchronous part of
//! `GatewaySocket::next`, exactly as `next` drives it: parse, and on
//! `Step::Need` read into `read_space` and report with `filled`.
//!
//! Input: one control byte, then the bytes Discord sends after the upgrade
//! response. The control byte picks the reads' sizes (`common::pieces`, low
//! 7 bits) and whether the reader starts as after a handshake (bit 7: a 16
//! KiB buffer whose first read already holds the response head and the
//! first piece) or from an empty buffer.
//!
//! Oracle: tungstenite's client reading the same bytes at once. Every
//! message or ping both produce is the same (tungstenite reports a close
//! frame whose code is not allowed as its own 1002); the proxy's reader never
//! produces a message tungstenite does not (tungstenite is stricter about
//! close frames and may stop earlier), never gives an empty read space and
//! never loses or reorders bytes whatever the reads.

#![no_main]

mod common;

use gateway_proxy::upstream::websocket::{FrameBuffer, Incoming, Step};
use libfuzzer_sys::fuzz_target;
use std::io::{self, Read, Write};

#[derive(Debug, PartialEq, Eq)]
enum Event {
    Text(String),
    Binary(Vec<u8>),
    Ping(Vec<u8>),
    Close(u16, String),
}

/// The proxy's reader over `pieces` (one read returns at most one piece).
fn proxy(pieces: &[&[u8]], total: usize, after_handshake: bool) -> (Vec<Event>, bool) {
    let mut pieces = pieces.iter().copied();
    let mut piece: &[u8] = &[];
    let mut frames = if after_handshake {
        const HEAD: usize = 129;
        let mut buf = vec![0u8; 16 << 10];
        let first = pieces.next().unwrap_or_default();
        let n = first.len().min(buf.len() - HEAD);
        buf[HEAD..HEAD + n].copy_from_slice(&first[..n]);
        piece = &first[n..];
        FrameBuffer::new(buf, HEAD, HEAD + n)
    } else {
        FrameBuffer::new(Vec::new(), 0, 0)
    };
    let mut events = Vec::new();
    loop {
        match frames.parse() {
            Err(_) => return (events, true),
            Ok(Step::Need(need)) => {
                if need > total {
                    // This frame can never be complete: the same as reading to the end.
                    return (events, false);
                }
                if piece.is_empty() {
                    piece = pieces.next().unwrap_or_default();
                }
                let space = frames.read_space(need);
                assert!(!space.is_empty(), "an empty read space for a {need}-byte frame");
                let n = space.len().min(piece.len());
                space[..n].copy_from_slice(&piece[..n]);
                piece = &piece[n..];
                if !frames.filled(n) {
                    return (events, false);
                }
            }
            Ok(Step::Ping(payload)) => events.push(Event::Ping(frames.payload(payload).to_vec())),
            Ok(Step::Message(message)) => match frames.message(message) {
                Ok(Incoming::Text(text)) => events.push(Event::Text(text.to_owned())),
                Ok(Incoming::Binary(bytes)) => events.push(Event::Binary(bytes.to_vec())),
                Ok(Incoming::Close(code, reason)) => {
                    events.push(Event::Close(code, reason));
                    return (events, false);
                }
                Err(_) => return (events, true),
            },
        }
    }
}

struct Wire<'a>(&'a [u8]);

impl Read for Wire<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.0.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        self.0.read(buf)
    }
}

impl Write for Wire<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// tungstenite's client over the same bytes.
fn reference(stream: &[u8]) -> Vec<Event> {
    let mut config = tungstenite::protocol::WebSocketConfig::default();
    config.max_message_size = Some(64 << 20);
    config.max_frame_size = Some(64 << 20);
    let mut ctx = tungstenite::protocol::WebSocketContext::new(tungstenite::protocol::Role::Client, Some(config));
    let mut wire = Wire(stream);
    let mut events = Vec::new();
    loop {
        match ctx.read(&mut wire) {
            Ok(tungstenite::Message::Text(t)) => events.push(Event::Text(t.as_str().to_owned())),
            Ok(tungstenite::Message::Binary(b)) => events.push(Event::Binary(b.to_vec())),
            Ok(tungstenite::Message::Ping(p)) => events.push(Event::Ping(p.to_vec())),
            Ok(tungstenite::Message::Pong(_)) => {}
            Ok(tungstenite::Message::Close(frame)) => {
                events.push(match frame {
                    Some(f) => Event::Close(u16::from(f.code), f.reason.as_str().to_owned()),
                    None => Event::Close(1005, String::new()),
                });
                return events;
            }
            Ok(tungstenite::Message::Frame(_)) => unreachable!("raw frames are never read"),
            Err(_) => return events,
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&ctl, stream)) = data.split_first() else { return };
    let pieces = common::pieces(ctl & 0x7f, stream);
    let (ours, _failed) = proxy(&pieces, stream.len(), ctl & 0x80 != 0);
    let theirs = reference(stream);
    assert!(theirs.len() <= ours.len(), "tungstenite read more:\n ours {ours:?}\ntheirs {theirs:?}");
    for (a, b) in ours.iter().zip(&theirs) {
        // tungstenite reports a close with a code RFC 6455 does not allow
        // as the 1002 it answers with.
        if matches!((a, b), (Event::Close(..), Event::Close(1002, r)) if r == "Protocol violation") {
            continue;
        }
        assert_eq!(a, b, "the messages differ:\n ours {ours:?}\ntheirs {theirs:?}");
    }
});
