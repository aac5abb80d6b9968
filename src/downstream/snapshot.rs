//! READY and GUILD_CREATE for a client that identifies, built from the cache.

use crate::{hub::ShardHub, protocol::dispatch::Dispatch};
use std::rc::Rc;

/// Builds READY, one GUILD_CREATE per available guild, and GUILD_DELETE
/// `{id, unavailable: true}` for guilds in an outage (or still missing
/// after the load grace period).
pub fn build(hub: &ShardHub, session_id: &str, resume_url: &str, grace_over: bool) -> Vec<Rc<Dispatch>> {
    let cache = hub.cache.borrow();
    let mut out = Vec::with_capacity(cache.guild_count() + 1);
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
    out.push(Rc::new(Dispatch::build("READY", &d)));
    for (id, guild) in cache.guilds() {
        // Written straight into the payload; JSON is about five times the compact form.
        let hint = guild.heap_bytes() * 5;
        out.push(Rc::new(Dispatch::build_with("GUILD_CREATE", hint, |buf| {
            cache.write_create(id, buf);
        })));
    }
    for (id, status) in cache.missing() {
        if ShardHub::report_missing(status, grace_over) {
            let body = format!("{{\"id\":\"{id}\",\"unavailable\":true}}");
            out.push(Rc::new(Dispatch::build("GUILD_DELETE", body.as_bytes())));
        }
    }
    out
}
