//! The fake over TLS, seen from a client that records every byte the fake
//! sends: REST and the gateway under a test CA, records of the configured
//! size, a reset that really lands inside a record, and close_notify
//! telling a clean end from an abrupt one.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use fake_discord::{FakeConfig, FakeDiscord, FakeTls};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::WebSocketStream;

const TIMEOUT: Duration = Duration::from_secs(5);

/// A CA and a certificate for `localhost` it signed.
fn test_pki(max_fragment_size: Option<usize>) -> (rustls::RootCertStore, FakeTls) {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let ca = params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(params, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap().signed_by(&key, &issuer).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.der().clone()).unwrap();
    (roots, FakeTls { cert_chain_pem: leaf.pem(), key_pem: key.serialize_pem(), max_fragment_size })
}

/// TCP that keeps a copy of every byte read (the TLS records as sent).
struct Recorder {
    tcp: TcpStream,
    seen: Arc<Mutex<Vec<u8>>>,
}

impl AsyncRead for Recorder {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let poll = Pin::new(&mut this.tcp).poll_read(cx, buf);
        this.seen.lock().unwrap().extend_from_slice(&buf.filled()[before..]);
        poll
    }
}

impl AsyncWrite for Recorder {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().tcp).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_shutdown(cx)
    }
}

type Tls = tokio_rustls::client::TlsStream<Recorder>;

async fn tls_connect(url: &str, roots: &rustls::RootCertStore) -> (Tls, Arc<Mutex<Vec<u8>>>) {
    let port: u16 = url.rsplit(':').next().unwrap().split('/').next().unwrap().parse().unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots.clone())
        .with_no_client_auth();
    let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = connector.connect(name, Recorder { tcp, seen: seen.clone() }).await.expect("TLS handshake");
    (tls, seen)
}

/// (content type, record length) of each TLS record in `bytes`, and the
/// bytes of a last record that did not arrive whole.
fn records(bytes: &[u8]) -> (Vec<(u8, usize)>, usize) {
    let mut out = Vec::new();
    let mut at = 0;
    while at + 5 <= bytes.len() {
        let len = usize::from(u16::from_be_bytes([bytes[at + 3], bytes[at + 4]]));
        if at + 5 + len > bytes.len() {
            break;
        }
        out.push((bytes[at], len));
        at += 5 + len;
    }
    (out, bytes.len() - at)
}

struct Gateway {
    ws: WebSocketStream<Tls>,
    seen: Arc<Mutex<Vec<u8>>>,
}

impl Gateway {
    async fn connect(fake: &FakeDiscord, roots: &rustls::RootCertStore) -> Gateway {
        let (tls, seen) = tls_connect(&fake.gateway_url(), roots).await;
        let url = format!("{}/?v=10&encoding=json", fake.gateway_url());
        let (ws, _) = tokio_tungstenite::client_async(url, tls).await.expect("websocket over TLS");
        let mut g = Gateway { ws, seen };
        assert_eq!(g.payload().await["op"], 10, "Hello");
        g
    }

    async fn next(&mut self) -> Option<Result<Message, tungstenite::Error>> {
        tokio::time::timeout(TIMEOUT, self.ws.next()).await.expect("something in time")
    }

    async fn payload(&mut self) -> Value {
        match self.next().await {
            Some(Ok(Message::Text(t))) => serde_json::from_str(&t).unwrap(),
            other => panic!("expected a payload, got {other:?}"),
        }
    }

    async fn send(&mut self, v: Value) {
        self.ws.send(Message::text(v.to_string())).await.unwrap();
    }

    /// Identifies as shard 0 of 1 and reads READY and the GUILD_CREATEs;
    /// returns the session id and the last seq.
    async fn identify(&mut self, fake: &FakeDiscord) -> (String, u64) {
        self.send(json!({"op": 2, "d": {"token": fake.token(), "intents": 513, "shard": [0, 1],
            "properties": {"os": "linux", "browser": "test", "device": "test"}}}))
            .await;
        let ready = self.payload().await;
        assert_eq!(ready["t"], "READY");
        let mut seq = 1;
        for _ in 0..fake.available_guild_ids().len() {
            seq = self.payload().await["s"].as_u64().unwrap();
        }
        (ready["d"]["session_id"].as_str().unwrap().to_owned(), seq)
    }
}

async fn start(max_fragment_size: Option<usize>) -> (FakeDiscord, rustls::RootCertStore) {
    let (roots, tls) = test_pki(max_fragment_size);
    let fake = FakeDiscord::start(FakeConfig { shards: 1, guilds: 2, tls: Some(tls), ..FakeConfig::default() })
        .await
        .expect("fake starts");
    (fake, roots)
}

#[tokio::test]
async fn rest_and_gateway_over_tls_in_records_of_the_configured_size() {
    let (fake, roots) = start(Some(512)).await;
    assert!(fake.api_url().starts_with("https://localhost:"), "{}", fake.api_url());
    assert!(fake.gateway_url().starts_with("wss://localhost:"), "{}", fake.gateway_url());

    let (mut tls, _) = tls_connect(&fake.api_url(), &roots).await;
    let request = "GET /api/v10/gateway/bot HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bot fake-token\r\n\r\n";
    tls.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    // The fake ends the response with close_notify: a clean end of stream.
    tokio::time::timeout(TIMEOUT, tls.read_to_string(&mut response)).await.unwrap().expect("a clean TLS end");
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    let body: Value = serde_json::from_str(response.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert_eq!(body["url"], fake.gateway_url());

    let mut g = Gateway::connect(&fake, &roots).await;
    g.identify(&fake).await;
    let guild = fake.guild_ids_for_shard(0, 1)[0];
    fake.inject(0, "MESSAGE_CREATE", json!({"guild_id": guild.to_string(), "content": "x".repeat(4000)})).unwrap();
    assert_eq!(g.payload().await["d"]["content"].as_str().unwrap().len(), 4000);
    let (records, partial) = records(&g.seen.lock().unwrap());
    assert_eq!(partial, 0);
    let data: Vec<usize> = records.iter().filter(|(kind, _)| *kind == 0x17).map(|(_, len)| *len).collect();
    assert!(data.len() >= 8, "a 4 KB frame in 512-byte records: {data:?}");
    // 512 bytes of plaintext, plus the content type byte and the AEAD tag.
    assert!(data.iter().all(|len| *len <= 512 + 1 + 16), "{data:?}");
}

#[tokio::test]
async fn a_reset_mid_record_cuts_a_record_and_the_cut_dispatch_is_replayed() {
    let (fake, roots) = start(Some(512)).await;
    let mut g = Gateway::connect(&fake, &roots).await;
    let (session_id, seq) = g.identify(&fake).await;
    let guild = fake.guild_ids_for_shard(0, 1)[0];

    assert!(fake.reset_connection_mid_record(0));
    let cut_seq = fake.inject(0, "MESSAGE_CREATE", json!({"guild_id": guild.to_string(), "content": "cut"})).unwrap();
    match g.next().await {
        Some(Err(tungstenite::Error::Io(e))) => assert_eq!(e.kind(), io::ErrorKind::ConnectionReset, "{e}"),
        other => panic!("expected a connection reset, got {other:?}"),
    }
    let (_, partial) = records(&g.seen.lock().unwrap());
    assert!(partial > 5, "the last record arrived in part ({partial} bytes): the reset came mid-record");

    // Nothing of it was delivered; a Resume replays it.
    let mut g = Gateway::connect(&fake, &roots).await;
    g.send(json!({"op": 6, "d": {"token": fake.token(), "session_id": session_id, "seq": seq}})).await;
    let replayed = g.payload().await;
    assert_eq!((replayed["s"].as_u64(), replayed["d"]["content"].as_str()), (Some(cut_seq), Some("cut")));
    assert_eq!(g.payload().await["t"], "RESUMED");
}

#[tokio::test]
async fn close_notify_ends_the_stream_cleanly_where_a_drop_does_not() {
    let (fake, roots) = start(None).await;
    let mut g = Gateway::connect(&fake, &roots).await;
    g.identify(&fake).await;
    assert!(fake.close_notify(0));
    // A clean TLS end without a close frame: tungstenite says so.
    match g.next().await {
        Some(Err(tungstenite::Error::Protocol(tungstenite::error::ProtocolError::ResetWithoutClosingHandshake))) => {}
        other => panic!("expected the end of the stream without a close frame, got {other:?}"),
    }

    // A plain drop has no close_notify: rustls reports the truncation.
    let mut g = Gateway::connect(&fake, &roots).await;
    g.identify(&fake).await;
    assert!(fake.drop_connection(0));
    match g.next().await {
        Some(Err(tungstenite::Error::Io(e))) => assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof, "{e}"),
        other => panic!("expected an unexpected EOF, got {other:?}"),
    }
}
