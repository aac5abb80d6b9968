//! The proxy under test as a child process (its stderr captured line by
//! line), and what /proc says about it: RSS, open file descriptors, CPU time.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Most log lines kept (a 30-minute run writes a few tens of thousands).
const MAX_LINES: usize = 2_000_000;

/// One line the proxy wrote to stderr, and when it was read.
#[derive(Clone, Debug)]
pub struct LogLine {
    pub at: Instant,
    pub text: String,
}

/// A running `gateway-proxy`, stopped (SIGTERM, then SIGKILL) on drop.
pub struct Proxy {
    child: Child,
    /// Port the proxy picked (`port: 0`), read from its log.
    pub port: u16,
    log: Arc<Mutex<Vec<LogLine>>>,
    config_path: PathBuf,
}

/// `GET path` on loopback; the body if the status is 200.
pub fn http_get(port: u16, path: &str) -> Option<String> {
    let mut s = TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").ok()?;
    let mut resp = String::new();
    let _ = s.read_to_string(&mut resp);
    let (head, body) = resp.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200").then(|| body.to_owned())
}

/// The port of `listening on http://127.0.0.1:PORT ...`.
fn port_of(line: &str) -> Option<u16> {
    let rest = line.split("listening on http://").nth(1)?;
    let addr = rest.split_whitespace().next()?;
    addr.rsplit(':').next()?.parse().ok()
}

impl Proxy {
    /// Writes the config (the brief's keys: token, intents 513, host,
    /// `port: 0`, the fake's `api_url`, `log_level: info`), starts the binary
    /// and returns once it logged its port and answers `GET /health`.
    /// `session_ttl` is set only when given (shorter runs, see `scenario.rs`).
    pub fn start(
        binary: &Path,
        dir: &Path,
        api_url: &str,
        token: &str,
        session_ttl: Option<u64>,
    ) -> Result<Proxy, String> {
        let mut config = serde_json::json!({
            "token": token,
            "intents": 513,
            "host": "127.0.0.1",
            "port": 0,
            "api_url": api_url,
            "log_level": "info",
        });
        if let Some(ttl) = session_ttl {
            config["session_ttl"] = ttl.into();
        }
        let config_path = dir.join(format!("soak-proxy-{}.json", std::process::id()));
        std::fs::write(&config_path, serde_json::to_vec_pretty(&config).unwrap_or_default())
            .map_err(|e| format!("writing {}: {e}", config_path.display()))?;
        let mut child = Command::new(binary)
            .arg("--config")
            .arg(&config_path)
            .env_remove("RUST_LOG")
            .env_remove("TOKEN")
            .env_remove("HOSTNAME")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("starting {}: {e}", binary.display()))?;
        let log = Arc::new(Mutex::new(Vec::new()));
        if let Some(stderr) = child.stderr.take() {
            let log = Arc::clone(&log);
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    let mut l = log.lock().unwrap_or_else(|e| e.into_inner());
                    if l.len() < MAX_LINES {
                        l.push(LogLine { at: Instant::now(), text: line });
                    }
                }
            });
        }
        let mut proxy = Proxy { child, port: 0, log, config_path };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = proxy.child.try_wait() {
                std::thread::sleep(Duration::from_millis(100));
                return Err(format!("the proxy exited ({status}):\n{}", proxy.log_text()));
            }
            if proxy.port == 0 {
                proxy.port = proxy.log_lines().iter().find_map(|l| port_of(&l.text)).unwrap_or(0);
            }
            if proxy.port != 0 && http_get(proxy.port, "/health").is_some() {
                return Ok(proxy);
            }
            if Instant::now() > deadline {
                return Err(format!("the proxy did not answer /health in 30 s:\n{}", proxy.log_text()));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `ws://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("ws://127.0.0.1:{}", self.port)
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Lines the proxy wrote to stderr so far.
    pub fn log_lines(&self) -> Vec<LogLine> {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn log_text(&self) -> String {
        self.log_lines().into_iter().map(|l| l.text).collect::<Vec<_>>().join("\n")
    }

    /// Stops the proxy the way an operator would (SIGTERM), waiting up to
    /// `grace` before killing it; returns how it ended.
    pub fn stop(&mut self, grace: Duration) -> String {
        if let Ok(Some(status)) = self.child.try_wait() {
            return format!("had already exited ({status})");
        }
        if let Ok(pid) = libc::pid_t::try_from(self.child.id()) {
            // SAFETY: kill(2) on our own child's pid; no memory is involved.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                // Let the reader thread take the last lines.
                std::thread::sleep(Duration::from_millis(200));
                return format!("exited after SIGTERM ({status})");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        format!("did not exit {grace:?} after SIGTERM; killed")
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if self.alive() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let _ = std::fs::remove_file(&self.config_path);
    }
}

/// Sums of a few of the proxy's gauges over its shards (`GET /metrics`).
#[derive(Clone, Copy, Debug, Default)]
pub struct Gauges {
    /// `replay_buffer_bytes`: payload bytes kept for client RESUME.
    pub replay_bytes: u64,
    /// `replay_buffer_events`.
    pub replay_events: u64,
    /// `client_sessions`: connected or resumable.
    pub sessions: u64,
    /// `clients_closed_lagging_total` and `replay_evicted_total` (should stay 0).
    pub lagged: u64,
    pub evicted: u64,
}

/// Reads [`Gauges`] from a Prometheus text exposition.
pub fn gauges(metrics: &str) -> Gauges {
    let mut g = Gauges::default();
    for line in metrics.lines().filter(|l| !l.starts_with('#')) {
        let Some((name, value)) = line.rsplit_once(' ') else { continue };
        let name = name.split('{').next().unwrap_or(name);
        let Ok(v) = value.trim().parse::<f64>() else { continue };
        let v = v.max(0.0) as u64;
        let slot = match () {
            () if name.ends_with("replay_buffer_bytes") => &mut g.replay_bytes,
            () if name.ends_with("replay_buffer_events") => &mut g.replay_events,
            () if name.ends_with("client_sessions") => &mut g.sessions,
            () if name.ends_with("clients_closed_lagging_total") => &mut g.lagged,
            () if name.ends_with("replay_evicted_total") => &mut g.evicted,
            () => continue,
        };
        *slot += v;
    }
    g
}

/// USER_HZ: the unit of /proc/PID/stat times.
fn clock_ticks() -> u64 {
    // SAFETY: sysconf has no memory effects.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(t).ok().filter(|t| *t > 0).unwrap_or(100)
}

/// utime + stime of process `pid` (all its threads, living and exited), in seconds.
pub fn cpu_secs(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the command: state is field 3, utime 14, stime 15.
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / clock_ticks() as f64)
}

/// A `Vm*` line of /proc/PID/status, in KiB.
pub fn status_kib(pid: u32, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = text.lines().find(|l| l.starts_with(key) && l[key.len()..].starts_with(':'))?;
    line[key.len() + 1..].trim().trim_end_matches("kB").trim().parse().ok()
}

/// VmRSS in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    status_kib(pid, "VmRSS")
}

/// Open file descriptors: the entries of /proc/PID/fd.
pub fn fd_count(pid: u32) -> Option<usize> {
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count())
}

/// What each open descriptor points at, counted by kind (`socket`,
/// `anon_inode:[io_uring]`, a path...): printed when the count grew.
pub fn fd_kinds(pid: u32) -> Vec<(String, usize)> {
    let mut kinds: std::collections::BTreeMap<String, usize> = Default::default();
    if let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) {
        for e in dir.flatten() {
            let target = std::fs::read_link(e.path()).map(|p| p.display().to_string()).unwrap_or_default();
            // `socket:[12345]` -> `socket`; paths are kept whole.
            let kind = match target.split_once(":[") {
                Some((k, _)) if !target.starts_with("anon_inode") => k.to_owned(),
                _ => target,
            };
            *kinds.entry(kind).or_default() += 1;
        }
    }
    kinds.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_from_log() {
        let l = "[2026-01-01T00:00:00.000Z INFO  gateway_proxy] listening on http://127.0.0.1:41234 (clients connect to ws://127.0.0.1:41234, resume at ws://127.0.0.1:41234)";
        assert_eq!(port_of(l), Some(41234));
        assert_eq!(port_of("something else"), None);
    }

    #[test]
    fn gauges_from_metrics() {
        let text = "# HELP x\ngateway_proxy_replay_buffer_bytes{shard=\"0\"} 100\n\
                    gateway_proxy_replay_buffer_bytes{shard=\"1\"} 50\nclient_sessions{shard=\"1\"} 3\n\
                    replay_evicted_total{shard=\"0\"} 0\n";
        let g = gauges(text);
        assert_eq!((g.replay_bytes, g.sessions, g.evicted), (150, 3, 0));
    }

    #[test]
    fn own_process_readings() {
        let pid = std::process::id();
        assert!(rss_kib(pid).unwrap_or(0) > 0);
        assert!(fd_count(pid).unwrap_or(0) >= 3);
        assert!(cpu_secs(pid).is_some());
    }
}
