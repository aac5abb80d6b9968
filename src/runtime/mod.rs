//! Executors: one glommio executor per core, pinned with core_affinity, each
//! owning a disjoint slice of the shards and the clients attached to them.
//! Cores talk only through glommio's channel mesh, and only to hand a client
//! connection to the core that owns its shard.

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
    time::Duration,
};

/// io_uring buffer memory per executor: the proxy does no storage I/O, so a
/// small registered area keeps RSS and locked memory down.
const IO_MEMORY: usize = 256 << 10;
/// How long shard tasks get to close their connections at shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);
/// How often expired client sessions are dropped and sampled metrics refreshed.
const SESSION_SWEEP: Duration = Duration::from_secs(2);
/// Handovers in flight between two cores.
const MESH_CAPACITY: usize = 256;

/// What every core knows, fixed at start-up.
pub struct Shared {
    /// The configuration.
    pub config: Config,
    /// Total shard count of the bot.
    pub total_shards: u32,
    /// Shards this process runs.
    pub local: Range<u32>,
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
    pub mesh: Senders<Handover>,
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
    let mesh: MeshBuilder<Handover, _> = MeshBuilder::full(cores, MESH_CAPACITY);
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
    mesh: MeshBuilder<Handover, glommio::channels::channel_mesh::Full>,
    listener: OwnedFd,
) {
    let (senders, mut receivers) = mesh.join().await.expect("joining the core mesh");
    // Executors are created in core order, so mesh ids follow core indexes.
    assert_eq!(senders.peer_id(), index, "mesh peer ids must follow core order");
    let hubs: HashMap<u32, Rc<ShardHub>> = shared
        .local
        .clone()
        .filter(|s| shared.core_of(*s) == index)
        .map(|s| {
            let saved = shared.restore.lock().ok().and_then(|mut r| r.remove(&s));
            let hub = match saved {
                Some(saved) => ShardHub::restore(saved, shared.total_shards, &shared.config),
                None => ShardHub::new(s, shared.total_shards, &shared.config),
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
    let core = Rc::new(Core { index, shared: shared.clone(), hubs, mesh: senders, next_conn: Cell::new(first_id) });
    let shard_tasks: Vec<_> =
        core.hubs.values().map(|hub| glommio::spawn_local(shard::run(hub.clone(), shared.clone()))).collect();
    glommio::spawn_local(watch_reloads(core.clone())).detach();
    {
        let core = core.clone();
        let ttl = Duration::from_secs(shared.config.session_ttl);
        glommio::spawn_local(async move {
            loop {
                glommio::timer::sleep(SESSION_SWEEP).await;
                for hub in core.hubs.values() {
                    hub.sample_metrics();
                    let n = hub.expire_sessions(ttl);
                    if n > 0 {
                        log::debug!("[shard {}] {n} client sessions expired", hub.id);
                    }
                }
            }
        })
        .detach();
    }
    for (_, rx) in receivers.streams() {
        let core = core.clone();
        glommio::spawn_local(async move {
            while let Some(handover) = rx.recv().await {
                glommio::spawn_local(crate::downstream::client::adopt(core.clone(), handover)).detach();
            }
        })
        .detach();
    }
    // SAFETY: `listener` is a valid listening socket we own; glommio takes it over.
    let listener = unsafe { glommio::net::TcpListener::from_raw_fd(listener.into_raw_fd()) };
    futures_lite::future::or(listener::accept_loop(core.clone(), listener), shared.signals.wait_shutdown()).await;
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

/// On SIGHUP: re-reads the config file; applies `log_level` (core 0) and
/// the configured presence to shards whose bot did not set its own.
async fn watch_reloads(core: Rc<Core>) {
    let mut seen = core.shared.signals.reloads();
    loop {
        glommio::timer::sleep(lifecycle::WATCH_PERIOD).await;
        let now = core.shared.signals.reloads();
        if now == seen {
            continue;
        }
        seen = now;
        log::debug!("core {}: SIGHUP received; reloading the config", core.index);
        let Some(path) = core.shared.config_path.clone() else { continue };
        let loaded = offload::run_blocking("config-reload", move || Config::load(&path)).await;
        let config = match loaded {
            Some(Ok(c)) => c,
            Some(Err(e)) => {
                log::error!("SIGHUP: config not reloaded: {e}");
                continue;
            }
            None => {
                log::error!("SIGHUP: config not reloaded: the reader thread failed");
                continue;
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
}
