//! Identify `compress: true`: every message is a complete zlib stream of its
//! own (header, deflate data, Adler-32), in a binary frame.

use super::zlib_stream::deflate_parts;
use flate2::{Compress, Compression, FlushCompress};

/// A reusable deflate context, reset for each message.
pub struct ZlibMessage {
    compress: Compress,
}

impl Default for ZlibMessage {
    fn default() -> Self {
        Self { compress: Compress::new(Compression::fast(), true) }
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
        self.compress.reset();
        deflate_parts(&mut self.compress, parts, FlushCompress::Finish, out);
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
        for msg in ["{\"op\":10}", big.as_str()] {
            let mut out = Vec::new();
            z.compress(&[b"{\"s\":", b"1}", msg.as_bytes()], &mut out);
            let mut plain = Vec::new();
            flate2::read::ZlibDecoder::new(&out[..]).read_to_end(&mut plain).unwrap();
            assert_eq!(plain, [b"{\"s\":1}".as_slice(), msg.as_bytes()].concat());
        }
    }
}
