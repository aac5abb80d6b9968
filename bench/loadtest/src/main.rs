//! `loadtest`: the benchmark suite of gateway-proxy (issue 5, and the memory
//! and READY rows of issue 3).
//!
//! Starts the fake Discord in this process in firehose mode, the real
//! `gateway-proxy` binary as a child process against it, and fast websocket
//! consumers in this process; measures relay rate, proxy CPU (from
//! /proc/PID), latency, RSS, and the same straight from the fake as a
//! baseline. Prints a table; asserts nothing. Loopback only; every wait is
//! bounded and the tool stops by itself.

mod consumer;
mod proxy;
mod report;
mod syscalls;
mod trickle;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use consumer::{Compress, End, Endpoint, Outcome, Signals, Spec};
use fake_discord::{FakeConfig, FakeDiscord, FirehoseMix, FirehoseSpec};
use futures_util::future::join_all;
use proxy::{Cpu, Proxy, ProxySettings};
use serde_json::json;
use tokio::sync::{oneshot, watch};

const USAGE: &str = "\
usage: cargo run --release -p loadtest -- [options]

  --quick            1 run with smaller counts (well under a minute)
  --runs N           repetitions of every measurement (default 3; medians reported)
  --burst N          events per unthrottled burst, over all shards (default 200000)
  --latency-events N events per latency run at 1000/s (default 10000)
  --no-cache-rows    skip the issue-3 rows (2,000 guilds x 200 members)
  --cache-only       only the issue-3 rows
  --latency-only     only the latency runs (for profiling)
  --burst-only       only the 1 KB plain burst with one client per shard (for profiling)
  --fanout-only      only the 1 KB plain bursts with 1 and 16 clients per shard (fan-out ratio)
  --trickle-only     only the trickle rows (many shards, events one by one, idle, long run)
  --no-trickle       skip the trickle rows
  --trickle-secs N   seconds per trickle run (default 20)
  --idle-secs N      seconds of the idle trickle row (default 30)
  --long-secs N      seconds of the long trickle row, 128 shards at 4000/s (default 300; 0 skips it)
  --heartbeat-ms N   heartbeat interval the trickle rows' fake asks for (default 41250, Discord's)
  --cache-guilds N   guilds of the issue-3 rows (default 2000)
  --proxy-intents N  intents the proxy identifies with (default 513: GUILDS | GUILD_MESSAGES)
  --client-intents N intents every consumer identifies with (default 513; fewer than the
                     proxy's makes the proxy filter each event per client)
  --upstream-compression none|zlib-stream|zstd-stream
                     transport compression the proxy asks of the fake (default: the proxy's, none)
  --proxy PATH       proxy binary to test (default target/release/gateway-proxy)
  --no-build         do not run `cargo build --release -p gateway-proxy` first
  -h, --help         this help
";

/// Shards of every scenario.
const SHARDS: u32 = 4;
/// Guilds of the one-shard cache rows (Discord's most per shard).
pub const BIG_SHARD_GUILDS: u32 = 2_500;
/// Repetitions of a run during which other processes were busy.
const MAX_RETRIES: usize = 2;
/// How long consumers get to stop once told to.
const STOP_GRACE: Duration = Duration::from_secs(30);
/// `backpressure` of the rate/CPU/latency proxies: more than any burst.
pub const RAISED_BACKPRESSURE: usize = 1_000_000;
/// Latency runs: total rate over all shards.
const LATENCY_RATE: f64 = 1000.0;

#[derive(Clone, Debug)]
struct Args {
    quick: bool,
    runs: usize,
    burst: u64,
    latency_events: u64,
    cache_rows: bool,
    cache_only: bool,
    latency_only: bool,
    burst_only: bool,
    fanout_only: bool,
    cache_guilds: u32,
    cache_members: u32,
    proxy: Option<PathBuf>,
    build: bool,
    trickle: bool,
    trickle_only: bool,
    trickle_secs: f64,
    idle_secs: u64,
    long_secs: u64,
    heartbeat_ms: u64,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        quick: false,
        runs: 3,
        burst: 200_000,
        latency_events: 10_000,
        cache_rows: true,
        cache_only: false,
        latency_only: false,
        burst_only: false,
        fanout_only: false,
        cache_guilds: 2_000,
        cache_members: 200,
        proxy: None,
        build: true,
        trickle: true,
        trickle_only: false,
        trickle_secs: 20.0,
        idle_secs: 30,
        long_secs: 300,
        heartbeat_ms: 41_250,
    };
    let (mut runs, mut burst, mut lat, mut guilds) = (None, None, None, None);
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut num = |name: &str| -> Result<u64, String> {
            it.next().and_then(|v| v.parse().ok()).ok_or_else(|| format!("{name} needs a number"))
        };
        match flag.as_str() {
            "--quick" => a.quick = true,
            "--runs" => runs = Some(num("--runs")?.clamp(1, 20) as usize),
            "--burst" => burst = Some(num("--burst")?.clamp(SHARDS.into(), 10_000_000)),
            "--latency-events" => lat = Some(num("--latency-events")?.clamp(SHARDS.into(), 1_000_000)),
            "--no-cache-rows" => a.cache_rows = false,
            "--cache-only" => a.cache_only = true,
            "--burst-only" => {
                a.burst_only = true;
                a.cache_rows = false;
            }
            "--fanout-only" => {
                a.fanout_only = true;
                a.cache_rows = false;
            }
            "--latency-only" => {
                a.latency_only = true;
                a.cache_rows = false;
            }
            "--trickle-only" => {
                a.trickle_only = true;
                a.cache_rows = false;
            }
            "--no-trickle" => a.trickle = false,
            "--trickle-secs" => a.trickle_secs = num("--trickle-secs")?.clamp(1, 3600) as f64,
            "--idle-secs" => a.idle_secs = num("--idle-secs")?.clamp(1, 3600),
            "--long-secs" => a.long_secs = num("--long-secs")?.min(24 * 3600),
            "--heartbeat-ms" => a.heartbeat_ms = num("--heartbeat-ms")?.clamp(100, 600_000),
            "--cache-guilds" => guilds = Some(num("--cache-guilds")?.clamp(1, 20_000) as u32),
            "--no-build" => a.build = false,
            "--proxy-intents" => proxy::set_intents(num("--proxy-intents")?),
            "--client-intents" => consumer::set_intents(num("--client-intents")?),
            "--upstream-compression" => {
                proxy::set_upstream_compression(&it.next().ok_or("--upstream-compression needs a value")?)
            }
            "--proxy" => {
                a.proxy = Some(it.next().map(PathBuf::from).ok_or("--proxy needs a path")?);
                a.build = false;
            }
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if a.quick {
        a.runs = 1;
        a.burst = 40_000;
        a.latency_events = 2_000;
        a.trickle_secs = 5.0;
        a.idle_secs = 5;
        a.long_secs = 0;
    }
    if a.burst_only || a.fanout_only || a.latency_only || a.cache_only {
        a.trickle = false;
    }
    a.runs = runs.unwrap_or(a.runs);
    a.burst = burst.unwrap_or(a.burst);
    a.latency_events = lat.unwrap_or(a.latency_events);
    a.cache_guilds = guilds.unwrap_or(a.cache_guilds);
    Ok(a)
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap_or_else(|_| PathBuf::from("."))
}

fn build_proxy(root: &Path) -> Result<(), String> {
    eprintln!("loadtest: cargo build --release -p gateway-proxy");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = std::process::Command::new(cargo)
        .args(["build", "--release", "-p", "gateway-proxy", "--bin", "gateway-proxy"])
        .current_dir(root)
        .status()
        .map_err(|e| format!("running cargo: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("cargo build --release -p gateway-proxy failed ({status})"))
    }
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("loadtest: {e}");
            }
            eprint!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    let root = workspace_root();
    if args.build {
        if let Err(e) = build_proxy(&root) {
            eprintln!("loadtest: {e}");
            return ExitCode::FAILURE;
        }
    }
    let binary = args.proxy.clone().unwrap_or_else(|| {
        let target = std::env::var("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|_| root.join("target"));
        target.join("release/gateway-proxy")
    });
    if !binary.is_file() {
        eprintln!("loadtest: {} not found; build it with `cargo build --release -p gateway-proxy`", binary.display());
        return ExitCode::FAILURE;
    }
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    let rt = match tokio::runtime::Builder::new_multi_thread().worker_threads(workers).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("loadtest: tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(run(args, root, binary));
    rt.shutdown_timeout(Duration::from_secs(2));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("loadtest: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Where consumers connect, and what feeds it.
struct Target {
    name: String,
    fake: FakeDiscord,
    endpoint: Endpoint,
    proxy: Option<Proxy>,
}

/// One load run.
#[derive(Clone, Copy, Debug)]
struct Load {
    clients_per_shard: u32,
    compress: Compress,
    mix: FirehoseMix,
    /// Firehose dispatches per shard (0: only connect and sync).
    per_shard: u64,
    /// Dispatches per second per shard; `None`: unthrottled.
    rate: Option<f64>,
    record_latency: bool,
    timeout: Duration,
    /// Start each shard's firehose a fraction of its interval after the previous one.
    stagger: bool,
    /// Measure an idle window of this length (consumers attached, nothing sent) instead of the firehose.
    idle: Option<Duration>,
    /// Count the proxy's syscalls over the window (perf; adds a little overhead to each syscall).
    count_syscalls: bool,
}

/// What one run measured.
#[derive(Clone, Debug, Default)]
pub struct RunResult {
    /// Dispatches sent by the fake, all shards.
    pub events: u64,
    /// Dispatches the consumers should have received (events x clients).
    pub expected: u64,
    /// Firehose dispatches the consumers received.
    pub got: u64,
    pub seq_errors: u64,
    /// Consumers that lost their connection, with why.
    pub lost_conns: Vec<String>,
    /// From starting the firehoses to the last dispatch received.
    pub elapsed: Duration,
    /// Proxy CPU seconds over the run.
    pub proxy_cpu: Option<f64>,
    /// This process's CPU seconds (fake + consumers) over the run.
    pub loadgen_cpu: f64,
    /// CPU seconds used by everything else on the machine over the run
    /// (user + system + steal, all CPUs, minus the proxy and this process).
    pub other_cpu: f64,
    /// The span over which CPU was measured (firehose start to the last
    /// consumer done).
    pub window: Duration,
    pub rss_kib: u64,
    pub hwm_kib: u64,
    /// The proxy's RSS at the end of the measured window (consumers still attached).
    pub window_rss_kib: u64,
    /// One-way latencies in ns, all consumers.
    pub latencies: Vec<u64>,
    /// Websocket payload bytes the consumers received (compressed if so).
    pub wire_bytes: u64,
    /// Resumes after the server closed a consumer (e.g. 4000 for falling behind).
    pub resumes: u64,
    /// Proxy threads' context switches over the window (each a sleep and a wake-up).
    pub wakeups: Option<u64>,
    /// The proxy's syscalls over the window, when counted.
    pub syscalls: Option<syscalls::Counts>,
    /// IDENTIFYs and RESUMEs the fake received during the run.
    pub upstream_sessions: u64,
    /// Proxy log lines about a zombied upstream connection during the run.
    pub zombied: u64,
    /// Why consumers were closed before they resumed (first few).
    pub disconnects: Vec<String>,
}

impl RunResult {
    /// Every consumer got every dispatch, with seq +1, on its first
    /// connection or after resuming.
    pub fn complete(&self) -> bool {
        self.got == self.expected && self.lost_conns.is_empty() && self.seq_errors == 0
    }

    pub fn rate(&self) -> f64 {
        self.events as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Other processes' CPU as a percentage of one CPU over the run.
    pub fn other_pct(&self) -> f64 {
        self.other_cpu / self.window.as_secs_f64().max(1e-9) * 100.0
    }

    /// Whether other processes took more than 30% of a CPU during the run
    /// (beyond the clock-tick resolution of /proc/stat).
    pub fn noisy(&self) -> bool {
        self.other_cpu > 0.3 * self.window.as_secs_f64() + 0.03
    }
}

static MARKERS: AtomicU64 = AtomicU64::new(0);

/// Machine-wide CPU (all CPUs) in seconds from /proc/stat: user, nice,
/// system and steal (interrupt time is left out: loopback traffic's softirq
/// time is charged to no process).
fn machine_busy_secs() -> f64 {
    let Ok(text) = std::fs::read_to_string("/proc/stat") else { return 0.0 };
    let Some(line) = text.lines().next() else { return 0.0 };
    let v: Vec<u64> = line.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal
    let busy = [0, 1, 2, 7].iter().filter_map(|i| v.get(*i)).sum::<u64>();
    busy as f64 / proxy::clock_ticks() as f64
}

fn self_cpu() -> Cpu {
    proxy::cpu_of(std::process::id())
}

fn marker_payload(fake: &FakeDiscord, shard: u32, shards: u32, tag: &str) -> serde_json::Value {
    let guild = fake.guild_ids_for_shard(shard, shards).first().copied().unwrap_or(1);
    json!({
        "user_id": fake.bot_user_id().to_string(),
        "timestamp": 0,
        "channel_id": "1",
        "guild_id": guild.to_string(),
        "loadtest_marker": tag,
    })
}

/// Connects `clients_per_shard` consumers per shard, waits until all are
/// subscribed and have seen a marker, starts a firehose on every shard and
/// waits (bounded) until every consumer has it all.
async fn run_load(target: &Target, load: Load) -> Result<RunResult, String> {
    let tag = format!("loadtest-marker-{}", MARKERS.fetch_add(1, Ordering::Relaxed));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut readies = Vec::new();
    let mut marks = Vec::new();
    let mut handles = Vec::new();
    let shards = target.endpoint.shards;
    for shard in 0..shards {
        for _ in 0..load.clients_per_shard {
            let (ready, ready_rx) = oneshot::channel();
            let (marked, marked_rx) = oneshot::channel();
            let spec = Spec {
                endpoint: target.endpoint.clone(),
                shard,
                compress: load.compress,
                marker: Some(tag.clone()),
                expect: load.per_shard,
                snapshot_guilds: 0,
                record_latency: load.record_latency,
            };
            readies.push(ready_rx);
            marks.push(marked_rx);
            handles.push(tokio::spawn(consumer::run(spec, Signals { ready, marked }, stop_rx.clone())));
        }
    }
    let fail = |what: &str, outcomes: Vec<Outcome>| {
        let why: Vec<String> = outcomes
            .into_iter()
            .filter_map(|o| match o.end {
                End::Lost(w) => Some(w),
                _ => None,
            })
            .take(3)
            .collect();
        format!("{}: {what} ({})", target.name, why.join("; "))
    };
    let setup = Duration::from_secs(60);
    let ok = tokio::time::timeout(setup, join_all(readies)).await.is_ok_and(|r| r.iter().all(Result::is_ok));
    if !ok {
        let _ = stop_tx.send(true);
        return Err(fail("consumers did not all get READY", collect(handles, STOP_GRACE).await));
    }
    for shard in 0..shards {
        if target.fake.inject(shard, "TYPING_START", marker_payload(&target.fake, shard, shards, &tag)).is_none() {
            let _ = stop_tx.send(true);
            return Err(fail(&format!("shard {shard} has no session at the fake"), collect(handles, STOP_GRACE).await));
        }
    }
    let ok = tokio::time::timeout(setup, join_all(marks)).await.is_ok_and(|r| r.iter().all(Result::is_ok));
    if !ok {
        let _ = stop_tx.send(true);
        return Err(fail("consumers did not all see the marker", collect(handles, STOP_GRACE).await));
    }
    let mut result = RunResult {
        events: load.per_shard * u64::from(shards),
        expected: load.per_shard * u64::from(shards) * u64::from(load.clients_per_shard),
        ..RunResult::default()
    };
    let pid = target.proxy.as_ref().map(Proxy::pid);
    let fake_sessions0 = target.fake.identify_count() + target.fake.resume_count();
    let log0 = target.proxy.as_ref().map_or(0, |p| p.log_lines().len());
    if let Some(idle) = load.idle {
        // Nothing is sent: the window is the idle time alone; the firehose
        // that follows only lets the consumers end.
        let probe = Probe::start(pid, load.count_syscalls);
        tokio::time::sleep(idle).await;
        probe.stop(&mut result);
        result.events = 0;
    }
    let probe = (load.idle.is_none()).then(|| Probe::start(pid, load.count_syscalls));
    let t0 = Instant::now();
    let spec = FirehoseSpec { count: load.per_shard, rate: load.rate, mix: load.mix };
    let mut hoses = Vec::new();
    // Staggered: shard k starts k/N of an interval after shard 0, so events
    // of different shards arrive apart, as Discord's do, not all at once.
    let stagger = match (load.stagger, load.rate) {
        (true, Some(rate)) if rate > 0.0 => Some(Duration::from_secs_f64(1.0 / rate / f64::from(shards))),
        _ => None,
    };
    if load.per_shard > 0 {
        for shard in 0..shards {
            if let Some(step) = stagger {
                tokio::time::sleep_until((t0 + step * shard).into()).await;
            }
            match target.fake.firehose(shard, spec) {
                Some(h) => hoses.push(h),
                None => {
                    let _ = stop_tx.send(true);
                    return Err(fail(
                        &format!("shard {shard} lost its connection"),
                        collect(handles, STOP_GRACE).await,
                    ));
                }
            }
        }
    }
    let all = collect(handles, load.timeout + STOP_GRACE);
    tokio::pin!(all);
    let outcomes = tokio::select! {
        o = &mut all => o,
        () = tokio::time::sleep(load.timeout) => {
            let _ = stop_tx.send(true);
            all.await
        }
    };
    if let Some(probe) = probe {
        probe.stop(&mut result);
    }
    for h in hoses {
        let _ = tokio::time::timeout(Duration::from_secs(2), h.finished()).await;
    }
    let mut last = t0;
    for o in outcomes {
        result.got += o.got;
        result.seq_errors += o.seq_errors;
        if let Some(at) = o.last_at {
            last = last.max(at);
        }
        if let End::Lost(why) = o.end {
            result.lost_conns.push(why);
        }
        result.latencies.extend(o.latencies);
        result.wire_bytes += o.wire_bytes;
        result.resumes += u64::from(o.resumes);
        if result.disconnects.len() < 3 {
            result.disconnects.extend(o.disconnects.into_iter().take(1));
        }
    }
    result.elapsed = last.duration_since(t0);
    result.upstream_sessions = target.fake.identify_count() + target.fake.resume_count() - fake_sessions0;
    if let Some(p) = &target.proxy {
        result.rss_kib = p.rss_kib();
        result.hwm_kib = p.hwm_kib();
        result.zombied = p.log_lines().iter().skip(log0).filter(|l| l.contains("zombied")).count() as u64;
    }
    Ok(result)
}

/// What is measured over a run's window: the proxy's CPU and wake-ups,
/// this process's CPU, the machine's, and (optionally) the proxy's
/// syscalls.
struct Probe {
    pid: Option<u32>,
    cpu: Option<Cpu>,
    wakeups: Option<u64>,
    own: Cpu,
    busy: f64,
    syscalls: Option<syscalls::Counter>,
    at: Instant,
}

impl Probe {
    fn start(pid: Option<u32>, count_syscalls: bool) -> Probe {
        let syscalls = pid.filter(|_| count_syscalls).and_then(syscalls::Counter::start);
        Probe {
            pid,
            cpu: pid.map(proxy::cpu_of),
            wakeups: pid.map(proxy::wakeups_of),
            own: self_cpu(),
            busy: machine_busy_secs(),
            syscalls,
            at: Instant::now(),
        }
    }

    fn stop(self, result: &mut RunResult) {
        let cpu = self.pid.map(proxy::cpu_of);
        let wakeups = self.pid.map(proxy::wakeups_of);
        let own = self_cpu();
        let busy = machine_busy_secs();
        result.window = self.at.elapsed();
        result.proxy_cpu = self.cpu.zip(cpu).map(|(a, b)| a.secs_until(b));
        result.wakeups = self.wakeups.zip(wakeups).map(|(a, b)| b.saturating_sub(a));
        result.loadgen_cpu = self.own.secs_until(own);
        result.other_cpu = (busy - self.busy - result.loadgen_cpu - result.proxy_cpu.unwrap_or(0.0)).max(0.0);
        result.syscalls = self.syscalls.and_then(syscalls::Counter::stop);
        result.window_rss_kib = self.pid.and_then(|p| proxy::status_kib(p, "VmRSS")).unwrap_or(0);
    }
}

/// Waits for the consumers, at most `bound`; then aborts those left.
async fn collect(handles: Vec<tokio::task::JoinHandle<Outcome>>, bound: Duration) -> Vec<Outcome> {
    let aborts: Vec<_> = handles.iter().map(tokio::task::JoinHandle::abort_handle).collect();
    let all = join_all(handles);
    tokio::pin!(all);
    let results = match tokio::time::timeout(bound, &mut all).await {
        Ok(r) => r,
        Err(_) => {
            for a in &aborts {
                a.abort();
            }
            all.await
        }
    };
    results
        .into_iter()
        .map(|r| {
            r.unwrap_or_else(|e| Outcome {
                end: End::Lost(format!("consumer task failed: {e}")),
                got: 0,
                seq_errors: 0,
                last_at: None,
                latencies: Vec::new(),
                identify_to_ready: None,
                identify_to_snapshot: None,
                snapshot_bytes: 0,
                wire_bytes: 0,
                resumes: 0,
                disconnects: Vec::new(),
            })
        })
        .collect()
}

fn fake_config(guilds: u32, members: u32) -> FakeConfig {
    FakeConfig { shards: SHARDS, guilds, members_per_guild: members, max_concurrency: 16, ..FakeConfig::default() }
}

/// Starts a proxy against its own fake and waits until every shard is
/// connected and the proxy has relayed a marker on each (so it has READY and
/// every GUILD_CREATE).
async fn proxy_target(
    name: &str,
    binary: &Path,
    dir: &Path,
    fake: FakeDiscord,
    settings: ProxySettings,
    sync_timeout: Duration,
) -> Result<Target, String> {
    let proxy = Proxy::start(binary, dir, settings, &fake.api_url(), &fake.gateway_url(), fake.token())?;
    let shards = proxy.settings.shards;
    let endpoint = Endpoint { url: proxy.url(), token: fake.token().to_owned(), shards };
    let connected = fake.wait_until(sync_timeout, |f| (0..shards).all(|s| f.connected(s))).await;
    if !connected {
        return Err(format!("{name}: the proxy did not connect every shard:\n{}", proxy.log_lines().join("\n")));
    }
    let target = Target { name: name.to_owned(), fake, endpoint, proxy: Some(proxy) };
    sync(&target, sync_timeout).await?;
    Ok(target)
}

/// One consumer per shard through the target, until each has seen a marker
/// injected after everything the fake sent before.
async fn sync(target: &Target, timeout: Duration) -> Result<(), String> {
    let load = Load {
        clients_per_shard: 1,
        compress: Compress::Plain,
        mix: FirehoseMix::Messages,
        per_shard: 0,
        rate: None,
        record_latency: false,
        timeout,
        stagger: false,
        idle: None,
        count_syscalls: false,
    };
    run_load(target, load).await.map(|_| ())
}

/// Scenarios of the throughput and latency tables.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Scenario {
    Burst { clients: u32, compress: Compress, mix: FirehoseMix },
    Latency,
}

impl Scenario {
    pub fn label(self) -> String {
        match self {
            Scenario::Burst { clients, compress, mix } => {
                let mix = match mix {
                    FirehoseMix::Messages => "1 KB MESSAGE_CREATE",
                    FirehoseMix::Mixed => "mixed events",
                };
                format!("{mix}, {}, {clients}/shard", compress.name())
            }
            Scenario::Latency => format!("{LATENCY_RATE} events/s, plain, 1/shard"),
        }
    }

    /// Direct: one client per shard only (the fake has one connection per
    /// shard). The default-backpressure proxy: the loss check only.
    fn applies_to(self, t: &Target) -> bool {
        let loss_check = Scenario::Burst { clients: 1, compress: Compress::Plain, mix: FirehoseMix::Messages };
        match &t.proxy {
            None => match self {
                Scenario::Burst { clients, .. } => clients == 1,
                Scenario::Latency => true,
            },
            Some(p) if p.settings.backpressure.is_none() => self == loss_check,
            Some(_) => true,
        }
    }

    fn load(self, args: &Args) -> Load {
        match self {
            Scenario::Burst { clients, compress, mix } => {
                let per_shard = args.burst / u64::from(SHARDS);
                let deliveries = per_shard * u64::from(SHARDS) * u64::from(clients);
                Load {
                    clients_per_shard: clients,
                    compress,
                    mix,
                    per_shard,
                    rate: None,
                    record_latency: false,
                    timeout: Duration::from_secs(20 + deliveries / 40_000).min(Duration::from_secs(300)),
                    stagger: false,
                    idle: None,
                    count_syscalls: false,
                }
            }
            Scenario::Latency => {
                let per_shard = args.latency_events / u64::from(SHARDS);
                let rate = LATENCY_RATE / f64::from(SHARDS);
                Load {
                    clients_per_shard: 1,
                    compress: Compress::Plain,
                    mix: FirehoseMix::Messages,
                    per_shard,
                    rate: Some(rate),
                    record_latency: true,
                    timeout: Duration::from_secs_f64(per_shard as f64 / rate + 20.0),
                    stagger: false,
                    idle: None,
                    count_syscalls: false,
                }
            }
        }
    }
}

/// All runs of one scenario on one target.
pub struct Series {
    pub scenario: Scenario,
    pub target: String,
    pub cores: Option<usize>,
    pub runs: Vec<RunResult>,
    pub errors: Vec<String>,
    /// Runs repeated because other processes were busy.
    pub retries: usize,
}

/// Issue-3 measurements of one proxy configuration (or the fake itself).
pub struct CacheRow {
    pub label: String,
    pub rss_kib: Option<u64>,
    pub rss_after_kib: Option<u64>,
    pub hwm_kib: Option<u64>,
    pub snapshot: Vec<Duration>,
    pub snapshot_bytes: u64,
    pub load_time: Option<Duration>,
    pub error: Option<String>,
}

async fn run(args: Args, root: PathBuf, binary: PathBuf) -> Result<(), String> {
    let started = Instant::now();
    let machine = report::Machine::probe(&root, &binary);
    let dir = std::env::temp_dir().join(format!("loadtest-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    eprintln!("loadtest: starting fakes and proxies ({} runs, burst {} events)", args.runs, args.burst);

    let trickle_args = trickle::TrickleArgs {
        runs: args.runs,
        secs: args.trickle_secs,
        idle_secs: args.idle_secs,
        long_secs: args.long_secs,
        heartbeat_ms: args.heartbeat_ms,
        cores: 2,
    };
    if args.trickle_only {
        let tables = trickle::run(&trickle_args, &binary, &dir).await;
        let _ = std::fs::remove_dir_all(&dir);
        println!("## gateway-proxy loadtest: trickle rows\n\n{}\n\n{tables}", machine.describe());
        eprintln!("loadtest: done in {:.0} s", started.elapsed().as_secs_f64());
        return Ok(());
    }

    let start_fake = || async {
        FakeDiscord::start(fake_config(40, 25)).await.map_err(|e| format!("starting the fake Discord: {e}"))
    };
    let mut targets = Vec::new();
    if !args.cache_only {
        let direct_fake = start_fake().await?;
        targets.push(Target {
            name: "direct".into(),
            endpoint: Endpoint {
                url: direct_fake.gateway_url(),
                token: direct_fake.token().to_owned(),
                shards: SHARDS,
            },
            fake: direct_fake,
            proxy: None,
        });
    }
    // Rate, CPU and latency: a client queue large enough for a whole burst,
    // so no consumer is closed for falling behind. The loss check: defaults.
    let relay_proxies: &[(usize, Option<usize>)] = if args.cache_only {
        &[]
    } else {
        &[(2, Some(RAISED_BACKPRESSURE)), (1, Some(RAISED_BACKPRESSURE)), (2, None)]
    };
    for &(cores, backpressure) in relay_proxies {
        let settings = ProxySettings { cores, shards: SHARDS, members: false, replay_buffer: None, backpressure };
        let mut name = format!("proxy, {cores} core{}", if cores == 1 { "" } else { "s" });
        if backpressure.is_none() {
            name.push_str(", default backpressure");
        }
        let t = proxy_target(&name, &binary, &dir, start_fake().await?, settings, Duration::from_secs(60)).await?;
        targets.push(t);
    }
    let idle_rss: Vec<(String, u64)> =
        targets.iter().filter_map(|t| t.proxy.as_ref().map(|p| (t.name.clone(), p.rss_kib()))).collect();

    let scenarios: &[Scenario] = if args.cache_only {
        &[]
    } else if args.latency_only {
        &[Scenario::Latency]
    } else if args.fanout_only {
        &[
            Scenario::Burst { clients: 1, compress: Compress::Plain, mix: FirehoseMix::Messages },
            Scenario::Burst { clients: 16, compress: Compress::Plain, mix: FirehoseMix::Messages },
        ]
    } else if args.burst_only {
        &[Scenario::Burst { clients: 1, compress: Compress::Plain, mix: FirehoseMix::Messages }]
    } else {
        &[
            Scenario::Burst { clients: 1, compress: Compress::Plain, mix: FirehoseMix::Messages },
            Scenario::Burst { clients: 1, compress: Compress::Plain, mix: FirehoseMix::Mixed },
            Scenario::Burst { clients: 4, compress: Compress::Plain, mix: FirehoseMix::Messages },
            Scenario::Burst { clients: 16, compress: Compress::Plain, mix: FirehoseMix::Messages },
            Scenario::Burst { clients: 1, compress: Compress::Zlib, mix: FirehoseMix::Messages },
            Scenario::Burst { clients: 1, compress: Compress::Zstd, mix: FirehoseMix::Messages },
            Scenario::Latency,
        ]
    };
    let mut series: Vec<Series> = Vec::new();
    for &s in scenarios {
        for t in &targets {
            if !s.applies_to(t) {
                continue;
            }
            let cores = t.proxy.as_ref().map(|p| p.settings.cores);
            series.push(Series {
                scenario: s,
                target: t.name.clone(),
                cores,
                runs: Vec::new(),
                errors: Vec::new(),
                retries: 0,
            });
        }
    }
    // Interleaved: every scenario on every target once per repetition, so
    // background load on the machine spreads over all of them.
    for rep in 0..args.runs {
        for s in series.iter_mut() {
            let Some(t) = targets.iter().find(|t| t.name == s.target) else { continue };
            eprintln!("loadtest: run {}/{}: {} via {}", rep + 1, args.runs, s.scenario.label(), t.name);
            // A run during which other processes were busy is repeated (at
            // most twice); the quietest attempt is kept.
            let mut best: Option<RunResult> = None;
            for attempt in 0..=MAX_RETRIES {
                match run_load(t, s.scenario.load(&args)).await {
                    Ok(r) => {
                        let noisy = r.noisy();
                        if best.as_ref().is_none_or(|b| r.other_pct() < b.other_pct()) {
                            best = Some(r);
                        }
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        if !noisy || attempt == MAX_RETRIES {
                            break;
                        }
                        s.retries += 1;
                        eprintln!("loadtest:   other processes were busy; again");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                    Err(e) => {
                        eprintln!("loadtest:   failed: {e}");
                        s.errors.push(e);
                        break;
                    }
                }
            }
            s.runs.extend(best);
        }
    }
    let mut memory: Vec<report::MemoryRow> = Vec::new();
    let mut proxy_logs: Vec<(String, Vec<String>)> = Vec::new();
    for t in targets.iter_mut() {
        if let Some(p) = t.proxy.as_mut() {
            let idle = idle_rss.iter().find(|(n, _)| *n == t.name).map_or(0, |(_, r)| *r);
            memory.push(report::MemoryRow {
                target: t.name.clone(),
                idle_kib: idle,
                after_kib: p.rss_kib(),
                hwm_kib: p.hwm_kib(),
                alive: p.alive(),
            });
            proxy_logs.push((t.name.clone(), p.log_lines()));
        }
    }
    drop(targets);

    let cache_rows = if args.cache_rows { cache_rows(&args, &binary, &dir).await } else { Vec::new() };
    let big_shard_rows = if args.cache_rows { big_shard_rows(&args, &binary, &dir).await } else { Vec::new() };
    let trickle_tables = if args.trickle { trickle::run(&trickle_args, &binary, &dir).await } else { String::new() };
    let _ = std::fs::remove_dir_all(&dir);
    let out = report::render(&report::Report {
        machine,
        runs: args.runs,
        burst: args.burst,
        latency_events: args.latency_events,
        quick: args.quick,
        series,
        memory,
        cache_rows,
        big_shard_rows,
        cache_guilds: args.cache_guilds,
        cache_members: args.cache_members,
        proxy_logs,
        wall: started.elapsed(),
    });
    println!("{out}\n{trickle_tables}");
    Ok(())
}

/// Issue 3: RSS with `cache_guilds` x `cache_members` over 4 shards, members
/// cached or not, and the time to serve READY + every GUILD_CREATE of shard
/// 0 to a new client, versus the fake sending the same payloads.
async fn cache_rows(args: &Args, binary: &Path, dir: &Path) -> Vec<CacheRow> {
    eprintln!(
        "loadtest: cache rows: {} guilds x {} members over {SHARDS} shards",
        args.cache_guilds, args.cache_members
    );
    let fake = match FakeDiscord::start(fake_config(args.cache_guilds, args.cache_members)).await {
        Ok(f) => f,
        Err(e) => {
            return vec![CacheRow::error("fake", format!("starting the fake: {e}"))];
        }
    };
    let shard0_guilds = fake.guild_ids_for_shard(0, SHARDS).len();
    let mut rows = Vec::new();
    // The fake's own time, measured before the proxies and again after them
    // (one median of both), so a drift of the machine over the run does
    // not favour either side.
    let direct_endpoint = Endpoint { url: fake.gateway_url(), token: fake.token().to_owned(), shards: SHARDS };
    let mut direct = CacheRow::empty("fake Discord direct (pre-serialised)");
    snapshot_runs(&direct_endpoint, shard0_guilds, args.runs, &mut direct).await;
    for (members, replay_buffer) in [(true, None), (false, None), (true, Some(0)), (false, Some(0))] {
        let mut label = format!("proxy, 2 cores, cache.members {}", if members { "on" } else { "off" });
        if let Some(n) = replay_buffer {
            label.push_str(&format!(", replay_buffer {n}"));
        }
        eprintln!("loadtest: {label}");
        let settings = ProxySettings { cores: 2, shards: SHARDS, members, replay_buffer, backpressure: None };
        let t0 = Instant::now();
        let (p, load_time) = match loaded_proxy(&label, binary, dir, &fake, settings).await {
            Ok(p) => p,
            Err(e) => {
                rows.push(CacheRow::error(&label, e));
                continue;
            }
        };
        let load_time = load_time.duration_since(t0);
        // Before any client: the cache and the upstream connections only.
        let rss = p.rss_kib();
        let endpoint = Endpoint { url: p.url(), token: fake.token().to_owned(), shards: SHARDS };
        let mut row = CacheRow { rss_kib: Some(rss), load_time: Some(load_time), ..CacheRow::empty(&label) };
        snapshot_runs(&endpoint, shard0_guilds, args.runs, &mut row).await;
        row.rss_after_kib = Some(p.rss_kib());
        row.hwm_kib = Some(p.hwm_kib());
        rows.push(row);
        drop(p);
        // The next proxy must find every shard free at the fake.
        fake.wait_until(Duration::from_secs(10), |f| (0..SHARDS).all(|s| !f.connected(s))).await;
    }
    snapshot_runs(&direct_endpoint, shard0_guilds, args.runs, &mut direct).await;
    rows.push(direct);
    fake.shutdown();
    rows
}

/// Issue 3: READY + every GUILD_CREATE of one shard holding
/// [`BIG_SHARD_GUILDS`] guilds with members cached, through the proxy and
/// straight from the fake.
async fn big_shard_rows(args: &Args, binary: &Path, dir: &Path) -> Vec<CacheRow> {
    let guilds = if args.quick { BIG_SHARD_GUILDS / 10 } else { BIG_SHARD_GUILDS };
    eprintln!("loadtest: cache rows: one shard of {guilds} guilds x {} members", args.cache_members);
    let config = FakeConfig {
        shards: 1,
        guilds,
        members_per_guild: args.cache_members,
        max_concurrency: 1,
        ..FakeConfig::default()
    };
    let fake = match FakeDiscord::start(config).await {
        Ok(f) => f,
        Err(e) => return vec![CacheRow::error("fake", format!("starting the fake: {e}"))],
    };
    let direct_endpoint = Endpoint { url: fake.gateway_url(), token: fake.token().to_owned(), shards: 1 };
    let mut direct = CacheRow::empty("fake Discord direct (pre-serialised)");
    snapshot_runs(&direct_endpoint, guilds as usize, args.runs, &mut direct).await;
    let label = "proxy, 2 cores, 1 shard, cache.members on";
    let settings = ProxySettings { cores: 2, shards: 1, members: true, replay_buffer: None, backpressure: None };
    let t0 = Instant::now();
    let mut rows = Vec::new();
    match loaded_proxy(label, binary, dir, &fake, settings).await {
        Ok((p, loaded)) => {
            let mut row = CacheRow::empty(label);
            row.rss_kib = Some(p.rss_kib());
            row.load_time = Some(loaded.duration_since(t0));
            let endpoint = Endpoint { url: p.url(), token: fake.token().to_owned(), shards: 1 };
            snapshot_runs(&endpoint, guilds as usize, args.runs, &mut row).await;
            row.rss_after_kib = Some(p.rss_kib());
            row.hwm_kib = Some(p.hwm_kib());
            rows.push(row);
            drop(p);
            fake.wait_until(Duration::from_secs(10), |f| !f.connected(0)).await;
        }
        Err(e) => rows.push(CacheRow::error(label, e)),
    }
    snapshot_runs(&direct_endpoint, guilds as usize, args.runs, &mut direct).await;
    rows.push(direct);
    fake.shutdown();
    rows
}

/// Starts a proxy against `fake` and waits until it has taken in every
/// shard's READY and GUILD_CREATEs without any client: every shard
/// connected, the fake's session at READY + one GUILD_CREATE per guild, then
/// the proxy's CPU idle (under 3 ms per 250 ms, twice). Returns the proxy and
/// when its CPU went idle.
async fn loaded_proxy(
    label: &str,
    binary: &Path,
    dir: &Path,
    fake: &FakeDiscord,
    settings: ProxySettings,
) -> Result<(Proxy, Instant), String> {
    let shards = settings.shards;
    let proxy = Proxy::start(binary, dir, settings, &fake.api_url(), &fake.gateway_url(), fake.token())?;
    let queued = |f: &FakeDiscord| {
        (0..shards).all(|s| {
            let guilds = f.guild_ids_for_shard(s, shards).len() as u64;
            f.connected(s) && f.last_seq(s).is_some_and(|seq| seq > guilds)
        })
    };
    if !fake.wait_until(Duration::from_secs(300), queued).await {
        return Err(format!("{label}: the shards did not all get READY and their guilds from the fake in 300 s"));
    }
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut quiet = 0;
    let mut before = proxy.cpu();
    let mut idle_since = Instant::now();
    while quiet < 2 {
        if Instant::now() > deadline {
            return Err(format!("{label}: the proxy's CPU never went idle after loading"));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
        let now = proxy.cpu();
        if before.secs_until(now) < 0.003 {
            if quiet == 0 {
                idle_since = Instant::now() - Duration::from_millis(250);
            }
            quiet += 1;
        } else {
            quiet = 0;
        }
        before = now;
    }
    Ok((proxy, idle_since))
}

impl CacheRow {
    fn empty(label: &str) -> CacheRow {
        CacheRow {
            label: label.to_owned(),
            rss_kib: None,
            rss_after_kib: None,
            hwm_kib: None,
            snapshot: Vec::new(),
            snapshot_bytes: 0,
            load_time: None,
            error: None,
        }
    }

    fn error(label: &str, e: String) -> CacheRow {
        CacheRow { error: Some(e), ..CacheRow::empty(label) }
    }
}

/// Identifies for shard 0 `runs` times (plus one warm-up) and records the
/// time from Identify to the last GUILD_CREATE.
async fn snapshot_runs(endpoint: &Endpoint, guilds: usize, runs: usize, row: &mut CacheRow) {
    for i in 0..=runs {
        let (stop_tx, stop_rx) = watch::channel(false);
        let (ready, _r) = oneshot::channel();
        let (marked, _m) = oneshot::channel();
        let spec = Spec {
            endpoint: endpoint.clone(),
            shard: 0,
            compress: Compress::Plain,
            marker: None,
            expect: 0,
            snapshot_guilds: guilds,
            record_latency: false,
        };
        let task = tokio::spawn(consumer::run(spec, Signals { ready, marked }, stop_rx));
        let outcome = match tokio::time::timeout(Duration::from_secs(120), task).await {
            Ok(Ok(o)) => o,
            Ok(Err(e)) => {
                row.error = Some(format!("consumer failed: {e}"));
                return;
            }
            Err(_) => {
                let _ = stop_tx.send(true);
                row.error = Some("no complete snapshot in 120 s".into());
                return;
            }
        };
        match (outcome.end, outcome.identify_to_snapshot) {
            (End::Complete, Some(d)) => {
                // The first identify is a warm-up (the fake serialises each
                // guild once, on first use).
                if i > 0 {
                    row.snapshot.push(d);
                    row.snapshot_bytes = outcome.snapshot_bytes;
                }
            }
            (end, _) => {
                row.error = Some(format!("snapshot incomplete: {end:?}"));
                return;
            }
        }
        drop(stop_tx);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
