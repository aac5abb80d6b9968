//! What a client is sent of a dispatch its intents let through, when that
//! differs from what Discord sent the proxy: a live GUILD_CREATE (a guild
//! joined or back from an outage) lists members, presences and voice
//! states by the client's GUILD_MEMBERS, GUILD_PRESENCES and
//! GUILD_VOICE_STATES (snapshots get the same cut from the cache,
//! [`crate::cache::ShardCache::freeze_guilds_for`]); a guild message comes
//! without its content for a client without MESSAGE_CONTENT.

use crate::{
    cache::compact::{array_elements, object_members},
    protocol::{
        dispatch::Dispatch,
        intents::{self, ClientIntents, GuildView, MembersView},
        scan,
    },
};
use std::rc::Rc;

/// The snowflake in a JSON string value such as `"123"`.
fn snowflake(value: &[u8]) -> Option<u64> {
    scan::parse_u64(value.strip_prefix(b"\"")?.strip_suffix(b"\"")?)
}

fn member_user_id(member: &[u8]) -> Option<u64> {
    snowflake(scan::top_level_value(scan::top_level_value(member, b"user")?, b"id")?)
}

fn write_array<'a>(elements: impl Iterator<Item = &'a [u8]>, out: &mut Vec<u8>) {
    out.push(b'[');
    for (n, e) in elements.enumerate() {
        if n > 0 {
            out.push(b',');
        }
        out.extend_from_slice(e);
    }
    out.push(b']');
}

/// GUILD_CREATE's `d` as a client of `view` is sent it; `None` when `d` is
/// not an object (then it is relayed as it is).
pub fn rewrite(d: &[u8], view: GuildView, bot: Option<u64>) -> Option<Vec<u8>> {
    let members = object_members(d)?;
    let voice_users: Vec<u64> = match members.iter().find(|(k, _)| *k == b"voice_states") {
        Some((_, v)) if view.members == MembersView::BotAndVoice => array_elements(v)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|s| snowflake(scan::top_level_value(s, b"user_id")?))
            .collect(),
        _ => Vec::new(),
    };
    let mut out = Vec::with_capacity(d.len());
    out.push(b'{');
    for (n, (key, value)) in members.iter().enumerate() {
        if n > 0 {
            out.push(b',');
        }
        out.push(b'"');
        out.extend_from_slice(key);
        out.extend_from_slice(b"\":");
        match *key {
            b"presences" if !view.presences => out.extend_from_slice(b"[]"),
            b"voice_states" if !view.voice_states => out.extend_from_slice(b"[]"),
            b"members" if view.members != MembersView::All => {
                let kept = array_elements(value).unwrap_or_default().into_iter().filter(|m| {
                    let id = member_user_id(m);
                    id.is_some()
                        && (id == bot
                            || (view.members == MembersView::BotAndVoice && voice_users.contains(&id.unwrap_or(0))))
                });
                write_array(kept, &mut out);
            }
            _ => out.extend_from_slice(value),
        }
    }
    out.push(b'}');
    Some(out)
}

/// The dispatch a client served `intents` is sent for `dispatch` (which its
/// intents let through): the same one, or a cut of it in its place.
pub fn view_for(dispatch: &Rc<Dispatch>, intents: ClientIntents, bot: Option<u64>) -> Rc<Dispatch> {
    let class = dispatch.name_class();
    if class.guild_create {
        guild_create_for(dispatch, intents.guild_view(), bot)
    } else if class.message_content && intents.strips_content() {
        message_for(dispatch, bot)
    } else {
        dispatch.clone()
    }
}

/// Which cut [`view_for`] makes for `intents`: clients with the same key get the same dispatch.
pub fn view_key(dispatch: &Dispatch, intents: ClientIntents) -> Option<(GuildView, bool)> {
    let class = dispatch.name_class();
    if class.guild_create {
        let view = intents.guild_view();
        (view != GuildView::FULL).then_some((view, false))
    } else if class.message_content && intents.strips_content() {
        Some((GuildView::FULL, true))
    } else {
        None
    }
}

/// A MESSAGE_CREATE/UPDATE without its content fields (when Discord would
/// empty them), in the place of the one Discord sent.
fn message_for(dispatch: &Rc<Dispatch>, bot: Option<u64>) -> Rc<Dispatch> {
    let raw = dispatch.raw();
    let Some(fields) = scan::scan(raw).ok() else { return dispatch.clone() };
    let (Some(t), Some(d)) = (fields.event_name(raw), fields.d.map(|r| &raw[r])) else { return dispatch.clone() };
    let Some(new_d) = intents::strip_content(d, bot) else { return dispatch.clone() };
    in_place_of(dispatch, Dispatch::build(&String::from_utf8_lossy(t), &new_d))
}

fn in_place_of(original: &Dispatch, mut cut: Dispatch) -> Rc<Dispatch> {
    if let Some(index) = original.index() {
        cut.set_index(index);
    }
    if let Some(target) = original.target() {
        cut = cut.for_session(target);
    }
    Rc::new(cut)
}

/// The GUILD_CREATE dispatch a client of `view` is sent, in the place (replay
/// index) of the one Discord sent.
pub fn guild_create_for(dispatch: &Rc<Dispatch>, view: GuildView, bot: Option<u64>) -> Rc<Dispatch> {
    if view == GuildView::FULL {
        return dispatch.clone();
    }
    let raw = dispatch.raw();
    let Some(d) = scan::scan(raw).ok().and_then(|f| f.d).map(|r| &raw[r]) else { return dispatch.clone() };
    let Some(new_d) = rewrite(d, view, bot) else { return dispatch.clone() };
    in_place_of(dispatch, Dispatch::build("GUILD_CREATE", &new_d))
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = r#"{"id":"1","name":"g","members":[{"user":{"id":"42"}},{"user":{"id":"7"}},{"user":{"id":"8"}}],"presences":[{"user":{"id":"7"},"status":"online"}],"voice_states":[{"user_id":"8","channel_id":"3"}],"channels":[]}"#;

    fn cut(view: GuildView) -> serde_json::Value {
        serde_json::from_slice(&rewrite(D.as_bytes(), view, Some(42)).unwrap()).unwrap()
    }

    fn member_ids(v: &serde_json::Value) -> Vec<&str> {
        v["members"].as_array().unwrap().iter().map(|m| m["user"]["id"].as_str().unwrap()).collect()
    }

    #[test]
    fn lists_follow_the_view() {
        let full = cut(GuildView::FULL);
        assert_eq!(full, serde_json::from_str::<serde_json::Value>(D).unwrap());
        let bot_only = cut(GuildView { members: MembersView::BotOnly, presences: false, voice_states: false });
        assert_eq!(member_ids(&bot_only), ["42"]);
        assert_eq!(bot_only["presences"], serde_json::json!([]));
        assert_eq!(bot_only["voice_states"], serde_json::json!([]));
        assert_eq!(bot_only["name"], "g");
        let voice = cut(GuildView { members: MembersView::BotAndVoice, presences: false, voice_states: true });
        assert_eq!(member_ids(&voice), ["42", "8"]);
        assert_eq!(voice["voice_states"].as_array().unwrap().len(), 1);
    }

    #[test]
    fn the_cut_dispatch_keeps_its_place() {
        let mut d = Dispatch::build("GUILD_CREATE", D.as_bytes());
        d.set_index(17);
        let view = GuildView { members: MembersView::BotOnly, presences: false, voice_states: false };
        let cut = guild_create_for(&Rc::new(d), view, Some(42));
        assert_eq!(cut.index(), Some(17));
        let v: serde_json::Value = serde_json::from_slice(cut.raw()).unwrap();
        assert_eq!(v["t"], "GUILD_CREATE");
        assert_eq!(member_ids(&v["d"]), ["42"]);
    }
}
