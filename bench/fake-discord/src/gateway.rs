//! The gateway: one task per websocket connection.

use std::collections::VecDeque;
use std::io::Write;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use flate2::write::ZlibEncoder;
use flate2::Compression;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc::{self, UnboundedReceiver, UnboundedSender};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;

use crate::firehose::{now_nanos, FirehoseStats, Job};
use crate::payloads::random_hex;
use crate::transport::{self, CutSwitch, FakeStream};
use crate::{op_text, ConnCmd, ConnRef, Inner, Session};

type Sink = SplitSink<WebSocketStream<FakeStream>, Message>;
type Stream = SplitStream<WebSocketStream<FakeStream>>;

/// Largest payload a client may send, in bytes.
const MAX_PAYLOAD: usize = 4096;
/// Payloads a client may send per [`RATE_WINDOW`].
const RATE_LIMIT: usize = 120;
const RATE_WINDOW: Duration = Duration::from_secs(60);
/// Dispatch members per GUILD_MEMBERS_CHUNK.
const CHUNK_SIZE: usize = 1000;
/// Firehose dispatches written per flush.
const FIREHOSE_BATCH: u64 = 128;

/// Discord's close reason text for a close code.
fn close_reason(code: u16) -> &'static str {
    match code {
        4000 => "Unknown error.",
        4001 => "Unknown opcode.",
        4002 => "Error while decoding payload.",
        4003 => "Not authenticated.",
        4004 => "Authentication failed.",
        4005 => "Already authenticated.",
        4007 => "Invalid seq.",
        4008 => "Rate limited.",
        4009 => "Session timed out.",
        4010 => "Invalid shard.",
        4011 => "Sharding required.",
        4012 => "Invalid API version.",
        4013 => "Invalid intent(s).",
        4014 => "Disallowed intent(s).",
        _ => "",
    }
}

/// Accepts gateway connections forever.
pub(crate) async fn serve(inner: Arc<Inner>, listener: TcpListener) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let _ = stream.set_nodelay(true);
                tokio::spawn(handle(Arc::clone(&inner), stream));
            }
            Err(e) => {
                log::warn!("gateway accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Transport compression requested in the URL query.
#[derive(Clone, Copy, Debug, PartialEq)]
enum TransportKind {
    Plain,
    Zlib,
    Zstd,
}

/// Parses `?v=10&encoding=json[&compress=...]`; `Err(close code)` if invalid.
fn parse_query(query: Option<&str>) -> Result<TransportKind, u16> {
    let mut kind = TransportKind::Plain;
    let mut version_ok = true;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "v" => version_ok = v == "10",
            "encoding" if v != "json" => return Err(4002),
            "compress" => {
                kind = match v {
                    "zlib-stream" => TransportKind::Zlib,
                    "zstd-stream" => TransportKind::Zstd,
                    _ => return Err(4002),
                }
            }
            _ => {}
        }
    }
    if version_ok {
        Ok(kind)
    } else {
        Err(4012)
    }
}

/// Encodes outgoing payloads per the connection's compression.
enum Encoder {
    Plain,
    Zlib(ZlibEncoder<Vec<u8>>),
    Zstd(Box<zstd::stream::write::Encoder<'static, Vec<u8>>>),
}

impl Encoder {
    fn new(kind: TransportKind) -> std::io::Result<Self> {
        Ok(match kind {
            TransportKind::Plain => Encoder::Plain,
            TransportKind::Zlib => Encoder::Zlib(ZlibEncoder::new(Vec::new(), Compression::default())),
            TransportKind::Zstd => Encoder::Zstd(Box::new(zstd::stream::write::Encoder::new(Vec::new(), 3)?)),
        })
    }

    /// Encodes one payload. `payload_compress`: Identify asked for
    /// `compress: true` (each payload its own zlib stream).
    fn encode(&mut self, text: &Utf8Bytes, payload_compress: bool) -> std::io::Result<Message> {
        match self {
            Encoder::Plain if payload_compress => {
                let mut e = ZlibEncoder::new(Vec::new(), Compression::default());
                e.write_all(text.as_bytes())?;
                Ok(Message::binary(e.finish()?))
            }
            Encoder::Plain => Ok(Message::Text(text.clone())),
            Encoder::Zlib(e) => {
                e.write_all(text.as_bytes())?;
                e.flush()?;
                Ok(Message::binary(std::mem::take(e.get_mut())))
            }
            Encoder::Zstd(e) => {
                e.write_all(text.as_bytes())?;
                e.flush()?;
                Ok(Message::binary(std::mem::take(e.get_mut())))
            }
        }
    }
}

/// Why the connection must end.
enum End {
    /// Send a close frame with this code.
    Close(u16),
    /// The socket is gone or must be dropped.
    Gone,
    /// Shut the stream down (TLS close_notify, TCP FIN) without a close frame.
    CloseNotify,
}

struct Conn {
    inner: Arc<Inner>,
    id: u64,
    tx: UnboundedSender<ConnCmd>,
    sink: Sink,
    encoder: Encoder,
    /// Shard this connection identified/resumed as.
    shard: Option<u32>,
    /// Session this connection identified/resumed.
    session_id: Option<String>,
    payload_compress: bool,
    sent_times: VecDeque<Instant>,
    hb_deadline: Instant,
    hb_timeout: Duration,
    pending_flush: bool,
    /// Firehose jobs, and dispatches queued behind them, in seq order.
    outbox: VecDeque<Queued>,
    /// Cuts the next write and resets the connection.
    cut: CutSwitch,
}

/// What waits in a connection's outbox while a firehose runs.
enum Queued {
    Text(Utf8Bytes),
    Job(Box<Job>),
}

/// Resolves when the next firehose frame is due (at once for `None`).
async fn firehose_due(due: Option<Instant>) {
    if let Some(at) = due {
        if at > Instant::now() {
            tokio::time::sleep_until(at).await;
        }
    }
}

#[allow(clippy::result_large_err)] // the handshake callback's signature is tungstenite's
async fn handle(inner: Arc<Inner>, tcp: TcpStream) {
    let (stream, cut) = match transport::accept(tcp, inner.tls.as_ref()).await {
        Ok(accepted) => accepted,
        Err(e) => {
            log::debug!("gateway TLS handshake failed: {e}");
            return;
        }
    };
    let mut query: Option<String> = None;
    let callback = |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
        query = req.uri().query().map(str::to_owned);
        Ok(resp)
    };
    let ws = match tokio::time::timeout(Duration::from_secs(10), tokio_tungstenite::accept_hdr_async(stream, callback))
        .await
    {
        Ok(Ok(ws)) => ws,
        Ok(Err(e)) => {
            log::debug!("gateway handshake failed: {e}");
            return;
        }
        Err(_) => return,
    };
    let (sink, stream) = ws.split();
    let id = inner.next_conn_id.fetch_add(1, Ordering::SeqCst);
    let (tx, rx) = mpsc::unbounded_channel();
    inner.lock().conns.insert(id, tx.clone());
    let interval = Duration::from_millis(inner.config.heartbeat_interval_ms.max(1));
    let hb_timeout = interval * 2 + interval.min(Duration::from_secs(5));
    let mut conn = Conn {
        inner: Arc::clone(&inner),
        id,
        tx,
        sink,
        encoder: Encoder::Plain,
        shard: None,
        session_id: None,
        payload_compress: false,
        sent_times: VecDeque::new(),
        hb_deadline: Instant::now() + hb_timeout,
        hb_timeout,
        pending_flush: false,
        outbox: VecDeque::new(),
        cut,
    };
    let rest = conn.run(stream, rx, query.as_deref()).await;
    conn.detach(false);
    inner.lock().conns.remove(&id);
    if let Some(stream) = rest {
        // close_notify (under TLS) and FIN, and no websocket close frame.
        let Conn { sink, .. } = conn;
        if let Ok(mut ws) = sink.reunite(stream) {
            let stream = ws.get_mut();
            let _ = tokio::time::timeout(Duration::from_secs(5), stream.shutdown()).await;
            // Read until the peer closes too: closing with unread bytes
            // would send a reset after the close_notify.
            let _ = tokio::time::timeout(Duration::from_secs(5), async {
                let mut buf = [0u8; 4096];
                while matches!(stream.read(&mut buf).await, Ok(n) if n > 0) {}
            })
            .await;
        }
    }
}

impl Conn {
    /// Serves the connection; returns the stream when it is to be shut down
    /// without a close frame ([`End::CloseNotify`]).
    async fn run(
        &mut self,
        mut stream: Stream,
        mut rx: UnboundedReceiver<ConnCmd>,
        query: Option<&str>,
    ) -> Option<Stream> {
        let kind = match parse_query(query) {
            Ok(kind) => kind,
            Err(code) => {
                self.close(code, &mut stream).await;
                return None;
            }
        };
        self.encoder = match Encoder::new(kind) {
            Ok(e) => e,
            Err(_) => return None,
        };
        let hello = json!({ "heartbeat_interval": self.inner.config.heartbeat_interval_ms, "_trace": ["[\"fake-discord-gateway\",{\"micros\":0}]"] });
        if self.send(&Utf8Bytes::from(op_text(10, &hello.to_string()))).await.is_err() {
            return None;
        }
        let mut pending: Option<ConnCmd> = None;
        loop {
            if let Some(cmd) = pending.take() {
                match self.on_cmd(cmd, &mut rx, &mut pending).await {
                    Ok(()) => continue,
                    Err(End::Close(code)) => {
                        self.close(code, &mut stream).await;
                        return None;
                    }
                    Err(End::Gone) => return None,
                    Err(End::CloseNotify) => return Some(stream),
                }
            }
            let due = self.outbox.front().map(|q| match q {
                Queued::Text(_) => None,
                Queued::Job(job) => job.next_due(),
            });
            let result = tokio::select! {
                () = firehose_due(due.flatten()), if due.is_some() => self.firehose_step().await,
                msg = stream.next() => match msg {
                    Some(Ok(Message::Text(text))) => self.on_text(text.as_str()).await,
                    Some(Ok(Message::Binary(_))) => Err(End::Close(4002)),
                    Some(Ok(Message::Close(frame))) => {
                        // 1000/1001 from the client end the session.
                        let code = frame.map(|f| u16::from(f.code));
                        self.detach(matches!(code, Some(1000 | 1001)));
                        // Keep reading: tungstenite answers the close, then ends.
                        Ok(())
                    }
                    Some(Ok(_)) => Ok(()),
                    Some(Err(_)) | None => Err(End::Gone),
                },
                cmd = rx.recv() => match cmd {
                    Some(cmd) => self.on_cmd(cmd, &mut rx, &mut pending).await,
                    None => Err(End::Gone),
                },
                () = tokio::time::sleep_until(self.hb_deadline) => {
                    log::debug!("connection {} missed heartbeats", self.id);
                    Err(End::Close(4009))
                }
            };
            match result {
                Ok(()) => {}
                Err(End::Close(code)) => {
                    self.close(code, &mut stream).await;
                    return None;
                }
                Err(End::Gone) => return None,
                Err(End::CloseNotify) => return Some(stream),
            }
        }
    }

    /// Handles a command from the API (or from this connection's own
    /// handlers, which queue dispatches through the session).
    async fn on_cmd(
        &mut self,
        cmd: ConnCmd,
        rx: &mut UnboundedReceiver<ConnCmd>,
        pending: &mut Option<ConnCmd>,
    ) -> Result<(), End> {
        match cmd {
            ConnCmd::Send(text) if !self.outbox.is_empty() => {
                self.outbox.push_back(Queued::Text(text));
                Ok(())
            }
            ConnCmd::Firehose(job) => {
                self.outbox.push_back(Queued::Job(job));
                Ok(())
            }
            ConnCmd::Send(text) => {
                self.feed(&text).await?;
                // Batch whatever else is queued into one flush.
                for _ in 0..256 {
                    match rx.try_recv() {
                        Ok(ConnCmd::Send(text)) => self.feed(&text).await?,
                        Ok(other) => {
                            *pending = Some(other);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                self.flush().await
            }
            ConnCmd::Close(code) => Err(End::Close(code)),
            ConnCmd::Drop => Err(End::Gone),
            ConnCmd::ResetMidRecord => {
                // Whatever was fed goes out whole; the next write is cut.
                self.flush().await?;
                self.cut.arm();
                Ok(())
            }
            ConnCmd::CloseNotify => {
                self.flush().await?;
                Err(End::CloseNotify)
            }
            ConnCmd::InvalidSession(resumable) => {
                self.shard = None;
                self.session_id = None;
                self.send(&Utf8Bytes::from(op_text(9, if resumable { "true" } else { "false" }))).await
            }
        }
    }

    /// Writes what is due at the front of the outbox: queued dispatches and
    /// up to [`FIREHOSE_BATCH`] firehose frames, then flushes.
    async fn firehose_step(&mut self) -> Result<(), End> {
        let mut written = 0;
        while written < FIREHOSE_BATCH {
            match self.outbox.pop_front() {
                None => break,
                Some(Queued::Text(text)) => {
                    self.feed(&text).await?;
                    written += 1;
                }
                Some(Queued::Job(mut job)) => {
                    let now = Instant::now();
                    let start = *job.started.get_or_insert(now);
                    while job.sent < job.count && written < FIREHOSE_BATCH {
                        if job.next_due().is_some_and(|due| due > now) {
                            break;
                        }
                        let text = job.templates.frame(job.sent, job.first_seq + job.sent, now_nanos());
                        job.sent += 1;
                        job.bytes += text.len() as u64;
                        written += 1;
                        self.feed(&Utf8Bytes::from(text)).await?;
                    }
                    if job.sent < job.count {
                        self.outbox.push_front(Queued::Job(job));
                        break;
                    }
                    self.flush().await?;
                    let stats = FirehoseStats { sent: job.sent, bytes: job.bytes, elapsed: start.elapsed() };
                    let _ = job.done.send(stats);
                }
            }
        }
        self.flush().await
    }

    async fn feed(&mut self, text: &Utf8Bytes) -> Result<(), End> {
        let msg = self.encoder.encode(text, self.payload_compress).map_err(|_| End::Gone)?;
        self.pending_flush = true;
        self.sink.feed(msg).await.map_err(|_| End::Gone)
    }

    async fn flush(&mut self) -> Result<(), End> {
        if self.pending_flush {
            self.pending_flush = false;
            self.sink.flush().await.map_err(|_| End::Gone)?;
        }
        Ok(())
    }

    async fn send(&mut self, text: &Utf8Bytes) -> Result<(), End> {
        self.feed(text).await?;
        self.flush().await
    }

    /// Detaches this connection from its shard; `forget` also drops the
    /// session it authenticated.
    fn detach(&mut self, forget: bool) {
        let Some(shard) = self.shard else { return };
        let mut state = self.inner.lock();
        if let Some(sh) = state.shards.get_mut(&shard) {
            if sh.conn.as_ref().is_some_and(|c| c.id == self.id) {
                sh.conn = None;
            }
            if forget && sh.session.as_ref().map(|s| &s.id) == self.session_id.as_ref() && self.session_id.is_some() {
                sh.session = None;
            }
        }
    }

    /// Sends a close frame and waits (briefly) for the client's answer.
    async fn close(&mut self, code: u16, stream: &mut Stream) {
        self.detach(Inner::code_ends_session(code));
        let _ = self.flush().await;
        let frame = CloseFrame { code: CloseCode::from(code), reason: close_reason(code).into() };
        let _ = self.sink.send(Message::Close(Some(frame))).await;
        let _ = tokio::time::timeout(Duration::from_secs(2), async { while let Some(Ok(_)) = stream.next().await {} })
            .await;
    }

    async fn on_text(&mut self, text: &str) -> Result<(), End> {
        if text.len() > MAX_PAYLOAD {
            return Err(End::Close(4002));
        }
        let now = Instant::now();
        while self.sent_times.front().is_some_and(|t| now.duration_since(*t) >= RATE_WINDOW) {
            self.sent_times.pop_front();
        }
        if self.sent_times.len() >= RATE_LIMIT {
            return Err(End::Close(4008));
        }
        self.sent_times.push_back(now);
        let payload: Value = serde_json::from_str(text).map_err(|_| End::Close(4002))?;
        let op = payload.get("op").and_then(Value::as_u64).ok_or(End::Close(4002))?;
        let d = payload.get("d").unwrap_or(&Value::Null);
        match op {
            1 => self.on_heartbeat(d).await,
            2 => self.on_identify(d),
            6 => self.on_resume(d).await,
            3 | 4 | 8 | 31 => {
                let Some(shard) = self.shard else {
                    return Err(End::Close(4003));
                };
                {
                    let mut state = self.inner.lock();
                    state.shards.entry(shard).or_default().commands.push(payload.clone());
                }
                match op {
                    3 => {
                        if d.is_object() {
                            Ok(())
                        } else {
                            Err(End::Close(4002))
                        }
                    }
                    4 => self.on_voice_state(shard, d),
                    8 => self.on_request_members(shard, d),
                    _ => self.on_request_soundboard(shard, d),
                }
            }
            _ => Err(End::Close(4001)),
        }
    }

    async fn on_heartbeat(&mut self, d: &Value) -> Result<(), End> {
        if !(d.is_null() || d.is_u64()) {
            return Err(End::Close(4002));
        }
        self.hb_deadline = Instant::now() + self.hb_timeout;
        let delay = self.shard.and_then(|s| self.inner.lock().shards.get(&s).and_then(|st| st.ack_delay));
        let ack = Utf8Bytes::from(op_text(11, "null"));
        match delay {
            None => self.send(&ack).await,
            Some(delay) => {
                // Held back, then sent through the connection's queue like any dispatch.
                let tx = self.tx.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    let _ = tx.send(ConnCmd::Send(ack));
                });
                Ok(())
            }
        }
    }

    fn token_ok(&self, d: &Value) -> bool {
        d.get("token").and_then(Value::as_str).is_some_and(|t| {
            let t = t.strip_prefix("Bot ").unwrap_or(t);
            t == self.inner.config.token
        })
    }

    fn on_identify(&mut self, d: &Value) -> Result<(), End> {
        if self.shard.is_some() {
            return Err(End::Close(4005));
        }
        self.inner.identifies.fetch_add(1, Ordering::SeqCst);
        let configured = self.inner.config.shards.max(1);
        let shard: Option<Option<(u32, u32)>> = d.get("shard").map(|s| {
            let a = s.as_array().filter(|a| a.len() == 2)?;
            let id = u32::try_from(a[0].as_u64()?).ok()?;
            let n = u32::try_from(a[1].as_u64()?).ok()?;
            Some((id, n))
        });
        // Count the Identify for its shard and apply an injected failure.
        if let Some(Some((id, _))) = shard {
            let mut state = self.inner.lock();
            state.identify_log.push((std::time::Instant::now(), id));
            let sh = state.shards.entry(id).or_default();
            sh.identifies += 1;
            sh.last_identify = Some(d.clone());
            if let Some(code) = sh.fail_next_identify.take() {
                return Err(End::Close(code));
            }
        } else if shard.is_none() && configured == 1 {
            let mut state = self.inner.lock();
            let sh = state.shards.entry(0).or_default();
            sh.identifies += 1;
            if let Some(code) = sh.fail_next_identify.take() {
                return Err(End::Close(code));
            }
        }
        if !self.token_ok(d) {
            return Err(End::Close(4004));
        }
        let (shard_id, num_shards) = match shard {
            None if configured == 1 => (0, 1),
            None => return Err(End::Close(4011)),
            Some(Some((id, n))) if n == configured && id < n => (id, n),
            Some(_) => return Err(End::Close(4010)),
        };
        let intents = match d.get("intents") {
            Some(v) => v.as_u64().filter(|i| *i < (1 << 26)).ok_or(End::Close(4013))?,
            None => return Err(End::Close(4013)),
        };
        if !d.get("properties").is_some_and(Value::is_object) {
            return Err(End::Close(4002));
        }
        let large_threshold = match d.get("large_threshold") {
            None | Some(Value::Null) => 50,
            Some(v) => v.as_u64().filter(|t| (50..=250).contains(t)).ok_or(End::Close(4002))? as u32,
        };
        let compress = match d.get("compress") {
            None | Some(Value::Null) => false,
            Some(v) => v.as_bool().ok_or(End::Close(4002))?,
        };
        let presences = intents & (1 << 8) != 0;

        let session_id = random_hex(32);
        let generator = &self.inner.generator;
        let ready = generator.ready(shard_id, num_shards, &session_id, &self.inner.gateway_url).to_string();
        let guilds: Vec<Arc<str>> = generator
            .guilds_of_shard(shard_id, num_shards)
            .into_iter()
            .filter(|i| generator.is_available(*i))
            .map(|i| self.inner.guild_create_json(i, presences, large_threshold))
            .collect();

        self.payload_compress = compress && matches!(self.encoder, Encoder::Plain);
        let mut state = self.inner.lock();
        state.sessions_started += 1;
        let sh = state.shards.entry(shard_id).or_default();
        let mut session = Session::new(session_id.clone(), self.inner.config.replay_capacity);
        let (_, text) = session.push("READY", &ready);
        let _ = self.tx.send(ConnCmd::Send(text));
        for g in &guilds {
            let (_, text) = session.push("GUILD_CREATE", g);
            let _ = self.tx.send(ConnCmd::Send(text));
        }
        sh.session = Some(session);
        sh.conn = Some(ConnRef { id: self.id, tx: self.tx.clone() });
        drop(state);
        log::debug!("connection {} identified as shard [{shard_id}, {num_shards}]", self.id);
        self.shard = Some(shard_id);
        self.session_id = Some(session_id);
        Ok(())
    }

    async fn on_resume(&mut self, d: &Value) -> Result<(), End> {
        if self.shard.is_some() {
            return Err(End::Close(4005));
        }
        self.inner.resumes.fetch_add(1, Ordering::SeqCst);
        if !self.token_ok(d) {
            return Err(End::Close(4004));
        }
        let session_id = d.get("session_id").and_then(Value::as_str).ok_or(End::Close(4002))?;
        let seq = match d.get("seq") {
            None | Some(Value::Null) => 0,
            Some(v) => v.as_u64().ok_or(End::Close(4002))?,
        };
        match self.resume_session(session_id, seq)? {
            Some(shard) => {
                log::debug!("connection {} resumed shard {shard} from seq {seq}", self.id);
                self.shard = Some(shard);
                self.session_id = Some(session_id.to_owned());
                Ok(())
            }
            None => self.send(&Utf8Bytes::from(op_text(9, "false"))).await,
        }
    }

    /// Attaches this connection to the session and queues the replay and
    /// RESUMED. `Ok(None)`: the session can't be resumed (send op 9).
    fn resume_session(&mut self, session_id: &str, seq: u64) -> Result<Option<u32>, End> {
        let mut state = self.inner.lock();
        let found = state
            .shards
            .iter()
            .find(|(_, sh)| sh.session.as_ref().is_some_and(|s| s.id == session_id))
            .map(|(k, _)| *k);
        let Some(shard) = found else {
            return Ok(None);
        };
        let Some(sh) = state.shards.get_mut(&shard) else {
            return Ok(None);
        };
        sh.resumes += 1;
        let Some(session) = sh.session.as_mut() else {
            return Ok(None);
        };
        if seq > session.seq {
            sh.session = None;
            return Err(End::Close(4007));
        }
        if seq < session.evicted_upto {
            sh.session = None;
            return Ok(None);
        }
        for (s, text) in &session.history {
            if *s > seq {
                let _ = self.tx.send(ConnCmd::Send(text.clone()));
            }
        }
        let (_, resumed) =
            session.push_unstored("RESUMED", r#"{"_trace":["[\"fake-discord-gateway\",{\"micros\":0}]"]}"#);
        let _ = self.tx.send(ConnCmd::Send(resumed));
        sh.conn = Some(ConnRef { id: self.id, tx: self.tx.clone() });
        Ok(Some(shard))
    }

    /// Sends a dispatch on this connection's shard session.
    fn dispatch(&self, shard: u32, t: &str, d: &Value) {
        let d = d.to_string();
        let mut state = self.inner.lock();
        if let Some(sh) = state.shards.get_mut(&shard) {
            sh.dispatch(t, &d);
        }
    }

    fn on_voice_state(&mut self, shard: u32, d: &Value) -> Result<(), End> {
        let guild_id = d.get("guild_id").and_then(snowflake).ok_or(End::Close(4002))?;
        let channel_id = match d.get("channel_id") {
            None | Some(Value::Null) => None,
            Some(v) => Some(snowflake(v).ok_or(End::Close(4002))?),
        };
        let self_mute = d.get("self_mute").and_then(Value::as_bool).unwrap_or(false);
        let self_deaf = d.get("self_deaf").and_then(Value::as_bool).unwrap_or(false);
        let generator = &self.inner.generator;
        let Some(i) = generator.guild_index(guild_id) else {
            return Ok(());
        };
        let session_id = self.session_id.clone().unwrap_or_default();
        let mut state = generator.voice_state(i, 0, channel_id, &session_id, true);
        state["self_mute"] = Value::Bool(self_mute);
        state["self_deaf"] = Value::Bool(self_deaf);
        self.dispatch(shard, "VOICE_STATE_UPDATE", &state);
        if channel_id.is_some() {
            let server = json!({
                "token": random_hex(16),
                "guild_id": guild_id.to_string(),
                "endpoint": "fake-voice.discord.media:443",
            });
            self.dispatch(shard, "VOICE_SERVER_UPDATE", &server);
        }
        Ok(())
    }

    fn on_request_members(&mut self, shard: u32, d: &Value) -> Result<(), End> {
        let guild_ids: Vec<u64> = match d.get("guild_id") {
            Some(Value::Array(a)) => a.iter().filter_map(snowflake).collect(),
            Some(v) => vec![snowflake(v).ok_or(End::Close(4002))?],
            None => return Err(End::Close(4002)),
        };
        let user_ids: Option<Vec<u64>> = match d.get("user_ids") {
            None | Some(Value::Null) => None,
            Some(Value::Array(a)) => Some(a.iter().filter_map(snowflake).collect()),
            Some(v) => Some(vec![snowflake(v).ok_or(End::Close(4002))?]),
        };
        let query = d.get("query").and_then(Value::as_str);
        if user_ids.is_none() && query.is_none() {
            return Err(End::Close(4002));
        }
        let limit = d.get("limit").and_then(Value::as_u64).unwrap_or(0);
        let presences = d.get("presences").and_then(Value::as_bool).unwrap_or(false);
        let nonce = d.get("nonce").cloned().filter(|n| !n.is_null());
        let generator = &self.inner.generator;
        for guild_id in guild_ids {
            let Some(i) = generator.guild_index(guild_id) else {
                continue;
            };
            let mut found = Vec::new();
            let mut not_found = Vec::new();
            if let Some(ids) = &user_ids {
                for id in ids {
                    match generator.member_index(i, *id) {
                        Some(m) => found.push(m),
                        None => not_found.push(Value::String(id.to_string())),
                    }
                }
            } else {
                let query = query.unwrap_or("").to_lowercase();
                let cap = if limit == 0 { u64::MAX } else { limit };
                for m in 0..generator.members_per_guild() {
                    if found.len() as u64 >= cap {
                        break;
                    }
                    let user = generator.user(i, m);
                    let name = user["username"].as_str().unwrap_or("").to_lowercase();
                    if name.starts_with(&query) {
                        found.push(m);
                    }
                }
            }
            let chunks: Vec<&[u32]> = if found.is_empty() { vec![&[]] } else { found.chunks(CHUNK_SIZE).collect() };
            let count = chunks.len();
            for (index, chunk) in chunks.into_iter().enumerate() {
                let mut body = json!({
                    "guild_id": guild_id.to_string(),
                    "members": chunk.iter().map(|m| generator.member(i, *m)).collect::<Vec<_>>(),
                    "chunk_index": index,
                    "chunk_count": count,
                    "not_found": if index == 0 { not_found.clone() } else { Vec::new() },
                });
                if presences {
                    body["presences"] = Value::Array(
                        chunk
                            .iter()
                            .filter(|m| generator.is_online(i, **m))
                            .map(|m| generator.presence(i, *m))
                            .collect(),
                    );
                }
                if let Some(nonce) = &nonce {
                    body["nonce"] = nonce.clone();
                }
                self.dispatch(shard, "GUILD_MEMBERS_CHUNK", &body);
            }
        }
        Ok(())
    }

    fn on_request_soundboard(&mut self, shard: u32, d: &Value) -> Result<(), End> {
        let guild_ids: Vec<u64> = d
            .get("guild_ids")
            .and_then(Value::as_array)
            .ok_or(End::Close(4002))?
            .iter()
            .filter_map(snowflake)
            .collect();
        let generator = &self.inner.generator;
        for guild_id in guild_ids {
            let Some(i) = generator.guild_index(guild_id) else {
                continue;
            };
            let body = json!({
                "guild_id": guild_id.to_string(),
                "soundboard_sounds": generator.soundboard_sounds(i),
            });
            self.dispatch(shard, "SOUNDBOARD_SOUNDS", &body);
        }
        Ok(())
    }
}

/// A snowflake given as a string or an integer.
fn snowflake(v: &Value) -> Option<u64> {
    match v {
        Value::String(s) => s.parse().ok(),
        Value::Number(n) => n.as_u64(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parsing() {
        assert_eq!(parse_query(Some("v=10&encoding=json")), Ok(TransportKind::Plain));
        assert_eq!(parse_query(Some("v=10&encoding=json&compress=zlib-stream")), Ok(TransportKind::Zlib));
        assert_eq!(parse_query(Some("v=10&encoding=json&compress=zstd-stream")), Ok(TransportKind::Zstd));
        assert_eq!(parse_query(Some("v=9&encoding=json")), Err(4012));
        assert_eq!(parse_query(Some("v=10&encoding=etf")), Err(4002));
        assert_eq!(parse_query(None), Ok(TransportKind::Plain));
    }
}
