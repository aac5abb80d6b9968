//! Identify pacing shared by every shard of the process, and by every
//! proxy of the bot when a coordinator is configured (`identify_queue`).
//!
//! Discord allows one Identify per bucket (`shard % max_concurrency`) every
//! 5 seconds and `remaining` per day. Shards of one bucket live on different
//! cores, so the pacing lives on helper threads outside glommio; executors
//! ask through a crossbeam channel (a non-blocking send) and await a futures
//! oneshot, which wakes the glommio task from the helper thread. Locally one
//! thread paces every bucket; with a coordinator (`coordinator.rs`) each
//! bucket with shards waiting has its own thread, since the coordinator's
//! calls block (a gateway-queue request is held open until the turn comes).

use super::coordinator::{Coordinator, Turn};
use crate::config::IdentifyQueueConfig;
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use futures_channel::oneshot;
use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

/// Minimum spacing between two Identifies of one bucket.
pub const BUCKET_INTERVAL: Duration = Duration::from_secs(5);
/// Longest wait between two attempts while a coordinator is unreachable.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

struct Request {
    shard: u32,
    grant: oneshot::Sender<()>,
}

/// Handle executors use to wait for their turn to Identify.
#[derive(Clone)]
pub struct IdentifyQueue {
    tx: Sender<Request>,
    /// Why the coordinator cannot be reached, while it cannot.
    outage: Arc<Mutex<Option<String>>>,
}

/// The daily identify budget, shared by the threads that grant turns.
struct Daily {
    remaining: u32,
    reset_at: Instant,
}

impl Daily {
    /// How long until a turn may be granted (zero: now).
    fn wait(&mut self) -> Duration {
        let now = Instant::now();
        if now >= self.reset_at {
            self.remaining = self.remaining.max(1000);
            self.reset_at = now + Duration::from_secs(86_400);
        }
        if self.remaining == 0 {
            self.reset_at - now
        } else {
            Duration::ZERO
        }
    }

    fn take(&mut self) {
        self.remaining = self.remaining.saturating_sub(1);
        if self.remaining < 10 {
            log::warn!("only {} identifies left until the daily limit resets", self.remaining);
        }
    }
}

impl IdentifyQueue {
    /// Starts pacing as `config` says: locally, or through a coordinator
    /// shared with the bot's other proxies (`bot_id` names its default Redis prefix).
    pub fn start(
        config: &IdentifyQueueConfig,
        bot_id: Option<u64>,
        max_concurrency: u32,
        remaining: u32,
        reset_after: Duration,
    ) -> Result<Self, String> {
        let (tx, rx) = crossbeam_channel::unbounded();
        let max_concurrency = max_concurrency.max(1);
        let outage = Arc::new(Mutex::new(None));
        let daily = Daily { remaining, reset_at: Instant::now() + reset_after };
        let spawn = |name: &str, f: Box<dyn FnOnce() + Send>| {
            std::thread::Builder::new()
                .name(name.into())
                .spawn(f)
                .map_err(|e| format!("cannot start the {name} thread: {e}"))
        };
        match config {
            IdentifyQueueConfig::Local => {
                spawn("identify-queue", Box::new(move || run(rx, max_concurrency, daily)))?;
            }
            IdentifyQueueConfig::Redis { url, prefix } => {
                let prefix = prefix.clone().unwrap_or_else(|| super::coordinator::default_prefix(bot_id));
                // Checked now, so a wrong URL stops the proxy with a clear message.
                super::coordinator::RedisTurns::new(url, &prefix, 0)?;
                log::info!("identify turns from Redis at {url}, keys `{prefix}:identify:<bucket>`");
                let url = url.clone();
                let factory: Factory = Box::new(move |bucket| {
                    super::coordinator::RedisTurns::new(&url, &prefix, bucket)
                        .map(|c| Box::new(c) as Box<dyn Coordinator>)
                        .expect("the URL was checked at start")
                });
                let outage = outage.clone();
                spawn(
                    "identify-queue",
                    Box::new(move || run_coordinated(rx, max_concurrency, factory, daily, outage)),
                )?;
            }
            IdentifyQueueConfig::Http { url } => {
                log::info!("identify turns from the gateway-queue at {url}");
                let url = url.clone();
                let factory: Factory = Box::new(move |_| {
                    Box::new(super::coordinator::GatewayQueueTurns::new(&url)) as Box<dyn Coordinator>
                });
                let outage = outage.clone();
                spawn(
                    "identify-queue",
                    Box::new(move || run_coordinated(rx, max_concurrency, factory, daily, outage)),
                )?;
            }
        }
        Ok(Self { tx, outage })
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

    /// Why the identify coordinator cannot be reached, while it cannot.
    pub fn outage(&self) -> Option<String> {
        lock(&self.outage).clone()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Makes the coordinator connection of a bucket's thread.
type Factory = Box<dyn Fn(u32) -> Box<dyn Coordinator> + Send>;

/// Routes each request to its bucket's thread, started on first use.
fn run_coordinated(
    rx: Receiver<Request>,
    max_concurrency: u32,
    factory: Factory,
    daily: Daily,
    outage: Arc<Mutex<Option<String>>>,
) {
    let daily = Arc::new(Mutex::new(daily));
    let mut buckets: HashMap<u32, Sender<Request>> = HashMap::new();
    for req in rx {
        let bucket = req.shard % max_concurrency;
        let worker = buckets.entry(bucket).or_insert_with(|| {
            let (tx, rx) = crossbeam_channel::unbounded();
            let coordinator = factory(bucket);
            let (daily, outage) = (daily.clone(), outage.clone());
            let started = std::thread::Builder::new()
                .name(format!("identify-{bucket}"))
                .spawn(move || serve_bucket(rx, coordinator, daily, outage));
            if let Err(e) = started {
                log::error!("cannot start the identify thread of bucket {bucket}: {e}");
            }
            tx
        });
        let _ = worker.send(req);
    }
}

/// Grants the turns of one bucket's shards, in order, as the coordinator allows.
fn serve_bucket(
    rx: Receiver<Request>,
    mut coordinator: Box<dyn Coordinator>,
    daily: Arc<Mutex<Daily>>,
    outage: Arc<Mutex<Option<String>>>,
) {
    let mut backoff = Duration::from_millis(500);
    for req in rx {
        loop {
            if req.grant.is_canceled() {
                break;
            }
            let wait = lock(&daily).wait();
            if !wait.is_zero() {
                std::thread::sleep(wait.min(Duration::from_secs(60)));
                continue;
            }
            let turn = coordinator.try_turn(req.shard);
            if !matches!(turn, Turn::Unavailable(_)) {
                let mut o = lock(&outage);
                if o.take().is_some() {
                    log::info!("the identify coordinator answers again; shards identify again");
                }
                backoff = Duration::from_millis(500);
            }
            match turn {
                Turn::Granted => {
                    lock(&daily).take();
                    log::debug!("identify turn granted to shard {}", req.shard);
                    let _ = req.grant.send(());
                    break;
                }
                Turn::Wait(d) => std::thread::sleep(d),
                Turn::Unavailable(why) => {
                    let mut o = lock(&outage);
                    if o.is_none() {
                        log::warn!(
                            "the identify coordinator cannot be reached ({why}): no shard identifies until it \
                             answers (connected shards keep running, resumes do not wait); retrying"
                        );
                    }
                    *o = Some(why);
                    drop(o);
                    std::thread::sleep(backoff.mul_f64(0.5 + fastrand::f64() * 0.5));
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }
}

fn run(rx: Receiver<Request>, max_concurrency: u32, mut daily: Daily) {
    let mut buckets: Vec<(Option<Instant>, VecDeque<Request>)> =
        (0..max_concurrency).map(|_| (None, VecDeque::new())).collect();
    loop {
        let now = Instant::now();
        let mut next_due: Option<Instant> = None;
        for (last, queue) in &mut buckets {
            while let Some(req) = queue.front() {
                if req.grant.is_canceled() {
                    queue.pop_front();
                    continue;
                }
                let due = last.map_or(now, |t| t + BUCKET_INTERVAL);
                let daily_wait = daily.wait();
                if !daily_wait.is_zero() {
                    let at = now + daily_wait;
                    next_due = Some(next_due.map_or(at, |d| d.min(at)));
                    break;
                }
                if due <= now {
                    let req = queue.pop_front().expect("front exists");
                    *last = Some(now);
                    daily.take();
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
        let q = IdentifyQueue::start(&IdentifyQueueConfig::Local, None, 2, 100, Duration::from_secs(3600)).unwrap();
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
