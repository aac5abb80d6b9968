//! The Discord side: discovery, identify pacing (local or through a
//! coordinator shared by several proxies), connections, and one gateway
//! state machine per shard.

pub mod connection;
pub mod coordinator;
pub mod discovery;
pub mod identify_queue;
pub mod ratelimit;
pub mod shard;
pub mod tls;
pub mod transport;
pub mod url;
pub mod websocket;
