//! What the fake's connections run on: TCP, optionally under TLS (rustls),
//! with the faults a real network shows injected at the TCP level.
//!
//! [`Wire`] is the accepted TCP socket. It can be armed to cut the next
//! write: the first half of it (of the TLS record it starts with, under
//! TLS) goes out, the fake waits until the peer's kernel has acknowledged
//! those bytes, then closes the socket with `SO_LINGER` 0, which sends a
//! TCP reset. The peer sees a record (or frame) that never completes, then
//! `ECONNRESET`.

use std::future::Future as _;
use std::io;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

/// TLS for the fake's REST and gateway listeners (`https://`, `wss://`).
///
/// With it, [`FakeDiscord::gateway_url`](crate::FakeDiscord::gateway_url)
/// and [`FakeDiscord::api_url`](crate::FakeDiscord::api_url) name the host
/// `localhost` (not an IP literal), so a client checks the certificate's
/// name as it would Discord's.
#[derive(Clone)]
pub struct FakeTls {
    /// The certificate chain in PEM, leaf first (its CA may follow).
    pub cert_chain_pem: String,
    /// The leaf's private key in PEM (PKCS#8, PKCS#1 or SEC1).
    pub key_pem: String,
    /// Largest plaintext per TLS record the fake writes (rustls
    /// `max_fragment_size`, at least 32); `None`: rustls' default, 16 KiB.
    /// Small records split every websocket frame over many records.
    pub max_fragment_size: Option<usize>,
}

impl std::fmt::Debug for FakeTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeTls")
            .field("cert_chain_pem", &format_args!("{} bytes", self.cert_chain_pem.len()))
            .field("key_pem", &"(redacted)")
            .field("max_fragment_size", &self.max_fragment_size)
            .finish()
    }
}

impl FakeTls {
    /// The rustls acceptor for this certificate and record size.
    pub(crate) fn acceptor(&self) -> io::Result<tokio_rustls::TlsAcceptor> {
        let invalid = |what: String| io::Error::new(io::ErrorKind::InvalidInput, what);
        let chain = CertificateDer::pem_slice_iter(self.cert_chain_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| invalid(format!("FakeTls::cert_chain_pem: {e}")))?;
        if chain.is_empty() {
            return Err(invalid("FakeTls::cert_chain_pem has no CERTIFICATE in it".into()));
        }
        let key = PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes())
            .map_err(|e| invalid(format!("FakeTls::key_pem: {e}")))?;
        let mut config =
            rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .map_err(|e| invalid(e.to_string()))?
                .with_no_client_auth()
                .with_single_cert(chain, key)
                .map_err(|e| invalid(format!("FakeTls: {e}")))?;
        config.max_fragment_size = self.max_fragment_size;
        // HTTP/1.1 for REST and the websocket upgrade alike.
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
    }
}

/// Arms a [`Wire`]'s cut from the connection task.
#[derive(Clone, Default)]
pub(crate) struct CutSwitch(Arc<AtomicBool>);

impl CutSwitch {
    /// The next write on the wire is cut in half and the connection reset.
    pub(crate) fn arm(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// How long the cut waits for its half record to be acknowledged before
/// resetting anyway (the peer may not be reading).
const DRAIN_LIMIT: Duration = Duration::from_secs(2);

enum Cut {
    /// Not armed, or armed and waiting for the next write.
    Idle,
    /// Writing the first part of the cut write.
    Writing { bytes: Vec<u8>, written: usize },
    /// Waiting until the peer acknowledged it.
    Draining { since: Instant, tick: Pin<Box<Sleep>> },
    /// The socket was reset.
    Reset,
}

/// An accepted TCP socket that can be cut mid-record (see the module doc).
pub(crate) struct Wire {
    tcp: Option<TcpStream>,
    switch: CutSwitch,
    cut: Cut,
}

impl Wire {
    pub(crate) fn new(tcp: TcpStream) -> (Wire, CutSwitch) {
        let switch = CutSwitch::default();
        (Wire { tcp: Some(tcp), switch: switch.clone(), cut: Cut::Idle }, switch)
    }

    fn reset_error() -> io::Error {
        io::Error::new(io::ErrorKind::ConnectionReset, "connection reset by the fake (fault injection)")
    }

    /// Bytes of `buf` to send before the reset: half of the TLS record it
    /// starts with (half of `buf` when it is not a TLS record), at least one.
    fn cut_point(buf: &[u8]) -> usize {
        let record = match buf {
            [0x14..=0x18, 0x03, _, hi, lo, ..] => 5 + usize::from(u16::from_be_bytes([*hi, *lo])),
            _ => buf.len(),
        };
        (record.min(buf.len()) / 2).max(1)
    }

    /// Drives an armed cut; `Ready(Err)` once the socket is reset.
    fn poll_cut(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            match &mut self.cut {
                Cut::Idle => return Poll::Ready(Ok(())),
                Cut::Reset => return Poll::Ready(Err(Self::reset_error())),
                Cut::Writing { bytes, written } => {
                    let Some(tcp) = self.tcp.as_mut() else {
                        self.cut = Cut::Reset;
                        continue;
                    };
                    match Pin::new(tcp).poll_write(cx, &bytes[*written..]) {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(Ok(n)) => {
                            *written += n;
                            if *written == bytes.len() || n == 0 {
                                self.cut = Cut::Draining {
                                    since: Instant::now(),
                                    tick: Box::pin(tokio::time::sleep(Duration::from_millis(1))),
                                };
                            }
                        }
                        Poll::Ready(Err(_)) => self.reset_now(),
                    }
                }
                Cut::Draining { since, tick } => {
                    let unacked = self.tcp.as_ref().map_or(0, |t| unacknowledged(t.as_raw_fd()));
                    if unacked == 0 || since.elapsed() >= DRAIN_LIMIT {
                        self.reset_now();
                        continue;
                    }
                    match tick.as_mut().poll(cx) {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(()) => tick.as_mut().reset(Instant::now() + Duration::from_millis(1)),
                    }
                }
            }
        }
    }

    /// Closes the socket with `SO_LINGER` 0: the kernel sends RST.
    fn reset_now(&mut self) {
        if let Some(tcp) = self.tcp.take() {
            let _ = socket2::SockRef::from(&tcp).set_linger(Some(Duration::ZERO));
            drop(tcp);
        }
        self.cut = Cut::Reset;
    }
}

/// Bytes sent on the socket that the peer has not acknowledged yet
/// (`SIOCOUTQ`); 0 when unknown.
fn unacknowledged(fd: std::os::fd::RawFd) -> i32 {
    let mut n: libc::c_int = 0;
    // SAFETY: TIOCOUTQ (SIOCOUTQ) writes one int; `fd` is a live socket we own.
    let rc = unsafe { libc::ioctl(fd, libc::TIOCOUTQ, &mut n) };
    if rc == 0 {
        n
    } else {
        0
    }
}

impl AsyncRead for Wire {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match this.tcp.as_mut() {
            Some(tcp) => Pin::new(tcp).poll_read(cx, buf),
            None => Poll::Ready(Err(Self::reset_error())),
        }
    }
}

impl AsyncWrite for Wire {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if matches!(this.cut, Cut::Idle) && !buf.is_empty() && this.switch.0.swap(false, Ordering::SeqCst) {
            let cut = Self::cut_point(buf);
            log::debug!("fake: cutting a write of {} bytes after {cut} and resetting the connection", buf.len());
            this.cut = Cut::Writing { bytes: buf[..cut].to_vec(), written: 0 };
        }
        if !matches!(this.cut, Cut::Idle) {
            return match this.poll_cut(cx) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(Ok(())) => Poll::Ready(Err(Self::reset_error())),
                Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            };
        }
        match this.tcp.as_mut() {
            Some(tcp) => Pin::new(tcp).poll_write(cx, buf),
            None => Poll::Ready(Err(Self::reset_error())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !matches!(this.cut, Cut::Idle) {
            return this.poll_cut(cx);
        }
        match this.tcp.as_mut() {
            Some(tcp) => Pin::new(tcp).poll_flush(cx),
            None => Poll::Ready(Err(Self::reset_error())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match this.tcp.as_mut() {
            Some(tcp) => Pin::new(tcp).poll_shutdown(cx),
            None => Poll::Ready(Ok(())),
        }
    }
}

/// A connection's byte stream: the wire, or TLS over it.
pub(crate) enum FakeStream {
    Plain(Wire),
    Tls(Box<tokio_rustls::server::TlsStream<Wire>>),
}

impl AsyncRead for FakeStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for FakeStream {
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

    /// Under TLS: close_notify, then the TCP FIN.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Wraps an accepted socket, with the TLS handshake when `acceptor` is set.
pub(crate) async fn accept(
    tcp: TcpStream,
    acceptor: Option<&tokio_rustls::TlsAcceptor>,
) -> io::Result<(FakeStream, CutSwitch)> {
    let (wire, switch) = Wire::new(tcp);
    let stream = match acceptor {
        None => FakeStream::Plain(wire),
        Some(acceptor) => {
            let tls = tokio::time::timeout(Duration::from_secs(10), acceptor.accept(wire))
                .await
                .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out"))??;
            FakeStream::Tls(Box::new(tls))
        }
    };
    Ok((stream, switch))
}

#[cfg(test)]
mod tests {
    use super::Wire;

    #[test]
    fn cut_is_inside_the_first_record() {
        // A TLS application-data record of 100 bytes of payload, then more.
        let mut buf = vec![0x17, 0x03, 0x03, 0x00, 100];
        buf.extend(std::iter::repeat_n(0u8, 300));
        assert_eq!(Wire::cut_point(&buf), 52);
        assert_eq!(Wire::cut_point(b"\x81\x05hello"), 3);
        assert_eq!(Wire::cut_point(b"x"), 1);
    }
}
