//! Gateway close codes and what each one means for reconnecting.

/// A close code Discord (or the proxy, towards its clients) uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum CloseCode {
    /// Unknown error; resume.
    UnknownError = 4000,
    /// Unknown opcode; resume.
    UnknownOpcode = 4001,
    /// Payload could not be decoded or was too large; resume.
    DecodeError = 4002,
    /// Payload before Identify; resume.
    NotAuthenticated = 4003,
    /// Wrong token; fatal.
    AuthenticationFailed = 4004,
    /// Second Identify; resume.
    AlreadyAuthenticated = 4005,
    /// Resume with an invalid sequence; identify again.
    InvalidSequence = 4007,
    /// Too many payloads; resume.
    RateLimited = 4008,
    /// Session timed out; identify again.
    SessionTimedOut = 4009,
    /// Invalid shard; fatal.
    InvalidShard = 4010,
    /// Sharding required; fatal.
    ShardingRequired = 4011,
    /// Invalid API version; fatal.
    InvalidApiVersion = 4012,
    /// Invalid intents; fatal.
    InvalidIntents = 4013,
    /// Disallowed intents; fatal.
    DisallowedIntents = 4014,
}

/// What a shard must do after its connection closed with a given code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reconnect {
    /// Reconnect and resume the session.
    Resume,
    /// Reconnect and identify a new session.
    Identify,
    /// Do not reconnect: the configuration is wrong.
    Fatal,
}

impl CloseCode {
    /// The numeric code.
    pub fn code(self) -> u16 {
        self as u16
    }

    /// What to do when Discord closes with `code` (any code, known or not).
    pub fn reconnect_for(code: u16) -> Reconnect {
        match code {
            1000 | 1001 | 4007 | 4009 => Reconnect::Identify,
            4004 | 4010..=4014 => Reconnect::Fatal,
            _ => Reconnect::Resume,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_matches_discord() {
        for c in [4000, 4001, 4002, 4003, 4005, 4008, 1006, 1011, 4999] {
            assert_eq!(CloseCode::reconnect_for(c), Reconnect::Resume, "{c}");
        }
        for c in [1000, 1001, 4007, 4009] {
            assert_eq!(CloseCode::reconnect_for(c), Reconnect::Identify, "{c}");
        }
        for c in [4004, 4010, 4011, 4012, 4013, 4014] {
            assert_eq!(CloseCode::reconnect_for(c), Reconnect::Fatal, "{c}");
        }
        assert_eq!(CloseCode::DisallowedIntents.code(), 4014);
    }
}
