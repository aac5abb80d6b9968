//! The state file read at start (src/state_file.rs): `state_file::parse`,
//! the inside of `state_file::load`, on any file content, then what a
//! restart does with a file it accepts.
//!
//! Input: a state file. It is parsed as `load` parses it. A file that
//! passes every check but its age cannot be fuzzed into being fresh, so an
//! input whose `"saved_at_ms"` is `0` is also parsed with that replaced by
//! the current time. An accepted state must be written back as `save` writes
//! it (every cached guild as a valid GUILD_CREATE) and read again the same;
//! every replayed dispatch must be writable with a client's sequence number,
//! and every local shard restored (`ShardHub::restore`, as at start) and
//! exported again (as at shutdown), without a panic.

#![no_main]

use gateway_proxy::{
    config::Config,
    hub::{replay::ReplayLedger, ShardHub},
    protocol::dispatch::Dispatch,
    state_file::{self, SavedState},
};
use libfuzzer_sys::fuzz_target;
use std::time::{SystemTime, UNIX_EPOCH};

const TOKEN: &str = "fuzz-token";
const SHARDS: u32 = 4;

/// `data` with `"saved_at_ms":0` made the current time.
fn freshen(data: &[u8]) -> Option<Vec<u8>> {
    const KEY: &[u8] = b"\"saved_at_ms\":0";
    let at = data.windows(KEY.len()).position(|w| w == KEY)?;
    if data.get(at + KEY.len()).is_some_and(u8::is_ascii_digit) {
        return None;
    }
    let now = SystemTime::now().duration_since(UNIX_EPOCH).expect("after 1970").as_millis();
    let mut out = data[..at + KEY.len() - 1].to_vec();
    out.extend_from_slice(now.to_string().as_bytes());
    out.extend_from_slice(&data[at + KEY.len()..]);
    Some(out)
}

fn config() -> Config {
    Config::from_json(r#"{"token": "fuzz-token", "intents": 3276799, "shards": 4}"#, None).expect("a valid config")
}

fn restart_with(state: SavedState) {
    // Written back as at shutdown, and read again.
    let saved = serde_json::to_vec(&state).expect("an accepted state can be saved");
    let (again, _) = state_file::parse(&saved, TOKEN, SHARDS).expect("a saved state is accepted");
    assert_eq!(
        String::from_utf8_lossy(&serde_json::to_vec(&again).expect("saved again")),
        String::from_utf8_lossy(&saved),
        "saving what was read back changed it"
    );
    let config = config();
    let ledger = ReplayLedger::new(config.replay_memory);
    for shard in state.shards {
        for d in &shard.replay {
            let dispatch = Dispatch::from_parts(d.raw.clone().into_bytes(), d.seq.0..d.seq.1);
            let mut out = Vec::new();
            dispatch.write_with_seq(12345, &mut out);
            assert_eq!(out.len(), dispatch.len_with_seq(12345));
        }
        // main.rs restores the local shards only.
        if shard.id < SHARDS {
            let hub = ShardHub::restore(shard, SHARDS, &config, &ledger);
            let _ = serde_json::to_vec(&hub.export()).expect("an exported shard can be saved");
        }
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok((state, _)) = state_file::parse(data, TOKEN, SHARDS) {
        restart_with(state);
    }
    if let Some(fresh) = freshen(data) {
        if let Ok((state, _)) = state_file::parse(&fresh, TOKEN, SHARDS) {
            restart_with(state);
        }
    }
});
