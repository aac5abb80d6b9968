//! `soak`: a long run of gateway-proxy under upstream faults and client
//! restarts (not part of CI; `cargo run --release -p soak -- --minutes 2` for
//! a quick check, 30 minutes by default).
//!
//! Starts the fake Discord in this process (16 shards, a few guilds each)
//! and the release `gateway-proxy` binary as a child against it, then for
//! the run's length:
//!
//! - injects `MESSAGE_CREATE` events on every shard at a trickle (20/s per
//!   shard), each carrying a per-shard counter `soak <shard> <n>`;
//! - every 20 s gives one shard's upstream connection a fault, cycling
//!   through a TCP reset, close 4000, close 1001, op 7 and op 9 (resumable);
//! - runs one client per shard (plain JSON, zlib-stream, zstd-stream, or
//!   Identify `compress: true`, round robin) that restarts every 2-6 s,
//!   alternating RESUME and a new IDENTIFY.
//!
//! It measures and checks:
//!
//! - delivery: every client sees every event of its shard it is owed
//!   exactly once and in order across its resumes (and contiguously from
//!   wherever a new Identify starts), `s` +1 on every dispatch, READY then
//!   the guild snapshot, the replay then RESUMED;
//! - the proxy's RSS (VmRSS, every 10 s, with the proxy's replay-buffer and
//!   session gauges from `/metrics`): the end within 10% of the figure after
//!   the first 5 minutes (a run under 10 minutes gives the proxy a shorter
//!   `session_ttl` and takes the baseline once its retention levels off:
//!   see `scenario::MemoryPlan`);
//! - its file descriptors (/proc/PID/fd) after warm-up and at the end, both
//!   with every shard and client connected: no growth beyond 2;
//! - its CPU time (utime + stime) in total and per event;
//! - its log: no ERROR line, no WARN line the scenario's faults do not
//!   explain (see `logs.rs`).
//!
//! Prints a table and PASS/FAIL per criterion; exits non-zero on FAIL.
//! Every wait is bounded: the tool always stops by itself.

mod args;
mod check;
mod client;
mod driver;
mod ledger;
mod logs;
mod proxy;
mod report;
mod scenario;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap_or_else(|_| PathBuf::from("."))
}

fn build_proxy(root: &Path) -> Result<(), String> {
    eprintln!("soak: cargo build --release -p gateway-proxy");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = std::process::Command::new(cargo)
        .args(["build", "--release", "-p", "gateway-proxy", "--bin", "gateway-proxy"])
        .current_dir(root)
        .status()
        .map_err(|e| format!("running cargo: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("cargo build --release -p gateway-proxy failed ({status})"))
    }
}

fn main() -> ExitCode {
    let args = match args::parse() {
        Ok(a) => a,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("soak: {e}");
            }
            eprint!("{}", args::USAGE);
            return ExitCode::from(2);
        }
    };
    let root = workspace_root();
    if args.build {
        if let Err(e) = build_proxy(&root) {
            eprintln!("soak: {e}");
            return ExitCode::FAILURE;
        }
    }
    let binary = args.proxy.clone().unwrap_or_else(|| {
        let target = std::env::var("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|_| root.join("target"));
        target.join("release/gateway-proxy")
    });
    if !binary.is_file() {
        eprintln!("soak: {} not found; build it with `cargo build --release -p gateway-proxy`", binary.display());
        return ExitCode::FAILURE;
    }
    let rt = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("soak: tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(scenario::run(args, &binary));
    rt.shutdown_timeout(Duration::from_secs(2));
    match result {
        Ok(results) => {
            if report::print(&results) {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("soak: {e}");
            eprintln!("RESULT: FAIL");
            ExitCode::FAILURE
        }
    }
}
