//! Trickle rows (issue 11): the traffic a real bot sees. Many shards, a
//! moderate total rate spread over them, every event its own websocket
//! write on Discord's side (shards start staggered, so events of different
//! shards arrive apart), one plain consumer per shard. Reports what an
//! operator pays per event at that rate: proxy CPU, wake-ups, syscalls,
//! RSS; an idle row (connected, clients attached, nothing sent); and a long
//! row that checks every event arrives once, in order, with no zombied
//! connection.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use fake_discord::{FakeConfig, FakeDiscord, FirehoseMix};

use crate::consumer::Compress;
use crate::proxy::ProxySettings;
use crate::{proxy_target, run_load, Load, RunResult};

/// Shards and total events/s of the measured rows.
pub const CASES: &[(u32, f64)] = &[(16, 1_000.0), (64, 2_000.0), (256, 10_000.0)];
/// The idle row's shard count.
pub const IDLE_SHARDS: u32 = 64;
/// The memory row's shard count.
pub const MEMORY_SHARDS: u32 = 256;
/// The long row: shards and total events/s.
pub const LONG: (u32, f64) = (128, 4_000.0);
/// Longest a syscall-counting run lasts (its CPU figure is not reported).
const SYSCALL_SECS: f64 = 10.0;

/// What the trickle rows run.
#[derive(Clone, Debug)]
pub struct TrickleArgs {
    pub runs: usize,
    /// Seconds per measured run.
    pub secs: f64,
    /// Seconds of the idle window.
    pub idle_secs: u64,
    /// Seconds of the long row (0: skipped).
    pub long_secs: u64,
    /// Heartbeat interval the fake asks for, in ms.
    pub heartbeat_ms: u64,
    /// Cores of the proxy.
    pub cores: usize,
}

/// All runs of one shard count and rate.
pub struct Row {
    label: String,
    shards: u32,
    rate: f64,
    runs: Vec<RunResult>,
    syscalls: Option<RunResult>,
    idle: Option<RunResult>,
    rss_connected_kib: u64,
    rss_after_kib: u64,
    /// RSS with a client on every shard and nothing sent.
    rss_idle_kib: Option<u64>,
    /// The memory row: RSS after `MEMORY_EVENTS` per shard, and what the proxy reports holding.
    memory: Option<MemoryRow>,
    errors: Vec<String>,
}

/// RSS after a large load, against what the proxy says it holds.
struct MemoryRow {
    rss_kib: u64,
    cache_bytes: u64,
    replay_bytes: u64,
    evicted: u64,
    delivered: (u64, u64),
}

/// Events per shard of the memory row (1 KB each).
const MEMORY_EVENTS: u64 = 2_000;

impl Row {
    fn new(shards: u32, rate: f64) -> Row {
        Row {
            label: format!("{shards} shards, {} events/s", rate as u64),
            shards,
            rate,
            runs: Vec::new(),
            syscalls: None,
            idle: None,
            rss_connected_kib: 0,
            rss_after_kib: 0,
            rss_idle_kib: None,
            memory: None,
            errors: Vec::new(),
        }
    }
}

fn fake_config(shards: u32, heartbeat_ms: u64) -> FakeConfig {
    FakeConfig {
        shards,
        guilds: shards * 2,
        members_per_guild: 5,
        // Every shard identifies at once: the rows measure relaying, not start-up.
        max_concurrency: shards,
        heartbeat_interval_ms: heartbeat_ms,
        ..FakeConfig::default()
    }
}

/// A run of `secs` at `rate` events/s in total over `shards`.
fn trickle_load(shards: u32, rate: f64, secs: f64, count_syscalls: bool) -> Load {
    let per_shard = ((rate * secs) / f64::from(shards)).round().max(1.0) as u64;
    Load {
        clients_per_shard: 1,
        compress: Compress::Plain,
        mix: FirehoseMix::Messages,
        per_shard,
        rate: Some(rate / f64::from(shards)),
        record_latency: false,
        timeout: Duration::from_secs_f64(secs + 60.0),
        stagger: true,
        idle: None,
        count_syscalls,
    }
}

/// Runs one shard count: measured runs, a syscall-counting run, and the
/// idle window when `idle` is set.
async fn run_case(args: &TrickleArgs, binary: &Path, dir: &Path, shards: u32, rate: f64, idle: bool) -> Row {
    let mut row = Row::new(shards, rate);
    eprintln!("loadtest: trickle: {}", row.label);
    let fake = match FakeDiscord::start(fake_config(shards, args.heartbeat_ms)).await {
        Ok(f) => f,
        Err(e) => {
            row.errors.push(format!("starting the fake: {e}"));
            return row;
        }
    };
    let settings = ProxySettings { cores: args.cores, shards, members: false, replay_buffer: None, backpressure: None };
    let name = format!("proxy, {} cores, {shards} shards", args.cores);
    let target = match proxy_target(&name, binary, dir, fake, settings, Duration::from_secs(180)).await {
        Ok(t) => t,
        Err(e) => {
            row.errors.push(e);
            return row;
        }
    };
    let rss = |t: &crate::Target| t.proxy.as_ref().map_or(0, crate::proxy::Proxy::rss_kib);
    row.rss_connected_kib = rss(&target);
    // Idle with a client on every shard, before any event: the full window
    // (and syscalls) on the idle row's shard count, a short one elsewhere
    // for RSS only (the per-shard constant).
    let idle_secs = if idle { args.idle_secs } else { args.idle_secs.min(3) };
    eprintln!("loadtest: trickle idle: {shards} shards, {idle_secs} s");
    let load = Load {
        idle: Some(Duration::from_secs(idle_secs)),
        count_syscalls: idle,
        ..trickle_load(shards, f64::from(shards), 1.0, idle)
    };
    match run_load(&target, load).await {
        Ok(r) => {
            row.rss_idle_kib = Some(r.window_rss_kib);
            if idle {
                row.idle = Some(r);
            }
        }
        Err(e) => row.errors.push(e),
    }
    for i in 0..args.runs {
        eprintln!("loadtest: trickle run {}/{}: {}", i + 1, args.runs, row.label);
        match run_load(&target, trickle_load(shards, rate, args.secs, false)).await {
            Ok(r) => row.runs.push(r),
            Err(e) => row.errors.push(e),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    eprintln!("loadtest: trickle syscalls: {}", row.label);
    match run_load(&target, trickle_load(shards, rate, args.secs.min(SYSCALL_SECS), true)).await {
        Ok(r) => row.syscalls = Some(r),
        Err(e) => row.errors.push(e),
    }
    if shards == MEMORY_SHARDS {
        eprintln!("loadtest: trickle memory: {shards} shards x {MEMORY_EVENTS} events");
        let load =
            Load { per_shard: MEMORY_EVENTS, rate: None, stagger: false, ..trickle_load(shards, 1.0, 1.0, false) };
        match run_load(&target, load).await {
            Ok(r) => {
                let port = target.proxy.as_ref().map_or(0, |p| p.port);
                let metrics = crate::proxy::http_get(port, "/metrics").unwrap_or_default();
                row.memory = Some(MemoryRow {
                    rss_kib: r.window_rss_kib,
                    cache_bytes: metric_sum(&metrics, "gateway_proxy_cache_bytes{"),
                    replay_bytes: metric_sum(&metrics, "gateway_proxy_replay_buffer_bytes{"),
                    evicted: metric_sum(&metrics, "gateway_proxy_replay_evicted_total{"),
                    delivered: (r.got, r.expected),
                });
            }
            Err(e) => row.errors.push(e),
        }
    }
    row.rss_after_kib = rss(&target);
    if let Some(p) = &target.proxy {
        // What crossed the upstream sockets, for `--upstream-compression`.
        let metrics = crate::proxy::http_get(p.port, "/metrics").unwrap_or_default();
        let events = metric_sum(&metrics, "gateway_proxy_events_received_total{").max(1);
        let plain = metric_sum(&metrics, "gateway_proxy_upstream_received_bytes_total{");
        let compressed = metric_sum(&metrics, "gateway_proxy_upstream_compressed_bytes_total{");
        eprintln!(
            "loadtest: upstream, {shards} shards: {events} dispatches, {:.0} B/event of JSON, {:.0} B/event compressed",
            plain as f64 / events as f64,
            compressed as f64 / events as f64
        );
    }
    if let Some(p) = &target.proxy {
        if row.runs.iter().chain(&row.syscalls).any(|r| r.zombied > 0) {
            let lines = p.log_lines();
            row.errors.extend(lines.iter().filter(|l| l.contains("zombied")).take(3).cloned());
        }
    }
    target.fake.shutdown();
    row
}

/// The long row: one run of `long_secs` at [`LONG`].
async fn run_long(args: &TrickleArgs, binary: &Path, dir: &Path) -> Row {
    let (shards, rate) = LONG;
    let mut row = Row::new(shards, rate);
    row.label = format!("{shards} shards, {} events/s, {} s", rate as u64, args.long_secs);
    eprintln!("loadtest: trickle long: {}", row.label);
    let fake = match FakeDiscord::start(fake_config(shards, args.heartbeat_ms)).await {
        Ok(f) => f,
        Err(e) => {
            row.errors.push(format!("starting the fake: {e}"));
            return row;
        }
    };
    let settings = ProxySettings { cores: args.cores, shards, members: false, replay_buffer: None, backpressure: None };
    let name = format!("proxy, {} cores, {shards} shards", args.cores);
    let target = match proxy_target(&name, binary, dir, fake, settings, Duration::from_secs(180)).await {
        Ok(t) => t,
        Err(e) => {
            row.errors.push(e);
            return row;
        }
    };
    row.rss_connected_kib = target.proxy.as_ref().map_or(0, crate::proxy::Proxy::rss_kib);
    match run_load(&target, trickle_load(shards, rate, args.long_secs as f64, false)).await {
        Ok(r) => row.runs.push(r),
        Err(e) => row.errors.push(e),
    }
    row.rss_after_kib = target.proxy.as_ref().map_or(0, crate::proxy::Proxy::rss_kib);
    if let Some(p) = &target.proxy {
        row.errors.extend(p.log_lines().iter().filter(|l| l.contains("zombied")).take(3).cloned());
    }
    target.fake.shutdown();
    row
}

/// Runs every trickle row and returns the rendered tables.
pub async fn run(args: &TrickleArgs, binary: &Path, dir: &Path) -> String {
    let mut rows = Vec::new();
    for &(shards, rate) in CASES {
        rows.push(run_case(args, binary, dir, shards, rate, shards == IDLE_SHARDS).await);
    }
    let long = if args.long_secs > 0 { Some(run_long(args, binary, dir).await) } else { None };
    render(args, &rows, long.as_ref())
}

/// Sum of every sample of a metric family in Prometheus text (0 if absent).
fn metric_sum(text: &str, prefix: &str) -> u64 {
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
        .sum::<f64>() as u64
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    v.retain(|x| x.is_finite());
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 })
}

fn cpu_us_per_event(r: &RunResult) -> Option<f64> {
    r.proxy_cpu.filter(|_| r.events > 0).map(|c| c * 1e6 / r.events as f64)
}

fn fmt(v: Option<f64>, digits: usize) -> String {
    v.map_or("n/a".into(), |v| format!("{v:.digits$}"))
}

fn syscall_summary(counts: &crate::syscalls::Counts, per: f64, unit: &str) -> String {
    let mut s = format!("{:.1}{unit}", counts.total as f64 / per);
    let named: Vec<String> =
        counts.by_name.iter().take(4).map(|(n, c)| format!("{n} {:.1}", *c as f64 / per)).collect();
    if !named.is_empty() {
        let _ = write!(s, " ({})", named.join(", "));
    }
    s
}

fn render(args: &TrickleArgs, rows: &[Row], long: Option<&Row>) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "### Trickle: events one by one over many shards");
    let _ = writeln!(o);
    let _ = writeln!(
        o,
        "proxy {} cores, default config; fake heartbeat {} ms; each event its own write, shards staggered; \
         one plain consumer per shard; {} runs of {} s, medians (spread min-max); syscalls from one more run \
         of {} s under perf",
        args.cores,
        args.heartbeat_ms,
        args.runs,
        args.secs,
        args.secs.min(SYSCALL_SECS)
    );
    let _ = writeln!(o);
    let _ = writeln!(
        o,
        "| load | proxy CPU us/event | spread | CPU % of a core | wake-ups/s | wake-ups/event | syscalls/event | RSS MiB connected / after | delivered | zombied / upstream reconnects |"
    );
    let _ = writeln!(o, "|---|---:|---:|---:|---:|---:|---|---:|---:|---:|");
    for row in rows.iter().chain(long) {
        if row.runs.is_empty() {
            let _ = writeln!(o, "| {} | failed: {} |", row.label, row.errors.join("; ").replace('\n', " "));
            continue;
        }
        let per_event: Vec<f64> = row.runs.iter().filter_map(cpu_us_per_event).collect();
        let spread = match (per_event.iter().copied().reduce(f64::min), per_event.iter().copied().reduce(f64::max)) {
            (Some(a), Some(b)) => format!("{a:.1}-{b:.1}"),
            _ => "n/a".into(),
        };
        let pct = median(
            row.runs.iter().filter_map(|r| r.proxy_cpu.map(|c| c / r.window.as_secs_f64().max(1e-9) * 100.0)).collect(),
        );
        let wps = median(
            row.runs.iter().filter_map(|r| r.wakeups.map(|w| w as f64 / r.window.as_secs_f64().max(1e-9))).collect(),
        );
        let wpe = median(
            row.runs
                .iter()
                .filter_map(|r| r.wakeups.filter(|_| r.events > 0).map(|w| w as f64 / r.events as f64))
                .collect(),
        );
        let sys = row
            .syscalls
            .as_ref()
            .and_then(|r| r.syscalls.as_ref().map(|c| syscall_summary(c, r.events.max(1) as f64, "")))
            .unwrap_or_else(|| "n/a".into());
        let (got, expected) = row.runs.iter().fold((0, 0), |(g, e), r| (g + r.got, e + r.expected));
        let seq_errors: u64 = row.runs.iter().map(|r| r.seq_errors).sum();
        let mut delivered = format!("{got} of {expected}");
        if seq_errors > 0 {
            let _ = write!(delivered, ", {seq_errors} seq errors");
        }
        let zombied: u64 = row.runs.iter().chain(&row.syscalls).map(|r| r.zombied).sum();
        // Every consumer and shard was synced before the window: any IDENTIFY
        // or RESUME in it is a reconnect the fake did not ask for.
        let reconnects: u64 = row.runs.iter().chain(&row.syscalls).map(|r| r.upstream_sessions).sum();
        let _ = writeln!(
            o,
            "| {} | {} | {spread} | {} | {} | {} | {sys} | {:.1} / {:.1} | {delivered} | {zombied} / {reconnects} |",
            row.label,
            fmt(median(per_event), 1),
            fmt(pct, 2),
            fmt(wps, 0),
            fmt(wpe, 2),
            row.rss_connected_kib as f64 / 1024.0,
            row.rss_after_kib as f64 / 1024.0,
        );
    }
    let _ = writeln!(o);
    for row in rows {
        let Some(idle) = &row.idle else { continue };
        let secs = idle.window.as_secs_f64().max(1e-9);
        let pct = idle.proxy_cpu.map(|c| c / secs * 100.0);
        let wps = idle.wakeups.map(|w| w as f64 / secs);
        let sys = idle.syscalls.as_ref().map_or("n/a".into(), |c| syscall_summary(c, secs, "/s"));
        let _ = writeln!(
            o,
            "Idle, {} shards connected with one client each, nothing sent, {:.0} s: proxy CPU {} % of a core, \
             {} wake-ups/s, syscalls {sys}",
            row.shards,
            secs,
            fmt(pct, 3),
            fmt(wps, 1),
        );
    }
    let idle_rss: Vec<(u32, u64)> = rows.iter().filter_map(|r| r.rss_idle_kib.map(|k| (r.shards, k))).collect();
    if let (Some(&(s0, k0)), Some(&(s1, k1))) = (idle_rss.first(), idle_rss.last()) {
        if s1 > s0 {
            let per_shard = (k1 as f64 - k0 as f64) * 1024.0 / f64::from(s1 - s0);
            let _ = writeln!(
                o,
                "RSS idle with a client per shard: {}; per shard (from {s0} to {s1} shards): {:.0} KiB",
                idle_rss
                    .iter()
                    .map(|(s, k)| format!("{s} shards {:.1} MiB", *k as f64 / 1024.0))
                    .collect::<Vec<_>>()
                    .join(", "),
                per_shard / 1024.0
            );
        }
    }
    for row in rows {
        let Some(m) = &row.memory else { continue };
        let mib = |b: u64| b as f64 / (1 << 20) as f64;
        let rest = (m.rss_kib * 1024).saturating_sub(m.cache_bytes + m.replay_bytes);
        let _ = writeln!(
            o,
            "Memory, {} shards x {MEMORY_EVENTS} events of 1 KB ({} of {} delivered), clients attached: RSS {:.1} MiB = \
             guild cache {:.1} MiB + replay {:.1} MiB (budget `replay_memory`, {} dispatches dropped to stay within it) \
             + {:.1} MiB else ({:.0} KiB per shard)",
            row.shards,
            m.delivered.0,
            m.delivered.1,
            m.rss_kib as f64 / 1024.0,
            mib(m.cache_bytes),
            mib(m.replay_bytes),
            m.evicted,
            mib(rest),
            rest as f64 / 1024.0 / f64::from(row.shards),
        );
    }
    for row in rows.iter().chain(long) {
        for e in row.errors.iter().take(3) {
            let _ = writeln!(o, "- {} at {} events/s: {}", row.label, row.rate, e.replace('\n', " "));
        }
    }
    o
}
