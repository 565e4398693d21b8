#!/usr/bin/env bash
# Fleet quota path against the local path, end to end on loopback: one Rampart
# (benches/configs/fleet-vs-local.toml) with a redis-server on 127.0.0.1:16379 and
# an nginx origin; wrk alternates between a route with a local bucket and one with
# a fleet bucket (same rate, nobody limited). Prints requests/s and latency
# percentiles per path, 3 rounds, medians. Bounded runs.
#   benches/fleet.sh [ROUNDS] [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}; secs=${2:-8}
need=()
command -v nginx >/dev/null || need+=(nginx-light)
command -v wrk >/dev/null || need+=(wrk)
command -v redis-server >/dev/null || need+=(redis-server)
[ ${#need[@]} -eq 0 ] || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null; }
cargo build --release -p rampart
tmp=$(mktemp -d)
redis-server --bind 127.0.0.1 --port 16379 --save "" --appendonly no --daemonize yes --pidfile "$tmp/redis.pid" --dir "$tmp" >/dev/null
# shellcheck source=benches/origin.sh
. benches/origin.sh
start_origin "$tmp"
export RAMPART_ADMIN_TOKEN=bench-token-0123456789abcdef
RUST_LOG=warn target/release/rampart run --config benches/configs/fleet-vs-local.toml >"$tmp/rampart.log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null; kill $(cat "$tmp/origin.pid") $(cat "$tmp/redis.pid") 2>/dev/null; rm -rf "$tmp"' EXIT
sleep 2
for i in $(seq 1 "$rounds"); do
  for path in local fleet; do
    wrk -t1 -c32 -d"${secs}s" --latency "http://127.0.0.1:18081/$path" \
      | awk -v p="$path" '/Requests\/sec/ {r=$2} / 50%/ {p50=$2} / 99%/ {p99=$2} /Non-2xx/ {bad=$NF} END {print p, r, p50, p99, (bad==""?0:bad)}'
  done
done | python3 -c "
import sys, statistics as s
def us(v):
    for suf, m in (('us',1),('ms',1000),('s',1e6)):
        if v.endswith(suf): return float(v[:-len(suf)])*m
rows={}
for line in sys.stdin:
    p, r, p50, p99, bad = line.split()
    rows.setdefault(p, []).append((float(r), us(p50), us(p99), int(bad)))
print(f\"{'path':6} {'req/s':>9} {'p50 us':>8} {'p99 us':>8} {'non-2xx':>8}\")
for p, v in rows.items():
    print(f'{p:6} {s.median(x[0] for x in v):9.0f} {s.median(x[1] for x in v):8.0f} {s.median(x[2] for x in v):8.0f} {sum(x[3] for x in v):8d}')
"
curl -s -H "Authorization: Bearer $RAMPART_ADMIN_TOKEN" http://127.0.0.1:19902/metrics | grep -E '^rampart_fleet_redis_duration_seconds_(sum|count)|^rampart_fleet_degraded' || true
