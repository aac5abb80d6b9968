//! A dispatch as relayed to clients: the payload bytes as Discord sent them
//! (or as the proxy built them) plus where its sequence number sits, so each
//! client's own sequence can be spliced in without re-encoding.

use super::{
    intents::{self, Class, ClientIntents, NameClass},
    scan::{self, ScanError},
};
use bytes::Bytes;
use std::{cell::Cell, ops::Range};

/// Index of a dispatch that is not in a shard's replay buffer (READY and
/// GUILD_CREATE built for one client, RESUMED).
pub const UNINDEXED: u64 = u64::MAX;

/// One dispatch, shared by every client of a shard: the payload is copied
/// once out of the websocket reader and then only referenced (`Bytes`).
/// Keeping the reader's own buffer instead pinned its chunks and made every
/// read allocate fresh pages, which measured slower than the copy.
#[derive(Debug)]
pub struct Dispatch {
    raw: Bytes,
    seq: Range<usize>,
    /// Position in the shard's replay buffer.
    index: u64,
    /// The only client session that should see it (routed replies), if any.
    target: Option<u64>,
    /// What its name says of the intents it needs, found the first time
    /// a filtering client asks (`None` until then): clients that filter
    /// nothing never pay for it.
    name_class: Cell<Option<NameClass>>,
    /// The intents it needs once `d` was read (`CLASS_UNKNOWN` until a
    /// client's intents made that necessary).
    d_need: Cell<u64>,
}

const CLASS_UNKNOWN: u64 = u64::MAX;

impl Dispatch {
    /// Wraps an upstream payload whose `s` field is at `seq`.
    pub fn from_parts(raw: impl Into<Bytes>, seq: Range<usize>) -> Self {
        let raw = raw.into();
        debug_assert!(seq.end <= raw.len());
        Self { raw, seq, index: UNINDEXED, target: None, name_class: Cell::new(None), d_need: Cell::new(CLASS_UNKNOWN) }
    }

    /// Scans a payload for its top-level `s`.
    pub fn parse(raw: impl Into<Bytes>) -> Result<Self, ScanError> {
        let raw: Bytes = raw.into();
        let fields = scan::scan(&raw)?;
        let seq = fields.s.ok_or(ScanError { at: 0 })?;
        Ok(Self::from_parts(raw, seq))
    }

    /// Builds a dispatch the proxy synthesised: `{"t":T,"s":0,"op":0,"d":D}`.
    pub fn build(event: &str, d: &[u8]) -> Self {
        Self::build_with(event, d.len(), |out| out.extend_from_slice(d))
    }

    /// Like [`Self::build`], with `d` written in place by `write_d` (about
    /// `d_len` bytes), so a large body such as a GUILD_CREATE is not copied.
    pub fn build_with(event: &str, d_len: usize, write_d: impl FnOnce(&mut Vec<u8>)) -> Self {
        let mut raw = Vec::with_capacity(event.len() + d_len + 32);
        raw.extend_from_slice(b"{\"t\":\"");
        raw.extend_from_slice(event.as_bytes());
        raw.extend_from_slice(b"\",\"s\":");
        let start = raw.len();
        raw.push(b'0');
        let end = raw.len();
        raw.extend_from_slice(b",\"op\":0,\"d\":");
        write_d(&mut raw);
        raw.push(b'}');
        Self::from_parts(raw, start..end)
    }

    /// Restricts the dispatch to one client session.
    pub fn for_session(mut self, session: u64) -> Self {
        self.target = Some(session);
        self
    }

    /// Sets the replay-buffer position (done once, when published).
    pub fn set_index(&mut self, index: u64) {
        self.index = index;
    }

    /// The replay-buffer position, if the dispatch is in one.
    pub fn index(&self) -> Option<u64> {
        (self.index != UNINDEXED).then_some(self.index)
    }

    /// The session this dispatch is for, when it is a routed reply.
    pub fn target(&self) -> Option<u64> {
        self.target
    }

    /// Whether client session `session` receives this dispatch.
    pub fn visible_to(&self, session: u64) -> bool {
        self.target.is_none_or(|t| t == session)
    }

    /// What its event name says of the intents it needs (scanned once, then remembered).
    pub fn name_class(&self) -> NameClass {
        if let Some(known) = self.name_class.get() {
            return known;
        }
        let t = scan::scan_relay(&self.raw).ok().and_then(|f| f.t).map(|r| &self.raw[r]);
        let class = t.map_or(intents::by_name(b""), intents::by_name);
        self.name_class.set(Some(class));
        class
    }

    /// Whether a client served `intents` receives it; `bot` is the bot's
    /// user id (some rules ask whether an event concerns the bot). `d` is
    /// read only when the name cannot decide for these intents, and then once.
    pub fn allowed_by(&self, intents: ClientIntents, bot: Option<u64>) -> bool {
        if let Some(decided) = intents.decide(self.name_class()) {
            return decided;
        }
        let mut need = self.d_need.get();
        if need == CLASS_UNKNOWN {
            need = match scan::scan_relay(&self.raw) {
                Ok(f) => match f.event_name(&self.raw) {
                    Some(t) => intents::classify(t, f.d.map(|r| &self.raw[r]), bot).need,
                    None => 0,
                },
                Err(_) => 0,
            };
            self.d_need.set(need);
        }
        intents.allows(Class { need, guild_create: false })
    }

    /// Whether client session `session`, served with `intents` (`None`:
    /// everything), receives this dispatch.
    pub fn reaches(&self, session: u64, intents: Option<ClientIntents>, bot: Option<u64>) -> bool {
        self.visible_to(session) && intents.is_none_or(|i| self.allowed_by(i, bot))
    }

    /// Where the sequence number sits in the payload.
    pub fn seq_range(&self) -> Range<usize> {
        self.seq.clone()
    }

    /// The bytes before the sequence number.
    pub fn head(&self) -> &[u8] {
        &self.raw[..self.seq.start]
    }

    /// The bytes after the sequence number.
    pub fn tail(&self) -> &[u8] {
        &self.raw[self.seq.end..]
    }

    /// The payload as stored (with the upstream or placeholder sequence).
    pub fn raw(&self) -> &[u8] {
        &self.raw
    }

    /// Length of the payload once `seq` is spliced in.
    pub fn len_with_seq(&self, seq: u64) -> usize {
        self.raw.len() - self.seq.len() + itoa::Buffer::new().format(seq).len()
    }

    /// Heap bytes this dispatch holds: its payload, and itself behind an
    /// `Rc` with the replay buffer's slot (a quarter of a small dispatch).
    pub fn heap_bytes(&self) -> usize {
        self.raw.len() + std::mem::size_of::<Self>() + 2 * std::mem::size_of::<usize>() + 8
    }

    /// Appends the payload with `seq` spliced in.
    pub fn write_with_seq(&self, seq: u64, out: &mut Vec<u8>) {
        out.extend_from_slice(self.head());
        out.extend_from_slice(itoa::Buffer::new().format(seq).as_bytes());
        out.extend_from_slice(self.tail());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splices_client_seq() {
        let d = Dispatch::parse(br#"{"t":"X","s":123456,"op":0,"d":{"s":1}}"#.to_vec()).unwrap();
        let mut out = Vec::new();
        d.write_with_seq(7, &mut out);
        assert_eq!(out, br#"{"t":"X","s":7,"op":0,"d":{"s":1}}"#);
        assert_eq!(d.len_with_seq(7), out.len());
    }

    #[test]
    fn class_is_found_once_and_filters() {
        let d =
            Dispatch::parse(br#"{"t":"MESSAGE_CREATE","s":3,"op":0,"d":{"id":"1","guild_id":"2"}}"#.to_vec()).unwrap();
        let guild_messages = ClientIntents::from_bits(1 << 9);
        let dms = ClientIntents::from_bits(1 << 12);
        assert!(d.reaches(7, Some(guild_messages), None));
        assert!(!d.reaches(7, Some(dms), None));
        assert!(d.reaches(7, None, None));
        assert_eq!(d.d_need.get(), 1 << 9, "d was read once, for the client with one side");
        let create = Dispatch::build("GUILD_CREATE", b"{}");
        assert!(create.name_class().guild_create && create.name_class().guild_create);
        assert!(!create.for_session(1).reaches(2, None, None), "a routed reply reaches only its session");
    }

    #[test]
    fn built_dispatch_is_valid_json() {
        let d = Dispatch::build("GUILD_DELETE", br#"{"id":"1","unavailable":true}"#);
        let mut out = Vec::new();
        d.write_with_seq(99, &mut out);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["s"], 99);
        assert_eq!(v["t"], "GUILD_DELETE");
        assert_eq!(v["d"]["unavailable"], true);
    }
}
