//! `compress=zstd-stream`: one zstd streaming context per connection; each
//! message is flushed so that every binary frame decodes on arrival.

use zstd::stream::raw::{Encoder, InBuffer, Operation, OutBuffer};

/// Compression level. Each message is flushed as its own block, and for
/// ~1 KB blocks building Huffman tables for the literals costs more CPU than
/// it saves bytes; negative levels leave literals raw and rely on matches
/// against the connection's history, which is where the ratio comes from.
const LEVEL: i32 = -1;

/// A connection's zstd context.
pub struct ZstdStream {
    encoder: Encoder<'static>,
}

impl std::fmt::Debug for ZstdStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ZstdStream")
    }
}

impl Default for ZstdStream {
    fn default() -> Self {
        Self::new()
    }
}

impl ZstdStream {
    /// A fresh stream.
    pub fn new() -> Self {
        Self { encoder: Encoder::new(LEVEL).expect("zstd encoder with a valid level") }
    }

    /// Compresses one message made of `parts`, flushed, and appends it to `out`.
    pub fn compress(&mut self, parts: &[&[u8]], out: &mut Vec<u8>) {
        for part in parts {
            let mut input = InBuffer::around(part);
            while input.pos() < part.len() {
                out.reserve(part.len() / 2 + 128);
                let pos = out.len();
                let mut output = OutBuffer::around_pos(out, pos);
                self.encoder.run(&mut input, &mut output).expect("zstd compression of in-memory data");
            }
        }
        loop {
            out.reserve(256);
            let pos = out.len();
            let mut output = OutBuffer::around_pos(out, pos);
            let remaining = self.encoder.flush(&mut output).expect("zstd flush");
            if remaining == 0 {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use zstd::stream::raw::Decoder;

    #[test]
    fn every_message_decodes_on_arrival_in_one_context() {
        let mut z = ZstdStream::new();
        let mut decoder = Decoder::new().unwrap();
        let big = "y".repeat(200_000);
        for msg in ["{\"op\":10}", big.as_str(), "{\"op\":11}"] {
            let mut frame = Vec::new();
            z.compress(&[msg.as_bytes()], &mut frame);
            let mut plain: Vec<u8> = Vec::with_capacity(msg.len() + 1024);
            let mut input = InBuffer::around(&frame);
            while input.pos() < frame.len() || plain.len() < msg.len() {
                let pos = plain.len();
                let mut output = OutBuffer::around_pos(&mut plain, pos);
                decoder.run(&mut input, &mut output).unwrap();
                if plain.len() == plain.capacity() {
                    plain.reserve(4096);
                }
                if input.pos() == frame.len() && plain.len() >= msg.len() {
                    break;
                }
            }
            assert_eq!(plain, msg.as_bytes());
        }
    }
}
