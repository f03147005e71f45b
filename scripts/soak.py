#!/usr/bin/env python3
"""make soak: mixed traffic with injected faults against the release binary, reported
minute by minute (docs/FUZZING.md#soak). Not in CI: it runs for SOAK_MINUTES (30).

Traffic: /proxy and /llm, JSON and SSE, from SOAK_CLIENTS threads; one request in ten
is cut by the client midway. The upstream (in this process) resets, stalls, answers 429
and 401 on a share of requests. Admin writes run throughout (keys added, deleted,
disabled, reset; client keys made and revoked). In the enterprise build (SOAK_ENTERPRISE=1,
MariaDB and Redis on 127.0.0.1) Redis and MariaDB are restarted in the middle.

SOAK_ENV="NAME=value,…" passes more settings to the proxy.

Per minute: RSS (mean, peak and low of readings every 5 s), open descriptors, requests served, answers by class. Passes when RSS and
descriptors of the last 10 minutes stay within 5 % of minute 5, every 5xx is explained by a
fault the upstream injected (or by a database restart), and every admin write that was
answered 2xx is in the database at the end.
"""
import collections
import http.client
import json
import os
import random
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MINUTES = float(os.environ.get("SOAK_MINUTES", "30"))
CLIENTS = int(os.environ.get("SOAK_CLIENTS", "16"))
ENTERPRISE = os.environ.get("SOAK_ENTERPRISE") == "1"
BIN = os.environ.get("SOAK_BIN", "target/release/api-key-rotator")
ADMIN_PASSWORD = "soak-admin-password"
PROXY_KEY = "pk-soak-0123456789"
FAULTS = {"reset": 0.02, "stall": 0.01, "429": 0.03, "401": 0.01}

faulted = set()  # request ids the upstream broke on purpose
faulted_lock = threading.Lock()
stop = threading.Event()


def note_fault(handler):
    rid = handler.headers.get("x-request-id")
    if rid:
        with faulted_lock:
            faulted.add(rid)


class Upstream(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def answer(self, status, body, ctype="application/json", extra=()):
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", ctype)
        self.send_header("content-length", str(len(data)))
        for k, v in extra:
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def handle_any(self):
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length) if length else b""
        roll = random.random()
        if roll < FAULTS["reset"]:
            note_fault(self)
            # An abrupt reset (RST), mid-exchange.
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
            self.close_connection = True
            return
        roll -= FAULTS["reset"]
        if roll < FAULTS["stall"]:
            note_fault(self)
            time.sleep(random.uniform(2, 6))
        elif roll < FAULTS["stall"] + FAULTS["429"]:
            note_fault(self)
            return self.answer(429, {"error": {"message": "slow down", "type": "rate_limit"}}, extra=[("retry-after", "1")])
        elif roll < FAULTS["stall"] + FAULTS["429"] + FAULTS["401"]:
            note_fault(self)
            return self.answer(401, {"error": {"message": "bad key", "type": "invalid_request_error"}})
        if b'"stream": true' in body or b'"stream":true' in body:
            return self.stream()
        if self.path.endswith("/models"):
            return self.answer(200, {"data": [{"id": "gpt-soak"}]})
        if "/chat/completions" in self.path:
            return self.answer(200, {"id": "c", "model": "gpt-soak", "choices": [{"message": {"content": "ok"}}],
                                     "usage": {"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17}})
        return self.answer(200, {"ok": True, "path": self.path})

    def stream(self):
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("transfer-encoding", "chunked")
        self.end_headers()
        try:
            for i in range(8):
                chunk = f'data: {{"choices":[{{"delta":{{"content":"t{i}"}}}}]}}\n\n'.encode()
                self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                self.wfile.flush()
                time.sleep(0.02)
            last = b'data: {"choices":[],"usage":{"prompt_tokens":9,"completion_tokens":8}}\n\ndata: [DONE]\n\n'
            self.wfile.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(last), last))
        except OSError:
            pass

    do_GET = do_POST = handle_any


def admin(port, method, path, body=None, token=None, timeout=30):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    headers = {"content-type": "application/json"}
    if token:
        headers["authorization"] = f"Bearer {token}"
    c.request(method, path, body=json.dumps(body) if body is not None else None, headers=headers)
    r = c.getresponse()
    data = r.read()
    c.close()
    try:
        return r.status, json.loads(data or b"null")
    except ValueError:
        return r.status, data


class Stats:
    def __init__(self):
        self.lock = threading.Lock()
        self.counts = {}
        self.unexplained = []

    def add(self, cls, detail=None):
        with self.lock:
            self.counts[cls] = self.counts.get(cls, 0) + 1
            if detail:
                self.unexplained.append(detail)

    def take(self):
        with self.lock:
            out, self.counts = self.counts, {}
            return out


stats = Stats()
db_restarting = threading.Event()


def classify(status, rid, rotator):
    if status < 400:
        return "2xx/3xx"
    if status == 429:
        return "429"
    if status < 500:
        return f"{status}"
    with faulted_lock:
        explained = rid in faulted
    # All keys cooling or invalid (after 429s and 401s the upstream sent): explained too.
    if status == 503 and rotator:
        explained = True
    if db_restarting.is_set():
        explained = True
    if not explained:
        stats.add("5xx unexplained", f"{status} {rid}")
        return None
    return "5xx (fault)"


def client_loop(port, n):
    rng = random.Random(n)
    conn = None
    i = 0
    while not stop.is_set():
        i += 1
        rid = f"soak-{n}-{i}"
        kind = rng.choice(["rest", "rest", "llm", "sse"])
        if kind == "rest":
            method, path, body = "GET", f"/proxy/soak-rest/items/{i}?page=1", None
        else:
            method, path = "POST", "/llm/soak-llm/v1/chat/completions"
            body = json.dumps({"model": "gpt-soak", "messages": [{"role": "user", "content": "hi"}],
                               "stream": kind == "sse"})
        headers = {"x-request-id": rid, "content-type": "application/json"}
        if kind == "rest":
            headers["x-proxy-key"] = PROXY_KEY
        else:
            headers["authorization"] = f"Bearer {PROXY_KEY}"  # as the SDKs send it
        try:
            if conn is None:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            conn.request(method, path, body=body, headers=headers)
            r = conn.getresponse()
            if rng.random() < 0.1:
                r.read(16)  # the client goes away midway
                conn.close()
                conn = None
                stats.add("cut by client")
                continue
            r.read()
            cls = classify(r.status, rid, r.getheader("x-rotator-error") == "1")
            if cls:
                stats.add(cls)
            if r.getheader("connection", "").lower() == "close":
                conn.close()
                conn = None
        except (OSError, http.client.HTTPException) as e:
            stats.add("transport error")
            if conn:
                conn.close()
            conn = None
            time.sleep(0.05)


# Keys the writer's additions may leave in the pool: past this, the oldest is deleted, so
# the stored data (and the memory it takes) reaches a steady size in the first minutes.
KEPT_ADDED = 200


class AdminWriter(threading.Thread):
    """Admin writes all along; remembers what the API said it did."""

    def __init__(self, port, service_id):
        super().__init__(daemon=True)
        self.port, self.service_id = port, service_id
        self.added, self.deleted = set(), set()
        self.kept = collections.deque()  # (value, id) of added keys still in the pool
        self.writes = 0
        self.failed = 0

    def delete(self, value, key_id, token):
        if admin(self.port, "DELETE", f"/admin/keys/{key_id}", None, token)[0] == 200:
            self.deleted.add(value)
            self.writes += 1
            return True
        return False

    def run(self):
        token = admin(self.port, "POST", "/admin/login", {"username": "admin", "password": ADMIN_PASSWORD})[1]["access_token"]
        rng = random.Random(7)
        n = 0
        while not stop.is_set():
            n += 1
            try:
                value = f"sk-soak-added-{n:06d}"
                st, key = admin(self.port, "POST", f"/admin/proxy-configs/{self.service_id}/keys", {"key_value": value}, token)
                if st == 201:
                    self.added.add(value)
                    self.writes += 1
                    choice = rng.random()
                    if choice >= 0.4:
                        self.kept.append((value, key["id"]))
                    if choice < 0.4:
                        self.delete(value, key["id"], token)
                    elif choice < 0.6:
                        if admin(self.port, "PATCH", f"/admin/keys/{key['id']}", {"is_active": False}, token)[0] == 200:
                            self.writes += 1
                    elif choice < 0.8:
                        if admin(self.port, "POST", f"/admin/keys/{key['id']}/reset", None, token)[0] == 200:
                            self.writes += 1
                    while len(self.kept) > KEPT_ADDED and self.delete(*self.kept[0], token):
                        self.kept.popleft()
                elif st == 401:
                    token = admin(self.port, "POST", "/admin/login", {"username": "admin", "password": ADMIN_PASSWORD})[1]["access_token"]
                else:
                    self.failed += 1
                if n % 20 == 0:
                    st, ck = admin(self.port, "POST", "/admin/client-keys", {"name": f"soak-{n}", "rpm": 1000}, token)
                    if st == 201 and admin(self.port, "DELETE", f"/admin/client-keys/{ck['id']}", None, token)[0] == 200:
                        self.writes += 2
            except (OSError, http.client.HTTPException, KeyError, TypeError):
                self.failed += 1
            time.sleep(0.5)


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def restart_databases():
    """Restarts Redis and MariaDB (enterprise soak), as an operator's maintenance would."""
    db_restarting.set()
    print("restarting Redis and MariaDB", flush=True)
    subprocess.run(["redis-cli", "-p", "6379", "shutdown", "nosave"], capture_output=True)
    subprocess.run(["mysqladmin", "-uroot", "shutdown"], capture_output=True)
    time.sleep(3)
    subprocess.run(["redis-server", "--daemonize", "yes", "--bind", "127.0.0.1", "--port", "6379",
                    "--save", "", "--appendonly", "no"], capture_output=True)
    subprocess.run(["start-stop-daemon", "--start", "--oknodo", "--background", "--exec", "/usr/sbin/mariadbd"],
                   capture_output=True)
    for _ in range(60):
        ok = subprocess.run(["mysqladmin", "-uroot", "ping"], capture_output=True).returncode == 0
        if ok:
            break
        time.sleep(1)
    time.sleep(10)  # the proxy's pools reconnect
    db_restarting.clear()
    print("Redis and MariaDB are back", flush=True)


def main():
    up = ThreadingHTTPServer(("127.0.0.1", 0), Upstream)
    up.daemon_threads = True
    up.handle_error = lambda request, address: None  # clients cut midway: expected
    threading.Thread(target=up.serve_forever, daemon=True).start()
    up_port = up.server_address[1]
    work = tempfile.mkdtemp(prefix="rotator-soak-")
    port = 20000 + os.getpid() % 20000
    env = {"PATH": os.environ["PATH"], "ADMIN_PASSWORD": ADMIN_PASSWORD, "JWT_SECRET": "soak-jwt-secret-0123456789abcdef0123",
           "GLOBAL_PROXY_KEYS": PROXY_KEY, "BACKEND_PORT": str(port), "BIND_ADDRESS": "127.0.0.1",
           "DATABASE_PATH": f"{work}/soak.db", "LOG_LEVEL": "warn", "PROXY_TIMEOUT": "5", "UPSTREAM_IDLE_TIMEOUT": "3"}
    # SOAK_ENV="NAME=value,NAME=value": more settings for the proxy (to isolate a cause).
    env.update(kv.split("=", 1) for kv in os.environ.get("SOAK_ENV", "").split(",") if "=" in kv)
    if ENTERPRISE:
        env.update({"DATABASE_URL": "mysql://root@127.0.0.1:3306/rotator_soak", "REDIS_URL": "redis://127.0.0.1:6379/9",
                    "RESET_DB_TABLES": "true"})
    log = open(f"{work}/proxy.log", "w")
    proxy = subprocess.Popen([BIN], env=env, stdout=log, stderr=log)
    for _ in range(100):
        try:
            if admin(port, "GET", "/health")[0] == 200:
                break
        except OSError:
            time.sleep(0.1)
    token = admin(port, "POST", "/admin/login", {"username": "admin", "password": ADMIN_PASSWORD})[1]["access_token"]
    st, rest = admin(port, "POST", "/admin/proxy-configs", {
        "name": "soak rest", "slug": "soak-rest", "config_type": "GENERIC", "method": "ANY",
        "target_url": f"http://127.0.0.1:{up_port}", "api_key_location": "header", "api_key_name": "X-Api-Key",
        "probe_path": "models", "revalidate_interval": 60}, token)
    st2, llm = admin(port, "POST", "/admin/proxy-configs", {
        "name": "soak llm", "slug": "soak-llm", "config_type": "LLM", "api_format": "openai_compatible",
        "target_base_url": f"http://127.0.0.1:{up_port}/v1", "revalidate_interval": 60}, token)
    assert st == 201 and st2 == 201, (rest, llm)
    for svc in (rest, llm):
        keys = [f"sk-soak-{svc['id']}-{i:03d}" for i in range(50)]
        admin(port, "POST", f"/admin/proxy-configs/{svc['id']}/keys/batch", {"keys": keys}, token)

    writer = AdminWriter(port, rest["id"])
    writer.start()
    threads = [threading.Thread(target=client_loop, args=(port, n), daemon=True) for n in range(CLIENTS)]
    for t in threads:
        t.start()
    rows = []
    started = time.time()
    minute = 0
    restarted = False
    print(f"soak: {MINUTES:g} min, {CLIENTS} clients, {'enterprise (MariaDB, Redis)' if ENTERPRISE else 'lightweight (SQLite)'}", flush=True)
    print("| minute | RSS MB, mean | peak | low | fds, mean | served | answers |", flush=True)
    print("|---:|---:|---:|---:|---:|---:|---|", flush=True)
    while minute < MINUTES:
        # RSS every 5 s: one reading a minute landed anywhere between a statistics or
        # request-log write and the memory it gave back (±15 %). The minute's mean is
        # what the pass rule compares (a leak raises it as surely); peak and low are shown.
        samples, fd_samples = [], []
        while time.time() < started + (minute + 1) * 60:
            samples.append(rss_kb(proxy.pid))
            fd_samples.append(fds(proxy.pid))
            time.sleep(max(0, min(5, started + (minute + 1) * 60 - time.time())))
        minute += 1
        counts = stats.take()
        served = sum(v for k, v in counts.items() if k not in ("transport error",))
        row = {"minute": minute, "rss_kb": sum(samples) // len(samples), "rss_peak_kb": max(samples),
               "rss_low_kb": min(samples), "rss_samples_kb": samples,
               # Descriptors the same way: a stalled upstream holds one for seconds.
               "fds": round(sum(fd_samples) / len(fd_samples)), "fds_peak": max(fd_samples),
               "served": served, "answers": counts}
        rows.append(row)
        print(f"| {minute} | {row['rss_kb'] / 1024:.1f} | {row['rss_peak_kb'] / 1024:.1f} | {row['rss_low_kb'] / 1024:.1f} "
              f"| {row['fds']} | {served} | "
              + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) + " |", flush=True)
        if ENTERPRISE and not restarted and minute >= MINUTES / 2:
            restarted = True
            threading.Thread(target=restart_databases, daemon=True).start()
    stop.set()
    time.sleep(2)

    # Everything the admin API said it did is in the database.
    token = admin(port, "POST", "/admin/login", {"username": "admin", "password": ADMIN_PASSWORD})[1]["access_token"]
    st, listed = admin(port, "GET", f"/admin/proxy-configs/{rest['id']}/keys?reveal=true", None, token, timeout=120)
    stored = {k["key_value"] for k in listed} if st == 200 else set()
    missing = (writer.added - writer.deleted) - stored
    resurrected = writer.deleted & stored
    proxy.terminate()
    proxy.wait(timeout=30)

    base = rows[min(4, len(rows) - 1)]
    tail = rows[-10:] if len(rows) >= 15 else rows[len(rows) // 2:]
    within = lambda key: all(abs(r[key] - base[key]) <= 0.05 * base[key] + (2 if key == "fds" else 0) for r in tail)
    flat_rss, flat_fds = within("rss_kb"), within("fds")
    ok = flat_rss and flat_fds and not stats.unexplained and not missing and not resurrected
    summary = {
        "minutes": MINUTES, "clients": CLIENTS, "enterprise": ENTERPRISE,
        "rss_flat": flat_rss, "fds_flat": flat_fds,
        "unexplained_5xx": stats.unexplained[:20], "unexplained_5xx_count": len(stats.unexplained),
        "admin_writes_answered": writer.writes, "admin_writes_failed": writer.failed,
        "keys_missing": sorted(missing)[:20], "keys_deleted_but_present": sorted(resurrected)[:20],
        "faults_injected": len(faulted), "passed": ok, "rows": rows,
    }
    out = os.environ.get("SOAK_OUT")
    if out:
        with open(out, "w") as f:
            json.dump(summary, f, indent=1)
    print(json.dumps({k: v for k, v in summary.items() if k != "rows"}, indent=1), flush=True)
    print(f"proxy log: {work}/proxy.log", flush=True)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
