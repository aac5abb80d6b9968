//! The `gateway-proxy` binary: configuration, preflight checks, discovery,
//! then one executor per core.

use gateway_proxy::{
    config::Config,
    downstream::admission::{Admission, Limits},
    preflight,
    runtime::{self, lifecycle::Signals, Shared},
    state_file::{self, SavedShard},
    upstream::{self, discovery, identify_queue::IdentifyQueue},
};
use std::{
    collections::HashMap,
    path::PathBuf,
    process::ExitCode,
    sync::{Arc, Mutex},
    time::Duration,
};

/// mimalloc: a heap per thread, so an executor allocates and frees on its
/// own core without a lock, and pages emptied by the replay buffers' churn
/// go back to the system. Under glibc's malloc the live heap stayed flat
/// over a soak while RSS kept rising (free memory its arenas could not
/// return); see README, "Memory allocator".
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const USAGE: &str = "usage: gateway-proxy [--config PATH | PATH]\n\n\
Runs the Discord gateway proxy with the given config file (default ./config.json).\n\
See config.json.example and README.md for the keys.";

fn config_path() -> Result<PathBuf, String> {
    let mut args = std::env::args().skip(1);
    let mut path = None;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            "-V" | "--version" => {
                println!("gateway-proxy {}", env!("CARGO_PKG_VERSION"));
                std::process::exit(0);
            }
            "-c" | "--config" => path = Some(args.next().ok_or("--config needs a path")?),
            other if other.starts_with('-') => return Err(format!("unknown flag {other}\n\n{USAGE}")),
            other if path.is_none() => path = Some(other.to_owned()),
            other => return Err(format!("unexpected argument {other}\n\n{USAGE}")),
        }
    }
    Ok(PathBuf::from(path.unwrap_or_else(|| "config.json".into())))
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e}");
            eprintln!("gateway-proxy: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), String> {
    let path = config_path()?;
    let config = Config::load(&path).map_err(|e| e.to_string())?;
    gateway_proxy::logging::init(&config.log_level);
    for key in &config.unknown_keys {
        log::warn!("config key `{key}` is not used by this version; ignored");
    }
    for warning in config.warnings() {
        log::warn!("{warning}");
    }
    preflight::check().map_err(|e| e.to_string())?;

    let gateway = discovery::fetch_gateway_bot(&config.api_url, &config.token)
        .map_err(|e| format!("GET {}/gateway/bot failed: {e}", config.api_url))?;
    let total_shards = config.shards.unwrap_or(gateway.shards).max(1);
    let hostname = gateway_proxy::topology::hostname();
    let shard_map =
        gateway_proxy::topology::ShardMap::resolve(&config, total_shards, &hostname).map_err(|e| e.to_string())?;
    let local = shard_map.local.clone();
    let available = core_affinity::get_core_ids().map_or(1, |c| c.len()).max(1);
    let cores = config.cores.unwrap_or(available).min(local.len()).max(1);
    let limit = gateway.session_start_limit;
    log::info!(
        "{total_shards} shards in total, running {}..{} on {cores} cores; {} identifies left today, max_concurrency {}",
        local.start,
        local.end,
        limit.remaining,
        limit.max_concurrency
    );
    if (limit.remaining as usize) < local.len() {
        log::warn!(
            "only {} identifies left for {} shards: some shards wait for the daily reset",
            limit.remaining,
            local.len()
        );
    }
    let listeners = runtime::listeners(std::net::SocketAddr::new(config.host, config.port), cores)
        .map_err(|e| format!("cannot listen on {}:{}: {e}", config.host, config.port))?;
    let addr = listeners[0].local_addr().map_err(|e| e.to_string())?;
    // Without externally_accessible_url, this instance's own entry of
    // `instances` (every pod of a StatefulSet shares one config), else the
    // address it listens on.
    let client_resume_url =
        config.externally_accessible_url.clone().or_else(|| shard_map.own_url().map(str::to_owned)).unwrap_or_else(
            || {
                format!(
                    "ws://{}",
                    if config.host.is_unspecified() { format!("127.0.0.1:{}", addr.port()) } else { addr.to_string() }
                )
            },
        );
    let gateway_url = config.gateway_url.clone().unwrap_or(gateway.url.trim_end_matches('/').to_owned());
    let signals = Signals::install(cores).map_err(|e| format!("cannot install signal handlers: {e}"))?;
    let restore: HashMap<u32, SavedShard> = config
        .state_file
        .as_deref()
        .and_then(|p| state_file::load(p, &config.token, total_shards))
        .map(|s| s.shards.into_iter().filter(|s| local.contains(&s.id)).map(|s| (s.id, s)).collect())
        .unwrap_or_default();
    let (saved_tx, saved_rx) = crossbeam_channel::unbounded();
    let state_path = config.state_file.clone();
    let token = config.token.clone();
    let admission = Admission::new(Limits {
        connections: config.max_connections,
        unidentified: config.max_unidentified_connections,
        unidentified_per_address: config.max_unidentified_per_address,
    });
    if let Some(open_files) = preflight::raise_open_files() {
        // Shard sockets, listeners, io_uring and files take a few hundred more.
        let wanted = config.max_connections as u64 * 2 + 256;
        if open_files < wanted {
            log::warn!(
                "the open-file limit is {open_files}: fewer than `max_connections` ({}) clients can be served \
                 (each takes two descriptors); raise it (`ulimit -n`, Docker `--ulimit nofile`, systemd \
                 `LimitNOFILE`) or lower `max_connections`",
                config.max_connections
            );
        }
    }
    let shared = Arc::new(Shared {
        identify_queue: IdentifyQueue::start(
            &config.identify_queue,
            upstream::coordinator::bot_id_of_token(&config.token),
            limit.max_concurrency,
            limit.remaining,
            Duration::from_millis(limit.reset_after),
        )?,
        config,
        total_shards,
        local,
        shard_map,
        cores,
        gateway_url,
        client_resume_url,
        config_path: Some(path.clone()),
        signals,
        restore: Mutex::new(restore),
        saved: saved_tx,
        admission,
    });
    log::info!("listening on http://{addr} (clients connect to ws://{addr}, resume at {})", shared.client_resume_url);
    runtime::run(shared, listeners)?;
    let shards: Vec<SavedShard> = saved_rx.try_iter().flatten().collect();
    if let Some(path) = state_path {
        match state_file::save(&path, shards, &token, total_shards) {
            Ok(()) => log::info!("state written to {}; a restart resumes without identifying", path.display()),
            Err(e) => log::error!("cannot write the state file {}: {e}", path.display()),
        }
    }
    log::info!("stopped");
    Ok(())
}
