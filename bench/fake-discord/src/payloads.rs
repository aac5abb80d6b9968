//! Deterministic generators for the fake Discord's data: snowflakes, users,
//! members, guilds (GUILD_CREATE), READY, messages and other dispatch bodies.
//!
//! Everything here is a pure function of the [`FakeConfig`](crate::FakeConfig)
//! dimensions, so tests can regenerate and compare what the fake sent.

use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Map, Value};

/// Discord's epoch (2015-01-01T00:00:00Z) in Unix milliseconds.
pub const DISCORD_EPOCH_MS: u64 = 1_420_070_400_000;

/// Milliseconds since the Discord epoch of the first generated guild
/// (about March 2024). Guild `i` is created at `GUILD_T0 + i`.
const GUILD_T0: u64 = 290_000_000_000;
/// Milliseconds since the Discord epoch of the first generated object that is
/// not a guild (channels, roles, users, ...).
const OBJECT_T0: u64 = 295_000_000_000;
/// Creation time of the bot user (about 2019).
const BOT_T0: u64 = 150_000_000_000;
/// Unix time (ms) at which the bot joined every guild (2024-06-01T12:00:00Z).
const JOINED_AT_MS: u64 = 1_717_243_200_000;

/// Snowflake "worker id" bits used to keep the id spaces of object kinds apart.
#[derive(Clone, Copy)]
#[repr(u64)]
enum Kind {
    Guild = 1,
    User = 2,
    Channel = 3,
    Role = 4,
    Emoji = 5,
    Sticker = 6,
    Event = 7,
    Sound = 8,
}

/// Builds a snowflake from milliseconds since the Discord epoch and the low
/// 22 bits (worker id, process id, increment).
pub const fn snowflake(ms_since_discord_epoch: u64, low: u64) -> u64 {
    (ms_since_discord_epoch << 22) | (low & 0x3f_ffff)
}

/// Unix time in milliseconds encoded in a snowflake.
pub const fn snowflake_unix_ms(id: u64) -> u64 {
    (id >> 22) + DISCORD_EPOCH_MS
}

/// Shard a guild belongs to: `(guild_id >> 22) % num_shards`.
pub const fn shard_for_guild(guild_id: u64, num_shards: u32) -> u32 {
    if num_shards == 0 {
        return 0;
    }
    ((guild_id >> 22) % num_shards as u64) as u32
}

fn object_id(kind: Kind, index: u64) -> u64 {
    snowflake(OBJECT_T0 + index / 4096, ((kind as u64) << 17) | (index % 4096))
}

/// Current Unix time in milliseconds.
pub fn now_unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// A fresh snowflake for "now" (used for message ids and the like).
pub fn now_snowflake(increment: u64) -> u64 {
    snowflake(now_unix_ms().saturating_sub(DISCORD_EPOCH_MS), (1 << 17) | (increment % 4096))
}

/// Formats Unix milliseconds as Discord does: `2024-06-01T12:00:00.000000+00:00`.
pub fn iso8601(unix_ms: u64) -> String {
    let secs = unix_ms / 1000;
    let micros = (unix_ms % 1000) * 1000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (h, m, s) = (rem / 3600, (rem % 3600) / 60, rem % 60);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let mo = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(mo <= 2);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{m:02}:{s:02}.{micros:06}+00:00")
}

fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = x;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A deterministic 32-hex-digit image hash derived from `seed`.
pub fn image_hash(seed: u64) -> String {
    format!("{:016x}{:016x}", splitmix64(seed), splitmix64(seed ^ 0x5555_5555_5555_5555))
}

/// A random lowercase hex string of `len` digits (session ids, voice tokens).
pub fn random_hex(len: usize) -> String {
    (0..len).map(|_| char::from_digit(fastrand::u32(0..16), 16).unwrap_or('0')).collect()
}

/// Dimensions of the generated world, taken from the config.
#[derive(Clone, Copy, Debug)]
struct Dims {
    guilds: u32,
    members: u32,
    channels: u32,
    roles: u32,
    unavailable: u32,
}

/// Deterministic generator of every object the fake Discord serves.
///
/// Guild `i` (0-based) has id `((GUILD_T0 + i) << 22) | ...`, so consecutive
/// guilds land on consecutive shards for any shard count.
#[derive(Debug)]
pub struct Generator {
    dims: Dims,
    bot_user_id: u64,
    guild_ids: Vec<u64>,
    guild_index: HashMap<u64, u32>,
}

/// Names for generated users.
const FIRST_NAMES: [&str; 8] = ["alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi"];

impl Generator {
    /// Creates the generator for these dimensions.
    ///
    /// `members_per_guild` is clamped to at least 1 (the bot is always a
    /// member); `unavailable_guilds` to at most `guilds`.
    pub fn new(
        guilds: u32,
        members_per_guild: u32,
        channels_per_guild: u32,
        roles_per_guild: u32,
        unavailable_guilds: u32,
    ) -> Self {
        let dims = Dims {
            guilds,
            members: members_per_guild.max(1),
            channels: channels_per_guild,
            roles: roles_per_guild,
            unavailable: unavailable_guilds.min(guilds),
        };
        let guild_ids: Vec<u64> = (0..guilds)
            .map(|i| snowflake(GUILD_T0 + u64::from(i), ((Kind::Guild as u64) << 17) | (u64::from(i) % 4096)))
            .collect();
        let guild_index = guild_ids.iter().enumerate().map(|(i, id)| (*id, i as u32)).collect();
        Self { dims, bot_user_id: snowflake(BOT_T0, 0), guild_ids, guild_index }
    }

    /// The bot's user id (also its application id).
    pub fn bot_user_id(&self) -> u64 {
        self.bot_user_id
    }

    /// Application id of the bot (equal to its user id, as for modern bots).
    pub fn application_id(&self) -> u64 {
        self.bot_user_id
    }

    /// All guild ids, in generation order.
    pub fn guild_ids(&self) -> &[u64] {
        &self.guild_ids
    }

    /// Number of guilds.
    pub fn guild_count(&self) -> u32 {
        self.dims.guilds
    }

    /// Index of a guild id, if it is one of ours.
    pub fn guild_index(&self, guild_id: u64) -> Option<u32> {
        self.guild_index.get(&guild_id).copied()
    }

    /// Id of guild `i`.
    pub fn guild_id(&self, i: u32) -> u64 {
        self.guild_ids[i as usize]
    }

    /// Whether guild `i` is available (the last `unavailable_guilds` are not).
    pub fn is_available(&self, i: u32) -> bool {
        i < self.dims.guilds - self.dims.unavailable
    }

    /// Members per guild (at least 1: the bot).
    pub fn members_per_guild(&self) -> u32 {
        self.dims.members
    }

    /// Text channels per guild.
    pub fn text_channels_per_guild(&self) -> u32 {
        self.dims.channels
    }

    fn channel_slots(&self) -> u64 {
        u64::from(self.dims.channels) + 3
    }

    /// Id of the category channel of guild `i`.
    pub fn category_id(&self, i: u32) -> u64 {
        object_id(Kind::Channel, u64::from(i) * self.channel_slots())
    }

    /// Id of text channel `k` (0-based) of guild `i`.
    pub fn text_channel_id(&self, i: u32, k: u32) -> u64 {
        object_id(Kind::Channel, u64::from(i) * self.channel_slots() + 1 + u64::from(k))
    }

    /// Id of the voice channel of guild `i`.
    pub fn voice_channel_id(&self, i: u32) -> u64 {
        object_id(Kind::Channel, u64::from(i) * self.channel_slots() + 1 + u64::from(self.dims.channels))
    }

    /// Id of the thread of guild `i` (only guilds with `has_thread(i)`).
    pub fn thread_id(&self, i: u32) -> u64 {
        object_id(Kind::Channel, u64::from(i) * self.channel_slots() + 2 + u64::from(self.dims.channels))
    }

    /// Whether guild `i` has an active thread (even guilds with a text channel).
    pub fn has_thread(&self, i: u32) -> bool {
        i.is_multiple_of(2) && self.dims.channels > 0
    }

    /// First text channel of guild `i` (the voice channel if there are no text channels).
    pub fn first_channel_id(&self, i: u32) -> u64 {
        if self.dims.channels > 0 {
            self.text_channel_id(i, 0)
        } else {
            self.voice_channel_id(i)
        }
    }

    /// Id of role `k` (0-based, not counting @everyone) of guild `i`.
    pub fn role_id(&self, i: u32, k: u32) -> u64 {
        object_id(Kind::Role, u64::from(i) * u64::from(self.dims.roles) + u64::from(k))
    }

    /// User id of member `m` of guild `i`; member 0 is the bot.
    pub fn user_id(&self, i: u32, m: u32) -> u64 {
        if m == 0 {
            return self.bot_user_id;
        }
        object_id(Kind::User, u64::from(i) * u64::from(self.dims.members) + u64::from(m))
    }

    /// Finds `(guild_index, member_index)` of a user id within guild `i`.
    pub fn member_index(&self, i: u32, user_id: u64) -> Option<u32> {
        if user_id == self.bot_user_id {
            return Some(0);
        }
        (1..self.dims.members).find(|m| self.user_id(i, *m) == user_id)
    }

    fn emoji_count(&self, i: u32) -> u32 {
        1 + i % 2
    }

    fn emoji_id(&self, i: u32, k: u32) -> u64 {
        object_id(Kind::Emoji, u64::from(i) * 2 + u64::from(k))
    }

    fn sticker_id(&self, i: u32) -> u64 {
        object_id(Kind::Sticker, u64::from(i))
    }

    fn event_id(&self, i: u32) -> u64 {
        object_id(Kind::Event, u64::from(i))
    }

    fn sound_id(&self, i: u32) -> u64 {
        object_id(Kind::Sound, u64::from(i))
    }

    fn owner_member(&self) -> u32 {
        if self.dims.members > 1 {
            1
        } else {
            0
        }
    }

    /// Member index in the voice channel of guild `i`, if any (every third guild).
    fn voice_member(&self, i: u32) -> Option<u32> {
        (i.is_multiple_of(3) && self.dims.members > 1).then_some(1)
    }

    /// Whether member `m` of guild `i` is online (has a presence).
    pub fn is_online(&self, _i: u32, m: u32) -> bool {
        m == 0 || m % 2 == 1
    }

    /// The bot's user object as READY's `user` (a current-user object).
    pub fn bot_current_user(&self) -> Value {
        json!({
            "id": self.bot_user_id.to_string(),
            "username": "fakebot",
            "discriminator": "0000",
            "global_name": null,
            "avatar": null,
            "bot": true,
            "verified": true,
            "mfa_enabled": false,
            "flags": 0,
            "email": null,
        })
    }

    /// User object of member `m` of guild `i`.
    pub fn user(&self, i: u32, m: u32) -> Value {
        let id = self.user_id(i, m);
        if m == 0 {
            return json!({
                "id": id.to_string(),
                "username": "fakebot",
                "global_name": null,
                "discriminator": "0000",
                "avatar": null,
                "avatar_decoration_data": null,
                "bot": true,
                "public_flags": 0,
                "primary_guild": null,
                "collectibles": null,
                "clan": null,
            });
        }
        let first = FIRST_NAMES[(m as usize) % FIRST_NAMES.len()];
        json!({
            "id": id.to_string(),
            "username": format!("{first}_{i}_{m}"),
            "global_name": format!("{} {m}", capitalize(first)),
            "discriminator": "0",
            "avatar": if m.is_multiple_of(3) { Value::Null } else { Value::String(image_hash(id)) },
            "avatar_decoration_data": null,
            "public_flags": if m.is_multiple_of(5) { 64 } else { 0 },
            "primary_guild": null,
            "collectibles": null,
            "clan": null,
        })
    }

    /// Role ids of member `m` of guild `i` (the bot holds the managed role 0).
    fn member_roles(&self, i: u32, m: u32) -> Vec<Value> {
        if self.dims.roles == 0 {
            return Vec::new();
        }
        if m == 0 {
            return vec![Value::String(self.role_id(i, 0).to_string())];
        }
        if self.dims.roles > 1 && m % 2 == 1 {
            let k = 1 + (m % (self.dims.roles - 1));
            return vec![Value::String(self.role_id(i, k).to_string())];
        }
        Vec::new()
    }

    /// Guild member object (with `user`) of member `m` of guild `i`.
    pub fn member(&self, i: u32, m: u32) -> Value {
        let joined = if m == 0 { JOINED_AT_MS } else { JOINED_AT_MS - 86_400_000 * u64::from(m % 365 + 1) };
        json!({
            "user": self.user(i, m),
            "nick": if m % 4 == 2 { Value::String(format!("nick{m}")) } else { Value::Null },
            "avatar": null,
            "banner": null,
            "roles": self.member_roles(i, m),
            "joined_at": iso8601(joined),
            "premium_since": null,
            "deaf": false,
            "mute": false,
            "flags": 0,
            "pending": false,
            "communication_disabled_until": null,
            "unusual_dm_activity_until": null,
        })
    }

    /// Presence object (guild presence, as in GUILD_CREATE) of member `m`.
    pub fn presence(&self, i: u32, m: u32) -> Value {
        let activities = if m % 3 == 1 {
            json!([{
                "name": "Fake Game",
                "type": 0,
                "id": image_hash(u64::from(m))[..16].to_owned(),
                "created_at": JOINED_AT_MS,
            }])
        } else {
            json!([])
        };
        json!({
            "user": { "id": self.user_id(i, m).to_string() },
            "status": if m == 0 { "online" } else if m % 4 == 3 { "idle" } else { "online" },
            "client_status": if m == 0 { json!({ "web": "online" }) } else { json!({ "desktop": "online" }) },
            "activities": activities,
        })
    }

    /// Role object `k` of guild `i` (`None` for k >= roles_per_guild).
    pub fn role(&self, i: u32, k: u32) -> Value {
        let id = self.role_id(i, k);
        let color = (splitmix64(id) & 0xff_ffff) as u32;
        let mut role = json!({
            "id": id.to_string(),
            "name": if k == 0 { "fakebot".to_owned() } else { format!("role {k}") },
            "color": color,
            "colors": { "primary_color": color, "secondary_color": null, "tertiary_color": null },
            "hoist": k == 1,
            "icon": null,
            "unicode_emoji": null,
            "position": self.dims.roles - k,
            "permissions": if k == 0 { "8" } else { "2248473465835073" },
            "managed": k == 0,
            "mentionable": k % 2 == 1,
            "flags": 0,
        });
        if k == 0 {
            role["tags"] = json!({ "bot_id": self.bot_user_id.to_string() });
        }
        role
    }

    fn everyone_role(&self, i: u32) -> Value {
        json!({
            "id": self.guild_id(i).to_string(),
            "name": "@everyone",
            "color": 0,
            "colors": { "primary_color": 0, "secondary_color": null, "tertiary_color": null },
            "hoist": false,
            "icon": null,
            "unicode_emoji": null,
            "position": 0,
            "permissions": "2222085186637377",
            "managed": false,
            "mentionable": false,
            "flags": 0,
        })
    }

    /// The guild's channels (category, text channels, voice channel), as in
    /// GUILD_CREATE (without `guild_id`).
    pub fn channels(&self, i: u32) -> Vec<Value> {
        let gid = self.guild_id(i);
        let category = self.category_id(i).to_string();
        let mut out = Vec::with_capacity(self.dims.channels as usize + 2);
        out.push(json!({
            "id": category,
            "type": 4,
            "name": "Text Channels",
            "position": 0,
            "permission_overwrites": [],
            "flags": 0,
            "version": 0,
        }));
        for k in 0..self.dims.channels {
            let id = self.text_channel_id(i, k);
            let overwrites = if k == 0 {
                json!([{ "id": gid.to_string(), "type": 0, "allow": "1024", "deny": "0" }])
            } else {
                json!([])
            };
            out.push(json!({
                "id": id.to_string(),
                "type": 0,
                "name": if k == 0 { "general".to_owned() } else { format!("channel-{k}") },
                "position": k,
                "parent_id": category,
                "permission_overwrites": overwrites,
                "topic": if k == 0 { Value::String(format!("Welcome to fake guild {i}")) } else { Value::Null },
                "nsfw": false,
                "last_message_id": null,
                "rate_limit_per_user": 0,
                "flags": 0,
                "version": 0,
                "icon_emoji": null,
                "theme_color": null,
            }));
        }
        out.push(json!({
            "id": self.voice_channel_id(i).to_string(),
            "type": 2,
            "name": "General",
            "position": 0,
            "parent_id": category,
            "permission_overwrites": [],
            "bitrate": 64000,
            "user_limit": 0,
            "rtc_region": null,
            "nsfw": false,
            "last_message_id": null,
            "rate_limit_per_user": 0,
            "flags": 0,
            "version": 0,
            "voice_background_display": null,
        }));
        out
    }

    /// The guild's active threads (one in even guilds), as in GUILD_CREATE.
    pub fn threads(&self, i: u32) -> Vec<Value> {
        if !self.has_thread(i) {
            return Vec::new();
        }
        let owner = self.user_id(i, self.owner_member());
        vec![json!({
            "id": self.thread_id(i).to_string(),
            "type": 11,
            "guild_id": self.guild_id(i).to_string(),
            "parent_id": self.text_channel_id(i, 0).to_string(),
            "owner_id": owner.to_string(),
            "name": format!("thread of guild {i}"),
            "last_message_id": null,
            "message_count": 3,
            "member_count": 2,
            "rate_limit_per_user": 0,
            "flags": 0,
            "total_message_sent": 3,
            "thread_metadata": {
                "archived": false,
                "auto_archive_duration": 1440,
                "archive_timestamp": iso8601(JOINED_AT_MS + 3_600_000),
                "locked": false,
                "create_timestamp": iso8601(JOINED_AT_MS + 3_600_000),
            },
        })]
    }

    /// Voice state object of member `m` of guild `i` in `channel_id`.
    pub fn voice_state(&self, i: u32, m: u32, channel_id: Option<u64>, session_id: &str, with_guild: bool) -> Value {
        let mut v = json!({
            "user_id": self.user_id(i, m).to_string(),
            "channel_id": channel_id.map(|c| c.to_string()),
            "session_id": session_id,
            "deaf": false,
            "mute": false,
            "self_deaf": false,
            "self_mute": m.is_multiple_of(2),
            "self_video": false,
            "self_stream": false,
            "suppress": false,
            "request_to_speak_timestamp": null,
        });
        if with_guild {
            v["guild_id"] = Value::String(self.guild_id(i).to_string());
            v["member"] = self.member(i, m);
        }
        v
    }

    fn emojis(&self, i: u32) -> Vec<Value> {
        (0..self.emoji_count(i))
            .map(|k| {
                json!({
                    "id": self.emoji_id(i, k).to_string(),
                    "name": format!("fake_emoji_{k}"),
                    "roles": [],
                    "require_colons": true,
                    "managed": false,
                    "animated": k == 1,
                    "available": true,
                })
            })
            .collect()
    }

    fn stickers(&self, i: u32) -> Vec<Value> {
        vec![json!({
            "id": self.sticker_id(i).to_string(),
            "name": format!("fake sticker {i}"),
            "tags": "wave",
            "type": 2,
            "format_type": 1,
            "description": "A fake sticker",
            "asset": "",
            "available": true,
            "guild_id": self.guild_id(i).to_string(),
        })]
    }

    fn scheduled_events(&self, i: u32) -> Vec<Value> {
        if !i.is_multiple_of(4) {
            return Vec::new();
        }
        let creator = self.user_id(i, self.owner_member());
        vec![json!({
            "id": self.event_id(i).to_string(),
            "guild_id": self.guild_id(i).to_string(),
            "channel_id": self.voice_channel_id(i).to_string(),
            "creator_id": creator.to_string(),
            "name": "Fake game night",
            "description": "Every friday",
            "scheduled_start_time": iso8601(JOINED_AT_MS + 30 * 86_400_000),
            "scheduled_end_time": null,
            "privacy_level": 2,
            "status": 1,
            "entity_type": 2,
            "entity_id": null,
            "entity_metadata": null,
            "image": null,
            "recurrence_rule": null,
            "auto_start": false,
            "sku_ids": [],
            "user_count": 1,
        })]
    }

    /// Soundboard sounds of guild `i` (one in every fifth guild).
    pub fn soundboard_sounds(&self, i: u32) -> Vec<Value> {
        if !i.is_multiple_of(5) {
            return Vec::new();
        }
        vec![json!({
            "name": "quack",
            "sound_id": self.sound_id(i).to_string(),
            "volume": 1.0,
            "emoji_id": null,
            "emoji_name": "🦆",
            "guild_id": self.guild_id(i).to_string(),
            "available": true,
            "user": self.user(i, self.owner_member()),
        })]
    }

    /// The `d` of GUILD_CREATE for guild `i`.
    ///
    /// `presences`: whether the session has the GUILD_PRESENCES intent.
    /// `large_threshold`: the Identify's large_threshold (50..=250); a guild
    /// with more members is `large` and only carries the bot (and voice
    /// members) in `members`, as Discord does.
    pub fn guild_create(&self, i: u32, presences: bool, large_threshold: u32) -> Value {
        let gid = self.guild_id(i);
        let members = self.dims.members;
        let large = members > large_threshold;
        let voice_member = self.voice_member(i);
        let member_list: Vec<Value> = if large {
            let mut v = vec![self.member(i, 0)];
            if let Some(vm) = voice_member {
                v.push(self.member(i, vm));
            }
            v
        } else {
            (0..members).map(|m| self.member(i, m)).collect()
        };
        let presence_list: Vec<Value> = if presences {
            (0..members)
                .filter(|m| self.is_online(i, *m) && (!large || *m == 0 || Some(*m) == voice_member))
                .map(|m| self.presence(i, m))
                .collect()
        } else {
            Vec::new()
        };
        let voice_states: Vec<Value> = voice_member
            .map(|m| vec![self.voice_state(i, m, Some(self.voice_channel_id(i)), &image_hash(gid ^ 0xdead), false)])
            .unwrap_or_default();
        let mut roles = vec![self.everyone_role(i)];
        roles.extend((0..self.dims.roles).map(|k| self.role(i, k)));
        let owner = self.user_id(i, self.owner_member());
        let system_channel =
            if self.dims.channels > 0 { Value::String(self.text_channel_id(i, 0).to_string()) } else { Value::Null };
        let features = if i % 3 == 1 { json!(["ANIMATED_ICON", "INVITE_SPLASH", "NEWS"]) } else { json!([]) };

        let mut g = Map::new();
        let mut put = |k: &str, v: Value| {
            g.insert(k.to_owned(), v);
        };
        // Guild object fields.
        put("id", Value::String(gid.to_string()));
        put("name", Value::String(format!("Fake Guild {i}")));
        put("icon", if i.is_multiple_of(2) { Value::String(image_hash(gid)) } else { Value::Null });
        put("splash", Value::Null);
        put("discovery_splash", Value::Null);
        put("owner_id", Value::String(owner.to_string()));
        put("afk_channel_id", Value::String(self.voice_channel_id(i).to_string()));
        put("afk_timeout", json!(300));
        put("widget_enabled", json!(false));
        put("widget_channel_id", Value::Null);
        put("verification_level", json!(1));
        put("default_message_notifications", json!(1));
        put("explicit_content_filter", json!(2));
        put("roles", Value::Array(roles));
        put("emojis", Value::Array(self.emojis(i)));
        put("features", features);
        put("mfa_level", json!(0));
        put("application_id", Value::Null);
        put("system_channel_id", system_channel);
        put("system_channel_flags", json!(0));
        put("rules_channel_id", Value::Null);
        put("max_presences", Value::Null);
        put("max_members", json!(500_000));
        put("vanity_url_code", Value::Null);
        put("description", Value::Null);
        put("banner", Value::Null);
        put("premium_tier", json!(i % 4));
        put("premium_subscription_count", json!((i % 4) * 7));
        put("preferred_locale", json!("en-US"));
        put("public_updates_channel_id", Value::Null);
        put("max_video_channel_users", json!(25));
        put("max_stage_video_channel_users", json!(50));
        put("nsfw_level", json!(0));
        put("nsfw", json!(false));
        put("stickers", Value::Array(self.stickers(i)));
        put("premium_progress_bar_enabled", json!(false));
        put("safety_alerts_channel_id", Value::Null);
        put("incidents_data", Value::Null);
        put("region", json!("deprecated"));
        put("hub_type", Value::Null);
        put("home_header", Value::Null);
        put("latest_onboarding_question_id", Value::Null);
        put("inventory_settings", Value::Null);
        put("profile", Value::Null);
        put("version", json!(JOINED_AT_MS));
        // GUILD_CREATE extra fields.
        put("joined_at", json!(iso8601(JOINED_AT_MS)));
        put("large", json!(large));
        put("unavailable", json!(false));
        put("lazy", json!(true));
        put("member_count", json!(members));
        put("members", Value::Array(member_list));
        put("channels", Value::Array(self.channels(i)));
        put("threads", Value::Array(self.threads(i)));
        put("presences", Value::Array(presence_list));
        put("voice_states", Value::Array(voice_states));
        put("stage_instances", json!([]));
        put("guild_scheduled_events", Value::Array(self.scheduled_events(i)));
        put("soundboard_sounds", Value::Array(self.soundboard_sounds(i)));
        put("embedded_activities", json!([]));
        put("activity_instances", json!([]));
        put("application_command_counts", json!({}));
        Value::Object(g)
    }

    /// Guild indices of a shard (`(id >> 22) % num_shards == shard`), in order.
    pub fn guilds_of_shard(&self, shard: u32, num_shards: u32) -> Vec<u32> {
        (0..self.dims.guilds).filter(|i| shard_for_guild(self.guild_id(*i), num_shards) == shard).collect()
    }

    /// The `d` of READY for `shard` of `num_shards`.
    pub fn ready(&self, shard: u32, num_shards: u32, session_id: &str, resume_gateway_url: &str) -> Value {
        let guilds: Vec<Value> = self
            .guilds_of_shard(shard, num_shards)
            .into_iter()
            .map(|i| json!({ "id": self.guild_id(i).to_string(), "unavailable": true }))
            .collect();
        json!({
            "v": 10,
            "user_settings": {},
            "user": self.bot_current_user(),
            "session_type": "normal",
            "session_id": session_id,
            "resume_gateway_url": resume_gateway_url,
            "relationships": [],
            "private_channels": [],
            "presences": [],
            "guilds": guilds,
            "guild_join_requests": [],
            "geo_ordered_rtc_regions": ["us-east", "us-central", "atlanta", "us-south", "newark"],
            "auth": {},
            "application": { "id": self.application_id().to_string(), "flags": 565_248 },
            "shard": [shard, num_shards],
            "_trace": ["[\"fake-discord-gateway\",{\"micros\":1000}]"],
        })
    }

    /// A MESSAGE_CREATE `d`: member `m` of guild `i` says `content` in text
    /// channel `k` (falls back to the first channel).
    pub fn message_create(&self, i: u32, m: u32, k: u32, message_id: u64, content: &str) -> Value {
        let channel = if k < self.dims.channels { self.text_channel_id(i, k) } else { self.first_channel_id(i) };
        let mut member = self.member(i, m);
        if let Some(obj) = member.as_object_mut() {
            obj.remove("user");
        }
        json!({
            "type": 0,
            "tts": false,
            "timestamp": iso8601(snowflake_unix_ms(message_id)),
            "pinned": false,
            "nonce": message_id.to_string(),
            "mentions": [],
            "mention_roles": [],
            "mention_everyone": false,
            "member": member,
            "id": message_id.to_string(),
            "flags": 0,
            "embeds": [],
            "edited_timestamp": null,
            "content": content,
            "components": [],
            "channel_type": 0,
            "channel_id": channel.to_string(),
            "author": self.user(i, m),
            "attachments": [],
            "guild_id": self.guild_id(i).to_string(),
        })
    }

    /// A TYPING_START `d`: member `m` of guild `i` types in its first channel.
    pub fn typing_start(&self, i: u32, m: u32, unix_secs: u64) -> Value {
        json!({
            "user_id": self.user_id(i, m).to_string(),
            "timestamp": unix_secs,
            "member": self.member(i, m),
            "channel_id": self.first_channel_id(i).to_string(),
            "guild_id": self.guild_id(i).to_string(),
        })
    }
}

fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iso8601_formats() {
        assert_eq!(iso8601(0), "1970-01-01T00:00:00.000000+00:00");
        assert_eq!(iso8601(JOINED_AT_MS), "2024-06-01T12:00:00.000000+00:00");
        assert_eq!(iso8601(951_782_400_123), "2000-02-29T00:00:00.123000+00:00");
    }

    #[test]
    fn ids_unique_and_spread() {
        let g = Generator::new(20, 5, 3, 2, 0);
        let mut ids = std::collections::HashSet::new();
        for i in 0..20 {
            assert!(ids.insert(g.guild_id(i)));
            assert!(ids.insert(g.category_id(i)));
            assert!(ids.insert(g.voice_channel_id(i)));
            assert!(ids.insert(g.thread_id(i)));
            for k in 0..3 {
                assert!(ids.insert(g.text_channel_id(i, k)));
            }
            for k in 0..2 {
                assert!(ids.insert(g.role_id(i, k)));
            }
            for m in 1..5 {
                assert!(ids.insert(g.user_id(i, m)));
            }
        }
        for s in 0..4 {
            assert_eq!(g.guilds_of_shard(s, 4).len(), 5);
        }
    }
}
