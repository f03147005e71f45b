"""The README 'Usage' snippets in tests/sdk/snippets/, run as they are.

Each snippet is written for a rotator at `http://localhost:8000` with services `openai`,
`claude`, `gemini` and `weather`, and the proxy key `<GLOBAL_PROXY_KEY>`; those two
placeholders (and nothing else) are replaced before it runs as a subprocess.
"""

from __future__ import annotations

import ast
import json
import time

import pytest

from conftest import (
    ANTHROPIC_KEYS,
    GEMINI_KEYS,
    OPENAI_KEYS,
    SNIPPET_HOST,
    SNIPPETS,
    WEATHER_KEYS,
    Snippet,
    assert_paced,
    record_stream,
)

PIECES = ["Hello", ", ", "streaming", " world"]

# The "Generic API Proxy" example of the original README (seed/README.original.md),
# verbatim; the snippet must be exactly this with only the host filled in.
ORIGINAL_WEATHER_EXAMPLE = '''import requests

# Configure proxy parameters
proxy_url = "http://PROXY_PUBLIC_BASE_URL/proxy/weather/current"
proxy_key = "<GLOBAL_PROXY_KEY>"

# Query parameters
params = {
    "query": "London"
    # When proxying requests to the target API, the system polls the real API keys configured in the backend and appends them to the original authorization parameter access_key (which is configured in the backend).
}

# Set headers
headers = {
    "X-Proxy-Key": proxy_key
}

# Make the request
response = requests.get(proxy_url, params=params, headers=headers)

# Handle the response
if response.status_code == 200:
    data = response.json()
    print(f"Weather information: {data}")
else:
    print(f"Request failed with status code: {response.status_code}")
'''


def arrivals(reads, prefix: str, pieces: list[str]) -> list[float]:
    """When each piece of `prefix + "".join(pieces)` had fully arrived on stdout."""
    ends, pos = [], len(prefix)
    for p in pieces:
        pos += len(p)
        ends.append(pos)
    out, times = b"", []
    for t, chunk in reads:
        out += chunk
        while len(times) < len(ends) and len(out) >= ends[len(times)]:
            times.append(t)
    return times


def run(name, rotator, tmp_path, **kw):
    snip = Snippet(name, rotator, tmp_path, **kw)
    code, out, err = snip.wait()
    assert code == 0, f"{name} exited {code}\nstdout:\n{out}\nstderr:\n{err}"
    return snip, out, err


def test_openai_chat(rotator, upstreams, tmp_path):
    _, out, _ = run("openai_chat.py", rotator, tmp_path)
    assert out == "echo: What is the meaning of life?\n"
    req = upstreams.openai.only()
    assert (req.method, req.path) == ("POST", "/v1/chat/completions")
    assert req.header("authorization") in [f"Bearer {k}" for k in OPENAI_KEYS]


def test_openai_stream(rotator, upstreams, tmp_path):
    snip, out, _ = run("openai_stream.py", rotator, tmp_path)
    assert out == "Hello, streaming world\n"
    times = arrivals(snip.reads, "", PIECES)
    record_stream("snippet openai_stream.py stdout", times, [])
    assert_paced(times, 4)
    assert upstreams.openai.only().json()["stream"] is True


def test_anthropic_messages(rotator, upstreams, tmp_path):
    snip, out, _ = run("anthropic_messages.py", rotator, tmp_path)
    first = "echo: Hello, Claude\n"
    assert out == first + "Hello, streaming world\n"
    times = arrivals(snip.reads, first, PIECES)
    record_stream("snippet anthropic_messages.py stdout", times, [])
    assert_paced(times, 4)
    reqs = upstreams.anthropic.requests
    assert [(r.method, r.path) for r in reqs] == [("POST", "/v1/messages")] * 2
    assert sorted(r.header("x-api-key") for r in reqs) == sorted(ANTHROPIC_KEYS)


def test_gemini_generate(rotator, upstreams, tmp_path):
    snip, out, _ = run("gemini_generate.py", rotator, tmp_path)
    first = "echo: Explain how AI works in a few words\n"
    assert out == first + "Hello, streaming world\n"
    times = arrivals(snip.reads, first, PIECES)
    record_stream("snippet gemini_generate.py stdout", times, [])
    assert_paced(times, 4)
    reqs = upstreams.gemini.requests
    assert [r.path.split(":")[1] for r in reqs] == ["generateContent", "streamGenerateContent"]
    assert all(r.path.split("/models/")[1].startswith("gemini-2.5-flash:") for r in reqs)
    assert sorted(r.header("x-goog-api-key") for r in reqs) == sorted(GEMINI_KEYS)


def test_requests_weather_is_the_original_readme_example(rotator, upstreams, tmp_path):
    text = (SNIPPETS / "requests_weather.py").read_text()
    assert text == ORIGINAL_WEATHER_EXAMPLE.replace(
        "PROXY_PUBLIC_BASE_URL", SNIPPET_HOST.removeprefix("http://")
    )
    _, out, _ = run("requests_weather.py", rotator, tmp_path)
    prefix = "Weather information: "
    assert out.startswith(prefix), out
    data = ast.literal_eval(out[len(prefix):].strip())
    assert data["location"]["name"] == "London"
    assert data["current"]["weather_descriptions"] == ["Sunny"]
    req = upstreams.weather.only()
    assert (req.method, req.path) == ("GET", "/current")
    assert req.param_all("query") == ["London"]
    assert len(req.param_all("access_key")) == 1
    assert req.param_all("access_key")[0] in WEATHER_KEYS
    assert req.header("x-proxy-key") is None


def test_curl_no_buffer_stream(rotator, upstreams, tmp_path):
    with upstreams.openai.handshake() as hs:
        recv = []

        def on_line(line: bytes) -> None:
            if line.startswith(b"data: {"):
                recv.append(time.monotonic())
                hs.ack()

        _, out, err = run("curl_stream.sh", rotator, tmp_path, on_line=on_line)
    hs.assert_ok(events=6)
    datas = [line for line in out.splitlines() if line.startswith("data: ")]
    assert datas[-1] == "data: [DONE]"
    pieces = [json.loads(d[6:])["choices"][0]["delta"].get("content", "") for d in datas[:-1]]
    assert pieces == PIECES + [""]
    row = record_stream("curl --no-buffer (snippet curl_stream.sh)", recv, hs.sent_at)
    assert all(g >= 100 for g in row["gaps_ms"]), row
    req = upstreams.openai.only()
    assert (req.method, req.path) == ("POST", "/v1/chat/completions")
    assert req.header("authorization") in [f"Bearer {k}" for k in OPENAI_KEYS]


@pytest.mark.parametrize("name", sorted(p.name for p in SNIPPETS.iterdir() if p.is_file()))
def test_snippets_are_parameterised_only_by_the_placeholders(name):
    text = (SNIPPETS / name).read_text()
    assert SNIPPET_HOST in text and "<GLOBAL_PROXY_KEY>" in text
    assert "127.0.0.1" not in text and "environ" not in text
