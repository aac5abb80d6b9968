//! The demo event generator: MESSAGE_CREATE and occasional TYPING_START
//! dispatches injected into random guilds of connected shards.

use std::time::Duration;

use crate::payloads::{now_snowflake, now_unix_ms};
use crate::FakeDiscord;

/// Injects one demo event (number `n`) into a random available guild of a
/// random connected shard: TYPING_START one time in five, otherwise a
/// MESSAGE_CREATE with content `"hello from the fake discord #n"` by a random
/// non-bot member. Returns `(shard, event name, seq)`, or `None` when no shard
/// with an available guild is connected.
pub fn inject_demo_event(fake: &FakeDiscord, n: u64) -> Option<(u32, &'static str, u64)> {
    let shards = fake.config().shards.max(1);
    let connected: Vec<u32> = (0..shards).filter(|s| fake.connected(*s)).collect();
    if connected.is_empty() {
        return None;
    }
    let shard = connected[fastrand::usize(..connected.len())];
    let gen = fake.generator();
    let guilds: Vec<u32> = gen.guilds_of_shard(shard, shards).into_iter().filter(|i| gen.is_available(*i)).collect();
    if guilds.is_empty() {
        return None;
    }
    let i = guilds[fastrand::usize(..guilds.len())];
    let members = gen.members_per_guild();
    let m = if members > 1 { fastrand::u32(1..members) } else { 0 };
    if fastrand::u32(0..5) == 0 {
        let d = gen.typing_start(i, m, now_unix_ms() / 1000);
        let seq = fake.inject(shard, "TYPING_START", d)?;
        Some((shard, "TYPING_START", seq))
    } else {
        let k = fastrand::u32(0..gen.text_channels_per_guild().max(1));
        let content = format!("hello from the fake discord #{n}");
        let d = gen.message_create(i, m, k, now_snowflake(n), &content);
        let seq = fake.inject(shard, "MESSAGE_CREATE", d)?;
        Some((shard, "MESSAGE_CREATE", seq))
    }
}

/// Injects `events_per_sec` demo events per second forever (nothing when
/// `events_per_sec <= 0`). Above 1000/s, events go out in batches every ms.
pub async fn run_demo_events(fake: FakeDiscord, events_per_sec: f64) {
    if events_per_sec <= 0.0 || !events_per_sec.is_finite() {
        return;
    }
    let (period, batch) = if events_per_sec <= 1000.0 {
        (Duration::from_secs_f64(1.0 / events_per_sec), 1)
    } else {
        (Duration::from_millis(1), (events_per_sec / 1000.0).ceil() as u32)
    };
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut n: u64 = 0;
    loop {
        ticker.tick().await;
        for _ in 0..batch {
            n += 1;
            if inject_demo_event(&fake, n).is_none() {
                break;
            }
        }
    }
}
