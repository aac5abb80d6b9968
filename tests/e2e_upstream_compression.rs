//! Transport compression from Discord (`upstream_compression`): the proxy
//! reads zlib-stream and zstd-stream, starts a fresh decompressor on every
//! connection, and a resume over each loses nothing.

mod common;

use common::{fake, http_get, message, next_twilight_event, wait_connected, Proxy};
use serde_json::json;
use std::time::Duration;
use twilight_gateway::{ConfigBuilder, Event, Intents, Shard, ShardId};

/// The proxy's counter `series` summed over its shards.
async fn metric_sum(proxy: &Proxy, series: &str) -> u64 {
    let (_, metrics) = http_get(&proxy.addr, "/metrics").await;
    metrics.lines().filter(|l| l.starts_with(series)).filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok()).sum()
}

async fn next_message(shard: &mut Shard) -> String {
    loop {
        match next_twilight_event(shard).await {
            Event::MessageCreate(m) => return m.content.clone(),
            Event::GuildCreate(_) | Event::Ready(_) | Event::Resumed => {}
            other => panic!("unexpected {:?}", other.kind()),
        }
    }
}

async fn resume_over(compression: &str) {
    let fake = fake(2, 6).await;
    let proxy = Proxy::start(&fake, json!({"upstream_compression": compression})).await;
    wait_connected(&fake, &proxy, 0..2).await;
    let config = ConfigBuilder::new(fake.token().to_owned(), Intents::GUILDS | Intents::GUILD_MESSAGES)
        .proxy_url(proxy.url())
        .build();
    let mut shard = Shard::with_config(ShardId::new(1, 2), config);
    match next_twilight_event(&mut shard).await {
        Event::Ready(r) => assert_eq!(r.guilds.len(), fake.guild_ids_for_shard(1, 2).len()),
        other => panic!("expected READY, got {:?}", other.kind()),
    }
    let guild = fake.guild_ids_for_shard(1, 2)[0];
    let channel = fake.first_channel_id(guild);
    let mut n = 0;
    let send = |count: usize, n: &mut u64| {
        for _ in 0..count {
            *n += 1;
            fake.inject(
                1,
                "MESSAGE_CREATE",
                message(guild, channel, *n, &format!("m{n} {}", "z".repeat(*n as usize % 700))),
            );
        }
    };
    send(50, &mut n);
    for i in 1..=50 {
        assert!(next_message(&mut shard).await.starts_with(&format!("m{i} ")));
    }
    let compressed = metric_sum(&proxy, "gateway_proxy_upstream_compressed_bytes_total{").await;
    let plain = metric_sum(&proxy, "gateway_proxy_upstream_received_bytes_total{").await;
    assert!(compressed > 0, "Discord's frames were compressed ({compression})");
    assert!(compressed * 2 < plain, "{compression}: {compressed} compressed bytes for {plain} bytes of payloads");

    // Three resumes in a row, each after events Discord kept for it: each
    // new connection's stream starts over, so a decompressor carried over
    // from the last one would fail on the first frame.
    for round in 0..3 {
        let resumes = fake.resume_count();
        assert!(fake.drop_connection(1));
        send(20, &mut n);
        let ok = fake.wait_until(common::WAIT, move |f| f.resume_count() > resumes && f.connected(1)).await;
        assert!(ok, "round {round}: the proxy resumed over {compression}");
        send(5, &mut n);
        for i in n - 24..=n {
            assert!(next_message(&mut shard).await.starts_with(&format!("m{i} ")), "{compression} round {round}");
        }
    }
    assert_eq!(fake.identify_count(), 2, "never identified again");
    assert!(proxy.log_lines("transport compression").is_empty(), "no decode error");
    tokio::time::sleep(Duration::from_millis(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zlib_stream_from_discord_resumes_without_losing_events() {
    resume_over("zlib-stream").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zstd_stream_from_discord_resumes_without_losing_events() {
    resume_over("zstd-stream").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_upstream_compression_is_a_config_error_naming_the_key() {
    let text = r#"{"token": "x", "intents": 1, "upstream_compression": "gzip"}"#;
    let err = gateway_proxy::config::Config::from_json(text, None).unwrap_err().to_string();
    assert!(err.contains("upstream_compression") && err.contains("gzip"), "{err}");
}
