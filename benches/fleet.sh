#!/usr/bin/env bash
# Fleet quota path against the local path, end to end on loopback: one Rampart
# (benches/configs/fleet-vs-local.toml) with a redis-server on 127.0.0.1:16379 and
# an nginx origin; wrk alternates between a route with a local bucket and one with
# a fleet bucket (same rate, nobody limited). Prints requests/s and latency
# percentiles per path, 3 rounds, medians. Then the faults, each bounded: a flood
# of refused requests on a tiny fleet bucket (Redis calls per refused request),
# Redis frozen (SIGSTOP) and Redis refusing connections (killed) while wrk runs
# on a route with two fleet rules (worst and p99 request wait, Redis attempts),
# with the configured timeout of 50 ms as the ceiling to compare against.
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
trap 'kill $pid 2>/dev/null; kill $(cat "$tmp/origin.pid" "$tmp/redis.pid" 2>/dev/null) 2>/dev/null; rm -rf "$tmp"' EXIT
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
metric() { # SERIES -> value (0 when absent)
  curl -s -H "Authorization: Bearer $RAMPART_ADMIN_TOKEN" http://127.0.0.1:19902/metrics \
    | awk -v s="$1" 'index($0, s" ") == 1 {print $2; found=1} END {if (!found) print 0}'
}
calls='rampart_fleet_redis_duration_seconds_count{op="quota"}'
errors='rampart_fleet_redis_errors_total{op="quota"}'
wrk_row() { # LABEL SECONDS PATH: requests, non-2xx, p99, max
  wrk -t1 -c32 -d"$2s" --latency "http://127.0.0.1:18081/$3" \
    | awk -v l="$1" '/requests in/ {n=$1} / 99%/ {p99=$2} /Latency/ && !m {m=$4} /Non-2xx/ {bad=$NF} END {printf "%-28s %9s %9s %9s %9s", l, n, (bad==""?0:bad), p99, m}'
}
echo
printf '%-28s %9s %9s %9s %9s %s\n' fault requests non-2xx p99 max "redis calls"
c0=$(metric "$calls")
row=$(wrk_row "refused flood (tiny bucket)" 5 tiny)
c1=$(metric "$calls")
refused=$(echo "$row" | awk '{print $(NF-2)}')
echo "$row $(python3 -c "print(f'{$c1-$c0:.0f} ({($c1-$c0)/max($refused,1):.5f} per refused)')")"
# Redis frozen for 3 s in the middle of an 8 s run.
e0=$(metric "$errors"); c0=$(metric "$calls")
( sleep 2; kill -STOP "$(cat "$tmp/redis.pid")"; sleep 3; kill -CONT "$(cat "$tmp/redis.pid")" ) &
freezer=$!
row=$(wrk_row "redis frozen 3 s (SIGSTOP)" 8 two)
wait "$freezer"
echo "$row $(python3 -c "print(f'{$(metric "$calls")-$c0:.0f} ({$(metric "$errors")-$e0:.0f} failed)')")"
# Redis killed for the whole run: connections refused.
kill "$(cat "$tmp/redis.pid")"; sleep 1
e0=$(metric "$errors"); c0=$(metric "$calls")
row=$(wrk_row "redis refusing connections" 5 two)
echo "$row $(python3 -c "print(f'{$(metric "$calls")-$c0:.0f} ({$(metric "$errors")-$e0:.0f} failed)')")"
curl -s -H "Authorization: Bearer $RAMPART_ADMIN_TOKEN" http://127.0.0.1:19902/metrics | grep -E '^rampart_fleet_degraded' || true
