//! Per-client intents: each client gets what its own Identify's intents
//! bring from Discord, out of what the proxy receives with its `intents`.

mod common;

use common::{fake, message, next_twilight_event as next_event, wait_connected, wait_metric, Client, Proxy};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use twilight_gateway::{ConfigBuilder, Event, Intents, Shard, ShardId};
use twilight_model::gateway::payload::incoming::GuildCreate;

const GUILDS: u64 = 1;
const GUILD_MEMBERS: u64 = 1 << 1;
const GUILD_VOICE_STATES: u64 = 1 << 7;
const GUILD_PRESENCES: u64 = 1 << 8;
const GUILD_MESSAGES: u64 = 1 << 9;
const GUILD_MESSAGE_TYPING: u64 = 1 << 11;
const DIRECT_MESSAGES: u64 = 1 << 12;
/// What the proxy identifies with in these tests.
const PROXY: u64 = GUILDS
    | GUILD_MEMBERS
    | GUILD_VOICE_STATES
    | GUILD_PRESENCES
    | GUILD_MESSAGES
    | GUILD_MESSAGE_TYPING
    | DIRECT_MESSAGES;

async fn start(extra: Value) -> (fake_discord::FakeDiscord, Proxy) {
    let fake = fake(1, 4).await;
    let mut config = json!({
        "intents": PROXY,
        "cache": {"members": true, "presences": true, "voice_states": true},
    });
    if let (Some(c), Some(e)) = (config.as_object_mut(), extra.as_object()) {
        c.extend(e.clone());
    }
    let proxy = Proxy::start(&fake, config).await;
    wait_connected(&fake, &proxy, 0..1).await;
    (fake, proxy)
}

/// A twilight shard through the proxy asking for `intents`.
fn twilight(proxy: &Proxy, token: &str, intents: u64) -> Shard {
    let config =
        ConfigBuilder::new(token.to_owned(), Intents::from_bits_truncate(intents)).proxy_url(proxy.url()).build();
    Shard::with_config(ShardId::new(0, 1), config)
}

/// What a client saw of a GUILD_CREATE.
#[derive(Debug, PartialEq, Eq)]
struct Lists {
    members: BTreeSet<u64>,
    presences: usize,
    voice_states: usize,
}

/// READY and the guilds' GUILD_CREATEs; returns what each guild listed,
/// and how many dispatches were received.
async fn load(shard: &mut Shard, guilds: usize) -> (Vec<Lists>, u64) {
    match next_event(shard).await {
        Event::Ready(r) => assert_eq!(r.guilds.len(), guilds),
        other => panic!("expected READY, got {:?}", other.kind()),
    }
    let mut lists = Vec::new();
    for _ in 0..guilds {
        match next_event(shard).await {
            Event::GuildCreate(g) => match *g {
                GuildCreate::Available(g) => lists.push(Lists {
                    members: g.members.iter().map(|m| m.user.id.get()).collect(),
                    presences: g.presences.len(),
                    voice_states: g.voice_states.len(),
                }),
                other => panic!("unavailable guild {:?}", other.id()),
            },
            other => panic!("expected GUILD_CREATE, got {:?}", other.kind()),
        }
    }
    (lists, 1 + guilds as u64)
}

/// Event names up to and including the next GUILD_ROLE_CREATE (the marker every client gets).
async fn until_marker(shard: &mut Shard, received: &mut u64) -> Vec<String> {
    let mut names = Vec::new();
    loop {
        let event = next_event(shard).await;
        *received += 1;
        let name = event.kind().name().unwrap_or("?").to_owned();
        names.push(name.clone());
        if name == "GUILD_ROLE_CREATE" {
            return names;
        }
    }
}

/// The events of one round, each needing a different intent, then the marker.
fn inject_round(fake: &fake_discord::FakeDiscord, guild: u64, n: u64) {
    let g = fake.generator();
    let i = g.guild_index(guild).unwrap();
    let channel = fake.first_channel_id(guild);
    let mut member = g.member(i, 3);
    member["guild_id"] = json!(guild.to_string());
    let mut presence = g.presence(i, 1);
    presence["guild_id"] = json!(guild.to_string());
    let mut dm = message(guild, channel, n * 10 + 1, "in a DM");
    dm.as_object_mut().unwrap().remove("guild_id");
    dm.as_object_mut().unwrap().remove("member");
    let role = json!({"guild_id": guild.to_string(), "role": g.role(i, 0)});
    let events = [
        ("MESSAGE_CREATE", message(guild, channel, n * 10, "in a guild")),
        ("GUILD_MEMBER_ADD", member),
        ("PRESENCE_UPDATE", presence),
        ("MESSAGE_CREATE", dm),
        ("TYPING_START", g.typing_start(i, 1, 1_700_000_000)),
        ("GUILD_ROLE_CREATE", role),
    ];
    for (t, d) in events {
        fake.inject(0, t, d).expect("shard 0 has a session");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_twilight_client_gets_what_its_own_intents_bring() {
    let (fake, proxy) = start(json!({})).await;
    let token = fake.token().to_owned();
    let bot = fake.bot_user_id();
    let guilds = fake.guild_ids_for_shard(0, 1);
    let g = fake.generator();
    let voice_users: BTreeSet<u64> = guilds
        .iter()
        .filter_map(|&id| {
            let i = g.guild_index(id)?;
            (0..g.members_per_guild())
                .find(|&m| {
                    g.guild_create(i, true, 250)["voice_states"]
                        .as_array()
                        .is_some_and(|v| v.iter().any(|s| s["user_id"] == json!(g.user_id(i, m).to_string())))
                })
                .map(|m| g.user_id(i, m))
        })
        .collect();
    assert!(!voice_users.is_empty(), "the fake puts someone in a voice channel");

    let mut moderation = twilight(&proxy, &token, GUILDS | GUILD_MEMBERS);
    let mut commands = twilight(&proxy, &token, GUILDS | GUILD_MESSAGES | DIRECT_MESSAGES);
    let mut everything = twilight(&proxy, &token, Intents::all().bits());
    let (mod_lists, mut mod_n) = load(&mut moderation, guilds.len()).await;
    let (cmd_lists, mut cmd_n) = load(&mut commands, guilds.len()).await;
    let (all_lists, mut all_n) = load(&mut everything, guilds.len()).await;

    // Snapshots: without GUILD_MEMBERS the bot alone; with it but without
    // GUILD_PRESENCES the bot and who is in voice; presences and voice
    // states only with their intents.
    for l in &cmd_lists {
        assert_eq!(l.members, BTreeSet::from([bot]));
        assert_eq!((l.presences, l.voice_states), (0, 0));
    }
    for l in &mod_lists {
        assert!(l.members.contains(&bot) && l.members.iter().all(|u| *u == bot || voice_users.contains(u)), "{l:?}");
        assert_eq!((l.presences, l.voice_states), (0, 0));
    }
    assert!(mod_lists.iter().any(|l| l.members.len() == 2), "a voice user is listed");
    for l in &all_lists {
        assert_eq!(l.members.len(), g.members_per_guild() as usize, "{l:?}");
    }
    assert!(all_lists.iter().any(|l| l.presences > 0) && all_lists.iter().any(|l| l.voice_states > 0));

    inject_round(&fake, guilds[0], 1);
    assert_eq!(until_marker(&mut moderation, &mut mod_n).await, ["GUILD_MEMBER_ADD", "GUILD_ROLE_CREATE"]);
    assert_eq!(
        until_marker(&mut commands, &mut cmd_n).await,
        ["MESSAGE_CREATE", "MESSAGE_CREATE", "GUILD_ROLE_CREATE"],
        "guild and DM messages; no typing without GUILD_MESSAGE_TYPING"
    );
    assert_eq!(
        until_marker(&mut everything, &mut all_n).await,
        [
            "MESSAGE_CREATE",
            "GUILD_MEMBER_ADD",
            "PRESENCE_UPDATE",
            "MESSAGE_CREATE",
            "TYPING_START",
            "GUILD_ROLE_CREATE"
        ]
    );

    // A live GUILD_CREATE (the guild back from an outage) is cut the same way.
    let i = g.guild_index(guilds[0]).unwrap();
    fake.inject(0, "GUILD_CREATE", g.guild_create(i, true, 250)).unwrap();
    for (shard, n, lists) in [(&mut moderation, &mut mod_n, &mod_lists), (&mut commands, &mut cmd_n, &cmd_lists)] {
        match next_event(shard).await {
            Event::GuildCreate(created) => match *created {
                GuildCreate::Available(created) => {
                    let members: BTreeSet<u64> = created.members.iter().map(|m| m.user.id.get()).collect();
                    let before = lists.iter().find(|l| l.members.contains(&bot) && l.members.len() == members.len());
                    assert!(before.is_some(), "live members {members:?} cut like the snapshot's");
                    assert!(created.presences.is_empty() && created.voice_states.is_empty());
                }
                other => panic!("unavailable {:?}", other.id()),
            },
            other => panic!("expected GUILD_CREATE, got {:?}", other.kind()),
        }
        *n += 1;
    }
    match next_event(&mut everything).await {
        Event::GuildCreate(created) => match *created {
            GuildCreate::Available(created) => {
                assert_eq!(created.members.len(), g.members_per_guild() as usize);
            }
            other => panic!("unavailable {:?}", other.id()),
        },
        other => panic!("expected GUILD_CREATE, got {:?}", other.kind()),
    }
    all_n += 1;

    // Each client's sequence counts only what it was sent.
    for (shard, n) in [(&moderation, mod_n), (&commands, cmd_n), (&everything, all_n)] {
        assert_eq!(shard.session().map(|s| s.sequence()), Some(n));
    }
    assert_eq!(fake.identify_count(), 1, "clients with different intents share the one upstream session");
}

/// Identify on a raw connection with `intents`.
async fn identify(c: &mut Client, token: &str, intents: Value) {
    let hello = c.payload().await;
    assert_eq!(hello["op"], 10);
    c.send(json!({"op": 2, "d": {"token": token, "intents": intents, "shard": [0, 1],
        "properties": {"os": "linux", "browser": "test", "device": "test"}}}))
        .await;
}

/// Identify with `intents`, and read READY and the guilds.
async fn identify_and_load(url: &str, token: &str, intents: u64) -> (Client, Value) {
    let mut c = Client::connect(url, "/?v=10&encoding=json").await;
    identify(&mut c, token, json!(intents)).await;
    let ready = c.dispatch().await;
    assert_eq!(ready["t"], "READY");
    if intents & GUILDS != 0 {
        for _ in 0..ready["d"]["guilds"].as_array().unwrap().len() {
            assert_eq!(c.dispatch().await["t"], "GUILD_CREATE");
        }
    }
    (c, ready)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_replays_only_what_the_client_would_have_been_sent() {
    let (fake, proxy) = start(json!({})).await;
    let token = fake.token().to_owned();
    let guild = fake.guild_ids_for_shard(0, 1)[0];
    let (mut c, ready) = identify_and_load(&proxy.url(), &token, GUILDS | GUILD_MESSAGES).await;
    let session = ready["d"]["session_id"].as_str().unwrap().to_owned();
    inject_round(&fake, guild, 1);
    let (before, marker) = c.dispatches_until("GUILD_ROLE_CREATE").await;
    assert_eq!(before.iter().map(|d| d["t"].as_str().unwrap()).collect::<Vec<_>>(), ["MESSAGE_CREATE"]);
    let seq = marker["s"].as_u64().unwrap();
    let guilds = ready["d"]["guilds"].as_array().unwrap().len() as u64;
    assert_eq!(seq, guilds + 3, "READY, the guilds, one message, the marker: +1 each");
    drop(c);

    // Missed while away: two rounds. It resumes from before the marker
    // (as if that never arrived): the marker again, then only the rounds'
    // guild messages and markers, numbered on from its own sequence.
    inject_round(&fake, guild, 2);
    inject_round(&fake, guild, 3);
    // Resume once the proxy holds all three markers (else some would come live, after RESUMED).
    wait_metric(&proxy, "gateway_proxy_events_received_total{event=\"GUILD_ROLE_CREATE\",shard=\"0\"}", 3).await;
    let mut c = Client::connect(&proxy.url(), "/?v=10&encoding=json").await;
    assert_eq!(c.payload().await["op"], 10);
    c.resume(&token, &session, seq - 1).await;
    let (replayed, resumed) = c.dispatches_until("RESUMED").await;
    let names: Vec<&str> = replayed.iter().map(|d| d["t"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        ["GUILD_ROLE_CREATE", "MESSAGE_CREATE", "GUILD_ROLE_CREATE", "MESSAGE_CREATE", "GUILD_ROLE_CREATE"]
    );
    assert_eq!(replayed[1]["d"]["content"], "in a guild");
    let seqs: Vec<u64> = replayed.iter().chain([&resumed]).map(|d| d["s"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (seq..=seq + 5).collect::<Vec<_>>());
    // Live events go on from there.
    inject_round(&fake, guild, 4);
    let (live, marker) = c.dispatches_until("GUILD_ROLE_CREATE").await;
    assert_eq!(live.iter().map(|d| d["s"].as_u64().unwrap()).collect::<Vec<_>>(), [seq + 6]);
    assert_eq!(marker["s"], seq + 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_gets_few_events_does_not_hold_the_replay_buffer() {
    let (fake, proxy) = start(json!({})).await;
    let token = fake.token().to_owned();
    let guild = fake.guild_ids_for_shard(0, 1)[0];
    let g = fake.generator();
    let i = g.guild_index(guild).unwrap();
    // Wants messages only; members churn.
    let (mut c, _) = identify_and_load(&proxy.url(), &token, GUILDS | GUILD_MESSAGES).await;
    for n in 0..4000u32 {
        let mut member = g.member(i, 1 + n % 4);
        member["guild_id"] = json!(guild.to_string());
        fake.inject(0, "GUILD_MEMBER_UPDATE", member).unwrap();
    }
    fake.inject(0, "MESSAGE_CREATE", message(guild, fake.first_channel_id(guild), 1, "after the churn")).unwrap();
    let (skipped, m) = c.dispatches_until("MESSAGE_CREATE").await;
    assert!(skipped.is_empty(), "no member event reached it");
    assert_eq!(m["d"]["content"], "after the churn");
    // The replay buffer keeps a tail behind the session's position, not all
    // 4,000 events it never gets.
    let (_, metrics) = common::http_get(&proxy.addr, "/metrics").await;
    let kept: f64 = metrics
        .lines()
        .find(|l| l.starts_with("gateway_proxy_replay_buffer_events{"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("replay_events in {metrics}"));
    assert!(kept <= 1100.0, "replay keeps {kept} events");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_intents_are_served_or_refused_by_strict_intents() {
    let (fake, proxy) = start(json!({"intents": GUILDS | GUILD_MESSAGES})).await;
    let token = fake.token().to_owned();
    let guild = fake.guild_ids_for_shard(0, 1)[0];
    // Asks for presences the proxy does not receive: served the rest, with a warning.
    let (mut c, _) = identify_and_load(&proxy.url(), &token, GUILDS | GUILD_MESSAGES | GUILD_PRESENCES).await;
    assert!(proxy.wait_log("asked for intents the proxy does not receive: GUILD_PRESENCES").await);
    fake.inject(0, "MESSAGE_CREATE", message(guild, fake.first_channel_id(guild), 1, "served")).unwrap();
    assert_eq!(c.dispatches_until("MESSAGE_CREATE").await.1["d"]["content"], "served");
    // Intents Discord does not define: 4013, as Discord closes.
    let mut bad = Client::connect(&proxy.url(), "/?v=10&encoding=json").await;
    identify(&mut bad, &token, json!(1u64 << 40)).await;
    bad.expect_close(4013).await;
    let mut bad = Client::connect(&proxy.url(), "/?v=10&encoding=json").await;
    identify(&mut bad, &token, json!("all")).await;
    bad.expect_close(4013).await;

    let (fake, proxy) = start(json!({"intents": GUILDS | GUILD_MESSAGES, "strict_intents": true})).await;
    let token = fake.token().to_owned();
    let mut refused = Client::connect(&proxy.url(), "/?v=10&encoding=json").await;
    identify(&mut refused, &token, json!(GUILDS | GUILD_MEMBERS | GUILD_PRESENCES)).await;
    let reason = refused.expect_close(4014).await;
    assert!(reason.contains("GUILD_MEMBERS | GUILD_PRESENCES"), "{reason}");
    // Asking for less than the proxy has is fine, strict or not.
    let (_c, ready) = identify_and_load(&proxy.url(), &token, GUILDS).await;
    assert_eq!(ready["t"], "READY");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_client_intents_off_every_client_gets_everything() {
    let (fake, proxy) = start(json!({"client_intents": false})).await;
    let token = fake.token().to_owned();
    let guild = fake.guild_ids_for_shard(0, 1)[0];
    let (mut c, _) = identify_and_load(&proxy.url(), &token, GUILDS).await;
    inject_round(&fake, guild, 1);
    let (before, _) = c.dispatches_until("GUILD_ROLE_CREATE").await;
    assert_eq!(before.len(), 5, "{before:?}");
    // Its snapshot lists were not cut either.
    let (mut c, ready) = {
        let mut c = Client::connect(&proxy.url(), "/?v=10&encoding=json").await;
        identify(&mut c, &token, json!(GUILDS)).await;
        let ready = c.dispatch().await;
        (c, ready)
    };
    assert_eq!(ready["t"], "READY");
    let created = c.dispatch().await;
    assert!(created["d"]["members"].as_array().unwrap().len() > 1, "{created}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_message_content_a_client_gets_guild_messages_without_their_content() {
    const MESSAGE_CONTENT: u64 = 1 << 15;
    let (fake, proxy) = start(json!({"intents": PROXY | MESSAGE_CONTENT})).await;
    let token = fake.token().to_owned();
    let guild = fake.guild_ids_for_shard(0, 1)[0];
    let channel = fake.first_channel_id(guild);
    let bot = fake.bot_user_id();
    let (mut without, ready) = identify_and_load(&proxy.url(), &token, GUILDS | GUILD_MESSAGES | DIRECT_MESSAGES).await;
    let session = ready["d"]["session_id"].as_str().unwrap().to_owned();
    let (mut with, _) =
        identify_and_load(&proxy.url(), &token, GUILDS | GUILD_MESSAGES | DIRECT_MESSAGES | MESSAGE_CONTENT).await;

    let mut plain = message(guild, channel, 1, "a secret");
    plain["embeds"] = json!([{"title": "an embed"}]);
    let mut mention = message(guild, channel, 2, "hey bot");
    mention["mentions"] = json!([{"id": bot.to_string(), "username": "bot", "discriminator": "0", "avatar": null}]);
    let mut dm = message(guild, channel, 3, "in a DM");
    dm.as_object_mut().unwrap().remove("guild_id");
    dm.as_object_mut().unwrap().remove("member");
    for m in [plain, mention, dm] {
        fake.inject(0, "MESSAGE_CREATE", m).unwrap();
    }
    let contents = |c: Vec<Value>| -> Vec<(String, usize)> {
        c.iter()
            .map(|d| (d["d"]["content"].as_str().unwrap().to_owned(), d["d"]["embeds"].as_array().unwrap().len()))
            .collect()
    };
    let mut got_without = Vec::new();
    let mut got_with = Vec::new();
    for _ in 0..3 {
        got_without.push(without.dispatch().await);
        got_with.push(with.dispatch().await);
    }
    assert_eq!(
        contents(got_without.clone()),
        [("".into(), 0), ("hey bot".into(), 0), ("in a DM".into(), 0)],
        "emptied, except a mention of the bot and a DM"
    );
    assert_eq!(contents(got_with), [("a secret".into(), 1), ("hey bot".into(), 0), ("in a DM".into(), 0)]);
    // A RESUME from before the three replays them with the same cut.
    let seq = got_without[0]["s"].as_u64().unwrap() - 1;
    drop(without);
    let mut again = Client::connect(&proxy.url(), "/?v=10&encoding=json").await;
    assert_eq!(again.payload().await["op"], 10);
    again.resume(&token, &session, seq).await;
    let (replayed, _) = again.dispatches_until("RESUMED").await;
    assert_eq!(contents(replayed), [("".into(), 0), ("hey bot".into(), 0), ("in a DM".into(), 0)]);
}
