#!/usr/bin/env python3
"""The gateway against nginx, side by side in one run, every component its own process.

Started by `bash benches/run.sh` (which builds the release binary and installs what is missing).
Components, each a separate process on loopback:
  upstream  nginx returning 200 "hello world" (11 bytes, the same headers whatever it receives)
  nginx     `proxy_pass` to the upstream: 1 and 2 workers, access log off and on (to a file)
  mock      the mock Entra ID + Graph (`entra-gateway mock`), for the exchanges
  redis     redis-server, for the "with Redis" rows
  gateway   `entra-gateway serve` (the release binary, or BENCH_GATEWAY; production defaults but
            for the exchange rate limits, which a load test would only measure), access log off
            and on (to a file)
Load: wrk, the same threads, connections and duration for every row, a warm-up run, then three
runs; the median of each figure is reported, with its ratio to nginx with 1 worker and the same
access-log setting. Writes the table to benches/results/latest.md and prints it.

Settings (environment): BENCH_SECONDS (5), BENCH_RUNS (3), BENCH_CONNECTIONS (32),
BENCH_THREADS (2), BENCH_GATEWAY (the gateway's binary), BENCH_ONLY (a substring of the scenario
names to run), BENCH_COLD_USERS (40000: tokens minted for the cold-exchange rows, each used
once), BENCH_PERF (1: record the gateway with `perf record -e cpu-clock` during each measured
gateway row and write the top symbols to benches/results/perf-<row>.txt).
"""

import datetime
import json
import os
import pathlib
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = pathlib.Path(__file__).resolve().parent.parent
TARGET = pathlib.Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
# The gateway's binary: BENCH_GATEWAY (run.sh sets it to the profile-guided build, benches/pgo.py,
# with BENCH_PGO=1), else the plain release build.
BIN = pathlib.Path(os.environ.get("BENCH_GATEWAY") or TARGET / "release" / "entra-gateway")
SECONDS = int(os.environ.get("BENCH_SECONDS", "5"))
RUNS = int(os.environ.get("BENCH_RUNS", "3"))
CONNECTIONS = int(os.environ.get("BENCH_CONNECTIONS", "32"))
THREADS = int(os.environ.get("BENCH_THREADS", "2"))
WARMUP = max(2, SECONDS // 2)
ONLY = os.environ.get("BENCH_ONLY", "")
NGINX = next((p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/bin/nginx") if os.path.exists(p)), "nginx")
WORK = pathlib.Path(tempfile.mkdtemp(prefix="entra-gateway-bench-"))


def _terminated(signum, _frame):
    """SIGTERM (`timeout`, `kill`) ends a run as Ctrl-C does: through the `finally` blocks that
    stop every process and delete WORK (whose access logs reach gigabytes in a run)."""
    raise SystemExit(128 + signum)


signal.signal(signal.SIGTERM, _terminated)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, what, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"{what} did not listen on {port}")


def rss_kib(pid):
    """Resident memory of a process and its children (nginx workers), in KiB."""
    total = 0
    pids = [pid] + [int(c) for c in pathlib.Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    for p in pids:
        for line in pathlib.Path(f"/proc/{p}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return total


class Proc:
    def __init__(self, name, args, stdout=subprocess.DEVNULL, env=None):
        self.name = name
        self.p = subprocess.Popen(args, stdout=stdout, stderr=subprocess.DEVNULL, env=env)

    def stop(self):
        self.p.terminate()
        try:
            self.p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.p.kill()


def nginx(name, server_block, workers=1, access_log=None):
    d = WORK / name
    d.mkdir()
    log = f"access_log {access_log};" if access_log else "access_log off;"
    (d / "nginx.conf").write_text(
        f"daemon off;\nworker_processes {workers};\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n"
        f"events {{ worker_connections 4096; }}\n"
        f"http {{\n  {log}\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n"
        f"  fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n"
        f"  keepalive_requests 1000000;\n{server_block}\n}}\n"
    )
    return Proc(name, [NGINX, "-c", str(d / "nginx.conf"), "-p", str(d)])


def upstream():
    port = free_port()
    p = nginx("upstream", f"  server {{ listen 127.0.0.1:{port}; default_type text/plain;\n"
                          f"    location / {{ return 200 'hello world'; }} }}")
    wait_port(port, "upstream")
    return p, port


def nginx_proxy(up, workers, log_on):
    port = free_port()
    name = f"nginx-{workers}w-{'log' if log_on else 'nolog'}"
    block = (f"  upstream up {{ server 127.0.0.1:{up}; keepalive 64; }}\n"
             f"  server {{ listen 127.0.0.1:{port};\n"
             f"    location / {{ proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection \"\"; }} }}")
    p = nginx(name, block, workers, str(WORK / f"{name}.access.log") if log_on else None)
    wait_port(port, name)
    return p, port


def mock():
    p = subprocess.Popen([str(BIN), "mock", "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    info = json.loads(p.stdout.readline())
    proc = Proc("mock", ["true"])
    proc.p = p
    return proc, info


def redis():
    port = free_port()
    d = WORK / "redis"
    d.mkdir()
    p = Proc("redis", ["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no",
                       "--dir", str(d)])
    wait_port(port, "redis")
    return p, port


def gateway(name, mock_info, up, log_on, redis_port=None, env=None, cache_yaml=None, key_alg="ES256"):
    """A gateway process; `env`: more ENTRA_GATEWAY__* overrides (features on or off);
    `cache_yaml`: the whole `cache:` section (e.g. a Redis Cluster); `key_alg`: its signing key's."""
    d = WORK / name
    d.mkdir()
    subprocess.run([str(BIN), "keys", "generate", "--algorithm", key_alg, "--out", str(d / "k1.pem")], check=True,
                   stdout=subprocess.DEVNULL)
    (d / "secret").write_text(mock_info["client_secret"])
    port, admin = free_port(), free_port()
    cache = f'cache: {{ redis_url: "redis://127.0.0.1:{redis_port}/0" }}\n' if redis_port else ""
    cache = cache_yaml or cache
    (d / "gateway.yaml").write_text(
        f'server:\n  listen: "127.0.0.1:{port}"\n  admin_listen: "127.0.0.1:{admin}"\n'
        f"  rate_limit: {{ exchange_per_ip: null, exchange_per_user: null }}\n"
        f'entra:\n  authority_host: "{mock_info["authority_host"]}"\n  graph_url: "{mock_info["graph_url"]}"\n'
        f'  tenants: ["{mock_info["tenant_id"]}"]\n  client_id: "{mock_info["client_id"]}"\n'
        f"  graph_mode: app\n  client_secret_file: secret\n"
        f'authorization:\n  allowed_groups: ["{mock_info["groups"]["engineering"]}"]\n'
        f'issuer:\n  issuer: "http://127.0.0.1:{port}"\n  signing_keys: [{{ kid: k1, algorithm: {key_alg}, private_key_file: k1.pem }}]\n'
        f"{cache}"
        f"proxy:\n  routes:\n"
        f'    - {{ path_prefix: "/none/", upstream: "http://127.0.0.1:{up}", auth: none }}\n'
        f'    - {{ path_prefix: "/req/", upstream: "http://127.0.0.1:{up}", auth: required }}\n'
        f"logging: {{ level: info, format: json, access_log: {'true' if log_on else 'false'} }}\n"
    )
    out = open(WORK / f"{name}.log", "w")
    # As the image runs it: mimalloc commits its arenas as they are used (deploy/Dockerfile).
    base = dict(os.environ, MIMALLOC_ARENA_EAGER_COMMIT="0")
    p = Proc(name, [str(BIN), "serve", "--config", str(d / "gateway.yaml")], stdout=out,
             env=dict(base, **(env or {})))
    wait_port(port, name)
    return p, port


def write_result(name, text):
    """Prints a report and writes it to benches/results/`name`."""
    out = ROOT / "benches" / "results" / name
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print("\n" + text)
    print(f"written to {out.relative_to(ROOT)}")


def post(url, body=None, token=None, timeout=600):
    req = urllib.request.Request(url, data=json.dumps(body).encode() if body is not None else b"", method="POST")
    req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return r.read()


def entra_token(mock_info):
    """A mock Entra access token for the demo user alice (in the allowed group)."""
    return json.loads(post(f"{mock_info['authority_host']}/mock/token", {"user": "alice"}))["access_token"]


def sign_in(mock_info, port):
    """Alice's Entra token and the internal token the gateway on `port` exchanges it for."""
    entra = entra_token(mock_info)
    return entra, json.loads(post(f"http://127.0.0.1:{port}/auth/exchange", token=entra))["access_token"]


def cold_tokens(mock_info, n):
    """A file of `n` Entra tokens, each a new user in the allowed group (the cold exchange)."""
    path = WORK / f"cold-{time.time_ns()}.txt"
    path.write_bytes(post(f"{mock_info['authority_host']}/mock/new-users",
                          {"count": n, "groups": [mock_info["groups"]["engineering"]]}))
    return path


def binary_name(path):
    """A binary's path, relative to the checkout when inside it (target/pgo/...: profile-guided)."""
    path = pathlib.Path(path).resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


LUA_EXCHANGE = """
-- Each wrk thread takes every THREADS-th token, so that no token is used twice per pass. The
-- requests are built once, in init (wrk's advice: building one per request in request() costs
-- the load generator more than some of the servers it measures).
local counter = 0
function setup(thread) thread:set("id", counter) counter = counter + 1 end
local reqs, i, threads = {}, 0, 1
function init(args)
  for line in io.lines(os.getenv("BENCH_TOKENS")) do
    reqs[#reqs + 1] = wrk.format("POST", "/auth/exchange", { ["Authorization"] = "Bearer " .. line, ["Content-Length"] = "0" })
  end
  threads = tonumber(os.getenv("BENCH_THREADS"))
end
function request()
  local r = reqs[(i * threads + id) % #reqs + 1]
  i = i + 1
  return r
end
"""

# One token again and again (the warm exchange): a static request, built once by wrk like the
# proxy rows' (no Lua call per request on the load generator, which shares the cores unpinned).
LUA_STATIC_POST = """
wrk.method = "POST"
wrk.headers["Content-Length"] = "0"
"""


def wrk(url, seconds, token=None, tokens_file=None):
    args = ["wrk", f"-t{THREADS}", f"-c{CONNECTIONS}", f"-d{seconds}s", "--latency"]
    env = dict(os.environ, BENCH_THREADS=str(THREADS))
    tokens = pathlib.Path(tokens_file).read_text().split() if tokens_file else []
    if len(tokens) == 1:
        script = WORK / "static-post.lua"
        script.write_text(LUA_STATIC_POST)
        args += ["-s", str(script), "-H", f"Authorization: Bearer {tokens[0]}"]
    elif tokens:
        script = WORK / "exchange.lua"
        script.write_text(LUA_EXCHANGE)
        args += ["-s", str(script)]
        env["BENCH_TOKENS"] = str(tokens_file)
    elif token:
        args += ["-H", f"Authorization: Bearer {token}"]
    out = subprocess.run(args + [url], capture_output=True, text=True, env=env).stdout
    rps = float(next(l for l in out.splitlines() if l.startswith("Requests/sec:")).split()[1])
    errors = sum(int(l.split()[-1]) for l in out.splitlines() if "Non-2xx" in l)
    errors += sum(int(x.split()[-1]) for l in out.splitlines() if l.strip().startswith("Socket errors") for x in l.split(",") if x.split()[-1].isdigit())

    def pct(p):
        line = next(l for l in out.splitlines() if l.strip().startswith(p))
        v = line.split()[1]
        num = float(v.rstrip("usm"))
        return num / 1000 if v.endswith("us") else num * 1000 if v.endswith("s") and not v.endswith("ms") else num
    return {"rps": rps, "p50": pct("50%"), "p99": pct("99%"), "errors": errors}


PERF = os.environ.get("BENCH_PERF") == "1"


def measure(name, url, pid=None, seconds=None, warmup=True, **kw):
    seconds = seconds or SECONDS
    if warmup:
        wrk(url, WARMUP, **kw)
    perf = None
    if PERF and pid:
        data = WORK / "perf.data"
        perf = subprocess.Popen(["perf", "record", "-e", "cpu-clock", "-F", "1999", "-g", "-p", str(pid), "-o", str(data)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.3)
    runs = [wrk(url, seconds, **kw) for _ in range(RUNS)]
    if perf:
        perf.send_signal(2)
        perf.wait()
        slug = "".join(c if c.isalnum() else "-" for c in name).strip("-")
        def perf_report(*sort):
            return subprocess.run(["perf", "report", "-i", str(data), "--stdio", "--no-children", "--percent-limit",
                                   "0.7", "-g", "none", *sort], capture_output=True, text=True).stdout
        report = perf_report("--sort", "dso") + perf_report("--sort", "symbol")
        shutil.copy(data, TARGET / f"perf-{slug}.data")
        (ROOT / "benches" / "results").mkdir(parents=True, exist_ok=True)
        (ROOT / "benches" / "results" / f"perf-{slug}.txt").write_text(report)
    med = {k: statistics.median(r[k] for r in runs) for k in ("rps", "p50", "p99")}
    med["errors"] = sum(r["errors"] for r in runs)
    print(f"  {name}: {med['rps']:.0f} req/s, p50 {med['p50']:.2f} ms, p99 {med['p99']:.2f} ms"
          + (f", {med['errors']} errors" if med["errors"] else ""), flush=True)
    return med


def main():
    for tool in ("wrk", "redis-server"):
        if not shutil.which(tool):
            sys.exit(f"{tool} is missing: run `bash benches/run.sh`, which installs it")
    procs = []
    rows = []
    rss = {}
    try:
        up_proc, up = upstream()
        procs.append(up_proc)
        mock_proc, info = mock()
        procs.append(mock_proc)
        redis_proc, redis_port = redis()
        procs.append(redis_proc)

        def want(name):
            return ONLY in name

        print(f"entra-gateway benchmark: {RUNS} x {SECONDS}s per row after a {WARMUP}s warm-up, "
              f"wrk -t{THREADS} -c{CONNECTIONS}", flush=True)
        if want("direct"):
            rows.append(("upstream directly", "-", measure("direct", f"http://127.0.0.1:{up}/")))
        for workers in (1, 2):
            for log_on in (False, True):
                name = f"nginx proxy_pass, {workers} worker{'s' if workers > 1 else ''}"
                if not want(name):
                    continue
                p, port = nginx_proxy(up, workers, log_on)
                rows.append((name, "on" if log_on else "off", measure(name, f"http://127.0.0.1:{port}/x")))
                p.stop()

        cold_n = int(os.environ.get("BENCH_COLD_USERS", "40000"))
        for redis_on in (False, True):
            for log_on in (False, True):
                if redis_on and log_on:
                    continue
                tag = ("gateway" + (" + Redis" if redis_on else ""))
                name = f"{tag} (log {'on' if log_on else 'off'})"
                if not any(want(f"{tag} {s}") for s in ("auth: none", "auth: required", "exchange warm", "exchange cold")):
                    continue
                gw, port = gateway(name.replace(" ", "-").replace("(", "").replace(")", "").replace("+", ""),
                                   info, up, log_on, redis_port if redis_on else None)
                time.sleep(0.5)
                entra, internal = sign_in(info, port)
                log = "on" if log_on else "off"
                key = "redis" if redis_on else "plain"
                if not redis_on and log_on is False:
                    rss["idle"] = rss_kib(gw.p.pid)
                pid = gw.p.pid
                if not redis_on and want(f"{tag} auth: none"):
                    rows.append((f"{tag}, `auth: none`", log,
                                 measure(f"{tag} auth: none {log}", f"http://127.0.0.1:{port}/none/x", pid)))
                if want(f"{tag} auth: required"):
                    rows.append((f"{tag}, `auth: required` (cached token)", log,
                                 measure(f"{tag} auth: required {log}", f"http://127.0.0.1:{port}/req/x", pid, token=internal)))
                warm_rps = None
                if want(f"{tag} exchange warm"):
                    tokens = WORK / f"warm-{key}-{log}.txt"
                    tokens.write_text(entra + "\n")
                    r = measure(f"{tag} exchange warm {log}", f"http://127.0.0.1:{port}/auth/exchange", pid, tokens_file=tokens)
                    warm_rps = r["rps"]
                    rows.append((f"{tag}, warm exchange (same user)", log, r))
                if not redis_on and log_on is False:
                    rss["after the proxy and warm-exchange rows"] = rss_kib(gw.p.pid)
                if want(f"{tag} exchange cold"):
                    # Each token is a new user, used once: the runs are as long as the tokens last
                    # at the warm rate (which is higher), and no warm-up spends them.
                    tokens = cold_tokens(info, cold_n)
                    secs = max(1, int(cold_n / (RUNS * 1.3 * (warm_rps or 10000))))
                    rows.append((f"{tag}, cold exchange (a new user each time, {secs}s runs)", log,
                                 measure(f"{tag} exchange cold {log}", f"http://127.0.0.1:{port}/auth/exchange", pid,
                                         seconds=secs, warmup=False, tokens_file=tokens)))
                if not redis_on and log_on is False and want(f"{tag} exchange cold"):
                    rss[f"after {cold_n} new users signed in (cold rows; records, profiles and group answers cached)"] = rss_kib(gw.p.pid)
                gw.stop()
    finally:
        for p in procs:
            p.stop()
    report(rows, rss)


def report(rows, rss):
    base = {log: r["rps"] for (name, log, r) in rows if name == "nginx proxy_pass, 1 worker"}
    p99 = {log: r["p99"] for (name, log, r) in rows if name == "nginx proxy_pass, 1 worker"}
    lines = [
        "| scenario | access log | req/s | p50 ms | p99 ms | req/s × nginx 1 worker | p99 × nginx 1 worker |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, log, r in rows:
        ref = base.get(log) or base.get("off")
        ref99 = p99.get(log) or p99.get("off")
        ratio = f"{r['rps'] / ref:.2f}" if ref else "-"
        ratio99 = f"{r['p99'] / ref99:.2f}" if ref99 else "-"
        err = f" ({r['errors']} errors)" if r["errors"] else ""
        lines.append(f"| {name} | {log} | {r['rps']:.0f}{err} | {r['p50']:.2f} | {r['p99']:.2f} | {ratio} | {ratio99} |")
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.machine())
    wrk_version = subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.splitlines()[0]
    head = (f"# Benchmark results\n\n{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, "
            f"{os.cpu_count()} cores ({cpu}), {wrk_version.split(' [')[0]}; wrk -t{THREADS} -c{CONNECTIONS}, "
            f"{RUNS} runs of {SECONDS}s after a {WARMUP}s warm-up, medians. Load generator, nginx, upstream, "
            f"mock Entra ID and gateway share the machine; compare ratios, not absolute numbers.\n\n")
    mem = ("\nGateway resident memory (no Redis, access log off): "
           + ", ".join(f"{k} {v / 1024:.1f} MiB" for k, v in rss.items()) + ".\n") if rss else ""
    text = head + "\n".join(lines) + "\n" + mem
    write_result("latest.md", text)


if __name__ == "__main__":
    try:
        main()
    finally:
        shutil.rmtree(WORK, ignore_errors=True)
