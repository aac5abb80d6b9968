//! What a client's writer is asked to send.

use crate::protocol::dispatch::Dispatch;
use std::rc::Rc;

/// One item in a client's outgoing queue.
#[derive(Debug)]
pub enum Outgoing {
    /// A live dispatch shared with the shard's other clients; the writer
    /// splices in this client's next sequence number.
    Dispatch(Rc<Dispatch>),
    /// READY and the GUILD_CREATEs built from the cache, sequenced like dispatches.
    Snapshot(Vec<Rc<Dispatch>>),
    /// A non-dispatch payload built by the proxy (Heartbeat ACK, Invalid Session...).
    Payload(Vec<u8>),
    /// Bytes already framed (pong or close replies produced by the websocket layer).
    Framed(Vec<u8>),
    /// Send a close frame with this code and reason, then end the connection.
    Close(u16, String),
}
