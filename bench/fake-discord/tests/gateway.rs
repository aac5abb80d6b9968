//! Raw websocket tests of the fake Discord gateway and REST.

mod common;

use std::time::Duration;

use common::{identify_payload, start, Client, Got};
use fake_discord::FakeConfig;
use serde::de::DeserializeSeed;
use serde_json::{json, Value};
use twilight_model::gateway::event::{GatewayEvent, GatewayEventDeserializer};

/// Deserializes a whole gateway payload the way twilight-gateway does.
fn twilight_event(payload: &Value) -> GatewayEvent {
    let text = payload.to_string();
    let de = GatewayEventDeserializer::from_json(&text).expect("op/t/s header");
    let mut json = serde_json::Deserializer::from_str(&text);
    de.deserialize(&mut json).unwrap_or_else(|e| panic!("twilight rejected {}: {e}", &text[..text.len().min(400)]))
}

#[tokio::test]
async fn rest_gateway_bot() {
    let fake =
        start(FakeConfig { shards: 3, max_concurrency: 2, session_start_remaining: 77, ..FakeConfig::default() }).await;
    let (status, body) = common::http_get(&fake, "/api/v10/gateway/bot", Some("Bot fake-token")).await;
    assert_eq!(status, 200);
    assert_eq!(body["url"], fake.gateway_url());
    assert_eq!(body["shards"], 3);
    assert_eq!(body["session_start_limit"]["total"], 1000);
    assert_eq!(body["session_start_limit"]["remaining"], 77);
    assert_eq!(body["session_start_limit"]["reset_after"], 86_400_000);
    assert_eq!(body["session_start_limit"]["max_concurrency"], 2);

    let (status, body) = common::http_get(&fake, "/api/v10/gateway/bot", Some("Bot wrong")).await;
    assert_eq!(status, 401);
    assert_eq!(body, json!({"message": "401: Unauthorized", "code": 0}));
    let (status, _) = common::http_get(&fake, "/api/v10/gateway/bot", None).await;
    assert_eq!(status, 401);
    let (status, _) = common::http_get(&fake, "/api/v10/nope", Some("Bot fake-token")).await;
    assert_eq!(status, 404);
    assert!(fake.api_url().starts_with("http://127.0.0.1:"));
    assert!(fake.api_url().ends_with("/api/v10"));

    // remaining goes down with each session started.
    let mut c = Client::connect(&fake).await;
    c.identify(&fake, 0, 3).await;
    let (_, body) = common::http_get(&fake, "/api/v10/gateway/bot", Some("Bot fake-token")).await;
    assert_eq!(body["session_start_limit"]["remaining"], 76);
}

#[tokio::test]
async fn identify_sends_ready_and_guild_creates() {
    let fake = start(FakeConfig { guilds: 22, unavailable_guilds: 2, ..FakeConfig::default() }).await;
    let available = fake.available_guild_ids();
    assert_eq!(available.len(), 20);
    let mut total_guilds = 0;
    for shard in 0..4 {
        let mut c = Client::connect(&fake).await;
        let (ready, guilds) = c.identify(&fake, shard, 4).await;
        assert_eq!(ready["s"], 1);
        assert_eq!(ready["op"], 0);

        let d = &ready["d"];
        assert_eq!(d["v"], 10);
        assert_eq!(d["shard"], json!([shard, 4]));
        assert_eq!(d["resume_gateway_url"], fake.gateway_url());
        assert_eq!(d["user"]["id"], fake.bot_user_id().to_string());
        let listed: Vec<u64> = d["guilds"]
            .as_array()
            .unwrap()
            .iter()
            .map(|g| {
                assert_eq!(g["unavailable"], true);
                g["id"].as_str().unwrap().parse().unwrap()
            })
            .collect();
        assert_eq!(listed, fake.guild_ids_for_shard(shard, 4));
        let ready_model: twilight_model::gateway::payload::incoming::Ready =
            serde_json::from_value(d.clone()).expect("twilight Ready");
        assert_eq!(ready_model.guilds.len(), listed.len());
        assert!(matches!(twilight_event(&ready), GatewayEvent::Dispatch(1, _)));

        let expected: Vec<u64> = listed.iter().copied().filter(|g| available.contains(g)).collect();
        assert_eq!(guilds.len(), expected.len());
        for (k, g) in guilds.iter().enumerate() {
            assert_eq!(g["s"], k as u64 + 2);
            let guild: twilight_model::guild::Guild = serde_json::from_value(g["d"].clone()).expect("twilight Guild");
            assert_eq!(guild.id.get(), expected[k]);
            assert_eq!(guild.unavailable, Some(false));
            assert_eq!(guild.members.len(), 5);
            assert_eq!(guild.member_count, Some(5));
            assert!(guild.members.iter().any(|m| m.user.id.get() == fake.bot_user_id()));
            assert_eq!(guild.channels.len(), 5);
            assert_eq!(guild.roles.len(), 3);
            assert!(guild.roles.iter().any(|r| r.id.get() == guild.id.get()));
            assert!(!guild.emojis.is_empty());
            assert_eq!(guild.stickers.len(), 1);
            assert_eq!(fake.first_channel_id(guild.id.get()), guild.channels[1].id.get());
            for key in [
                "members",
                "channels",
                "threads",
                "presences",
                "voice_states",
                "stage_instances",
                "guild_scheduled_events",
                "soundboard_sounds",
                "roles",
                "emojis",
                "stickers",
                "features",
            ] {
                assert!(g["d"][key].is_array(), "{key} missing");
            }
            match twilight_event(g) {
                GatewayEvent::Dispatch(_, twilight_model::gateway::event::DispatchEvent::GuildCreate(gc)) => {
                    assert!(matches!(*gc, twilight_model::gateway::payload::incoming::GuildCreate::Available(_)));
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        total_guilds += guilds.len();
        assert!(fake.connected(shard));
        assert_eq!(fake.identify_count_for(shard), 1);
    }
    assert_eq!(total_guilds, 20);
    assert_eq!(fake.identify_count(), 4);
}

#[tokio::test]
async fn heartbeat_is_acked() {
    let fake = start(FakeConfig::default()).await;
    let mut c = Client::connect(&fake).await;
    c.send(json!({"op": 1, "d": null})).await;
    let ack = c.recv().await.payload();
    assert_eq!(ack["op"], 11);
    assert_eq!(c.last_text, r#"{"t":null,"s":null,"op":11,"d":null}"#);
    c.identify(&fake, 1, 4).await;
    c.send(json!({"op": 1, "d": 3})).await;
    assert_eq!(c.recv().await.payload()["op"], 11);
}

#[tokio::test]
async fn inject_delivers_with_next_seq() {
    let fake = start(FakeConfig::default()).await;
    let mut c = Client::connect(&fake).await;
    let (_, guilds) = c.identify(&fake, 2, 4).await;
    // Discord's key order for dispatches.
    assert!(c.last_text.starts_with(r#"{"t":"GUILD_CREATE","s":"#), "{}", &c.last_text[..40]);
    let last = guilds.len() as u64 + 1;
    let guild_id = fake.guild_ids_for_shard(2, 4)[0];
    let seq = fake.inject(
        2,
        "TYPING_START",
        json!({"channel_id": "1", "guild_id": guild_id.to_string(), "user_id": "2", "timestamp": 1}),
    );
    assert_eq!(seq, Some(last + 1));
    let p = c.recv().await.payload();
    assert_eq!(p["t"], "TYPING_START");
    assert_eq!(p["s"], last + 1);
    assert_eq!(p["d"]["guild_id"], guild_id.to_string());
    assert_eq!(fake.inject(2, "X", json!({})), Some(last + 2));
    assert_eq!(c.recv().await.payload()["s"], last + 2);
    assert_eq!(fake.inject(3, "X", json!({})), None, "shard 3 has no session");
}

#[tokio::test]
async fn drop_then_resume_replays_missed_events() {
    let fake = start(FakeConfig::default()).await;
    let mut c = Client::connect(&fake).await;
    let (ready, guilds) = c.identify(&fake, 0, 4).await;
    let session_id = ready["d"]["session_id"].as_str().unwrap().to_owned();
    let last = guilds.len() as u64 + 1;

    assert!(fake.drop_connection(0));
    assert!(!fake.connected(0));
    assert!(matches!(c.recv().await, Got::Ended));

    let seqs: Vec<u64> = (0..3).map(|n| fake.inject(0, "MESSAGE_CREATE", json!({"n": n})).unwrap()).collect();
    assert_eq!(seqs, vec![last + 1, last + 2, last + 3]);

    let mut c = Client::connect(&fake).await;
    c.send(json!({"op": 6, "d": {"token": fake.token(), "session_id": session_id, "seq": last}})).await;
    for (n, seq) in seqs.iter().enumerate() {
        let p = c.recv().await.payload();
        assert_eq!(p["t"], "MESSAGE_CREATE");
        assert_eq!(p["s"], *seq);
        assert_eq!(p["d"]["n"], n);
    }
    let resumed = c.recv().await.payload();
    assert_eq!(resumed["t"], "RESUMED");
    assert_eq!(resumed["op"], 0);
    assert_eq!(resumed["s"], last + 4);
    assert!(fake.connected(0));
    assert_eq!(fake.resume_count_for(0), 1);
    assert_eq!(fake.resume_count(), 1);

    // Live again.
    assert_eq!(fake.inject(0, "LIVE", json!({})), Some(last + 5));
    assert_eq!(c.recv().await.payload()["t"], "LIVE");

    // Resuming from an older seq (on a new connection) replays GUILD_CREATEs too.
    assert!(fake.drop_connection(0));
    let mut c2 = Client::connect(&fake).await;
    c2.send(json!({"op": 6, "d": {"token": fake.token(), "session_id": session_id, "seq": 1}})).await;
    for k in 0..guilds.len() {
        let p = c2.recv().await.payload();
        assert_eq!(p["t"], "GUILD_CREATE");
        assert_eq!(p["s"], k as u64 + 2);
    }
    for _ in 0..3 {
        assert_eq!(c2.recv().await.payload()["t"], "MESSAGE_CREATE");
    }
    assert_eq!(c2.recv().await.payload()["t"], "LIVE");
    assert_eq!(c2.recv().await.payload()["t"], "RESUMED");
    assert_eq!(fake.resume_count_for(0), 2);
}

#[tokio::test]
async fn resume_of_unknown_session_gets_invalid_session() {
    let fake = start(FakeConfig::default()).await;
    let mut c = Client::connect(&fake).await;
    c.send(json!({"op": 6, "d": {"token": fake.token(), "session_id": "nope", "seq": 5}})).await;
    let p = c.recv().await.payload();
    assert_eq!(p["op"], 9);
    assert_eq!(p["d"], false);
    assert_eq!(fake.resume_count(), 1);
    // The connection may identify afterwards.
    c.identify(&fake, 1, 4).await;
    assert!(fake.connected(1));
}

#[tokio::test]
async fn resume_with_too_old_seq_gets_invalid_session() {
    let fake = start(FakeConfig { replay_capacity: 2, ..FakeConfig::default() }).await;
    let mut c = Client::connect(&fake).await;
    let (ready, _) = c.identify(&fake, 0, 4).await;
    let session_id = ready["d"]["session_id"].as_str().unwrap().to_owned();
    fake.drop_connection(0);
    for _ in 0..5 {
        fake.inject(0, "X", json!({}));
    }
    let mut c = Client::connect(&fake).await;
    c.send(json!({"op": 6, "d": {"token": fake.token(), "session_id": session_id, "seq": 1}})).await;
    let p = c.recv().await.payload();
    assert_eq!((p["op"].clone(), p["d"].clone()), (json!(9), json!(false)));
    assert!(!fake.has_session(0));
}

async fn expect_identify_close(fake: &fake_discord::FakeDiscord, payload: Value, code: u16) {
    let mut c = Client::connect(fake).await;
    c.send(payload).await;
    c.expect_close(code).await;
}

#[tokio::test]
async fn close_codes() {
    let fake = start(FakeConfig::default()).await;
    // 4004: wrong token (identify and resume).
    expect_identify_close(&fake, identify_payload("bad", 0, 4), 4004).await;
    expect_identify_close(&fake, json!({"op": 6, "d": {"token": "bad", "session_id": "x", "seq": 1}}), 4004).await;
    // 4010: shard count differs, shard id out of range, malformed shard.
    expect_identify_close(&fake, identify_payload("fake-token", 0, 3), 4010).await;
    expect_identify_close(&fake, identify_payload("fake-token", 4, 4), 4010).await;
    let mut p = identify_payload("fake-token", 0, 4);
    p["d"]["shard"] = json!("zero");
    expect_identify_close(&fake, p, 4010).await;
    // 4011: no shard while the bot needs sharding.
    let mut p = identify_payload("fake-token", 0, 4);
    p["d"].as_object_mut().unwrap().remove("shard");
    expect_identify_close(&fake, p, 4011).await;
    // 4013: intents not an integer.
    let mut p = identify_payload("fake-token", 0, 4);
    p["d"]["intents"] = json!("all");
    expect_identify_close(&fake, p, 4013).await;
    // 4003: a command before identifying.
    expect_identify_close(&fake, json!({"op": 8, "d": {"guild_id": "1", "query": "", "limit": 0}}), 4003).await;
    // 4002: undecodable payload.
    let mut c = Client::connect(&fake).await;
    c.send_text("{not json").await;
    c.expect_close(4002).await;
    // 4002: too large.
    let mut c = Client::connect(&fake).await;
    c.send(json!({"op": 1, "d": null, "pad": "x".repeat(5000)})).await;
    c.expect_close(4002).await;
    // 4001: unknown opcode.
    let mut c = Client::connect(&fake).await;
    c.send(json!({"op": 99, "d": null})).await;
    c.expect_close(4001).await;
    // 4005: second identify.
    let mut c = Client::connect(&fake).await;
    c.identify(&fake, 0, 4).await;
    c.send(identify_payload("fake-token", 0, 4)).await;
    c.expect_close(4005).await;
    // 4012: bad version, 4002: unsupported encoding.
    let mut c = Client::connect_query(&fake, "v=6&encoding=json").await;
    c.expect_close(4012).await;
    let mut c = Client::connect_query(&fake, "v=10&encoding=etf").await;
    c.expect_close(4002).await;
    assert!(fake.identify_count() >= 7);
}

#[tokio::test]
async fn fail_next_identify_closes_once() {
    let fake = start(FakeConfig::default()).await;
    fake.fail_next_identify(2, 4014);
    let mut c = Client::connect(&fake).await;
    c.send(identify_payload(fake.token(), 2, 4)).await;
    c.expect_close(4014).await;
    assert_eq!(fake.identify_count_for(2), 1);
    assert!(!fake.has_session(2));
    let mut c = Client::connect(&fake).await;
    c.identify(&fake, 2, 4).await;
    assert_eq!(fake.identify_count_for(2), 2);
    assert!(fake.connected(2));
}

#[tokio::test]
async fn close_reconnect_and_invalid_session_controls() {
    let fake = start(FakeConfig::default()).await;
    let mut c = Client::connect(&fake).await;
    c.identify(&fake, 0, 4).await;
    assert!(fake.send_reconnect(0));
    let p = c.recv().await.payload();
    assert_eq!((p["op"].clone(), p["d"].clone()), (json!(7), Value::Null));

    assert!(fake.send_invalid_session(0, true));
    let p = c.recv().await.payload();
    assert_eq!((p["op"].clone(), p["d"].clone()), (json!(9), json!(true)));
    assert!(fake.has_session(0));
    assert!(!fake.connected(0));
    // The same connection may resume.
    let session_id = fake.session_id(0).unwrap();
    let seq = fake.last_seq(0).unwrap();
    c.send(json!({"op": 6, "d": {"token": fake.token(), "session_id": session_id, "seq": seq}})).await;
    assert_eq!(c.recv().await.payload()["t"], "RESUMED");
    assert!(fake.connected(0));

    assert!(fake.send_invalid_session(0, false));
    let p = c.recv().await.payload();
    assert_eq!(p["d"], false);
    assert!(!fake.has_session(0));
    assert_eq!(fake.inject(0, "X", json!({})), None);
    c.identify(&fake, 0, 4).await;

    assert!(fake.close_connection(0, 4000));
    c.expect_close(4000).await;
    assert!(fake.has_session(0), "4000 keeps the session resumable");
    assert!(!fake.connected(0));
    assert!(!fake.close_connection(0, 4000));
    assert!(!fake.drop_connection(0));
}

#[tokio::test]
async fn client_close_1000_ends_session() {
    let fake = start(FakeConfig::default()).await;
    let mut c = Client::connect(&fake).await;
    c.identify(&fake, 3, 4).await;
    c.ws.close(Some(tokio_tungstenite::tungstenite::protocol::CloseFrame { code: 1000.into(), reason: "".into() }))
        .await
        .unwrap();
    assert!(fake.wait_until(Duration::from_secs(2), |f| !f.connected(3) && !f.has_session(3)).await);

    let mut c = Client::connect(&fake).await;
    c.identify(&fake, 3, 4).await;
    c.ws.close(Some(tokio_tungstenite::tungstenite::protocol::CloseFrame { code: 4000.into(), reason: "bye".into() }))
        .await
        .unwrap();
    assert!(fake.wait_until(Duration::from_secs(2), |f| !f.connected(3)).await);
    assert!(fake.has_session(3), "a non-1000 close keeps the session");
}

#[tokio::test]
async fn zlib_stream_frames_end_with_sync_flush() {
    let fake = start(FakeConfig::default()).await;
    let mut c = Client::connect_query(&fake, "v=10&encoding=json&compress=zlib-stream").await;
    let hello = c.recv().await.payload();
    assert_eq!(hello["op"], 10);
    let (ready, guilds) = c.identify(&fake, 1, 4).await;
    assert_eq!(ready["d"]["shard"], json!([1, 4]));
    assert!(!guilds.is_empty());
    fake.inject(1, "PING", json!({"x": 1}));
    assert_eq!(c.recv().await.payload()["d"]["x"], 1);
    assert!(c.raw_frames.len() >= 3 + guilds.len());
    for f in &c.raw_frames {
        assert!(f.ends_with(&[0, 0, 0xff, 0xff]));
    }
    // The second message depends on the first's dictionary: one stream.
    assert_eq!(c.raw_frames[0][0], 0x78, "zlib header only on the first frame");
    assert_ne!(c.raw_frames[1][0], 0x78);
}

#[tokio::test]
async fn zstd_stream_frames_decode() {
    let fake = start(FakeConfig::default()).await;
    let mut c = Client::connect_query(&fake, "v=10&encoding=json&compress=zstd-stream").await;
    assert_eq!(c.recv().await.payload()["op"], 10);
    let (_, guilds) = c.identify(&fake, 0, 4).await;
    assert_eq!(guilds.len(), 5);
}

#[tokio::test]
async fn identify_compress_true_compresses_each_payload() {
    let fake = start(FakeConfig::default()).await;
    let mut c = Client::connect(&fake).await;
    let mut p = identify_payload(fake.token(), 0, 4);
    p["d"]["compress"] = json!(true);
    c.send(p).await;
    assert_eq!(c.recv().await.payload()["t"], "READY");
    assert!(!c.raw_frames.is_empty());
}

#[tokio::test]
async fn request_guild_members_chunks_carry_nonce() {
    let fake = start(FakeConfig { members_per_guild: 7, ..FakeConfig::default() }).await;
    let mut c = Client::connect(&fake).await;
    c.identify(&fake, 1, 4).await;
    let guild_id = fake.guild_ids_for_shard(1, 4)[0];
    c.send(json!({"op": 8, "d": {"guild_id": guild_id.to_string(), "query": "", "limit": 0, "presences": true, "nonce": "n-1"}}))
        .await;
    let chunk = c.recv_dispatch("GUILD_MEMBERS_CHUNK").await;
    let d = &chunk["d"];
    assert_eq!(d["nonce"], "n-1");
    assert_eq!(d["guild_id"], guild_id.to_string());
    assert_eq!(d["chunk_index"], 0);
    assert_eq!(d["chunk_count"], 1);
    assert_eq!(d["members"].as_array().unwrap().len(), 7);
    assert!(!d["presences"].as_array().unwrap().is_empty());
    let model: twilight_model::gateway::payload::incoming::MemberChunk =
        serde_json::from_value(d.clone()).expect("twilight MemberChunk");
    assert_eq!(model.nonce.as_deref(), Some("n-1"));
    assert_eq!(model.members.len(), 7);

    // user_ids with an unknown id.
    let bot = fake.bot_user_id().to_string();
    c.send(json!({"op": 8, "d": {"guild_id": guild_id.to_string(), "user_ids": [bot, "42"], "nonce": "n-2"}})).await;
    let d = c.recv_dispatch("GUILD_MEMBERS_CHUNK").await["d"].clone();
    assert_eq!(d["nonce"], "n-2");
    assert_eq!(d["members"].as_array().unwrap().len(), 1);
    assert_eq!(d["not_found"], json!(["42"]));

    let commands = fake.commands(1);
    assert_eq!(commands.len(), 2);
    assert_eq!(commands[0]["op"], 8);
    assert_eq!(commands[1]["d"]["nonce"], "n-2");
}

#[tokio::test]
async fn voice_presence_and_soundboard_commands() {
    let fake = start(FakeConfig::default()).await;
    let mut c = Client::connect(&fake).await;
    c.identify(&fake, 0, 4).await;
    let guild_id = fake.guild_ids_for_shard(0, 4)[0];
    let channel = fake.generator().voice_channel_id(0);
    c.send(json!({"op": 3, "d": {"since": null, "activities": [], "status": "dnd", "afk": false}})).await;
    c.send(json!({"op": 4, "d": {"guild_id": guild_id.to_string(), "channel_id": channel.to_string(), "self_mute": true, "self_deaf": false}}))
        .await;
    let vs = c.recv_dispatch("VOICE_STATE_UPDATE").await;
    assert_eq!(vs["d"]["self_mute"], true);
    assert_eq!(vs["d"]["session_id"], fake.session_id(0).unwrap());
    assert!(matches!(twilight_event(&vs), GatewayEvent::Dispatch(..)));
    let server = c.recv_dispatch("VOICE_SERVER_UPDATE").await;
    assert_eq!(server["d"]["guild_id"], guild_id.to_string());
    assert!(matches!(twilight_event(&server), GatewayEvent::Dispatch(..)));

    c.send(json!({"op": 31, "d": {"guild_ids": [guild_id.to_string()]}})).await;
    let sounds = c.recv_dispatch("SOUNDBOARD_SOUNDS").await;
    assert!(sounds["d"]["soundboard_sounds"].is_array());

    let ops: Vec<Value> = fake.commands(0).iter().map(|c| c["op"].clone()).collect();
    assert_eq!(ops, vec![json!(3), json!(4), json!(31)]);
}

#[tokio::test]
async fn too_many_payloads_close_4008() {
    let fake = start(FakeConfig::default()).await;
    let mut c = Client::connect(&fake).await;
    for _ in 0..121 {
        c.send(json!({"op": 1, "d": null})).await;
    }
    c.expect_close(4008).await;
}

#[tokio::test]
async fn missing_heartbeats_close_4009() {
    let fake = start(FakeConfig { heartbeat_interval_ms: 50, ..FakeConfig::default() }).await;
    let mut c = Client::connect(&fake).await;
    c.identify(&fake, 0, 4).await;
    c.expect_close(4009).await;
    assert!(!fake.has_session(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn works_on_multi_thread_runtime() {
    let fake = start(FakeConfig { shards: 1, guilds: 3, ..FakeConfig::default() }).await;
    let mut c = Client::connect(&fake).await;
    // No shard field is fine for an unsharded bot.
    let mut p = identify_payload(fake.token(), 0, 1);
    p["d"].as_object_mut().unwrap().remove("shard");
    c.send(p).await;
    assert_eq!(c.recv().await.payload()["t"], "READY");
    for _ in 0..3 {
        assert_eq!(c.recv().await.payload()["t"], "GUILD_CREATE");
    }
    let f2 = fake.clone();
    std::thread::spawn(move || {
        for n in 0..50 {
            f2.inject(0, "N", json!({ "n": n }));
        }
    })
    .join()
    .unwrap();
    for n in 0..50 {
        assert_eq!(c.recv().await.payload()["d"]["n"], n);
    }
}

#[test]
fn generated_payloads_deserialize_with_twilight() {
    let g = fake_discord::Generator::new(12, 300, 3, 4, 0);
    for i in 0..12 {
        for presences in [false, true] {
            let d = g.guild_create(i, presences, 50);
            let guild: twilight_model::guild::Guild = serde_json::from_value(d.clone()).expect("large guild");
            assert!(guild.large);
            assert_eq!(guild.member_count, Some(300));
        }
        let msg: twilight_model::channel::Message =
            serde_json::from_value(g.message_create(i, 3, 1, 1_234_567_890_123_456_789, "hi")).expect("message");
        assert_eq!(msg.content, "hi");
        let typing: twilight_model::gateway::payload::incoming::TypingStart =
            serde_json::from_value(g.typing_start(i, 2, 1_700_000_000)).expect("typing");
        assert_eq!(typing.guild_id.map(|g| g.get()), Some(g.guild_id(i)));
        for m in 0..5 {
            let _: twilight_model::guild::Member = serde_json::from_value(g.member(i, m)).expect("member");
        }
    }
}

#[tokio::test]
async fn demo_events_reach_connected_shards() {
    let fake = start(FakeConfig::default()).await;
    assert!(fake_discord::demo::inject_demo_event(&fake, 1).is_none());
    let mut c = Client::connect(&fake).await;
    c.identify(&fake, 2, 4).await;
    let demo = tokio::spawn(fake_discord::demo::run_demo_events(fake.clone(), 500.0));
    let (mut messages, mut typing) = (0, 0);
    while messages < 3 || typing < 1 {
        let p = c.recv().await.payload();
        match twilight_event(&p) {
            GatewayEvent::Dispatch(_, twilight_model::gateway::event::DispatchEvent::MessageCreate(m)) => {
                assert!(m.content.starts_with("hello from the fake discord #"));
                assert!(fake.guild_ids_for_shard(2, 4).contains(&m.guild_id.unwrap().get()));
                messages += 1;
            }
            GatewayEvent::Dispatch(_, twilight_model::gateway::event::DispatchEvent::TypingStart(_)) => typing += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    demo.abort();
}

#[test]
fn handle_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync + Clone + 'static>() {}
    assert_send_sync::<fake_discord::FakeDiscord>();
}

#[tokio::test]
async fn firehose_sends_consecutive_stamped_dispatches_then_injected_ones() {
    use fake_discord::firehose::{now_nanos, stamp_of};
    use fake_discord::{FirehoseMix, FirehoseSpec};
    let fake = start(FakeConfig::default()).await;
    let mut c = Client::connect(&fake).await;
    let (_, guilds) = c.identify(&fake, 1, 4).await;
    let last = guilds.len() as u64 + 1;
    let before = now_nanos();
    let spec = FirehoseSpec { count: 500, rate: None, mix: FirehoseMix::Mixed };
    let handle = fake.firehose(1, spec).expect("shard 1 is connected");
    assert_eq!((handle.first_seq, handle.last_seq), (last + 1, last + 500));
    // Injected while the firehose runs: sent after it, with the next seq.
    assert_eq!(fake.inject(1, "X", json!({})), Some(last + 501));
    let mut kinds = std::collections::BTreeSet::new();
    for i in 1..=500 {
        let p = c.recv().await.payload();
        assert_eq!(p["s"], last + i);
        kinds.insert(p["t"].as_str().unwrap().to_owned());
        let stamp = stamp_of(c.last_text.as_bytes()).expect("stamped");
        assert!(stamp >= before && stamp <= now_nanos());
        twilight_event(&p);
    }
    assert_eq!(kinds.len(), 4, "{kinds:?}");
    let p = c.recv().await.payload();
    assert_eq!((p["t"].as_str(), p["s"].as_u64()), (Some("X"), Some(last + 501)));
    let stats = handle.finished().await.expect("finished");
    assert_eq!(stats.sent, 500);

    // Paced: the same framing at a fixed rate.
    let spec = FirehoseSpec { count: 20, rate: Some(2000.0), mix: FirehoseMix::Messages };
    let handle = fake.firehose(1, spec).unwrap();
    for i in 0..20 {
        let p = c.recv().await.payload();
        assert_eq!(p["t"], "MESSAGE_CREATE");
        assert_eq!(p["s"], handle.first_seq + i);
        assert!(c.last_text.len() > 1000, "{}", c.last_text.len());
    }
    assert_eq!(handle.finished().await.unwrap().sent, 20);
    assert!(fake.firehose(3, spec).is_none(), "shard 3 has no connection");
}
