#!/usr/bin/env bash
# Deterministic guard for the hot path: user-space instructions per request
# (callgrind's Ir), for nginx as a proxy, the bare Pingora floor
# (rampart-pingora-floor), Rampart proxying with mitigation on and nobody
# limited (benches/configs/ratio-mitigation.toml), and Rampart rejecting a
# deny-listed client. Wall-clock ratios on this shared 2-core machine swing by
# ±10 % between rounds; instruction counts repeat to about 1 %, so a regression
# of a few percent shows here first (benches/ratio.sh remains the end-to-end
# figure, kernel time included).
#
# Method: each target runs twice under callgrind, once with a 3 s warm-up only
# and once with the warm-up plus SECONDS of load (wrk -c8, loopback), and exits
# on a signal so that callgrind writes its totals. Instructions per request =
# difference in instructions / difference in requests, so start-up and shutdown
# cancel out.
# Binaries come from CARGO_TARGET_DIR (default target/).
# RAMPART=/path/to/an/older/rampart measures that build instead of building
# one, for a before/after of one change (or scripts/build-pgo's PGO binary).
#   [RAMPART=...] benches/instructions.sh [SECONDS]
set -euo pipefail
rampart=${RAMPART:+$(realpath "$RAMPART")}  # before the cd: relative to the caller
cd "$(dirname "$0")/.."
secs=${1:-10}
release=$(mkdir -p "${CARGO_TARGET_DIR:-target}" && cd "${CARGO_TARGET_DIR:-target}" && pwd)/release
rampart=${rampart:-$release/rampart}
for tool in valgrind nginx wrk; do
  command -v $tool >/dev/null || {
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq valgrind nginx-light wrk >/dev/null
    break
  }
done
# Built one package at a time, as benches/ratio.sh does, so neither script
# rebuilds what the other built (features unify differently per invocation).
[ -n "${RAMPART:-}" ] || cargo build --release -p rampart
[ -f benches/data/country.mmdb ] && [ -f benches/data/asn.mmdb ] || deploy/geoip/fetch.sh benches/data "$rampart"
cargo build --release -p rampart-benches --bin rampart-pingora-floor --bin rampart-lean-floor
export RAMPART_ADMIN_TOKEN=bench-token-0123456789abcdef
tmp=$(mktemp -d)
# shellcheck source=benches/origin.sh
. benches/origin.sh
cat > "$tmp/proxy.conf" <<C
worker_processes 1; master_process off; daemon off; pid $tmp/proxy.pid; error_log $tmp/proxy.err warn;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 10000000;
  upstream o { server 127.0.0.1:19000; keepalive 256; }
  server { listen 127.0.0.1:19080;
    location / { proxy_pass http://o; proxy_http_version 1.1; proxy_set_header Connection ""; } } }
C
start_origin "$tmp"
trap 'kill $(cat "$tmp/origin.pid") 2>/dev/null; rm -rf "$tmp"' EXIT

# run NAME PORT SIGNAL LOAD_SECONDS HEADER COMMAND...: prints "requests instructions"
run() {
  local name=$1 port=$2 sig=$3 load=$4 header=$5; shift 5
  rm -f "$tmp/$name".cg.*
  (cd benches/configs && exec valgrind --tool=callgrind --callgrind-out-file="$tmp/$name.cg.%p" "$@") \
    >"$tmp/$name.log" 2>&1 &
  local pid=$!
  for _ in $(seq 120); do curl -s -o /dev/null "http://127.0.0.1:$port/" && break; sleep 0.5; done
  local n=0 m
  for d in 3 "$load"; do
    [ "$d" = 0 ] && continue
    m=$(wrk -t1 -c8 -d"${d}s" -H "$header" "http://127.0.0.1:$port/" | awk '/requests in/ {print $1}')
    n=$((n + m))
  done
  kill -"$sig" $pid
  wait $pid 2>/dev/null || true
  echo "$n $(awk '/^(summary|totals):/ {print $2; exit}' "$tmp/$name".cg.*)"
}

measure() { # NAME PORT SIGNAL HEADER -- COMMAND...
  local name=$1 port=$2 sig=$3 header=$4 a b; shift 5
  a=$(run "$name" "$port" "$sig" 0 "$header" "$@")
  b=$(run "$name" "$port" "$sig" "$secs" "$header" "$@")
  python3 -c "a='$a'.split(); b='$b'.split(); print(round((int(b[1])-int(a[1]))/(int(b[0])-int(a[0]))))"
}

printf '%-34s %14s %10s\n' target "Ir/request" "vs nginx"
ng=$(measure nginx 19080 QUIT "X-Bench: 1" -- nginx -c "$tmp/proxy.conf")
printf '%-34s %14s %10s\n' "nginx (proxy_pass, keepalive)" "$ng" "1.00x"
row() { printf '%-34s %14s %10s\n' "$1" "$2" "$(python3 -c "print(f'{$2/$ng:.2f}x')")"; }
row "pingora floor" "$(measure floor 18090 INT "X-Bench: 1" -- \
  "$release/rampart-pingora-floor" 127.0.0.1:18090 127.0.0.1:19000)"
row "lean floor (own request loop)" "$(measure lean 18091 INT "X-Bench: 1" -- \
  "$release/rampart-lean-floor" 127.0.0.1:18091 127.0.0.1:19000)"
row "rampart, proxied (mitigation on)" "$(measure rampart 18080 INT "X-Bench: 1" -- \
  "$rampart" run --config ratio-mitigation.toml)"
row "rampart, rejected (deny list, 403)" "$(measure rejected 18080 INT "X-Forwarded-For: 198.51.100.7" -- \
  "$rampart" run --config ratio-mitigation.toml)"
