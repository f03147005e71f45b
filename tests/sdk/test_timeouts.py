"""PROXY_TIMEOUT bounds the wait for the upstream's answer, never a stream's length.
A second rotator with PROXY_TIMEOUT=1 serves this module."""

from __future__ import annotations

import time

import openai
import pytest

from conftest import OPENAI_KEYS, openai_client, start_rotator, stop_rotator

MESSAGES = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def quick_rotator(upstreams, tmp_path_factory):
    rot = start_rotator(tmp_path_factory.mktemp("rotator-timeout"), PROXY_TIMEOUT="1")
    rot.add_service(OPENAI_KEYS, name="OpenAI", slug="openai", config_type="LLM",
                    api_format="openai_compatible", target_base_url=upstreams.openai.url + "/v1")
    yield rot
    stop_rotator(rot)


def test_a_stream_may_last_longer_than_the_timeout(quick_rotator, upstreams):
    client = openai_client(quick_rotator)
    start = time.monotonic()
    stream = client.chat.completions.create(model="gpt-slow-stream", messages=MESSAGES,
                                            stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in stream)
    assert text == "".join(f"{i} " for i in range(10))
    assert time.monotonic() - start > 2  # (10 events, 0.25 s apart) > 2 x PROXY_TIMEOUT


def test_a_slow_upstream_is_a_504(quick_rotator, upstreams):
    client = openai_client(quick_rotator)
    with pytest.raises(openai.InternalServerError) as e:
        client.chat.completions.create(model="gpt-slow-headers", messages=MESSAGES)
    assert e.value.status_code == 504
    assert e.value.response.headers["x-rotator-error"] == "1"
    assert "detail" in e.value.response.json()
    assert len(upstreams.openai.requests) == 1  # a timeout is not retried
