#!/usr/bin/env bash
# Runs gateway-proxy.
#   With a bot token (TOKEN in the environment, or `token` in ./config.json):
#     runs the proxy against Discord with ./config.json (or $CONFIG).
#   Without one (or with --demo): a demo against the bundled fake Discord:
#     starts fake-discord, the proxy pointed at it, and a demo bot that
#     connects through the proxy and prints the events it receives.
#   DEMO_SECONDS=N ends the demo after N seconds (default: until Ctrl-C).
set -euo pipefail
cd "$(dirname "$0")/.."
config=${CONFIG:-config.json}

demo=1
if [ "${1:-}" != "--demo" ]; then
  if [ -n "${TOKEN:-}" ]; then demo=0; fi
  if [ -f "$config" ] && grep -q '"token"' "$config" && ! grep -q 'YOUR_BOT_TOKEN' "$config"; then demo=0; fi
fi

if [ "$demo" = 0 ]; then
  cargo build --release -p gateway-proxy
  exec target/release/gateway-proxy --config "$config"
fi

cargo build --release -p gateway-proxy -p fake-discord --bins
dir=target/demo
mkdir -p "$dir"
rest=${DEMO_REST_PORT:-8800}
gw=${DEMO_GATEWAY_PORT:-8801}
port=${DEMO_PORT:-7878}
cat > "$dir/config.json" <<JSON
{
  "log_level": "info",
  "token": "fake-token",
  "intents": 513,
  "host": "127.0.0.1",
  "port": $port,
  "api_url": "http://127.0.0.1:$rest/api/v10",
  "activity": {"type": 0, "name": "demo on shard {{shard}}"}
}
JSON
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM

echo "== demo: fake Discord on 127.0.0.1:$rest (REST) and :$gw (gateway), 4 shards, 20 guilds"
target/release/fake-discord --rest-port "$rest" --gateway-port "$gw" --shards 4 --guilds 20 --events-per-sec 2 --max-concurrency 4 \
  > "$dir/fake-discord.log" 2>&1 &
pids+=($!)
for _ in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/"$rest") 2>/dev/null && break; sleep 0.1; done

echo "== demo: gateway-proxy on ws://127.0.0.1:$port (log: $dir/proxy.log)"
target/release/gateway-proxy --config "$dir/config.json" > "$dir/proxy.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do [ "$(grep -c "READY with" "$dir/proxy.log" 2>/dev/null)" -ge 4 ] && break; sleep 0.1; done
grep -E "shards in total|READY with" "$dir/proxy.log" | sed 's/^/   proxy: /' || true

echo "== demo: a bot connects through the proxy (Ctrl-C to stop)"
if [ -n "${DEMO_SECONDS:-}" ]; then
  target/release/demo-client --url "ws://127.0.0.1:$port" --token fake-token --seconds "$DEMO_SECONDS"
else
  target/release/demo-client --url "ws://127.0.0.1:$port" --token fake-token
fi
