"""The official `anthropic` package against /llm/<slug> (anthropic_native services)."""

from __future__ import annotations

import time

import anthropic
import pytest

from conftest import (
    ANTHROPIC_KEYS,
    ANTHROPIC_NO_CREDIT_KEY,
    anthropic_client,
    assert_paced,
    record_stream,
)

MESSAGES = [{"role": "user", "content": "Hello, Claude"}]
STREAM_TYPES = (
    ["message_start", "content_block_start"]
    + ["content_block_delta"] * 4
    + ["content_block_stop", "message_delta", "message_stop"]
)


def assert_anthropic_request(req) -> str:
    """POST /v1/messages with exactly one `x-api-key: <real key>` and one anthropic-version."""
    assert (req.method, req.path) == ("POST", "/v1/messages")
    keys = req.header_all("x-api-key")
    assert len(keys) == 1 and keys[0] in ANTHROPIC_KEYS, keys
    for name in ("authorization", "x-anthropic-api-key", "x-goog-api-key", "x-proxy-key"):
        assert req.header(name) is None, name
    assert len(req.header_all("anthropic-version")) == 1
    assert not req.param_all("key")
    return keys[0]


def test_messages_create(rotator, upstreams):
    client = anthropic_client(rotator)
    message = client.messages.create(model="claude-sonnet-4-6", max_tokens=64, messages=MESSAGES)
    assert message.content[0].text == "echo: Hello, Claude"
    assert message.stop_reason == "end_turn"
    assert message._request_id == "req_fake"  # upstream response headers reach the SDK
    req = upstreams.anthropic.only()
    assert_anthropic_request(req)
    assert req.json() == {"model": "claude-sonnet-4-6", "max_tokens": 64, "messages": MESSAGES}


def test_the_sdks_anthropic_version_goes_through_unchanged(rotator, upstreams):
    anthropic_client(rotator).messages.create(
        model="claude-sonnet-4-6", max_tokens=8, messages=MESSAGES
    )
    from anthropic._constants import ANTHROPIC_API_VERSION

    assert upstreams.anthropic.only().header_all("anthropic-version") == [ANTHROPIC_API_VERSION]


def test_keys_rotate(rotator, upstreams):
    client = anthropic_client(rotator)
    for _ in range(2):
        client.messages.create(model="claude-sonnet-4-6", max_tokens=8, messages=MESSAGES)
    used = [assert_anthropic_request(r) for r in upstreams.anthropic.requests]
    assert sorted(used) == sorted(ANTHROPIC_KEYS)


def test_messages_stream_raw_events(rotator, upstreams):
    client = anthropic_client(rotator)
    recv, types, text = [], [], []
    with upstreams.anthropic.handshake() as hs:
        stream = client.messages.create(
            model="claude-sonnet-4-6", max_tokens=64, messages=MESSAGES, stream=True
        )
        for event in stream:
            recv.append(time.monotonic())
            hs.ack()
            types.append(event.type)
            if event.type == "content_block_delta":
                text.append(event.delta.text)
    hs.assert_ok(events=len(STREAM_TYPES))
    assert types == STREAM_TYPES
    assert text == ["Hello", ", ", "streaming", " world"]
    row = record_stream("anthropic messages stream (raw events)", recv, hs.sent_at)
    assert all(g >= 100 for g in row["gaps_ms"]), row
    req = upstreams.anthropic.only()
    assert_anthropic_request(req)
    assert req.json()["stream"] is True


def test_messages_stream_helper(rotator, upstreams):
    client = anthropic_client(rotator)
    recv, text = [], []
    with client.messages.stream(
        model="claude-sonnet-4-6", max_tokens=64, messages=MESSAGES
    ) as stream:
        for piece in stream.text_stream:
            recv.append(time.monotonic())
            text.append(piece)
        final = stream.get_final_message()
    assert text == ["Hello", ", ", "streaming", " world"]
    assert final.content[0].text == "Hello, streaming world"
    assert final.stop_reason == "end_turn"
    record_stream("anthropic messages.stream() text_stream", recv, [])
    assert_paced(recv, 4)
    assert_anthropic_request(upstreams.anthropic.only())


@pytest.mark.anyio
async def test_messages_async_and_async_stream(rotator, upstreams):
    client = anthropic_client(rotator, cls=anthropic.AsyncAnthropic)
    message = await client.messages.create(
        model="claude-sonnet-4-6", max_tokens=64, messages=MESSAGES
    )
    assert message.content[0].text == "echo: Hello, Claude"
    recv = []
    with upstreams.anthropic.handshake() as hs:
        stream = await client.messages.create(
            model="claude-sonnet-4-6", max_tokens=64, messages=MESSAGES, stream=True
        )
        async for _ in stream:
            recv.append(time.monotonic())
            hs.ack()
    hs.assert_ok(events=len(STREAM_TYPES))
    row = record_stream("anthropic messages stream (async)", recv, hs.sent_at)
    assert all(g >= 100 for g in row["gaps_ms"]), row
    for r in upstreams.anthropic.requests:
        assert_anthropic_request(r)
    await client.close()


def test_upstream_404_reaches_the_sdk_as_the_providers_error(rotator, upstreams):
    client = anthropic_client(rotator)
    with pytest.raises(anthropic.NotFoundError) as e:
        client.messages.create(model="claude-does-not-exist", max_tokens=8, messages=MESSAGES)
    assert e.value.status_code == 404
    assert e.value.body["error"] == {"type": "not_found_error", "message": "model: claude-does-not-exist"}
    assert "x-rotator-error" not in e.value.response.headers
    assert_anthropic_request(upstreams.anthropic.only())


# The SDK refuses to send a request without a credential unless the header is omitted.
@pytest.mark.parametrize("missing", [False, True], ids=["wrong", "missing"])
def test_bad_proxy_key_is_an_authentication_error(rotator, upstreams, missing):
    client = anthropic_client(rotator, api_key="pk-wrong-key")
    extra = {"Authorization": anthropic.Omit()} if missing else None
    with pytest.raises(anthropic.AuthenticationError) as e:
        client.messages.create(
            model="claude-sonnet-4-6", max_tokens=8, messages=MESSAGES, extra_headers=extra
        )
    assert e.value.status_code == 401
    assert e.value.response.headers["x-rotator-error"] == "1"
    assert "proxy key" in e.value.body["detail"]
    assert upstreams.anthropic.requests == []


def test_an_error_message_never_takes_a_key_out_of_rotation(rotator, upstreams):
    """Anthropic answers a key whose account has no credit with 400 invalid_request_error
    and says so only in the message. The proxy never reads phrases in free text (a
    client can make a provider quote any text back), so that key stays in rotation and
    its answer reaches the client as Anthropic sent it; the admin page shows the key's
    last status, 400. (Error codes are read: see the Gemini and OpenAI suites.)"""
    client = anthropic_client(rotator, slug="claude-no-credit")
    outcomes = []
    for _ in range(4):
        try:
            client.messages.create(model="claude-sonnet-4-6", max_tokens=8, messages=MESSAGES)
            outcomes.append("ok")
        except anthropic.BadRequestError as e:
            assert "credit balance" in e.message
            outcomes.append(e.status_code)
    used = [r.header("x-api-key") for r in upstreams.anthropic.requests]
    assert used.count(ANTHROPIC_NO_CREDIT_KEY) == 2, (used, outcomes)
    assert outcomes.count("ok") == 2 and outcomes.count(400) == 2, outcomes