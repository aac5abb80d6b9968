//! A compact binary form of the JSON the cache keeps, and its way back to
//! JSON text.
//!
//! Discord's objects repeat the same keys, nulls and booleans in every
//! member, channel and role, and spell snowflakes, image hashes and
//! timestamps as long strings. Here an object is stored as a *shape* id (its
//! keys and constant values, interned once per shard in [`Shapes`]) plus only
//! its variable values, and those strings as 8 or 16 bytes. A member with its
//! user object shrinks from about 480 bytes of JSON to about 80.
//!
//! Decoding writes JSON text equal in meaning to what was encoded: keys in
//! the same order, strings byte for byte (escapes kept as sent), numbers as
//! written. Values are only re-spelt when the re-spelling is verified to be
//! identical at encode time (snowflakes, hashes, timestamps).

use std::{
    collections::HashMap,
    hash::{BuildHasherDefault, Hasher},
    sync::Arc,
};

/// `null` as a variable value (in arrays and inline objects).
const T_NULL: u8 = 0;
const T_FALSE: u8 = 1;
const T_TRUE: u8 = 2;
/// Non-negative integer, written canonically: LEB128.
const T_UINT: u8 = 3;
/// Any other number: its text, length-prefixed.
const T_NUM: u8 = 4;
/// A string: its raw (still escaped) content, length-prefixed.
const T_STR: u8 = 5;
/// A string of decimal digits that round-trips through u64 (snowflakes, permissions): 8 bytes.
const T_SNOW: u8 = 6;
/// A 32-digit lowercase hex string (image hashes): 16 bytes.
const T_HEX: u8 = 7;
/// `a_` and a 32-digit lowercase hex string (animated image hashes): 16 bytes.
const T_AHEX: u8 = 8;
/// `YYYY-MM-DDTHH:MM:SS.ffffff+00:00`: microseconds since the epoch, 8 bytes.
const T_TIME6: u8 = 9;
/// `YYYY-MM-DDTHH:MM:SS+00:00`: seconds since the epoch, 8 bytes.
const T_TIME0: u8 = 10;
/// An array: its elements, then [`T_END`].
const T_ARR: u8 = 11;
/// An object of an interned shape: u16 shape id, then the values of its slots.
const T_OBJ: u8 = 12;
/// An object with its keys inline (when the shape table is full): pairs
/// (key length as [`put_key_len`] writes it, key, value), then [`T_END`].
const T_IOBJ: u8 = 13;
/// End of an array or inline object.
const T_END: u8 = 15;

/// Marks a variable value's place in a shape's signature (never in UTF-8 text).
const SLOT: u8 = 0xff;
/// More shapes than this and objects are stored with inline keys.
const MAX_SHAPES: usize = u16::MAX as usize;
/// Deeper JSON than this is not cached (Discord's objects are a few levels deep).
const MAX_DEPTH: usize = 64;

/// Object layouts of one shard's cache: keys in order with the constant
/// values (`null`, `true`, `false`, `0`, `""`, `[]`, `{}`) inlined, so an
/// encoded object carries only what varies.
#[derive(Debug, Default)]
pub struct Shapes {
    list: Vec<Arc<Shape>>,
    index: HashMap<Box<[u8]>, u16, BuildHasherDefault<SigHasher>>,
    /// One signature buffer per nesting depth, reused by every encoding.
    sigs: Vec<Vec<u8>>,
}

/// Hashes signatures a word at a time (SipHash was a visible cost of loading guilds).
#[derive(Default)]
struct SigHasher(u64);

impl Hasher for SigHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        const K: u64 = 0x51_7c_c1_b7_27_22_0a_95;
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let w = u64::from_le_bytes(c.try_into().expect("8 bytes"));
            self.0 = (self.0.rotate_left(5) ^ w).wrapping_mul(K);
        }
        for &b in chunks.remainder() {
            self.0 = (self.0.rotate_left(5) ^ u64::from(b)).wrapping_mul(K);
        }
    }
}

/// A key of a shape and its constant value, `None` for a slot.
type Field = (Box<[u8]>, Option<Box<[u8]>>);

#[derive(Debug)]
struct Shape {
    /// The object's JSON with every variable value cut out.
    text: Box<[u8]>,
    /// Literal `i` is `text[cuts[i]..cuts[i + 1]]`; slot `i` follows literal `i`.
    cuts: Box<[u32]>,
    /// Keys (raw, as between quotes), and for each the constant value or `None` for a slot.
    fields: Box<[Field]>,
}

impl Shapes {
    /// Number of interned shapes.
    pub fn len(&self) -> usize {
        self.list.len()
    }

    /// Whether none is interned yet.
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// Heap bytes held.
    pub fn heap_bytes(&self) -> usize {
        self.list
            .iter()
            .map(|s| {
                2 * s.text.len()
                    + s.cuts.len() * 4
                    + s.fields.iter().map(|(k, c)| 48 + k.len() + c.as_ref().map_or(0, |c| c.len())).sum::<usize>()
                    + 64
            })
            .sum()
    }

    fn intern(&mut self, sig: &[u8]) -> Option<u16> {
        if let Some(&id) = self.index.get(sig) {
            return Some(id);
        }
        if self.list.len() >= MAX_SHAPES {
            return None;
        }
        let shape = Shape::from_signature(sig)?;
        let id = self.list.len() as u16;
        self.list.push(Arc::new(shape));
        self.index.insert(sig.into(), id);
        Some(id)
    }
}

impl Shape {
    /// Builds a shape from `{"k":<SLOT or constant>,...}`.
    fn from_signature(sig: &[u8]) -> Option<Shape> {
        let mut text = Vec::with_capacity(sig.len());
        let mut cuts = vec![0u32];
        let mut fields = Vec::new();
        let mut i = 1; // past `{`
        while i < sig.len() - 1 {
            if sig[i] == b',' {
                i += 1;
            }
            // `"key":`
            let key_end = i + 1 + sig[i + 1..].iter().position(|&b| b == b'"')?;
            let key: Box<[u8]> = sig[i + 1..key_end].into();
            i = key_end + 2;
            if sig[i] == SLOT {
                fields.push((key, None));
                i += 1;
            } else {
                let end = i + const_len(&sig[i..])?;
                fields.push((key, Some(sig[i..end].into())));
                i = end;
            }
        }
        for &b in sig {
            if b == SLOT {
                cuts.push(text.len() as u32);
            } else {
                text.push(b);
            }
        }
        cuts.push(text.len() as u32);
        Some(Shape { text: text.into(), cuts: cuts.into(), fields: fields.into() })
    }

    fn literal(&self, i: usize) -> &[u8] {
        &self.text[self.cuts[i] as usize..self.cuts[i + 1] as usize]
    }

    fn slots(&self) -> usize {
        self.cuts.len() - 2
    }
}

/// The constant values a shape can hold inline.
const CONSTANTS: [&[u8]; 7] = [b"null", b"true", b"false", b"0", b"\"\"", b"[]", b"{}"];

fn const_len(s: &[u8]) -> Option<usize> {
    let c: &[u8] = match s.first()? {
        b'n' => b"null",
        b't' => b"true",
        b'f' => b"false",
        b'0' => b"0",
        b'"' => b"\"\"",
        b'[' => b"[]",
        b'{' => b"{}",
        _ => return None,
    };
    s.starts_with(c).then_some(c.len())
}

/// Appends a shape constant as a variable value.
fn push_constant(c: &[u8], out: &mut Vec<u8>) {
    match c {
        b"null" => out.push(T_NULL),
        b"true" => out.push(T_TRUE),
        b"false" => out.push(T_FALSE),
        b"0" => out.extend_from_slice(&[T_UINT, 0]),
        b"[]" => out.extend_from_slice(&[T_ARR, T_END]),
        b"{}" => out.extend_from_slice(&[T_IOBJ, T_END]),
        _ => out.extend_from_slice(&[T_STR, 0]),
    }
}

/// Length of the constant value starting at `j[i..]`, if it is one (`0`
/// only when the number ends there).
fn constant_at(j: &[u8], i: usize) -> Option<usize> {
    let len = const_len(&j[i..])?;
    if j[i] == b'0' && matches!(j.get(i + 1), Some(b'0'..=b'9' | b'.' | b'e' | b'E')) {
        return None;
    }
    Some(len)
}

// ---------------------------------------------------------------- scanning JSON

fn skip_ws(j: &[u8], mut p: usize) -> usize {
    while p < j.len() && matches!(j[p], b' ' | b'\t' | b'\n' | b'\r') {
        p += 1;
    }
    p
}

const LO: u64 = 0x0101_0101_0101_0101;
const HI: u64 = 0x8080_8080_8080_8080;

/// Bit 7 of each byte of `w` that is `"`, `\\` or a control character
/// (exact for the lowest such byte, which is all that is used).
fn special_bytes(w: u64) -> u64 {
    let zero = |v: u64| v.wrapping_sub(LO) & !v & HI;
    zero(w ^ (LO * u64::from(b'"'))) | zero(w ^ (LO * u64::from(b'\\'))) | (w.wrapping_sub(LO * 0x20) & !w & HI)
}

/// End of the string starting at `p` (at its opening quote): the index after the closing quote.
fn string_end(j: &[u8], p: usize) -> Option<usize> {
    let mut i = p + 1;
    loop {
        // Plain text eight bytes at a time.
        while let Some(chunk) = j.get(i..i + 8) {
            let m = special_bytes(u64::from_le_bytes(chunk.try_into().expect("8 bytes")));
            if m != 0 {
                i += (m.trailing_zeros() / 8) as usize;
                break;
            }
            i += 8;
        }
        match *j.get(i)? {
            b'"' => return Some(i + 1),
            b'\\' => match j.get(i + 1)? {
                b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => i += 2,
                b'u' if j.get(i + 2..i + 6)?.iter().all(u8::is_ascii_hexdigit) => i += 6,
                _ => return None,
            },
            0..=0x1f => return None,
            _ => i += 1,
        }
    }
}

fn number_end(j: &[u8], p: usize) -> Option<usize> {
    let mut i = p;
    if j.get(i) == Some(&b'-') {
        i += 1;
    }
    let digits = |i: &mut usize| {
        let s = *i;
        while *i < j.len() && j[*i].is_ascii_digit() {
            *i += 1;
        }
        *i > s
    };
    if j.get(i) == Some(&b'0') {
        i += 1;
        if j.get(i).is_some_and(u8::is_ascii_digit) {
            return None;
        }
    } else if !digits(&mut i) {
        return None;
    }
    if j.get(i) == Some(&b'.') {
        i += 1;
        if !digits(&mut i) {
            return None;
        }
    }
    if matches!(j.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(j.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        if !digits(&mut i) {
            return None;
        }
    }
    Some(i)
}

/// At `j[i]`, an object member's opening quote: its raw key and where its
/// value starts (after the colon and any whitespace).
fn member_key(j: &[u8], i: usize) -> Option<(&[u8], usize)> {
    if j.get(i) != Some(&b'"') {
        return None;
    }
    let key_end = string_end(j, i)?;
    let colon = skip_ws(j, key_end);
    if j.get(colon) != Some(&b':') {
        return None;
    }
    Some((&j[i + 1..key_end - 1], skip_ws(j, colon + 1)))
}

/// End of the JSON value starting at `p` (no leading whitespace).
pub fn value_end(j: &[u8], p: usize, depth: usize) -> Option<usize> {
    if depth > MAX_DEPTH {
        return None;
    }
    match *j.get(p)? {
        b'"' => string_end(j, p),
        b'{' | b'[' => {
            let close = if j[p] == b'{' { b'}' } else { b']' };
            let mut i = skip_ws(j, p + 1);
            if j.get(i) == Some(&close) {
                return Some(i + 1);
            }
            loop {
                if close == b'}' {
                    i = member_key(j, i)?.1;
                }
                i = skip_ws(j, value_end(j, i, depth + 1)?);
                match j.get(i) {
                    Some(b',') => i = skip_ws(j, i + 1),
                    Some(&c) if c == close => return Some(i + 1),
                    _ => return None,
                }
            }
        }
        b't' => j[p..].starts_with(b"true").then_some(p + 4),
        b'f' => j[p..].starts_with(b"false").then_some(p + 5),
        b'n' => j[p..].starts_with(b"null").then_some(p + 4),
        _ => number_end(j, p),
    }
}

/// The members of the JSON object `j`: raw keys and raw value text, in order.
pub fn object_members(j: &[u8]) -> Option<Vec<(&[u8], &[u8])>> {
    let mut out = Vec::with_capacity(16);
    let mut i = skip_ws(j, 0);
    if j.get(i) != Some(&b'{') {
        return None;
    }
    i = skip_ws(j, i + 1);
    if j.get(i) == Some(&b'}') {
        return (skip_ws(j, i + 1) == j.len()).then_some(out);
    }
    loop {
        let key;
        (key, i) = member_key(j, i)?;
        let end = value_end(j, i, 1)?;
        out.push((key, &j[i..end]));
        i = skip_ws(j, end);
        match j.get(i) {
            Some(b',') => i = skip_ws(j, i + 1),
            Some(b'}') => return (skip_ws(j, i + 1) == j.len()).then_some(out),
            _ => return None,
        }
    }
}

/// Appends the JSON object made of raw `(key, value)` members: the inverse
/// of [`object_members`], for rewriting a few members of a payload.
pub fn write_members<'a>(members: impl IntoIterator<Item = (&'a [u8], &'a [u8])>, out: &mut Vec<u8>) {
    out.push(b'{');
    for (n, (key, value)) in members.into_iter().enumerate() {
        if n > 0 {
            out.push(b',');
        }
        out.push(b'"');
        out.extend_from_slice(key);
        out.extend_from_slice(b"\":");
        out.extend_from_slice(value);
    }
    out.push(b'}');
}

/// The elements of the JSON array `j`, as raw text.
pub fn array_elements(j: &[u8]) -> Option<Vec<&[u8]>> {
    let mut out = Vec::new();
    let mut i = skip_ws(j, 0);
    if j.get(i) != Some(&b'[') {
        return None;
    }
    i = skip_ws(j, i + 1);
    if j.get(i) == Some(&b']') {
        return Some(out);
    }
    loop {
        let end = value_end(j, i, 1)?;
        out.push(&j[i..end]);
        i = skip_ws(j, end);
        match j.get(i) {
            Some(b',') => i = skip_ws(j, i + 1),
            Some(b']') => return Some(out),
            _ => return None,
        }
    }
}

// ---------------------------------------------------------------- encoding

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Writes the length of an inline object's key, as a varint that never
/// starts with [`T_END`] (a 15-byte key would read as the object's end).
fn put_key_len(out: &mut Vec<u8>, len: usize) {
    put_varint(out, len as u64 + u64::from(len >= usize::from(T_END)));
}

/// Reads what [`put_key_len`] wrote.
fn get_key_len(e: &[u8], p: &mut usize) -> usize {
    let n = get_varint(e, p) as usize;
    n - usize::from(n > usize::from(T_END))
}

fn get_varint(e: &[u8], p: &mut usize) -> u64 {
    let mut v = 0u64;
    let mut shift = 0;
    loop {
        let b = e[*p];
        *p += 1;
        v |= u64::from(b & 0x7f) << shift;
        if b < 0x80 {
            return v;
        }
        shift += 7;
    }
}

/// `s` as u64 if it is its canonical decimal spelling (no leading zero).
fn canonical_u64(s: &[u8]) -> Option<u64> {
    if s.len() > 1 && s[0] == b'0' {
        return None;
    }
    crate::protocol::scan::parse_u64(s)
}

fn hex16(s: &[u8]) -> Option<[u8; 16]> {
    if s.len() != 32 {
        return None;
    }
    let nib = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut out = [0u8; 16];
    for (i, o) in out.iter_mut().enumerate() {
        *o = (nib(s[2 * i])? << 4) | nib(s[2 * i + 1])?;
    }
    Some(out)
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn digits<const N: usize>(s: &[u8]) -> Option<u32> {
    let mut v = 0u32;
    for &c in s.get(..N)? {
        if !c.is_ascii_digit() {
            return None;
        }
        v = v * 10 + u32::from(c - b'0');
    }
    Some(v)
}

/// Days since 1970-01-01 of a proleptic Gregorian date.
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = i64::from((m + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// Parses Discord's ISO 8601 timestamps: `(tag, value)`.
fn parse_time(s: &[u8]) -> Option<(u8, i64)> {
    let (tag, frac) = match s.len() {
        32 if s[19] == b'.' && &s[26..] == b"+00:00" => (T_TIME6, digits::<6>(&s[20..])?),
        25 if &s[19..] == b"+00:00" => (T_TIME0, 0),
        _ => return None,
    };
    if s[4] != b'-' || s[7] != b'-' || s[10] != b'T' || s[13] != b':' || s[16] != b':' {
        return None;
    }
    let (y, mo, d) = (digits::<4>(s)?, digits::<2>(&s[5..])?, digits::<2>(&s[8..])?);
    let (h, mi, se) = (digits::<2>(&s[11..])?, digits::<2>(&s[14..])?, digits::<2>(&s[17..])?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || se > 59 {
        return None;
    }
    let secs = days_from_civil(i64::from(y), mo, d) * 86_400 + i64::from(h * 3600 + mi * 60 + se);
    let v = if tag == T_TIME6 { secs * 1_000_000 + i64::from(frac) } else { secs };
    // Only what spells back identically (no 31 February).
    let mut back = Vec::with_capacity(32);
    write_time(tag, v, false, &mut back);
    (back == s).then_some((tag, v))
}

/// "00" to "99".
const PAIRS: [[u8; 2]; 100] = {
    let mut t = [[0u8; 2]; 100];
    let mut i = 0;
    while i < 100 {
        t[i] = [b'0' + (i / 10) as u8, b'0' + (i % 10) as u8];
        i += 1;
    }
    t
};

/// Writes a timestamp, in quotes if `quoted` (one copy into `out`: this is on
/// the path of every member of every GUILD_CREATE sent).
fn write_time(tag: u8, v: i64, quoted: bool, out: &mut Vec<u8>) {
    let (secs, micros) = if tag == T_TIME6 { (v.div_euclid(1_000_000), v.rem_euclid(1_000_000)) } else { (v, 0) };
    let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
    let s = secs.rem_euclid(86_400) as usize;
    let y = y.clamp(0, 9999) as usize;
    let micros = micros as usize;
    let mut buf = *b"\"0000-00-00T00:00:00.000000+00:00\"";
    let pair = |buf: &mut [u8; 34], at: usize, n: usize| buf[at..at + 2].copy_from_slice(&PAIRS[n]);
    pair(&mut buf, 1, y / 100);
    pair(&mut buf, 3, y % 100);
    pair(&mut buf, 6, m as usize);
    pair(&mut buf, 9, d as usize);
    pair(&mut buf, 12, s / 3600);
    pair(&mut buf, 15, s / 60 % 60);
    pair(&mut buf, 18, s % 60);
    let end = if tag == T_TIME6 {
        pair(&mut buf, 21, micros / 10_000);
        pair(&mut buf, 23, micros / 100 % 100);
        pair(&mut buf, 25, micros % 100);
        34
    } else {
        buf[20..27].copy_from_slice(b"+00:00\"");
        27
    };
    if quoted {
        out.extend_from_slice(&buf[..end]);
    } else {
        out.extend_from_slice(&buf[1..end - 1]);
    }
}

/// Turns JSON into the compact form, interning shapes as it goes.
pub struct Encoder<'a> {
    shapes: &'a mut Shapes,
}

impl<'a> Encoder<'a> {
    /// An encoder that interns into `shapes`.
    pub fn new(shapes: &'a mut Shapes) -> Self {
        Self { shapes }
    }

    /// The shapes interned into.
    pub fn shapes(&self) -> &Shapes {
        self.shapes
    }

    /// Appends the compact form of the JSON value `j` to `out`; `None` (and
    /// `out` unchanged) if `j` is not valid JSON.
    pub fn encode(&mut self, j: &[u8], out: &mut Vec<u8>) -> Option<()> {
        let start = out.len();
        let p = skip_ws(j, 0);
        let end = self.value(j, p, out, 0);
        match end {
            Some(e) if skip_ws(j, e) == j.len() => Some(()),
            _ => {
                out.truncate(start);
                None
            }
        }
    }

    /// Encodes the object `members` (raw key, raw value) as one object.
    pub fn encode_members(&mut self, members: &[(&[u8], &[u8])], out: &mut Vec<u8>) -> Option<()> {
        self.encode_members_without(members, &[], out)
    }

    /// Like [`Self::encode_members`], leaving out the keys in `drop`.
    pub fn encode_members_without(
        &mut self,
        members: &[(&[u8], &[u8])],
        drop: &[&[u8]],
        out: &mut Vec<u8>,
    ) -> Option<()> {
        let start = out.len();
        let kept = members.iter().filter(|(k, _)| !drop.contains(k));
        let ok = self.object_from(kept.map(|&(k, v)| (k, Value::Json(v))), out, 0);
        if ok.is_none() {
            out.truncate(start);
        }
        ok
    }

    /// Encodes an object whose values are JSON text or already encoded.
    fn object_from<'v>(
        &mut self,
        members: impl Iterator<Item = (&'v [u8], Value<'v>)> + Clone,
        out: &mut Vec<u8>,
        depth: usize,
    ) -> Option<()> {
        if depth > MAX_DEPTH {
            return None;
        }
        let start = out.len();
        // A key with a quote or escape would not survive the signature's own parsing.
        if members.clone().any(|(k, _)| k.iter().any(|&b| b == b'"' || b == b'\\')) {
            return self.inline_object(members, out, depth);
        }
        if self.shapes.sigs.len() <= depth {
            self.shapes.sigs.resize_with(depth + 1, Vec::new);
        }
        let mut sig = std::mem::take(&mut self.shapes.sigs[depth]);
        sig.clear();
        sig.push(b'{');
        out.push(T_OBJ);
        out.extend_from_slice(&[0, 0]);
        let mut ok = true;
        for (i, (key, value)) in members.clone().enumerate() {
            if i > 0 {
                sig.push(b',');
            }
            sig.push(b'"');
            sig.extend_from_slice(key);
            sig.extend_from_slice(b"\":");
            match value {
                Value::Json(v) if CONSTANTS.contains(&v) => sig.extend_from_slice(v),
                Value::Json(v) => {
                    sig.push(SLOT);
                    match self.value(v, 0, out, depth + 1) {
                        Some(e) if e == v.len() => {}
                        _ => {
                            ok = false;
                            break;
                        }
                    }
                }
                Value::Const(c) => sig.extend_from_slice(c),
                Value::Encoded(e) => {
                    sig.push(SLOT);
                    out.extend_from_slice(e);
                }
            }
        }
        sig.push(b'}');
        let shape = if ok { self.shapes.intern(&sig) } else { None };
        self.shapes.sigs[depth] = sig;
        if !ok {
            out.truncate(start);
            return None;
        }
        if let Some(id) = shape {
            out[start + 1..start + 3].copy_from_slice(&id.to_le_bytes());
            return Some(());
        }
        // The shape table is full: keys inline.
        out.truncate(start);
        self.inline_object(members, out, depth)
    }

    fn inline_object<'v>(
        &mut self,
        members: impl Iterator<Item = (&'v [u8], Value<'v>)>,
        out: &mut Vec<u8>,
        depth: usize,
    ) -> Option<()> {
        out.push(T_IOBJ);
        for (key, value) in members {
            put_key_len(out, key.len());
            out.extend_from_slice(key);
            match value {
                Value::Json(v) => {
                    if self.value(v, 0, out, depth + 1)? != v.len() {
                        return None;
                    }
                }
                Value::Const(c) => push_constant(c, out),
                Value::Encoded(e) => out.extend_from_slice(e),
            }
        }
        out.push(T_END);
        Some(())
    }

    /// Encodes the value at `j[p..]` (no leading whitespace) and returns
    /// where it ends; `None` (and `out` unchanged) if it is not valid JSON.
    pub fn encode_at(&mut self, j: &[u8], p: usize, out: &mut Vec<u8>) -> Option<usize> {
        let start = out.len();
        let end = self.value(j, p, out, 0);
        if end.is_none() {
            out.truncate(start);
        }
        end
    }

    /// Encodes the JSON object `j` without its members whose keys are in
    /// `drop`, in one pass; returns the dropped members' raw values (in
    /// `drop`'s order, `None` if absent) so an event's `guild_id` costs no
    /// second scan.
    pub fn encode_without<'j, const N: usize>(
        &mut self,
        j: &'j [u8],
        drop: [&[u8]; N],
        out: &mut Vec<u8>,
    ) -> Option<[Option<&'j [u8]>; N]> {
        let start = out.len();
        let mut dropped = [None; N];
        let p = skip_ws(j, 0);
        if j.get(p) != Some(&b'{') {
            return None;
        }
        if self.shapes.sigs.is_empty() {
            self.shapes.sigs.push(Vec::new());
        }
        let mut sig = std::mem::take(&mut self.shapes.sigs[0]);
        sig.clear();
        out.push(T_OBJ);
        out.extend_from_slice(&[0, 0]);
        let body = self.object_body_with(j, p, out, 0, &mut sig, &drop, &mut dropped);
        let shape = match body {
            Some((_, true)) => self.shapes.intern(&sig),
            _ => None,
        };
        self.shapes.sigs[0] = sig;
        let end = match (body, shape) {
            (Some((end, _)), Some(id)) => {
                out[start + 1..start + 3].copy_from_slice(&id.to_le_bytes());
                end
            }
            (Some(_), None) => {
                // Rare (odd keys, full table): by members.
                out.truncate(start);
                let members = object_members(j)?;
                self.encode_members_without(&members, &drop, out)?;
                return Some(dropped);
            }
            (None, _) => {
                out.truncate(start);
                return None;
            }
        };
        if skip_ws(j, end) != j.len() {
            out.truncate(start);
            return None;
        }
        Some(dropped)
    }

    /// Encodes the object at `j[p..]` in one pass over its text; returns where it ends.
    fn object(&mut self, j: &[u8], p: usize, out: &mut Vec<u8>, depth: usize) -> Option<usize> {
        if depth > MAX_DEPTH {
            return None;
        }
        let start = out.len();
        if self.shapes.sigs.len() <= depth {
            self.shapes.sigs.resize_with(depth + 1, Vec::new);
        }
        let mut sig = std::mem::take(&mut self.shapes.sigs[depth]);
        sig.clear();
        out.push(T_OBJ);
        out.extend_from_slice(&[0, 0]);
        let body = self.object_body(j, p, out, depth, &mut sig);
        let shape = match body {
            Some((_, true)) => self.shapes.intern(&sig),
            _ => None,
        };
        self.shapes.sigs[depth] = sig;
        let (end, _) = body?;
        if let Some(id) = shape {
            out[start + 1..start + 3].copy_from_slice(&id.to_le_bytes());
            return Some(end);
        }
        // A key the signature cannot hold, or the shape table is full: keys
        // inline, around the values already encoded (encoding them again at
        // every level would cost 2^depth).
        let values = out.split_off(start + 3);
        out.truncate(start);
        self.inline_from_encoded(j, p, &values, out)?;
        Some(end)
    }

    /// The members of the object at `j[p..]`: values into `out`, keys and
    /// constants into `sig`. Returns where it ends and whether every key
    /// can be part of a signature.
    fn object_body(
        &mut self,
        j: &[u8],
        p: usize,
        out: &mut Vec<u8>,
        depth: usize,
        sig: &mut Vec<u8>,
    ) -> Option<(usize, bool)> {
        self.object_body_with(j, p, out, depth, sig, &[], &mut [])
    }

    /// [`Self::object_body`], leaving out the members whose keys are in
    /// `drop` (their raw values go to the same place in `dropped`).
    #[allow(clippy::too_many_arguments)]
    fn object_body_with<'j>(
        &mut self,
        j: &'j [u8],
        p: usize,
        out: &mut Vec<u8>,
        depth: usize,
        sig: &mut Vec<u8>,
        drop: &[&[u8]],
        dropped: &mut [Option<&'j [u8]>],
    ) -> Option<(usize, bool)> {
        sig.push(b'{');
        let mut i = skip_ws(j, p + 1);
        if j.get(i) == Some(&b'}') {
            sig.push(b'}');
            return Some((i + 1, true));
        }
        let mut keys_ok = true;
        let mut first = true;
        loop {
            let key;
            (key, i) = member_key(j, i)?;
            if let Some(at) = drop.iter().position(|d| *d == key) {
                let end = value_end(j, i, 1)?;
                dropped[at] = Some(&j[i..end]);
                {
                    i = skip_ws(j, end);
                    match j.get(i) {
                        Some(b',') => {
                            i = skip_ws(j, i + 1);
                            continue;
                        }
                        Some(b'}') => {
                            sig.push(b'}');
                            return Some((i + 1, keys_ok));
                        }
                        _ => return None,
                    }
                }
            }
            keys_ok &= !key.iter().any(|&b| b == b'"' || b == b'\\');
            if !first {
                sig.push(b',');
            }
            first = false;
            sig.push(b'"');
            sig.extend_from_slice(key);
            sig.extend_from_slice(b"\":");
            let end = match constant_at(j, i) {
                Some(len) => {
                    sig.extend_from_slice(&j[i..i + len]);
                    i + len
                }
                None => {
                    sig.push(SLOT);
                    self.value(j, i, out, depth + 1)?
                }
            };
            i = skip_ws(j, end);
            match j.get(i) {
                Some(b',') => i = skip_ws(j, i + 1),
                Some(b'}') => {
                    sig.push(b'}');
                    return Some((i + 1, keys_ok));
                }
                _ => return None,
            }
        }
    }

    /// Writes the object at `j[p..]` with its keys inline, taking its
    /// variable values, in order, from `values` (already encoded).
    fn inline_from_encoded(&self, j: &[u8], p: usize, values: &[u8], out: &mut Vec<u8>) -> Option<()> {
        out.push(T_IOBJ);
        let mut i = skip_ws(j, p + 1);
        let mut v = 0;
        if j.get(i) != Some(&b'}') {
            loop {
                let key;
                (key, i) = member_key(j, i)?;
                put_key_len(out, key.len());
                out.extend_from_slice(key);
                let end = match constant_at(j, i) {
                    Some(len) => {
                        push_constant(&j[i..i + len], out);
                        i + len
                    }
                    None => {
                        let s = v;
                        self.shapes.skip(values, &mut v);
                        out.extend_from_slice(&values[s..v]);
                        value_end(j, i, 1)?
                    }
                };
                i = skip_ws(j, end);
                if j.get(i) != Some(&b',') {
                    break;
                }
                i = skip_ws(j, i + 1);
            }
        }
        out.push(T_END);
        Some(())
    }

    /// Encodes the value at `j[p..]` (no leading whitespace); returns where it ends.
    fn value(&mut self, j: &[u8], p: usize, out: &mut Vec<u8>, depth: usize) -> Option<usize> {
        if depth > MAX_DEPTH {
            return None;
        }
        match *j.get(p)? {
            b'"' => {
                let end = string_end(j, p)?;
                encode_string(&j[p + 1..end - 1], out);
                Some(end)
            }
            b'{' => self.object(j, p, out, depth),
            b'[' => {
                out.push(T_ARR);
                let mut i = skip_ws(j, p + 1);
                if j.get(i) == Some(&b']') {
                    out.push(T_END);
                    return Some(i + 1);
                }
                loop {
                    i = skip_ws(j, self.value(j, i, out, depth + 1)?);
                    match j.get(i) {
                        Some(b',') => i = skip_ws(j, i + 1),
                        Some(b']') => {
                            out.push(T_END);
                            return Some(i + 1);
                        }
                        _ => return None,
                    }
                }
            }
            b't' => j[p..].starts_with(b"true").then(|| out.push(T_TRUE)).map(|_| p + 4),
            b'f' => j[p..].starts_with(b"false").then(|| out.push(T_FALSE)).map(|_| p + 5),
            b'n' => j[p..].starts_with(b"null").then(|| out.push(T_NULL)).map(|_| p + 4),
            _ => {
                let end = number_end(j, p)?;
                let text = &j[p..end];
                match canonical_u64(text) {
                    Some(v) => {
                        out.push(T_UINT);
                        put_varint(out, v);
                    }
                    None => {
                        out.push(T_NUM);
                        put_varint(out, text.len() as u64);
                        out.extend_from_slice(text);
                    }
                }
                Some(end)
            }
        }
    }
}

/// One value of an object being built: JSON text, a constant, or already encoded.
#[derive(Clone, Copy)]
enum Value<'v> {
    Json(&'v [u8]),
    Const(&'v [u8]),
    Encoded(&'v [u8]),
}

fn encode_string(s: &[u8], out: &mut Vec<u8>) {
    if let Some(v) = canonical_u64(s) {
        out.push(T_SNOW);
        out.extend_from_slice(&v.to_le_bytes());
    } else if let Some(h) = hex16(s) {
        out.push(T_HEX);
        out.extend_from_slice(&h);
    } else if let Some(h) = s.strip_prefix(b"a_").and_then(hex16) {
        out.push(T_AHEX);
        out.extend_from_slice(&h);
    } else if let Some((tag, v)) = (s.len() >= 25).then(|| parse_time(s)).flatten() {
        out.push(tag);
        out.extend_from_slice(&v.to_le_bytes());
    } else {
        out.push(T_STR);
        put_varint(out, s.len() as u64);
        out.extend_from_slice(s);
    }
}

// ---------------------------------------------------------------- decoding

fn read8(e: &[u8], p: usize) -> [u8; 8] {
    e[p..p + 8].try_into().expect("8 bytes")
}

impl Shapes {
    /// Appends the JSON text of the encoded value at `e[*p..]` and moves `p` past it.
    pub fn decode(&self, e: &[u8], p: &mut usize, out: &mut Vec<u8>) {
        let tag = e[*p];
        *p += 1;
        match tag {
            T_NULL => out.extend_from_slice(b"null"),
            T_FALSE => out.extend_from_slice(b"false"),
            T_TRUE => out.extend_from_slice(b"true"),
            T_UINT => {
                let v = get_varint(e, p);
                out.extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
            }
            T_NUM | T_STR => {
                let n = get_varint(e, p) as usize;
                if tag == T_STR {
                    out.push(b'"');
                    out.extend_from_slice(&e[*p..*p + n]);
                    out.push(b'"');
                } else {
                    out.extend_from_slice(&e[*p..*p + n]);
                }
                *p += n;
            }
            T_SNOW => {
                let v = u64::from_le_bytes(read8(e, *p));
                *p += 8;
                let mut digits = itoa::Buffer::new();
                let digits = digits.format(v).as_bytes();
                let mut buf = [b'"'; 22];
                buf[1..=digits.len()].copy_from_slice(digits);
                out.extend_from_slice(&buf[..digits.len() + 2]);
            }
            T_HEX | T_AHEX => {
                let mut buf = [0u8; 36];
                buf[0] = b'"';
                let mut at = 1;
                if tag == T_AHEX {
                    buf[1] = b'a';
                    buf[2] = b'_';
                    at = 3;
                }
                for (i, &b) in e[*p..*p + 16].iter().enumerate() {
                    buf[at + 2 * i] = HEX[usize::from(b >> 4)];
                    buf[at + 2 * i + 1] = HEX[usize::from(b & 15)];
                }
                buf[at + 32] = b'"';
                out.extend_from_slice(&buf[..at + 33]);
                *p += 16;
            }
            T_TIME6 | T_TIME0 => {
                let v = i64::from_le_bytes(read8(e, *p));
                *p += 8;
                write_time(tag, v, true, out);
            }
            T_ARR => {
                out.push(b'[');
                let mut first = true;
                while e[*p] != T_END {
                    if !first {
                        out.push(b',');
                    }
                    first = false;
                    self.decode(e, p, out);
                }
                *p += 1;
                out.push(b']');
            }
            T_OBJ => {
                let shape = &self.list[usize::from(u16::from_le_bytes([e[*p], e[*p + 1]]))];
                *p += 2;
                for i in 0..shape.slots() {
                    out.extend_from_slice(shape.literal(i));
                    self.decode(e, p, out);
                }
                out.extend_from_slice(shape.literal(shape.slots()));
            }
            T_IOBJ => {
                out.push(b'{');
                let mut first = true;
                while e[*p] != T_END {
                    if !first {
                        out.push(b',');
                    }
                    first = false;
                    let n = get_key_len(e, p);
                    out.push(b'"');
                    out.extend_from_slice(&e[*p..*p + n]);
                    out.extend_from_slice(b"\":");
                    *p += n;
                    self.decode(e, p, out);
                }
                *p += 1;
                out.push(b'}');
            }
            other => unreachable!("compact tag {other}"),
        }
    }

    /// The JSON text of a whole encoded value.
    pub fn to_json(&self, e: &[u8]) -> String {
        let mut out = Vec::with_capacity(e.len() * 4);
        self.decode(e, &mut 0, &mut out);
        String::from_utf8(out).expect("encoded from UTF-8 JSON")
    }

    /// Moves `p` past the encoded value at `e[*p..]`.
    pub fn skip(&self, e: &[u8], p: &mut usize) {
        let tag = e[*p];
        *p += 1;
        match tag {
            T_NULL | T_FALSE | T_TRUE => {}
            T_UINT => {
                get_varint(e, p);
            }
            T_NUM | T_STR => *p += get_varint(e, p) as usize,
            T_SNOW | T_TIME6 | T_TIME0 => *p += 8,
            T_HEX | T_AHEX => *p += 16,
            T_ARR => {
                while e[*p] != T_END {
                    self.skip(e, p);
                }
                *p += 1;
            }
            T_OBJ => {
                let shape = &self.list[usize::from(u16::from_le_bytes([e[*p], e[*p + 1]]))];
                *p += 2;
                for _ in 0..shape.slots() {
                    self.skip(e, p);
                }
            }
            T_IOBJ => {
                while e[*p] != T_END {
                    *p += get_key_len(e, p);
                    self.skip(e, p);
                }
                *p += 1;
            }
            other => unreachable!("compact tag {other}"),
        }
    }

    /// The shape of an encoded object (`None` for inline keys or not an object).
    fn shape_of(&self, e: &[u8]) -> Option<Arc<Shape>> {
        (e.first() == Some(&T_OBJ)).then(|| self.list[usize::from(u16::from_le_bytes([e[1], e[2]]))].clone())
    }

    /// The members of the encoded object `e` (whose shape, if any, is
    /// `shape`): raw key, and its constant JSON or encoded value.
    fn members<'e>(&self, shape: Option<&'e Shape>, e: &'e [u8], out: &mut Vec<(&'e [u8], Value<'e>)>) -> Option<()> {
        match (e.first()?, shape) {
            (&T_OBJ, Some(shape)) => {
                let mut p = 3;
                for (key, constant) in shape.fields.iter() {
                    match constant {
                        Some(c) => out.push((key, Value::Const(c))),
                        None => {
                            let s = p;
                            self.skip(e, &mut p);
                            out.push((key, Value::Encoded(&e[s..p])));
                        }
                    }
                }
            }
            (&T_IOBJ, _) => {
                let mut p = 1;
                while e[p] != T_END {
                    let n = get_key_len(e, &mut p);
                    let key = &e[p..p + n];
                    p += n;
                    let s = p;
                    self.skip(e, &mut p);
                    out.push((key, Value::Encoded(&e[s..p])));
                }
            }
            _ => return None,
        }
        Some(())
    }

    /// The encoded value of `key` in the encoded object `e` (`None` if
    /// absent or constant).
    fn field<'e>(&self, e: &'e [u8], key: &[u8]) -> Option<&'e [u8]> {
        let mut p = 1;
        match *e.first()? {
            T_OBJ => {
                let shape = &self.list[usize::from(u16::from_le_bytes([e[1], e[2]]))];
                p += 2;
                for (k, constant) in shape.fields.iter() {
                    if constant.is_some() {
                        if **k == *key {
                            return None;
                        }
                        continue;
                    }
                    let s = p;
                    self.skip(e, &mut p);
                    if **k == *key {
                        return Some(&e[s..p]);
                    }
                }
                None
            }
            T_IOBJ => {
                while e[p] != T_END {
                    let n = get_key_len(e, &mut p);
                    let k = &e[p..p + n];
                    p += n;
                    let s = p;
                    self.skip(e, &mut p);
                    if k == key {
                        return Some(&e[s..p]);
                    }
                }
                None
            }
            _ => None,
        }
    }

    /// The snowflake at `path` (keys into nested objects) of an encoded
    /// object, whether Discord spelt it as a string or a number.
    pub fn snowflake_at(&self, e: &[u8], path: &[&[u8]]) -> Option<u64> {
        let mut v = e;
        for key in path {
            v = self.field(v, key)?;
        }
        match v[0] {
            T_SNOW => Some(u64::from_le_bytes(read8(v, 1))),
            T_UINT => Some(get_varint(v, &mut 1)),
            _ => None,
        }
    }

    /// The raw content of the string at `path` of an encoded object (only
    /// strings kept as text: not snowflakes, hashes or timestamps).
    pub fn string_at<'e>(&self, e: &'e [u8], path: &[&[u8]]) -> Option<&'e [u8]> {
        let mut v = e;
        for key in path {
            v = self.field(v, key)?;
        }
        if v[0] != T_STR {
            return None;
        }
        let mut p = 1;
        let n = get_varint(v, &mut p) as usize;
        v.get(p..p + n)
    }

    /// Whether the encoded object `new` has every key of the encoded object
    /// `old`, so that replacing `old` by `new` loses nothing a merge would keep.
    pub fn covers(&self, new: &[u8], old: &[u8]) -> bool {
        if new.first() != Some(&T_OBJ) || old.first() != Some(&T_OBJ) {
            return false;
        }
        if new[1..3] == old[1..3] {
            return true;
        }
        let shape = |e: &[u8]| &self.list[usize::from(u16::from_le_bytes([e[1], e[2]]))];
        let (n, o) = (&shape(new).fields, &shape(old).fields);
        // Usually the same keys in the same order, with other constants.
        n.len() >= o.len() && o.iter().zip(n.iter()).all(|(a, b)| a.0 == b.0)
            || o.iter().all(|(k, _)| n.iter().any(|(nk, _)| nk == k))
    }

    /// Rebuilds the encoded object `old` with `update`'s members (JSON text)
    /// replacing or following its own, without the keys in `drop`; `None`
    /// values in `update` remove the key.
    pub fn merge(&mut self, old: &[u8], update: &[(&[u8], Option<&[u8]>)], drop: &[&[u8]]) -> Option<Vec<u8>> {
        // The old shape is held by its own reference so the encoder can intern new ones.
        let shape = self.shape_of(old);
        let mut olds = Vec::with_capacity(24);
        self.members(shape.as_deref(), old, &mut olds)?;
        let mut members: Vec<(&[u8], Value)> = Vec::with_capacity(olds.len() + update.len());
        for &(k, v) in &olds {
            if drop.contains(&k) {
                continue;
            }
            match update.iter().find(|(uk, _)| *uk == k) {
                Some((_, Some(json))) => members.push((k, Value::Json(json))),
                Some((_, None)) => {}
                None => members.push((k, v)),
            }
        }
        for &(k, v) in update {
            if let Some(json) = v {
                if !drop.contains(&k) && !olds.iter().any(|(ok, _)| *ok == k) {
                    members.push((k, Value::Json(json)));
                }
            }
        }
        let mut out = Vec::with_capacity(old.len() + 64);
        Encoder::new(self).object_from(members.iter().copied(), &mut out, 0)?;
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(json: &str) -> (String, usize) {
        let mut shapes = Shapes::default();
        let mut out = Vec::new();
        Encoder::new(&mut shapes).encode(json.as_bytes(), &mut out).expect("valid JSON");
        let mut p = 0;
        let mut text = Vec::new();
        shapes.decode(&out, &mut p, &mut text);
        assert_eq!(p, out.len());
        (String::from_utf8(text).unwrap(), out.len())
    }

    #[test]
    fn values_round_trip_exactly() {
        for json in [
            r#"{"id":"1234567890123456789","name":"a \"q\" \u00e9 é","n":null,"t":true,"f":false,"z":0,"e":"","a":[],"o":{}}"#,
            r#"{"x":[1,-2,3.5,1e10,0.0,18446744073709551615,18446744073709551616,"007","0",null,true,false,[[]],{"k":"v"}]}"#,
            r#"{"avatar":"0123456789abcdef0123456789abcdef","banner":"a_0123456789abcdef0123456789abcdef","upper":"0123456789ABCDEF0123456789ABCDEF"}"#,
            r#"{"joined_at":"2021-03-04T05:06:07.123456+00:00","p":"2021-03-04T05:06:07+00:00","bad":"2021-02-31T05:06:07+00:00","z":"2021-03-04T05:06:07.123Z"}"#,
            r#"{"old":"1969-12-31T23:59:59.999999+00:00","leap":"2024-02-29T00:00:00+00:00","far":"9999-12-31T23:59:59.999999+00:00"}"#,
            r#"[1,2,{"a":1},{"a":2},{"a":null}]"#,
            r#""just a string""#,
            "12",
        ] {
            let (back, _) = round_trip(json);
            assert_eq!(back, json);
        }
    }

    #[test]
    fn whitespace_is_dropped_and_meaning_kept() {
        let (back, _) = round_trip(" { \"a\" : [ 1 , { } , [ ] ] , \"b\" : { \"c\" : null } } ");
        assert_eq!(back, r#"{"a":[1,{},[]],"b":{"c":null}}"#);
    }

    #[test]
    fn invalid_json_is_refused() {
        let mut shapes = Shapes::default();
        for bad in
            ["{", "{\"a\":}", r#""\x""#, r#""\u12g4""#, "[1,]", "{\"a\" 1}", "tru", "\"\u{1}\"", "{}x", "01", "-"]
        {
            let mut out = vec![9];
            assert!(Encoder::new(&mut shapes).encode(bad.as_bytes(), &mut out).is_none(), "{bad}");
            assert_eq!(out, [9]);
        }
    }

    #[test]
    fn a_member_shrinks_and_shares_its_shape() {
        let member = |id: u64, name: &str| {
            format!(
                r#"{{"user":{{"id":"{id}","username":"{name}","global_name":null,"discriminator":"0","avatar":"5b2a8c5e3f5c4b8e9d1a7f6e2c3b4a59","avatar_decoration_data":null,"public_flags":0,"primary_guild":null,"collectibles":null,"clan":null}},"nick":null,"avatar":null,"banner":null,"roles":["1180000000000000001"],"joined_at":"2023-01-01T00:00:00.000000+00:00","premium_since":null,"deaf":false,"mute":false,"flags":0,"pending":false,"communication_disabled_until":null,"unusual_dm_activity_until":null}}"#
            )
        };
        let mut shapes = Shapes::default();
        let mut sizes = Vec::new();
        for (id, name) in [(1180000000000000005u64, "alice_1"), (1180000000000000006, "bob_2")] {
            let json = member(id, name);
            let mut out = Vec::new();
            Encoder::new(&mut shapes).encode(json.as_bytes(), &mut out).unwrap();
            assert_eq!(shapes.to_json(&out), json);
            assert_eq!(shapes.snowflake_at(&out, &[b"user", b"id"]), Some(id));
            sizes.push((json.len(), out.len()));
        }
        assert_eq!(shapes.len(), 2, "member and user shapes, shared by both");
        assert!(sizes[0].1 * 5 < sizes[0].0, "{sizes:?}");
    }

    #[test]
    fn merge_replaces_adds_removes_and_drops() {
        let mut shapes = Shapes::default();
        let mut old = Vec::new();
        Encoder::new(&mut shapes).encode(br#"{"a":1,"b":null,"c":"x","d":[1]}"#, &mut old).unwrap();
        let merged = shapes
            .merge(&old, &[(b"b", Some(b"\"y\"")), (b"e", Some(b"true")), (b"c", None), (b"g", Some(b"2"))], &[b"g"])
            .unwrap();
        assert_eq!(shapes.to_json(&merged), r#"{"a":1,"b":"y","d":[1],"e":true}"#);
    }

    #[test]
    fn full_shape_table_falls_back_to_inline_keys() {
        let mut shapes = Shapes::default();
        for i in 0..MAX_SHAPES {
            let mut out = Vec::new();
            Encoder::new(&mut shapes).encode(format!("{{\"k{i}\":1}}").as_bytes(), &mut out).unwrap();
        }
        let json = r#"{"new":{"inner":"1234"},"n":null}"#;
        let mut out = Vec::new();
        Encoder::new(&mut shapes).encode(json.as_bytes(), &mut out).unwrap();
        assert_eq!(out[0], T_IOBJ);
        assert_eq!(shapes.to_json(&out), json);
        assert_eq!(shapes.snowflake_at(&out, &[b"new", b"inner"]), Some(1234));
    }

    #[test]
    fn inline_keys_of_every_length_round_trip() {
        // A 15-byte key's length once read as the inline object's end.
        let mut shapes = Shapes::default();
        for len in 0..300 {
            let key = "k".repeat(len);
            let json = format!(r#"{{"\\":1,"{key}":"12345","z":null}}"#);
            let mut out = Vec::new();
            Encoder::new(&mut shapes).encode(json.as_bytes(), &mut out).unwrap();
            assert_eq!(out[0], T_IOBJ);
            assert_eq!(shapes.to_json(&out), json, "a {len}-byte key");
            let mut p = 0;
            shapes.skip(&out, &mut p);
            assert_eq!(p, out.len(), "a {len}-byte key");
            assert_eq!(shapes.snowflake_at(&out, &[key.as_bytes()]), Some(12345), "a {len}-byte key");
            let merged = shapes.merge(&out, &[(b"z", Some(b"2"))], &[]).unwrap();
            assert_eq!(shapes.to_json(&merged), json.replace("null", "2"), "a {len}-byte key");
        }
    }

    #[test]
    fn strings_end_at_the_right_byte_at_every_offset() {
        for len in 0..40 {
            for (special, ok) in [("\"", true), ("\\n", true), ("\\u00e9", true), ("\\q", false), ("\u{1}", false)] {
                let body = format!("{}{special}{}", "x".repeat(len), "é".repeat(len % 5));
                let json = format!("\"{body}\"");
                let mut shapes = Shapes::default();
                let mut out = Vec::new();
                let got = Encoder::new(&mut shapes).encode(json.as_bytes(), &mut out);
                if special == "\"" {
                    // The quote ends the string early: trailing text.
                    assert!(got.is_none(), "{json}");
                } else {
                    assert_eq!(got.is_some(), ok, "{json}");
                    if ok {
                        assert_eq!(shapes.to_json(&out), json);
                    }
                }
            }
        }
    }

    #[test]
    fn encode_without_drops_and_returns_members() {
        let mut shapes = Shapes::default();
        let mut out = Vec::new();
        let json = br#"{"guild_id":"5","user":{"id":"7"},"member":{"x":1},"nick":null}"#;
        let [gid, member, none] =
            Encoder::new(&mut shapes).encode_without(json, [b"guild_id", b"member", b"absent"], &mut out).unwrap();
        assert_eq!((gid, member, none), (Some(&b"\"5\""[..]), Some(&br#"{"x":1}"#[..]), None));
        assert_eq!(shapes.to_json(&out), r#"{"user":{"id":"7"},"nick":null}"#);
        assert_eq!(shapes.snowflake_at(&out, &[b"user", b"id"]), Some(7));
        for bad in [&br#"{"guild_id":"5","a":}"#[..], br#"{"guild_id":"5"} x"#, b"[1]"] {
            let mut out = vec![1];
            assert!(Encoder::new(&mut shapes).encode_without(bad, [b"guild_id"], &mut out).is_none());
            assert_eq!(out, [1]);
        }
    }

    /// A random JSON value shaped like Discord's: objects reusing a few key
    /// sets, snowflakes, hashes, timestamps, escapes, odd numbers.
    fn random_json(rng: &mut fastrand::Rng, depth: u32, out: &mut String) {
        const KEYS: [&str; 12] =
            ["id", "name", "user", "roles", "nick", "avatar", "joined_at", "flags", "a\\\"q", "b\\\\", "", "x y"];
        let pick = rng.u32(0..if depth > 3 { 9 } else { 12 });
        match pick {
            0 => out.push_str(["null", "true", "false"][rng.usize(0..3)]),
            1 => out.push_str(
                ["0", "1", "-1", "0.5", "1e3", "-0", "1.25E-7", "18446744073709551615", "18446744073709551616"]
                    [rng.usize(0..9)],
            ),
            2 => out.push_str(&rng.u64(..).to_string()),
            3 => out.push_str(&format!("\"{}\"", rng.u64(..))),
            4 => {
                let hex: String = (0..32).map(|_| b"0123456789abcdef"[rng.usize(0..16)] as char).collect();
                out.push_str(&format!("\"{}{hex}\"", if rng.bool() { "a_" } else { "" }));
            }
            5 => {
                let t = format!(
                    "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
                    rng.u32(0..10000),
                    rng.u32(0..14),
                    rng.u32(0..33),
                    rng.u32(0..25),
                    rng.u32(0..61),
                    rng.u32(0..61)
                );
                let tail =
                    ["+00:00", ".000000+00:00", &format!(".{:06}+00:00", rng.u32(0..1_000_000)), "Z", ".123+00:00"]
                        [rng.usize(0..5)]
                    .to_owned();
                out.push_str(&format!("\"{t}{tail}\""));
            }
            6 => {
                let pieces = ["a", "é", "\\n", "\\\"", "\\\\", "\\u00e9", "\\/", "0", "00", "x", "𝄞", " "];
                out.push('"');
                for _ in 0..rng.usize(0..12) {
                    out.push_str(pieces[rng.usize(0..pieces.len())]);
                }
                out.push('"');
            }
            7 | 8 => out.push_str(["\"\"", "[]", "{}"][rng.usize(0..3)]),
            9 => {
                out.push('[');
                for i in 0..rng.usize(0..5) {
                    if i > 0 {
                        out.push(',');
                    }
                    random_json(rng, depth + 1, out);
                }
                out.push(']');
            }
            _ => {
                out.push('{');
                let set = rng.usize(0..3);
                let n = rng.usize(0..6);
                for i in 0..n {
                    if i > 0 {
                        out.push(',');
                    }
                    let key = KEYS[(set * 4 + i) % KEYS.len()];
                    out.push_str(&format!("\"{key}\":"));
                    random_json(rng, depth + 1, out);
                }
                out.push('}');
            }
        }
    }

    /// Adds whitespace between tokens (outside strings).
    fn spaced(json: &str, rng: &mut fastrand::Rng) -> String {
        let mut out = String::new();
        let mut in_str = false;
        let mut escaped = false;
        for c in json.chars() {
            if !in_str && matches!(c, '{' | '}' | '[' | ']' | ',' | ':') && rng.bool() {
                out.push_str([" ", "\n", "\t", "\r\n  "][rng.usize(0..4)]);
            }
            out.push(c);
            if in_str {
                if escaped {
                    escaped = false;
                } else if c == '\\' {
                    escaped = true;
                } else if c == '"' {
                    in_str = false;
                }
            } else if c == '"' {
                in_str = true;
            }
        }
        out
    }

    #[test]
    fn random_documents_round_trip_exactly() {
        let mut rng = fastrand::Rng::with_seed(0x5eed);
        let mut shapes = Shapes::default();
        for case in 0..20_000 {
            let mut json = String::new();
            random_json(&mut rng, 0, &mut json);
            let parsed: serde_json::Value = serde_json::from_str(&json).expect("generator makes JSON");
            let mut enc = Vec::new();
            Encoder::new(&mut shapes).encode(json.as_bytes(), &mut enc).unwrap_or_else(|| panic!("refused {json}"));
            assert_eq!(shapes.to_json(&enc), json, "case {case}");
            // With whitespace: the same meaning, written compactly.
            let loose = spaced(&json, &mut rng);
            let mut enc = Vec::new();
            Encoder::new(&mut shapes).encode(loose.as_bytes(), &mut enc).unwrap_or_else(|| panic!("refused {loose}"));
            let back = shapes.to_json(&enc);
            assert_eq!(serde_json::from_str::<serde_json::Value>(&back).unwrap(), parsed, "case {case}: {loose}");
            // Top-level members dropped on the way in.
            if let serde_json::Value::Object(map) = &parsed {
                let mut out = Vec::new();
                let [id, name] =
                    Encoder::new(&mut shapes).encode_without(loose.as_bytes(), [b"id", b"name"], &mut out).unwrap();
                let rest: serde_json::Value = serde_json::from_str(&shapes.to_json(&out)).unwrap();
                let mut want = map.clone();
                let want_id = want.remove("id");
                let want_name = want.remove("name");
                assert_eq!(rest, serde_json::Value::Object(want), "case {case}");
                let raw = |r: Option<&[u8]>| r.map(|r| serde_json::from_slice::<serde_json::Value>(r).unwrap());
                assert_eq!((raw(id), raw(name)), (want_id, want_name), "case {case}");
            }
            // Merging another object into it: its members replace or follow ours, `x y` dropped.
            if let serde_json::Value::Object(map) = &parsed {
                let mut update = String::new();
                while !update.starts_with('{') {
                    update.clear();
                    random_json(&mut rng, 3, &mut update);
                }
                let members = object_members(update.as_bytes()).unwrap();
                let pairs: Vec<(&[u8], Option<&[u8]>)> = members.iter().map(|&(k, v)| (k, Some(v))).collect();
                let mut old = Vec::new();
                Encoder::new(&mut shapes).encode(json.as_bytes(), &mut old).unwrap();
                let merged = shapes.merge(&old, &pairs, &[b"x y"]).unwrap();
                let got: serde_json::Value = serde_json::from_str(&shapes.to_json(&merged)).unwrap();
                let mut want = map.clone();
                if let serde_json::Value::Object(u) = serde_json::from_str(&update).unwrap() {
                    want.extend(u);
                }
                want.remove("x y");
                assert_eq!(got, serde_json::Value::Object(want), "case {case}: {json} + {update}");
            }
            // Truncated documents are refused, never half-stored.
            if json.len() > 1 {
                let cut = rng.usize(1..json.len());
                if json.is_char_boundary(cut) && serde_json::from_str::<serde_json::Value>(&json[..cut]).is_err() {
                    let mut out = vec![7];
                    assert!(
                        Encoder::new(&mut shapes).encode(&json.as_bytes()[..cut], &mut out).is_none(),
                        "{}",
                        &json[..cut]
                    );
                    assert_eq!(out, [7]);
                }
            }
        }
    }

    #[test]
    fn hostile_nesting_is_linear_or_refused() {
        let mut shapes = Shapes::default();
        // Keys that force inline objects at every level: each level encoded once.
        let mut json = String::from("1");
        for _ in 0..60 {
            json = format!(r#"{{"\\":{json},"k":[1,{{"a\"b":null}}]}}"#);
        }
        let mut out = Vec::new();
        let started = std::time::Instant::now();
        Encoder::new(&mut shapes).encode(json.as_bytes(), &mut out).expect("60 levels are accepted");
        assert!(started.elapsed() < std::time::Duration::from_secs(2), "took {:?}", started.elapsed());
        assert_eq!(shapes.to_json(&out), json);
        // Deeper than the limit, as arrays or objects: refused, no stack overflow.
        for deep in ["[".repeat(100_000) + &"]".repeat(100_000), "{\"a\":".repeat(100_000) + "1" + &"}".repeat(100_000)]
        {
            let mut out = Vec::new();
            assert!(Encoder::new(&mut shapes).encode(deep.as_bytes(), &mut out).is_none());
            let doc = format!(r#"{{"guild_id":"1","x":{deep}}}"#);
            assert!(Encoder::new(&mut shapes).encode_without(doc.as_bytes(), [b"guild_id"], &mut out).is_none());
            assert!(out.is_empty());
        }
    }

    #[test]
    fn random_documents_round_trip_with_a_full_shape_table() {
        let mut shapes = Shapes::default();
        for i in 0..MAX_SHAPES {
            Encoder::new(&mut shapes).encode(format!("{{\"k{i}\":1}}").as_bytes(), &mut Vec::new()).unwrap();
        }
        let mut rng = fastrand::Rng::with_seed(7);
        for case in 0..3_000 {
            let mut json = String::new();
            random_json(&mut rng, 0, &mut json);
            let mut enc = Vec::new();
            Encoder::new(&mut shapes).encode(json.as_bytes(), &mut enc).unwrap();
            assert_eq!(shapes.to_json(&enc), json, "case {case}");
        }
    }
}
