//! twilight-gateway 0.18 (a real Discord client library, zstd-stream) talks
//! to the fake directly: identify, guild creates, injected events, and an
//! automatic resume after an abrupt drop.

use std::time::Duration;

use fake_discord::{FakeConfig, FakeDiscord};
use twilight_gateway::{ConfigBuilder, Event, EventTypeFlags, Intents, Shard, ShardId, StreamExt as _};

async fn next_event(shard: &mut Shard) -> Event {
    loop {
        let item = tokio::time::timeout(Duration::from_secs(10), shard.next_event(EventTypeFlags::all()))
            .await
            .expect("timed out waiting for a twilight event")
            .expect("shard stream ended");
        match item {
            Ok(event) => return event,
            Err(e) => eprintln!("twilight receive error (reconnects): {e}"),
        }
    }
}

#[tokio::test]
async fn twilight_gateway_identifies_receives_and_resumes() {
    let fake = FakeDiscord::start(FakeConfig { unavailable_guilds: 1, ..FakeConfig::default() }).await.unwrap();
    let config = ConfigBuilder::new(
        fake.token().to_owned(),
        Intents::GUILDS | Intents::GUILD_MESSAGES | Intents::GUILD_PRESENCES | Intents::GUILD_MEMBERS,
    )
    .proxy_url(fake.gateway_url())
    .build();
    // Shard 3 of 4 holds the last guild, which is unavailable.
    let mut shard = Shard::with_config(ShardId::new(3, 4), config);

    let ready = loop {
        match next_event(&mut shard).await {
            Event::Ready(ready) => break ready,
            Event::GatewayHello(_) | Event::GatewayHeartbeatAck => {}
            other => panic!("unexpected {:?}", other.kind()),
        }
    };
    assert_eq!(ready.guilds.len(), 5);
    assert_eq!(ready.user.id.get(), fake.bot_user_id());
    let mut guilds = 0;
    while guilds < 4 {
        match next_event(&mut shard).await {
            Event::GuildCreate(g) => {
                assert!(fake.guild_ids_for_shard(3, 4).contains(&g.id().get()));
                guilds += 1;
            }
            Event::GatewayHeartbeatAck => {}
            other => panic!("unexpected {:?}", other.kind()),
        }
    }

    let generator = fake.generator();
    let guild_id = fake.guild_ids_for_shard(3, 4)[0];
    let i = generator.guild_index(guild_id).unwrap();
    let msg =
        generator.message_create(i, 1, 0, fake_discord::payloads::now_snowflake(1), "hello from the fake discord #1");
    assert!(fake.inject(3, "MESSAGE_CREATE", msg).is_some());
    let seen = loop {
        if let Event::MessageCreate(m) = next_event(&mut shard).await {
            break m;
        }
    };
    assert_eq!(seen.content, "hello from the fake discord #1");
    assert_eq!(seen.guild_id.map(|g| g.get()), Some(guild_id));
    assert_eq!(seen.channel_id.get(), fake.first_channel_id(guild_id));

    // Abrupt drop: twilight resumes and gets what it missed, then RESUMED.
    assert!(fake.drop_connection(3));
    for n in 2..4 {
        let msg = generator.message_create(i, 2, 1, fake_discord::payloads::now_snowflake(n), &format!("missed #{n}"));
        fake.inject(3, "MESSAGE_CREATE", msg);
    }
    let mut missed = Vec::new();
    loop {
        match next_event(&mut shard).await {
            Event::MessageCreate(m) => missed.push(m.content.clone()),
            Event::Resumed => break,
            _ => {}
        }
    }
    assert_eq!(missed, vec!["missed #2", "missed #3"]);
    assert_eq!(fake.resume_count_for(3), 1);
    assert_eq!(fake.identify_count_for(3), 1);
    assert!(fake.connected(3));
}
