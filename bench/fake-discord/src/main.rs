//! `fake-discord`: runs the fake Discord (REST + gateway) on loopback until
//! killed, with a demo event generator injecting MESSAGE_CREATE and
//! TYPING_START into connected shards.

use std::net::IpAddr;
use std::process::ExitCode;
use std::time::Duration;

use fake_discord::{FakeConfig, FakeDiscord};

const USAGE: &str = "\
usage: fake-discord [options]

  --host ADDR                  listen address (default 127.0.0.1)
  --rest-port PORT             REST port (default 8800, 0 = ephemeral)
  --gateway-port PORT          gateway port (default 8801, 0 = ephemeral)
  --token TOKEN                bot token (default fake-token)
  --shards N                   recommended/required shard count (default 4)
  --guilds N                   generated guilds (default 20)
  --members N                  members per guild, bot included (default 5)
  --channels N                 text channels per guild (default 3)
  --roles N                    roles per guild besides @everyone (default 2)
  --unavailable N              last N guilds never become available (default 0)
  --max-concurrency N          session_start_limit.max_concurrency (default 1)
  --heartbeat-interval-ms MS   heartbeat interval in Hello (default 41250)
  --events-per-sec N           demo events injected per second (default 2, 0 = off)
  -h, --help                   this help
";

struct Args {
    config: FakeConfig,
    events_per_sec: f64,
}

fn parse_args() -> Result<Args, String> {
    let mut config = FakeConfig { rest_port: 8800, gateway_port: 8801, ..FakeConfig::default() };
    let mut events_per_sec = 2.0;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        if flag == "-h" || flag == "--help" {
            return Err(String::new());
        }
        let (name, inline) = match flag.split_once('=') {
            Some((n, v)) => (n.to_owned(), Some(v.to_owned())),
            None => (flag.clone(), None),
        };
        let mut value = || inline.clone().or_else(|| args.next()).ok_or_else(|| format!("{name} needs a value"));
        fn num<T: std::str::FromStr>(name: &str, v: String) -> Result<T, String> {
            v.parse().map_err(|_| format!("{name}: invalid value {v:?}"))
        }
        match name.as_str() {
            "--host" => config.host = value()?.parse::<IpAddr>().map_err(|e| format!("--host: {e}"))?,
            "--rest-port" => config.rest_port = num(&name, value()?)?,
            "--gateway-port" => config.gateway_port = num(&name, value()?)?,
            "--token" => config.token = value()?,
            "--shards" => config.shards = num(&name, value()?)?,
            "--guilds" => config.guilds = num(&name, value()?)?,
            "--members" => config.members_per_guild = num(&name, value()?)?,
            "--channels" => config.channels_per_guild = num(&name, value()?)?,
            "--roles" => config.roles_per_guild = num(&name, value()?)?,
            "--unavailable" => config.unavailable_guilds = num(&name, value()?)?,
            "--max-concurrency" => config.max_concurrency = num(&name, value()?)?,
            "--heartbeat-interval-ms" => config.heartbeat_interval_ms = num(&name, value()?)?,
            "--events-per-sec" => events_per_sec = num(&name, value()?)?,
            _ => return Err(format!("unknown option {flag}")),
        }
    }
    if config.shards == 0 {
        return Err("--shards must be at least 1".to_owned());
    }
    Ok(Args { config, events_per_sec })
}

#[tokio::main]
async fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let args = match parse_args() {
        Ok(args) => args,
        Err(e) if e.is_empty() => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("fake-discord: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let fake = match FakeDiscord::start(args.config).await {
        Ok(fake) => fake,
        Err(e) => {
            eprintln!("fake-discord: cannot listen: {e}");
            return ExitCode::FAILURE;
        }
    };
    let config = fake.config();
    println!("fake-discord api:     {}", fake.api_url());
    println!("fake-discord gateway: {}", fake.gateway_url());
    println!(
        "token {:?}, {} shards, {} guilds x {} members, bot user id {}, {} demo events/s",
        fake.token(),
        config.shards,
        config.guilds,
        config.members_per_guild,
        fake.bot_user_id(),
        args.events_per_sec
    );
    tokio::spawn(fake_discord::demo::run_demo_events(fake.clone(), args.events_per_sec));
    // Run until killed.
    loop {
        tokio::time::sleep(Duration::from_secs(3600)).await;
    }
}
