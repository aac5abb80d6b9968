//! Firehose mode: pre-encoded dispatches sent to a shard's connection as fast
//! as the receiver takes them (or at a fixed rate), for benchmarks.
//!
//! [`FakeDiscord::firehose`](crate::FakeDiscord::firehose) reserves a range of
//! sequence numbers on the shard's session and hands the connection a job.
//! The connection task writes each frame from a template built once per job:
//! only the seq digits and a send timestamp are written per event, no JSON
//! is built. Every firehose dispatch ends with
//! `"nonce":"<19 digits>"}}`: the digits are [`now_nanos`] taken just before
//! the frame is handed to the websocket, so a receiver in the same process
//! gets the one-way latency with [`stamp_of`] and `now_nanos() - stamp`.
//!
//! Firehose dispatches are not kept for Resume replay: a Resume from inside a
//! firehose range gets Invalid Session. Dispatches injected while a firehose
//! runs are sent after it, in seq order.

use std::fmt::Write as _;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::sync::oneshot;

use crate::payloads::{self, Generator};

/// What the dispatches of a firehose are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FirehoseMix {
    /// MESSAGE_CREATE only, each frame about 1 KB (a guild text message with
    /// member and author objects and about 300 bytes of content).
    Messages,
    /// Per 10 dispatches: 4 MESSAGE_CREATE (about 1 KB), 3 TYPING_START
    /// (with member), 2 PRESENCE_UPDATE, 1 MESSAGE_REACTION_ADD (with member).
    Mixed,
}

/// A firehose job for one shard.
#[derive(Clone, Copy, Debug)]
pub struct FirehoseSpec {
    /// Dispatches to send.
    pub count: u64,
    /// Dispatches per second; `None` sends as fast as the receiver reads.
    pub rate: Option<f64>,
    /// What to send.
    pub mix: FirehoseMix,
}

/// What the connection did with a finished firehose.
#[derive(Clone, Copy, Debug)]
pub struct FirehoseStats {
    /// Dispatches written and flushed.
    pub sent: u64,
    /// Payload bytes (before compression) of those dispatches.
    pub bytes: u64,
    /// From the first frame to the last flush.
    pub elapsed: Duration,
}

/// A running firehose: its seq range and its completion.
#[derive(Debug)]
pub struct FirehoseHandle {
    /// Seq of the first dispatch.
    pub first_seq: u64,
    /// Seq of the last dispatch.
    pub last_seq: u64,
    pub(crate) done: oneshot::Receiver<FirehoseStats>,
}

impl FirehoseHandle {
    /// Resolves when the connection has flushed the last frame; `None` if the
    /// connection ended first.
    pub async fn finished(self) -> Option<FirehoseStats> {
        self.done.await.ok()
    }
}

/// Nanoseconds since a process-wide epoch (the first call in the process).
/// The fake stamps firehose dispatches with it; compare in the same process.
pub fn now_nanos() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// Key and quote that open the stamp at the end of a firehose dispatch.
const STAMP_KEY: &[u8] = b"\"nonce\":\"";
/// Digits of the stamp.
const STAMP_DIGITS: usize = 19;
/// What follows the stamp: the string's quote, the end of `d`, the end of the payload.
const STAMP_END: &[u8] = b"\"}}";

/// The send stamp of a firehose dispatch (the payload as received, seq
/// spliced or not), or `None` if the payload does not end like one.
pub fn stamp_of(payload: &[u8]) -> Option<u64> {
    let n = payload.len();
    let tail = STAMP_KEY.len() + STAMP_DIGITS + STAMP_END.len();
    if n < tail || !payload.ends_with(STAMP_END) {
        return None;
    }
    let start = n - tail;
    if &payload[start..start + STAMP_KEY.len()] != STAMP_KEY {
        return None;
    }
    let digits = &payload[start + STAMP_KEY.len()..n - STAMP_END.len()];
    let mut v: u64 = 0;
    for d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        v = v.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
    }
    Some(v)
}

/// One pre-encoded dispatch: `{"t":T,"s":` + seq + `,"op":0,"d":` + `head`
/// (+ text from the corpus + `tail` for messages) + stamp + `"}}`.
#[derive(Clone, Debug)]
struct Template {
    prefix: String,
    head: String,
    /// Messages: the content's length, taken from [`corpus`] at an offset
    /// that changes per event, and what follows the content.
    content: Option<(usize, String)>,
}

/// 8 MiB of word-like text (ASCII letters, spaces, punctuation; nothing that
/// JSON escapes), so message contents differ per event and compress like
/// chat text rather than like one repeated string.
fn corpus() -> &'static str {
    static CORPUS: OnceLock<String> = OnceLock::new();
    CORPUS.get_or_init(|| {
        const COMMON: [&str; 32] = [
            "the", "a", "to", "and", "is", "it", "you", "that", "of", "in", "i", "for", "on", "this", "with", "lol",
            "be", "are", "have", "not", "just", "was", "but", "so", "can", "my", "what", "if", "me", "do", "at", "we",
        ];
        const SYLLABLES: [&str; 24] = [
            "ka", "lo", "mi", "ren", "sto", "va", "qui", "den", "ar", "po", "lee", "nu", "tor", "ex", "zi", "bra",
            "ul", "mon", "si", "gat", "we", "ry", "ch", "ost",
        ];
        let mut state: u64 = 0x1234_5678;
        let mut next = move || {
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        };
        let mut out = String::with_capacity(8 << 20);
        let mut in_sentence = 0;
        while out.len() < 8 << 20 {
            let r = next();
            if r % 2 == 0 {
                out.push_str(COMMON[(r >> 8) as usize % COMMON.len()]);
            } else {
                for k in 0..2 + (r >> 8) % 3 {
                    out.push_str(SYLLABLES[(r >> (12 + 5 * k)) as usize % SYLLABLES.len()]);
                }
            }
            in_sentence += 1;
            if in_sentence > 4 && (r >> 40) % 8 == 0 {
                out.push_str(if (r >> 44) % 4 == 0 { "! " } else { ". " });
                in_sentence = 0;
            } else {
                out.push(' ');
            }
        }
        out
    })
}

/// The templates of one firehose job, in sending order (cycled).
#[derive(Debug)]
pub(crate) struct Templates {
    cycle: Vec<Template>,
}

/// Distinct guild/member variants per kind.
const VARIANTS: u32 = 64;
/// Target size of a MESSAGE_CREATE frame, in bytes.
const MESSAGE_BYTES: usize = 1024;

impl Templates {
    /// Builds the templates for `shard` of `num_shards` from the generator's
    /// guilds of that shard (any guilds if it has none).
    pub(crate) fn new(generator: &Generator, shard: u32, num_shards: u32, mix: FirehoseMix) -> Templates {
        let fallback;
        let g = if generator.guild_count() == 0 {
            fallback = Generator::new(1, 5, 3, 2, 0);
            &fallback
        } else {
            generator
        };
        let mut guilds = g.guilds_of_shard(shard, num_shards);
        if guilds.is_empty() {
            guilds = (0..g.guild_count()).collect();
        }
        let members = g.members_per_guild();
        let variant = |j: u32| {
            let i = guilds[j as usize % guilds.len()];
            let m = if members > 1 { 1 + j % (members - 1) } else { 0 };
            (i, m)
        };
        let messages: Vec<Template> = (0..VARIANTS).map(|j| message(g, variant(j), j)).collect();
        let cycle = match mix {
            FirehoseMix::Messages => messages,
            FirehoseMix::Mixed => {
                let typing: Vec<Template> = (0..VARIANTS).map(|j| typing(g, variant(j))).collect();
                let presence: Vec<Template> = (0..VARIANTS).map(|j| presence(g, variant(j))).collect();
                let reaction: Vec<Template> = (0..VARIANTS).map(|j| reaction(g, variant(j), j)).collect();
                let kinds = [messages, typing, presence, reaction];
                let mut used = [0usize; 4];
                let mut out = Vec::new();
                for _ in 0..VARIANTS {
                    // 4 MESSAGE_CREATE, 3 TYPING_START, 2 PRESENCE_UPDATE, 1 MESSAGE_REACTION_ADD.
                    for kind in [0, 1, 2, 0, 1, 3, 0, 2, 0, 1] {
                        out.push(kinds[kind][used[kind] % kinds[kind].len()].clone());
                        used[kind] += 1;
                    }
                }
                out
            }
        };
        Templates { cycle }
    }

    /// Writes dispatch number `index` of the job with `seq` and `stamp`.
    pub(crate) fn frame(&self, index: u64, seq: u64, stamp: u64) -> String {
        let t = &self.cycle[(index % self.cycle.len() as u64) as usize];
        let mut s = String::with_capacity(t.prefix.len() + t.head.len() + 48);
        s.push_str(&t.prefix);
        let _ = write!(s, "{seq},\"op\":0,\"d\":");
        s.push_str(&t.head);
        if let Some((len, tail)) = &t.content {
            let text = corpus();
            let at = (index.wrapping_mul(1031) % (text.len() - len) as u64) as usize;
            s.push_str(&text[at..at + len]);
            s.push_str(tail);
        }
        let _ = write!(s, "{stamp:019}\"}}}}");
        s
    }
}

/// A template from an event name and its `d` (an object; any `nonce` in it
/// is replaced by the stamp, which goes last).
fn template(t: &str, mut d: Value) -> Template {
    if let Some(obj) = d.as_object_mut() {
        obj.remove("nonce");
    }
    let mut head = d.to_string();
    head.pop(); // the closing brace
    if head.len() > 1 {
        head.push(',');
    }
    head.push_str("\"nonce\":\"");
    Template { prefix: format!("{{\"t\":\"{t}\",\"s\":"), head, content: None }
}

/// Stands for a message's content while its template is built.
const CONTENT_MARK: &str = "@@firehose-content@@";

fn message(g: &Generator, (i, m): (u32, u32), j: u32) -> Template {
    let id = payloads::now_snowflake(u64::from(j));
    let probe = template("MESSAGE_CREATE", g.message_create(i, m, 0, id, ""));
    // Frame = prefix + ~6 seq digits + `,"op":0,"d":` + head + stamp + end.
    let base = probe.prefix.len() + 6 + 12 + probe.head.len() + STAMP_DIGITS + STAMP_END.len();
    let want = MESSAGE_BYTES.saturating_sub(base).max(16);
    let mut t = template("MESSAGE_CREATE", g.message_create(i, m, 0, id, CONTENT_MARK));
    if let Some(at) = t.head.find(CONTENT_MARK) {
        let tail = t.head.split_off(at)[CONTENT_MARK.len()..].to_owned();
        t.content = Some((want, tail));
    }
    t
}

fn typing(g: &Generator, (i, m): (u32, u32)) -> Template {
    template("TYPING_START", g.typing_start(i, m, payloads::now_unix_ms() / 1000))
}

fn presence(g: &Generator, (i, m): (u32, u32)) -> Template {
    let mut d = g.presence(i, m);
    d["guild_id"] = Value::String(g.guild_id(i).to_string());
    template("PRESENCE_UPDATE", d)
}

fn reaction(g: &Generator, (i, m): (u32, u32), j: u32) -> Template {
    let mut member = g.member(i, m);
    let d = json!({
        "user_id": g.user_id(i, m).to_string(),
        "type": 0,
        "message_id": payloads::now_snowflake(u64::from(j) + 100).to_string(),
        "message_author_id": g.user_id(i, 0).to_string(),
        "member": member.take(),
        "emoji": { "name": "👍", "id": null },
        "channel_id": g.first_channel_id(i).to_string(),
        "burst": false,
        "burst_colors": [],
        "guild_id": g.guild_id(i).to_string(),
    });
    template("MESSAGE_REACTION_ADD", d)
}

/// A firehose job as the connection runs it.
pub(crate) struct Job {
    pub(crate) templates: Templates,
    pub(crate) first_seq: u64,
    pub(crate) count: u64,
    /// Time between two dispatches; `None`: unthrottled.
    pub(crate) interval: Option<f64>,
    pub(crate) done: oneshot::Sender<FirehoseStats>,
    /// Dispatches sent so far.
    pub(crate) sent: u64,
    pub(crate) bytes: u64,
    /// Set at the first frame.
    pub(crate) started: Option<tokio::time::Instant>,
}

impl Job {
    /// When the next dispatch is due (`None`: now).
    pub(crate) fn next_due(&self) -> Option<tokio::time::Instant> {
        let (Some(interval), Some(start)) = (self.interval, self.started) else { return None };
        Some(start + Duration::from_secs_f64(interval * self.sent as f64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_json_with_a_trailing_stamp() {
        let g = Generator::new(20, 5, 3, 2, 0);
        for mix in [FirehoseMix::Messages, FirehoseMix::Mixed] {
            let t = Templates::new(&g, 1, 4, mix);
            for index in 0..40 {
                let f = t.frame(index, 123_456 + index, 42 + index);
                let v: Value = serde_json::from_str(&f).expect(&f);
                assert_eq!(v["s"], 123_456 + index);
                assert_eq!(v["op"], 0);
                assert_eq!(v["d"]["nonce"].as_str().map(str::len), Some(STAMP_DIGITS));
                assert_eq!(stamp_of(f.as_bytes()), Some(42 + index));
                let gid: u64 = v["d"]["guild_id"].as_str().unwrap().parse().unwrap();
                assert_eq!(payloads::shard_for_guild(gid, 4), 1);
                if v["t"] == "MESSAGE_CREATE" {
                    assert!((1000..1100).contains(&f.len()), "{} bytes", f.len());
                    assert!(v["d"]["content"].as_str().unwrap().len() > 50);
                }
            }
        }
        assert_eq!(stamp_of(b"{\"t\":null,\"s\":null,\"op\":11,\"d\":null}"), None);
    }

    #[test]
    fn mixed_has_the_documented_proportions() {
        let g = Generator::new(20, 5, 3, 2, 0);
        let t = Templates::new(&g, 0, 4, FirehoseMix::Mixed);
        let count = |name: &str| t.cycle.iter().filter(|x| x.prefix.contains(name)).count();
        let n = t.cycle.len();
        assert_eq!(n % 10, 0);
        assert_eq!(count("MESSAGE_CREATE"), n / 10 * 4);
        assert_eq!(count("TYPING_START"), n / 10 * 3);
        assert_eq!(count("PRESENCE_UPDATE"), n / 10 * 2);
        assert_eq!(count("MESSAGE_REACTION_ADD"), n / 10);
    }
}
