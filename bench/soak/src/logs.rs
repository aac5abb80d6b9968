//! The proxy's log: every ERROR and WARN line, grouped, and which WARN lines
//! the scenario's own faults explain.
//!
//! Expected WARN lines, each tied to a fault kind, must name a shard that
//! got that fault, and no more of them may appear than such faults were
//! inflicted. A few lines about the host itself are accepted while the proxy
//! starts (before the faulted phase). Any other WARN line, and any ERROR
//! line, fails the run.

use std::collections::BTreeMap;
use std::time::Instant;

use crate::driver::{Fault, FaultRecord};
use crate::proxy::LogLine;

/// A WARN line the scenario causes.
struct Expected {
    /// Text the line contains.
    pattern: &'static str,
    fault: Fault,
    /// Why the scenario causes it.
    reason: &'static str,
}

const EXPECTED: &[Expected] = &[
    Expected {
        pattern: "connection closed without a close frame",
        fault: Fault::Reset,
        reason: "drop_connection ends the upstream TCP connection without a close frame",
    },
    Expected {
        pattern: "connection error:",
        fault: Fault::Reset,
        reason: "drop_connection: the end of the TCP connection can read as an error (reset)",
    },
    Expected {
        pattern: "Discord closed the connection with code 4000",
        fault: Fault::Close4000,
        reason: "close_connection(4000)",
    },
    Expected {
        pattern: "Discord closed the connection with code 1001",
        fault: Fault::Close1001,
        reason: "close_connection(1001)",
    },
];

/// WARN lines about the host, not the scenario, accepted before the faulted
/// phase: (text the line contains, why).
const ENVIRONMENT: &[(&str, &str)] = &[
    (
        "the open-file limit is",
        "at start: the host's hard open-file limit is below what the default `max_connections` (10,000 clients) \
         would need; about the host, not the scenario (the run uses under 100 descriptors)",
    ),
    (
        "could not set the scheduler slice",
        "at start: the kernel refused `sched_slice_us`; about the host, not the scenario",
    ),
];

/// Level of an env_logger line: `[2026-01-01T00:00:00.000Z WARN  module] message`.
pub fn level(line: &str) -> Option<&str> {
    let rest = line.strip_prefix('[')?;
    let mut words = rest.split_whitespace();
    let _time = words.next()?;
    words.next().filter(|l| matches!(*l, "ERROR" | "WARN" | "INFO" | "DEBUG" | "TRACE"))
}

/// The message part of a line (after `] `).
pub fn message(line: &str) -> &str {
    line.split_once("] ").map_or(line, |(_, m)| m)
}

/// The shard a message names (`[shard N]`).
fn shard_of(msg: &str) -> Option<u32> {
    let rest = msg.split("[shard ").nth(1)?;
    rest.split(']').next()?.parse().ok()
}

/// Whether `text` mentions shard `n` (`shard N` not followed by a digit).
pub fn mentions_shard(text: &str, n: u32) -> bool {
    let needle = format!("shard {n}");
    text.match_indices(&needle).any(|(i, _)| !text[i + needle.len()..].starts_with(|c: char| c.is_ascii_digit()))
}

/// A message with its numbers replaced by `N`, to group lines.
fn shape(msg: &str) -> String {
    let mut out = String::with_capacity(msg.len());
    let mut in_num = false;
    for c in msg.chars() {
        if c.is_ascii_digit() {
            if !in_num {
                out.push('N');
            }
            in_num = true;
        } else {
            in_num = false;
            out.push(c);
        }
    }
    out
}

/// Lines of one shape.
#[derive(Clone, Debug)]
pub struct Group {
    pub count: usize,
    pub example: String,
    /// Why the scenario causes them; `None`: unexpected.
    pub expected: Option<&'static str>,
}

/// The verdict on a run's log.
#[derive(Debug, Default)]
pub struct LogReport {
    pub lines: usize,
    pub by_level: BTreeMap<String, usize>,
    pub errors: BTreeMap<String, Group>,
    pub warnings: BTreeMap<String, Group>,
    pub unexpected_warnings: usize,
    /// Fault kinds whose expected lines outnumber the faults, with both counts.
    pub excess: Vec<(Fault, usize, usize)>,
}

/// Sorts the log's ERROR and WARN lines out, against the faults inflicted;
/// `faulted_from` ends the start-up, when host warnings are accepted.
pub fn classify(lines: &[LogLine], faults: &[FaultRecord], faulted_from: Instant) -> LogReport {
    let mut r = LogReport { lines: lines.len(), ..LogReport::default() };
    let mut used: BTreeMap<Fault, usize> = BTreeMap::new();
    for l in lines {
        let Some(lvl) = level(&l.text) else { continue };
        *r.by_level.entry(lvl.to_owned()).or_default() += 1;
        let msg = message(&l.text);
        match lvl {
            "ERROR" => {
                let g =
                    r.errors.entry(shape(msg)).or_insert(Group { count: 0, example: l.text.clone(), expected: None });
                g.count += 1;
            }
            "WARN" => {
                let shard = shard_of(msg);
                let rule = EXPECTED.iter().find(|e| {
                    msg.contains(e.pattern)
                        && faults.iter().any(|f| f.applied && f.fault == e.fault && Some(f.shard) == shard)
                });
                let host = ENVIRONMENT.iter().find(|(p, _)| l.at < faulted_from && msg.contains(p));
                let reason = match (rule, host) {
                    (Some(e), _) => {
                        *used.entry(e.fault).or_default() += 1;
                        Some(e.reason)
                    }
                    (None, Some((_, why))) => Some(*why),
                    (None, None) => {
                        r.unexpected_warnings += 1;
                        None
                    }
                };
                let key = format!("{}\u{0}{}", shape(msg), reason.unwrap_or(""));
                let g = r.warnings.entry(key).or_insert(Group { count: 0, example: l.text.clone(), expected: reason });
                g.count += 1;
            }
            _ => {}
        }
    }
    for (fault, n) in used {
        let inflicted = faults.iter().filter(|f| f.applied && f.fault == fault).count();
        if n > inflicted {
            r.excess.push((fault, n, inflicted));
        }
    }
    r
}

impl LogReport {
    /// No ERROR line, no WARN line the scenario does not explain.
    pub fn pass(&self) -> bool {
        self.errors.is_empty() && self.unexpected_warnings == 0 && self.excess.is_empty()
    }
}

/// Proxy lines about `shard` from `before` to `after` around `at`, at most `max`.
pub fn around(
    lines: &[LogLine],
    at: Instant,
    shard: u32,
    before: std::time::Duration,
    after: std::time::Duration,
    max: usize,
) -> Vec<String> {
    let from = at.checked_sub(before).unwrap_or(at);
    let to = at + after;
    let picked: Vec<&LogLine> =
        lines.iter().filter(|l| l.at >= from && l.at <= to && mentions_shard(&l.text, shard)).collect();
    // The last `max`: the closest before the problem matter most.
    picked.iter().rev().take(max).rev().map(|l| l.text.clone()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(text: &str) -> LogLine {
        LogLine { at: Instant::now(), text: text.to_owned() }
    }

    #[test]
    fn parse_levels_and_shards() {
        let l = "[2026-12-04T10:40:00.123Z WARN  gateway_proxy::upstream::shard] [shard 3] Discord closed the connection with code 4000";
        assert_eq!(level(l), Some("WARN"));
        assert_eq!(shard_of(message(l)), Some(3));
        assert!(mentions_shard(l, 3));
        assert!(!mentions_shard("[shard 13] x", 1));
        assert_eq!(shape("client 12 of shard 3"), "client N of shard N");
    }

    #[test]
    fn expected_only_for_faulted_shards_and_counts() {
        let fault = |shard, fault| FaultRecord { at: Instant::now(), shard, fault, applied: true };
        let faults = [fault(3, Fault::Close4000), fault(5, Fault::Close1001)];
        let later = Instant::now() + std::time::Duration::from_secs(60);
        let ok = [
            line("[t WARN  m] [shard 3] Discord closed the connection with code 4000"),
            line("[t WARN  m] [shard 5] Discord closed the connection with code 1001"),
        ];
        let r = classify(&ok, &faults, later);
        assert!(r.pass());
        assert_eq!(r.warnings.len(), 2, "one group per reason");
        let wrong_shard = [line("[t WARN  m] [shard 4] Discord closed the connection with code 4000")];
        assert!(!classify(&wrong_shard, &faults, later).pass());
        let twice = [ok[0].clone(), ok[0].clone()];
        let r = classify(&twice, &faults, later);
        assert_eq!(r.excess, vec![(Fault::Close4000, 2, 1)]);
        let err = [line("[t ERROR m] boom")];
        assert!(!classify(&err, &faults, later).pass());
        let info = [line("[t INFO  m] [shard 3] RESUMED")];
        assert!(classify(&info, &faults, later).pass());
        let host = [line("[t WARN  m] the open-file limit is 20000: fewer than ...")];
        assert!(classify(&host, &faults, later).pass());
        assert!(!classify(&host, &faults, Instant::now() - std::time::Duration::from_secs(1)).pass());
    }
}
