//! The few URL forms the proxy dials: `http(s)://host[:port]/path` for REST and
//! `ws(s)://host[:port][/path][?query]` for the gateway.

use std::fmt;

/// A parsed URL the proxy can connect to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Whether the connection uses TLS (`https`/`wss`).
    pub tls: bool,
    /// Host name or IP literal (without brackets).
    pub host: String,
    /// Port, defaulted from the scheme.
    pub port: u16,
    /// Path and query, starting with `/`.
    pub path: String,
}

/// A URL the proxy cannot dial.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UrlError(pub String);

impl fmt::Display for UrlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unsupported URL `{}`", self.0)
    }
}

impl std::error::Error for UrlError {}

impl Endpoint {
    /// Parses `url`.
    pub fn parse(url: &str) -> Result<Self, UrlError> {
        let err = || UrlError(url.to_owned());
        let (scheme, rest) = url.split_once("://").ok_or_else(err)?;
        let (tls, default_port) = match scheme {
            "http" | "ws" => (false, 80),
            "https" | "wss" => (true, 443),
            _ => return Err(err()),
        };
        let split = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, path) = rest.split_at(split);
        let path = if path.starts_with('?') {
            format!("/{path}")
        } else if path.is_empty() {
            "/".to_owned()
        } else {
            path.to_owned()
        };
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (h, after) = v6.split_once(']').ok_or_else(err)?;
            let port = match after.strip_prefix(':') {
                Some(p) => p.parse().map_err(|_| err())?,
                None if after.is_empty() => default_port,
                None => return Err(err()),
            };
            (h.to_owned(), port)
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h.to_owned(), p.parse().map_err(|_| err())?),
                None => (authority.to_owned(), default_port),
            }
        };
        if host.is_empty() {
            return Err(err());
        }
        Ok(Self { tls, host, port, path })
    }

    /// `host:port` for the Host header (brackets for IPv6, port omitted when default).
    pub fn host_header(&self) -> String {
        let host = if self.host.contains(':') { format!("[{}]", self.host) } else { self.host.clone() };
        if self.port == if self.tls { 443 } else { 80 } {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }

    /// Appends a query string (`v=10&encoding=json`) to the path.
    pub fn with_query(mut self, query: &str) -> Self {
        if !self.path.contains('?') {
            self.path.push('?');
        } else if !self.path.ends_with('?') && !self.path.ends_with('&') {
            self.path.push('&');
        }
        self.path.push_str(query);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_forms() {
        let e = Endpoint::parse("wss://gateway.discord.gg").unwrap();
        assert_eq!((e.tls, e.host.as_str(), e.port, e.path.as_str()), (true, "gateway.discord.gg", 443, "/"));
        let e = Endpoint::parse("http://127.0.0.1:8800/api/v10").unwrap();
        assert_eq!(
            (e.tls, e.port, e.path.as_str(), e.host_header().as_str()),
            (false, 8800, "/api/v10", "127.0.0.1:8800")
        );
        let e = Endpoint::parse("ws://[::1]:9/?a=b").unwrap().with_query("v=10");
        assert_eq!((e.host.as_str(), e.path.as_str(), e.host_header().as_str()), ("::1", "/?a=b&v=10", "[::1]:9"));
        assert!(Endpoint::parse("ftp://x").is_err());
        assert!(Endpoint::parse("ws://:80").is_err());
    }
}
