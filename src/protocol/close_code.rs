//! Gateway close codes and what each one means for reconnecting.

/// A close code Discord (or the proxy, towards its clients) uses: the
/// field's own type, whose `can_reconnect` says which codes are fatal.
pub use twilight_model::gateway::CloseCode;

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

/// What to do when Discord closes with `code` (any code, known or not):
/// twilight's table says which codes are fatal; of the others, an invalid
/// sequence, a timed-out session and a normal close (1000/1001, which end
/// Discord's session) need a new Identify, and the rest resume.
pub fn reconnect_for(code: u16) -> Reconnect {
    match CloseCode::try_from(code) {
        Ok(known) if !known.can_reconnect() => Reconnect::Fatal,
        Ok(CloseCode::InvalidSequence | CloseCode::SessionTimedOut) => Reconnect::Identify,
        _ if matches!(code, 1000 | 1001) => Reconnect::Identify,
        _ => Reconnect::Resume,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_matches_discord() {
        for c in [4000, 4001, 4002, 4003, 4005, 4008, 1006, 1011, 4999] {
            assert_eq!(reconnect_for(c), Reconnect::Resume, "{c}");
        }
        for c in [1000, 1001, 4007, 4009] {
            assert_eq!(reconnect_for(c), Reconnect::Identify, "{c}");
        }
        for c in [4004, 4010, 4011, 4012, 4013, 4014] {
            assert_eq!(reconnect_for(c), Reconnect::Fatal, "{c}");
        }
        assert_eq!(CloseCode::DisallowedIntents as u16, 4014);
    }
}
