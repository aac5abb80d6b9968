//! A shard's guild state: what READY and GUILD_CREATE must carry when a
//! client identifies. Events are applied as they arrive from Discord; only
//! events that change that state are parsed at all (see [`is_cache_event`]).

pub mod compact;
pub mod entities;
pub mod guild;

use crate::config::CacheConfig;
use compact::{object_members, Encoder, Shapes};
use entities::{id_of, opt_snowflake, snowflake, user_id_of, Entities, IdMap};
use guild::{FrozenGuild, Guild, BY_ID, BY_SOUND_ID, BY_USER_ID, BY_VOICE_USER};
use serde::Deserialize;
use serde_json::value::RawValue;
use std::collections::HashSet;

/// Whether an event with this name changes cached state.
pub fn is_cache_event(t: &[u8]) -> bool {
    matches!(
        t,
        b"READY"
            | b"USER_UPDATE"
            | b"GUILD_CREATE"
            | b"GUILD_UPDATE"
            | b"GUILD_DELETE"
            | b"GUILD_ROLE_CREATE"
            | b"GUILD_ROLE_UPDATE"
            | b"GUILD_ROLE_DELETE"
            | b"CHANNEL_CREATE"
            | b"CHANNEL_UPDATE"
            | b"CHANNEL_DELETE"
            | b"THREAD_CREATE"
            | b"THREAD_UPDATE"
            | b"THREAD_DELETE"
            | b"THREAD_LIST_SYNC"
            | b"THREAD_MEMBER_UPDATE"
            | b"THREAD_MEMBERS_UPDATE"
            | b"GUILD_MEMBER_ADD"
            | b"GUILD_MEMBER_UPDATE"
            | b"GUILD_MEMBER_REMOVE"
            | b"GUILD_MEMBERS_CHUNK"
            | b"GUILD_EMOJIS_UPDATE"
            | b"GUILD_STICKERS_UPDATE"
            | b"PRESENCE_UPDATE"
            | b"VOICE_STATE_UPDATE"
            | b"STAGE_INSTANCE_CREATE"
            | b"STAGE_INSTANCE_UPDATE"
            | b"STAGE_INSTANCE_DELETE"
            | b"GUILD_SCHEDULED_EVENT_CREATE"
            | b"GUILD_SCHEDULED_EVENT_UPDATE"
            | b"GUILD_SCHEDULED_EVENT_DELETE"
            | b"GUILD_SOUNDBOARD_SOUND_CREATE"
            | b"GUILD_SOUNDBOARD_SOUND_UPDATE"
            | b"GUILD_SOUNDBOARD_SOUND_DELETE"
            | b"GUILD_SOUNDBOARD_SOUNDS_UPDATE"
            | b"SOUNDBOARD_SOUNDS"
    )
}

/// Where a guild stands for a client that identifies now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, Deserialize)]
pub enum GuildStatus {
    /// Listed in READY; its GUILD_CREATE has not arrived from Discord yet.
    Pending,
    /// In an outage (GUILD_DELETE with `unavailable: true`).
    Unavailable,
}

/// The cached state of one shard.
///
/// Saved (in the state file) as READY's parts and each guild's GUILD_CREATE
/// JSON, so a file outlives changes to the compact form.
#[derive(Debug, Default)]
pub struct ShardCache {
    flags: CacheConfig,
    /// The bot's user object (READY `user`, kept current by USER_UPDATE).
    user: Option<Box<str>>,
    bot_id: Option<u64>,
    /// READY `application`.
    application: Option<Box<str>>,
    guilds: IdMap<Guild>,
    missing: IdMap<GuildStatus>,
    /// Object layouts of every compact entity of this shard.
    shapes: Shapes,
    /// Reused for encoding an event's entity before deciding where it goes.
    scratch: Vec<u8>,
}

/// [`ShardCache`] as saved: JSON throughout.
#[derive(serde::Serialize, Deserialize)]
struct SavedCache {
    flags: CacheConfig,
    user: Option<Box<str>>,
    bot_id: Option<u64>,
    application: Option<Box<str>>,
    /// Each guild's GUILD_CREATE `d`.
    guilds: Vec<Box<serde_json::value::RawValue>>,
    missing: IdMap<GuildStatus>,
}

impl serde::Serialize for ShardCache {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut guilds = Vec::with_capacity(self.guilds.len());
        let mut buf = Vec::new();
        for g in self.guilds.values() {
            buf.clear();
            g.write_create(&self.shapes, &mut buf);
            let text = String::from_utf8(buf.clone()).map_err(serde::ser::Error::custom)?;
            guilds.push(serde_json::value::RawValue::from_string(text).map_err(serde::ser::Error::custom)?);
        }
        SavedCache {
            flags: self.flags.clone(),
            user: self.user.clone(),
            bot_id: self.bot_id,
            application: self.application.clone(),
            guilds,
            missing: self.missing.clone(),
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for ShardCache {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let saved = SavedCache::deserialize(d)?;
        let mut cache = ShardCache {
            flags: saved.flags,
            user: saved.user,
            bot_id: saved.bot_id,
            application: saved.application,
            missing: saved.missing,
            ..ShardCache::default()
        };
        for g in saved.guilds {
            let text = g.get().as_bytes();
            let id = serde_json::from_str::<entities::HasId>(g.get()).map_err(serde::de::Error::custom)?.id;
            let guild = Guild::from_create(text, &cache.flags, cache.bot_id, &mut cache.shapes)
                .ok_or_else(|| serde::de::Error::custom("a saved guild is not a JSON object"))?;
            cache.guilds.insert(id, guild);
        }
        Ok(cache)
    }
}

#[derive(Deserialize)]
struct Ready<'a> {
    #[serde(borrow)]
    user: &'a RawValue,
    #[serde(borrow)]
    application: Option<&'a RawValue>,
    guilds: Vec<entities::HasId>,
}

#[derive(Deserialize)]
struct GuildDelete {
    #[serde(deserialize_with = "snowflake")]
    id: u64,
    #[serde(default)]
    unavailable: Option<bool>,
}

#[derive(Deserialize)]
struct RoleDelete {
    #[serde(deserialize_with = "snowflake")]
    guild_id: u64,
    #[serde(deserialize_with = "snowflake")]
    role_id: u64,
}

#[derive(Deserialize)]
struct ChannelLike {
    #[serde(deserialize_with = "snowflake")]
    id: u64,
    #[serde(default, deserialize_with = "opt_snowflake")]
    guild_id: Option<u64>,
    #[serde(default)]
    thread_metadata: Option<ThreadMetadata>,
}

#[derive(Deserialize)]
struct ThreadMetadata {
    #[serde(default)]
    archived: bool,
}

#[derive(Deserialize)]
struct ThreadListSync<'a> {
    #[serde(deserialize_with = "snowflake")]
    guild_id: u64,
    #[serde(default)]
    channel_ids: Option<Vec<entities::SnowflakeString>>,
    #[serde(borrow)]
    threads: Vec<&'a RawValue>,
    /// The current user's thread members of the synced threads it joined.
    #[serde(borrow, default)]
    members: Vec<&'a RawValue>,
}

/// A thread member object (THREAD_MEMBER_UPDATE, and inside other thread events).
#[derive(Deserialize)]
struct ThreadMember {
    #[serde(default, deserialize_with = "opt_snowflake")]
    id: Option<u64>,
    #[serde(default, deserialize_with = "opt_snowflake")]
    user_id: Option<u64>,
    #[serde(default, deserialize_with = "opt_snowflake")]
    guild_id: Option<u64>,
}

#[derive(Deserialize)]
struct ThreadMembersUpdate<'a> {
    #[serde(deserialize_with = "snowflake")]
    id: u64,
    #[serde(deserialize_with = "snowflake")]
    guild_id: u64,
    #[serde(borrow)]
    member_count: &'a RawValue,
    #[serde(borrow, default)]
    added_members: Vec<&'a RawValue>,
    #[serde(default)]
    removed_member_ids: Vec<entities::SnowflakeString>,
}

#[derive(Deserialize)]
struct MemberRemove {
    #[serde(deserialize_with = "snowflake")]
    guild_id: u64,
    user: entities::HasId,
}

#[derive(Deserialize)]
struct MembersChunk<'a> {
    #[serde(deserialize_with = "snowflake")]
    guild_id: u64,
    #[serde(borrow)]
    members: Vec<&'a RawValue>,
    #[serde(borrow, default)]
    presences: Option<Vec<&'a RawValue>>,
}

#[derive(Deserialize)]
struct ListUpdate<'a> {
    #[serde(deserialize_with = "snowflake")]
    guild_id: u64,
    #[serde(borrow, default)]
    emojis: Option<&'a RawValue>,
    #[serde(borrow, default)]
    stickers: Option<&'a RawValue>,
    #[serde(borrow, default)]
    soundboard_sounds: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct IdAndGuild {
    #[serde(deserialize_with = "snowflake")]
    id: u64,
    #[serde(deserialize_with = "snowflake")]
    guild_id: u64,
}

#[derive(Deserialize)]
struct SoundEvent {
    #[serde(deserialize_with = "snowflake")]
    sound_id: u64,
    #[serde(deserialize_with = "snowflake")]
    guild_id: u64,
}

/// Keys of a thread member object that Discord omits on the member inside a
/// thread of GUILD_CREATE (and the extras THREAD_MEMBERS_UPDATE adds).
const THREAD_MEMBER_DROP: &[&[u8]] = &[b"id", b"user_id", b"guild_id", b"member", b"presence"];

/// The current user's thread member as GUILD_CREATE lists it inside a thread.
fn short_thread_member(raw: &[u8]) -> Option<String> {
    let kept: Vec<(&[u8], &[u8])> =
        object_members(raw)?.into_iter().filter(|(k, _)| !THREAD_MEMBER_DROP.contains(k)).collect();
    let mut out = String::from("{");
    for (i, (k, v)) in kept.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push('"');
        out.push_str(std::str::from_utf8(k).ok()?);
        out.push_str("\":");
        out.push_str(std::str::from_utf8(v).ok()?);
    }
    out.push('}');
    Some(out)
}

/// A snowflake written as a JSON string or number.
fn snowflake_json(raw: &[u8]) -> Option<u64> {
    let digits = raw.strip_prefix(b"\"").and_then(|r| r.strip_suffix(b"\"")).unwrap_or(raw);
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// The value of `key` among an object's members.
fn member<'a>(members: &[(&[u8], &'a [u8])], key: &[u8]) -> Option<&'a [u8]> {
    members.iter().find(|(k, _)| *k == key).map(|(_, v)| *v)
}

/// The snowflake at `key` among an object's members.
fn id_at(members: &[(&[u8], &[u8])], key: &[u8]) -> Option<u64> {
    member(members, key).and_then(snowflake_json)
}

/// The `id` of the object at `key` among an object's members (`user.id`).
fn nested_id(members: &[(&[u8], &[u8])], key: &[u8]) -> Option<u64> {
    id_at(&object_members(member(members, key)?)?, b"id")
}

/// Whether a member event needs encoding when members are not cached:
/// only for the bot's own member or one already cached. Counts a member
/// added to a cached guild that is not. `None` if the event is not readable.
fn member_matters(
    guilds: &mut IdMap<Guild>,
    flags: &CacheConfig,
    bot_id: Option<u64>,
    d: &[u8],
    t: &[u8],
) -> Option<bool> {
    let ev = object_members(d)?;
    let uid = nested_id(&ev, b"user")?;
    let guild = guilds.get_mut(&id_at(&ev, b"guild_id")?)?;
    let keep = (flags.current_member && Some(uid) == bot_id) || guild.members.get(uid).is_some();
    if !keep && t == b"GUILD_MEMBER_ADD" {
        guild.member_count += 1;
    }
    Some(keep)
}

impl ShardCache {
    /// An empty cache keeping what `flags` asks for.
    pub fn new(flags: CacheConfig) -> Self {
        Self { flags, ..Self::default() }
    }

    /// Replaces the cache flags (after a restore, the config in force decides).
    pub fn set_flags(&mut self, flags: CacheConfig) {
        self.flags = flags;
    }

    /// The bot user's JSON, once READY was seen.
    pub fn user(&self) -> Option<&str> {
        self.user.as_deref()
    }

    /// READY's `application` JSON.
    pub fn application(&self) -> Option<&str> {
        self.application.as_deref()
    }

    /// The bot's user id.
    pub fn bot_id(&self) -> Option<u64> {
        self.bot_id
    }

    /// Available guilds.
    pub fn guilds(&self) -> impl Iterator<Item = (u64, &Guild)> {
        self.guilds.iter().map(|(id, g)| (*id, g))
    }

    /// One guild.
    pub fn guild(&self, id: u64) -> Option<&Guild> {
        self.guilds.get(&id)
    }

    /// Appends guild `id`'s GUILD_CREATE `d`; false if it is not available.
    pub fn write_create(&self, id: u64, out: &mut Vec<u8>) -> bool {
        match self.guilds.get(&id) {
            Some(g) => {
                g.write_create(&self.shapes, out);
                true
            }
            None => false,
        }
    }

    /// Every available guild as it is now, to be written later with [`Self::write_frozen`].
    pub fn freeze_guilds(&self) -> Vec<FrozenGuild> {
        self.guilds.values().map(Guild::freeze).collect()
    }

    /// Like [`Self::freeze_guilds`], cut to what a client of `view` is sent.
    pub fn freeze_guilds_for(&self, view: crate::protocol::intents::GuildView) -> Vec<FrozenGuild> {
        if view == crate::protocol::intents::GuildView::FULL {
            return self.freeze_guilds();
        }
        self.guilds.values().map(|g| g.freeze_for(view, self.bot_id)).collect()
    }

    /// Appends a frozen guild's GUILD_CREATE `d`.
    pub fn write_frozen(&self, guild: &FrozenGuild, out: &mut Vec<u8>) {
        guild.write_create(&self.shapes, out);
    }

    /// The JSON of one cached entity of a guild's collection (`pick` chooses the collection).
    pub fn entity_json(&self, guild: u64, pick: impl Fn(&Guild) -> &Entities, id: u64) -> Option<String> {
        pick(self.guilds.get(&guild)?).get_json(id, &self.shapes)
    }

    /// Guilds listed but not available, with why.
    pub fn missing(&self) -> impl Iterator<Item = (u64, GuildStatus)> + '_ {
        self.missing.iter().map(|(id, s)| (*id, *s))
    }

    /// Number of guilds of this shard, available or not.
    pub fn guild_count(&self) -> usize {
        self.guilds.len() + self.missing.len()
    }

    /// Heap bytes held by cached guild state.
    pub fn heap_bytes(&self) -> usize {
        self.guilds.values().map(Guild::heap_bytes).sum::<usize>()
            + self.guilds.capacity() * (8 + std::mem::size_of::<Guild>() + 1)
            + self.missing.capacity() * 17
            + self.shapes.heap_bytes()
    }

    /// Applies one dispatch. Returns the ids of guilds that a fresh READY
    /// dropped (the bot left them while the shard was away): the caller tells
    /// clients with GUILD_DELETE.
    pub fn apply(&mut self, t: &[u8], d: &str) -> Vec<u64> {
        self.apply_inner(t, d).unwrap_or_default()
    }

    fn apply_inner(&mut self, t: &[u8], d: &str) -> Option<Vec<u64>> {
        let flags = &self.flags;
        let shapes = &mut self.shapes;
        let scratch = &mut self.scratch;
        scratch.clear();
        let db = d.as_bytes();
        match t {
            b"READY" => {
                let ready: Ready = serde_json::from_str(d).ok()?;
                self.user = Some(ready.user.get().into());
                self.bot_id = id_of(ready.user);
                self.application = ready.application.map(|a| a.get().into());
                let listed: HashSet<u64> = ready.guilds.iter().map(|g| g.id).collect();
                let gone: Vec<u64> =
                    self.guilds.keys().chain(self.missing.keys()).copied().filter(|id| !listed.contains(id)).collect();
                for id in &gone {
                    self.guilds.remove(id);
                    self.missing.remove(id);
                }
                for id in listed {
                    if !self.guilds.contains_key(&id) {
                        self.missing.insert(id, GuildStatus::Pending);
                    }
                }
                return Some(gone);
            }
            b"USER_UPDATE" => {
                self.user = Some(d.into());
            }
            b"GUILD_CREATE" => {
                let top = object_members(db)?;
                let id = id_at(&top, b"id")?;
                if member(&top, b"unavailable") == Some(b"true") {
                    self.guilds.remove(&id);
                    self.missing.insert(id, GuildStatus::Unavailable);
                } else {
                    let guild = Guild::from_members(&top, flags, self.bot_id, shapes)?;
                    self.missing.remove(&id);
                    self.guilds.insert(id, guild);
                }
            }
            b"GUILD_UPDATE" => {
                let id = serde_json::from_str::<entities::HasId>(d).ok()?.id;
                self.guilds.get_mut(&id)?.apply_update(db, flags, shapes);
            }
            b"GUILD_DELETE" => {
                let del: GuildDelete = serde_json::from_str(d).ok()?;
                self.guilds.remove(&del.id);
                if del.unavailable == Some(true) {
                    self.missing.insert(del.id, GuildStatus::Unavailable);
                } else {
                    self.missing.remove(&del.id);
                }
            }
            b"GUILD_ROLE_CREATE" | b"GUILD_ROLE_UPDATE" if flags.roles => {
                let ev = object_members(db)?;
                let role = member(&ev, b"role")?;
                let id = id_at(&object_members(role)?, b"id")?;
                self.guilds.get_mut(&id_at(&ev, b"guild_id")?)?.roles.insert_json(id, role, shapes)?;
            }
            b"GUILD_ROLE_DELETE" if flags.roles => {
                let ev: RoleDelete = serde_json::from_str(d).ok()?;
                self.guilds.get_mut(&ev.guild_id)?.roles.remove(ev.role_id);
            }
            b"CHANNEL_CREATE" | b"CHANNEL_UPDATE" if flags.channels => {
                let [gid] = Encoder::new(shapes).encode_without(db, [b"guild_id"], scratch)?;
                let guild = self.guilds.get_mut(&snowflake_json(gid?)?)?;
                guild.channels.insert_encoded(shapes.snowflake_at(scratch, BY_ID)?, scratch);
            }
            b"CHANNEL_DELETE" if flags.channels => {
                let ch: ChannelLike = serde_json::from_str(d).ok()?;
                let guild = self.guilds.get_mut(&ch.guild_id?)?;
                guild.channels.remove(ch.id);
                guild.threads.retain(|_, e| shapes.snowflake_at(e, &[b"parent_id"]) != Some(ch.id));
            }
            b"THREAD_CREATE" | b"THREAD_UPDATE" if flags.channels => {
                let th: ChannelLike = serde_json::from_str(d).ok()?;
                let guild = self.guilds.get_mut(&th.guild_id?)?;
                if th.thread_metadata.is_some_and(|m| m.archived) {
                    // Only active threads are listed.
                    guild.threads.remove(th.id);
                } else {
                    let mut pairs = object_members(db)?;
                    pairs.retain(|(k, _)| *k != b"newly_created");
                    let short;
                    let old = guild.threads.get_json(th.id, shapes);
                    match pairs.iter_mut().find(|(k, _)| *k == b"member") {
                        // Added to the thread: our thread member, in GUILD_CREATE's form.
                        Some(slot) => {
                            short = short_thread_member(slot.1)?;
                            slot.1 = short.as_bytes();
                        }
                        // Our membership does not change with the thread.
                        None => {
                            let old_member = old
                                .as_deref()
                                .and_then(|o| object_members(o.as_bytes())?.into_iter().find(|(k, _)| *k == b"member"));
                            if let Some(m) = old_member {
                                pairs.push(m);
                            }
                        }
                    }
                    guild.threads.insert_members(th.id, &pairs, &[], shapes)?;
                }
            }
            b"THREAD_DELETE" if flags.channels => {
                let th: ChannelLike = serde_json::from_str(d).ok()?;
                self.guilds.get_mut(&th.guild_id?)?.threads.remove(th.id);
            }
            b"THREAD_LIST_SYNC" if flags.channels => {
                let sync: ThreadListSync = serde_json::from_str(d).ok()?;
                let guild = self.guilds.get_mut(&sync.guild_id)?;
                match &sync.channel_ids {
                    Some(parents) => {
                        let parents: HashSet<u64> = parents.iter().map(|p| p.0).collect();
                        guild.threads.retain(|_, e| {
                            !shapes.snowflake_at(e, &[b"parent_id"]).is_some_and(|p| parents.contains(&p))
                        });
                    }
                    None => guild.threads.clear(),
                }
                for th in sync.threads {
                    if let Some(id) = id_of(th) {
                        guild.threads.insert_json(id, th.get().as_bytes(), shapes);
                    }
                }
                for m in sync.members {
                    let Ok(ThreadMember { id: Some(id), .. }) = serde_json::from_str(m.get()) else { continue };
                    let short = short_thread_member(m.get().as_bytes())?;
                    let Some(stored) = guild.threads.get(id) else { continue };
                    let updated = shapes.merge(stored, &[(b"member", Some(short.as_bytes()))], &[])?;
                    guild.threads.insert_encoded(id, &updated);
                }
            }
            b"THREAD_MEMBER_UPDATE" if flags.channels => {
                // Always the current user's thread member.
                let tm: ThreadMember = serde_json::from_str(d).ok()?;
                let guild = self.guilds.get_mut(&tm.guild_id?)?;
                let id = tm.id?;
                let short = short_thread_member(db)?;
                let updated = shapes.merge(guild.threads.get(id)?, &[(b"member", Some(short.as_bytes()))], &[])?;
                guild.threads.insert_encoded(id, &updated);
            }
            b"THREAD_MEMBERS_UPDATE" if flags.channels => {
                let ev: ThreadMembersUpdate = serde_json::from_str(d).ok()?;
                let bot_id = self.bot_id;
                let guild = self.guilds.get_mut(&ev.guild_id)?;
                let mut ours: Option<Option<String>> = None;
                if let Some(bot_id) = bot_id {
                    for m in &ev.added_members {
                        let tm: ThreadMember = serde_json::from_str(m.get()).ok()?;
                        if tm.user_id == Some(bot_id) {
                            ours = Some(Some(short_thread_member(m.get().as_bytes())?));
                        }
                    }
                    if ev.removed_member_ids.iter().any(|r| r.0 == bot_id) {
                        ours = Some(None);
                    }
                }
                let mut update: Vec<(&[u8], Option<&[u8]>)> =
                    vec![(b"member_count", Some(ev.member_count.get().as_bytes()))];
                if let Some(m) = &ours {
                    update.push((b"member", m.as_deref().map(str::as_bytes)));
                }
                let updated = shapes.merge(guild.threads.get(ev.id)?, &update, &[])?;
                guild.threads.insert_encoded(ev.id, &updated);
            }
            // Without the `members` flag most member events concern nobody
            // cached: find that out from the ids alone, before encoding.
            b"GUILD_MEMBER_ADD" | b"GUILD_MEMBER_UPDATE"
                if !flags.members && !member_matters(&mut self.guilds, flags, self.bot_id, db, t)? => {}
            b"GUILD_MEMBER_ADD" => {
                let [gid] = Encoder::new(shapes).encode_without(db, [b"guild_id"], scratch)?;
                let guild = self.guilds.get_mut(&snowflake_json(gid?)?)?;
                guild.member_count += 1;
                let uid = shapes.snowflake_at(scratch, BY_USER_ID)?;
                if flags.members || (flags.current_member && Some(uid) == self.bot_id) {
                    guild.members.insert_encoded(uid, scratch);
                }
            }
            b"GUILD_MEMBER_UPDATE" => {
                let [gid] = Encoder::new(shapes).encode_without(db, [b"guild_id"], scratch)?;
                let guild = self.guilds.get_mut(&snowflake_json(gid?)?)?;
                let uid = shapes.snowflake_at(scratch, BY_USER_ID)?;
                match guild.members.get(uid) {
                    // Discord sends the whole member: usually nothing to merge.
                    Some(old) if shapes.covers(scratch, old) => guild.members.insert_encoded(uid, scratch),
                    Some(old) => {
                        let ev = object_members(db)?;
                        let update: Vec<(&[u8], Option<&[u8]>)> = ev.iter().map(|&(k, v)| (k, Some(v))).collect();
                        let merged = shapes.merge(old, &update, &[b"guild_id"])?;
                        guild.members.insert_encoded(uid, &merged);
                    }
                    None if flags.members || (flags.current_member && Some(uid) == self.bot_id) => {
                        guild.members.insert_encoded(uid, scratch)
                    }
                    None => return None,
                }
            }
            b"GUILD_MEMBER_REMOVE" => {
                let ev: MemberRemove = serde_json::from_str(d).ok()?;
                let guild = self.guilds.get_mut(&ev.guild_id)?;
                guild.member_count = guild.member_count.saturating_sub(1);
                guild.members.remove(ev.user.id);
                guild.presences.remove(ev.user.id);
            }
            b"GUILD_MEMBERS_CHUNK" => {
                let chunk: MembersChunk = serde_json::from_str(d).ok()?;
                let (members, current, bot_id) = (flags.members, flags.current_member, self.bot_id);
                let guild = self.guilds.get_mut(&chunk.guild_id)?;
                for m in chunk.members {
                    if let Some(uid) = user_id_of(m) {
                        if members || (current && Some(uid) == bot_id) {
                            guild.members.insert_json(uid, m.get().as_bytes(), shapes);
                        }
                    }
                }
                if flags.presences {
                    // Like PRESENCE_UPDATE: offline members are not listed.
                    for p in chunk.presences.unwrap_or_default() {
                        let Some(ev) = object_members(p.get().as_bytes()) else { continue };
                        let Some(uid) = nested_id(&ev, b"user") else { continue };
                        if member(&ev, b"status") == Some(b"\"offline\"") {
                            guild.presences.remove(uid);
                        } else {
                            guild.presences.insert_members(uid, &ev, &[b"guild_id"], shapes);
                        }
                    }
                }
            }
            b"GUILD_SOUNDBOARD_SOUNDS_UPDATE" if flags.soundboard_sounds => {
                // Several sounds updated at once: only the listed ones change.
                let ev: ListUpdate = serde_json::from_str(d).ok()?;
                let guild = self.guilds.get_mut(&ev.guild_id)?;
                for sound in compact::array_elements(ev.soundboard_sounds?.get().as_bytes())? {
                    if let Some(id) = object_members(sound).and_then(|s| id_at(&s, b"sound_id")) {
                        guild.soundboard_sounds.insert_json(id, sound, shapes);
                    }
                }
            }
            // Each carries the guild's whole list (SOUNDBOARD_SOUNDS answers op 31).
            b"GUILD_EMOJIS_UPDATE" | b"GUILD_STICKERS_UPDATE" | b"SOUNDBOARD_SOUNDS" => {
                let ev: ListUpdate = serde_json::from_str(d).ok()?;
                let guild = self.guilds.get_mut(&ev.guild_id)?;
                if let (Some(list), true) = (ev.emojis, flags.emojis) {
                    guild.emojis.fill(list.get().as_bytes(), BY_ID, shapes);
                }
                if let (Some(list), true) = (ev.stickers, flags.stickers) {
                    guild.stickers.fill(list.get().as_bytes(), BY_ID, shapes);
                }
                if let (Some(list), true) = (ev.soundboard_sounds, flags.soundboard_sounds) {
                    guild.soundboard_sounds.fill(list.get().as_bytes(), BY_SOUND_ID, shapes);
                }
            }
            b"PRESENCE_UPDATE" if flags.presences => {
                let [gid] = Encoder::new(shapes).encode_without(db, [b"guild_id"], scratch)?;
                let guild = self.guilds.get_mut(&snowflake_json(gid?)?)?;
                let uid = shapes.snowflake_at(scratch, BY_USER_ID)?;
                if shapes.string_at(scratch, &[b"status"]) == Some(b"offline") {
                    guild.presences.remove(uid);
                } else {
                    guild.presences.insert_encoded(uid, scratch);
                }
            }
            b"VOICE_STATE_UPDATE" if flags.voice_states => {
                let [gid, _] = Encoder::new(shapes).encode_without(db, [b"guild_id", b"member"], scratch)?;
                let guild = self.guilds.get_mut(&snowflake_json(gid?)?)?;
                let uid = shapes.snowflake_at(scratch, BY_VOICE_USER)?;
                if shapes.snowflake_at(scratch, &[b"channel_id"]).is_none() {
                    guild.voice_states.remove(uid);
                } else {
                    guild.voice_states.insert_encoded(uid, scratch);
                }
            }
            b"STAGE_INSTANCE_CREATE" | b"STAGE_INSTANCE_UPDATE" if flags.stage_instances => {
                let ev: IdAndGuild = serde_json::from_str(d).ok()?;
                self.guilds.get_mut(&ev.guild_id)?.stage_instances.insert_json(ev.id, db, shapes)?;
            }
            b"STAGE_INSTANCE_DELETE" if flags.stage_instances => {
                let ev: IdAndGuild = serde_json::from_str(d).ok()?;
                self.guilds.get_mut(&ev.guild_id)?.stage_instances.remove(ev.id);
            }
            b"GUILD_SCHEDULED_EVENT_CREATE" | b"GUILD_SCHEDULED_EVENT_UPDATE" if flags.scheduled_events => {
                let ev: IdAndGuild = serde_json::from_str(d).ok()?;
                self.guilds.get_mut(&ev.guild_id)?.scheduled_events.insert_json(ev.id, db, shapes)?;
            }
            b"GUILD_SCHEDULED_EVENT_DELETE" if flags.scheduled_events => {
                let ev: IdAndGuild = serde_json::from_str(d).ok()?;
                self.guilds.get_mut(&ev.guild_id)?.scheduled_events.remove(ev.id);
            }
            b"GUILD_SOUNDBOARD_SOUND_CREATE" | b"GUILD_SOUNDBOARD_SOUND_UPDATE" if flags.soundboard_sounds => {
                let ev: SoundEvent = serde_json::from_str(d).ok()?;
                self.guilds.get_mut(&ev.guild_id)?.soundboard_sounds.insert_json(ev.sound_id, db, shapes)?;
            }
            b"GUILD_SOUNDBOARD_SOUND_DELETE" if flags.soundboard_sounds => {
                let ev: SoundEvent = serde_json::from_str(d).ok()?;
                self.guilds.get_mut(&ev.guild_id)?.soundboard_sounds.remove(ev.sound_id);
            }
            _ => {}
        }
        Some(Vec::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ready(guilds: &[u64]) -> String {
        let list: Vec<String> = guilds.iter().map(|g| format!(r#"{{"id":"{g}","unavailable":true}}"#)).collect();
        format!(
            r#"{{"v":10,"user":{{"id":"99","username":"bot"}},"application":{{"id":"5","flags":0}},"guilds":[{}],"session_id":"s"}}"#,
            list.join(",")
        )
    }

    #[test]
    fn ready_then_create_then_leave() {
        let mut c = ShardCache::new(CacheConfig::default());
        assert!(c.apply(b"READY", &ready(&[1, 2])).is_empty());
        assert_eq!(c.missing().count(), 2);
        c.apply(b"GUILD_CREATE", r#"{"id":"1","name":"a","member_count":3,"channels":[{"id":"10","name":"c"}],"members":[{"user":{"id":"99"}},{"user":{"id":"5"}}]}"#);
        assert_eq!(c.guilds().count(), 1);
        let g = c.guild(1).unwrap();
        assert_eq!(g.members.len(), 1, "only the bot's member is kept by default");
        c.apply(b"CHANNEL_CREATE", r#"{"id":"11","guild_id":"1","name":"d"}"#);
        c.apply(b"CHANNEL_DELETE", r#"{"id":"10","guild_id":"1"}"#);
        let g = c.guild(1).unwrap();
        assert_eq!(g.channels.ids().collect::<Vec<_>>(), vec![11]);
        assert_eq!(c.entity_json(1, |g| &g.channels, 11).unwrap(), r#"{"id":"11","name":"d"}"#);
        c.apply(b"GUILD_MEMBER_ADD", r#"{"guild_id":"1","user":{"id":"6"}}"#);
        assert_eq!(c.guild(1).unwrap().member_count, 4);
        c.apply(b"GUILD_DELETE", r#"{"id":"2","unavailable":true}"#);
        assert_eq!(c.missing().collect::<Vec<_>>(), vec![(2, GuildStatus::Unavailable)]);
        // A new READY without guild 1: the bot left it while away.
        assert_eq!(c.apply(b"READY", &ready(&[2])), vec![1]);
        assert_eq!(c.guilds().count(), 0);
    }

    #[test]
    fn events_for_unknown_guilds_and_ids_are_ignored() {
        let mut c = ShardCache::new(CacheConfig::default());
        c.apply(b"CHANNEL_DELETE", r#"{"id":"10","guild_id":"1"}"#);
        c.apply(b"GUILD_ROLE_DELETE", r#"{"role_id":"10","guild_id":"1"}"#);
        c.apply(b"GUILD_MEMBER_REMOVE", r#"{"user":{"id":"10"},"guild_id":"1"}"#);
        c.apply(b"GUILD_CREATE", "not json");
        assert_eq!(c.guild_count(), 0);
    }

    #[test]
    fn member_update_merges() {
        let flags = CacheConfig { members: true, ..CacheConfig::default() };
        let mut c = ShardCache::new(flags);
        c.apply(b"GUILD_CREATE", r#"{"id":"1","members":[{"user":{"id":"5"},"nick":"a","roles":[]}]}"#);
        c.apply(b"GUILD_MEMBER_UPDATE", r#"{"guild_id":"1","user":{"id":"5"},"nick":"b","roles":["3"]}"#);
        assert_eq!(c.entity_json(1, |g| &g.members, 5).unwrap(), r#"{"user":{"id":"5"},"nick":"b","roles":["3"]}"#);
    }

    #[test]
    fn saved_cache_restores_the_same_guilds() {
        let flags = CacheConfig { members: true, ..CacheConfig::default() };
        let mut c = ShardCache::new(flags);
        c.apply(b"READY", &ready(&[1, 2, 3]));
        c.apply(b"GUILD_CREATE", r#"{"id":"1","name":"a","member_count":2,"channels":[{"id":"10","name":"c","nsfw":false}],"roles":[{"id":"1","permissions":"8"}],"members":[{"user":{"id":"99","avatar":"0123456789abcdef0123456789abcdef"},"joined_at":"2020-01-01T00:00:00.000000+00:00"}]}"#);
        c.apply(b"GUILD_DELETE", r#"{"id":"3","unavailable":true}"#);
        let text = serde_json::to_string(&c).unwrap();
        let back: ShardCache = serde_json::from_str(&text).unwrap();
        let (mut a, mut b) = (Vec::new(), Vec::new());
        assert!(c.write_create(1, &mut a) && back.write_create(1, &mut b));
        assert_eq!(String::from_utf8(a).unwrap(), String::from_utf8(b).unwrap());
        assert_eq!(back.user(), c.user());
        let mut missing: Vec<_> = back.missing().collect();
        missing.sort_by_key(|m| m.0);
        assert_eq!(missing, vec![(2, GuildStatus::Pending), (3, GuildStatus::Unavailable)]);
    }

    #[test]
    fn a_frozen_guild_keeps_the_state_it_was_frozen_in() {
        let flags = CacheConfig { members: true, ..CacheConfig::default() };
        let mut c = ShardCache::new(flags);
        c.apply(b"GUILD_CREATE", r#"{"id":"1","name":"a","member_count":1,"channels":[{"id":"10","name":"c"}],"members":[{"user":{"id":"5"},"nick":null}]}"#);
        let mut before = Vec::new();
        c.write_create(1, &mut before);
        let frozen = c.freeze_guilds();
        c.apply(b"CHANNEL_UPDATE", r#"{"id":"10","guild_id":"1","name":"renamed"}"#);
        c.apply(b"GUILD_MEMBER_ADD", r#"{"guild_id":"1","user":{"id":"6"}}"#);
        c.apply(b"GUILD_MEMBER_UPDATE", r#"{"guild_id":"1","user":{"id":"5"},"nick":"n"}"#);
        c.apply(b"GUILD_UPDATE", r#"{"id":"1","name":"b"}"#);
        let mut later = Vec::new();
        c.write_frozen(&frozen[0], &mut later);
        assert_eq!(String::from_utf8(later).unwrap(), String::from_utf8(before.clone()).unwrap());
        let mut now = Vec::new();
        c.write_create(1, &mut now);
        let now: serde_json::Value = serde_json::from_slice(&now).unwrap();
        assert_eq!(now["channels"][0]["name"], "renamed");
        assert_eq!(now["members"].as_array().unwrap().len(), 2);
        assert_eq!(now["member_count"], 2);
        assert_eq!(now["name"], "b");
    }
}
