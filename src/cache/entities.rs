//! Id-keyed storage of raw JSON entities.
//!
//! Each cached entity (a channel, a role, a member...) is kept as the compact
//! JSON text Discord sent, keyed by its snowflake. Serving GUILD_CREATE is
//! then a splice of stored text, never a re-serialisation, and an entity
//! costs its JSON length plus one map slot.

use serde::{de, Deserialize, Deserializer};
use serde_json::value::RawValue;
use std::{
    collections::HashMap,
    hash::{BuildHasherDefault, Hasher},
};

/// Hasher for snowflakes: they are already well spread in their low bits
/// after a multiply, so SipHash would only cost time.
#[derive(Default, Clone, Copy)]
pub struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(5) ^ u64::from(b)).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = (v ^ (v >> 29)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

/// A map keyed by snowflake.
pub type IdMap<V> = HashMap<u64, V, BuildHasherDefault<IdHasher>>;

/// Raw JSON entities by id.
#[derive(Debug, Default, Clone, serde::Serialize, Deserialize)]
pub struct Entities {
    map: IdMap<Box<str>>,
}

impl Entities {
    /// Inserts or replaces an entity.
    pub fn insert(&mut self, id: u64, raw: Box<str>) {
        self.map.insert(id, raw);
    }

    /// Removes an entity; returns whether it was there.
    pub fn remove(&mut self, id: u64) -> bool {
        self.map.remove(&id).is_some()
    }

    /// The entity's JSON.
    pub fn get(&self, id: u64) -> Option<&str> {
        self.map.get(&id).map(|s| &**s)
    }

    /// Number of entities.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Drops every entity.
    pub fn clear(&mut self) {
        self.map.clear();
    }

    /// Keeps only the entities for which `keep` is true.
    pub fn retain(&mut self, mut keep: impl FnMut(u64, &str) -> bool) {
        self.map.retain(|id, raw| keep(*id, raw));
    }

    /// Iterates over the entities' JSON.
    pub fn values(&self) -> impl Iterator<Item = &str> {
        self.map.values().map(|s| &**s)
    }

    /// Iterates over ids.
    pub fn ids(&self) -> impl Iterator<Item = u64> + '_ {
        self.map.keys().copied()
    }

    /// Heap bytes held (JSON text plus map slots).
    pub fn heap_bytes(&self) -> usize {
        self.map.capacity() * (8 + std::mem::size_of::<Box<str>>() + 1)
            + self.map.values().map(|s| s.len()).sum::<usize>()
    }

    /// Appends `[e1,e2,...]` to `out`.
    pub fn write_array(&self, out: &mut Vec<u8>) {
        out.push(b'[');
        for (i, raw) in self.map.values().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(raw.as_bytes());
        }
        out.push(b']');
    }
}

/// Deserialises a snowflake given as a string (Discord's form) or a number.
pub fn snowflake<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    struct V;
    impl de::Visitor<'_> for V {
        type Value = u64;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a snowflake")
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<u64, E> {
            Ok(v)
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<u64, E> {
            v.parse().map_err(E::custom)
        }
    }
    d.deserialize_any(V)
}

/// Like [`snowflake`] for optional fields.
pub fn opt_snowflake<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    #[derive(Deserialize)]
    struct W(#[serde(deserialize_with = "snowflake")] u64);
    Ok(Option::<W>::deserialize(d)?.map(|w| w.0))
}

/// An object's `id`.
#[derive(Deserialize)]
pub struct HasId {
    /// The id.
    #[serde(deserialize_with = "snowflake")]
    pub id: u64,
}

/// The id of the object's `user` (members, presences).
#[derive(Deserialize)]
pub struct HasUser {
    /// The nested user.
    pub user: HasId,
}

/// Reads the `id` of a raw object.
pub fn id_of(raw: &RawValue) -> Option<u64> {
    serde_json::from_str::<HasId>(raw.get()).ok().map(|h| h.id)
}

/// Reads `user.id` of a raw object.
pub fn user_id_of(raw: &RawValue) -> Option<u64> {
    serde_json::from_str::<HasUser>(raw.get()).ok().map(|h| h.user.id)
}

/// Parses a JSON object keeping the order of its keys.
pub fn parse_object(raw: &str) -> Option<Vec<(String, Box<RawValue>)>> {
    let map: indexmap_lite::Ordered = serde_json::from_str(raw).ok()?;
    Some(map.0)
}

/// Serialises `(key, raw value)` pairs as a JSON object.
pub fn write_object<'a>(pairs: impl Iterator<Item = (&'a str, &'a RawValue)>) -> Box<str> {
    let mut out = String::from("{");
    for (i, (k, v)) in pairs.enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&serde_json::to_string(k).expect("a string serialises"));
        out.push(':');
        out.push_str(v.get());
    }
    out.push('}');
    out.into_boxed_str()
}

mod indexmap_lite {
    //! An order-preserving object of raw values, without a map dependency.
    use serde::de::{MapAccess, Visitor};
    use serde::{Deserialize, Deserializer};
    use serde_json::value::RawValue;

    pub struct Ordered(pub Vec<(String, Box<RawValue>)>);

    impl<'de> Deserialize<'de> for Ordered {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl<'de> Visitor<'de> for V {
                type Value = Ordered;
                fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                    f.write_str("a JSON object")
                }
                fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Ordered, A::Error> {
                    let mut v = Vec::with_capacity(m.size_hint().unwrap_or(16));
                    while let Some((k, val)) = m.next_entry::<String, Box<RawValue>>()? {
                        v.push((k, val));
                    }
                    Ok(Ordered(v))
                }
            }
            d.deserialize_map(V)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_round_trip_keeps_order_and_raw_values() {
        let text = r#"{"b":1,"a":{"x":[1,2]},"c":"s"}"#;
        let pairs = parse_object(text).unwrap();
        let keys: Vec<_> = pairs.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["b", "a", "c"]);
        let back = write_object(pairs.iter().map(|(k, v)| (k.as_str(), &**v)));
        assert_eq!(&*back, text);
    }

    #[test]
    fn ids_from_strings_and_numbers() {
        let raw: Box<RawValue> = serde_json::from_str(r#"{"id":"123","user":{"id":5}}"#).unwrap();
        assert_eq!(id_of(&raw), Some(123));
        assert_eq!(user_id_of(&raw), Some(5));
    }
}

/// A snowflake inside a list (`channel_ids`), string or number.
#[derive(Deserialize)]
pub struct SnowflakeString(#[serde(deserialize_with = "snowflake")] pub u64);

/// The ids of a voice state (VOICE_STATE_UPDATE).
#[derive(Deserialize)]
pub struct VoiceStateIds {
    /// Its guild.
    #[serde(default, deserialize_with = "opt_snowflake")]
    pub guild_id: Option<u64>,
    /// The channel, none when the user left voice.
    #[serde(default, deserialize_with = "opt_snowflake")]
    pub channel_id: Option<u64>,
    /// The user.
    #[serde(deserialize_with = "snowflake")]
    pub user_id: u64,
}
