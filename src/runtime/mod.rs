//! Executors: one glommio executor per core, pinned with core_affinity, each
//! owning a disjoint slice of the shards and the clients attached to them.
//! Cores talk only through glommio's channel mesh: to hand a client
//! connection to the core that owns its shard, and to refresh metrics for
//! a scrape.

pub mod doorbell;
pub mod lifecycle;
pub mod offload;
#[cfg(test)]
mod park_tests;
pub mod sched;

use crate::{
    config::Config,
    downstream::{client::Handover, listener},
    hub::ShardHub,
    state_file::SavedShard,
    upstream::{identify_queue::IdentifyQueue, shard},
};
use glommio::{
    channels::channel_mesh::{MeshBuilder, Senders},
    LocalExecutorBuilder, Placement,
};
use std::{
    cell::Cell,
    collections::HashMap,
    ops::Range,
    os::fd::{FromRawFd, IntoRawFd, OwnedFd},
    rc::Rc,
    sync::Arc,
    time::{Duration, Instant},
};

/// io_uring buffer memory per executor: the proxy does no storage I/O, so a
/// small registered area keeps RSS and locked memory down.
const IO_MEMORY: usize = 256 << 10;
/// How long shard tasks get to close their connections at shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);
/// Handovers in flight between two cores.
const MESH_CAPACITY: usize = 256;
/// Longest a `/metrics` scrape waits for another core's shards.
const SAMPLE_WAIT: Duration = Duration::from_secs(1);

/// What one core asks of another through the core mesh.
pub enum CoreMessage {
    /// A client connection for a shard the receiving core owns.
    Handover(Box<Handover>),
    /// Refresh the sampled gauges of the receiving core's shards, then answer.
    SampleMetrics(futures_channel::oneshot::Sender<()>),
}

/// What every core knows, fixed at start-up.
pub struct Shared {
    /// The configuration.
    pub config: Config,
    /// Total shard count of the bot.
    pub total_shards: u32,
    /// Shards this process runs.
    pub local: Range<u32>,
    /// Which instance of the bot's proxies serves every shard.
    pub shard_map: crate::topology::ShardMap,
    /// Number of executors.
    pub cores: usize,
    /// Where shards identify.
    pub gateway_url: String,
    /// What clients are told to resume at.
    pub client_resume_url: String,
    /// The config file, re-read on SIGHUP.
    pub config_path: Option<std::path::PathBuf>,
    /// Identify pacing.
    pub identify_queue: IdentifyQueue,
    /// Signal flags.
    pub signals: lifecycle::Signals,
    /// Shards read back from the state file, taken by their core at start.
    pub restore: std::sync::Mutex<HashMap<u32, SavedShard>>,
    /// Where cores hand their shards' state at shutdown.
    pub saved: crossbeam_channel::Sender<Vec<SavedShard>>,
    /// Client connection counts against the configured limits.
    pub admission: Arc<crate::downstream::admission::Admission>,
}

impl Shared {
    /// The core that owns `shard` (shards are dealt round-robin).
    pub fn core_of(&self, shard: u32) -> usize {
        (shard - self.local.start) as usize % self.cores
    }

    /// Whether this process runs `shard`.
    pub fn is_local(&self, shard: u32) -> bool {
        self.local.contains(&shard)
    }
}

/// One executor's world.
pub struct Core {
    /// Index of this core (0-based).
    pub index: usize,
    /// Process-wide settings.
    pub shared: Arc<Shared>,
    /// The shards this core owns.
    pub hubs: HashMap<u32, Rc<ShardHub>>,
    /// Channels to the other cores.
    pub mesh: Senders<CoreMessage>,
    /// Rung when a client session loses its connection (it may expire).
    pub session_bell: doorbell::Doorbell,
    next_conn: Cell<u64>,
}

impl Core {
    /// A connection id unique in the process.
    pub fn next_connection_id(&self) -> u64 {
        let n = self.next_conn.get() + 1;
        self.next_conn.set(n);
        (n << 8) | self.index as u64
    }
}

/// One listening socket per core, all bound to `addr` with SO_REUSEPORT
/// (the kernel spreads connections over them). Each core must own its own
/// socket: glommio's accept toggles O_NONBLOCK on the open file around a
/// try-accept, so two cores sharing one socket can leave each other in a
/// blocking accept() that stalls a whole executor.
pub fn listeners(addr: std::net::SocketAddr, cores: usize) -> std::io::Result<Vec<std::net::TcpListener>> {
    let bind = |addr: std::net::SocketAddr| -> std::io::Result<std::net::TcpListener> {
        let socket = socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::STREAM, None)?;
        socket.set_reuse_address(true)?;
        socket.set_reuse_port(true)?;
        socket.bind(&addr.into())?;
        socket.listen(1024)?;
        Ok(socket.into())
    };
    let first = bind(addr)?;
    // With port 0 the first bind picks the port; the others join it.
    let actual = first.local_addr()?;
    let mut all = vec![first];
    for _ in 1..cores {
        all.push(bind(actual)?);
    }
    Ok(all)
}

/// Starts one executor per core and blocks until they all end.
pub fn run(shared: Arc<Shared>, listeners: Vec<std::net::TcpListener>) -> Result<(), String> {
    let cores = shared.cores;
    let core_ids = core_affinity::get_core_ids().unwrap_or_default();
    if cores > core_ids.len().max(1) {
        log::warn!("`cores` is {cores} but the process may use {} CPUs: executors will share CPUs", core_ids.len());
    }
    let mesh: MeshBuilder<CoreMessage, _> = MeshBuilder::full(cores, MESH_CAPACITY);
    let mut handles = Vec::with_capacity(cores);
    for (index, listener) in listeners.into_iter().enumerate() {
        let shared = shared.clone();
        let mesh = mesh.clone();
        let pin = core_ids.get(index % core_ids.len().max(1)).copied();
        let fd: OwnedFd = listener.into();
        let handle = LocalExecutorBuilder::new(Placement::Unbound)
            .name(&format!("core-{index}"))
            .io_memory(IO_MEMORY)
            .spawn(move || async move {
                if let Some(id) = pin {
                    if !core_affinity::set_for_current(id) {
                        log::warn!("core {index}: could not pin to CPU {}", id.id);
                    }
                }
                if let Some(slice) = shared.config.sched_slice {
                    apply_slice(index, slice);
                }
                core_main(index, shared, mesh, fd).await;
            })
            .map_err(|e| format!("cannot start executor {index}: {e}"))?;
        handles.push(handle);
    }
    for (i, h) in handles.into_iter().enumerate() {
        h.join().map_err(|e| format!("executor {i} failed: {e}"))?;
    }
    Ok(())
}

/// Asks for the configured scheduler slice on this executor's thread.
fn apply_slice(index: usize, slice: Duration) {
    match sched::set_thread_slice(slice) {
        Ok(sched::SliceOutcome::Set) => log::debug!("core {index}: scheduler slice {} µs", slice.as_micros()),
        Ok(sched::SliceOutcome::OtherPolicy) => {
            log::info!("core {index}: not a SCHED_OTHER thread; `sched_slice_us` left alone")
        }
        Err(e) => log::warn!("core {index}: could not set the scheduler slice ({e}); `sched_slice_us` has no effect"),
    }
}

async fn core_main(
    index: usize,
    shared: Arc<Shared>,
    mesh: MeshBuilder<CoreMessage, glommio::channels::channel_mesh::Full>,
    listener: OwnedFd,
) {
    let (senders, mut receivers) = mesh.join().await.expect("joining the core mesh");
    // Executors are created in core order, so mesh ids follow core indexes.
    assert_eq!(senders.peer_id(), index, "mesh peer ids must follow core order");
    // This core's share of the process's replay memory, for all its shards.
    let ledger = crate::hub::replay::ReplayLedger::new(shared.config.replay_memory / shared.cores.max(1));
    let hubs: HashMap<u32, Rc<ShardHub>> = shared
        .local
        .clone()
        .filter(|s| shared.core_of(*s) == index)
        .map(|s| {
            let saved = shared.restore.lock().ok().and_then(|mut r| r.remove(&s));
            let hub = match saved {
                Some(saved) => ShardHub::restore(saved, shared.total_shards, &shared.config, &ledger),
                None => ShardHub::new(s, shared.total_shards, &shared.config, &ledger),
            };
            (s, hub)
        })
        .collect();
    log::info!("core {index}: shards {:?}", {
        let mut ids: Vec<_> = hubs.keys().copied().collect();
        ids.sort_unstable();
        ids
    });
    // Connection ids (which also number client sessions) must not repeat
    // those of a previous run whose sessions were restored: start from the clock.
    let first_id =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64) << 10;
    let core = Rc::new(Core {
        index,
        shared: shared.clone(),
        hubs,
        mesh: senders,
        session_bell: doorbell::Doorbell::default(),
        next_conn: Cell::new(first_id),
    });
    let shard_tasks: Vec<_> =
        core.hubs.values().map(|hub| glommio::spawn_local(shard::run(hub.clone(), shared.clone()))).collect();
    let (stop_tx, stop_rx) = futures_channel::oneshot::channel::<()>();
    glommio::spawn_local(watch_signals(core.clone(), stop_tx)).detach();
    glommio::spawn_local(expire_sessions(core.clone())).detach();
    for (_, rx) in receivers.streams() {
        let core = core.clone();
        glommio::spawn_local(async move {
            while let Some(message) = rx.recv().await {
                match message {
                    CoreMessage::Handover(handover) => {
                        glommio::spawn_local(crate::downstream::client::adopt(core.clone(), *handover)).detach();
                    }
                    CoreMessage::SampleMetrics(done) => {
                        for hub in core.hubs.values() {
                            hub.sample_metrics();
                        }
                        let _ = done.send(());
                    }
                }
            }
        })
        .detach();
    }
    // SAFETY: `listener` is a valid listening socket we own; glommio takes it over.
    let listener = unsafe { glommio::net::TcpListener::from_raw_fd(listener.into_raw_fd()) };
    futures_lite::future::or(listener::accept_loop(core.clone(), listener), async {
        let _ = stop_rx.await;
    })
    .await;
    shutdown(&core, shard_tasks).await;
}

/// Stops this core so that a restart resumes everything: upstream
/// connections closed with a resumable code, clients told to resume, and
/// each shard's state handed to the main thread for the state file.
async fn shutdown(core: &Core, shard_tasks: Vec<glommio::Task<()>>) {
    log::info!("core {}: shutting down", core.index);
    for hub in core.hubs.values() {
        hub.request_stop();
    }
    futures_lite::future::or(
        async {
            for t in shard_tasks {
                t.await;
            }
        },
        glommio::timer::sleep(SHUTDOWN_GRACE),
    )
    .await;
    for hub in core.hubs.values() {
        hub.close_clients("proxy restarting: resume");
    }
    // Let writers put their close frames on the wire.
    glommio::timer::sleep(Duration::from_millis(200)).await;
    let parts: Vec<SavedShard> = core.hubs.values().map(|h| h.export()).collect();
    let _ = core.shared.saved.send(parts);
}

/// Drops client sessions that stayed disconnected longer than
/// `session_ttl`. Sleeps until the next one can expire, or until a session
/// loses its connection (the bell), so an idle core is not woken for it.
async fn expire_sessions(core: Rc<Core>) {
    let ttl = Duration::from_secs(core.shared.config.session_ttl);
    loop {
        for hub in core.hubs.values() {
            let n = hub.expire_sessions(ttl);
            if n > 0 {
                log::debug!("[shard {}] {n} client sessions expired", hub.id);
            }
        }
        // Expiry is strict (`> ttl`): wake just after the deadline.
        let next = core.hubs.values().filter_map(|h| h.next_expiry(ttl)).min();
        match next {
            Some(at) => {
                let wait = at.saturating_duration_since(Instant::now()) + Duration::from_millis(1);
                futures_lite::future::or(glommio::timer::sleep(wait), core.session_bell.wait()).await;
            }
            None => core.session_bell.wait().await,
        }
    }
}

/// Refreshes the sampled gauges of every shard of the process, for a
/// `/metrics` scrape: this core's directly, the others' through the mesh.
pub async fn sample_metrics(core: &Core) {
    let (open, unidentified) = core.shared.admission.counts();
    crate::metrics::global().set_client_connections(open, unidentified);
    for hub in core.hubs.values() {
        hub.sample_metrics();
    }
    let mut answers = Vec::new();
    for peer in (0..core.shared.cores).filter(|p| *p != core.index) {
        let (tx, rx) = futures_channel::oneshot::channel();
        if core.mesh.send_to(peer, CoreMessage::SampleMetrics(tx)).await.is_ok() {
            answers.push(rx);
        }
    }
    for rx in answers {
        let answered = futures_lite::future::or(async { offload::recv_across_threads(rx).await.is_some() }, async {
            glommio::timer::sleep(SAMPLE_WAIT).await;
            false
        })
        .await;
        if !answered {
            log::debug!("core {}: another core did not refresh its metrics in time", core.index);
        }
    }
}

/// Waits for signals: on SIGTERM/SIGINT tells the core to stop (`stop`);
/// on SIGHUP re-reads the config file and applies `log_level` (core 0) and
/// the configured presence to shards whose bot did not set its own.
async fn watch_signals(core: Rc<Core>, stop: futures_channel::oneshot::Sender<()>) {
    let mut wait = lifecycle::SignalWait::new(core.shared.signals.take_bell(core.index));
    let mut seen = core.shared.signals.reloads();
    loop {
        if core.shared.signals.shutting_down() {
            let _ = stop.send(());
            return;
        }
        let now = core.shared.signals.reloads();
        if now != seen {
            seen = now;
            reload(&core).await;
            continue;
        }
        wait.next().await;
    }
}

async fn reload(core: &Core) {
    log::debug!("core {}: SIGHUP received; reloading the config", core.index);
    let Some(path) = core.shared.config_path.clone() else { return };
    let loaded = offload::run_blocking("config-reload", move || Config::load(&path)).await;
    let config = match loaded {
        Some(Ok(c)) => c,
        Some(Err(e)) => {
            log::error!("SIGHUP: config not reloaded: {e}");
            return;
        }
        None => {
            log::error!("SIGHUP: config not reloaded: the reader thread failed");
            return;
        }
    };
    if core.index == 0 {
        crate::logging::reload(&config.log_level);
        log::info!("SIGHUP: log level is now `{}`", config.log_level);
    }
    for hub in core.hubs.values() {
        if let Some(presence) = shard::config_presence(&config, hub.id) {
            if hub.routing.borrow().presence().is_none() {
                let payload = serde_json::json!({"op": 3, "d": presence}).to_string().into_bytes();
                hub.send_command(payload);
                log::info!("[shard {}] SIGHUP: presence updated from the config", hub.id);
            }
        }
    }
}
