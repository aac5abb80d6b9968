//! Several proxies of one bot share Discord's identify limit (one IDENTIFY
//! per bucket every 5 s) through a coordinator: a real `redis-server`
//! (started here on a free port), or a server speaking twilight's
//! gateway-queue protocol (written here from its source: `GET /?shard=N`,
//! held until the shard's bucket may identify, then 200).

mod common;

use common::{Proxy, WAIT};
use fake_discord::{FakeConfig, FakeDiscord};
use serde_json::json;
use std::{
    io::{Read, Write},
    net::TcpStream,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// Discord's spacing of two IDENTIFYs of one bucket.
const SPACING: Duration = Duration::from_secs(5);

/// A `redis-server` on a free loopback port, killed on drop.
struct Redis {
    child: Child,
    port: u16,
}

impl Redis {
    fn start_on(port: u16) -> Redis {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (Debian package redis-server; .ci/run installs it)");
        let redis = Redis { child, port };
        let deadline = Instant::now() + WAIT;
        while !redis.pings() {
            assert!(Instant::now() < deadline, "redis-server did not answer PING on port {port}");
            std::thread::sleep(Duration::from_millis(20));
        }
        redis
    }

    fn start() -> Redis {
        Self::start_on(free_port())
    }

    fn pings(&self) -> bool {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else { return false };
        let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
        let mut buf = [0u8; 16];
        s.write_all(b"PING\r\n").is_ok() && s.read(&mut buf).is_ok_and(|n| buf[..n].starts_with(b"+PONG"))
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

async fn fake(shards: u32, max_concurrency: u32) -> FakeDiscord {
    FakeDiscord::start(FakeConfig { shards, guilds: shards, max_concurrency, ..FakeConfig::default() })
        .await
        .expect("fake discord starts")
}

/// Three proxies on disjoint ranges of `shards`, all pacing through `queue`.
async fn three_proxies(fake: &FakeDiscord, shards: u32, queue: serde_json::Value) -> Vec<Proxy> {
    let per = shards / 3;
    let mut proxies = Vec::new();
    for i in 0..3 {
        let range =
            json!({"shards": shards, "shard_start": i * per, "shard_end": (i + 1) * per, "identify_queue": queue});
        proxies.push(Proxy::start(fake, range).await);
    }
    proxies
}

/// Every pair of IDENTIFYs of one bucket is at least `min_gap` apart; returns the log.
fn assert_spaced(fake: &FakeDiscord, max_concurrency: u32, min_gap: Duration) -> Vec<(Instant, u32)> {
    let log = fake.identify_log();
    for bucket in 0..max_concurrency {
        let times: Vec<Instant> = log.iter().filter(|(_, s)| s % max_concurrency == bucket).map(|(t, _)| *t).collect();
        for pair in times.windows(2) {
            let gap = pair[1].duration_since(pair[0]);
            assert!(gap >= min_gap, "bucket {bucket}: two IDENTIFYs {gap:?} apart; log: {:?}", timeline(&log));
        }
    }
    log
}

/// The log as (seconds since the first, shard), for messages.
fn timeline(log: &[(Instant, u32)]) -> Vec<(String, u32)> {
    let Some(first) = log.first().map(|(t, _)| *t) else { return Vec::new() };
    log.iter().map(|(t, s)| (format!("{:.2}", t.duration_since(first).as_secs_f64()), *s)).collect()
}

async fn all_ready(fake: &FakeDiscord, shards: u32, within: Duration) -> bool {
    fake.wait_until(within, |f| (0..shards).all(|s| f.has_session(s) && f.connected(s))).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_proxies_share_one_bucket_through_redis() {
    let redis = Redis::start();
    let fake = fake(6, 1).await;
    let _proxies = three_proxies(&fake, 6, json!({"type": "redis", "url": redis.url()})).await;
    assert!(
        all_ready(&fake, 6, Duration::from_secs(60)).await,
        "not every shard identified: {:?}",
        timeline(&fake.identify_log())
    );
    // Redis turns last 5.5 s: every gap is over 5 s.
    let log = assert_spaced(&fake, 1, SPACING);
    assert_eq!(log.len(), 6, "one IDENTIFY per shard: {:?}", timeline(&log));
    eprintln!("IDENTIFY timeline (seconds, shard): {:?}", timeline(&log));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_max_concurrency_4_buckets_go_in_parallel_and_each_is_spaced() {
    let redis = Redis::start();
    let fake = fake(6, 4).await;
    let _proxies = three_proxies(&fake, 6, json!({"type": "redis", "url": redis.url(), "prefix": "testbot"})).await;
    assert!(all_ready(&fake, 6, Duration::from_secs(40)).await, "{:?}", timeline(&fake.identify_log()));
    let log = assert_spaced(&fake, 4, SPACING);
    // Buckets 2 and 3 hold one shard each: the first IDENTIFYs of all four buckets come together.
    let first = log[0].0;
    let early = log.iter().filter(|(t, _)| t.duration_since(first) < Duration::from_secs(3)).count();
    assert_eq!(early, 4, "{:?}", timeline(&log));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_killed_holding_the_turn_blocks_the_others_only_until_the_key_expires() {
    let redis = Redis::start();
    let fake = fake(4, 1).await;
    let queue = json!({"type": "redis", "url": redis.url()});
    let a = Proxy::start(&fake, json!({"shards": 4, "shard_start": 0, "shard_end": 2, "identify_queue": queue})).await;
    assert!(fake.wait_until(WAIT, |f| f.identify_count() >= 1).await);
    // Killed right after taking a turn: nothing deletes its key.
    a.signal(libc::SIGKILL);
    let taken = fake.identify_log()[0].0;
    let _b = Proxy::start(&fake, json!({"shards": 4, "shard_start": 2, "shard_end": 4, "identify_queue": queue})).await;
    assert!(fake.wait_until(Duration::from_secs(30), |f| f.has_session(2) && f.has_session(3)).await);
    let log = fake.identify_log();
    let next = log.iter().find(|(_, s)| *s >= 2).expect("an IDENTIFY of the second proxy").0;
    let waited = next.duration_since(taken);
    assert!(waited >= SPACING, "the second proxy identified {waited:?} after the first");
    assert!(waited < SPACING + Duration::from_secs(3), "the dead proxy's turn held the bucket {waited:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_redis_nothing_identifies_but_resumes_go_on() {
    let mut redis = Redis::start();
    let fake = fake(2, 1).await;
    let proxy =
        Proxy::start(&fake, json!({"shards": 2, "identify_queue": {"type": "redis", "url": redis.url()}})).await;
    assert!(all_ready(&fake, 2, Duration::from_secs(30)).await);
    let port = redis.port;
    redis.stop();
    // Shard 0 must identify again (a session Discord invalidated); shard 1 only resumes.
    let identifies = fake.identify_count();
    fake.send_invalid_session(0, false);
    assert!(fake.drop_connection(1));
    assert!(fake.wait_until(WAIT, |f| f.resume_count_for(1) >= 1 && f.has_session(1)).await, "shard 1 resumed");
    assert!(proxy.wait_log("identify coordinator cannot be reached").await);
    let (status, body) = common::http_get(&proxy.addr, "/ready").await;
    assert_eq!(status, 503, "{body}");
    let ready: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(ready["identify_queue"]["reachable"], false, "{body}");
    // A while without Redis: no IDENTIFY at all.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(fake.identify_count(), identifies, "identified without the coordinator");
    // Redis back (empty): shard 0 identifies.
    let _redis = Redis::start_on(port);
    assert!(fake.wait_until(Duration::from_secs(45), |f| f.identify_count() > identifies && f.has_session(0)).await);
    assert!(proxy.wait_log("coordinator answers again").await);
    let deadline = Instant::now() + WAIT;
    loop {
        let (status, body) = common::http_get(&proxy.addr, "/ready").await;
        if status == 200 {
            assert!(!body.contains("identify_queue"), "{body}");
            break;
        }
        assert!(Instant::now() < deadline, "not ready again: {body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A server speaking twilight's gateway-queue protocol (as in its
/// src/main.rs): any path, `?shard=N`; the answer is held until the shard's
/// bucket may identify (one per 5 s per bucket), then 200 with its message.
struct GatewayQueue {
    port: u16,
}

impl GatewayQueue {
    async fn start(max_concurrency: u64) -> GatewayQueue {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let buckets = std::sync::Arc::new(tokio::sync::Mutex::new(std::collections::HashMap::<u64, Instant>::new()));
        tokio::spawn(async move {
            loop {
                let Ok((mut socket, _)) = listener.accept().await else { return };
                let buckets = buckets.clone();
                tokio::spawn(async move {
                    use tokio::io::{AsyncReadExt, AsyncWriteExt};
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match socket.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let line = String::from_utf8_lossy(&head).lines().next().unwrap_or("").to_owned();
                    let shard: u64 = line
                        .split_whitespace()
                        .nth(1)
                        .and_then(|target| target.split("shard=").nth(1))
                        .and_then(|v| v.split('&').next())
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0);
                    // Take the bucket's next turn, then wait for it.
                    let at = {
                        let mut b = buckets.lock().await;
                        let next = b.get(&(shard % max_concurrency)).map_or(Instant::now(), |t| *t + SPACING);
                        let at = next.max(Instant::now());
                        b.insert(shard % max_concurrency, at);
                        at
                    };
                    tokio::time::sleep_until(at.into()).await;
                    let body = r#"{"message": "You're free to connect now! :)"}"#;
                    let response =
                        format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}", body.len());
                    let _ = socket.write_all(response.as_bytes()).await;
                });
            }
        });
        GatewayQueue { port }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_proxies_share_one_bucket_through_twilights_gateway_queue() {
    let queue = GatewayQueue::start(1).await;
    let fake = fake(3, 1).await;
    let _proxies = three_proxies(&fake, 3, json!({"type": "http", "url": queue.url()})).await;
    assert!(all_ready(&fake, 3, Duration::from_secs(40)).await, "{:?}", timeline(&fake.identify_log()));
    // The server grants a bucket's turns exactly 5 s apart (as twilight's
    // queue does); the proxies identify as soon as granted, give or take the
    // few milliseconds of a connection.
    let log = assert_spaced(&fake, 1, SPACING - Duration::from_millis(100));
    assert_eq!(log.len(), 3, "{:?}", timeline(&log));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_finds_its_shards_from_its_ordinal_and_sends_clients_of_other_shards_where_they_run() {
    // Every pod has the same config; the StatefulSet's pod name gives the range.
    let fake = fake(6, 6).await;
    let same_config = json!({
        "shards": 6,
        "shards_per_instance": 2,
        "instances": "ws://gateway-proxy-{ordinal}.gateway-proxy:7878",
    });
    let pod = Proxy::start_with_env(&fake, same_config, &[("HOSTNAME", "gateway-proxy-1")]).await;
    assert!(fake.wait_until(WAIT, |f| f.has_session(2) && f.has_session(3)).await);
    assert!(!fake.connected(0) && !fake.connected(4), "only its own shards");
    let (status, body) = common::http_get(&pod.addr, "/shard-map").await;
    assert_eq!(status, 200);
    let map: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(map["shards"], 6);
    assert_eq!(map["local"], json!({"shard_start": 2, "shard_end": 4}));
    assert_eq!(
        map["instances"][2],
        json!({"url": "ws://gateway-proxy-2.gateway-proxy:7878", "shard_start": 4, "shard_end": 6})
    );
    // A client for shard 5 reached this pod: 4010, naming the pod that runs it.
    let mut c = common::Client::connect(&pod.url(), "/?v=10&encoding=json").await;
    c.identify(fake.token(), 5, 6).await;
    let reason = c.expect_close(4010).await;
    assert!(reason.contains("ws://gateway-proxy-2.gateway-proxy:7878"), "{reason}");
    // Its own shards are served.
    let mut c = common::Client::connect(&pod.url(), "/?v=10&encoding=json").await;
    c.identify_and_load(fake.token(), 3, 6).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_list_of_instances_sends_clients_to_the_right_one() {
    let fake = fake(4, 4).await;
    let a = Proxy::start(&fake, json!({"shards": 4, "shard_start": 0, "shard_end": 2})).await;
    let b_config =
        json!({"shards": 4, "shard_start": 2, "shard_end": 4, "instances": [a.url(), "ws://second.example:7878"]});
    let b = Proxy::start(&fake, b_config).await;
    assert!(fake.wait_until(WAIT, |f| (0..4).all(|s| f.has_session(s))).await);
    let mut c = common::Client::connect(&b.url(), "/?v=10&encoding=json").await;
    c.identify(fake.token(), 1, 4).await;
    let reason = c.expect_close(4010).await;
    assert!(reason.contains(&a.url()), "{reason}");
    // Following the redirect works.
    let mut c = common::Client::connect(&a.url(), "/?v=10&encoding=json").await;
    c.identify_and_load(fake.token(), 1, 4).await;
}
