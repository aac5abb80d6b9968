//! The gateway protocol as both sides speak it: opcodes, close codes, and
//! cheap inspection and rewriting of payloads.

pub mod close_code;
pub mod dispatch;
pub mod intents;
pub mod scan;

/// Gateway opcodes (Discord API v10).
pub mod op {
    /// An event dispatched by the server.
    pub const DISPATCH: u8 = 0;
    /// Keep-alive, in both directions.
    pub const HEARTBEAT: u8 = 1;
    /// Starts a session.
    pub const IDENTIFY: u8 = 2;
    /// Updates the bot's presence.
    pub const PRESENCE_UPDATE: u8 = 3;
    /// Joins, moves or leaves a voice channel.
    pub const VOICE_STATE_UPDATE: u8 = 4;
    /// Resumes a session.
    pub const RESUME: u8 = 6;
    /// Server asks the client to reconnect and resume.
    pub const RECONNECT: u8 = 7;
    /// Asks for guild members (answered by GUILD_MEMBERS_CHUNK).
    pub const REQUEST_GUILD_MEMBERS: u8 = 8;
    /// The session is invalid; `d` says whether it may be resumed.
    pub const INVALID_SESSION: u8 = 9;
    /// First message of a connection, with the heartbeat interval.
    pub const HELLO: u8 = 10;
    /// Answer to a heartbeat.
    pub const HEARTBEAT_ACK: u8 = 11;
    /// Asks for a guild's soundboard sounds.
    pub const REQUEST_SOUNDBOARD_SOUNDS: u8 = 31;
}
