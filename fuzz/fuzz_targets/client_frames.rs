//! The client websocket reader and the Identify/Resume classification.
//!
//! Input: one control byte, then the bytes a client sends after the HTTP
//! upgrade. The control byte picks how the bytes are split into reads
//! (`common::pieces`, low 7 bits) and which proxy configuration classifies
//! them (bit 7).
//!
//! The same bytes are read twice: once all at once, continuing after every
//! message; once in the chosen pieces, stopping after an Identify or Resume
//! as the proxy's connection task does (and ending at a close). Both must see
//! the same messages and end the same way: the reader never loses, repeats or
//! invents a message whatever the reads and stops. Every message is at most
//! `MAX_CLIENT_PAYLOAD` bytes, every classification is consistent with the
//! configuration, and every close the proxy would send is a valid websocket
//! close frame.

#![no_main]

mod common;

use gateway_proxy::{
    config::Config,
    downstream::{
        admission::{Admission, Limits},
        frames::{FrameReader, Message, ReadError, MAX_CLIENT_PAYLOAD},
        identify::{classify, Action},
    },
    protocol::intents::KNOWN,
    runtime::{lifecycle::Signals, Shared},
    topology::ShardMap,
    upstream::identify_queue::IdentifyQueue,
};
use libfuzzer_sys::fuzz_target;
use std::{sync::OnceLock, time::Duration};

/// Shards 0..2 of 4 here, 2..4 on another instance; strict intents.
const SCALED_OUT: &str = r#"{"token": "fuzz-token", "intents": 513, "shards": 4, "shard_start": 0, "shard_end": 2,
    "instances": ["ws://10.0.0.1:7878", "ws://10.0.0.2:7878"], "strict_intents": true}"#;
/// One shard, any token, lenient intents.
const OPEN: &str = r#"{"token": "fuzz-token", "intents": 33281, "shards": 1, "validate_token": false}"#;

/// A process's shared state, built as `main` builds it (no sockets, no signal handlers).
fn build(json: &str) -> Shared {
    let config = Config::from_json(json, None).expect("the fuzz configuration is valid");
    let total = config.shards.expect("a fixed shard count");
    let shard_map = ShardMap::resolve(&config, total, "fuzz-0").expect("a valid layout");
    let identify_queue = IdentifyQueue::start(&config.identify_queue, None, 1, 1000, Duration::from_secs(3600))
        .expect("the local identify queue starts");
    let admission = Admission::new(Limits {
        connections: config.max_connections,
        unidentified: config.max_unidentified_connections,
        unidentified_per_address: config.max_unidentified_per_address,
    });
    Shared {
        identify_queue,
        total_shards: total,
        local: shard_map.local.clone(),
        shard_map,
        cores: 1,
        gateway_url: "ws://127.0.0.1:1".into(),
        client_resume_url: "ws://127.0.0.1:7878".into(),
        config_path: None,
        signals: Signals::default(),
        restore: Default::default(),
        saved: crossbeam_channel::unbounded().0,
        admission,
        config,
    }
}

fn shared(which: usize) -> &'static Shared {
    static SHARED: OnceLock<[Shared; 2]> = OnceLock::new();
    &SHARED.get_or_init(|| [build(SCALED_OUT), build(OPEN)])[which]
}

#[derive(Debug, PartialEq, Eq)]
enum End {
    /// All bytes read, the connection still open.
    Open,
    TooLarge,
    Protocol(String),
    Closed,
    /// A payload was answered with a close (the proxy stops reading).
    CloseAction,
}

#[derive(Debug, Default)]
struct Run {
    /// (text?, payload) of every message, in order.
    messages: Vec<(bool, Vec<u8>)>,
    replies: Vec<u8>,
    end: Option<End>,
}

fn check_action(action: &Action, identified: bool, shared: &Shared) {
    match action {
        Action::Identify(v) => {
            assert!(!identified, "{action:?} after identifying");
            assert!(v.shard < shared.total_shards && shared.is_local(v.shard), "{action:?}");
            assert!(v.intents.is_none_or(|bits| bits & !KNOWN == 0), "{action:?}");
        }
        Action::Resume(r) => {
            assert!(!identified, "{action:?} after identifying");
            assert!(shared.is_local(r.shard), "{action:?}");
        }
        Action::InvalidSession(_) => assert!(!identified, "{action:?} after identifying"),
        Action::Command(op) => {
            assert!(identified, "{action:?} before identifying");
            assert!(matches!(op, 3 | 4 | 8 | 31), "{action:?}");
        }
        Action::Ack => {}
        Action::Close(code, reason) => {
            assert!((4000..5000).contains(code), "{action:?}");
            common::check_close_frame(*code, reason);
        }
    }
}

/// Reads `pieces` as the proxy does; `stops`: stop feeding after an
/// Identify or Resume (and end at a close), as the connection task does.
fn run(pieces: &[&[u8]], stops: bool, shared: &Shared) -> Run {
    let mut reader = FrameReader::new();
    let mut run = Run::default();
    let mut identified = false;
    let mut next = 0;
    loop {
        let input = pieces.get(next).copied();
        next += 1;
        let (mut stopped, mut closing) = (false, false);
        let messages = &mut run.messages;
        let result = reader.feed(input.unwrap_or(&[]), &mut run.replies, |msg| {
            let (text, payload) = match msg {
                Message::Text(t) => (true, t.as_bytes().to_vec()),
                Message::Binary(b) => (false, b.to_vec()),
                other => panic!("feed passed on {other:?}"),
            };
            assert!(payload.len() <= MAX_CLIENT_PAYLOAD, "a {}-byte message", payload.len());
            let action = classify(&payload, identified, shared);
            check_action(&action, identified, shared);
            messages.push((text, payload));
            match action {
                Action::Identify(_) | Action::Resume(_) => {
                    identified = true;
                    stopped = stops;
                }
                Action::Close(..) => closing = stops,
                _ => {}
            }
            !(stopped || closing)
        });
        match result {
            Ok(()) if closing => run.end = Some(End::CloseAction),
            Ok(()) => {}
            Err(ReadError::TooLarge) => run.end = Some(End::TooLarge),
            Err(ReadError::Protocol(e)) => run.end = Some(End::Protocol(e)),
            Err(ReadError::Closed) => run.end = Some(End::Closed),
        }
        if run.end.is_some() {
            return run;
        }
        if input.is_none() && !stopped {
            run.end = Some(End::Open);
            return run;
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&ctl, stream)) = data.split_first() else { return };
    let shared = shared(usize::from(ctl >> 7));
    let whole = run(&[stream], false, shared);
    let pieces = common::pieces(ctl & 0x7f, stream);
    let split = run(&pieces, true, shared);
    let reads: Vec<usize> = pieces.iter().map(|p| p.len()).collect();
    if split.end == Some(End::CloseAction) {
        same_messages(&split.messages, &whole.messages[..split.messages.len().min(whole.messages.len())], &reads);
    } else {
        same_messages(&split.messages, &whole.messages, &reads);
        assert_eq!(split.end, whole.end, "reads {reads:?}");
        assert_eq!(split.replies, whole.replies, "reads {reads:?}");
    }
});

/// Asserts `split == whole`, saying where they part (messages can be long).
fn same_messages(split: &[(bool, Vec<u8>)], whole: &[(bool, Vec<u8>)], reads: &[usize]) {
    if split == whole {
        return;
    }
    let at = split.iter().zip(whole).position(|(a, b)| a != b).unwrap_or(split.len().min(whole.len()));
    let show = |m: Option<&(bool, Vec<u8>)>| {
        m.map(|(text, p)| {
            format!(
                "{} {} bytes {:?}",
                if *text { "text" } else { "binary" },
                p.len(),
                String::from_utf8_lossy(&p[..p.len().min(60)])
            )
        })
    };
    panic!(
        "read in pieces {reads:?}: {} messages, at once: {}; message {at} differs: {:?} vs {:?}",
        split.len(),
        whole.len(),
        show(split.get(at)),
        show(whole.get(at))
    );
}
