//! One shard's connection to Discord, as a state machine that reads like the
//! protocol: connect, Hello, Identify or Resume, then dispatches, heartbeats
//! and client commands until the connection ends; the close code decides
//! whether to resume, identify again, or stop for good.

use super::websocket::Incoming;
use super::{
    connection::{self, GatewaySocket},
    ratelimit::SendLimiter,
};
use crate::runtime::doorbell::Doorbell;
use crate::{
    cache::is_cache_event,
    hub::{routing::Route, ShardHub, ShardStatus, UpstreamCommand, UpstreamSession},
    protocol::{
        close_code::{reconnect_for, Reconnect},
        dispatch::Dispatch,
        op, scan,
    },
    runtime::Shared,
};
use futures_lite::future;
use serde::Deserialize;
use std::{
    cell::Cell,
    collections::VecDeque,
    rc::Rc,
    sync::Arc,
    time::{Duration, Instant},
};

/// Payloads relayed between two voluntary yields of the shard task.
const YIELD_EVERY: u64 = 64;
/// Longest the shard stops reading from Discord to let a client that fell
/// behind catch up (see [`wait_for_writers`]).
const PAUSE_BUDGET: Duration = Duration::from_millis(250);
/// Longest wait for Hello after connecting.
const HELLO_TIMEOUT: Duration = Duration::from_secs(20);
/// Commands kept for Discord while it is unreachable; beyond this the oldest are dropped with a warning.
const MAX_PENDING_COMMANDS: usize = 10_000;

/// How a connection ended.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    /// Reconnect and resume the session.
    Resume,
    /// Drop the session; identify again after the delay.
    Identify(Duration),
    /// Stop the shard: Discord closed with a fatal code.
    Fatal(u16),
    /// Connecting failed; try again after backoff.
    ConnectFailed,
    /// The proxy is shutting down; the session stays resumable.
    Stopped,
}

/// Capped exponential backoff with jitter.
struct Backoff {
    failures: u32,
}

impl Backoff {
    fn next(&mut self) -> Duration {
        self.failures = self.failures.saturating_add(1);
        let base = Duration::from_millis(500).saturating_mul(1 << self.failures.min(7)).min(Duration::from_secs(60));
        base.mul_f64(0.5 + fastrand::f64() * 0.5)
    }
    fn reset(&mut self) {
        self.failures = 0;
    }
}

/// Runs shard `hub.id` until a fatal close code stops it.
pub async fn run(hub: Rc<ShardHub>, shared: Arc<Shared>) {
    let mut pending: VecDeque<Vec<u8>> = VecDeque::new();
    let mut backoff = Backoff { failures: 0 };
    loop {
        let outcome = connect_once(&hub, &shared, &mut pending, &mut backoff).await;
        log::debug!("[shard {}] connection ended: {outcome:?}", hub.id);
        match outcome {
            Outcome::Fatal(code) => {
                log::error!(
                    "[shard {}] Discord closed with fatal code {code}: the shard is stopped. Check the token, intents and shard settings.",
                    hub.id
                );
                hub.set_status(ShardStatus::Failed(code));
                return;
            }
            Outcome::Stopped => {
                log::info!("[shard {}] stopped; session kept resumable", hub.id);
                hub.set_status(ShardStatus::Connecting);
                return;
            }
            Outcome::Resume => hub.set_status(ShardStatus::Connecting),
            Outcome::Identify(delay) => {
                hub.set_session(None);
                hub.set_status(ShardStatus::Connecting);
                glommio::timer::sleep(delay).await;
            }
            Outcome::ConnectFailed => {
                hub.set_status(ShardStatus::Connecting);
                let delay = backoff.next();
                log::warn!("[shard {}] reconnecting in {:.1}s", hub.id, delay.as_secs_f64());
                glommio::timer::sleep(delay).await;
            }
        }
    }
}

#[derive(Deserialize)]
struct ReadySession {
    session_id: String,
    resume_gateway_url: String,
}

enum Wake<'a> {
    Message(std::io::Result<Option<Incoming<'a>>>),
    /// The hub's bell: a command, or the heartbeat falling due.
    Bell,
    /// A command waiting for the send limiter may go now.
    Limiter,
}

async fn connect_once(
    hub: &Rc<ShardHub>,
    shared: &Shared,
    pending: &mut VecDeque<Vec<u8>>,
    backoff: &mut Backoff,
) -> Outcome {
    let session = hub.session();
    let url = match &session {
        Some(s) => {
            hub.set_status(ShardStatus::Resuming);
            s.resume_url.clone()
        }
        None => {
            hub.set_status(ShardStatus::Identifying);
            shared.identify_queue.wait_turn(hub.id).await;
            shared.gateway_url.clone()
        }
    };
    log::debug!("[shard {}] connecting to {url}", hub.id);
    if hub.metrics.identifies.get() + hub.metrics.resumes.get() > 0 {
        hub.metrics.reconnects.inc();
    }
    let mut ws = match connection::connect(&url, shared.config.upstream_compression).await {
        Ok(ws) => ws,
        Err(e) => {
            log::warn!("[shard {}] cannot connect to {url}: {e}", hub.id);
            return Outcome::ConnectFailed;
        }
    };
    ws.count_compressed_bytes(hub.metrics.upstream_compressed_bytes.clone());
    let hello = future::or(wait_hello(&mut ws), async {
        glommio::timer::sleep(HELLO_TIMEOUT).await;
        HelloResult::Failed
    })
    .await;
    let interval = match hello {
        HelloResult::Interval(d) => d,
        HelloResult::Closed(code) => return outcome_for_close(hub.id, code, session.is_some()),
        HelloResult::Failed => {
            log::warn!("[shard {}] no Hello from {url}", hub.id);
            return Outcome::ConnectFailed;
        }
    };

    let mut limiter = SendLimiter::default();
    let first = match &session {
        Some(s) => {
            log::info!("[shard {}] resuming session at seq {}", hub.id, s.seq);
            hub.metrics.resumes.inc();
            let resume = twilight_model::gateway::payload::outgoing::Resume::new(
                s.seq,
                s.session_id.as_str(),
                shared.config.token.as_str(),
            );
            serde_json::to_value(resume).expect("a Resume serialises")
        }
        None => {
            log::info!("[shard {}] identifying", hub.id);
            hub.metrics.identifies.inc();
            identify_payload(shared, hub.id, hub.routing.borrow().presence())
        }
    };
    limiter.record(Instant::now());
    if ws.send_text(&first.to_string()).await.is_err() {
        return Outcome::ConnectFailed;
    }

    let yield_depth = (shared.config.backpressure / 8).max(1);
    let pause_depth = (shared.config.backpressure / 2).max(1);
    // Cleared when a pause did not let the slowest client catch up: it is
    // then left to reach `backpressure` and be closed, not waited for again.
    let mut may_pause = true;
    let mut relayed: u64 = 0;
    let mut arena = PayloadArena::default();
    let mut heartbeat = Heartbeat::new(interval);
    // The heartbeat's own task rings the hub's bell when it falls due, so
    // this loop arms no timer per relayed dispatch. It ends with the connection.
    let _ticker = glommio::spawn_local(heartbeat_ticker(hub.clone(), heartbeat.due.clone(), heartbeat.beaten.clone()));
    loop {
        // Send whatever the limiter allows.
        if !pending.is_empty() {
            let now = Instant::now();
            while let Some(cmd) = pending.front() {
                if !limiter.try_command(now) {
                    break;
                }
                let text = String::from_utf8_lossy(cmd).into_owned();
                pending.pop_front();
                if ws.send_text(&text).await.is_err() {
                    return reconnect_outcome(hub);
                }
            }
        }
        let limited = if pending.is_empty() { None } else { limiter.next_free() };
        let wake = future::or(
            async { Wake::Message(ws.next().await) },
            future::or(
                async {
                    hub.bell.wait().await;
                    Wake::Bell
                },
                async {
                    match limited {
                        Some(t) => glommio::timer::sleep(t.saturating_duration_since(Instant::now())).await,
                        None => future::pending::<()>().await,
                    }
                    Wake::Limiter
                },
            ),
        )
        .await;
        match wake {
            Wake::Bell => {
                if let Some(outcome) = chores(hub, &mut ws, pending, &mut heartbeat, &mut limiter).await {
                    return outcome;
                }
            }
            Wake::Limiter => {}
            Wake::Message(Ok(Some(Incoming::Text(text)))) => {
                heartbeat.heard();
                // A burst from Discord is always readable, so this loop would
                // never yield on its own: give client writers the core when a
                // queue builds up (and regularly anyway), so fast clients keep
                // up instead of being closed for lagging.
                relayed += 1;
                let deepest = hub.take_deepest_queue();
                if deepest >= pause_depth && may_pause {
                    // Never past a heartbeat that falls due.
                    let until = (Instant::now() + PAUSE_BUDGET).min(heartbeat.next());
                    may_pause = wait_for_writers(hub, pause_depth / 2, until).await;
                    if !may_pause {
                        log::debug!("[shard {}] a client stayed {pause_depth}+ behind; reading on", hub.id);
                    }
                } else if deepest > yield_depth || relayed.is_multiple_of(YIELD_EVERY) {
                    if deepest <= pause_depth / 2 {
                        may_pause = true;
                    }
                    futures_lite::future::yield_now().await;
                }
                // One copy out of the reader's buffer (see `Dispatch`).
                let payload = arena.copy(text.as_bytes());
                match handle_payload(hub, payload, backoff) {
                    Step::Continue => {}
                    Step::HeartbeatNow => {
                        if send_heartbeat(hub, &mut ws, &mut limiter).await.is_err() {
                            return reconnect_outcome(hub);
                        }
                    }
                    Step::Ack => heartbeat.acked(hub),
                    Step::End(outcome) => {
                        close_for_resume(&mut ws).await;
                        return outcome;
                    }
                }
                // Discord's side may never run dry under load: heartbeats
                // and client commands must not wait for a quiet moment.
                if hub.bell.take_ring() {
                    if let Some(outcome) = chores(hub, &mut ws, pending, &mut heartbeat, &mut limiter).await {
                        return outcome;
                    }
                }
            }
            Wake::Message(Ok(Some(Incoming::Close(code, _)))) => {
                log::warn!("[shard {}] Discord closed the connection with code {code}", hub.id);
                return outcome_for_close(hub.id, code, hub.session().is_some());
            }
            Wake::Message(Ok(Some(Incoming::Binary(_)))) => {
                log::warn!("[shard {}] unexpected binary frame from Discord ignored", hub.id);
            }
            Wake::Message(Err(e)) => {
                log::warn!("[shard {}] connection error: {e}", hub.id);
                return reconnect_outcome(hub);
            }
            Wake::Message(Ok(None)) => {
                log::warn!("[shard {}] connection closed without a close frame", hub.id);
                return reconnect_outcome(hub);
            }
        }
    }
}

/// Copies payloads out of the websocket reader into shared chunks: one
/// allocation per chunk instead of one per dispatch (the reader's own buffer
/// is not kept, see `Dispatch`). A chunk lives while any dispatch in it is
/// retained (replay buffer, client queues); consecutive dispatches share it.
#[derive(Default)]
struct PayloadArena {
    chunk: bytes::BytesMut,
}

impl PayloadArena {
    /// A quiet shard's chunk costs only the pages its dispatches filled.
    const CHUNK: usize = 64 * 1024;

    fn copy(&mut self, payload: &[u8]) -> bytes::Bytes {
        if self.chunk.capacity() < payload.len() {
            self.chunk = bytes::BytesMut::with_capacity(Self::CHUNK.max(payload.len()));
        }
        self.chunk.extend_from_slice(payload);
        self.chunk.split().freeze()
    }
}

/// The shard's heartbeat to Discord.
///
/// A connection is zombied when Discord stops answering: a heartbeat goes
/// unacknowledged for a whole interval *and nothing else arrived either*.
/// An ACK only comes after everything Discord sent before it; when the
/// shard is behind in reading (its core was busy, or Discord sent a lot),
/// the ACK is still in the socket while dispatches keep arriving, and
/// reconnecting then would throw away a live session. So while frames keep
/// arriving the shard heartbeats on and waits for the ACK, up to
/// [`Heartbeat::ZOMBIE_INTERVALS`] intervals.
struct Heartbeat {
    interval: Duration,
    /// When the next one is due (the first at a random point of the
    /// interval, as Discord asks); shared with the ticker task.
    due: Rc<Cell<Instant>>,
    /// Rung when `due` moves on, for the ticker.
    beaten: Rc<Doorbell>,
    acked: bool,
    /// When the oldest heartbeat not yet acknowledged was sent.
    sent_at: Option<Instant>,
    /// Whether any frame arrived since the last heartbeat was sent.
    heard: bool,
}

impl Heartbeat {
    /// Intervals without an ACK after which the connection is zombied even
    /// though frames keep arriving.
    const ZOMBIE_INTERVALS: u32 = 5;

    fn new(interval: Duration) -> Self {
        Self {
            interval,
            due: Rc::new(Cell::new(Instant::now() + interval.mul_f64(fastrand::f64()))),
            beaten: Rc::default(),
            acked: true,
            sent_at: None,
            heard: false,
        }
    }

    /// Records that a frame arrived: Discord is still sending.
    fn heard(&mut self) {
        self.heard = true;
    }

    /// Sends the heartbeat if it is due; the outcome if the connection must end
    /// (zombied: see [`Heartbeat`]).
    async fn beat_if_due(
        &mut self,
        hub: &ShardHub,
        ws: &mut GatewaySocket,
        limiter: &mut SendLimiter,
    ) -> Option<Outcome> {
        let now = Instant::now();
        if now < self.next() {
            return None;
        }
        if !self.acked {
            let waited = self.sent_at.map_or(Duration::ZERO, |t| now.saturating_duration_since(t));
            if !self.heard || waited >= self.interval * Self::ZOMBIE_INTERVALS {
                log::warn!(
                    "[shard {}] no heartbeat ACK for {:.1}s{}: zombied connection, reconnecting",
                    hub.id,
                    waited.as_secs_f64(),
                    if self.heard { "" } else { " and nothing else received" }
                );
                close_for_resume(ws).await;
                return Some(Outcome::Resume);
            }
            log::debug!(
                "[shard {}] heartbeat ACK not read yet after {:.1}s, but Discord is still sending: its ACK is \
                 behind what is not read yet",
                hub.id,
                waited.as_secs_f64()
            );
        }
        if send_heartbeat(hub, ws, limiter).await.is_err() {
            return Some(reconnect_outcome(hub));
        }
        if self.acked {
            self.sent_at = Some(now);
        }
        self.acked = false;
        self.heard = false;
        self.due.set(now + self.interval);
        self.beaten.ring();
        None
    }

    /// When the next heartbeat is due.
    fn next(&self) -> Instant {
        self.due.get()
    }

    fn acked(&mut self, hub: &ShardHub) {
        self.acked = true;
        if let Some(t) = self.sent_at.take() {
            hub.metrics.latency.observe(t.elapsed().as_secs_f64());
        }
    }
}

/// What the bell asks for: the heartbeat if it is due, and the commands
/// queued in the hub. The outcome if the connection must end.
async fn chores(
    hub: &ShardHub,
    ws: &mut GatewaySocket,
    pending: &mut VecDeque<Vec<u8>>,
    heartbeat: &mut Heartbeat,
    limiter: &mut SendLimiter,
) -> Option<Outcome> {
    if let Some(outcome) = heartbeat.beat_if_due(hub, ws, limiter).await {
        return Some(outcome);
    }
    while let Some(cmd) = hub.next_command() {
        if let Some(outcome) = on_command(hub, ws, pending, cmd).await {
            return Some(outcome);
        }
    }
    None
}

/// Rings the hub's bell whenever the heartbeat falls due, then waits until
/// the shard task has moved the due time on.
async fn heartbeat_ticker(hub: Rc<ShardHub>, due: Rc<Cell<Instant>>, beaten: Rc<Doorbell>) {
    loop {
        let at = due.get();
        let now = Instant::now();
        if at > now {
            glommio::timer::sleep(at - now).await;
            continue;
        }
        hub.bell.ring();
        beaten.wait().await;
    }
}

/// Acts on a command from the hub: `Stop` ends the connection resumably (the
/// outcome is returned); a payload for Discord waits for the send limiter,
/// the oldest dropped beyond the limit.
async fn on_command(
    hub: &ShardHub,
    ws: &mut GatewaySocket,
    pending: &mut VecDeque<Vec<u8>>,
    cmd: UpstreamCommand,
) -> Option<Outcome> {
    match cmd {
        UpstreamCommand::Stop => {
            close_for_resume(ws).await;
            Some(Outcome::Stopped)
        }
        UpstreamCommand::Payload(cmd) => {
            if pending.len() >= MAX_PENDING_COMMANDS {
                log::warn!("[shard {}] command queue full; dropping the oldest command", hub.id);
                pending.pop_front();
            }
            pending.push_back(cmd);
            None
        }
    }
}

/// Stops reading from Discord until every client queue of the shard is at
/// most `target` deep, at the latest until `until`. A burst then reaches clients
/// that are fast but momentarily behind (Discord's side of the socket holds
/// the rest) instead of closing them for lag; a client that does not catch
/// up in time is left to the `backpressure` limit. Returns whether the
/// queues drained.
async fn wait_for_writers(hub: &ShardHub, target: usize, until: Instant) -> bool {
    loop {
        futures_lite::future::yield_now().await;
        if hub.deepest_queue_now() <= target {
            return true;
        }
        if Instant::now() >= until {
            return false;
        }
        glommio::timer::sleep(Duration::from_micros(500)).await;
    }
}

enum HelloResult {
    Interval(Duration),
    Closed(u16),
    Failed,
}

async fn wait_hello(ws: &mut GatewaySocket) -> HelloResult {
    #[derive(Deserialize)]
    struct Payload {
        op: u8,
        d: Option<twilight_model::gateway::payload::incoming::Hello>,
    }
    loop {
        match ws.next().await {
            Ok(Some(Incoming::Text(text))) => match serde_json::from_str::<Payload>(text) {
                Ok(Payload { op: op::HELLO, d: Some(hello) }) => {
                    return HelloResult::Interval(Duration::from_millis(hello.heartbeat_interval.max(100)))
                }
                Ok(_) => {}
                Err(_) => return HelloResult::Failed,
            },
            Ok(Some(Incoming::Close(code, _))) => return HelloResult::Closed(code),
            Ok(Some(Incoming::Binary(_))) => {}
            _ => return HelloResult::Failed,
        }
    }
}

fn reconnect_outcome(hub: &ShardHub) -> Outcome {
    if hub.session().is_some() {
        Outcome::Resume
    } else {
        Outcome::ConnectFailed
    }
}

fn outcome_for_close(shard: u32, code: u16, has_session: bool) -> Outcome {
    match reconnect_for(code) {
        Reconnect::Fatal => Outcome::Fatal(code),
        Reconnect::Identify => {
            log::info!("[shard {shard}] session ended by close code {code}; identifying again");
            Outcome::Identify(Duration::from_millis(0))
        }
        Reconnect::Resume if has_session => Outcome::Resume,
        Reconnect::Resume => Outcome::ConnectFailed,
    }
}

enum Step {
    Continue,
    HeartbeatNow,
    Ack,
    End(Outcome),
}

/// Handles one payload from Discord. This is the relay's hot path: for
/// events the cache does not need, only the top level is scanned.
fn handle_payload(hub: &Rc<ShardHub>, payload: bytes::Bytes, backoff: &mut Backoff) -> Step {
    let text: &[u8] = &payload;
    let fields = match scan::scan_relay(text) {
        Ok(f) => f,
        Err(e) => {
            log::warn!("[shard {}] undecodable payload from Discord ({e}); ignored", hub.id);
            return Step::Continue;
        }
    };
    hub.metrics.upstream_bytes.inc_by(text.len() as u64);
    match fields.op {
        Some(op::DISPATCH) => {
            if let Some(name) = fields.event_name(text) {
                hub.metrics.event(name);
            }
            if let Some(seq) = fields.seq(text) {
                hub.set_seq(seq);
            }
            let Some(t) = fields.event_name(text) else { return Step::Continue };
            // Events that are parsed need `d` exactly: scan them in full.
            // The others are relayed as they are, `d` never looked at.
            let parsed = is_cache_event(t) || is_routed_event(t);
            let exact;
            let fields = if parsed {
                exact = scan::scan(text).unwrap_or_else(|_| fields.clone());
                &exact
            } else {
                &fields
            };
            let d = match (parsed, fields.d.clone()) {
                (true, Some(r)) => std::str::from_utf8(&text[r]).unwrap_or("null"),
                _ => "null",
            };
            match t {
                b"READY" => {
                    if let Ok(ready) = serde_json::from_str::<ReadySession>(d) {
                        hub.set_session(Some(UpstreamSession {
                            session_id: ready.session_id,
                            seq: fields.seq(text).unwrap_or(0),
                            resume_url: ready.resume_gateway_url,
                        }));
                    }
                    let gone = hub.cache.borrow_mut().apply(t, d);
                    for id in gone {
                        let body = format!("{{\"id\":\"{id}\"}}");
                        hub.publish(Dispatch::build("GUILD_DELETE", body.as_bytes()));
                    }
                    hub.on_upstream_ready();
                    hub.set_status(ShardStatus::Ready);
                    backoff.reset();
                    log::info!("[shard {}] READY with {} guilds", hub.id, hub.cache.borrow().guild_count());
                }
                b"RESUMED" => {
                    hub.set_status(ShardStatus::Ready);
                    backoff.reset();
                    log::info!("[shard {}] RESUMED", hub.id);
                }
                _ => {
                    if is_cache_event(t) {
                        hub.cache.borrow_mut().apply(t, d);
                    }
                    if let Some(s) = fields.s.clone() {
                        let route = route_of(hub, t, d);
                        let name = matches!(route, Route::Session(_, Some(_))).then(|| String::from_utf8_lossy(t));
                        let name = name.map(|n| n.into_owned());
                        // The payload moves into the dispatch: no second handle on its chunk.
                        relay(hub, route, name.as_deref(), Dispatch::from_parts(payload, s));
                    }
                }
            }
            Step::Continue
        }
        Some(op::HEARTBEAT) => Step::HeartbeatNow,
        Some(op::HEARTBEAT_ACK) => Step::Ack,
        Some(op::RECONNECT) => {
            log::info!("[shard {}] Discord asked to reconnect", hub.id);
            Step::End(Outcome::Resume)
        }
        Some(op::INVALID_SESSION) => {
            hub.metrics.invalid_sessions.inc();
            let resumable = fields.d.map(|r| &text[r]) == Some(b"true");
            if resumable && hub.session().is_some() {
                log::info!("[shard {}] invalid session (resumable)", hub.id);
                Step::End(Outcome::Resume)
            } else {
                let delay = Duration::from_millis(1000 + fastrand::u64(0..4000));
                log::info!("[shard {}] invalid session; identifying again in {:.1}s", hub.id, delay.as_secs_f64());
                hub.set_session(None);
                Step::End(Outcome::Identify(delay))
            }
        }
        _ => Step::Continue,
    }
}

/// Events whose `d` the routing reads.
fn is_routed_event(t: &[u8]) -> bool {
    matches!(t, b"GUILD_MEMBERS_CHUNK" | b"VOICE_STATE_UPDATE" | b"VOICE_SERVER_UPDATE" | b"READY" | b"RESUMED")
}

/// Where a dispatch goes: to the one client it belongs to when it is a reply.
fn route_of(hub: &ShardHub, t: &[u8], d: &str) -> Route {
    match t {
        b"GUILD_MEMBERS_CHUNK" => hub.routing.borrow_mut().member_chunk(d),
        b"VOICE_STATE_UPDATE" => {
            let bot = hub.cache.borrow().bot_id();
            hub.routing.borrow_mut().voice_state(d, bot)
        }
        b"VOICE_SERVER_UPDATE" => hub.routing.borrow_mut().voice_server(d),
        _ => Route::Broadcast,
    }
}

/// Publishes a dispatch along its route; `name` is its event name when the
/// route rewrites its `d`.
fn relay(hub: &ShardHub, route: Route, name: Option<&str>, dispatch: Dispatch) {
    match route {
        Route::Session(num, rewritten) if hub.session_known(num) => {
            let dispatch = match rewritten {
                Some(new_d) => Dispatch::build(name.unwrap_or("DISPATCH"), new_d.as_bytes()),
                None => dispatch,
            };
            hub.publish(dispatch.for_session(num));
        }
        _ => {
            hub.publish(dispatch);
        }
    }
}

async fn send_heartbeat(hub: &ShardHub, ws: &mut GatewaySocket, limiter: &mut SendLimiter) -> Result<(), ()> {
    let seq = hub.session().map(|s| s.seq);
    let heartbeat = twilight_model::gateway::payload::outgoing::Heartbeat::new(seq);
    let payload = serde_json::to_string(&heartbeat).expect("a Heartbeat serialises");
    limiter.record(Instant::now());
    ws.send_text(&payload).await.map_err(|_| ())
}

/// Closes with a non-1000 code so Discord keeps the session resumable.
async fn close_for_resume(ws: &mut GatewaySocket) {
    let _ = glommio::timer::timeout(Duration::from_secs(2), async {
        let _ = ws.close(4000, "reconnecting").await;
        Ok(())
    })
    .await;
}

/// The Identify payload for `shard`, with the configured presence.
/// A presence a client set (op 3) replaces the configured one, so that a
/// re-identify keeps what the bot chose.
pub fn identify_payload(shared: &Shared, shard: u32, client_presence: Option<&str>) -> serde_json::Value {
    let config = &shared.config;
    let mut d = serde_json::json!({
        "token": config.token,
        "properties": {"os": std::env::consts::OS, "browser": "gateway-proxy", "device": "gateway-proxy"},
        "intents": config.intents,
        "shard": [shard, shared.total_shards],
        "large_threshold": 250,
        "compress": false,
    });
    if let Some(presence) = client_presence.and_then(|p| serde_json::from_str::<serde_json::Value>(p).ok()) {
        d["presence"] = presence;
    } else if let Some(presence) = config_presence(config, shard) {
        d["presence"] = presence;
    }
    serde_json::json!({"op": op::IDENTIFY, "d": d})
}

/// The presence the config asks for (`activity`, `status`), if any.
pub fn config_presence(config: &crate::config::Config, shard: u32) -> Option<serde_json::Value> {
    if config.activity.is_none() && config.status == "online" {
        return None;
    }
    let activities: Vec<serde_json::Value> = config
        .activity
        .iter()
        .map(|a| {
            let mut v = serde_json::json!({"name": a.name.replace("{{shard}}", &shard.to_string()), "type": a.kind});
            if let Some(url) = &a.url {
                v["url"] = url.clone().into();
            }
            if let Some(state) = &a.state {
                v["state"] = state.replace("{{shard}}", &shard.to_string()).into();
            }
            v
        })
        .collect();
    Some(serde_json::json!({"since": null, "activities": activities, "status": config.status, "afk": false}))
}
