#!/usr/bin/env python3
"""Instructions per request, counted by callgrind: a figure that does not move with the machine.

    bash benches/run.sh instructions
    BENCH_BASELINE=/path/to/old/entra-gateway bash benches/run.sh instructions

Requests per second on a shared 2-core machine move by 3-10% between runs (see compare.py), so a
change worth 2-4% of the proxy path's CPU cannot be told from noise by timing it. Valgrind's
callgrind counts the user-space instructions each process executes, the same on every run to
about 0.1%: this script runs the gateway (one worker, access log on, as compare.py's rows) and
`hyper_floor` (the gateway's HTTP stack without its request logic, benches/hyper_floor.rs) under
callgrind in front of the same nginx upstream, sends each one N requests on 4 keep-alive
connections after a warm-up, and reports instructions per request: `auth: required` (a verified
token, its assertion, identity headers), `auth: none`, the warm exchange (the same Entra token
again and again), and the floor; then the functions with the most instructions of their own in
the gateway's `auth: required` and warm exchange rows. What it does not count: the kernel (system calls, TCP), cache
misses and waiting, so it complements compare.py's timings rather than replacing them.

Settings (environment): BENCH_REQUESTS (2000 per row), BENCH_BASELINE (an older build's rows too),
BENCH_TOP (15 functions per table).
"""

import collections
import http.client
import os
import pathlib
import re
import shutil
import subprocess
import sys
import threading
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import bench  # noqa: E402  (the components: upstream, nginx, mock, gateway)

REQUESTS = int(os.environ.get("BENCH_REQUESTS", "2000"))
BASELINE = os.environ.get("BENCH_BASELINE")
GATEWAY = bench.BIN
FLOOR_BIN = bench.ROOT / "target" / "release" / "examples" / "hyper_floor"
CLIENTS = 4
TOP = int(os.environ.get("BENCH_TOP", "15"))


def callgrind(out):
    return ["valgrind", "--tool=callgrind", "--dump-instr=no", f"--callgrind-out-file={out}"]


def load(port, method, path, token, n):
    """`n` requests on one keep-alive connection; every answer must be a 200."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    for _ in range(n):
        c.request(method, path, body=b"" if method == "POST" else None, headers={"Authorization": f"Bearer {token}"})
        r = c.getresponse()
        r.read()
        if r.status != 200:
            raise SystemExit(f"{method} {path}: {r.status}")
    c.close()


def measure(pid, port, method, path, token, out):
    """Instructions per request of process `pid` for `REQUESTS` requests (after a warm-up)."""
    load(port, method, path, token, 50)
    subprocess.run(["callgrind_control", "-z", str(pid)], check=True, capture_output=True)
    threads = [threading.Thread(target=load, args=(port, method, path, token, REQUESTS // CLIENTS))
               for _ in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    before = set(pathlib.Path(out).parent.glob(pathlib.Path(out).name + ".*"))
    subprocess.run(["callgrind_control", "-d", str(pid)], check=True, capture_output=True)
    dump = max(set(pathlib.Path(out).parent.glob(pathlib.Path(out).name + ".*")) - before, key=lambda p: p.stat().st_mtime)
    requests = REQUESTS // CLIENTS * CLIENTS
    return self_costs(dump), requests


def self_costs(path):
    """Instructions per function (its own, not its callees'), from a callgrind output file."""
    names, cost, fn, in_call = {}, collections.Counter(), None, False
    for line in open(path, errors="replace"):
        m = re.match(r"^c?fn=\((\d+)\)(?: (.*))?$", line.rstrip("\n"))
        if m:
            if m.group(2):
                names[m.group(1)] = m.group(2)
            if line.startswith("fn="):
                fn, in_call = names.get(m.group(1), m.group(1)), False
            continue
        if line.startswith("calls="):
            in_call = True
            continue
        if fn and (line[:1].isdigit() or line[:1] in ("+", "-", "*")):
            parts = line.split()
            if len(parts) >= 2 and parts[1].isdigit():
                if in_call:
                    in_call = False  # the callee's inclusive cost, counted in its own record
                else:
                    cost[fn] += int(parts[1])
    return cost


def gateway_rows(label, binary, info, up, work):
    bench.BIN = pathlib.Path(binary)
    real = bench.Proc

    def under_callgrind(name, args, **kw):
        return real(name, callgrind(work / f"{name}.cg") + args if "serve" in args else args, **kw)

    bench.Proc = under_callgrind
    try:
        gw, port = bench.gateway(f"{label}-cg", info, up, True, env={"ENTRA_GATEWAY__SERVER__WORKERS": "1"})
    finally:
        bench.Proc = real
    try:
        entra, internal = bench.sign_in(info, port)
        out = str(work / f"{label}-cg.cg")
        rows = {}
        for row, method, path, token in [("auth: required", "GET", "/req/x", internal),
                                         ("auth: none", "GET", "/none/x", internal),
                                         ("warm exchange", "POST", "/auth/exchange", entra)]:
            rows[f"{label} {row}"] = measure(gw.p.pid, port, method, path, token, out)
        return rows
    finally:
        gw.stop()


def main():
    work = bench.WORK
    procs, rows = [], {}
    try:
        up_proc, up = bench.upstream()
        procs.append(up_proc)
        mock_proc, info = bench.mock()
        procs.append(mock_proc)
        port = bench.free_port()
        floor = bench.Proc("floor", callgrind(work / "floor.cg") + [str(FLOOR_BIN), f"127.0.0.1:{port}", f"127.0.0.1:{up}"])
        procs.append(floor)
        bench.wait_port(port, "hyper-floor")
        rows["hyper floor (no request logic)"] = measure(floor.p.pid, port, "GET", "/x", "x" * 700, str(work / "floor.cg"))
        floor.stop()
        rows.update(gateway_rows("gateway", bench.BIN, info, up, work))
        if BASELINE:
            rows.update(gateway_rows("baseline", BASELINE, info, up, work))
    finally:
        for p in procs:
            p.stop()
    report(rows)


def report(rows):
    lines = ["| row | instructions / request |", "|---|---|"]
    for name, (cost, n) in rows.items():
        lines.append(f"| {name} | {sum(cost.values()) / n:,.0f} |")
    for row in ("auth: required", "warm exchange"):
        cost, n = rows[f"gateway {row}"]
        total = sum(cost.values())
        lines += ["", f"Most instructions of their own, gateway `{row}`:", "",
                  "| function | instructions / request | share |", "|---|---|---|"]
        for fn, c in cost.most_common(TOP):
            lines.append(f"| `{fn[:110]}` | {c / n:,.0f} | {100 * c / total:.1f}% |")
    text = (f"# Instructions per request (callgrind)\n\n{time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC; "
            f"{REQUESTS} requests per row on {CLIENTS} keep-alive connections after 50 of warm-up; user space "
            f"only (no kernel, no cache misses). Under valgrind the `sha2` crate finds no SHA extensions and "
            f"hashes in software (`sha2::sha256::soft`), which a CPU with SHA-NI does not.\n"
            f"gateway: `{bench.binary_name(GATEWAY)}`" + (f"; baseline: `{bench.binary_name(BASELINE)}`" if BASELINE else "")
            + "\n\n" + "\n".join(lines) + "\n")
    bench.write_result("instructions.md", text)


if __name__ == "__main__":
    try:
        main()
    finally:
        shutil.rmtree(bench.WORK, ignore_errors=True)
