#!/usr/bin/env bash
# Connections closed at accept against the HTTP-level refusal, on loopback: two
# release Rampart instances from the same build, one with
# benches/configs/accept-drop.toml (a deny rule without routes: closed at
# accept) and one with the same rule scoped to the catch-all route (the request
# path answers 403). rampart-loadgen connects from the deny-listed source
# 127.0.0.9 with a new connection per attempt (`GET / HTTP/1.1`,
# `Connection: close`, 32 at a time), alternating between the two, ROUNDS
# rounds of SECONDS each; then, for scale, the 403 over kept-alive connections.
# Prints each round (attempts/s, Rampart CPU per attempt from /proc, client-side
# p50/p99) and the medians with their ratio. Bounded: ROUNDS x 3 runs of SECONDS.
#   benches/accept_drop.sh [ROUNDS] [SECONDS]
# Honours CARGO_TARGET_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-5}; secs=${2:-5}
target=${CARGO_TARGET_DIR:-target}
cargo build --release -p rampart --bin rampart -p rampart-benches --bin rampart-loadgen
export RAMPART_ADMIN_TOKEN=bench-token-0123456789abcdef
tmp=$(mktemp -d)
cp benches/configs/accept-drop.toml "$tmp/drop.toml"
sed -e 's/18090/18091/; s/19903/19904/' benches/configs/accept-drop.toml >"$tmp/http.toml"
echo 'routes = ["all"]' >>"$tmp/http.toml"
RUST_LOG=warn "$target/release/rampart" run --config "$tmp/drop.toml" >"$tmp/drop.log" 2>&1 &
drop_pid=$!
RUST_LOG=warn "$target/release/rampart" run --config "$tmp/http.toml" >"$tmp/http.log" 2>&1 &
http_pid=$!
trap 'kill $drop_pid $http_pid 2>/dev/null; rm -rf "$tmp"' EXIT
for admin in 19903 19904; do
  for _ in $(seq 1 100); do
    curl -sf "http://127.0.0.1:$admin/healthz" >/dev/null && break
    sleep 0.1
  done
done
user_ticks() { awk '{print $14}' "/proc/$1/stat"; }
sys_ticks() { awk '{print $15}' "/proc/$1/stat"; }
run() { # MODE PID PORT [loadgen flags...]
  local mode=$1 pid=$2 port=$3; shift 3
  local u0 s0 out
  u0=$(user_ticks "$pid"); s0=$(sys_ticks "$pid")
  out=$("$target/release/rampart-loadgen" --target "127.0.0.1:$port" --bind 127.0.0.9 \
    --no-forwarded-for --connections 32 --duration "$secs" "$@")
  echo "$mode $(($(user_ticks "$pid") - u0)) $(($(sys_ticks "$pid") - s0)) $out"
  sleep 2
}
for _ in $(seq 1 "$rounds"); do
  run closed_at_accept "$drop_pid" 18090 --new-connections
  run http_403_new_connection "$http_pid" 18091 --new-connections
done >"$tmp/rows"
for _ in $(seq 1 "$rounds"); do
  run http_403_keepalive "$http_pid" 18091
done >>"$tmp/rows"
metric() { curl -s -H "Authorization: Bearer $RAMPART_ADMIN_TOKEN" "http://127.0.0.1:$1/metrics" | awk -v m="$2" '$1==m {print $2}'; }
echo "closed at accept, counted by Rampart: $(metric 19903 'rampart_client_connections_dropped_at_accept_total{reason="denied_network"}')"
echo "403 answered, counted by Rampart: $(metric 19904 'rampart_http_requests_total{route="all",status_class="4xx",verdict="denied_network"}')"
TICK=$(getconf CLK_TCK) python3 - "$tmp/rows" <<'PY'
import json, os, statistics as st, sys
tick = int(os.environ["TICK"])
rows = {}
for line in open(sys.argv[1]):
    mode, user, system, js = line.split(" ", 3)
    r = json.loads(js)
    attempts = r["dropped"] + r["answered"]
    per = lambda ticks: 1e6 * int(ticks) / tick / max(1, attempts)
    rows.setdefault(mode, []).append({
        "per_s": attempts / r["seconds"],
        "cpu_us": per(user) + per(system),
        "user_us": per(user),
        "sys_us": per(system),
        "p50": r["p50_us"], "p99": r["p99_us"],
        "dropped": r["dropped"], "forbidden": r["forbidden"],
        "other": r["ok"] + r["limited"] + r["other"], "errors": r["errors"],
    })
print(f"{'mode':26} {'attempts/s':>10} {'CPU us/att':>10} {'user':>6} {'sys':>6} {'p50 us':>7} {'p99 us':>7} {'dropped':>8} {'403':>8} {'other':>6} {'errors':>6}")
for mode, v in rows.items():
    for x in v:
        print(f"{mode:26} {x['per_s']:10.0f} {x['cpu_us']:10.1f} {x['user_us']:6.1f} {x['sys_us']:6.1f} {x['p50']:7d} {x['p99']:7d} {x['dropped']:8d} {x['forbidden']:8d} {x['other']:6d} {x['errors']:6d}")
keys = ("per_s", "cpu_us", "user_us", "sys_us", "p50", "p99")
med = {m: {k: st.median(x[k] for x in v) for k in keys} for m, v in rows.items()}
print("\nmedians (CPU: Rampart's user + system time per attempt, from /proc/PID/stat)")
for mode, m in med.items():
    print(f"{mode:26} {m['per_s']:10.0f} {m['cpu_us']:10.1f} {m['user_us']:6.1f} {m['sys_us']:6.1f} {m['p50']:7.0f} {m['p99']:7.0f}")
a, b = med["closed_at_accept"], med["http_403_new_connection"]
print(f"\nclosed at accept / 403 on a new connection: {a['per_s'] / b['per_s']:.2f}x the attempts per second, "
      f"{a['cpu_us'] / b['cpu_us']:.2f}x the Rampart CPU per attempt "
      f"({a['user_us'] / b['user_us']:.2f}x user, {a['sys_us'] / b['sys_us']:.2f}x system)")
PY
