#!/usr/bin/env bash
# Soak: 2 000 hostile connections (partial heads, dripped bodies, idle keep-alives,
# idle HTTP/2) for SECONDS against a release Rampart (benches/configs/soak.toml:
# 10 s head/body deadlines, 15 s keep-alive and HTTP/2 idle), plus a legitimate
# client at 500 requests/s. Prints benches/soak.py's JSON report: how long each
# kind of hostile connection was held, the legitimate client's success and p99,
# and Rampart's RSS over time. Loopback only; stops by itself. Not part of CI.
#   benches/soak.sh [SECONDS] [HOSTILE] [RATE]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-600}; hostile=${2:-2000}; rate=${3:-500}
command -v nginx >/dev/null || {
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light >/dev/null
}
cargo build --release -p rampart
ulimit -n "$(ulimit -Hn)"   # 2 000 hostile sockets on each side
export RAMPART_ADMIN_TOKEN=bench-token-0123456789abcdef
tmp=$(mktemp -d)
# shellcheck source=benches/origin.sh
. benches/origin.sh
start_origin "$tmp"
RUST_LOG=error target/release/rampart run --config benches/configs/soak.toml >"$tmp/rampart.log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null; kill $(cat "$tmp/origin.pid") 2>/dev/null; rm -rf "$tmp"' EXIT
for _ in $(seq 50); do
  curl -sf -o /dev/null http://127.0.0.1:18901/healthz && break
  sleep 0.2
done
python3 benches/soak.py --pid "$pid" --seconds "$secs" --hostile "$hostile" --rate "$rate"
echo "closed by the edge (rampart_client_connections_closed_total):" >&2
curl -s -H "Authorization: Bearer $RAMPART_ADMIN_TOKEN" http://127.0.0.1:18901/metrics \
  | grep -E '^rampart_client_connections_closed_total|^rampart_http_requests_total' >&2 || true
