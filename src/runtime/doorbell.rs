//! A wake-up between tasks of one core: one side rings, the other awaits
//! the ring. Used where a task would otherwise wake periodically to look
//! for work (session expiry), so that an idle core stays asleep.

use std::{
    cell::{Cell, RefCell},
    future::poll_fn,
    task::{Poll, Waker},
};

/// Rings are remembered until awaited, so none is lost between two waits.
#[derive(Default)]
pub struct Doorbell {
    rung: Cell<bool>,
    waker: RefCell<Option<Waker>>,
}

impl Doorbell {
    /// Wakes the task waiting in [`Doorbell::wait`], or the next one to wait.
    pub fn ring(&self) {
        self.rung.set(true);
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }

    /// Whether the bell rang since the last wait, clearing it: for a task
    /// that is busy and looks between two pieces of work.
    pub fn take_ring(&self) -> bool {
        self.rung.replace(false)
    }

    /// Resolves once the bell has rung since the last wait.
    pub async fn wait(&self) {
        poll_fn(|cx| {
            if self.rung.replace(false) {
                return Poll::Ready(());
            }
            *self.waker.borrow_mut() = Some(cx.waker().clone());
            Poll::Pending
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ring_before_the_wait_is_kept() {
        let bell = Doorbell::default();
        bell.ring();
        futures_lite::future::block_on(bell.wait());
        assert!(futures_lite::future::block_on(futures_lite::future::poll_once(bell.wait())).is_none());
    }
}
