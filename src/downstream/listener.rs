//! The accept loop and the HTTP routing of the client port. Every core
//! accepts on the same listening socket, so connections spread over cores.

use super::{admission::Refusal, client, http};
use crate::runtime::Core;
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::{TcpListener, TcpStream};
use std::{rc::Rc, time::Duration};

/// Time a refused connection is given to send its request head before the
/// refusal is written (answering before the request arrives makes the peer
/// see a reset instead of the status); kept short, since a flood of refused
/// connections must not hold descriptors for long.
const REFUSED_HEAD_WAIT: Duration = Duration::from_secs(1);

/// Accepts connections forever.
pub async fn accept_loop(core: Rc<Core>, listener: TcpListener) {
    loop {
        match listener.accept().await {
            Ok(stream) => {
                glommio::spawn_local(handle(core.clone(), stream)).detach();
            }
            Err(e) => {
                log::warn!("core {}: accept failed: {e}", core.index);
                glommio::timer::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Whether every local shard is connected and has READY, with each shard's
/// state, and why the identify coordinator cannot be reached while it cannot
/// (shards waiting to identify wait for it). Statuses are read from the
/// process-wide `shard_status` gauges, so any core can answer.
fn readiness(core: &Core) -> (bool, String) {
    let gauges = crate::metrics::global();
    let mut all = true;
    let shards: Vec<serde_json::Value> = core
        .shared
        .local
        .clone()
        .map(|id| {
            let code = gauges.shard_status_of(id);
            all &= code == 3;
            serde_json::json!({"id": id, "status": crate::hub::ShardStatus::name_of(code)})
        })
        .collect();
    let mut body = serde_json::json!({"ready": all, "shards": shards});
    if let Some(why) = core.shared.identify_queue.outage() {
        body["identify_queue"] = serde_json::json!({"reachable": false, "error": why});
    }
    (all, body.to_string())
}

/// Why no request head was read.
enum HeadError {
    /// Not HTTP (400).
    Invalid(String),
    /// Longer than `max_request_head_bytes` (431).
    TooLarge(usize),
    /// Not complete within the time allowed (408).
    TimedOut(Duration),
    /// The peer closed or the socket failed: nobody to answer.
    Gone(String),
}

impl HeadError {
    /// The status and the answer to the peer, if it can still get one: the
    /// error's own words, naming the config key that bounds it.
    fn response(&self) -> Option<(u16, Vec<u8>)> {
        let (status, reason, key) = match self {
            Self::Invalid(_) => (400, "Bad Request", ""),
            Self::TooLarge(_) => (431, "Request Header Fields Too Large", " (max_request_head_bytes)"),
            Self::TimedOut(_) => (408, "Request Timeout", " (handshake_timeout_secs)"),
            Self::Gone(_) => return None,
        };
        Some((status, http::response(status, reason, "text/plain; charset=utf-8", &format!("{self}{key}\n"))))
    }
}

impl std::fmt::Display for HeadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Invalid(e) => write!(f, "bad request: {e}"),
            Self::TooLarge(max) => write!(f, "request head larger than {max} bytes"),
            Self::TimedOut(t) => write!(f, "no complete request head within {}s", t.as_secs()),
            Self::Gone(e) => write!(f, "{e}"),
        }
    }
}

async fn read_head(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    max: usize,
) -> Result<(http::RequestHead, usize), HeadError> {
    let mut chunk = [0u8; 4096];
    loop {
        match http::parse_head(buf) {
            http::Parsed::Complete(head, n) if n <= max => return Ok((head, n)),
            http::Parsed::Complete(..) => return Err(HeadError::TooLarge(max)),
            http::Parsed::Invalid(e) => return Err(HeadError::Invalid(e)),
            http::Parsed::Partial if buf.len() > max => return Err(HeadError::TooLarge(max)),
            http::Parsed::Partial => {}
        }
        let n = stream.read(&mut chunk).await.map_err(|e| HeadError::Gone(e.to_string()))?;
        if n == 0 {
            return Err(HeadError::Gone("closed before the request head".into()));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Reads a request head within `limit`.
async fn read_head_within(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    max: usize,
    limit: Duration,
) -> Result<(http::RequestHead, usize), HeadError> {
    futures_lite::future::or(read_head(stream, buf, max), async {
        glommio::timer::sleep(limit).await;
        Err(HeadError::TimedOut(limit))
    })
    .await
}

/// Writes a refusal and closes without losing it: the peer may still be
/// sending (a 1 MiB head), and closing a socket with unread input sends a
/// reset that can discard the answer before the peer reads it. So the write
/// side is shut first and input drained for a moment (bounded in time and
/// bytes) before the descriptor goes.
async fn answer_and_close(mut stream: TcpStream, response: &[u8]) {
    const DRAIN_TIME: Duration = Duration::from_secs(1);
    const DRAIN_BYTES: usize = 4 << 20;
    if stream.write_all(response).await.is_err() {
        return;
    }
    let _ = stream.shutdown(std::net::Shutdown::Write).await;
    let drain = async {
        let mut sink = [0u8; 16 << 10];
        let mut drained = 0;
        while drained < DRAIN_BYTES {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => drained += n,
            }
        }
    };
    futures_lite::future::or(drain, glommio::timer::sleep(DRAIN_TIME)).await;
}

/// Answers a websocket connection that would cross a limit, and closes it.
async fn refuse(stream: TcpStream, peer: &str, refusal: Refusal) {
    crate::metrics::global().refused_connection(refusal.label());
    let (status, reason, body) = refusal.response();
    log::warn!("{peer}: connection refused with {status}: {}", body.trim_end());
    // Limits on totals clear as other connections identify or leave.
    let retry = if status == 503 { "Retry-After: 5\r\n" } else { "" };
    let response = http::response_with(status, reason, "text/plain; charset=utf-8", retry, &body);
    answer_and_close(stream, &response).await;
}

async fn handle(core: Rc<Core>, mut stream: TcpStream) {
    let addr = stream.peer_addr().ok();
    let peer = addr.map(|a| a.to_string()).unwrap_or_else(|| "?".into());
    let ip = addr.map_or(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), |a| a.ip());
    let config = &core.shared.config;
    // A connection over a limit still gets a moment to send its head: plain
    // requests (`/health`, `/metrics`) are answered even while the limits
    // hold gateway clients back, and a refusal written before the request
    // arrives would reach the peer as a reset.
    let admitted = core.shared.admission.admit(ip);
    let limit = match admitted {
        Ok(_) => Duration::from_secs(config.handshake_timeout_secs),
        Err(_) => REFUSED_HEAD_WAIT.min(Duration::from_secs(config.handshake_timeout_secs)),
    };
    let _ = stream.set_nodelay(true);
    let mut buf = Vec::with_capacity(1024);
    let head = read_head_within(&mut stream, &mut buf, config.max_request_head_bytes, limit).await;
    let permit = match (admitted, &head) {
        (Ok(permit), _) => permit,
        (Err(refusal), Ok((head, _))) if !head.upgrade => {
            log::debug!("{peer}: a plain request over the connection limits ({refusal:?}); answered all the same");
            return serve_plain(&core, stream, head).await;
        }
        (Err(refusal), _) => return refuse(stream, &peer, refusal).await,
    };
    let (head, head_len) = match head {
        Ok(h) => h,
        Err(e) => {
            match e.response() {
                Some((status, response)) => {
                    log::info!("{peer}: {e}; answered {status}");
                    answer_and_close(stream, &response).await;
                }
                None => log::debug!("{peer}: {e}"),
            }
            return;
        }
    };
    if !head.upgrade {
        // Answered at once: not a gateway connection, so not counted as one.
        drop(permit);
        return serve_plain(&core, stream, &head).await;
    }
    if !matches!(
        (&head.websocket_key, head.websocket_version.as_deref(), head.method.as_str()),
        (Some(_), Some("13"), "GET")
    ) {
        let response =
            http::response(400, "Bad Request", "text/plain; charset=utf-8", "invalid websocket upgrade request\n");
        let _ = stream.write_all(&response).await;
        let _ = stream.close().await;
        return;
    }
    let leftover = buf.split_off(head_len);
    client::serve(core, stream, head, leftover, peer, permit).await;
}

/// Answers a plain HTTP request (the operator's endpoints) and closes.
async fn serve_plain(core: &Core, mut stream: TcpStream, head: &http::RequestHead) {
    let reply = |status, reason, body: String| http::response(status, reason, "text/plain; charset=utf-8", &body);
    let response = if head.method != "GET" && head.method != "HEAD" {
        reply(405, "Method Not Allowed", "method not allowed\n".into())
    } else {
        match head.path.as_str() {
            "/shard-count" => reply(200, "OK", core.shared.total_shards.to_string()),
            "/shard-map" => {
                let map = core.shared.shard_map.to_json(&core.shared.client_resume_url);
                http::response(200, "OK", "application/json", &map.to_string())
            }
            "/health" => reply(200, "OK", "ok\n".into()),
            "/metrics" => {
                crate::runtime::sample_metrics(core).await;
                http::response(200, "OK", "text/plain; version=0.0.4; charset=utf-8", &crate::metrics::render())
            }
            "/ready" => {
                let (ready, body) = readiness(core);
                if ready {
                    http::response(200, "OK", "application/json", &body)
                } else {
                    http::response(503, "Service Unavailable", "application/json", &body)
                }
            }
            _ => reply(
                404,
                "Not Found",
                "not found: connect a Discord gateway client over websocket, or GET /shard-count\n".into(),
            ),
        }
    };
    let _ = stream.write_all(&response).await;
    let _ = stream.close().await;
}
