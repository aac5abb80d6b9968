//! env_logger behind a swappable front, so SIGHUP can change `log_level`
//! without a restart. Only emitted records take the read lock; filtered-out
//! ones stop at `log::max_level`, so hot-path debug lines cost nothing.

use std::sync::{OnceLock, RwLock};

struct Reloadable {
    inner: RwLock<env_logger::Logger>,
}

static LOGGER: OnceLock<Reloadable> = OnceLock::new();

fn build(filter: &str) -> env_logger::Logger {
    env_logger::Builder::new().parse_filters(filter).parse_env("RUST_LOG").format_timestamp_millis().build()
}

impl log::Log for Reloadable {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        self.inner.read().is_ok_and(|l| l.enabled(metadata))
    }
    fn log(&self, record: &log::Record<'_>) {
        if let Ok(l) = self.inner.read() {
            l.log(record);
        }
    }
    fn flush(&self) {
        if let Ok(l) = self.inner.read() {
            l.flush();
        }
    }
}

/// Installs the logger with an env_logger filter (`RUST_LOG` applies on top).
pub fn init(filter: &str) {
    let logger = build(filter);
    let max = logger.filter();
    if LOGGER.set(Reloadable { inner: RwLock::new(logger) }).is_ok() {
        let _ = log::set_logger(LOGGER.get().expect("just set"));
        log::set_max_level(max);
    }
}

/// Replaces the filter.
pub fn reload(filter: &str) {
    if let Some(l) = LOGGER.get() {
        let logger = build(filter);
        let max = logger.filter();
        if let Ok(mut inner) = l.inner.write() {
            *inner = logger;
        }
        log::set_max_level(max);
    }
}
