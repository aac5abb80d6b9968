//! `demo-client`: a minimal bot that connects to a gateway (the proxy), one
//! connection per shard, identifies, and prints what it receives. Used by
//! `scripts/run.sh` in demo mode so a newcomer sees events flow.

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

const USAGE: &str = "usage: demo-client --url ws://127.0.0.1:7878 --token TOKEN [--seconds N]";

#[tokio::main]
async fn main() {
    let mut url = "ws://127.0.0.1:7878".to_owned();
    let mut token = "fake-token".to_owned();
    let mut seconds: Option<u64> = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--url" => url = args.next().expect(USAGE),
            "--token" => token = args.next().expect(USAGE),
            "--seconds" => seconds = Some(args.next().and_then(|s| s.parse().ok()).expect(USAGE)),
            _ => {
                eprintln!("{USAGE}");
                std::process::exit(2);
            }
        }
    }
    let http = url.replacen("ws://", "http://", 1);
    let shards: u32 = match shard_count(&http).await {
        Ok(n) => n,
        Err(e) => {
            eprintln!("demo-client: cannot read {http}/shard-count: {e}");
            std::process::exit(1);
        }
    };
    println!("demo-client: the proxy runs {shards} shards; connecting one client per shard");
    let tasks: Vec<_> = (0..shards).map(|s| tokio::spawn(run_shard(url.clone(), token.clone(), s, shards))).collect();
    match seconds {
        Some(s) => tokio::time::sleep(Duration::from_secs(s)).await,
        None => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
    for t in tasks {
        t.abort();
    }
}

async fn shard_count(http: &str) -> Result<u32, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = http.trim_start_matches("http://").trim_end_matches('/');
    let mut s = tokio::net::TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    s.write_all(format!("GET /shard-count HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut out = String::new();
    s.read_to_string(&mut out).await.map_err(|e| e.to_string())?;
    out.rsplit("\r\n\r\n").next().unwrap_or("").trim().parse().map_err(|_| format!("unexpected answer {out:?}"))
}

async fn run_shard(url: String, token: String, shard: u32, total: u32) {
    let (mut ws, _) = match tokio_tungstenite::connect_async(format!("{url}/?v=10&encoding=json")).await {
        Ok(ws) => ws,
        Err(e) => {
            eprintln!("[shard {shard}] cannot connect: {e}");
            return;
        }
    };
    let mut guilds = 0;
    let mut last_seq = Value::Null;
    let mut heartbeat = tokio::time::interval(Duration::from_secs(3600));
    loop {
        let msg = tokio::select! {
            msg = ws.next() => match msg {
                Some(Ok(m)) => m,
                _ => break,
            },
            _ = heartbeat.tick() => {
                let _ = ws.send(Message::text(json!({"op": 1, "d": last_seq}).to_string())).await;
                continue;
            }
        };
        let Message::Text(text) = msg else { continue };
        let Ok(v) = serde_json::from_str::<Value>(&text) else { continue };
        if v["s"].is_u64() {
            last_seq = v["s"].clone();
        }
        match (v["op"].as_u64(), v["t"].as_str()) {
            (Some(10), _) => {
                let interval = v["d"]["heartbeat_interval"].as_u64().unwrap_or(41_250);
                heartbeat = tokio::time::interval(Duration::from_millis(interval));
                heartbeat.tick().await;
                let identify = json!({"op": 2, "d": {"token": token, "intents": 513, "shard": [shard, total],
                    "properties": {"os": "linux", "browser": "demo-client", "device": "demo-client"}}});
                let _ = ws.send(Message::text(identify.to_string())).await;
            }
            (Some(0), Some("READY")) => {
                let d = &v["d"];
                println!(
                    "[shard {shard}] seq {:>3} READY as {} with {} guilds (session {})",
                    v["s"],
                    d["user"]["username"].as_str().unwrap_or("?"),
                    d["guilds"].as_array().map_or(0, Vec::len),
                    d["session_id"].as_str().unwrap_or("?")
                );
            }
            (Some(0), Some("GUILD_CREATE")) => {
                guilds += 1;
                println!(
                    "[shard {shard}] seq {:>3} GUILD_CREATE {} ({} channels, {} roles) [{guilds}]",
                    v["s"],
                    v["d"]["name"].as_str().unwrap_or("?"),
                    v["d"]["channels"].as_array().map_or(0, Vec::len),
                    v["d"]["roles"].as_array().map_or(0, Vec::len)
                );
            }
            (Some(0), Some("MESSAGE_CREATE")) => {
                println!(
                    "[shard {shard}] seq {:>3} MESSAGE_CREATE: {}",
                    v["s"],
                    v["d"]["content"].as_str().unwrap_or("")
                );
            }
            (Some(0), Some(t)) => println!("[shard {shard}] seq {:>3} {t}", v["s"]),
            _ => {}
        }
    }
    println!("[shard {shard}] connection closed");
}
