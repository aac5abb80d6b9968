//! Signals and what they trigger: SIGTERM/SIGINT stop the proxy so that it
//! can restart without re-identifying; SIGHUP reloads what can change live.
//!
//! signal-hook only flips atomics (async-signal-safe); each core watches
//! them from a task, so no executor ever blocks on a signal.

use std::{
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

/// How often cores look at the signal flags.
pub const WATCH_PERIOD: Duration = Duration::from_millis(50);

/// The process's signal flags.
#[derive(Clone, Default)]
pub struct Signals {
    shutdown: Arc<AtomicBool>,
    reloads: Arc<AtomicU64>,
}

impl Signals {
    /// Registers SIGTERM, SIGINT and SIGHUP.
    pub fn install() -> std::io::Result<Self> {
        let s = Self::default();
        signal_hook::flag::register(signal_hook::consts::SIGTERM, s.shutdown.clone())?;
        signal_hook::flag::register(signal_hook::consts::SIGINT, s.shutdown.clone())?;
        let reloads = s.reloads.clone();
        // SAFETY: the handler only increments an atomic, which is async-signal-safe.
        unsafe {
            signal_hook::low_level::register(signal_hook::consts::SIGHUP, move || {
                reloads.fetch_add(1, Ordering::SeqCst);
            })?;
        }
        Ok(s)
    }

    /// Whether a shutdown was asked for.
    pub fn shutting_down(&self) -> bool {
        self.shutdown.load(Ordering::SeqCst)
    }

    /// How many reloads were asked for so far.
    pub fn reloads(&self) -> u64 {
        self.reloads.load(Ordering::SeqCst)
    }

    /// Resolves once a shutdown is asked for.
    pub async fn wait_shutdown(&self) {
        while !self.shutting_down() {
            glommio::timer::sleep(WATCH_PERIOD).await;
        }
    }
}
