//! Transport compression towards clients.

pub mod zlib_message;
pub mod zlib_stream;
pub mod zstd_stream;
