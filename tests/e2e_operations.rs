//! Operations: restart without re-identify (state file), SIGHUP reload.

mod common;

use common::{fake, message, wait_connected, Client, Proxy, Received, WAIT};
use serde_json::{json, Value};

fn inject(fake: &fake_discord::FakeDiscord, shard: u32, n: u64) {
    let guild = fake.guild_ids_for_shard(shard, fake.config().shards)[0];
    fake.inject(shard, "MESSAGE_CREATE", message(guild, fake.first_channel_id(guild), n, &format!("m{n}"))).unwrap();
}

fn content_n(ev: &Value) -> u64 {
    ev["d"]["content"].as_str().and_then(|c| c.strip_prefix('m')).and_then(|n| n.parse().ok()).expect("a test message")
}

fn state_path(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("gateway-proxy-state-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join("state.json")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_resumes_shards_and_clients_without_identifying() {
    let fake = fake(2, 4).await;
    let state = state_path("restart");
    let mut proxy = Proxy::start(&fake, json!({"state_file": state, "cores": 2})).await;
    wait_connected(&fake, &proxy, 0..2).await;
    let mut c = Client::connect(&proxy.url(), "/?v=10&encoding=json").await;
    let ready = c.identify_and_load(fake.token(), 0, 2).await;
    let session_id = ready["d"]["session_id"].as_str().unwrap().to_owned();
    let mut seq = 1 + ready["d"]["guilds"].as_array().unwrap().len() as u64;
    for n in 1..=3 {
        inject(&fake, 0, n);
    }
    for n in 1..=3 {
        let ev = c.dispatch().await;
        seq += 1;
        assert_eq!((ev["s"].as_u64().unwrap(), content_n(&ev)), (seq, n));
    }

    assert_eq!(proxy.terminate(), Some(0), "a clean exit on SIGTERM");
    match c.recv().await {
        Received::Closed(code, _) => assert_eq!(code, 4000, "clients are told to resume"),
        other => panic!("expected a close frame, got {other:?}"),
    }
    assert!(state.exists(), "state file written");
    assert_eq!(fake.identify_count(), 2);
    // Discord goes on while the proxy is down.
    for n in 4..=6 {
        inject(&fake, 0, n);
    }

    let port = proxy.port();
    let proxy = Proxy::start(&fake, json!({"state_file": state, "cores": 2, "port": port})).await;
    assert!(
        fake.wait_until(WAIT, |f| f.resume_count_for(0) == 1
            && f.resume_count_for(1) == 1
            && f.connected(0)
            && f.connected(1))
            .await,
        "shards did not resume; proxy log:\n{}",
        proxy.log.lock().unwrap().join("\n")
    );
    assert_eq!(fake.identify_count(), 2, "zero Identifies across the restart");

    let mut c = Client::connect(&proxy.url(), "/?v=10&encoding=json").await;
    assert_eq!(c.payload().await["op"], 10);
    c.resume(fake.token(), &session_id, seq).await;
    let mut got = Vec::new();
    let mut resumed = false;
    while got.len() < 3 || !resumed {
        let ev = c.dispatch().await;
        seq += 1;
        assert_eq!(ev["s"], seq, "the client's numbering continues");
        if ev["t"] == "RESUMED" {
            resumed = true;
        } else {
            got.push(content_n(&ev));
        }
    }
    assert_eq!(got, vec![4, 5, 6], "the client missed nothing across the restart");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_state_file_is_ignored() {
    let fake = fake(1, 2).await;
    let state = state_path("torn");
    std::fs::write(&state, b"{\"version\":1,\"saved_at_ms\":").unwrap();
    let proxy = Proxy::start(&fake, json!({"state_file": state})).await;
    wait_connected(&fake, &proxy, 0..1).await;
    assert_eq!(fake.identify_count(), 1);
    assert!(proxy.wait_log("torn or invalid").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_presence_and_log_level() {
    let fake = fake(1, 1).await;
    let proxy = Proxy::start(&fake, json!({"activity": {"type": 0, "name": "first"}})).await;
    wait_connected(&fake, &proxy, 0..1).await;
    let mut config = proxy.config.clone();
    config["activity"] = json!({"type": 0, "name": "second"});
    config["log_level"] = json!("debug");
    std::fs::write(&proxy.config_path, serde_json::to_vec(&config).unwrap()).unwrap();
    proxy.signal(libc::SIGHUP);
    assert!(
        fake.wait_until(WAIT, |f| f
            .commands(0)
            .iter()
            .any(|c| c["op"] == 3 && c["d"]["activities"][0]["name"] == "second"))
            .await,
        "presence not updated"
    );
    assert!(proxy.wait_log("log level is now `debug`").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_ready_and_metrics_tell_the_truth() {
    let fake = fake(2, 4).await;
    fake.fail_next_identify(1, 4014);
    let proxy = Proxy::start(&fake, json!({"cores": 2})).await;
    assert!(fake.wait_until(WAIT, |f| f.connected(0)).await);
    assert!(proxy.wait_log("fatal code 4014").await);
    let mut c = Client::connect(&proxy.url(), "/?v=10&encoding=json").await;
    c.identify_and_load(fake.token(), 0, 2).await;
    for n in 1..=3 {
        inject(&fake, 0, n);
    }
    for _ in 0..3 {
        c.dispatch().await;
    }

    assert_eq!(common::http_get(&proxy.addr, "/health").await, (200, "ok\n".to_owned()));
    let (status, body) = common::http_get(&proxy.addr, "/ready").await;
    assert_eq!(status, 503, "a failed shard means not ready: {body}");
    let ready: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(ready["shards"][0]["status"], "ready");
    assert_eq!(ready["shards"][1]["status"], "failed");

    // Sampled gauges are refreshed by the scrape itself.
    let (status, metrics) = common::http_get(&proxy.addr, "/metrics").await;
    assert_eq!(status, 200);
    for line in [
        "gateway_proxy_events_received_total{event=\"MESSAGE_CREATE\",shard=\"0\"} 3",
        "gateway_proxy_identifies_total{shard=\"0\"} 1",
        "gateway_proxy_shard_status{shard=\"0\"} 3",
        "gateway_proxy_shard_status{shard=\"1\"} 4",
        "gateway_proxy_clients_connected{shard=\"0\"} 1",
        "gateway_proxy_client_sessions{shard=\"0\"} 1",
        // The three messages; the GUILD_CREATE burst came before any client session, so it is not kept.
        "gateway_proxy_replay_buffer_events{shard=\"0\"} 3",
        "# TYPE gateway_proxy_gateway_latency_seconds histogram",
        "# TYPE gateway_proxy_events_received_total counter",
        "# TYPE gateway_proxy_clients_connected gauge",
    ] {
        assert!(metrics.contains(line), "missing `{line}` in:\n{metrics}");
    }
    assert!(metrics.contains("gateway_proxy_cache_entities{kind=\"guilds\",shard=\"0\"}"));
    let cache_bytes: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("gateway_proxy_cache_bytes{shard=\"0\"} "))
        .and_then(|v| v.parse().ok())
        .expect("a cache_bytes gauge for shard 0");
    assert!(cache_bytes > 0, "shard 0 has guilds cached");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scrape_refreshes_the_gauges_of_every_core() {
    // Shard 1 lives on the core that did not accept the scrape half of the
    // time; its gauges must be as fresh as shard 0's.
    let fake = fake(2, 4).await;
    let proxy = Proxy::start(&fake, json!({"cores": 2})).await;
    common::wait_connected(&fake, &proxy, 0..2).await;
    let mut clients = Vec::new();
    for shard in 0..2 {
        let mut c = Client::connect(&proxy.url(), "/?v=10&encoding=json").await;
        c.identify_and_load(fake.token(), shard, 2).await;
        clients.push(c);
    }
    for _ in 0..4 {
        let (status, metrics) = common::http_get(&proxy.addr, "/metrics").await;
        assert_eq!(status, 200);
        for shard in 0..2 {
            for line in [
                format!("gateway_proxy_clients_connected{{shard=\"{shard}\"}} 1"),
                format!("gateway_proxy_client_sessions{{shard=\"{shard}\"}} 1"),
            ] {
                assert!(metrics.contains(&line), "missing `{line}` in:\n{metrics}");
            }
        }
    }
}
