//! `compress=zlib-stream`: one deflate context per connection for its whole
//! life; every message ends with a sync flush (`00 00 ff ff`) so the client's
//! single inflater can decode it as soon as it arrives.

use flate2::{Compress, Compression, FlushCompress};

/// A connection's deflate context.
pub struct ZlibStream {
    compress: Compress,
}

impl Default for ZlibStream {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for ZlibStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZlibStream").field("total_in", &self.compress.total_in()).finish()
    }
}

impl ZlibStream {
    /// A fresh stream (zlib header included in the first message, as Discord does).
    pub fn new() -> Self {
        Self { compress: Compress::new(Compression::fast(), true) }
    }

    /// Compresses one message made of `parts` and appends it to `out`.
    pub fn compress(&mut self, parts: &[&[u8]], out: &mut Vec<u8>) {
        deflate_parts(&mut self.compress, parts, FlushCompress::Sync, out);
    }
}

/// Deflates `parts` as one message, ending it with `last` (Sync for a
/// stream that goes on, Finish for a whole zlib stream), appending to `out`.
pub(super) fn deflate_parts(compress: &mut Compress, parts: &[&[u8]], last: FlushCompress, out: &mut Vec<u8>) {
    let end = parts.len().saturating_sub(1);
    for (i, part) in parts.iter().enumerate() {
        feed(compress, part, if i == end { last } else { FlushCompress::None }, out);
    }
    if parts.is_empty() {
        feed(compress, &[], last, out);
    }
}

fn feed(compress: &mut Compress, mut input: &[u8], flush: FlushCompress, out: &mut Vec<u8>) {
    loop {
        out.reserve(input.len() / 2 + 64);
        let before = compress.total_in();
        compress.compress_vec(input, out, flush).expect("deflate of in-memory data cannot fail");
        input = &input[(compress.total_in() - before) as usize..];
        // Done once all input is taken and deflate stopped short of the
        // buffer's end, i.e. it had nothing more to emit for this flush.
        if input.is_empty() && out.len() < out.capacity() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::{Decompress, FlushDecompress};

    #[test]
    fn messages_end_with_sync_flush_and_inflate_in_one_context() {
        let mut z = ZlibStream::new();
        let mut inflate = Decompress::new(true);
        let big = "x".repeat(100_000);
        for msg in ["{\"op\":10}", big.as_str(), "{\"op\":11}"] {
            let mut out = Vec::new();
            z.compress(&[msg.as_bytes()], &mut out);
            assert!(out.ends_with(&[0, 0, 0xff, 0xff]));
            let mut plain = Vec::with_capacity(msg.len() + 64);
            inflate.decompress_vec(&out, &mut plain, FlushDecompress::Sync).unwrap();
            assert_eq!(plain, msg.as_bytes());
        }
    }

    #[test]
    fn parts_form_one_message() {
        let mut z = ZlibStream::new();
        let mut out = Vec::new();
        z.compress(&[b"{\"s\":", b"12", b"}"], &mut out);
        let mut inflate = Decompress::new(true);
        let mut plain = Vec::with_capacity(64);
        inflate.decompress_vec(&out, &mut plain, FlushDecompress::Sync).unwrap();
        assert_eq!(plain, b"{\"s\":12}");
    }
}
