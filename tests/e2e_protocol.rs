//! The gateway protocol as the proxy speaks it, point by point, with a raw
//! websocket client; and the proxy's upstream behaviour under Discord's faults.

mod common;

use common::{fake, message, wait_connected, Client, Proxy, Received, WAIT};
use serde_json::{json, Value};
use std::time::Duration;

async fn setup(shards: u32, guilds: u32, overrides: Value) -> (fake_discord::FakeDiscord, Proxy) {
    let fake = fake(shards, guilds).await;
    let proxy = Proxy::start(&fake, overrides).await;
    wait_connected(&fake, &proxy, 0..shards).await;
    (fake, proxy)
}

async fn client(proxy: &Proxy) -> Client {
    Client::connect(&proxy.url(), "/?v=10&encoding=json").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_lists_exactly_the_shards_guilds_and_guild_creates_have_every_array() {
    let (fake, proxy) = setup(2, 10, json!({})).await;
    let mut c = client(&proxy).await;
    c.identify(fake.token(), 0, 2).await;
    let ready = c.dispatch().await;
    assert_eq!(ready["t"], "READY");
    assert_eq!(ready["s"], 1);
    let d = &ready["d"];
    let mut listed: Vec<u64> =
        d["guilds"].as_array().unwrap().iter().map(|g| g["id"].as_str().unwrap().parse().unwrap()).collect();
    listed.sort_unstable();
    let mut expected = fake.guild_ids_for_shard(0, 2);
    expected.sort_unstable();
    assert_eq!(listed, expected);
    assert!(d["guilds"].as_array().unwrap().iter().all(|g| g["unavailable"] == true));
    assert_eq!(d["shard"], json!([0, 2]));
    assert_eq!(d["v"], 10);
    assert_eq!(d["resume_gateway_url"], proxy.url());
    assert_eq!(d["user"]["id"], fake.bot_user_id().to_string());
    assert!(d["application"]["id"].is_string());
    assert_eq!(d["session_id"].as_str().unwrap().len(), 32);
    for i in 0..expected.len() {
        let g = c.dispatch().await;
        assert_eq!(g["t"], "GUILD_CREATE");
        assert_eq!(g["s"], 2 + i as u64, "sequence is +1 from READY on");
        for key in [
            "roles",
            "emojis",
            "stickers",
            "channels",
            "threads",
            "members",
            "presences",
            "voice_states",
            "stage_instances",
            "guild_scheduled_events",
            "soundboard_sounds",
        ] {
            assert!(g["d"][key].is_array(), "GUILD_CREATE lacks `{key}`");
        }
        assert_eq!(g["d"]["unavailable"], false);
        assert!(g["d"]["member_count"].as_u64().unwrap() > 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_reach_only_their_shards_clients_with_seq_plus_one_and_fan_out() {
    let (fake, proxy) = setup(2, 8, json!({})).await;
    let mut a1 = client(&proxy).await;
    let mut a2 = client(&proxy).await;
    let mut b = client(&proxy).await;
    let ready_a1 = a1.identify_and_load(fake.token(), 0, 2).await;
    a2.identify_and_load(fake.token(), 0, 2).await;
    b.identify_and_load(fake.token(), 1, 2).await;
    let base = 1 + ready_a1["d"]["guilds"].as_array().unwrap().len() as u64;
    let guild = fake.guild_ids_for_shard(0, 2)[0];
    let channel = fake.first_channel_id(guild);
    for n in 0..50u64 {
        // Content that looks like a sequence field must not confuse the rewrite.
        let content = format!("\"s\":{n}, {{\"s\": 999}}");
        fake.inject(0, "MESSAGE_CREATE", message(guild, channel, n, &content)).unwrap();
    }
    for c in [&mut a1, &mut a2] {
        for n in 0..50u64 {
            let ev = c.dispatch().await;
            assert_eq!(ev["t"], "MESSAGE_CREATE");
            assert_eq!(ev["s"], base + 1 + n, "client seq is strictly +1");
            assert_eq!(ev["d"]["content"], format!("\"s\":{n}, {{\"s\": 999}}"));
        }
    }
    assert!(b.recv_within(Duration::from_millis(500)).await.is_none(), "shard 1's client got shard 0's event");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_are_acked_before_and_after_identify_and_client_reconnects_cost_nothing_upstream() {
    let (fake, proxy) = setup(1, 3, json!({})).await;
    let identifies = fake.identify_count();
    for _ in 0..3 {
        let mut c = client(&proxy).await;
        assert_eq!(c.payload().await["op"], 10);
        c.send(json!({"op": 1, "d": null})).await;
        assert_eq!(c.payload().await["op"], 11, "ACK before Identify");
        c.send(json!({"op": 2, "d": {"token": format!("Bot {}", fake.token()), "intents": 513, "shard": [0, 1], "properties": {}}})).await;
        let ready = c.dispatch().await;
        assert_eq!(ready["t"], "READY");
        c.send(json!({"op": 1, "d": 1})).await;
        loop {
            let p = c.payload().await;
            if p["op"] == 11 {
                break;
            }
        }
    }
    assert_eq!(fake.identify_count(), identifies);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_clients_get_discords_close_codes_and_others_keep_running() {
    let (fake, proxy) = setup(2, 4, json!({"identify_timeout_secs": 2, "shard_start": 0, "shard_end": 2})).await;
    let token = fake.token().to_owned();
    let mut good = client(&proxy).await;
    good.identify_and_load(&token, 0, 2).await;

    let too_large = "x".repeat(5000);
    let identify = |token: &str, shard: Value| json!({"op": 2, "d": {"token": token, "intents": 513, "shard": shard, "properties": {}}});
    let cases: Vec<(Vec<Value>, Option<&str>, u16)> = vec![
        (vec![identify("wrong", json!([0, 2]))], None, 4004),
        (vec![identify(&token, json!([0, 3]))], None, 4010),
        (vec![identify(&token, json!([5, 2]))], None, 4010),
        (vec![json!({"op": 3, "d": {"status": "idle", "since": null, "activities": [], "afk": false}})], None, 4003),
        (vec![identify(&token, json!([1, 2])), identify(&token, json!([1, 2]))], None, 4005),
        (vec![], Some("{not json"), 4002),
        (vec![json!({"op": 99, "d": null})], None, 4001),
        (vec![], Some(too_large.as_str()), 4002),
        // A Resume without its seq (Discord requires token, session_id and seq).
        (vec![json!({"op": 6, "d": {"token": token, "session_id": "0000000000000000000000000000000a"}})], None, 4002),
    ];
    for (payloads, raw, code) in cases {
        let mut c = client(&proxy).await;
        for p in payloads {
            c.send(p).await;
        }
        if let Some(raw) = raw {
            c.send_text(raw).await;
        }
        c.expect_close(code).await;
    }
    // No Identify at all: closed after the timeout.
    let mut idle = client(&proxy).await;
    idle.expect_close(4009).await;
    // Unsupported query parameters are refused with a reason.
    let mut etf = Client::connect(&proxy.url(), "/?v=10&encoding=etf").await;
    let reason = etf.expect_close(4002).await;
    assert!(reason.contains("encoding"), "{reason}");

    // The well-behaved client never noticed.
    let guild = fake.guild_ids_for_shard(0, 2)[0];
    fake.inject(0, "MESSAGE_CREATE", message(guild, fake.first_channel_id(guild), 1, "still here")).unwrap();
    assert_eq!(good.dispatch().await["d"]["content"], "still here");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_drop_is_resumed_and_clients_miss_nothing() {
    let (fake, proxy) = setup(1, 3, json!({})).await;
    let mut c = client(&proxy).await;
    let ready = c.identify_and_load(fake.token(), 0, 1).await;
    let mut expected_seq = 1 + ready["d"]["guilds"].as_array().unwrap().len() as u64;
    let guild = fake.guild_ids_for_shard(0, 1)[0];
    let channel = fake.first_channel_id(guild);
    let identifies = fake.identify_count();
    let mut n = 0u64;
    let mut send = |fake: &fake_discord::FakeDiscord| {
        n += 1;
        fake.inject(0, "MESSAGE_CREATE", message(guild, channel, n, &format!("m{n}"))).unwrap();
    };
    for _ in 0..5 {
        send(&fake);
    }
    assert!(fake.drop_connection(0));
    // Dispatched while the proxy is away: Discord replays them on resume.
    for _ in 0..5 {
        send(&fake);
    }
    assert!(fake.wait_until(WAIT, |f| f.resume_count_for(0) == 1 && f.connected(0)).await, "proxy did not resume");
    for _ in 0..5 {
        send(&fake);
    }
    for i in 1..=15u64 {
        let ev = c.dispatch().await;
        expected_seq += 1;
        assert_eq!(ev["s"], expected_seq);
        assert_eq!(ev["d"]["content"], format!("m{i}"), "events in order, none missing or doubled");
    }
    assert!(c
        .recv_within(Duration::from_millis(300))
        .await
        .is_none_or(|r| !matches!(r, Received::Payload(ref v) if v["op"] == 0)));
    assert_eq!(fake.identify_count(), identifies, "a resume, not an Identify");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnect_and_invalid_session_are_handled_like_discord_asks() {
    let (fake, _proxy) = setup(1, 2, json!({})).await;
    let identifies = fake.identify_count();
    // op 7: resume on a new connection.
    assert!(fake.send_reconnect(0));
    assert!(
        fake.wait_until(WAIT, |f| f.resume_count_for(0) == 1 && f.connected(0)).await,
        "op 7 did not lead to a resume"
    );
    // op 9 d:true: resume.
    assert!(fake.send_invalid_session(0, true));
    assert!(
        fake.wait_until(WAIT, |f| f.resume_count_for(0) == 2 && f.connected(0)).await,
        "op 9 true did not lead to a resume"
    );
    assert_eq!(fake.identify_count(), identifies);
    // op 9 d:false: identify again (after 1-5 s).
    assert!(fake.send_invalid_session(0, false));
    assert!(
        fake.wait_until(WAIT, |f| f.identify_count() == identifies + 1 && f.connected(0)).await,
        "op 9 false did not re-identify"
    );
    assert_eq!(fake.resume_count_for(0), 2);
    // A resumable close code: resume.
    assert!(fake.close_connection(0, 4000));
    assert!(fake.wait_until(WAIT, |f| f.resume_count_for(0) == 3 && f.connected(0)).await, "close 4000 did not resume");
    // 4009 session timed out: identify again.
    assert!(fake.close_connection(0, 4009));
    assert!(
        fake.wait_until(WAIT, |f| f.identify_count() == identifies + 2 && f.connected(0)).await,
        "close 4009 did not re-identify"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fatal_close_code_stops_only_that_shard() {
    let fake = fake(2, 4).await;
    fake.fail_next_identify(1, 4014);
    let mut proxy = Proxy::start(&fake, json!({})).await;
    assert!(fake.wait_until(WAIT, |f| f.connected(0)).await);
    assert!(proxy.wait_log("fatal code 4014").await, "the fatal close was not reported");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(fake.identify_count_for(1), 1, "a fatal code is not retried");
    assert!(proxy.is_running(), "a fatal shard must not crash the process");
    let mut c = client(&proxy).await;
    c.identify(fake.token(), 1, 2).await;
    let reason = c.expect_close(4000).await;
    assert!(reason.contains("4014"), "{reason}");
    let mut c = client(&proxy).await;
    c.identify_and_load(fake.token(), 0, 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zlib_stream_clients_get_one_deflate_stream_with_sync_flushes() {
    let (fake, proxy) = setup(1, 3, json!({})).await;
    let mut c = Client::connect(&proxy.url(), "/?v=10&encoding=json&compress=zlib-stream").await;
    let hello = c.payload().await;
    assert_eq!(hello["op"], 10, "Hello is compressed too");
    c.send(json!({"op": 2, "d": {"token": fake.token(), "intents": 513, "shard": [0, 1], "properties": {}}})).await;
    let ready = c.dispatch().await;
    assert_eq!(ready["t"], "READY");
    let guilds = ready["d"]["guilds"].as_array().unwrap().len();
    for _ in 0..guilds {
        assert_eq!(c.dispatch().await["t"], "GUILD_CREATE");
    }
    let guild = fake.guild_ids_for_shard(0, 1)[0];
    fake.inject(0, "MESSAGE_CREATE", message(guild, fake.first_channel_id(guild), 1, "zipped")).unwrap();
    assert_eq!(c.dispatch().await["d"]["content"], "zipped");
    assert!(c.binary_frames.len() >= guilds + 3);
    assert!(c.binary_frames.iter().all(|f| f.ends_with(&[0, 0, 0xff, 0xff])));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_endpoints_answer_properly() {
    let (_fake, proxy) = setup(3, 3, json!({})).await;
    let get = |path: &'static str| {
        let addr = proxy.addr.clone();
        async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes()).await.unwrap();
            let mut out = String::new();
            tokio::time::timeout(WAIT, s.read_to_string(&mut out)).await.unwrap().unwrap();
            out
        }
    };
    let count = get("/shard-count").await;
    assert!(count.starts_with("HTTP/1.1 200"), "{count}");
    assert!(count.ends_with("\r\n\r\n3"), "{count}");
    let missing = get("/nope").await;
    assert!(missing.starts_with("HTTP/1.1 404"), "{missing}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_are_forwarded_to_the_owning_shard() {
    let (fake, proxy) = setup(2, 4, json!({"cores": 2})).await;
    let mut c = client(&proxy).await;
    c.identify_and_load(fake.token(), 1, 2).await;
    let presence = json!({"op": 3, "d": {"since": null, "activities": [], "status": "idle", "afk": false}});
    c.send(presence.clone()).await;
    assert!(fake.wait_until(WAIT, |f| f.commands(1).iter().any(|cmd| cmd["op"] == 3)).await, "op 3 was not forwarded");
    assert!(fake.commands(0).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_flooding_payloads_is_closed_with_4008() {
    let (fake, proxy) = setup(1, 1, json!({})).await;
    let mut c = client(&proxy).await;
    c.identify_and_load(fake.token(), 0, 1).await;
    for _ in 0..130 {
        c.send(json!({"op": 1, "d": null})).await;
    }
    c.expect_close(4008).await;
    assert_eq!(fake.identify_count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zstd_stream_clients_get_one_flushed_zstd_stream() {
    let (fake, proxy) = setup(1, 2, json!({})).await;
    let mut c = Client::connect(&proxy.url(), "/?v=10&encoding=json&compress=zstd-stream").await;
    assert_eq!(c.payload().await["op"], 10, "Hello is compressed too");
    c.send(json!({"op": 2, "d": {"token": fake.token(), "intents": 513, "shard": [0, 1], "properties": {}}})).await;
    let ready = c.dispatch().await;
    assert_eq!(ready["t"], "READY");
    for _ in 0..ready["d"]["guilds"].as_array().unwrap().len() {
        assert_eq!(c.dispatch().await["t"], "GUILD_CREATE");
    }
    let guild = fake.guild_ids_for_shard(0, 1)[0];
    fake.inject(0, "MESSAGE_CREATE", message(guild, fake.first_channel_id(guild), 1, "zstd")).unwrap();
    assert_eq!(c.dispatch().await["d"]["content"], "zstd");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_go_on_while_discord_never_pauses() {
    // Discord expects a heartbeat every 200 ms here and closes with 4009
    // after 600 ms without one; the firehose (about 2 GB) keeps the proxy's
    // socket full for much longer than that.
    let fake = fake_discord::FakeDiscord::start(fake_discord::FakeConfig {
        shards: 1,
        guilds: 1,
        heartbeat_interval_ms: 200,
        ..fake_discord::FakeConfig::default()
    })
    .await
    .expect("fake discord starts");
    let proxy = Proxy::start(&fake, json!({})).await;
    wait_connected(&fake, &proxy, 0..1).await;
    let mut c = Client::connect(&proxy.url(), "/?v=10&encoding=json").await;
    c.identify_and_load(fake.token(), 0, 1).await;
    let spec = fake_discord::FirehoseSpec { count: 2_000_000, rate: None, mix: fake_discord::FirehoseMix::Messages };
    let started = std::time::Instant::now();
    let stats = fake.firehose(0, spec).expect("shard 0 is connected").finished().await;
    let stats = stats.expect("the connection lasted the whole firehose: no 4009 for missed heartbeats");
    assert!(
        stats.elapsed > Duration::from_millis(1200),
        "the firehose ended in {:?}: too short to prove anything",
        started.elapsed()
    );
    assert!(proxy.log_lines("code 4009").is_empty(), "Discord closed for missed heartbeats");
    assert_eq!(fake.identify_count(), 1, "no re-identify");
}

async fn fake_with_heartbeat(ms: u64) -> fake_discord::FakeDiscord {
    fake_discord::FakeDiscord::start(fake_discord::FakeConfig {
        shards: 1,
        guilds: 1,
        heartbeat_interval_ms: ms,
        ..fake_discord::FakeConfig::default()
    })
    .await
    .expect("fake discord starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_heartbeat_ack_behind_a_backlog_is_not_a_zombied_connection() {
    // Eight shards on two cores; events trickle in on each (every event its
    // own write) while Discord's heartbeat ACKs come late, as when the ACK
    // sits behind what the shard has not read yet: the fake holds each ACK
    // and then queues it behind the rest of the firehose, about 3 heartbeat
    // intervals late. The connections are alive (events keep arriving): no
    // reconnect, and every client gets every event once, in order.
    const SHARDS: u32 = 8;
    let fake = fake_discord::FakeDiscord::start(fake_discord::FakeConfig {
        shards: SHARDS,
        guilds: SHARDS * 2,
        max_concurrency: SHARDS,
        heartbeat_interval_ms: 300,
        ..fake_discord::FakeConfig::default()
    })
    .await
    .expect("fake discord starts");
    let proxy = Proxy::start(&fake, json!({"cores": 2})).await;
    wait_connected(&fake, &proxy, 0..SHARDS).await;
    let mut clients = Vec::new();
    for shard in 0..SHARDS {
        let mut c = Client::connect(&proxy.url(), "/?v=10&encoding=json").await;
        c.identify_and_load(fake.token(), shard, SHARDS).await;
        clients.push(c);
    }
    let count = 200;
    let mut hoses = Vec::new();
    for shard in 0..SHARDS {
        fake.delay_heartbeat_acks(shard, Some(Duration::from_millis(300)));
        let spec = fake_discord::FirehoseSpec { count, rate: Some(250.0), mix: fake_discord::FirehoseMix::Messages };
        hoses.push(fake.firehose(shard, spec).expect("the shard is connected"));
    }
    for hose in hoses {
        let stats = hose.finished().await.expect("the connection lasted the whole firehose");
        assert!(stats.elapsed > Duration::from_millis(700), "long enough for late ACKs: {:?}", stats.elapsed);
    }
    for (shard, c) in clients.iter_mut().enumerate() {
        let mut last = None;
        for i in 0..count {
            let d = c.dispatch().await;
            assert_eq!(d["t"], "MESSAGE_CREATE", "shard {shard}, event {i}: {d}");
            let s = d["s"].as_u64().unwrap();
            if let Some(l) = last {
                assert_eq!(s, l + 1, "shard {shard}: seq +1");
            }
            last = Some(s);
        }
    }
    assert!(proxy.log_lines("zombied").is_empty(), "{:?}", proxy.log_lines("zombied"));
    assert_eq!((fake.identify_count(), fake.resume_count()), (u64::from(SHARDS), 0), "no reconnect");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_whose_heartbeats_go_unanswered_is_resumed() {
    // Discord stops answering and sends nothing else: a zombied connection.
    // The shard closes it and resumes; the client never notices.
    let fake = fake_with_heartbeat(300).await;
    let proxy = Proxy::start(&fake, json!({})).await;
    wait_connected(&fake, &proxy, 0..1).await;
    let mut c = Client::connect(&proxy.url(), "/?v=10&encoding=json").await;
    c.identify_and_load(fake.token(), 0, 1).await;
    fake.delay_heartbeat_acks(0, Some(Duration::from_secs(3600)));
    assert!(fake.wait_until(WAIT, |f| f.resume_count_for(0) == 1).await, "the zombied connection was not resumed");
    assert!(proxy.wait_log("zombied connection").await);
    fake.delay_heartbeat_acks(0, None);
    let guild = fake.guild_ids_for_shard(0, 1)[0];
    fake.inject(0, "MESSAGE_CREATE", message(guild, fake.first_channel_id(guild), 1, "after")).unwrap();
    assert_eq!(c.dispatch().await["d"]["content"], "after");
    assert_eq!(fake.identify_count(), 1, "resumed, not re-identified");
}
