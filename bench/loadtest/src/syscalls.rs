//! The proxy's syscalls over a window, counted by `perf stat` on the
//! kernel's syscall tracepoints (attached to the running process, every
//! thread). Enabling the tracepoints adds a little work to every syscall on
//! the machine, so runs that report CPU figures do not count syscalls.

use std::io::Read;
use std::process::{Child, Command, Stdio};

/// Syscalls named in the report; the rest are counted in the total only.
const NAMED: &[&str] = &[
    "io_uring_enter",
    "membarrier",
    "futex",
    "epoll_wait",
    "epoll_pwait",
    "read",
    "write",
    "writev",
    "recvfrom",
    "sendto",
    "sendmsg",
    "recvmsg",
];

/// Counts over one window.
#[derive(Clone, Debug, Default)]
pub struct Counts {
    /// Every syscall of every thread.
    pub total: u64,
    /// The named ones that happened, most frequent first.
    pub by_name: Vec<(String, u64)>,
}

/// A running `perf stat`.
pub struct Counter {
    child: Child,
}

impl Counter {
    /// Starts counting the syscalls of `pid`; `None` if perf is missing or refused.
    pub fn start(pid: u32) -> Option<Counter> {
        let mut events = vec!["raw_syscalls:sys_enter".to_owned()];
        events.extend(NAMED.iter().map(|n| format!("syscalls:sys_enter_{n}")));
        let child = Command::new("perf")
            .args(["stat", "-x", ",", "-e", &events.join(","), "-p", &pid.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .ok()?;
        // perf attaches within a few ms; a window starting a little early is
        // harmless, one missing its start is not.
        std::thread::sleep(std::time::Duration::from_millis(300));
        Some(Counter { child })
    }

    /// Stops counting (SIGINT, as perf expects) and reads the counts.
    pub fn stop(mut self) -> Option<Counts> {
        // SAFETY: signalling our own child, still unreaped.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGINT) };
        let mut text = String::new();
        self.child.stderr.take()?.read_to_string(&mut text).ok()?;
        let _ = self.child.wait();
        parse(&text)
    }
}

/// Parses `perf stat -x ,` output: `count,unit,event,...` per line.
fn parse(text: &str) -> Option<Counts> {
    let mut counts = Counts::default();
    let mut seen = false;
    for line in text.lines() {
        let mut f = line.split(',');
        let (Some(count), Some(_), Some(event)) = (f.next(), f.next(), f.next()) else { continue };
        let Ok(n) = count.parse::<u64>() else { continue };
        if event == "raw_syscalls:sys_enter" {
            counts.total = n;
            seen = true;
        } else if let Some(name) = event.strip_prefix("syscalls:sys_enter_") {
            if n > 0 {
                counts.by_name.push((name.to_owned(), n));
            }
        }
    }
    counts.by_name.sort_by_key(|c| std::cmp::Reverse(c.1));
    seen.then_some(counts)
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_perf_csv() {
        let text = "1234,,raw_syscalls:sys_enter,100,100.00,,\n\
                    <not counted>,,syscalls:sys_enter_futex,0,100.00,,\n\
                    1000,,syscalls:sys_enter_io_uring_enter,100,100.00,,\n\
                    0,,syscalls:sys_enter_read,100,100.00,,\n\
                    30,,syscalls:sys_enter_membarrier,100,100.00,,\n";
        let c = super::parse(text).unwrap();
        assert_eq!(c.total, 1234);
        assert_eq!(c.by_name, vec![("io_uring_enter".to_owned(), 1000), ("membarrier".to_owned(), 30)]);
        assert!(super::parse("perf: not found").is_none());
    }
}
