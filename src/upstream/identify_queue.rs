//! Identify pacing shared by every shard of the process.
//!
//! Discord allows one Identify per bucket (`shard % max_concurrency`) every
//! 5 seconds and `remaining` per day. Shards of one bucket live on different
//! cores, so the pacing lives on one helper thread outside glommio; executors
//! ask through a crossbeam channel (a non-blocking send) and await a futures
//! oneshot, which wakes the glommio task from the helper thread.

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use futures_channel::oneshot;
use std::{
    collections::VecDeque,
    time::{Duration, Instant},
};

/// Minimum spacing between two Identifies of one bucket.
pub const BUCKET_INTERVAL: Duration = Duration::from_secs(5);

struct Request {
    shard: u32,
    grant: oneshot::Sender<()>,
}

/// Handle executors use to wait for their turn to Identify.
#[derive(Clone)]
pub struct IdentifyQueue {
    tx: Sender<Request>,
}

impl IdentifyQueue {
    /// Starts the pacing thread.
    pub fn start(max_concurrency: u32, remaining: u32, reset_after: Duration) -> Self {
        let (tx, rx) = crossbeam_channel::unbounded();
        let max_concurrency = max_concurrency.max(1);
        std::thread::Builder::new()
            .name("identify-queue".into())
            .spawn(move || run(rx, max_concurrency, remaining, reset_after))
            .expect("spawning the identify queue thread");
        Self { tx }
    }

    /// Resolves when `shard` may send its Identify.
    pub async fn wait_turn(&self, shard: u32) {
        let (grant, granted) = oneshot::channel();
        if self.tx.send(Request { shard, grant }).is_err() {
            return;
        }
        // The grant wakes this task from another thread (see runtime::offload).
        let _ = crate::runtime::offload::recv_across_threads(granted).await;
    }
}

fn run(rx: Receiver<Request>, max_concurrency: u32, mut remaining: u32, reset_after: Duration) {
    let mut buckets: Vec<(Option<Instant>, VecDeque<Request>)> =
        (0..max_concurrency).map(|_| (None, VecDeque::new())).collect();
    let mut reset_at = Instant::now() + reset_after;
    loop {
        let now = Instant::now();
        if now >= reset_at {
            remaining = remaining.max(1000);
            reset_at = now + Duration::from_secs(86_400);
        }
        let mut next_due: Option<Instant> = None;
        for (last, queue) in &mut buckets {
            while let Some(req) = queue.front() {
                if req.grant.is_canceled() {
                    queue.pop_front();
                    continue;
                }
                let due = last.map_or(now, |t| t + BUCKET_INTERVAL);
                if remaining == 0 {
                    next_due = Some(next_due.map_or(reset_at, |d| d.min(reset_at)));
                    break;
                }
                if due <= now {
                    let req = queue.pop_front().expect("front exists");
                    *last = Some(now);
                    remaining -= 1;
                    if remaining < 10 {
                        log::warn!("only {remaining} identifies left until the daily limit resets");
                    }
                    log::debug!("identify turn granted to shard {}", req.shard);
                    let _ = req.grant.send(());
                } else {
                    next_due = Some(next_due.map_or(due, |d| d.min(due)));
                    break;
                }
            }
        }
        let req = match next_due {
            Some(due) => match rx.recv_timeout(due.saturating_duration_since(Instant::now())) {
                Ok(req) => req,
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => return,
            },
            None => match rx.recv() {
                Ok(req) => req,
                Err(_) => return,
            },
        };
        let bucket = (req.shard % max_concurrency) as usize;
        buckets[bucket].1.push_back(req);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paces_per_bucket() {
        let q = IdentifyQueue::start(2, 100, Duration::from_secs(3600));
        let start = Instant::now();
        let times: Vec<Duration> = glommio::LocalExecutor::default().run(async {
            let mut times = Vec::new();
            for s in [0u32, 1, 2] {
                q.wait_turn(s).await;
                times.push(start.elapsed());
            }
            times
        });
        // shards 0 and 1 are in different buckets: both at once; shard 2 shares bucket 0.
        assert!(times[1] < Duration::from_secs(1), "{times:?}");
        assert!(times[2] >= Duration::from_millis(4900), "{times:?}");
    }
}
