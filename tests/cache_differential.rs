//! Differential test of the guild cache.
//!
//! A seeded generator produces random but valid sequences of Discord gateway
//! events (API v10 shapes) over a few guilds: GUILD_CREATE with every array,
//! updates and deletes of every kind of entity, outages and leaves, new
//! sessions (READY), events for guilds that are not cached and deletes of ids
//! nobody created. Each sequence is applied both to [`ShardCache`] and to
//! [`Model`], an independent reference written with plain `serde_json::Value`s
//! and `BTreeMap`s that follows Discord's semantics and the cache flags.
//!
//! After every event, the guild it is about must be cached on both sides or
//! on neither, with the same `member_count` and as many entities in each
//! array. At random points of every sequence and at its end, the GUILD_CREATE
//! `d` the proxy would send for every guild (`Guild::write_create`, parsed
//! back) must equal the one the model computes, arrays of entities compared
//! by id; the available guilds, the missing ones with their status and READY's
//! `user` must agree too. Every sequence runs under two flag sets: everything
//! cached, and in turn the defaults (channels, roles, current member) or a
//! random set drawn from the seed.
//!
//! Reproduce a failure with the seed it prints:
//! `CACHE_DIFF_SEED=<seed> cargo test --test cache_differential -- --nocapture`
//! runs that one sequence and prints its events. `CACHE_DIFF_SEQUENCES=<n>`
//! runs `n` sequences instead of the default, `CACHE_DIFF_FIRST_SEED=<s>`
//! starts from another seed.

#![recursion_limit = "256"]

use fastrand::Rng;
use gateway_proxy::cache::{GuildStatus, ShardCache};
use gateway_proxy::config::CacheConfig;
use serde_json::{json, Map, Value};
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Instant;

/// Sequences per run, split over the test functions below (they run in parallel).
const SEQUENCES: u64 = 2_000;
/// Events per sequence.
const MIN_EVENTS: usize = 50;
const MAX_EVENTS: usize = 150;
/// A full comparison after an event with probability 1/CHECK_EVERY (and always at the end).
const CHECK_EVERY: u32 = 100;

// ---------------------------------------------------------------------------
// Snowflakes
// ---------------------------------------------------------------------------

/// Guilds the bot may be in.
const GUILDS: [u64; 3] = [1, 2, 3];
/// A guild the bot is never in: events for it must be ignored.
const STRANGER_GUILD: u64 = 9;
/// User indices: 0 is the bot.
const BOT: u64 = 0;
const USERS: u64 = 8;

const ROLES: u64 = 4;
const CHANNELS: u64 = 8;
const THREADS: u64 = 5;
const EMOJIS: u64 = 3;
const STICKERS: u64 = 3;
const STAGES: u64 = 2;
const EVENTS: u64 = 2;
const SOUNDS: u64 = 3;
/// An index beyond every pool: an id nobody ever created.
const UNKNOWN: u64 = 99;

/// Channel types by pool index: category, two text, announcement, forum, two voice, stage.
const CHANNEL_TYPES: [u64; CHANNELS as usize] = [4, 0, 0, 5, 15, 2, 2, 13];
const THREAD_PARENTS: [u64; 4] = [1, 2, 3, 4];
const VOICE_CHANNELS: [u64; 3] = [5, 6, 7];

#[derive(Clone, Copy)]
enum Kind {
    Role = 1,
    Channel,
    Thread,
    Emoji,
    Sticker,
    Stage,
    Event,
    Sound,
}

fn sf(n: u64) -> String {
    (175_928_847_299_117_063 + n).to_string()
}

fn gid(g: u64) -> String {
    sf(g * 1_000_000)
}

fn uid(u: u64) -> String {
    sf(900_000_000 + u)
}

fn eid(g: u64, kind: Kind, i: u64) -> String {
    if matches!(kind, Kind::Role) && i == 0 {
        // @everyone has the guild's id.
        return gid(g);
    }
    sf(g * 1_000_000 + kind as u64 * 1_000 + i)
}

// ---------------------------------------------------------------------------
// Payload builders (shapes from Discord's API v10 documentation)
// ---------------------------------------------------------------------------

/// Versions of each entity: an update replaces an entity with one of them.
const VARIANTS: u32 = 5;

thread_local! {
    static VERSIONS: RefCell<HashMap<(u8, u64, u64, u32), Value>> = RefCell::new(HashMap::new());
}

/// One of the [`VARIANTS`] versions of the entity `(tag, a, b)`, picked with
/// `rng`. Each version is built once per thread, from a seed derived from its
/// key alone, so a sequence only depends on its own seed; building entities
/// with `json!` in an unoptimised test is what would otherwise cost the most.
fn variant(rng: &mut Rng, tag: u8, a: u64, b: u64, build: impl FnOnce(&mut Rng) -> Value) -> Value {
    let key = (tag, a, b, rng.u32(..VARIANTS));
    if let Some(v) = VERSIONS.with(|m| m.borrow().get(&key).cloned()) {
        return v;
    }
    let seed = (u64::from(tag) << 56 ^ a << 40 ^ b << 8 ^ u64::from(key.3)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let v = build(&mut Rng::with_seed(seed));
    VERSIONS.with(|m| m.borrow_mut().insert(key, v.clone()));
    v
}

/// A JSON object from `"key": value` pairs that moves each value in, where
/// `json!` would deep-copy every embedded `Value` through `to_value`.
macro_rules! obj {
    ({ $($k:literal : $v:expr),* $(,)? }) => {{
        let mut m = Map::new();
        $(m.insert($k.to_owned(), IntoJson::into_json($v));)*
        Value::Object(m)
    }};
}

trait IntoJson {
    fn into_json(self) -> Value;
}

impl IntoJson for Value {
    fn into_json(self) -> Value {
        self
    }
}

impl IntoJson for &Value {
    fn into_json(self) -> Value {
        self.clone()
    }
}

impl IntoJson for Vec<Value> {
    fn into_json(self) -> Value {
        Value::Array(self)
    }
}

impl IntoJson for String {
    fn into_json(self) -> Value {
        Value::String(self)
    }
}

impl IntoJson for &String {
    fn into_json(self) -> Value {
        Value::String(self.clone())
    }
}

impl IntoJson for bool {
    fn into_json(self) -> Value {
        Value::Bool(self)
    }
}

impl IntoJson for u64 {
    fn into_json(self) -> Value {
        Value::from(self)
    }
}

impl IntoJson for i32 {
    fn into_json(self) -> Value {
        Value::from(self)
    }
}

fn pick<T: Copy>(rng: &mut Rng, xs: &[T]) -> T {
    xs[rng.usize(..xs.len())]
}

fn chance(rng: &mut Rng, one_in: u32) -> bool {
    rng.u32(..one_in) == 0
}

fn text(rng: &mut Rng, prefix: &str) -> String {
    const PARTS: [&str; 7] =
        ["general", "ünïcødé", "say \"hi\"", "back\\slash", "party 🎉", "tab\tnew\nline", "</script>"];
    format!("{prefix} {} {}", pick(rng, &PARTS), rng.u32(..1000))
}

fn timestamp(rng: &mut Rng) -> String {
    format!(
        "2024-{:02}-{:02}T{:02}:{:02}:00.{:06}+00:00",
        rng.u32(1..13),
        rng.u32(1..29),
        rng.u32(..24),
        rng.u32(..60),
        rng.u32(..1_000_000)
    )
}

fn hash_or_null(rng: &mut Rng) -> Value {
    if chance(rng, 2) {
        Value::Null
    } else {
        json!(format!("a_{:032x}", rng.u128(..)))
    }
}

fn user(rng: &mut Rng, u: u64) -> Value {
    variant(rng, 1, u, 0, |r| build_user(r, u))
}

fn build_user(rng: &mut Rng, u: u64) -> Value {
    let mut user = json!({
        "id": uid(u),
        "username": text(rng, "user"),
        "discriminator": "0",
        "global_name": if chance(rng, 3) { Value::Null } else { json!(text(rng, "Name")) },
        "avatar": hash_or_null(rng),
        "public_flags": rng.u32(..4),
        "avatar_decoration_data": null,
    });
    if u == BOT {
        user["bot"] = json!(true);
    }
    user
}

fn role_ids(rng: &mut Rng, g: u64) -> Value {
    (1..ROLES).filter(|_| chance(rng, 3)).map(|i| eid(g, Kind::Role, i)).collect()
}

fn role(rng: &mut Rng, g: u64, i: u64) -> Value {
    variant(rng, 2, g, i, |r| build_role(r, g, i))
}

fn build_role(rng: &mut Rng, g: u64, i: u64) -> Value {
    let color = rng.u32(..0x100_0000);
    let mut role = json!({
        "id": eid(g, Kind::Role, i),
        "name": if i == 0 { "@everyone".to_owned() } else { text(rng, "role") },
        "color": color,
        "colors": {"primary_color": color, "secondary_color": null, "tertiary_color": null},
        "hoist": rng.bool(),
        "icon": null,
        "unicode_emoji": null,
        "position": i,
        "permissions": rng.u64(..1 << 50).to_string(),
        "managed": false,
        "mentionable": rng.bool(),
        "flags": 0,
    });
    if chance(rng, 4) {
        role["tags"] = json!({"bot_id": uid(rng.u64(1..USERS))});
    }
    role
}

/// A guild channel as listed in GUILD_CREATE (no `guild_id`).
fn channel(rng: &mut Rng, g: u64, i: u64) -> Value {
    variant(rng, 3, g, i, |r| build_channel(r, g, i))
}

fn build_channel(rng: &mut Rng, g: u64, i: u64) -> Value {
    let kind = CHANNEL_TYPES[i as usize];
    let mut ch = json!({
        "id": eid(g, Kind::Channel, i),
        "type": kind,
        "name": text(rng, "channel"),
        "position": rng.u32(..20),
        "flags": 0,
        "permission_overwrites": [
            {"id": eid(g, Kind::Role, 0), "type": 0, "allow": "0", "deny": rng.u32(..4096).to_string()},
        ],
    });
    if kind != 4 {
        ch["parent_id"] = if rng.bool() { json!(eid(g, Kind::Channel, 0)) } else { Value::Null };
    }
    match kind {
        0 | 5 => {
            ch["topic"] = if rng.bool() { json!(text(rng, "topic")) } else { Value::Null };
            ch["nsfw"] = json!(false);
            ch["last_message_id"] = json!(sf(rng.u64(..1 << 40)));
            ch["rate_limit_per_user"] = json!(pick(rng, &[0, 5, 60]));
            ch["default_auto_archive_duration"] = json!(1440);
        }
        15 => {
            ch["topic"] = Value::Null;
            ch["available_tags"] =
                json!([{"id": sf(77), "name": "tag", "moderated": false, "emoji_id": null, "emoji_name": "🏷"}]);
            ch["default_reaction_emoji"] = Value::Null;
            ch["default_sort_order"] = Value::Null;
            ch["default_forum_layout"] = json!(0);
        }
        2 | 13 => {
            ch["bitrate"] = json!(pick(rng, &[64_000, 96_000]));
            ch["user_limit"] = json!(rng.u32(..10));
            ch["rtc_region"] = Value::Null;
        }
        _ => {}
    }
    ch
}

fn thread_parent(i: u64) -> u64 {
    THREAD_PARENTS[(i % THREAD_PARENTS.len() as u64) as usize]
}

/// The bot's thread member as listed inside a thread of GUILD_CREATE (no `id`, no `user_id`).
fn thread_member_short(rng: &mut Rng) -> Value {
    variant(rng, 12, 0, 0, |r| json!({"join_timestamp": timestamp(r), "flags": 0}))
}

/// A thread member object as events carry it.
fn thread_member(rng: &mut Rng, g: u64, i: u64, u: u64) -> Value {
    let mut m = thread_member_short(rng);
    m["id"] = json!(eid(g, Kind::Thread, i));
    m["user_id"] = json!(uid(u));
    m
}

/// A thread channel object (threads carry `guild_id`, also in GUILD_CREATE).
fn thread(rng: &mut Rng, g: u64, i: u64, archived: bool) -> Value {
    variant(rng, 4, g, i * 2 + archived as u64, |r| build_thread(r, g, i, archived))
}

fn build_thread(rng: &mut Rng, g: u64, i: u64, archived: bool) -> Value {
    let parent = thread_parent(i);
    let kind = if CHANNEL_TYPES[parent as usize] == 5 { 10 } else { pick(rng, &[11, 11, 12]) };
    let mut th = json!({
        "id": eid(g, Kind::Thread, i),
        "guild_id": gid(g),
        "parent_id": eid(g, Kind::Channel, parent),
        "owner_id": uid(rng.u64(..USERS)),
        "type": kind,
        "name": text(rng, "thread"),
        "last_message_id": sf(rng.u64(..1 << 40)),
        "message_count": rng.u32(..100),
        "member_count": rng.u32(..50),
        "total_message_sent": rng.u32(..100),
        "rate_limit_per_user": 0,
        "flags": 0,
        "thread_metadata": {
            "archived": archived,
            "auto_archive_duration": pick(rng, &[60, 1440, 4320, 10080]),
            "archive_timestamp": timestamp(rng),
            "locked": false,
            "create_timestamp": timestamp(rng),
        },
    });
    if kind == 12 {
        th["thread_metadata"]["invitable"] = json!(rng.bool());
    }
    if CHANNEL_TYPES[parent as usize] == 15 {
        th["applied_tags"] = json!([]);
    }
    th
}

fn member(rng: &mut Rng, g: u64, u: u64) -> Value {
    variant(rng, 5, g, u, |r| build_member(r, g, u))
}

fn build_member(rng: &mut Rng, g: u64, u: u64) -> Value {
    json!({
        "user": user(rng, u),
        "nick": if rng.bool() { json!(text(rng, "nick")) } else { Value::Null },
        "avatar": null,
        "banner": null,
        "roles": role_ids(rng, g),
        "joined_at": timestamp(rng),
        "premium_since": null,
        "deaf": rng.bool(),
        "mute": rng.bool(),
        "flags": 0,
        "pending": false,
        "communication_disabled_until": null,
    })
}

fn emoji(rng: &mut Rng, g: u64, i: u64) -> Value {
    variant(rng, 6, g, i, |r| build_emoji(r, g, i))
}

fn build_emoji(rng: &mut Rng, g: u64, i: u64) -> Value {
    let mut e = json!({
        "id": eid(g, Kind::Emoji, i),
        "name": format!("emoji_{}", rng.u32(..1000)),
        "roles": [],
        "require_colons": true,
        "managed": false,
        "animated": rng.bool(),
        "available": true,
    });
    if rng.bool() {
        let u = rng.u64(..USERS);
        e["user"] = user(rng, u);
    }
    e
}

fn sticker(rng: &mut Rng, g: u64, i: u64) -> Value {
    variant(rng, 7, g, i, |r| build_sticker(r, g, i))
}

fn build_sticker(rng: &mut Rng, g: u64, i: u64) -> Value {
    json!({
        "id": eid(g, Kind::Sticker, i),
        "name": text(rng, "sticker"),
        "tags": "wave",
        "type": 2,
        "format_type": pick(rng, &[1, 2, 4]),
        "description": if rng.bool() { json!(text(rng, "about")) } else { Value::Null },
        "available": true,
        "guild_id": gid(g),
    })
}

fn status(rng: &mut Rng) -> &'static str {
    pick(rng, &["online", "online", "idle", "dnd", "offline"])
}

/// A presence as listed in GUILD_CREATE (no `guild_id`).
fn presence(rng: &mut Rng, u: u64, status: &str) -> Value {
    let s = ["online", "idle", "dnd", "offline"].iter().position(|x| *x == status).expect("a status") as u64;
    variant(rng, 13, u, s, |r| build_presence(r, u, status))
}

fn build_presence(rng: &mut Rng, u: u64, status: &str) -> Value {
    let activities = if status == "offline" || rng.bool() {
        json!([])
    } else if rng.bool() {
        json!([{"name": text(rng, "game"), "type": 0, "created_at": 1_700_000_000_000u64 + rng.u64(..1 << 30)}])
    } else {
        let state = text(rng, "state");
        json!([{"name": "Custom Status", "type": 4, "state": state, "emoji": null, "created_at": 1_700_000_000_000u64}])
    };
    let mut client_status = Map::new();
    if status != "offline" {
        client_status.insert(pick(rng, &["desktop", "mobile", "web"]).into(), json!(status));
    }
    let mut user = json!({"id": uid(u)});
    if chance(rng, 4) {
        user["username"] = json!(text(rng, "renamed"));
    }
    json!({"user": user, "status": status, "activities": activities, "client_status": client_status})
}

/// A voice state as listed in GUILD_CREATE (no `guild_id`, no `member`).
fn voice_state(rng: &mut Rng, g: u64, u: u64, channel: Option<u64>) -> Value {
    variant(rng, 14, g, u * 100 + channel.unwrap_or(99), |r| build_voice_state(r, g, u, channel))
}

fn build_voice_state(rng: &mut Rng, g: u64, u: u64, channel: Option<u64>) -> Value {
    let mut vs = json!({
        "user_id": uid(u),
        "channel_id": channel.map(|c| eid(g, Kind::Channel, c)),
        "session_id": format!("{:032x}", rng.u128(..)),
        "deaf": false,
        "mute": rng.bool(),
        "self_deaf": rng.bool(),
        "self_mute": rng.bool(),
        "self_video": false,
        "suppress": rng.bool(),
        "request_to_speak_timestamp": null,
    });
    if rng.bool() {
        vs["self_stream"] = json!(rng.bool());
    }
    vs
}

fn stage_instance(rng: &mut Rng, g: u64, i: u64) -> Value {
    variant(rng, 8, g, i, |r| build_stage_instance(r, g, i))
}

fn build_stage_instance(rng: &mut Rng, g: u64, i: u64) -> Value {
    json!({
        "id": eid(g, Kind::Stage, i),
        "guild_id": gid(g),
        "channel_id": eid(g, Kind::Channel, 7),
        "topic": text(rng, "stage"),
        "privacy_level": 2,
        "discoverable_disabled": false,
        "guild_scheduled_event_id": if rng.bool() { Value::from(eid(g, Kind::Event, 0)) } else { Value::Null },
    })
}

fn scheduled_event(rng: &mut Rng, g: u64, i: u64) -> Value {
    variant(rng, 9, g, i, |r| build_scheduled_event(r, g, i))
}

fn build_scheduled_event(rng: &mut Rng, g: u64, i: u64) -> Value {
    let external = rng.bool();
    let creator = rng.u64(..USERS);
    json!({
        "id": eid(g, Kind::Event, i),
        "guild_id": gid(g),
        "channel_id": if external { Value::Null } else { json!(eid(g, Kind::Channel, pick(rng, &VOICE_CHANNELS))) },
        "creator_id": uid(creator),
        "creator": user(rng, creator),
        "name": text(rng, "event"),
        "description": if rng.bool() { json!(text(rng, "desc")) } else { Value::Null },
        "scheduled_start_time": timestamp(rng),
        "scheduled_end_time": if external { json!(timestamp(rng)) } else { Value::Null },
        "privacy_level": 2,
        "status": pick(rng, &[1, 2]),
        "entity_type": if external { 3 } else { 2 },
        "entity_id": null,
        "entity_metadata": if external { json!({"location": text(rng, "place")}) } else { Value::Null },
        "image": null,
        "recurrence_rule": null,
    })
}

fn sound(rng: &mut Rng, g: u64, i: u64) -> Value {
    variant(rng, 10, g, i, |r| build_sound(r, g, i))
}

fn build_sound(rng: &mut Rng, g: u64, i: u64) -> Value {
    let u = rng.u64(..USERS);
    json!({
        "name": text(rng, "sound"),
        "sound_id": eid(g, Kind::Sound, i),
        "volume": pick(rng, &[0.25, 0.5, 1.0]),
        "emoji_id": null,
        "emoji_name": if rng.bool() { json!("🔊") } else { Value::Null },
        "guild_id": gid(g),
        "available": true,
        "user": user(rng, u),
    })
}

/// The guild object's own fields, including some Discord sends but does not document.
fn guild_fields(rng: &mut Rng, g: u64) -> Map<String, Value> {
    match variant(rng, 11, g, 0, |r| Value::Object(build_guild_fields(r, g))) {
        Value::Object(m) => m,
        _ => unreachable!(),
    }
}

fn build_guild_fields(rng: &mut Rng, g: u64) -> Map<String, Value> {
    let v = json!({
        "id": gid(g),
        "name": text(rng, "guild"),
        "icon": hash_or_null(rng),
        "splash": null,
        "discovery_splash": null,
        "owner_id": uid(rng.u64(1..USERS)),
        "afk_channel_id": if rng.bool() { json!(eid(g, Kind::Channel, 5)) } else { Value::Null },
        "afk_timeout": pick(rng, &[60, 300, 3600]),
        "widget_enabled": rng.bool(),
        "widget_channel_id": null,
        "verification_level": rng.u32(..5),
        "default_message_notifications": rng.u32(..2),
        "explicit_content_filter": rng.u32(..3),
        "features": if rng.bool() { json!(["COMMUNITY", "NEWS"]) } else { json!([]) },
        "mfa_level": 0,
        "application_id": null,
        "system_channel_id": eid(g, Kind::Channel, 1),
        "system_channel_flags": rng.u32(..16),
        "rules_channel_id": null,
        "max_presences": null,
        "max_members": 500_000,
        "vanity_url_code": null,
        "description": if rng.bool() { json!(text(rng, "about")) } else { Value::Null },
        "banner": hash_or_null(rng),
        "premium_tier": rng.u32(..4),
        "premium_subscription_count": rng.u32(..30),
        "preferred_locale": pick(rng, &["en-US", "de", "fr"]),
        "public_updates_channel_id": null,
        "max_video_channel_users": 25,
        "max_stage_video_channel_users": 50,
        "nsfw_level": 0,
        "nsfw": false,
        "premium_progress_bar_enabled": rng.bool(),
        "safety_alerts_channel_id": null,
        "incidents_data": null,
        "hub_type": null,
        "home_header": null,
        "latest_onboarding_question_id": null,
        "region": "deprecated",
        "version": 1_700_000_000_000u64 + rng.u64(..1 << 30),
        "application_command_counts": {"1": rng.u32(..5)},
        "inventory_settings": null,
    });
    match v {
        Value::Object(m) => m,
        _ => unreachable!(),
    }
}

fn subset(rng: &mut Rng, n: u64, one_in: u32) -> Vec<u64> {
    (0..n).filter(|_| !chance(rng, one_in)).collect()
}

// ---------------------------------------------------------------------------
// The generator: a small world that keeps event sequences valid
// ---------------------------------------------------------------------------

#[derive(Default, Clone)]
struct WorldGuild {
    /// The bot is in the guild.
    joined: bool,
    /// Discord sent its GUILD_CREATE and no outage since.
    available: bool,
    /// Members among the user pool (the bot included while joined).
    members: BTreeSet<u64>,
    /// Members outside the pool, counted in `member_count` only.
    others: u64,
}

struct Generator<'a> {
    rng: &'a mut Rng,
    guilds: BTreeMap<u64, WorldGuild>,
    events: Vec<(&'static str, Value)>,
}

impl Generator<'_> {
    fn push(&mut self, t: &'static str, d: Value) {
        self.events.push((t, d));
    }

    /// A guild for the next event: mostly one that is available, sometimes any (events for guilds not cached).
    fn target(&mut self) -> u64 {
        let live: Vec<u64> = self.guilds.iter().filter(|(_, g)| g.available).map(|(id, _)| *id).collect();
        if live.is_empty() || chance(self.rng, 8) {
            let mut all = GUILDS.to_vec();
            all.push(STRANGER_GUILD);
            pick(self.rng, &all)
        } else {
            pick(self.rng, &live)
        }
    }

    fn world(&mut self, g: u64) -> &mut WorldGuild {
        self.guilds.entry(g).or_default()
    }

    fn join(&mut self, g: u64) {
        let rng = &mut *self.rng;
        let mut members: BTreeSet<u64> = (1..USERS).filter(|_| chance(rng, 2)).collect();
        members.insert(BOT);
        let others = rng.u64(..5);
        let w = self.world(g);
        w.joined = true;
        w.members = members;
        w.others = others;
    }

    fn guild_create(&mut self, g: u64) {
        if !self.world(g).joined {
            self.join(g);
        }
        let w = self.world(g).clone();
        let rng = &mut *self.rng;
        let mut d = guild_fields(rng, g);
        let large = chance(rng, 3);
        let member_count = w.members.len() as u64 + w.others;
        let listed: Vec<u64> = w.members.iter().copied().filter(|&u| u == BOT || !large || rng.bool()).collect();
        let statuses: BTreeMap<u64, &str> = listed.iter().map(|&u| (u, status(rng))).collect();
        let voice: Vec<u64> = listed.iter().copied().filter(|_| chance(rng, 3)).collect();
        let mut threads = Vec::new();
        for i in subset(rng, THREADS, 2) {
            let mut th = thread(rng, g, i, false);
            if rng.bool() {
                th["member"] = thread_member_short(rng);
            }
            threads.push(th);
        }
        // @everyone is always there.
        let roles: BTreeSet<u64> = subset(rng, ROLES, 4).into_iter().chain([0]).collect();
        let roles: Vec<Value> = roles.into_iter().map(|i| role(rng, g, i)).collect();
        let emojis: Vec<Value> = subset(rng, EMOJIS, 2).into_iter().map(|i| emoji(rng, g, i)).collect();
        let stickers: Vec<Value> = subset(rng, STICKERS, 2).into_iter().map(|i| sticker(rng, g, i)).collect();
        let channels: Vec<Value> = subset(rng, CHANNELS, 5).into_iter().map(|i| channel(rng, g, i)).collect();
        let members: Vec<Value> = listed.iter().map(|&u| member(rng, g, u)).collect();
        // Offline members have no presence in GUILD_CREATE.
        let presences: Vec<Value> =
            statuses.iter().filter(|(_, s)| **s != "offline").map(|(&u, &s)| presence(rng, u, s)).collect();
        let mut voice_states = Vec::new();
        for &u in &voice {
            let c = pick(rng, &VOICE_CHANNELS);
            voice_states.push(voice_state(rng, g, u, Some(c)));
        }
        let stages: Vec<Value> = subset(rng, STAGES, 2).into_iter().map(|i| stage_instance(rng, g, i)).collect();
        let events: Vec<Value> = subset(rng, EVENTS, 2).into_iter().map(|i| scheduled_event(rng, g, i)).collect();
        let sounds: Vec<Value> = subset(rng, SOUNDS, 2).into_iter().map(|i| sound(rng, g, i)).collect();
        let extra = obj!({
            "joined_at": timestamp(rng),
            "large": large,
            "unavailable": false,
            "member_count": member_count,
            "roles": roles,
            "emojis": emojis,
            "stickers": stickers,
            "channels": channels,
            "threads": threads,
            "members": members,
            "presences": presences,
            "voice_states": voice_states,
            "stage_instances": stages,
            "guild_scheduled_events": events,
            "soundboard_sounds": sounds,
            "activity_instances": Vec::new(),
            "embedded_activities": Vec::new(),
        });
        if let Value::Object(extra) = extra {
            d.extend(extra);
        }
        self.world(g).available = true;
        self.push("GUILD_CREATE", Value::Object(d));
    }

    fn ready(&mut self) {
        let rng = &mut *self.rng;
        let mut listed: Vec<u64> = self.guilds.iter().filter(|(_, g)| g.joined).map(|(id, _)| *id).collect();
        // Left a guild while away, or joined one.
        if !listed.is_empty() && chance(rng, 4) {
            let gone = listed.remove(rng.usize(..listed.len()));
            self.guilds.insert(gone, WorldGuild::default());
        }
        let rng = &mut *self.rng;
        if chance(rng, 3) {
            let g = pick(rng, &GUILDS);
            if !listed.contains(&g) {
                listed.push(g);
                self.join(g);
            }
        }
        for g in &listed {
            self.world(*g).available = false;
        }
        let rng = &mut *self.rng;
        let d = json!({
            "v": 10,
            "user_settings": {},
            "user": user(rng, BOT),
            "guilds": listed.iter().map(|g| json!({"id": gid(*g), "unavailable": true})).collect::<Vec<_>>(),
            "session_id": format!("{:032x}", rng.u128(..)),
            "resume_gateway_url": "wss://gateway-us-east1-b.discord.gg",
            "shard": [0, 1],
            "application": {"id": sf(5), "flags": 8_953_856},
            "private_channels": [],
            "relationships": [],
            "presences": [],
            "guild_join_requests": [],
            "geo_ordered_rtc_regions": ["newark", "us-east"],
            "auth_session_id_hash": "x",
            "_trace": ["[\"gateway-prd\",{\"micros\":1}]"],
        });
        self.push("READY", d);
        // Then Discord sends each guild, or reports it unavailable, or is still loading it.
        for g in listed {
            match self.rng.u32(..10) {
                0 => self.push("GUILD_DELETE", json!({"id": gid(g), "unavailable": true})),
                1 => {}
                _ => self.guild_create(g),
            }
        }
    }

    fn step(&mut self) {
        let g = self.target();
        let gs = gid(g);
        let roll = self.rng.u32(..100);
        let rng = &mut *self.rng;
        match roll {
            // A guild (re)joined or back from an outage.
            0..=1 if chance(rng, 2) => {
                let g = pick(rng, &GUILDS);
                self.guild_create(g);
            }
            3..=5 => {
                let mut d = guild_fields(rng, g);
                if rng.bool() {
                    d.insert("roles".into(), subset(rng, ROLES, 3).into_iter().map(|i| role(rng, g, i)).collect());
                    d.insert("emojis".into(), subset(rng, EMOJIS, 3).into_iter().map(|i| emoji(rng, g, i)).collect());
                    d.insert(
                        "stickers".into(),
                        subset(rng, STICKERS, 3).into_iter().map(|i| sticker(rng, g, i)).collect(),
                    );
                }
                self.push("GUILD_UPDATE", Value::Object(d));
            }
            6 => {
                // Outage.
                self.world(g).available = false;
                self.push("GUILD_DELETE", json!({"id": gs, "unavailable": true}));
            }
            7 => {
                // Left (kicked, or the guild was deleted): `unavailable` unset or false.
                let d = if rng.bool() { json!({"id": gs}) } else { json!({"id": gs, "unavailable": false}) };
                self.guilds.insert(g, WorldGuild::default());
                self.push("GUILD_DELETE", d);
            }
            // A new session (re-identify): READY, then the guilds again.
            8 if chance(rng, 3) => self.ready(),
            9 => {
                let d = user(rng, BOT);
                self.push("USER_UPDATE", d);
            }
            10..=15 => {
                let i = if chance(rng, 10) { UNKNOWN } else { rng.u64(..ROLES) };
                match rng.u32(..3) {
                    0 => {
                        let d = obj!({"guild_id": gs, "role": role(rng, g, i)});
                        self.push("GUILD_ROLE_CREATE", d);
                    }
                    1 => {
                        let d = obj!({"guild_id": gs, "role": role(rng, g, i)});
                        self.push("GUILD_ROLE_UPDATE", d);
                    }
                    _ => {
                        let i = if i == 0 { UNKNOWN } else { i };
                        self.push("GUILD_ROLE_DELETE", json!({"guild_id": gs, "role_id": eid(g, Kind::Role, i)}));
                    }
                }
            }
            16..=21 => {
                let i = rng.u64(..CHANNELS);
                let mut d = channel(rng, g, i);
                d["guild_id"] = json!(gs);
                let t = pick(rng, &["CHANNEL_CREATE", "CHANNEL_UPDATE", "CHANNEL_UPDATE", "CHANNEL_DELETE"]);
                if t == "CHANNEL_DELETE" && chance(rng, 5) {
                    d["id"] = json!(eid(g, Kind::Channel, UNKNOWN));
                }
                self.push(t, d);
            }
            22..=31 => self.thread_event(g),
            32..=41 => self.member_event(g),
            42..=44 => {
                let members: Vec<u64> = self.world(g).members.iter().copied().collect();
                let rng = &mut *self.rng;
                let chunk: Vec<u64> = members.into_iter().filter(|_| rng.bool()).collect();
                let mut d = obj!({
                    "guild_id": gs,
                    "members": chunk.iter().map(|&u| member(rng, g, u)).collect::<Vec<_>>(),
                    "chunk_index": 0,
                    "chunk_count": 1,
                });
                if rng.bool() {
                    let mut presences = Vec::new();
                    for &u in &chunk {
                        let s = status(rng);
                        presences.push(presence(rng, u, s));
                    }
                    d["presences"] = Value::Array(presences);
                }
                if chance(rng, 3) {
                    d["not_found"] = json!([uid(UNKNOWN)]);
                }
                if rng.bool() {
                    d["nonce"] = json!("n0nce");
                }
                self.push("GUILD_MEMBERS_CHUNK", d);
            }
            45..=46 => {
                let emojis: Vec<Value> = subset(rng, EMOJIS, 2).into_iter().map(|i| emoji(rng, g, i)).collect();
                let d = obj!({"guild_id": gs, "emojis": emojis});
                self.push("GUILD_EMOJIS_UPDATE", d);
            }
            47..=48 => {
                let stickers: Vec<Value> = subset(rng, STICKERS, 2).into_iter().map(|i| sticker(rng, g, i)).collect();
                let d = obj!({"guild_id": gs, "stickers": stickers});
                self.push("GUILD_STICKERS_UPDATE", d);
            }
            49..=56 => {
                let u = rng.u64(..USERS);
                let s = status(rng);
                let mut d = presence(rng, u, s);
                d["guild_id"] = json!(gs);
                self.push("PRESENCE_UPDATE", d);
            }
            57..=64 => {
                let members: Vec<u64> = self.world(g).members.iter().copied().collect();
                let rng = &mut *self.rng;
                let u = if members.is_empty() || chance(rng, 8) { rng.u64(..USERS) } else { pick(rng, &members) };
                // Join or move to a channel, or leave (channel_id null).
                let channel = if chance(rng, 3) { None } else { Some(pick(rng, &VOICE_CHANNELS)) };
                let mut d = voice_state(rng, g, u, channel);
                d["guild_id"] = json!(gs);
                d["member"] = member(rng, g, u);
                self.push("VOICE_STATE_UPDATE", d);
            }
            65..=69 => {
                let i = if chance(rng, 8) { UNKNOWN } else { rng.u64(..STAGES) };
                let d = stage_instance(rng, g, i);
                let t = pick(rng, &["STAGE_INSTANCE_CREATE", "STAGE_INSTANCE_UPDATE", "STAGE_INSTANCE_DELETE"]);
                self.push(t, d);
            }
            70..=74 => {
                let i = if chance(rng, 8) { UNKNOWN } else { rng.u64(..EVENTS) };
                let mut d = scheduled_event(rng, g, i);
                let t = pick(
                    rng,
                    &["GUILD_SCHEDULED_EVENT_CREATE", "GUILD_SCHEDULED_EVENT_UPDATE", "GUILD_SCHEDULED_EVENT_DELETE"],
                );
                if t != "GUILD_SCHEDULED_EVENT_CREATE" && rng.bool() {
                    d["user_count"] = json!(rng.u32(..10));
                }
                self.push(t, d);
            }
            75..=81 => {
                let i = if chance(rng, 8) { UNKNOWN } else { rng.u64(..SOUNDS) };
                match rng.u32(..5) {
                    0 => {
                        let d = sound(rng, g, i);
                        self.push("GUILD_SOUNDBOARD_SOUND_CREATE", d);
                    }
                    1 => {
                        let d = sound(rng, g, i);
                        self.push("GUILD_SOUNDBOARD_SOUND_UPDATE", d);
                    }
                    2 => {
                        let d = json!({"sound_id": eid(g, Kind::Sound, i), "guild_id": gs});
                        self.push("GUILD_SOUNDBOARD_SOUND_DELETE", d);
                    }
                    3 => {
                        // Several sounds updated at once: only those listed change.
                        let sounds: Vec<Value> = subset(rng, SOUNDS, 2).into_iter().map(|i| sound(rng, g, i)).collect();
                        let d = obj!({"guild_id": gs, "soundboard_sounds": sounds});
                        self.push("GUILD_SOUNDBOARD_SOUNDS_UPDATE", d);
                    }
                    _ => {
                        // Answer to Request Soundboard Sounds (op 31): the guild's whole list.
                        let sounds: Vec<Value> = subset(rng, SOUNDS, 2).into_iter().map(|i| sound(rng, g, i)).collect();
                        let d = obj!({"guild_id": gs, "soundboard_sounds": sounds});
                        self.push("SOUNDBOARD_SOUNDS", d);
                    }
                }
            }
            82..=87 => self.thread_member_event(g),
            _ => {
                // Events the cache must not be disturbed by.
                let t = pick(rng, &["MESSAGE_CREATE", "TYPING_START", "GUILD_BAN_ADD", "INTERACTION_CREATE"]);
                let id = sf(rng.u64(..1 << 40));
                let d = obj!({"guild_id": gs, "id": id, "channel_id": eid(g, Kind::Channel, 1), "user": user(rng, 3)});
                self.push(t, d);
            }
        }
    }

    fn thread_event(&mut self, g: u64) {
        let gs = gid(g);
        let rng = &mut *self.rng;
        let i = if chance(rng, 12) { UNKNOWN } else { rng.u64(..THREADS) };
        match rng.u32(..6) {
            0 => {
                let mut d = thread(rng, g, i, false);
                if rng.bool() {
                    d["newly_created"] = json!(true);
                } else {
                    // Added to an existing (private) thread: carries our thread member.
                    d["member"] = thread_member(rng, g, i, BOT);
                }
                self.push("THREAD_CREATE", d);
            }
            1 | 2 => {
                // Includes archiving (the thread leaves the active list) and unarchiving.
                let archived = chance(rng, 3);
                let d = thread(rng, g, i, archived);
                self.push("THREAD_UPDATE", d);
            }
            3 => {
                let parent = thread_parent(i);
                let kind = if CHANNEL_TYPES[parent as usize] == 5 { 10 } else { 11 };
                let (id, parent_id) = (eid(g, Kind::Thread, i), eid(g, Kind::Channel, parent));
                let d = json!({"id": id, "guild_id": gs, "parent_id": parent_id, "type": kind});
                self.push("THREAD_DELETE", d);
            }
            _ => {
                // Gained access to channels: their active threads, all of them when channel_ids is absent.
                let parents: Option<Vec<u64>> = if rng.bool() {
                    None
                } else {
                    Some(THREAD_PARENTS.iter().copied().filter(|_| rng.bool()).collect())
                };
                let synced: Vec<u64> = (0..THREADS)
                    .filter(|&i| parents.as_ref().is_none_or(|p| p.contains(&thread_parent(i))) && rng.bool())
                    .collect();
                let threads: Vec<Value> = synced.iter().map(|&i| thread(rng, g, i, false)).collect();
                let mut members = Vec::new();
                for &i in &synced {
                    if rng.bool() {
                        members.push(thread_member(rng, g, i, BOT));
                    }
                }
                let mut d = obj!({"guild_id": gs, "threads": threads, "members": members});
                if let Some(p) = parents {
                    d["channel_ids"] = p.iter().map(|&c| eid(g, Kind::Channel, c)).collect();
                }
                self.push("THREAD_LIST_SYNC", d);
            }
        }
    }

    fn thread_member_event(&mut self, g: u64) {
        let gs = gid(g);
        let rng = &mut *self.rng;
        let i = if chance(rng, 12) { UNKNOWN } else { rng.u64(..THREADS) };
        if chance(rng, 3) {
            // Our own thread member changed.
            let mut d = thread_member(rng, g, i, BOT);
            d["guild_id"] = json!(gs);
            self.push("THREAD_MEMBER_UPDATE", d);
            return;
        }
        let mut d = json!({"id": eid(g, Kind::Thread, i), "guild_id": gs, "member_count": rng.u32(..50)});
        let added: Vec<u64> = (0..USERS).filter(|_| chance(rng, 5)).collect();
        if !added.is_empty() {
            let mut list = Vec::new();
            for &u in &added {
                let mut m = thread_member(rng, g, i, u);
                m["member"] = member(rng, g, u);
                m["presence"] = if rng.bool() { Value::Null } else { presence(rng, u, "online") };
                list.push(m);
            }
            d["added_members"] = Value::Array(list);
        }
        let removed: Vec<String> = (0..USERS).filter(|u| !added.contains(u) && chance(rng, 5)).map(uid).collect();
        if !removed.is_empty() {
            d["removed_member_ids"] = json!(removed);
        }
        self.push("THREAD_MEMBERS_UPDATE", d);
    }

    fn member_event(&mut self, g: u64) {
        let gs = gid(g);
        let joined = self.world(g).joined;
        let members: Vec<u64> = self.world(g).members.iter().copied().collect();
        let rng = &mut *self.rng;
        let outsiders: Vec<u64> = (1..USERS).filter(|u| !members.contains(u)).collect();
        match rng.u32(..3) {
            0 if !outsiders.is_empty() || !joined => {
                let u = if outsiders.is_empty() { rng.u64(1..USERS) } else { pick(rng, &outsiders) };
                let mut d = member(rng, g, u);
                d["guild_id"] = json!(gs);
                if joined {
                    self.world(g).members.insert(u);
                }
                self.push("GUILD_MEMBER_ADD", d);
            }
            1 => {
                // A partial member: `roles`, `user` and `joined_at` always, the rest when it changed.
                let u = if members.is_empty() || chance(rng, 10) { rng.u64(..USERS) } else { pick(rng, &members) };
                let full = member(rng, g, u);
                let mut d = obj!({
                    "guild_id": gs,
                    "roles": &full["roles"],
                    "user": &full["user"],
                    "joined_at": &full["joined_at"],
                });
                for key in [
                    "nick",
                    "avatar",
                    "banner",
                    "premium_since",
                    "deaf",
                    "mute",
                    "pending",
                    "communication_disabled_until",
                    "flags",
                ] {
                    if chance(rng, 3) {
                        d[key] = full[key].clone();
                    }
                }
                if chance(rng, 6) {
                    d["avatar_decoration_data"] = Value::Null;
                }
                self.push("GUILD_MEMBER_UPDATE", d);
            }
            _ => {
                let others: Vec<u64> = members.iter().copied().filter(|&u| u != BOT).collect();
                // Mostly a member; sometimes a user the proxy never saw (members not cached, or out of order).
                let u = if others.is_empty() || chance(rng, 8) { rng.u64(1..USERS) } else { pick(rng, &others) };
                let d = obj!({"guild_id": gs, "user": user(rng, u)});
                self.world(g).members.remove(&u);
                self.push("GUILD_MEMBER_REMOVE", d);
            }
        }
    }
}

fn generate(rng: &mut Rng) -> Vec<(&'static str, Value)> {
    let len = rng.usize(MIN_EVENTS..=MAX_EVENTS);
    let mut world = Generator { rng, guilds: BTreeMap::new(), events: Vec::with_capacity(len + 8) };
    for g in GUILDS {
        if !chance(world.rng, 4) {
            world.join(g);
        }
    }
    // Usually READY first; sometimes the sequence starts mid-session (no bot id known).
    if !chance(world.rng, 10) {
        world.ready();
    }
    while world.events.len() < len {
        world.step();
    }
    world.events
}

// ---------------------------------------------------------------------------
// The reference model
// ---------------------------------------------------------------------------

/// GUILD_CREATE's arrays of entities, in the order the model keeps them.
const SETS: [&str; 11] = [
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

/// A snowflake string as a number.
fn sid(s: &str) -> u64 {
    s.parse().unwrap_or_else(|_| panic!("not a snowflake: {s}"))
}

/// The key an entity of `set` is identified by.
fn entity_key(set: &str, e: &Value) -> u64 {
    let k = match set {
        "members" | "presences" => &e["user"]["id"],
        "voice_states" => &e["user_id"],
        "soundboard_sounds" => &e["sound_id"],
        _ => &e["id"],
    };
    sid(k.as_str().unwrap_or_else(|| panic!("{set} entity without key: {e}")))
}

fn str_of<'v>(d: &'v Value, key: &str) -> &'v str {
    d[key].as_str().unwrap_or_else(|| panic!("no string `{key}` in {d}"))
}

fn without(v: &Value, keys: &[&str]) -> Value {
    let mut m = v.as_object().expect("an object").clone();
    for k in keys {
        m.remove(*k);
    }
    Value::Object(m)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Missing {
    Pending,
    Unavailable,
}

#[derive(Default)]
struct ModelGuild {
    /// Every other key of the last GUILD_CREATE, overlaid by GUILD_UPDATEs.
    fields: Map<String, Value>,
    member_count: u64,
    sets: BTreeMap<&'static str, BTreeMap<u64, Value>>,
}

impl ModelGuild {
    fn set(&mut self, name: &str) -> &mut BTreeMap<u64, Value> {
        let name = SETS.iter().find(|s| **s == name).expect("a known set");
        self.sets.entry(name).or_default()
    }

    /// The GUILD_CREATE `d` Discord would send now.
    fn expected(&self) -> Value {
        let mut d = self.fields.clone();
        d.insert("unavailable".into(), json!(false));
        d.insert("member_count".into(), json!(self.member_count));
        for name in SETS {
            let list: Vec<Value> = self.sets.get(name).map(|s| s.values().cloned().collect()).unwrap_or_default();
            d.insert(name.into(), Value::Array(list));
        }
        Value::Object(d)
    }
}

struct Model {
    flags: CacheConfig,
    user: Option<Value>,
    bot_id: Option<String>,
    guilds: BTreeMap<String, ModelGuild>,
    missing: BTreeMap<String, Missing>,
}

impl Model {
    fn new(flags: CacheConfig) -> Self {
        Self { flags, user: None, bot_id: None, guilds: BTreeMap::new(), missing: BTreeMap::new() }
    }

    fn caches(&self, set: &str) -> bool {
        let f = &self.flags;
        match set {
            "roles" => f.roles,
            "emojis" => f.emojis,
            "stickers" => f.stickers,
            "channels" | "threads" => f.channels,
            "members" => f.members || f.current_member,
            "presences" => f.presences,
            "voice_states" => f.voice_states,
            "stage_instances" => f.stage_instances,
            "guild_scheduled_events" => f.scheduled_events,
            "soundboard_sounds" => f.soundboard_sounds,
            _ => unreachable!("{set}"),
        }
    }

    fn keeps_member(&self, user_id: &str) -> bool {
        self.flags.members || (self.flags.current_member && self.bot_id.as_deref() == Some(user_id))
    }

    /// The cached guild `d[key]` names, if any.
    fn guild(&mut self, d: &Value, key: &str) -> Option<&mut ModelGuild> {
        let id = d.get(key)?.as_str()?;
        self.guilds.get_mut(id)
    }

    /// Applies one dispatch; returns the guilds a READY dropped, sorted.
    fn apply(&mut self, t: &str, d: &Value) -> Vec<String> {
        let flags = self.flags.clone();
        match t {
            "READY" => {
                self.user = Some(d["user"].clone());
                self.bot_id = Some(str_of(&d["user"], "id").to_owned());
                let listed: BTreeSet<String> =
                    d["guilds"].as_array().unwrap().iter().map(|g| str_of(g, "id").to_owned()).collect();
                let known: BTreeSet<String> = self.guilds.keys().chain(self.missing.keys()).cloned().collect();
                let gone: Vec<String> = known.difference(&listed).cloned().collect();
                for id in &gone {
                    self.guilds.remove(id);
                    self.missing.remove(id);
                }
                for id in listed {
                    if !self.guilds.contains_key(&id) {
                        self.missing.insert(id, Missing::Pending);
                    }
                }
                return gone;
            }
            "USER_UPDATE" => self.user = Some(d.clone()),
            "GUILD_CREATE" => {
                let id = str_of(d, "id").to_owned();
                let mut g = ModelGuild::default();
                for (k, v) in d.as_object().unwrap() {
                    if SETS.contains(&k.as_str()) {
                        if !self.caches(k) {
                            continue;
                        }
                        for e in v.as_array().unwrap() {
                            let key = entity_key(k, e);
                            if k == "members" && !self.keeps_member(&key.to_string()) {
                                continue;
                            }
                            g.set(k).insert(key, e.clone());
                        }
                    } else if k == "member_count" {
                        g.member_count = v.as_u64().unwrap();
                    } else if k != "unavailable" {
                        g.fields.insert(k.clone(), v.clone());
                    }
                }
                self.missing.remove(&id);
                self.guilds.insert(id, g);
            }
            "GUILD_UPDATE" => {
                let caches: Vec<bool> = ["roles", "emojis", "stickers"].iter().map(|s| self.caches(s)).collect();
                if let Some(g) = self.guild(d, "id") {
                    for (k, v) in d.as_object().unwrap() {
                        if let Some(i) = ["roles", "emojis", "stickers"].iter().position(|s| s == k) {
                            if caches[i] {
                                let set = g.set(k);
                                set.clear();
                                for e in v.as_array().unwrap() {
                                    set.insert(entity_key(k, e), e.clone());
                                }
                            }
                        } else if !SETS.contains(&k.as_str()) && k != "member_count" && k != "unavailable" {
                            g.fields.insert(k.clone(), v.clone());
                        }
                    }
                }
            }
            "GUILD_DELETE" => {
                let id = str_of(d, "id").to_owned();
                self.guilds.remove(&id);
                if d["unavailable"] == json!(true) {
                    self.missing.insert(id, Missing::Unavailable);
                } else {
                    self.missing.remove(&id);
                }
            }
            "GUILD_ROLE_CREATE" | "GUILD_ROLE_UPDATE" if flags.roles => {
                if let Some(g) = self.guild(d, "guild_id") {
                    g.set("roles").insert(sid(str_of(&d["role"], "id")), d["role"].clone());
                }
            }
            "GUILD_ROLE_DELETE" if flags.roles => {
                if let Some(g) = self.guild(d, "guild_id") {
                    g.set("roles").remove(&sid(str_of(d, "role_id")));
                }
            }
            "CHANNEL_CREATE" | "CHANNEL_UPDATE" if flags.channels => {
                if let Some(g) = self.guild(d, "guild_id") {
                    // Channels in GUILD_CREATE have no guild_id.
                    g.set("channels").insert(sid(str_of(d, "id")), without(d, &["guild_id"]));
                }
            }
            "CHANNEL_DELETE" if flags.channels => {
                if let Some(g) = self.guild(d, "guild_id") {
                    let id = str_of(d, "id");
                    g.set("channels").remove(&sid(id));
                    // Its threads go with it.
                    g.set("threads").retain(|_, th| th["parent_id"].as_str() != Some(id));
                }
            }
            "THREAD_CREATE" | "THREAD_UPDATE" if flags.channels => {
                if let Some(g) = self.guild(d, "guild_id") {
                    let id = sid(str_of(d, "id"));
                    let threads = g.set("threads");
                    if d["thread_metadata"]["archived"] == json!(true) {
                        // Only active threads are listed.
                        threads.remove(&id);
                    } else {
                        let mut th = without(d, &["newly_created", "member"]);
                        match d.get("member") {
                            // Our thread member (added to the thread). Inside GUILD_CREATE
                            // a thread member has no id and no user_id.
                            Some(m) => th["member"] = without(m, &["id", "user_id"]),
                            // Our membership does not change with the thread.
                            None => {
                                if let Some(old) = threads.get(&id).and_then(|o| o.get("member")) {
                                    th["member"] = old.clone();
                                }
                            }
                        }
                        threads.insert(id, th);
                    }
                }
            }
            "THREAD_DELETE" if flags.channels => {
                if let Some(g) = self.guild(d, "guild_id") {
                    g.set("threads").remove(&sid(str_of(d, "id")));
                }
            }
            "THREAD_LIST_SYNC" if flags.channels => {
                if let Some(g) = self.guild(d, "guild_id") {
                    let threads = g.set("threads");
                    match d.get("channel_ids").and_then(Value::as_array) {
                        Some(parents) => threads.retain(|_, th| !parents.contains(&th["parent_id"])),
                        None => threads.clear(),
                    }
                    for th in d["threads"].as_array().unwrap() {
                        threads.insert(sid(str_of(th, "id")), th.clone());
                    }
                    for m in d["members"].as_array().unwrap() {
                        if let Some(th) = threads.get_mut(&sid(str_of(m, "id"))) {
                            th["member"] = without(m, &["id", "user_id"]);
                        }
                    }
                }
            }
            "THREAD_MEMBER_UPDATE" if flags.channels => {
                // Always about the current user.
                if let Some(g) = self.guild(d, "guild_id") {
                    if let Some(th) = g.set("threads").get_mut(&sid(str_of(d, "id"))) {
                        th["member"] = without(d, &["id", "user_id", "guild_id"]);
                    }
                }
            }
            "THREAD_MEMBERS_UPDATE" if flags.channels => {
                let bot_id = self.bot_id.clone();
                if let Some(g) = self.guild(d, "guild_id") {
                    if let Some(th) = g.set("threads").get_mut(&sid(str_of(d, "id"))) {
                        th["member_count"] = d["member_count"].clone();
                        if let Some(bot_id) = bot_id {
                            for m in d.get("added_members").and_then(Value::as_array).into_iter().flatten() {
                                if str_of(m, "user_id") == bot_id {
                                    th["member"] = without(m, &["id", "user_id", "member", "presence"]);
                                }
                            }
                            let removed = d.get("removed_member_ids").and_then(Value::as_array);
                            if removed.into_iter().flatten().any(|r| r.as_str() == Some(&bot_id)) {
                                th.as_object_mut().unwrap().remove("member");
                            }
                        }
                    }
                }
            }
            "GUILD_MEMBER_ADD" => {
                let user_id = str_of(&d["user"], "id").to_owned();
                let keep = self.keeps_member(&user_id);
                if let Some(g) = self.guild(d, "guild_id") {
                    g.member_count += 1;
                    if keep {
                        g.set("members").insert(sid(&user_id), without(d, &["guild_id"]));
                    }
                }
            }
            "GUILD_MEMBER_UPDATE" => {
                let user_id = str_of(&d["user"], "id").to_owned();
                let keep = self.keeps_member(&user_id);
                if let Some(g) = self.guild(d, "guild_id") {
                    let members = g.set("members");
                    match members.get_mut(&sid(&user_id)) {
                        // A partial update: the fields it carries replace the stored ones.
                        Some(old) => {
                            for (k, v) in d.as_object().unwrap() {
                                if k != "guild_id" {
                                    old[k] = v.clone();
                                }
                            }
                        }
                        None if keep => {
                            members.insert(sid(&user_id), without(d, &["guild_id"]));
                        }
                        None => {}
                    }
                }
            }
            "GUILD_MEMBER_REMOVE" => {
                let user_id = str_of(&d["user"], "id").to_owned();
                if let Some(g) = self.guild(d, "guild_id") {
                    g.member_count = g.member_count.saturating_sub(1);
                    g.set("members").remove(&sid(&user_id));
                    g.set("presences").remove(&sid(&user_id));
                }
            }
            "GUILD_MEMBERS_CHUNK" => {
                let keep: Vec<bool> = d["members"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|m| self.keeps_member(str_of(&m["user"], "id")))
                    .collect();
                if let Some(g) = self.guild(d, "guild_id") {
                    for (m, keep) in d["members"].as_array().unwrap().iter().zip(keep) {
                        if keep {
                            g.set("members").insert(entity_key("members", m), m.clone());
                        }
                    }
                    if flags.presences {
                        for p in d.get("presences").and_then(Value::as_array).into_iter().flatten() {
                            let key = entity_key("presences", p);
                            if p["status"] == json!("offline") {
                                g.set("presences").remove(&key);
                            } else {
                                g.set("presences").insert(key, without(p, &["guild_id"]));
                            }
                        }
                    }
                }
            }
            "GUILD_EMOJIS_UPDATE" | "GUILD_STICKERS_UPDATE" | "SOUNDBOARD_SOUNDS" => {
                let (set, on) = match t {
                    "GUILD_EMOJIS_UPDATE" => ("emojis", flags.emojis),
                    "GUILD_STICKERS_UPDATE" => ("stickers", flags.stickers),
                    _ => ("soundboard_sounds", flags.soundboard_sounds),
                };
                if let (Some(g), true) = (self.guild(d, "guild_id"), on) {
                    // The guild's whole list.
                    let target = g.set(set);
                    target.clear();
                    for e in d[set].as_array().unwrap() {
                        target.insert(entity_key(set, e), e.clone());
                    }
                }
            }
            "GUILD_SOUNDBOARD_SOUNDS_UPDATE" if flags.soundboard_sounds => {
                if let Some(g) = self.guild(d, "guild_id") {
                    // Only the listed sounds changed.
                    for e in d["soundboard_sounds"].as_array().unwrap() {
                        g.set("soundboard_sounds").insert(entity_key("soundboard_sounds", e), e.clone());
                    }
                }
            }
            "PRESENCE_UPDATE" if flags.presences => {
                if let Some(g) = self.guild(d, "guild_id") {
                    let key = entity_key("presences", d);
                    if d["status"] == json!("offline") {
                        g.set("presences").remove(&key);
                    } else {
                        g.set("presences").insert(key, without(d, &["guild_id"]));
                    }
                }
            }
            "VOICE_STATE_UPDATE" if flags.voice_states => {
                if let Some(g) = self.guild(d, "guild_id") {
                    let key = entity_key("voice_states", d);
                    if d["channel_id"].is_null() {
                        g.set("voice_states").remove(&key);
                    } else {
                        g.set("voice_states").insert(key, without(d, &["guild_id", "member"]));
                    }
                }
            }
            "STAGE_INSTANCE_CREATE" | "STAGE_INSTANCE_UPDATE" if flags.stage_instances => {
                if let Some(g) = self.guild(d, "guild_id") {
                    g.set("stage_instances").insert(sid(str_of(d, "id")), d.clone());
                }
            }
            "STAGE_INSTANCE_DELETE" if flags.stage_instances => {
                if let Some(g) = self.guild(d, "guild_id") {
                    g.set("stage_instances").remove(&sid(str_of(d, "id")));
                }
            }
            "GUILD_SCHEDULED_EVENT_CREATE" | "GUILD_SCHEDULED_EVENT_UPDATE" if flags.scheduled_events => {
                if let Some(g) = self.guild(d, "guild_id") {
                    g.set("guild_scheduled_events").insert(sid(str_of(d, "id")), d.clone());
                }
            }
            "GUILD_SCHEDULED_EVENT_DELETE" if flags.scheduled_events => {
                if let Some(g) = self.guild(d, "guild_id") {
                    g.set("guild_scheduled_events").remove(&sid(str_of(d, "id")));
                }
            }
            "GUILD_SOUNDBOARD_SOUND_CREATE" | "GUILD_SOUNDBOARD_SOUND_UPDATE" if flags.soundboard_sounds => {
                if let Some(g) = self.guild(d, "guild_id") {
                    g.set("soundboard_sounds").insert(sid(str_of(d, "sound_id")), d.clone());
                }
            }
            "GUILD_SOUNDBOARD_SOUND_DELETE" if flags.soundboard_sounds => {
                if let Some(g) = self.guild(d, "guild_id") {
                    g.set("soundboard_sounds").remove(&sid(str_of(d, "sound_id")));
                }
            }
            _ => {}
        }
        Vec::new()
    }
}

// ---------------------------------------------------------------------------
// Comparison
// ---------------------------------------------------------------------------

/// The proxy's GUILD_CREATE `d`, parsed, with arrays of entities sorted by key.
fn actual_create(cache: &ShardCache, id: u64, buf: &mut Vec<u8>) -> Result<Value, String> {
    buf.clear();
    assert!(cache.write_create(id, buf), "listed guild");
    // `str::parse` and `to_string` go through serde_json's own (optimised) code,
    // where `serde_json::from_slice` would be instantiated here, unoptimised.
    let text = std::str::from_utf8(buf).map_err(|e| format!("write_create is not UTF-8: {e}"))?;
    let mut v: Value =
        text.parse().map_err(|e| format!("write_create is not valid JSON ({e}): {}", String::from_utf8_lossy(buf)))?;
    for name in SETS {
        let list = v.get_mut(name).and_then(Value::as_array_mut).ok_or_else(|| format!("`{name}` array missing"))?;
        list.sort_by_cached_key(|e| entity_key(name, e));
    }
    Ok(v)
}

/// Where two values first differ, as a path and both sides.
fn first_difference(path: &str, want: &Value, got: &Value) -> Option<String> {
    if want == got {
        return None;
    }
    match (want, got) {
        (Value::Object(a), Value::Object(b)) => {
            for k in a.keys().chain(b.keys()) {
                match (a.get(k), b.get(k)) {
                    (Some(x), Some(y)) => {
                        if let Some(d) = first_difference(&format!("{path}.{k}"), x, y) {
                            return Some(d);
                        }
                    }
                    (Some(x), None) => {
                        return Some(format!("{path}.{k}: expected {}, missing in the proxy's", short(x)))
                    }
                    (None, Some(y)) => return Some(format!("{path}.{k}: not expected, the proxy has {}", short(y))),
                    (None, None) => unreachable!(),
                }
            }
            None
        }
        (Value::Array(a), Value::Array(b)) => {
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                if let Some(d) = first_difference(&format!("{path}[{i}]"), x, y) {
                    return Some(d);
                }
            }
            Some(format!(
                "{path}: expected {} elements, the proxy has {}: expected {}, got {}",
                a.len(),
                b.len(),
                short(want),
                short(got)
            ))
        }
        _ => Some(format!("{path}: expected {}, got {}", short(want), short(got))),
    }
}

fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.len() > 400 {
        let mut end = 400;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}...", &s[..end])
    } else {
        s
    }
}

/// A cheap check after every event: whether the guild `d` is about is
/// cached on both sides, its `member_count`, and how many entities each
/// array holds.
fn quick_compare(cache: &ShardCache, model: &Model, d: &Value) -> Result<(), String> {
    let Some(id) = d.get("guild_id").or_else(|| d.get("id")).and_then(Value::as_str) else { return Ok(()) };
    let (got, want) = match (cache.guild(sid(id)), model.guilds.get(id)) {
        (None, None) => return Ok(()),
        (Some(got), Some(want)) => (got, want),
        (got, want) => {
            return Err(format!("guild {id}: cached by the proxy: {}, expected: {}", got.is_some(), want.is_some()));
        }
    };
    if got.member_count != want.member_count {
        return Err(format!(
            "guild {id}: member_count {} expected, the proxy has {}",
            want.member_count, got.member_count
        ));
    }
    let sets = [
        &got.roles,
        &got.emojis,
        &got.stickers,
        &got.channels,
        &got.threads,
        &got.members,
        &got.presences,
        &got.voice_states,
        &got.stage_instances,
        &got.scheduled_events,
        &got.soundboard_sounds,
    ];
    for (name, set) in SETS.iter().zip(sets) {
        let expected = want.sets.get(name);
        // How many: which ones and what they hold is for `compare`.
        if set.len() != expected.map_or(0, BTreeMap::len) {
            let mut ids: Vec<u64> = set.ids().collect();
            ids.sort_unstable();
            let expected: Vec<&u64> = expected.map(|e| e.keys().collect()).unwrap_or_default();
            return Err(format!("guild {id}: {name} ids {expected:?} expected, the proxy has {ids:?}"));
        }
    }
    Ok(())
}

/// Compares everything a client would be sent.
fn compare(cache: &ShardCache, model: &Model, buf: &mut Vec<u8>) -> Result<usize, String> {
    let got: BTreeSet<u64> = cache.guilds().map(|(id, _)| id).collect();
    let want: BTreeSet<u64> = model.guilds.keys().map(|k| sid(k)).collect();
    if got != want {
        return Err(format!("available guilds: expected {want:?}, the proxy has {got:?}"));
    }
    let got: BTreeMap<u64, Missing> = cache
        .missing()
        .map(|(id, s)| (id, if s == GuildStatus::Pending { Missing::Pending } else { Missing::Unavailable }))
        .collect();
    let want: BTreeMap<u64, Missing> = model.missing.iter().map(|(k, s)| (sid(k), *s)).collect();
    if got != want {
        return Err(format!("missing guilds: expected {want:?}, the proxy has {got:?}"));
    }
    let got_user: Option<Value> = cache.user().map(|u| u.parse().expect("user JSON"));
    if got_user != model.user {
        return Err(format!("READY user: expected {:?}, the proxy has {:?}", model.user, got_user));
    }
    for (id, guild) in &model.guilds {
        let got = actual_create(cache, sid(id), buf)?;
        if let Some(diff) = first_difference("d", &guild.expected(), &got) {
            return Err(format!("GUILD_CREATE of guild {id}: {diff}"));
        }
    }
    Ok(model.guilds.len())
}

// ---------------------------------------------------------------------------
// Running sequences
// ---------------------------------------------------------------------------

fn random_flags(rng: &mut Rng) -> CacheConfig {
    CacheConfig {
        channels: rng.bool(),
        roles: rng.bool(),
        emojis: rng.bool(),
        stickers: rng.bool(),
        members: rng.bool(),
        current_member: rng.bool(),
        users: rng.bool(),
        presences: rng.bool(),
        voice_states: rng.bool(),
        stage_instances: rng.bool(),
        scheduled_events: rng.bool(),
        soundboard_sounds: rng.bool(),
    }
}

#[derive(Default)]
struct Totals {
    sequences: u64,
    events: u64,
    comparisons: u64,
}

/// Runs one seeded sequence under every flag set. `Err` describes the first disagreement.
fn run_sequence(seed: u64, verbose: bool, totals: &mut Totals) -> Result<(), String> {
    let mut rng = Rng::with_seed(seed);
    let events = generate(&mut rng);
    // Everything cached, and in turn the defaults or a random set.
    let second = if (seed / 2).is_multiple_of(2) {
        ("default flags", CacheConfig::default())
    } else {
        ("random flags", random_flags(&mut rng))
    };
    let configs = [("all flags", CacheConfig::everything()), second];
    let mut runs: Vec<(&str, CacheConfig, ShardCache, Model)> =
        configs.into_iter().map(|(name, f)| (name, f.clone(), ShardCache::new(f.clone()), Model::new(f))).collect();
    let mut buf = Vec::with_capacity(1 << 16);
    for (i, (t, d)) in events.iter().enumerate() {
        let text = d.to_string();
        if verbose {
            println!("#{i} {t} {text}");
        }
        let check = i + 1 == events.len() || rng.u32(..CHECK_EVERY) == 0;
        for (name, flags, cache, model) in &mut runs {
            let context = |what: String| {
                let recent: Vec<String> = events[i.saturating_sub(3)..=i]
                    .iter()
                    .enumerate()
                    .map(|(j, (t, _))| format!("#{} {t}", i.saturating_sub(3) + j))
                    .collect();
                format!(
                    "seed {seed}, {name} {flags:?}, after event #{i} {t} (last events: {}):\n  {what}\n  \
                     event: {}\n  reproduce (prints every event): \
                     CACHE_DIFF_SEED={seed} cargo test --test cache_differential -- --nocapture",
                    recent.join(", "),
                    short(d),
                )
            };
            let mut gone = cache.apply(t.as_bytes(), &text);
            gone.sort_unstable();
            let want_gone: Vec<u64> = model.apply(t, d).iter().map(|g| sid(g)).collect();
            if gone != want_gone {
                return Err(context(format!(
                    "guilds dropped by READY: expected {want_gone:?}, the proxy says {gone:?}"
                )));
            }
            quick_compare(cache, model, d).map_err(context)?;
            if check {
                totals.comparisons += compare(cache, model, &mut buf).map_err(context)? as u64;
            }
        }
    }
    totals.sequences += 1;
    totals.events += events.len() as u64;
    Ok(())
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|v| v.parse().unwrap_or_else(|_| panic!("{name} must be a number")))
}

/// Runs part `part` of `parts` of this run's sequences.
fn run_part(part: u64, parts: u64) {
    if let Some(seed) = env_u64("CACHE_DIFF_SEED") {
        if part == 0 {
            let mut totals = Totals::default();
            if let Err(e) = run_sequence(seed, true, &mut totals) {
                panic!("{e}");
            }
            println!("seed {seed}: {} events agree", totals.events);
        }
        return;
    }
    let first = env_u64("CACHE_DIFF_FIRST_SEED").unwrap_or(0);
    let count = env_u64("CACHE_DIFF_SEQUENCES").unwrap_or(SEQUENCES);
    let start = Instant::now();
    let mut totals = Totals::default();
    for seed in (first..first + count).filter(|s| s % parts == part) {
        if let Err(e) = run_sequence(seed, false, &mut totals) {
            panic!("cache and reference model disagree: {e}");
        }
    }
    println!(
        "part {part}/{parts}: {} sequences, {} events, each under 2 flag sets; {} full GUILD_CREATE comparisons; {:.2?}",
        totals.sequences,
        totals.events,
        totals.comparisons,
        start.elapsed()
    );
}

// Two halves so the test harness runs them on both cores.
#[test]
fn cache_matches_reference_model_even_seeds() {
    run_part(0, 2);
}

#[test]
fn cache_matches_reference_model_odd_seeds() {
    run_part(1, 2);
}

/// The generator itself is deterministic: a seed names one sequence.
#[test]
fn sequences_are_reproducible() {
    let a = generate(&mut Rng::with_seed(42));
    let b = generate(&mut Rng::with_seed(42));
    assert_eq!(a, b);
    let kinds: BTreeSet<&str> = (0..200u64).flat_map(|s| generate(&mut Rng::with_seed(s))).map(|(t, _)| t).collect();
    for t in [
        "READY",
        "USER_UPDATE",
        "GUILD_CREATE",
        "GUILD_UPDATE",
        "GUILD_DELETE",
        "GUILD_ROLE_CREATE",
        "GUILD_ROLE_UPDATE",
        "GUILD_ROLE_DELETE",
        "CHANNEL_CREATE",
        "CHANNEL_UPDATE",
        "CHANNEL_DELETE",
        "THREAD_CREATE",
        "THREAD_UPDATE",
        "THREAD_DELETE",
        "THREAD_LIST_SYNC",
        "THREAD_MEMBER_UPDATE",
        "THREAD_MEMBERS_UPDATE",
        "GUILD_MEMBER_ADD",
        "GUILD_MEMBER_UPDATE",
        "GUILD_MEMBER_REMOVE",
        "GUILD_MEMBERS_CHUNK",
        "GUILD_EMOJIS_UPDATE",
        "GUILD_STICKERS_UPDATE",
        "PRESENCE_UPDATE",
        "VOICE_STATE_UPDATE",
        "STAGE_INSTANCE_CREATE",
        "STAGE_INSTANCE_UPDATE",
        "STAGE_INSTANCE_DELETE",
        "GUILD_SCHEDULED_EVENT_CREATE",
        "GUILD_SCHEDULED_EVENT_UPDATE",
        "GUILD_SCHEDULED_EVENT_DELETE",
        "GUILD_SOUNDBOARD_SOUND_CREATE",
        "GUILD_SOUNDBOARD_SOUND_UPDATE",
        "GUILD_SOUNDBOARD_SOUND_DELETE",
        "GUILD_SOUNDBOARD_SOUNDS_UPDATE",
        "SOUNDBOARD_SOUNDS",
    ] {
        assert!(kinds.contains(t), "the generator never produces {t}");
    }
}
