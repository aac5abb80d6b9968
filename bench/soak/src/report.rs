//! The final report: figures, the proxy's ERROR and WARN lines grouped,
//! every problem a client found (with the proxy's lines around the first
//! ones), and PASS/FAIL per criterion.

use std::time::Duration;

use crate::driver::Fault;
use crate::logs::{self, LogReport};
use crate::scenario::Results;

/// RSS at the end may differ from the baseline by this fraction.
const RSS_TOLERANCE: f64 = 0.10;
/// Descriptors the end count may exceed the start count by.
const FD_SLACK: usize = 2;
/// Problems printed in full; the proxy's lines are shown around the first few.
const PROBLEMS_SHOWN: usize = 30;
const PROBLEMS_WITH_LOG: usize = 5;

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

fn mmss(d: Duration) -> String {
    let s = d.as_secs();
    format!("{}:{:02}", s / 60, s % 60)
}

/// One criterion's verdict.
struct Verdict {
    name: &'static str,
    pass: bool,
    detail: String,
}

/// Prints the report; returns whether every criterion passed.
pub fn print(r: &Results) -> bool {
    let log = logs::classify(&r.log, &r.driver.faults, r.faulted_from);
    let a = &r.args;
    println!();
    println!("=== soak: gateway-proxy under upstream faults and client restarts ===");
    println!(
        "{} shards ({} guilds each), {} events/s per shard, one upstream fault every {:?}, faulted phase {} \
         (ran {}), drain {:.1}s",
        a.shards,
        r.guilds_per_shard.iter().map(|g| g.to_string()).collect::<Vec<_>>().join("/"),
        a.rate,
        a.drop_every,
        mmss(a.duration),
        mmss(r.driver.elapsed),
        r.drain_time.as_secs_f64()
    );
    let m = &r.memory;
    match m.session_ttl {
        Some(ttl) => println!(
            "A short run: the proxy ran with session_ttl {}s (default 180), so that the sessions clients leave (and \
             the replay they hold) level off by {}; RSS baseline at {}.",
            ttl.as_secs(),
            mmss(m.level_off),
            mmss(m.baseline_at)
        ),
        None if m.level_off > m.baseline_at => println!(
            "Note: at this rate the replay kept for left sessions only levels off at {}, after the RSS baseline at {}.",
            mmss(m.level_off),
            mmss(m.baseline_at)
        ),
        None => {}
    }
    println!(
        "Not used: op 9 with d = false and session-ending close codes (4007, 4009): Discord drops the undelivered \
         events of a session it ends, so exactly-once could not be asserted across them."
    );

    events(r);
    faults(r);
    clients(r);
    let problems = problems(r);
    let (rss_ok, rss_detail) = memory(r);
    let fd_ok = r.fds_end.min <= r.fds_start.min + FD_SLACK;
    fds(r, fd_ok);
    cpu(r);
    log_section(&log);

    let delivered: u64 = r.clients.iter().map(|c| c.checker.stats.delivered).sum();
    let tail_short: Vec<String> = r
        .tail
        .iter()
        .enumerate()
        .filter(|(_, (owed, seen))| seen < owed)
        .map(|(s, (owed, seen))| format!("shard {s}: last owed {owed}, last seen {seen}"))
        .collect();
    let verdicts = [
        Verdict {
            name: "every event exactly once, in order, across resumes",
            pass: problems == 0 && r.clients.len() == a.shards as usize,
            detail: format!("{problems} problem(s) over {} clients, {delivered} events delivered", r.clients.len()),
        },
        Verdict {
            name: "every client got its shard's last owed event",
            pass: r.drained && tail_short.is_empty(),
            detail: if tail_short.is_empty() && r.drained {
                format!("drained in {:.1}s", r.drain_time.as_secs_f64())
            } else if tail_short.is_empty() {
                "not every shard and client was connected at the end".into()
            } else {
                tail_short.join("; ")
            },
        },
        Verdict { name: "RSS at the end within 10% of the baseline", pass: rss_ok, detail: rss_detail },
        Verdict {
            name: "no file descriptor leaked",
            pass: fd_ok,
            detail: format!("{} at the start, {} at the end (slack {FD_SLACK})", r.fds_start.min, r.fds_end.min),
        },
        Verdict {
            name: "no ERROR, no WARN the scenario did not cause",
            pass: log.pass(),
            detail: format!(
                "{} ERROR, {} unexpected WARN, {} kind(s) over count",
                log.errors.values().map(|g| g.count).sum::<usize>(),
                log.unexpected_warnings,
                log.excess.len()
            ),
        },
        Verdict { name: "the proxy ran throughout", pass: r.proxy_survived, detail: format!("stop: {}", r.proxy_stop) },
    ];
    println!();
    println!("--- verdict ---");
    for v in &verdicts {
        println!("{:<4}  {:<52} {}", if v.pass { "PASS" } else { "FAIL" }, v.name, v.detail);
    }
    let pass = verdicts.iter().all(|v| v.pass);
    println!("RESULT: {}", if pass { "PASS" } else { "FAIL" });
    pass
}

fn events(r: &Results) {
    let (mut owed, mut none, mut orphaned) = (0, 0, 0);
    for s in 0..r.args.shards {
        let (o, n, x) = r.ledger.counts(s);
        owed += o;
        none += n;
        orphaned += x;
    }
    let secs = r.driver.elapsed.as_secs_f64().max(1e-9);
    println!();
    println!("--- events ---");
    println!(
        "injected {} ({:.1}/s over all shards): owed {owed}, without upstream session {none}, orphaned by close 1001 {orphaned}",
        r.driver.injected,
        r.driver.injected as f64 / secs
    );
    let seen: u64 = r.clients.iter().map(|c| c.checker.stats.orphans_seen).sum();
    let skipped: u64 = r.clients.iter().map(|c| c.checker.stats.orphans_skipped).sum();
    if orphaned > 0 {
        println!("orphaned events seen by clients {seen}, skipped {skipped} (either is allowed: Discord drops them)");
    }
}

fn faults(r: &Results) {
    println!();
    println!("--- upstream faults ---");
    let mut line = Vec::new();
    for f in Fault::ALL {
        let tried = r.driver.faults.iter().filter(|x| x.fault == f).count();
        let applied = r.driver.faults.iter().filter(|x| x.fault == f && x.applied).count();
        line.push(format!("{} {applied}/{tried}", f.name()));
    }
    println!("applied/tried: {}", line.join(", "));
    // On the time base of the problems below: since the proxy's first log line.
    if let Some(t0) = r.log.first().map(|l| l.at) {
        let timeline: Vec<String> = r
            .driver
            .faults
            .iter()
            .map(|f| {
                let at = f.at.saturating_duration_since(t0).as_secs_f64();
                format!(
                    "+{at:.1}s shard {} {}{}",
                    f.shard,
                    f.fault.name(),
                    if f.applied { "" } else { " (no connection)" }
                )
            })
            .collect();
        for chunk in timeline.chunks(4) {
            println!("  {}", chunk.join(" | "));
        }
    }
    let identifies = r.upstream_end.identifies - r.upstream_start.identifies;
    let resumes = r.upstream_end.resumes - r.upstream_start.resumes;
    let applied = |f: Fault| r.driver.faults.iter().filter(|x| x.fault == f && x.applied).count() as u64;
    let want_identifies = applied(Fault::Close1001);
    let want_resumes =
        applied(Fault::Reset) + applied(Fault::Close4000) + applied(Fault::Reconnect) + applied(Fault::InvalidSession);
    println!(
        "upstream sessions during the run (fake's counts): {identifies} Identify (expected {want_identifies}: one per \
         close 1001), {resumes} Resume (expected {want_resumes}: one per other fault){}",
        if identifies == want_identifies && resumes == want_resumes { "" } else { "  <- differs" }
    );
    println!("upstream totals: identify_count {} resume_count {}", r.upstream_end.identifies, r.upstream_end.resumes);
}

fn clients(r: &Results) {
    println!();
    println!("--- clients (one per shard) ---");
    println!(
        "{:>5} {:<17} {:>9} {:>9} {:>9} {:>8} {:>7} {:>9} {:>8} {:>8}",
        "shard",
        "encoding",
        "delivered",
        "last seen",
        "last owed",
        "restarts",
        "resumed",
        "identified",
        "replayed",
        "problems"
    );
    let (mut restarts, mut resumes, mut identifies, mut rr, mut ir) = (0, 0, 0, 0, 0);
    let (mut resets, mut c4000, mut c1000, mut hb, mut acks) = (0, 0, 0, 0, 0);
    for c in &r.clients {
        let s = &c.checker.stats;
        let (owed, seen) = r.tail.get(c.shard as usize).copied().unwrap_or_default();
        let n = c.resume_restarts + c.identify_restarts;
        println!(
            "{:>5} {:<17} {:>9} {:>9} {:>9} {:>8} {:>7} {:>9} {:>8} {:>8}",
            c.shard,
            c.encoding.name(),
            s.delivered,
            seen,
            owed,
            n,
            s.resumes,
            s.identifies,
            s.replayed_soak,
            c.checker.problems.len()
        );
        restarts += n;
        resumes += s.resumes;
        identifies += s.identifies;
        rr += c.resume_restarts;
        ir += c.identify_restarts;
        resets += c.resets;
        c4000 += c.closes_4000;
        c1000 += c.closes_1000;
        hb += s.heartbeats;
        acks += s.acks;
    }
    println!(
        "client reconnects: {restarts} ({rr} to RESUME, {ir} to IDENTIFY); completed: {resumes} RESUMED, {} new READY \
         (besides the first per client)",
        identifies.saturating_sub(r.clients.len() as u64)
    );
    println!("left by: TCP reset {resets}, close 4000 {c4000}, close 1000 {c1000}; heartbeats {hb}, ACKs {acks}");
    let ends: Vec<String> =
        r.clients.iter().flat_map(|c| c.server_ends.iter().map(move |e| format!("shard {}: {e}", c.shard))).collect();
    if !ends.is_empty() {
        println!("connections the proxy ended on its own: {}", ends.len());
        for e in ends.iter().take(20) {
            println!("  {e}");
        }
    }
}

/// Prints every problem (the first ones with the proxy's log around them); returns their count.
fn problems(r: &Results) -> usize {
    let mut all: Vec<_> = r.clients.iter().flat_map(|c| c.checker.problems.iter()).collect();
    all.sort_by_key(|p| p.at);
    if all.is_empty() {
        return 0;
    }
    let t0 = r.log.first().map(|l| l.at);
    println!();
    println!("--- problems ({}) ---", all.len());
    for (i, p) in all.iter().take(PROBLEMS_SHOWN).enumerate() {
        let when = t0.map_or(String::new(), |t| format!("+{:.3}s ", p.at.saturating_duration_since(t).as_secs_f64()));
        println!("{when}shard {} ({}), session {}: {}", p.shard, p.client, p.session.as_deref().unwrap_or("-"), p.what);
        if i < PROBLEMS_WITH_LOG {
            let lines = logs::around(&r.log, p.at, p.shard, Duration::from_secs(5), Duration::from_secs(1), 25);
            for l in lines {
                println!("    | {l}");
            }
        }
    }
    if all.len() > PROBLEMS_SHOWN {
        println!("... and {} more", all.len() - PROBLEMS_SHOWN);
    }
    all.len()
}

/// Prints the RSS series; returns the verdict and its detail.
fn memory(r: &Results) -> (bool, String) {
    println!();
    println!("--- proxy memory (VmRSS, every 10 s of the faulted phase) ---");
    let step = r.samples.len().div_ceil(30).max(1);
    let series: Vec<String> = r
        .samples
        .iter()
        .enumerate()
        .filter(|(i, _)| i % step == step - 1 || *i + 1 == r.samples.len())
        .map(|(_, s)| {
            format!(
                "{} {:>9} (replay {:>8}, {:>3} sessions)",
                mmss(s.at),
                mib(s.rss_kib),
                mib(s.gauges.replay_bytes / 1024),
                s.gauges.sessions
            )
        })
        .collect();
    for chunk in series.chunks(3) {
        println!("  {}", chunk.join(" | "));
    }
    let g = &r.gauges_end;
    println!(
        "proxy gauges at the end: replay buffers {} in {} dispatches, {} client sessions (connected or resumable), \
         {} clients closed for lagging, {} replay dispatches evicted",
        mib(g.replay_bytes / 1024),
        g.replay_events,
        g.sessions,
        g.lagged,
        g.evicted
    );
    println!(
        "after warm-up {}, at the end {}, peak (VmHWM) {}",
        mib(r.rss_start_kib),
        mib(r.rss_end_kib),
        mib(r.hwm_end_kib)
    );
    let split = |rss: u64, anon: u64, file: u64, replay: u64| {
        format!(
            "{} = heap etc. (RssAnon) {} + binary and files (RssFile) {} + other {}; replay payload {}",
            mib(rss),
            mib(anon),
            mib(file),
            mib(rss.saturating_sub(anon + file)),
            mib(replay / 1024)
        )
    };
    if let Some(b) = r.baseline() {
        println!("baseline: {}", split(b.rss_kib, b.anon_kib, b.file_kib, b.gauges.replay_bytes));
    }
    println!("end:      {}", split(r.rss_end_kib, r.anon_end_kib, r.file_end_kib, r.gauges_end.replay_bytes));
    match r.baseline() {
        Some(b) if b.rss_kib > 0 => {
            let change = (r.rss_end_kib as f64 - b.rss_kib as f64) / b.rss_kib as f64;
            let detail = format!(
                "{} at {} (baseline), {} at the end: {:+.1}%",
                mib(b.rss_kib),
                mmss(b.at),
                mib(r.rss_end_kib),
                change * 100.0
            );
            println!("{detail}");
            (change.abs() <= RSS_TOLERANCE, detail)
        }
        _ => (false, format!("no RSS sample at {} (the run was shorter)", mmss(r.memory.baseline_at))),
    }
}

fn fds(r: &Results, ok: bool) {
    println!();
    println!("--- proxy file descriptors (every shard and client connected) ---");
    println!(
        "after warm-up {} (min/max over {:?}: {}/{}), at the end {} ({}/{}); during the run {}-{}",
        r.fds_start.min,
        Duration::from_secs(2),
        r.fds_start.min,
        r.fds_start.max,
        r.fds_end.min,
        r.fds_end.min,
        r.fds_end.max,
        r.samples.iter().map(|s| s.fds).min().unwrap_or(0),
        r.samples.iter().map(|s| s.fds).max().unwrap_or(0)
    );
    if !ok {
        let kinds = |k: &[(String, usize)]| k.iter().map(|(n, c)| format!("{n} x{c}")).collect::<Vec<_>>().join(", ");
        println!("  start: {}", kinds(&r.fds_start.kinds));
        println!("  end:   {}", kinds(&r.fds_end.kinds));
    }
}

fn cpu(r: &Results) {
    let secs = (r.cpu_end - r.cpu_start).max(0.0);
    let delivered: u64 = r.clients.iter().map(|c| c.checker.stats.delivered).sum();
    println!();
    println!("--- proxy CPU (utime + stime) ---");
    println!(
        "{:.2} s over the faulted phase and drain ({:.2} s since start): {:.1} us per injected event, {:.1} us per \
         delivered event, {:.1}% of one core",
        secs,
        r.cpu_end,
        secs * 1e6 / r.driver.injected.max(1) as f64,
        secs * 1e6 / delivered.max(1) as f64,
        secs * 100.0 / (r.driver.elapsed + r.drain_time).as_secs_f64().max(1e-9)
    );
}

fn log_section(log: &LogReport) {
    println!();
    println!("--- proxy log ---");
    let levels: Vec<String> = log.by_level.iter().map(|(l, n)| format!("{l} {n}")).collect();
    println!("{} lines: {}", log.lines, levels.join(", "));
    if log.errors.is_empty() {
        println!("ERROR lines: none");
    } else {
        println!("ERROR lines:");
        for g in log.errors.values() {
            println!("  {:>5} x {}", g.count, g.example);
        }
    }
    if log.warnings.is_empty() {
        println!("WARN lines: none");
    } else {
        println!("WARN lines:");
        for g in log.warnings.values() {
            let why = g.expected.map_or("UNEXPECTED".to_owned(), |r| format!("expected: {r}"));
            println!("  {:>5} x {}\n          ({why})", g.count, g.example);
        }
    }
    for (f, n, inflicted) in &log.excess {
        println!("  more lines for {} than such faults: {n} lines, {inflicted} faults", f.name());
    }
}
