//! The proxy's upstream over TLS: the fake Discord serves `https://` and
//! `wss://localhost` with a certificate from a CA made for the test, which
//! the proxy trusts through `tls_ca_file` (or `SSL_CERT_FILE`) on top of
//! webpki-roots. Records and frames split every which way, a TCP reset in
//! the middle of a record, a close_notify without a close frame, and a
//! certificate for another name.

mod common;

use common::{message, next_twilight_event, run_proxy_to_exit, wait_connected, Client, Proxy, WAIT};
use fake_discord::{FakeConfig, FakeDiscord, FakeTls, FirehoseMix, FirehoseSpec};
use serde_json::{json, Value};
use std::{path::PathBuf, time::Duration};

/// A CA made for one test, and the file its certificate is written to.
struct TestCa {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    /// The CA certificate in PEM, written to a temporary file.
    file: PathBuf,
}

impl TestCa {
    fn new() -> TestCa {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.distinguished_name.push(rcgen::DnType::CommonName, "gateway-proxy test CA");
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let dir = std::env::temp_dir().join(format!("gateway-proxy-tls-{}-{}", std::process::id(), fastrand_name()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("ca.pem");
        std::fs::write(&file, cert.pem()).unwrap();
        TestCa { issuer: rcgen::Issuer::new(params, key), file }
    }

    /// A server certificate for `name` signed by this CA, as the fake's TLS.
    fn leaf(&self, name: &str, max_fragment_size: Option<usize>) -> FakeTls {
        let mut params = rcgen::CertificateParams::new(vec![name.to_owned()]).unwrap();
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        params.use_authority_key_identifier_extension = true;
        params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        FakeTls { cert_chain_pem: cert.pem(), key_pem: key.serialize_pem(), max_fragment_size }
    }

    /// The config key pointing the proxy at this CA.
    fn config(&self) -> Value {
        json!({ "tls_ca_file": self.file })
    }
}

impl Drop for TestCa {
    fn drop(&mut self) {
        if let Some(dir) = self.file.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

fn fastrand_name() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64);
    h.finish()
}

/// A fake with one shard of `guilds` guilds, served over TLS.
async fn tls_fake(guilds: u32, tls: FakeTls) -> FakeDiscord {
    let fake = FakeDiscord::start(FakeConfig { shards: 1, guilds, tls: Some(tls), ..FakeConfig::default() })
        .await
        .expect("fake discord starts");
    assert!(fake.gateway_url().starts_with("wss://localhost:"), "{}", fake.gateway_url());
    assert!(fake.api_url().starts_with("https://localhost:"), "{}", fake.api_url());
    fake
}

/// Merges `b`'s keys into `a`.
fn merged(mut a: Value, b: Value) -> Value {
    for (k, v) in b.as_object().unwrap() {
        a[k] = v.clone();
    }
    a
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identifies_over_wss_with_a_root_from_tls_ca_file() {
    let ca = TestCa::new();
    let fake = tls_fake(6, ca.leaf("localhost", None)).await;
    let proxy = Proxy::start(&fake, ca.config()).await;
    wait_connected(&fake, &proxy, 0..1).await;
    assert_eq!(fake.identify_count(), 1);
    assert!(
        !proxy.log_lines("extra root certificates besides webpki-roots").is_empty(),
        "the extra roots are logged: {:?}",
        proxy.log.lock().unwrap()
    );

    let config = twilight_gateway::ConfigBuilder::new(
        fake.token().to_owned(),
        twilight_gateway::Intents::GUILDS | twilight_gateway::Intents::GUILD_MESSAGES,
    )
    .proxy_url(proxy.url())
    .build();
    let mut shard = twilight_gateway::Shard::with_config(twilight_gateway::ShardId::new(0, 1), config);
    let ready = match next_twilight_event(&mut shard).await {
        twilight_gateway::Event::Ready(r) => r,
        other => panic!("expected READY, got {:?}", other.kind()),
    };
    let expected: std::collections::BTreeSet<u64> = fake.guild_ids_for_shard(0, 1).into_iter().collect();
    assert_eq!(ready.guilds.iter().map(|g| g.id.get()).collect::<std::collections::BTreeSet<_>>(), expected);
    let mut created = std::collections::BTreeSet::new();
    while created.len() < expected.len() {
        match next_twilight_event(&mut shard).await {
            twilight_gateway::Event::GuildCreate(g) => {
                created.insert(g.id().get());
            }
            other => panic!("expected GUILD_CREATE, got {:?}", other.kind()),
        }
    }
    assert_eq!(created, expected, "every guild's GUILD_CREATE came through");
    let guild = *expected.iter().next().unwrap();
    fake.inject(0, "MESSAGE_CREATE", message(guild, fake.first_channel_id(guild), 1, "over TLS")).unwrap();
    match next_twilight_event(&mut shard).await {
        twilight_gateway::Event::MessageCreate(m) => assert_eq!(m.content, "over TLS"),
        other => panic!("expected MESSAGE_CREATE, got {:?}", other.kind()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssl_cert_file_roots_are_trusted_too() {
    let ca = TestCa::new();
    let fake = tls_fake(2, ca.leaf("localhost", None)).await;
    let ca_file = ca.file.to_str().unwrap().to_owned();
    let proxy = Proxy::start_with_env(&fake, json!({}), &[("SSL_CERT_FILE", &ca_file)]).await;
    wait_connected(&fake, &proxy, 0..1).await;
    let mut c = Client::connect(&proxy.url(), "/?v=10&encoding=json").await;
    let ready = c.identify_and_load(fake.token(), 0, 1).await;
    assert_eq!(ready["d"]["guilds"].as_array().unwrap().len(), fake.guild_ids_for_shard(0, 1).len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_100k_events_in_512_byte_records_arrives_whole_and_in_order() {
    const COUNT: u64 = 100_000;
    let ca = TestCa::new();
    let fake = tls_fake(2, ca.leaf("localhost", Some(512))).await;
    // A client that falls behind is not what this test is about: room for the whole burst.
    let proxy =
        Proxy::start(&fake, merged(ca.config(), json!({"backpressure": 150_000, "replay_buffer": 200_000}))).await;
    wait_connected(&fake, &proxy, 0..1).await;
    let mut c = Client::connect(&proxy.url(), "/?v=10&encoding=json").await;
    c.identify_and_load(fake.token(), 0, 1).await;

    let started = std::time::Instant::now();
    let spec = FirehoseSpec { count: COUNT, rate: None, mix: FirehoseMix::Messages };
    let hose = fake.firehose(0, spec).expect("shard 0 is connected");
    let (first, last) = (hose.first_seq, hose.last_seq);
    assert_eq!(last - first + 1, COUNT);
    let mut last_stamp = String::new();
    for seq in first..=last {
        let d = tokio::time::timeout(WAIT, c.dispatch()).await.unwrap_or_else(|_| panic!("event {seq} in time"));
        assert_eq!(d["s"], seq, "every event once, in order");
        assert_eq!(d["t"], "MESSAGE_CREATE");
        assert!(d["d"]["content"].as_str().is_some_and(|s| !s.is_empty()), "{d}");
        // Each frame carries the fake's send stamp: 19 digits, never decreasing.
        let stamp = d["d"]["nonce"].as_str().expect("a stamp").to_owned();
        assert_eq!(stamp.len(), 19, "{stamp}");
        assert!(stamp >= last_stamp, "stamps in sending order");
        last_stamp = stamp;
    }
    let stats = hose.finished().await.expect("the connection lasted the whole burst");
    assert_eq!(stats.sent, COUNT);
    eprintln!("{COUNT} events ({} MB) over TLS in 512-byte records: {:?}", stats.bytes / 1_000_000, started.elapsed());
    assert!(c.recv_within(Duration::from_millis(200)).await.is_none(), "nothing more");
    assert_eq!((fake.identify_count(), fake.resume_count()), (1, 0), "one connection throughout");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_mib_frames_span_many_records_and_arrive_intact() {
    let ca = TestCa::new();
    let fake = tls_fake(2, ca.leaf("localhost", None)).await;
    let proxy = Proxy::start(&fake, ca.config()).await;
    wait_connected(&fake, &proxy, 0..1).await;
    let mut c = Client::connect(&proxy.url(), "/?v=10&encoding=json").await;
    let ready = c.identify_and_load(fake.token(), 0, 1).await;
    let mut seq = 1 + ready["d"]["guilds"].as_array().unwrap().len() as u64;
    let guild = fake.guild_ids_for_shard(0, 1)[0];
    let channel = fake.first_channel_id(guild);
    // Big and small interleaved: 1 MiB of text (each a different pattern), then a short one.
    let content = |n: u64| -> String {
        if n % 2 == 1 {
            format!("{n}:").chars().cycle().take(1 << 20).collect()
        } else {
            format!("small {n}")
        }
    };
    for n in 1..=8 {
        fake.inject(0, "MESSAGE_CREATE", message(guild, channel, n, &content(n))).unwrap();
    }
    for n in 1..=8 {
        let d = c.dispatch().await;
        seq += 1;
        assert_eq!(d["s"], seq);
        let got = d["d"]["content"].as_str().unwrap();
        assert_eq!(got.len(), content(n).len(), "event {n}");
        assert!(got == content(n), "event {n}: the content arrived intact");
    }
    assert_eq!((fake.identify_count(), fake.resume_count()), (1, 0), "one connection throughout");
}

/// Injects `count` numbered messages while the proxy relays them, running
/// `fault` once after `fault_after` of them; the client must see every one
/// once, in order, and the proxy must have resumed (not identified again).
async fn events_survive(fake: &FakeDiscord, proxy: &Proxy, fault: impl FnOnce(&FakeDiscord) -> bool + Send + 'static) {
    const COUNT: u64 = 3_000;
    const FAULT_AFTER: u64 = 1_000;
    let mut c = Client::connect(&proxy.url(), "/?v=10&encoding=json").await;
    let ready = c.identify_and_load(fake.token(), 0, 1).await;
    let first_seq = 2 + ready["d"]["guilds"].as_array().unwrap().len() as u64;
    let identifies = fake.identify_count();
    let resumes = fake.resume_count();
    let guild = fake.guild_ids_for_shard(0, 1)[0];
    let channel = fake.first_channel_id(guild);
    let writer = {
        let fake = fake.clone();
        tokio::spawn(async move {
            let mut fault = Some(fault);
            for n in 1..=COUNT {
                fake.inject(0, "MESSAGE_CREATE", message(guild, channel, n, &format!("m{n}"))).unwrap();
                if n == FAULT_AFTER {
                    assert!(fault.take().unwrap()(&fake), "the shard was connected for the fault");
                }
                if n % 25 == 0 {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        })
    };
    for n in 1..=COUNT {
        let d = tokio::time::timeout(WAIT, c.dispatch()).await.unwrap_or_else(|_| panic!("event {n} in time"));
        assert_eq!(d["s"], first_seq + n - 1, "every event once, in order");
        assert_eq!(d["d"]["content"], format!("m{n}"));
    }
    writer.await.unwrap();
    assert!(c.recv_within(Duration::from_millis(300)).await.is_none(), "nothing doubled at the end");
    assert!(
        fake.wait_until(WAIT, |f| f.resume_count() > resumes && f.connected(0)).await,
        "the proxy resumed; log:\n{}",
        proxy.log.lock().unwrap().join("\n")
    );
    assert_eq!(fake.resume_count(), resumes + 1, "one resume");
    assert_eq!(fake.identify_count(), identifies, "a resume, not an Identify");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tcp_reset_in_the_middle_of_a_record_is_resumed_and_nothing_is_lost() {
    let ca = TestCa::new();
    let fake = tls_fake(2, ca.leaf("localhost", Some(512))).await;
    let proxy = Proxy::start(&fake, ca.config()).await;
    wait_connected(&fake, &proxy, 0..1).await;
    events_survive(&fake, &proxy, |f| f.reset_connection_mid_record(0)).await;
    let errors = proxy.log_lines("[shard 0] connection error");
    assert!(
        errors.iter().any(|l| l.contains("reset")),
        "the proxy saw the reset: {errors:?}; log:\n{}",
        proxy.log.lock().unwrap().join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_notify_without_a_close_frame_is_resumed_and_nothing_is_lost() {
    let ca = TestCa::new();
    let fake = tls_fake(2, ca.leaf("localhost", Some(512))).await;
    let proxy = Proxy::start(&fake, ca.config()).await;
    wait_connected(&fake, &proxy, 0..1).await;
    events_survive(&fake, &proxy, |f| f.close_notify(0)).await;
    assert!(
        !proxy.log_lines("[shard 0] connection closed without a close frame").is_empty(),
        "close_notify reads as the end of the stream; log:\n{}",
        proxy.log.lock().unwrap().join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_certificate_for_another_name_is_refused_with_a_clear_log_line() {
    let ca = TestCa::new();
    // REST is served with a good certificate, the gateway with one for another name.
    let rest = tls_fake(2, ca.leaf("localhost", None)).await;
    let wrong = tls_fake(2, ca.leaf("wrong.example", None)).await;
    let proxy = Proxy::start(&rest, merged(ca.config(), json!({"gateway_url": wrong.gateway_url()}))).await;
    let needle = "certificate not valid for name";
    assert!(proxy.wait_log(needle).await, "no log line about the name; log:\n{}", proxy.log.lock().unwrap().join("\n"));
    let line = proxy.log_lines(needle).remove(0);
    eprintln!("the proxy logged: {line}");
    for part in ["[shard 0] cannot connect to wss://localhost:", "TLS handshake with localhost failed", "wrong.example"]
    {
        assert!(line.contains(part), "`{part}` in: {line}");
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(wrong.identify_count() + wrong.resume_count(), 0, "nothing was sent to the impostor");
    assert!(!wrong.connected(0) && !rest.connected(0));
    let (status, _) = common::http_get(&proxy.addr, "/ready").await;
    assert_eq!(status, 503, "the shard is not ready");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untrusted_or_misnamed_rest_certificates_and_bad_root_files_stop_the_start() {
    let ca = TestCa::new();
    // A certificate for another name: /gateway/bot is refused.
    let wrong = tls_fake(1, ca.leaf("wrong.example", None)).await;
    let (code, stderr) = run_proxy_to_exit(&wrong, ca.config(), &[]).await;
    assert_ne!(code, Some(0));
    assert!(
        stderr.contains("/gateway/bot failed")
            && stderr.contains("TLS handshake with localhost failed")
            && stderr.contains("certificate not valid for name \"localhost\"")
            && stderr.contains("wrong.example"),
        "{stderr}"
    );
    // A CA nobody told the proxy about: refused, with a hint where roots come from.
    let good = tls_fake(1, ca.leaf("localhost", None)).await;
    let (code, stderr) = run_proxy_to_exit(&good, json!({}), &[("SSL_CERT_FILE", "")]).await;
    assert_ne!(code, Some(0));
    assert!(stderr.contains("UnknownIssuer") && stderr.contains("`tls_ca_file` or SSL_CERT_FILE"), "{stderr}");
    // Root files that are missing or hold no certificate name the key (or the variable).
    let (code, stderr) = run_proxy_to_exit(&good, json!({"tls_ca_file": "/nonexistent/ca.pem"}), &[]).await;
    assert_ne!(code, Some(0));
    assert!(stderr.contains("config key `tls_ca_file`: cannot read /nonexistent/ca.pem"), "{stderr}");
    let not_pem = ca.file.with_file_name("not-a-certificate.txt");
    std::fs::write(&not_pem, "hello\n").unwrap();
    let (code, stderr) = run_proxy_to_exit(&good, json!({}), &[("SSL_CERT_FILE", not_pem.to_str().unwrap())]).await;
    assert_ne!(code, Some(0));
    assert!(
        stderr.contains("environment variable SSL_CERT_FILE: ") && stderr.contains("has no certificate"),
        "{stderr}"
    );
}
