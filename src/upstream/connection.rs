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

/// Resolves a host off the executor thread (IP literals need no lookup).
pub async fn resolve(host: &str, port: u16) -> io::Result<SocketAddr> {
    if let Ok(ip) = host.parse::<std::net::IpAddr>() {
        return Ok(SocketAddr::new(ip, port));
    }
    let host = host.to_owned();
    crate::runtime::offload::run_blocking("dns", move || {
        (host.as_str(), port)
            .to_socket_addrs()?
            .next()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("{host} does not resolve")))
    })
    .await
    .unwrap_or_else(|| Err(io::Error::other("DNS helper thread failed")))
}

/// Connects to `url` (a gateway URL; the query `v=10&encoding=json` is
/// added, with `compress=` when `compression` asks for it).
pub async fn connect(url: &str, compression: Compression) -> io::Result<GatewaySocket> {
    let endpoint = Endpoint::parse(url)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?
        .with_query(compression.query());
    glommio::timer::timeout(CONNECT_TIMEOUT, async {
        let addr = resolve(&endpoint.host, endpoint.port).await?;
        let tcp = TcpStream::connect(addr).await?;
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
            assert_eq!(super::resolve("127.0.0.1", 80).await.unwrap().port(), 80);
            let addr = super::resolve("localhost", 443).await.expect("localhost resolves");
            assert!(addr.ip().is_loopback());
        });
    }
}
