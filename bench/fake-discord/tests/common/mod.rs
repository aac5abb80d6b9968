//! A raw gateway client for the fake's tests.
#![allow(dead_code)]

use std::io::Read;
use std::time::Duration;

use fake_discord::{FakeConfig, FakeDiscord};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub const TIMEOUT: Duration = Duration::from_secs(5);

/// What the client got.
#[derive(Debug)]
pub enum Got {
    /// A payload (decompressed if needed).
    Payload(Value),
    /// A close frame with this code (None: no code).
    Closed(Option<u16>),
    /// The connection ended without a close frame.
    Ended,
}

impl Got {
    pub fn payload(self) -> Value {
        match self {
            Got::Payload(v) => v,
            other => panic!("expected a payload, got {other:?}"),
        }
    }
}

/// Transport compression the client asked for.
pub enum Decoder {
    Plain,
    Zlib(flate2::Decompress, Vec<u8>),
    Zstd(zstd::stream::raw::Decoder<'static>),
}

pub struct Client {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    pub decoder: Decoder,
    /// Raw binary frames received (for compression tests).
    pub raw_frames: Vec<Vec<u8>>,
    /// Text of the last payload received (decompressed), as sent.
    pub last_text: String,
}

impl Client {
    pub async fn connect_query(fake: &FakeDiscord, query: &str) -> Client {
        let url = format!("{}/?{query}", fake.gateway_url());
        let (ws, _) = tokio::time::timeout(TIMEOUT, tokio_tungstenite::connect_async(url))
            .await
            .expect("connect timeout")
            .expect("connect");
        let decoder = if query.contains("zlib-stream") {
            Decoder::Zlib(flate2::Decompress::new(true), Vec::new())
        } else if query.contains("zstd-stream") {
            Decoder::Zstd(zstd::stream::raw::Decoder::new().unwrap())
        } else {
            Decoder::Plain
        };
        Client { ws, decoder, raw_frames: Vec::new(), last_text: String::new() }
    }

    /// Connects with `?v=10&encoding=json` and reads Hello.
    pub async fn connect(fake: &FakeDiscord) -> Client {
        let mut c = Client::connect_query(fake, "v=10&encoding=json").await;
        let hello = c.recv().await.payload();
        assert_eq!(hello["op"], 10, "{hello}");
        c
    }

    pub async fn send(&mut self, v: Value) {
        self.ws.send(Message::text(v.to_string())).await.unwrap();
    }

    pub async fn send_text(&mut self, s: &str) {
        self.ws.send(Message::text(s.to_owned())).await.unwrap();
    }

    pub async fn recv(&mut self) -> Got {
        loop {
            let msg =
                tokio::time::timeout(TIMEOUT, self.ws.next()).await.expect("timed out waiting for a gateway message");
            match msg {
                None | Some(Err(_)) => return Got::Ended,
                Some(Ok(Message::Text(t))) => {
                    self.last_text = t.as_str().to_owned();
                    return Got::Payload(serde_json::from_str(t.as_str()).expect("json"));
                }
                Some(Ok(Message::Binary(b))) => {
                    self.raw_frames.push(b.to_vec());
                    if let Some(text) = self.decode(&b) {
                        self.last_text = String::from_utf8(text).expect("utf-8");
                        return Got::Payload(serde_json::from_str(&self.last_text).expect("json"));
                    }
                }
                Some(Ok(Message::Close(frame))) => return Got::Closed(frame.map(|f| u16::from(f.code))),
                Some(Ok(_)) => {}
            }
        }
    }

    fn decode(&mut self, b: &[u8]) -> Option<Vec<u8>> {
        match &mut self.decoder {
            Decoder::Plain => {
                // Identify `compress: true`: each payload is a whole zlib stream.
                let mut out = Vec::new();
                flate2::read::ZlibDecoder::new(b).read_to_end(&mut out).unwrap();
                Some(out)
            }
            Decoder::Zlib(inflater, buf) => {
                buf.extend_from_slice(b);
                if !buf.ends_with(&[0, 0, 0xff, 0xff]) {
                    return None;
                }
                let mut out = Vec::with_capacity(buf.len() * 8);
                let before = inflater.total_in();
                loop {
                    let consumed = (inflater.total_in() - before) as usize;
                    if out.capacity() - out.len() < 4096 {
                        out.reserve(64 * 1024);
                    }
                    inflater.decompress_vec(&buf[consumed..], &mut out, flate2::FlushDecompress::Sync).unwrap();
                    if (inflater.total_in() - before) as usize == buf.len() && out.capacity() > out.len() {
                        break;
                    }
                }
                buf.clear();
                Some(out)
            }
            Decoder::Zstd(decoder) => {
                use zstd::stream::raw::{InBuffer, Operation, OutBuffer};
                let mut out = Vec::new();
                let mut input = InBuffer::around(b);
                let mut chunk = vec![0u8; 128 * 1024];
                loop {
                    let mut output = OutBuffer::around(&mut chunk[..]);
                    decoder.run(&mut input, &mut output).unwrap();
                    let n = output.pos();
                    out.extend_from_slice(&chunk[..n]);
                    if input.pos() == b.len() && n < chunk.len() {
                        break;
                    }
                }
                Some(out)
            }
        }
    }

    /// Receives payloads until one matches `t` (dispatch name); returns it.
    pub async fn recv_dispatch(&mut self, t: &str) -> Value {
        loop {
            let p = self.recv().await.payload();
            if p["t"] == t {
                return p;
            }
        }
    }

    /// Expects the connection to be closed with `code`.
    pub async fn expect_close(&mut self, code: u16) {
        loop {
            match self.recv().await {
                Got::Closed(c) => {
                    assert_eq!(c, Some(code));
                    return;
                }
                Got::Payload(p) if p["op"] == 0 || p["op"] == 11 => continue,
                other => panic!("expected close {code}, got {other:?}"),
            }
        }
    }

    /// Identifies as `[shard, n]` and reads READY plus every GUILD_CREATE of
    /// the shard's available guilds. Returns (READY, GUILD_CREATEs).
    pub async fn identify(&mut self, fake: &FakeDiscord, shard: u32, n: u32) -> (Value, Vec<Value>) {
        self.send(identify_payload(fake.token(), shard, n)).await;
        let ready = self.recv().await.payload();
        assert_eq!(ready["t"], "READY", "{ready}");
        let available = fake.available_guild_ids();
        let expected = fake.guild_ids_for_shard(shard, n).into_iter().filter(|g| available.contains(g)).count();
        let mut guilds = Vec::new();
        for _ in 0..expected {
            let p = self.recv().await.payload();
            assert_eq!(p["t"], "GUILD_CREATE", "{p}");
            guilds.push(p);
        }
        (ready, guilds)
    }
}

pub fn identify_payload(token: &str, shard: u32, n: u32) -> Value {
    json!({
        "op": 2,
        "d": {
            "token": token,
            "properties": { "os": "linux", "browser": "test", "device": "test" },
            "intents": 33_281,
            "shard": [shard, n],
            "large_threshold": 250,
        }
    })
}

pub async fn start(config: FakeConfig) -> FakeDiscord {
    FakeDiscord::start(config).await.expect("start fake discord")
}

/// Sends one HTTP request over a raw socket; returns (status, JSON body).
pub async fn http_get(fake: &FakeDiscord, path: &str, auth: Option<&str>) -> (u16, Value) {
    let api = fake.api_url();
    let hostport = api.strip_prefix("http://").and_then(|r| r.split('/').next()).unwrap();
    let mut stream = TcpStream::connect(hostport).await.unwrap();
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: {hostport}\r\nConnection: keep-alive\r\n");
    if let Some(a) = auth {
        req.push_str(&format!("Authorization: {a}\r\n"));
    }
    req.push_str("\r\n");
    stream.write_all(req.as_bytes()).await.unwrap();
    let mut resp = Vec::new();
    tokio::time::timeout(TIMEOUT, stream.read_to_end(&mut resp))
        .await
        .expect("server must close the connection")
        .unwrap();
    let text = String::from_utf8(resp).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    let len: usize = head
        .lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap()))
        .unwrap();
    assert_eq!(len, body.len());
    (status, serde_json::from_str(body).unwrap())
}
