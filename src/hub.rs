//! A shard's meeting point on its core: the upstream task publishes into it,
//! client connections subscribe to it. Everything here is single-threaded
//! (`Rc`/`RefCell` on one glommio executor), so there are no locks.

use crate::{
    cache::{GuildStatus, ShardCache},
    config::CacheConfig,
    downstream::{
        outgoing::Outgoing,
        queue::{ClientQueue, PushError},
    },
    protocol::dispatch::Dispatch,
};
use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};
use std::{
    cell::{Cell, RefCell},
    os::fd::RawFd,
    rc::Rc,
    time::Instant,
};

/// How long after READY a guild still missing its GUILD_CREATE is reported
/// to new clients as unavailable rather than left for the live stream.
pub const GUILD_LOAD_GRACE: std::time::Duration = std::time::Duration::from_secs(15);

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

/// The upstream session, as needed to resume it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UpstreamSession {
    /// Discord's session id.
    pub session_id: String,
    /// Last sequence number received.
    pub seq: u64,
    /// Where to resume.
    pub resume_url: String,
}

/// A client connection subscribed to a shard's live stream.
pub struct Subscriber {
    /// Connection id, unique on this core.
    pub id: u64,
    /// Queue into the client's writer; bounded by `backpressure`.
    pub queue: Rc<ClientQueue>,
    /// The client's socket, shut down when it falls behind.
    pub fd: RawFd,
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
    commands: LocalSender<Vec<u8>>,
    commands_rx: RefCell<Option<LocalReceiver<Vec<u8>>>>,
    status_waiters: RefCell<Vec<futures_channel::oneshot::Sender<()>>>,
}

impl ShardHub {
    /// A hub for shard `id` of `total`.
    pub fn new(id: u32, total: u32, flags: CacheConfig) -> Rc<Self> {
        let (commands, rx) = local_channel::new_unbounded();
        Rc::new(Self {
            id,
            total,
            status: RefCell::new(ShardStatus::Connecting),
            cache: RefCell::new(ShardCache::new(flags)),
            subscribers: RefCell::default(),
            session: RefCell::default(),
            ready_at: Cell::new(None),
            commands,
            commands_rx: RefCell::new(Some(rx)),
            status_waiters: RefCell::default(),
        })
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
        *self.status.borrow_mut() = status;
        for w in self.status_waiters.borrow_mut().drain(..) {
            let _ = w.send(());
        }
    }

    /// Resolves at the next status change.
    pub async fn status_changed(&self) {
        let (tx, rx) = futures_channel::oneshot::channel();
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

    /// Takes the receiving end of the command queue (once, by the shard task).
    pub fn take_commands(&self) -> Option<LocalReceiver<Vec<u8>>> {
        self.commands_rx.borrow_mut().take()
    }

    /// Queues a client command (op 3, 4, 8, 31) for Discord.
    pub fn send_command(&self, payload: Vec<u8>) {
        // Unbounded: the upstream rate limiter drains it at Discord's pace.
        let _ = self.commands.try_send(payload);
    }

    /// Number of connected clients.
    pub fn subscriber_count(&self) -> usize {
        self.subscribers.borrow().len()
    }

    /// Sends a dispatch to every subscriber. A subscriber whose queue is full
    /// has fallen `backpressure` messages behind: its socket is shut down so
    /// its library reconnects, rather than silently skipping events for it.
    pub fn publish(&self, dispatch: Rc<Dispatch>) {
        self.subscribers.borrow_mut().retain(|sub| match sub.queue.push(Outgoing::Dispatch(dispatch.clone())) {
            Ok(()) => true,
            Err(PushError::Full) => {
                log::warn!("[shard {}] client {} fell behind; disconnecting it", self.id, sub.id);
                // SAFETY: shutdown on a descriptor the client connection still owns; it only
                // makes its pending reads and writes fail.
                unsafe { libc::shutdown(sub.fd, libc::SHUT_RDWR) };
                false
            }
            Err(PushError::Closed) => false,
        });
    }

    /// Removes a subscriber.
    pub fn unsubscribe(&self, id: u64) {
        self.subscribers.borrow_mut().retain(|s| s.id != id);
    }

    /// Builds a client's READY and its GUILD_CREATEs from the cache and
    /// subscribes it in the same step: nothing can be published in between
    /// (single thread, no await), so the live stream continues exactly
    /// where the snapshot ends.
    pub fn attach(&self, sub: Subscriber, session_id: &str, resume_url: &str) -> Vec<Rc<Dispatch>> {
        let snapshot = crate::downstream::snapshot::build(self, session_id, resume_url, self.guild_grace_over());
        self.subscribers.borrow_mut().push(sub);
        snapshot
    }

    fn guild_grace_over(&self) -> bool {
        self.ready_at.get().is_some_and(|t| t.elapsed() >= GUILD_LOAD_GRACE)
    }

    /// Whether a missing guild is reported as unavailable to new clients.
    pub fn report_missing(status: GuildStatus, grace_over: bool) -> bool {
        status == GuildStatus::Unavailable || grace_over
    }
}
