//! A fake Discord on loopback: REST (`GET /api/v10/gateway/bot`) and a
//! gateway speaking Discord's v10 protocol (Hello, Identify, READY,
//! GUILD_CREATE, heartbeats, Resume with replay, Invalid Session, close codes,
//! zlib-stream and zstd-stream transport compression, member chunking, voice
//! state updates), over plain TCP or TLS ([`FakeConfig::tls`]), with network
//! faults on demand (a TCP reset in the middle of a TLS record, a TLS
//! close_notify without a websocket close frame).
//!
//! Used in-process by gateway-proxy's end-to-end tests (inside any tokio
//! runtime), by the `fake-discord` demo binary and by benchmarks.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! let fake = fake_discord::FakeDiscord::start(fake_discord::FakeConfig::default()).await?;
//! println!("{} {}", fake.api_url(), fake.gateway_url());
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

pub mod client_codec;
pub mod demo;
pub mod firehose;
mod gateway;
pub mod payloads;
mod rest;
mod transport;

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::mpsc::UnboundedSender;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Utf8Bytes;

pub use firehose::{FirehoseHandle, FirehoseMix, FirehoseSpec, FirehoseStats};
pub use payloads::Generator;
pub use transport::FakeTls;

/// Configuration of a [`FakeDiscord`].
#[derive(Clone, Debug)]
pub struct FakeConfig {
    /// Bot token clients must present (REST `Authorization: Bot <token>`,
    /// Identify and Resume `token`). Default `"fake-token"`.
    pub token: String,
    /// Shard count recommended by `/gateway/bot`; Identify must use exactly
    /// this many shards. Default 4.
    pub shards: u32,
    /// Total generated guilds. Default 20.
    pub guilds: u32,
    /// Members per guild, the bot's own member included. Default 5.
    pub members_per_guild: u32,
    /// Text channels per guild (plus one voice channel and one category). Default 3.
    pub channels_per_guild: u32,
    /// Roles per guild besides @everyone (whose id is the guild id). Role 0 is
    /// the bot's managed role. Default 2.
    pub roles_per_guild: u32,
    /// The last N guilds are listed in READY but never get GUILD_CREATE
    /// (an outage). Default 0.
    pub unavailable_guilds: u32,
    /// `session_start_limit.max_concurrency`. Default 1.
    pub max_concurrency: u32,
    /// `session_start_limit.remaining` before any Identify; each successful
    /// Identify uses one. Default 1000.
    pub session_start_remaining: u32,
    /// Heartbeat interval sent in Hello, in milliseconds. Default 41250.
    pub heartbeat_interval_ms: u64,
    /// Dispatches kept per session for Resume replay. Default 10 000.
    pub replay_capacity: usize,
    /// Address to listen on. Default 127.0.0.1.
    pub host: IpAddr,
    /// REST port; 0 picks an ephemeral port. Default 0.
    pub rest_port: u16,
    /// Gateway port; 0 picks an ephemeral port. Default 0.
    pub gateway_port: u16,
    /// Serve REST and the gateway over TLS with this certificate
    /// (`https://localhost:P`, `wss://localhost:Q`). Default `None`: plain
    /// `http://` and `ws://` on the IP address.
    pub tls: Option<FakeTls>,
}

impl Default for FakeConfig {
    fn default() -> Self {
        Self {
            token: "fake-token".to_owned(),
            shards: 4,
            guilds: 20,
            members_per_guild: 5,
            channels_per_guild: 3,
            roles_per_guild: 2,
            unavailable_guilds: 0,
            max_concurrency: 1,
            session_start_remaining: 1000,
            heartbeat_interval_ms: 41_250,
            replay_capacity: 10_000,
            host: IpAddr::V4(Ipv4Addr::LOCALHOST),
            rest_port: 0,
            gateway_port: 0,
            tls: None,
        }
    }
}

/// Commands from the API to a connection task.
pub(crate) enum ConnCmd {
    /// Send this (already serialized) payload.
    Send(Utf8Bytes),
    /// Send a close frame with this code, then end.
    Close(u16),
    /// End the connection abruptly, without a close frame.
    Drop,
    /// Cut the next write in the middle (of its TLS record under TLS) and
    /// reset the TCP connection.
    ResetMidRecord,
    /// End with TLS close_notify and a TCP FIN, without a close frame.
    CloseNotify,
    /// Send op 9 with this `d` and forget the connection's authentication.
    InvalidSession(bool),
    /// Run a firehose job (its seq range is already reserved).
    Firehose(Box<firehose::Job>),
}

/// A gateway session: its id and replayable dispatch history.
pub(crate) struct Session {
    pub(crate) id: String,
    /// Last sequence number used.
    pub(crate) seq: u64,
    /// Sent dispatches `(seq, payload)`, oldest first.
    pub(crate) history: VecDeque<(u64, Utf8Bytes)>,
    /// Highest seq dropped from `history` (a Resume must be at least this).
    pub(crate) evicted_upto: u64,
    pub(crate) capacity: usize,
}

impl Session {
    pub(crate) fn new(id: String, capacity: usize) -> Self {
        Self { id, seq: 0, history: VecDeque::new(), evicted_upto: 0, capacity }
    }

    /// Assigns the next seq to a dispatch and stores it for replay.
    pub(crate) fn push(&mut self, t: &str, d: &str) -> (u64, Utf8Bytes) {
        self.seq += 1;
        let text = Utf8Bytes::from(dispatch_text(t, self.seq, d));
        self.history.push_back((self.seq, text.clone()));
        while self.history.len() > self.capacity {
            if let Some((s, _)) = self.history.pop_front() {
                self.evicted_upto = s;
            }
        }
        (self.seq, text)
    }

    /// Assigns the next seq to a dispatch that is not replayed (RESUMED).
    pub(crate) fn push_unstored(&mut self, t: &str, d: &str) -> (u64, Utf8Bytes) {
        self.seq += 1;
        (self.seq, Utf8Bytes::from(dispatch_text(t, self.seq, d)))
    }
}

/// Serializes a dispatch in Discord's key order: `{"t","s","op","d"}`.
pub(crate) fn dispatch_text(t: &str, seq: u64, d: &str) -> String {
    let t = serde_json::to_string(t).unwrap_or_else(|_| "null".to_owned());
    format!("{{\"t\":{t},\"s\":{seq},\"op\":0,\"d\":{d}}}")
}

/// Serializes a non-dispatch payload in Discord's key order.
pub(crate) fn op_text(op: u8, d: &str) -> String {
    format!("{{\"t\":null,\"s\":null,\"op\":{op},\"d\":{d}}}")
}

/// A live connection attached to a shard.
pub(crate) struct ConnRef {
    pub(crate) id: u64,
    pub(crate) tx: UnboundedSender<ConnCmd>,
}

/// Per-shard state.
#[derive(Default)]
pub(crate) struct ShardState {
    pub(crate) session: Option<Session>,
    pub(crate) conn: Option<ConnRef>,
    pub(crate) identifies: u64,
    pub(crate) resumes: u64,
    pub(crate) fail_next_identify: Option<u16>,
    /// Heartbeat ACKs are held this long (`None`: answered at once). A
    /// very long delay is a zombied connection: Discord stops answering.
    pub(crate) ack_delay: Option<Duration>,
    pub(crate) commands: Vec<Value>,
    pub(crate) last_identify: Option<Value>,
}

impl ShardState {
    /// Sends a dispatch on the shard's session; `None` without a session.
    pub(crate) fn dispatch(&mut self, t: &str, d: &str) -> Option<u64> {
        let session = self.session.as_mut()?;
        let (seq, text) = session.push(t, d);
        if let Some(conn) = &self.conn {
            let _ = conn.tx.send(ConnCmd::Send(text));
        }
        Some(seq)
    }
}

/// Mutable state shared by the API and the connection tasks.
#[derive(Default)]
pub(crate) struct State {
    pub(crate) shards: HashMap<u32, ShardState>,
    /// Every open gateway connection, by id.
    pub(crate) conns: HashMap<u64, UnboundedSender<ConnCmd>>,
    /// Successful Identifies so far (for `session_start_limit.remaining`).
    pub(crate) sessions_started: u64,
    /// Every Identify received: when, and for which shard.
    pub(crate) identify_log: Vec<(Instant, u32)>,
}

pub(crate) struct Inner {
    pub(crate) config: FakeConfig,
    pub(crate) generator: Generator,
    pub(crate) api_url: String,
    pub(crate) gateway_url: String,
    pub(crate) state: Mutex<State>,
    pub(crate) identifies: AtomicU64,
    pub(crate) resumes: AtomicU64,
    pub(crate) next_conn_id: AtomicU64,
    /// TLS for both listeners, when configured.
    pub(crate) tls: Option<tokio_rustls::TlsAcceptor>,
    /// Serialized GUILD_CREATE `d` per guild, by (presences, large).
    guild_cache: Vec<[OnceLock<Arc<str>>; 4]>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl Inner {
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Serialized GUILD_CREATE `d` of guild `i`, cached.
    pub(crate) fn guild_create_json(&self, i: u32, presences: bool, large_threshold: u32) -> Arc<str> {
        let large = self.generator.members_per_guild() > large_threshold;
        let slot = usize::from(presences) * 2 + usize::from(large);
        self.guild_cache[i as usize][slot]
            .get_or_init(|| self.generator.guild_create(i, presences, large_threshold).to_string().into())
            .clone()
    }

    /// Close codes after which Discord's session can't be resumed.
    pub(crate) fn code_ends_session(code: u16) -> bool {
        matches!(code, 4004 | 4007 | 4009 | 4010..=4014)
    }
}

/// A running fake Discord. Cheap to clone (an `Arc` inside); the servers run
/// as tasks on the tokio runtime that called [`FakeDiscord::start`].
#[derive(Clone)]
pub struct FakeDiscord {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for FakeDiscord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeDiscord")
            .field("api_url", &self.inner.api_url)
            .field("gateway_url", &self.inner.gateway_url)
            .finish()
    }
}

impl FakeDiscord {
    /// Binds the REST and gateway listeners and starts serving.
    ///
    /// Must be called inside a tokio runtime (current-thread or multi-thread).
    pub async fn start(config: FakeConfig) -> std::io::Result<FakeDiscord> {
        let rest = TcpListener::bind(SocketAddr::new(config.host, config.rest_port)).await?;
        let gateway = TcpListener::bind(SocketAddr::new(config.host, config.gateway_port)).await?;
        let rest_addr = rest.local_addr()?;
        let gateway_addr = gateway.local_addr()?;
        let generator = Generator::new(
            config.guilds,
            config.members_per_guild,
            config.channels_per_guild,
            config.roles_per_guild,
            config.unavailable_guilds,
        );
        let guild_cache = (0..config.guilds).map(|_| Default::default()).collect();
        let tls = config.tls.as_ref().map(FakeTls::acceptor).transpose()?;
        // Under TLS the URLs name the host, so certificate names are checked.
        let (api_url, gateway_url) = match tls {
            None => (format!("http://{rest_addr}/api/v10"), format!("ws://{gateway_addr}")),
            Some(_) => (
                format!("https://localhost:{}/api/v10", rest_addr.port()),
                format!("wss://localhost:{}", gateway_addr.port()),
            ),
        };
        let inner = Arc::new(Inner {
            api_url,
            gateway_url,
            tls,
            config,
            generator,
            state: Mutex::new(State::default()),
            identifies: AtomicU64::new(0),
            resumes: AtomicU64::new(0),
            next_conn_id: AtomicU64::new(1),
            guild_cache,
            tasks: Mutex::new(Vec::new()),
        });
        let rest_task = tokio::spawn(rest::serve(Arc::clone(&inner), rest));
        let gateway_task = tokio::spawn(gateway::serve(Arc::clone(&inner), gateway));
        inner.tasks.lock().unwrap_or_else(|e| e.into_inner()).extend([rest_task, gateway_task]);
        log::info!("fake discord: api {} gateway {}", inner.api_url, inner.gateway_url);
        Ok(FakeDiscord { inner })
    }

    /// The configuration this fake runs with.
    pub fn config(&self) -> &FakeConfig {
        &self.inner.config
    }

    /// The data generator (ids, payload bodies) behind this fake.
    pub fn generator(&self) -> &Generator {
        &self.inner.generator
    }

    /// REST base URL, e.g. `http://127.0.0.1:P/api/v10` (with
    /// [`FakeConfig::tls`]: `https://localhost:P/api/v10`).
    pub fn api_url(&self) -> String {
        self.inner.api_url.clone()
    }

    /// Gateway URL, e.g. `ws://127.0.0.1:Q` (with [`FakeConfig::tls`]:
    /// `wss://localhost:Q`); also READY's `resume_gateway_url`.
    pub fn gateway_url(&self) -> String {
        self.inner.gateway_url.clone()
    }

    /// The bot token.
    pub fn token(&self) -> &str {
        &self.inner.config.token
    }

    /// The bot's user id (also its application id).
    pub fn bot_user_id(&self) -> u64 {
        self.inner.generator.bot_user_id()
    }

    /// All generated guild ids (available or not), in generation order.
    pub fn guild_ids(&self) -> Vec<u64> {
        self.inner.generator.guild_ids().to_vec()
    }

    /// Guild ids with `(id >> 22) % num_shards == shard`.
    pub fn guild_ids_for_shard(&self, shard: u32, num_shards: u32) -> Vec<u64> {
        self.inner
            .generator
            .guild_ids()
            .iter()
            .copied()
            .filter(|id| payloads::shard_for_guild(*id, num_shards) == shard)
            .collect()
    }

    /// Guild ids that get a GUILD_CREATE (not in the configured outage).
    pub fn available_guild_ids(&self) -> Vec<u64> {
        let g = &self.inner.generator;
        (0..g.guild_count()).filter(|i| g.is_available(*i)).map(|i| g.guild_id(i)).collect()
    }

    /// Id of the first text channel of a guild.
    ///
    /// # Panics
    ///
    /// If `guild_id` is not one of [`FakeDiscord::guild_ids`].
    pub fn first_channel_id(&self, guild_id: u64) -> u64 {
        let g = &self.inner.generator;
        let i = g.guild_index(guild_id).unwrap_or_else(|| panic!("unknown guild id {guild_id}"));
        g.first_channel_id(i)
    }

    /// Sends a dispatch to the shard's session: to its live connection if
    /// any; if the session exists but is disconnected, it is stored so a
    /// Resume replays it. Returns the seq used, `None` if the shard has no
    /// session.
    pub fn inject(&self, shard: u32, t: &str, d: Value) -> Option<u64> {
        let d = d.to_string();
        let mut state = self.inner.lock();
        state.shards.get_mut(&shard)?.dispatch(t, &d)
    }

    /// Starts a firehose on the shard's live connection: `spec.count`
    /// pre-encoded dispatches with consecutive seqs, written as fast as the
    /// receiver reads them (or at `spec.rate` per second), each stamped with
    /// [`firehose::now_nanos`] (see [`firehose::stamp_of`]). Returns the seq
    /// range and a completion handle; `None` if the shard has no live
    /// connection. Firehose dispatches are not kept for Resume replay.
    pub fn firehose(&self, shard: u32, spec: FirehoseSpec) -> Option<FirehoseHandle> {
        let templates =
            firehose::Templates::new(&self.inner.generator, shard, self.inner.config.shards.max(1), spec.mix);
        let mut state = self.inner.lock();
        let sh = state.shards.get_mut(&shard)?;
        let tx = sh.conn.as_ref()?.tx.clone();
        let session = sh.session.as_mut()?;
        let first_seq = session.seq + 1;
        session.seq += spec.count;
        session.evicted_upto = session.evicted_upto.max(session.seq);
        let (done_tx, done) = tokio::sync::oneshot::channel();
        let interval = spec.rate.filter(|r| r.is_finite() && *r > 0.0).map(|r| 1.0 / r);
        let job = firehose::Job {
            templates,
            first_seq,
            count: spec.count,
            interval,
            done: done_tx,
            sent: 0,
            bytes: 0,
            started: None,
        };
        let _ = tx.send(ConnCmd::Firehose(Box::new(job)));
        Some(FirehoseHandle { first_seq, last_seq: session.seq, done })
    }

    /// Drops the shard's connection abruptly (TCP close, no close frame).
    /// The session stays resumable. Returns whether there was a connection.
    pub fn drop_connection(&self, shard: u32) -> bool {
        let mut state = self.inner.lock();
        let Some(conn) = state.shards.get_mut(&shard).and_then(|s| s.conn.take()) else {
            return false;
        };
        let _ = conn.tx.send(ConnCmd::Drop);
        true
    }

    /// Cuts the shard's connection in the middle of a TLS record: the next
    /// frame it writes (a dispatch, a heartbeat ACK) is cut after half of the
    /// TLS record it starts with (half of the frame on a plain connection),
    /// and once the receiver's kernel has acknowledged that half the TCP
    /// connection is reset (`SO_LINGER` 0: RST, no close frame, no
    /// close_notify). The dispatch that was cut, and those after it, stay in
    /// the session for a Resume. Returns whether there was a connection.
    pub fn reset_connection_mid_record(&self, shard: u32) -> bool {
        let state = self.inner.lock();
        let Some(conn) = state.shards.get(&shard).and_then(|s| s.conn.as_ref()) else {
            return false;
        };
        let _ = conn.tx.send(ConnCmd::ResetMidRecord);
        true
    }

    /// Ends the shard's connection with a TLS close_notify and a TCP FIN,
    /// without a websocket close frame (on a plain connection: the FIN
    /// alone). The session stays resumable. Returns whether there was a
    /// connection.
    pub fn close_notify(&self, shard: u32) -> bool {
        let mut state = self.inner.lock();
        let Some(conn) = state.shards.get_mut(&shard).and_then(|s| s.conn.take()) else {
            return false;
        };
        let _ = conn.tx.send(ConnCmd::CloseNotify);
        true
    }

    /// Closes the shard's connection with a websocket close frame carrying
    /// `code`. Codes after which Discord ends the session (4004, 4007, 4009,
    /// 4010-4014) also forget the session; others leave it resumable.
    /// Returns whether there was a connection.
    pub fn close_connection(&self, shard: u32, code: u16) -> bool {
        let mut state = self.inner.lock();
        let Some(sh) = state.shards.get_mut(&shard) else {
            return false;
        };
        let Some(conn) = sh.conn.take() else {
            return false;
        };
        if Inner::code_ends_session(code) {
            sh.session = None;
        }
        let _ = conn.tx.send(ConnCmd::Close(code));
        true
    }

    /// Sends op 7 Reconnect on the shard's connection. The connection stays
    /// open until the client closes it.
    pub fn send_reconnect(&self, shard: u32) -> bool {
        let state = self.inner.lock();
        let Some(conn) = state.shards.get(&shard).and_then(|s| s.conn.as_ref()) else {
            return false;
        };
        let _ = conn.tx.send(ConnCmd::Send(Utf8Bytes::from(op_text(7, "null"))));
        true
    }

    /// Sends op 9 Invalid Session with `d = resumable` on the shard's
    /// connection, which then counts as unauthenticated (it may Identify or
    /// Resume again). When `resumable` is false the session is forgotten.
    pub fn send_invalid_session(&self, shard: u32, resumable: bool) -> bool {
        let mut state = self.inner.lock();
        let Some(sh) = state.shards.get_mut(&shard) else {
            return false;
        };
        let Some(conn) = sh.conn.take() else {
            return false;
        };
        if !resumable {
            sh.session = None;
        }
        let _ = conn.tx.send(ConnCmd::InvalidSession(resumable));
        true
    }

    /// The next Identify for `shard` is answered by closing the connection
    /// with `close_code` (no session is created).
    pub fn fail_next_identify(&self, shard: u32, close_code: u16) {
        let mut state = self.inner.lock();
        state.shards.entry(shard).or_default().fail_next_identify = Some(close_code);
    }

    /// Holds `shard`'s heartbeat ACKs for `delay` before sending them, while
    /// dispatches keep flowing, as when Discord's ACK sits behind a backlog
    /// (`None` answers at once again). A delay longer than the test is a
    /// zombied connection: heartbeats are never acknowledged.
    pub fn delay_heartbeat_acks(&self, shard: u32, delay: Option<Duration>) {
        let mut state = self.inner.lock();
        state.shards.entry(shard).or_default().ack_delay = delay;
    }

    /// Every Identify received, in order: when, and for which shard (to
    /// check how several proxies spaced them).
    pub fn identify_log(&self) -> Vec<(Instant, u32)> {
        self.inner.lock().identify_log.clone()
    }

    /// Identify payloads received (all shards, failed ones included).
    pub fn identify_count(&self) -> u64 {
        self.inner.identifies.load(Ordering::SeqCst)
    }

    /// Resume payloads received (all shards, failed ones included).
    pub fn resume_count(&self) -> u64 {
        self.inner.resumes.load(Ordering::SeqCst)
    }

    /// Identify payloads received naming this shard (failed ones included).
    pub fn identify_count_for(&self, shard: u32) -> u64 {
        self.inner.lock().shards.get(&shard).map_or(0, |s| s.identifies)
    }

    /// Resume payloads received for a session of this shard (failed ones
    /// included; a Resume naming an unknown session counts for no shard).
    pub fn resume_count_for(&self, shard: u32) -> u64 {
        self.inner.lock().shards.get(&shard).map_or(0, |s| s.resumes)
    }

    /// Whether a live, identified or resumed connection exists for the shard.
    pub fn connected(&self, shard: u32) -> bool {
        self.inner.lock().shards.get(&shard).is_some_and(|s| s.conn.is_some())
    }

    /// Whether the shard has a session (resumable or live).
    pub fn has_session(&self, shard: u32) -> bool {
        self.inner.lock().shards.get(&shard).is_some_and(|s| s.session.is_some())
    }

    /// The shard's current session id, if any.
    pub fn session_id(&self, shard: u32) -> Option<String> {
        let state = self.inner.lock();
        state.shards.get(&shard)?.session.as_ref().map(|s| s.id.clone())
    }

    /// Last seq sent (or stored) on the shard's session, if any.
    pub fn last_seq(&self, shard: u32) -> Option<u64> {
        let state = self.inner.lock();
        state.shards.get(&shard)?.session.as_ref().map(|s| s.seq)
    }

    /// Every op 3/4/8/31 payload received on that shard, in order (whole
    /// payloads: `{"op": .., "d": ..}`).
    pub fn commands(&self, shard: u32) -> Vec<Value> {
        self.inner.lock().shards.get(&shard).map(|s| s.commands.clone()).unwrap_or_default()
    }

    /// The `d` of the last Identify received for that shard.
    pub fn last_identify(&self, shard: u32) -> Option<Value> {
        self.inner.lock().shards.get(&shard).and_then(|s| s.last_identify.clone())
    }

    /// Number of open gateway connections (authenticated or not).
    pub fn open_connections(&self) -> usize {
        self.inner.lock().conns.len()
    }

    /// Polls `f` every 10 ms until it returns true (returns true) or
    /// `timeout` passes (returns false).
    pub async fn wait_until<F: Fn(&FakeDiscord) -> bool>(&self, timeout: Duration, f: F) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if f(self) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Stops the listeners and drops every open connection. Sessions stay.
    pub fn shutdown(&self) {
        for task in self.inner.tasks.lock().unwrap_or_else(|e| e.into_inner()).drain(..) {
            task.abort();
        }
        let mut state = self.inner.lock();
        for tx in state.conns.values() {
            let _ = tx.send(ConnCmd::Drop);
        }
        for sh in state.shards.values_mut() {
            sh.conn = None;
        }
    }
}
