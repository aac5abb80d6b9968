//! The HTTP request head of the client port and the gateway query.
//!
//! Input: the first bytes a client sends. A complete head must parse the
//! same from exactly its own bytes (nothing after it matters), its path has
//! no query, and its query is accepted only with a supported version and
//! compression or refused with the close code the proxy documents, in a
//! valid close frame. Any
//! text is also tried as a query directly.

#![no_main]

mod common;

use gateway_proxy::downstream::http::{parse_head, parse_query, upgrade_response, Parsed};
use libfuzzer_sys::fuzz_target;

fn check_query(query: &str) {
    match parse_query(query) {
        Ok(q) => {
            assert!(matches!(q.version, 9 | 10), "{query:?}: {q:?}");
            assert!(matches!(q.compress.as_deref(), None | Some("zlib-stream" | "zstd-stream")), "{query:?}: {q:?}");
        }
        Err(e) => {
            assert!(matches!(e.code, 4002 | 4012), "{query:?}: {e:?}");
            common::check_close_frame(e.code, &e.reason);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    match parse_head(data) {
        Parsed::Complete(head, n) => {
            assert!(n > 0 && n <= data.len(), "head length {n} of {}", data.len());
            assert!(!head.path.contains('?'), "{head:?}");
            match parse_head(&data[..n]) {
                Parsed::Complete(again, m) => assert_eq!((again, m), (head.clone(), n)),
                other => panic!("the head alone parses as {other:?}"),
            }
            check_query(&head.query);
            if let Some(key) = &head.websocket_key {
                let response = upgrade_response(key);
                assert!(response.starts_with(b"HTTP/1.1 101 "));
                assert!(response.ends_with(b"\r\n\r\n"));
            }
        }
        Parsed::Partial | Parsed::Invalid(_) => {}
    }
    if let Ok(text) = std::str::from_utf8(data) {
        check_query(text);
    }
});
