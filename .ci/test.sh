#!/usr/bin/env bash
# The whole test suite, from a fresh clone on a fresh Debian machine:
# installs what the tests need (only what is missing), then fmt, clippy and every test.
# Usage: bash .ci/test.sh        (README "Run the tests"; .ci/run calls exactly this)
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\n== %s\n' "$*"; }

# --- system packages the tests start for real (they are never mocked) ---------------------
missing=()
need() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || missing+=("$2"); }   # need COMMAND DEBIAN_PACKAGE
need nginx nginx                 # tests/nginx.rs: auth_request against /auth/verify
need redis-server redis-server   # tests/redis*.rs: shared state, TLS, ACL, cluster (redis-cli comes along)
need redis-cli redis-tools
need promtool prometheus         # tests/ops.rs: promtool check metrics
need unzip unzip                 # .ci/tools.sh unpacks the Helm binaries
need curl curl                   # tests/demo.rs runs the demo's printed curl lines
command -v python3 >/dev/null 2>&1 || missing+=(python3)
python3 -m venv --help >/dev/null 2>&1 || missing+=(python3-venv)
python3 -m pip --version >/dev/null 2>&1 || missing+=(python3-pip)
if ((${#missing[@]})); then
  log "installing: ${missing[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# Debian starts services on install where it can; the tests start their own on free ports.

log "chart tools (Helm 3, Helm 4, kubernetes-validate) into target/tools"
bash .ci/tools.sh

# --- Rust ---------------------------------------------------------------------------------
command -v cargo >/dev/null 2>&1 || { echo "cargo is required (https://rustup.rs)"; exit 1; }
rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt clippy >/dev/null 2>&1 || true

log "cargo fmt --check"
cargo fmt --all -- --check

log "cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets -- -D warnings

log "cargo test (unit, end-to-end, CLI)"
cargo test --all-targets

log "release build (what deploy/Dockerfile builds: no demo, no mock) and image check"
cargo build --release --locked --no-default-features
bash .ci/image-check.sh
