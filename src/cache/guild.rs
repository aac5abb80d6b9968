//! One guild's cached state and the GUILD_CREATE built from it.

use super::compact::{object_members, Encoder, Shapes};
use super::entities::{write_records, Entities};
use crate::{
    config::CacheConfig,
    protocol::intents::{GuildView, MembersView},
};
use std::sync::Arc;

/// Keys of GUILD_CREATE that the cache holds as collections (or computes),
/// so they are not kept in the guild's base object.
const COLLECTION_KEYS: &[&[u8]] = &[
    b"roles",
    b"emojis",
    b"stickers",
    b"channels",
    b"threads",
    b"members",
    b"presences",
    b"voice_states",
    b"stage_instances",
    b"guild_scheduled_events",
    b"soundboard_sounds",
    b"member_count",
    b"unavailable",
];

/// Where a collection's entities carry their key.
pub const BY_ID: &[&[u8]] = &[b"id"];
/// Members and presences are keyed by their user's id.
pub const BY_USER_ID: &[&[u8]] = &[b"user", b"id"];
/// Voice states carry their user's id flat.
pub const BY_VOICE_USER: &[&[u8]] = &[b"user_id"];
/// Soundboard sounds are keyed by `sound_id`.
pub const BY_SOUND_ID: &[&[u8]] = &[b"sound_id"];

/// Everything cached about one available guild, in compact form (see
/// [`super::compact`]; the shard's [`Shapes`] turn it back into JSON).
#[derive(Debug, Default, Clone)]
pub struct Guild {
    /// The guild object's other fields, as Discord sent them (compact object).
    base: Arc<[u8]>,
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

impl Guild {
    /// Builds the guild from a GUILD_CREATE payload, keeping what `flags` asks for.
    pub fn from_create(d: &[u8], flags: &CacheConfig, bot_id: Option<u64>, shapes: &mut Shapes) -> Option<Self> {
        Self::from_members(&object_members(d)?, flags, bot_id, shapes)
    }

    /// Like [`Self::from_create`], from the payload's members already split.
    pub fn from_members(
        pairs: &[(&[u8], &[u8])],
        flags: &CacheConfig,
        bot_id: Option<u64>,
        shapes: &mut Shapes,
    ) -> Option<Self> {
        let mut g = Guild::default();
        let mut base = Vec::with_capacity(pairs.len());
        for &(key, value) in pairs {
            match key {
                b"roles" if flags.roles => g.roles.fill(value, BY_ID, shapes),
                b"emojis" if flags.emojis => g.emojis.fill(value, BY_ID, shapes),
                b"stickers" if flags.stickers => g.stickers.fill(value, BY_ID, shapes),
                b"channels" if flags.channels => g.channels.fill(value, BY_ID, shapes),
                b"threads" if flags.channels => g.threads.fill(value, BY_ID, shapes),
                b"members" if flags.members => g.members.fill(value, BY_USER_ID, shapes),
                b"members" if flags.current_member => {
                    g.members.fill_where(value, BY_USER_ID, shapes, |id| Some(id) == bot_id)
                }
                b"presences" if flags.presences => g.presences.fill(value, BY_USER_ID, shapes),
                b"voice_states" if flags.voice_states => g.voice_states.fill(value, BY_VOICE_USER, shapes),
                b"stage_instances" if flags.stage_instances => g.stage_instances.fill(value, BY_ID, shapes),
                b"guild_scheduled_events" if flags.scheduled_events => g.scheduled_events.fill(value, BY_ID, shapes),
                b"soundboard_sounds" if flags.soundboard_sounds => g.soundboard_sounds.fill(value, BY_SOUND_ID, shapes),
                b"member_count" => g.member_count = serde_json::from_slice(value).unwrap_or(0),
                k if COLLECTION_KEYS.contains(&k) => {}
                _ => base.push((key, value)),
            }
        }
        let mut out = Vec::new();
        Encoder::new(shapes).encode_members(&base, &mut out)?;
        g.base = out.into();
        Some(g)
    }

    /// Applies GUILD_UPDATE: new guild fields replace old ones; roles, emojis
    /// and stickers it carries replace the cached sets.
    pub fn apply_update(&mut self, d: &[u8], flags: &CacheConfig, shapes: &mut Shapes) {
        let Some(update) = object_members(d) else { return };
        let mut fields = Vec::with_capacity(update.len());
        for &(key, value) in &update {
            match key {
                b"roles" if flags.roles => self.roles.fill(value, BY_ID, shapes),
                b"emojis" if flags.emojis => self.emojis.fill(value, BY_ID, shapes),
                b"stickers" if flags.stickers => self.stickers.fill(value, BY_ID, shapes),
                k if COLLECTION_KEYS.contains(&k) => {}
                _ => fields.push((key, Some(value))),
            }
        }
        if let Some(base) = shapes.merge(&self.base, &fields, &[]) {
            self.base = base.into();
        }
    }

    /// Appends this guild's GUILD_CREATE `d` object.
    pub fn write_create(&self, shapes: &Shapes, out: &mut Vec<u8>) {
        self.freeze().write_create(shapes, out);
    }

    /// The guild as it is now, kept while it changes (collections are
    /// copied on write), to be written later.
    pub fn freeze(&self) -> FrozenGuild {
        FrozenGuild {
            base: self.base.clone(),
            member_count: self.member_count,
            sets: self.sets().map(Entities::records),
        }
    }

    /// Like [`Self::freeze`], with the members, presences and voice states
    /// a client of `view` is sent; `bot` is the bot's user id.
    pub fn freeze_for(&self, view: GuildView, bot: Option<u64>) -> FrozenGuild {
        let mut frozen = self.freeze();
        let [.., members, presences, voice_states, _, _, _] = &mut frozen.sets;
        match view.members {
            MembersView::All => {}
            MembersView::BotOnly => *members = self.members.records_of(bot),
            MembersView::BotAndVoice => {
                *members = self.members.records_of(bot.into_iter().chain(self.voice_states.ids()))
            }
        }
        if !view.presences {
            *presences = Arc::default();
        }
        if !view.voice_states {
            *voice_states = Arc::default();
        }
        frozen
    }

    fn sets(&self) -> [&Entities; 11] {
        [
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
    }

    /// Heap bytes held by this guild.
    pub fn heap_bytes(&self) -> usize {
        self.base.len() + self.sets().iter().map(|e| e.heap_bytes()).sum::<usize>()
    }
}

/// A guild as it was when frozen: what a client that identified then is sent.
#[derive(Debug, Clone)]
pub struct FrozenGuild {
    base: Arc<[u8]>,
    member_count: u64,
    /// Records of each collection, in [`SET_KEYS`] order.
    sets: [Arc<Vec<u8>>; 11],
}

/// GUILD_CREATE's keys of the cached collections, in the order they are written.
const SET_KEYS: [&str; 11] = [
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
];

impl FrozenGuild {
    /// Appends the guild's GUILD_CREATE `d` object.
    pub fn write_create(&self, shapes: &Shapes, out: &mut Vec<u8>) {
        shapes.decode(&self.base, &mut 0, out);
        // The base is `{...}`: reopen it and append the collections.
        out.pop();
        if out.last() != Some(&b'{') {
            out.push(b',');
        }
        out.extend_from_slice(b"\"unavailable\":false,\"member_count\":");
        out.extend_from_slice(itoa::Buffer::new().format(self.member_count).as_bytes());
        for (key, records) in SET_KEYS.iter().zip(&self.sets) {
            out.extend_from_slice(b",\"");
            out.extend_from_slice(key.as_bytes());
            out.extend_from_slice(b"\":");
            write_records(records, shapes, out);
        }
        out.push(b'}');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_round_trips_with_every_array() {
        let d = r#"{"id":"1","name":"g","roles":[{"id":"1","name":"@everyone"}],"member_count":2,"members":[{"user":{"id":"7"}}],"unavailable":false,"large":false,"features":["X"]}"#;
        let mut shapes = Shapes::default();
        let g = Guild::from_create(d.as_bytes(), &CacheConfig::everything(), None, &mut shapes).unwrap();
        let mut out = Vec::new();
        g.write_create(&shapes, &mut out);
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
        let g = Guild::from_create(d.as_bytes(), &flags, Some(8), &mut Shapes::default()).unwrap();
        assert_eq!(g.members.len(), 1);
        assert!(g.members.get(8).is_some());
    }

    #[test]
    fn update_merges_fields_and_replaces_roles() {
        let d = r#"{"id":"1","name":"old","icon":null,"roles":[{"id":"1"},{"id":"2"}]}"#;
        let mut shapes = Shapes::default();
        let mut g = Guild::from_create(d.as_bytes(), &CacheConfig::everything(), None, &mut shapes).unwrap();
        g.apply_update(
            br#"{"id":"1","name":"new","banner":"b","roles":[{"id":"3"}]}"#,
            &CacheConfig::everything(),
            &mut shapes,
        );
        let mut out = Vec::new();
        g.write_create(&shapes, &mut out);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["name"], "new");
        assert_eq!(v["banner"], "b");
        assert!(v["icon"].is_null());
        assert_eq!(v["roles"].as_array().unwrap().len(), 1);
    }
}
