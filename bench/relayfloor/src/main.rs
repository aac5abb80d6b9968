//! `relayfloor`: CPU per message of a bare relay (tokio, glommio) at a
//! trickle, each message its own write. See README.md.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{FromRawFd, IntoRawFd};
use std::process::{Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Bytes per message.
const MESSAGE: usize = 1024;
/// Runs per relay kind.
const RUNS: usize = 3;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("relay") => {
            let (kind, port, pairs) = (&args[2], args[3].parse().unwrap_or(0), args[4].parse().unwrap_or(1));
            let listeners = match listen(port) {
                Ok(l) => l,
                Err(e) => {
                    eprintln!("relayfloor: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match kind.as_str() {
                "tokio" => relay_tokio(listeners, pairs),
                _ => relay_glommio(listeners, pairs),
            }
            ExitCode::SUCCESS
        }
        _ => bench(&args[1..]),
    }
}

fn listen(port: u16) -> std::io::Result<(TcpListener, TcpListener)> {
    Ok((TcpListener::bind(("127.0.0.1", port))?, TcpListener::bind(("127.0.0.1", port + 1))?))
}

/// Accepts `pairs` upstream connections, then `pairs` downstream ones, paired in order.
fn accept_pairs((up, down): (TcpListener, TcpListener), pairs: usize) -> Vec<(TcpStream, TcpStream)> {
    let ups: Vec<TcpStream> = (0..pairs).filter_map(|_| up.accept().ok().map(|(s, _)| s)).collect();
    ups.into_iter().filter_map(|u| down.accept().ok().map(|(d, _)| (u, d))).collect()
}

fn relay_tokio(listeners: (TcpListener, TcpListener), pairs: usize) {
    let pairs = accept_pairs(listeners, pairs);
    let Ok(rt) = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_io().build() else { return };
    rt.block_on(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut tasks = Vec::new();
        for (u, d) in pairs {
            let (Ok(()), Ok(())) = (u.set_nonblocking(true), d.set_nonblocking(true)) else { continue };
            let (Ok(mut u), Ok(mut d)) = (tokio::net::TcpStream::from_std(u), tokio::net::TcpStream::from_std(d))
            else {
                continue;
            };
            tasks.push(tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                while let Ok(n @ 1..) = u.read(&mut buf).await {
                    if d.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
    });
}

fn relay_glommio(listeners: (TcpListener, TcpListener), pairs: usize) {
    let pairs = accept_pairs(listeners, pairs);
    let mut per_core: Vec<Vec<(TcpStream, TcpStream)>> = vec![Vec::new(), Vec::new()];
    for (i, p) in pairs.into_iter().enumerate() {
        per_core[i % 2].push(p);
    }
    let handles: Vec<_> = per_core
        .into_iter()
        .enumerate()
        .filter_map(|(core, pairs)| {
            glommio::LocalExecutorBuilder::new(glommio::Placement::Fixed(core))
                .io_memory(256 << 10)
                .spawn(move || async move {
                    use futures_lite::{AsyncReadExt, AsyncWriteExt};
                    let mut tasks = Vec::new();
                    for (u, d) in pairs {
                        // SAFETY: descriptors we own, handed over to glommio.
                        let mut u = unsafe { glommio::net::TcpStream::from_raw_fd(u.into_raw_fd()) };
                        // SAFETY: as above.
                        let mut d = unsafe { glommio::net::TcpStream::from_raw_fd(d.into_raw_fd()) };
                        tasks.push(glommio::spawn_local(async move {
                            let mut buf = vec![0u8; 65536];
                            while let Ok(n @ 1..) = u.read(&mut buf).await {
                                if d.write_all(&buf[..n]).await.is_err() {
                                    break;
                                }
                            }
                        }));
                    }
                    for t in tasks {
                        t.await;
                    }
                })
                .ok()
        })
        .collect();
    for h in handles {
        let _ = h.join();
    }
}

/// CPU nanoseconds of every thread of `pid`.
fn cpu_ns(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return 0 };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("sched")).ok())
        .filter_map(|s| {
            let line = s.lines().find(|l| l.starts_with("se.sum_exec_runtime"))?.to_owned();
            line.split(':').nth(1)?.trim().parse::<f64>().ok()
        })
        .map(|ms| (ms * 1e6) as u64)
        .sum()
}

fn free_port() -> u16 {
    // Two consecutive ports: the relay listens on both.
    for _ in 0..100 {
        if let Ok(l) = TcpListener::bind("127.0.0.1:0") {
            if let Ok(a) = l.local_addr() {
                let p = a.port();
                if p < u16::MAX && TcpListener::bind(("127.0.0.1", p + 1)).is_ok() {
                    return p;
                }
            }
        }
    }
    0
}

/// One run: starts the relay, connects, sends at `rate` for `secs`, returns CPU µs per message.
fn run(kind: &str, pairs: usize, rate: f64, secs: f64) -> Result<f64, String> {
    let port = free_port();
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut child = Command::new(exe)
        .args(["relay", kind, &port.to_string(), &pairs.to_string()])
        .stdin(Stdio::null())
        .spawn()
        .map_err(|e| e.to_string())?;
    let result = drive(child.id(), port, pairs, rate, secs);
    let _ = child.kill();
    let _ = child.wait();
    result
}

fn connect(port: u16) -> Result<TcpStream, String> {
    for _ in 0..100 {
        if let Ok(s) = TcpStream::connect(("127.0.0.1", port)) {
            return Ok(s);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(format!("cannot connect to the relay on port {port}"))
}

fn drive(pid: u32, port: u16, pairs: usize, rate: f64, secs: f64) -> Result<f64, String> {
    let mut ups = Vec::new();
    for _ in 0..pairs {
        let s = connect(port)?;
        let _ = s.set_nodelay(true);
        ups.push(s);
    }
    std::thread::sleep(Duration::from_millis(200));
    let downs: Vec<TcpStream> = (0..pairs).map(|_| connect(port + 1)).collect::<Result<_, _>>()?;
    let received = Arc::new(AtomicUsize::new(0));
    for chunk in downs.chunks(16) {
        let mut chunk: Vec<TcpStream> = chunk.iter().filter_map(|d| d.try_clone().ok()).collect();
        let received = received.clone();
        std::thread::spawn(move || {
            use std::os::fd::AsRawFd;
            let mut fds: Vec<libc::pollfd> =
                chunk.iter().map(|d| libc::pollfd { fd: d.as_raw_fd(), events: libc::POLLIN, revents: 0 }).collect();
            let mut buf = vec![0u8; 65536];
            loop {
                // SAFETY: `fds` is a valid array of pollfd for the call's length.
                if unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 3000) } <= 0 {
                    return;
                }
                for (i, f) in fds.iter_mut().enumerate() {
                    if f.revents != 0 {
                        f.revents = 0;
                        match chunk[i].read(&mut buf) {
                            Ok(n @ 1..) => {
                                received.fetch_add(n, Ordering::Relaxed);
                            }
                            _ => return,
                        }
                    }
                }
            }
        });
    }
    let total = (rate * secs) as usize;
    let message = vec![b'x'; MESSAGE];
    let interval = Duration::from_secs_f64(1.0 / rate);
    std::thread::sleep(Duration::from_millis(500));
    let cpu0 = cpu_ns(pid);
    let t0 = Instant::now();
    for i in 0..total {
        let due = t0 + interval * i as u32;
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        ups[i % pairs].write_all(&message).map_err(|e| format!("write: {e}"))?;
    }
    let want = total * MESSAGE;
    while received.load(Ordering::Relaxed) < want && t0.elapsed() < Duration::from_secs_f64(secs + 10.0) {
        std::thread::sleep(Duration::from_millis(10));
    }
    let cpu = cpu_ns(pid).saturating_sub(cpu0);
    if received.load(Ordering::Relaxed) < want {
        return Err("not every message came through".into());
    }
    Ok(cpu as f64 / 1e3 / total as f64)
}

fn bench(args: &[String]) -> ExitCode {
    let num = |i: usize, default: f64| args.get(i).and_then(|v| v.parse().ok()).unwrap_or(default);
    let (pairs, rate, secs) = (num(0, 64.0) as usize, num(1, 2000.0), num(2, 10.0));
    if pairs == 0 || rate <= 0.0 || secs <= 0.0 {
        eprintln!("usage: relayfloor [PAIRS MESSAGES_PER_SEC SECONDS]");
        return ExitCode::from(2);
    }
    let mut results: Vec<(&str, Vec<f64>)> = vec![("tokio", Vec::new()), ("glommio", Vec::new())];
    for run_no in 0..RUNS {
        for (kind, runs) in results.iter_mut() {
            eprintln!("relayfloor: run {}/{RUNS}: {kind}", run_no + 1);
            match run(kind, pairs, rate, secs) {
                Ok(us) => runs.push(us),
                Err(e) => eprintln!("relayfloor: {kind}: {e}"),
            }
        }
    }
    println!("relay CPU per 1 KB message, {pairs} pairs, {rate} messages/s in total, {secs} s, {RUNS} runs");
    println!();
    println!("| relay | us per message, median | spread |");
    println!("|---|---:|---:|");
    for (kind, mut runs) in results {
        runs.sort_by(f64::total_cmp);
        match (runs.first(), runs.get(runs.len() / 2), runs.last()) {
            (Some(lo), Some(mid), Some(hi)) => println!("| {kind} | {mid:.1} | {lo:.1}-{hi:.1} |"),
            _ => println!("| {kind} | failed | |"),
        }
    }
    ExitCode::SUCCESS
}
