"""Client access keys through the real SDKs: each SDK, with a client key instead of a
global proxy key, is served when the key allows it, and raises its own error (with the
status and, for a limit, Retry-After) when the key does not. The client key never reaches
an upstream."""

from __future__ import annotations

import uuid

import anthropic
import openai
import pytest
from google.genai import errors as genai_errors

from conftest import anthropic_client, gemini_client, openai_client


def make_key(rotator, **fields) -> tuple[int, str]:
    body = {"name": f"sdk-{uuid.uuid4().hex[:8]}", **fields}
    r = rotator.admin("POST", "/admin/client-keys", json=body)
    assert r.status_code == 201, r.text
    return r.json()["id"], r.json()["secret"]


class Sdk:
    """One SDK: a call (streamed or not), its service, its model family."""

    def __init__(self, name, slug, model):
        self.name, self.slug, self.model = name, slug, model

    def call(self, rotator, key, model=None, slug=None):
        model = model or self.model
        slug = slug or self.slug
        if self.name == "openai":
            c = openai_client(rotator, api_key=key, slug=slug)
            return c.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}])
        if self.name == "anthropic":
            c = anthropic_client(rotator, api_key=key, slug=slug)
            return c.messages.create(model=model, max_tokens=8, messages=[{"role": "user", "content": "hi"}])
        c = gemini_client(rotator, api_key=key, slug=slug)
        return c.models.generate_content(model=model, contents="hi")

    def stream(self, rotator, key):
        """An open stream: an iterator of its events."""
        if self.name == "openai":
            c = openai_client(rotator, api_key=key)
            return iter(c.chat.completions.create(model=self.model, stream=True,
                                                  messages=[{"role": "user", "content": "hi"}]))
        if self.name == "anthropic":
            c = anthropic_client(rotator, api_key=key)
            return iter(c.messages.create(model=self.model, max_tokens=8, stream=True,
                                          messages=[{"role": "user", "content": "hi"}]))
        # The client must outlive the stream (its connection closes with it).
        self.keep = gemini_client(rotator, api_key=key)
        return iter(self.keep.models.generate_content_stream(model=self.model, contents="hi"))

    def status_of(self, exc) -> int:
        if isinstance(exc, (openai.APIStatusError, anthropic.APIStatusError)):
            return exc.status_code
        if isinstance(exc, genai_errors.APIError):
            return exc.code
        raise exc

    def raised(self, exc, name: str) -> bool:
        """Whether the SDK raised its own error class `name` (google-genai has one class
        for every status)."""
        module = {"openai": openai, "anthropic": anthropic}.get(self.name)
        return module is None or isinstance(exc, getattr(module, name))

    def headers_of(self, exc):
        resp = getattr(exc, "response", None)
        return getattr(resp, "headers", None) or {}

    def refused(self, rotator, key, **kw) -> tuple[int, object]:
        errors = (openai.APIStatusError, anthropic.APIStatusError, genai_errors.APIError)
        with pytest.raises(errors) as e:
            self.call(rotator, key, **kw)
        return self.status_of(e.value), e.value


SDKS = [
    Sdk("openai", "openai", "gpt-client-keys"),
    Sdk("anthropic", "claude", "claude-client-keys"),
    Sdk("gemini", "gemini", "gemini-client-keys"),
]
OTHER_SERVICE = {"openai": "claude", "anthropic": "gemini", "gemini": "openai"}


@pytest.fixture(autouse=True)
def no_client_key_upstream(upstreams):
    made = []
    yield made
    for u in vars(upstreams).values():
        for r in u.requests:
            for secret in made:
                assert secret not in r.everything(), f"{u.name} saw a client key"


def key_for(rotator, made, **fields):
    kid, secret = make_key(rotator, **fields)
    made.append(secret)
    return kid, secret


@pytest.mark.parametrize("sdk", SDKS, ids=lambda s: s.name)
def test_allowed_wrong_service_and_wrong_model(rotator, sdk, no_client_key_upstream):
    prefix = sdk.model.split("-")[0] + "-*"
    _, key = key_for(rotator, no_client_key_upstream, services=[sdk.slug], models=[prefix])
    assert sdk.call(rotator, key) is not None
    status, exc = sdk.refused(rotator, key, slug=OTHER_SERVICE[sdk.name])
    assert status == 403, exc
    status, exc = sdk.refused(rotator, key, model="other-model")
    assert status == 403, exc
    assert sdk.raised(exc, "PermissionDeniedError"), exc


@pytest.mark.parametrize("sdk", SDKS, ids=lambda s: s.name)
def test_over_the_per_minute_limit_each_sdk_sees_its_rate_limit_error(rotator, sdk, no_client_key_upstream):
    _, key = key_for(rotator, no_client_key_upstream, rpm=2)
    sdk.call(rotator, key)
    sdk.call(rotator, key)
    status, exc = sdk.refused(rotator, key)
    assert status == 429, exc
    assert sdk.raised(exc, "RateLimitError"), exc
    headers = sdk.headers_of(exc)
    assert 1 <= int(headers["retry-after"]) <= 60, dict(headers)
    assert headers["x-ratelimit-limit"] == "2"


@pytest.mark.parametrize("sdk", SDKS, ids=lambda s: s.name)
def test_an_expired_key_is_refused(rotator, sdk, no_client_key_upstream):
    _, key = key_for(rotator, no_client_key_upstream, expires_at="2020-01-01T00:00:00Z")
    status, exc = sdk.refused(rotator, key)
    assert status == 401, exc
    assert sdk.raised(exc, "AuthenticationError"), exc


@pytest.mark.parametrize("sdk", SDKS, ids=lambda s: s.name)
def test_revoked_while_a_stream_is_open(rotator, sdk, no_client_key_upstream):
    kid, key = key_for(rotator, no_client_key_upstream)
    events = sdk.stream(rotator, key)
    first = next(events)
    assert first is not None
    r = rotator.admin("PATCH", f"/admin/client-keys/{kid}", json={"is_active": False})
    assert r.status_code == 200, r.text
    rest = list(events)  # the open stream goes on to its end
    assert rest, "the stream had more events"
    status, exc = sdk.refused(rotator, key)
    assert status == 401, exc
