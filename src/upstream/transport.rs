//! Transport compression from Discord (`compress=zlib-stream` or
//! `compress=zstd-stream` in the gateway URL): one decompression context per
//! connection, started fresh on every connection (a resume included), since
//! Discord starts a new stream with each one.

use std::{fmt, io};

/// Largest decompressed message accepted (as for uncompressed frames).
const MAX_MESSAGE: usize = 64 << 20;
/// Output capacity kept between messages; a larger one (after a big
/// GUILD_CREATE) is given back, so hundreds of quiet shards do not each keep
/// their largest message's buffer.
const KEEP_CAPACITY: usize = 64 << 10;
/// zlib-stream: every complete message ends with a sync flush.
const ZLIB_SUFFIX: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// Which transport compression the proxy asks Discord for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compression {
    /// Plain JSON text frames.
    #[default]
    None,
    /// One zlib stream per connection, each message sync-flushed.
    ZlibStream,
    /// One zstd stream per connection, each message flushed.
    ZstdStream,
}

impl Compression {
    /// The config value (and the `compress` query parameter, except `none`).
    pub fn name(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::ZlibStream => "zlib-stream",
            Self::ZstdStream => "zstd-stream",
        }
    }

    /// Parses a config value.
    pub fn parse(value: &str) -> Option<Self> {
        [Self::None, Self::ZlibStream, Self::ZstdStream].into_iter().find(|c| c.name() == value)
    }

    /// The gateway URL query for this compression.
    pub fn query(self) -> &'static str {
        match self {
            Self::None => "v=10&encoding=json",
            Self::ZlibStream => "v=10&encoding=json&compress=zlib-stream",
            Self::ZstdStream => "v=10&encoding=json&compress=zstd-stream",
        }
    }
}

/// A connection's decompression context.
pub enum Decoder {
    /// zlib-stream: compressed bytes are kept until a message's suffix.
    Zlib {
        /// The connection's inflater.
        inflater: Box<flate2::Decompress>,
        /// Compressed bytes of a message split over several frames.
        pending: Vec<u8>,
    },
    /// zstd-stream.
    Zstd(Box<zstd::stream::raw::Decoder<'static>>),
}

impl fmt::Debug for Decoder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Zlib { .. } => "Decoder::Zlib",
            Self::Zstd(_) => "Decoder::Zstd",
        })
    }
}

fn corrupt(what: impl fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("transport compression: {what}"))
}

impl Decoder {
    /// A fresh context for a new connection; `None` without compression.
    pub fn new(compression: Compression) -> io::Result<Option<Self>> {
        Ok(match compression {
            Compression::None => None,
            Compression::ZlibStream => {
                Some(Self::Zlib { inflater: Box::new(flate2::Decompress::new(true)), pending: Vec::new() })
            }
            Compression::ZstdStream => Some(Self::Zstd(Box::new(zstd::stream::raw::Decoder::new()?))),
        })
    }

    /// Decompresses one binary websocket message into `out` (cleared
    /// first). Returns whether `out` now holds a whole payload: a zlib
    /// message may be split over several websocket messages, and only the
    /// last one, ending in the sync-flush suffix, completes it.
    pub fn decode(&mut self, input: &[u8], out: &mut Vec<u8>) -> io::Result<bool> {
        out.clear();
        if out.capacity() > KEEP_CAPACITY {
            out.shrink_to(KEEP_CAPACITY);
        }
        match self {
            Self::Zlib { inflater, pending } => {
                let whole = if pending.is_empty() {
                    if !input.ends_with(&ZLIB_SUFFIX) {
                        pending.extend_from_slice(input);
                        return Ok(false);
                    }
                    input
                } else {
                    if pending.len() + input.len() > MAX_MESSAGE {
                        return Err(corrupt("a message is larger than 64 MiB"));
                    }
                    pending.extend_from_slice(input);
                    if !pending.ends_with(&ZLIB_SUFFIX) {
                        return Ok(false);
                    }
                    pending.as_slice()
                };
                inflate(inflater, whole, out)?;
                if !pending.is_empty() {
                    pending.clear();
                    pending.shrink_to(KEEP_CAPACITY);
                }
                Ok(true)
            }
            Self::Zstd(decoder) => {
                use zstd::stream::raw::{InBuffer, Operation, OutBuffer};
                let mut input = InBuffer::around(input);
                loop {
                    out.reserve((input.src.len() * 4).max(4096));
                    let len = out.len();
                    let spare = out.capacity() - len;
                    // A Vec is written in its spare capacity; its length
                    // follows the output position.
                    let mut buf = OutBuffer::around_pos(out, len);
                    decoder.run(&mut input, &mut buf).map_err(corrupt)?;
                    let written = buf.pos() - len;
                    if out.len() > MAX_MESSAGE {
                        return Err(corrupt("a message is larger than 64 MiB"));
                    }
                    // Done when the input is consumed and zstd had room to spare.
                    if input.pos() == input.src.len() && written < spare {
                        return Ok(true);
                    }
                }
            }
        }
    }
}

/// Inflates `input` (ending with a sync flush) into `out`.
fn inflate(inflater: &mut flate2::Decompress, input: &[u8], out: &mut Vec<u8>) -> io::Result<()> {
    let mut consumed = 0;
    loop {
        out.reserve((input.len() * 4).max(4096));
        let before_in = inflater.total_in();
        let before_out = inflater.total_out();
        let spare = out.capacity() - out.len();
        inflater.decompress_vec(&input[consumed..], out, flate2::FlushDecompress::Sync).map_err(corrupt)?;
        consumed += (inflater.total_in() - before_in) as usize;
        let produced = (inflater.total_out() - before_out) as usize;
        if out.len() > MAX_MESSAGE {
            return Err(corrupt("a message is larger than 64 MiB"));
        }
        if consumed == input.len() && produced < spare {
            return Ok(());
        }
        if produced == 0 && consumed < input.len() && inflater.total_in() == before_in {
            return Err(corrupt("the zlib stream does not advance"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn payload(n: usize) -> String {
        format!(
            "{{\"t\":\"MESSAGE_CREATE\",\"s\":{n},\"op\":0,\"d\":{{\"content\":\"{}\"}}}}",
            "x".repeat(n * 37 % 5000)
        )
    }

    #[test]
    fn zlib_stream_messages_decode_in_order_even_split_over_frames() {
        let mut encoder = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        let mut decoder = Decoder::new(Compression::ZlibStream).unwrap().unwrap();
        let mut out = Vec::new();
        for n in 0..200 {
            encoder.write_all(payload(n).as_bytes()).unwrap();
            encoder.flush().unwrap();
            let frame = std::mem::take(encoder.get_mut());
            assert!(frame.ends_with(&ZLIB_SUFFIX));
            if n % 3 == 0 && frame.len() > 8 {
                // Discord may split a message over several websocket messages.
                let (a, b) = frame.split_at(frame.len() / 2);
                assert!(!decoder.decode(a, &mut out).unwrap(), "no payload before the suffix");
                assert!(decoder.decode(b, &mut out).unwrap());
            } else {
                assert!(decoder.decode(&frame, &mut out).unwrap());
            }
            assert_eq!(out, payload(n).as_bytes());
        }
    }

    #[test]
    fn zstd_stream_messages_decode_in_order_large_ones_included() {
        let mut encoder = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
        let mut decoder = Decoder::new(Compression::ZstdStream).unwrap().unwrap();
        let mut out = Vec::new();
        let big = format!(
            "{{\"d\":\"{}\"}}",
            (0..300_000).map(|i| char::from(b'a' + (i * 7 % 26) as u8)).collect::<String>()
        );
        for n in 0..100 {
            let text = if n == 50 { big.clone() } else { payload(n) };
            encoder.write_all(text.as_bytes()).unwrap();
            encoder.flush().unwrap();
            let frame = std::mem::take(encoder.get_mut());
            assert!(decoder.decode(&frame, &mut out).unwrap());
            assert_eq!(out, text.as_bytes());
        }
        assert!(out.capacity() <= 1 << 20, "a big message's buffer is not kept for ever: {}", out.capacity());
        decoder.decode(&[], &mut out).unwrap();
        assert!(out.capacity() <= KEEP_CAPACITY);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let mut out = Vec::new();
        let mut zlib = Decoder::new(Compression::ZlibStream).unwrap().unwrap();
        assert!(zlib.decode(b"not zlib at all\x00\x00\xff\xff", &mut out).is_err());
        let mut zstd = Decoder::new(Compression::ZstdStream).unwrap().unwrap();
        assert!(zstd.decode(b"not zstd at all", &mut out).is_err());
    }

    #[test]
    fn config_names_round_trip() {
        for c in [Compression::None, Compression::ZlibStream, Compression::ZstdStream] {
            assert_eq!(Compression::parse(c.name()), Some(c));
        }
        assert_eq!(Compression::parse("gzip"), None);
        assert!(Compression::ZstdStream.query().ends_with("compress=zstd-stream"));
    }
}
