//! The accept loop and the HTTP routing of the client port. Every core
//! accepts on the same listening socket, so connections spread over cores.

use super::{client, http};
use crate::runtime::Core;
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::{TcpListener, TcpStream};
use std::{rc::Rc, time::Duration};

/// Time a client has to send its request head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

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

async fn read_head(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Result<(http::RequestHead, usize), String> {
    let mut chunk = [0u8; 4096];
    loop {
        match http::parse_head(buf) {
            http::Parsed::Complete(head, n) => return Ok((head, n)),
            http::Parsed::Invalid(e) => return Err(format!("bad request: {e}")),
            http::Parsed::Partial if buf.len() > http::MAX_HEAD => return Err("request head too large".into()),
            http::Parsed::Partial => {}
        }
        let n = stream.read(&mut chunk).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("closed before the request head".into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

async fn handle(core: Rc<Core>, mut stream: TcpStream) {
    let peer = stream.peer_addr().map(|a| a.to_string()).unwrap_or_else(|_| "?".into());
    let _ = stream.set_nodelay(true);
    let mut buf = Vec::with_capacity(1024);
    let head = futures_lite::future::or(read_head(&mut stream, &mut buf), async {
        glommio::timer::sleep(HEAD_TIMEOUT).await;
        Err("timed out waiting for the request head".into())
    })
    .await;
    let (head, head_len) = match head {
        Ok(h) => h,
        Err(e) => {
            log::debug!("{peer}: {e}");
            if e.starts_with("bad request") || e.contains("too large") {
                let _ = stream.write_all(&http::response(400, "Bad Request", "text/plain", "bad request\n")).await;
            }
            return;
        }
    };
    let reply = |status, reason, body: String| http::response(status, reason, "text/plain; charset=utf-8", &body);
    let response = if head.upgrade {
        match (&head.websocket_key, head.websocket_version.as_deref(), head.method.as_str()) {
            (Some(_), Some("13"), "GET") => None,
            _ => Some(reply(400, "Bad Request", "invalid websocket upgrade request\n".into())),
        }
    } else if head.method != "GET" && head.method != "HEAD" {
        Some(reply(405, "Method Not Allowed", "method not allowed\n".into()))
    } else {
        match head.path.as_str() {
            "/shard-count" => Some(reply(200, "OK", core.shared.total_shards.to_string())),
            "/shard-map" => {
                let map = core.shared.shard_map.to_json(&core.shared.client_resume_url);
                Some(http::response(200, "OK", "application/json", &map.to_string()))
            }
            "/health" => Some(reply(200, "OK", "ok\n".into())),
            "/metrics" => {
                crate::runtime::sample_metrics(&core).await;
                Some(http::response(200, "OK", "text/plain; version=0.0.4; charset=utf-8", &crate::metrics::render()))
            }
            "/ready" => {
                let (ready, body) = readiness(&core);
                Some(if ready {
                    http::response(200, "OK", "application/json", &body)
                } else {
                    http::response(503, "Service Unavailable", "application/json", &body)
                })
            }
            _ => Some(reply(
                404,
                "Not Found",
                "not found: connect a Discord gateway client over websocket, or GET /shard-count\n".into(),
            )),
        }
    };
    if let Some(resp) = response {
        let _ = stream.write_all(&resp).await;
        let _ = stream.close().await;
        return;
    }
    let leftover = buf.split_off(head_len);
    client::serve(core, stream, head, leftover, peer).await;
}
