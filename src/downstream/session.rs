//! Client sessions: what outlives a client's connection so that it can
//! RESUME. A session remembers where in its shard's replay buffer the
//! client's stream stands and which sequence number it has reached.

use crate::protocol::intents::ClientIntents;
use std::{
    cell::Cell,
    os::fd::RawFd,
    time::{Duration, Instant},
};

/// One client session (the `session_id` of its READY).
#[derive(Debug)]
pub struct ClientSession {
    /// Numeric id, used to route replies to this session.
    pub num: u64,
    /// The `session_id` string given in READY.
    pub id: String,
    /// The shard it belongs to.
    pub shard: u32,
    /// The intents its Identify asked for, as served (`None`: everything).
    pub intents: Option<ClientIntents>,
    generation: Cell<u64>,
    resume_from: Cell<u64>,
    sent_seq: Cell<u64>,
    floor_seq: Cell<u64>,
    connection: Cell<Option<(u64, RawFd)>>,
    disconnected_at: Cell<Option<Instant>>,
}

/// A session id carries its shard in its first 8 hex digits, so any core
/// can route a RESUME to the core that owns the session.
pub fn new_session_id(shard: u32) -> String {
    format!("{shard:08x}{:016x}{:08x}", fastrand::u64(..), fastrand::u32(..))
}

/// The shard a session id belongs to.
pub fn shard_of(session_id: &str) -> Option<u32> {
    if session_id.len() != 32 || !session_id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u32::from_str_radix(&session_id[..8], 16).ok()
}

/// Where a stream resumes: the replay index and the sequence number of the
/// last dispatch sent, as of one generation (connection) of the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Position {
    /// Index of the first dispatch not yet sent.
    pub resume_from: u64,
    /// Client sequence number of the last dispatch sent.
    pub sent_seq: u64,
    /// Sequence number of the last dispatch that is not in the replay
    /// buffer (the end of READY's burst, or RESUMED); a resume cannot go
    /// back past it.
    pub floor_seq: u64,
}

impl ClientSession {
    /// A new session whose live stream starts at replay index `start`.
    pub fn new(num: u64, shard: u32, start: u64, intents: Option<ClientIntents>) -> Self {
        Self {
            num,
            id: new_session_id(shard),
            shard,
            intents,
            generation: Cell::new(0),
            resume_from: Cell::new(start),
            sent_seq: Cell::new(0),
            floor_seq: Cell::new(0),
            connection: Cell::new(None),
            disconnected_at: Cell::new(None),
        }
    }

    /// A session read back from the state file, disconnected as of now.
    pub fn restored(num: u64, id: String, shard: u32, pos: Position, intents: Option<ClientIntents>) -> Self {
        Self {
            num,
            id,
            shard,
            intents,
            generation: Cell::new(0),
            resume_from: Cell::new(pos.resume_from),
            sent_seq: Cell::new(pos.sent_seq),
            floor_seq: Cell::new(pos.floor_seq),
            connection: Cell::new(None),
            disconnected_at: Cell::new(Some(Instant::now())),
        }
    }

    /// The current generation: each (re)attached connection gets a new one,
    /// and only the current one may move the session's position.
    pub fn generation(&self) -> u64 {
        self.generation.get()
    }

    /// Starts a new generation for a connection, positioned at `pos`.
    pub fn begin(&self, conn: u64, fd: RawFd, pos: Position) -> u64 {
        let g = self.generation.get() + 1;
        self.generation.set(g);
        self.resume_from.set(pos.resume_from);
        self.sent_seq.set(pos.sent_seq);
        self.floor_seq.set(pos.floor_seq);
        self.connection.set(Some((conn, fd)));
        self.disconnected_at.set(None);
        g
    }

    /// The stream position.
    pub fn position(&self) -> Position {
        Position { resume_from: self.resume_from.get(), sent_seq: self.sent_seq.get(), floor_seq: self.floor_seq.get() }
    }

    /// Records that the writer of generation `generation` sent sequence
    /// `seq`; `index` is the dispatch's replay index, if it has one.
    pub fn record_sent(&self, generation: u64, seq: u64, index: Option<u64>) {
        if generation != self.generation.get() {
            return;
        }
        self.sent_seq.set(seq);
        match index {
            Some(i) => self.resume_from.set(i + 1),
            None => self.floor_seq.set(seq),
        }
    }

    /// Records that the dispatch at replay index `index`, which this
    /// session does not receive, needs no replay either. Only called while
    /// generation `generation`'s writer waits with nothing in hand, so
    /// every earlier dispatch it receives was already recorded as sent.
    pub fn skip_past(&self, generation: u64, index: u64) {
        if generation == self.generation.get() && self.resume_from.get() <= index {
            self.resume_from.set(index + 1);
        }
    }

    /// The connection currently attached (connection id, socket).
    pub fn connection(&self) -> Option<(u64, RawFd)> {
        self.connection.get()
    }

    /// Marks generation `generation`'s connection as gone.
    pub fn disconnected(&self, generation: u64) {
        if generation == self.generation.get() {
            self.connection.set(None);
            self.disconnected_at.set(Some(Instant::now()));
        }
    }

    /// Whether the session has been without a connection for longer than `ttl`.
    pub fn expired(&self, ttl: Duration) -> bool {
        self.disconnected_at.get().is_some_and(|t| t.elapsed() > ttl)
    }

    /// When it lost its connection, if it has none.
    pub fn disconnected_at(&self) -> Option<Instant> {
        self.disconnected_at.get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_ids_carry_the_shard() {
        let id = new_session_id(0x1234);
        assert_eq!(id.len(), 32);
        assert_eq!(shard_of(&id), Some(0x1234));
        assert_eq!(shard_of("nope"), None);
        assert_ne!(new_session_id(1), new_session_id(1));
    }

    #[test]
    fn only_the_current_generation_moves_the_position() {
        let s = ClientSession::new(1, 0, 10, None);
        let g1 = s.begin(1, -1, s.position());
        s.record_sent(g1, 1, None);
        s.record_sent(g1, 2, Some(10));
        let g2 = s.begin(2, -1, s.position());
        s.record_sent(g1, 3, Some(11));
        assert_eq!(s.position(), Position { resume_from: 11, sent_seq: 2, floor_seq: 1 });
        s.record_sent(g2, 3, Some(12));
        assert_eq!(s.position().resume_from, 13);
    }
}
