//! Test harness: a fake Discord in-process, the real proxy binary as a child
//! process configured against it, and a raw websocket client for protocol points.
#![allow(dead_code)]

use fake_discord::{FakeConfig, FakeDiscord};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::Duration,
};
use tokio::net::TcpStream;
use tokio_tungstenite::{tungstenite::Message, MaybeTlsStream, WebSocketStream};

/// How long any single expectation may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(20);

/// A running proxy process.
pub struct Proxy {
    child: Child,
    /// `127.0.0.1:PORT`
    pub addr: String,
    /// Everything the proxy logged so far.
    pub log: Arc<Mutex<Vec<String>>>,
    /// The config file it runs with.
    pub config_path: std::path::PathBuf,
    /// The config it runs with.
    pub config: Value,
}

impl Proxy {
    /// Starts the proxy against `fake`, with `overrides` merged into the config.
    pub async fn start(fake: &FakeDiscord, overrides: Value) -> Proxy {
        Self::start_with_env(fake, overrides, &[]).await
    }

    /// As [`Proxy::start`], with these environment variables set for the process.
    pub async fn start_with_env(fake: &FakeDiscord, overrides: Value, env: &[(&str, &str)]) -> Proxy {
        let (mut child, path, config) = spawn_proxy(fake, overrides, env);
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let log2 = log.clone();
        std::thread::spawn(move || {
            let mut addr_tx = Some(addr_tx);
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("listening on http://").nth(1) {
                    if let Some(tx) = addr_tx.take() {
                        let _ = tx.send(rest.split_whitespace().next().unwrap_or("").to_owned());
                    }
                }
                if std::env::var_os("PROXY_LOG").is_some() {
                    eprintln!("proxy: {line}");
                }
                log2.lock().unwrap().push(line);
            }
        });
        let addr = tokio::task::spawn_blocking(move || addr_rx.recv_timeout(WAIT))
            .await
            .unwrap()
            .unwrap_or_else(|_| panic!("proxy did not start; log: {:?}", log.lock().unwrap()));
        Proxy { child, addr, log, config_path: path, config }
    }

    /// `ws://ADDR`
    pub fn url(&self) -> String {
        format!("ws://{}", self.addr)
    }

    /// Sends SIGTERM and waits for the exit code.
    pub fn terminate(&mut self) -> Option<i32> {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        self.wait_exit()
    }

    /// Sends a signal.
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.addr.rsplit(':').next().unwrap().parse().unwrap()
    }

    /// Whether the proxy process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits for the process to exit and returns its status code.
    pub fn wait_exit(&mut self) -> Option<i32> {
        self.child.wait().ok().and_then(|s| s.code())
    }

    /// Waits (up to WAIT) for a log line containing `needle`.
    pub async fn wait_log(&self, needle: &str) -> bool {
        let deadline = tokio::time::Instant::now() + WAIT;
        while tokio::time::Instant::now() < deadline {
            if !self.log_lines(needle).is_empty() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }

    /// The log lines containing `needle`.
    pub fn log_lines(&self, needle: &str) -> Vec<String> {
        self.log.lock().unwrap().iter().filter(|l| l.contains(needle)).cloned().collect()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes the test config (`overrides` merged into the defaults) and starts
/// the proxy binary on it with `env`, stderr piped; returns the child, the
/// config's path and the config.
fn spawn_proxy(fake: &FakeDiscord, overrides: Value, env: &[(&str, &str)]) -> (Child, std::path::PathBuf, Value) {
    let mut config = json!({
        "log_level": "info,gateway_proxy=debug",
        "token": fake.token(),
        "intents": 513,
        "host": "127.0.0.1",
        "port": 0,
        "api_url": fake.api_url(),
        "cores": 1,
        "identify_timeout_secs": 10,
    });
    for (k, v) in overrides.as_object().expect("overrides are an object") {
        config[k] = v.clone();
    }
    let dir = std::env::temp_dir().join(format!("gateway-proxy-test-{}-{}", std::process::id(), fastrand_u64()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("config.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&config).unwrap()).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_gateway-proxy"))
        .arg("--config")
        .arg(&path)
        .env_remove("TOKEN")
        .env_remove("RUST_LOG")
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting the proxy binary");
    (child, path, config)
}

fn fastrand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64);
    h.finish()
}

/// A fake Discord with `shards` shards and `guilds` guilds.
pub async fn fake(shards: u32, guilds: u32) -> FakeDiscord {
    FakeDiscord::start(FakeConfig { shards, guilds, max_concurrency: shards.max(1), ..FakeConfig::default() })
        .await
        .expect("fake discord starts")
}

/// Waits until every shard in `shards` is connected to the fake.
pub async fn wait_connected(fake: &FakeDiscord, proxy: &Proxy, shards: std::ops::Range<u32>) {
    let wanted = shards.clone();
    let ok = fake.wait_until(WAIT, move |f| wanted.clone().all(|s| f.connected(s))).await;
    assert!(
        ok,
        "shards did not connect to the fake Discord: connected {:?}; proxy log:\n{}",
        shards.map(|s| (s, fake.connected(s))).collect::<Vec<_>>(),
        proxy.log.lock().unwrap().join("\n")
    );
}

/// A raw websocket client.
pub struct Client {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    inflater: Option<flate2::Decompress>,
    zstd: Option<zstd::stream::raw::Decoder<'static>>,
    /// Raw frames received, for compression checks.
    pub binary_frames: Vec<Vec<u8>>,
    pending: Vec<u8>,
    /// Binary frames are whole zlib streams (Identify `compress: true`).
    pub per_message_zlib: bool,
}

/// What a raw client observed.
#[derive(Debug, PartialEq)]
pub enum Received {
    /// A JSON payload.
    Payload(Value),
    /// A close frame with its code and reason.
    Closed(u16, String),
    /// The connection ended without a close frame.
    Ended,
}

impl Client {
    /// Connects to `url` + `query` (e.g. `/?v=10&encoding=json`).
    pub async fn connect(url: &str, query: &str) -> Client {
        Self::connect_with_buffer(url, query, None).await
    }

    /// Connects with a small socket receive buffer, to play a slow client.
    pub async fn connect_with_buffer(url: &str, query: &str, recv_buffer: Option<u32>) -> Client {
        let addr: std::net::SocketAddr = url.trim_start_matches("ws://").parse().unwrap();
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        if let Some(size) = recv_buffer {
            socket.set_recv_buffer_size(size).unwrap();
        }
        let tcp = socket.connect(addr).await.expect("tcp connects");
        let (ws, _) = tokio_tungstenite::client_async(format!("{url}{query}"), MaybeTlsStream::Plain(tcp))
            .await
            .expect("websocket connects");
        let inflater = query.contains("zlib-stream").then(|| flate2::Decompress::new(true));
        let zstd = query.contains("zstd-stream").then(|| zstd::stream::raw::Decoder::new().unwrap());
        Client { ws, inflater, zstd, binary_frames: Vec::new(), pending: Vec::new(), per_message_zlib: false }
    }

    /// Sends a JSON payload.
    pub async fn send(&mut self, v: Value) {
        self.ws.send(Message::text(v.to_string())).await.expect("send");
    }

    /// Sends raw text.
    pub async fn send_text(&mut self, t: &str) {
        self.ws.send(Message::text(t.to_owned())).await.expect("send");
    }

    /// Next payload, close, or end, within WAIT.
    pub async fn recv(&mut self) -> Received {
        self.recv_within(WAIT).await.expect("nothing received in time")
    }

    /// Next payload, close or end within `d`, or None on timeout.
    pub async fn recv_within(&mut self, d: Duration) -> Option<Received> {
        let deadline = tokio::time::Instant::now() + d;
        loop {
            let msg = match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => return None,
                Ok(None) | Ok(Some(Err(_))) => return Some(Received::Ended),
                Ok(Some(Ok(m))) => m,
            };
            match msg {
                Message::Text(t) => return Some(Received::Payload(serde_json::from_str(&t).expect("valid JSON"))),
                Message::Binary(b) if self.per_message_zlib => {
                    self.binary_frames.push(b.to_vec());
                    let mut z = flate2::read::ZlibDecoder::new(&b[..]);
                    let mut out = Vec::new();
                    std::io::Read::read_to_end(&mut z, &mut out).expect("a whole zlib stream");
                    return Some(Received::Payload(serde_json::from_slice(&out).expect("inflated JSON")));
                }
                Message::Binary(b) if self.zstd.is_some() => {
                    use zstd::stream::raw::{InBuffer, Operation, OutBuffer};
                    let decoder = self.zstd.as_mut().unwrap();
                    let mut out: Vec<u8> = Vec::with_capacity(b.len() * 8 + 4096);
                    let mut input = InBuffer::around(&b);
                    loop {
                        let pos = out.len();
                        let mut output = OutBuffer::around_pos(&mut out, pos);
                        decoder.run(&mut input, &mut output).expect("zstd frame decodes");
                        if input.pos() == b.len() && out.len() < out.capacity() {
                            break;
                        }
                        out.reserve(out.capacity());
                    }
                    return Some(Received::Payload(serde_json::from_slice(&out).expect("decoded JSON")));
                }
                Message::Binary(b) => {
                    self.binary_frames.push(b.to_vec());
                    self.pending.extend_from_slice(&b);
                    if !self.pending.ends_with(&[0, 0, 0xff, 0xff]) {
                        continue;
                    }
                    let inflater = self.inflater.as_mut().expect("binary frame without zlib-stream");
                    let input = std::mem::take(&mut self.pending);
                    let mut out = Vec::with_capacity(input.len() * 8 + 1024);
                    let mut pos = 0;
                    loop {
                        let before = inflater.total_in();
                        inflater
                            .decompress_vec(&input[pos..], &mut out, flate2::FlushDecompress::Sync)
                            .expect("inflate");
                        pos += (inflater.total_in() - before) as usize;
                        if pos >= input.len() && out.len() < out.capacity() {
                            break;
                        }
                        out.reserve(out.capacity().max(1024));
                    }
                    return Some(Received::Payload(serde_json::from_slice(&out).expect("inflated JSON")));
                }
                Message::Close(f) => {
                    return Some(match f {
                        Some(f) => Received::Closed(u16::from(f.code), f.reason.to_string()),
                        None => Received::Closed(1005, String::new()),
                    })
                }
                _ => {}
            }
        }
    }

    /// Next payload, panicking on anything else.
    pub async fn payload(&mut self) -> Value {
        match self.recv().await {
            Received::Payload(v) => v,
            other => panic!("expected a payload, got {other:?}"),
        }
    }

    /// Next dispatch, skipping heartbeat ACKs.
    pub async fn dispatch(&mut self) -> Value {
        loop {
            let v = self.payload().await;
            if v["op"] == 0 {
                return v;
            }
        }
    }

    /// Expects the connection to be closed with `code`.
    pub async fn expect_close(&mut self, code: u16) -> String {
        loop {
            match self.recv().await {
                Received::Closed(c, reason) => {
                    assert_eq!(c, code, "close reason: {reason}");
                    return reason;
                }
                Received::Payload(v) if v["op"] == 10 || v["op"] == 11 || v["op"] == 0 => continue,
                other => panic!("expected close {code}, got {other:?}"),
            }
        }
    }

    /// Reads Hello and sends Identify for `shard` of `total` with `token`.
    pub async fn identify(&mut self, token: &str, shard: u32, total: u32) {
        let hello = self.payload().await;
        assert_eq!(hello["op"], 10, "{hello}");
        self.send(json!({"op": 2, "d": {"token": token, "intents": 513, "shard": [shard, total],
            "properties": {"os": "linux", "browser": "test", "device": "test"}}}))
            .await;
    }

    /// Sends a Resume.
    pub async fn resume(&mut self, token: &str, session_id: &str, seq: u64) {
        self.send(json!({"op": 6, "d": {"token": token, "session_id": session_id, "seq": seq}})).await;
    }

    /// Reads dispatches until one with type `t`, returning those before it and it.
    pub async fn dispatches_until(&mut self, t: &str) -> (Vec<Value>, Value) {
        let mut before = Vec::new();
        loop {
            let d = self.dispatch().await;
            if d["t"] == t {
                return (before, d);
            }
            before.push(d);
        }
    }

    /// Identifies and reads READY plus the GUILD_CREATE/GUILD_DELETE burst
    /// for `guilds` guilds; returns READY.
    pub async fn identify_and_load(&mut self, token: &str, shard: u32, total: u32) -> Value {
        self.identify(token, shard, total).await;
        let ready = self.dispatch().await;
        assert_eq!(ready["t"], "READY", "{ready}");
        let expected = ready["d"]["guilds"].as_array().unwrap().len();
        for _ in 0..expected {
            let g = self.dispatch().await;
            assert!(g["t"] == "GUILD_CREATE" || g["t"] == "GUILD_DELETE", "{g}");
        }
        ready
    }
}

/// A MESSAGE_CREATE `d` that twilight-model accepts.
pub fn message(guild_id: u64, channel_id: u64, n: u64, content: &str) -> Value {
    json!({
        "id": (1_100_000_000_000u64 << 22 | n).to_string(),
        "channel_id": channel_id.to_string(),
        "guild_id": guild_id.to_string(),
        "author": {"id": "80351110224678912", "username": "someone", "discriminator": "0", "global_name": "Someone", "avatar": null},
        "member": {"roles": [], "joined_at": "2021-01-01T00:00:00.000000+00:00", "deaf": false, "mute": false, "flags": 0},
        "content": content,
        "timestamp": "2026-11-29T00:00:00.000000+00:00",
        "edited_timestamp": null,
        "tts": false,
        "mention_everyone": false,
        "mentions": [],
        "mention_roles": [],
        "attachments": [],
        "embeds": [],
        "pinned": false,
        "type": 0,
        "flags": 0,
        "components": []
    })
}

/// A plain HTTP GET against the proxy; returns (status, body).
pub async fn http_get(addr: &str, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes()).await.unwrap();
    let mut out = String::new();
    tokio::time::timeout(WAIT, s.read_to_string(&mut out)).await.unwrap().unwrap();
    let status = out.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    (status, body)
}

/// The next event a twilight shard receives within WAIT, skipping Hello
/// and heartbeat ACKs; a receive error fails the test.
pub async fn next_twilight_event(shard: &mut twilight_gateway::Shard) -> twilight_gateway::Event {
    use twilight_gateway::{Event, EventTypeFlags, StreamExt as _};
    loop {
        let item = tokio::time::timeout(WAIT, shard.next_event(EventTypeFlags::all()))
            .await
            .expect("an event in time")
            .expect("the stream goes on");
        match item {
            Ok(Event::GatewayHeartbeatAck | Event::GatewayHello(_)) => {}
            Ok(event) => return event,
            Err(e) => panic!("twilight failed to receive: {e}"),
        }
    }
}

/// Waits until the proxy's `/metrics` reads `value` for `series`.
pub async fn wait_metric(proxy: &Proxy, series: &str, value: u64) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (_, metrics) = http_get(&proxy.addr, "/metrics").await;
        let now = metrics.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse::<u64>().ok());
        if now == Some(value) {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "{series} is {now:?}, not {value}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Runs the proxy binary against `fake` (with `overrides` merged into the
/// config and `env` set) until it exits by itself, within WAIT; returns its
/// exit code and what it wrote to stderr. For start-up failures.
pub async fn run_proxy_to_exit(fake: &FakeDiscord, overrides: Value, env: &[(&str, &str)]) -> (Option<i32>, String) {
    let (mut child, _, _) = spawn_proxy(fake, overrides, env);
    let mut stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut out = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut out);
        out
    });
    let deadline = std::time::Instant::now() + WAIT;
    let code = loop {
        if let Some(status) = child.try_wait().expect("waiting for the proxy") {
            break status.code();
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the proxy did not exit within {WAIT:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    (code, tokio::task::spawn_blocking(move || reader.join().unwrap()).await.unwrap())
}
