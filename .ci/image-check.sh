#!/usr/bin/env bash
# What the container image would contain, checked without a Docker engine: the release binary
# (built exactly as deploy/Dockerfile builds it: --no-default-features) must run on
# gcr.io/distroless/cc-debian12 as user 65532, hold no mock and no private key, and the
# Dockerfile must keep its production properties.
# Usage: bash .ci/image-check.sh [BINARY]   (default: $CARGO_TARGET_DIR/release/entra-gateway,
#        CARGO_TARGET_DIR defaulting to target; relative and absolute paths both work)
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-${CARGO_TARGET_DIR:-target}/release/entra-gateway}
case "$bin" in /*) ;; *) bin="$PWD/$bin" ;; esac
fail() { echo "image-check: $*" >&2; exit 1; }
checks=0
ok() { checks=$((checks + 1)); echo "  ok: $*"; }

[ -x "$bin" ] || fail "$bin not built (cargo build --release --locked)"

# 1. Shared libraries: only glibc and libgcc_s, which distroless/cc-debian12 ships.
allowed='^(linux-vdso\.so\.1|libgcc_s\.so\.1|libm\.so\.6|libc\.so\.6|libpthread\.so\.0|libdl\.so\.2|librt\.so\.1|/lib64/ld-linux-x86-64\.so\.2|ld-linux-x86-64\.so\.2|/lib/ld-linux-aarch64\.so\.1)$'
while read -r lib; do
  [[ "$lib" =~ $allowed ]] || fail "links $lib, which distroless/cc does not have"
done < <(ldd "$bin" | awk '{print $1}')
ok "shared libraries: $(ldd "$bin" | awk '{print $1}' | tr '\n' ' ')"

# 2. glibc symbol versions: at most Debian 12's 2.36.
newest=$(objdump -T "$bin" | grep -o 'GLIBC_[0-9.]*' | sed 's/GLIBC_//' | sort -V | tail -1)
[ "$(printf '%s\n2.36\n' "$newest" | sort -V | tail -1)" = "2.36" ] || fail "needs glibc $newest > 2.36"
ok "needs glibc <= 2.36 (newest symbol: $newest)"

# 3. No OpenSSL (rustls + aws-lc are linked in).
! ldd "$bin" | grep -qiE 'libssl|libcrypto' || fail "links OpenSSL"
ok "no OpenSSL"

# 4. Runs as the distroless nonroot user from an unwritable directory.
out=$(cd / && setpriv --reuid=65532 --regid=65532 --clear-groups "$bin" --version)
ok "runs as uid 65532: $out"

# 5. Size: stripped, as the image stores it.
tmp=$(mktemp); cp "$bin" "$tmp"; strip "$tmp"; size=$(stat -c %s "$tmp"); rm -f "$tmp"
[ "$size" -lt $((40 * 1024 * 1024)) ] || fail "stripped binary is $size bytes (over 40 MiB)"
ok "stripped binary: $((size / 1024 / 1024)) MiB (+ ~20 MB distroless/cc base)"

# 6. No test code in the product: no private key, no mock routes or secrets, no demo command.
for needle in "PRIVATE KEY-----" "/mock/token" "mock-client-secret" "mock-key-1"; do
  ! grep -aqF -- "$needle" "$bin" || fail "the binary contains '$needle' (built with the demo feature?)"
done
if "$bin" demo --help >/dev/null 2>&1; then fail "the binary has the demo command"; fi
ok "no private key, no mock routes, no demo command (built with --no-default-features)"

# 7. The Dockerfile keeps its properties.
df=deploy/Dockerfile
grep -q '^FROM gcr.io/distroless/cc-debian12:nonroot' "$df" || fail "final stage is not distroless/cc nonroot"
grep -q '^USER 65532:65532' "$df" || fail "no non-root USER"
! grep -q '^HEALTHCHECK' "$df" || fail "HEALTHCHECK (Kubernetes probes do that)"
grep -q 'cargo build --release --locked --no-default-features' "$df" || fail "the image builds something else than CI checks"
# The profile-guided build (PGO=1, the default) builds the same features as the plain one.
features=$(grep -o 'cargo build --release --locked --no-default-features[^&\]*' "$df" | head -1 | sed 's/.*--no-default-features//')
grep -q "benches/pgo.py --no-default-features${features% }" "$df" || fail "the profile-guided build's features differ"
grep -q '^EXPOSE 8080 9090' "$df" || fail "ports differ from the chart (8080, 9090)"
ok "Dockerfile: distroless nonroot, USER 65532, no HEALTHCHECK, same build command (plain and PGO), ports 8080/9090"

echo "image-check: $checks passed, 0 failed"
