#!/usr/bin/env python3
"""The profile-guided release build (PGO): what the container image ships and what the benchmark
measures by default.

    python3 benches/pgo.py                                   (default features: the benchmark's binary)
    python3 benches/pgo.py --no-default-features --features mimalloc   (as deploy/Dockerfile builds it)

Arguments are passed to `cargo build --release --locked`. Four steps, about 13 minutes on 2 cores
(19 when the mock has to be built too; target/ is $CARGO_TARGET_DIR when set):
  1. an instrumented build (`-Cprofile-generate`) in target/pgo-instrumented;
  2. the training: that binary serves the benchmark's own workload on loopback for about 40 s, a
     gateway without Redis and one with Redis (when redis-server is installed), each with its
     JSON access log on: `auth: required` (the cached-token path), `auth: none`, forward-auth
     (`/auth/verify/...`), refusals (no token, a bad token, no route), the warm exchange, the
     cold exchange (3,000 new users: Graph profile and groups, new user records); then a third
     gateway, `auth: required` with continuous access and OpenTelemetry (10% sampling) on;
     each run's answers are checked (2xx, or refusals where it trains refusals);
     the mock Entra ID and the upstream are the benchmark's (bench.py), the mock from a build
     with the default features (the plain release build, or one made in target/pgo-mock when
     that has no mock, as in the image's build);
  3. `llvm-profdata merge` (the rustup component `llvm-tools`, which matches rustc's LLVM;
     installed when missing) into target/pgo/entra-gateway.profdata;
  4. the optimised build (`-Cprofile-use`) in target/pgo, copied to target/pgo/entra-gateway
     (the last line printed).
Both builds name the host target (`--target`), so that the flags reach the binary's code only.
The profile is taken from the same features, profile and rustc as the final build, so every
function's counts apply; code the training never ran is laid out as cold, which is why the
training covers every feature the benchmark measures, not only the fastest path. What it was
worth: benches/README.md, "The ninth round".
"""

import os
import pathlib
import shutil
import subprocess
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import bench  # noqa: E402  (the components: upstream, mock, redis, gateway, wrk)
import compare  # noqa: E402  (the OTLP sink of the feature rows)

ROOT = bench.ROOT
INSTRUMENTED = bench.TARGET / "pgo-instrumented"
OPTIMISED = bench.TARGET / "pgo"
PLAIN = bench.TARGET / "release" / "entra-gateway"


def host():
    out = subprocess.run(["rustc", "-vV"], capture_output=True, text=True, check=True).stdout
    return next(line.split()[1] for line in out.splitlines() if line.startswith("host:"))


def cargo(target_dir, rustflags, args):
    """`cargo build --release`; with `rustflags`, for the host target named explicitly, so that
    the flags reach the binary's code only, not the build scripts and proc macros that cargo
    runs while building (which would write their own profiles into the training's)."""
    flags = " ".join(x for x in (os.environ.get("RUSTFLAGS", ""), rustflags) if x)
    env = dict(os.environ, CARGO_TARGET_DIR=str(target_dir), RUSTFLAGS=flags)
    target = ["--target", host()] if rustflags else []
    subprocess.run(["cargo", "build", "--release", "--locked", *target, *args], cwd=ROOT, env=env, check=True)
    return pathlib.Path(target_dir).joinpath(*target[1:], "release", "entra-gateway")


def llvm_profdata():
    sysroot = subprocess.run(["rustc", "--print", "sysroot"], capture_output=True, text=True, check=True).stdout.strip()
    tool = pathlib.Path(sysroot) / "lib" / "rustlib" / host() / "bin" / "llvm-profdata"
    if not tool.exists():
        # The profile format follows rustc's LLVM: Debian's llvm-profdata (LLVM 14) cannot read it.
        subprocess.run(["rustup", "component", "add", "llvm-tools"], check=True)
    return tool


def mock_binary():
    """A build with the `demo` feature, for `entra-gateway mock`: the plain release build when it
    has the mock, else one built in target/pgo-mock (the image's build has no mock)."""
    if PLAIN.exists():
        out = subprocess.run([str(PLAIN), "mock", "--help"], capture_output=True)
        if out.returncode == 0 and b"--port" in out.stdout:
            return PLAIN
    return cargo(bench.TARGET / "pgo-mock", "", [])


def load(url, seconds, refused=False, **kw):
    """wrk against `url`; the training stops when its answers are not the ones it means to
    record (a profile of the refusal path laid out as the hot one would be worse than none)."""
    r = bench.wrk(url, seconds, **kw)
    if r["rps"] <= 0 or (r["errors"] > 0) != refused:
        sys.exit(f"pgo: {url}: {r['errors']} non-2xx answers or socket errors, "
                 f"expected {'refusals' if refused else 'none'}")


def whole_workload(base, entra, internal, info):
    """Everything but `auth: required` (which every training gateway gets)."""
    load(f"{base}/none/x", 2)
    load(f"{base}/auth/verify/req/x", 2, token=internal)
    for url, token in ((f"{base}/req/x", None), (f"{base}/req/x", "not-a-token"), (f"{base}/nowhere", internal)):
        load(url, 1, refused=True, token=token)
    warm = bench.WORK / f"warm-{time.time_ns()}.txt"
    warm.write_text(entra + "\n")
    load(f"{base}/auth/exchange", 3, tokens_file=warm)
    load(f"{base}/auth/exchange", 1, tokens_file=bench.cold_tokens(info, 3000))


def train(binary, mock_binary):
    """The benchmark's workload against `binary`; every gateway stops with SIGTERM (the profile
    is written at exit)."""
    procs = []
    try:
        up_proc, up = bench.upstream()
        procs.append(up_proc)
        bench.BIN = mock_binary
        mock_proc, info = bench.mock()
        procs.append(mock_proc)
        bench.BIN = binary
        redis_port = None
        if shutil.which("redis-server"):
            redis_proc, redis_port = bench.redis()
            procs.append(redis_proc)
        sink = compare.otlp_sink()
        features = {k: v.format(sink=sink) for k, v in compare.FEATURE_ROWS[-1][1].items()}  # all on
        forward_auth = {"ENTRA_GATEWAY__PROXY__FORWARD_AUTH__ORIGINAL_URI": "path"}
        runs = [("plain", None, forward_auth)] + ([("redis", redis_port, forward_auth)] if redis_port else [])
        for name, port_of_redis, env in runs + [("features", None, features)]:
            gw, port = bench.gateway(f"pgo-{name}", info, up, True, redis_port=port_of_redis, env=env)
            procs.append(gw)
            entra, internal = bench.sign_in(info, port)
            base = f"http://127.0.0.1:{port}"
            load(f"{base}/req/x", 3, token=internal)
            if name != "features":
                whole_workload(base, entra, internal, info)
            gw.stop()
    finally:
        for p in procs:
            p.stop()


def main():
    args = sys.argv[1:]
    profdata_tool = llvm_profdata()
    raw = OPTIMISED / "profraw"
    shutil.rmtree(raw, ignore_errors=True)
    raw.mkdir(parents=True)
    instrumented = cargo(INSTRUMENTED, f"-Cprofile-generate={raw}", args)
    train(instrumented, mock_binary())
    if not any(raw.glob("*.profraw")):
        sys.exit("pgo: the training wrote no profile")
    profdata = OPTIMISED / "entra-gateway.profdata"
    subprocess.run([str(profdata_tool), "merge", "-o", str(profdata), str(raw)], check=True)
    built = cargo(OPTIMISED, f"-Cprofile-use={profdata}", args)
    binary = OPTIMISED / "entra-gateway"
    shutil.copy2(built, binary)
    print(binary)


if __name__ == "__main__":
    try:
        main()
    finally:
        shutil.rmtree(bench.WORK, ignore_errors=True)
