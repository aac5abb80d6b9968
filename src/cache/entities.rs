//! Id-keyed storage of raw JSON entities.
//!
//! Each cached entity (a channel, a role, a member...) is kept as the compact
//! JSON text Discord sent, keyed by its snowflake. Serving GUILD_CREATE is
//! then a splice of stored text, never a re-serialisation, and an entity
//! costs its JSON length plus one map slot.

use super::compact::{Encoder, Shapes};
use serde::{de, Deserialize, Deserializer};
use serde_json::value::RawValue;
use std::{
    collections::HashMap,
    hash::{BuildHasherDefault, Hasher},
    sync::Arc,
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

/// Compact entities by id, in one buffer per collection.
///
/// Each entity is a record in `data` (a u32 header: bit 31 set once the
/// record is dead, the low bits its length; then its compact form, see
/// [`super::compact`]) and `index` maps its id to the record. One buffer per
/// collection instead of one allocation per entity saves the allocator's
/// overhead and keeps a guild's members together in memory; GUILD_CREATE
/// lists them in the order they arrived. Dead records are reclaimed when
/// they make up half of the buffer.
#[derive(Debug, Default, Clone)]
pub struct Entities {
    index: IdMap<u32>,
    /// Shared with snapshots being sent (copied on write).
    data: Arc<Vec<u8>>,
    dead: usize,
}

const DEAD: u32 = 1 << 31;
const HEADER: usize = 4;

fn header_at(data: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(data[at..at + HEADER].try_into().expect("4 bytes"))
}

/// Appends `[e1,e2,...]` (JSON) for the records in `data`, in the order they arrived.
pub fn write_records(data: &[u8], shapes: &Shapes, out: &mut Vec<u8>) {
    out.push(b'[');
    let mut first = true;
    let mut at = 0;
    while at < data.len() {
        let h = header_at(data, at);
        let end = at + HEADER + (h & !DEAD) as usize;
        if h & DEAD == 0 {
            if !first {
                out.push(b',');
            }
            first = false;
            shapes.decode(&data[..end], &mut (at + HEADER), out);
        }
        at = end;
    }
    out.push(b']');
}

/// Makes room for `extra` bytes, growing by about an eighth when full, not
/// double: collections are loaded whole (then trimmed) and change a little
/// at a time.
fn grow(data: &mut Vec<u8>, extra: usize) {
    if data.capacity() - data.len() < extra {
        data.reserve_exact(extra.max(data.len() / 8).max(256));
    }
}

/// Marks the record at `at` dead; returns the bytes it held (header included).
fn mark_dead(data: &mut [u8], at: u32) -> usize {
    let at = at as usize;
    let h = header_at(data, at);
    data[at..at + HEADER].copy_from_slice(&(h | DEAD).to_le_bytes());
    HEADER + (h & !DEAD) as usize
}

impl Entities {
    fn header(&self, at: usize) -> u32 {
        header_at(&self.data, at)
    }

    /// The records, for writing while the collection changes (see [`write_records`]).
    pub fn records(&self) -> Arc<Vec<u8>> {
        self.data.clone()
    }

    /// The records of the entities `ids` (those present, once each, in the
    /// order given), for a snapshot that lists only some of the collection.
    pub fn records_of(&self, ids: impl IntoIterator<Item = u64>) -> Arc<Vec<u8>> {
        let mut out = Vec::new();
        let mut seen = Vec::new();
        for id in ids {
            if seen.contains(&id) {
                continue;
            }
            seen.push(id);
            if let Some(&at) = self.index.get(&id) {
                let at = at as usize;
                let len = (self.header(at) & !DEAD) as usize;
                out.extend_from_slice(&self.data[at..at + HEADER + len]);
            }
        }
        Arc::new(out)
    }

    fn buf(&mut self) -> &mut Vec<u8> {
        Arc::make_mut(&mut self.data)
    }

    fn kill(&mut self, at: u32) {
        self.dead += mark_dead(self.buf(), at);
    }

    fn reserve(&mut self, extra: usize) {
        // Unshared first: a copy made later would have exactly its length.
        grow(self.buf(), extra);
    }

    /// Starts a record; returns its offset. The caller appends the entity, then calls [`Self::finish`].
    fn begin(&mut self, size_hint: usize) -> usize {
        self.reserve(HEADER + size_hint);
        let at = self.data.len();
        self.buf().extend_from_slice(&[0; HEADER]);
        at
    }

    fn finish(&mut self, id: u64, at: usize) {
        let len = (self.data.len() - at - HEADER) as u32;
        self.buf()[at..at + HEADER].copy_from_slice(&len.to_le_bytes());
        if let Some(old) = self.index.insert(id, at as u32) {
            self.kill(old);
        }
        self.maybe_compact();
    }

    fn maybe_compact(&mut self) {
        if self.dead < 4096 || self.dead * 2 < self.data.len() {
            return;
        }
        let mut live: Vec<(u32, u64)> = self.index.iter().map(|(id, at)| (*at, *id)).collect();
        live.sort_unstable();
        let mut data = Vec::with_capacity((self.data.len() - self.dead) * 9 / 8);
        for (at, id) in live {
            let at = at as usize;
            let len = HEADER + (self.header(at) & !DEAD) as usize;
            self.index.insert(id, data.len() as u32);
            data.extend_from_slice(&self.data[at..at + len]);
        }
        self.data = Arc::new(data);
        self.dead = 0;
        if self.index.capacity() > 2 * self.index.len() + 16 {
            self.index.shrink_to_fit();
        }
    }

    /// Inserts or replaces an entity given in compact form.
    pub fn insert_encoded(&mut self, id: u64, encoded: &[u8]) {
        // One uniqueness check for the whole append (it is an atomic operation).
        let data = Arc::make_mut(&mut self.data);
        grow(data, HEADER + encoded.len());
        let at = data.len();
        data.extend_from_slice(&(encoded.len() as u32).to_le_bytes());
        data.extend_from_slice(encoded);
        if let Some(old) = self.index.insert(id, at as u32) {
            self.dead += mark_dead(data, old);
        }
        self.maybe_compact();
    }

    /// Inserts or replaces an entity from its JSON; `None` (nothing
    /// changed) if it is not valid JSON.
    pub fn insert_json(&mut self, id: u64, json: &[u8], shapes: &mut Shapes) -> Option<()> {
        let at = self.begin(json.len() / 4);
        if Encoder::new(shapes).encode(json, Arc::make_mut(&mut self.data)).is_none() {
            self.buf().truncate(at);
            return None;
        }
        self.finish(id, at);
        Some(())
    }

    /// Inserts or replaces an entity from a JSON object's members, without the keys in `drop`.
    pub fn insert_members(
        &mut self,
        id: u64,
        members: &[(&[u8], &[u8])],
        drop: &[&[u8]],
        shapes: &mut Shapes,
    ) -> Option<()> {
        let at = self.begin(members.iter().map(|(_, v)| v.len()).sum::<usize>() / 4);
        if Encoder::new(shapes).encode_members_without(members, drop, Arc::make_mut(&mut self.data)).is_none() {
            self.buf().truncate(at);
            return None;
        }
        self.finish(id, at);
        Some(())
    }

    /// Replaces the whole collection with the elements of a JSON array,
    /// each keyed by the snowflake at `key` inside it.
    pub fn fill(&mut self, array: &[u8], key: &[&[u8]], shapes: &mut Shapes) {
        self.fill_where(array, key, shapes, |_| true);
    }

    /// Like [`Self::fill`], keeping only the entities whose key passes `keep`.
    pub fn fill_where(&mut self, array: &[u8], key: &[&[u8]], shapes: &mut Shapes, keep: impl Fn(u64) -> bool) {
        self.clear();
        self.buf().reserve(array.len() / 4);
        let mut enc = Encoder::new(shapes);
        let ws = |i: usize| i + array[i.min(array.len())..].iter().take_while(|b| b.is_ascii_whitespace()).count();
        let mut i = ws(0);
        if array.get(i) != Some(&b'[') {
            return;
        }
        i = ws(i + 1);
        if array.get(i) == Some(&b']') {
            return;
        }
        loop {
            let at = self.data.len();
            self.buf().extend_from_slice(&[0; HEADER]);
            let Some(end) = enc.encode_at(array, i, Arc::make_mut(&mut self.data)) else {
                // Not JSON from here on: keep what came before.
                self.buf().truncate(at);
                break;
            };
            match enc.shapes().snowflake_at(&self.data[at + HEADER..], key) {
                Some(id) if keep(id) => self.finish(id, at),
                _ => self.buf().truncate(at),
            }
            i = ws(end);
            match array.get(i) {
                Some(b',') => i = ws(i + 1),
                _ => break,
            }
        }
        self.buf().shrink_to_fit();
        self.index.shrink_to_fit();
    }

    /// Removes an entity; returns whether it was there.
    pub fn remove(&mut self, id: u64) -> bool {
        match self.index.remove(&id) {
            Some(at) => {
                self.kill(at);
                self.maybe_compact();
                true
            }
            None => false,
        }
    }

    /// The entity in compact form.
    pub fn get(&self, id: u64) -> Option<&[u8]> {
        let at = *self.index.get(&id)? as usize;
        let len = (self.header(at) & !DEAD) as usize;
        Some(&self.data[at + HEADER..at + HEADER + len])
    }

    /// The entity's JSON.
    pub fn get_json(&self, id: u64, shapes: &Shapes) -> Option<String> {
        self.get(id).map(|e| shapes.to_json(e))
    }

    /// Number of entities.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Drops every entity.
    pub fn clear(&mut self) {
        self.index.clear();
        match Arc::get_mut(&mut self.data) {
            Some(data) => data.clear(),
            None => self.data = Arc::default(),
        }
        self.dead = 0;
    }

    /// Keeps only the entities for which `keep(id, compact form)` is true.
    pub fn retain(&mut self, mut keep: impl FnMut(u64, &[u8]) -> bool) {
        let gone: Vec<u64> =
            self.index.keys().copied().filter(|&id| !keep(id, self.get(id).expect("indexed"))).collect();
        for id in gone {
            self.remove(id);
        }
    }

    /// Iterates over ids.
    pub fn ids(&self) -> impl Iterator<Item = u64> + '_ {
        self.index.keys().copied()
    }

    /// Heap bytes held (records plus index slots).
    pub fn heap_bytes(&self) -> usize {
        self.data.capacity() + self.index.capacity() * (std::mem::size_of::<(u64, u32)>() + 1)
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
