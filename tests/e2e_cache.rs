//! A client that comes back sees every change made while it was away.

mod common;

use common::{wait_connected, Client, Proxy};
use fake_discord::{FakeConfig, FakeDiscord};
use serde_json::{json, Value};
use std::collections::BTreeMap;

fn ids(list: &Value) -> Vec<String> {
    let mut v: Vec<String> = list.as_array().unwrap().iter().map(|e| e["id"].as_str().unwrap().to_owned()).collect();
    v.sort();
    v
}

async fn load(proxy: &Proxy, fake: &FakeDiscord) -> (Value, BTreeMap<String, Value>) {
    let mut c = Client::connect(&proxy.url(), "/?v=10&encoding=json").await;
    c.identify(fake.token(), 0, 1).await;
    let ready = c.dispatch().await;
    let mut guilds = BTreeMap::new();
    for _ in 0..ready["d"]["guilds"].as_array().unwrap().len() {
        let g = c.dispatch().await;
        assert_eq!(g["t"], "GUILD_CREATE");
        guilds.insert(g["d"]["id"].as_str().unwrap().to_owned(), g["d"].clone());
    }
    (ready, guilds)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_returning_client_sees_what_changed_while_it_was_away() {
    let config = FakeConfig { shards: 1, guilds: 3, members_per_guild: 4, ..FakeConfig::default() };
    let fake = FakeDiscord::start(config).await.unwrap();
    let proxy = Proxy::start(&fake, json!({"cache": {"members": true, "emojis": true, "stickers": true}})).await;
    wait_connected(&fake, &proxy, 0..1).await;
    let (ready, before) = load(&proxy, &fake).await;
    let gen = fake.generator();
    let (g, left) = (gen.guild_id(0), gen.guild_id(1));
    let (gs, lefts) = (g.to_string(), left.to_string());
    let old = &before[&gs];
    let removed_user = gen.user_id(0, 2).to_string();
    assert!(old["members"].as_array().unwrap().iter().any(|m| m["user"]["id"] == removed_user));

    // While no client is connected, Discord reports changes.
    // GUILD_UPDATE carries the guild's roles as they are then, so it comes first here.
    let mut update = old.clone();
    for k in [
        "channels",
        "threads",
        "members",
        "presences",
        "voice_states",
        "stage_instances",
        "guild_scheduled_events",
        "soundboard_sounds",
        "member_count",
        "joined_at",
        "large",
        "unavailable",
        "lazy",
    ] {
        update.as_object_mut().unwrap().remove(k);
    }
    update["name"] = json!("Renamed Guild");
    fake.inject(0, "GUILD_UPDATE", update).unwrap();
    let new_channel = json!({"id": "1300000000000000001", "guild_id": gs, "type": 0, "name": "new-channel", "position": 9,
        "permission_overwrites": [], "nsfw": false, "parent_id": null, "topic": null, "last_message_id": null,
        "rate_limit_per_user": 0, "flags": 0});
    fake.inject(0, "CHANNEL_CREATE", new_channel).unwrap();
    let new_role = json!({"id": "1300000000000000002", "name": "new-role", "color": 0, "colors": {"primary_color": 0,
        "secondary_color": null, "tertiary_color": null}, "hoist": false, "icon": null, "unicode_emoji": null, "position": 5,
        "permissions": "0", "managed": false, "mentionable": false, "flags": 0});
    fake.inject(0, "GUILD_ROLE_CREATE", json!({"guild_id": gs, "role": new_role})).unwrap();
    let newcomer = json!({"guild_id": gs, "user": {"id": "1300000000000000003", "username": "newcomer", "discriminator": "0",
        "global_name": null, "avatar": null}, "roles": [], "joined_at": "2026-11-29T00:00:00.000000+00:00", "deaf": false,
        "mute": false, "flags": 0, "pending": false, "nick": null, "avatar": null, "premium_since": null,
        "communication_disabled_until": null});
    fake.inject(0, "GUILD_MEMBER_ADD", newcomer).unwrap();
    fake.inject(
        0,
        "GUILD_MEMBER_REMOVE",
        json!({"guild_id": gs, "user": {"id": removed_user, "username": "x", "discriminator": "0", "avatar": null}}),
    )
    .unwrap();
    fake.inject(0, "GUILD_DELETE", json!({"id": lefts})).unwrap();
    let mut joined = gen.guild_create(2, false, 250);
    let joined_id = ((1_000_000_000_000u64 + 3) << 22 | 77).to_string();
    joined["id"] = json!(joined_id);
    joined["name"] = json!("Joined Guild");
    fake.inject(0, "GUILD_CREATE", joined).unwrap();
    // A marker after the changes: once a client sees it live, the proxy has applied them.
    let mut marker = Client::connect(&proxy.url(), "/?v=10&encoding=json").await;
    let _ = marker.identify_and_load(fake.token(), 0, 1).await;
    fake.inject(
        0,
        "TYPING_START",
        json!({"channel_id": "1300000000000000001", "guild_id": gs, "user_id": "1", "timestamp": 1}),
    )
    .unwrap();
    while marker.dispatch().await["t"] != "TYPING_START" {}

    let (ready_after, after) = load(&proxy, &fake).await;
    let listed: Vec<String> = ids(&ready_after["d"]["guilds"]);
    assert!(!listed.contains(&lefts), "the guild the bot left is gone from READY");
    assert!(listed.contains(&joined_id), "the joined guild is in READY");
    assert_eq!(listed.len(), ids(&ready["d"]["guilds"]).len(), "one left, one joined");
    assert!(!after.contains_key(&lefts));
    assert_eq!(after[&joined_id]["name"], "Joined Guild");
    let g_after = &after[&gs];
    assert_eq!(g_after["name"], "Renamed Guild");
    assert!(ids(&g_after["channels"]).contains(&"1300000000000000001".to_owned()));
    assert!(ids(&g_after["roles"]).contains(&"1300000000000000002".to_owned()));
    let members: Vec<&str> =
        g_after["members"].as_array().unwrap().iter().map(|m| m["user"]["id"].as_str().unwrap()).collect();
    assert!(members.contains(&"1300000000000000003"), "the new member is there");
    assert!(!members.contains(&removed_user.as_str()), "the removed member is gone");
    assert_eq!(g_after["member_count"], old["member_count"], "one joined, one left");
    // Everything the guild object carries is still there, as Discord sent it.
    for key in [
        "features",
        "verification_level",
        "owner_id",
        "emojis",
        "stickers",
        "guild_scheduled_events",
        "soundboard_sounds",
    ] {
        assert!(g_after.get(key).is_some(), "`{key}` lost");
    }
}
