#!/usr/bin/env bash
# S7, credential stuffing: ACCOUNTS accounts (default 50) each tried once from
# ADDRESSES client addresses (default 2 000) against a release Rampart
# (benches/configs/stuffing.toml: 10 attempts per 15 minutes per account, 100 per
# address). Runs with the per-account rule and without it (attempts that reached
# the origin beyond the accounts' budgets; goal 0), then both again with budgets
# nobody reaches (every request proxied: the CPU difference per login request is
# what reading the body and keying by the account costs end to end). Loopback
# only, bounded.
#   benches/stuffing.sh [ACCOUNTS] [ADDRESSES]
set -euo pipefail
cd "$(dirname "$0")/.."
accounts=${1:-50}; addresses=${2:-2000}
command -v nginx >/dev/null || {
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light >/dev/null
}
cargo build --release -p rampart
export RAMPART_ADMIN_TOKEN=bench-token-0123456789abcdef
tmp=$(mktemp -d)
# shellcheck source=benches/origin.sh
. benches/origin.sh
start_origin "$tmp"
pid=""
trap 'kill $pid 2>/dev/null; kill $(cat "$tmp/origin.pid") 2>/dev/null; rm -rf "$tmp"' EXIT
# Without the per-account rule: the same file less that block.
drop_account() {
  python3 -c 'import sys; b=open(sys.argv[1]).read().split("[[limits]]"); print("[[limits]]".join(x for x in b if "login-account" not in x))' "$1"
}
# Cost runs: budgets nobody reaches, so every request is proxied in both runs and
# the CPU difference is reading the body and keying by the account.
unlimited() { sed -e 's/^rate = .*/rate = "1000000\/s"/' -e 's/^burst = .*/burst = 1000000/' "$1"; }
drop_account benches/configs/stuffing.toml > "$tmp/without.toml"
unlimited benches/configs/stuffing.toml > "$tmp/cost-with.toml"
unlimited "$tmp/without.toml" > "$tmp/cost-without.toml"
for run in with without cost-with cost-without; do
  case $run in
    with) cfg=benches/configs/stuffing.toml ;;
    *) cfg="$tmp/$run.toml" ;;
  esac
  RUST_LOG=error target/release/rampart run --config "$cfg" >"$tmp/rampart-$run.log" 2>&1 &
  pid=$!
  for _ in $(seq 50); do curl -sf -o /dev/null http://127.0.0.1:18902/healthz && break; sleep 0.2; done
  sleep 2   # first health check of the origin
  echo "== $run"
  python3 benches/stuffing.py --pid "$pid" --accounts "$accounts" --addresses "$addresses"
  kill $pid; wait $pid 2>/dev/null || true
done
