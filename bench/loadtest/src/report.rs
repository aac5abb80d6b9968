//! The machine description and the printed tables.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use fake_discord::FirehoseMix;

use crate::consumer::Compress;
use crate::{CacheRow, RunResult, Scenario, Series, LATENCY_RATE, SHARDS};

/// What the figures were measured on.
pub struct Machine {
    pub cpus: usize,
    pub model: String,
    pub mem_gib: f64,
    pub kernel: String,
    pub loadavg: String,
    pub git: String,
    pub binary: String,
}

fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

fn git(root: &Path, args: &[&str]) -> Option<std::process::Output> {
    std::process::Command::new("git").arg("-C").arg(root).args(args).output().ok()
}

impl Machine {
    pub fn probe(root: &Path, binary: &Path) -> Machine {
        let cpuinfo = read("/proc/cpuinfo");
        let model = cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split_once(':'))
            .map_or("unknown".into(), |(_, v)| v.trim().to_owned());
        let mem_kib: f64 = read("/proc/meminfo")
            .lines()
            .find(|l| l.starts_with("MemTotal:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        let rev = git(root, &["rev-parse", "--short", "HEAD"])
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
        let dirty = git(root, &["status", "--porcelain", "--untracked-files=no", "--", "src", "Cargo.toml"])
            .is_some_and(|o| !o.stdout.is_empty());
        let git = match rev {
            Some(r) if dirty => format!("git {r} + uncommitted changes in src/ or Cargo.toml"),
            Some(r) => format!("git {r}"),
            None => "git revision unknown".into(),
        };
        let shown = binary.strip_prefix(root).unwrap_or(binary);
        Machine {
            cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
            model,
            mem_gib: mem_kib / 1024.0 / 1024.0,
            kernel: read("/proc/sys/kernel/osrelease").trim().to_owned(),
            loadavg: read("/proc/loadavg").split_whitespace().take(3).collect::<Vec<_>>().join(" "),
            git,
            binary: shown.display().to_string(),
        }
    }
}

impl Machine {
    /// The machine and binary, in two lines.
    pub fn describe(&self) -> String {
        format!(
            "machine: {} CPUs, {}, {:.1} GiB RAM, Linux {}, load average at start {}\nproxy:   {} ({})",
            self.cpus, self.model, self.mem_gib, self.kernel, self.loadavg, self.binary, self.git
        )
    }
}

/// RSS figures of one proxy of the throughput runs.
pub struct MemoryRow {
    pub target: String,
    pub idle_kib: u64,
    pub after_kib: u64,
    pub hwm_kib: u64,
    pub alive: bool,
}

pub struct Report {
    pub machine: Machine,
    pub runs: usize,
    pub burst: u64,
    pub latency_events: u64,
    pub quick: bool,
    pub series: Vec<Series>,
    pub memory: Vec<MemoryRow>,
    pub cache_rows: Vec<CacheRow>,
    /// The same for one shard of [`crate::BIG_SHARD_GUILDS`] guilds.
    pub big_shard_rows: Vec<CacheRow>,
    pub cache_guilds: u32,
    pub cache_members: u32,
    pub proxy_logs: Vec<(String, Vec<String>)>,
    pub wall: Duration,
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

/// The `q` quantile (nearest rank) of sorted values.
fn quantile(sorted: &[u64], q: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1])
}

fn thousands(v: f64) -> String {
    let n = v.round() as u64;
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn opt(v: Option<f64>, f: impl Fn(f64) -> String) -> String {
    v.map_or("n/a".into(), f)
}

fn mib(kib: u64) -> String {
    format!("{:.1}", kib as f64 / 1024.0)
}

impl Series {
    /// Runs in which every consumer got everything (rates and CPU come
    /// from these only).
    fn complete_runs(&self) -> impl Iterator<Item = &RunResult> {
        self.runs.iter().filter(|r| r.complete())
    }

    fn rate(&self) -> Option<f64> {
        median(self.complete_runs().map(RunResult::rate).collect())
    }

    fn spread(&self) -> String {
        let rates: Vec<f64> = self.complete_runs().map(RunResult::rate).collect();
        if rates.len() < 2 {
            return "-".into();
        }
        let lo = rates.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = rates.iter().copied().fold(0.0, f64::max);
        format!("{}-{}", thousands(lo), thousands(hi))
    }

    /// Proxy CPU seconds per 100k upstream events (median of runs).
    fn cpu_per_100k(&self) -> Option<f64> {
        median(self.complete_runs().filter_map(|r| r.proxy_cpu.map(|c| c / r.events.max(1) as f64 * 1e5)).collect())
    }

    /// Proxy CPU µs per delivered event per client.
    fn cpu_per_delivery_us(&self) -> Option<f64> {
        median(self.complete_runs().filter_map(|r| r.proxy_cpu.map(|c| c / r.expected.max(1) as f64 * 1e6)).collect())
    }

    fn loadgen_per_100k(&self) -> Option<f64> {
        median(self.complete_runs().map(|r| r.loadgen_cpu / r.events.max(1) as f64 * 1e5).collect())
    }

    fn other_pct(&self) -> Option<f64> {
        median(self.runs.iter().map(RunResult::other_pct).collect())
    }

    /// Websocket payload bytes per delivered event (after compression).
    fn wire_per_event(&self) -> Option<f64> {
        median(self.runs.iter().map(|r| r.wire_bytes as f64 / r.got.max(1) as f64).collect())
    }

    fn lost(&self) -> u64 {
        self.runs.iter().map(|r| r.expected.saturating_sub(r.got)).sum()
    }

    fn expected(&self) -> u64 {
        self.runs.iter().map(|r| r.expected).sum()
    }

    fn seq_errors(&self) -> u64 {
        self.runs.iter().map(|r| r.seq_errors).sum()
    }

    fn resumes(&self) -> u64 {
        self.runs.iter().map(|r| r.resumes).sum()
    }

    fn dropped(&self) -> usize {
        self.runs.iter().map(|r| r.lost_conns.len()).sum()
    }

    /// Every run complete, and no consumer had to resume.
    fn complete(&self) -> bool {
        !self.runs.is_empty()
            && self.errors.is_empty()
            && self.runs.iter().all(RunResult::complete)
            && self.resumes() == 0
    }

    /// Median over runs of the `q` latency quantile, in µs.
    fn latency_us(&self, q: f64) -> Option<f64> {
        median(
            self.runs
                .iter()
                .filter_map(|r| {
                    let mut v = r.latencies.clone();
                    v.sort_unstable();
                    quantile(&v, q).map(|ns| ns as f64 / 1000.0)
                })
                .collect(),
        )
    }
}

fn find<'a>(series: &'a [Series], scenario: Scenario, target: &str) -> Option<&'a Series> {
    series.iter().find(|s| s.scenario == scenario && s.target == target && !s.runs.is_empty())
}

fn burst(clients: u32, compress: Compress, mix: FirehoseMix) -> Scenario {
    Scenario::Burst { clients, compress, mix }
}

/// The direct baseline a burst row is compared with: same compression and
/// mix, one client per shard.
fn baseline(series: &[Series], s: &Series) -> Option<f64> {
    match s.scenario {
        Scenario::Burst { compress, mix, .. } => find(series, burst(1, compress, mix), "direct")?.rate(),
        Scenario::Latency => None,
    }
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "NOT met"
    }
}

pub fn render(r: &Report) -> String {
    let mut o = String::new();
    let m = &r.machine;
    let per_shard = r.burst / u64::from(SHARDS);
    let _ = writeln!(o, "## gateway-proxy loadtest{}", if r.quick { " (--quick: 1 run, small counts)" } else { "" });
    let _ = writeln!(o);
    let _ = writeln!(
        o,
        "machine: {} CPUs, {}, {:.1} GiB RAM, Linux {}, load average at start {}",
        m.cpus, m.model, m.mem_gib, m.kernel, m.loadavg
    );
    let _ = writeln!(
        o,
        "proxy:   {} ({}), {SHARDS} shards, log_level warn, validate_token on, cache defaults",
        m.binary, m.git
    );
    let _ = writeln!(
        o,
        "         `proxy, N cores` run with backpressure {} (no client is closed for lag, so rate and CPU are for \
         complete deliveries); `default backpressure` (4,000) is the loss check",
        thousands(crate::RAISED_BACKPRESSURE as f64)
    );
    let _ = writeln!(
        o,
        "load:    fake Discord in-process, firehose of pre-encoded dispatches (seq and send stamp written per event); \
         consumers in-process (tokio-tungstenite: read, count, seq +1, stamp); loopback only"
    );
    let _ = writeln!(
        o,
        "runs:    {} per figure, medians; burst {} events ({} per shard); latency {} events at {} events/s ({}/s per shard)",
        r.runs,
        thousands(r.burst as f64),
        thousands(per_shard as f64),
        thousands(r.latency_events as f64),
        thousands(LATENCY_RATE),
        LATENCY_RATE / f64::from(SHARDS),
    );
    let _ = writeln!(o);

    let _ = writeln!(o, "### Unthrottled burst: relay rate, CPU, completeness");
    let _ = writeln!(o);
    let _ = writeln!(
        o,
        "| load | via | events/s | spread | x direct | proxy CPU s/100k events | proxy CPU us/delivery | wire B/event | lost | seq errors | closed, resumed | closed for good | load-gen CPU s/100k | other CPU % |"
    );
    let _ = writeln!(o, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for s in r.series.iter().filter(|s| matches!(s.scenario, Scenario::Burst { .. })) {
        if s.runs.is_empty() {
            let _ = writeln!(
                o,
                "| {} | {} | failed: {} |",
                s.scenario.label(),
                s.target,
                s.errors.first().map_or("", String::as_str).replace('\n', " ")
            );
            continue;
        }
        let ratio = match (s.rate(), baseline(&r.series, s)) {
            (Some(a), Some(b)) if s.target != "direct" => format!("{:.2}", a / b),
            _ => "-".into(),
        };
        let _ = writeln!(
            o,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} of {} | {} | {} | {} | {} | {} |",
            s.scenario.label(),
            s.target,
            opt(s.rate(), thousands).replace("n/a", "incomplete"),
            s.spread(),
            ratio,
            opt(s.cpu_per_100k(), |v| format!("{v:.3}")),
            opt(s.cpu_per_delivery_us(), |v| format!("{v:.2}")),
            opt(s.wire_per_event(), |v| format!("{v:.0}")),
            thousands(s.lost() as f64),
            thousands(s.expected() as f64),
            s.seq_errors(),
            s.resumes(),
            s.dropped() + s.errors.len(),
            opt(s.loadgen_per_100k(), |v| format!("{v:.3}")),
            opt(s.other_pct(), |v| format!("{v:.0}")),
        );
    }
    let _ = writeln!(o);
    for s in &r.series {
        let closed = s.runs.iter().flat_map(|r| r.disconnects.iter()).next();
        let lost = s.runs.iter().flat_map(|r| r.lost_conns.iter()).next();
        if let Some(why) = closed {
            let _ =
                writeln!(o, "- {} via {}: consumers closed by the server, e.g. `{why}`", s.scenario.label(), s.target);
        }
        if let Some(why) = lost {
            let _ = writeln!(o, "- {} via {}: consumers lost for good, e.g. `{why}`", s.scenario.label(), s.target);
        }
    }
    if r.series.iter().any(|s| s.resumes() > 0 || s.dropped() > 0) {
        let _ = writeln!(o);
    }

    let _ = writeln!(o, "### Latency at {} events/s (1 KB MESSAGE_CREATE, plain, 1 client per shard)", LATENCY_RATE);
    let _ = writeln!(o);
    let _ = writeln!(
        o,
        "| via | p50 us | p99 us | p99.9 us | added p50 us | added p99 us | added p99.9 us | lost | proxy CPU s/100k | other CPU % |"
    );
    let _ = writeln!(o, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let direct_lat = find(&r.series, Scenario::Latency, "direct");
    for s in r.series.iter().filter(|s| s.scenario == Scenario::Latency) {
        if s.runs.is_empty() {
            let _ = writeln!(o, "| {} | failed: {} |", s.target, s.errors.first().map_or("", String::as_str));
            continue;
        }
        let added = |q: f64| match (s.latency_us(q), direct_lat.and_then(|d| d.latency_us(q))) {
            (Some(a), Some(b)) if s.target != "direct" => format!("{:+.0}", a - b),
            _ => "-".into(),
        };
        let _ = writeln!(
            o,
            "| {} | {} | {} | {} | {} | {} | {} | {} of {} | {} | {} |",
            s.target,
            opt(s.latency_us(0.50), |v| format!("{v:.0}")),
            opt(s.latency_us(0.99), |v| format!("{v:.0}")),
            opt(s.latency_us(0.999), |v| format!("{v:.0}")),
            added(0.50),
            added(0.99),
            added(0.999),
            thousands(s.lost() as f64),
            thousands(s.expected() as f64),
            opt(s.cpu_per_100k(), |v| format!("{v:.3}")),
            opt(s.other_pct(), |v| format!("{v:.0}")),
        );
    }
    let _ = writeln!(o);

    let _ = writeln!(o, "### Proxy memory (throughput proxies)");
    let _ = writeln!(o);
    let _ = writeln!(o, "| proxy | RSS after start MB | RSS after all runs MB | peak RSS (VmHWM) MB | still running |");
    let _ = writeln!(o, "|---|---:|---:|---:|---|");
    for mrow in &r.memory {
        let _ = writeln!(
            o,
            "| {} | {} | {} | {} | {} |",
            mrow.target,
            mib(mrow.idle_kib),
            mib(mrow.after_kib),
            mib(mrow.hwm_kib),
            if mrow.alive { "yes" } else { "NO" }
        );
    }
    let _ = writeln!(o);

    if !r.cache_rows.is_empty() {
        let title = format!(
            "### Guild cache: {} guilds x {} members over {SHARDS} shards (issue 3)",
            thousands(f64::from(r.cache_guilds)),
            r.cache_members
        );
        cache_table(&mut o, &title, &r.cache_rows);
    }
    if !r.big_shard_rows.is_empty() {
        let title = format!(
            "### Guild cache: one shard of {} guilds x {} members (issue 3)",
            thousands(f64::from(crate::BIG_SHARD_GUILDS)),
            r.cache_members
        );
        cache_table(&mut o, &title, &r.big_shard_rows);
    }

    let retried: usize = r.series.iter().map(|s| s.retries).sum();
    if retried > 0 {
        let _ = writeln!(
            o,
            "{retried} run(s) were repeated because other processes used over 30% of a CPU during them; \
             the quietest attempt of each is kept (other CPU % above is what remained).\n"
        );
    }
    targets(&mut o, r);

    for (name, lines) in &r.proxy_logs {
        if lines.is_empty() {
            continue;
        }
        let _ = writeln!(o, "{name} wrote {} log lines; the last ones:", lines.len());
        let tail = std::env::var("LOADTEST_LOG_TAIL").ok().and_then(|v| v.parse().ok()).unwrap_or(5);
        for l in lines.iter().rev().take(tail).rev() {
            let _ = writeln!(o, "    {l}");
        }
    }
    let _ = writeln!(o, "wall time {:.0} s", r.wall.as_secs_f64());
    o
}

/// The targets, with what this run measured.
fn targets(o: &mut String, r: &Report) {
    let _ = writeln!(o, "### Against the targets (issue 5: 4 shards, 1 plain client per shard, 1 KB events)");
    let _ = writeln!(o);
    let plain = burst(1, Compress::Plain, FirehoseMix::Messages);
    let direct = find(&r.series, plain, "direct").and_then(Series::rate);
    let direct_lat = find(&r.series, Scenario::Latency, "direct");
    let proxies: Vec<String> = r.memory.iter().map(|m| m.target.clone()).collect();
    for p in &proxies {
        let _ = writeln!(o, "{p}:");
        if let Some(s) = find(&r.series, plain, p) {
            let _ = writeln!(
                o,
                "- burst of {} events complete (nothing lost, seq +1, no disconnect) in every run{}: {} ({} lost, {} seq errors, {} closed and resumed, {} closed for good)",
                thousands(r.burst as f64),
                if p.contains("default backpressure") { " with the default config" } else { " (backpressure raised)" },
                verdict(s.complete()),
                s.lost(),
                s.seq_errors(),
                s.resumes(),
                s.dropped()
            );
            if let (Some(a), Some(b)) = (s.rate(), direct) {
                let _ = writeln!(o, "- relay rate >= 0.8x direct: {:.2}x, {}", a / b, verdict(a / b >= 0.8));
            }
            if let Some(c) = s.cpu_per_100k() {
                let _ = writeln!(o, "- proxy CPU <= 0.07 s per 100k events: {c:.3} s, {}", verdict(c <= 0.07));
            }
        }
        if let (Some(s), Some(d)) = (find(&r.series, Scenario::Latency, p), direct_lat) {
            if let (Some(a), Some(b)) = (s.latency_us(0.99), d.latency_us(0.99)) {
                let _ = writeln!(o, "- added p99 <= 80 us at 1,000/s: {:+.0} us, {}", a - b, verdict(a - b <= 80.0));
            }
        }
        let one = find(&r.series, plain, p).and_then(Series::cpu_per_100k);
        let sixteen =
            find(&r.series, burst(16, Compress::Plain, FirehoseMix::Messages), p).and_then(Series::cpu_per_100k);
        if let (Some(a), Some(b)) = (one, sixteen) {
            let _ = writeln!(o, "- fan-out, 16 clients < 4x one client's CPU: {:.2}x, {}", b / a, verdict(b / a < 4.0));
        }
        let zlib =
            find(&r.series, burst(1, Compress::Zlib, FirehoseMix::Messages), p).and_then(Series::cpu_per_delivery_us);
        let zstd =
            find(&r.series, burst(1, Compress::Zstd, FirehoseMix::Messages), p).and_then(Series::cpu_per_delivery_us);
        let plain_us = find(&r.series, plain, p).and_then(Series::cpu_per_delivery_us);
        if let Some(z) = zlib {
            let marginal = plain_us.map_or(String::new(), |b| format!(" ({:+.2} us over a plain client)", z - b));
            let _ = writeln!(
                o,
                "- zlib-stream client < 10 us CPU per 1 KB event (relay included): {z:.2} us{marginal}, {}",
                verdict(z < 10.0)
            );
        }
        if let (Some(z), Some(s)) = (zlib, zstd) {
            let _ = writeln!(o, "- zstd-stream cheaper than zlib-stream: {s:.2} us vs {z:.2} us, {}", verdict(s < z));
        }
    }
    let on = r.cache_rows.iter().find(|c| c.label.ends_with("members on") && c.error.is_none());
    let off = r.cache_rows.iter().find(|c| c.label.ends_with("members off") && c.error.is_none());
    let fake = r.cache_rows.iter().find(|c| c.rss_kib.is_none() && c.error.is_none());
    if on.is_some() || off.is_some() {
        let full = r.cache_guilds == 2_000 && r.cache_members == 200;
        let _ = writeln!(
            o,
            "issue 3{}:",
            if full { "" } else { " (smaller world than the target's 2,000 x 200: indicative only)" }
        );
        if let Some(rss) = on.and_then(|c| c.rss_kib) {
            let mb = rss as f64 / 1024.0;
            let _ = writeln!(o, "- RSS with members cached <= 80 MB: {mb:.1} MB, {}", verdict(mb <= 80.0));
        }
        if let Some(rss) = off.and_then(|c| c.rss_kib) {
            let mb = rss as f64 / 1024.0;
            let _ = writeln!(o, "- RSS without members <= 25 MB: {mb:.1} MB, {}", verdict(mb <= 25.0));
        }
        let ms = |c: &CacheRow| median(c.snapshot.iter().map(|d| d.as_secs_f64()).collect());
        if let (Some(a), Some(b)) = (on.and_then(ms), fake.and_then(ms)) {
            let _ = writeln!(
                o,
                "- READY + GUILD_CREATEs (members cached, same payloads) <= 1.3x the fake: {:.2}x, {}",
                a / b,
                verdict(a / b <= 1.3)
            );
        }
    }
    let _ = writeln!(o);
}

/// A table of cache rows; the ratio is against the row without RSS (the fake).
fn cache_table(o: &mut String, title: &str, rows: &[CacheRow]) {
    let _ = writeln!(o, "{title}");
    let _ = writeln!(o);
    let _ = writeln!(
        o,
        "| serving | RSS loaded MB | RSS after READY runs MB | peak MB | READY + every GUILD_CREATE of shard 0, ms | x fake | MB sent | start to loaded s |"
    );
    let _ = writeln!(o, "|---|---:|---:|---:|---:|---:|---:|---:|");
    let fake_ms = rows
        .iter()
        .find(|c| c.rss_kib.is_none() && c.error.is_none())
        .and_then(|c| median(c.snapshot.iter().map(|d| d.as_secs_f64() * 1e3).collect()));
    for c in rows {
        if let Some(e) = &c.error {
            let _ = writeln!(o, "| {} | failed: {} |", c.label, e.replace('\n', " "));
            continue;
        }
        let ms = median(c.snapshot.iter().map(|d| d.as_secs_f64() * 1e3).collect());
        let ratio = match (ms, fake_ms) {
            (Some(a), Some(b)) if c.rss_kib.is_some() => format!("{:.2}", a / b),
            _ => "-".into(),
        };
        let _ = writeln!(
            o,
            "| {} | {} | {} | {} | {} | {} | {:.1} | {} |",
            c.label,
            c.rss_kib.map_or("-".into(), mib),
            c.rss_after_kib.map_or("-".into(), mib),
            c.hwm_kib.map_or("-".into(), mib),
            opt(ms, |v| format!("{v:.1}")),
            ratio,
            c.snapshot_bytes as f64 / 1e6,
            c.load_time.map_or("-".into(), |d| format!("{:.1}", d.as_secs_f64())),
        );
    }
    let _ = writeln!(o);
}
