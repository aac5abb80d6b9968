//! Limits on hostile clients: idle connections, a slow handshake, an
//! oversized request head and too many connections are refused with a clear
//! HTTP status, while a real bot (twilight-gateway) keeps being served.

mod common;

use common::{fake, http_get, message, next_twilight_event, wait_connected, wait_metric, Client, Proxy, WAIT};
use futures_util::future::join_all;
use serde_json::json;
use std::time::{Duration, Instant};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpSocket, TcpStream},
};
use twilight_gateway::{ConfigBuilder, Event, Intents, Shard, ShardId};

/// A TCP connection to the proxy from `source` (any 127.x address is loopback).
async fn connect_from(source: &str, proxy: &Proxy) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
    socket.connect(proxy.addr.parse().unwrap()).await.unwrap()
}

/// What the proxy sent before closing, or `None` if it sent nothing and kept
/// the connection open for `within`.
async fn answer_within(stream: &mut TcpStream, within: Duration) -> Option<String> {
    let mut out = Vec::new();
    match tokio::time::timeout(within, stream.read_to_end(&mut out)).await {
        Ok(_) => Some(String::from_utf8_lossy(&out).into_owned()),
        Err(_) if out.is_empty() => None,
        Err(_) => Some(String::from_utf8_lossy(&out).into_owned()),
    }
}

/// A websocket upgrade request for the gateway.
const UPGRADE: &[u8] = b"GET /?v=10 HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

fn status_of(answer: &str) -> u16 {
    answer.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0)
}

/// A twilight shard through the proxy: READY, its guilds, then one live message.
async fn bot_is_served(fake: &fake_discord::FakeDiscord, proxy: &Proxy) {
    let config = ConfigBuilder::new(fake.token().to_owned(), Intents::GUILDS | Intents::GUILD_MESSAGES)
        .proxy_url(proxy.url())
        .build();
    let mut shard = Shard::with_config(ShardId::new(0, 1), config);
    match next_twilight_event(&mut shard).await {
        Event::Ready(r) => assert_eq!(r.guilds.len(), fake.guild_ids_for_shard(0, 1).len()),
        other => panic!("expected READY, got {:?}", other.kind()),
    }
    let guilds = fake.guild_ids_for_shard(0, 1);
    for _ in &guilds {
        assert!(matches!(next_twilight_event(&mut shard).await, Event::GuildCreate(_)));
    }
    let channel = fake.first_channel_id(guilds[0]);
    fake.inject(0, "MESSAGE_CREATE", message(guilds[0], channel, 1, "still served"));
    match next_twilight_event(&mut shard).await {
        Event::MessageCreate(m) => assert_eq!(m.content, "still served"),
        other => panic!("expected MESSAGE_CREATE, got {:?}", other.kind()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_idle_connections_from_one_address_are_cut_off_and_a_bot_is_still_served() {
    let fake = fake(1, 3).await;
    let proxy = Proxy::start(
        &fake,
        json!({"max_unidentified_per_address": 100, "handshake_timeout_secs": 60, "log_level": "info"}),
    )
    .await;
    wait_connected(&fake, &proxy, 0..1).await;

    let mut idle = Vec::new();
    for _ in 0..1000 {
        idle.push(connect_from("127.0.0.2", &proxy).await);
    }
    let answers = join_all(idle.iter_mut().map(|s| answer_within(s, Duration::from_secs(5)))).await;
    let kept = answers.iter().filter(|a| a.is_none()).count();
    let refused: Vec<&String> = answers.iter().flatten().collect();
    assert_eq!(kept, 100, "max_unidentified_per_address connections stay open, waiting for their handshake");
    assert_eq!(refused.len(), 900);
    for answer in &refused {
        assert_eq!(status_of(answer), 429, "refused with 429: {answer}");
        assert!(answer.contains("max_unidentified_per_address = 100"), "the answer names the key: {answer}");
    }
    wait_metric(&proxy, "gateway_proxy_client_connections_refused_total{limit=\"max_unidentified_per_address\"}", 900)
        .await;

    // Another address is not held back by that one's idle connections.
    bot_is_served(&fake, &proxy).await;
    wait_metric(&proxy, "gateway_proxy_client_connections{state=\"unidentified\"}", 100).await;

    // Identified connections do not count against the address: once the idle
    // ones are gone, the bot's address may open new ones again.
    drop(idle);
    wait_metric(&proxy, "gateway_proxy_client_connections{state=\"unidentified\"}", 0).await;
    let mut again = connect_from("127.0.0.2", &proxy).await;
    assert_eq!(answer_within(&mut again, Duration::from_millis(1500)).await, None, "accepted again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unidentified_connections_are_bounded_in_total_and_identifying_frees_a_place() {
    let fake = fake(1, 2).await;
    let proxy = Proxy::start(&fake, json!({"max_unidentified_connections": 20, "log_level": "info"})).await;
    wait_connected(&fake, &proxy, 0..1).await;
    // 20 idle connections from 20 addresses fill the total.
    let mut idle = Vec::new();
    for i in 0..20 {
        idle.push(connect_from(&format!("127.0.1.{}", i + 1), &proxy).await);
    }
    wait_metric(&proxy, "gateway_proxy_client_connections{state=\"unidentified\"}", 20).await;
    let mut over = connect_from("127.0.2.1", &proxy).await;
    over.write_all(UPGRADE).await.unwrap();
    let answer = answer_within(&mut over, WAIT).await.expect("refused");
    assert_eq!(status_of(&answer), 503, "{answer}");
    assert!(answer.contains("Retry-After: 5"), "{answer}");
    assert!(answer.contains("max_unidentified_connections = 20"), "{answer}");
    // The operator's endpoints are answered all the same.
    assert_eq!(http_get(&proxy.addr, "/health").await.0, 200);

    // One of them identifies: it leaves the count, and a new connection fits.
    drop(idle.pop());
    wait_metric(&proxy, "gateway_proxy_client_connections{state=\"unidentified\"}", 19).await;
    let mut client = Client::connect(&proxy.url(), "/?v=10&encoding=json").await;
    client.identify_and_load(fake.token(), 0, 1).await;
    wait_metric(&proxy, "gateway_proxy_client_connections{state=\"unidentified\"}", 19).await;
    wait_metric(&proxy, "gateway_proxy_client_connections{state=\"open\"}", 20).await;
    let mut fits = connect_from("127.0.2.2", &proxy).await;
    assert_eq!(answer_within(&mut fits, Duration::from_millis(1500)).await, None, "accepted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn total_connections_are_bounded_and_a_place_frees_when_a_client_leaves() {
    let fake = fake(1, 2).await;
    let proxy = Proxy::start(&fake, json!({"max_connections": 3, "log_level": "info"})).await;
    wait_connected(&fake, &proxy, 0..1).await;
    let mut clients = Vec::new();
    for _ in 0..3 {
        let mut c = Client::connect(&proxy.url(), "/?v=10&encoding=json").await;
        c.identify_and_load(fake.token(), 0, 1).await;
        clients.push(c);
    }
    let mut fourth = TcpStream::connect(&proxy.addr).await.unwrap();
    fourth.write_all(UPGRADE).await.unwrap();
    let answer = answer_within(&mut fourth, WAIT).await.expect("refused");
    assert_eq!(status_of(&answer), 503, "{answer}");
    assert!(answer.contains("max_connections = 3"), "{answer}");
    // The three keep their events.
    let guild = fake.guild_ids_for_shard(0, 1)[0];
    fake.inject(0, "MESSAGE_CREATE", message(guild, fake.first_channel_id(guild), 1, "to all three"));
    for c in &mut clients {
        assert_eq!(c.dispatch().await["d"]["content"], "to all three");
    }
    drop(clients.pop());
    wait_metric(&proxy, "gateway_proxy_client_connections{state=\"open\"}", 2).await;
    let mut c = Client::connect(&proxy.url(), "/?v=10&encoding=json").await;
    c.identify_and_load(fake.token(), 0, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slowloris_handshake_is_answered_408_when_its_time_is_up() {
    let fake = fake(1, 2).await;
    let proxy = Proxy::start(&fake, json!({"handshake_timeout_secs": 2, "log_level": "info"})).await;
    wait_connected(&fake, &proxy, 0..1).await;
    let mut slow = TcpStream::connect(&proxy.addr).await.unwrap();
    let started = Instant::now();
    slow.write_all(b"GET /?v=10 HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    let (mut read, mut write) = slow.into_split();
    // One header byte every 200 ms: the head is never complete.
    let dribble = tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if write.write_all(b"X").await.is_err() {
                break;
            }
        }
    });
    // Meanwhile a bot connects and is served.
    bot_is_served(&fake, &proxy).await;
    let mut out = Vec::new();
    tokio::time::timeout(WAIT, read.read_to_end(&mut out)).await.expect("closed in time").ok();
    let elapsed = started.elapsed();
    dribble.abort();
    let answer = String::from_utf8_lossy(&out);
    assert_eq!(status_of(&answer), 408, "{answer}");
    assert!(answer.contains("handshake_timeout_secs"), "{answer}");
    assert!(elapsed >= Duration::from_secs(2) && elapsed < Duration::from_secs(5), "closed after {elapsed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_mebibyte_request_head_is_answered_431() {
    let fake = fake(1, 2).await;
    let proxy = Proxy::start(&fake, json!({"log_level": "info"})).await;
    wait_connected(&fake, &proxy, 0..1).await;
    let mut big = TcpStream::connect(&proxy.addr).await.unwrap();
    let mut head = b"GET /?v=10 HTTP/1.1\r\nHost: x\r\nX-Padding: ".to_vec();
    head.resize(head.len() + (1 << 20), b'a');
    head.extend_from_slice(b"\r\n\r\n");
    let (mut read, mut write) = big.split();
    let send = async {
        // The proxy stops reading after its limit; the rest may be refused.
        let _ = write.write_all(&head).await;
    };
    let mut out = Vec::new();
    let receive = tokio::time::timeout(WAIT, read.read_to_end(&mut out));
    let (_, received) = tokio::join!(send, receive);
    received.expect("answered in time").ok();
    let answer = String::from_utf8_lossy(&out);
    assert_eq!(status_of(&answer), 431, "{answer}");
    assert!(answer.contains("larger than 16384 bytes"), "{answer}");
    assert_eq!(http_get(&proxy.addr, "/health").await.0, 200, "the proxy goes on");

    // A configured limit is the one applied: a 3 KiB head is refused under 2 KiB.
    drop(proxy);
    let proxy = Proxy::start(&fake, json!({"max_request_head_bytes": 2048, "log_level": "info"})).await;
    let mut s = TcpStream::connect(&proxy.addr).await.unwrap();
    s.write_all(format!("GET / HTTP/1.1\r\nHost: x\r\nX-Padding: {}\r\n\r\n", "b".repeat(3000)).as_bytes())
        .await
        .unwrap();
    let answer = answer_within(&mut s, WAIT).await.expect("answered");
    assert_eq!(status_of(&answer), 431, "{answer}");
    assert_eq!(http_get(&proxy.addr, "/health").await.0, 200);
}
