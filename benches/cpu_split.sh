#!/usr/bin/env bash
# User and kernel CPU per request for Rampart proxying and Rampart refusing
# (benches/configs/ratio-mitigation.toml: a deny-listed client gets 403, any
# other is proxied to the tiny nginx origin), from /proc/PID/stat over ROUNDS
# runs of SECONDS of `wrk -t1 -c32` each, medians. It shows how much of a
# refusal's CPU is the kernel's receive and send on loopback, which no
# user-space work removes (issue #16's S4 goal is a ratio of the two totals).
#   benches/cpu_split.sh [ROUNDS] [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
secs=${2:-8}
for tool in nginx wrk; do
  command -v $tool >/dev/null || {
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light wrk >/dev/null
    break
  }
done
[ -f benches/data/country.mmdb ] && [ -f benches/data/asn.mmdb ] || {
  deploy/geoip/fetch.sh benches/data target/release/rampart
}
cargo build --release -p rampart
export RAMPART_ADMIN_TOKEN=bench-token-0123456789abcdef
tmp=$(mktemp -d)
# shellcheck source=benches/origin.sh
. benches/origin.sh
start_origin "$tmp"
(cd benches/configs && exec ../../target/release/rampart run --config ratio-mitigation.toml) \
  >"$tmp/rampart.log" 2>&1 &
pid=$!
trap 'kill -INT $pid 2>/dev/null; kill $(cat "$tmp/origin.pid") 2>/dev/null; rm -rf "$tmp"' EXIT
for _ in $(seq 120); do
  curl -s -o /dev/null http://127.0.0.1:18080/ && break
  sleep 0.5
done
hz=$(getconf CLK_TCK)
# ticks of user and system time of the Rampart process
ticks() { awk '{print $14, $15}' "/proc/$pid/stat"; }
measure() { # LABEL HEADER
  local out=()
  for _ in $(seq "$rounds"); do
    read -r u0 s0 < <(ticks)
    n=$(wrk -t1 -c32 -d"${secs}s" -H "$2" http://127.0.0.1:18080/ | awk '/requests in/ {print $1}')
    read -r u1 s1 < <(ticks)
    out+=("$(python3 -c "print(f'{($u1-$u0)*1e6/$hz/$n:.2f} {($s1-$s0)*1e6/$hz/$n:.2f}')")")
  done
  printf '%s\n' "${out[@]}" | python3 -c "
import statistics, sys
rows = [tuple(map(float, l.split())) for l in sys.stdin if l.strip()]
u = statistics.median(r[0] for r in rows); s = statistics.median(r[1] for r in rows)
print(f'$1 {u:.2f} {s:.2f} {u + s:.2f}')"
}
echo "target user_us/req system_us/req total_us/req"
proxied=$(measure proxied "X-Forwarded-For: 203.0.113.7")
refused=$(measure refused "X-Forwarded-For: 198.51.100.7")
echo "$proxied"
echo "$refused"
python3 -c "
p = '$proxied'.split(); r = '$refused'.split()
print(f'refused / proxied, total: {float(r[3]) / float(p[3]):.2f}; the refusal\'s system time alone / proxied total: {float(r[2]) / float(p[3]):.2f}')"
