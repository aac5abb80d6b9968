//! The per-client checks: every owed soak counter of the client's shard seen
//! exactly once and in order across its resumes; `s` +1 on every dispatch
//! of a session, across resumes; after an Identify, READY then the guild
//! snapshot before any live event; after a Resume, the replay then RESUMED.
//!
//! After a new Identify the first live counter may be anywhere after the
//! last one seen (the new session starts wherever the shard is); from there
//! on the counters are checked against the owed list again.

use std::time::Instant;

use crate::ledger::{ranges, Fate, Ledger};

/// Something a check found wrong.
#[derive(Clone, Debug)]
pub struct Problem {
    pub at: Instant,
    pub shard: u32,
    /// The client's encoding.
    pub client: &'static str,
    /// The proxy's client session id at the time, if known.
    pub session: Option<String>,
    pub what: String,
}

/// Counts a client keeps.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    /// Soak MESSAGE_CREATEs received.
    pub delivered: u64,
    /// New sessions (Identify answered with READY), the first included.
    pub identifies: u64,
    /// Resumes answered with RESUMED.
    pub resumes: u64,
    /// Dispatches received between sending a Resume and its RESUMED.
    pub replayed: u64,
    /// Soak counters that arrived in a replay.
    pub replayed_soak: u64,
    /// Orphaned counters (see [`Fate::Orphaned`]) the client did see.
    pub orphans_seen: u64,
    /// Orphaned counters skipped over.
    pub orphans_skipped: u64,
    /// Heartbeats sent and ACKs received.
    pub heartbeats: u64,
    pub acks: u64,
}

/// What the client is waiting for on its current connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Sent Identify: READY next.
    Ready,
    /// Got READY: this many GUILD_CREATE/GUILD_DELETE still to come.
    Snapshot(usize),
    /// Sent Resume: the replay, then RESUMED.
    Replay,
    /// Live events.
    Live,
}

/// The checks of one client over its whole life.
#[derive(Debug)]
pub struct Checker {
    shard: u32,
    client: &'static str,
    /// GUILD_CREATEs a snapshot holds (the shard's guilds).
    guilds: usize,
    /// Last soak counter seen (0: none yet).
    last_n: u64,
    /// Whether the next counter must follow `last_n` without an owed gap.
    gap_checked: bool,
    /// `s` of the last dispatch of the current session.
    last_s: Option<u64>,
    phase: Phase,
    session: Option<String>,
    pub stats: Stats,
    pub problems: Vec<Problem>,
}

/// Problems kept per client (the count goes on).
const MAX_PROBLEMS: usize = 200;

impl Checker {
    /// A client that identifies before anything is injected: from its first
    /// session on it owes every counter from 1.
    pub fn new(shard: u32, client: &'static str, guilds: usize) -> Self {
        Self {
            shard,
            client,
            guilds,
            last_n: 0,
            gap_checked: true,
            last_s: None,
            phase: Phase::Live,
            session: None,
            stats: Stats::default(),
            problems: Vec::new(),
        }
    }

    pub fn problem(&mut self, what: String) {
        if self.problems.len() < MAX_PROBLEMS {
            self.problems.push(Problem {
                at: Instant::now(),
                shard: self.shard,
                client: self.client,
                session: self.session.clone(),
                what,
            });
        }
    }

    /// The client sent an Identify (`first`: its first, before injection began).
    pub fn identifying(&mut self, first: bool) {
        self.phase = Phase::Ready;
        self.last_s = None;
        self.session = None;
        if !first {
            self.gap_checked = false;
        }
    }

    /// The client sent a Resume: `s` goes on from [`Checker::last_s`].
    pub fn resuming(&mut self) {
        self.phase = Phase::Replay;
    }

    /// The current session id and last `s` (what a Resume sends).
    pub fn resume_point(&self) -> Option<(String, u64)> {
        Some((self.session.clone()?, self.last_s?))
    }

    /// Last soak counter seen.
    pub fn last_n(&self) -> u64 {
        self.last_n
    }

    /// A dispatch: `t`, `s`, and READY's `session_id` if it is READY.
    pub fn dispatch(&mut self, t: &str, s: Option<u64>, ready_session: Option<String>) {
        match s {
            Some(s) => {
                if let Some(last) = self.last_s {
                    if s != last + 1 {
                        self.problem(format!("{t}: s = {s} after s = {last} (expected {})", last + 1));
                    }
                }
                self.last_s = Some(s);
            }
            None => self.problem(format!("{t} without s")),
        }
        match self.phase {
            Phase::Ready => {
                if t == "READY" {
                    self.session = ready_session;
                    if self.session.is_none() {
                        self.problem("READY without session_id".into());
                    }
                    self.stats.identifies += 1;
                    self.phase = if self.guilds == 0 { Phase::Live } else { Phase::Snapshot(self.guilds) };
                } else {
                    self.problem(format!("{t} before READY"));
                }
            }
            Phase::Snapshot(left) => {
                if t == "GUILD_CREATE" || t == "GUILD_DELETE" {
                    self.phase = if left <= 1 { Phase::Live } else { Phase::Snapshot(left - 1) };
                } else {
                    self.problem(format!("{t} after READY with {left} of {} guilds still to come", self.guilds));
                    self.phase = Phase::Live;
                }
            }
            Phase::Replay => match t {
                "RESUMED" => {
                    self.stats.resumes += 1;
                    self.phase = Phase::Live;
                }
                "READY" => {
                    self.problem("READY in answer to a Resume".into());
                    self.phase = Phase::Live;
                }
                _ => self.stats.replayed += 1,
            },
            Phase::Live => {
                if t == "READY" || t == "RESUMED" {
                    self.problem(format!("{t} on an established session"));
                }
            }
        }
    }

    /// A soak MESSAGE_CREATE, `content` = `soak <shard> <n>`.
    pub fn soak(&mut self, content: &str, ledger: &Ledger) {
        let mut words = content.split(' ');
        let parsed = match (words.next(), words.next().map(str::parse::<u32>), words.next().map(str::parse::<u64>)) {
            (Some("soak"), Some(Ok(shard)), Some(Ok(n))) => Some((shard, n)),
            _ => None,
        };
        let Some((shard, n)) = parsed else {
            self.problem(format!("MESSAGE_CREATE with unexpected content {content:?}"));
            return;
        };
        if shard != self.shard {
            self.problem(format!("event {n} of shard {shard} delivered to a client of shard {}", self.shard));
            return;
        }
        self.stats.delivered += 1;
        if self.phase == Phase::Replay {
            self.stats.replayed_soak += 1;
        }
        if ledger.fate(shard, n) == Some(Fate::Orphaned) {
            self.stats.orphans_seen += 1;
        }
        let last = self.last_n;
        if n == last {
            self.problem(format!("event {n} delivered twice in a row"));
            return;
        }
        if n < last {
            self.problem(format!("event {n} after event {last}: out of order or a duplicate"));
            return;
        }
        let between = (last + 1..n).filter(|k| ledger.fate(shard, *k) == Some(Fate::Orphaned)).count() as u64;
        if self.gap_checked {
            self.stats.orphans_skipped += between;
            let missing = ledger.owed_between(shard, last, n);
            if !missing.is_empty() {
                self.problem(format!(
                    "event {n} after event {last}: {} owed event(s) never delivered: {}",
                    missing.len(),
                    ranges(&missing)
                ));
            }
        }
        self.gap_checked = true;
        self.last_n = n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ledger(fates: &[Fate]) -> Ledger {
        let l = Ledger::new(1);
        for (i, f) in fates.iter().enumerate() {
            l.record(0, i as u64 + 1, *f);
        }
        l
    }

    fn identified(c: &mut Checker, first: bool) {
        c.identifying(first);
        c.dispatch("READY", Some(1), Some("abc".into()));
        c.dispatch("GUILD_CREATE", Some(2), None);
    }

    #[test]
    fn in_order_with_resume() {
        let l = ledger(&[Fate::Owed, Fate::NoSession, Fate::Owed, Fate::Owed]);
        let mut c = Checker::new(0, "plain", 1);
        identified(&mut c, true);
        c.dispatch("MESSAGE_CREATE", Some(3), None);
        c.soak("soak 0 1", &l);
        c.resuming();
        assert_eq!(c.resume_point(), Some(("abc".into(), 3)));
        c.dispatch("MESSAGE_CREATE", Some(4), None);
        c.soak("soak 0 3", &l);
        c.dispatch("RESUMED", Some(5), None);
        c.dispatch("MESSAGE_CREATE", Some(6), None);
        c.soak("soak 0 4", &l);
        assert!(c.problems.is_empty(), "{:?}", c.problems);
        assert_eq!((c.stats.delivered, c.stats.resumes, c.stats.replayed_soak), (3, 1, 1));
    }

    #[test]
    fn gap_duplicate_and_seq() {
        let l = ledger(&[Fate::Owed; 5]);
        let mut c = Checker::new(0, "plain", 1);
        identified(&mut c, true);
        c.soak("soak 0 1", &l);
        c.soak("soak 0 3", &l);
        assert!(c.problems.last().unwrap().what.contains("never delivered: 2"));
        c.soak("soak 0 3", &l);
        assert!(c.problems.last().unwrap().what.contains("twice"));
        c.soak("soak 0 2", &l);
        assert!(c.problems.last().unwrap().what.contains("out of order"));
        c.dispatch("MESSAGE_CREATE", Some(9), None);
        assert!(c.problems.last().unwrap().what.contains("expected 3"));
        assert_eq!(c.problems.len(), 4);
    }

    #[test]
    fn new_identify_may_skip_then_contiguous() {
        let l = ledger(&[Fate::Owed; 8]);
        let mut c = Checker::new(0, "zstd", 1);
        identified(&mut c, true);
        c.soak("soak 0 1", &l);
        identified(&mut c, false);
        c.soak("soak 0 5", &l);
        assert!(c.problems.is_empty(), "{:?}", c.problems);
        c.soak("soak 0 7", &l);
        assert_eq!(c.problems.len(), 1);
        assert_eq!(c.stats.identifies, 2);
    }

    #[test]
    fn orphans_may_be_skipped() {
        let l = ledger(&[Fate::Owed, Fate::Orphaned, Fate::Orphaned, Fate::Owed]);
        let mut c = Checker::new(0, "plain", 0);
        c.identifying(true);
        c.dispatch("READY", Some(1), Some("x".into()));
        c.soak("soak 0 1", &l);
        c.soak("soak 0 3", &l);
        c.soak("soak 0 4", &l);
        assert!(c.problems.is_empty(), "{:?}", c.problems);
        assert_eq!((c.stats.orphans_seen, c.stats.orphans_skipped), (1, 1));
    }

    #[test]
    fn live_event_inside_snapshot() {
        let l = ledger(&[Fate::Owed]);
        let mut c = Checker::new(0, "plain", 2);
        c.identifying(true);
        c.dispatch("READY", Some(1), Some("x".into()));
        c.dispatch("MESSAGE_CREATE", Some(2), None);
        c.soak("soak 0 1", &l);
        assert_eq!(c.problems.len(), 1);
        assert!(c.problems[0].what.contains("guilds still to come"));
    }

    #[test]
    fn foreign_shard() {
        let l = ledger(&[Fate::Owed]);
        let mut c = Checker::new(0, "plain", 0);
        c.soak("soak 1 1", &l);
        assert!(c.problems[0].what.contains("shard 1"));
    }
}
