#!/usr/bin/env python3
"""CPU time per answered request of every proxy a bench run starts.

Throughput on a shared 2-core VM moves by ±10 % between repeats; the CPU each proxy spent
per request it answered moves much less, so it shows a small change that throughput hides.

Start it just before a bench run, with the proxies given a metrics token:

    python3 benches/cpu-per-request.py &
    BENCH_PROXY_ENV=METRICS_TOKEN=mt-bench-token-123 BENCH_SKIP_BUILD=1 benches/run.sh tracking

It samples each `bench-bin/api-key-rotator` process every second (user + system CPU from
/proc, requests answered from /metrics) and, once they are gone, prints the last sample of
each: CPU µs per request, and on ÷ off when the run had a USAGE_TRACKING=off proxy.
"""
import os
import re
import subprocess
import time
import urllib.request

TOKEN = os.environ.get("METRICS_TOKEN", "mt-bench-token-123")
HZ = os.sysconf("SC_CLK_TCK")


def proxies():
    out = subprocess.run(["pgrep", "-f", "bench-bin/api-key-rotator"], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


def port_of(pid):
    out = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True).stdout
    for line in out.splitlines():
        if f"pid={pid}," in line:
            return int(line.split()[3].rsplit(":", 1)[1])
    return None


def sample(pid):
    """(name, cpu seconds, requests answered), or None for a process that is not a proxy."""
    port = port_of(pid)
    if port is None:
        return None
    stat = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    cpu = (int(stat[11]) + int(stat[12])) / HZ
    name = "off" if "USAGE_TRACKING=off" in open(f"/proc/{pid}/environ").read() else "on"
    req = urllib.request.Request(f"http://127.0.0.1:{port}/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    text = urllib.request.urlopen(req, timeout=1).read().decode()
    answered = sum(float(n) for n in re.findall(r"^rotator_requests_total\{[^}]*\} (\S+)", text, re.M))
    return name, cpu, answered


def main():
    last, seen = {}, False
    while True:
        pids = proxies()
        if seen and not pids:
            break
        for pid in pids:
            seen = True
            try:
                s = sample(pid)
            except (OSError, ValueError):
                continue  # starting or stopping
            if s:
                last[pid] = s
        time.sleep(1)
    per = {}
    for pid, (name, cpu, n) in sorted(last.items()):
        us = cpu / n * 1e6 if n else 0.0
        per[name] = us
        print(f"{name} (pid {pid}): {cpu:.1f} s CPU, {n:.0f} requests, {us:.2f} µs per request")
    if "on" in per and "off" in per and per["off"]:
        print(f"on ÷ off, CPU per request: {per['on'] / per['off']:.3f}")


if __name__ == "__main__":
    main()
