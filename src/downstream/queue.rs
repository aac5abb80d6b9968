//! A client's outgoing queue: bounded, single-threaded, drained in batches
//! by the client's writer so one socket write carries many messages.

use super::outgoing::Outgoing;
use std::{
    cell::RefCell,
    collections::VecDeque,
    future::poll_fn,
    os::fd::RawFd,
    rc::Rc,
    task::{Poll, Waker},
    time::Duration,
};

/// Queue slots kept once the queue has drained; a larger queue is given back.
const SHRINK_ABOVE: usize = 1024;
/// Small batches in a row after which a larger queue is given back.
const SMALL_POPS: u32 = 64;
/// How long a writer may take to deliver an abort's close frame before the socket is shut.
const ABORT_GRACE: Duration = Duration::from_secs(5);

/// Why an item was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushError {
    /// The client is `backpressure` messages behind.
    Full,
    /// The connection is gone.
    Closed,
}

struct Inner {
    items: VecDeque<Outgoing>,
    capacity: usize,
    waker: Option<Waker>,
    closed: bool,
    high_water: usize,
    abort: Option<(u16, String)>,
    finished: bool,
    /// Batches in a row that took only a few items.
    small_pops: u32,
}

/// The queue between a shard (and the client's reader) and the client's writer.
pub struct ClientQueue {
    inner: RefCell<Inner>,
}

impl ClientQueue {
    /// A queue holding at most `capacity` items.
    pub fn new(capacity: usize) -> Self {
        Self {
            inner: RefCell::new(Inner {
                items: VecDeque::new(),
                capacity: capacity.max(1),
                waker: None,
                closed: false,
                high_water: 0,
                abort: None,
                finished: false,
                small_pops: 0,
            }),
        }
    }

    /// Queues an item, failing when full or closed.
    pub fn push(&self, item: Outgoing) -> Result<(), PushError> {
        let mut inner = self.inner.borrow_mut();
        if inner.closed {
            return Err(PushError::Closed);
        }
        if inner.items.len() >= inner.capacity {
            return Err(PushError::Full);
        }
        inner.items.push_back(item);
        inner.high_water = inner.high_water.max(inner.items.len());
        if let Some(w) = inner.waker.take() {
            w.wake();
        }
        Ok(())
    }

    /// Whether the writer is parked on an empty, open queue: everything it
    /// was given has been encoded (and its position recorded).
    pub fn writer_waiting(&self) -> bool {
        let inner = self.inner.borrow();
        inner.waker.is_some() && inner.items.is_empty() && !inner.closed
    }

    /// Closes the queue: the writer ends once it has drained what is queued.
    pub fn close(&self) {
        let mut inner = self.inner.borrow_mut();
        inner.closed = true;
        if let Some(w) = inner.waker.take() {
            w.wake();
        }
    }

    /// Drops what is queued and makes the writer send a close frame with
    /// `code` next. If the writer is stuck on a socket that does not drain,
    /// the socket is shut down after a grace period.
    pub fn abort(self: &Rc<Self>, code: u16, reason: &str, fd: RawFd) {
        {
            let mut inner = self.inner.borrow_mut();
            inner.items.clear();
            inner.abort = Some((code, reason.to_owned()));
            inner.closed = true;
            if let Some(w) = inner.waker.take() {
                w.wake();
            }
        }
        let queue = self.clone();
        glommio::spawn_local(async move {
            glommio::timer::sleep(ABORT_GRACE).await;
            if !queue.inner.borrow().finished {
                // SAFETY: shutdown on the client's socket, still open while its writer runs.
                unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
            }
        })
        .detach();
    }

    /// Marks the writer as done with the socket.
    pub fn set_finished(&self) {
        self.inner.borrow_mut().finished = true;
    }

    /// Whether the queue was closed.
    pub fn is_closed(&self) -> bool {
        self.inner.borrow().closed
    }

    /// Items waiting.
    pub fn len(&self) -> usize {
        self.inner.borrow().items.len()
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The most items ever waiting at once.
    pub fn high_water(&self) -> usize {
        self.inner.borrow().high_water
    }

    /// Waits for items and moves up to `max` of them into `batch`; returns
    /// false once the queue is closed and empty.
    pub async fn pop_batch(&self, batch: &mut Vec<Outgoing>, max: usize) -> bool {
        poll_fn(|cx| {
            let mut inner = self.inner.borrow_mut();
            if let Some((code, reason)) = inner.abort.take() {
                batch.push(Outgoing::Close(code, reason));
                return Poll::Ready(true);
            }
            if inner.items.is_empty() {
                if inner.closed {
                    return Poll::Ready(false);
                }
                inner.waker = Some(cx.waker().clone());
                return Poll::Pending;
            }
            let n = inner.items.len().min(max);
            batch.extend(inner.items.drain(..n));
            // A burst's backlog is not kept for the connection's life: once
            // items have come a few at a time for a while, the slots go.
            inner.small_pops = if n < 16 { inner.small_pops.saturating_add(1) } else { 0 };
            if inner.small_pops >= SMALL_POPS && inner.items.is_empty() && inner.items.capacity() > SHRINK_ABOVE {
                inner.items = VecDeque::new();
            }
            Poll::Ready(true)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_and_drains_in_batches() {
        let q = ClientQueue::new(2);
        q.push(Outgoing::Payload(vec![1])).unwrap();
        q.push(Outgoing::Payload(vec![2])).unwrap();
        assert_eq!(q.push(Outgoing::Payload(vec![3])), Err(PushError::Full));
        let mut batch = Vec::new();
        assert!(futures_lite::future::block_on(q.pop_batch(&mut batch, 10)));
        assert_eq!(batch.len(), 2);
        q.close();
        assert_eq!(q.push(Outgoing::Payload(vec![4])), Err(PushError::Closed));
        assert!(!futures_lite::future::block_on(q.pop_batch(&mut batch, 10)));
        assert_eq!(q.high_water(), 2);
    }
}
