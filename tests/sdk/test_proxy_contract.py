"""What the SDKs rely on, checked with plain HTTP: every place a proxy key may come from,
its removal before forwarding, `api_key` in a JSON body, anthropic-version, 401 before 404,
stream headers and byte-exact stream passthrough, and the generic /proxy route."""

from __future__ import annotations

import gzip
import http.client
import json
import urllib.parse

import pytest
import requests

import fake_upstream as fu
from conftest import (
    ANTHROPIC_KEYS,
    GEMINI_KEYS,
    OPENAI_KEYS,
    PROXY_KEY,
    PROXY_KEY_2,
    WEATHER_KEYS,
)

# slug -> (path after /llm/<slug>, JSON body, upstream name, (header, expected value prefix), keys)
ROUTES = {
    "openai": ("/v1/chat/completions",
               {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
               "openai", ("authorization", "Bearer "), OPENAI_KEYS, "/v1/chat/completions"),
    "claude": ("/v1/messages",
               {"model": "claude-sonnet-4-6", "max_tokens": 8,
                "messages": [{"role": "user", "content": "hi"}]},
               "anthropic", ("x-api-key", ""), ANTHROPIC_KEYS, "/v1/messages"),
    "gemini": ("/v1beta/models/gemini-2.5-flash:generateContent",
               {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]},
               "gemini", ("x-goog-api-key", ""), GEMINI_KEYS,
               "/v1beta/models/gemini-2.5-flash:generateContent"),
}

PLACEMENTS = {
    "bearer": lambda k: ({"Authorization": f"Bearer {k}"}, {}),
    "x-api-key": lambda k: ({"x-api-key": k}, {}),
    "x-anthropic-api-key": lambda k: ({"x-anthropic-api-key": k}, {}),
    "x-goog-api-key": lambda k: ({"x-goog-api-key": k}, {}),
    "query-key": lambda k: ({}, {"key": k}),
}

CREDENTIAL_HEADERS = ("authorization", "x-api-key", "x-anthropic-api-key", "x-goog-api-key",
                      "x-proxy-key", "api-key")


def assert_real_key_only(req, header: str, prefix: str, keys: list[str]) -> None:
    vals = req.header_all(header)
    assert len(vals) == 1 and vals[0].startswith(prefix), (header, vals)
    assert vals[0][len(prefix):] in keys
    for name in CREDENTIAL_HEADERS:
        if name != header:
            assert req.header(name) is None, f"{name} was forwarded"
    assert not req.param_all("key"), "the key query parameter was forwarded"


@pytest.mark.parametrize("placement", list(PLACEMENTS))
@pytest.mark.parametrize("slug", list(ROUTES))
def test_every_credential_place_works_and_is_removed(rotator, upstreams, slug, placement):
    path, body, up, (header, prefix), keys, up_path = ROUTES[slug]
    headers, params = PLACEMENTS[placement](PROXY_KEY)
    params = {"trace": "a/b c", **params}
    r = requests.post(f"{rotator.url}/llm/{slug}{path}", json=body, headers=headers,
                      params=params, timeout=10)
    assert r.status_code == 200, r.text
    req = getattr(upstreams, up).only()
    assert req.path == up_path
    assert_real_key_only(req, header, prefix, keys)
    assert req.params == [("trace", "a/b c")]
    assert req.json() == body


def test_gemini_stream_with_the_key_in_the_query(rotator, upstreams):
    r = requests.post(
        f"{rotator.url}/llm/gemini/v1beta/models/gemini-2.5-flash:streamGenerateContent"
        f"?alt=sse&key={PROXY_KEY}",
        json={"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}, timeout=10)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/event-stream")
    assert r.text.count("data: ") == 4
    req = upstreams.gemini.only()
    assert req.query == "alt=sse"
    assert_real_key_only(req, "x-goog-api-key", "", GEMINI_KEYS)


@pytest.mark.parametrize("slug", list(ROUTES))
def test_all_credential_places_at_once_are_all_removed(rotator, upstreams, slug):
    path, body, up, (header, prefix), keys, _ = ROUTES[slug]
    headers = {"Authorization": f"Bearer {PROXY_KEY}", "x-api-key": PROXY_KEY_2,
               "x-anthropic-api-key": PROXY_KEY, "x-goog-api-key": PROXY_KEY_2}
    r = requests.post(f"{rotator.url}/llm/{slug}{path}?key={PROXY_KEY}", json=body,
                      headers=headers, timeout=10)
    assert r.status_code == 200, r.text
    assert_real_key_only(getattr(upstreams, up).only(), header, prefix, keys)


@pytest.mark.parametrize("slug", [*ROUTES, "no-such-service"])
@pytest.mark.parametrize("key", [None, "pk-wrong-key"], ids=["missing", "wrong"])
def test_bad_proxy_key_is_401_before_anything_else(rotator, upstreams, slug, key):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    r = requests.post(f"{rotator.url}/llm/{slug}/v1/anything", json={}, headers=headers,
                      timeout=10)
    assert r.status_code == 401
    assert r.headers["x-rotator-error"] == "1"
    assert r.headers["content-type"].startswith("application/json")
    assert isinstance(r.json()["detail"], str)
    for u in vars(upstreams).values():
        assert u.requests == []


def test_unknown_slug_with_a_good_key_is_404(rotator, upstreams):
    r = requests.get(f"{rotator.url}/llm/no-such-service/v1/models",
                     headers={"Authorization": f"Bearer {PROXY_KEY}"}, timeout=10)
    assert r.status_code == 404
    assert r.headers["x-rotator-error"] == "1"
    assert "detail" in r.json()


def test_api_key_in_the_json_body_is_removed_and_the_rest_is_byte_identical(rotator, upstreams):
    sent = (b'{ "model" : "gpt-4o-mini", "api_key": "' + PROXY_KEY.encode()
            + b'", "seed": 12345678901234567890, "messages": [{"role": "user", '
            b'"content": "<b>&amp;</b> \\u00e9"}], "temperature": 1.0 }')
    r = requests.post(f"{rotator.url}/llm/openai/v1/chat/completions", data=sent,
                      headers={"Content-Type": "application/json"}, timeout=10)
    assert r.status_code == 200, r.text
    req = upstreams.openai.only()
    assert_real_key_only(req, "authorization", "Bearer ", OPENAI_KEYS)
    assert req.body == (b'{ "model" : "gpt-4o-mini", "seed": 12345678901234567890, '
                        b'"messages": [{"role": "user", "content": "<b>&amp;</b> \\u00e9"}], '
                        b'"temperature": 1.0 }')
    assert req.header("content-length") == str(len(req.body))


def test_api_key_in_the_body_is_only_for_openai_compatible_services(rotator, upstreams):
    body = {"api_key": PROXY_KEY, "model": "claude-sonnet-4-6", "max_tokens": 8,
            "messages": [{"role": "user", "content": "hi"}]}
    r = requests.post(f"{rotator.url}/llm/claude/v1/messages", json=body, timeout=10)
    assert r.status_code == 401
    assert upstreams.anthropic.requests == []


@pytest.mark.parametrize("version", [None, "2099-01-01"])
def test_anthropic_version_is_added_only_when_missing(rotator, upstreams, version):
    headers = {"x-api-key": PROXY_KEY}
    if version:
        headers["anthropic-version"] = version
    r = requests.post(f"{rotator.url}/llm/claude/v1/messages", headers=headers, timeout=10,
                      json={"model": "m", "max_tokens": 8,
                            "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 200, r.text
    assert upstreams.anthropic.only().header_all("anthropic-version") == [version or "2023-06-01"]


def test_stream_headers_and_bytes_pass_through_unchanged(rotator, upstreams):
    body = {"model": "gpt-4o-mini", "stream": True,
            "messages": [{"role": "user", "content": "hi"}]}
    expected = b"".join(fu.OpenAI(OPENAI_KEYS).chat(body).events)
    url = urllib.parse.urlsplit(rotator.url)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
    conn.request("POST", "/llm/openai/chat/completions", body=json.dumps(body),
                 headers={"Authorization": f"Bearer {PROXY_KEY}",
                          "Content-Type": "application/json"})
    resp = conn.getresponse()
    assert resp.status == 200
    assert resp.getheader("content-type").startswith("text/event-stream")
    assert resp.getheader("x-accel-buffering") == "no"
    assert resp.getheader("content-length") is None
    assert resp.read() == expected
    conn.close()


@pytest.mark.parametrize("accept", ["gzip", None])
def test_compressed_answers_are_labelled_truthfully(rotator, upstreams, accept):
    """Content-Encoding reaching the client matches the bytes it gets (original bug §10.26)."""
    url = urllib.parse.urlsplit(rotator.url)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
    headers = {"Authorization": f"Bearer {PROXY_KEY}"}
    if accept:
        headers["Accept-Encoding"] = accept
    conn.request("GET", "/llm/openai/models", headers=headers)
    resp = conn.getresponse()
    raw = resp.read()
    conn.close()
    assert resp.status == 200
    req = upstreams.openai.only()
    if resp.getheader("content-encoding") == "gzip":
        assert req.gzipped_reply
        raw = gzip.decompress(raw)
    else:
        assert resp.getheader("content-encoding") is None
    assert json.loads(raw)["object"] == "list"


# --- generic /proxy route (the weather service) -----------------------------------------


def test_generic_proxy_injects_the_query_key_and_the_injected_key_wins(rotator, upstreams):
    r = requests.get(f"{rotator.url}/proxy/weather/current",
                     params={"query": "Paris", "access_key": "client-supplied"},
                     headers={"X-Proxy-Key": PROXY_KEY_2}, timeout=10)
    assert r.status_code == 200
    assert r.json()["location"]["name"] == "Paris"
    req = upstreams.weather.only()
    assert (req.method, req.path) == ("GET", "/current")
    assert req.param_all("access_key") in ([WEATHER_KEYS[0]], [WEATHER_KEYS[1]])
    assert req.param_all("query") == ["Paris"]
    assert req.header("x-proxy-key") is None


@pytest.mark.parametrize("key", [None, "pk-wrong-key"], ids=["missing", "wrong"])
def test_generic_proxy_without_a_good_proxy_key_is_401(rotator, upstreams, key):
    headers = {"X-Proxy-Key": key} if key else {}
    r = requests.get(f"{rotator.url}/proxy/weather/current", params={"query": "London"},
                     headers=headers, timeout=10)
    assert r.status_code == 401
    assert r.headers["x-rotator-error"] == "1"
    assert "detail" in r.json()
    assert upstreams.weather.requests == []
