//! Signals and what they trigger: SIGTERM/SIGINT stop the proxy so that it
//! can restart without re-identifying; SIGHUP reloads what can change live.
//!
//! The signal handler (signal-hook) only flips atomics and writes a byte to
//! one socket per core (both async-signal-safe); each core awaits a read on
//! its socket, so no executor blocks on a signal and none wakes up to look
//! for one.

use std::{
    os::{
        fd::{AsRawFd, OwnedFd},
        unix::net::UnixStream,
    },
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

/// How often a core looks at the signal flags if its wake-up socket could
/// not be made (it normally never polls).
pub const WATCH_PERIOD: Duration = Duration::from_millis(50);

const SIGNALS: [i32; 3] = [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT, signal_hook::consts::SIGHUP];

/// The process's signal flags, and the sockets that wake each core on a signal.
#[derive(Clone, Default)]
pub struct Signals {
    shutdown: Arc<AtomicBool>,
    reloads: Arc<AtomicU64>,
    /// The reading end per core, taken by the core at start.
    bells: Arc<Mutex<Vec<Option<OwnedFd>>>>,
}

impl Signals {
    /// Registers SIGTERM, SIGINT and SIGHUP, with a wake-up socket for each of `cores`.
    pub fn install(cores: usize) -> std::io::Result<Self> {
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
        let mut bells = Vec::with_capacity(cores);
        for _ in 0..cores {
            let (read, write) = UnixStream::pair()?;
            write.set_nonblocking(true)?;
            for signal in SIGNALS {
                // The write end is kept open by the handler for the process's life.
                signal_hook::low_level::pipe::register(signal, write.try_clone()?)?;
            }
            bells.push(Some(OwnedFd::from(read)));
        }
        *s.bells.lock().unwrap_or_else(|e| e.into_inner()) = bells;
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

    /// Core `index`'s wake-up socket (once).
    pub fn take_bell(&self, index: usize) -> Option<OwnedFd> {
        self.bells.lock().unwrap_or_else(|e| e.into_inner()).get_mut(index).and_then(Option::take)
    }
}

/// Waits for the next signal on a core's wake-up socket: a glommio read,
/// so the core sleeps until a signal arrives. Without a socket it polls
/// the flags every [`WATCH_PERIOD`].
pub struct SignalWait {
    bell: Option<glommio::net::UnixStream>,
}

impl SignalWait {
    /// Waits on `bell` (from [`Signals::take_bell`]).
    pub fn new(bell: Option<OwnedFd>) -> Self {
        use std::os::fd::{FromRawFd, IntoRawFd};
        let bell = bell.map(|fd| {
            debug_assert!(fd.as_raw_fd() >= 0);
            // SAFETY: a socket we own, handed over to glommio.
            unsafe { glommio::net::UnixStream::from_raw_fd(fd.into_raw_fd()) }
        });
        Self { bell }
    }

    /// Resolves after the next signal (or poll period).
    pub async fn next(&mut self) {
        use futures_lite::AsyncReadExt;
        if let Some(bell) = self.bell.as_mut() {
            let mut buf = [0u8; 64];
            match bell.read(&mut buf).await {
                Ok(n) if n > 0 => return,
                _ => {
                    log::warn!("signal wake-up socket failed; looking at the signal flags every {WATCH_PERIOD:?}");
                    self.bell = None;
                }
            }
        }
        glommio::timer::sleep(WATCH_PERIOD).await;
    }
}
