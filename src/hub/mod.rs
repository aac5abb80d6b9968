//! A shard's meeting point on its core: the upstream task publishes into it,
//! client connections subscribe to it. Everything here is single-threaded
//! (`Rc`/`RefCell` on one glommio executor), so there are no locks.

pub mod replay;
pub mod routing;

use crate::{
    cache::{GuildStatus, ShardCache},
    config::Config,
    downstream::client_view,
    downstream::{
        outgoing::Outgoing,
        queue::{ClientQueue, PushError},
        session::{ClientSession, Position},
    },
    protocol::{dispatch::Dispatch, intents::ClientIntents},
};
use replay::{ReplayBuffer, ReplayLedger, REPLAY_TAIL};
use routing::Routing;
use std::{
    cell::{Cell, RefCell},
    collections::HashMap,
    os::fd::RawFd,
    rc::Rc,
    time::{Duration, Instant},
};

/// How long after READY a guild still missing its GUILD_CREATE is reported
/// to new clients as unavailable rather than left for the live stream.
pub const GUILD_LOAD_GRACE: Duration = Duration::from_secs(15);
/// Close code for a client that fell behind: resumable, so it resumes from the replay buffer.
pub const LAGGING_CLOSE: u16 = 4000;

/// Where the upstream connection of a shard stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShardStatus {
    /// Not yet connected, or waiting to reconnect.
    Connecting,
    /// Waiting for an identify turn or for READY.
    Identifying,
    /// Resuming after a disconnect.
    Resuming,
    /// READY or RESUMED seen: events flow.
    Ready,
    /// Stopped for good by a fatal close code.
    Failed(u16),
}

impl ShardStatus {
    /// The value of the `shard_status` gauge.
    pub fn code(&self) -> i64 {
        match self {
            Self::Connecting => 0,
            Self::Identifying => 1,
            Self::Resuming => 2,
            Self::Ready => 3,
            Self::Failed(_) => 4,
        }
    }

    /// A name for `/ready`.
    pub fn name_of(code: i64) -> &'static str {
        ["connecting", "identifying", "resuming", "ready", "failed"].get(code as usize).copied().unwrap_or("unknown")
    }
}

/// The upstream session, as needed to resume it.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct UpstreamSession {
    /// Discord's session id.
    pub session_id: String,
    /// Last sequence number received.
    pub seq: u64,
    /// Where to resume.
    pub resume_url: String,
}

/// What the shard task is asked to send or do.
#[derive(Debug)]
pub enum UpstreamCommand {
    /// A client command payload for Discord.
    Payload(Vec<u8>),
    /// Close the connection with a resumable code and stop (proxy shutdown).
    Stop,
}

/// A client connection subscribed to a shard's live stream.
pub struct Subscriber {
    /// Connection id, unique in the process.
    pub id: u64,
    /// Session the connection serves.
    pub session: u64,
    /// Queue into the client's writer; bounded by `backpressure`.
    pub queue: Rc<ClientQueue>,
    /// The client's socket, shut down when it falls hopelessly behind.
    pub fd: RawFd,
    /// The intents it is served with (`None`: everything, nothing to check).
    pub intents: Option<ClientIntents>,
    /// The session, whose position moves past what it does not receive.
    pub client: Rc<ClientSession>,
    /// The session generation this connection serves.
    pub generation: u64,
}

/// Why a client RESUME was refused (answered with op 9 `d: false`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResumeError {
    /// No such session (never existed, expired, or evicted).
    UnknownSession,
    /// The sequence is beyond what the session was sent.
    InvalidSeq,
    /// What the client missed is no longer in the replay buffer.
    TooOld,
}

/// A client attached to its session: what its writer needs.
pub struct Attached {
    /// The client session.
    pub session: Rc<ClientSession>,
    /// The session generation this connection serves.
    pub generation: u64,
    /// What to send before live events: READY and GUILD_CREATEs, or the missed dispatches and RESUMED.
    pub first: Vec<Outgoing>,
}

/// A shard's state on its core.
pub struct ShardHub {
    /// Shard id.
    pub id: u32,
    /// Total shard count.
    pub total: u32,
    status: RefCell<ShardStatus>,
    /// Guild state.
    pub cache: RefCell<ShardCache>,
    subscribers: RefCell<Vec<Subscriber>>,
    session: RefCell<Option<UpstreamSession>>,
    ready_at: Cell<Option<Instant>>,
    commands: RefCell<std::collections::VecDeque<UpstreamCommand>>,
    /// Rung when the shard task has something to do besides reading
    /// Discord: a command to send, or its heartbeat falling due.
    pub bell: crate::runtime::doorbell::Doorbell,
    status_waiters: RefCell<Vec<futures_channel::oneshot::Sender<()>>>,
    replay: Rc<RefCell<ReplayBuffer>>,
    ledger: Rc<ReplayLedger>,
    /// Dispatches published since the buffer was last trimmed to what sessions need.
    untrimmed: Cell<u32>,
    sessions: RefCell<HashMap<String, Rc<ClientSession>>>,
    max_sessions: usize,
    /// Replies routed to the client that asked, and the bot's own state it set.
    pub routing: RefCell<Routing>,
    /// Prometheus handles.
    pub metrics: crate::metrics::ShardMetrics,
    deepest_queue: Cell<usize>,
}

impl ShardHub {
    /// A hub for shard `id` of `total`, whose replay buffer draws on `ledger` (its core's budget).
    pub fn new(id: u32, total: u32, config: &Config, ledger: &Rc<ReplayLedger>) -> Rc<Self> {
        let replay = Rc::new(RefCell::new(ReplayBuffer::new(config.replay_buffer, config.replay_buffer_bytes)));
        ledger.register(&replay);
        Rc::new(Self {
            id,
            total,
            status: RefCell::new(ShardStatus::Connecting),
            cache: RefCell::new(ShardCache::new(config.cache.clone())),
            subscribers: RefCell::default(),
            session: RefCell::default(),
            ready_at: Cell::new(None),
            commands: RefCell::default(),
            bell: crate::runtime::doorbell::Doorbell::default(),
            status_waiters: RefCell::default(),
            replay,
            ledger: ledger.clone(),
            untrimmed: Cell::new(0),
            sessions: RefCell::default(),
            max_sessions: config.max_sessions,
            routing: RefCell::default(),
            metrics: crate::metrics::ShardMetrics::new(id),
            deepest_queue: Cell::new(0),
        })
    }

    /// A hub restored from the state file: cache, upstream session (so the
    /// shard resumes instead of identifying), replay buffer, client sessions.
    pub fn restore(
        saved: crate::state_file::SavedShard,
        total: u32,
        config: &Config,
        ledger: &Rc<ReplayLedger>,
    ) -> Rc<Self> {
        let hub = Self::new(saved.id, total, config, ledger);
        let mut cache = saved.cache;
        cache.set_flags(config.cache.clone());
        *hub.cache.borrow_mut() = cache;
        hub.set_session(saved.session);
        let events = saved
            .replay
            .into_iter()
            .map(|d| {
                let mut dispatch = Dispatch::from_parts(d.raw.into_bytes(), d.seq.0..d.seq.1);
                if let Some(t) = d.target {
                    dispatch = dispatch.for_session(t);
                }
                dispatch
            })
            .collect();
        hub.replay.borrow_mut().restore(saved.replay_first, events);
        ledger.enforce();
        for s in saved.sessions {
            // Served as the proxy's intents now allow (None: it asked for all of them).
            let intents = s.intents.and_then(|bits| ClientIntents::for_client(bits, config.intents));
            hub.store_session(Rc::new(ClientSession::restored(s.num, s.id, saved.id, s.position, intents)));
        }
        *hub.routing.borrow_mut() = Routing::import(saved.routing);
        hub
    }

    /// Everything a restart needs, taken at shutdown.
    pub fn export(&self) -> crate::state_file::SavedShard {
        use crate::state_file::{SavedDispatch, SavedSession, SavedShard};
        let replay = self.replay.borrow();
        SavedShard {
            id: self.id,
            session: self.session(),
            cache: std::mem::take(&mut *self.cache.borrow_mut()),
            replay_first: replay.first_index(),
            replay: replay
                .since(replay.first_index())
                .map(|d| SavedDispatch {
                    raw: String::from_utf8_lossy(d.raw()).into_owned(),
                    seq: (d.seq_range().start, d.seq_range().end),
                    target: d.target(),
                })
                .collect(),
            sessions: self
                .sessions
                .borrow()
                .values()
                .map(|s| SavedSession {
                    num: s.num,
                    id: s.id.clone(),
                    position: s.position(),
                    intents: s.intents.map(ClientIntents::bits),
                })
                .collect(),
            routing: self.routing.borrow().export(),
        }
    }

    /// The current status.
    pub fn status(&self) -> ShardStatus {
        self.status.borrow().clone()
    }

    /// Sets the status and wakes whoever waits for a change.
    pub fn set_status(&self, status: ShardStatus) {
        if status == ShardStatus::Ready && self.ready_at.get().is_none() {
            self.ready_at.set(Some(Instant::now()));
        }
        self.metrics.status.set(status.code());
        *self.status.borrow_mut() = status;
        for w in self.status_waiters.borrow_mut().drain(..) {
            let _ = w.send(());
        }
    }

    /// Resolves at the next status change.
    pub async fn status_changed(&self) {
        let (tx, rx) = futures_channel::oneshot::channel();
        self.status_waiters.borrow_mut().retain(|w| !w.is_canceled());
        self.status_waiters.borrow_mut().push(tx);
        let _ = rx.await;
    }

    /// Whether the cache holds a READY, so clients can be served.
    pub fn has_ready(&self) -> bool {
        self.cache.borrow().user().is_some()
    }

    /// Records a new upstream READY (the session was re-identified).
    pub fn on_upstream_ready(&self) {
        self.ready_at.set(Some(Instant::now()));
    }

    /// The upstream session, if one can be resumed.
    pub fn session(&self) -> Option<UpstreamSession> {
        self.session.borrow().clone()
    }

    /// Replaces the upstream session.
    pub fn set_session(&self, session: Option<UpstreamSession>) {
        *self.session.borrow_mut() = session;
    }

    /// Advances the upstream sequence.
    pub fn set_seq(&self, seq: u64) {
        if let Some(s) = self.session.borrow_mut().as_mut() {
            s.seq = s.seq.max(seq);
        }
    }

    /// The next command for the shard task, oldest first.
    pub fn next_command(&self) -> Option<UpstreamCommand> {
        self.commands.borrow_mut().pop_front()
    }

    /// Queues a command (op 3, 4, 8, 31) for Discord.
    pub fn send_command(&self, payload: Vec<u8>) {
        // Unbounded here: the shard task moves commands into its own bounded
        // queue, which the upstream rate limiter drains at Discord's pace.
        self.commands.borrow_mut().push_back(UpstreamCommand::Payload(payload));
        self.bell.ring();
    }

    /// Asks the shard task to close its connection resumably and stop.
    pub fn request_stop(&self) {
        self.commands.borrow_mut().push_back(UpstreamCommand::Stop);
        self.bell.ring();
    }

    /// Closes every client with a resumable code (the proxy is restarting).
    pub fn close_clients(&self, reason: &str) {
        for sub in self.subscribers.borrow_mut().drain(..) {
            sub.queue.abort(LAGGING_CLOSE, reason, sub.fd);
        }
    }

    /// Replay buffer occupancy: (events, bytes).
    pub fn replay_occupancy(&self) -> (usize, usize) {
        let r = self.replay.borrow();
        (r.len(), r.bytes())
    }

    /// Stores a dispatch in the replay buffer and sends it to every
    /// subscriber that may see it. Returns the deepest subscriber queue, so
    /// the shard task can let writers catch up before reading on.
    pub fn publish(&self, dispatch: Dispatch) -> usize {
        // With no client session nothing can resume into the buffer: keep nothing
        // (this drops a fresh shard's GUILD_CREATE burst instead of holding it).
        let dispatch = if self.sessions.borrow().is_empty() {
            self.replay.borrow_mut().push_unretained(dispatch)
        } else {
            let dispatch = self.replay.borrow_mut().push(dispatch);
            self.keep_only_what_sessions_need();
            dispatch
        };
        let mut lagged = 0;
        let mut deepest = 0;
        let mut bot = None;
        let mut cuts: Vec<(client_view::Cut, Rc<Dispatch>)> = Vec::new();
        self.subscribers.borrow_mut().retain(|sub| {
            if !dispatch.visible_to(sub.session) {
                return true;
            }
            let item = match sub.intents {
                None => dispatch.clone(),
                Some(intents) => {
                    let bot = *bot.get_or_insert_with(|| self.cache.borrow().bot_id());
                    if !dispatch.allowed_by(intents, bot) {
                        // Nothing to replay to it either, once its writer has
                        // everything before: the replay floor does not stall
                        // behind events it never gets.
                        if let Some(index) = dispatch.index() {
                            if sub.queue.writer_waiting() {
                                sub.client.skip_past(sub.generation, index);
                            }
                        }
                        return true;
                    }
                    match client_view::cut_for(&dispatch, intents) {
                        None => dispatch.clone(),
                        Some(cut) => match cuts.iter().find(|(c, _)| *c == cut) {
                            Some((_, done)) => done.clone(),
                            None => {
                                let done = client_view::apply(&dispatch, cut, bot);
                                cuts.push((cut, done.clone()));
                                done
                            }
                        },
                    }
                }
            };
            match sub.queue.push(Outgoing::Dispatch(item)) {
                Ok(()) => {
                    deepest = deepest.max(sub.queue.len());
                    true
                }
                Err(PushError::Full) => {
                    log::warn!("[shard {}] client {} fell behind; closing it so it resumes", self.id, sub.id);
                    sub.queue.abort(LAGGING_CLOSE, "client fell behind: resume to catch up", sub.fd);
                    lagged += 1;
                    false
                }
                Err(PushError::Closed) => false,
            }
        });
        self.metrics.clients_lagged.inc_by(lagged);
        self.deepest_queue.set(self.deepest_queue.get().max(deepest));
        deepest
    }

    /// Drops what no session can need any more (every few dispatches: the
    /// floor moves slowly), then holds the core to its replay budget (at
    /// once when over it; the ledger's bookkeeping every few dispatches).
    fn keep_only_what_sessions_need(&self) {
        let n = self.untrimmed.get() + 1;
        let due = n >= 16;
        if due {
            self.untrimmed.set(0);
            // A session needs what it was not sent yet, and a tail of what it
            // was sent that its connection may not have delivered.
            let floor = self.sessions.borrow().values().map(|s| s.position().resume_from).min();
            if let Some(floor) = floor {
                self.replay.borrow_mut().trim_before(floor.saturating_sub(REPLAY_TAIL));
            }
        } else {
            self.untrimmed.set(n);
        }
        if !due && !self.ledger.over_budget() {
            return;
        }
        let dropped = self.ledger.enforce();
        if dropped > 0 {
            self.metrics.replay_evicted.inc_by(dropped);
            let total = self.ledger.evicted();
            // Once, then at every power of two, so a sustained squeeze is visible without flooding.
            if total == dropped || (total & (total - 1)) == 0 {
                log::warn!(
                    "replay memory of this core is full ({} MiB): dropping its oldest retained dispatches \
                     ({total} so far); a RESUME that needs them gets op 9. Raise `replay_memory` to keep more",
                    self.ledger.bytes() >> 20
                );
            }
        }
    }

    /// The deepest subscriber queue seen by `publish` since the last call.
    pub fn take_deepest_queue(&self) -> usize {
        self.deepest_queue.replace(0)
    }

    /// The deepest subscriber queue right now.
    pub fn deepest_queue_now(&self) -> usize {
        self.subscribers.borrow().iter().map(|s| s.queue.len()).max().unwrap_or(0)
    }

    /// Removes a subscriber.
    pub fn unsubscribe(&self, id: u64) {
        self.subscribers.borrow_mut().retain(|s| s.id != id);
    }

    /// Creates a session for a client that identified, builds its READY and
    /// GUILD_CREATEs from the cache and subscribes it in the same step:
    /// nothing can be published in between (single thread, no await), so
    /// the live stream continues exactly where the snapshot ends.
    pub fn attach_new(
        &self,
        conn: u64,
        queue: Rc<ClientQueue>,
        fd: RawFd,
        resume_url: &str,
        intents: Option<ClientIntents>,
    ) -> Attached {
        let start = self.replay.borrow().next_index();
        let session = Rc::new(ClientSession::new(conn, self.id, start, intents));
        let snapshot =
            crate::downstream::snapshot::build(self, &session.id, resume_url, self.guild_grace_over(), intents);
        let generation = session.begin(conn, fd, Position { resume_from: start, sent_seq: 0, floor_seq: 0 });
        self.store_session(session.clone());
        self.subscribers.borrow_mut().push(Subscriber {
            id: conn,
            session: session.num,
            queue,
            fd,
            intents,
            client: session.clone(),
            generation,
        });
        Attached { session, generation, first: snapshot }
    }

    /// Resumes session `session_id` at the client's sequence `seq`: returns
    /// the session, its new generation, and what to send before live events
    /// (every dispatch the client missed, then RESUMED).
    pub fn attach_resume(
        &self,
        session_id: &str,
        seq: u64,
        conn: u64,
        queue: Rc<ClientQueue>,
        fd: RawFd,
    ) -> Result<Attached, ResumeError> {
        let session = self.sessions.borrow().get(session_id).cloned().ok_or(ResumeError::UnknownSession)?;
        let pos = session.position();
        if seq > pos.sent_seq {
            return Err(ResumeError::InvalidSeq);
        }
        if seq < pos.floor_seq {
            return Err(ResumeError::TooOld);
        }
        let bot = self.cache.borrow().bot_id();
        let reaches = |d: &Dispatch| d.reaches(session.num, session.intents, bot);
        let replay = self.replay.borrow();
        // Walk back from the first unsent dispatch over the ones this
        // session saw, until reaching the one after the client's `seq`.
        let mut start = pos.resume_from;
        let mut to_skip = pos.sent_seq - seq;
        while to_skip > 0 {
            if start <= replay.first_index() {
                return Err(ResumeError::TooOld);
            }
            start -= 1;
            if replay.get(start).is_some_and(|d| reaches(d)) {
                to_skip -= 1;
            }
        }
        if start < replay.first_index() {
            return Err(ResumeError::TooOld);
        }
        let mut out: Vec<Rc<Dispatch>> = replay
            .since(start)
            .filter(|d| reaches(d))
            .map(|d| match session.intents {
                Some(intents) => client_view::view_for(d, intents, bot),
                None => d.clone(),
            })
            .collect();
        drop(replay);
        out.push(Rc::new(Dispatch::build("RESUMED", b"{}")));
        // A connection still attached to the session is replaced, as Discord does.
        if let Some((old_conn, old_fd)) = session.connection() {
            log::info!("[shard {}] session resumed elsewhere; closing its old connection {old_conn}", self.id);
            self.unsubscribe(old_conn);
            // SAFETY: shutdown on the old connection's open socket; it only ends its I/O.
            unsafe { libc::shutdown(old_fd, libc::SHUT_RDWR) };
        }
        let generation =
            session.begin(conn, fd, Position { resume_from: start, sent_seq: seq, floor_seq: pos.floor_seq });
        self.subscribers.borrow_mut().push(Subscriber {
            id: conn,
            session: session.num,
            queue,
            fd,
            intents: session.intents,
            client: session.clone(),
            generation,
        });
        Ok(Attached { session, generation, first: vec![Outgoing::Snapshot(out)] })
    }

    fn store_session(&self, session: Rc<ClientSession>) {
        let mut sessions = self.sessions.borrow_mut();
        if sessions.len() >= self.max_sessions {
            // Evict the session disconnected the longest (connected ones last).
            let oldest = sessions
                .values()
                .min_by_key(|s| s.disconnected_at().map_or((1, Instant::now()), |t| (0, t)))
                .map(|s| s.id.clone());
            if let Some(id) = oldest {
                sessions.remove(&id);
            }
        }
        sessions.insert(session.id.clone(), session);
    }

    /// Drops sessions that stayed disconnected longer than `ttl`; returns how many.
    pub fn expire_sessions(&self, ttl: Duration) -> usize {
        let mut sessions = self.sessions.borrow_mut();
        let before = sessions.len();
        sessions.retain(|_, s| !s.expired(ttl));
        let live: std::collections::HashSet<u64> = sessions.values().map(|s| s.num).collect();
        drop(sessions);
        self.routing.borrow_mut().forget_sessions(|num| live.contains(&num));
        before - self.sessions.borrow().len()
    }

    /// When the next disconnected session expires, if any.
    pub fn next_expiry(&self, ttl: Duration) -> Option<Instant> {
        self.sessions.borrow().values().filter_map(|s| s.disconnected_at()).min().map(|t| t + ttl)
    }

    /// Refreshes the gauges that are sampled rather than counted (at each `/metrics` scrape).
    pub fn sample_metrics(&self) {
        let m = &self.metrics;
        let subs = self.subscribers.borrow();
        m.clients.set(subs.len() as i64);
        let deepest = subs.iter().map(|s| s.queue.high_water()).max().unwrap_or(0) as i64;
        m.queue_high_water.set(m.queue_high_water.get().max(deepest));
        drop(subs);
        m.client_sessions.set(self.sessions.borrow().len() as i64);
        let (events, bytes) = self.replay_occupancy();
        m.replay_events.set(events as i64);
        m.replay_bytes.set(bytes as i64);
        let cache = self.cache.borrow();
        let mut counts = [0usize; 8];
        for (_, g) in cache.guilds() {
            counts[0] += 1;
            counts[1] += g.channels.len() + g.threads.len();
            counts[2] += g.roles.len();
            counts[3] += g.members.len();
            counts[4] += g.emojis.len() + g.stickers.len();
            counts[5] += g.presences.len();
            counts[6] += g.voice_states.len();
            counts[7] += g.stage_instances.len() + g.scheduled_events.len() + g.soundboard_sounds.len();
        }
        let kinds = ["guilds", "channels", "roles", "members", "emojis_stickers", "presences", "voice_states", "other"];
        for (kind, n) in kinds.iter().zip(counts) {
            m.cache(kind, n);
        }
        m.cache("unavailable_guilds", cache.missing().count());
        m.cache_bytes.set(cache.heap_bytes() as i64);
    }

    /// Whether session number `num` still exists (connected or resumable).
    pub fn session_known(&self, num: u64) -> bool {
        self.sessions.borrow().values().any(|s| s.num == num)
    }

    fn guild_grace_over(&self) -> bool {
        self.ready_at.get().is_some_and(|t| t.elapsed() >= GUILD_LOAD_GRACE)
    }

    /// Whether a missing guild is reported as unavailable to new clients.
    pub fn report_missing(status: GuildStatus, grace_over: bool) -> bool {
        status == GuildStatus::Unavailable || grace_over
    }
}
