//! A client connection, from the websocket upgrade to its end.
//!
//! Before Identify (or Resume) the connection lives on whichever core
//! accepted it: it gets Hello, its heartbeats are ACKed, and its Identify or
//! Resume is validated. Both name a shard (a session id carries its shard);
//! if another core owns that shard, the socket and its websocket state are
//! handed over through the core mesh, so that for the rest of its life the
//! client is served on its shard's core and every event reaches it without a
//! cross-core hop.

use super::{
    admission::Permit,
    frames::{Encoding, FrameReader, FrameWriter, Message, ReadError},
    http::{self, RequestHead},
    identify::{self, Action, ResumeRequest, ValidIdentify},
    outgoing::Outgoing,
    queue::ClientQueue,
    writer,
};
use crate::{
    hub::{routing::VoiceAnswer, Attached, ResumeError, ShardHub, ShardStatus},
    protocol::{
        dispatch::Dispatch,
        intents::{self, ClientIntents},
        op,
    },
    runtime::Core,
    upstream::ratelimit::{self, SendLimiter},
};
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;
use std::{
    os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd},
    rc::Rc,
    time::{Duration, Instant},
};

const ACK: &[u8] = b"{\"t\":null,\"s\":null,\"op\":11,\"d\":null}";
const INVALID_SESSION: &[u8] = b"{\"t\":null,\"s\":null,\"op\":9,\"d\":false}";
const HEARTBEAT_REQUEST: &[u8] = b"{\"t\":null,\"s\":null,\"op\":1,\"d\":null}";

/// What an accepted client asked for.
#[derive(Debug)]
pub enum Intent {
    /// A new session.
    Identify(ValidIdentify),
    /// Continue a session.
    Resume(ResumeRequest),
}

impl Intent {
    fn shard(&self) -> u32 {
        match self {
            Self::Identify(v) => v.shard,
            Self::Resume(r) => r.shard,
        }
    }
}

/// A connection between the upgrade and its session: everything needed to
/// continue it, on this core or another.
pub struct PendingConn {
    fd: OwnedFd,
    peer: String,
    reader: FrameReader,
    frames: FrameWriter,
    /// Discord's 120 payloads / 60 s, counted from the connection's start.
    limiter: SendLimiter,
    /// Bytes read but not yet fed to the websocket reader.
    input: Vec<u8>,
    /// Whether the client chose transport compression (then `compress: true` is ignored).
    transport_compressed: bool,
    /// Payloads received while waiting for the shard's READY, handled once attached.
    held: Vec<Vec<u8>>,
    /// Its place among the client connections, given back when it ends.
    permit: Permit,
}

/// A connection moving to the core that owns its shard.
pub struct Handover {
    conn: PendingConn,
    intent: Intent,
}

fn hello(interval_ms: u64) -> Vec<u8> {
    format!("{{\"t\":null,\"s\":null,\"op\":10,\"d\":{{\"heartbeat_interval\":{interval_ms}}}}}").into_bytes()
}

/// A glommio stream over a duplicate of `fd` (the original stays with the caller).
fn stream_of(fd: &OwnedFd) -> Option<TcpStream> {
    stream_of_raw(fd.as_raw_fd())
}

/// Serves a connection whose request head asked for a websocket upgrade.
pub async fn serve(
    core: Rc<Core>,
    mut stream: TcpStream,
    head: RequestHead,
    leftover: Vec<u8>,
    peer: String,
    permit: Permit,
) {
    let key = head.websocket_key.clone().unwrap_or_default();
    if stream.write_all(&http::upgrade_response(&key)).await.is_err() {
        return;
    }
    let query = match http::parse_query(&head.query) {
        Ok(q) => q,
        Err(e) => {
            log::info!("{peer}: refused gateway query `{}`: {}", head.query, e.reason);
            let mut out = Vec::new();
            FrameWriter::new(Encoding::Json).close(e.code, &e.reason, &mut out);
            let _ = stream.write_all(&out).await;
            return;
        }
    };
    let encoding = match query.compress.as_deref() {
        _ if !core.shared.config.compression => Encoding::Json,
        Some("zlib-stream") => Encoding::ZlibStream(Box::default()),
        Some("zstd-stream") => Encoding::ZstdStream(Box::default()),
        _ => Encoding::Json,
    };
    let transport_compressed = !matches!(encoding, Encoding::Json) || !core.shared.config.compression;
    let mut frames = FrameWriter::new(encoding);
    let mut out = Vec::with_capacity(256);
    frames.message(&[&hello(core.shared.config.heartbeat_interval)], &mut out);
    if stream.write_all(&out).await.is_err() {
        return;
    }
    log::debug!("{peer}: websocket open on core {}", core.index);
    // SAFETY: dup of an open descriptor; the copy outlives `stream`.
    let fd = unsafe { OwnedFd::from_raw_fd(libc::dup(stream.as_raw_fd())) };
    drop(stream);
    let conn = PendingConn {
        fd,
        peer,
        reader: FrameReader::new(),
        frames,
        limiter: SendLimiter::with_budget(ratelimit::LIMIT),
        input: leftover,
        transport_compressed,
        held: Vec::new(),
        permit,
    };
    drive(core, conn, None).await;
}

/// Serves a connection handed over by another core.
pub async fn adopt(core: Rc<Core>, handover: Handover) {
    drive(core, handover.conn, Some(handover.intent)).await;
}

/// Takes a pending connection to its session: waits for Identify/Resume,
/// moves to the owning core, and serves it there.
async fn drive(core: Rc<Core>, mut conn: PendingConn, mut intent: Option<Intent>) {
    loop {
        let next = match intent.take() {
            Some(i) => i,
            None => match pre_identify(&core, &mut conn).await {
                Some(i) => i,
                None => return,
            },
        };
        let owner = core.shared.core_of(next.shard());
        if owner != core.index {
            log::debug!("{}: shard {} is on core {owner}; handing over", conn.peer, next.shard());
            if core
                .mesh
                .send_to(owner, crate::runtime::CoreMessage::Handover(Box::new(Handover { conn, intent: next })))
                .await
                .is_err()
            {
                log::error!("core {owner} is gone; dropping a handed-over connection");
            }
            return;
        }
        match serve_session(&core, conn, next).await {
            Ok(()) => return,
            Err((back, reason)) => {
                log::info!("{}: resume refused ({reason:?}); sending Invalid Session", back.peer);
                conn = back;
                let mut out = Vec::new();
                conn.frames.message(&[INVALID_SESSION], &mut out);
                let Some(mut stream) = stream_of(&conn.fd) else { return };
                if stream.write_all(&out).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Runs until the client has sent a valid Identify or Resume; `None` when the connection ended.
async fn pre_identify(core: &Core, conn: &mut PendingConn) -> Option<Intent> {
    let mut stream = stream_of(&conn.fd)?;
    let deadline = Instant::now() + Duration::from_secs(core.shared.config.identify_timeout_secs);
    let mut chunk = vec![0u8; 8192];
    loop {
        let mut out = Vec::new();
        let mut actions = Vec::new();
        let input = std::mem::take(&mut conn.input);
        let limiter = &mut conn.limiter;
        let result = conn.reader.feed(&input, &mut out, |msg| {
            let action = if limiter.try_command(Instant::now()) {
                identify::classify(&message_bytes(&msg), false, &core.shared)
            } else {
                Action::Close(4008, "rate limited: more than 120 payloads in 60 s".into())
            };
            let stop = matches!(action, Action::Identify(_) | Action::Resume(_) | Action::Close(..));
            actions.push(action);
            !stop
        });
        let mut outcome = None;
        for action in actions {
            match action {
                Action::Ack => conn.frames.message(&[ACK], &mut out),
                Action::InvalidSession(reason) => {
                    log::info!("{}: resume refused ({reason}); sending Invalid Session", conn.peer);
                    conn.frames.message(&[INVALID_SESSION], &mut out);
                }
                Action::Identify(v) => outcome = Some(Ok(Intent::Identify(v))),
                Action::Resume(r) => outcome = Some(Ok(Intent::Resume(r))),
                Action::Close(code, reason) => outcome = Some(Err((code, reason))),
                Action::Command(_) => outcome = Some(Err((4003, "not authenticated".into()))),
            }
        }
        let outcome = outcome.or(match result {
            Ok(()) => None,
            Err(ReadError::TooLarge) => Some(Err((4002, "decode error: payload too large".into()))),
            Err(ReadError::Protocol(e)) => Some(Err((1002, e))),
            Err(ReadError::Closed) => Some(Err((0, String::new()))),
        });
        match outcome {
            Some(Ok(intent)) => {
                conn.permit.identified();
                if !out.is_empty() && stream.write_all(&out).await.is_err() {
                    return None;
                }
                return Some(intent);
            }
            Some(Err((code, reason))) => {
                if code != 0 {
                    log::info!("{}: closing with {code} ({reason})", conn.peer);
                    conn.frames.close(code, &reason, &mut out);
                }
                let _ = stream.write_all(&out).await;
                return None;
            }
            None => {}
        }
        if !out.is_empty() && stream.write_all(&out).await.is_err() {
            return None;
        }
        let remaining = deadline.saturating_duration_since(Instant::now());
        let read = futures_lite::future::or(async { Some(stream.read(&mut chunk).await) }, async {
            glommio::timer::sleep(remaining).await;
            None
        })
        .await;
        match read {
            None => {
                log::info!("{}: no Identify within {}s; closing", conn.peer, core.shared.config.identify_timeout_secs);
                let mut out = Vec::new();
                conn.frames.close(4009, "session timed out: no Identify", &mut out);
                let _ = stream.write_all(&out).await;
                return None;
            }
            Some(Ok(0)) | Some(Err(_)) => return None,
            Some(Ok(n)) => conn.input.extend_from_slice(&chunk[..n]),
        }
    }
}

fn message_bytes(msg: &Message) -> Vec<u8> {
    match msg {
        Message::Text(t) => t.as_bytes().to_vec(),
        Message::Binary(b) => b.to_vec(),
        _ => Vec::new(),
    }
}

enum Wake {
    Read(std::io::Result<usize>),
    StatusChanged,
    Timer,
}

/// Before serving an Identify, waits for the shard's first READY from
/// Discord, ACKing heartbeats meanwhile (identify pacing can make a big
/// bot's last shards wait minutes). Payloads other than heartbeats stay
/// buffered for after READY. Returns false when the connection is over.
/// Dispatches in what is sent before live events (READY and guilds, or a
/// replay and RESUMED), for the log.
fn dispatch_count(first: &[Outgoing]) -> usize {
    first
        .iter()
        .map(|o| match o {
            Outgoing::Guilds(g) => g.len(),
            Outgoing::Snapshot(d) => d.len(),
            _ => 0,
        })
        .sum()
}

async fn wait_shard_ready(hub: &ShardHub, conn: &mut PendingConn) -> bool {
    let Some(mut stream) = stream_of(&conn.fd) else { return false };
    let mut chunk = vec![0u8; 8192];
    loop {
        match hub.status() {
            ShardStatus::Failed(code) => {
                let mut out = Vec::new();
                let reason = format!("shard {} is stopped: Discord closed it with code {code}", hub.id);
                log::info!("{}: {reason}", conn.peer);
                conn.frames.close(4000, &reason, &mut out);
                let _ = stream.write_all(&out).await;
                return false;
            }
            _ if hub.has_ready() => return true,
            _ => {}
        }
        let wake = futures_lite::future::or(async { Wake::Read(stream.read(&mut chunk).await) }, async {
            hub.status_changed().await;
            Wake::StatusChanged
        })
        .await;
        match wake {
            Wake::Read(Ok(0)) | Wake::Read(Err(_)) => return false,
            Wake::Read(Ok(n)) => {
                // Answer heartbeats now; keep everything else for the session.
                let mut out = Vec::new();
                let mut acks = 0;
                let held = &mut conn.held;
                let result = conn.reader.feed(&chunk[..n], &mut out, |msg| {
                    let bytes = message_bytes(&msg);
                    if serde_json::from_slice::<serde_json::Value>(&bytes).is_ok_and(|v| v["op"] == op::HEARTBEAT) {
                        acks += 1;
                    } else {
                        held.push(bytes);
                    }
                    true
                });
                for _ in 0..acks {
                    conn.frames.message(&[ACK], &mut out);
                }
                if result.is_err() || (!out.is_empty() && stream.write_all(&out).await.is_err()) {
                    return false;
                }
            }
            Wake::StatusChanged | Wake::Timer => {}
        }
    }
}

/// Serves an identified or resuming client on the core that owns its shard.
/// A refused resume gives the connection back, to be told op 9.
async fn serve_session(
    core: &Rc<Core>,
    mut conn: PendingConn,
    intent: Intent,
) -> Result<(), (PendingConn, ResumeError)> {
    let shard = intent.shard();
    let Some(hub) = core.hubs.get(&shard).cloned() else {
        log::error!("{}: shard {shard} reached core {} which does not own it", conn.peer, core.index);
        return Ok(());
    };
    if let Intent::Identify(v) = &intent {
        if v.compress && !conn.transport_compressed {
            conn.frames = FrameWriter::new(Encoding::ZlibMessage(Box::default()));
        }
        if !wait_shard_ready(&hub, &mut conn).await {
            return Ok(());
        }
    }
    let conn_id = core.next_connection_id();
    let queue = Rc::new(ClientQueue::new(core.shared.config.backpressure));
    let read_fd = conn.fd.as_raw_fd();
    let (session, generation, first, start_seq) = match &intent {
        Intent::Identify(v) => {
            let config = &core.shared.config;
            let intents = match v.intents {
                Some(asked) if config.client_intents => ClientIntents::for_client(asked, config.intents),
                _ => None,
            };
            let Attached { session, generation, first: snapshot } =
                hub.attach_new(conn_id, queue.clone(), read_fd, &core.shared.client_resume_url, intents);
            log::info!(
                "{}: identified for shard {shard}: session {}, {} guild payloads (client {conn_id}, core {})",
                conn.peer,
                session.id,
                dispatch_count(&snapshot) - 1,
                core.index
            );
            let missing = v.intents.unwrap_or(0) & !config.intents;
            if config.client_intents && missing != 0 {
                log::warn!(
                    "{}: session {} asked for intents the proxy does not receive: {}; it gets the rest. \
                     Add them to `intents`, or set `strict_intents` to refuse such clients with 4014",
                    conn.peer,
                    session.id,
                    intents::names(missing)
                );
            }
            (session, generation, snapshot, 0)
        }
        Intent::Resume(r) => match hub.attach_resume(&r.session_id, r.seq, conn_id, queue.clone(), read_fd) {
            Ok(Attached { session, generation, first: replay }) => {
                log::info!(
                    "{}: resumed session {} of shard {shard} at seq {}: {} dispatches replayed (client {conn_id}, core {})",
                    conn.peer,
                    session.id,
                    r.seq,
                    dispatch_count(&replay) - 1,
                    core.index
                );
                (session, generation, replay, r.seq)
            }
            Err(e) => return Err((conn, e)),
        },
    };
    for item in first {
        let _ = queue.push(item);
    }
    let PendingConn { fd, peer, mut reader, frames, mut limiter, mut input, held, permit, .. } = conn;
    // Held until the reader stops: the connection counts until then.
    let _permit = permit;
    let mut held = Some(held);
    // SAFETY: `fd` is open and owned; the read stream takes it over.
    let mut read_stream = unsafe { TcpStream::from_raw_fd(fd.into_raw_fd()) };
    // Reader and writer each own a descriptor of the socket, so neither waits on the other.
    let Some(write_stream) = stream_of_raw(read_stream.as_raw_fd()) else {
        hub.unsubscribe(conn_id);
        session.disconnected(generation);
        core.session_bell.ring();
        return Ok(());
    };
    let ctx = writer::WriterContext {
        conn: conn_id,
        session: session.clone(),
        generation,
        start_seq,
        hub: hub.clone(),
        sent_bytes: hub.metrics.client_bytes.clone(),
        payload_bytes: hub.metrics.client_payload_bytes.clone(),
    };
    glommio::spawn_local(writer::run(queue.clone(), write_stream, frames, ctx)).detach();

    let interval = Duration::from_millis(core.shared.config.heartbeat_interval);
    let mut last_heartbeat = Instant::now();
    let mut asked = false;
    let mut chunk = vec![0u8; 8192];
    loop {
        let mut replies = Vec::new();
        let mut actions = Vec::new();
        let mut classify = |bytes: Vec<u8>| {
            let action = if limiter.try_command(Instant::now()) {
                identify::classify(&bytes, true, &core.shared)
            } else {
                Action::Close(4008, "rate limited: more than 120 payloads in 60 s".into())
            };
            let stop = matches!(action, Action::Close(..));
            actions.push((action, bytes));
            !stop
        };
        for bytes in held.take().unwrap_or_default() {
            classify(bytes);
        }
        let result = reader.feed(&input, &mut replies, |msg| classify(message_bytes(&msg)));
        input.clear();
        if !replies.is_empty() {
            let _ = queue.push(Outgoing::Framed(replies));
        }
        let mut end = false;
        for (action, bytes) in actions {
            match action {
                Action::Ack => {
                    last_heartbeat = Instant::now();
                    asked = false;
                    let _ = queue.push(Outgoing::Payload(ACK.to_vec()));
                }
                Action::Command(op) => command(&hub, session.num, op, bytes),
                Action::Close(code, reason) => {
                    log::info!("{peer}: closing client {conn_id} with {code} ({reason})");
                    let _ = queue.push(Outgoing::Close(code, reason));
                    end = true;
                }
                Action::Identify(_) | Action::Resume(_) | Action::InvalidSession(_) => {
                    unreachable!("classify closes with 4005 once identified")
                }
            }
        }
        match result {
            Ok(()) => {}
            Err(ReadError::TooLarge) => {
                let _ = queue.push(Outgoing::Close(4002, "decode error: payload too large".into()));
                end = true;
            }
            Err(ReadError::Protocol(e)) => {
                let _ = queue.push(Outgoing::Close(1002, e));
                end = true;
            }
            Err(ReadError::Closed) => end = true,
        }
        if end {
            break;
        }
        // Discord asks a silent client for a heartbeat, then gives up on it.
        let silent = last_heartbeat.elapsed();
        if silent >= interval * 2 {
            log::info!("{peer}: client {conn_id} stopped heartbeating; closing");
            let _ = queue.push(Outgoing::Close(4009, "session timed out: no heartbeat".into()));
            break;
        }
        if silent >= interval + interval / 4 && !asked {
            asked = true;
            let _ = queue.push(Outgoing::Payload(HEARTBEAT_REQUEST.to_vec()));
        }
        let next_check = if asked { interval * 2 } else { interval + interval / 4 };
        let sleep = next_check.saturating_sub(silent) + Duration::from_millis(5);
        let wake = futures_lite::future::or(async { Wake::Read(read_stream.read(&mut chunk).await) }, async {
            glommio::timer::sleep(sleep).await;
            Wake::Timer
        })
        .await;
        match wake {
            Wake::Read(Ok(0)) | Wake::Read(Err(_)) => break,
            Wake::Read(Ok(n)) => input.extend_from_slice(&chunk[..n]),
            Wake::StatusChanged | Wake::Timer => {}
        }
    }
    hub.unsubscribe(conn_id);
    session.disconnected(generation);
    core.session_bell.ring();
    queue.close();
    log::info!("{peer}: client {conn_id} of shard {} disconnected (session {} resumable)", hub.id, session.id);
    Ok(())
}

/// A client command for Discord: routed replies are set up here.
fn command(hub: &ShardHub, session: u64, op: u8, payload: Vec<u8>) {
    match op {
        op::REQUEST_GUILD_MEMBERS => match hub.routing.borrow_mut().member_request(session, &payload) {
            Some(rewritten) => hub.send_command(rewritten),
            None => hub.send_command(payload),
        },
        op::VOICE_STATE_UPDATE => {
            let answer = hub.routing.borrow_mut().voice_request(session, &payload);
            match answer {
                VoiceAnswer::Forward => hub.send_command(payload),
                VoiceAnswer::FromCache(state, server) => {
                    log::debug!("[shard {}] voice request answered from the kept voice session", hub.id);
                    let _ = hub.publish(Dispatch::build("VOICE_STATE_UPDATE", state.as_bytes()).for_session(session));
                    let _ = hub.publish(Dispatch::build("VOICE_SERVER_UPDATE", server.as_bytes()).for_session(session));
                }
            }
        }
        op::PRESENCE_UPDATE => {
            hub.routing.borrow_mut().set_presence(&payload);
            hub.send_command(payload);
        }
        _ => hub.send_command(payload),
    }
}

fn stream_of_raw(fd: i32) -> Option<TcpStream> {
    // SAFETY: dup of an open descriptor; the new one is owned by the stream.
    let dup = unsafe { libc::dup(fd) };
    // SAFETY: `dup` is fresh and owned by nobody else.
    (dup >= 0).then(|| unsafe { TcpStream::from_raw_fd(dup) })
}
