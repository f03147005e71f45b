"""The official `google-genai` package against /llm/<slug> (gemini_native services)."""

from __future__ import annotations

import time

import pytest
from google.genai import errors, types

from conftest import GEMINI_KEYS, GEMINI_REVOKED_KEY, SDK_TIMEOUT, gemini_client, record_stream


def sdk_api_version(client) -> str:
    return client._api_client._http_options.api_version


def assert_gemini_request(req, path: str) -> str:
    """The model path the SDK asked for, exactly one `x-goog-api-key: <real key>`."""
    assert (req.method, req.path) == ("POST", path)
    keys = req.header_all("x-goog-api-key")
    assert len(keys) == 1 and keys[0] in GEMINI_KEYS, keys
    for name in ("authorization", "x-api-key", "x-anthropic-api-key", "x-proxy-key"):
        assert req.header(name) is None, name
    assert not req.param_all("key")
    return keys[0]


def test_generate_content(rotator, upstreams):
    client = gemini_client(rotator)
    response = client.models.generate_content(
        model="gemini-2.5-flash", contents="Explain how AI works"
    )
    assert response.text == "echo: Explain how AI works"
    assert response.usage_metadata.total_token_count == 8
    req = upstreams.gemini.only()
    v = sdk_api_version(client)
    assert_gemini_request(req, f"/{v}/models/gemini-2.5-flash:generateContent")
    assert req.json()["contents"] == [{"parts": [{"text": "Explain how AI works"}], "role": "user"}]


def test_generate_content_v1beta(rotator, upstreams):
    from google import genai

    client = genai.Client(
        api_key=gemini_client(rotator)._api_client.api_key,
        http_options=types.HttpOptions(
            base_url=f"{rotator.url}/llm/gemini", api_version="v1beta",
            timeout=SDK_TIMEOUT * 1000, retry_options=types.HttpRetryOptions(attempts=1),
        ),
    )
    assert client.models.generate_content(model="gemini-2.5-flash", contents="x").text == "echo: x"
    assert_gemini_request(upstreams.gemini.only(), "/v1beta/models/gemini-2.5-flash:generateContent")


def test_keys_rotate(rotator, upstreams):
    client = gemini_client(rotator)
    for _ in range(2):
        client.models.generate_content(model="gemini-2.5-flash", contents="x")
    v = sdk_api_version(client)
    used = [assert_gemini_request(r, f"/{v}/models/gemini-2.5-flash:generateContent")
            for r in upstreams.gemini.requests]
    assert sorted(used) == sorted(GEMINI_KEYS)


def test_generate_content_stream(rotator, upstreams):
    client = gemini_client(rotator)
    recv, text = [], []
    with upstreams.gemini.handshake() as hs:
        for chunk in client.models.generate_content_stream(
            model="gemini-2.5-flash", contents="Tell me a story"
        ):
            recv.append(time.monotonic())
            hs.ack()
            text.append(chunk.text)
    hs.assert_ok(events=4)
    assert text == ["Hello", ", ", "streaming", " world"]
    row = record_stream("gemini generate_content_stream", recv, hs.sent_at)
    assert all(g >= 100 for g in row["gaps_ms"]), row
    req = upstreams.gemini.only()
    v = sdk_api_version(client)
    assert_gemini_request(req, f"/{v}/models/gemini-2.5-flash:streamGenerateContent")
    assert req.param_all("alt") == ["sse"]


@pytest.mark.anyio
async def test_generate_content_async_and_async_stream(rotator, upstreams):
    client = gemini_client(rotator)
    response = await client.aio.models.generate_content(model="gemini-2.5-flash", contents="hi")
    assert response.text == "echo: hi"
    recv, text = [], []
    with upstreams.gemini.handshake() as hs:
        async for chunk in await client.aio.models.generate_content_stream(
            model="gemini-2.5-flash", contents="Tell me a story"
        ):
            recv.append(time.monotonic())
            hs.ack()
            text.append(chunk.text)
    hs.assert_ok(events=4)
    assert "".join(text) == "Hello, streaming world"
    row = record_stream("gemini generate_content_stream (async)", recv, hs.sent_at)
    assert all(g >= 100 for g in row["gaps_ms"]), row
    assert len(upstreams.gemini.requests) == 2


def test_upstream_404_reaches_the_sdk_as_the_providers_error(rotator, upstreams):
    client = gemini_client(rotator)
    with pytest.raises(errors.ClientError) as e:
        client.models.generate_content(model="gemini-does-not-exist", contents="x")
    assert e.value.code == 404
    assert e.value.status == "NOT_FOUND"
    assert "is not found" in e.value.message
    assert "x-rotator-error" not in e.value.response.headers
    upstreams.gemini.only()


# The SDK refuses an empty api_key, so "missing" overrides the header with an empty value.
@pytest.mark.parametrize("missing", [False, True], ids=["wrong", "missing"])
def test_bad_proxy_key_is_an_authentication_error(rotator, upstreams, missing):
    from google import genai

    client = genai.Client(
        api_key="pk-wrong-key",
        http_options=types.HttpOptions(
            base_url=f"{rotator.url}/llm/gemini",
            headers={"x-goog-api-key": ""} if missing else None,
            timeout=SDK_TIMEOUT * 1000,
            retry_options=types.HttpRetryOptions(attempts=1),
        ),
    )
    with pytest.raises(errors.ClientError) as e:
        client.models.generate_content(model="gemini-2.5-flash", contents="x")
    assert e.value.code == 401
    assert e.value.response.headers["x-rotator-error"] == "1"
    assert "proxy key" in e.value.details["detail"]
    assert upstreams.gemini.requests == []


def test_a_revoked_key_is_taken_out_of_rotation(rotator, upstreams):
    """Google answers a revoked key with 400 API_KEY_INVALID (not 401): the proxy must
    recognise it (a dead-key phrase) and stop using that key, whatever the encoding of
    the error body (the SDK asks for gzip, as every provider then sends)."""
    client = gemini_client(rotator, slug="gemini-revoked")
    outcomes = []
    for _ in range(6):
        try:
            client.models.generate_content(model="gemini-2.5-flash", contents="x")
            outcomes.append("ok")
        except errors.ClientError as e:
            outcomes.append(e.code)
    used = [r.header("x-goog-api-key") for r in upstreams.gemini.requests]
    assert used.count(GEMINI_REVOKED_KEY) == 1, (used, outcomes)
    assert outcomes.count("ok") >= 5, outcomes
