//! A client's writer task: drains the client's queue in batches, splices
//! the client's own sequence numbers into shared dispatches, frames
//! (and compresses) them, and writes each batch with one socket write.

use super::{frames::FrameWriter, outgoing::Outgoing, queue::ClientQueue, session::ClientSession};
use crate::protocol::dispatch::Dispatch;
use futures_lite::AsyncWriteExt;
use glommio::net::TcpStream;
use std::{os::fd::AsRawFd, rc::Rc};

/// Most queue items encoded into one socket write.
const BATCH: usize = 256;

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

    /// The last sequence number sent.
    pub fn last(&self) -> u64 {
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
}

/// Runs until the queue is closed and drained, a close was sent, or the
/// socket fails. Sequence numbers continue from `start_seq` (0 for a new
/// session, the client's seq for a resume); what was sent is recorded in
/// the session so that a later RESUME knows where the client stands.
pub async fn run(
    queue: Rc<ClientQueue>,
    mut stream: TcpStream,
    mut frames: FrameWriter,
    conn: u64,
    session: Rc<ClientSession>,
    generation: u64,
    start_seq: u64,
) {
    let mut seqs = Stream { seq: Sequencer { last: start_seq }, session: &session, generation };
    let mut batch = Vec::with_capacity(BATCH);
    let mut out = Vec::with_capacity(64 << 10);
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
                        if out.len() >= 1 << 20 {
                            if stream.write_all(&out).await.is_err() {
                                break 'outer;
                            }
                            out.clear();
                        }
                    }
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
