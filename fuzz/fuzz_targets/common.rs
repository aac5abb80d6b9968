//! Helpers shared by the fuzz targets.

#![allow(dead_code)]

/// Cuts `data` into the pieces a socket might deliver it in, as chosen by
/// `ctl`: its low two bits pick the largest piece (1 byte, 7, 300 or
/// everything at once), the other bits seed the sizes below that.
pub fn pieces(ctl: u8, data: &[u8]) -> Vec<&[u8]> {
    let max = match ctl & 3 {
        0 => 1,
        1 => 7,
        2 => 300,
        _ => usize::MAX,
    };
    let mut state = u32::from(ctl >> 2).wrapping_mul(2_654_435_761) | 1;
    let mut out = Vec::new();
    let mut rest = data;
    while !rest.is_empty() {
        // xorshift32
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        let n = if max == usize::MAX { rest.len() } else { 1 + state as usize % max };
        let (piece, tail) = rest.split_at(n.min(rest.len()));
        out.push(piece);
        rest = tail;
    }
    out
}

/// `data` without the JSON whitespace outside strings (`data` is valid JSON).
pub fn minify(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len());
    let (mut in_str, mut escaped) = (false, false);
    for &b in data {
        if in_str {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_str = false;
            }
        } else if b == b'"' {
            in_str = true;
        } else if matches!(b, b' ' | b'\t' | b'\n' | b'\r') {
            continue;
        }
        out.push(b);
    }
    out
}

/// What the proxy puts on the wire to close a client with `code` and
/// `reason` must be a close frame the client accepts: the code intact, the
/// reason valid UTF-8 (a prefix of `reason` when it had to be cut).
pub fn check_close_frame(code: u16, reason: &str) {
    let mut wire = Vec::new();
    gateway_proxy::downstream::frames::FrameWriter::new(gateway_proxy::downstream::frames::Encoding::Json)
        .close(code, reason, &mut wire);
    use std::io::{self, Read, Write};
    struct Wire<'a>(&'a [u8], Vec<u8>);
    impl Read for Wire<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.0.read(buf)
        }
    }
    impl Write for Wire<'_> {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.1.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    let mut ctx = tungstenite::protocol::WebSocketContext::new(tungstenite::protocol::Role::Client, None);
    match ctx.read(&mut Wire(&wire, Vec::new())) {
        Ok(tungstenite::Message::Close(Some(frame))) => {
            assert_eq!(u16::from(frame.code), code);
            assert!(reason.starts_with(frame.reason.as_str()), "{reason:?} sent as {:?}", frame.reason);
        }
        other => panic!("close {code} {reason:?} is sent as an invalid frame: {other:?}"),
    }
}

/// The members of the JSON object `data` in order, duplicates included,
/// values as raw text borrowed from `data`. `None` unless `data` is a valid
/// JSON object whose keys have no escapes (the keys are then exactly the
/// bytes between their quotes).
pub fn top_level(data: &[u8]) -> Option<Vec<(&str, &serde_json::value::RawValue)>> {
    use serde::de::{Deserializer, MapAccess, Visitor};
    struct Members;
    impl<'de> Visitor<'de> for Members {
        type Value = Vec<(&'de str, &'de serde_json::value::RawValue)>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut out = Vec::new();
            while let Some(entry) = map.next_entry::<&'de str, &'de serde_json::value::RawValue>()? {
                out.push(entry);
            }
            Ok(out)
        }
    }
    let mut de = serde_json::Deserializer::from_slice(data);
    let members = (&mut de).deserialize_map(Members).ok()?;
    de.end().ok()?;
    Some(members)
}

/// Whether `data` is one valid JSON value (strings are not checked to be
/// UTF-8; numbers of any size are accepted).
pub fn is_json(data: &[u8]) -> bool {
    serde_json::from_slice::<serde::de::IgnoredAny>(data).is_ok()
}

/// Whether `data` is a valid JSON object (as [`is_json`]).
pub fn is_json_object(data: &[u8]) -> bool {
    use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};
    struct Object;
    impl<'de> Visitor<'de> for Object {
        type Value = ();
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
            while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
            Ok(())
        }
    }
    let mut de = serde_json::Deserializer::from_slice(data);
    (&mut de).deserialize_map(Object).is_ok() && de.end().is_ok()
}

/// The byte range of `part` (a slice of `whole`) in `whole`.
pub fn range_in(whole: &[u8], part: &[u8]) -> std::ops::Range<usize> {
    let start = part.as_ptr() as usize - whole.as_ptr() as usize;
    assert!(start + part.len() <= whole.len());
    start..start + part.len()
}

/// The deepest nesting of arrays and objects in the JSON `data`.
pub fn nesting(data: &[u8]) -> usize {
    let (mut depth, mut max) = (0usize, 0usize);
    let (mut in_str, mut escaped) = (false, false);
    for &b in data {
        if in_str {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_str = false;
            }
            continue;
        }
        match b {
            b'"' => in_str = true,
            b'[' | b'{' => {
                depth += 1;
                max = max.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    max
}
