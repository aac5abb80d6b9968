//! In-process benchmark of the guild cache (issue 3): what the cache holds
//! for Discord-shaped guilds from the fake Discord's generator, what one
//! cache update costs per event kind, and how long serialising a shard's
//! GUILD_CREATEs takes. Prints a table; asserts nothing.
//!
//! `cargo run --release -p cachebench -- [--guilds N] [--members N] [--runs N]`

use fake_discord::Generator;
use gateway_proxy::cache::ShardCache;
use gateway_proxy::config::CacheConfig;
use serde_json::json;
use std::time::{Duration, Instant};

const SHARDS: u32 = 4;

struct Args {
    /// Only GUILD_CREATE serialisation, `runs` times over one cache (for profiling).
    snapshot_only: bool,
    /// Only the update-cost table.
    updates_only: bool,
    guilds: u32,
    members: u32,
    runs: usize,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args { snapshot_only: false, updates_only: false, guilds: 2_000, members: 200, runs: 5 };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut num = |name: &str| -> Result<u64, String> {
            it.next().and_then(|v| v.parse().ok()).ok_or_else(|| format!("{name} needs a number"))
        };
        match flag.as_str() {
            "--guilds" => a.guilds = num("--guilds")?.clamp(1, 100_000) as u32,
            "--members" => a.members = num("--members")?.clamp(1, 100_000) as u32,
            "--updates-only" => a.updates_only = true,
            "--snapshot-only" => a.snapshot_only = true,
            "--runs" => a.runs = num("--runs")?.clamp(1, 100) as usize,
            "-h" | "--help" => {
                return Err(
                    "usage: cachebench [--guilds N] [--members N] [--runs N] [--updates-only | --snapshot-only]".into(),
                )
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(a)
}

/// The proxy's default cache (channels, roles, current member), with members on or off:
/// what the loadtest's RSS rows run.
fn flags(members: bool) -> CacheConfig {
    CacheConfig { members, users: members, ..CacheConfig::default() }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Every shard's READY and GUILD_CREATE payloads, as Discord sends them.
fn world(gen: &Generator) -> Vec<(String, Vec<String>)> {
    (0..SHARDS)
        .map(|s| {
            let ready = gen.ready(s, SHARDS, "session", "wss://gateway.example").to_string();
            // large_threshold 250, as the proxy identifies: every member is listed.
            let creates = gen
                .guilds_of_shard(s, SHARDS)
                .into_iter()
                .map(|i| gen.guild_create(i, true, 250).to_string())
                .collect();
            (ready, creates)
        })
        .collect()
}

fn load(world: &[(String, Vec<String>)], flags: &CacheConfig) -> (Vec<ShardCache>, Duration) {
    let t0 = Instant::now();
    let caches = world
        .iter()
        .map(|(ready, creates)| {
            let mut c = ShardCache::new(flags.clone());
            c.apply(b"READY", ready);
            for g in creates {
                c.apply(b"GUILD_CREATE", g);
            }
            c
        })
        .collect();
    (caches, t0.elapsed())
}

fn mib(b: usize) -> String {
    format!("{:.1} MiB", b as f64 / (1024.0 * 1024.0))
}

/// Cache events of the kinds a busy bot sees most, shaped as Discord sends them.
fn events(gen: &Generator, guilds: &[u32], members: u32, n: usize) -> Vec<(&'static str, String)> {
    let mut out = Vec::with_capacity(n);
    let mut k = 0u32;
    while out.len() < n {
        k = k.wrapping_add(1);
        let i = guilds[(k as usize * 7919) % guilds.len()];
        let m = 1 + (k % (members - 1).max(1));
        let gid = gen.guild_id(i).to_string();
        let mut member = gen.member(i, m);
        member["guild_id"] = json!(gid);
        member["nick"] = json!(format!("renamed {k}"));
        out.push(("GUILD_MEMBER_UPDATE", member.to_string()));
        let mut p = gen.presence(i, m);
        p["guild_id"] = json!(gid);
        p["status"] = json!(if k.is_multiple_of(2) { "idle" } else { "dnd" });
        out.push(("PRESENCE_UPDATE", p.to_string()));
        let channel = if k.is_multiple_of(2) { Some(gen.voice_channel_id(i)) } else { None };
        out.push(("VOICE_STATE_UPDATE", gen.voice_state(i, m, channel, "abcdef", true).to_string()));
        let mut channel = gen.channels(i).swap_remove(1);
        channel["guild_id"] = json!(gid);
        channel["topic"] = json!(format!("topic {k}"));
        out.push(("CHANNEL_UPDATE", channel.to_string()));
        let created = json!({"guild_id": gid, "role": {"id": (1u64 << 40 | u64::from(k)).to_string(), "name": "new", "color": 0, "hoist": false, "icon": null, "unicode_emoji": null, "position": 1, "permissions": "0", "managed": false, "mentionable": false, "flags": 0}});
        out.push(("GUILD_ROLE_CREATE", created.to_string()));
        let mut member = gen.member(i, m);
        member["guild_id"] = json!(gid);
        let uid = member["user"]["id"].clone();
        out.push(("GUILD_MEMBER_REMOVE", json!({"guild_id": gid, "user": member["user"].clone()}).to_string()));
        out.push(("GUILD_MEMBER_ADD", member.to_string()));
        let _ = uid;
    }
    out.truncate(n);
    out
}

/// Bytes per entity and GUILD_CREATE serialisation.
fn tables(world: &[(String, Vec<String>)], args: &Args) {
    println!("| cache | cache bytes | per guild | per member | per channel | per role | load time |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for (label, f) in
        [("members on", flags(true)), ("members off", flags(false)), ("everything", CacheConfig::everything())]
    {
        let mut times = Vec::new();
        let mut caches = Vec::new();
        for _ in 0..args.runs {
            let (c, t) = load(world, &f);
            times.push(t.as_secs_f64());
            caches = c;
        }
        let total: usize = caches.iter().map(ShardCache::heap_bytes).sum();
        let (mut m_bytes, mut m_n, mut c_bytes, mut c_n, mut r_bytes, mut r_n, mut g_n) = (0, 0, 0, 0, 0, 0, 0);
        for c in &caches {
            for (_, g) in c.guilds() {
                g_n += 1;
                m_bytes += g.members.heap_bytes();
                m_n += g.members.len();
                c_bytes += g.channels.heap_bytes();
                c_n += g.channels.len();
                r_bytes += g.roles.heap_bytes();
                r_n += g.roles.len();
            }
        }
        let per = |b: usize, n: usize| b.checked_div(n).map_or_else(|| "-".to_owned(), |v| format!("{v} B"));
        println!(
            "| {label} | {} | {} | {} | {} | {} | {:.0} ms |",
            mib(total),
            per(total, g_n),
            per(m_bytes, m_n),
            per(c_bytes, c_n),
            per(r_bytes, r_n),
            median(times) * 1e3
        );
    }
    println!();

    serialisation(world, args);
}

/// Serialising one shard's GUILD_CREATEs (what a new client is sent).
fn serialisation(world: &[(String, Vec<String>)], args: &Args) {
    let f = CacheConfig::everything();
    let (caches, _) = load(world, &f);
    let mut times = Vec::new();
    let mut bytes = 0;
    for _ in 0..args.runs {
        let t0 = Instant::now();
        let mut out = Vec::new();
        let ids: Vec<u64> = caches[0].guilds().map(|(id, _)| id).collect();
        for id in ids {
            out.clear();
            caches[0].write_create(id, &mut out);
            bytes += out.len();
        }
        times.push(t0.elapsed().as_secs_f64());
    }
    let per_run = bytes / args.runs;
    let t = median(times);
    println!(
        "GUILD_CREATE serialisation, shard 0 ({} guilds, everything cached): {:.1} ms for {} ({:.2} GB/s)",
        caches[0].guilds().count(),
        t * 1e3,
        mib(per_run),
        per_run as f64 / t / 1e9
    );
    println!();
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    let gen = Generator::new(args.guilds, args.members, 3, 2, 0);
    eprintln!("cachebench: generating {} guilds x {} members", args.guilds, args.members);
    let world = world(&gen);
    let json_bytes: usize = world.iter().flat_map(|(_, c)| c.iter()).map(String::len).sum();
    println!(
        "# cachebench: {} guilds x {} members over {SHARDS} shards, {} runs, medians",
        args.guilds, args.members, args.runs
    );
    println!();
    println!(
        "GUILD_CREATE JSON from Discord: {} ({} bytes per guild)",
        mib(json_bytes),
        json_bytes / args.guilds as usize
    );
    println!();
    let f = CacheConfig::everything();
    if args.snapshot_only {
        serialisation(&world, &args);
        return;
    }
    if !args.updates_only {
        tables(&world, &args);
    }

    // Update cost per event kind.
    let guilds: Vec<u32> = gen.guilds_of_shard(0, SHARDS);
    let evs = events(&gen, &guilds, args.members, 70_000);
    println!("| cache event (everything cached) | ns per event |");
    println!("|---|---:|");
    let mut kinds: Vec<&str> = evs.iter().map(|(t, _)| *t).collect();
    kinds.sort_unstable();
    kinds.dedup();
    let mut per_kind: Vec<(&str, Vec<f64>)> = kinds.iter().map(|k| (*k, Vec::new())).collect();
    let mut all = Vec::new();
    for _ in 0..args.runs {
        // A fresh cache each run: guilds' buffers trimmed after loading, as in the proxy.
        let (mut caches, _) = load(&world, &f);
        let cache = &mut caches[0];
        let mut sums = vec![(0.0f64, 0usize); kinds.len()];
        for (t, d) in &evs {
            let t0 = Instant::now();
            cache.apply(t.as_bytes(), d);
            let e = t0.elapsed().as_secs_f64();
            let at = kinds.binary_search(t).expect("kind");
            sums[at].0 += e;
            sums[at].1 += 1;
        }
        // The mean without a clock read around every event.
        let (mut caches, _) = load(&world, &f);
        let cache = &mut caches[0];
        let t_all = Instant::now();
        for (t, d) in &evs {
            cache.apply(t.as_bytes(), d);
        }
        all.push(t_all.elapsed().as_secs_f64() / evs.len() as f64);
        for (i, (s, n)) in sums.into_iter().enumerate() {
            per_kind[i].1.push(s / n as f64);
        }
    }
    for (k, v) in per_kind {
        println!("| {k} | {:.0} |", median(v) * 1e9);
    }
    println!("| mean over the mix ({} events, timed as a whole) | {:.0} |", evs.len(), median(all) * 1e9);
}
