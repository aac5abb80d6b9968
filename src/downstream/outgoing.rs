//! What a client's writer is asked to send.

use crate::{cache::guild::FrozenGuild, protocol::dispatch::Dispatch};
use std::rc::Rc;

/// One item in a client's outgoing queue.
#[derive(Debug)]
pub enum Outgoing {
    /// A live dispatch shared with the shard's other clients; the writer
    /// splices in this client's next sequence number.
    Dispatch(Rc<Dispatch>),
    /// Dispatches for this client only (READY, GUILD_DELETEs of a snapshot;
    /// a resume's missed dispatches), sequenced like live ones.
    Snapshot(Vec<Rc<Dispatch>>),
    /// The guilds of a snapshot, each sent as GUILD_CREATE, written from
    /// the cache's compact form as they are sent.
    Guilds(Vec<FrozenGuild>),
    /// A non-dispatch payload built by the proxy (Heartbeat ACK, Invalid Session...).
    Payload(Vec<u8>),
    /// Bytes already framed (pong or close replies produced by the websocket layer).
    Framed(Vec<u8>),
    /// Send a close frame with this code and reason, then end the connection.
    Close(u16, String),
}
