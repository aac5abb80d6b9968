//! Client sessions: resume with replay, flow control, routed replies, voice,
//! presence, heartbeats and every compression.

mod common;

use common::{fake, message, wait_connected, Client, Proxy, Received, WAIT};
use serde_json::{json, Value};
use std::{collections::BTreeSet, time::Duration};
use twilight_gateway::{CloseFrame, ConfigBuilder, Event, EventTypeFlags, Intents, Shard, ShardId, StreamExt as _};

async fn next(shard: &mut Shard) -> Result<Event, twilight_gateway::error::ReceiveMessageError> {
    tokio::time::timeout(WAIT, shard.next_event(EventTypeFlags::all()))
        .await
        .expect("event in time")
        .expect("stream goes on")
}

async fn setup(shards: u32, guilds: u32, overrides: Value) -> (fake_discord::FakeDiscord, Proxy) {
    let fake = fake(shards, guilds).await;
    let proxy = Proxy::start(&fake, overrides).await;
    wait_connected(&fake, &proxy, 0..shards).await;
    (fake, proxy)
}

async fn client(proxy: &Proxy) -> Client {
    Client::connect(&proxy.url(), "/?v=10&encoding=json").await
}

fn inject(fake: &fake_discord::FakeDiscord, shard: u32, n: u64) {
    let guild = fake.guild_ids_for_shard(shard, fake.config().shards)[0];
    fake.inject(shard, "MESSAGE_CREATE", message(guild, fake.first_channel_id(guild), n, &format!("m{n}"))).unwrap();
}

fn content_n(ev: &Value) -> u64 {
    ev["d"]["content"].as_str().and_then(|c| c.strip_prefix('m')).and_then(|n| n.parse().ok()).expect("a test message")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twilight_resumes_through_the_proxy_and_misses_nothing() {
    let (fake, proxy) = setup(1, 3, json!({})).await;
    let config = ConfigBuilder::new(fake.token().to_owned(), Intents::GUILDS | Intents::GUILD_MESSAGES)
        .proxy_url(proxy.url())
        .build();
    let mut shard = Shard::with_config(ShardId::new(0, 1), config);
    let mut seen = Vec::new();
    let mut resumed = false;
    // READY + guilds.
    loop {
        if let Ok(Event::GuildCreate(_)) = next(&mut shard).await {
            if fake.guild_ids_for_shard(0, 1).len() == 3 {
                break;
            }
        }
    }
    for n in 1..=5 {
        inject(&fake, 0, n);
    }
    while seen.len() < 5 {
        if let Ok(Event::MessageCreate(m)) = next(&mut shard).await {
            seen.push(m.content.clone());
        }
    }
    // The bot's connection drops; Discord keeps sending meanwhile.
    shard.close(CloseFrame::RESUME);
    loop {
        if let Ok(Event::GatewayClose(_)) = next(&mut shard).await {
            break;
        }
    }
    for n in 6..=15 {
        inject(&fake, 0, n);
    }
    while seen.len() < 15 {
        match next(&mut shard).await {
            Ok(Event::MessageCreate(m)) => seen.push(m.content.clone()),
            Ok(Event::Resumed) => resumed = true,
            Ok(Event::Ready(_)) => panic!("the client re-identified instead of resuming"),
            _ => {}
        }
    }
    let expected: Vec<String> = (1..=15).map(|n| format!("m{n}")).collect();
    assert_eq!(seen, expected, "every event exactly once, in order");
    inject(&fake, 0, 16);
    loop {
        match next(&mut shard).await {
            Ok(Event::MessageCreate(m)) => {
                assert_eq!(m.content, "m16");
                break;
            }
            Ok(Event::Resumed) => resumed = true,
            _ => {}
        }
    }
    assert!(resumed, "RESUMED was delivered");
    assert!(proxy.wait_log("resumed session").await);
    assert_eq!(fake.identify_count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_replays_exactly_what_was_missed_then_resumed_then_live() {
    let (fake, proxy) = setup(1, 2, json!({})).await;
    // Another client of the shard shows when the proxy has an event.
    let mut observer = client(&proxy).await;
    observer.identify_and_load(fake.token(), 0, 1).await;
    let mut a = client(&proxy).await;
    let ready = a.identify_and_load(fake.token(), 0, 1).await;
    let session_id = ready["d"]["session_id"].as_str().unwrap().to_owned();
    let base = 1 + ready["d"]["guilds"].as_array().unwrap().len() as u64;
    for n in 1..=3 {
        inject(&fake, 0, n);
    }
    for n in 1..=3u64 {
        let ev = a.dispatch().await;
        assert_eq!((ev["s"].as_u64().unwrap(), content_n(&ev)), (base + n, n));
    }
    drop(a);
    for n in 4..=7 {
        inject(&fake, 0, n);
    }
    while content_n(&observer.dispatch().await) < 7 {}
    // Resume as if message 3 never arrived.
    let mut b = client(&proxy).await;
    assert_eq!(b.payload().await["op"], 10);
    b.resume(fake.token(), &session_id, base + 2).await;
    let (replayed, resumed) = b.dispatches_until("RESUMED").await;
    let got: Vec<(u64, u64)> = replayed.iter().map(|e| (e["s"].as_u64().unwrap(), content_n(e))).collect();
    let want: Vec<(u64, u64)> = (3..=7).map(|n| (base + n, n)).collect();
    assert_eq!(got, want);
    assert_eq!(resumed["s"], base + 8);
    inject(&fake, 0, 8);
    let live = b.dispatch().await;
    assert_eq!((live["s"].as_u64().unwrap(), content_n(&live)), (base + 9, 8));
    assert_eq!(fake.identify_count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_resumes_get_invalid_session_on_the_same_connection() {
    let (fake, proxy) = setup(1, 2, json!({"replay_buffer": 5})).await;
    let mut a = client(&proxy).await;
    let ready = a.identify_and_load(fake.token(), 0, 1).await;
    let session_id = ready["d"]["session_id"].as_str().unwrap().to_owned();
    let base = 1 + ready["d"]["guilds"].as_array().unwrap().len() as u64;
    drop(a);
    for n in 1..=20 {
        inject(&fake, 0, n);
    }
    let unknown = format!("{:08x}{}", 0, "ab".repeat(12));
    let cases: Vec<(&str, String, u64)> = vec![
        ("unknown session", unknown, 1),
        ("malformed session", "nope".to_owned(), 1),
        ("wrong token", session_id.clone(), base),
        ("seq too old for the replay buffer", session_id.clone(), base),
        ("seq never sent", session_id.clone(), base + 1000),
    ];
    for (what, sid, seq) in cases {
        let mut c = client(&proxy).await;
        assert_eq!(c.payload().await["op"], 10);
        let token = if what == "wrong token" { "wrong" } else { fake.token() };
        c.resume(token, &sid, seq).await;
        let p = c.payload().await;
        assert_eq!((p["op"].as_u64(), p["d"].as_bool()), (Some(9), Some(false)), "{what}: {p}");
        // The connection stays usable: Identify works on it.
        c.send(json!({"op": 2, "d": {"token": fake.token(), "intents": 513, "shard": [0, 1], "properties": {}}})).await;
        assert_eq!(c.dispatch().await["t"], "READY", "{what}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_resumes_on_whichever_core_accepts_the_connection() {
    let (fake, proxy) = setup(2, 4, json!({"cores": 2})).await;
    let mut observer = client(&proxy).await;
    observer.identify_and_load(fake.token(), 1, 2).await;
    let mut c = client(&proxy).await;
    let ready = c.identify_and_load(fake.token(), 1, 2).await;
    let session_id = ready["d"]["session_id"].as_str().unwrap().to_owned();
    let mut seq = 1 + ready["d"]["guilds"].as_array().unwrap().len() as u64;
    drop(c);
    for n in 1..=6u64 {
        inject(&fake, 1, n);
        assert_eq!(content_n(&observer.dispatch().await), n);
        let mut c = client(&proxy).await;
        assert_eq!(c.payload().await["op"], 10);
        c.resume(fake.token(), &session_id, seq).await;
        let (replayed, resumed) = c.dispatches_until("RESUMED").await;
        assert_eq!(replayed.len(), 1, "exactly the one missed event");
        assert_eq!(content_n(&replayed[0]), n);
        assert_eq!(replayed[0]["s"], seq + 1);
        seq = resumed["s"].as_u64().unwrap();
    }
    assert!(proxy.wait_log("is on core 1; handing over").await, "no resume crossed cores");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_client_is_closed_resumably_and_catches_up_while_others_are_unaffected() {
    let (fake, proxy) = setup(1, 1, json!({"backpressure": 300})).await;
    let mut slow = Client::connect_with_buffer(&proxy.url(), "/?v=10&encoding=json", Some(4096)).await;
    let ready = slow.identify_and_load(fake.token(), 0, 1).await;
    let session_id = ready["d"]["session_id"].as_str().unwrap().to_owned();
    let mut fast = client(&proxy).await;
    fast.identify_and_load(fake.token(), 0, 1).await;
    let total = 6000u64;
    let reader = tokio::spawn(async move {
        let mut got = Vec::new();
        while got.len() < total as usize {
            got.push(content_n(&fast.dispatch().await));
        }
        got
    });
    // Paced so that the fast client keeps up; the slow one reads nothing.
    for n in 1..=total {
        inject(&fake, 0, n);
        if n % 50 == 0 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    assert_eq!(reader.await.unwrap(), (1..=total).collect::<Vec<_>>(), "the fast client got everything in order");
    assert!(proxy.wait_log("fell behind").await, "the slow client was never cut");
    // The slow client reads what reached it, then resumes from its last seq.
    let mut got = Vec::new();
    let mut last_seq = 1 + ready["d"]["guilds"].as_array().unwrap().len() as u64;
    loop {
        match slow.recv().await {
            Received::Payload(v) if v["op"] == 0 => {
                assert_eq!(v["s"], last_seq + 1, "no gap before the cut");
                last_seq += 1;
                got.push(content_n(&v));
            }
            Received::Payload(_) => {}
            Received::Closed(code, _) => {
                assert_eq!(code, 4000, "a resumable close code");
                break;
            }
            Received::Ended => break,
        }
    }
    assert!((got.len() as u64) < total);
    let mut again = client(&proxy).await;
    assert_eq!(again.payload().await["op"], 10);
    again.resume(fake.token(), &session_id, last_seq).await;
    let (replayed, _) = again.dispatches_until("RESUMED").await;
    got.extend(replayed.iter().map(content_n));
    assert_eq!(got, (1..=total).collect::<Vec<_>>(), "nothing skipped, nothing doubled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_behind_for_a_moment_in_a_burst_is_waited_for_not_closed() {
    // 2,000 messages of about 2.5 KB: far more than the socket buffers hold,
    // so the client's queue passes `backpressure` within its 100 ms nap
    // unless the shard stops reading from Discord while it catches up.
    let (fake, proxy) = setup(1, 1, json!({"backpressure": 300})).await;
    let mut late = Client::connect_with_buffer(&proxy.url(), "/?v=10&encoding=json", Some(4096)).await;
    let ready = late.identify_and_load(fake.token(), 0, 1).await;
    let mut last_seq = 1 + ready["d"]["guilds"].as_array().unwrap().len() as u64;
    let total = 2000u64;
    let guild = fake.guild_ids_for_shard(0, 1)[0];
    let padding = "x".repeat(2500);
    for n in 1..=total {
        let mut m = message(guild, fake.first_channel_id(guild), n, &format!("m{n}"));
        m["embeds"] = json!([{ "description": padding }]);
        fake.inject(0, "MESSAGE_CREATE", m).unwrap();
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut got = Vec::new();
    while got.len() < total as usize {
        match late.recv().await {
            Received::Payload(v) if v["op"] == 0 => {
                assert_eq!(v["s"], last_seq + 1, "seq +1");
                last_seq += 1;
                got.push(content_n(&v));
            }
            Received::Payload(_) => {}
            other => panic!("the client was cut after {} of {total}: {other:?}", got.len()),
        }
    }
    assert_eq!(got, (1..=total).collect::<Vec<_>>());
    assert!(proxy.log_lines("fell behind").is_empty(), "nobody was closed for lag");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_chunks_go_only_to_the_client_that_asked_with_its_nonce() {
    let (fake, proxy) = setup(1, 2, json!({})).await;
    let guild = fake.guild_ids_for_shard(0, 1)[0].to_string();
    let mut a = client(&proxy).await;
    let mut b = client(&proxy).await;
    a.identify_and_load(fake.token(), 0, 1).await;
    b.identify_and_load(fake.token(), 0, 1).await;
    let request = |nonce: Option<&str>| {
        let mut d = json!({"guild_id": guild, "query": "", "limit": 0});
        if let Some(n) = nonce {
            d["nonce"] = n.into();
        }
        json!({"op": 8, "d": d})
    };
    a.send(request(Some("same"))).await;
    b.send(request(Some("same"))).await;
    a.send(request(None)).await;
    let (_, chunk_a) = a.dispatches_until("GUILD_MEMBERS_CHUNK").await;
    assert_eq!(chunk_a["d"]["nonce"], "same");
    let (_, chunk_a2) = a.dispatches_until("GUILD_MEMBERS_CHUNK").await;
    assert!(chunk_a2["d"].get("nonce").is_none(), "no nonce asked, none given: {}", chunk_a2["d"]);
    let (_, chunk_b) = b.dispatches_until("GUILD_MEMBERS_CHUNK").await;
    assert_eq!(chunk_b["d"]["nonce"], "same");
    assert!(b.recv_within(Duration::from_millis(500)).await.is_none(), "b got a's chunk");
    let sent: Vec<Value> = fake.commands(0).into_iter().filter(|c| c["op"] == 8).collect();
    assert_eq!(sent.len(), 3);
    let nonces: BTreeSet<&str> = sent.iter().map(|c| c["d"]["nonce"].as_str().unwrap()).collect();
    assert_eq!(nonces.len(), 3, "each request got its own proxy nonce");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_client_gets_the_current_voice_session_back() {
    let (fake, proxy) = setup(1, 2, json!({})).await;
    let guild = fake.guild_ids_for_shard(0, 1)[0].to_string();
    let channel = fake.first_channel_id(fake.guild_ids_for_shard(0, 1)[0]).to_string();
    let join = json!({"op": 4, "d": {"guild_id": guild, "channel_id": channel, "self_mute": false, "self_deaf": true}});
    let mut other = client(&proxy).await;
    other.identify_and_load(fake.token(), 0, 1).await;
    let mut a = client(&proxy).await;
    a.identify_and_load(fake.token(), 0, 1).await;
    a.send(join.clone()).await;
    let (_, state) = a.dispatches_until("VOICE_STATE_UPDATE").await;
    let (_, server) = a.dispatches_until("VOICE_SERVER_UPDATE").await;
    assert_eq!(state["d"]["user_id"], fake.bot_user_id().to_string());
    assert!(other.recv_within(Duration::from_millis(500)).await.is_none(), "voice events went to another client");
    drop(a);
    // The bot process restarts and asks for the channel it is already in.
    let mut c = client(&proxy).await;
    c.identify_and_load(fake.token(), 0, 1).await;
    c.send(join).await;
    let (_, state2) = c.dispatches_until("VOICE_STATE_UPDATE").await;
    let (_, server2) = c.dispatches_until("VOICE_SERVER_UPDATE").await;
    assert_eq!(state2["d"]["session_id"], state["d"]["session_id"], "same voice session");
    assert_eq!(server2["d"]["token"], server["d"]["token"]);
    let voice_commands = fake.commands(0).iter().filter(|c| c["op"] == 4).count();
    assert_eq!(voice_commands, 1, "the second request was answered by the proxy");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_set_by_a_client_survives_a_reidentify() {
    let (fake, proxy) = setup(1, 1, json!({"activity": {"type": 0, "name": "from config"}})).await;
    assert_eq!(fake.last_identify(0).unwrap()["presence"]["activities"][0]["name"], "from config");
    let mut c = client(&proxy).await;
    c.identify_and_load(fake.token(), 0, 1).await;
    let presence =
        json!({"since": null, "activities": [{"name": "set by the bot", "type": 3}], "status": "dnd", "afk": false});
    c.send(json!({"op": 3, "d": presence})).await;
    assert!(fake.wait_until(WAIT, |f| f.commands(0).iter().any(|c| c["op"] == 3)).await);
    assert!(fake.send_invalid_session(0, false));
    assert!(fake.wait_until(WAIT, |f| f.identify_count() == 2).await, "no re-identify");
    let identify = fake.last_identify(0).unwrap();
    assert_eq!(identify["presence"]["status"], "dnd");
    assert_eq!(identify["presence"]["activities"][0]["name"], "set by the bot");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identify_compress_true_sends_whole_zlib_messages() {
    let (fake, proxy) = setup(1, 2, json!({})).await;
    let mut c = client(&proxy).await;
    assert_eq!(c.payload().await["op"], 10);
    c.per_message_zlib = true;
    c.send(json!({"op": 2, "d": {"token": fake.token(), "intents": 513, "shard": [0, 1], "properties": {}, "compress": true}}))
        .await;
    assert_eq!(c.dispatch().await["t"], "READY");
    for _ in 0..2 {
        assert_eq!(c.dispatch().await["t"], "GUILD_CREATE");
    }
    assert_eq!(c.binary_frames.len(), 3, "every message is a binary frame");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compression_off_sends_plain_json_whatever_the_client_asks() {
    let (fake, proxy) = setup(1, 1, json!({"compression": false})).await;
    let mut c = Client::connect(&proxy.url(), "/?v=10&encoding=json&compress=zlib-stream").await;
    c.identify_and_load(fake.token(), 0, 1).await;
    assert!(c.binary_frames.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_client_is_asked_for_a_heartbeat_then_closed() {
    let (fake, proxy) = setup(1, 1, json!({"heartbeat_interval": 1000})).await;
    let mut c = client(&proxy).await;
    let hello = c.payload().await;
    assert_eq!(hello["d"]["heartbeat_interval"], 1000);
    c.send(json!({"op": 2, "d": {"token": fake.token(), "intents": 513, "shard": [0, 1], "properties": {}}})).await;
    let mut asked = false;
    loop {
        match c.recv().await {
            Received::Payload(p) if p["op"] == 1 => asked = true,
            Received::Payload(_) => {}
            Received::Closed(code, _) => {
                assert_eq!(code, 4009);
                break;
            }
            Received::Ended => panic!("ended without a close frame"),
        }
    }
    assert!(asked, "the proxy asked for a heartbeat first");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disconnected_session_expires_after_session_ttl_and_not_before() {
    // Expiry is scheduled for when the session can expire (the core is not
    // woken periodically to look): it must still happen, and not before.
    let ttl = Duration::from_secs(2);
    let (fake, proxy) = setup(1, 2, json!({"session_ttl": ttl.as_secs()})).await;
    let mut a = client(&proxy).await;
    let ready = a.identify_and_load(fake.token(), 0, 1).await;
    let session_id = ready["d"]["session_id"].as_str().unwrap().to_owned();
    let seq = 1 + ready["d"]["guilds"].as_array().unwrap().len() as u64;
    drop(a);
    // Half the ttl later the session is still there.
    tokio::time::sleep(ttl / 2).await;
    let mut b = client(&proxy).await;
    assert_eq!(b.payload().await["op"], 10);
    b.resume(fake.token(), &session_id, seq).await;
    let resumed = b.dispatch().await;
    assert_eq!(resumed["t"], "RESUMED", "{resumed}");
    // RESUMED has its own seq; a resume continues from it.
    let seq = resumed["s"].as_u64().unwrap();
    drop(b);
    // Well past the ttl after this disconnect, it is gone.
    tokio::time::sleep(ttl + Duration::from_secs(3)).await;
    let mut c = client(&proxy).await;
    assert_eq!(c.payload().await["op"], 10);
    c.resume(fake.token(), &session_id, seq).await;
    let p = c.payload().await;
    assert_eq!((p["op"].as_u64(), p["d"].as_bool()), (Some(9), Some(false)), "the session did not expire: {p}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_replay_budget_drops_the_oldest_and_refuses_only_the_resumes_that_needed_them() {
    // One core, two shards sharing a 1 MiB budget. Both clients drop;
    // shard 0 then gets 600 KB, shard 1 600 KB more: the oldest (shard 0's)
    // go. Shard 0's session cannot be resumed without a gap: op 9. Shard
    // 1's lost nothing: every event once, in order, then RESUMED.
    let (fake, proxy) = setup(2, 4, json!({"cores": 1, "replay_memory": 1 << 20})).await;
    let mut sessions = Vec::new();
    for shard in 0..2 {
        let mut c = client(&proxy).await;
        let ready = c.identify_and_load(fake.token(), shard, 2).await;
        let seq = 1 + ready["d"]["guilds"].as_array().unwrap().len() as u64;
        sessions.push((ready["d"]["session_id"].as_str().unwrap().to_owned(), seq));
    }
    let big = "x".repeat(10_000);
    let send = |shard: u32, range: std::ops::RangeInclusive<u64>| {
        for n in range {
            let guild = fake.guild_ids_for_shard(shard, 2)[0];
            let content = format!("m{n} {big}");
            fake.inject(shard, "MESSAGE_CREATE", message(guild, fake.first_channel_id(guild), n, &content)).unwrap();
        }
    };
    send(0, 1..=60);
    // Let shard 0's events reach the proxy before shard 1's (the order of eviction).
    let mut probe = client(&proxy).await;
    probe.identify_and_load(fake.token(), 0, 2).await;
    let marker = |shard: u32| {
        let guild = fake.guild_ids_for_shard(shard, 2)[0];
        fake.inject(
            shard,
            "TYPING_START",
            json!({"guild_id": guild.to_string(), "channel_id": "1", "user_id": "1", "timestamp": 0}),
        )
    };
    marker(0).unwrap();
    probe.dispatches_until("TYPING_START").await;
    drop(probe);
    send(1, 1..=60);
    let mut probe = client(&proxy).await;
    probe.identify_and_load(fake.token(), 1, 2).await;
    marker(1).unwrap();
    probe.dispatches_until("TYPING_START").await;
    drop(probe);

    let (id0, seq0) = &sessions[0];
    let mut a = client(&proxy).await;
    assert_eq!(a.payload().await["op"], 10);
    a.resume(fake.token(), id0, *seq0).await;
    let p = a.payload().await;
    assert_eq!((p["op"].as_u64(), p["d"].as_bool()), (Some(9), Some(false)), "shard 0 lost events to the budget: {p}");

    let (id1, seq1) = &sessions[1];
    let mut b = client(&proxy).await;
    assert_eq!(b.payload().await["op"], 10);
    b.resume(fake.token(), id1, *seq1).await;
    let mut expected_seq = *seq1 + 1;
    let mut got = Vec::new();
    loop {
        let d = b.dispatch().await;
        assert_eq!(d["s"].as_u64(), Some(expected_seq), "{}", d["t"]);
        expected_seq += 1;
        match d["t"].as_str() {
            Some("RESUMED") => break,
            Some("MESSAGE_CREATE") => {
                let first_word = d["d"]["content"].as_str().unwrap().split(' ').next().unwrap();
                got.push(first_word.strip_prefix('m').unwrap().parse::<u64>().unwrap());
            }
            _ => {}
        }
    }
    assert_eq!(got, (1..=60).collect::<Vec<u64>>(), "shard 1's session replayed exactly what it missed");
}
