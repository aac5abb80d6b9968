//! Where the bot's shards run when several proxies share them: this
//! instance's range (from `shard_start`/`shard_end`, or from a StatefulSet
//! pod's ordinal and `shards_per_instance`), and which instance serves every
//! shard (`instances`), so a client that reached the wrong one is told
//! where to go and a launcher can ask `GET /shard-map`.

use crate::config::{Config, ConfigError, Instances};
use std::ops::Range;

/// The shard layout of the bot across its proxies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardMap {
    /// Total shards of the bot.
    pub total: u32,
    /// This instance's shards.
    pub local: Range<u32>,
    /// Every instance's URL and shards, when `instances` is configured.
    pub instances: Vec<(Range<u32>, String)>,
}

impl ShardMap {
    /// The layout for `config` once the bot's total shard count is known;
    /// `hostname` gives the ordinal when `shards_per_instance` is set.
    pub fn resolve(config: &Config, total: u32, hostname: &str) -> Result<Self, ConfigError> {
        let local = match config.shards_per_instance {
            Some(n) => {
                let ordinal = ordinal_of(hostname).ok_or_else(|| {
                    invalid(
                        "shards_per_instance",
                        format!(
                            "the host name `{hostname}` does not end in `-N` (a StatefulSet pod's ordinal), so this \
                             instance cannot tell its shards; set shard_start/shard_end instead"
                        ),
                    )
                })?;
                let start = ordinal.saturating_mul(n);
                if start >= total {
                    return Err(invalid(
                        "shards_per_instance",
                        format!("instance {ordinal} would start at shard {start}, but the bot has {total} shards"),
                    ));
                }
                start..start.saturating_add(n).min(total)
            }
            None => config.local_shards(total)?,
        };
        let instances = match &config.instances {
            None => Vec::new(),
            Some(Instances::List(urls)) => {
                let n = config.shards_per_instance.unwrap_or_else(|| total.div_ceil(urls.len() as u32));
                urls.iter()
                    .enumerate()
                    .map(|(i, url)| (range_of(i as u32, n, total), url.clone()))
                    .filter(|(r, _)| !r.is_empty())
                    .collect()
            }
            Some(Instances::Pattern(pattern)) => {
                let Some(n) = config.shards_per_instance else {
                    return Err(invalid(
                        "instances",
                        "a URL pattern needs `shards_per_instance` (how many shards each instance runs)",
                    ));
                };
                (0..total.div_ceil(n))
                    .map(|i| (range_of(i, n, total), pattern.replace("{ordinal}", &i.to_string())))
                    .collect()
            }
        };
        if !instances.is_empty() {
            let covered: u32 = instances.iter().map(|(r, _)| r.len() as u32).sum();
            if covered < total {
                return Err(invalid(
                    "instances",
                    format!("the instances listed serve {covered} of the bot's {total} shards"),
                ));
            }
            if !instances.iter().any(|(r, _)| *r == local) {
                log::warn!(
                    "this instance runs shards {}..{}, which is not one of the ranges `instances` gives: clients \
                     may be sent to the wrong place",
                    local.start,
                    local.end
                );
            }
        }
        Ok(Self { total, local, instances })
    }

    /// The URL of the instance serving `shard`, if known and not this one.
    pub fn elsewhere(&self, shard: u32) -> Option<&str> {
        if self.local.contains(&shard) {
            return None;
        }
        self.instances.iter().find(|(r, _)| r.contains(&shard)).map(|(_, url)| url.as_str())
    }

    /// This instance's URL in `instances`, if it is listed with exactly its range.
    pub fn own_url(&self) -> Option<&str> {
        self.instances.iter().find(|(r, _)| *r == self.local).map(|(_, url)| url.as_str())
    }

    /// `GET /shard-map`: every instance's URL and shard range; this instance
    /// (at `own_url`) alone when `instances` is not configured.
    pub fn to_json(&self, own_url: &str) -> serde_json::Value {
        let instances: Vec<serde_json::Value> = if self.instances.is_empty() {
            vec![serde_json::json!({"url": own_url, "shard_start": self.local.start, "shard_end": self.local.end})]
        } else {
            self.instances
                .iter()
                .map(|(r, url)| serde_json::json!({"url": url, "shard_start": r.start, "shard_end": r.end}))
                .collect()
        };
        serde_json::json!({
            "shards": self.total,
            "local": {"shard_start": self.local.start, "shard_end": self.local.end},
            "instances": instances,
        })
    }
}

/// Shards `[i × n, (i + 1) × n)` capped at `total`.
fn range_of(i: u32, n: u32, total: u32) -> Range<u32> {
    let start = i.saturating_mul(n).min(total);
    start..start.saturating_add(n).min(total)
}

/// The `-N` suffix of a StatefulSet pod's host name (`gateway-proxy-3` → 3).
pub fn ordinal_of(hostname: &str) -> Option<u32> {
    let name = hostname.trim().split('.').next()?;
    let (_, digits) = name.rsplit_once('-')?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// This machine's host name: `HOSTNAME` (set in every Kubernetes pod), else the kernel's.
pub fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.trim().is_empty())
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|h| h.trim().to_owned())
        .unwrap_or_default()
}

fn invalid(key: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { key, message: message.into() }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &str) -> Config {
        Config::from_json(&format!(r#"{{"token":"t","intents":1{extra}}}"#), None).unwrap()
    }

    #[test]
    fn ordinals_come_from_the_pod_name() {
        assert_eq!(ordinal_of("gateway-proxy-0"), Some(0));
        assert_eq!(ordinal_of("gateway-proxy-12.gateway-proxy.default.svc"), Some(12));
        assert_eq!(ordinal_of("worker7"), None);
        assert_eq!(ordinal_of("gateway-proxy-"), None);
        assert_eq!(ordinal_of("gateway-proxy-x1"), None);
    }

    #[test]
    fn a_pod_takes_its_range_from_its_ordinal() {
        let c = config(r#","shards_per_instance":16"#);
        assert_eq!(ShardMap::resolve(&c, 48, "gp-0").unwrap().local, 0..16);
        assert_eq!(ShardMap::resolve(&c, 48, "gp-2").unwrap().local, 32..48);
        assert_eq!(ShardMap::resolve(&c, 40, "gp-2").unwrap().local, 32..40, "the last instance runs what is left");
        let e = ShardMap::resolve(&c, 48, "gp-3").unwrap_err().to_string();
        assert!(e.contains("`shards_per_instance`") && e.contains("48 shards"), "{e}");
        let e = ShardMap::resolve(&c, 48, "laptop").unwrap_err().to_string();
        assert!(e.contains("`shards_per_instance`") && e.contains("laptop"), "{e}");
    }

    #[test]
    fn instances_as_a_list_or_a_pattern_say_who_serves_a_shard() {
        let c = config(r#","shard_start":2,"shard_end":4,"instances":["ws://a:1","ws://b:1","ws://c:1"]"#);
        let map = ShardMap::resolve(&c, 6, "x").unwrap();
        assert_eq!(map.elsewhere(0), Some("ws://a:1"));
        assert_eq!(map.elsewhere(3), None, "local");
        assert_eq!(map.elsewhere(5), Some("ws://c:1"));
        assert_eq!(map.elsewhere(6), None, "no such shard");
        let c = config(r#","shards_per_instance":4,"instances":"ws://gp-{ordinal}.gp:7878""#);
        let map = ShardMap::resolve(&c, 10, "gp-1").unwrap();
        assert_eq!(map.local, 4..8);
        assert_eq!(map.own_url(), Some("ws://gp-1.gp:7878"));
        assert_eq!(map.elsewhere(9), Some("ws://gp-2.gp:7878"));
        let json = map.to_json("ws://me");
        assert_eq!(
            json["instances"][2],
            serde_json::json!({"url": "ws://gp-2.gp:7878", "shard_start": 8, "shard_end": 10})
        );
        let c = config(r#","instances":"ws://gp-{ordinal}:1""#);
        assert!(ShardMap::resolve(&c, 4, "gp-0").unwrap_err().to_string().contains("`instances`"));
        let c = config(r#","instances":["ws://a:1"],"shards_per_instance":2"#);
        assert!(ShardMap::resolve(&c, 4, "gp-0").unwrap_err().to_string().contains("serve 2 of"));
    }
}
