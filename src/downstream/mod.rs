//! The client side: the port bots connect to, the gateway they see, and the
//! path of each dispatch from a shard's hub onto a client's socket.

pub mod admission;
pub mod client;
pub mod client_view;
pub mod frames;
pub mod http;
pub mod identify;
pub mod listener;
pub mod outgoing;
pub mod queue;
pub mod session;
pub mod snapshot;
pub mod writer;
