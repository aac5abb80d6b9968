//! What a client is sent of a dispatch its intents let through, when that
//! differs from what Discord sent the proxy: a live GUILD_CREATE (a guild
//! joined or back from an outage) lists members, presences and voice
//! states by the client's GUILD_MEMBERS, GUILD_PRESENCES and
//! GUILD_VOICE_STATES (snapshots get the same cut from the cache,
//! [`crate::cache::ShardCache::freeze_guilds_for`]); a guild message comes
//! without its content for a client without MESSAGE_CONTENT.

use crate::{
    cache::compact::{array_elements, object_members, write_members},
    protocol::{
        dispatch::Dispatch,
        intents::{ClientIntents, GuildView, MembersView},
        scan,
    },
};
use std::rc::Rc;

/// How a dispatch is cut for a client: clients with the same cut share one dispatch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// A GUILD_CREATE with the lists of this view.
    Guild(GuildView),
    /// A guild message without its content.
    Content,
}

/// The cut a client served `intents` needs of `dispatch` (which its intents
/// let through); `None`: it is sent as Discord sent it.
pub fn cut_for(dispatch: &Dispatch, intents: ClientIntents) -> Option<Cut> {
    let class = dispatch.name_class();
    if class.guild_create {
        let view = intents.guild_view();
        (view != GuildView::FULL).then_some(Cut::Guild(view))
    } else if class.message_content && intents.strips_content() {
        Some(Cut::Content)
    } else {
        None
    }
}

/// The dispatch a client served `intents` is sent for `dispatch`: the same
/// one, or its cut.
pub fn view_for(dispatch: &Rc<Dispatch>, intents: ClientIntents, bot: Option<u64>) -> Rc<Dispatch> {
    match cut_for(dispatch, intents) {
        Some(cut) => apply(dispatch, cut, bot),
        None => dispatch.clone(),
    }
}

/// `dispatch` cut by `cut`, in its place (replay index, target); the
/// dispatch itself when there is nothing to cut or it is not an object.
pub fn apply(dispatch: &Rc<Dispatch>, cut: Cut, bot: Option<u64>) -> Rc<Dispatch> {
    let raw = dispatch.raw();
    let Some(fields) = scan::scan(raw).ok() else { return dispatch.clone() };
    let (Some(t), Some(d)) = (fields.event_name(raw), fields.d.map(|r| &raw[r])) else { return dispatch.clone() };
    let new_d = match cut {
        Cut::Guild(view) => guild_create(d, view, bot),
        Cut::Content => without_content(d, bot),
    };
    let Some(new_d) = new_d else { return dispatch.clone() };
    let mut cut = Dispatch::build(&String::from_utf8_lossy(t), &new_d);
    if let Some(index) = dispatch.index() {
        cut.set_index(index);
    }
    if let Some(target) = dispatch.target() {
        cut = cut.for_session(target);
    }
    Rc::new(cut)
}

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
pub fn guild_create(d: &[u8], view: GuildView, bot: Option<u64>) -> Option<Vec<u8>> {
    let members = object_members(d)?;
    let voice_users: Vec<u64> = match members.iter().find(|(k, _)| *k == b"voice_states") {
        Some((_, v)) if view.members == MembersView::BotAndVoice => array_elements(v)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|s| snowflake(scan::top_level_value(s, b"user_id")?))
            .collect(),
        _ => Vec::new(),
    };
    let mut kept_members = Vec::new();
    if view.members != MembersView::All {
        let value = members.iter().find(|(k, _)| *k == b"members").map_or(&b"[]"[..], |(_, v)| v);
        let kept = array_elements(value).unwrap_or_default().into_iter().filter(|m| {
            let id = member_user_id(m);
            id.is_some()
                && (id == bot || (view.members == MembersView::BotAndVoice && voice_users.contains(&id.unwrap_or(0))))
        });
        write_array(kept, &mut kept_members);
    }
    let mut out = Vec::with_capacity(d.len());
    let cut = members.iter().map(|&(key, value)| {
        let value: &[u8] = match key {
            b"presences" if !view.presences => b"[]",
            b"voice_states" if !view.voice_states => b"[]",
            b"members" if view.members != MembersView::All => &kept_members,
            _ => value,
        };
        (key, value)
    });
    write_members(cut, &mut out);
    Some(out)
}

/// Fields of a message that Discord leaves empty for an app without
/// MESSAGE_CONTENT, and what it sends instead.
const CONTENT_FIELDS: [(&[u8], &[u8]); 4] =
    [(b"content", b"\"\""), (b"embeds", b"[]"), (b"attachments", b"[]"), (b"components", b"[]")];

/// A MESSAGE_CREATE/UPDATE `d` as an app without MESSAGE_CONTENT gets it:
/// content, embeds, attachments and components empty and no poll, unless
/// the message is a DM, the bot's own, or mentions the bot (Discord's
/// exceptions). `None`: the message is sent as it is.
pub fn without_content(d: &[u8], bot: Option<u64>) -> Option<Vec<u8>> {
    if scan::top_level_value(d, b"guild_id").is_none_or(|v| v == b"null") {
        return None;
    }
    if let Some(bot) = bot {
        let author = scan::top_level_value(d, b"author").and_then(|a| scan::top_level_value(a, b"id"));
        let mentioned = scan::top_level_value(d, b"mentions")
            .is_some_and(|m| memchr::memmem::find(m, format!("\"id\":\"{bot}\"").as_bytes()).is_some());
        if author.is_some_and(|a| a == format!("\"{bot}\"").as_bytes()) || mentioned {
            return None;
        }
    }
    let members = object_members(d)?;
    if !members
        .iter()
        .any(|(k, v)| (*k == b"poll" && *v != b"null") || CONTENT_FIELDS.iter().any(|(f, empty)| k == f && v != empty))
    {
        return None;
    }
    let mut out = Vec::with_capacity(d.len());
    let cut = members.into_iter().filter(|(key, _)| *key != b"poll").map(|(key, value)| {
        let empty = CONTENT_FIELDS.iter().find(|(f, _)| *f == key).map(|(_, empty)| *empty);
        (key, empty.unwrap_or(value))
    });
    write_members(cut, &mut out);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = r#"{"id":"1","name":"g","members":[{"user":{"id":"42"}},{"user":{"id":"7"}},{"user":{"id":"8"}}],"presences":[{"user":{"id":"7"},"status":"online"}],"voice_states":[{"user_id":"8","channel_id":"3"}],"channels":[]}"#;

    fn cut(view: GuildView) -> serde_json::Value {
        serde_json::from_slice(&guild_create(D.as_bytes(), view, Some(42)).unwrap()).unwrap()
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
        let cut = apply(&Rc::new(d), Cut::Guild(view), Some(42));
        assert_eq!(cut.index(), Some(17));
        let v: serde_json::Value = serde_json::from_slice(cut.raw()).unwrap();
        assert_eq!(v["t"], "GUILD_CREATE");
        assert_eq!(member_ids(&v["d"]), ["42"]);
    }

    #[test]
    fn without_message_content_guild_messages_lose_their_content() {
        let msg = |extra: &str| {
            format!(
                r#"{{"id":"1","content":"secret","embeds":[{{"title":"e"}}],"attachments":[],"components":[],"author":{{"id":"7"}},"mentions":[]{extra},"poll":{{"question":{{}}}}}}"#
            )
        };
        let cut: serde_json::Value =
            serde_json::from_slice(&without_content(msg(r#","guild_id":"9""#).as_bytes(), Some(42)).unwrap()).unwrap();
        assert_eq!(cut["content"], "");
        assert_eq!(cut["embeds"], serde_json::json!([]));
        assert!(cut.get("poll").is_none());
        assert_eq!(cut["author"]["id"], "7");
        assert_eq!(cut["guild_id"], "9");
        assert_eq!(without_content(msg("").as_bytes(), Some(42)), None, "a DM keeps its content");
        let mentioned = msg(r#","guild_id":"9""#).replace(r#""mentions":[]"#, r#""mentions":[{"id":"42"}]"#);
        assert_eq!(without_content(mentioned.as_bytes(), Some(42)), None, "a mention of the bot keeps it");
        let own = msg(r#","guild_id":"9""#).replace(r#""author":{"id":"7"}"#, r#""author":{"id":"42"}"#);
        assert_eq!(without_content(own.as_bytes(), Some(42)), None, "the bot's own message keeps it");
    }
}
