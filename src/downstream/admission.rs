//! Limits on client connections, checked when a connection is accepted.
//!
//! A hostile or broken client must not be able to take the file descriptors
//! and memory the bot's real sessions need: the number of open client
//! connections is bounded, and so are connections that have not identified
//! yet, in total and per remote address (a leaking or hostile host is cut
//! off without shutting out the others). Counts are process-wide (a client
//! is accepted on any core and may move to another), so they are atomics and
//! one small map; both are touched once per connection and once when it
//! identifies, never per event.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
};

/// The configured bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Open client connections (HTTP requests included).
    pub connections: usize,
    /// Connections that have not sent a valid Identify or Resume yet.
    pub unidentified: usize,
    /// Connections from one remote address that have not identified yet.
    pub unidentified_per_address: usize,
}

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `max_connections` reached.
    Connections(usize),
    /// `max_unidentified_connections` reached.
    Unidentified(usize),
    /// `max_unidentified_per_address` reached for this address.
    PerAddress(usize),
}

impl Refusal {
    /// The HTTP status, reason phrase and body the connection is refused with.
    pub fn response(&self) -> (u16, &'static str, String) {
        match self {
            Self::Connections(n) => {
                (503, "Service Unavailable", format!("too many client connections (max_connections = {n})\n"))
            }
            Self::Unidentified(n) => (
                503,
                "Service Unavailable",
                format!("too many connections that have not identified (max_unidentified_connections = {n})\n"),
            ),
            Self::PerAddress(n) => (
                429,
                "Too Many Requests",
                format!(
                    "too many connections from this address that have not identified \
                     (max_unidentified_per_address = {n})\n"
                ),
            ),
        }
    }

    /// The label of the refusals metric.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Connections(_) => "max_connections",
            Self::Unidentified(_) => "max_unidentified_connections",
            Self::PerAddress(_) => "max_unidentified_per_address",
        }
    }
}

/// The process-wide counts behind [`Limits`].
#[derive(Debug)]
pub struct Admission {
    limits: Limits,
    open: AtomicUsize,
    unidentified: AtomicUsize,
    per_address: Mutex<HashMap<IpAddr, usize>>,
}

impl Admission {
    /// No connection counted yet.
    pub fn new(limits: Limits) -> Arc<Self> {
        Arc::new(Self {
            limits,
            open: AtomicUsize::new(0),
            unidentified: AtomicUsize::new(0),
            per_address: Mutex::new(HashMap::new()),
        })
    }

    /// Counts a new connection from `addr` as open and not identified, or
    /// says which limit it would cross (then nothing is counted).
    pub fn admit(self: &Arc<Self>, addr: IpAddr) -> Result<Permit, Refusal> {
        if !take(&self.open, self.limits.connections) {
            return Err(Refusal::Connections(self.limits.connections));
        }
        if !take(&self.unidentified, self.limits.unidentified) {
            self.open.fetch_sub(1, Ordering::Relaxed);
            return Err(Refusal::Unidentified(self.limits.unidentified));
        }
        {
            let mut map = self.per_address.lock().unwrap_or_else(|e| e.into_inner());
            let n = map.entry(addr).or_insert(0);
            if *n >= self.limits.unidentified_per_address {
                drop(map);
                self.unidentified.fetch_sub(1, Ordering::Relaxed);
                self.open.fetch_sub(1, Ordering::Relaxed);
                return Err(Refusal::PerAddress(self.limits.unidentified_per_address));
            }
            *n += 1;
        }
        Ok(Permit { admission: self.clone(), addr, unidentified: true })
    }

    /// Open connections and, of them, those not identified yet.
    pub fn counts(&self) -> (usize, usize) {
        (self.open.load(Ordering::Relaxed), self.unidentified.load(Ordering::Relaxed))
    }

    fn release_unidentified(&self, addr: IpAddr) {
        self.unidentified.fetch_sub(1, Ordering::Relaxed);
        let mut map = self.per_address.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = map.get_mut(&addr) {
            *n -= 1;
            if *n == 0 {
                map.remove(&addr);
            }
        }
    }
}

/// Increments `counter` unless it is at `limit`.
fn take(counter: &AtomicUsize, limit: usize) -> bool {
    counter.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| (n < limit).then_some(n + 1)).is_ok()
}

/// One admitted connection; dropping it gives its place back. It travels
/// with the connection when the connection moves to another core.
#[derive(Debug)]
pub struct Permit {
    admission: Arc<Admission>,
    addr: IpAddr,
    unidentified: bool,
}

impl Permit {
    /// The connection sent a valid Identify or Resume: it no longer counts
    /// against the not-yet-identified limits (it still counts as open).
    pub fn identified(&mut self) {
        if std::mem::take(&mut self.unidentified) {
            self.admission.release_unidentified(self.addr);
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.identified();
        self.admission.open.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(connections: usize, unidentified: usize, per_address: usize) -> Arc<Admission> {
        Admission::new(Limits { connections, unidentified, unidentified_per_address: per_address })
    }

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 2));

    #[test]
    fn per_address_bound_leaves_other_addresses_alone() {
        let admission = limits(100, 100, 2);
        let _a1 = admission.admit(A).unwrap();
        let mut a2 = admission.admit(A).unwrap();
        assert_eq!(admission.admit(A).unwrap_err(), Refusal::PerAddress(2));
        let _b1 = admission.admit(B).expect("another address is not limited by A's count");
        // An identified connection no longer counts against its address.
        a2.identified();
        let _a3 = admission.admit(A).unwrap();
        assert_eq!(admission.counts(), (4, 3));
    }

    #[test]
    fn totals_are_bounded_and_given_back_on_drop() {
        let admission = limits(3, 2, 10);
        let mut p1 = admission.admit(A).unwrap();
        let _p2 = admission.admit(B).unwrap();
        assert_eq!(admission.admit(A).unwrap_err(), Refusal::Unidentified(2));
        p1.identified();
        let p3 = admission.admit(A).unwrap();
        assert_eq!(admission.admit(B).unwrap_err(), Refusal::Connections(3));
        assert_eq!(admission.counts(), (3, 2), "a refusal counts nothing");
        drop(p3);
        drop(p1);
        assert_eq!(admission.counts(), (1, 1));
        assert_eq!(admission.per_address.lock().unwrap().get(&A), None, "empty entries are removed");
    }

    #[test]
    fn refusals_answer_with_a_status_naming_the_key() {
        let (status, _, body) = Refusal::PerAddress(5).response();
        assert_eq!(status, 429);
        assert!(body.contains("max_unidentified_per_address = 5"));
        assert_eq!(Refusal::Connections(1).response().0, 503);
    }
}
