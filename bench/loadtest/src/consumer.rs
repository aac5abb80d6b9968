//! A fast gateway consumer: identify, read, count, check seq +1, read the
//! firehose stamp. Nothing else is parsed.

use std::time::{Duration, Instant};

use fake_discord::client_codec::{Decoder, Encoding};
use fake_discord::firehose::{now_nanos, stamp_of};
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use tokio::sync::{oneshot, watch};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;

/// Transport compression a consumer asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compress {
    Plain,
    Zlib,
    Zstd,
}

impl Compress {
    /// The client encoding this compression is.
    fn encoding(self) -> Encoding {
        match self {
            Compress::Plain => Encoding::Plain,
            Compress::Zlib => Encoding::ZlibStream,
            Compress::Zstd => Encoding::ZstdStream,
        }
    }

    pub fn name(self) -> &'static str {
        self.encoding().name()
    }

    fn query(self) -> &'static str {
        self.encoding().query()
    }
}

/// Where consumers connect: the proxy or the fake's gateway.
#[derive(Clone, Debug)]
pub struct Endpoint {
    /// `ws://127.0.0.1:PORT`.
    pub url: String,
    pub token: String,
    pub shards: u32,
}

/// What one consumer does.
#[derive(Clone, Debug)]
pub struct Spec {
    pub endpoint: Endpoint,
    pub shard: u32,
    pub compress: Compress,
    /// A TYPING_START whose payload contains this text starts the counting
    /// phase; `None` counts from READY on.
    pub marker: Option<String>,
    /// Firehose dispatches to receive; the consumer closes when it has them.
    pub expect: u64,
    /// GUILD_CREATEs expected after READY: the time to the last one is
    /// recorded; with `expect == 0` and no marker the consumer then closes.
    pub snapshot_guilds: usize,
    /// Record `now - stamp` for every firehose dispatch.
    pub record_latency: bool,
}

/// How a consumer ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum End {
    /// Got everything it expected.
    Complete,
    /// Told to stop (the run's time bound).
    Stopped,
    /// The server closed or dropped the connection, or sent op 7/9.
    Lost(String),
}

/// What one consumer saw.
#[derive(Debug)]
pub struct Outcome {
    pub end: End,
    /// Firehose dispatches received in the counting phase.
    pub got: u64,
    /// Dispatches whose seq was not the previous one + 1 (from READY on).
    pub seq_errors: u64,
    /// When the last firehose dispatch arrived.
    pub last_at: Option<Instant>,
    /// One-way latencies (ns) when recorded.
    pub latencies: Vec<u64>,
    /// From sending Identify to READY.
    pub identify_to_ready: Option<Duration>,
    /// From sending Identify to the last expected GUILD_CREATE.
    pub identify_to_snapshot: Option<Duration>,
    /// Payload bytes (decompressed) of READY and the GUILD_CREATEs.
    pub snapshot_bytes: u64,
    /// Bytes received on the websocket while counting (compressed if so).
    pub wire_bytes: u64,
    /// Resumes after a resumable close while counting.
    pub resumes: u32,
    /// Why the connection was closed before each resume.
    pub disconnects: Vec<String>,
}

/// Signals a consumer gives while it runs.
pub struct Signals {
    /// READY received (the consumer is subscribed).
    pub ready: oneshot::Sender<()>,
    /// Marker received: counting from here.
    pub marked: oneshot::Sender<()>,
}

#[derive(PartialEq, Eq, Clone, Copy)]
enum Phase {
    Hello,
    Ready,
    Snapshot,
    Counting,
}

/// Top of a payload: `t`, `s` and `op`.
struct Header<'a> {
    t: Option<&'a [u8]>,
    s: Option<u64>,
    op: Option<u64>,
}

#[derive(Deserialize)]
struct OwnedHeader {
    t: Option<String>,
    s: Option<u64>,
    op: Option<u64>,
}

fn digits(b: &[u8]) -> (Option<u64>, usize) {
    let n = b.iter().take_while(|c| c.is_ascii_digit()).count();
    if n == 0 || n > 19 {
        return (None, n);
    }
    (Some(b[..n].iter().fold(0u64, |v, d| v * 10 + u64::from(d - b'0'))), n)
}

/// Reads `{"t":..,"s":..,"op":..` at the start of a payload (Discord's key
/// order, which the fake and the proxy both use); `None` for any other shape.
fn fast_header(b: &[u8]) -> Option<Header<'_>> {
    let rest = b.strip_prefix(b"{\"t\":")?;
    let (t, rest) = if let Some(r) = rest.strip_prefix(b"null") {
        (None, r)
    } else {
        let r = rest.strip_prefix(b"\"")?;
        let end = r.iter().position(|c| *c == b'"')?;
        (Some(&r[..end]), &r[end + 1..])
    };
    let rest = rest.strip_prefix(b",\"s\":")?;
    let (s, rest) = if let Some(r) = rest.strip_prefix(b"null") {
        (None, r)
    } else {
        let (v, n) = digits(rest);
        (Some(v?), &rest[n..])
    };
    let rest = rest.strip_prefix(b",\"op\":")?;
    let (op, _) = digits(rest);
    Some(Header { t, s, op: Some(op?) })
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

/// Intents every consumer identifies with (`--client-intents`).
static INTENTS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(513);

/// Sets the intents every consumer identifies with.
pub fn set_intents(intents: u64) {
    INTENTS.store(intents, std::sync::atomic::Ordering::Relaxed);
}

fn identify(token: &str, shard: u32, shards: u32) -> String {
    serde_json::json!({
        "op": 2,
        "d": {
            "token": token,
            "intents": INTENTS.load(std::sync::atomic::Ordering::Relaxed),
            "properties": { "os": "linux", "browser": "loadtest", "device": "loadtest" },
            "shard": [shard, shards],
            "large_threshold": 250,
        }
    })
    .to_string()
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Resumes a consumer may make (after the server closed it with a
/// resumable code, e.g. 4000 for falling behind).
const MAX_RESUMES: u32 = 20;

async fn connect(base: &str, compress: Compress) -> Result<Ws, String> {
    let url = format!("{base}/?{}", compress.query());
    let config = WebSocketConfig::default().max_message_size(Some(256 << 20)).max_frame_size(Some(256 << 20));
    let connect = tokio_tungstenite::connect_async_with_config(url, Some(config), true);
    match tokio::time::timeout(Duration::from_secs(20), connect).await {
        Ok(Ok((ws, _))) => Ok(ws),
        Ok(Err(e)) => Err(format!("connect: {e}")),
        Err(_) => Err("connect timed out".into()),
    }
}

/// Whether a bot library would resume after this close code.
fn resumable(code: Option<u16>) -> bool {
    !matches!(code, Some(1000 | 1001 | 4004 | 4007 | 4009 | 4010..=4014))
}

/// Sends a text payload, giving up after 10 s.
async fn send(ws: &mut Ws, text: String) -> Result<(), String> {
    match tokio::time::timeout(Duration::from_secs(10), ws.send(Message::text(text))).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(format!("send: {e}")),
        Err(_) => Err("send timed out".into()),
    }
}

fn heartbeat_text(last_seq: Option<u64>) -> String {
    let seq = last_seq.map_or("null".to_owned(), |s| s.to_string());
    format!("{{\"op\":1,\"d\":{seq}}}")
}

/// Runs one consumer until it has what it expects, loses the connection for
/// good, or `stop` turns true. A resumable close while counting is followed
/// by a Resume (as a bot library would), counted in `resumes`.
pub async fn run(spec: Spec, signals: Signals, mut stop: watch::Receiver<bool>) -> Outcome {
    let mut out = Outcome {
        end: End::Stopped,
        got: 0,
        seq_errors: 0,
        last_at: None,
        latencies: Vec::new(),
        identify_to_ready: None,
        identify_to_snapshot: None,
        snapshot_bytes: 0,
        wire_bytes: 0,
        resumes: 0,
        disconnects: Vec::new(),
    };
    if spec.record_latency {
        out.latencies.reserve(spec.expect as usize);
    }
    let mut ws = tokio::select! {
        r = connect(&spec.endpoint.url, spec.compress) => match r {
            Ok(ws) => ws,
            Err(e) => { out.end = End::Lost(e); return out; }
        },
        _ = stop.wait_for(|s| *s) => return out,
    };
    let mut decoder = match Decoder::new(spec.compress.encoding()) {
        Ok(d) => d,
        Err(e) => {
            out.end = End::Lost(format!("decoder: {e}"));
            return out;
        }
    };
    let Signals { ready, marked } = signals;
    let mut ready = Some(ready);
    let mut marked = Some(marked);
    let marker = spec.marker.as_deref().map(str::as_bytes);
    let mut phase = Phase::Hello;
    let mut last_seq: Option<u64> = None;
    let mut session_id: Option<String> = None;
    let mut resuming = false;
    let mut guilds = 0usize;
    let mut identify_sent = Instant::now();
    let mut hb_interval = Duration::from_secs(3600);
    let heartbeat = tokio::time::sleep(hb_interval);
    tokio::pin!(heartbeat);
    let mut outgoing: Vec<String> = Vec::new();

    'read: loop {
        for text in outgoing.drain(..) {
            if let Err(e) = send(&mut ws, text).await {
                out.end = End::Lost(e);
                break 'read;
            }
        }
        let msg = tokio::select! {
            msg = ws.next() => msg,
            () = &mut heartbeat => {
                heartbeat.as_mut().reset(tokio::time::Instant::now() + hb_interval);
                outgoing.push(heartbeat_text(last_seq));
                continue;
            }
            _ = stop.wait_for(|s| *s) => break 'read,
        };
        let (why, code) = match msg {
            Some(Ok(Message::Close(frame))) => {
                let code = frame.as_ref().map(|f| u16::from(f.code));
                let why = frame.as_ref().map_or("closed without code".to_owned(), |f| {
                    format!("closed {} {}", u16::from(f.code), f.reason.as_str())
                });
                (why, code)
            }
            Some(Ok(msg)) => {
                let counting = phase == Phase::Counting;
                let bin;
                let payload: &[u8] = match &msg {
                    Message::Text(t) => {
                        if counting {
                            out.wire_bytes += t.len() as u64;
                        }
                        t.as_bytes()
                    }
                    Message::Binary(b) => {
                        if counting {
                            out.wire_bytes += b.len() as u64;
                        }
                        bin = b;
                        match decoder.decode(bin) {
                            Ok(Some(p)) => p,
                            Ok(None) => continue,
                            Err(e) => {
                                out.end = End::Lost(e);
                                break;
                            }
                        }
                    }
                    _ => continue,
                };
                let owned;
                let (t, s, op) = match fast_header(payload) {
                    Some(h) => (h.t, h.s, h.op),
                    None => match serde_json::from_slice::<OwnedHeader>(payload) {
                        Ok(h) => {
                            owned = h.t;
                            (owned.as_deref().map(str::as_bytes), h.s, h.op)
                        }
                        Err(e) => {
                            out.end = End::Lost(format!("undecodable payload: {e}"));
                            break;
                        }
                    },
                };
                match op {
                    Some(0) => {}
                    Some(10) => {
                        #[derive(Deserialize)]
                        struct Hello {
                            d: HelloD,
                        }
                        #[derive(Deserialize)]
                        struct HelloD {
                            heartbeat_interval: u64,
                        }
                        if let Ok(h) = serde_json::from_slice::<Hello>(payload) {
                            hb_interval = Duration::from_millis(h.d.heartbeat_interval.max(1000));
                            heartbeat.as_mut().reset(tokio::time::Instant::now() + hb_interval);
                        }
                        if resuming {
                            resuming = false;
                            let text = serde_json::json!({
                                "op": 6,
                                "d": { "token": spec.endpoint.token, "session_id": session_id, "seq": last_seq },
                            });
                            outgoing.push(text.to_string());
                        } else if phase == Phase::Hello {
                            identify_sent = Instant::now();
                            let text = identify(&spec.endpoint.token, spec.shard, spec.endpoint.shards);
                            if let Err(e) = send(&mut ws, text).await {
                                out.end = End::Lost(e);
                                break;
                            }
                            phase = Phase::Ready;
                        }
                        continue;
                    }
                    Some(1) => {
                        outgoing.push(heartbeat_text(last_seq));
                        continue;
                    }
                    Some(7) => {
                        out.end = End::Lost("op 7 reconnect".into());
                        break;
                    }
                    Some(9) => {
                        out.end = End::Lost("op 9 invalid session".into());
                        break;
                    }
                    _ => continue,
                }
                // A dispatch.
                if let Some(s) = s {
                    if last_seq.is_some_and(|l| s != l + 1) {
                        out.seq_errors += 1;
                    }
                    last_seq = Some(s);
                }
                match phase {
                    Phase::Counting => {
                        if let Some(stamp) = stamp_of(payload) {
                            out.got += 1;
                            if spec.record_latency {
                                out.latencies.push(now_nanos().saturating_sub(stamp));
                            }
                            if out.got >= spec.expect {
                                out.last_at = Some(Instant::now());
                                out.end = End::Complete;
                                break;
                            }
                            if out.got & 63 == 0 || spec.record_latency {
                                out.last_at = Some(Instant::now());
                            }
                        }
                        continue;
                    }
                    Phase::Hello => continue,
                    Phase::Ready => {
                        if t == Some(b"READY") {
                            #[derive(Deserialize)]
                            struct Ready {
                                d: ReadyD,
                            }
                            #[derive(Deserialize)]
                            struct ReadyD {
                                session_id: String,
                            }
                            out.identify_to_ready = Some(identify_sent.elapsed());
                            out.snapshot_bytes += payload.len() as u64;
                            session_id = serde_json::from_slice::<Ready>(payload).ok().map(|r| r.d.session_id);
                            phase = Phase::Snapshot;
                            if let Some(r) = ready.take() {
                                let _ = r.send(());
                            }
                            if spec.snapshot_guilds == 0 {
                                out.identify_to_snapshot = out.identify_to_ready;
                            }
                            if marker.is_none() {
                                if spec.expect == 0 && spec.snapshot_guilds == 0 {
                                    out.end = End::Complete;
                                    break;
                                }
                                if spec.snapshot_guilds == 0 {
                                    phase = Phase::Counting;
                                }
                            }
                        }
                        continue;
                    }
                    Phase::Snapshot => {}
                }
                // Phase::Snapshot: GUILD_CREATEs, then the marker.
                if t == Some(b"GUILD_CREATE") && out.identify_to_snapshot.is_none() {
                    guilds += 1;
                    out.snapshot_bytes += payload.len() as u64;
                    if guilds >= spec.snapshot_guilds {
                        out.identify_to_snapshot = Some(identify_sent.elapsed());
                        if marker.is_none() {
                            if spec.expect == 0 {
                                out.end = End::Complete;
                                break;
                            }
                            phase = Phase::Counting;
                        }
                    }
                } else if let Some(m) = marker {
                    if t == Some(b"TYPING_START") && contains(payload, m) {
                        phase = Phase::Counting;
                        if let Some(tx) = marked.take() {
                            let _ = tx.send(());
                        }
                        if spec.expect == 0 {
                            out.end = End::Complete;
                            break;
                        }
                    }
                }
                continue;
            }
            Some(Err(e)) => (format!("read: {e}"), None),
            None => ("connection ended".to_owned(), None),
        };
        // The connection is gone: resume if a bot library would.
        if phase != Phase::Counting || session_id.is_none() || !resumable(code) || out.resumes >= MAX_RESUMES {
            out.end = End::Lost(why);
            break;
        }
        out.resumes += 1;
        out.disconnects.push(why);
        let reconnect = tokio::select! {
            r = connect(&spec.endpoint.url, spec.compress) => r,
            _ = stop.wait_for(|s| *s) => break 'read,
        };
        match (reconnect, Decoder::new(spec.compress.encoding())) {
            (Ok(new), Ok(d)) => {
                ws = new;
                decoder = d;
                resuming = true;
            }
            (Err(e), _) => {
                out.end = End::Lost(format!("resume: {e}"));
                break;
            }
            (_, Err(e)) => {
                out.end = End::Lost(format!("decoder: {e}"));
                break;
            }
        }
    }
    let frame = CloseFrame { code: CloseCode::Normal, reason: "".into() };
    let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(Some(frame))).await;
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_fast_path() {
        let h = fast_header(br#"{"t":"MESSAGE_CREATE","s":1234,"op":0,"d":{"s":5}}"#).unwrap();
        assert_eq!((h.t, h.s, h.op), (Some(&b"MESSAGE_CREATE"[..]), Some(1234), Some(0)));
        let h = fast_header(br#"{"t":null,"s":null,"op":11,"d":null}"#).unwrap();
        assert_eq!((h.t, h.s, h.op), (None, None, Some(11)));
        assert!(fast_header(br#"{"op":10,"d":{}}"#).is_none());
    }
}
