#!/usr/bin/env python3
"""Under load and faults: soak, SIGTERM with a second replica, Redis killed and restarted.

Run by `bash benches/run.sh soak` (which builds the release binary and installs what is missing);
not part of the test command. Loopback only, bounded in time (SOAK_SECONDS, 600 by default, plus
about two minutes). Every component is its own process:
  upstream   nginx returning 200 "hello world"
  mock       the mock Entra ID + Graph (`entra-gateway mock`)
  redis      redis-server (no persistence)
  gateway A, B  two replicas sharing Redis and one signing key
  lb         nginx in front of A and B, as a Kubernetes Service or ingress would be: a replica
             that stops accepting is skipped (`proxy_next_upstream error`)
Load: two wrk processes at once, proxied `auth: required` requests and warm exchanges (50 users
who already signed in), each paced (wrk's `delay()`) to a share of the capacity measured first:
70% of the proxy capacity plus 10% of the exchange capacity, about 80% in all.

Phases and what must hold:
  soak     SOAK_SECONDS of mixed load: 0 errors; RSS and open fds of A at start and end within 10%
  sigterm  SIGTERM to A under load: B takes over; 0 client-visible errors; A exits within its grace
  redis    Redis killed, then restarted, under load (on B): 0 failed exchanges for cached users,
           and a token logged out before the kill is refused throughout (0 fail-open)
Prints a report and writes it to benches/results/soak.md.
"""

import datetime
import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import bench  # noqa: E402  (the benchmark's process helpers)

SOAK = int(os.environ.get("SOAK_SECONDS", "600"))
PHASE = 30
WORK = bench.WORK
LUA_PACED = """
local tokens = {}
for line in io.lines(os.getenv("SOAK_TOKENS")) do tokens[#tokens + 1] = line end
local path, method = os.getenv("SOAK_PATH"), os.getenv("SOAK_METHOD")
local pause = tonumber(os.getenv("SOAK_DELAY_MS"))
local i = 0
function delay() return pause end
function request()
  i = i + 1
  local t = tokens[i % #tokens + 1]
  return wrk.format(method, path, { ["Authorization"] = "Bearer " .. t, ["Content-Length"] = "0" })
end
"""


def wrk_paced(url, seconds, connections, tokens_file, method, path, delay_ms):
    script = WORK / "paced.lua"
    script.write_text(LUA_PACED)
    env = dict(os.environ, SOAK_TOKENS=str(tokens_file), SOAK_PATH=path, SOAK_METHOD=method,
               SOAK_DELAY_MS=str(delay_ms))
    args = ["wrk", f"-t{min(2, connections)}", f"-c{connections}", f"-d{seconds}s", "--latency", "--timeout", "5s", "-s", str(script), url]
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)


def parse(out):
    if "Requests/sec:" not in out:
        sys.exit(f"wrk failed:\n{out}")
    rps = float(next(l for l in out.splitlines() if l.startswith("Requests/sec:")).split()[1])
    total = int(re.search(r"(\d+) requests in", out).group(1))
    errors = sum(int(l.split()[-1]) for l in out.splitlines() if "Non-2xx" in l)
    for l in out.splitlines():
        if l.strip().startswith("Socket errors"):
            errors += sum(int(n) for n in re.findall(r"\d+", l))
    p99 = next(l.split()[1] for l in out.splitlines() if l.strip().startswith("99%"))
    return {"rps": rps, "requests": total, "errors": errors, "p99": p99}


def run_pair(url, seconds, plan, files):
    """Both streams at once; returns (proxy, exchange) results."""
    procs = [wrk_paced(url, seconds, plan[k]["connections"], files[k], *ROUTE[k], plan[k]["delay"]) for k in ("proxy", "exchange")]
    return tuple(parse(p.communicate()[0]) for p in procs)


ROUTE = {"proxy": ("GET", "/req/x"), "exchange": ("POST", "/auth/exchange")}


def gateway(name, info, up, redis_port, key):
    d = WORK / name
    d.mkdir()
    (d / "secret").write_text(info["client_secret"])
    port, admin = bench.free_port(), bench.free_port()
    (d / "gateway.yaml").write_text(
        f'server:\n  listen: "127.0.0.1:{port}"\n  admin_listen: "127.0.0.1:{admin}"\n  shutdown_grace: 10s\n'
        f"  rate_limit: {{ exchange_per_ip: null, exchange_per_user: null }}\n"
        f'entra:\n  authority_host: "{info["authority_host"]}"\n  graph_url: "{info["graph_url"]}"\n'
        f'  tenants: ["{info["tenant_id"]}"]\n  client_id: "{info["client_id"]}"\n'
        f"  graph_mode: app\n  client_secret_file: secret\n"
        f'authorization:\n  allowed_groups: ["{info["groups"]["engineering"]}"]\n'
        f'issuer:\n  issuer: "https://gateway.soak"\n  signing_keys: [{{ kid: k1, private_key_file: {key} }}]\n'
        f'cache: {{ redis_url: "redis://127.0.0.1:{redis_port}/0" }}\n'
        f"proxy:\n  routes:\n"
        f'    - {{ path_prefix: "/req/", upstream: "http://127.0.0.1:{up}", auth: required }}\n'
        f"logging: {{ level: warn, format: json }}\n"
    )
    p = bench.Proc(name, [str(bench.BIN), "serve", "--config", str(d / "gateway.yaml")],
                   stdout=open(WORK / f"{name}.log", "w"))
    bench.wait_port(port, name)
    return p, port, admin


def lb(ports):
    port = bench.free_port()
    servers = "".join(f"server 127.0.0.1:{p} max_fails=1 fail_timeout=2s; " for p in ports)
    block = (f"  upstream gw {{ {servers}keepalive 64; }}\n"
             f"  server {{ listen 127.0.0.1:{port};\n"
             f"    location / {{ proxy_pass http://gw; proxy_http_version 1.1; proxy_set_header Connection \"\";\n"
             f"      proxy_next_upstream error timeout non_idempotent; proxy_next_upstream_tries 2; }} }}")
    p = bench.nginx("lb", block)
    bench.wait_port(port, "lb")
    return p, port


def fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def calibrate(url, files):
    """Full-speed capacity of each stream, then connections paced at 1 ms for the targets."""
    cap = {}
    for k in ("proxy", "exchange"):
        p = wrk_paced(url, 5, 32, files[k], *ROUTE[k], 0)
        cap[k] = parse(p.communicate()[0])["rps"]
    plan = {}
    for k, share in (("proxy", 0.7), ("exchange", 0.1)):
        per_conn = parse(wrk_paced(url, 3, 4, files[k], *ROUTE[k], 1).communicate()[0])["rps"] / 4
        target = share * cap[k]
        plan[k] = {"connections": max(2, round(target / per_conn)), "delay": 1, "target": target}
    # One correction with both streams running (a paced connection is slower under load).
    got = dict(zip(("proxy", "exchange"), run_pair(url, 5, plan, files)))
    for k in plan:
        scale = plan[k]["target"] / max(got[k]["rps"], 1)
        plan[k]["connections"] = max(2, min(512, round(plan[k]["connections"] * scale)))
    return cap, plan


def main():
    report = []

    def say(line=""):
        print(line, flush=True)
        report.append(line)

    procs = []
    try:
        up_proc, up = bench.upstream()
        mock_proc, info = bench.mock()
        redis_proc, redis_port = bench.redis()
        procs += [up_proc, mock_proc, redis_proc]
        key = WORK / "k1.pem"
        subprocess.run([str(bench.BIN), "keys", "generate", "--out", str(key)], check=True, stdout=subprocess.DEVNULL)
        a, a_port, a_admin = gateway("gateway-a", info, up, redis_port, key)
        b, b_port, b_admin = gateway("gateway-b", info, up, redis_port, key)
        balancer, lb_port = lb([a_port, b_port])
        procs += [a, b, balancer]
        url = f"http://127.0.0.1:{lb_port}"
        users = bench.post(f"{info['authority_host']}/mock/new-users",
                           {"count": 50, "groups": [info["groups"]["engineering"]]}).decode().split()
        internal = [json.loads(bench.post(f"{url}/auth/exchange", token=t))["access_token"] for t in users]
        files = {"exchange": WORK / "entra.txt", "proxy": WORK / "internal.txt"}
        files["exchange"].write_text("\n".join(users) + "\n")
        files["proxy"].write_text("\n".join(internal) + "\n")

        cap, plan = calibrate(url, files)
        say(f"# Under load and faults ({datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, "
            f"{os.cpu_count()} cores, loopback)")
        say()
        say(f"Capacity through the load balancer: proxy {cap['proxy']:.0f} req/s, warm exchange "
            f"{cap['exchange']:.0f} req/s. Load aimed at 70% of the first plus 10% of the second: proxy "
            f"{plan['proxy']['target']:.0f} req/s ({plan['proxy']['connections']} connections paced by 1 ms) + "
            f"exchange {plan['exchange']['target']:.0f} req/s ({plan['exchange']['connections']}); the rows show "
            f"what was reached.")
        say()

        # Soak.
        # RSS and fds sampled under load: shortly after it starts and shortly before it ends.
        samples = []

        def sample():
            for at in (min(15, SOAK / 4), SOAK - min(5, SOAK / 4)):
                time.sleep(max(0, at - (time.time() - began)))
                samples.append({"rss": bench.rss_kib(a.p.pid), "fds": fds(a.p.pid)})

        began = time.time()
        sampler = threading.Thread(target=sample)
        sampler.start()
        proxy, exchange = run_pair(url, SOAK, plan, files)
        sampler.join()
        start, end = samples
        rss_ok = end["rss"] <= start["rss"] * 1.1
        fds_ok = end["fds"] <= start["fds"] * 1.1 + 2
        soak_ok = proxy["errors"] == 0 and exchange["errors"] == 0 and rss_ok and fds_ok
        say(f"| phase | proxy req/s | exchange req/s | errors | p99 proxy / exchange | holds |")
        say(f"|---|---|---|---|---|---|")
        say(f"| soak {SOAK}s | {proxy['rps']:.0f} | {exchange['rps']:.0f} | {proxy['errors'] + exchange['errors']} "
            f"| {proxy['p99']} / {exchange['p99']} | {'yes' if soak_ok else 'NO'} |")
        soak_line = (f"Gateway A: RSS {start['rss'] / 1024:.1f} MiB -> {end['rss'] / 1024:.1f} MiB, open fds "
                     f"{start['fds']} -> {end['fds']} (flat within 10%: {'yes' if rss_ok and fds_ok else 'NO'}).")

        # SIGTERM to A under load.
        pair = {}
        t = threading.Thread(target=lambda: pair.setdefault("r", run_pair(url, PHASE, plan, files)))
        t.start()
        time.sleep(PHASE / 3)
        term_at = time.time()
        a.p.send_signal(signal.SIGTERM)
        code = a.p.wait(timeout=60)
        exited = time.time() - term_at
        t.join()
        proxy, exchange = pair["r"]
        term_ok = proxy["errors"] == 0 and exchange["errors"] == 0 and code == 0 and exited <= 10.5
        say(f"| SIGTERM to A at {PHASE // 3}s of {PHASE}s | {proxy['rps']:.0f} | {exchange['rps']:.0f} | "
            f"{proxy['errors'] + exchange['errors']} | {proxy['p99']} / {exchange['p99']} | {'yes' if term_ok else 'NO'} |")
        term_line = f"A exited with status {code} {exited:.1f}s after SIGTERM (grace 10s); B served the rest."

        # Redis killed and restarted under load (B alone now).
        revoked = internal[0]
        req = urllib.request.Request(f"http://127.0.0.1:{b_port}/auth/logout", data=b"", method="POST",
                                     headers={"Authorization": f"Bearer {revoked}"})
        urllib.request.urlopen(req, timeout=5).read()
        files["proxy"].write_text("\n".join(internal[1:]) + "\n")
        fail_open, probes, stop = [0], [0], threading.Event()

        def probe():
            while not stop.is_set():
                r = urllib.request.Request(f"http://127.0.0.1:{b_port}/req/x", headers={"Authorization": f"Bearer {revoked}"})
                try:
                    urllib.request.urlopen(r, timeout=5).read()
                    fail_open[0] += 1
                except urllib.error.HTTPError:
                    pass
                probes[0] += 1
                time.sleep(0.02)

        prober = threading.Thread(target=probe)
        prober.start()
        t = threading.Thread(target=lambda: pair.update(r=run_pair(url, PHASE, plan, files)))
        t.start()
        time.sleep(PHASE / 6)
        redis_proc.p.kill()
        redis_proc.p.wait()
        time.sleep(PHASE / 3)
        redis_proc, _ = restart_redis(redis_port)
        procs.append(redis_proc)
        t.join()
        stop.set()
        prober.join()
        proxy, exchange = pair["r"]
        redis_ok = exchange["errors"] == 0 and proxy["errors"] == 0 and fail_open[0] == 0
        say(f"| Redis killed at {PHASE // 6}s, back at {PHASE // 6 + PHASE // 3}s | {proxy['rps']:.0f} | "
            f"{exchange['rps']:.0f} | {proxy['errors'] + exchange['errors']} | {proxy['p99']} / {exchange['p99']} | "
            f"{'yes' if redis_ok else 'NO'} |")
        say()
        say(soak_line)
        say(term_line)
        say(f"Redis outage: {exchange['requests']} exchanges of cached users, {exchange['errors']} failed; a token "
            f"logged out before the kill was probed {probes[0]} times and accepted {fail_open[0]} times (each acceptance would be a fail-open).")
        say()
        say("All hold." if soak_ok and term_ok and redis_ok else "NOT ALL HOLD: see the rows marked NO.")
    finally:
        for p in procs:
            p.stop()
    out = pathlib.Path(__file__).resolve().parent / "results" / "soak.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(report) + "\n")
    print(f"\nwritten to {out.relative_to(bench.ROOT)}")


def restart_redis(port):
    d = WORK / "redis"
    p = bench.Proc("redis", ["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--save", "",
                             "--appendonly", "no", "--dir", str(d)])
    bench.wait_port(port, "redis")
    return p, port


if __name__ == "__main__":
    main()
