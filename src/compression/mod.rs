//! Transport compression towards clients.

pub mod zlib_stream;
