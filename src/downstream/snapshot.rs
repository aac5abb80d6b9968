//! READY and GUILD_CREATE for a client that identifies, built from the cache.

use super::outgoing::Outgoing;
use crate::{
    hub::ShardHub,
    protocol::{dispatch::Dispatch, intents::ClientIntents},
};
use std::rc::Rc;

/// Builds READY, one GUILD_CREATE per available guild, and GUILD_DELETE
/// `{id, unavailable: true}` for guilds in an outage (or still missing
/// after the load grace period). A client served with `intents` gets the
/// guilds only with GUILDS, and their lists cut to its intents.
///
/// The guilds are frozen, not written: the client's writer turns each into
/// JSON as it sends it, so the first GUILD_CREATE leaves while the others
/// are still compact, and a client costs no more memory than the
/// collections that change while it is being sent.
pub fn build(
    hub: &ShardHub,
    session_id: &str,
    resume_url: &str,
    grace_over: bool,
    intents: Option<ClientIntents>,
) -> Vec<Outgoing> {
    let cache = hub.cache.borrow();
    let mut d = Vec::with_capacity(256 + cache.guild_count() * 40);
    d.extend_from_slice(b"{\"v\":10,\"user\":");
    d.extend_from_slice(cache.user().unwrap_or("null").as_bytes());
    d.extend_from_slice(b",\"guilds\":[");
    let mut first = true;
    for id in cache.guilds().map(|(id, _)| id).chain(cache.missing().map(|(id, _)| id)) {
        if !first {
            d.push(b',');
        }
        first = false;
        d.extend_from_slice(b"{\"id\":\"");
        d.extend_from_slice(itoa::Buffer::new().format(id).as_bytes());
        d.extend_from_slice(b"\",\"unavailable\":true}");
    }
    d.extend_from_slice(b"],\"session_id\":");
    d.extend_from_slice(serde_json::to_string(session_id).expect("string").as_bytes());
    d.extend_from_slice(b",\"resume_gateway_url\":");
    d.extend_from_slice(serde_json::to_string(resume_url).expect("string").as_bytes());
    d.extend_from_slice(format!(",\"shard\":[{},{}],\"application\":", hub.id, hub.total).as_bytes());
    d.extend_from_slice(cache.application().unwrap_or("{\"id\":\"0\",\"flags\":0}").as_bytes());
    d.extend_from_slice(
        b",\"private_channels\":[],\"guild_join_requests\":[],\"presences\":[],\"relationships\":[],\"user_settings\":{},\"geo_ordered_rtc_regions\":[],\"auth\":{}}",
    );
    let mut out = vec![Outgoing::Snapshot(vec![Rc::new(Dispatch::build("READY", &d))])];
    let guilds_class = crate::protocol::intents::by_name(b"GUILD_CREATE");
    if intents.is_some_and(|i| i.decide(guilds_class) == Some(false)) {
        return out;
    }
    out.push(Outgoing::Guilds(match intents {
        Some(i) => cache.freeze_guilds_for(i.guild_view()),
        None => cache.freeze_guilds(),
    }));
    let mut deletes = Vec::new();
    for (id, status) in cache.missing() {
        if ShardHub::report_missing(status, grace_over) {
            let body = format!("{{\"id\":\"{id}\",\"unavailable\":true}}");
            deletes.push(Rc::new(Dispatch::build("GUILD_DELETE", body.as_bytes())));
        }
    }
    if !deletes.is_empty() {
        out.push(Outgoing::Snapshot(deletes));
    }
    out
}
