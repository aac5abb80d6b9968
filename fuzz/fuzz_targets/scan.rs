//! The relay path's payload scanner: `scan`, `scan_relay`, `top_level_value`
//! and `Fields::event_name`/`seq`.
//!
//! Input: a payload. On any input nothing panics and every range found lies
//! in the payload. On a valid JSON object the scanner must succeed, and when
//! its keys are unescaped and unique (what Discord sends) it must agree with
//! serde_json: `op` is the value when it is an integer 0..=255, `s` and `d`
//! are exactly the raw values, `t` the contents of a string value, `seq`
//! the value of an unsigned integer `s`, `top_level_value` the raw value of
//! each key. `scan_relay` agrees with `scan` on `op`, `s` and `t`; its `d`
//! starts where `scan`'s does, and is the same when `d` is the last key.

#![no_main]

mod common;

use gateway_proxy::protocol::scan::{scan, scan_relay, top_level_value, Fields};
use libfuzzer_sys::fuzz_target;

fn in_bounds(f: &Fields, p: &[u8]) {
    for r in [&f.s, &f.t, &f.d].into_iter().flatten() {
        assert!(r.start <= r.end && r.end <= p.len(), "{f:?} in {} bytes", p.len());
    }
    let _ = f.event_name(p);
    let _ = f.seq(p);
}

fuzz_target!(|p: &[u8]| {
    let full = scan(p);
    let fast = scan_relay(p);
    if let Ok(f) = &full {
        in_bounds(f, p);
    }
    if let Ok(f) = &fast {
        in_bounds(f, p);
    }
    for key in [&b"op"[..], b"d", b"t", b"s", b""] {
        if let Some(v) = top_level_value(p, key) {
            let r = common::range_in(p, v);
            assert!(r.start < r.end, "an empty value for {key:?}");
        }
    }
    if !common::is_json_object(p) {
        return;
    }
    let full = full.unwrap_or_else(|e| panic!("a valid JSON object refused: {e}"));
    let fast = fast.unwrap_or_else(|e| panic!("a valid JSON object refused by scan_relay: {e}"));
    let Some(members) = common::top_level(p) else { return };
    let mut keys: Vec<&str> = members.iter().map(|(k, _)| *k).collect();
    keys.sort_unstable();
    keys.dedup();
    if keys.len() != members.len() {
        return; // duplicate keys: which one counts is not specified
    }
    let raw = |key: &str| members.iter().find(|(k, _)| *k == key).map(|(_, v)| v.get());
    let range = |key: &str| raw(key).map(|v| common::range_in(p, v.as_bytes()));
    // op: an integer 0..=255 written as digits (`-0` is no sequence number either).
    let op = raw("op").filter(|v| !v.starts_with('-')).and_then(|v| serde_json::from_str::<u8>(v).ok());
    assert_eq!(full.op, op, "op");
    assert_eq!(full.s, range("s"), "s");
    assert_eq!(full.d, range("d"), "d");
    let t = raw("t").filter(|v| v.starts_with('"')).and(range("t")).map(|r| r.start + 1..r.end - 1);
    assert_eq!(full.t, t, "t");
    let seq = raw("s").filter(|v| !v.starts_with('-')).and_then(|v| serde_json::from_str::<u64>(v).ok());
    assert_eq!(full.seq(p), seq, "seq");
    if let Some(t) = raw("t").filter(|v| v.starts_with('"')) {
        assert_eq!(full.event_name(p), Some(&t.as_bytes()[1..t.len() - 1]));
    }
    for (key, value) in &members {
        assert_eq!(top_level_value(p, key.as_bytes()), Some(value.get().as_bytes()), "top_level_value({key:?})");
    }
    assert_eq!(top_level_value(p, b"\xff"), None);
    assert_eq!((&fast.op, &fast.s, &fast.t), (&full.op, &full.s, &full.t), "scan_relay");
    match (&fast.d, &full.d) {
        (Some(a), Some(b)) => {
            assert_eq!(a.start, b.start, "scan_relay's d");
            if members.last().is_some_and(|(k, _)| *k == "d") {
                assert_eq!(a, b, "scan_relay's d when d is last");
            }
        }
        (a, b) => assert_eq!(a, b, "scan_relay's d"),
    }
});
