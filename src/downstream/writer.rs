//! A client's writer task: drains the client's queue in batches, splices
//! the client's own sequence numbers into shared dispatches, frames
//! (and compresses) them, and writes each batch with one socket write.

use super::{frames::FrameWriter, outgoing::Outgoing, queue::ClientQueue};
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

fn encode_dispatch(d: &Dispatch, seq: &mut Sequencer, frames: &mut FrameWriter, out: &mut Vec<u8>) {
    let n = seq.advance();
    let mut digits = itoa::Buffer::new();
    frames.message(&[d.head(), digits.format(n).as_bytes(), d.tail()], out);
}

/// Runs until the queue is closed and drained, a close was sent, or the socket fails.
pub async fn run(queue: Rc<ClientQueue>, mut stream: TcpStream, mut frames: FrameWriter, conn: u64) {
    let mut seq = Sequencer::default();
    let mut batch = Vec::with_capacity(BATCH);
    let mut out = Vec::with_capacity(64 << 10);
    let fd = stream.as_raw_fd();
    'outer: while queue.pop_batch(&mut batch, BATCH).await {
        out.clear();
        let mut closing = false;
        for item in batch.drain(..) {
            match item {
                Outgoing::Dispatch(d) => encode_dispatch(&d, &mut seq, &mut frames, &mut out),
                Outgoing::Snapshot(list) => {
                    for d in &list {
                        encode_dispatch(d, &mut seq, &mut frames, &mut out);
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
    // Wakes the reader (which holds its own descriptor of this socket).
    // SAFETY: shutdown on our own open descriptor.
    unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
}
