//! A real Discord client library (serenity 0.12) run through the proxy.
//!
//! serenity's `Shard` cannot be driven from outside the crate: the only way
//! to read it (`WsClient::recv_json`) is `pub(crate)`. So the bot here is what
//! serenity's own `Client` runs, minus the REST call for the gateway URL: a
//! `ShardManager` (its queuer starts a `ShardRunner`, which identifies,
//! heartbeats and resumes) with a `RawEventHandler` that forwards every
//! dispatch to the test.
//!
//! The bot runs on its own current-thread runtime, on its own thread. serenity
//! hands each event to its handlers through a `tokio::spawn` of its own; on a
//! multi-thread runtime the last task spawned runs first (the LIFO slot), so
//! two events read together could reach the handler swapped. On a
//! current-thread runtime spawned tasks run in order.

mod common;

use common::{fake, message, wait_connected, wait_metric, Client, Proxy, WAIT};
use fake_discord::FakeDiscord;
use serde_json::{json, Value};
use serenity::{
    async_trait,
    client::{Context, RawEventHandler},
    futures::StreamExt as _,
    gateway::{ShardManager, ShardManagerOptions, ShardRunnerMessage},
    http::Http,
    model::{
        event::{Event, GatewayEvent, GuildCreateEvent, MessageCreateEvent, ReadyEvent, ResumedEvent},
        gateway::GatewayIntents,
        id::{ChannelId, GuildId, RoleId, ShardId},
    },
    prelude::{Mutex, RwLock, TypeMap},
};
use std::{collections::BTreeSet, sync::Arc, time::Duration};

/// A serenity bot running one shard of `total`.
struct Bot {
    shard: u32,
    total: u32,
    /// Dispatches as serenity handed them to its handlers, or why it stopped.
    events: tokio::sync::mpsc::UnboundedReceiver<Result<Event, String>>,
    manager: Arc<ShardManager>,
    /// The URL serenity reads before each connection: holding its lock
    /// holds serenity's reconnect.
    ws_url: Arc<Mutex<String>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// serenity's raw handler: every dispatch, as parsed, to the test.
struct Forward(tokio::sync::mpsc::UnboundedSender<Result<Event, String>>);

#[async_trait]
impl RawEventHandler for Forward {
    async fn raw_event(&self, _ctx: Context, event: Event) {
        let _ = self.0.send(Ok(event));
    }
}

impl Bot {
    /// Starts shard `shard` of `total` against the proxy, as serenity's client would.
    fn start(proxy: &Proxy, token: &str, shard: u32, total: u32) -> Bot {
        let (tx, events) = tokio::sync::mpsc::unbounded_channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (manager_tx, manager_rx) = std::sync::mpsc::channel();
        let ws_url = Arc::new(Mutex::new(proxy.url()));
        let (url, token) = (Arc::clone(&ws_url), token.to_owned());
        let thread = std::thread::Builder::new()
            .name(format!("serenity-shard-{shard}"))
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
                rt.block_on(async move {
                    let forward: Arc<dyn RawEventHandler> = Arc::new(Forward(tx.clone()));
                    let (manager, mut ended) = ShardManager::new(ShardManagerOptions {
                        data: Arc::new(RwLock::new(TypeMap::new())),
                        event_handlers: Vec::new(),
                        raw_event_handlers: vec![forward],
                        shard_index: shard,
                        shard_init: 1,
                        shard_total: total,
                        ws_url: url,
                        // Never called: the gateway URL is given, and nothing here uses REST.
                        http: Arc::new(Http::new(&token)),
                        intents: GatewayIntents::GUILDS | GatewayIntents::GUILD_MESSAGES,
                        presence: None,
                    });
                    manager.initialize().expect("serenity queues the shard");
                    let _ = manager_tx.send(Arc::clone(&manager));
                    tokio::select! {
                        _ = stopped => {}
                        // A fatal gateway error (bad token, intents) ends the manager.
                        ret = ended.next() => {
                            let _ = tx.send(Err(format!("serenity's shard manager ended: {ret:?}")));
                        }
                    }
                });
                // Like a bot process exiting: the socket goes without a close frame.
                rt.shutdown_timeout(Duration::from_secs(1));
            })
            .expect("a thread for serenity");
        let manager = manager_rx.recv_timeout(WAIT).expect("serenity's shard manager starts");
        Bot { shard, total, events, manager, ws_url, stop: Some(stop), thread: Some(thread) }
    }

    /// The next dispatch serenity handed to its handlers.
    async fn next_event(&mut self) -> Event {
        let item = tokio::time::timeout(WAIT, self.events.recv())
            .await
            .unwrap_or_else(|_| panic!("serenity delivered no event in {WAIT:?} (RUST_LOG=serenity=debug shows why)"))
            .expect("serenity's thread is running");
        match item {
            // serenity turns a dispatch its models reject into `Unknown`.
            Ok(Event::Unknown(u)) => match why_rejected(&u.kind, &u.value) {
                Some(why) => panic!("serenity could not parse {}: {why}\n{}", u.kind, u.value),
                None => panic!("unexpected event {} {}", u.kind, u.value),
            },
            Ok(event) => event,
            Err(fatal) => panic!("{fatal}"),
        }
    }

    /// Has serenity close its socket with `code`, as if the connection broke.
    async fn close_socket(&self, code: u16) {
        let runners = self.manager.runners.lock().await;
        let runner = runners.get(&ShardId(self.shard)).expect("serenity runs the shard");
        runner.runner_tx.send_to_shard(ShardRunnerMessage::Close(code, Some("e2e: reconnect".into())));
    }
}

impl Drop for Bot {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Why serenity's model for a `kind` dispatch rejects `d` (None: a type it does not model).
fn why_rejected(kind: &str, d: &Value) -> Option<String> {
    fn check<T: serde::de::DeserializeOwned>(d: &Value) -> Option<String> {
        serde_path_to_error::deserialize::<_, T>(d.clone()).err().map(|e| e.to_string())
    }
    match kind {
        "READY" => check::<ReadyEvent>(d),
        "GUILD_CREATE" => check::<GuildCreateEvent>(d),
        "MESSAGE_CREATE" => check::<MessageCreateEvent>(d),
        "RESUMED" => check::<ResumedEvent>(d),
        _ => None,
    }
}

fn kind(event: &Event) -> String {
    event.name().unwrap_or_else(|| "an unknown event".into())
}

/// Reads READY and one GUILD_CREATE per guild of the shard; returns READY's session id.
async fn load(bot: &mut Bot, fake: &FakeDiscord, expected: &BTreeSet<u64>) -> String {
    let ready = match bot.next_event().await {
        Event::Ready(r) => r.ready,
        other => panic!("expected READY, got {}", kind(&other)),
    };
    let listed: BTreeSet<u64> = ready.guilds.iter().map(|g| g.id.get()).collect();
    assert_eq!(&listed, expected, "READY lists exactly the shard's guilds");
    let shard = ready.shard.expect("READY carries the shard");
    assert_eq!((shard.id.0, shard.total), (bot.shard, bot.total));
    assert_eq!(ready.user.id.get(), fake.bot_user_id());
    assert_eq!(ready.application.id.get(), fake.generator().application_id());
    let mut created = BTreeSet::new();
    while created.len() < expected.len() {
        let guild = match bot.next_event().await {
            Event::GuildCreate(g) => g.guild,
            other => panic!("expected GUILD_CREATE, got {}", kind(&other)),
        };
        let id = guild.id.get();
        let index = fake.generator().guild_index(id).expect("one of the fake's guilds");
        let sent = fake.generator().guild_create(index, false, 250);
        // serenity skips a channel it cannot parse instead of failing: count them.
        assert_eq!(guild.channels.len(), sent["channels"].as_array().unwrap().len(), "channels of {id}");
        assert_eq!(guild.roles.len(), sent["roles"].as_array().unwrap().len(), "roles of {id}");
        let first = ChannelId::new(fake.first_channel_id(id));
        assert_eq!(guild.channels.get(&first).map(|c| c.name.as_str()), Some("general"));
        assert_eq!(guild.channels[&first].guild_id, guild.id);
        assert!(guild.roles.contains_key(&RoleId::new(id)), "@everyone of {id}");
        assert!(guild.members.contains_key(&ready.user.id), "the bot's own member of {id}");
        assert!(created.insert(id), "one GUILD_CREATE per guild, {id} came twice");
    }
    assert_eq!(&created, expected);
    ready.session_id
}

/// The next event is MESSAGE_CREATE `content` in `channel` of `guild`.
async fn expect_message(bot: &mut Bot, guild: u64, channel: u64, content: &str) {
    match bot.next_event().await {
        Event::MessageCreate(m) => {
            assert_eq!(m.message.content, content);
            assert_eq!(m.message.channel_id, ChannelId::new(channel));
            assert_eq!(m.message.guild_id, Some(GuildId::new(guild)));
        }
        other => panic!("expected MESSAGE_CREATE {content:?}, got {}", kind(&other)),
    }
}

/// The shard's first guild and its first text channel.
fn first_channel(fake: &FakeDiscord, expected: &BTreeSet<u64>) -> (u64, u64) {
    let guild = *expected.iter().next().expect("the shard has guilds");
    (guild, fake.first_channel_id(guild))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serenity_shard_runs_and_restarts_through_the_proxy_without_identifying_upstream() {
    let _ = env_logger::builder().is_test(true).try_init();
    let fake = fake(2, 12).await;
    let proxy = Proxy::start(&fake, json!({})).await;
    wait_connected(&fake, &proxy, 0..2).await;
    let identifies = fake.identify_count();
    assert_eq!(identifies, 2);

    let expected: BTreeSet<u64> = fake.guild_ids_for_shard(1, 2).into_iter().collect();
    let (guild, channel) = first_channel(&fake, &expected);
    let mut bot = Bot::start(&proxy, fake.token(), 1, 2);
    let first_session = load(&mut bot, &fake, &expected).await;
    fake.inject(1, "MESSAGE_CREATE", message(guild, channel, 1, "through the proxy")).expect("shard 1 has a session");
    expect_message(&mut bot, guild, channel, "through the proxy").await;

    // The bot restarts: a new serenity shard connects and identifies again.
    drop(bot);
    let mut bot = Bot::start(&proxy, fake.token(), 1, 2);
    let second_session = load(&mut bot, &fake, &expected).await;
    assert_ne!(first_session, second_session, "each client gets its own session id");
    fake.inject(1, "MESSAGE_CREATE", message(guild, channel, 2, "after restart")).unwrap();
    expect_message(&mut bot, guild, channel, "after restart").await;
    assert_eq!(fake.identify_count(), identifies, "a client restart costs no upstream Identify");
    assert_eq!(fake.resume_count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serenity_resumes_through_the_proxy_and_misses_nothing() {
    let _ = env_logger::builder().is_test(true).try_init();
    let fake = fake(2, 8).await;
    let proxy = Proxy::start(&fake, json!({})).await;
    wait_connected(&fake, &proxy, 0..2).await;
    let identifies = fake.identify_count();

    let expected: BTreeSet<u64> = fake.guild_ids_for_shard(1, 2).into_iter().collect();
    let (guild, channel) = first_channel(&fake, &expected);
    let mut bot = Bot::start(&proxy, fake.token(), 1, 2);
    load(&mut bot, &fake, &expected).await;
    fake.inject(1, "MESSAGE_CREATE", message(guild, channel, 1, "before")).unwrap();
    expect_message(&mut bot, guild, channel, "before").await;

    // The connection breaks (close 4000: serenity resumes after any close but
    // 4004 once it has a session). Its reconnect waits on the URL's lock
    // until the proxy holds what it missed.
    let url = Arc::clone(&bot.ws_url);
    let gate = url.lock().await;
    bot.close_socket(4000).await;
    wait_metric(&proxy, "gateway_proxy_clients_connected{shard=\"1\"}", 0).await;
    fake.inject(1, "MESSAGE_CREATE", message(guild, channel, 2, "missed 1")).unwrap();
    fake.inject(1, "MESSAGE_CREATE", message(guild, channel, 3, "missed 2")).unwrap();
    wait_metric(&proxy, "gateway_proxy_events_received_total{event=\"MESSAGE_CREATE\",shard=\"1\"}", 3).await;
    drop(gate);

    // The proxy replays what was missed, then RESUMED.
    let mut replayed = Vec::new();
    loop {
        match bot.next_event().await {
            Event::MessageCreate(m) => replayed.push(m.message.content),
            Event::Resumed(_) => break,
            Event::Ready(_) => panic!("serenity identified again instead of resuming"),
            other => panic!("expected the replay and RESUMED, got {}", kind(&other)),
        }
    }
    assert_eq!(replayed, ["missed 1", "missed 2"], "each missed message once, in order");
    fake.inject(1, "MESSAGE_CREATE", message(guild, channel, 4, "live")).unwrap();
    expect_message(&mut bot, guild, channel, "live").await;

    let resumes = proxy.log_lines("resumed session");
    assert!(
        resumes.iter().any(|l| l.contains("of shard 1") && l.contains(": 2 dispatches replayed")),
        "the proxy resumed serenity's session with the 2 missed messages: {resumes:?}"
    );
    assert_eq!(fake.identify_count(), identifies, "a client resume costs no upstream Identify");
    assert_eq!(fake.resume_count(), 0, "the upstream session never broke");
}

/// What the proxy sends, read by serenity's models directly: a rejected field
/// shows here by name rather than as a timeout above.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serenity_models_accept_what_the_proxy_sends() {
    let fake = fake(1, 6).await;
    let proxy = Proxy::start(&fake, json!({})).await;
    wait_connected(&fake, &proxy, 0..1).await;
    let parse = |v: Value| -> Event {
        match serde_json::from_value::<GatewayEvent>(v.clone()) {
            Ok(GatewayEvent::Dispatch(_, Event::Unknown(u))) => {
                panic!("serenity rejects {}: {:?}\n{v}", u.kind, why_rejected(&u.kind, &u.value))
            }
            Ok(GatewayEvent::Dispatch(_, event)) => event,
            other => panic!("not a dispatch: {other:?}"),
        }
    };
    let expected: BTreeSet<u64> = fake.guild_ids_for_shard(0, 1).into_iter().collect();
    let (guild, channel) = first_channel(&fake, &expected);
    let mut c = Client::connect(&proxy.url(), "/?v=10&encoding=json").await;
    c.identify(fake.token(), 0, 1).await;
    let ready = c.dispatch().await;
    let session_id = ready["d"]["session_id"].as_str().expect("READY has a session id").to_owned();
    assert!(matches!(parse(ready), Event::Ready(_)));
    for _ in 0..expected.len() {
        assert!(matches!(parse(c.dispatch().await), Event::GuildCreate(_)));
    }
    fake.inject(0, "MESSAGE_CREATE", message(guild, channel, 1, "parsed")).unwrap();
    let m = c.dispatch().await;
    let seq = m["s"].as_u64().expect("a dispatch has a seq");
    assert!(matches!(parse(m), Event::MessageCreate(ref e) if e.message.content == "parsed"));
    drop(c);
    fake.inject(0, "MESSAGE_CREATE", message(guild, channel, 2, "missed")).unwrap();
    let mut again = Client::connect(&proxy.url(), "/?v=10&encoding=json").await;
    again.resume(fake.token(), &session_id, seq).await;
    let (replayed, resumed) = again.dispatches_until("RESUMED").await;
    assert_eq!(replayed.len(), 1, "{replayed:?}");
    assert!(matches!(parse(replayed[0].clone()), Event::MessageCreate(ref e) if e.message.content == "missed"));
    assert!(matches!(parse(resumed), Event::Resumed(_)));
}
