//! Identify turns from a coordinator shared by every proxy of the bot, so
//! that several processes on several hosts keep to Discord's limit of one
//! IDENTIFY per bucket (`shard % max_concurrency`) every 5 seconds.
//!
//! Two coordinators large bots already run are spoken to, each on the
//! identify-queue helper threads (their calls block; no executor waits on
//! them):
//!
//! - **Redis**, the convention PluralKit, TicketsBot and rxdn/gdl share: one
//!   key per bucket, `<prefix>:identify:<bucket>`, taken with
//!   `SET key 1 NX PX 5500` and never deleted. Its expiry spaces the
//!   IDENTIFYs, so a proxy that dies holding a turn frees the bucket by
//!   itself. While the key exists its PTTL says how long to wait.
//! - **twilight's gateway-queue** (and PluralKit's clone): `GET <url>/?shard=<id>`,
//!   held open by the server until the shard may identify, then 200. A
//!   timeout is "not yet": ask again.

use std::time::Duration;

/// How long a Redis turn holds its bucket: a little over Discord's 5 s.
pub const REDIS_TURN: Duration = Duration::from_millis(5_500);
/// Longest wait on one gateway-queue request before asking again.
const HTTP_WAIT: Duration = Duration::from_secs(60);
/// Time to open a connection to a coordinator.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// The answer to "may this shard identify now?".
#[derive(Debug)]
pub enum Turn {
    /// Yes: identify now.
    Granted,
    /// Not yet: ask again after this long.
    Wait(Duration),
    /// The coordinator cannot be reached or answered wrongly: retry later.
    Unavailable(String),
}

/// A connection to a coordinator for one bucket (each bucket's waiting
/// shards are served by their own helper thread).
pub trait Coordinator: Send {
    /// Asks for `shard`'s turn; may block for as long as the coordinator holds the request.
    fn try_turn(&mut self, shard: u32) -> Turn;
}

/// The Redis convention (see the module's documentation).
pub struct RedisTurns {
    client: redis::Client,
    connection: Option<redis::Connection>,
    key: String,
}

impl RedisTurns {
    /// Turns of `bucket` under `prefix` at `url`.
    pub fn new(url: &str, prefix: &str, bucket: u32) -> Result<Self, String> {
        let client = redis::Client::open(url).map_err(|e| format!("bad Redis URL `{url}`: {e}"))?;
        Ok(Self { client, connection: None, key: format!("{prefix}:identify:{bucket}") })
    }

    fn connection(&mut self) -> redis::RedisResult<&mut redis::Connection> {
        if self.connection.is_none() {
            let c = self.client.get_connection_with_timeout(CONNECT_TIMEOUT)?;
            c.set_read_timeout(Some(CONNECT_TIMEOUT))?;
            c.set_write_timeout(Some(CONNECT_TIMEOUT))?;
            self.connection = Some(c);
        }
        Ok(self.connection.as_mut().expect("set above"))
    }

    fn ask(&mut self) -> redis::RedisResult<Turn> {
        let key = self.key.clone();
        let con = self.connection()?;
        let taken: Option<String> =
            redis::cmd("SET").arg(&key).arg(1).arg("NX").arg("PX").arg(REDIS_TURN.as_millis() as u64).query(con)?;
        if taken.is_some() {
            return Ok(Turn::Granted);
        }
        let pttl: i64 = redis::cmd("PTTL").arg(&key).query(con)?;
        Ok(Turn::Wait(match pttl {
            // Gone meanwhile: ask again at once.
            -2 => Duration::ZERO,
            // A key without expiry (not set by this convention): look again soon.
            -1 => Duration::from_secs(1),
            // Its expiry, and a few ms so that the SET does not race it.
            ms => Duration::from_millis(ms.max(0) as u64 + 2 + fastrand::u64(0..8)),
        }))
    }
}

impl Coordinator for RedisTurns {
    fn try_turn(&mut self, _shard: u32) -> Turn {
        match self.ask() {
            Ok(turn) => turn,
            Err(e) => {
                self.connection = None;
                Turn::Unavailable(format!("Redis: {e}"))
            }
        }
    }
}

/// twilight's gateway-queue HTTP protocol (see the module's documentation).
pub struct GatewayQueueTurns {
    agent: ureq::Agent,
    url: String,
}

impl GatewayQueueTurns {
    /// Turns from the gateway-queue at `url` (`http://HOST:PORT`).
    pub fn new(url: &str) -> Self {
        let config = ureq::Agent::config_builder()
            .timeout_connect(Some(CONNECT_TIMEOUT))
            .timeout_global(Some(HTTP_WAIT))
            .http_status_as_error(false)
            .build();
        Self { agent: ureq::Agent::new_with_config(config), url: url.trim_end_matches('/').to_owned() }
    }
}

impl Coordinator for GatewayQueueTurns {
    fn try_turn(&mut self, shard: u32) -> Turn {
        let url = format!("{}/?shard={shard}", self.url);
        match self.agent.get(&url).call() {
            Ok(response) if response.status().is_success() => Turn::Granted,
            Ok(response) => Turn::Unavailable(format!("gateway-queue answered HTTP {}", response.status().as_u16())),
            // Held open past our patience: not yet, ask again (as twilight's client does).
            Err(ureq::Error::Timeout(_)) => Turn::Wait(Duration::ZERO),
            Err(e) => Turn::Unavailable(format!("gateway-queue at {}: {e}", self.url)),
        }
    }
}

/// The default Redis key prefix: the bot's id, so several bots can share one Redis.
pub fn default_prefix(bot_id: Option<u64>) -> String {
    match bot_id {
        Some(id) => format!("gateway-proxy:{id}"),
        None => "gateway-proxy".to_owned(),
    }
}

/// The bot's user id (its application id), read from the token's first part
/// (base64 of the id), without asking Discord.
pub fn bot_id_of_token(token: &str) -> Option<u64> {
    let first = token.split('.').next()?;
    let bytes = decode_base64(first)?;
    std::str::from_utf8(&bytes).ok()?.parse().ok()
}

/// Standard or URL-safe base64, padding optional.
fn decode_base64(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in text.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            b'=' => break,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bot_id_comes_from_the_token() {
        // "80351110224678912" in base64, as Discord's tokens start.
        assert_eq!(bot_id_of_token("ODAzNTExMTAyMjQ2Nzg5MTI.GxYz.abc"), Some(80_351_110_224_678_912));
        assert_eq!(bot_id_of_token("ODAzNTExMTAyMjQ2Nzg5MTI=.x.y"), Some(80_351_110_224_678_912));
        assert_eq!(bot_id_of_token("fake-token"), None);
        assert_eq!(default_prefix(Some(42)), "gateway-proxy:42");
        assert_eq!(default_prefix(None), "gateway-proxy");
    }
}
