//! Discord's send limit: 120 payloads per 60 s per connection. Client
//! commands get most of it; the rest is kept for heartbeats, which must
//! never wait.

use std::{
    collections::VecDeque,
    time::{Duration, Instant},
};

/// Window of the limit.
pub const WINDOW: Duration = Duration::from_secs(60);
/// Payloads allowed per window.
pub const LIMIT: usize = 120;
/// Payloads per window held back for heartbeats, Identify and Resume.
pub const RESERVED: usize = 10;

/// Send timestamps of one connection.
#[derive(Debug)]
pub struct SendLimiter {
    sent: VecDeque<Instant>,
    budget: usize,
}

impl Default for SendLimiter {
    /// The limiter for client commands sent to Discord.
    fn default() -> Self {
        Self::with_budget(LIMIT - RESERVED)
    }
}

impl SendLimiter {
    /// A limiter allowing `budget` payloads per window through [`Self::try_command`].
    pub fn with_budget(budget: usize) -> Self {
        Self { sent: VecDeque::new(), budget }
    }

    fn prune(&mut self, now: Instant) {
        while self.sent.front().is_some_and(|t| now.duration_since(*t) >= WINDOW) {
            self.sent.pop_front();
        }
    }

    /// Records a payload that bypasses the command budget (heartbeat, identify).
    pub fn record(&mut self, now: Instant) {
        self.prune(now);
        self.sent.push_back(now);
    }

    /// Takes a command slot if one is free now.
    pub fn try_command(&mut self, now: Instant) -> bool {
        self.prune(now);
        if self.sent.len() < self.budget {
            self.sent.push_back(now);
            true
        } else {
            false
        }
    }

    /// When the next command slot frees up.
    pub fn next_free(&self) -> Option<Instant> {
        let over = (self.sent.len() + 1).checked_sub(self.budget)?;
        self.sent.get(over.saturating_sub(1)).map(|t| *t + WINDOW)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leaves_room_for_heartbeats() {
        let mut l = SendLimiter::default();
        let t0 = Instant::now();
        let granted = (0..200).filter(|_| l.try_command(t0)).count();
        assert_eq!(granted, LIMIT - RESERVED);
        assert_eq!(l.next_free(), Some(t0 + WINDOW));
        assert!(l.try_command(t0 + WINDOW));
    }
}
