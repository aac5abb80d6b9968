//! Checks that must pass before any glommio executor starts: glommio panics
//! deep inside its reactor when io_uring is unavailable, so the proxy probes
//! for it first and exits with a message an operator can act on.

use std::fmt;

/// glommio refuses to start below this RLIMIT_MEMLOCK (bytes).
pub const MIN_MEMLOCK: u64 = 512 * 1024;

/// Why the proxy cannot run here.
#[derive(Debug)]
pub enum PreflightError {
    /// `io_uring_setup` failed.
    IoUring(std::io::Error),
    /// RLIMIT_MEMLOCK is below what glommio needs and could not be raised.
    MemLock {
        /// Current soft limit in bytes.
        soft: u64,
        /// Hard limit in bytes.
        hard: u64,
    },
}

impl fmt::Display for PreflightError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::IoUring(e) => write!(
                f,
                "io_uring is not usable here (io_uring_setup failed: {e}). The proxy runs on io_uring. \
                 In Docker, run with a seccomp profile that allows io_uring_setup/io_uring_enter/io_uring_register \
                 (scripts/seccomp-io-uring.json: `--security-opt seccomp=scripts/seccomp-io-uring.json`); \
                 check that /proc/sys/kernel/io_uring_disabled is 0 and that the kernel is 5.8 or newer."
            ),
            Self::MemLock { soft, hard } => write!(
                f,
                "RLIMIT_MEMLOCK is {soft} bytes (hard limit {hard}); io_uring needs at least {MIN_MEMLOCK}. \
                 Raise it: `ulimit -l unlimited`, Docker `--ulimit memlock=-1:-1`, systemd `LimitMEMLOCK=infinity`."
            ),
        }
    }
}

impl std::error::Error for PreflightError {}

/// Probes io_uring with a real `io_uring_setup` and makes sure RLIMIT_MEMLOCK suffices.
pub fn check() -> Result<(), PreflightError> {
    probe_io_uring().map_err(PreflightError::IoUring)?;
    ensure_memlock()
}

fn probe_io_uring() -> std::io::Result<()> {
    // struct io_uring_params is 120 bytes; zeroed means default setup.
    let mut params = [0u8; 120];
    // SAFETY: io_uring_setup reads and writes `params`, which outlives the call.
    let fd = unsafe { libc::syscall(libc::SYS_io_uring_setup, 4u32, params.as_mut_ptr()) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd was just returned by the kernel and is ours to close.
    unsafe { libc::close(fd as libc::c_int) };
    Ok(())
}

fn ensure_memlock() -> Result<(), PreflightError> {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes into `lim`.
    if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut lim) } != 0 {
        return Ok(()); // cannot tell; let glommio decide
    }
    if lim.rlim_cur >= MIN_MEMLOCK {
        return Ok(());
    }
    let raised = libc::rlimit { rlim_cur: lim.rlim_max, rlim_max: lim.rlim_max };
    // SAFETY: setrlimit reads `raised`.
    if lim.rlim_max >= MIN_MEMLOCK && unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &raised) } == 0 {
        return Ok(());
    }
    Err(PreflightError::MemLock { soft: lim.rlim_cur, hard: lim.rlim_max })
}

/// Raises the soft limit on open files to the hard limit (systemd and many
/// shells start services at 1024, too few for hundreds of shards and their
/// clients), and returns the limit now in force, when it can be read.
pub fn raise_open_files() -> Option<u64> {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes into `lim`.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return None;
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit { rlim_cur: lim.rlim_max, rlim_max: lim.rlim_max };
        // SAFETY: setrlimit reads `raised`.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            return Some(lim.rlim_max);
        }
    }
    Some(lim.rlim_cur)
}
