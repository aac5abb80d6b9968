//! Opening a gateway websocket: DNS on glommio's blocking pool (never on the
//! executor), TCP on glommio's io_uring sockets, TLS with rustls when the
//! URL is `wss`, and the websocket handshake (`websocket.rs`).

use super::{transport::Compression, url::Endpoint};
use futures_lite::io::{AsyncRead, AsyncWrite};
use futures_rustls::{client::TlsStream, TlsConnector};
use glommio::net::TcpStream;
use std::{
    io,
    net::{SocketAddr, ToSocketAddrs},
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

/// Time allowed for DNS + TCP + TLS + websocket handshake.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// A gateway socket, with or without TLS.
pub enum GatewayStream {
    /// `ws://` (the fake Discord in tests).
    Plain(TcpStream),
    /// `wss://` (Discord).
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for GatewayStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for GatewayStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_flush(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_close(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_close(cx),
        }
    }
}

pub use super::websocket::GatewaySocket;

/// Time one address of a host gets before the next one is tried. Discord's
/// name has several (IPv4 and IPv6); on a host whose IPv6 route is broken
/// the first may never answer, and the others must still be reached within
/// [`CONNECT_TIMEOUT`].
const ADDRESS_TIMEOUT: Duration = Duration::from_secs(4);

/// Resolves a host off the executor thread (IP literals need no lookup):
/// every address, in the resolver's order of preference with the families
/// alternating (RFC 8305's interleaving), so that after a first IPv6
/// address that does not answer, an IPv4 one comes next rather than the
/// rest of the IPv6 ones.
pub async fn resolve(host: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
    if let Ok(ip) = host.parse::<std::net::IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    let host = host.to_owned();
    crate::runtime::offload::run_blocking("dns", move || {
        let mut addrs: Vec<SocketAddr> = Vec::new();
        for addr in (host.as_str(), port).to_socket_addrs()? {
            if !addrs.contains(&addr) {
                addrs.push(addr);
            }
        }
        if addrs.is_empty() {
            return Err(io::Error::new(io::ErrorKind::NotFound, format!("{host} does not resolve")));
        }
        Ok(interleave_families(addrs))
    })
    .await
    .unwrap_or_else(|| Err(io::Error::other("DNS helper thread failed")))
}

/// `addrs` with IPv6 and IPv4 alternating, each family in its own order,
/// starting with the family of the first.
fn interleave_families(addrs: Vec<SocketAddr>) -> Vec<SocketAddr> {
    let Some(first) = addrs.first() else { return addrs };
    let first_v6 = first.is_ipv6();
    let (mut lead, mut other): (Vec<_>, Vec<_>) = addrs.into_iter().partition(|a| a.is_ipv6() == first_v6);
    let mut out = Vec::with_capacity(lead.len() + other.len());
    lead.reverse();
    other.reverse();
    loop {
        match (lead.pop(), other.pop()) {
            (None, None) => return out,
            (a, b) => out.extend(a.into_iter().chain(b)),
        }
    }
}

/// Opens TCP to the first of `addrs` that accepts, in order; each but the
/// last gets [`ADDRESS_TIMEOUT`]. The error names every address that failed.
pub async fn connect_any(addrs: &[SocketAddr]) -> io::Result<TcpStream> {
    let mut failures = Vec::new();
    for (i, addr) in addrs.iter().enumerate() {
        let attempt = if i + 1 < addrs.len() {
            TcpStream::connect_timeout(*addr, ADDRESS_TIMEOUT).await
        } else {
            TcpStream::connect(*addr).await
        };
        match attempt {
            Ok(tcp) => {
                if !failures.is_empty() {
                    log::warn!("connected to {addr} after {}", failures.join("; "));
                }
                return Ok(tcp);
            }
            Err(e) => {
                let e = io::Error::from(e);
                let kind = e.kind();
                failures.push(format!("{addr}: {e}"));
                if i + 1 == addrs.len() {
                    return Err(io::Error::new(kind, failures.join("; ")));
                }
            }
        }
    }
    Err(io::Error::new(io::ErrorKind::InvalidInput, "no address to connect to"))
}

/// Connects to `url` (a gateway URL; the query `v=10&encoding=json` is
/// added, with `compress=` when `compression` asks for it).
pub async fn connect(url: &str, compression: Compression) -> io::Result<GatewaySocket> {
    let endpoint = Endpoint::parse(url)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?
        .with_query(compression.query());
    glommio::timer::timeout(CONNECT_TIMEOUT, async {
        let addrs = resolve(&endpoint.host, endpoint.port).await?;
        let tcp = connect_any(&addrs).await?;
        tcp.set_nodelay(true)?;
        let stream = if endpoint.tls {
            let name = rustls_pki_types::ServerName::try_from(endpoint.host.clone())
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
            let connector = TlsConnector::from(Arc::new(super::tls::client_config()));
            let tls = connector.connect(name, tcp).await.map_err(|e| super::tls::explain(&endpoint.host, e))?;
            GatewayStream::Tls(Box::new(tls))
        } else {
            GatewayStream::Plain(tcp)
        };
        Ok(GatewaySocket::handshake(stream, &endpoint.host_header(), &endpoint.path, compression).await?)
    })
    .await
    .map_err(|e| match e {
        glommio::GlommioError::IoError(e) => e,
        other => io::Error::new(io::ErrorKind::TimedOut, other.to_string()),
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn resolves_names_off_the_executor_and_literals_directly() {
        glommio::LocalExecutor::default().run(async {
            assert_eq!(super::resolve("127.0.0.1", 80).await.unwrap()[0].port(), 80);
            let addrs = super::resolve("localhost", 443).await.expect("localhost resolves");
            assert!(!addrs.is_empty() && addrs.iter().all(|a| a.ip().is_loopback() && a.port() == 443));
        });
    }

    #[test]
    fn address_families_alternate_from_the_first() {
        let a = |s: &str| s.parse::<std::net::SocketAddr>().unwrap();
        let (v6a, v6b, v6c, v4a, v4b) = (a("[::1]:1"), a("[::2]:1"), a("[::3]:1"), a("10.0.0.1:1"), a("10.0.0.2:1"));
        assert_eq!(super::interleave_families(vec![v6a, v6b, v6c, v4a, v4b]), vec![v6a, v4a, v6b, v4b, v6c]);
        assert_eq!(super::interleave_families(vec![v4a, v4b, v6a]), vec![v4a, v6a, v4b]);
        assert_eq!(super::interleave_families(vec![v4b, v4a]), vec![v4b, v4a]);
        assert!(super::interleave_families(Vec::new()).is_empty());
    }

    /// A port nothing listens on (bound, then closed).
    fn closed_port() -> std::net::SocketAddr {
        std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
    }

    #[test]
    fn the_next_address_is_tried_when_one_refuses() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let open = listener.local_addr().unwrap();
        let dead = closed_port();
        glommio::LocalExecutor::default().run(async move {
            let tcp = super::connect_any(&[dead, open]).await.expect("the second address accepts");
            assert_eq!(tcp.peer_addr().unwrap(), open);
            let e = super::connect_any(&[dead, closed_port()]).await.expect_err("nothing accepts");
            assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused);
            assert!(e.to_string().starts_with(&format!("{dead}: ")), "names each address: {e}");
            assert_eq!(e.to_string().matches("127.0.0.1:").count(), 2, "{e}");
        });
    }
}
