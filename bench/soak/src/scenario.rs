//! The run: the fake Discord in this process, the proxy as a child, one
//! client per shard; warm-up, the faulted phase, the drain; what /proc says
//! about the proxy along the way. Every wait is bounded.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fake_discord::{FakeConfig, FakeDiscord};
use tokio::sync::watch;

use crate::args::Args;
use crate::client::{self, ClientReport, ClientSpec, Control, Progress};
use crate::driver::{self, DriverReport, DriverSpec};
use crate::ledger::Ledger;
use crate::proxy::{self, LogLine, Proxy};
use fake_discord::client_codec::Encoding;

/// Bound on the proxy connecting every shard at start.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(60);
/// Bound on every client getting READY at start.
const CLIENTS_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound on the drain: clients reconnected and caught up after the faults stop.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(60);
/// Time the proxy gets to finish closing sockets before a fd count.
const SETTLE: Duration = Duration::from_secs(2);
/// Period of the RSS and fd samples.
const SAMPLE_EVERY: Duration = Duration::from_secs(10);
/// RSS baseline of a full run: after the first 5 minutes.
const BASELINE: Duration = Duration::from_secs(5 * 60);
/// Runs at least this long keep the proxy's defaults and [`BASELINE`].
const FULL_RUN: Duration = Duration::from_secs(10 * 60);
/// The proxy's default `session_ttl`.
const DEFAULT_SESSION_TTL: Duration = Duration::from_secs(180);
/// Dispatches a shard's replay buffer keeps before its oldest session's
/// position (the proxy's `REPLAY_TAIL`, src/hub/replay.rs).
const REPLAY_TAIL: f64 = 1024.0;
/// Time the allocator gets, once the replay buffers stop growing, before
/// a short run's baseline.
const ALLOCATOR_SETTLE: Duration = Duration::from_secs(20);

/// When the RSS baseline is taken, and the `session_ttl` the proxy gets.
///
/// Every new IDENTIFY leaves a client session behind, resumable for
/// `session_ttl`, and it keeps the replay buffer from its position on
/// (plus [`REPLAY_TAIL`] dispatches): the proxy's memory only levels off
/// once sessions expire as fast as they are made, `session_ttl` + tail ÷
/// rate into the run (231 s at the defaults and 20 events/s). A full run
/// keeps the default TTL and takes the baseline at 5 minutes, as the issue
/// asks; a short one gives the proxy a TTL of a tenth of the run (at least
/// 10 s) and takes the baseline [`ALLOCATOR_SETTLE`] after the level-off
/// point, on a sample, at most three quarters into the run.
#[derive(Clone, Copy, Debug)]
pub struct MemoryPlan {
    pub baseline_at: Duration,
    /// `None`: the proxy's default.
    pub session_ttl: Option<Duration>,
    /// When the replay buffers should stop growing.
    pub level_off: Duration,
}

impl MemoryPlan {
    pub fn new(duration: Duration, rate: f64) -> Self {
        let tail = Duration::from_secs_f64(REPLAY_TAIL / rate.max(0.001));
        if duration >= FULL_RUN {
            let level_off = DEFAULT_SESSION_TTL + tail;
            return Self { baseline_at: BASELINE, session_ttl: None, level_off };
        }
        let ttl = (duration / 10).max(Duration::from_secs(10)).min(DEFAULT_SESSION_TTL);
        let level_off = ttl + tail;
        let wanted = (level_off + ALLOCATOR_SETTLE).as_secs().div_ceil(SAMPLE_EVERY.as_secs()) * SAMPLE_EVERY.as_secs();
        let baseline_at = Duration::from_secs(wanted).min(duration * 3 / 4);
        Self { baseline_at, session_ttl: Some(ttl), level_off }
    }
}

/// One /proc sample of the proxy during the faulted phase.
#[derive(Clone, Copy, Debug)]
pub struct Sample {
    /// Since the faulted phase began.
    pub at: Duration,
    pub rss_kib: u64,
    /// RssAnon (heap, stacks) and RssFile (the binary's pages) within it.
    pub anon_kib: u64,
    pub file_kib: u64,
    pub fds: usize,
    /// The proxy's own gauges at that time.
    pub gauges: proxy::Gauges,
}

/// A fd count taken with every client and shard connected: the least and
/// most of a few readings over [`SETTLE`], and what the descriptors are.
#[derive(Clone, Debug, Default)]
pub struct FdCount {
    pub min: usize,
    pub max: usize,
    pub kinds: Vec<(String, usize)>,
}

/// Upstream sessions the fake counted.
#[derive(Clone, Copy, Debug, Default)]
pub struct Upstream {
    pub identifies: u64,
    pub resumes: u64,
}

/// Everything the report needs.
pub struct Results {
    pub args: Args,
    pub guilds_per_shard: Vec<usize>,
    pub driver: DriverReport,
    pub clients: Vec<ClientReport>,
    pub ledger: Arc<Ledger>,
    pub samples: Vec<Sample>,
    /// When the RSS baseline is taken, and the proxy's `session_ttl`.
    pub memory: MemoryPlan,
    /// When the faulted phase began (the end of warm-up).
    pub faulted_from: Instant,
    /// The proxy's gauges at the end of the drain.
    pub gauges_end: proxy::Gauges,
    pub rss_start_kib: u64,
    pub rss_end_kib: u64,
    /// RssAnon and RssFile at the end.
    pub anon_end_kib: u64,
    pub file_end_kib: u64,
    pub hwm_end_kib: u64,
    pub fds_start: FdCount,
    pub fds_end: FdCount,
    /// Proxy CPU seconds (utime + stime): at the end of warm-up, at the end
    /// of the drain.
    pub cpu_start: f64,
    pub cpu_end: f64,
    pub upstream_start: Upstream,
    pub upstream_end: Upstream,
    /// Per shard: (last owed counter, last counter its client saw) when the drain ended.
    pub tail: Vec<(u64, u64)>,
    /// Whether everything was connected and caught up when the drain ended.
    pub drained: bool,
    pub drain_time: Duration,
    /// The proxy was alive when the faulted phase ended.
    pub proxy_survived: bool,
    pub proxy_stop: String,
    pub log: Vec<LogLine>,
}

impl Results {
    /// The baseline RSS sample.
    pub fn baseline(&self) -> Option<Sample> {
        self.samples.iter().find(|s| s.at + Duration::from_millis(500) >= self.memory.baseline_at).copied()
    }
}

fn fake_config(shards: u32) -> FakeConfig {
    FakeConfig { shards, guilds: 3 * shards, max_concurrency: shards, ..FakeConfig::default() }
}

/// Runs a blocking call off the runtime's workers.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.expect("a blocking task panicked")
}

async fn count_fds(pid: u32) -> FdCount {
    let mut c = FdCount { min: usize::MAX, ..FdCount::default() };
    for i in 0..5 {
        if i > 0 {
            tokio::time::sleep(SETTLE / 4).await;
        }
        let n = proxy::fd_count(pid).unwrap_or(0);
        c.min = c.min.min(n);
        c.max = c.max.max(n);
    }
    c.kinds = proxy::fd_kinds(pid);
    c
}

fn upstream(fake: &FakeDiscord) -> Upstream {
    Upstream { identifies: fake.identify_count(), resumes: fake.resume_count() }
}

/// Polls `f` every 100 ms until it holds (true) or `timeout` passes (false).
async fn wait_for(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs the whole scenario against `binary`.
pub async fn run(args: Args, binary: &Path) -> Result<Results, String> {
    let shards = args.shards;
    let fake = FakeDiscord::start(fake_config(shards)).await.map_err(|e| format!("fake discord: {e}"))?;
    let guilds: Vec<Vec<u32>> = (0..shards).map(|s| fake.generator().guilds_of_shard(s, shards)).collect();
    if let Some(s) = guilds.iter().position(Vec::is_empty) {
        return Err(format!("shard {s} has no guild in the fake's data"));
    }
    let dir = std::env::temp_dir();
    let (binary, api, token) = (binary.to_owned(), fake.api_url(), fake.token().to_owned());
    let memory = MemoryPlan::new(args.duration, args.rate);
    if let Some(ttl) = memory.session_ttl {
        eprintln!(
            "soak: a short run: the proxy gets session_ttl {ttl:?} (default 180 s); the RSS baseline is taken at {:?}",
            memory.baseline_at
        );
    }
    let ttl = memory.session_ttl.map(|t| t.as_secs());
    let mut proxy = blocking(move || Proxy::start(&binary, &dir, &api, &token, ttl)).await?;
    let pid = proxy.pid();
    eprintln!("soak: proxy pid {pid} on {}", proxy.url());

    // Warm-up: every shard connected and READY, then every client READY.
    let port = proxy.port;
    let connected = wait_for(CONNECT_TIMEOUT, || (0..shards).all(|s| fake.connected(s))).await
        && wait_for(CONNECT_TIMEOUT, || proxy::http_get(port, "/ready").is_some()).await;
    if !connected {
        let log: Vec<String> = proxy.log_lines().into_iter().map(|l| l.text).collect();
        return Err(format!("the proxy did not connect every shard:\n{}", log.join("\n")));
    }
    let ledger = Arc::new(Ledger::new(shards));
    let (no_restarts_tx, no_restarts) = watch::channel(false);
    let (shutdown_tx, shutdown) = watch::channel(false);
    let control = Control { no_restarts, shutdown };
    let mut progress = Vec::new();
    let mut handles = Vec::new();
    for shard in 0..shards {
        let spec = ClientSpec {
            url: proxy.url(),
            token: fake.token().to_owned(),
            shard,
            shards,
            encoding: Encoding::ALL[shard as usize % Encoding::ALL.len()],
            guilds: guilds[shard as usize].len(),
        };
        let p = Arc::new(Progress::default());
        progress.push(Arc::clone(&p));
        handles.push(tokio::spawn(client::run(spec, Arc::clone(&ledger), p, control.clone())));
    }
    let all_live = |progress: &[Arc<Progress>]| progress.iter().all(|p| p.live.load(Ordering::Relaxed));
    if !wait_for(CLIENTS_TIMEOUT, || all_live(&progress)).await {
        let _ = shutdown_tx.send(true);
        let reports = client::collect(handles, Duration::from_secs(5)).await;
        let problems: Vec<String> = reports
            .iter()
            .flat_map(|r| r.checker.problems.iter().map(|p| format!("shard {}: {}", p.shard, p.what)))
            .collect();
        return Err(format!("not every client got READY in {CLIENTS_TIMEOUT:?}: {}", problems.join("; ")));
    }
    tokio::time::sleep(SETTLE).await;
    let fds_start = count_fds(pid).await;
    let rss_start_kib = proxy::rss_kib(pid).unwrap_or(0);
    let cpu_start = proxy::cpu_secs(pid).unwrap_or(0.0);
    let upstream_start = upstream(&fake);
    eprintln!(
        "soak: warmed up: {shards} shards and clients connected; {} fds, RSS {} KiB; faulted phase of {:?}",
        fds_start.min, rss_start_kib, args.duration
    );

    // The faulted phase.
    let (stop_tx, stop) = watch::channel(false);
    let spec = DriverSpec { shards, rate: args.rate, drop_every: args.drop_every, guilds };
    let driver_task = tokio::spawn(driver::run(fake.clone(), Arc::clone(&ledger), spec, stop.clone()));
    let started = Instant::now();
    let sampler = tokio::spawn(sample(pid, port, stop));
    let mut proxy_survived = true;
    let mut minutes_told = 0;
    while started.elapsed() < args.duration {
        tokio::time::sleep(Duration::from_secs(1).min(args.duration.saturating_sub(started.elapsed()))).await;
        if !proxy.alive() {
            eprintln!("soak: the proxy exited during the run");
            proxy_survived = false;
            break;
        }
        let minutes = started.elapsed().as_secs() / 60;
        if minutes > minutes_told {
            minutes_told = minutes;
            let rss = proxy::rss_kib(pid).unwrap_or(0);
            eprintln!("soak: {minutes} min of {:?}: {} events injected, RSS {rss} KiB", args.duration, ledger.total());
        }
    }
    let _ = stop_tx.send(true);
    let driver = driver_task.await.map_err(|e| format!("driver: {e}"))?;
    let samples = sampler.await.unwrap_or_default();

    // Drain: no more faults or restarts; every shard and client back, and
    // every client has its shard's last owed event.
    let _ = no_restarts_tx.send(true);
    let drain_start = Instant::now();
    let caught_up = |progress: &[Arc<Progress>]| {
        progress.iter().enumerate().all(|(s, p)| p.last_n.load(Ordering::Relaxed) >= ledger.last_owed(s as u32))
    };
    let drained = proxy_survived
        && wait_for(DRAIN_TIMEOUT, || {
            (0..shards).all(|s| fake.connected(s)) && all_live(&progress) && caught_up(&progress)
        })
        .await
        && wait_for(Duration::from_secs(10), || proxy::http_get(port, "/ready").is_some()).await;
    let drain_time = drain_start.elapsed();
    tokio::time::sleep(SETTLE).await;
    let fds_end = count_fds(pid).await;
    let rss_end_kib = proxy::rss_kib(pid).unwrap_or(0);
    let hwm_end_kib = proxy::status_kib(pid, "VmHWM").unwrap_or(0);
    let anon_end_kib = proxy::status_kib(pid, "RssAnon").unwrap_or(0);
    let file_end_kib = proxy::status_kib(pid, "RssFile").unwrap_or(0);
    let cpu_end = proxy::cpu_secs(pid).unwrap_or(cpu_start);
    let upstream_end = upstream(&fake);
    let gauges_end = metrics(port).await;
    let tail = progress
        .iter()
        .enumerate()
        .map(|(s, p)| (ledger.last_owed(s as u32), p.last_n.load(Ordering::Relaxed)))
        .collect();
    let drained = drained && all_live(&progress);

    let _ = shutdown_tx.send(true);
    let mut clients = client::collect(handles, Duration::from_secs(20)).await;
    clients.sort_by_key(|c| c.shard);
    let proxy_stop = blocking(move || {
        let how = proxy.stop(Duration::from_secs(15));
        (how, proxy)
    })
    .await;
    let (proxy_stop, proxy) = proxy_stop;
    fake.shutdown();
    Ok(Results {
        memory,
        faulted_from: started,
        gauges_end,
        guilds_per_shard: (0..shards).map(|s| fake.generator().guilds_of_shard(s, shards).len()).collect(),
        args,
        driver,
        clients,
        ledger,
        samples,
        rss_start_kib,
        rss_end_kib,
        anon_end_kib,
        file_end_kib,
        hwm_end_kib,
        fds_start,
        fds_end,
        cpu_start,
        cpu_end,
        upstream_start,
        upstream_end,
        tail,
        drained,
        drain_time,
        proxy_survived,
        proxy_stop,
        log: proxy.log_lines(),
    })
}

/// The proxy's gauges (zero if `/metrics` does not answer).
async fn metrics(port: u16) -> proxy::Gauges {
    blocking(move || proxy::http_get(port, "/metrics")).await.map(|m| proxy::gauges(&m)).unwrap_or_default()
}

/// Samples the proxy's RSS, fd count and gauges every [`SAMPLE_EVERY`] until `stop`.
async fn sample(pid: u32, port: u16, mut stop: watch::Receiver<bool>) -> Vec<Sample> {
    let started = Instant::now();
    let mut out = Vec::new();
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + SAMPLE_EVERY, SAMPLE_EVERY);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let (Some(rss_kib), Some(fds)) = (proxy::rss_kib(pid), proxy::fd_count(pid)) else { break };
                let at = started.elapsed();
                let anon_kib = proxy::status_kib(pid, "RssAnon").unwrap_or(0);
                let file_kib = proxy::status_kib(pid, "RssFile").unwrap_or(0);
                out.push(Sample { at, rss_kib, anon_kib, file_kib, fds, gauges: metrics(port).await });
            }
            () = crate::args::raised(&mut stop) => break,
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_plans() {
        let full = MemoryPlan::new(Duration::from_secs(30 * 60), 20.0);
        assert_eq!((full.baseline_at, full.session_ttl), (BASELINE, None));
        assert!(full.level_off < full.baseline_at);
        let quick = MemoryPlan::new(Duration::from_secs(120), 20.0);
        assert_eq!(quick.session_ttl, Some(Duration::from_secs(12)));
        assert_eq!(quick.baseline_at, Duration::from_secs(90));
        let five = MemoryPlan::new(Duration::from_secs(300), 20.0);
        assert_eq!((five.session_ttl, five.baseline_at), (Some(Duration::from_secs(30)), Duration::from_secs(110)));
    }
}
