//! A client connection, from the websocket upgrade to its end.
//!
//! Before Identify the connection lives on whichever core accepted it: it
//! gets Hello, its heartbeats are ACKed, and its Identify is validated. The
//! Identify names a shard; if another core owns that shard, the socket and
//! its websocket state are handed over through the core mesh, so that for
//! the rest of its life the client is served on its shard's core and every
//! event reaches it without a cross-core hop.

use super::{
    frames::{Encoding, FrameReader, FrameWriter, ReadError},
    http::{self, RequestHead},
    identify::{self, Action, ValidIdentify},
    outgoing::Outgoing,
    queue::ClientQueue,
    writer,
};
use crate::{
    hub::{ShardStatus, Subscriber},
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

/// Heartbeat interval told to clients in Hello (Discord's value).
pub const HEARTBEAT_INTERVAL_MS: u64 = 41_250;

const HELLO: &[u8] = b"{\"t\":null,\"s\":null,\"op\":10,\"d\":{\"heartbeat_interval\":41250}}";
const ACK: &[u8] = b"{\"t\":null,\"s\":null,\"op\":11,\"d\":null}";
const INVALID_SESSION: &[u8] = b"{\"t\":null,\"s\":null,\"op\":9,\"d\":false}";

/// A client connection moving to the core that owns its shard.
pub struct Handover {
    fd: OwnedFd,
    peer: String,
    reader: FrameReader,
    frames: FrameWriter,
    identify: ValidIdentify,
    /// Discord's 120 payloads / 60 s, counted from the connection's start.
    limiter: SendLimiter,
}

fn unique_session_id() -> String {
    format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..))
}

/// Serves a connection whose request head asked for a websocket upgrade.
pub async fn serve(core: Rc<Core>, mut stream: TcpStream, head: RequestHead, leftover: Vec<u8>, peer: String) {
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
        Some("zlib-stream") => Encoding::ZlibStream(Box::default()),
        Some("zstd-stream") => Encoding::ZstdStream(Box::default()),
        _ => Encoding::Json,
    };
    let transport_compressed = !matches!(encoding, Encoding::Json);
    let mut frames = FrameWriter::new(encoding);
    let mut reader = FrameReader::new();
    let mut out = Vec::with_capacity(256);
    frames.message(&[HELLO], &mut out);
    if stream.write_all(&out).await.is_err() {
        return;
    }
    log::debug!("{peer}: websocket open on core {}", core.index);
    let mut limiter = SendLimiter::with_budget(ratelimit::LIMIT);
    let Some(identify) =
        pre_identify(&core, &mut stream, &mut reader, &mut frames, &mut limiter, leftover, &peer).await
    else {
        return;
    };
    if identify.compress && !transport_compressed {
        frames =
            FrameWriter::new(Encoding::ZlibMessage(Box::new(flate2::Compress::new(flate2::Compression::fast(), true))));
    }
    let owner = core.shared.core_of(identify.shard);
    // Keep the socket alive past `stream`'s drop: the duplicate descriptor travels on.
    // SAFETY: dup of an open descriptor; the result is owned by OwnedFd.
    let fd = unsafe { OwnedFd::from_raw_fd(libc::dup(stream.as_raw_fd())) };
    drop(stream);
    let handover = Handover { fd, peer, reader, frames, identify, limiter };
    if owner == core.index {
        adopt(core, handover).await;
    } else {
        log::debug!("{}: shard {} is on core {owner}; handing over", handover.peer, handover.identify.shard);
        if core.mesh.send_to(owner, handover).await.is_err() {
            log::error!("core {owner} is gone; dropping a handed-over connection");
        }
    }
}

/// Runs until the client has identified; `None` when the connection ended.
async fn pre_identify(
    core: &Core,
    stream: &mut TcpStream,
    reader: &mut FrameReader,
    frames: &mut FrameWriter,
    limiter: &mut SendLimiter,
    mut input: Vec<u8>,
    peer: &str,
) -> Option<ValidIdentify> {
    let deadline = Instant::now() + Duration::from_secs(core.shared.config.identify_timeout_secs);
    let mut chunk = vec![0u8; 8192];
    loop {
        let mut out = Vec::new();
        let mut actions = Vec::new();
        let result = reader.feed(&input, &mut out, |msg| {
            let action = if limiter.try_command(Instant::now()) {
                identify::classify(&message_bytes(&msg), false, &core.shared)
            } else {
                Action::Close(4008, "rate limited: more than 120 payloads in 60 s".into())
            };
            let stop = matches!(action, Action::Identify(_) | Action::Close(..));
            actions.push(action);
            !stop
        });
        input.clear();
        let mut outcome = None;
        for action in actions {
            match action {
                Action::Ack => frames.message(&[ACK], &mut out),
                Action::Resume => {
                    log::info!("{peer}: resume of an unknown session; sending Invalid Session");
                    frames.message(&[INVALID_SESSION], &mut out);
                }
                Action::Identify(v) => outcome = Some(Ok(v)),
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
            Some(Ok(v)) => {
                if !out.is_empty() && stream.write_all(&out).await.is_err() {
                    return None;
                }
                return Some(v);
            }
            Some(Err((code, reason))) => {
                if code != 0 {
                    log::info!("{peer}: closing with {code} ({reason})");
                    frames.close(code, &reason, &mut out);
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
                log::info!("{peer}: no Identify within {}s; closing", core.shared.config.identify_timeout_secs);
                let mut out = Vec::new();
                frames.close(4009, "session timed out: no Identify", &mut out);
                let _ = stream.write_all(&out).await;
                return None;
            }
            Some(Ok(0)) | Some(Err(_)) => return None,
            Some(Ok(n)) => input.extend_from_slice(&chunk[..n]),
        }
    }
}

fn message_bytes(msg: &super::frames::Message) -> Vec<u8> {
    match msg {
        super::frames::Message::Text(t) => t.as_bytes().to_vec(),
        super::frames::Message::Binary(b) => b.to_vec(),
        _ => Vec::new(),
    }
}

enum Wake {
    Read(std::io::Result<usize>),
    StatusChanged,
}

/// Serves an identified client on the core that owns its shard.
pub async fn adopt(core: Rc<Core>, handover: Handover) {
    let Handover { fd, peer, mut reader, frames, identify, mut limiter } = handover;
    let Some(hub) = core.hubs.get(&identify.shard).cloned() else {
        log::error!("{peer}: shard {} handed to core {} which does not own it", identify.shard, core.index);
        return;
    };
    // Two descriptors of one socket: the reader and the writer each own a
    // glommio stream, so neither waits on the other.
    // SAFETY: dup of an open descriptor we own.
    let write_fd = unsafe { libc::dup(fd.as_raw_fd()) };
    if write_fd < 0 {
        return;
    }
    // SAFETY: both descriptors are open and owned by the streams from here on.
    let mut read_stream = unsafe { TcpStream::from_raw_fd(fd.into_raw_fd()) };
    // SAFETY: as above.
    let write_stream = unsafe { TcpStream::from_raw_fd(write_fd) };
    let conn = core.next_connection_id();
    let queue = Rc::new(ClientQueue::new(core.shared.config.backpressure));
    glommio::spawn_local(writer::run(queue.clone(), write_stream, frames, conn)).detach();
    let session_id = unique_session_id();
    log::info!("{peer}: identified for shard {} (client {conn}, core {})", identify.shard, core.index);

    let mut attached = false;
    let mut chunk = vec![0u8; 8192];
    let mut input: Vec<u8> = Vec::new();
    loop {
        if !attached {
            match hub.status() {
                ShardStatus::Failed(code) => {
                    let _ = queue.push(Outgoing::Close(
                        4000,
                        format!("shard {} is stopped: Discord closed it with code {code}", hub.id),
                    ));
                    break;
                }
                _ if hub.has_ready() => {
                    let sub = Subscriber { id: conn, queue: queue.clone(), fd: read_stream.as_raw_fd() };
                    let snapshot = hub.attach(sub, &session_id, &core.shared.client_resume_url);
                    log::debug!("client {conn}: READY with {} guild payloads", snapshot.len() - 1);
                    let _ = queue.push(Outgoing::Snapshot(snapshot));
                    attached = true;
                }
                _ => {}
            }
        }
        // Process whatever is buffered (handover leftovers included) before reading more.
        let mut replies = Vec::new();
        let mut actions = Vec::new();
        let result = reader.feed(&input, &mut replies, |msg| {
            let bytes = message_bytes(&msg);
            let action = if limiter.try_command(Instant::now()) {
                identify::classify(&bytes, true, &core.shared)
            } else {
                Action::Close(4008, "rate limited: more than 120 payloads in 60 s".into())
            };
            let stop = matches!(action, Action::Close(..));
            actions.push((action, bytes));
            !stop
        });
        input.clear();
        if !replies.is_empty() {
            let _ = queue.push(Outgoing::Framed(replies));
        }
        let mut end = false;
        for (action, bytes) in actions {
            match action {
                Action::Ack => {
                    let _ = queue.push(Outgoing::Payload(ACK.to_vec()));
                }
                Action::Command(op) => {
                    log::trace!("client {conn}: op {op} forwarded to shard {}", hub.id);
                    hub.send_command(bytes);
                }
                Action::Close(code, reason) => {
                    log::info!("{peer}: closing client {conn} with {code} ({reason})");
                    let _ = queue.push(Outgoing::Close(code, reason));
                    end = true;
                }
                Action::Identify(_) | Action::Resume => unreachable!("classify rejects these once identified"),
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
        let wake = if attached {
            Wake::Read(read_stream.read(&mut chunk).await)
        } else {
            futures_lite::future::or(async { Wake::Read(read_stream.read(&mut chunk).await) }, async {
                hub.status_changed().await;
                Wake::StatusChanged
            })
            .await
        };
        match wake {
            Wake::Read(Ok(0)) | Wake::Read(Err(_)) => break,
            Wake::Read(Ok(n)) => input.extend_from_slice(&chunk[..n]),
            Wake::StatusChanged => {}
        }
    }
    hub.unsubscribe(conn);
    queue.close();
    log::info!("{peer}: client {conn} of shard {} disconnected", hub.id);
}
