//! codecbench: what each candidate codec costs per gateway payload, on
//! this machine, in one thread: the figures behind the proxy's choice of
//! zlib implementation for Identify `compress: true` and of JSON parser.
//!
//! `cargo run --release -p codecbench [-- --runs N]`

use fake_discord::payloads::Generator;
use gateway_proxy::{
    compression::zlib_message::ZlibMessage,
    protocol::{intents, scan},
};
use serde::Deserialize;
use serde_json::value::RawValue;
use std::{hint::black_box, time::Instant};

/// One gateway payload to measure on.
struct Doc {
    name: &'static str,
    bytes: Vec<u8>,
}

/// A dispatch with its keys in Discord's order (`t`, `s`, `op`, `d`).
fn dispatch(t: &str, s: u64, d: serde_json::Value) -> Vec<u8> {
    format!("{{\"t\":\"{t}\",\"s\":{s},\"op\":0,\"d\":{d}}}").into_bytes()
}

/// flate2 with `c`'s level, with the proxy's framing (one whole zlib stream per message).
fn flate2_message(parts: &[&[u8]], out: &mut Vec<u8>, c: &mut flate2::Compress) {
    c.reset();
    for (i, p) in parts.iter().enumerate() {
        let flush = if i + 1 == parts.len() { flate2::FlushCompress::Finish } else { flate2::FlushCompress::None };
        let mut input = *p;
        loop {
            out.reserve(input.len() + 64);
            let before = c.total_in();
            let status = c.compress_vec(input, out, flush).expect("deflates");
            input = &input[(c.total_in() - before) as usize..];
            if input.is_empty() && (flush == flate2::FlushCompress::None || status == flate2::Status::StreamEnd) {
                break;
            }
        }
    }
}

fn docs() -> Vec<Doc> {
    // 200 members per guild: a GUILD_CREATE of a mid-sized guild (not large at 250).
    let g = Generator::new(4, 200, 20, 10, 0);
    let content = "lorem ipsum dolor sit amet ".repeat(11);
    let message = dispatch("MESSAGE_CREATE", 123_456, g.message_create(1, 7, 0, 1_300_000_000_000_000_000, &content));
    let typing = dispatch("TYPING_START", 123_457, g.typing_start(1, 7, 1_700_000_000));
    let guild = dispatch("GUILD_CREATE", 3, g.guild_create(1, true, 250));
    let identify = serde_json::to_vec(&serde_json::json!({"op": 2, "d": {
        "token": "MTIzNDU2Nzg5MDEyMzQ1Njc4.GhIjKl.abcdefghijklmnopqrstuvwxyz0123456789AB",
        "intents": 513, "shard": [3, 16], "compress": false, "large_threshold": 250,
        "properties": {"os": "linux", "browser": "twilight.rs", "device": "twilight.rs"},
        "presence": {"since": null, "activities": [{"name": "on shard 3", "type": 0}], "status": "online", "afk": false}
    }}))
    .expect("json");
    vec![
        Doc { name: "Identify (client)", bytes: identify },
        Doc { name: "TYPING_START", bytes: typing },
        Doc { name: "MESSAGE_CREATE 1 KB", bytes: message },
        Doc { name: "GUILD_CREATE 200 members", bytes: guild },
    ]
}

/// Median over `runs` of the mean time per call of `f`, in microseconds;
/// each run lasts about 200 ms.
fn time_us(runs: usize, mut f: impl FnMut()) -> f64 {
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed().as_millis() < 20 {
        f();
        n += 1;
    }
    let per_run = (n * 10).max(10);
    let mut samples: Vec<f64> = (0..runs)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..per_run {
                f();
            }
            t.elapsed().as_secs_f64() * 1e6 / per_run as f64
        })
        .collect();
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

/// libdeflate with the proxy's framing: the message's parts joined, then one whole zlib stream.
struct Libdeflate {
    compressor: libdeflater::Compressor,
    joined: Vec<u8>,
}

impl Libdeflate {
    fn new(level: i32) -> Self {
        let level = libdeflater::CompressionLvl::new(level).expect("level");
        Self { compressor: libdeflater::Compressor::new(level), joined: Vec::new() }
    }

    fn compress(&mut self, parts: &[&[u8]], out: &mut Vec<u8>) {
        self.joined.clear();
        for p in parts {
            self.joined.extend_from_slice(p);
        }
        let start = out.len();
        out.resize(start + self.compressor.zlib_compress_bound(self.joined.len()), 0);
        let n = self.compressor.zlib_compress(&self.joined, &mut out[start..]).expect("room");
        out.truncate(start + n);
    }
}

fn split_at_seq(doc: &[u8]) -> [&[u8]; 3] {
    match scan::scan(doc).ok().and_then(|f| f.s) {
        Some(s) => [&doc[..s.start], b"42", &doc[s.end..]],
        None => [doc, b"", b""],
    }
}

fn compression(docs: &[Doc], runs: usize) {
    println!("### Identify `compress: true`: one whole zlib stream per message\n");
    println!("| payload | bytes | flate2 (zlib-rs) level 1: us | bytes out | flate2 level 6: us | bytes out | libdeflate level 1 (the proxy's): us | bytes out | libdeflate level 6: us | bytes out |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for doc in docs.iter().filter(|d| !d.name.starts_with("Identify")) {
        let parts = split_at_seq(&doc.bytes);
        let mut out = Vec::new();
        let mut cells = Vec::new();
        for level in [1, 6] {
            let mut c = flate2::Compress::new(flate2::Compression::new(level), true);
            let us = time_us(runs, || {
                out.clear();
                flate2_message(&parts, &mut out, &mut c);
                black_box(&out);
            });
            cells.push(format!("{us:.2}"));
            cells.push(out.len().to_string());
        }
        let mut proxy = ZlibMessage::default();
        let mut lib6 = Libdeflate::new(6);
        for level in [1, 6] {
            let us = time_us(runs, || {
                out.clear();
                if level == 1 {
                    proxy.compress(&parts, &mut out);
                } else {
                    lib6.compress(&parts, &mut out);
                }
                black_box(&out);
            });
            // Round trip: what a client inflates is the message.
            let mut plain = Vec::new();
            std::io::Read::read_to_end(&mut flate2::read::ZlibDecoder::new(&out[..]), &mut plain).expect("inflates");
            assert_eq!(plain, parts.concat(), "libdeflate output inflates to the message");
            cells.push(format!("{us:.2}"));
            cells.push(out.len().to_string());
        }
        println!("| {} | {} | {} |", doc.name, doc.bytes.len(), cells.join(" | "));
    }
    println!();
}

#[derive(Deserialize)]
#[allow(dead_code)]
struct Envelope<'a> {
    op: Option<i64>,
    #[serde(borrow)]
    d: Option<&'a RawValue>,
}

#[derive(Deserialize)]
#[allow(dead_code)]
struct OwnedEnvelope {
    op: Option<i64>,
    d: Option<simd_json::OwnedValue>,
}

fn parsing(docs: &[Doc], runs: usize) {
    println!("### JSON: what finding the fields costs\n");
    println!("us per payload. `scan_relay` is the proxy's relay path (top level only, stops at `d`); `scan` walks the whole top level; serde_json `RawValue` envelope is how the proxy reads a client payload; the simd-json columns include copying the input (simd-json parses in place, and the proxy's payloads are shared, immutable).\n");
    println!("| payload | bytes | scan_relay | scan | serde_json RawValue envelope | serde_json Value | simd-json borrowed value | simd-json serde envelope |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for doc in docs {
        let b = &doc.bytes;
        let relay = time_us(runs, || {
            black_box(scan::scan_relay(black_box(b)).expect("scans"));
        });
        let full = time_us(runs, || {
            black_box(scan::scan(black_box(b)).expect("scans"));
        });
        let raw = time_us(runs, || {
            black_box(serde_json::from_slice::<Envelope>(black_box(b)).expect("parses"));
        });
        let value = time_us(runs, || {
            black_box(serde_json::from_slice::<serde_json::Value>(black_box(b)).expect("parses"));
        });
        let mut copy = Vec::with_capacity(b.len());
        let mut buffers = simd_json::Buffers::default();
        let simd = time_us(runs, || {
            copy.clear();
            copy.extend_from_slice(b);
            black_box(simd_json::to_borrowed_value_with_buffers(&mut copy, &mut buffers).expect("parses"));
        });
        let simd_serde = time_us(runs, || {
            copy.clear();
            copy.extend_from_slice(b);
            black_box(simd_json::serde::from_slice::<OwnedEnvelope>(&mut copy).expect("parses"));
        });
        println!(
            "| {} | {} | {relay:.2} | {full:.2} | {raw:.2} | {value:.2} | {simd:.2} | {simd_serde:.2} |",
            doc.name,
            b.len()
        );
    }
    println!();
}

/// What a filtering client costs per dispatch: finding which intents it needs.
fn intent_class(docs: &[Doc], runs: usize) {
    println!("### Per-client intents: a dispatch's class\n");
    println!("| payload | scan_relay + class from the name or the top level of `d` (us) |");
    println!("|---|---:|");
    for doc in docs.iter().filter(|d| !d.name.starts_with("Identify")) {
        let b = &doc.bytes;
        let us = time_us(runs, || {
            let f = scan::scan_relay(black_box(b)).expect("scans");
            let t = f.event_name(b).expect("a dispatch");
            black_box(intents::classify(t, f.d.map(|r| &b[r]), Some(42)));
        });
        println!("| {} | {us:.3} |", doc.name);
    }
    println!();
}

fn main() {
    let mut runs = 5;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--runs" => runs = args.next().and_then(|v| v.parse().ok()).unwrap_or(5).clamp(1, 50),
            _ => {
                eprintln!("usage: codecbench [--runs N]");
                std::process::exit(2);
            }
        }
    }
    let docs = docs();
    println!("## codecbench: {runs} runs of ~200 ms per cell, medians; one thread\n");
    intent_class(&docs, runs);
    compression(&docs, runs);
    parsing(&docs, runs);
}
