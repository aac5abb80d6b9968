//! The driver: injects `soak <shard> <n>` MESSAGE_CREATEs on every shard at
//! the trickle rate, and every `drop_every` gives one shard (round robin) an
//! upstream fault, cycling through the kinds of [`Fault`].
//!
//! Injection and faults run in one task, so every counter's fate is
//! recorded in the [`Ledger`] before the next is injected, and a fault falls
//! between two injections.
//!
//! Not used: op 9 with `d: false` and the close codes that end Discord's
//! session (4007, 4009): Discord drops the undelivered events of a session
//! it ends, so exactly-once could not be asserted across them.

use std::sync::Arc;
use std::time::{Duration, Instant};

use fake_discord::payloads::now_snowflake;
use fake_discord::FakeDiscord;
use tokio::sync::watch;

use crate::ledger::{Fate, Ledger};

/// An upstream fault the fake inflicts on one shard's connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Fault {
    /// `drop_connection`: the TCP connection ends without a close frame.
    Reset,
    /// `close_connection(4000)`: resumable on Discord's side and the proxy's.
    Close4000,
    /// `close_connection(1001)`: the fake keeps the session, but the proxy
    /// (like Discord's docs) takes 1000/1001 as the end of the session and
    /// identifies anew; counters injected into the old session meanwhile are
    /// [`Fate::Orphaned`].
    Close1001,
    /// `send_reconnect`: op 7.
    Reconnect,
    /// `send_invalid_session(shard, true)`: op 9, resumable.
    InvalidSession,
}

impl Fault {
    pub const ALL: [Fault; 5] =
        [Fault::Reset, Fault::Close4000, Fault::Close1001, Fault::Reconnect, Fault::InvalidSession];

    pub fn name(self) -> &'static str {
        match self {
            Fault::Reset => "reset (drop_connection)",
            Fault::Close4000 => "close 4000",
            Fault::Close1001 => "close 1001",
            Fault::Reconnect => "op 7 reconnect",
            Fault::InvalidSession => "op 9 resumable",
        }
    }

    /// Inflicts the fault; whether the shard had a connection to fault.
    fn apply(self, fake: &FakeDiscord, shard: u32) -> bool {
        match self {
            Fault::Reset => fake.drop_connection(shard),
            Fault::Close4000 => fake.close_connection(shard, 4000),
            Fault::Close1001 => fake.close_connection(shard, 1001),
            Fault::Reconnect => fake.send_reconnect(shard),
            Fault::InvalidSession => fake.send_invalid_session(shard, true),
        }
    }
}

/// One fault the driver tried.
#[derive(Clone, Debug)]
pub struct FaultRecord {
    pub at: Instant,
    pub shard: u32,
    pub fault: Fault,
    /// Whether the shard had a connection (else nothing happened).
    pub applied: bool,
}

/// What the driver does.
#[derive(Clone, Debug)]
pub struct DriverSpec {
    pub shards: u32,
    /// Events per second per shard.
    pub rate: f64,
    pub drop_every: Duration,
    /// Guild indices (in the fake's generator) of each shard; none empty.
    pub guilds: Vec<Vec<u32>>,
}

/// What the driver did.
#[derive(Clone, Debug, Default)]
pub struct DriverReport {
    pub faults: Vec<FaultRecord>,
    /// Injection attempts, all shards.
    pub injected: u64,
    /// How long it injected.
    pub elapsed: Duration,
}

/// The MESSAGE_CREATE `d` of counter `n` of `shard`.
fn message(fake: &FakeDiscord, guilds: &[u32], shard: u32, n: u64) -> serde_json::Value {
    let g = guilds[(n as usize) % guilds.len()];
    let members = fake.config().members_per_guild.max(2);
    // Member 0 is the bot itself.
    let m = 1 + (n % u64::from(members - 1)) as u32;
    fake.generator().message_create(g, m, 0, now_snowflake(n), &format!("soak {shard} {n}"))
}

/// Injects and faults until `stop` turns true.
pub async fn run(
    fake: FakeDiscord,
    ledger: Arc<Ledger>,
    spec: DriverSpec,
    mut stop: watch::Receiver<bool>,
) -> DriverReport {
    let started = Instant::now();
    let mut report = DriverReport::default();
    let period = Duration::from_secs_f64(1.0 / (spec.rate * f64::from(spec.shards)));
    let mut inject = tokio::time::interval(period);
    inject.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut faults = tokio::time::interval_at(tokio::time::Instant::now() + spec.drop_every, spec.drop_every);
    faults.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Per shard: the upstream session a close 1001 made the proxy leave,
    // until the fake has the proxy's new one.
    let mut leaving: Vec<Option<String>> = vec![None; spec.shards as usize];
    let mut next_shard = 0u32;
    let mut fault_no = 0usize;
    loop {
        tokio::select! {
            _ = inject.tick() => {
                let shard = next_shard;
                next_shard = (next_shard + 1) % spec.shards;
                let n = ledger.next(shard);
                let d = message(&fake, &spec.guilds[shard as usize], shard, n);
                let slot = &mut leaving[shard as usize];
                let orphan = match slot.as_deref() {
                    Some(old) if fake.session_id(shard).as_deref() == Some(old) => true,
                    Some(_) => {
                        *slot = None;
                        false
                    }
                    None => false,
                };
                let fate = match fake.inject(shard, "MESSAGE_CREATE", d) {
                    None => Fate::NoSession,
                    Some(_) if orphan => Fate::Orphaned,
                    Some(_) => Fate::Owed,
                };
                ledger.record(shard, n, fate);
                report.injected += 1;
            }
            _ = faults.tick() => {
                let shard = (fault_no % spec.shards as usize) as u32;
                let fault = Fault::ALL[fault_no % Fault::ALL.len()];
                fault_no += 1;
                let before = fake.session_id(shard);
                let applied = fault.apply(&fake, shard);
                if applied && fault == Fault::Close1001 {
                    leaving[shard as usize] = before;
                }
                report.faults.push(FaultRecord { at: Instant::now(), shard, fault, applied });
            }
            () = crate::args::raised(&mut stop) => break,
        }
    }
    report.elapsed = started.elapsed();
    report
}
