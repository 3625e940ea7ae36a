#!/usr/bin/env bash
# The benchmark, one command: the gateway against nginx, every component its own process.
#   bash benches/run.sh                      (about 7 minutes on 2 cores after the build)
#   BENCH_SECONDS=10 BENCH_ONLY=required bash benches/run.sh
#   bash benches/run.sh soak                 (under load and faults: SOAK_SECONDS (600) + ~3 min)
#   bash benches/run.sh compare              (interleaved rounds against nginx and HAProxy, see
#                                             benches/compare.py; BENCH_PIN=1 pins each proxy;
#                                             the profile-guided build against the plain one)
#   bash benches/run.sh instructions         (instructions per request under callgrind, see
#                                             benches/instructions.py; about 3 minutes)
#   bash benches/run.sh pgo                  (only the profile-guided build, benches/pgo.py)
# Installs wrk, nginx and redis-server when missing (apt-get, starting no service), builds the
# release binary, runs benches/bench.py, prints one table and writes benches/results/latest.md.
set -euo pipefail
cd "$(dirname "$0")/.."
missing=()
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v redis-cli >/dev/null 2>&1 || missing+=(redis-tools)
{ command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ]; } || missing+=(nginx)
command -v python3 >/dev/null 2>&1 || missing+=(python3)
{ command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ]; } || missing+=(haproxy)
command -v perf >/dev/null 2>&1 || missing+=(linux-perf)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
[ "${1:-bench}" != instructions ] || command -v valgrind >/dev/null 2>&1 || missing+=(valgrind)
if ((${#missing[@]})); then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  policy=/usr/sbin/policy-rc.d; created=""
  [ -e "$policy" ] || { printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$policy" >/dev/null && $SUDO chmod +x "$policy" && created=1; }
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  [ -z "$created" ] || $SUDO rm -f "$policy"
fi
cargo build --release --locked
# compare.py's `hyper floor` row (the same HTTP stack without the gateway's request logic).
case "${1:-bench}" in compare | instructions) cargo build --release --locked --example hyper_floor ;; esac
# The profile-guided build (benches/pgo.py: what the image ships; about 13 minutes more) is the
# gateway under test in `compare`, with the plain release build as its `baseline` row unless
# BENCH_BASELINE names another; BENCH_PGO=1 does the same for the other modes, BENCH_PGO=0
# measures the plain build alone.
pgo=${BENCH_PGO:-$([ "${1:-bench}" = compare ] && echo 1 || echo 0)}
if [ "$pgo" = 1 ] && [ "${1:-bench}" != pgo ] && [ -z "${BENCH_GATEWAY:-}" ]; then
  BENCH_GATEWAY=$(python3 benches/pgo.py | tail -1)
  export BENCH_GATEWAY
  export BENCH_BASELINE=${BENCH_BASELINE:-${CARGO_TARGET_DIR:-$PWD/target}/release/entra-gateway}
fi
case "${1:-bench}" in
  bench) exec python3 benches/bench.py ;;
  soak) exec python3 benches/soak.py ;;
  compare) exec python3 benches/compare.py ;;
  instructions) exec python3 benches/instructions.py ;;
  pgo) exec python3 benches/pgo.py ;;
  *) echo "usage: bash benches/run.sh [bench|soak|compare|instructions|pgo]" >&2; exit 2 ;;
esac
