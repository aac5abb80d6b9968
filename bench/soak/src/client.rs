//! One soak client: a hand-written gateway client (tokio-tungstenite) for
//! one shard that restarts every 2-6 s, alternating a RESUME of its session
//! and a new IDENTIFY, and feeds everything it receives to its [`Checker`].
//!
//! Restarts cycle through four ways of leaving: a TCP reset then RESUME;
//! close 1000 then IDENTIFY; close 4000 then RESUME; a TCP reset then
//! IDENTIFY. Anything the proxy ends on its own (a close frame, op 7, op 9,
//! an end of stream) is a problem: nothing in the scenario asks it to.

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::MaybeTlsStream;

use crate::check::Checker;
use crate::ledger::Ledger;
use fake_discord::client_codec::{Decoder, Encoding};

/// Time from connecting to READY (Identify) or RESUMED (Resume).
const ESTABLISH_TIMEOUT: Duration = Duration::from_secs(20);
/// Bound on connecting, on one send, and on a close handshake.
const IO_TIMEOUT: Duration = Duration::from_secs(10);

type Ws = tokio_tungstenite::WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

/// Who the client is.
#[derive(Clone, Debug)]
pub struct ClientSpec {
    /// `ws://127.0.0.1:PORT` of the proxy.
    pub url: String,
    pub token: String,
    pub shard: u32,
    pub shards: u32,
    pub encoding: Encoding,
    /// Guilds of the shard (GUILD_CREATEs after READY).
    pub guilds: usize,
}

/// What the scenario reads while a client runs.
#[derive(Debug, Default)]
pub struct Progress {
    /// Last soak counter the client saw.
    pub last_n: AtomicU64,
    /// Connected with READY or RESUMED received.
    pub live: AtomicBool,
}

/// What the scenario tells a client.
#[derive(Clone, Debug)]
pub struct Control {
    /// Stop restarting: reconnect if needed, then stay connected.
    pub no_restarts: watch::Receiver<bool>,
    /// Close (1000) and end.
    pub shutdown: watch::Receiver<bool>,
}

/// How a client leaves a connection on purpose.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Leave {
    /// TCP reset (`SO_LINGER` 0), no close frame.
    Reset,
    /// A close frame with this code.
    Close(u16),
}

/// How the next connection starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Start {
    Identify,
    Resume,
}

/// The `k`-th restart (from 0): how to leave, and how to come back.
fn plan(k: u64) -> (Leave, Start) {
    match k % 4 {
        0 => (Leave::Reset, Start::Resume),
        1 => (Leave::Close(1000), Start::Identify),
        2 => (Leave::Close(4000), Start::Resume),
        _ => (Leave::Reset, Start::Identify),
    }
}

/// What a client did and saw over the run.
#[derive(Debug)]
pub struct ClientReport {
    pub shard: u32,
    pub encoding: Encoding,
    pub checker: Checker,
    /// Restarts the client made, by how it came back.
    pub resume_restarts: u64,
    pub identify_restarts: u64,
    /// How it left: resets, close 4000, close 1000.
    pub resets: u64,
    pub closes_4000: u64,
    pub closes_1000: u64,
    /// Connections the proxy ended (or that failed) without being asked.
    pub server_ends: Vec<String>,
}

/// How one connection ended.
enum End {
    /// The restart timer fired.
    Restart,
    /// Told to shut down.
    Shutdown,
    /// The proxy (or the network) ended it; the next start.
    Lost(String, Start),
}

/// Runs the client until told to shut down.
pub async fn run(spec: ClientSpec, ledger: Arc<Ledger>, progress: Arc<Progress>, mut control: Control) -> ClientReport {
    let mut report = ClientReport {
        shard: spec.shard,
        encoding: spec.encoding,
        checker: Checker::new(spec.shard, spec.encoding.name(), spec.guilds),
        resume_restarts: 0,
        identify_restarts: 0,
        resets: 0,
        closes_4000: 0,
        closes_1000: 0,
        server_ends: Vec::new(),
    };
    let mut start = Start::Identify;
    let mut first = true;
    let mut restarts = 0u64;
    loop {
        if *control.shutdown.borrow() {
            break;
        }
        let mut ws = match connect(&spec).await {
            Ok(ws) => ws,
            Err(e) => {
                report.checker.problem(format!("cannot connect: {e}"));
                report.server_ends.push(format!("connect failed: {e}"));
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    () = crate::args::raised(&mut control.shutdown) => break,
                }
            }
        };
        if start == Start::Resume && report.checker.resume_point().is_none() {
            start = Start::Identify;
        }
        let end = connection(&mut ws, &spec, start, first, &mut report, &ledger, &progress, &mut control).await;
        first = false;
        progress.live.store(false, Ordering::Relaxed);
        match end {
            End::Shutdown => {
                leave(ws, Leave::Close(1000)).await;
                break;
            }
            End::Restart => {
                let (how, next) = plan(restarts);
                restarts += 1;
                match how {
                    Leave::Reset => report.resets += 1,
                    Leave::Close(4000) => report.closes_4000 += 1,
                    Leave::Close(_) => report.closes_1000 += 1,
                }
                match next {
                    Start::Resume => report.resume_restarts += 1,
                    Start::Identify => report.identify_restarts += 1,
                }
                leave(ws, how).await;
                start = next;
            }
            End::Lost(why, next) => {
                report.checker.problem(format!("connection ended by the proxy: {why}"));
                report.server_ends.push(why);
                drop(ws);
                start = next;
            }
        }
    }
    report
}

async fn connect(spec: &ClientSpec) -> Result<Ws, String> {
    let url = format!("{}/?{}", spec.url, spec.encoding.query());
    match tokio::time::timeout(IO_TIMEOUT, tokio_tungstenite::connect_async(url)).await {
        Ok(Ok((ws, _))) => Ok(ws),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("timed out".into()),
    }
}

/// Leaves a connection the given way.
async fn leave(mut ws: Ws, how: Leave) {
    match how {
        Leave::Reset => {
            if let MaybeTlsStream::Plain(tcp) = ws.get_ref() {
                let linger = libc::linger { l_onoff: 1, l_linger: 0 };
                // SAFETY: a valid socket fd owned by `ws`, and a correctly sized linger struct.
                unsafe {
                    libc::setsockopt(
                        tcp.as_raw_fd(),
                        libc::SOL_SOCKET,
                        libc::SO_LINGER,
                        std::ptr::addr_of!(linger).cast(),
                        std::mem::size_of::<libc::linger>() as libc::socklen_t,
                    );
                }
            }
            drop(ws);
        }
        Leave::Close(code) => {
            let frame = CloseFrame { code: CloseCode::from(code), reason: "".into() };
            let _ = tokio::time::timeout(IO_TIMEOUT, async {
                let _ = ws.close(Some(frame)).await;
                // The proxy's close frame, then the end of the stream.
                while let Some(Ok(_)) = ws.next().await {}
            })
            .await;
        }
    }
}

async fn send(ws: &mut Ws, text: String) -> Result<(), String> {
    match tokio::time::timeout(IO_TIMEOUT, ws.send(Message::text(text))).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(format!("send: {e}")),
        Err(_) => Err("send timed out".into()),
    }
}

fn identify_text(spec: &ClientSpec) -> String {
    let mut d = serde_json::json!({
        "token": spec.token,
        "intents": 513,
        "properties": { "os": "linux", "browser": "soak", "device": "soak" },
        "shard": [spec.shard, spec.shards],
        "large_threshold": 250,
    });
    if spec.encoding.identify_compress() {
        d["compress"] = true.into();
    }
    serde_json::json!({ "op": 2, "d": d }).to_string()
}

fn heartbeat_text(last_s: Option<u64>) -> String {
    let seq = last_s.map_or("null".to_owned(), |s| s.to_string());
    format!("{{\"op\":1,\"d\":{seq}}}")
}

fn far() -> tokio::time::Instant {
    tokio::time::Instant::now() + Duration::from_secs(86_400)
}

/// Runs one connection: Hello, Identify or Resume, then events, until the
/// restart timer, a shutdown, or the proxy ends it.
#[allow(clippy::too_many_arguments)]
async fn connection(
    ws: &mut Ws,
    spec: &ClientSpec,
    start: Start,
    first: bool,
    report: &mut ClientReport,
    ledger: &Ledger,
    progress: &Progress,
    control: &mut Control,
) -> End {
    let lost_next = |c: &Checker| if c.resume_point().is_some() { Start::Resume } else { Start::Identify };
    let mut decoder = match Decoder::new(spec.encoding) {
        Ok(d) => d,
        Err(e) => return End::Lost(format!("decoder: {e}"), start),
    };
    let deadline = tokio::time::Instant::now() + ESTABLISH_TIMEOUT;
    let mut established = false;
    let mut hb_interval = Duration::from_secs(3600);
    let heartbeat = tokio::time::sleep_until(far());
    tokio::pin!(heartbeat);
    let restart = tokio::time::sleep_until(far());
    tokio::pin!(restart);
    let mut last_s_sent: Option<u64> = None;
    loop {
        let msg = tokio::select! {
            msg = ws.next() => msg,
            () = &mut heartbeat => {
                heartbeat.as_mut().reset(tokio::time::Instant::now() + hb_interval);
                let s = report.checker.resume_point().map(|(_, s)| s);
                report.checker.stats.heartbeats += 1;
                if let Err(e) = send(ws, heartbeat_text(s)).await {
                    return End::Lost(e, lost_next(&report.checker));
                }
                continue;
            }
            () = &mut restart => {
                if *control.no_restarts.borrow() {
                    restart.as_mut().reset(far());
                    continue;
                }
                return End::Restart;
            }
            () = tokio::time::sleep_until(deadline), if !established => {
                let what = if start == Start::Resume { "RESUMED" } else { "READY" };
                report.checker.problem(format!("no {what} within {ESTABLISH_TIMEOUT:?} of connecting"));
                return End::Lost(format!("no {what} in time"), lost_next(&report.checker));
            }
            () = crate::args::raised(&mut control.shutdown) => return End::Shutdown,
        };
        let bin;
        let payload: &[u8] = match &msg {
            Some(Ok(Message::Text(t))) => t.as_bytes(),
            Some(Ok(Message::Binary(b))) => {
                bin = b;
                match decoder.decode(bin) {
                    Ok(Some(p)) => p,
                    Ok(None) => continue,
                    Err(e) => {
                        report.checker.problem(format!("undecodable message: {e}"));
                        return End::Lost(e, lost_next(&report.checker));
                    }
                }
            }
            Some(Ok(Message::Close(frame))) => {
                let why = frame.as_ref().map_or("closed without a code".to_owned(), |f| {
                    format!("closed {} {}", u16::from(f.code), f.reason)
                });
                return End::Lost(why, lost_next(&report.checker));
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => return End::Lost(format!("read: {e}"), lost_next(&report.checker)),
            None => return End::Lost("end of stream".into(), lost_next(&report.checker)),
        };
        let v: Value = match serde_json::from_slice(payload) {
            Ok(v) => v,
            Err(e) => {
                report.checker.problem(format!("undecodable payload: {e}"));
                continue;
            }
        };
        match v.get("op").and_then(Value::as_u64) {
            Some(0) => {}
            Some(10) => {
                let ms = v.pointer("/d/heartbeat_interval").and_then(Value::as_u64).unwrap_or(41_250);
                hb_interval = Duration::from_millis(ms.max(100));
                // The first heartbeat at a random point of the interval, as Discord asks.
                heartbeat.as_mut().reset(tokio::time::Instant::now() + hb_interval.mul_f64(fastrand::f64()));
                let text = match start {
                    Start::Identify => {
                        report.checker.identifying(first);
                        identify_text(spec)
                    }
                    Start::Resume => {
                        let Some((session_id, seq)) = report.checker.resume_point() else {
                            return End::Lost("nothing to resume".into(), Start::Identify);
                        };
                        report.checker.resuming();
                        last_s_sent = Some(seq);
                        serde_json::json!({
                            "op": 6,
                            "d": { "token": spec.token, "session_id": session_id, "seq": seq },
                        })
                        .to_string()
                    }
                };
                if let Err(e) = send(ws, text).await {
                    return End::Lost(e, lost_next(&report.checker));
                }
                continue;
            }
            Some(11) => {
                report.checker.stats.acks += 1;
                continue;
            }
            Some(1) => {
                let s = report.checker.resume_point().map(|(_, s)| s);
                if let Err(e) = send(ws, heartbeat_text(s)).await {
                    return End::Lost(e, lost_next(&report.checker));
                }
                continue;
            }
            Some(7) => return End::Lost("op 7 Reconnect".into(), lost_next(&report.checker)),
            Some(9) => {
                let resumable = v.get("d").and_then(Value::as_bool).unwrap_or(false);
                let why = match (start, last_s_sent) {
                    (Start::Resume, Some(seq)) => format!("op 9 (d = {resumable}) in answer to a Resume at s = {seq}"),
                    _ => format!("op 9 (d = {resumable})"),
                };
                report.checker.problem(why.clone());
                return End::Lost(why, if resumable { lost_next(&report.checker) } else { Start::Identify });
            }
            other => {
                report.checker.problem(format!("unexpected op {other:?}"));
                continue;
            }
        }
        let t = v.get("t").and_then(Value::as_str).unwrap_or("");
        let s = v.get("s").and_then(Value::as_u64);
        let ready_session =
            (t == "READY").then(|| v.pointer("/d/session_id").and_then(Value::as_str).map(str::to_owned)).flatten();
        report.checker.dispatch(t, s, ready_session);
        if !established && (t == "READY" || t == "RESUMED") {
            established = true;
            progress.live.store(true, Ordering::Relaxed);
            let after = Duration::from_millis(fastrand::u64(2_000..=6_000));
            restart.as_mut().reset(tokio::time::Instant::now() + after);
        }
        if t == "MESSAGE_CREATE" {
            let content = v.pointer("/d/content").and_then(Value::as_str).unwrap_or("");
            report.checker.soak(content, ledger);
            progress.last_n.store(report.checker.last_n(), Ordering::Relaxed);
        }
    }
}

/// Drains reports from finished client tasks, each bounded by `bound`.
pub async fn collect(handles: Vec<tokio::task::JoinHandle<ClientReport>>, bound: Duration) -> Vec<ClientReport> {
    let deadline = Instant::now() + bound;
    let mut out = Vec::new();
    for mut h in handles {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, &mut h).await {
            Ok(Ok(r)) => out.push(r),
            Ok(Err(e)) => eprintln!("soak: a client task failed: {e}"),
            Err(_) => {
                h.abort();
                eprintln!("soak: a client did not stop in time");
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restart_plan_alternates() {
        let starts: Vec<Start> = (0..4).map(|k| plan(k).1).collect();
        assert_eq!(starts, [Start::Resume, Start::Identify, Start::Resume, Start::Identify]);
        let leaves: Vec<Leave> = (0..4).map(|k| plan(k).0).collect();
        assert_eq!(leaves, [Leave::Reset, Leave::Close(1000), Leave::Close(4000), Leave::Reset]);
    }
}
