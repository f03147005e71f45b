"""The official `openai` package against /llm/<slug> (openai_compatible services)."""

from __future__ import annotations

import asyncio
import time

import openai
import pytest

from conftest import (
    OPENAI_KEYS,
    OPENAI_REVOKED_KEY,
    OPENAI_SOLO_KEY,
    PROXY_KEY_2,
    openai_client,
    record_stream,
)

MESSAGES = [{"role": "user", "content": "What is the meaning of life?"}]
OTHER_CREDENTIALS = ("x-api-key", "x-anthropic-api-key", "x-goog-api-key", "x-proxy-key", "api-key")


def assert_openai_request(req, method: str, path: str, keys=OPENAI_KEYS) -> str:
    """The provider's path, exactly one `Authorization: Bearer <real key>`, nothing else."""
    assert (req.method, req.path) == (method, path)
    auth = req.header_all("authorization")
    assert len(auth) == 1 and auth[0].startswith("Bearer "), auth
    key = auth[0].removeprefix("Bearer ")
    assert key in keys, key
    for name in OTHER_CREDENTIALS:
        assert req.header(name) is None, name
    assert not req.param_all("key")
    return key


def test_chat_completion_sync(rotator, upstreams):
    client = openai_client(rotator)
    completion = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert completion.choices[0].message.content == "echo: What is the meaning of life?"
    assert completion.usage.total_tokens == 12
    assert completion._request_id == "req_fake"  # upstream response headers reach the SDK
    req = upstreams.openai.only()
    assert_openai_request(req, "POST", "/v1/chat/completions")
    assert req.json() == {"model": "gpt-4o-mini", "messages": MESSAGES}


def test_large_request_body_streams_through(rotator, upstreams):
    # Larger than the proxy's replay buffer (RETRY_BODY_LIMIT, 1 MiB by default).
    content = "0123456789abcdef" * (3 << 16)  # 3 MiB
    client = openai_client(rotator)
    completion = client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": content}]
    )
    assert completion.choices[0].message.content == "echo: " + content
    req = upstreams.openai.only()
    assert_openai_request(req, "POST", "/v1/chat/completions")
    assert req.json()["messages"][0]["content"] == content


@pytest.mark.parametrize("suffix", ["", "/v1"])
def test_base_url_with_or_without_v1(rotator, upstreams, suffix):
    client = openai_client(rotator, suffix=suffix)
    completion = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert completion.choices[0].message.content.startswith("echo:")
    assert_openai_request(upstreams.openai.only(), "POST", "/v1/chat/completions")


def test_keys_rotate_round_robin(rotator, upstreams):
    client = openai_client(rotator)
    for _ in range(4):
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    used = [assert_openai_request(r, "POST", "/v1/chat/completions") for r in upstreams.openai.requests]
    assert len(used) == 4
    assert set(used) == set(OPENAI_KEYS)
    assert all(a != b for a, b in zip(used, used[1:])), used


def test_second_proxy_key_works(rotator, upstreams):
    client = openai_client(rotator, api_key=PROXY_KEY_2)
    assert client.models.list().data
    assert_openai_request(upstreams.openai.only(), "GET", "/v1/models")


def test_chat_completion_stream_sync(rotator, upstreams):
    client = openai_client(rotator)
    recv, pieces, finish = [], [], None
    with upstreams.openai.handshake() as hs:
        stream = client.chat.completions.create(
            model="gpt-4o-mini", messages=MESSAGES, stream=True
        )
        for chunk in stream:
            recv.append(time.monotonic())
            hs.ack()
            choice = chunk.choices[0]
            pieces.append(choice.delta.content or "")
            finish = choice.finish_reason or finish
    hs.assert_ok(events=6)  # 5 chunks + [DONE]
    assert pieces == ["Hello", ", ", "streaming", " world", ""]
    assert finish == "stop"
    row = record_stream("openai chat stream (sync)", recv, hs.sent_at)
    assert all(g >= 100 for g in row["gaps_ms"]), row
    req = upstreams.openai.only()
    assert_openai_request(req, "POST", "/v1/chat/completions")
    assert req.json()["stream"] is True


def test_closing_a_stream_early_stops_the_upstream_stream(rotator, upstreams):
    client = openai_client(rotator)
    stream = client.chat.completions.create(
        model="gpt-long-stream", messages=MESSAGES, stream=True
    )
    it = iter(stream)
    got = [next(it).choices[0].delta.content for _ in range(2)]
    assert got == ["0 ", "1 "]
    stream.close()
    end, written = upstreams.openai.stream_ends.get(timeout=5)
    assert end == "aborted", "the upstream stream ran to its end after the client left"
    assert written < 20, written
    print(f"\nclient left after 2 events; upstream aborted after writing {written} of 41")


def test_chat_stream_with_usage(rotator, upstreams):
    client = openai_client(rotator)
    stream = client.chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[-1].usage.total_tokens == 13
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == (
        "Hello, streaming world"
    )


@pytest.mark.anyio
async def test_chat_completion_async(rotator, upstreams):
    client = openai_client(rotator, cls=openai.AsyncOpenAI)
    completion = await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert completion.choices[0].message.content == "echo: What is the meaning of life?"
    assert_openai_request(upstreams.openai.only(), "POST", "/v1/chat/completions")
    await client.close()


@pytest.mark.anyio
async def test_chat_completion_stream_async(rotator, upstreams):
    client = openai_client(rotator, cls=openai.AsyncOpenAI)
    recv, pieces = [], []
    with upstreams.openai.handshake() as hs:
        stream = await client.chat.completions.create(
            model="gpt-4o-mini", messages=MESSAGES, stream=True
        )
        async for chunk in stream:
            recv.append(time.monotonic())
            hs.ack()
            pieces.append(chunk.choices[0].delta.content or "")
    hs.assert_ok(events=6)
    assert "".join(pieces) == "Hello, streaming world"
    row = record_stream("openai chat stream (async)", recv, hs.sent_at)
    assert all(g >= 100 for g in row["gaps_ms"]), row
    await client.close()


@pytest.mark.anyio
async def test_async_concurrent_requests_share_keys_evenly(rotator, upstreams):
    client = openai_client(rotator, cls=openai.AsyncOpenAI)
    results = await asyncio.gather(*[
        client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": f"n{i}"}]
        )
        for i in range(10)
    ])
    assert sorted(r.choices[0].message.content for r in results) == sorted(
        f"echo: n{i}" for i in range(10)
    )
    used = [assert_openai_request(r, "POST", "/v1/chat/completions") for r in upstreams.openai.requests]
    assert sorted(used.count(k) for k in OPENAI_KEYS) == [5, 5], used
    await client.close()


def test_responses_api(rotator, upstreams):
    client = openai_client(rotator)
    resp = client.responses.create(model="gpt-4o-mini", input="Say hi")
    assert resp.output_text == "echo: Say hi"
    assert resp.status == "completed"
    req = upstreams.openai.only()
    assert_openai_request(req, "POST", "/v1/responses")
    assert req.json() == {"model": "gpt-4o-mini", "input": "Say hi"}


def test_responses_api_stream(rotator, upstreams):
    client = openai_client(rotator)
    recv, types, deltas = [], [], []
    with upstreams.openai.handshake() as hs:
        stream = client.responses.create(model="gpt-4o-mini", input="Say hi", stream=True)
        for event in stream:
            recv.append(time.monotonic())
            hs.ack()
            types.append(event.type)
            if event.type == "response.output_text.delta":
                deltas.append(event.delta)
            if event.type == "response.completed":
                final = event.response
    hs.assert_ok(events=6)
    assert types == ["response.created"] + ["response.output_text.delta"] * 4 + [
        "response.completed"
    ]
    assert deltas == ["Hello", ", ", "streaming", " world"]
    assert final.output_text == "Hello, streaming world"
    row = record_stream("openai responses stream", recv, hs.sent_at)
    assert all(g >= 100 for g in row["gaps_ms"]), row
    assert_openai_request(upstreams.openai.only(), "POST", "/v1/responses")


@pytest.mark.parametrize("suffix", ["", "/v1"])
def test_models_list(rotator, upstreams, suffix):
    client = openai_client(rotator, suffix=suffix)
    ids = [m.id for m in client.models.list()]
    assert ids == ["gpt-4o-mini", "gpt-4o", "text-embedding-3-small"]
    req = upstreams.openai.only()
    assert_openai_request(req, "GET", "/v1/models")
    assert req.body == b""


def test_embeddings_default_base64(rotator, upstreams):
    client = openai_client(rotator)
    emb = client.embeddings.create(model="text-embedding-3-small", input=["a", "b"])
    assert [d.embedding for d in emb.data] == [[0.5, -0.25, 0.0], [0.5, -0.25, 1.0]]
    req = upstreams.openai.only()
    assert_openai_request(req, "POST", "/v1/embeddings")
    assert req.json()["input"] == ["a", "b"]


def test_embeddings_float(rotator, upstreams):
    client = openai_client(rotator)
    emb = client.embeddings.create(
        model="text-embedding-3-small", input="a", encoding_format="float"
    )
    assert emb.data[0].embedding == [0.5, -0.25, 0.0]
    assert upstreams.openai.only().json()["encoding_format"] == "float"


def test_upstream_404_reaches_the_sdk_as_the_providers_error(rotator, upstreams):
    client = openai_client(rotator)
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="gpt-does-not-exist", messages=MESSAGES)
    assert e.value.status_code == 404
    assert e.value.code == "model_not_found"
    assert "does not exist" in e.value.message
    assert e.value.request_id == "req_fake"
    assert "x-rotator-error" not in e.value.response.headers
    assert_openai_request(upstreams.openai.only(), "POST", "/v1/chat/completions")


def test_upstream_429_with_one_key_reaches_the_sdk(rotator, upstreams):
    client = openai_client(rotator, slug="openai-solo")
    with pytest.raises(openai.RateLimitError) as e:
        client.chat.completions.create(model="gpt-rate-limited", messages=MESSAGES)
    assert e.value.status_code == 429
    assert e.value.code == "rate_limit_exceeded"
    assert "x-rotator-error" not in e.value.response.headers
    reqs = upstreams.openai.requests
    assert reqs, "the upstream was never called"
    for r in reqs:
        assert_openai_request(r, "POST", "/v1/chat/completions", keys=[OPENAI_SOLO_KEY])


def test_a_revoked_key_fails_over_to_a_good_one(rotator, upstreams):
    client = openai_client(rotator, slug="openai-failover")
    for _ in range(2):
        completion = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        assert completion.choices[0].message.content.startswith("echo:")
    used = [
        assert_openai_request(r, "POST", "/v1/chat/completions",
                              keys=[OPENAI_REVOKED_KEY, OPENAI_KEYS[0]])
        for r in upstreams.openai.requests
    ]
    # Round robin reaches the revoked key within two requests; each time the proxy retried
    # with the good key, and the SDK never saw the upstream's 401.
    assert used.count(OPENAI_REVOKED_KEY) >= 1, used
    assert used.count(OPENAI_KEYS[0]) == 2, used
    assert all(b == OPENAI_KEYS[0] for a, b in zip(used, used[1:]) if a == OPENAI_REVOKED_KEY)
    assert used[-1] == OPENAI_KEYS[0]


def test_a_revoked_key_fails_over_before_a_stream_starts(rotator, upstreams):
    client = openai_client(rotator, slug="openai-failover-stream")
    for _ in range(2):
        stream = client.chat.completions.create(
            model="gpt-4o-mini", messages=MESSAGES, stream=True
        )
        assert "".join(c.choices[0].delta.content or "" for c in stream) == (
            "Hello, streaming world"
        )
    used = [
        assert_openai_request(r, "POST", "/v1/chat/completions",
                              keys=[OPENAI_REVOKED_KEY, OPENAI_KEYS[0]])
        for r in upstreams.openai.requests
    ]
    assert used.count(OPENAI_REVOKED_KEY) >= 1, used
    assert used.count(OPENAI_KEYS[0]) == 2, used


# The SDK refuses an empty api_key, so "missing" omits the Authorization header explicitly.
@pytest.mark.parametrize("missing", [False, True], ids=["wrong", "missing"])
def test_bad_proxy_key_is_an_authentication_error(rotator, upstreams, missing):
    client = openai_client(rotator, api_key="pk-wrong-key")
    extra = {"Authorization": openai.Omit()} if missing else None
    with pytest.raises(openai.AuthenticationError) as e:
        client.chat.completions.create(
            model="gpt-4o-mini", messages=MESSAGES, extra_headers=extra
        )
    assert e.value.status_code == 401
    assert e.value.response.headers["x-rotator-error"] == "1"
    assert "proxy key" in e.value.response.json()["detail"]
    assert upstreams.openai.requests == []


@pytest.mark.anyio
async def test_bad_proxy_key_is_an_authentication_error_async(rotator, upstreams):
    client = openai_client(rotator, api_key="pk-wrong-key", cls=openai.AsyncOpenAI)
    with pytest.raises(openai.AuthenticationError):
        await client.models.list()
    assert upstreams.openai.requests == []
    await client.close()


def test_unknown_slug(rotator, upstreams):
    with pytest.raises(openai.NotFoundError) as e:
        openai_client(rotator, slug="no-such-service").models.list()
    assert e.value.response.headers["x-rotator-error"] == "1"
    # 401 comes before 404: a caller without a proxy key learns nothing about slugs.
    with pytest.raises(openai.AuthenticationError):
        openai_client(rotator, slug="no-such-service", api_key="pk-wrong-key").models.list()
    assert upstreams.openai.requests == []
