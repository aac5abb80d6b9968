//! Locating the top-level fields of a gateway payload without parsing it.
//!
//! The relay path must know `op`, `t` and where `s` sits in every payload, but
//! decoding a whole `MESSAGE_CREATE` just for that would cost more than the
//! rest of the relay. The scanner walks the top-level object only, skipping
//! nested values by bracket depth while honouring strings and escapes, so a
//! message body that contains `"s":` can never be mistaken for the sequence.

use std::ops::Range;

/// Where the top-level fields of one payload are, as byte ranges into it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fields {
    /// Value of `op`, if present and an integer.
    pub op: Option<u8>,
    /// Range of the raw value of `s` (digits or `null`).
    pub s: Option<Range<usize>>,
    /// Range of the contents of `t` (between the quotes) when it is a string.
    pub t: Option<Range<usize>>,
    /// Range of the raw value of `d`.
    pub d: Option<Range<usize>>,
}

/// Why a payload could not be scanned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScanError {
    /// Byte offset where scanning failed.
    pub at: usize,
}

impl std::fmt::Display for ScanError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "malformed JSON payload at byte {}", self.at)
    }
}

impl std::error::Error for ScanError {}

impl Fields {
    /// The event name, when the payload has a string `t`.
    pub fn event_name<'a>(&self, payload: &'a [u8]) -> Option<&'a [u8]> {
        self.t.clone().map(|r| &payload[r])
    }

    /// The sequence number, when `s` is an integer.
    pub fn seq(&self, payload: &[u8]) -> Option<u64> {
        let r = self.s.clone()?;
        parse_u64(&payload[r])
    }
}

/// Parses an unsigned decimal integer made only of digits.
pub fn parse_u64(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 20 {
        return None;
    }
    let mut v: u64 = 0;
    for &b in digits {
        if !b.is_ascii_digit() {
            return None;
        }
        v = v.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
    }
    Some(v)
}

/// Scans the top level of a JSON object payload.
pub fn scan(p: &[u8]) -> Result<Fields, ScanError> {
    scan_inner(p, false)
}

/// Like [`scan`], for the relay path: once `op`, `s` and `t` are known and
/// the next key is `d` (Discord's order), it stops instead of walking the
/// whole event body. `d` then spans to the object's closing brace, which is
/// exact when `d` is the last key (always so from Discord); callers that
/// parse `d` use [`scan`].
pub fn scan_relay(p: &[u8]) -> Result<Fields, ScanError> {
    scan_inner(p, true)
}

/// The raw value of top-level key `key` of the JSON object `obj`, walking
/// only the top level (nested values are skipped by depth). `None` when the
/// key is absent or the object is malformed.
pub fn top_level_value<'a>(obj: &'a [u8], key: &[u8]) -> Option<&'a [u8]> {
    let mut i = skip_ws(obj, 0);
    if obj.get(i) != Some(&b'{') {
        return None;
    }
    i = skip_ws(obj, i + 1);
    if obj.get(i) == Some(&b'}') {
        return None;
    }
    loop {
        if obj.get(i) != Some(&b'"') {
            return None;
        }
        let key_end = skip_string(obj, i).ok()? - 1;
        let found = &obj[i + 1..key_end] == key;
        i = skip_ws(obj, key_end + 1);
        if obj.get(i) != Some(&b':') {
            return None;
        }
        i = skip_ws(obj, i + 1);
        let end = skip_value(obj, i).ok()?;
        if found {
            return Some(&obj[i..end]);
        }
        i = skip_ws(obj, end);
        match obj.get(i) {
            Some(b',') => i = skip_ws(obj, i + 1),
            _ => return None,
        }
    }
}

fn scan_inner(p: &[u8], stop_at_d: bool) -> Result<Fields, ScanError> {
    let mut fields = Fields::default();
    let mut i = skip_ws(p, 0);
    if p.get(i) != Some(&b'{') {
        return Err(ScanError { at: i });
    }
    i = skip_ws(p, i + 1);
    if p.get(i) == Some(&b'}') {
        return trailing(p, i + 1).map(|()| fields);
    }
    loop {
        if p.get(i) != Some(&b'"') {
            return Err(ScanError { at: i });
        }
        let key_start = i + 1;
        let key_end = skip_string(p, i)? - 1;
        let key = &p[key_start..key_end];
        i = skip_ws(p, key_end + 1);
        if p.get(i) != Some(&b':') {
            return Err(ScanError { at: i });
        }
        i = skip_ws(p, i + 1);
        let value_start = i;
        if stop_at_d && key == b"d" && fields.op.is_some() && fields.s.is_some() && fields.t.is_some() {
            let mut end = p.len();
            while end > value_start && matches!(p[end - 1], b' ' | b'\n' | b'\r' | b'\t') {
                end -= 1;
            }
            if end <= value_start || p[end - 1] != b'}' {
                return Err(ScanError { at: end });
            }
            let mut d_end = end - 1;
            while d_end > value_start && matches!(p[d_end - 1], b' ' | b'\n' | b'\r' | b'\t') {
                d_end -= 1;
            }
            fields.d = Some(value_start..d_end);
            return Ok(fields);
        }
        let value_end = skip_value(p, i)?;
        match key {
            b"op" => fields.op = parse_u64(&p[value_start..value_end]).and_then(|v| u8::try_from(v).ok()),
            b"s" => fields.s = Some(value_start..value_end),
            b"t" if p[value_start] == b'"' => fields.t = Some(value_start + 1..value_end - 1),
            b"d" => fields.d = Some(value_start..value_end),
            _ => {}
        }
        i = skip_ws(p, value_end);
        match p.get(i) {
            Some(b',') => i = skip_ws(p, i + 1),
            Some(b'}') => return trailing(p, i + 1).map(|()| fields),
            _ => return Err(ScanError { at: i }),
        }
    }
}

fn trailing(p: &[u8], i: usize) -> Result<(), ScanError> {
    let j = skip_ws(p, i);
    if j == p.len() {
        Ok(())
    } else {
        Err(ScanError { at: j })
    }
}

fn skip_ws(p: &[u8], mut i: usize) -> usize {
    while let Some(b' ' | b'\n' | b'\r' | b'\t') = p.get(i) {
        i += 1;
    }
    i
}

/// `p[i]` is the opening quote; returns the index after the closing quote.
/// Jumps from quote or backslash to the next with memchr (SIMD): message
/// contents are most of what a scan walks.
fn skip_string(p: &[u8], i: usize) -> Result<usize, ScanError> {
    let mut j = i + 1;
    loop {
        let Some(k) = p.get(j..).and_then(|rest| memchr::memchr2(b'"', b'\\', rest)) else {
            return Err(ScanError { at: p.len() });
        };
        j += k;
        if p[j] == b'"' {
            return Ok(j + 1);
        }
        j += 2;
    }
}

/// Returns the index just after the value starting at `i`.
fn skip_value(p: &[u8], i: usize) -> Result<usize, ScanError> {
    match p.get(i) {
        Some(b'"') => skip_string(p, i),
        Some(b'{' | b'[') => {
            let mut depth = 0usize;
            let mut j = i;
            loop {
                match p.get(j) {
                    Some(b'"') => {
                        j = skip_string(p, j)?;
                        continue;
                    }
                    Some(b'{' | b'[') => depth += 1,
                    Some(b'}' | b']') => {
                        depth -= 1;
                        if depth == 0 {
                            return Ok(j + 1);
                        }
                    }
                    Some(_) => {}
                    None => return Err(ScanError { at: j }),
                }
                j += 1;
            }
        }
        Some(b) if b.is_ascii_digit() || *b == b'-' || b.is_ascii_alphabetic() => {
            let mut j = i;
            while let Some(b) = p.get(j) {
                if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'+' | b'.') {
                    j += 1;
                } else {
                    break;
                }
            }
            Ok(j)
        }
        _ => Err(ScanError { at: i }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_top_level_fields_in_discord_order() {
        let p = br#"{"t":"MESSAGE_CREATE","s":42,"op":0,"d":{"content":"x","s":7}}"#;
        let f = scan(p).unwrap();
        assert_eq!(f.op, Some(0));
        assert_eq!(f.seq(p), Some(42));
        assert_eq!(f.event_name(p), Some(&b"MESSAGE_CREATE"[..]));
        assert_eq!(&p[f.d.clone().unwrap()], br#"{"content":"x","s":7}"#);
    }

    #[test]
    fn body_containing_s_key_does_not_fool_it() {
        let p = br#"{"d":{"content":"\"s\":99, \\\"s\":98","nested":{"s":5},"arr":["\"s\":1"]},"op":0,"t":"X","s":3}"#;
        let f = scan(p).unwrap();
        assert_eq!(f.seq(p), Some(3));
        assert_eq!(f.op, Some(0));
    }

    #[test]
    fn null_seq_and_whitespace() {
        let p = b" { \"op\" : 11 , \"s\" : null , \"d\" : null } ";
        let f = scan(p).unwrap();
        assert_eq!(f.op, Some(11));
        assert_eq!(f.seq(p), None);
        assert_eq!(&p[f.s.clone().unwrap()], b"null");
    }

    #[test]
    fn rejects_malformed_payloads() {
        for bad in
            [&b""[..], b"[]", b"{", b"{\"op\":1", b"{\"op\" 1}", b"{\"a\":\"x}", b"{\"op\":1}x", b"{\"d\":{\"a\":[}"]
        {
            assert!(scan(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn relay_scan_stops_at_d_and_agrees_with_the_full_scan() {
        for p in [
            &br#"{"t":"MESSAGE_CREATE","s":42,"op":0,"d":{"content":"x","s":7}}"#[..],
            br#"{"t":"X","s":1,"op":0,"d":{"a":"}"} }  "#,
            br#"{"op":0,"d":{"a":1},"s":3,"t":"Y"}"#,
            br#"{"t":null,"s":null,"op":11,"d":null}"#,
        ] {
            let full = scan(p).unwrap();
            let fast = scan_relay(p).unwrap();
            assert_eq!((fast.op, fast.s.clone(), fast.t.clone()), (full.op, full.s.clone(), full.t.clone()));
            assert_eq!(&p[fast.d.unwrap()], &p[full.d.unwrap()], "{}", String::from_utf8_lossy(p));
        }
        assert!(scan_relay(br#"{"t":"X","s":1,"op":0,"d":{"#).is_err());
    }

    #[test]
    fn op_out_of_range_is_none() {
        let p = br#"{"op":300}"#;
        assert_eq!(scan(p).unwrap().op, None);
    }
}
