"""Fixtures: the release binary, the fake upstreams, configured services, SDK clients.

The rotator binary is `ROTATOR_BIN`, else `${CARGO_TARGET_DIR:-<repo>/target}/release/
api-key-rotator`; a missing
binary is an error, never a skip. One rotator and one set of fake upstreams serve the whole
session; every test starts with empty upstream request logs, and after every test no
upstream request may contain a proxy key anywhere (method, path, query, headers, body).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pytest
import requests

sys.path.insert(0, str(Path(__file__).parent))
import fake_upstream as fu  # noqa: E402

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
SNIPPETS = HERE / "snippets"

PROXY_KEY = "pk-sdk-primary-7f3a9c2e"
PROXY_KEY_2 = "pk-sdk-second-1b2d4e6f"
PROXY_KEYS = (PROXY_KEY, PROXY_KEY_2)
ADMIN_PASSWORD = "sdk-suite-admin-password"

OPENAI_KEYS = ["sk-real-openai-aaaa1111", "sk-real-openai-bbbb2222"]
OPENAI_SOLO_KEY = "sk-real-openai-solo-3333"
OPENAI_REVOKED_KEY = "sk-real-openai-revoked-9999"
ANTHROPIC_KEYS = ["sk-ant-real-aaaa1111", "sk-ant-real-bbbb2222"]
ANTHROPIC_NO_CREDIT_KEY = "sk-ant-real-nocredit-9999"
GEMINI_KEYS = ["AIza-real-gemini-aaaa1111", "AIza-real-gemini-bbbb2222"]
GEMINI_REVOKED_KEY = "AIza-real-gemini-revoked-9999"
WEATHER_KEYS = ["ws-real-weather-aaaa1111", "ws-real-weather-bbbb2222"]

SDK_TIMEOUT = 15  # seconds; generous for a loaded CI machine, never reached when healthy


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rotator_bin() -> Path:
    env = os.environ.get("ROTATOR_BIN")
    target = REPO / os.environ.get("CARGO_TARGET_DIR", "target")  # absolute stays absolute
    path = Path(env) if env else target / "release" / "api-key-rotator"
    if not (path.is_file() and os.access(path, os.X_OK)):
        raise RuntimeError(
            f"rotator binary not found or not executable: {path} "
            "(run `cargo build --release` or set ROTATOR_BIN)"
        )
    return path


@dataclass
class Rotator:
    url: str
    proc: subprocess.Popen
    log_path: Path
    token: str = ""

    def admin(self, method: str, path: str, **kw) -> requests.Response:
        headers = kw.pop("headers", {})
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        return requests.request(method, self.url + path, headers=headers, timeout=10, **kw)

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def add_service(self, keys: list[str], **spec) -> int:
        r = self.admin("POST", "/admin/proxy-configs", json=spec)
        assert r.status_code == 201, (spec, r.status_code, r.text)
        sid = r.json()["id"]
        r = self.admin("POST", f"/admin/proxy-configs/{sid}/keys/batch", json={"keys": keys})
        assert r.status_code in (200, 201), (r.status_code, r.text)
        assert r.json()["success_count"] == len(keys), r.text
        return sid


@pytest.fixture(scope="session")
def upstreams():
    ups = SimpleNamespace(
        openai=fu.FakeUpstream(
            "openai", fu.OpenAI(OPENAI_KEYS + [OPENAI_SOLO_KEY])
        ),
        anthropic=fu.FakeUpstream(
            "anthropic", fu.Anthropic(ANTHROPIC_KEYS, broke_keys=[ANTHROPIC_NO_CREDIT_KEY])
        ),
        gemini=fu.FakeUpstream("gemini", fu.Gemini(GEMINI_KEYS)),
        weather=fu.FakeUpstream("weather", fu.Weather(WEATHER_KEYS)),
    )
    yield ups
    for u in vars(ups).values():
        u.close()


def start_rotator(work: Path, **extra_env: str) -> Rotator:
    """Starts the binary in `work` (its cwd and database), waits for /health, logs in."""
    binary = rotator_bin()
    port = _free_port()
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "ADMIN_PASSWORD": ADMIN_PASSWORD,
        "JWT_SECRET": "sdk-suite-jwt-secret-0123456789abcdef0123456789",
        "GLOBAL_PROXY_KEYS": ",".join(PROXY_KEYS),
        "BACKEND_PORT": str(port),
        "DATABASE_PATH": str(work / "db.sqlite"),
        "LOG_LEVEL": "warn",
        # `make test-sdk` runs the suite a second time with the keys encrypted at rest.
        **({"ENCRYPTION_KEY": os.environ["SDK_ENCRYPTION_KEY"]} if os.environ.get("SDK_ENCRYPTION_KEY") else {}),
        **extra_env,
    }
    log_path = work / "rotator.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [str(binary)], cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT
        )
    rot = Rotator(f"http://127.0.0.1:{port}", proc, log_path)
    deadline = time.monotonic() + 20
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"rotator exited with {proc.returncode}:\n{rot.log_tail()}")
        try:
            if requests.get(rot.url + "/health", timeout=1).status_code == 200:
                break
        except requests.ConnectionError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"rotator /health not 200 within 20 s:\n{rot.log_tail()}")
        time.sleep(0.05)
    r = rot.admin("POST", "/admin/login", json={"username": "admin", "password": ADMIN_PASSWORD})
    assert r.status_code == 200, r.text
    rot.token = r.json()["access_token"]
    return rot


def stop_rotator(rot: Rotator) -> None:
    rot.proc.terminate()
    try:
        rot.proc.wait(5)
    except subprocess.TimeoutExpired:
        rot.proc.kill()


@pytest.fixture(scope="session")
def rotator(upstreams, tmp_path_factory):
    rot = start_rotator(tmp_path_factory.mktemp("rotator"))
    llm = {"config_type": "LLM"}
    openai_base = upstreams.openai.url + "/v1"
    rot.add_service(OPENAI_KEYS, name="OpenAI", slug="openai", api_format="openai_compatible",
                    target_base_url=openai_base, **llm)
    rot.add_service([OPENAI_SOLO_KEY], name="OpenAI one key", slug="openai-solo",
                    api_format="openai_compatible", target_base_url=openai_base, **llm)
    for slug in ("openai-failover", "openai-failover-stream"):
        rot.add_service([OPENAI_REVOKED_KEY, OPENAI_KEYS[0]], name=slug, slug=slug,
                        api_format="openai_compatible", target_base_url=openai_base, **llm)
    rot.add_service(ANTHROPIC_KEYS, name="Anthropic", slug="claude",
                    api_format="anthropic_native", target_base_url=upstreams.anthropic.url,
                    **llm)
    rot.add_service([ANTHROPIC_NO_CREDIT_KEY, ANTHROPIC_KEYS[0]], name="Anthropic no credit",
                    slug="claude-no-credit", api_format="anthropic_native",
                    target_base_url=upstreams.anthropic.url, **llm)
    rot.add_service(GEMINI_KEYS, name="Gemini", slug="gemini", api_format="gemini_native",
                    target_base_url=upstreams.gemini.url, **llm)
    rot.add_service([GEMINI_REVOKED_KEY, GEMINI_KEYS[0]], name="Gemini revoked key",
                    slug="gemini-revoked", api_format="gemini_native",
                    target_base_url=upstreams.gemini.url, **llm)
    rot.add_service(WEATHER_KEYS, name="Weather", slug="weather", config_type="GENERIC",
                    method="GET", target_url=upstreams.weather.url,
                    api_key_location="query", api_key_name="access_key")
    yield rot
    stop_rotator(rot)


@pytest.fixture(autouse=True)
def clean_upstreams_and_check_leaks(request, upstreams):
    for u in vars(upstreams).values():
        u.clear()
    yield
    leaks = []
    for u in vars(upstreams).values():
        for r in u.requests:
            for secret in PROXY_KEYS:
                if secret in r.everything():
                    leaks.append(f"{u.name}: {r.method} {r.path}?{r.query} carries {secret!r}")
    assert not leaks, "proxy key reached an upstream:\n" + "\n".join(leaks)


# --- streaming evidence ---------------------------------------------------------------

STREAM_EVIDENCE: list[dict] = []


def record_stream(name: str, recv: list[float], sent: list[float]) -> dict:
    """Stores client receive times vs upstream send times (monotonic, same process)."""
    gaps = [round((b - a) * 1000) for a, b in zip(recv, recv[1:])]
    n = min(len(recv), len(sent))
    lat = [round((recv[i] - sent[i]) * 1000, 1) for i in range(n)] if n == len(recv) else []
    row = {"name": name, "events": len(recv), "gaps_ms": gaps, "latency_ms": lat}
    STREAM_EVIDENCE.append(row)
    return row


def assert_paced(recv: list[float], minimum: int, min_gap: float = 0.1) -> None:
    """At least `minimum` arrivals, each one ≥ min_gap after the previous one."""
    assert len(recv) >= minimum, f"only {len(recv)} separate arrivals: the stream was buffered"
    gaps = [b - a for a, b in zip(recv, recv[1:])]
    assert all(g >= min_gap for g in gaps), (
        f"arrival gaps {[round(g * 1000) for g in gaps]} ms: some events arrived together"
    )


def pytest_terminal_summary(terminalreporter):
    if not STREAM_EVIDENCE:
        return
    tr = terminalreporter
    tr.section("streaming evidence (client receive times)")
    for row in STREAM_EVIDENCE:
        lat = f" upstream->client latency ms {row['latency_ms']}" if row["latency_ms"] else ""
        tr.write_line(f"{row['name']}: {row['events']} arrivals, gaps ms {row['gaps_ms']}{lat}")


# --- SDK clients ------------------------------------------------------------------------


@pytest.fixture
def anyio_backend():
    return "asyncio"


def openai_client(rotator, api_key=PROXY_KEY, slug="openai", suffix="", cls=None):
    import openai

    cls = cls or openai.OpenAI
    return cls(base_url=f"{rotator.url}/llm/{slug}{suffix}", api_key=api_key,
               max_retries=0, timeout=SDK_TIMEOUT)


def anthropic_client(rotator, api_key=PROXY_KEY, cls=None, slug="claude"):
    import anthropic

    cls = cls or anthropic.Anthropic
    return cls(base_url=f"{rotator.url}/llm/{slug}", api_key=api_key,
               max_retries=0, timeout=SDK_TIMEOUT)


def gemini_client(rotator, api_key=PROXY_KEY, slug="gemini"):
    from google import genai
    from google.genai import types

    return genai.Client(
        api_key=api_key,
        http_options=types.HttpOptions(
            base_url=f"{rotator.url}/llm/{slug}",
            timeout=SDK_TIMEOUT * 1000,
            retry_options=types.HttpRetryOptions(attempts=1),
        ),
    )


# --- snippets ---------------------------------------------------------------------------

SNIPPET_HOST = "http://localhost:8000"
SNIPPET_KEY = "<GLOBAL_PROXY_KEY>"


def snippet_source(name: str, rotator) -> str:
    """The snippet with its two documented placeholders replaced (both must be present)."""
    text = (SNIPPETS / name).read_text()
    assert SNIPPET_HOST in text and SNIPPET_KEY in text, f"{name} lost its placeholders"
    return text.replace(SNIPPET_HOST, rotator.url).replace(SNIPPET_KEY, PROXY_KEY)


def snippet_command(name: str, path: Path) -> list[str]:
    if name.endswith(".py"):
        return [sys.executable, str(path)]
    bash = shutil.which("bash") or "/bin/bash"
    return [bash, str(path)]


class Snippet:
    """Runs a snippet as a subprocess, timestamping every stdout read."""

    def __init__(self, name: str, rotator, tmp_path: Path, on_line=None) -> None:
        path = tmp_path / name
        path.write_text(snippet_source(name, rotator))
        env = {k: v for k, v in os.environ.items()
               if not k.endswith("_API_KEY") and k not in ("OPENAI_BASE_URL",
                                                          "ANTHROPIC_BASE_URL")}
        self.proc = subprocess.Popen(snippet_command(name, path), cwd=tmp_path, env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.reads: list[tuple[float, bytes]] = []
        self._on_line = on_line
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        fd = self.proc.stdout.fileno()
        pending = b""
        while True:
            chunk = os.read(fd, 65536)
            if not chunk:
                return
            self.reads.append((time.monotonic(), chunk))
            if self._on_line:
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    self._on_line(line)

    def wait(self, timeout: float = 60) -> tuple[int, str, str]:
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise
        self._thread.join(5)
        err = self.proc.stderr.read().decode(errors="replace")
        out = b"".join(c for _, c in self.reads).decode(errors="replace")
        return self.proc.returncode, out, err
