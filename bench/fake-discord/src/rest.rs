//! A hand-rolled HTTP/1.1 REST server: one request per connection
//! (`Connection: close`).

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::Inner;

/// Largest request head accepted, in bytes.
const MAX_HEAD: usize = 16 * 1024;

/// Accepts REST connections forever.
pub(crate) async fn serve(inner: Arc<Inner>, listener: TcpListener) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let _ = stream.set_nodelay(true);
                let inner = Arc::clone(&inner);
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(Duration::from_secs(10), accept(inner, stream)).await;
                });
            }
            Err(e) => {
                log::warn!("rest accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// A parsed request head.
struct Head {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
}

impl Head {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

fn parse_head(raw: &[u8]) -> Option<Head> {
    let text = std::str::from_utf8(raw).ok()?;
    let mut lines = text.split("\r\n");
    let mut request_line = lines.next()?.split(' ');
    let method = request_line.next()?.to_owned();
    let target = request_line.next()?;
    let path = target.split('?').next().unwrap_or(target).to_owned();
    let headers = lines
        .filter(|l| !l.is_empty())
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            Some((k.trim().to_owned(), v.trim().to_owned()))
        })
        .collect();
    Some(Head { method, path, headers })
}

/// Serves one request, under TLS when the fake has it.
async fn accept(inner: Arc<Inner>, tcp: TcpStream) -> std::io::Result<()> {
    match inner.tls.clone() {
        None => handle(inner, tcp).await,
        Some(acceptor) => match acceptor.accept(tcp).await {
            Ok(tls) => handle(inner, tls).await,
            Err(e) => {
                log::debug!("rest TLS handshake failed: {e}");
                Ok(())
            }
        },
    }
}

async fn handle<S: AsyncRead + AsyncWrite + Unpin>(inner: Arc<Inner>, mut stream: S) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let head_end = loop {
        if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break pos;
        }
        if buf.len() > MAX_HEAD {
            return respond(
                &mut stream,
                431,
                "Request Header Fields Too Large",
                &json!({"message": "Request header too large", "code": 0}),
            )
            .await;
        }
        let mut chunk = [0u8; 2048];
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let Some(head) = parse_head(&buf[..head_end]) else {
        return respond(&mut stream, 400, "Bad Request", &json!({"message": "400: Bad Request", "code": 0})).await;
    };
    // Read (and ignore) a body, if any.
    let body_len: usize = head.header("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
    let mut have = buf.len() - (head_end + 4);
    while have < body_len.min(1 << 20) {
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        have += n;
    }

    let (status, reason, body) = route(&inner, &head);
    respond(&mut stream, status, reason, &body).await
}

fn route(inner: &Inner, head: &Head) -> (u16, &'static str, Value) {
    let path = head.path.trim_end_matches('/');
    let path = path.strip_prefix("/api/v10").or_else(|| path.strip_prefix("/api")).unwrap_or("");
    let authorized =
        head.header("authorization").is_some_and(|v| v.strip_prefix("Bot ") == Some(inner.config.token.as_str()));
    let unauthorized = (401, "Unauthorized", json!({"message": "401: Unauthorized", "code": 0}));
    let not_found = (404, "Not Found", json!({"message": "404: Not Found", "code": 0}));
    if head.method != "GET" {
        return match path {
            "/gateway/bot" | "/gateway" | "/users/@me" => {
                (405, "Method Not Allowed", json!({"message": "405: Method Not Allowed", "code": 0}))
            }
            _ => not_found,
        };
    }
    match path {
        "/gateway/bot" => {
            if !authorized {
                return unauthorized;
            }
            let started = inner.lock().sessions_started;
            let remaining = u64::from(inner.config.session_start_remaining).saturating_sub(started);
            (
                200,
                "OK",
                json!({
                    "url": inner.gateway_url,
                    "shards": inner.config.shards,
                    "session_start_limit": {
                        "total": 1000,
                        "remaining": remaining,
                        "reset_after": 86_400_000u64,
                        "max_concurrency": inner.config.max_concurrency,
                    }
                }),
            )
        }
        "/gateway" => (200, "OK", json!({ "url": inner.gateway_url })),
        "/users/@me" => {
            if !authorized {
                return unauthorized;
            }
            (200, "OK", inner.generator.bot_current_user())
        }
        _ => not_found,
    }
}

async fn respond<S: AsyncWrite + Unpin>(
    stream: &mut S,
    status: u16,
    reason: &str,
    body: &Value,
) -> std::io::Result<()> {
    let body = body.to_string();
    let response = format!(
        "HTTP/1.1 {status} {reason}\r\n\
         Content-Type: application/json\r\n\
         Content-Length: {}\r\n\
         Connection: close\r\n\
         X-RateLimit-Limit: 2\r\n\
         X-RateLimit-Remaining: 1\r\n\
         X-RateLimit-Reset-After: 5.000\r\n\
         X-RateLimit-Bucket: fake-discord-gateway\r\n\
         \r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.flush().await?;
    let _ = stream.shutdown().await;
    Ok(())
}
