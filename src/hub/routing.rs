//! Replies that belong to one client, not to every client of a shard.
//!
//! - op 8 Request Guild Members: the request leaves with a nonce made by the
//!   proxy; the GUILD_MEMBERS_CHUNKs that come back carry it and go only to
//!   the session that asked, with its own nonce restored.
//! - op 4 Voice State Update: the bot's VOICE_STATE_UPDATE and
//!   VOICE_SERVER_UPDATE go to the session that asked for that guild. The
//!   bot's current voice session per guild is kept, so a restarted client
//!   that asks for the channel it is already in gets the state and server
//!   back at once instead of a broken voice connection.
//! - op 3 Presence Update: the last presence a client set, so a re-identify
//!   upstream keeps it.

use crate::cache::entities::{parse_object, snowflake, write_object, VoiceStateIds};
use serde::Deserialize;
use serde_json::value::RawValue;
use std::{
    collections::HashMap,
    time::{Duration, Instant},
};
use twilight_model::gateway::payload::outgoing::UpdateVoiceState;

/// How long a member request may wait for its chunks before its route is forgotten.
const NONCE_TTL: Duration = Duration::from_secs(300);

/// What of the routing state survives a restart: the kept voice sessions
/// and the presence (pending member requests die with their connections).
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct SavedRouting {
    presence: Option<Box<str>>,
    voice: Vec<(u64, Voice)>,
}

/// A pending member request.
#[derive(Debug)]
struct MemberRequest {
    session: u64,
    client_nonce: Option<Box<RawValue>>,
    at: Instant,
}

/// The bot's voice connection in one guild.
#[derive(Debug, Default, Clone, serde::Serialize, serde::Deserialize)]
struct Voice {
    requester: Option<u64>,
    channel_id: Option<u64>,
    state: Option<Box<str>>,
    server: Option<Box<str>>,
}

/// Routing state of one shard.
#[derive(Debug, Default)]
pub struct Routing {
    counter: u64,
    requests: HashMap<String, MemberRequest>,
    voice: HashMap<u64, Voice>,
    presence: Option<Box<str>>,
}

/// What to do with a client's op 4.
#[derive(Debug, PartialEq, Eq)]
pub enum VoiceAnswer {
    /// Forward it to Discord.
    Forward,
    /// The bot is already there: send these VOICE_STATE_UPDATE and VOICE_SERVER_UPDATE `d`s.
    FromCache(Box<str>, Box<str>),
}

/// Where a dispatch goes.
#[derive(Debug, PartialEq, Eq)]
pub enum Route {
    /// Every client of the shard.
    Broadcast,
    /// Only this session, with this `d` (rewritten when needed).
    Session(u64, Option<Box<str>>),
}

#[derive(Deserialize)]
struct GuildOnly {
    #[serde(deserialize_with = "snowflake")]
    guild_id: u64,
}

#[derive(Deserialize)]
struct ChunkIds<'a> {
    #[serde(borrow, default)]
    nonce: Option<&'a str>,
    #[serde(default)]
    chunk_index: u32,
    #[serde(default)]
    chunk_count: u32,
}

impl Routing {
    /// Rewrites a client's op 8 payload with a proxy nonce; returns the payload to send.
    pub fn member_request(&mut self, session: u64, payload: &[u8]) -> Option<Vec<u8>> {
        let text = std::str::from_utf8(payload).ok()?;
        let top = parse_object(text)?;
        let d = top.iter().find(|(k, _)| k == "d")?.1.get();
        let mut fields = parse_object(d)?;
        let client_nonce = fields.iter().position(|(k, _)| k == "nonce").map(|i| fields.remove(i).1);
        self.counter += 1;
        if self.counter.is_multiple_of(64) {
            // Requests never answered are dropped here too, not only when a
            // session expires (which may never happen on a quiet proxy).
            self.requests.retain(|_, r| r.at.elapsed() < NONCE_TTL);
        }
        let nonce = format!("gp{:x}.{:x}", session, self.counter);
        let nonce_raw = RawValue::from_string(serde_json::to_string(&nonce).ok()?).ok()?;
        fields.push(("nonce".to_owned(), nonce_raw));
        self.requests.insert(nonce, MemberRequest { session, client_nonce, at: Instant::now() });
        let new_d = write_object(fields.iter().map(|(k, v)| (k.as_str(), &**v)));
        Some(format!("{{\"op\":8,\"d\":{new_d}}}").into_bytes())
    }

    /// Routes a GUILD_MEMBERS_CHUNK by its nonce.
    pub fn member_chunk(&mut self, d: &str) -> Route {
        let Ok(ids) = serde_json::from_str::<ChunkIds>(d) else { return Route::Broadcast };
        let Some(nonce) = ids.nonce else { return Route::Broadcast };
        let Some(req) = self.requests.get(nonce) else { return Route::Broadcast };
        let session = req.session;
        let rewritten = parse_object(d).map(|mut fields| {
            fields.retain(|(k, _)| k != "nonce");
            if let Some(n) = &req.client_nonce {
                fields.push(("nonce".to_owned(), n.clone()));
            }
            write_object(fields.iter().map(|(k, v)| (k.as_str(), &**v)))
        });
        if ids.chunk_index + 1 >= ids.chunk_count {
            self.requests.remove(nonce);
        }
        Route::Session(session, rewritten)
    }

    /// Handles a client's op 4: remembers who asked, and answers from the
    /// kept voice session when the bot is already in that channel.
    pub fn voice_request(&mut self, session: u64, payload: &[u8]) -> VoiceAnswer {
        // twilight-model's op 4 (Discord requires every field it has).
        let Ok(UpdateVoiceState { d: req, .. }) = serde_json::from_slice::<UpdateVoiceState>(payload) else {
            return VoiceAnswer::Forward;
        };
        let channel_id = req.channel_id.map(|c| c.get());
        let voice = self.voice.entry(req.guild_id.get()).or_default();
        voice.requester = Some(session);
        match (&voice.state, &voice.server) {
            (Some(state), Some(server)) if channel_id.is_some() && voice.channel_id == channel_id => {
                VoiceAnswer::FromCache(state.clone(), server.clone())
            }
            _ => VoiceAnswer::Forward,
        }
    }

    /// Routes a VOICE_STATE_UPDATE: the bot's own go to the session that asked.
    pub fn voice_state(&mut self, d: &str, bot_id: Option<u64>) -> Route {
        let Ok(ids) = serde_json::from_str::<VoiceStateIds>(d) else { return Route::Broadcast };
        let Some(guild) = ids.guild_id else { return Route::Broadcast };
        if Some(ids.user_id) != bot_id {
            return Route::Broadcast;
        }
        let voice = self.voice.entry(guild).or_default();
        voice.channel_id = ids.channel_id;
        voice.state = Some(d.into());
        if ids.channel_id.is_none() {
            voice.server = None;
        }
        voice.requester.map_or(Route::Broadcast, |s| Route::Session(s, None))
    }

    /// Routes a VOICE_SERVER_UPDATE to the session that asked for that guild.
    pub fn voice_server(&mut self, d: &str) -> Route {
        let Ok(ids) = serde_json::from_str::<GuildOnly>(d) else { return Route::Broadcast };
        let voice = self.voice.entry(ids.guild_id).or_default();
        voice.server = Some(d.into());
        voice.requester.map_or(Route::Broadcast, |s| Route::Session(s, None))
    }

    /// Remembers the presence a client set (the `d` of its op 3).
    pub fn set_presence(&mut self, payload: &[u8]) {
        #[derive(Deserialize)]
        struct P<'a> {
            #[serde(borrow)]
            d: &'a RawValue,
        }
        if let Ok(p) = serde_json::from_slice::<P>(payload) {
            self.presence = Some(p.d.get().into());
        }
    }

    /// The presence a client last set, for Identify.
    pub fn presence(&self) -> Option<&str> {
        self.presence.as_deref()
    }

    /// The part that survives a restart.
    pub fn export(&self) -> SavedRouting {
        SavedRouting {
            presence: self.presence.clone(),
            voice: self.voice.iter().map(|(g, v)| (*g, v.clone())).collect(),
        }
    }

    /// Routing state read back from the state file.
    pub fn import(saved: SavedRouting) -> Self {
        Self { presence: saved.presence, voice: saved.voice.into_iter().collect(), ..Self::default() }
    }

    /// Forgets routes of sessions that no longer exist and requests that were never answered.
    pub fn forget_sessions(&mut self, exists: impl Fn(u64) -> bool) {
        self.requests.retain(|_, r| exists(r.session) && r.at.elapsed() < NONCE_TTL);
        for v in self.voice.values_mut() {
            if v.requester.is_some_and(|s| !exists(s)) {
                v.requester = None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_chunks_go_to_the_asker_with_its_nonce() {
        let mut r = Routing::default();
        let a = r.member_request(1, br#"{"op":8,"d":{"guild_id":"5","query":"","limit":0,"nonce":"mine"}}"#).unwrap();
        let b = r.member_request(2, br#"{"op":8,"d":{"guild_id":"5","query":"","limit":0}}"#).unwrap();
        let a: serde_json::Value = serde_json::from_slice(&a).unwrap();
        let b: serde_json::Value = serde_json::from_slice(&b).unwrap();
        let (na, nb) = (a["d"]["nonce"].as_str().unwrap(), b["d"]["nonce"].as_str().unwrap());
        assert_ne!(na, nb);
        assert!(na.len() <= 32);
        let chunk = format!(r#"{{"guild_id":"5","members":[],"chunk_index":0,"chunk_count":1,"nonce":"{na}"}}"#);
        match r.member_chunk(&chunk) {
            Route::Session(1, Some(d)) => assert!(d.contains(r#""nonce":"mine""#), "{d}"),
            other => panic!("{other:?}"),
        }
        let chunk = format!(r#"{{"guild_id":"5","members":[],"chunk_index":0,"chunk_count":2,"nonce":"{nb}"}}"#);
        match r.member_chunk(&chunk) {
            Route::Session(2, Some(d)) => assert!(!d.contains("nonce"), "{d}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(r.member_chunk(r#"{"guild_id":"5","members":[],"nonce":"other"}"#), Route::Broadcast);
    }

    #[test]
    fn voice_session_is_kept_and_served_again() {
        let mut r = Routing::default();
        let join = br#"{"op":4,"d":{"guild_id":"5","channel_id":"7","self_mute":false,"self_deaf":false}}"#;
        assert_eq!(r.voice_request(1, join), VoiceAnswer::Forward);
        let state = r#"{"guild_id":"5","channel_id":"7","user_id":"99","session_id":"abc"}"#;
        assert_eq!(r.voice_state(state, Some(99)), Route::Session(1, None));
        assert_eq!(r.voice_server(r#"{"guild_id":"5","token":"t","endpoint":"e"}"#), Route::Session(1, None));
        assert_eq!(r.voice_state(r#"{"guild_id":"5","channel_id":"7","user_id":"3"}"#, Some(99)), Route::Broadcast);
        match r.voice_request(2, join) {
            VoiceAnswer::FromCache(s, _) => assert!(s.contains("abc")),
            other => panic!("{other:?}"),
        }
        let leave = br#"{"op":4,"d":{"guild_id":"5","channel_id":null,"self_mute":false,"self_deaf":false}}"#;
        assert_eq!(r.voice_request(2, leave), VoiceAnswer::Forward);
    }
}
