//! The cache's compact form (src/cache/compact.rs): `Encoder::encode`,
//! `Shapes::to_json`/`decode`/`skip`, `Encoder::encode_without` and
//! `Shapes::merge`.
//!
//! Input: a JSON text (or anything). What the encoder promises:
//! - valid JSON no deeper than its limit (64) is accepted, and anything it
//!   accepts is valid JSON; a refusal leaves the output untouched. Inputs
//!   are UTF-8: the encoder does not check that strings are (byte 0xff
//!   marks slots in its shape signatures), and every caller hands it a `str`
//!   (`ShardCache::apply` takes the payload as `&str`, a saved guild is a
//!   `RawValue`), so other bytes are skipped here;
//! - decoding gives back the input exactly, less the whitespace between
//!   tokens (keys in order, duplicates kept, strings and numbers as written),
//!   so serde_json reads the same value from both; `skip` steps over exactly
//!   one encoded value; the decoded text encodes and decodes to itself, to
//!   the same bytes every time;
//! - `encode_without` of an object gives it without the dropped keys and
//!   returns their (last) raw values;
//! - with an input `[OLD, UPDATE]` of two objects with unique, unescaped
//!   keys, `merge` replaces OLD's members by UPDATE's in place, removes those
//!   whose UPDATE key is prefixed with `-`, appends UPDATE's new ones and
//!   leaves out the key `x y`.

#![no_main]

mod common;

use gateway_proxy::cache::compact::{Encoder, Shapes};
use libfuzzer_sys::fuzz_target;

/// Nesting every encoder entry point accepts.
const DEPTH: usize = 64;

fn object_text<'a>(members: impl IntoIterator<Item = (&'a str, &'a str)>) -> Vec<u8> {
    let mut out = b"{".to_vec();
    for (i, (k, v)) in members.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(format!("\"{k}\":{v}").as_bytes());
    }
    out.push(b'}');
    common::minify(&out)
}

fn unique(members: &[(&str, &serde_json::value::RawValue)]) -> bool {
    let mut keys: Vec<&str> = members.iter().map(|(k, _)| *k).collect();
    keys.sort_unstable();
    keys.dedup();
    keys.len() == members.len()
}

fn check_merge(data: &[u8], shapes: &mut Shapes) {
    let Ok([old, update]) = serde_json::from_slice::<[&serde_json::value::RawValue; 2]>(data) else { return };
    let (Some(olds), Some(updates)) =
        (common::top_level(old.get().as_bytes()), common::top_level(update.get().as_bytes()))
    else {
        return;
    };
    if !unique(&olds) || !unique(&updates) {
        return;
    }
    let update: Vec<(&[u8], Option<&[u8]>)> = updates
        .iter()
        .map(|(k, v)| match k.strip_prefix('-') {
            Some(removed) => (removed.as_bytes(), None),
            None => (k.as_bytes(), Some(v.get().as_bytes())),
        })
        .collect();
    let mut encoded = Vec::new();
    Encoder::new(shapes).encode(old.get().as_bytes(), &mut encoded).expect("the old object encodes");
    let merged = shapes.merge(&encoded, &update, &[b"x y"]).expect("a merge of valid objects");
    let find = |k: &str| update.iter().find(|(uk, _)| *uk == k.as_bytes()).map(|(_, v)| *v);
    let mut want: Vec<(&str, &str)> = Vec::new();
    for (k, v) in &olds {
        match find(k) {
            _ if *k == "x y" => {}
            Some(Some(json)) => want.push((k, std::str::from_utf8(json).unwrap())),
            Some(None) => {}
            None => want.push((k, v.get())),
        }
    }
    for (k, v) in &update {
        let k = std::str::from_utf8(k).unwrap();
        if let Some(json) = v {
            if k != "x y" && !olds.iter().any(|(ok, _)| *ok == k) {
                want.push((k, std::str::from_utf8(json).unwrap()));
            }
        }
    }
    assert_eq!(shapes.to_json(&merged).as_bytes(), object_text(want), "merge");
}

fuzz_target!(|data: &[u8]| {
    if std::str::from_utf8(data).is_err() {
        return;
    }
    let mut shapes = Shapes::default();
    let mut encoded = vec![0xaa];
    let accepted = Encoder::new(&mut shapes).encode(data, &mut encoded).is_some();
    let valid = common::is_json(data);
    if valid && common::nesting(data) <= DEPTH {
        assert!(accepted, "valid JSON refused");
    }
    if !accepted {
        assert_eq!(encoded, [0xaa], "a refusal wrote to the output");
        return;
    }
    assert!(valid, "invalid JSON accepted");
    let encoded = &encoded[1..];
    let json = shapes.to_json(encoded);
    assert_eq!(json.as_bytes(), common::minify(data), "the round trip changed the text");
    let mut p = 0;
    let mut out = Vec::new();
    shapes.decode(encoded, &mut p, &mut out);
    assert_eq!((p, out.as_slice()), (encoded.len(), json.as_bytes()), "decode");
    let mut p = 0;
    shapes.skip(encoded, &mut p);
    assert_eq!(p, encoded.len(), "skip");
    if let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) {
        assert_eq!(serde_json::from_str::<serde_json::Value>(&json).expect("decoded JSON parses"), value);
    }
    // The decoded text encodes to itself, the same way every time (not
    // necessarily as the input did: `{ }` is a slot, `{}` a constant).
    let mut again = Vec::new();
    Encoder::new(&mut shapes).encode(json.as_bytes(), &mut again).expect("the decoded text encodes");
    assert_eq!(shapes.to_json(&again), json, "the decoded text round trip");
    let mut third = Vec::new();
    Encoder::new(&mut shapes).encode(json.as_bytes(), &mut third).expect("the decoded text encodes");
    assert_eq!(third, again, "encoding is deterministic");

    if let Some(members) = common::top_level(data) {
        let mut out = Vec::new();
        let [id, guild_id] = Encoder::new(&mut shapes)
            .encode_without(data, [b"id", b"guild_id"], &mut out)
            .expect("an object that encodes also encodes without some keys");
        let last = |key: &str| members.iter().rev().find(|(k, _)| *k == key).map(|(_, v)| v.get().as_bytes());
        assert_eq!((id, guild_id), (last("id"), last("guild_id")), "dropped values");
        let rest =
            object_text(members.iter().filter(|(k, _)| !matches!(*k, "id" | "guild_id")).map(|(k, v)| (*k, v.get())));
        assert_eq!(shapes.to_json(&out).as_bytes(), rest, "encode_without");
    }
    check_merge(data, &mut shapes);
});
