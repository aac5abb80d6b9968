//! Prometheus metrics (`GET /metrics`). Metric families are process-wide;
//! each shard holds handles to its own children, which are plain atomics,
//! so the relay path never touches a label lookup or a lock.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};
use std::{
    cell::RefCell,
    collections::HashMap,
    hash::{BuildHasherDefault, Hasher},
    sync::OnceLock,
};

/// Every metric family.
pub struct Metrics {
    registry: Registry,
    shard_status: IntGaugeVec,
    gateway_latency: HistogramVec,
    events: IntCounterVec,
    identifies: IntCounterVec,
    resumes: IntCounterVec,
    reconnects: IntCounterVec,
    invalid_sessions: IntCounterVec,
    clients: IntGaugeVec,
    client_sessions: IntGaugeVec,
    queue_high_water: IntGaugeVec,
    clients_lagged: IntCounterVec,
    upstream_bytes: IntCounterVec,
    upstream_compressed_bytes: IntCounterVec,
    client_bytes: IntCounterVec,
    client_payload_bytes: IntCounterVec,
    cache_entities: IntGaugeVec,
    replay_events: IntGaugeVec,
    replay_bytes: IntGaugeVec,
    replay_evicted: IntCounterVec,
    cache_bytes: IntGaugeVec,
    refused_connections: IntCounterVec,
    client_connections: IntGaugeVec,
}

fn counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    registry.register(Box::new(c.clone())).expect("unique metric");
    c
}

fn gauge(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
    registry.register(Box::new(g.clone())).expect("unique metric");
    g
}

/// The process's metrics.
pub fn global() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(|| {
        let r = Registry::new_custom(Some("gateway_proxy".into()), None).expect("valid prefix");
        let gateway_latency = HistogramVec::new(
            HistogramOpts::new("gateway_latency_seconds", "Heartbeat round trip to Discord")
                .buckets(vec![0.01, 0.025, 0.05, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0]),
            &["shard"],
        )
        .expect("valid metric");
        r.register(Box::new(gateway_latency.clone())).expect("unique metric");
        Metrics {
            shard_status: gauge(
                &r,
                "shard_status",
                "0 connecting, 1 identifying, 2 resuming, 3 ready, 4 failed",
                &["shard"],
            ),
            gateway_latency,
            events: counter(&r, "events_received_total", "Dispatches received from Discord", &["shard", "event"]),
            identifies: counter(&r, "identifies_total", "Identify payloads sent to Discord", &["shard"]),
            resumes: counter(&r, "resumes_total", "Resume payloads sent to Discord", &["shard"]),
            reconnects: counter(&r, "reconnects_total", "Upstream connections opened after the first", &["shard"]),
            invalid_sessions: counter(&r, "invalid_sessions_total", "Invalid Session (op 9) received", &["shard"]),
            clients: gauge(&r, "clients_connected", "Clients attached to the shard", &["shard"]),
            client_sessions: gauge(&r, "client_sessions", "Client sessions kept (connected or resumable)", &["shard"]),
            queue_high_water: gauge(
                &r,
                "client_queue_high_water",
                "Deepest client queue seen on the shard",
                &["shard"],
            ),
            clients_lagged: counter(
                &r,
                "clients_closed_lagging_total",
                "Clients closed for falling behind",
                &["shard"],
            ),
            upstream_bytes: counter(
                &r,
                "upstream_received_bytes_total",
                "Payload bytes received from Discord",
                &["shard"],
            ),
            upstream_compressed_bytes: counter(
                &r,
                "upstream_compressed_bytes_total",
                "Bytes of compressed messages received from Discord (upstream_compression; ratio: this/received)",
                &["shard"],
            ),
            client_bytes: counter(
                &r,
                "client_sent_bytes_total",
                "Bytes written to clients (after compression)",
                &["shard"],
            ),
            client_payload_bytes: counter(
                &r,
                "client_payload_bytes_total",
                "Payload bytes sent to clients before compression (ratio: sent/payload)",
                &["shard"],
            ),
            cache_entities: gauge(&r, "cache_entities", "Cached entities by kind", &["shard", "kind"]),
            replay_events: gauge(&r, "replay_buffer_events", "Dispatches in the replay buffer", &["shard"]),
            replay_bytes: gauge(&r, "replay_buffer_bytes", "Payload bytes in the replay buffer", &["shard"]),
            replay_evicted: counter(
                &r,
                "replay_evicted_total",
                "Retained dispatches dropped to keep the core within replay_memory",
                &["shard"],
            ),
            cache_bytes: gauge(&r, "cache_bytes", "Heap bytes of the shard's guild cache (compact form)", &["shard"]),
            refused_connections: counter(
                &r,
                "client_connections_refused_total",
                "Client connections refused at accept, by the limit they would cross",
                &["limit"],
            ),
            client_connections: gauge(
                &r,
                "client_connections",
                "Open client connections, and of them those not identified yet",
                &["state"],
            ),
            registry: r,
        }
    })
}

impl Metrics {
    /// Counts a connection refused for crossing the limit named `limit` (its config key).
    pub fn refused_connection(&self, limit: &str) {
        self.refused_connections.with_label_values(&[limit]).inc();
    }

    /// Sets the open and not-yet-identified client connection gauges.
    pub fn set_client_connections(&self, open: usize, unidentified: usize) {
        self.client_connections.with_label_values(&["open"]).set(open as i64);
        self.client_connections.with_label_values(&["unidentified"]).set(unidentified as i64);
    }

    /// The `shard_status` value of a shard.
    pub fn shard_status_of(&self, shard: u32) -> i64 {
        self.shard_status.with_label_values(&[shard.to_string().as_str()]).get()
    }
}

/// Renders every metric in Prometheus text format.
pub fn render() -> String {
    let mut out = Vec::new();
    TextEncoder::new().encode(&global().registry.gather(), &mut out).expect("text encoding");
    String::from_utf8(out).expect("text format is UTF-8")
}

/// One shard's metric handles.
pub struct ShardMetrics {
    shard: String,
    /// Status gauge.
    pub status: IntGauge,
    /// Heartbeat round trip.
    pub latency: prometheus::Histogram,
    /// Identifies sent.
    pub identifies: IntCounter,
    /// Resumes sent.
    pub resumes: IntCounter,
    /// Reconnections.
    pub reconnects: IntCounter,
    /// op 9 received.
    pub invalid_sessions: IntCounter,
    /// Attached clients.
    pub clients: IntGauge,
    /// Client sessions kept.
    pub client_sessions: IntGauge,
    /// Deepest client queue.
    pub queue_high_water: IntGauge,
    /// Clients closed for lag.
    pub clients_lagged: IntCounter,
    /// Bytes from Discord.
    pub upstream_bytes: IntCounter,
    /// Compressed bytes from Discord (transport compression).
    pub upstream_compressed_bytes: IntCounter,
    /// Bytes to clients.
    pub client_bytes: IntCounter,
    /// Payload bytes to clients before compression.
    pub client_payload_bytes: IntCounter,
    /// Replay buffer events.
    pub replay_events: IntGauge,
    /// Replay buffer bytes.
    pub replay_bytes: IntGauge,
    /// Dispatches this shard lost to the core's replay budget.
    pub replay_evicted: IntCounter,
    /// Heap bytes of the guild cache.
    pub cache_bytes: IntGauge,
    events: RefCell<HashMap<Box<[u8]>, IntCounter, BuildHasherDefault<Fnv1a>>>,
}

/// FNV-1a: event names are short and trusted (they come from Discord), so
/// the map needs no DoS-resistant hash, and this one costs a few cycles a byte.
#[derive(Default)]
struct Fnv1a(u64);

impl Hasher for Fnv1a {
    fn write(&mut self, bytes: &[u8]) {
        let mut h = if self.0 == 0 { 0xcbf2_9ce4_8422_2325 } else { self.0 };
        for b in bytes {
            h = (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
        }
        self.0 = h;
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

impl ShardMetrics {
    /// Handles for shard `id`.
    pub fn new(id: u32) -> Self {
        let m = global();
        let shard = id.to_string();
        let l = [shard.as_str()];
        Self {
            status: m.shard_status.with_label_values(&l),
            latency: m.gateway_latency.with_label_values(&l),
            identifies: m.identifies.with_label_values(&l),
            resumes: m.resumes.with_label_values(&l),
            reconnects: m.reconnects.with_label_values(&l),
            invalid_sessions: m.invalid_sessions.with_label_values(&l),
            clients: m.clients.with_label_values(&l),
            client_sessions: m.client_sessions.with_label_values(&l),
            queue_high_water: m.queue_high_water.with_label_values(&l),
            clients_lagged: m.clients_lagged.with_label_values(&l),
            upstream_bytes: m.upstream_bytes.with_label_values(&l),
            upstream_compressed_bytes: m.upstream_compressed_bytes.with_label_values(&l),
            client_bytes: m.client_bytes.with_label_values(&l),
            client_payload_bytes: m.client_payload_bytes.with_label_values(&l),
            replay_events: m.replay_events.with_label_values(&l),
            replay_bytes: m.replay_bytes.with_label_values(&l),
            replay_evicted: m.replay_evicted.with_label_values(&l),
            cache_bytes: m.cache_bytes.with_label_values(&l),
            events: RefCell::default(),
            shard,
        }
    }

    /// Counts a dispatch by type (the child handle is cached per event name).
    pub fn event(&self, t: &[u8]) {
        if let Some(c) = self.events.borrow().get(t) {
            c.inc();
            return;
        }
        let name = String::from_utf8_lossy(t);
        let c = global().events.with_label_values(&[self.shard.as_str(), &name]);
        c.inc();
        self.events.borrow_mut().insert(t.into(), c);
    }

    /// Sets a cache size gauge.
    pub fn cache(&self, kind: &str, n: usize) {
        global().cache_entities.with_label_values(&[self.shard.as_str(), kind]).set(n as i64);
    }
}
