//! The state file: what a restart needs so that neither the shards nor the
//! clients start over. Written at shutdown (temp file, fsync, rename), read
//! at start; a torn, stale or foreign file is ignored with a warning.

use crate::{cache::ShardCache, downstream::session::Position, hub::routing::SavedRouting, hub::UpstreamSession};
use serde::{Deserialize, Serialize};
use std::{
    hash::{Hash, Hasher},
    io::Write,
    path::Path,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

/// Format version; a file of another version is ignored.
pub const VERSION: u32 = 2;
/// A file older than this is not trusted: Discord's sessions will have expired.
pub const MAX_AGE: Duration = Duration::from_secs(600);

/// One dispatch of a replay buffer.
#[derive(Debug, Serialize, Deserialize)]
pub struct SavedDispatch {
    /// The payload (JSON text).
    pub raw: String,
    /// Where its `s` value sits.
    pub seq: (usize, usize),
    /// The session it is routed to, if any.
    pub target: Option<u64>,
}

/// One client session.
#[derive(Debug, Serialize, Deserialize)]
pub struct SavedSession {
    /// Routing number.
    pub num: u64,
    /// `session_id`.
    pub id: String,
    /// Stream position.
    pub position: Position,
    /// The intents it is served with (absent: everything).
    #[serde(default)]
    pub intents: Option<u64>,
}

/// Everything about one shard.
#[derive(Debug, Serialize, Deserialize)]
pub struct SavedShard {
    /// Shard id.
    pub id: u32,
    /// Discord session to resume.
    pub session: Option<UpstreamSession>,
    /// Guild state.
    pub cache: ShardCache,
    /// Index of the first dispatch in `replay`.
    pub replay_first: u64,
    /// The replay buffer.
    pub replay: Vec<SavedDispatch>,
    /// Client sessions.
    pub sessions: Vec<SavedSession>,
    /// Kept voice sessions and presence.
    pub routing: SavedRouting,
}

/// The whole file.
#[derive(Debug, Serialize, Deserialize)]
pub struct SavedState {
    /// Format version.
    pub version: u32,
    /// When it was written (ms since the Unix epoch).
    pub saved_at_ms: u64,
    /// Hash of the bot token, so another bot's state is never used.
    pub token_hash: u64,
    /// The bot's total shard count.
    pub total_shards: u32,
    /// The shards.
    pub shards: Vec<SavedShard>,
}

/// A hash of the token (not a secret-grade digest; it only tells bots apart).
pub fn token_hash(token: &str) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    token.hash(&mut h);
    h.finish()
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Writes `state` to `path` atomically: a reader sees the old file or the new one, never a torn one.
pub fn save(path: &Path, shards: Vec<SavedShard>, token: &str, total_shards: u32) -> std::io::Result<()> {
    let state =
        SavedState { version: VERSION, saved_at_ms: now_ms(), token_hash: token_hash(token), total_shards, shards };
    let tmp = path.with_extension("tmp");
    {
        let mut f = std::fs::File::create(&tmp)?;
        let mut w = std::io::BufWriter::new(&mut f);
        serde_json::to_writer(&mut w, &state)?;
        w.flush()?;
        drop(w);
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

/// Reads the state file, if there is one worth trusting. The file is moved
/// aside once read, so a crash later never makes a stale copy look fresh.
pub fn load(path: &Path, token: &str, total_shards: u32) -> Option<SavedState> {
    let text = match std::fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            log::warn!("state file {}: cannot read it ({e}); starting fresh", path.display());
            return None;
        }
    };
    let _ = std::fs::rename(path, path.with_extension("used"));
    match parse(&text, token, total_shards) {
        Ok((state, age)) => {
            log::info!(
                "state file {}: {} shards restored ({}s old)",
                path.display(),
                state.shards.len(),
                age.as_secs()
            );
            Some(state)
        }
        Err(why) => {
            log::warn!("state file {}: {why}; starting fresh", path.display());
            None
        }
    }
}

/// The state in a state file's contents `text` and its age, or why it is
/// not to be used (torn or invalid, another version, bot or shard count, too old).
pub fn parse(text: &[u8], token: &str, total_shards: u32) -> Result<(SavedState, Duration), String> {
    let state: SavedState = serde_json::from_slice(text).map_err(|e| format!("torn or invalid ({e})"))?;
    let age = Duration::from_millis(now_ms().saturating_sub(state.saved_at_ms));
    let problem = if state.version != VERSION {
        Some(format!("version {} is not {VERSION}", state.version))
    } else if state.token_hash != token_hash(token) {
        Some("it belongs to another bot token".to_owned())
    } else if state.total_shards != total_shards {
        Some(format!("it is for {} shards, not {total_shards}", state.total_shards))
    } else if age > MAX_AGE {
        Some(format!("it is {}s old, Discord's sessions are gone", age.as_secs()))
    } else {
        state
            .shards
            .iter()
            .find(|s| !replay_is_sound(s))
            .map(|s| format!("shard {}'s replay buffer is inconsistent", s.id))
    };
    match problem {
        Some(p) => Err(format!("ignored because {p}")),
        None => Ok((state, age)),
    }
}

/// Whether `shard`'s replay buffer can be restored: each dispatch's `s`
/// within its payload (it is spliced there for every client) and indexes
/// far from overflowing (they count dispatches from 0).
fn replay_is_sound(shard: &SavedShard) -> bool {
    shard.replay_first < 1 << 62 && shard.replay.iter().all(|d| d.seq.0 <= d.seq.1 && d.seq.1 <= d.raw.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_refusals() {
        let dir = std::env::temp_dir().join(format!("gp-state-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("state.json");
        let shard = SavedShard {
            id: 3,
            session: Some(UpstreamSession { session_id: "s".into(), seq: 9, resume_url: "ws://x".into() }),
            cache: ShardCache::default(),
            replay_first: 5,
            replay: vec![SavedDispatch { raw: "{\"s\":1}".into(), seq: (5, 6), target: None }],
            sessions: vec![],
            routing: SavedRouting::default(),
        };
        save(&path, vec![shard], "tok", 4).unwrap();
        let back = load(&path, "tok", 4).expect("fresh file loads");
        assert_eq!(back.shards[0].session.as_ref().unwrap().seq, 9);
        assert!(!path.exists(), "moved aside once read");
        save(&path, vec![], "tok", 4).unwrap();
        assert!(load(&path, "other", 4).is_none());
        save(&path, vec![], "tok", 4).unwrap();
        assert!(load(&path, "tok", 8).is_none());
        std::fs::write(&path, b"{\"version\":1,\"saved_at").unwrap();
        assert!(load(&path, "tok", 4).is_none(), "torn file ignored");
        // A replay buffer that would panic once restored: `s` beyond its
        // payload or reversed, indexes about to overflow.
        for (seq, first) in [((5, 99), 5), ((6, 5), 5), ((5, 6), u64::MAX)] {
            let shard = SavedShard {
                id: 0,
                session: None,
                cache: ShardCache::default(),
                replay_first: first,
                replay: vec![SavedDispatch { raw: "{\"s\":1}".into(), seq, target: None }],
                sessions: vec![],
                routing: SavedRouting::default(),
            };
            save(&path, vec![shard], "tok", 4).unwrap();
            assert!(load(&path, "tok", 4).is_none(), "{seq:?} from {first}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
