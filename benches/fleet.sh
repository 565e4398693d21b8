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
# Then the topologies (benches/configs/fleet-topologies.toml): the fleet bucket
# path on one redis-server, on Sentinel (master, replica, three sentinels) and
# on a cluster (three masters, a replica each), wrk from 64 client addresses;
# and for Sentinel and the cluster, a failover under that load: the master
# holding the fleet's keys is killed (SIGKILL) 4 s into a 16 s run, and the
# script reports when the store promoted a replica, when the node was degraded
# and back, and the refused requests (fleet_failure = "closed") and latency.
#   benches/fleet.sh [ROUNDS] [SECONDS] [all|paths|topologies]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}; secs=${2:-8}; part=${3:-all}
need=()
command -v nginx >/dev/null || need+=(nginx-light)
command -v wrk >/dev/null || need+=(wrk)
command -v redis-server >/dev/null || need+=(redis-server)
[ ${#need[@]} -eq 0 ] || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null; }
cargo build --release -p rampart
bin=${CARGO_TARGET_DIR:-target}/release/rampart
tmp=$(mktemp -d)
export RAMPART_ADMIN_TOKEN=bench-token-0123456789abcdef
# shellcheck source=benches/origin.sh
. benches/origin.sh
start_origin "$tmp"
pids=()
trap 'set +e; kill "${pids[@]}" 2>/dev/null; kill $(cat "$tmp"/*.pid 2>/dev/null) 2>/dev/null; sleep 0.2; rm -rf "$tmp"' EXIT
if [ "$part" = all ] || [ "$part" = paths ]; then
redis-server --bind 127.0.0.1 --port 16379 --save "" --appendonly no --daemonize yes --pidfile "$tmp/redis.pid" --dir "$tmp" >/dev/null
RUST_LOG=warn "$bin" run --config benches/configs/fleet-vs-local.toml >"$tmp/rampart.log" 2>&1 &
pid=$!
pids+=("$pid")
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
kill "$pid"
fi

[ "$part" = all ] || [ "$part" = topologies ] || exit 0
# --- Topologies: one server, Sentinel, cluster --------------------------------
admin3() { curl -s -H "Authorization: Bearer $RAMPART_ADMIN_TOKEN" "http://127.0.0.1:19903$1"; }
degraded() { admin3 /metrics | awk '$1 == "rampart_fleet_degraded" {print $2}'; }
quota_errors() { admin3 /metrics | awk '$1 == "rampart_fleet_redis_errors_total{op=\"quota\"}" {n=$2} END {print n + 0}'; }
now() { date +%s.%N; }
data() { # PORT [ARGS...]: a data node, pid file $tmp/data-PORT.pid
  local port=$1; shift
  mkdir -p "$tmp/d$port"
  redis-server --bind 127.0.0.1 --port "$port" --save "" --appendonly no --daemonize yes \
    --pidfile "$tmp/data-$port.pid" --dir "$tmp/d$port" "$@" >/dev/null
  until redis-cli -p "$port" ping >/dev/null 2>&1; do sleep 0.05; done
}
start_single() {
  data 16390
  store='redis_url = "redis://127.0.0.1:16390/0"'
}
start_sentinel() {
  data 16391; data 16392 --replicaof 127.0.0.1 16391
  until redis-cli -p 16392 INFO replication | grep -q master_link_status:up; do sleep 0.1; done
  for s in 26391 26392 26393; do
    printf 'sentinel monitor bench 127.0.0.1 16391 2\nsentinel down-after-milliseconds bench 1000\nsentinel failover-timeout bench 5000\n' >"$tmp/s$s.conf"
    redis-server "$tmp/s$s.conf" --sentinel --bind 127.0.0.1 --port "$s" --daemonize yes --pidfile "$tmp/sentinel-$s.pid" --dir "$tmp" >/dev/null
  done
  # Every sentinel knows the replica and the two others.
  until (for s in 26391 26392 26393; do
           redis-cli -p $s SENTINEL MASTER bench | tr '\n' ' ' | grep -q 'num-slaves 1 .*num-other-sentinels 2' || exit 1
         done); do sleep 0.2; done
  store='sentinel = { master = "bench", urls = ["redis://127.0.0.1:26391", "redis://127.0.0.1:26392", "redis://127.0.0.1:26393"] }'
}
start_cluster() {
  local nodes=()
  for p in 17001 17002 17003 17004 17005 17006; do
    data $p --cluster-enabled yes --cluster-port $((p + 10000)) --cluster-node-timeout 1000 \
      --cluster-require-full-coverage no --cluster-config-file "$tmp/d$p/nodes.conf"
    nodes+=("127.0.0.1:$p")
  done
  redis-cli --cluster create "${nodes[@]}" --cluster-replicas 1 --cluster-yes >/dev/null
  until (for p in 17001 17002 17003 17004 17005 17006; do
           redis-cli -p $p CLUSTER INFO | grep -q cluster_state:ok || exit 1
           [ "$(redis-cli -p $p CLUSTER NODES | grep -c ' connected')" = 6 ] || exit 1
           redis-cli -p $p ROLE | head -1 | grep -q master \
             || redis-cli -p $p INFO replication | grep -q master_link_status:up || exit 1
         done); do sleep 0.2; done
  store='cluster_urls = ["redis://127.0.0.1:17001", "redis://127.0.0.1:17002", "redis://127.0.0.1:17003"]'
}
master_port() { # the port of the master holding the fleet's keys
  case $1 in
    sentinel) redis-cli -p 26391 SENTINEL GET-MASTER-ADDR-BY-NAME bench | sed -n 2p ;;
    cluster)
      local slot=762 out  # CLUSTER KEYSLOT '{bench:}flags'
      for p in 17001 17002 17003 17004 17005 17006; do
        out=$(redis-cli -p $p CLUSTER NODES 2>/dev/null | awk -v s="$slot" '$3 ~ /master/ && $3 !~ /fail/ {
          for (i = 9; i <= NF; i++) { split($i, r, "-"); if (r[2] == "") r[2] = r[1]; if (s >= r[1] + 0 && s <= r[2] + 0) { split($2, a, "[:@]"); print a[2]; exit } } }')
        [ -n "$out" ] && { echo "$out"; break; }
      done ;;
  esac
  return 0  # nothing printed while no live master serves the slot
}
echo
echo "== topologies: fleet bucket path, 64 client addresses, wrk -t1 -c32, $rounds x ${secs}s, medians"
for topo in single sentinel cluster; do
  "start_$topo"
  sed "s|^redis_url = .*|$store|" benches/configs/fleet-topologies.toml >"$tmp/$topo.toml"
  RUST_LOG=warn "$bin" run --config "$tmp/$topo.toml" >"$tmp/$topo.log" 2>&1 &
  rp=$!; pids+=("$rp")
  until [ "$(degraded)" = 0 ]; do sleep 0.1; done
  for i in $(seq 1 "$rounds"); do
    for path in local fleet; do
      e0=$(quota_errors)
      wrk -t1 -c32 -d"${secs}s" --latency -s benches/xff64.lua "http://127.0.0.1:18082/$path" \
        | awk -v p="$topo/$path" -v e="$(quota_errors)" '/Requests\/sec/ {r=$2} / 50%/ {p50=$2} / 99%/ {p99=$2} /Non-2xx/ {bad=$NF} END {print p, r, p50, p99, (bad==""?0:bad)}' \
        | { read -r line; echo "$line $(( $(quota_errors) - e0 ))"; }
    done
  done >>"$tmp/topologies.txt"
  if [ "$topo" != single ]; then
    old=$(master_port "$topo")
    wrk -t1 -c32 -d16s --latency -s benches/xff64.lua http://127.0.0.1:18082/closed >"$tmp/$topo-failover.txt" &
    wp=$!
    sleep 4
    t0=$(now); kill -9 "$(cat "$tmp/data-$old.pid")"
    promoted=; down=; back=; was=0
    while kill -0 "$wp" 2>/dev/null; do
      t=$(now)
      if [ -z "$promoted" ]; then p=$(master_port "$topo"); [ -n "$p" ] && [ "$p" != "$old" ] && promoted=$t; fi
      d=$(degraded)
      # Degraded: first seen; back: when it last went from 1 to 0 (it may
      # flap while the store fails over).
      if [ "$d" = 1 ]; then [ -n "$down" ] || down=$t; was=1; fi
      if [ "$d" = 0 ] && [ "${was:-0}" = 1 ]; then back=$t; was=0; fi
      sleep 0.05
    done
    wait "$wp" || true
    awk -v topo="$topo" -v t0="$t0" -v pr="${promoted:-0}" -v dn="${down:-0}" -v bk="${back:-0}" '
      /requests in/ {n=$1} / 99%/ {p99=$2} /Latency/ && !m {m=$4} /Non-2xx/ {bad=$NF}
      END {
        printf "%s failover: promoted %s s after the kill; node degraded at %s s, back at %s s; %s requests, %s refused, p99 %s, max %s\n",
          topo, (pr ? sprintf("%.2f", pr - t0) : "never"), (dn ? sprintf("%.2f", dn - t0) : "never"),
          (bk ? sprintf("%.2f", bk - t0) : "never"), n, (bad == "" ? 0 : bad), p99, m
      }' "$tmp/$topo-failover.txt" >>"$tmp/failovers.txt"
  fi
  kill "$rp"; wait "$rp" 2>/dev/null || true
  for f in "$tmp"/data-*.pid "$tmp"/sentinel-*.pid; do
    [ -e "$f" ] || continue
    kill -9 "$(cat "$f")" 2>/dev/null || true
    rm -f "$f"
  done
  sleep 0.5
done
python3 -c "
import sys, statistics as s
def us(v):
    for suf, m in (('us',1),('ms',1000),('s',1e6)):
        if v.endswith(suf): return float(v[:-len(suf)])*m
rows={}
for line in open('$tmp/topologies.txt'):
    p, r, p50, p99, bad, errors = line.split()
    rows.setdefault(p, []).append((float(r), us(p50), us(p99), int(bad), int(float(errors))))
print(f\"{'topology/path':18} {'req/s':>9} {'p50 us':>8} {'p99 us':>8} {'non-2xx':>8} {'redis timeouts/errors':>22}\")
for p, v in rows.items():
    print(f'{p:18} {s.median(x[0] for x in v):9.0f} {s.median(x[1] for x in v):8.0f} {s.median(x[2] for x in v):8.0f} {sum(x[3] for x in v):8d} {sum(x[4] for x in v):22d}')
"
cat "$tmp/failovers.txt"
