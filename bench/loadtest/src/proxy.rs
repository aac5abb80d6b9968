//! The proxy under test as a child process, and what /proc says about it.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Intents the proxy identifies with (`--proxy-intents`).
static INTENTS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(513);

/// Sets the intents the proxy identifies with.
pub fn set_intents(intents: u64) {
    INTENTS.store(intents, std::sync::atomic::Ordering::Relaxed);
}
/// `upstream_compression` of every proxy (`--upstream-compression`).
static UPSTREAM_COMPRESSION: Mutex<String> = Mutex::new(String::new());

/// Sets the transport compression every proxy asks of the fake.
pub fn set_upstream_compression(value: &str) {
    *UPSTREAM_COMPRESSION.lock().unwrap() = value.to_owned();
}

/// Settings of one proxy process.
#[derive(Clone, Debug)]
pub struct ProxySettings {
    pub cores: usize,
    pub shards: u32,
    pub members: bool,
    /// `replay_buffer` (the proxy's default when `None`).
    pub replay_buffer: Option<usize>,
    /// `backpressure` (the proxy's default when `None`).
    pub backpressure: Option<usize>,
}

/// A running `gateway-proxy`, killed on drop.
pub struct Proxy {
    child: Child,
    pub port: u16,
    pub settings: ProxySettings,
    log: Arc<Mutex<Vec<String>>>,
    config_path: PathBuf,
}

/// Cumulative CPU of a process, two ways.
#[derive(Clone, Copy, Debug, Default)]
pub struct Cpu {
    /// utime + stime from /proc/PID/stat, in ns (clock-tick resolution).
    pub stat_ns: u64,
    /// Sum of `se.sum_exec_runtime` over /proc/PID/task/*/sched, in ns
    /// (precise, but misses threads that exited); 0 if unavailable.
    pub sched_ns: u64,
}

impl Cpu {
    /// CPU seconds spent between `self` and `later`: the precise per-thread
    /// figure when it agrees with utime+stime within a few ticks (no thread
    /// came or went), else utime+stime.
    pub fn secs_until(self, later: Cpu) -> f64 {
        let stat = later.stat_ns.saturating_sub(self.stat_ns) as f64 / 1e9;
        let sched = later.sched_ns.saturating_sub(self.sched_ns) as f64 / 1e9;
        if self.sched_ns > 0 && later.sched_ns > 0 && (stat - sched).abs() <= 0.03 + stat * 0.05 {
            sched
        } else {
            stat
        }
    }
}

/// USER_HZ: the unit of /proc/PID/stat and /proc/stat times.
pub fn clock_ticks() -> u64 {
    static TICKS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100)
    })
}

/// CPU time of process `pid`.
pub fn cpu_of(pid: u32) -> Cpu {
    let ticks = clock_ticks();
    let mut cpu = Cpu::default();
    if let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        if let Some((_, rest)) = stat.rsplit_once(')') {
            let f: Vec<&str> = rest.split_whitespace().collect();
            // After the command: state is field 3, utime 14, stime 15.
            let utime: u64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0);
            let stime: u64 = f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
            cpu.stat_ns = (utime + stime) * 1_000_000_000 / ticks;
        }
    }
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for task in tasks.flatten() {
            let Ok(text) = std::fs::read_to_string(task.path().join("sched")) else { continue };
            let Some(line) = text.lines().find(|l| l.starts_with("se.sum_exec_runtime")) else { continue };
            let Some(ms) = line.split(':').nth(1).and_then(|v| v.trim().parse::<f64>().ok()) else { continue };
            cpu.sched_ns += (ms * 1e6) as u64;
        }
    }
    cpu
}

/// Context switches of every thread of `pid` (voluntary and not): each is
/// the thread leaving the CPU, so over a window this counts its wake-ups.
pub fn wakeups_of(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return 0 };
    let mut n = 0;
    for task in tasks.flatten() {
        let Ok(text) = std::fs::read_to_string(task.path().join("status")) else { continue };
        for line in text.lines() {
            if let Some(v) = line
                .strip_prefix("voluntary_ctxt_switches:")
                .or_else(|| line.strip_prefix("nonvoluntary_ctxt_switches:"))
            {
                n += v.trim().parse::<u64>().unwrap_or(0);
            }
        }
    }
    n
}

/// A `Vm*` line of /proc/PID/status, in KiB.
pub fn status_kib(pid: u32, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = text.lines().find(|l| l.starts_with(key) && l[key.len()..].starts_with(':'))?;
    line[key.len() + 1..].trim().trim_end_matches("kB").trim().parse().ok()
}

fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
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

impl Proxy {
    /// Writes a config against the fake and starts the binary; returns once
    /// `GET /health` answers.
    pub fn start(
        binary: &Path,
        dir: &Path,
        settings: ProxySettings,
        api_url: &str,
        gateway_url: &str,
        token: &str,
    ) -> Result<Proxy, String> {
        let port = free_port().map_err(|e| format!("no free port: {e}"))?;
        let mut config = serde_json::json!({
            // LOADTEST_PROXY_LOG overrides it, to look into a failure.
            "log_level": std::env::var("LOADTEST_PROXY_LOG").unwrap_or_else(|_| "warn".into()),
            "token": token,
            "intents": INTENTS.load(std::sync::atomic::Ordering::Relaxed),
            "host": "127.0.0.1",
            "port": port,
            "shards": settings.shards,
            "cores": settings.cores,
            "validate_token": true,
            "api_url": api_url,
            "gateway_url": gateway_url,
            // The defaults (channels, roles, current_member) plus, for the
            // members rows, every member with its user object.
            "cache": { "members": settings.members, "users": settings.members },
        });
        if let Some(n) = settings.replay_buffer {
            config["replay_buffer"] = n.into();
        }
        if let Some(n) = settings.backpressure {
            config["backpressure"] = n.into();
        }
        let compression = UPSTREAM_COMPRESSION.lock().unwrap().clone();
        if !compression.is_empty() {
            config["upstream_compression"] = compression.into();
        }
        let config_path = dir.join(format!("proxy-{port}.json"));
        std::fs::write(&config_path, serde_json::to_vec_pretty(&config).unwrap_or_default())
            .map_err(|e| format!("writing {}: {e}", config_path.display()))?;
        let mut child = Command::new(binary)
            .arg("--config")
            .arg(&config_path)
            .env_remove("RUST_LOG")
            .env_remove("TOKEN")
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
                    if l.len() < 10_000 {
                        l.push(line);
                    }
                }
            });
        }
        let mut proxy = Proxy { child, port, settings, log, config_path };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = proxy.child.try_wait() {
                std::thread::sleep(Duration::from_millis(100));
                return Err(format!("the proxy exited ({status}):\n{}", proxy.log_lines().join("\n")));
            }
            if http_get(port, "/health").is_some() {
                return Ok(proxy);
            }
            if Instant::now() > deadline {
                return Err(format!("the proxy did not answer /health in 30 s:\n{}", proxy.log_lines().join("\n")));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn url(&self) -> String {
        format!("ws://127.0.0.1:{}", self.port)
    }

    pub fn cpu(&self) -> Cpu {
        cpu_of(self.pid())
    }

    /// VmRSS in KiB.
    pub fn rss_kib(&self) -> u64 {
        status_kib(self.pid(), "VmRSS").unwrap_or(0)
    }

    /// VmHWM (peak RSS) in KiB.
    pub fn hwm_kib(&self) -> u64 {
        status_kib(self.pid(), "VmHWM").unwrap_or(0)
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Lines the proxy wrote to stderr so far.
    pub fn log_lines(&self) -> Vec<String> {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.config_path);
    }
}
