#!/usr/bin/env python3
"""Interleaved rounds: the gateway against nginx and HAProxy, proxying the same upstream.

    bash benches/run.sh compare                    (5 rounds; about 6 minutes after the build)
    BENCH_PIN=1 bash benches/run.sh compare        (each proxy on core 0, the gateway with one worker;
                                                    wrk and the upstream on core 1)
    BENCH_BASELINE=/path/to/old/entra-gateway bash benches/run.sh compare   (an older build too)
run.sh builds the profile-guided binary first (benches/pgo.py, what the image ships) and measures
it as `gateway`, with the plain release build as `baseline` (BENCH_PGO=0: the plain build alone;
BENCH_GATEWAY=/path: that binary as `gateway`).

Contenders, each its own process, all in front of one upstream (nginx answering 200 "hello world"):
  nginx      1 worker, `proxy_pass` with `keepalive` to the upstream, access log on (to a file);
             it gets the same request as the gateway's `auth: required` row, `Authorization:
             Bearer` and the token included (a client in front of nginx sends its token too, and
             nginx passes it on as the gateway passes its assertion: the same bytes both ways);
             `nginx-no-token` is nginx with the header left out, as this benchmark ran before
  haproxy    1 thread, `jwt_verify` (ES256, the gateway's public key) on every request, access log off
  floor      benches/hyper_floor.rs: the gateway's HTTP stack (hyper 1, hyper-util's server, a tokio
             runtime per worker, kept upstream connections, mimalloc) with none of its request
             logic, as many workers as the gateway; what hyper and tokio alone cost, so that the
             gap between it and the gateway is the gateway's own work (BENCH_FLOOR=0: none)
  gateway    `auth: required`, access log on (JSON to a file; its config in a directory of its own,
             as in a ConfigMap mount), and the warm exchange (the same Entra token again and again)
  eddsa      the warm (and cold) exchange through a gateway signing with an EdDSA key instead of
             ES256 (the default), whose signature is about a third of the exchange's CPU
  baseline   the same gateway rows with the binary in BENCH_BASELINE (when set)
  cluster    `auth: required` with a 3-node Redis Cluster (sharded pub/sub feeds; BENCH_CLUSTER=0: none)
  features   `auth: required` through gateways with one feature each (BENCH_FEATURES=0: none):
             all off (`forward_token: false`), per-route assertion tokens (the default, the
             `gateway` row), continuous access on, OpenTelemetry at 10% sampling (to an OTLP
             sink in this script), and all of them on
The cold exchange (a new user's token each time: Graph profile and groups, a new user record)
is measured after the rounds, three 1 s runs per binary with fresh tokens, against the
rounds' nginx median.
Each round runs every contender once (A, B, C, A, B, C, ...), wrk with the same threads,
connections and duration; the report gives each one's median and spread (min-max) over the
rounds, and the median and spread of its ratio to nginx in the same round, so that a difference
of a few percent is told from the noise of a shared machine. Then it counts system calls and
context switches per request for the gateway and the nginx worker (`perf stat -e
raw_syscalls:sys_enter,context-switches` on the process during a fixed run), with the CPU time
per request (`cpu-clock`: pinned, what a request costs a core), split into user and kernel time
(`/proc/<pid>/stat` before and after the run, all the process's threads), and the wake-ups of
other threads it causes (`sched:sched_waking`, counted in the waker), and prints them.

Settings (environment): BENCH_ROUNDS (5), BENCH_SECONDS (5), BENCH_CONNECTIONS (32),
BENCH_THREADS (2), BENCH_PIN (0), BENCH_GATEWAY, BENCH_BASELINE, BENCH_ONLY (a substring of contender names),
BENCH_SKIP_COUNTS (1: no syscall counts), BENCH_FEATURES (1), BENCH_CLUSTER (1), BENCH_FLOOR (1),
BENCH_COLD_USERS (15000 per run; 0: no cold row).
"""

import os
import pathlib
import shutil
import statistics
import subprocess
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import bench  # noqa: E402  (the components: upstream, nginx, mock, gateway, wrk)

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "5"))
SECONDS = int(os.environ.get("BENCH_SECONDS", "5"))
PIN = os.environ.get("BENCH_PIN") == "1"
BASELINE = os.environ.get("BENCH_BASELINE")
GATEWAY = bench.BIN  # main() points bench.BIN at each binary in turn
ONLY = os.environ.get("BENCH_ONLY", "")
SKIP_COUNTS = os.environ.get("BENCH_SKIP_COUNTS") == "1"
FEATURES = os.environ.get("BENCH_FEATURES", "1") == "1"
COLD_USERS = int(os.environ.get("BENCH_COLD_USERS", "15000"))
CLUSTER = os.environ.get("BENCH_CLUSTER", "1") == "1"
FLOOR = os.environ.get("BENCH_FLOOR", "1") == "1"
FLOOR_BIN = bench.ROOT / "target" / "release" / "examples" / "hyper_floor"
HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"
PROXY_CORE, LOAD_CORE = "0", "1"
# Pinned to one core, the gateway runs one worker thread (as an operator sets `server.workers`
# to the CPU limit); unpinned, its default (one per core).
WORKERS = {"ENTRA_GATEWAY__SERVER__WORKERS": "1"} if PIN else {}


def pin(pid, core):
    """Pins a process and its threads (and nginx's workers) to `core`."""
    if PIN:
        subprocess.run(["taskset", "-a", "-p", "-c", core, str(pid)], stdout=subprocess.DEVNULL, check=False)
        for child in pathlib.Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
            subprocess.run(["taskset", "-a", "-p", "-c", core, child], stdout=subprocess.DEVNULL, check=False)


def wrk(url, seconds, **kw):
    """wrk (on the load core when pinned)."""
    if PIN:
        os.sched_setaffinity(0, {int(LOAD_CORE)})
    try:
        return bench.wrk(url, seconds, **kw)
    finally:
        if PIN:
            os.sched_setaffinity(0, set(range(os.cpu_count())))


def haproxy(up, public_key):
    port = bench.free_port()
    d = bench.WORK / "haproxy"
    d.mkdir()
    (d / "haproxy.cfg").write_text(
        "global\n  nbthread 1\n  maxconn 4000\n"
        "defaults\n  mode http\n  timeout connect 5s\n  timeout client 30s\n  timeout server 30s\n"
        "  option http-keep-alive\n"
        f"frontend fe\n  bind 127.0.0.1:{port}\n"
        "  http-request deny deny_status 401 unless { http_auth_bearer -m found }\n"
        f"  http-request deny deny_status 401 unless {{ http_auth_bearer,jwt_verify(\"ES256\",\"{public_key}\") -m int 1 }}\n"
        "  default_backend be\n"
        f"backend be\n  http-reuse always\n  server up 127.0.0.1:{up}\n"
    )
    p = bench.Proc("haproxy", [HAPROXY, "-db", "-f", str(d / "haproxy.cfg")])
    bench.wait_port(port, "haproxy")
    return p, port


def public_key_of(private_pem, out):
    subprocess.run(["openssl", "pkey", "-in", str(private_pem), "-pubout", "-out", str(out)], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return out


def cpu_seconds(pid):
    """User and kernel CPU seconds of process `pid`, all its threads (`/proc/<pid>/stat`)."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def counts(pid, url, requests_seconds, **kw):
    """System calls, context switches, CPU time (user and kernel apart) per request of process
    `pid` (all its threads)."""
    perf = subprocess.Popen(
        ["perf", "stat", "-x", ",", "-e", "raw_syscalls:sys_enter,context-switches,cpu-clock,sched:sched_waking",
         "-p", str(pid)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    time.sleep(0.2)
    user, kernel = cpu_seconds(pid)
    r = wrk(url, requests_seconds, **kw)
    user_after, kernel_after = cpu_seconds(pid)
    perf.send_signal(2)
    _, err = perf.communicate()
    # In milliseconds, as perf reports cpu-clock.
    values = {"user": (user_after - user) * 1000, "kernel": (kernel_after - kernel) * 1000}
    for line in err.splitlines():
        parts = line.split(",")
        if len(parts) > 2 and parts[0].replace(".", "").isdigit():
            values[parts[2]] = float(parts[0])
    n = r["rps"] * requests_seconds
    return {k: v / n for k, v in values.items()} if n else {}


def otlp_sink():
    """An OTLP/HTTP receiver that accepts and discards spans (the exporter's other end)."""
    import http.server
    import threading

    class Sink(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers.get("Content-Length", "0")))
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Sink)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server.server_address[1]


# The feature rows: (label, ENTRA_GATEWAY__* overrides). `{sink}` is the OTLP sink's port.
FEATURE_ROWS = [
    ("features off (forward_token: false)", {"ENTRA_GATEWAY__PROXY__FORWARD_TOKEN": "false"}),
    ("+ continuous access", {"ENTRA_GATEWAY__PROXY__FORWARD_TOKEN": "false",
                             "ENTRA_GATEWAY__ENTRA__CONTINUOUS_ACCESS__ENABLED": "true"}),
    ("+ OpenTelemetry 10%", {"ENTRA_GATEWAY__PROXY__FORWARD_TOKEN": "false",
                             "ENTRA_GATEWAY__TELEMETRY__OTLP_ENDPOINT": "http://127.0.0.1:{sink}",
                             "ENTRA_GATEWAY__TELEMETRY__SAMPLE_RATIO": "0.1"}),
    ("all on (assertions, continuous access, OpenTelemetry 10%)",
     {"ENTRA_GATEWAY__ENTRA__CONTINUOUS_ACCESS__ENABLED": "true",
      "ENTRA_GATEWAY__TELEMETRY__OTLP_ENDPOINT": "http://127.0.0.1:{sink}",
      "ENTRA_GATEWAY__TELEMETRY__SAMPLE_RATIO": "0.1"}),
]


def redis_cluster():
    """Three redis-server processes in cluster mode (no replicas), joined by redis-cli."""
    procs, ports = [], []
    for i in range(3):
        port = bench.free_port()
        while port >= 55000:  # the cluster bus listens on port + 10000
            port = bench.free_port()
        d = bench.WORK / f"cluster-{i}"
        d.mkdir()
        procs.append(bench.Proc(f"redis-{i}", ["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--save", "",
                                                "--appendonly", "no", "--dir", str(d), "--cluster-enabled", "yes",
                                                "--cluster-config-file", "nodes.conf"]))
        bench.wait_port(port, "redis cluster node")
        ports.append(port)
    subprocess.run(["redis-cli", "--cluster", "create", *[f"127.0.0.1:{p}" for p in ports], "--cluster-replicas", "0",
                    "--cluster-yes"], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(200):
        info = subprocess.run(["redis-cli", "-p", str(ports[0]), "cluster", "info"], capture_output=True, text=True).stdout
        if "cluster_state:ok" in info:
            break
        time.sleep(0.05)
    return procs, ports


def nginx_worker(pid):
    children = pathlib.Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return int(children[0]) if children else pid


def main():
    procs = []
    results = {}  # contender -> [rps per round]
    p99 = {}
    try:
        up_proc, up = bench.upstream()
        procs.append(up_proc)
        pin(up_proc.p.pid, LOAD_CORE)
        mock_proc, info = bench.mock()
        procs.append(mock_proc)
        pin(mock_proc.p.pid, LOAD_CORE)
        ng, ng_port = bench.nginx_proxy(up, 1, True)
        procs.append(ng)
        pin(ng.p.pid, PROXY_CORE)
        contenders = []
        binaries = [("gateway", bench.BIN)] + ([("baseline", pathlib.Path(BASELINE))] if BASELINE else [])
        key_pem = None
        for label, binary in binaries:
            bench.BIN = binary
            gw, port = bench.gateway(f"{label}-gw", info, up, True, env=WORKERS)
            procs.append(gw)
            pin(gw.p.pid, PROXY_CORE)
            time.sleep(0.5)
            entra, internal = bench.sign_in(info, port)
            tokens = bench.WORK / f"{label}-warm.txt"
            tokens.write_text(entra + "\n")
            contenders.append((f"{label} auth: required (log on)", gw.p.pid, f"http://127.0.0.1:{port}/req/x",
                               {"token": internal}))
            contenders.append((f"{label} warm exchange (log on)", gw.p.pid, f"http://127.0.0.1:{port}/auth/exchange",
                               {"tokens_file": tokens}))
            if key_pem is None:
                key_pem = bench.WORK / f"{label}-gw" / "k1.pem"
                gateway_token = internal
        # nginx (first: the reference of every ratio) gets the gateway row's request, token
        # included; the row without it is kept for comparison with earlier runs.
        contenders[:0] = [
            ("nginx (1 worker, log on)", ng.p.pid, f"http://127.0.0.1:{ng_port}/x", {"token": gateway_token}),
            ("nginx-no-token (1 worker, log on, no Authorization header)", ng.p.pid,
             f"http://127.0.0.1:{ng_port}/x", {}),
        ]
        if FLOOR:
            floor_port = bench.free_port()
            # As many workers as the gateway: one pinned, one per core otherwise.
            floor = bench.Proc("hyper-floor", [str(FLOOR_BIN), f"127.0.0.1:{floor_port}", f"127.0.0.1:{up}",
                                               "1" if PIN else str(os.cpu_count())])
            procs.append(floor)
            bench.wait_port(floor_port, "hyper-floor")
            pin(floor.p.pid, PROXY_CORE)
            contenders.insert(2, ("hyper floor (the gateway's HTTP stack, no request logic)", floor.p.pid,
                                  f"http://127.0.0.1:{floor_port}/x", {"token": gateway_token}))
        bench.BIN = binaries[0][1]
        # The warm exchange with an EdDSA signing key (ES256's signature is a third of it).
        gw, port = bench.gateway("eddsa-gw", info, up, True, env=WORKERS, key_alg="EdDSA")
        procs.append(gw)
        pin(gw.p.pid, PROXY_CORE)
        time.sleep(0.5)
        entra = bench.entra_token(info)
        tokens = bench.WORK / "eddsa-warm.txt"
        tokens.write_text(entra + "\n")
        contenders.append(("gateway warm exchange, EdDSA key (log on)", gw.p.pid,
                           f"http://127.0.0.1:{port}/auth/exchange", {"tokens_file": tokens}))
        feature_procs = []
        if FEATURES:
            sink = otlp_sink()
            for i, (label, env) in enumerate(FEATURE_ROWS):
                env = dict({k: v.format(sink=sink) for k, v in env.items()}, **WORKERS)
                gw, port = bench.gateway(f"feature-{i}", info, up, True, env=env)
                procs.append(gw)
                feature_procs.append(gw)
                pin(gw.p.pid, PROXY_CORE)
                time.sleep(0.5)
                entra, internal = bench.sign_in(info, port)
                contenders.append((f"gateway {label} auth: required (log on)", gw.p.pid,
                                   f"http://127.0.0.1:{port}/req/x", {"token": internal}))
        if CLUSTER:
            cluster_procs, ports = redis_cluster()
            procs.extend(cluster_procs)
            seeds = ", ".join(f'"redis://127.0.0.1:{p}"' for p in ports)
            gw, port = bench.gateway("cluster-gw", info, up, True, env=WORKERS, cache_yaml=f"cache: {{ cluster_urls: [{seeds}] }}\n")
            procs.append(gw)
            pin(gw.p.pid, PROXY_CORE)
            time.sleep(1.5)  # the revocation feed subscribes
            entra, internal = bench.sign_in(info, port)
            contenders.append(("gateway + Redis Cluster (3 nodes) auth: required (log on)", gw.p.pid,
                               f"http://127.0.0.1:{port}/req/x", {"token": internal}))
        ha, ha_port = haproxy(up, public_key_of(key_pem, bench.WORK / "k1.pub.pem"))
        procs.append(ha)
        pin(ha.p.pid, PROXY_CORE)
        contenders.append(("haproxy jwt_verify (1 thread)", ha.p.pid, f"http://127.0.0.1:{ha_port}/x",
                           {"token": gateway_token}))
        contenders = [c for c in contenders if ONLY in c[0] or c[0].startswith(("nginx", "hyper floor"))]
        print(f"{ROUNDS} interleaved rounds of {SECONDS}s per contender, wrk -t{bench.THREADS} -c{bench.CONNECTIONS}"
              + (", each proxy pinned to core 0, wrk and the upstream to core 1" if PIN else ""), flush=True)
        for name, _, url, kw in contenders:
            wrk(url, 2, **kw)  # warm-up
        for rnd in range(ROUNDS):
            for name, _, url, kw in contenders:
                r = wrk(url, SECONDS, **kw)
                results.setdefault(name, []).append(r["rps"])
                p99.setdefault(name, []).append(r["p99"])
                print(f"  round {rnd + 1}: {name}: {r['rps']:.0f} req/s, p99 {r['p99']:.2f} ms"
                      + (f", {r['errors']} errors" if r["errors"] else ""), flush=True)
        per_request = {}
        if not SKIP_COUNTS:
            for name, pid, url, kw in contenders:
                if name.startswith("nginx"):
                    pid = nginx_worker(pid)
                if name.startswith(("nginx", "hyper floor", "gateway", "baseline")) and "exchange" not in name:
                    per_request[name] = counts(pid, url, 3, **kw)
        # The continuous-access rows poll the mock's directory, which the cold rows fill with
        # thousands of users: they are done.
        for p in feature_procs:
            p.stop()
        cold = {}
        if COLD_USERS:
            for name, _, url, kw in contenders:
                if "warm exchange" not in name or (ONLY and ONLY not in name.replace("warm", "cold")):
                    continue
                label = name.replace("warm exchange", "cold exchange")
                for run in range(3):
                    r = wrk(url, 1, tokens_file=bench.cold_tokens(info, COLD_USERS))
                    cold.setdefault(label, []).append(r["rps"])
                    print(f"  cold run {run + 1}: {label}: {r['rps']:.0f} req/s", flush=True)
    finally:
        for p in procs:
            p.stop()
    report(results, p99, per_request, cold)


def report(results, p99, per_request, cold):
    nginx = next(k for k in results if k.startswith("nginx"))
    lines = ["| contender | req/s median | spread | × nginx median | × nginx spread | p99 ms median |",
             "|---|---|---|---|---|---|"]
    for name, rps in results.items():
        ratios = [a / b for a, b in zip(rps, results[nginx])]
        lines.append(f"| {name} | {statistics.median(rps):.0f} | {min(rps):.0f}–{max(rps):.0f} | "
                     f"{statistics.median(ratios):.2f} | {min(ratios):.2f}–{max(ratios):.2f} | "
                     f"{statistics.median(p99[name]):.2f} |")
    if cold:
        nginx_median = statistics.median(results[nginx])
        lines += ["", "| measured apart (3 runs of 1 s, fresh tokens) | req/s median | spread | × nginx median |",
                  "|---|---|---|---|"]
        for name, rps in cold.items():
            lines.append(f"| {name} | {statistics.median(rps):.0f} | {min(rps):.0f}–{max(rps):.0f} | "
                         f"{statistics.median(rps) / nginx_median:.2f} |")
    if per_request:
        lines += ["", "| process | syscalls / request | context switches / request | CPU µs / request "
                  "| of it user / kernel µs | wake-ups caused / request |", "|---|---|---|---|---|---|"]
        for name, c in per_request.items():
            # perf reports cpu-clock in milliseconds; user and kernel are the same unit.
            lines.append(f"| {name} | {c.get('raw_syscalls:sys_enter', float('nan')):.2f} | "
                         f"{c.get('context-switches', float('nan')):.3f} | "
                         f"{c.get('cpu-clock', float('nan')) * 1000:.1f} | "
                         f"{c.get('user', float('nan')) * 1000:.1f} / {c.get('kernel', float('nan')) * 1000:.1f} | "
                         f"{c.get('sched:sched_waking', float('nan')):.3f} |")
    mode = "pinned: each proxy on one core" if PIN else "unpinned"
    head = (f"# Interleaved comparison ({mode})\n\n{time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC, "
            f"{os.cpu_count()} cores; {ROUNDS} rounds of {SECONDS}s per contender, wrk -t{bench.THREADS} "
            f"-c{bench.CONNECTIONS}; ratios are taken per round, then their median and spread.\n"
            f"gateway: `{bench.binary_name(GATEWAY)}`" + (f"; baseline: `{bench.binary_name(BASELINE)}`" if BASELINE else "")
            + "\n\n")
    text = head + "\n".join(lines) + "\n"
    bench.write_result(f"compare-{'pinned' if PIN else 'unpinned'}.md", text)


if __name__ == "__main__":
    try:
        main()
    finally:
        shutil.rmtree(bench.WORK, ignore_errors=True)
