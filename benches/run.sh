#!/usr/bin/env bash
# Runs the benchmarks (release build). Installs wrk when missing.
#   BENCH_SECONDS=10 bash benches/run.sh
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v wrk >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends wrk >/dev/null
fi
cargo bench --bench proxy
