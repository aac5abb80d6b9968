//! A shard's guild state: what READY and GUILD_CREATE must carry when a
//! client identifies. Events are applied as they arrive from Discord; only
//! events that change that state are parsed at all (see [`is_cache_event`]).

pub mod entities;
pub mod guild;

use crate::config::CacheConfig;
use entities::{id_of, opt_snowflake, parse_object, snowflake, user_id_of, write_object, IdMap};
use guild::{fill, sound_id_of, Guild};
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
#[derive(Debug, Default, serde::Serialize, Deserialize)]
pub struct ShardCache {
    flags: CacheConfig,
    /// The bot's user object (READY `user`, kept current by USER_UPDATE).
    user: Option<Box<str>>,
    bot_id: Option<u64>,
    /// READY `application`.
    application: Option<Box<str>>,
    guilds: IdMap<Guild>,
    missing: IdMap<GuildStatus>,
}

#[derive(Deserialize)]
struct GuildIdOnly {
    #[serde(deserialize_with = "snowflake")]
    guild_id: u64,
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
struct RoleEvent<'a> {
    #[serde(deserialize_with = "snowflake")]
    guild_id: u64,
    #[serde(borrow)]
    role: &'a RawValue,
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
    #[serde(default, deserialize_with = "opt_snowflake")]
    parent_id: Option<u64>,
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

#[derive(Deserialize)]
struct Presence<'a> {
    #[serde(default, deserialize_with = "opt_snowflake")]
    guild_id: Option<u64>,
    user: entities::HasId,
    #[serde(borrow, default)]
    status: Option<&'a str>,
}

/// Removes `guild_id` (and other keys Discord omits inside GUILD_CREATE) from an event object.
fn without_keys(d: &str, drop: &[&str]) -> Option<Box<str>> {
    let pairs = parse_object(d)?;
    Some(write_object(pairs.iter().filter(|(k, _)| !drop.contains(&k.as_str())).map(|(k, v)| (k.as_str(), &**v))))
}

/// Keys of a thread member object that Discord omits on the member inside a
/// thread of GUILD_CREATE (and the extras THREAD_MEMBERS_UPDATE adds).
const THREAD_MEMBER_DROP: &[&str] = &["id", "user_id", "guild_id", "member", "presence"];

/// Sets (`Some`) or removes (`None`) one key of the stored object `obj`.
fn with_key(obj: &str, key: &str, value: Option<&RawValue>) -> Option<Box<str>> {
    let mut pairs = parse_object(obj)?;
    let at = pairs.iter().position(|(k, _)| k == key);
    match (at, value) {
        (Some(i), Some(v)) => pairs[i].1 = v.to_owned(),
        (None, Some(v)) => pairs.push((key.to_owned(), v.to_owned())),
        (Some(i), None) => {
            pairs.remove(i);
        }
        (None, None) => return Some(obj.into()),
    }
    Some(write_object(pairs.iter().map(|(k, v)| (k.as_str(), &**v))))
}

/// The current user's thread member as GUILD_CREATE lists it inside a thread.
fn short_thread_member(raw: &str) -> Option<Box<RawValue>> {
    RawValue::from_string(without_keys(raw, THREAD_MEMBER_DROP)?.into()).ok()
}

/// Overlays the fields of `update` onto the stored object `old`.
fn merge(old: &str, update: &str, drop: &[&str]) -> Option<Box<str>> {
    let mut base = parse_object(old)?;
    for (k, v) in parse_object(update)? {
        if drop.contains(&k.as_str()) {
            continue;
        }
        match base.iter_mut().find(|(bk, _)| *bk == k) {
            Some(slot) => slot.1 = v,
            None => base.push((k, v)),
        }
    }
    Some(write_object(base.iter().map(|(k, v)| (k.as_str(), &**v))))
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
            + self.guilds.capacity() * (8 + std::mem::size_of::<Guild>())
            + self.missing.capacity() * 16
    }

    /// Applies one dispatch. Returns the ids of guilds that a fresh READY
    /// dropped (the bot left them while the shard was away): the caller tells
    /// clients with GUILD_DELETE.
    pub fn apply(&mut self, t: &[u8], d: &str) -> Vec<u64> {
        self.apply_inner(t, d).unwrap_or_default()
    }

    fn apply_inner(&mut self, t: &[u8], d: &str) -> Option<Vec<u64>> {
        let flags = self.flags.clone();
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
                let del: GuildDelete = serde_json::from_str(d).ok()?;
                if del.unavailable == Some(true) {
                    self.guilds.remove(&del.id);
                    self.missing.insert(del.id, GuildStatus::Unavailable);
                } else {
                    let guild = Guild::from_create(d, &flags, self.bot_id)?;
                    self.missing.remove(&del.id);
                    self.guilds.insert(del.id, guild);
                }
            }
            b"GUILD_UPDATE" => {
                let id = serde_json::from_str::<entities::HasId>(d).ok()?.id;
                self.guilds.get_mut(&id)?.apply_update(d, &flags);
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
                let ev: RoleEvent = serde_json::from_str(d).ok()?;
                let id = id_of(ev.role)?;
                self.guilds.get_mut(&ev.guild_id)?.roles.insert(id, ev.role.get().into());
            }
            b"GUILD_ROLE_DELETE" if flags.roles => {
                let ev: RoleDelete = serde_json::from_str(d).ok()?;
                self.guilds.get_mut(&ev.guild_id)?.roles.remove(ev.role_id);
            }
            b"CHANNEL_CREATE" | b"CHANNEL_UPDATE" if flags.channels => {
                let ch: ChannelLike = serde_json::from_str(d).ok()?;
                let guild = self.guilds.get_mut(&ch.guild_id?)?;
                guild.channels.insert(ch.id, without_keys(d, &["guild_id"])?);
            }
            b"CHANNEL_DELETE" if flags.channels => {
                let ch: ChannelLike = serde_json::from_str(d).ok()?;
                let guild = self.guilds.get_mut(&ch.guild_id?)?;
                guild.channels.remove(ch.id);
                guild.threads.retain(|_, raw| {
                    serde_json::from_str::<ChannelLike>(raw).map_or(true, |t| t.parent_id != Some(ch.id))
                });
            }
            b"THREAD_CREATE" | b"THREAD_UPDATE" if flags.channels => {
                let th: ChannelLike = serde_json::from_str(d).ok()?;
                let guild = self.guilds.get_mut(&th.guild_id?)?;
                if th.thread_metadata.is_some_and(|m| m.archived) {
                    // Only active threads are listed.
                    guild.threads.remove(th.id);
                } else {
                    let mut pairs = parse_object(d)?;
                    pairs.retain(|(k, _)| k != "newly_created");
                    match pairs.iter_mut().find(|(k, _)| k == "member") {
                        // Added to the thread: our thread member, in GUILD_CREATE's form.
                        Some(slot) => slot.1 = short_thread_member(slot.1.get())?,
                        // Our membership does not change with the thread.
                        None => {
                            let old = guild.threads.get(th.id).and_then(parse_object);
                            if let Some(member) = old.and_then(|o| o.into_iter().find(|(k, _)| k == "member")) {
                                pairs.push(member);
                            }
                        }
                    }
                    guild.threads.insert(th.id, write_object(pairs.iter().map(|(k, v)| (k.as_str(), &**v))));
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
                        guild.threads.retain(|_, raw| {
                            serde_json::from_str::<ChannelLike>(raw)
                                .map_or(true, |t| !t.parent_id.is_some_and(|p| parents.contains(&p)))
                        });
                    }
                    None => guild.threads.clear(),
                }
                for th in sync.threads {
                    if let Some(id) = id_of(th) {
                        guild.threads.insert(id, th.get().into());
                    }
                }
                for m in sync.members {
                    let Ok(ThreadMember { id: Some(id), .. }) = serde_json::from_str(m.get()) else { continue };
                    if let Some(stored) = guild.threads.get(id) {
                        let updated = with_key(stored, "member", Some(&*short_thread_member(m.get())?))?;
                        guild.threads.insert(id, updated);
                    }
                }
            }
            b"THREAD_MEMBER_UPDATE" if flags.channels => {
                // Always the current user's thread member.
                let tm: ThreadMember = serde_json::from_str(d).ok()?;
                let guild = self.guilds.get_mut(&tm.guild_id?)?;
                let id = tm.id?;
                let updated = with_key(guild.threads.get(id)?, "member", Some(&*short_thread_member(d)?))?;
                guild.threads.insert(id, updated);
            }
            b"THREAD_MEMBERS_UPDATE" if flags.channels => {
                let ev: ThreadMembersUpdate = serde_json::from_str(d).ok()?;
                let bot_id = self.bot_id;
                let guild = self.guilds.get_mut(&ev.guild_id)?;
                let mut updated = with_key(guild.threads.get(ev.id)?, "member_count", Some(ev.member_count))?;
                if let Some(bot_id) = bot_id {
                    for m in &ev.added_members {
                        let tm: ThreadMember = serde_json::from_str(m.get()).ok()?;
                        if tm.user_id == Some(bot_id) {
                            updated = with_key(&updated, "member", Some(&*short_thread_member(m.get())?))?;
                        }
                    }
                    if ev.removed_member_ids.iter().any(|r| r.0 == bot_id) {
                        updated = with_key(&updated, "member", None)?;
                    }
                }
                guild.threads.insert(ev.id, updated);
            }
            b"GUILD_MEMBER_ADD" => {
                let gid = serde_json::from_str::<GuildIdOnly>(d).ok()?.guild_id;
                let bot_id = self.bot_id;
                let guild = self.guilds.get_mut(&gid)?;
                guild.member_count += 1;
                let raw: &RawValue = serde_json::from_str(d).ok()?;
                let uid = user_id_of(raw)?;
                if flags.members || (flags.current_member && Some(uid) == bot_id) {
                    guild.members.insert(uid, without_keys(d, &["guild_id"])?);
                }
            }
            b"GUILD_MEMBER_UPDATE" => {
                let gid = serde_json::from_str::<GuildIdOnly>(d).ok()?.guild_id;
                let bot_id = self.bot_id;
                let guild = self.guilds.get_mut(&gid)?;
                let raw: &RawValue = serde_json::from_str(d).ok()?;
                let uid = user_id_of(raw)?;
                let merged = match guild.members.get(uid) {
                    Some(old) => merge(old, d, &["guild_id"])?,
                    None if flags.members || (flags.current_member && Some(uid) == bot_id) => {
                        without_keys(d, &["guild_id"])?
                    }
                    None => return None,
                };
                guild.members.insert(uid, merged);
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
                let bot_id = self.bot_id;
                let guild = self.guilds.get_mut(&chunk.guild_id)?;
                for m in chunk.members {
                    if let Some(uid) = user_id_of(m) {
                        if flags.members || (flags.current_member && Some(uid) == bot_id) {
                            guild.members.insert(uid, m.get().into());
                        }
                    }
                }
                if flags.presences {
                    // Like PRESENCE_UPDATE: offline members are not listed.
                    for p in chunk.presences.unwrap_or_default() {
                        let Ok(presence) = serde_json::from_str::<Presence>(p.get()) else { continue };
                        if presence.status == Some("offline") {
                            guild.presences.remove(presence.user.id);
                        } else {
                            guild.presences.insert(presence.user.id, without_keys(p.get(), &["guild_id"])?);
                        }
                    }
                }
            }
            b"GUILD_SOUNDBOARD_SOUNDS_UPDATE" if flags.soundboard_sounds => {
                // Several sounds updated at once: only the listed ones change.
                let ev: ListUpdate = serde_json::from_str(d).ok()?;
                let guild = self.guilds.get_mut(&ev.guild_id)?;
                let sounds: Vec<&RawValue> = serde_json::from_str(ev.soundboard_sounds?.get()).ok()?;
                for sound in sounds {
                    if let Some(id) = sound_id_of(sound) {
                        guild.soundboard_sounds.insert(id, sound.get().into());
                    }
                }
            }
            // Each carries the guild's whole list (SOUNDBOARD_SOUNDS answers op 31).
            b"GUILD_EMOJIS_UPDATE" | b"GUILD_STICKERS_UPDATE" | b"SOUNDBOARD_SOUNDS" => {
                let ev: ListUpdate = serde_json::from_str(d).ok()?;
                let guild = self.guilds.get_mut(&ev.guild_id)?;
                if let (Some(list), true) = (ev.emojis, flags.emojis) {
                    fill(&mut guild.emojis, list, id_of);
                }
                if let (Some(list), true) = (ev.stickers, flags.stickers) {
                    fill(&mut guild.stickers, list, id_of);
                }
                if let (Some(list), true) = (ev.soundboard_sounds, flags.soundboard_sounds) {
                    fill(&mut guild.soundboard_sounds, list, sound_id_of);
                }
            }
            b"PRESENCE_UPDATE" if flags.presences => {
                let p: Presence = serde_json::from_str(d).ok()?;
                let guild = self.guilds.get_mut(&p.guild_id?)?;
                if p.status == Some("offline") {
                    guild.presences.remove(p.user.id);
                } else {
                    guild.presences.insert(p.user.id, without_keys(d, &["guild_id"])?);
                }
            }
            b"VOICE_STATE_UPDATE" if flags.voice_states => {
                let vs: entities::VoiceStateIds = serde_json::from_str(d).ok()?;
                let guild = self.guilds.get_mut(&vs.guild_id?)?;
                if vs.channel_id.is_none() {
                    guild.voice_states.remove(vs.user_id);
                } else {
                    guild.voice_states.insert(vs.user_id, without_keys(d, &["guild_id", "member"])?);
                }
            }
            b"STAGE_INSTANCE_CREATE" | b"STAGE_INSTANCE_UPDATE" if flags.stage_instances => {
                let ev: IdAndGuild = serde_json::from_str(d).ok()?;
                self.guilds.get_mut(&ev.guild_id)?.stage_instances.insert(ev.id, d.into());
            }
            b"STAGE_INSTANCE_DELETE" if flags.stage_instances => {
                let ev: IdAndGuild = serde_json::from_str(d).ok()?;
                self.guilds.get_mut(&ev.guild_id)?.stage_instances.remove(ev.id);
            }
            b"GUILD_SCHEDULED_EVENT_CREATE" | b"GUILD_SCHEDULED_EVENT_UPDATE" if flags.scheduled_events => {
                let ev: IdAndGuild = serde_json::from_str(d).ok()?;
                self.guilds.get_mut(&ev.guild_id)?.scheduled_events.insert(ev.id, d.into());
            }
            b"GUILD_SCHEDULED_EVENT_DELETE" if flags.scheduled_events => {
                let ev: IdAndGuild = serde_json::from_str(d).ok()?;
                self.guilds.get_mut(&ev.guild_id)?.scheduled_events.remove(ev.id);
            }
            b"GUILD_SOUNDBOARD_SOUND_CREATE" | b"GUILD_SOUNDBOARD_SOUND_UPDATE" if flags.soundboard_sounds => {
                let ev: SoundEvent = serde_json::from_str(d).ok()?;
                self.guilds.get_mut(&ev.guild_id)?.soundboard_sounds.insert(ev.sound_id, d.into());
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
        assert_eq!(g.channels.get(11).unwrap(), r#"{"id":"11","name":"d"}"#);
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
        assert_eq!(c.guild(1).unwrap().members.get(5).unwrap(), r#"{"user":{"id":"5"},"nick":"b","roles":["3"]}"#);
    }
}
