//! Identify `compress: true`: every message is a complete zlib stream of its
//! own (header, deflate data, Adler-32), in a binary frame. One whole buffer
//! in, one whole stream out is what libdeflate is made for: at level 1 it
//! gives the bytes flate2 gives at level 6 in half the time (bench/codecbench).

use libdeflater::{CompressionLvl, Compressor};

/// Largest input buffer kept between messages; a snapshot's GUILD_CREATE
/// does not pin its size for the connection's life.
const KEEP: usize = 64 << 10;

/// A libdeflate compressor and the buffer a message's parts are joined in.
pub struct ZlibMessage {
    compressor: Compressor,
    joined: Vec<u8>,
}

impl Default for ZlibMessage {
    fn default() -> Self {
        // Level 1: libdeflate's `fastest()` is level 0, which stores without compressing.
        let level = CompressionLvl::new(1).expect("1 is a libdeflate level");
        Self { compressor: Compressor::new(level), joined: Vec::new() }
    }
}

impl std::fmt::Debug for ZlibMessage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ZlibMessage")
    }
}

impl ZlibMessage {
    /// Compresses one message made of `parts` as a whole zlib stream, appended to `out`.
    pub fn compress(&mut self, parts: &[&[u8]], out: &mut Vec<u8>) {
        self.joined.clear();
        for p in parts {
            self.joined.extend_from_slice(p);
        }
        let start = out.len();
        out.resize(start + self.compressor.zlib_compress_bound(self.joined.len()), 0);
        let written = self
            .compressor
            .zlib_compress(&self.joined, &mut out[start..])
            .expect("the output holds libdeflate's bound for the input");
        out.truncate(start + written);
        if self.joined.capacity() > KEEP {
            self.joined = Vec::new();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn every_message_is_a_whole_zlib_stream() {
        let mut z = ZlibMessage::default();
        let big = "z".repeat(70_000);
        for msg in ["{\"op\":10}", big.as_str(), ""] {
            let mut out = b"kept".to_vec();
            z.compress(&[b"{\"s\":", b"1}", msg.as_bytes()], &mut out);
            assert_eq!(&out[..4], b"kept", "appended after what was there");
            let mut plain = Vec::new();
            flate2::read::ZlibDecoder::new(&out[4..]).read_to_end(&mut plain).unwrap();
            assert_eq!(plain, [b"{\"s\":1}".as_slice(), msg.as_bytes()].concat());
            if msg.len() > 1000 {
                assert!(out.len() < 1000, "it compresses: {} bytes", out.len());
            }
        }
    }
}
