#!/usr/bin/env bash
# End-to-end guard for the hot path: runs the nginx yardstick
# (../shared/tools/ratio-vs-nginx) against a release Rampart with mitigation on
# and nobody limited (benches/configs/ratio-mitigation.toml), and prints the
# median throughput and CPU-per-request ratios plus the number of new origin
# connections per second (connection reuse). With FLOOR=1 it then runs the same
# yardstick against rampart-pingora-floor (the smallest Pingora proxy, built the
# way Rampart is: benches/src/bin/pingora_floor.rs), which splits the gap to
# nginx into Pingora's share and Rampart's. Binaries come from CARGO_TARGET_DIR
# (default target/); RAMPART=/path/to/rampart measures that build instead of
# building one (a before/after, or scripts/build-pgo's PGO binary). Loopback
# only, bounded runs.
#   [FLOOR=1] [RAMPART=...] benches/ratio.sh [ROUNDS] [SECONDS]
set -euo pipefail
rampart=${RAMPART:+$(realpath "$RAMPART")}  # before the cd: relative to the caller
cd "$(dirname "$0")/.."
rounds=${1:-3}; secs=${2:-8}
release=${CARGO_TARGET_DIR:-target}/release
rampart=${rampart:-$release/rampart}
[ -n "${RAMPART:-}" ] || cargo build --release -p rampart
[ -f benches/data/country.mmdb ] && [ -f benches/data/asn.mmdb ] || deploy/geoip/fetch.sh benches/data "$rampart"
[ "${FLOOR:-0}" = 1 ] && cargo build --release -p rampart-benches --bin rampart-pingora-floor
command -v nginx >/dev/null && command -v wrk >/dev/null || {
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light wrk >/dev/null
}
export RAMPART_ADMIN_TOKEN=bench-token-0123456789abcdef
tmp=$(mktemp -d)
# The yardstick starts its own origin on 19000; start one first so Rampart's
# first health check finds it.
# shellcheck source=benches/origin.sh
. benches/origin.sh
start_origin "$tmp"
RUST_LOG=warn "$rampart" run --config benches/configs/ratio-mitigation.toml >"$tmp/rampart.log" 2>&1 &
pid=$!
floor=""
trap 'kill $pid $floor 2>/dev/null; kill $(cat "$tmp/origin.pid") 2>/dev/null; rm -rf "$tmp"' EXIT
sleep 2
metric() { curl -s -H "Authorization: Bearer $RAMPART_ADMIN_TOKEN" http://127.0.0.1:19901/metrics | awk -v m="$1" '$1==m {print $2}'; }
new0=$(metric 'rampart_upstream_connections_total{pool="origin",reused="false"}'); t0=$(date +%s)
../shared/tools/ratio-vs-nginx --proxy-port 18080 --proxy-pid "$pid" --rounds "$rounds" --seconds "$secs"
new1=$(metric 'rampart_upstream_connections_total{pool="origin",reused="false"}'); t1=$(date +%s)
reused=$(metric 'rampart_upstream_connections_total{pool="origin",reused="true"}')
echo "new origin connections: $((${new1:-0} - ${new0:-0})) in $((t1 - t0)) s ($(python3 -c "print(f'{(${new1:-0}-${new0:-0})/max(1,$t1-$t0):.2f}')")/s); reused total ${reused:-0}"
if [ "${FLOOR:-0}" = 1 ]; then
  kill $pid; wait $pid 2>/dev/null || true
  "$release/rampart-pingora-floor" 127.0.0.1:18090 127.0.0.1:19000 >"$tmp/floor.log" 2>&1 &
  floor=$!
  sleep 1
  echo "pingora floor (no policy, no metrics, no header rewriting):"
  ../shared/tools/ratio-vs-nginx --proxy-port 18090 --proxy-pid "$floor" --rounds "$rounds" --seconds "$secs"
fi
