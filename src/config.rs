//! The configuration file (`config.json`) and its validation.
//!
//! Keys are upward-compatible with the original gateway-proxy. Unknown keys
//! are ignored with a warning so that an operator's old file keeps working;
//! a wrong type or value stops the proxy with a message naming the key.

use serde::Deserialize;
use std::{fmt, net::IpAddr, path::Path};

/// Default port for clients.
pub const DEFAULT_PORT: u16 = 7878;
/// Default Discord REST base.
pub const DEFAULT_API_URL: &str = "https://discord.com/api/v10";
/// Default `replay_memory`: 256 MiB for the whole process.
pub const DEFAULT_REPLAY_MEMORY: u64 = 256 << 20;

/// A configuration error that names the key and what was wrong.
#[derive(Debug)]
pub enum ConfigError {
    /// The file could not be read.
    Read(String, std::io::Error),
    /// The file is not valid JSON or a key has the wrong type.
    Parse {
        /// Path of the offending key, e.g. `cache.members`.
        key: String,
        /// What serde said.
        message: String,
    },
    /// A key has a value outside what it accepts.
    Invalid {
        /// The key.
        key: &'static str,
        /// What was wrong.
        message: String,
    },
    /// An environment variable the proxy reads (`SSL_CERT_FILE`) is not usable.
    Env {
        /// The variable.
        var: &'static str,
        /// What was wrong.
        message: String,
    },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Read(path, e) => write!(f, "cannot read config file {path}: {e}"),
            Self::Parse { key, message } if key.is_empty() || key == "." => {
                write!(f, "config is not valid: {message}")
            }
            Self::Parse { key, message } => write!(f, "config key `{key}`: {message}"),
            Self::Invalid { key, message } => write!(f, "config key `{key}`: {message}"),
            Self::Env { var, message } => write!(f, "environment variable {var}: {message}"),
        }
    }
}

impl std::error::Error for ConfigError {}

/// Which parts of guild state are cached (and so replayed in GUILD_CREATE).
#[derive(Debug, Clone, serde::Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct CacheConfig {
    /// Channels and threads.
    pub channels: bool,
    /// Roles.
    pub roles: bool,
    /// Custom emojis.
    pub emojis: bool,
    /// Stickers.
    pub stickers: bool,
    /// Every member (GUILD_MEMBERS intent needed to keep it complete).
    pub members: bool,
    /// The bot's own member in each guild.
    pub current_member: bool,
    /// User objects of cached members.
    pub users: bool,
    /// Presences.
    pub presences: bool,
    /// Voice states.
    pub voice_states: bool,
    /// Stage instances.
    pub stage_instances: bool,
    /// Scheduled events.
    pub scheduled_events: bool,
    /// Soundboard sounds.
    pub soundboard_sounds: bool,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            channels: true,
            roles: true,
            emojis: false,
            stickers: false,
            members: false,
            current_member: true,
            users: false,
            presences: false,
            voice_states: false,
            stage_instances: false,
            scheduled_events: false,
            soundboard_sounds: false,
        }
    }
}

impl CacheConfig {
    /// Every kind cached (benchmarks and tests of the whole cache).
    pub fn everything() -> Self {
        Self {
            channels: true,
            roles: true,
            emojis: true,
            stickers: true,
            members: true,
            current_member: true,
            users: true,
            presences: true,
            voice_states: true,
            stage_instances: true,
            scheduled_events: true,
            soundboard_sounds: true,
        }
    }
}

/// Who paces IDENTIFYs (`identify_queue`): this process alone, or a
/// coordinator shared by every proxy of the bot.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum IdentifyQueueConfig {
    /// One turn per bucket every 5 s, counted in this process only.
    #[default]
    Local,
    /// Redis keys `<prefix>:identify:<bucket>` taken with `SET NX PX`.
    Redis {
        /// `redis://HOST:PORT/DB` (or `rediss://`, `redis+unix://`).
        url: String,
        /// Key prefix; `None`: derived from the bot's id.
        prefix: Option<String>,
    },
    /// twilight's gateway-queue: `GET <url>/?shard=<id>`, answered when the shard may identify.
    Http {
        /// `http://HOST:PORT`.
        url: String,
    },
}

/// The URLs clients use to reach each instance of the bot's proxies
/// (`instances`): instance `i` runs shards `[i × n, (i + 1) × n)`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum Instances {
    /// One URL per instance, in order.
    List(Vec<String>),
    /// A URL with `{ordinal}` in it (e.g. a StatefulSet's stable pod names).
    Pattern(String),
}

/// `identify_queue` as written in the file.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum RawIdentifyQueue {
    Name(String),
    Spec {
        #[serde(rename = "type")]
        kind: String,
        url: Option<String>,
        prefix: Option<String>,
    },
}

impl RawIdentifyQueue {
    fn validate(self) -> Result<IdentifyQueueConfig, ConfigError> {
        let (kind, url, prefix) = match self {
            Self::Name(name) => (name, None, None),
            Self::Spec { kind, url, prefix } => (kind, url, prefix),
        };
        let url = |schemes: &[&str]| -> Result<String, ConfigError> {
            let Some(url) = url.clone() else {
                return Err(invalid("identify_queue.url", format!("missing: the {kind} coordinator's address")));
            };
            check_url("identify_queue.url", &url, schemes)?;
            Ok(url.trim_end_matches('/').to_owned())
        };
        match kind.as_str() {
            "local" => Ok(IdentifyQueueConfig::Local),
            "redis" => {
                if prefix.as_deref().is_some_and(|p| p.is_empty() || p.contains(char::is_whitespace)) {
                    return Err(invalid("identify_queue.prefix", "must be a non-empty key prefix without spaces"));
                }
                Ok(IdentifyQueueConfig::Redis { url: url(&["redis", "rediss", "redis+unix"])?, prefix })
            }
            "http" => Ok(IdentifyQueueConfig::Http { url: url(&["http"])? }),
            other => Err(invalid("identify_queue", format!("`{other}` is not one of local, redis, http"))),
        }
    }
}

/// The bot's activity as set in Identify (`{{shard}}` in `name` becomes the shard id).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct Activity {
    /// Activity type (0 playing, 1 streaming, 2 listening, 3 watching, 4 custom, 5 competing).
    #[serde(rename = "type", alias = "kind", default)]
    pub kind: u8,
    /// Shown text.
    pub name: String,
    /// Stream URL, for type 1.
    #[serde(default)]
    pub url: Option<String>,
    /// Custom status text, for type 4.
    #[serde(default)]
    pub state: Option<String>,
}

#[derive(Deserialize)]
#[serde(default)]
struct RawConfig {
    log_level: String,
    token: Option<String>,
    intents: Option<u64>,
    port: u16,
    host: IpAddr,
    shards: Option<u32>,
    shard_start: Option<u32>,
    shard_end: Option<u32>,
    activity: Option<Activity>,
    status: Option<String>,
    backpressure: usize,
    validate_token: bool,
    externally_accessible_url: Option<String>,
    cache: CacheConfig,
    cores: Option<usize>,
    sched_slice_us: u64,
    api_url: String,
    gateway_url: Option<String>,
    identify_timeout_secs: u64,
    session_ttl: u64,
    heartbeat_interval: u64,
    replay_buffer: usize,
    replay_buffer_bytes: usize,
    replay_memory: u64,
    max_sessions: usize,
    max_connections: usize,
    max_unidentified_connections: usize,
    max_unidentified_per_address: usize,
    handshake_timeout_secs: u64,
    max_request_head_bytes: usize,
    upstream_compression: String,
    compression: bool,
    client_intents: bool,
    strict_intents: bool,
    state_file: Option<std::path::PathBuf>,
    tls_ca_file: Option<std::path::PathBuf>,
    identify_queue: Option<RawIdentifyQueue>,
    shards_per_instance: Option<u32>,
    instances: Option<Instances>,
    #[serde(flatten)]
    unknown: serde_json::Map<String, serde_json::Value>,
}

impl Default for RawConfig {
    fn default() -> Self {
        Self {
            log_level: "info".into(),
            token: None,
            intents: None,
            port: DEFAULT_PORT,
            host: IpAddr::from([0, 0, 0, 0]),
            shards: None,
            shard_start: None,
            shard_end: None,
            activity: None,
            status: None,
            backpressure: 4_000,
            validate_token: true,
            externally_accessible_url: None,
            cache: CacheConfig::default(),
            cores: None,
            sched_slice_us: 100,
            api_url: DEFAULT_API_URL.into(),
            gateway_url: None,
            identify_timeout_secs: 30,
            session_ttl: 180,
            heartbeat_interval: 41_250,
            replay_buffer: 20_000,
            replay_buffer_bytes: 16 << 20,
            replay_memory: DEFAULT_REPLAY_MEMORY,
            max_sessions: 64,
            max_connections: 5_000,
            max_unidentified_connections: 2_000,
            max_unidentified_per_address: 1_000,
            handshake_timeout_secs: 10,
            max_request_head_bytes: crate::downstream::http::MAX_HEAD,
            upstream_compression: "none".into(),
            compression: true,
            client_intents: true,
            strict_intents: false,
            state_file: None,
            tls_ca_file: None,
            identify_queue: None,
            shards_per_instance: None,
            instances: None,
            unknown: Default::default(),
        }
    }
}

/// Validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// env_logger filter, e.g. `info` or `gateway_proxy=debug`.
    pub log_level: String,
    /// Bot token without the `Bot ` prefix.
    pub token: String,
    /// Gateway intents for every shard.
    pub intents: u64,
    /// Client port (0 picks a free one, logged at start).
    pub port: u16,
    /// Bind address.
    pub host: IpAddr,
    /// Total shard count; `None` takes Discord's recommendation.
    pub shards: Option<u32>,
    /// First local shard (inclusive).
    pub shard_start: Option<u32>,
    /// Last local shard (exclusive).
    pub shard_end: Option<u32>,
    /// Presence activity sent in Identify.
    pub activity: Option<Activity>,
    /// Presence status sent in Identify (`online`, `idle`, `dnd`, `invisible`).
    pub status: String,
    /// Per-client outgoing queue bound, in messages.
    pub backpressure: usize,
    /// Whether clients must present the bot token.
    pub validate_token: bool,
    /// URL clients are told to resume at; default `ws://HOST:PORT`.
    pub externally_accessible_url: Option<String>,
    /// What is cached.
    pub cache: CacheConfig,
    /// Number of executors (one per core); `None` = every core the process may use.
    pub cores: Option<usize>,
    /// Time slice the executor threads ask the kernel for (Linux 6.12+), so a
    /// woken executor runs soon on busy CPUs; `None` keeps the kernel's default.
    pub sched_slice: Option<std::time::Duration>,
    /// Discord REST base URL.
    pub api_url: String,
    /// Gateway URL override; `None` uses the `url` from `/gateway/bot`.
    pub gateway_url: Option<String>,
    /// Seconds a client has to Identify after the upgrade.
    pub identify_timeout_secs: u64,
    /// Seconds a disconnected client session stays resumable.
    pub session_ttl: u64,
    /// Heartbeat interval (ms) told to clients in Hello; silent clients are closed after twice this.
    pub heartbeat_interval: u64,
    /// Dispatches kept per shard for client RESUME (0 disables client resume).
    pub replay_buffer: usize,
    /// Payload bytes kept per shard for client RESUME, on top of `replay_buffer`.
    pub replay_buffer_bytes: usize,
    /// Payload bytes kept for client RESUME by the whole process (each core
    /// gets an equal share for its shards); beyond it the oldest go.
    pub replay_memory: usize,
    /// Client sessions kept per shard; beyond it the longest-disconnected is dropped.
    pub max_sessions: usize,
    /// Open client connections (websocket and plain HTTP); beyond it a new one is answered 503.
    pub max_connections: usize,
    /// Connections that have not identified (or resumed) yet; beyond it a new one is answered 503.
    pub max_unidentified_connections: usize,
    /// Connections from one remote address that have not identified yet; beyond it a new one is answered 429.
    pub max_unidentified_per_address: usize,
    /// Seconds a connection has to send its HTTP request head (the websocket handshake); then 408.
    pub handshake_timeout_secs: u64,
    /// Largest HTTP request head accepted from a client, in bytes; beyond it 431.
    pub max_request_head_bytes: usize,
    /// Transport compression asked of Discord on every shard connection.
    pub upstream_compression: crate::upstream::transport::Compression,
    /// Whether transport compression is offered to clients (false: plain JSON whatever they ask).
    pub compression: bool,
    /// Whether each client gets only the dispatches its Identify's intents
    /// bring (false: every client gets everything the proxy receives).
    pub client_intents: bool,
    /// Whether an Identify asking for intents the proxy lacks is closed
    /// with 4014 (false: it is served what the proxy has, with a warning).
    pub strict_intents: bool,
    /// Where state is written at shutdown and read at start, for restarts without re-identifying.
    pub state_file: Option<std::path::PathBuf>,
    /// A PEM file of root certificates trusted for Discord's TLS (REST and
    /// gateway) on top of webpki-roots, e.g. a TLS-inspecting egress proxy's CA.
    pub tls_ca_file: Option<std::path::PathBuf>,
    /// The roots read from `tls_ca_file`, and from `SSL_CERT_FILE` when
    /// loaded with [`Config::load`].
    pub tls_roots: crate::upstream::tls::ExtraRoots,
    /// Who paces IDENTIFYs: this process, or a coordinator shared by every proxy of the bot.
    pub identify_queue: IdentifyQueueConfig,
    /// Shards per instance: with it, an instance runs `[ordinal × n, (ordinal + 1) × n)`,
    /// its ordinal being the `-N` suffix of its host name (a StatefulSet pod).
    pub shards_per_instance: Option<u32>,
    /// Where each instance of the bot's proxies is reached, for redirects and `/shard-map`.
    pub instances: Option<Instances>,
    /// Keys present in the file that this version does not know.
    pub unknown_keys: Vec<String>,
}

impl Config {
    /// Settings that are valid but work against each other, as warnings.
    pub fn warnings(&self) -> Vec<String> {
        let mut w = Vec::new();
        if self.replay_buffer > 0 && self.replay_buffer <= self.backpressure {
            w.push(format!(
                "`replay_buffer` ({}) is not larger than `backpressure` ({}): a client closed for lagging \
                 cannot resume, because what it missed is no longer buffered",
                self.replay_buffer, self.backpressure
            ));
        }
        w
    }
}

impl Config {
    /// Loads and validates a config file; `TOKEN` in the environment
    /// overrides `token`. The roots of `tls_ca_file` and of the file named
    /// by `SSL_CERT_FILE` are added to webpki-roots for every TLS
    /// connection to Discord; they are read again on each load but taken
    /// in by the first only (a change is warned about: it needs a restart).
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read(path.display().to_string(), e))?;
        let mut config = Self::from_json(&text, std::env::var("TOKEN").ok())?;
        config.add_env_roots(std::env::var_os(crate::upstream::tls::SSL_CERT_FILE))?;
        if let Err(roots) = crate::upstream::tls::trust_extra_roots(config.tls_roots.clone()) {
            if crate::upstream::tls::extra_roots() != Some(&roots) {
                log::warn!("`tls_ca_file` or SSL_CERT_FILE changed: the new roots are trusted after a restart");
            }
        }
        Ok(config)
    }

    /// Adds the roots of `SSL_CERT_FILE` (its value given; unset or empty:
    /// nothing). A system bundle may hold certificates webpki cannot use:
    /// those are skipped, but an unreadable file or one without any usable
    /// certificate is an error.
    pub fn add_env_roots(&mut self, ssl_cert_file: Option<std::ffi::OsString>) -> Result<(), ConfigError> {
        let Some(path) = ssl_cert_file.filter(|p| !p.is_empty()) else {
            return Ok(());
        };
        self.tls_roots
            .add_pem_file(Path::new(&path), false)
            .map(|_| ())
            .map_err(|e| ConfigError::Env { var: crate::upstream::tls::SSL_CERT_FILE, message: e.to_string() })
    }

    /// Parses and validates config text; `env_token` overrides the file's token.
    pub fn from_json(text: &str, env_token: Option<String>) -> Result<Self, ConfigError> {
        let de = &mut serde_json::Deserializer::from_str(text);
        let raw: RawConfig = serde_path_to_error::deserialize(de)
            .map_err(|e| ConfigError::Parse { key: e.path().to_string(), message: e.inner().to_string() })?;
        let token = env_token
            .filter(|t| !t.trim().is_empty())
            .or(raw.token)
            .map(|t| t.trim().trim_start_matches("Bot ").trim().to_owned())
            .unwrap_or_default();
        if token.is_empty() {
            return Err(invalid("token", "missing: set `token` in the config or the TOKEN environment variable"));
        }
        let Some(intents) = raw.intents else {
            return Err(invalid("intents", "missing: set the gateway intents bitfield, e.g. 513"));
        };
        if intents >= 1 << 26 {
            return Err(invalid("intents", format!("{intents} has bits Discord does not define")));
        }
        if raw.shards == Some(0) {
            return Err(invalid("shards", "must be at least 1 (or null for Discord's recommendation)"));
        }
        if let (Some(s), Some(e)) = (raw.shard_start, raw.shard_end) {
            if s >= e {
                return Err(invalid("shard_end", format!("must be greater than shard_start ({s}), got {e}")));
            }
        }
        if let (Some(total), Some(e)) = (raw.shards, raw.shard_end) {
            if e > total {
                return Err(invalid("shard_end", format!("{e} is beyond the shard count {total}")));
            }
        }
        if raw.backpressure == 0 {
            return Err(invalid("backpressure", "must be at least 1"));
        }
        if raw.sched_slice_us != 0 && !(100..=100_000).contains(&raw.sched_slice_us) {
            return Err(invalid(
                "sched_slice_us",
                "must be 0 (the kernel's default slice) or between 100 and 100000 microseconds",
            ));
        }
        if raw.cores == Some(0) {
            return Err(invalid("cores", "must be at least 1 (or omit it to use every core)"));
        }
        if raw.heartbeat_interval < 1000 {
            return Err(invalid("heartbeat_interval", "must be at least 1000 (milliseconds)"));
        }
        if raw.max_sessions == 0 {
            return Err(invalid("max_sessions", "must be at least 1"));
        }
        if raw.replay_memory < 1 << 20 {
            return Err(invalid(
                "replay_memory",
                "must be at least 1048576 bytes (1 MiB); set `replay_buffer` to 0 to turn client resume off",
            ));
        }
        for (key, value) in [
            ("max_connections", raw.max_connections),
            ("max_unidentified_connections", raw.max_unidentified_connections),
            ("max_unidentified_per_address", raw.max_unidentified_per_address),
        ] {
            if value == 0 {
                return Err(invalid(key, "must be at least 1"));
            }
        }
        if raw.handshake_timeout_secs == 0 {
            return Err(invalid("handshake_timeout_secs", "must be at least 1"));
        }
        if raw.max_request_head_bytes < 1024 {
            return Err(invalid(
                "max_request_head_bytes",
                "must be at least 1024: a websocket upgrade request alone is a few hundred bytes",
            ));
        }
        let Some(upstream_compression) = crate::upstream::transport::Compression::parse(&raw.upstream_compression)
        else {
            return Err(invalid(
                "upstream_compression",
                format!("`{}` is not one of none, zlib-stream, zstd-stream", raw.upstream_compression),
            ));
        };
        if raw.identify_timeout_secs == 0 {
            return Err(invalid("identify_timeout_secs", "must be at least 1"));
        }
        let status = raw.status.unwrap_or_else(|| "online".into());
        if !matches!(status.as_str(), "online" | "idle" | "dnd" | "invisible" | "offline") {
            return Err(invalid("status", format!("`{status}` is not one of online, idle, dnd, invisible, offline")));
        }
        check_url("api_url", &raw.api_url, &["http", "https"])?;
        if let Some(u) = &raw.gateway_url {
            check_url("gateway_url", u, &["ws", "wss"])?;
        }
        if let Some(u) = &raw.externally_accessible_url {
            check_url("externally_accessible_url", u, &["ws", "wss"])?;
        }
        let identify_queue = raw.identify_queue.map(RawIdentifyQueue::validate).transpose()?.unwrap_or_default();
        let mut tls_roots = crate::upstream::tls::ExtraRoots::default();
        if let Some(path) = &raw.tls_ca_file {
            tls_roots.add_pem_file(path, true).map_err(|e| invalid("tls_ca_file", e.to_string()))?;
        }
        if raw.shards_per_instance == Some(0) {
            return Err(invalid("shards_per_instance", "must be at least 1"));
        }
        if raw.shards_per_instance.is_some() && (raw.shard_start.is_some() || raw.shard_end.is_some()) {
            return Err(invalid(
                "shards_per_instance",
                "cannot be combined with shard_start/shard_end: it derives them from the instance's ordinal",
            ));
        }
        match &raw.instances {
            Some(Instances::List(urls)) => {
                if urls.is_empty() {
                    return Err(invalid("instances", "an empty list: give one URL per instance"));
                }
                for url in urls {
                    check_url("instances", url, &["ws", "wss"])?;
                }
            }
            Some(Instances::Pattern(p)) => {
                if !p.contains("{ordinal}") {
                    return Err(invalid("instances", format!("the pattern `{p}` has no `{{ordinal}}` in it")));
                }
                check_url("instances", p, &["ws", "wss"])?;
            }
            None => {}
        }
        Ok(Self {
            log_level: raw.log_level,
            token,
            intents,
            port: raw.port,
            host: raw.host,
            shards: raw.shards,
            shard_start: raw.shard_start,
            shard_end: raw.shard_end,
            activity: raw.activity,
            status,
            backpressure: raw.backpressure,
            validate_token: raw.validate_token,
            externally_accessible_url: raw.externally_accessible_url,
            cache: raw.cache,
            cores: raw.cores,
            sched_slice: (raw.sched_slice_us > 0).then(|| std::time::Duration::from_micros(raw.sched_slice_us)),
            api_url: raw.api_url.trim_end_matches('/').to_owned(),
            gateway_url: raw.gateway_url.map(|u| u.trim_end_matches('/').to_owned()),
            identify_timeout_secs: raw.identify_timeout_secs,
            session_ttl: raw.session_ttl,
            heartbeat_interval: raw.heartbeat_interval,
            replay_buffer: raw.replay_buffer,
            replay_buffer_bytes: raw.replay_buffer_bytes,
            replay_memory: usize::try_from(raw.replay_memory).unwrap_or(usize::MAX),
            max_sessions: raw.max_sessions,
            max_connections: raw.max_connections,
            max_unidentified_connections: raw.max_unidentified_connections,
            max_unidentified_per_address: raw.max_unidentified_per_address,
            handshake_timeout_secs: raw.handshake_timeout_secs,
            max_request_head_bytes: raw.max_request_head_bytes,
            upstream_compression,
            compression: raw.compression,
            client_intents: raw.client_intents,
            strict_intents: raw.strict_intents,
            state_file: raw.state_file,
            tls_ca_file: raw.tls_ca_file,
            tls_roots,
            identify_queue,
            shards_per_instance: raw.shards_per_instance,
            instances: raw.instances,
            unknown_keys: raw.unknown.keys().cloned().collect(),
        })
    }

    /// The local shard range once the total is known.
    pub fn local_shards(&self, total: u32) -> Result<std::ops::Range<u32>, ConfigError> {
        let start = self.shard_start.unwrap_or(0);
        let end = self.shard_end.unwrap_or(total);
        if end > total {
            return Err(invalid("shard_end", format!("{end} is beyond the shard count {total}")));
        }
        if start >= end {
            return Err(invalid("shard_start", format!("{start} leaves no local shard below {end}")));
        }
        Ok(start..end)
    }
}

fn invalid(key: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { key, message: message.into() }
}

fn check_url(key: &'static str, url: &str, schemes: &[&str]) -> Result<(), ConfigError> {
    match url.split_once("://") {
        Some((scheme, rest)) if schemes.contains(&scheme) && !rest.is_empty() => Ok(()),
        _ => Err(invalid(key, format!("`{url}` is not a {} URL", schemes.join("/")))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_config_loads() {
        let text = include_str!("../config.json.example");
        let c = Config::from_json(text, None).unwrap();
        assert_eq!(c.port, DEFAULT_PORT);
        assert!(c.cache.channels && c.cache.roles && c.cache.current_member);
        assert!(c.unknown_keys.is_empty(), "{:?}", c.unknown_keys);
    }

    #[test]
    fn defaults_and_env_token() {
        let c = Config::from_json(r#"{"token":"file","intents":1}"#, Some("Bot env".into())).unwrap();
        assert_eq!(c.token, "env");
        assert_eq!(c.port, 7878);
        assert_eq!(c.api_url, DEFAULT_API_URL);
        assert_eq!(c.cache, CacheConfig::default());
        assert_eq!(c.local_shards(4).unwrap(), 0..4);
    }

    #[test]
    fn partial_cache_object_keeps_other_defaults() {
        let c = Config::from_json(r#"{"token":"t","intents":1,"cache":{"members":true}}"#, None).unwrap();
        assert!(c.cache.members && c.cache.channels && c.cache.roles);
    }

    #[test]
    fn identify_queue_spellings() {
        let parse = |v: &str| {
            Config::from_json(&format!(r#"{{"token":"t","intents":1,"identify_queue":{v}}}"#), None)
                .map(|c| c.identify_queue)
                .unwrap()
        };
        assert_eq!(
            Config::from_json(r#"{"token":"t","intents":1}"#, None).unwrap().identify_queue,
            IdentifyQueueConfig::Local
        );
        assert_eq!(parse(r#""local""#), IdentifyQueueConfig::Local);
        assert_eq!(
            parse(r#"{"type": "redis", "url": "redis://127.0.0.1:6379/0"}"#),
            IdentifyQueueConfig::Redis { url: "redis://127.0.0.1:6379/0".into(), prefix: None }
        );
        assert_eq!(
            parse(r#"{"type": "redis", "url": "redis://r/1", "prefix": "mybot"}"#),
            IdentifyQueueConfig::Redis { url: "redis://r/1".into(), prefix: Some("mybot".into()) }
        );
        assert_eq!(
            parse(r#"{"type": "http", "url": "http://queue:8000/"}"#),
            IdentifyQueueConfig::Http { url: "http://queue:8000".into() }
        );
    }

    #[test]
    fn errors_name_the_key() {
        let cases = [
            (r#"{"token":"t","intents":1,"port":"x"}"#, "port"),
            (r#"{"token":"t","intents":1,"cache":{"members":3}}"#, "cache.members"),
            (r#"{"intents":1}"#, "token"),
            (r#"{"token":"t"}"#, "intents"),
            (r#"{"token":"t","intents":1,"shard_start":3,"shard_end":2}"#, "shard_end"),
            (r#"{"token":"t","intents":1,"status":"busy"}"#, "status"),
            (r#"{"token":"t","intents":1,"api_url":"ftp://x"}"#, "api_url"),
            (r#"{"token":"t","intents":1,"cores":0}"#, "cores"),
            (r#"{"token":"t","intents":1,"sched_slice_us":50}"#, "sched_slice_us"),
            (r#"{"token":"t","intents":1,"sched_slice_us":200000}"#, "sched_slice_us"),
            (r#"{"token":"t","intents":1,"replay_memory":1000}"#, "replay_memory"),
            (r#"{"token":"t","intents":1,"replay_memory":-1}"#, "replay_memory"),
            (r#"{"token":"t","intents":1,"identify_queue":"etcd"}"#, "identify_queue"),
            (r#"{"token":"t","intents":1,"shards_per_instance":0}"#, "shards_per_instance"),
            (r#"{"token":"t","intents":1,"shards_per_instance":2,"shard_start":0}"#, "shards_per_instance"),
            (r#"{"token":"t","intents":1,"instances":"ws://gp:1"}"#, "instances"),
            (r#"{"token":"t","intents":1,"instances":["http://gp:1"]}"#, "instances"),
            (r#"{"token":"t","intents":1,"instances":[]}"#, "instances"),
            (r#"{"token":"t","intents":1,"identify_queue":{"type":"redis"}}"#, "identify_queue.url"),
            (r#"{"token":"t","intents":1,"identify_queue":{"type":"http","url":"redis://x"}}"#, "identify_queue.url"),
            (
                r#"{"token":"t","intents":1,"identify_queue":{"type":"redis","url":"redis://x","prefix":""}}"#,
                "identify_queue.prefix",
            ),
        ];
        for (text, key) in cases {
            let e = Config::from_json(text, None).unwrap_err().to_string();
            assert!(e.contains(&format!("`{key}`")), "{text}: {e}");
        }
    }

    #[test]
    fn replay_smaller_than_backpressure_is_warned() {
        let ok = Config::from_json(r#"{"token":"t","intents":1}"#, None).unwrap();
        assert!(ok.warnings().is_empty(), "defaults work together");
        let bad =
            Config::from_json(r#"{"token":"t","intents":1,"backpressure":500,"replay_buffer":100}"#, None).unwrap();
        assert!(bad.warnings()[0].contains("`replay_buffer`"));
    }

    #[test]
    fn tls_roots_from_the_config_key_and_ssl_cert_file() {
        let dir = std::env::temp_dir().join(format!("gateway-proxy-config-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = params.self_signed(&rcgen::KeyPair::generate().unwrap()).unwrap();
        let good = dir.join("ca.pem");
        std::fs::write(&good, ca.pem()).unwrap();
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "no certificate here\n").unwrap();
        let with = |path: &Path| {
            Config::from_json(
                &format!(r#"{{"token":"t","intents":1,"tls_ca_file":{:?}}}"#, path.to_str().unwrap()),
                None,
            )
        };
        let mut c = with(&good).unwrap();
        assert_eq!(c.tls_ca_file.as_deref(), Some(good.as_path()));
        assert_eq!(c.tls_roots.len(), 1);
        c.add_env_roots(Some(good.clone().into())).unwrap();
        assert_eq!(c.tls_roots.len(), 2, "SSL_CERT_FILE adds to tls_ca_file");
        c.add_env_roots(Some("".into())).unwrap();
        assert_eq!(c.tls_roots.len(), 2, "an empty SSL_CERT_FILE is unset");
        let e = with(&empty).unwrap_err().to_string();
        assert!(e.contains("`tls_ca_file`") && e.contains("has no certificate"), "{e}");
        let e = with(&dir.join("missing.pem")).unwrap_err().to_string();
        assert!(e.contains("`tls_ca_file`") && e.contains("cannot read"), "{e}");
        let e = c.add_env_roots(Some(empty.clone().into())).unwrap_err().to_string();
        assert!(e.starts_with("environment variable SSL_CERT_FILE: ") && e.contains("has no certificate"), "{e}");
        assert!(Config::from_json(r#"{"token":"t","intents":1}"#, None).unwrap().tls_roots.is_empty());
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn unknown_keys_are_reported_not_fatal() {
        let c = Config::from_json(r#"{"token":"t","intents":1,"twilight_http_proxy":null}"#, None).unwrap();
        assert_eq!(c.unknown_keys, vec!["twilight_http_proxy".to_string()]);
    }
}
