//! gateway-proxy: a thread-per-core Discord gateway proxy.
//!
//! A payload enters from Discord in [`upstream`] (one state machine per
//! shard), updates the [`cache`], is published through the shard's [`hub`]
//! and leaves through [`downstream`] to every client of that shard, with
//! the client's own sequence number spliced in by [`protocol::dispatch`].
#![deny(missing_docs)]

pub mod cache;
pub mod compression;
pub mod config;
pub mod downstream;
pub mod hub;
pub mod logging;
pub mod metrics;
pub mod preflight;
pub mod protocol;
pub mod runtime;
pub mod state_file;
pub mod topology;
pub mod upstream;
