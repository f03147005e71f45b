"""Token accounting through the real SDKs: each call carries its own X-Request-Id, and the
request log entry and the usage rollup hold exactly the tokens the fake upstream sent."""

from __future__ import annotations

import uuid

import pytest
from google.genai import types

from conftest import anthropic_client, gemini_client, openai_client


def logged(rotator, request_id: str) -> dict:
    r = rotator.admin("GET", "/admin/requests", params={"request_id": request_id})
    assert r.status_code == 200, r.text
    items = r.json()["items"]
    assert len(items) == 1, items
    return items[0]


def tokens(entry: dict) -> tuple:
    return entry["tokens_in"], entry["tokens_out"], entry["tokens_cached"]


def rid(name: str) -> str:
    return f"sdk-{name}-{uuid.uuid4().hex[:8]}"


@pytest.mark.parametrize("stream", [False, True])
def test_openai_chat_tokens(rotator, stream):
    client = openai_client(rotator)
    request_id = rid("openai")
    args = dict(model="gpt-usage", messages=[{"role": "user", "content": "hi"}],
                extra_headers={"X-Request-Id": request_id})
    if stream:
        chunks = list(client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **args))
        sent = chunks[-1].usage
    else:
        sent = client.chat.completions.create(**args).usage
    entry = logged(rotator, request_id)
    assert tokens(entry) == (sent.prompt_tokens, sent.completion_tokens, 0)
    assert entry["model"] == "gpt-usage" and entry["status"] == 200


@pytest.mark.parametrize("stream", [False, True])
def test_anthropic_tokens(rotator, stream):
    client = anthropic_client(rotator)
    request_id = rid("anthropic")
    args = dict(model="claude-usage", max_tokens=16, messages=[{"role": "user", "content": "hi"}],
                extra_headers={"X-Request-Id": request_id})
    if stream:
        with client.messages.stream(**args) as s:
            final = s.get_final_message()
        sent = final.usage
    else:
        sent = client.messages.create(**args).usage
    entry = logged(rotator, request_id)
    assert tokens(entry) == (sent.input_tokens, sent.output_tokens, 0)
    assert entry["model"] == "claude-usage"


@pytest.mark.parametrize("stream", [False, True])
def test_gemini_tokens(rotator, stream):
    client = gemini_client(rotator)
    request_id = rid("gemini")
    config = types.GenerateContentConfig(http_options=types.HttpOptions(headers={"X-Request-Id": request_id}))
    if stream:
        chunks = list(client.models.generate_content_stream(model="gemini-usage", contents="hi", config=config))
        sent = chunks[-1].usage_metadata
    else:
        sent = client.models.generate_content(model="gemini-usage", contents="hi", config=config).usage_metadata
    entry = logged(rotator, request_id)
    assert tokens(entry) == (sent.prompt_token_count, sent.candidates_token_count, 0)
    assert entry["model"] == "gemini-usage"


def test_rollups_add_up_the_log(rotator):
    """The hourly rollup of a model is the sum of its requests in the log."""
    client = openai_client(rotator)
    for _ in range(3):
        client.chat.completions.create(model="gpt-rollup", messages=[{"role": "user", "content": "x"}])
    r = rotator.admin("GET", "/admin/usage", params={"model": "gpt-rollup", "service": "openai"})
    assert r.status_code == 200, r.text
    buckets = r.json()
    assert sum(b["requests"] for b in buckets) == 3
    assert sum(b["tokens_in"] for b in buckets) == 27
    assert sum(b["tokens_out"] for b in buckets) == 9
