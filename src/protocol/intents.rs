//! Gateway intents: which intent brings which dispatch, by Discord's table
//! (<https://discord.com/developers/docs/events/gateway#list-of-intents>),
//! so that each client gets only what its own Identify would bring.
//!
//! Most events follow from their name alone; a few depend on the payload
//! (a message in a guild or in a DM), and then only the top level of `d` is
//! walked, never parsed.

use super::scan;
pub use twilight_model::gateway::Intents;

/// Every intent bit Discord defines.
pub const KNOWN: u64 = Intents::all().bits();

const GUILDS: u64 = Intents::GUILDS.bits();
const GUILD_MEMBERS: u64 = Intents::GUILD_MEMBERS.bits();
const GUILD_MODERATION: u64 = Intents::GUILD_MODERATION.bits();
const GUILD_EXPRESSIONS: u64 = Intents::GUILD_EMOJIS_AND_STICKERS.bits();
const GUILD_INTEGRATIONS: u64 = Intents::GUILD_INTEGRATIONS.bits();
const GUILD_WEBHOOKS: u64 = Intents::GUILD_WEBHOOKS.bits();
const GUILD_INVITES: u64 = Intents::GUILD_INVITES.bits();
const GUILD_VOICE_STATES: u64 = Intents::GUILD_VOICE_STATES.bits();
const GUILD_PRESENCES: u64 = Intents::GUILD_PRESENCES.bits();
const GUILD_MESSAGES: u64 = Intents::GUILD_MESSAGES.bits();
const GUILD_MESSAGE_REACTIONS: u64 = Intents::GUILD_MESSAGE_REACTIONS.bits();
const GUILD_MESSAGE_TYPING: u64 = Intents::GUILD_MESSAGE_TYPING.bits();
const DIRECT_MESSAGES: u64 = Intents::DIRECT_MESSAGES.bits();
const DIRECT_MESSAGE_REACTIONS: u64 = Intents::DIRECT_MESSAGE_REACTIONS.bits();
const DIRECT_MESSAGE_TYPING: u64 = Intents::DIRECT_MESSAGE_TYPING.bits();
const MESSAGE_CONTENT: u64 = Intents::MESSAGE_CONTENT.bits();
const GUILD_SCHEDULED_EVENTS: u64 = Intents::GUILD_SCHEDULED_EVENTS.bits();
const AUTO_MODERATION_CONFIGURATION: u64 = Intents::AUTO_MODERATION_CONFIGURATION.bits();
const AUTO_MODERATION_EXECUTION: u64 = Intents::AUTO_MODERATION_EXECUTION.bits();
const GUILD_MESSAGE_POLLS: u64 = Intents::GUILD_MESSAGE_POLLS.bits();
const DIRECT_MESSAGE_POLLS: u64 = Intents::DIRECT_MESSAGE_POLLS.bits();

/// What a dispatch asks of a client's intents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Class {
    /// The client needs any one of these bits; `0`: every client gets it
    /// (READY, RESUMED, INTERACTION_CREATE, replies, unknown events).
    pub need: u64,
    /// A GUILD_CREATE, whose members, presences and voice states depend on
    /// the client's GUILD_MEMBERS, GUILD_PRESENCES and GUILD_VOICE_STATES.
    pub guild_create: bool,
}

impl Class {
    /// A dispatch every client gets.
    pub const ANY: Self = Self { need: 0, guild_create: false };

    const fn needs(need: u64) -> Self {
        Self { need, guild_create: false }
    }
}

/// How an event's class is found.
enum Rule {
    /// From the name alone.
    Fixed(Class),
    /// The first bits in a guild (`d` has a `guild_id`), the second in a DM.
    GuildOrDm(u64, u64),
    /// THREAD_MEMBERS_UPDATE: GUILD_MEMBERS, or GUILDS when it concerns the bot itself.
    ThreadMembers,
}

fn rule(t: &[u8]) -> Rule {
    let fixed = |need| Rule::Fixed(Class::needs(need));
    match t {
        b"GUILD_CREATE" => Rule::Fixed(Class { need: GUILDS, guild_create: true }),
        b"GUILD_UPDATE"
        | b"GUILD_DELETE"
        | b"GUILD_ROLE_CREATE"
        | b"GUILD_ROLE_UPDATE"
        | b"GUILD_ROLE_DELETE"
        | b"CHANNEL_CREATE"
        | b"CHANNEL_UPDATE"
        | b"CHANNEL_DELETE"
        | b"THREAD_CREATE"
        | b"THREAD_UPDATE"
        | b"THREAD_DELETE"
        | b"THREAD_LIST_SYNC"
        | b"THREAD_MEMBER_UPDATE"
        | b"STAGE_INSTANCE_CREATE"
        | b"STAGE_INSTANCE_UPDATE"
        | b"STAGE_INSTANCE_DELETE" => fixed(GUILDS),
        b"CHANNEL_PINS_UPDATE" => Rule::GuildOrDm(GUILDS, DIRECT_MESSAGES),
        b"THREAD_MEMBERS_UPDATE" => Rule::ThreadMembers,
        b"GUILD_MEMBER_ADD" | b"GUILD_MEMBER_UPDATE" | b"GUILD_MEMBER_REMOVE" => fixed(GUILD_MEMBERS),
        b"GUILD_AUDIT_LOG_ENTRY_CREATE" | b"GUILD_BAN_ADD" | b"GUILD_BAN_REMOVE" => fixed(GUILD_MODERATION),
        b"GUILD_EMOJIS_UPDATE"
        | b"GUILD_STICKERS_UPDATE"
        | b"GUILD_SOUNDBOARD_SOUND_CREATE"
        | b"GUILD_SOUNDBOARD_SOUND_UPDATE"
        | b"GUILD_SOUNDBOARD_SOUND_DELETE"
        | b"GUILD_SOUNDBOARD_SOUNDS_UPDATE" => fixed(GUILD_EXPRESSIONS),
        b"GUILD_INTEGRATIONS_UPDATE" | b"INTEGRATION_CREATE" | b"INTEGRATION_UPDATE" | b"INTEGRATION_DELETE" => {
            fixed(GUILD_INTEGRATIONS)
        }
        b"WEBHOOKS_UPDATE" => fixed(GUILD_WEBHOOKS),
        b"INVITE_CREATE" | b"INVITE_DELETE" => fixed(GUILD_INVITES),
        b"VOICE_STATE_UPDATE" | b"VOICE_CHANNEL_EFFECT_SEND" => fixed(GUILD_VOICE_STATES),
        b"PRESENCE_UPDATE" => fixed(GUILD_PRESENCES),
        b"MESSAGE_CREATE" | b"MESSAGE_UPDATE" | b"MESSAGE_DELETE" => Rule::GuildOrDm(GUILD_MESSAGES, DIRECT_MESSAGES),
        b"MESSAGE_DELETE_BULK" => fixed(GUILD_MESSAGES),
        b"MESSAGE_REACTION_ADD"
        | b"MESSAGE_REACTION_REMOVE"
        | b"MESSAGE_REACTION_REMOVE_ALL"
        | b"MESSAGE_REACTION_REMOVE_EMOJI" => Rule::GuildOrDm(GUILD_MESSAGE_REACTIONS, DIRECT_MESSAGE_REACTIONS),
        b"TYPING_START" => Rule::GuildOrDm(GUILD_MESSAGE_TYPING, DIRECT_MESSAGE_TYPING),
        b"GUILD_SCHEDULED_EVENT_CREATE"
        | b"GUILD_SCHEDULED_EVENT_UPDATE"
        | b"GUILD_SCHEDULED_EVENT_DELETE"
        | b"GUILD_SCHEDULED_EVENT_USER_ADD"
        | b"GUILD_SCHEDULED_EVENT_USER_REMOVE" => fixed(GUILD_SCHEDULED_EVENTS),
        b"AUTO_MODERATION_RULE_CREATE" | b"AUTO_MODERATION_RULE_UPDATE" | b"AUTO_MODERATION_RULE_DELETE" => {
            fixed(AUTO_MODERATION_CONFIGURATION)
        }
        b"AUTO_MODERATION_ACTION_EXECUTION" => fixed(AUTO_MODERATION_EXECUTION),
        b"MESSAGE_POLL_VOTE_ADD" | b"MESSAGE_POLL_VOTE_REMOVE" => {
            Rule::GuildOrDm(GUILD_MESSAGE_POLLS, DIRECT_MESSAGE_POLLS)
        }
        _ => Rule::Fixed(Class::ANY),
    }
}

/// The class of dispatch `t` whose `d` is `d` (only read when the rule
/// depends on it); `bot` is the bot's user id.
pub fn classify(t: &[u8], d: Option<&[u8]>, bot: Option<u64>) -> Class {
    match rule(t) {
        Rule::Fixed(class) => class,
        Rule::GuildOrDm(guild, dm) => {
            let in_guild = d.and_then(|d| scan::top_level_value(d, b"guild_id")).is_some_and(|v| v != b"null");
            Class::needs(if in_guild { guild } else { dm })
        }
        Rule::ThreadMembers => {
            // Without GUILD_MEMBERS Discord sends it only when the bot itself
            // was added or removed: its id quoted anywhere in the event.
            let about_bot = match (d, bot) {
                (Some(d), Some(bot)) => memchr::memmem::find(d, format!("\"{bot}\"").as_bytes()).is_some(),
                _ => false,
            };
            Class::needs(if about_bot { GUILDS | GUILD_MEMBERS } else { GUILD_MEMBERS })
        }
    }
}

/// What the name alone says of a dispatch: every client gets it, none
/// without one of `need`, and whether `d` must be read to say more.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NameClass {
    /// The union of the bits that may bring it (`0`: every client gets it).
    pub need: u64,
    /// Bits that bring it whatever `d` holds.
    pub sure: u64,
    /// Whether a client with some but not all of `need` (and none of
    /// `sure`) must wait for `d` to be read.
    pub depends_on_d: bool,
    /// A GUILD_CREATE (see [`Class::guild_create`]).
    pub guild_create: bool,
    /// A message whose content fields depend on MESSAGE_CONTENT.
    pub message_content: bool,
}

/// The class of dispatch `t` as far as its name tells.
pub fn by_name(t: &[u8]) -> NameClass {
    let message_content = matches!(t, b"MESSAGE_CREATE" | b"MESSAGE_UPDATE");
    let (need, sure, depends_on_d, guild_create) = match rule(t) {
        Rule::Fixed(c) => (c.need, c.need, false, c.guild_create),
        Rule::GuildOrDm(guild, dm) => (guild | dm, 0, true, false),
        Rule::ThreadMembers => (GUILDS | GUILD_MEMBERS, GUILD_MEMBERS, true, false),
    };
    NameClass { need, sure, depends_on_d, guild_create, message_content }
}

impl NameClass {
    /// Whether a client served `bits` gets it: `Some` when the name
    /// decides, `None` when `d` must be read ([`classify`]).
    pub fn decide(self, bits: u64) -> Option<bool> {
        let have = bits & self.need;
        if self.need == 0 || have & self.sure != 0 || (self.depends_on_d && have == self.need) {
            Some(true)
        } else if have == 0 || !self.depends_on_d {
            Some(false)
        } else {
            None
        }
    }
}

/// Discord's names of the bits in `bits`, for logs and close reasons.
pub fn names(bits: u64) -> String {
    let mut out: Vec<&str> = Intents::from_bits_truncate(bits)
        .iter_names()
        .map(|(name, _)| if name == "GUILD_EMOJIS_AND_STICKERS" { "GUILD_EXPRESSIONS" } else { name })
        .collect();
    let unknown = bits & !KNOWN;
    let unknown_text = format!("{unknown:#x}");
    if unknown != 0 {
        out.push(&unknown_text);
    }
    out.join(" | ")
}

/// What a client is sent of a GUILD_CREATE's member-related lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MembersView {
    /// Every member the proxy has.
    All,
    /// The bot and the users in voice channels (Discord's rule without GUILD_PRESENCES).
    BotAndVoice,
    /// The bot alone (without GUILD_MEMBERS).
    BotOnly,
}

/// The parts of a GUILD_CREATE a client's intents decide.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuildView {
    /// Which members are listed.
    pub members: MembersView,
    /// Whether presences are listed (GUILD_PRESENCES).
    pub presences: bool,
    /// Whether voice states are listed (GUILD_VOICE_STATES).
    pub voice_states: bool,
}

impl GuildView {
    /// Everything: what the proxy itself received.
    pub const FULL: Self = Self { members: MembersView::All, presences: true, voice_states: true };
}

/// The intents a client is served with: its own Identify's, cut to what the
/// proxy receives. `None` in a session means no filtering at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientIntents {
    bits: u64,
    /// The proxy receives message contents and this client did not ask:
    /// its guild messages come with their content fields empty.
    strip_content: bool,
}

impl ClientIntents {
    /// The filter for a client asking `asked` of a proxy receiving
    /// `proxy`; `None` when the client asked for everything the proxy has.
    pub fn for_client(asked: u64, proxy: u64) -> Option<Self> {
        let bits = asked & proxy;
        let strip_content = proxy & MESSAGE_CONTENT != 0 && bits & MESSAGE_CONTENT == 0;
        (bits != proxy).then_some(Self { bits, strip_content })
    }

    /// A filter with exactly `bits`, of a proxy that does not receive
    /// message contents.
    #[cfg(test)]
    pub fn from_bits(bits: u64) -> Self {
        Self { bits, strip_content: false }
    }

    /// Whether its guild messages come with empty content fields.
    pub fn strips_content(self) -> bool {
        self.strip_content
    }

    /// The intent bits served.
    pub fn bits(self) -> u64 {
        self.bits
    }

    /// Whether a dispatch of class `class` reaches the client.
    pub fn allows(self, class: Class) -> bool {
        class.need == 0 || class.need & self.bits != 0
    }

    /// Like [`Self::allows`], on what the name alone tells.
    pub fn decide(self, class: NameClass) -> Option<bool> {
        class.decide(self.bits)
    }

    /// What the client is sent of a GUILD_CREATE.
    pub fn guild_view(self) -> GuildView {
        let members = if self.bits & GUILD_MEMBERS == 0 {
            MembersView::BotOnly
        } else if self.bits & GUILD_PRESENCES == 0 {
            MembersView::BotAndVoice
        } else {
            MembersView::All
        };
        GuildView {
            members,
            presences: self.bits & GUILD_PRESENCES != 0,
            voice_states: self.bits & GUILD_VOICE_STATES != 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn need(t: &str, d: &str) -> u64 {
        classify(t.as_bytes(), Some(d.as_bytes()), Some(42)).need
    }

    #[test]
    fn events_follow_discords_table() {
        assert_eq!(need("GUILD_MEMBER_ADD", "{}"), GUILD_MEMBERS);
        assert_eq!(need("PRESENCE_UPDATE", "{}"), GUILD_PRESENCES);
        assert_eq!(need("GUILD_BAN_ADD", "{}"), GUILD_MODERATION);
        assert_eq!(need("GUILD_STICKERS_UPDATE", "{}"), GUILD_EXPRESSIONS);
        assert_eq!(need("VOICE_STATE_UPDATE", "{}"), GUILD_VOICE_STATES);
        assert_eq!(need("AUTO_MODERATION_ACTION_EXECUTION", "{}"), AUTO_MODERATION_EXECUTION);
        assert_eq!(need("GUILD_SCHEDULED_EVENT_USER_ADD", "{}"), GUILD_SCHEDULED_EVENTS);
        for t in ["READY", "RESUMED", "INTERACTION_CREATE", "GUILD_MEMBERS_CHUNK", "USER_UPDATE", "SOMETHING_NEW"] {
            assert_eq!(need(t, "{}"), 0, "{t}");
        }
        assert!(classify(b"GUILD_CREATE", None, None).guild_create);
        assert!(!by_name(b"GUILD_MEMBER_UPDATE").depends_on_d && by_name(b"MESSAGE_CREATE").depends_on_d);
    }

    #[test]
    fn messages_depend_on_where_they_were_sent() {
        let guild = r#"{"id":"1","content":"\"guild_id\":\"9\"","guild_id":"9"}"#;
        let dm = r#"{"id":"1","content":"{\"guild_id\":\"9\"}","author":{"guild_id":"3"}}"#;
        assert_eq!(need("MESSAGE_CREATE", guild), GUILD_MESSAGES);
        assert_eq!(need("MESSAGE_CREATE", dm), DIRECT_MESSAGES, "nested and quoted keys do not count");
        assert_eq!(need("MESSAGE_REACTION_ADD", guild), GUILD_MESSAGE_REACTIONS);
        assert_eq!(need("MESSAGE_REACTION_ADD", dm), DIRECT_MESSAGE_REACTIONS);
        assert_eq!(need("TYPING_START", dm), DIRECT_MESSAGE_TYPING);
        assert_eq!(need("CHANNEL_PINS_UPDATE", guild), GUILDS);
        assert_eq!(need("CHANNEL_PINS_UPDATE", r#"{"channel_id":"1","guild_id":null}"#), DIRECT_MESSAGES);
        assert_eq!(need("MESSAGE_POLL_VOTE_ADD", dm), DIRECT_MESSAGE_POLLS);
    }

    #[test]
    fn thread_members_update_reaches_guilds_only_about_the_bot() {
        let others = r#"{"id":"5","guild_id":"9","added_members":[{"user_id":"7"}]}"#;
        let bot = r#"{"id":"5","guild_id":"9","removed_member_ids":["42"]}"#;
        assert_eq!(need("THREAD_MEMBERS_UPDATE", others), GUILD_MEMBERS);
        assert_eq!(need("THREAD_MEMBERS_UPDATE", bot), GUILDS | GUILD_MEMBERS);
    }

    #[test]
    fn a_client_is_served_what_it_asked_that_the_proxy_has() {
        let proxy = GUILDS | GUILD_MEMBERS | GUILD_MESSAGES | GUILD_PRESENCES;
        assert_eq!(ClientIntents::for_client(proxy, proxy), None);
        assert_eq!(ClientIntents::for_client(KNOWN, proxy), None, "asking for more filters nothing");
        let c = ClientIntents::for_client(GUILDS | GUILD_MESSAGES | DIRECT_MESSAGES, proxy).unwrap();
        assert_eq!(c.bits(), GUILDS | GUILD_MESSAGES);
        assert!(c.allows(Class::ANY));
        assert!(c.allows(Class::needs(GUILD_MESSAGES)));
        assert!(!c.allows(Class::needs(GUILD_MEMBERS)));
        assert!(c.allows(Class::needs(GUILDS | GUILD_MEMBERS)));
        assert_eq!(c.guild_view(), GuildView { members: MembersView::BotOnly, presences: false, voice_states: false });
        let m = ClientIntents::for_client(GUILDS | GUILD_MEMBERS, proxy).unwrap();
        assert_eq!(m.guild_view().members, MembersView::BotAndVoice);
    }

    #[test]
    fn the_name_decides_unless_the_client_has_only_one_side() {
        let msg = by_name(b"MESSAGE_CREATE");
        assert_eq!(msg.decide(GUILD_MESSAGES | DIRECT_MESSAGES), Some(true), "both sides: d not read");
        assert_eq!(msg.decide(GUILDS), Some(false), "neither side");
        assert_eq!(msg.decide(GUILD_MESSAGES), None, "one side: d decides");
        let members = by_name(b"THREAD_MEMBERS_UPDATE");
        assert_eq!(members.decide(GUILD_MEMBERS), Some(true));
        assert_eq!(members.decide(GUILDS), None);
        assert_eq!(members.decide(GUILD_MESSAGES), Some(false));
        assert_eq!(by_name(b"PRESENCE_UPDATE").decide(GUILD_PRESENCES), Some(true));
        assert_eq!(by_name(b"PRESENCE_UPDATE").decide(GUILDS), Some(false));
        assert_eq!(by_name(b"INTERACTION_CREATE").decide(0), Some(true));
        // Whatever `d` says, the lazy answer agrees with the full one.
        let guild = br#"{"guild_id":"1"}"#.as_slice();
        let dm = br#"{"channel_id":"1"}"#.as_slice();
        for t in ["MESSAGE_CREATE", "TYPING_START", "MESSAGE_REACTION_ADD", "THREAD_MEMBERS_UPDATE", "GUILD_BAN_ADD"] {
            for bits in [0, GUILDS, GUILD_MESSAGES, DIRECT_MESSAGES, GUILD_MEMBERS, GUILD_MESSAGE_TYPING, KNOWN] {
                for d in [guild, dm] {
                    let full = ClientIntents::from_bits(bits).allows(classify(t.as_bytes(), Some(d), Some(42)));
                    let lazy = by_name(t.as_bytes()).decide(bits).unwrap_or(full);
                    assert_eq!(lazy, full, "{t} {bits:#x} {}", String::from_utf8_lossy(d));
                }
            }
        }
    }

    #[test]
    fn only_a_proxy_with_contents_strips_them() {
        let c = ClientIntents::for_client(GUILDS | GUILD_MESSAGES, GUILDS | GUILD_MESSAGES | MESSAGE_CONTENT).unwrap();
        assert!(c.strips_content());
        let c = ClientIntents::for_client(GUILDS, GUILDS | GUILD_MESSAGES).unwrap();
        assert!(!c.strips_content(), "a proxy without contents has nothing to strip");
    }

    #[test]
    fn names_use_discords_spelling() {
        assert_eq!(names(GUILD_PRESENCES | GUILD_MEMBERS), "GUILD_MEMBERS | GUILD_PRESENCES");
        assert_eq!(names(GUILD_EXPRESSIONS), "GUILD_EXPRESSIONS");
        assert_eq!(names(1 << 30), "0x40000000");
    }
}
