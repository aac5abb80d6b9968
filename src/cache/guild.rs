//! One guild's cached state and the GUILD_CREATE built from it.

use super::entities::{id_of, parse_object, user_id_of, write_object, Entities};
use crate::config::CacheConfig;
use serde_json::value::RawValue;

/// Keys of GUILD_CREATE that the cache holds as collections (or computes),
/// so they are not kept in the guild's base object.
const COLLECTION_KEYS: &[&str] = &[
    "roles",
    "emojis",
    "stickers",
    "channels",
    "threads",
    "members",
    "presences",
    "voice_states",
    "stage_instances",
    "guild_scheduled_events",
    "soundboard_sounds",
    "member_count",
    "unavailable",
];

/// Everything cached about one available guild.
#[derive(Debug, Default, Clone, serde::Serialize, serde::Deserialize)]
pub struct Guild {
    /// The guild object's other fields, as a JSON object, kept as Discord sent them.
    base: Box<str>,
    /// Approximate member count, moved by member add/remove.
    pub member_count: u64,
    /// Roles by id.
    pub roles: Entities,
    /// Custom emojis by id.
    pub emojis: Entities,
    /// Stickers by id.
    pub stickers: Entities,
    /// Channels by id.
    pub channels: Entities,
    /// Active threads by id.
    pub threads: Entities,
    /// Members by user id.
    pub members: Entities,
    /// Presences by user id.
    pub presences: Entities,
    /// Voice states by user id.
    pub voice_states: Entities,
    /// Stage instances by id.
    pub stage_instances: Entities,
    /// Scheduled events by id.
    pub scheduled_events: Entities,
    /// Soundboard sounds by sound id.
    pub soundboard_sounds: Entities,
}

/// Fills `target` with the array's elements keyed by `key_of`.
pub fn fill(target: &mut Entities, raw: &RawValue, key_of: fn(&RawValue) -> Option<u64>) {
    target.clear();
    if let Ok(items) = serde_json::from_str::<Vec<Box<RawValue>>>(raw.get()) {
        for item in items {
            if let Some(id) = key_of(&item) {
                target.insert(id, item.get().into());
            }
        }
    }
}

/// The id of a soundboard sound.
pub fn sound_id_of(raw: &RawValue) -> Option<u64> {
    #[derive(serde::Deserialize)]
    struct S {
        #[serde(deserialize_with = "super::entities::snowflake")]
        sound_id: u64,
    }
    serde_json::from_str::<S>(raw.get()).ok().map(|s| s.sound_id)
}

/// The user id of a voice state.
pub fn voice_user_id_of(raw: &RawValue) -> Option<u64> {
    #[derive(serde::Deserialize)]
    struct S {
        #[serde(deserialize_with = "super::entities::snowflake")]
        user_id: u64,
    }
    serde_json::from_str::<S>(raw.get()).ok().map(|s| s.user_id)
}

impl Guild {
    /// Builds the guild from a GUILD_CREATE payload, keeping what `flags` asks for.
    pub fn from_create(d: &str, flags: &CacheConfig, bot_id: Option<u64>) -> Option<Self> {
        let pairs = parse_object(d)?;
        let mut g = Guild::default();
        for (key, value) in &pairs {
            match key.as_str() {
                "roles" if flags.roles => fill(&mut g.roles, value, id_of),
                "emojis" if flags.emojis => fill(&mut g.emojis, value, id_of),
                "stickers" if flags.stickers => fill(&mut g.stickers, value, id_of),
                "channels" if flags.channels => fill(&mut g.channels, value, id_of),
                "threads" if flags.channels => fill(&mut g.threads, value, id_of),
                "members" if flags.members || flags.current_member => {
                    fill(&mut g.members, value, user_id_of);
                    if !flags.members {
                        g.members.retain(|id, _| Some(id) == bot_id);
                    }
                }
                "presences" if flags.presences => fill(&mut g.presences, value, user_id_of),
                "voice_states" if flags.voice_states => fill(&mut g.voice_states, value, voice_user_id_of),
                "stage_instances" if flags.stage_instances => fill(&mut g.stage_instances, value, id_of),
                "guild_scheduled_events" if flags.scheduled_events => fill(&mut g.scheduled_events, value, id_of),
                "soundboard_sounds" if flags.soundboard_sounds => fill(&mut g.soundboard_sounds, value, sound_id_of),
                "member_count" => g.member_count = serde_json::from_str(value.get()).unwrap_or(0),
                _ => {}
            }
        }
        g.base = write_object(
            pairs.iter().filter(|(k, _)| !COLLECTION_KEYS.contains(&k.as_str())).map(|(k, v)| (k.as_str(), &**v)),
        );
        Some(g)
    }

    /// Applies GUILD_UPDATE: new guild fields replace old ones; roles, emojis
    /// and stickers it carries replace the cached sets.
    pub fn apply_update(&mut self, d: &str, flags: &CacheConfig) {
        let Some(update) = parse_object(d) else { return };
        let Some(mut base) = parse_object(&self.base) else { return };
        for (key, value) in update {
            match key.as_str() {
                "roles" if flags.roles => fill(&mut self.roles, &value, id_of),
                "emojis" if flags.emojis => fill(&mut self.emojis, &value, id_of),
                "stickers" if flags.stickers => fill(&mut self.stickers, &value, id_of),
                k if COLLECTION_KEYS.contains(&k) => {}
                _ => match base.iter_mut().find(|(k, _)| *k == key) {
                    Some(slot) => slot.1 = value,
                    None => base.push((key, value)),
                },
            }
        }
        self.base = write_object(base.iter().map(|(k, v)| (k.as_str(), &**v)));
    }

    /// The guild's id, read from its base object.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// Appends this guild's GUILD_CREATE `d` object.
    pub fn write_create(&self, out: &mut Vec<u8>) {
        let base = self.base.as_bytes();
        // base is `{...}`: reopen it and append the collections.
        out.extend_from_slice(&base[..base.len() - 1]);
        if base.len() > 2 {
            out.push(b',');
        }
        out.extend_from_slice(b"\"unavailable\":false,\"member_count\":");
        out.extend_from_slice(itoa::Buffer::new().format(self.member_count).as_bytes());
        let sets: [(&str, &Entities); 11] = [
            ("roles", &self.roles),
            ("emojis", &self.emojis),
            ("stickers", &self.stickers),
            ("channels", &self.channels),
            ("threads", &self.threads),
            ("members", &self.members),
            ("presences", &self.presences),
            ("voice_states", &self.voice_states),
            ("stage_instances", &self.stage_instances),
            ("guild_scheduled_events", &self.scheduled_events),
            ("soundboard_sounds", &self.soundboard_sounds),
        ];
        for (key, set) in sets {
            out.extend_from_slice(b",\"");
            out.extend_from_slice(key.as_bytes());
            out.extend_from_slice(b"\":");
            set.write_array(out);
        }
        out.push(b'}');
    }

    /// Heap bytes held by this guild.
    pub fn heap_bytes(&self) -> usize {
        self.base.len()
            + [
                &self.roles,
                &self.emojis,
                &self.stickers,
                &self.channels,
                &self.threads,
                &self.members,
                &self.presences,
                &self.voice_states,
                &self.stage_instances,
                &self.scheduled_events,
                &self.soundboard_sounds,
            ]
            .iter()
            .map(|e| e.heap_bytes())
            .sum::<usize>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all() -> CacheConfig {
        CacheConfig {
            emojis: true,
            stickers: true,
            members: true,
            presences: true,
            voice_states: true,
            stage_instances: true,
            scheduled_events: true,
            soundboard_sounds: true,
            ..CacheConfig::default()
        }
    }

    #[test]
    fn create_round_trips_with_every_array() {
        let d = r#"{"id":"1","name":"g","roles":[{"id":"1","name":"@everyone"}],"member_count":2,"members":[{"user":{"id":"7"}}],"unavailable":false,"large":false,"features":["X"]}"#;
        let g = Guild::from_create(d, &all(), None).unwrap();
        let mut out = Vec::new();
        g.write_create(&mut out);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["name"], "g");
        assert_eq!(v["features"][0], "X");
        assert_eq!(v["member_count"], 2);
        assert_eq!(v["unavailable"], false);
        assert_eq!(v["roles"][0]["name"], "@everyone");
        for k in [
            "emojis",
            "stickers",
            "channels",
            "threads",
            "presences",
            "voice_states",
            "stage_instances",
            "guild_scheduled_events",
            "soundboard_sounds",
        ] {
            assert_eq!(v[k], serde_json::json!([]), "{k}");
        }
    }

    #[test]
    fn current_member_only_keeps_the_bot() {
        let d = r#"{"id":"1","members":[{"user":{"id":"7"}},{"user":{"id":"8"}}]}"#;
        let flags = CacheConfig::default();
        let g = Guild::from_create(d, &flags, Some(8)).unwrap();
        assert_eq!(g.members.len(), 1);
        assert!(g.members.get(8).is_some());
    }

    #[test]
    fn update_merges_fields_and_replaces_roles() {
        let d = r#"{"id":"1","name":"old","icon":null,"roles":[{"id":"1"},{"id":"2"}]}"#;
        let mut g = Guild::from_create(d, &all(), None).unwrap();
        g.apply_update(r#"{"id":"1","name":"new","banner":"b","roles":[{"id":"3"}]}"#, &all());
        let mut out = Vec::new();
        g.write_create(&mut out);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["name"], "new");
        assert_eq!(v["banner"], "b");
        assert!(v["icon"].is_null());
        assert_eq!(v["roles"].as_array().unwrap().len(), 1);
    }
}
