//! `GET /gateway/bot` at start-up: the shard count, the gateway URL and the
//! identify budget. It runs once on the main thread before any executor
//! exists, so a plain blocking client (std TCP + rustls) is the right tool.

use super::url::Endpoint;
use serde::Deserialize;
use std::{
    io::{Read, Write},
    net::{TcpStream, ToSocketAddrs},
    sync::Arc,
    time::Duration,
};

/// `session_start_limit` from `/gateway/bot`.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
pub struct SessionStartLimit {
    /// Identifies allowed per day.
    pub total: u32,
    /// Identifies left.
    pub remaining: u32,
    /// Milliseconds until `remaining` resets.
    pub reset_after: u64,
    /// Shards that may identify in parallel (one per bucket every 5 s).
    pub max_concurrency: u32,
}

/// The answer of `/gateway/bot`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct GatewayBot {
    /// Gateway URL to connect to.
    pub url: String,
    /// Recommended shard count.
    pub shards: u32,
    /// Identify budget.
    pub session_start_limit: SessionStartLimit,
}

/// Why discovery failed.
#[derive(Debug)]
pub enum DiscoveryError {
    /// The URL is not usable.
    Url(super::url::UrlError),
    /// Network or TLS failure.
    Io(std::io::Error),
    /// Discord answered with an error status.
    Status(u16, String),
    /// The body is not what `/gateway/bot` returns.
    Body(String),
}

impl std::fmt::Display for DiscoveryError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Url(e) => write!(f, "{e}"),
            Self::Io(e) => write!(f, "request failed: {e}"),
            Self::Status(401, _) => write!(f, "Discord rejected the token (401 Unauthorized): check `token`"),
            Self::Status(code, body) => write!(f, "Discord answered HTTP {code}: {body}"),
            Self::Body(e) => write!(f, "unexpected response body: {e}"),
        }
    }
}

impl std::error::Error for DiscoveryError {}

impl From<std::io::Error> for DiscoveryError {
    fn from(e: std::io::Error) -> Self {
        Self::Io(e)
    }
}

/// Fetches `{api_url}/gateway/bot` with the bot token.
pub fn fetch_gateway_bot(api_url: &str, token: &str) -> Result<GatewayBot, DiscoveryError> {
    let endpoint = Endpoint::parse(&format!("{api_url}/gateway/bot")).map_err(DiscoveryError::Url)?;
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bot {token}\r\nUser-Agent: DiscordBot (https://github.com/gateway-proxy, 0.1)\r\nAccept: application/json\r\nConnection: close\r\n\r\n",
        endpoint.path,
        endpoint.host_header()
    );
    let addr = (endpoint.host.as_str(), endpoint.port).to_socket_addrs()?.next().ok_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::NotFound, format!("{} does not resolve", endpoint.host))
    })?;
    let tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(10))?;
    tcp.set_read_timeout(Some(Duration::from_secs(20)))?;
    let mut response = Vec::new();
    if endpoint.tls {
        let name = rustls_pki_types::ServerName::try_from(endpoint.host.clone())
            .map_err(|e| DiscoveryError::Io(std::io::Error::new(std::io::ErrorKind::InvalidInput, e)))?;
        let conn = rustls::ClientConnection::new(Arc::new(crate::upstream::tls::client_config()), name)
            .map_err(|e| DiscoveryError::Io(std::io::Error::other(e)))?;
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        // The handshake runs inside the first write.
        tls.write_all(request.as_bytes()).map_err(|e| super::tls::explain(&endpoint.host, e))?;
        read_to_end_lenient(&mut tls, &mut response)?;
    } else {
        let mut tcp = tcp;
        tcp.write_all(request.as_bytes())?;
        read_to_end_lenient(&mut tcp, &mut response)?;
    }
    let (status, body) = parse_response(&response)?;
    if status != 200 {
        return Err(DiscoveryError::Status(status, String::from_utf8_lossy(&body).into_owned()));
    }
    serde_json::from_slice(&body).map_err(|e| DiscoveryError::Body(e.to_string()))
}

/// Reads until EOF; servers that close TLS without close_notify still gave a full body.
fn read_to_end_lenient(r: &mut impl Read, out: &mut Vec<u8>) -> std::io::Result<()> {
    match r.read_to_end(out) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !out.is_empty() => Ok(()),
        Err(e) => Err(e),
    }
}

/// Splits an HTTP/1.1 response into status and (de-chunked) body.
fn parse_response(raw: &[u8]) -> Result<(u16, Vec<u8>), DiscoveryError> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut resp = httparse::Response::new(&mut headers);
    let head_len = match resp.parse(raw) {
        Ok(httparse::Status::Complete(n)) => n,
        _ => return Err(DiscoveryError::Body("incomplete HTTP response".into())),
    };
    let status = resp.code.unwrap_or(0);
    let chunked = resp.headers.iter().any(|h| {
        h.name.eq_ignore_ascii_case("transfer-encoding")
            && String::from_utf8_lossy(h.value).to_ascii_lowercase().contains("chunked")
    });
    let mut body = raw[head_len..].to_vec();
    if chunked {
        body = dechunk(&body).ok_or_else(|| DiscoveryError::Body("bad chunked encoding".into()))?;
    }
    Ok((status, body))
}

fn dechunk(mut data: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = data.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&data[..line_end]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(data.get(..size)?);
        data = data.get(size + 2..)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_plain_and_chunked() {
        let plain = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}";
        assert_eq!(parse_response(plain).unwrap(), (200, b"{}".to_vec()));
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\n{\"a\r\n4\r\n\":1}\r\n0\r\n\r\n";
        assert_eq!(parse_response(chunked).unwrap(), (200, b"{\"a\":1}".to_vec()));
    }
}
