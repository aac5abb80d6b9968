//! Validation of what a client sends before and at Identify, with the close
//! codes Discord would use.

use crate::{
    protocol::{
        close_code::CloseCode,
        intents::{names, KNOWN},
        op,
    },
    runtime::Shared,
};
use serde::Deserialize;
use serde_json::value::RawValue;
use twilight_model::gateway::payload::outgoing::resume::ResumeInfo;

/// What to do with one client payload.
#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    /// Answer with a Heartbeat ACK.
    Ack,
    /// Identify accepted.
    Identify(ValidIdentify),
    /// A well-formed Resume, to be checked by the core that owns its session.
    Resume(ResumeRequest),
    /// A Resume that cannot succeed: answer op 9 `d: false` on this connection.
    InvalidSession(String),
    /// A command for Discord (op 3, 4, 8, 31), forwarded as sent.
    Command(u8),
    /// Close the connection with this code and reason.
    Close(u16, String),
}

/// A client's Resume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResumeRequest {
    /// The session to resume.
    pub session_id: String,
    /// The last sequence number the client received.
    pub seq: u64,
    /// The shard the session belongs to (from its id).
    pub shard: u32,
}

/// An accepted Identify.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidIdentify {
    /// The shard the client asked for.
    pub shard: u32,
    /// Whether the client asked for per-message zlib (`compress: true`).
    pub compress: bool,
    /// The intents it asked for (`None`: it sent none).
    pub intents: Option<u64>,
}

#[derive(Deserialize)]
struct Payload<'a> {
    op: Option<i64>,
    #[serde(borrow, default)]
    d: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct IdentifyData {
    token: Option<String>,
    #[serde(default)]
    shard: Option<[u64; 2]>,
    #[serde(default)]
    compress: Option<bool>,
    #[serde(default)]
    intents: Option<serde_json::Value>,
}

fn close(code: CloseCode, reason: impl Into<String>) -> Action {
    Action::Close(code as u16, reason.into())
}

/// Compares tokens in time independent of where they differ.
pub fn token_matches(given: &str, expected: &str) -> bool {
    let given = given.trim();
    let given = given.strip_prefix("Bot ").unwrap_or(given).as_bytes();
    let expected = expected.as_bytes();
    let mut diff = given.len() ^ expected.len();
    for i in 0..given.len().max(expected.len()) {
        let a = given.get(i).copied().unwrap_or(0);
        let b = expected.get(i).copied().unwrap_or(0xff);
        diff |= usize::from(a ^ b);
    }
    diff == 0
}

/// Decides what to do with payload `text`; `identified` says whether the
/// connection already identified.
pub fn classify(text: &[u8], identified: bool, shared: &Shared) -> Action {
    let Ok(payload) = serde_json::from_slice::<Payload>(text) else {
        return close(CloseCode::DecodeError, "decode error: payload is not a JSON object with an `op`");
    };
    let Some(opcode) = payload.op else {
        return close(CloseCode::DecodeError, "decode error: payload has no `op`");
    };
    let opcode = match u8::try_from(opcode) {
        Ok(o) if matches!(o, 1 | 2 | 3 | 4 | 6 | 8 | 31) => o,
        _ => return close(CloseCode::UnknownOpcode, format!("unknown opcode {opcode}")),
    };
    match opcode {
        op::HEARTBEAT => Action::Ack,
        op::IDENTIFY if identified => close(CloseCode::AlreadyAuthenticated, "already authenticated"),
        op::IDENTIFY => validate_identify(payload.d, shared),
        op::RESUME if identified => close(CloseCode::AlreadyAuthenticated, "already authenticated"),
        op::RESUME => validate_resume(payload.d, shared),
        _ if !identified => close(CloseCode::NotAuthenticated, "not authenticated: send Identify first"),
        other => {
            if payload.d.is_none() {
                return close(CloseCode::DecodeError, "decode error: command without `d`");
            }
            Action::Command(other)
        }
    }
}

fn validate_resume(d: Option<&RawValue>, shared: &Shared) -> Action {
    // twilight-model's Resume: token, session_id and seq, all required as Discord documents.
    let Some(ResumeInfo { token, session_id, seq }) = d.and_then(|d| serde_json::from_str(d.get()).ok()) else {
        return close(CloseCode::DecodeError, "decode error: Resume needs token, session_id and seq");
    };
    if shared.config.validate_token && !token_matches(&token, &shared.config.token) {
        return Action::InvalidSession("wrong token".into());
    }
    match super::session::shard_of(&session_id) {
        Some(shard) if shared.is_local(shard) => Action::Resume(ResumeRequest { session_id, seq, shard }),
        _ => Action::InvalidSession("unknown session".into()),
    }
}

/// "shard N is served by URL", cut to what a close frame holds (123 bytes).
fn redirect_reason(shard: u32, url: &str) -> String {
    let mut reason = format!("invalid shard: shard {shard} is served by {url}");
    if reason.len() > 123 {
        let mut end = 123;
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        reason.truncate(end);
    }
    reason
}

fn validate_identify(d: Option<&RawValue>, shared: &Shared) -> Action {
    let Some(data) = d.and_then(|d| serde_json::from_str::<IdentifyData>(d.get()).ok()) else {
        return close(CloseCode::DecodeError, "decode error: invalid Identify payload");
    };
    let Some(token) = data.token else {
        return close(CloseCode::DecodeError, "decode error: Identify without token");
    };
    if shared.config.validate_token && !token_matches(&token, &shared.config.token) {
        return close(CloseCode::AuthenticationFailed, "authentication failed");
    }
    let [id, count] = data.shard.unwrap_or([0, 1]);
    if count != u64::from(shared.total_shards) {
        return close(
            CloseCode::InvalidShard,
            format!("invalid shard: the proxy runs {} shards, not {count}", shared.total_shards),
        );
    }
    let Ok(id) = u32::try_from(id) else { return close(CloseCode::InvalidShard, "invalid shard id") };
    if let Some(url) = shared.shard_map.elsewhere(id) {
        // Another instance of the bot's proxies runs it: say where.
        return close(CloseCode::InvalidShard, redirect_reason(id, url));
    }
    if id >= shared.total_shards || !shared.is_local(id) {
        return close(
            CloseCode::InvalidShard,
            format!(
                "invalid shard: shard {id} is not served here (local shards {}..{})",
                shared.local.start, shared.local.end
            ),
        );
    }
    let intents = match data.intents {
        None | Some(serde_json::Value::Null) => None,
        Some(v) => match v.as_u64() {
            Some(bits) if bits & !KNOWN == 0 => Some(bits),
            _ => return close(CloseCode::InvalidIntents, format!("invalid intent(s): {v}")),
        },
    };
    if let Some(asked) = intents {
        let missing = asked & !shared.config.intents;
        if shared.config.client_intents && shared.config.strict_intents && missing != 0 {
            return close(CloseCode::DisallowedIntents, disallowed_reason(missing));
        }
    }
    Action::Identify(ValidIdentify { shard: id, compress: data.compress.unwrap_or(false), intents })
}

/// "disallowed intent(s): NAMES (the proxy identifies without them)", cut
/// to what a close frame holds.
fn disallowed_reason(missing: u64) -> String {
    let mut reason = format!("disallowed intent(s): {} (not in the proxy's intents)", names(missing));
    if reason.len() > 123 {
        let mut end = 120;
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        reason.truncate(end);
        reason.push_str("...");
    }
    reason
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_comparison() {
        assert!(token_matches("abc", "abc"));
        assert!(token_matches("Bot abc", "abc"));
        assert!(!token_matches("abd", "abc"));
        assert!(!token_matches("ab", "abc"));
        assert!(!token_matches("abcd", "abc"));
        assert!(!token_matches("", "abc"));
    }
}
