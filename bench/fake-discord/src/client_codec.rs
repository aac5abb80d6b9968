//! The encodings a gateway client can ask the proxy for, and their
//! decoders: the client side the soak and the loadtest consumers share.

use std::io::Read;

/// How a client asks the proxy to encode what it sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoding {
    /// Plain JSON text frames.
    Plain,
    /// `compress=zlib-stream`: one zlib stream over the connection, each
    /// message ending with `00 00 ff ff`.
    ZlibStream,
    /// `compress=zstd-stream`: one zstd stream over the connection, a frame
    /// flushed per message.
    ZstdStream,
    /// Identify `compress: true`: each message a whole zlib stream of its own.
    ZlibMessage,
}

impl Encoding {
    /// Every encoding, in the order clients are given them (round robin over shards).
    pub const ALL: [Encoding; 4] = [Encoding::Plain, Encoding::ZlibStream, Encoding::ZstdStream, Encoding::ZlibMessage];

    /// The name reports print (the `compress` value, or `identify-compress`).
    pub fn name(self) -> &'static str {
        match self {
            Encoding::Plain => "plain",
            Encoding::ZlibStream => "zlib-stream",
            Encoding::ZstdStream => "zstd-stream",
            Encoding::ZlibMessage => "identify-compress",
        }
    }

    /// The connect URL's query.
    pub fn query(self) -> &'static str {
        match self {
            Encoding::Plain | Encoding::ZlibMessage => "v=10&encoding=json",
            Encoding::ZlibStream => "v=10&encoding=json&compress=zlib-stream",
            Encoding::ZstdStream => "v=10&encoding=json&compress=zstd-stream",
        }
    }

    /// Whether Identify carries `compress: true`.
    pub fn identify_compress(self) -> bool {
        self == Encoding::ZlibMessage
    }
}

/// Decoder state of one connection.
pub enum Decoder {
    /// Messages are the payload.
    Plain,
    /// The connection's inflater, a message's compressed bytes until its
    /// suffix, and the last payload.
    ZlibStream {
        /// The connection's zlib stream.
        inflate: flate2::Decompress,
        /// Compressed bytes of the message being received.
        input: Vec<u8>,
        /// The last payload.
        out: Vec<u8>,
    },
    /// The connection's zstd stream and the last payload.
    ZstdStream {
        /// The connection's zstd stream.
        dctx: Box<zstd::stream::raw::Decoder<'static>>,
        /// Output buffer; the last payload is its start.
        out: Vec<u8>,
    },
    /// The last payload (each message is a zlib stream of its own).
    ZlibMessage {
        /// The last payload.
        out: Vec<u8>,
    },
}

impl Decoder {
    /// A fresh decoder for a new connection using `e`.
    pub fn new(e: Encoding) -> std::io::Result<Self> {
        Ok(match e {
            Encoding::Plain => Decoder::Plain,
            Encoding::ZlibStream => {
                Decoder::ZlibStream { inflate: flate2::Decompress::new(true), input: Vec::new(), out: Vec::new() }
            }
            Encoding::ZstdStream => {
                Decoder::ZstdStream { dctx: Box::new(zstd::stream::raw::Decoder::new()?), out: vec![0; 1 << 16] }
            }
            Encoding::ZlibMessage => Decoder::ZlibMessage { out: Vec::new() },
        })
    }

    /// Decodes one binary message; `Ok(None)` while a zlib-stream message
    /// is incomplete.
    pub fn decode<'a>(&'a mut self, b: &'a [u8]) -> Result<Option<&'a [u8]>, String> {
        match self {
            Decoder::Plain => Ok(Some(b)),
            Decoder::ZlibMessage { out } => {
                out.clear();
                flate2::read::ZlibDecoder::new(b).read_to_end(out).map_err(|e| format!("zlib message: {e}"))?;
                Ok(Some(&out[..]))
            }
            Decoder::ZlibStream { inflate, input, out } => {
                input.extend_from_slice(b);
                if !input.ends_with(&[0, 0, 0xff, 0xff]) {
                    return Ok(None);
                }
                out.clear();
                let start = inflate.total_in();
                loop {
                    if out.capacity() - out.len() < 4096 {
                        out.reserve(out.capacity().max(16 * 1024));
                    }
                    let used = (inflate.total_in() - start) as usize;
                    inflate
                        .decompress_vec(&input[used..], out, flate2::FlushDecompress::Sync)
                        .map_err(|e| format!("zlib-stream: {e}"))?;
                    let used = (inflate.total_in() - start) as usize;
                    if used == input.len() && out.capacity() > out.len() {
                        break;
                    }
                }
                input.clear();
                Ok(Some(&out[..]))
            }
            Decoder::ZstdStream { dctx, out } => {
                use zstd::stream::raw::{InBuffer, Operation, OutBuffer};
                let mut input = InBuffer::around(b);
                let mut len = 0;
                loop {
                    if out.len() - len < 16 * 1024 {
                        let grow = out.len().max(64 * 1024);
                        out.resize(out.len() + grow, 0);
                    }
                    let mut output = OutBuffer::around_pos(&mut out[..], len);
                    dctx.run(&mut input, &mut output).map_err(|e| format!("zstd-stream: {e}"))?;
                    len = output.pos();
                    if input.pos() == b.len() && len < out.len() {
                        break;
                    }
                }
                Ok(Some(&out[..len]))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn zlib_message_round_trip() {
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
        z.write_all(br#"{"op":11}"#).unwrap();
        let bytes = z.finish().unwrap();
        let mut d = Decoder::new(Encoding::ZlibMessage).unwrap();
        assert_eq!(d.decode(&bytes).unwrap(), Some(&br#"{"op":11}"#[..]));
        assert_eq!(d.decode(&bytes).unwrap(), Some(&br#"{"op":11}"#[..]));
    }

    #[test]
    fn zlib_stream_waits_for_suffix() {
        let mut c = flate2::Compress::new(flate2::Compression::fast(), true);
        let mut out = Vec::with_capacity(256);
        c.compress_vec(br#"{"op":10}"#, &mut out, flate2::FlushCompress::Sync).unwrap();
        let mut d = Decoder::new(Encoding::ZlibStream).unwrap();
        let (a, b) = out.split_at(3);
        assert_eq!(d.decode(a).unwrap(), None);
        assert_eq!(d.decode(b).unwrap(), Some(&br#"{"op":10}"#[..]));
    }
}
