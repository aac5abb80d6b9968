//! The HTTP side of the client port: the request head, the plain endpoints
//! (`/shard-count`) and the websocket upgrade.

use std::fmt::Write as _;

/// Largest request head accepted unless `max_request_head_bytes` says otherwise.
pub const MAX_HEAD: usize = 16 << 10;

/// A parsed request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    /// Method, e.g. `GET`.
    pub method: String,
    /// Path without the query.
    pub path: String,
    /// Raw query string (without `?`).
    pub query: String,
    /// `Sec-WebSocket-Key`, when the request asks for an upgrade.
    pub websocket_key: Option<String>,
    /// Whether `Upgrade: websocket` was present.
    pub upgrade: bool,
    /// `Sec-WebSocket-Version`.
    pub websocket_version: Option<String>,
}

/// Result of trying to parse buffered bytes as a request head.
#[derive(Debug)]
pub enum Parsed {
    /// More bytes needed.
    Partial,
    /// A complete head and its length in bytes.
    Complete(RequestHead, usize),
    /// Not HTTP.
    Invalid(String),
}

/// Parses a request head from the start of `buf`.
pub fn parse_head(buf: &[u8]) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; 48];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(buf) {
        Ok(httparse::Status::Partial) => Parsed::Partial,
        Err(e) => Parsed::Invalid(e.to_string()),
        Ok(httparse::Status::Complete(n)) => {
            let target = req.path.unwrap_or("/");
            let (path, query) = target.split_once('?').unwrap_or((target, ""));
            let header = |name: &str| {
                req.headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case(name))
                    .map(|h| String::from_utf8_lossy(h.value).trim().to_owned())
            };
            let upgrade = header("upgrade").is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
            Parsed::Complete(
                RequestHead {
                    method: req.method.unwrap_or("").to_owned(),
                    path: path.to_owned(),
                    query: query.to_owned(),
                    websocket_key: header("sec-websocket-key"),
                    upgrade,
                    websocket_version: header("sec-websocket-version"),
                },
                n,
            )
        }
    }
}

/// A complete plain HTTP response.
pub fn response(status: u16, reason: &str, content_type: &str, body: &str) -> Vec<u8> {
    response_with(status, reason, content_type, "", body)
}

/// [`response`] with `extra_headers` (each line ending in `\r\n`) in its head.
pub fn response_with(status: u16, reason: &str, content_type: &str, extra_headers: &str, body: &str) -> Vec<u8> {
    let mut out = String::with_capacity(128 + body.len());
    let _ = write!(
        out,
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n{extra_headers}\
         Connection: close\r\n\r\n{body}",
        body.len()
    );
    out.into_bytes()
}

/// The 101 response accepting a websocket upgrade.
pub fn upgrade_response(key: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Accept: {}\r\n\r\n",
        tungstenite::handshake::derive_accept_key(key.as_bytes())
    )
    .into_bytes()
}

/// What the client asked for in the gateway URL's query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayQuery {
    /// API version (`v`), 10 when absent.
    pub version: u8,
    /// Transport compression.
    pub compress: Option<String>,
}

/// Why a gateway query is refused, with the close code to use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryError {
    /// Close code.
    pub code: u16,
    /// Close reason.
    pub reason: String,
}

/// Validates `v`, `encoding` and `compress`.
pub fn parse_query(query: &str) -> Result<GatewayQuery, QueryError> {
    let mut version = 10u8;
    let mut compress = None;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "v" => {
                version = match v.parse::<u8>() {
                    Ok(n @ (9 | 10)) => n,
                    _ => return Err(QueryError { code: 4012, reason: format!("invalid API version {v}: use v=10") }),
                }
            }
            "encoding" if v != "json" => {
                return Err(QueryError {
                    code: 4002,
                    reason: format!("encoding={v} is not supported by this proxy: use encoding=json"),
                })
            }
            "compress" => match v {
                "zlib-stream" | "zstd-stream" => compress = Some(v.to_owned()),
                "" => {}
                _ => {
                    return Err(QueryError {
                        code: 4002,
                        reason: format!("compress={v} is not supported: use zlib-stream, zstd-stream or none"),
                    })
                }
            },
            _ => {}
        }
    }
    Ok(GatewayQuery { version, compress })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_upgrade_request() {
        let raw = b"GET /?v=10&encoding=json HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\nrest";
        let Parsed::Complete(head, n) = parse_head(raw) else { panic!() };
        assert_eq!(&raw[n..], b"rest");
        assert!(head.upgrade);
        assert_eq!(head.path, "/");
        assert_eq!(head.query, "v=10&encoding=json");
        let resp = String::from_utf8(upgrade_response(head.websocket_key.as_deref().unwrap())).unwrap();
        assert!(resp.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="));
    }

    #[test]
    fn query_rules() {
        assert_eq!(
            parse_query("v=10&encoding=json&compress=zlib-stream").unwrap().compress.as_deref(),
            Some("zlib-stream")
        );
        assert_eq!(parse_query("").unwrap().version, 10);
        assert_eq!(parse_query("encoding=etf").unwrap_err().code, 4002);
        assert_eq!(parse_query("v=3").unwrap_err().code, 4012);
        assert_eq!(parse_query("compress=zstd").unwrap_err().code, 4002);
        assert_eq!(parse_query("compress=zstd-stream").unwrap().compress.as_deref(), Some("zstd-stream"));
    }
}
