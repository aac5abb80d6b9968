//! A client's writer task: drains the client's queue in batches, splices
//! the client's own sequence numbers into shared dispatches, frames
//! (and compresses) them, and writes each batch with one socket write.

use super::{frames::FrameWriter, outgoing::Outgoing, queue::ClientQueue, session::ClientSession};
use crate::{hub::ShardHub, protocol::dispatch::Dispatch};
use futures_lite::AsyncWriteExt;
use glommio::net::TcpStream;
use std::{os::fd::AsRawFd, rc::Rc};

/// Most queue items encoded into one socket write.
const BATCH: usize = 256;
/// The output buffer's first size (a few events of a trickle).
const OUT_START: usize = 16 << 10;
/// Largest output buffer kept once writes are small again.
const OUT_KEEP: usize = 64 << 10;
/// Small writes in a row after which a larger buffer is given back.
const SMALL_WRITES: u32 = 64;

/// Per-client sequence numbering: strictly +1 from READY on.
#[derive(Debug, Default)]
pub struct Sequencer {
    last: u64,
}

impl Sequencer {
    /// The next sequence number.
    pub fn advance(&mut self) -> u64 {
        self.last += 1;
        self.last
    }
}

struct Stream<'a> {
    seq: Sequencer,
    session: &'a ClientSession,
    generation: u64,
}

impl Stream<'_> {
    fn encode(&mut self, d: &Dispatch, frames: &mut FrameWriter, out: &mut Vec<u8>) {
        let n = self.seq.advance();
        let mut digits = itoa::Buffer::new();
        frames.message(&[d.head(), digits.format(n).as_bytes(), d.tail()], out);
        self.session.record_sent(self.generation, n, d.index());
    }

    /// Frames a GUILD_CREATE of a snapshot whose `d` is `d`.
    fn encode_guild_create(&mut self, d: &[u8], frames: &mut FrameWriter, out: &mut Vec<u8>) {
        let n = self.seq.advance();
        let mut digits = itoa::Buffer::new();
        frames.message(
            &[b"{\"t\":\"GUILD_CREATE\",\"s\":", digits.format(n).as_bytes(), b",\"op\":0,\"d\":", d, b"}"],
            out,
        );
        self.session.record_sent(self.generation, n, None);
    }
}

/// Who the writer writes for.
pub struct WriterContext {
    /// Connection id (for logs).
    pub conn: u64,
    /// The session whose position the writer records.
    pub session: Rc<ClientSession>,
    /// The session generation of this connection.
    pub generation: u64,
    /// Sequence number to continue from.
    pub start_seq: u64,
    /// The shard, whose cache writes the GUILD_CREATEs of a snapshot.
    pub hub: Rc<ShardHub>,
    /// Bytes put on the wire (metrics).
    pub sent_bytes: prometheus::IntCounter,
    /// Payload bytes before compression (metrics).
    pub payload_bytes: prometheus::IntCounter,
}

/// Writes `out` once it holds a megabyte, so a long snapshot or replay
/// leaves while the rest is still being encoded.
async fn flush_large(stream: &mut TcpStream, out: &mut Vec<u8>) -> std::io::Result<()> {
    if out.len() >= 1 << 20 {
        stream.write_all(out).await?;
        out.clear();
    }
    Ok(())
}

/// Runs until the queue is closed and drained, a close was sent, or the
/// socket fails. Sequence numbers continue from `start_seq` (0 for a new
/// session, the client's seq for a resume); what was sent is recorded in
/// the session so that a later RESUME knows where the client stands.
pub async fn run(queue: Rc<ClientQueue>, mut stream: TcpStream, mut frames: FrameWriter, ctx: WriterContext) {
    let WriterContext { conn, session, generation, start_seq, hub, sent_bytes, payload_bytes } = ctx;
    let mut guild_d = Vec::new();
    let mut seqs = Stream { seq: Sequencer { last: start_seq }, session: &session, generation };
    let (mut reported_in, mut reported_out) = (0, 0);
    let mut batch = Vec::with_capacity(BATCH);
    let mut out = Vec::with_capacity(OUT_START);
    let mut small_writes = 0u32;
    let fd = stream.as_raw_fd();
    'outer: while queue.pop_batch(&mut batch, BATCH).await {
        out.clear();
        let mut closing = false;
        for item in batch.drain(..) {
            match item {
                Outgoing::Dispatch(d) => seqs.encode(&d, &mut frames, &mut out),
                Outgoing::Snapshot(list) => {
                    for d in &list {
                        seqs.encode(d, &mut frames, &mut out);
                        if flush_large(&mut stream, &mut out).await.is_err() {
                            break 'outer;
                        }
                    }
                }
                Outgoing::Guilds(list) => {
                    for g in &list {
                        guild_d.clear();
                        hub.cache.borrow().write_frozen(g, &mut guild_d);
                        seqs.encode_guild_create(&guild_d, &mut frames, &mut out);
                        if flush_large(&mut stream, &mut out).await.is_err() {
                            break 'outer;
                        }
                    }
                    // A snapshot's largest buffer is not kept for the session's life.
                    guild_d = Vec::new();
                }
                Outgoing::Payload(p) => frames.message(&[&p], &mut out),
                Outgoing::Framed(bytes) => out.extend_from_slice(&bytes),
                Outgoing::Close(code, reason) => {
                    frames.close(code, &reason, &mut out);
                    closing = true;
                    break;
                }
            }
        }
        if stream.write_all(&out).await.is_err() {
            break;
        }
        // A burst or a snapshot grew the buffer: once writes have been small
        // for a while, do not keep that for the connection's life.
        small_writes = if out.len() < OUT_START { small_writes.saturating_add(1) } else { 0 };
        if out.capacity() > OUT_KEEP && small_writes >= SMALL_WRITES {
            out = Vec::with_capacity(OUT_START);
        }
        payload_bytes.inc_by(frames.bytes_in - reported_in);
        sent_bytes.inc_by(frames.bytes_out - reported_out);
        (reported_in, reported_out) = (frames.bytes_in, frames.bytes_out);
        if closing {
            log::debug!("client {conn}: close sent");
            break;
        }
    }
    queue.close();
    queue.set_finished();
    // Wakes the reader (which holds its own descriptor of this socket).
    // SAFETY: shutdown on our own open descriptor.
    unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
}
