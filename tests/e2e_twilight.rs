//! A real Discord client library (twilight-gateway) run through the proxy.

mod common;

use common::{fake, message, next_twilight_event as next_event, wait_connected, Proxy};
use serde_json::json;
use std::collections::BTreeSet;
use twilight_gateway::{ConfigBuilder, Event, Intents, Shard, ShardId};
use twilight_model::id::Id;

fn shard_through(proxy: &Proxy, token: &str, id: u32, total: u32) -> Shard {
    let config =
        ConfigBuilder::new(token.to_owned(), Intents::GUILDS | Intents::GUILD_MESSAGES).proxy_url(proxy.url()).build();
    Shard::with_config(ShardId::new(id, total), config)
}

/// READY and every GUILD_CREATE, then one live event; returns the guild ids seen.
async fn load(shard: &mut Shard, expected: &BTreeSet<u64>) -> String {
    let ready = match next_event(shard).await {
        Event::Ready(r) => r,
        other => panic!("expected READY, got {:?}", other.kind()),
    };
    let listed: BTreeSet<u64> = ready.guilds.iter().map(|g| g.id.get()).collect();
    assert_eq!(&listed, expected, "READY lists exactly the shard's guilds");
    assert_eq!(ready.shard.map(|s| s.number()), Some(shard.id().number()));
    let mut created = BTreeSet::new();
    while created.len() < expected.len() {
        match next_event(shard).await {
            Event::GuildCreate(g) => {
                let guild = match *g {
                    twilight_model::gateway::payload::incoming::GuildCreate::Available(g) => g,
                    other => panic!("unexpected unavailable guild {:?}", other.id()),
                };
                assert!(!guild.channels.is_empty(), "channels are cached and replayed");
                assert!(!guild.roles.is_empty(), "roles are cached and replayed");
                assert!(guild.members.iter().any(|m| m.user.id == ready.user.id), "the bot's own member is replayed");
                created.insert(guild.id.get());
            }
            other => panic!("expected GUILD_CREATE, got {:?}", other.kind()),
        }
    }
    assert_eq!(&created, expected);
    ready.session_id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twilight_shard_runs_and_restarts_through_the_proxy_without_identifying_upstream() {
    let fake = fake(2, 12).await;
    let proxy = Proxy::start(&fake, json!({})).await;
    wait_connected(&fake, &proxy, 0..2).await;
    let identifies = fake.identify_count();
    assert_eq!(identifies, 2);

    let expected: BTreeSet<u64> = fake.guild_ids_for_shard(1, 2).into_iter().collect();
    assert!(!expected.is_empty());
    let mut shard = shard_through(&proxy, fake.token(), 1, 2);
    let first_session = load(&mut shard, &expected).await;

    let guild = *expected.iter().next().unwrap();
    let channel = fake.first_channel_id(guild);
    fake.inject(1, "MESSAGE_CREATE", message(guild, channel, 1, "through the proxy")).expect("shard 1 has a session");
    match next_event(&mut shard).await {
        Event::MessageCreate(m) => {
            assert_eq!(m.content, "through the proxy");
            assert_eq!(m.channel_id, Id::new(channel));
        }
        other => panic!("expected MESSAGE_CREATE, got {:?}", other.kind()),
    }

    // The bot restarts: a new shard connects and identifies again.
    drop(shard);
    let mut shard = shard_through(&proxy, fake.token(), 1, 2);
    let second_session = load(&mut shard, &expected).await;
    assert_ne!(first_session, second_session, "each client gets its own session id");
    fake.inject(1, "MESSAGE_CREATE", message(guild, channel, 2, "after restart")).unwrap();
    match next_event(&mut shard).await {
        Event::MessageCreate(m) => assert_eq!(m.content, "after restart"),
        other => panic!("expected MESSAGE_CREATE, got {:?}", other.kind()),
    }
    assert_eq!(fake.identify_count(), identifies, "a client restart costs no upstream Identify");
    assert_eq!(fake.resume_count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twilight_shards_on_both_cores_are_served_by_their_owner() {
    let fake = fake(4, 16).await;
    let proxy = Proxy::start(&fake, json!({"cores": 2})).await;
    wait_connected(&fake, &proxy, 0..4).await;
    for id in 0..4 {
        let expected: BTreeSet<u64> = fake.guild_ids_for_shard(id, 4).into_iter().collect();
        let mut shard = shard_through(&proxy, fake.token(), id, 4);
        load(&mut shard, &expected).await;
        let guild = *expected.iter().next().unwrap();
        fake.inject(id, "MESSAGE_CREATE", message(guild, fake.first_channel_id(guild), 1, &format!("shard {id}")))
            .unwrap();
        match next_event(&mut shard).await {
            Event::MessageCreate(m) => assert_eq!(m.content, format!("shard {id}")),
            other => panic!("expected MESSAGE_CREATE, got {:?}", other.kind()),
        }
    }
    // Both cores accept; connections spread over them, so some of these are
    // accepted by core 0 and must be handed to core 1, which owns shard 1.
    for _ in 0..6 {
        let mut c = common::Client::connect(&proxy.url(), "/?v=10&encoding=json").await;
        let ready = c.identify_and_load(fake.token(), 1, 4).await;
        assert_eq!(ready["d"]["shard"], json!([1, 4]));
    }
    assert!(proxy.wait_log("is on core 1; handing over").await, "no connection crossed cores");
}
