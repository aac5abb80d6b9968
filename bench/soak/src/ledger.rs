//! What was injected on each shard, so the checkers know which soak counters
//! a client is owed.
//!
//! The driver injects `soak <shard> <n>` with `n` = 1, 2, 3... per shard, one
//! at a time, and records each `n`'s fate before injecting `n + 1`; a client
//! seeing `n` therefore always finds every `n' < n` recorded.

use std::sync::Mutex;

/// The fate of one injected counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fate {
    /// The fake took it into the shard's live session (sent at once, or kept
    /// for the proxy's Resume replay): every client must see it.
    Owed,
    /// The fake had no session for the shard (`inject` returned `None`):
    /// nobody can see it.
    NoSession,
    /// Stored in an upstream session the proxy was leaving for a new
    /// Identify (after a close code that ends the session on Discord's side):
    /// Discord drops such events, so a client may or may not see it.
    Orphaned,
}

/// One shard's record.
#[derive(Default, Debug)]
struct ShardLedger {
    /// `fates[n - 1]` is the fate of counter `n`.
    fates: Vec<Fate>,
}

/// Every shard's record.
#[derive(Debug)]
pub struct Ledger {
    shards: Vec<Mutex<ShardLedger>>,
}

impl Ledger {
    pub fn new(shards: u32) -> Self {
        Self { shards: (0..shards).map(|_| Mutex::default()).collect() }
    }

    fn shard(&self, shard: u32) -> std::sync::MutexGuard<'_, ShardLedger> {
        self.shards[shard as usize].lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The next counter of `shard` (what [`Ledger::record`] will be told).
    pub fn next(&self, shard: u32) -> u64 {
        self.shard(shard).fates.len() as u64 + 1
    }

    /// Records the fate of counter `n`, which must be [`Ledger::next`].
    pub fn record(&self, shard: u32, n: u64, fate: Fate) {
        let mut s = self.shard(shard);
        debug_assert_eq!(n, s.fates.len() as u64 + 1);
        s.fates.push(fate);
    }

    /// The fate of counter `n` of `shard`, if recorded.
    pub fn fate(&self, shard: u32, n: u64) -> Option<Fate> {
        let s = self.shard(shard);
        n.checked_sub(1).and_then(|i| s.fates.get(i as usize).copied())
    }

    /// Owed counters strictly between `after` and `before`.
    pub fn owed_between(&self, shard: u32, after: u64, before: u64) -> Vec<u64> {
        let s = self.shard(shard);
        (after + 1..before).filter(|n| s.fates.get(*n as usize - 1) == Some(&Fate::Owed)).collect()
    }

    /// The highest owed counter of `shard` (0 if none).
    pub fn last_owed(&self, shard: u32) -> u64 {
        let s = self.shard(shard);
        s.fates.iter().rposition(|f| *f == Fate::Owed).map_or(0, |i| i as u64 + 1)
    }

    /// Counters recorded so far, all shards.
    pub fn total(&self) -> u64 {
        (0..self.shards.len() as u32).map(|s| self.shard(s).fates.len() as u64).sum()
    }

    /// Counters of `shard` by fate: (owed, no session, orphaned).
    pub fn counts(&self, shard: u32) -> (u64, u64, u64) {
        let s = self.shard(shard);
        let n = |f: Fate| s.fates.iter().filter(|x| **x == f).count() as u64;
        (n(Fate::Owed), n(Fate::NoSession), n(Fate::Orphaned))
    }
}

/// Compresses sorted counters into ranges for printing: `3-7, 9, 12-13`.
pub fn ranges(ns: &[u64]) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < ns.len() {
        let start = ns[i];
        let mut end = start;
        while i + 1 < ns.len() && ns[i + 1] == end + 1 {
            i += 1;
            end = ns[i];
        }
        out.push(if start == end { start.to_string() } else { format!("{start}-{end}") });
        i += 1;
    }
    out.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owed_and_last() {
        let l = Ledger::new(2);
        for (n, f) in [(1, Fate::Owed), (2, Fate::NoSession), (3, Fate::Owed), (4, Fate::Orphaned), (5, Fate::Owed)] {
            assert_eq!(l.next(1), n);
            l.record(1, n, f);
        }
        assert_eq!(l.owed_between(1, 0, 5), vec![1, 3]);
        assert_eq!(l.owed_between(1, 3, 4), Vec::<u64>::new());
        assert_eq!(l.last_owed(1), 5);
        assert_eq!(l.last_owed(0), 0);
        assert_eq!(l.counts(1), (3, 1, 1));
        assert_eq!(l.fate(1, 4), Some(Fate::Orphaned));
        assert_eq!(l.fate(1, 0), None);
    }

    #[test]
    fn range_text() {
        assert_eq!(ranges(&[3, 4, 5, 7, 9, 10]), "3-5, 7, 9-10");
        assert_eq!(ranges(&[]), "");
    }
}
