//! Command-line options.

use std::path::PathBuf;
use std::time::Duration;

pub const USAGE: &str = "\
usage: cargo run --release -p soak -- [options]

  --minutes N            length of the faulted run (default 30; 2 for a quick check)
  --shards N             shards of the fake Discord and the proxy (default 16)
  --rate N               MESSAGE_CREATE events per second per shard (default 20)
  --drop-every-secs N    one upstream fault every N seconds, shards round robin (default 20)
  --proxy PATH           proxy binary to test (default target/release/gateway-proxy; implies --no-build)
  --no-build             do not run `cargo build --release -p gateway-proxy` first
  -h, --help             this help
";

/// What the run does.
#[derive(Clone, Debug)]
pub struct Args {
    /// Length of the faulted phase (injection, faults, client restarts).
    pub duration: Duration,
    pub shards: u32,
    /// Events per second per shard.
    pub rate: f64,
    /// Time between two upstream faults.
    pub drop_every: Duration,
    /// The proxy binary; `None`: the workspace's release build.
    pub proxy: Option<PathBuf>,
    pub build: bool,
}

/// Parses `std::env::args`; `Err("")` asks for the usage text.
pub fn parse() -> Result<Args, String> {
    let mut a = Args {
        duration: Duration::from_secs(30 * 60),
        shards: 16,
        rate: 20.0,
        drop_every: Duration::from_secs(20),
        proxy: None,
        build: true,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut num = |name: &str| -> Result<f64, String> {
            it.next()
                .and_then(|v| v.parse::<f64>().ok())
                .filter(|v| v.is_finite() && *v > 0.0)
                .ok_or_else(|| format!("{name} needs a positive number"))
        };
        match flag.as_str() {
            "--minutes" => a.duration = Duration::from_secs_f64(num("--minutes")?.min(24.0 * 60.0) * 60.0),
            "--shards" => a.shards = num("--shards")?.clamp(1.0, 256.0) as u32,
            "--rate" => a.rate = num("--rate")?.min(2000.0),
            "--drop-every-secs" => a.drop_every = Duration::from_secs_f64(num("--drop-every-secs")?.max(1.0)),
            "--proxy" => {
                a.proxy = Some(it.next().map(PathBuf::from).ok_or("--proxy needs a path")?);
                a.build = false;
            }
            "--no-build" => a.build = false,
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(a)
}

/// Resolves once the flag is (or already was) true, or its sender is gone.
pub async fn raised(flag: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = flag.wait_for(|s| *s).await;
}
