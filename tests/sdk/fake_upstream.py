"""Fake upstream providers for the SDK conformance suite (standard library only).

Each `FakeUpstream` is one HTTP/1.1 server on 127.0.0.1 playing one provider (OpenAI,
Anthropic, Gemini or a weatherstack-like weather API). It

* records every request it receives (method, path, raw query, every header with its
  repeats, raw body, receive time), so tests can check the real key, its place, the path
  and that no proxy key arrived anywhere;
* checks the credential the way the provider does (the real key in the provider's place,
  otherwise the provider's own 401/400 error body);
* answers as the provider does: JSON, SSE streams and error bodies.

Streams are paced: events go out at least `PACE_UNGATED` seconds apart. Inside
`with upstream.handshake() as hs:` the server instead *holds* event i until the test has
called `hs.ack()` i times, i.e. has seen every earlier event, then waits `PACE` more; a
proxy that buffered the stream would stall the handshake (recorded as a gate timeout)
instead of passing, and the client's receive gaps are >= PACE by causality.
"""

from __future__ import annotations

import base64
import contextlib
import gzip
import json
import queue
import socket
import struct
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PACE = 0.15  # seconds between an ack and the next event (handshake streams)
# Seconds between events when no test acks them (streams watched from a subprocess): wider,
# so that scheduling jitter on a loaded machine cannot bring two arrivals under 100 ms.
PACE_UNGATED = 0.25
GATE_TIMEOUT = 5.0  # seconds a held event waits for the client's ack


@dataclass
class Recorded:
    """One request as the upstream received it."""

    method: str
    path: str
    query: str
    headers: list[tuple[str, str]]  # lower-cased names, repeats kept, wire order
    body: bytes
    at: float
    gzipped_reply: bool = False  # the answer went out gzip-compressed

    def header(self, name: str) -> str | None:
        vals = self.header_all(name)
        return vals[0] if vals else None

    def header_all(self, name: str) -> list[str]:
        name = name.lower()
        return [v for k, v in self.headers if k == name]

    @property
    def params(self) -> list[tuple[str, str]]:
        return urllib.parse.parse_qsl(self.query, keep_blank_values=True)

    def param_all(self, name: str) -> list[str]:
        return [v for k, v in self.params if k == name]

    def json(self):
        return json.loads(self.body)

    def everything(self) -> str:
        """Every byte the client controlled, as one string (for leak checks)."""
        parts = [self.method, self.path, self.query, urllib.parse.unquote(self.query)]
        parts += [f"{k}: {v}" for k, v in self.headers]
        parts.append(self.body.decode("utf-8", "replace"))
        return "\n".join(parts)


@dataclass
class Reply:
    status: int = 200
    body: bytes = b""
    headers: list[tuple[str, str]] = field(default_factory=list)
    events: list[bytes] | None = None  # an SSE stream when set


def json_reply(status: int, obj, headers=()) -> Reply:
    return Reply(
        status,
        json.dumps(obj).encode(),
        [("Content-Type", "application/json"), *headers],
    )


def sse_reply(events: list[bytes], headers=()) -> Reply:
    return Reply(
        200,
        b"",
        [("Content-Type", "text/event-stream"), ("Cache-Control", "no-cache"), *headers],
        events,
    )


class Handshake:
    """Client-driven gate for one stream (see module docstring)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.acks = 0
        self.sent_at: list[float] = []  # monotonic time each event was written
        self.timeouts: list[int] = []  # indices of events sent without the earlier acks
        self.finished = threading.Event()  # set once the terminating chunk is written
        self.streams = 0

    def ack(self) -> None:
        with self._cond:
            self.acks += 1
            self._cond.notify_all()

    def wait_for(self, needed: int) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self.acks >= needed, GATE_TIMEOUT)

    def assert_ok(self, events: int | None = None) -> None:
        assert self.streams == 1, f"expected exactly one stream, upstream served {self.streams}"
        assert self.finished.wait(GATE_TIMEOUT), "the upstream never finished writing the stream"
        assert not self.timeouts, (
            f"events {self.timeouts} were released after a {GATE_TIMEOUT}s timeout: the "
            "client had not received the previous event (the stream was buffered)"
        )
        if events is not None:
            assert len(self.sent_at) == events, (len(self.sent_at), events)


class FakeUpstream:
    def __init__(self, name: str, provider) -> None:
        self.name = name
        self.provider = provider
        self.requests: list[Recorded] = []
        self._lock = threading.Lock()
        self._handshake: Handshake | None = None
        # One ("complete" | "aborted", events written) per stream, when it ends.
        self.stream_ends: queue.Queue[tuple[str, int]] = queue.Queue()
        upstream = self

        class Handler(_Handler):
            owner = upstream

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def record(self, req: Recorded) -> None:
        with self._lock:
            self.requests.append(req)

    def clear(self) -> None:
        with self._lock:
            self.requests.clear()
        self._handshake = None
        while not self.stream_ends.empty():
            self.stream_ends.get_nowait()

    def only(self) -> Recorded:
        """The single request received since the last clear()."""
        assert len(self.requests) == 1, [
            f"{r.method} {r.path}?{r.query}" for r in self.requests
        ]
        return self.requests[0]

    @contextlib.contextmanager
    def handshake(self):
        hs = Handshake()
        self._handshake = hs
        try:
            yield hs
        finally:
            self._handshake = None


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    owner: FakeUpstream

    def log_message(self, *args) -> None:  # quiet
        pass

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _read_body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            out = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return out
                out += self.rfile.read(size)
                self.rfile.readline()
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def _handle(self) -> None:
        path, _, query = self.path.partition("?")
        req = Recorded(
            method=self.command,
            path=path,
            query=query,
            headers=[(k.lower(), v) for k, v in self.headers.items()],
            body=self._read_body(),
            at=time.monotonic(),
        )
        self.owner.record(req)
        try:
            reply = self.owner.provider(req)
        except Exception as e:  # a bug in the fake: make it loud
            reply = json_reply(500, {"fake_upstream_error": repr(e)})
        if reply.events is None:
            body = reply.body
            # Like the real providers, compress JSON when the client accepts gzip.
            if body and "gzip" in (req.header("accept-encoding") or ""):
                body = gzip.compress(body)
                req.gzipped_reply = True
            self.send_response(reply.status)
            for k, v in reply.headers:
                self.send_header(k, v)
            if req.gzipped_reply:
                self.send_header("Content-Encoding", "gzip")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        self._stream(reply)

    def _stream(self, reply: Reply) -> None:
        hs = self.owner._handshake
        if hs is not None:
            hs.streams += 1
        sent: list[float] = hs.sent_at if hs is not None else []
        self.send_response(reply.status)
        for k, v in reply.headers:
            self.send_header(k, v)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.wfile.flush()
        try:
            for i, ev in enumerate(reply.events):
                if i and hs is not None:
                    # Hold event i until the client has seen events 0..i-1, then pace it
                    # PACE after that ack: the client's receive gap is >= PACE by causality.
                    if not hs.wait_for(i):
                        hs.timeouts.append(i)
                    time.sleep(PACE)
                elif i:
                    delay = sent[-1] + PACE_UNGATED - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                sent.append(time.monotonic())
                self.wfile.write(b"%x\r\n%s\r\n" % (len(ev), ev))
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
            if hs is not None:
                hs.finished.set()
            end = "complete"
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
            end = "aborted"
        self.owner.stream_ends.put((end, len(sent)))

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _handle


# ---------------------------------------------------------------------------------------
# Providers. Each is a callable Recorded -> Reply, constructed with its set of real keys.
# ---------------------------------------------------------------------------------------

STREAM_TEXT = ["Hello", ", ", "streaming", " world"]


def sse(data, event: str | None = None, sep: bytes = b"\n\n") -> bytes:
    payload = data if isinstance(data, str) else json.dumps(data)
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {payload}".encode() + sep


class OpenAI:
    """api.openai.com/v1: chat completions, responses, models, embeddings."""

    def __init__(self, keys: list[str]) -> None:
        self.keys = keys

    @staticmethod
    def error(status: int, message: str, type_: str, code) -> Reply:
        return json_reply(
            status,
            {"error": {"message": message, "type": type_, "param": None, "code": code}},
        )

    def __call__(self, req: Recorded) -> Reply:
        reply = self.route(req)
        reply.headers.append(("x-request-id", "req_fake"))
        return reply

    def route(self, req: Recorded) -> Reply:
        auth = req.header_all("authorization")
        if len(auth) != 1 or auth[0].removeprefix("Bearer ") not in self.keys:
            shown = auth[0].removeprefix("Bearer ")[:8] if auth else ""
            return self.error(
                401,
                f"Incorrect API key provided: {shown}****. You can find your API key at "
                "https://platform.openai.com/account/api-keys.",
                "invalid_request_error",
                "invalid_api_key",
            )
        route = (req.method, req.path)
        if route == ("GET", "/v1/models"):
            return json_reply(
                200,
                {
                    "object": "list",
                    "data": [
                        {"id": m, "object": "model", "created": 1700000000, "owned_by": "fake"}
                        for m in ("gpt-4o-mini", "gpt-4o", "text-embedding-3-small")
                    ],
                },
            )
        body = req.json() if req.body else {}
        model = body.get("model", "")
        if model == "gpt-slow-headers":
            time.sleep(2.5)
        if model == "gpt-rate-limited":
            return Reply(429, json.dumps({"error": {
                "message": "Rate limit reached for gpt-4o-mini on requests per min (RPM): "
                           "Limit 3, Used 3, Requested 1.",
                "type": "requests", "param": None, "code": "rate_limit_exceeded"}}).encode(),
                [("Content-Type", "application/json")])
        if model == "gpt-does-not-exist":
            return self.error(
                404,
                "The model `gpt-does-not-exist` does not exist or you do not have access to it.",
                "invalid_request_error",
                "model_not_found",
            )
        if route == ("POST", "/v1/chat/completions"):
            return self.chat(body)
        if route == ("POST", "/v1/responses"):
            return self.responses(body)
        if route == ("POST", "/v1/embeddings"):
            return self.embeddings(body)
        return self.error(
            404, f"Invalid URL ({req.method} {req.path})", "invalid_request_error", None
        )

    def chat(self, body) -> Reply:
        model = body["model"]
        last = body["messages"][-1]["content"]
        if body.get("stream"):
            base = {"id": "chatcmpl-fake", "object": "chat.completion.chunk",
                    "created": 1700000000, "model": model, "system_fingerprint": "fp_fake"}

            def chunk(delta, finish=None):
                return sse({**base, "choices": [
                    {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]})

            text = {"gpt-long-stream": [f"{i} " for i in range(40)],
                    "gpt-slow-stream": [f"{i} " for i in range(10)]}.get(model, STREAM_TEXT)
            events = [chunk({"role": "assistant", "content": text[0]})]
            events += [chunk({"content": t}) for t in text[1:]]
            events.append(chunk({}, "stop"))
            if (body.get("stream_options") or {}).get("include_usage"):
                events.append(sse({**base, "choices": [], "usage": {
                    "prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13}}))
            events.append(sse("[DONE]"))
            return sse_reply(events)
        return json_reply(200, {
            "id": "chatcmpl-fake",
            "object": "chat.completion",
            "created": 1700000000,
            "model": model,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": f"echo: {last}", "refusal": None},
                "logprobs": None,
                "finish_reason": "stop",
            }],
            "usage": {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12},
            "system_fingerprint": "fp_fake",
        })

    def responses(self, body) -> Reply:
        model = body["model"]
        inp = body["input"]
        text = f"echo: {inp}" if isinstance(inp, str) else "echo"
        msg_id = "msg_fake"

        def response(status, output, usage=None):
            return {
                "id": "resp_fake", "object": "response", "created_at": 1700000000,
                "status": status, "model": model, "output": output,
                "parallel_tool_calls": True, "tool_choice": "auto", "tools": [],
                "temperature": 1.0, "top_p": 1.0, "error": None,
                "incomplete_details": None, "instructions": None, "metadata": {},
                "usage": usage,
            }

        def message(t, status="completed"):
            return {"type": "message", "id": msg_id, "status": status, "role": "assistant",
                    "content": [{"type": "output_text", "text": t, "annotations": []}]}

        usage = {"input_tokens": 5, "input_tokens_details": {"cached_tokens": 0},
                 "output_tokens": 4, "output_tokens_details": {"reasoning_tokens": 0},
                 "total_tokens": 9}
        if not body.get("stream"):
            return json_reply(200, response("completed", [message(text)], usage))
        full = "".join(STREAM_TEXT)
        seq = iter(range(100))
        evs = [("response.created", {"response": response("in_progress", [])})]
        evs += [("response.output_text.delta", {
            "item_id": msg_id, "output_index": 0, "content_index": 0, "delta": t,
            "logprobs": []}) for t in STREAM_TEXT]
        evs += [("response.completed", {"response": response("completed", [message(full)], usage)})]
        return sse_reply([
            sse({"type": t, "sequence_number": next(seq), **d}, event=t) for t, d in evs
        ])

    def embeddings(self, body) -> Reply:
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        data = []
        for i, _ in enumerate(inputs):
            vec = [0.5, -0.25, float(i)]
            if body.get("encoding_format") == "base64":
                emb = base64.b64encode(struct.pack("<3f", *vec)).decode()
            else:
                emb = vec
            data.append({"object": "embedding", "index": i, "embedding": emb})
        return json_reply(200, {
            "object": "list", "data": data, "model": body["model"],
            "usage": {"prompt_tokens": 2, "total_tokens": 2},
        })


class Anthropic:
    """api.anthropic.com: /v1/messages."""

    def __init__(self, keys: list[str], broke_keys: list[str] = ()) -> None:
        self.keys = keys
        self.broke_keys = list(broke_keys)  # valid keys of an account without credit

    @staticmethod
    def error(status: int, type_: str, message: str) -> Reply:
        return json_reply(
            status,
            {"type": "error", "error": {"type": type_, "message": message}},
        )

    def __call__(self, req: Recorded) -> Reply:
        reply = self.route(req)
        reply.headers.append(("request-id", "req_fake"))
        return reply

    def route(self, req: Recorded) -> Reply:
        keys = req.header_all("x-api-key")
        if len(keys) == 1 and keys[0] in self.broke_keys:
            return self.error(
                400, "invalid_request_error",
                "Your credit balance is too low to access the Anthropic API. Please go to "
                "Plans & Billing to upgrade or purchase credits.")
        if len(keys) != 1 or keys[0] not in self.keys:
            return self.error(401, "authentication_error", "invalid x-api-key")
        if len(req.header_all("anthropic-version")) != 1:
            return self.error(
                400, "invalid_request_error",
                f"anthropic-version: expected one header, got {req.header_all('anthropic-version')}",
            )
        if (req.method, req.path) != ("POST", "/v1/messages"):
            return self.error(404, "not_found_error", "Not Found")
        body = req.json()
        model = body["model"]
        if model == "claude-does-not-exist":
            return self.error(404, "not_found_error", f"model: {model}")
        if "max_tokens" not in body:
            return self.error(400, "invalid_request_error", "max_tokens: Field required")
        msg = {"id": "msg_fake", "type": "message", "role": "assistant", "model": model,
               "stop_sequence": None}
        if not body.get("stream"):
            last = body["messages"][-1]["content"]
            return json_reply(200, {
                **msg,
                "content": [{"type": "text", "text": f"echo: {last}"}],
                "stop_reason": "end_turn",
                "usage": {"input_tokens": 10, "output_tokens": 3},
            })
        evs = [("message_start", {"message": {**msg, "content": [], "stop_reason": None,
                                              "usage": {"input_tokens": 10, "output_tokens": 1}}}),
               ("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}})]
        evs += [("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": t}})
                for t in STREAM_TEXT]
        evs += [("content_block_stop", {"index": 0}),
                ("message_delta", {"delta": {"stop_reason": "end_turn", "stop_sequence": None},
                                   "usage": {"output_tokens": 4}}),
                ("message_stop", {})]
        return sse_reply([sse({"type": t, **d}, event=t) for t, d in evs])


class Gemini:
    """generativelanguage.googleapis.com: {v1,v1beta}/models/<m>:{generateContent,streamGenerateContent}."""

    def __init__(self, keys: list[str]) -> None:
        self.keys = keys

    @staticmethod
    def error(code: int, status: str, message: str) -> Reply:
        return json_reply(code, {"error": {"code": code, "message": message, "status": status}})

    def __call__(self, req: Recorded) -> Reply:
        keys = req.header_all("x-goog-api-key")
        if len(keys) != 1 or keys[0] not in self.keys or req.param_all("key"):
            # What Google answers for a bad or revoked key: 400, reason API_KEY_INVALID.
            return json_reply(400, {"error": {
                "code": 400, "message": "API key not valid. Please pass a valid API key.",
                "status": "INVALID_ARGUMENT",
                "details": [{"@type": "type.googleapis.com/google.rpc.ErrorInfo",
                             "reason": "API_KEY_INVALID", "domain": "googleapis.com",
                             "metadata": {"service": "generativelanguage.googleapis.com"}}]}})
        version, _, rest = req.path.removeprefix("/").partition("/models/")
        if req.method != "POST" or version not in ("v1", "v1beta") or ":" not in rest:
            return self.error(404, "NOT_FOUND", f"path {req.path} not found")
        model, _, method = rest.partition(":")
        if model == "gemini-does-not-exist":
            return self.error(
                404, "NOT_FOUND",
                f"models/{model} is not found for API version v1beta, or is not supported "
                "for generateContent.")
        body = req.json()
        text = body["contents"][-1]["parts"][0]["text"]

        def response(t, finish=None, usage=None):
            cand = {"content": {"parts": [{"text": t}], "role": "model"}, "index": 0}
            if finish:
                cand["finishReason"] = finish
            out = {"candidates": [cand], "modelVersion": model, "responseId": "fake"}
            if usage:
                out["usageMetadata"] = usage
            return out

        usage = {"promptTokenCount": 4, "candidatesTokenCount": 4, "totalTokenCount": 8}
        if method == "generateContent":
            return json_reply(200, response(f"echo: {text}", "STOP", usage))
        if method == "streamGenerateContent":
            if req.param_all("alt") != ["sse"]:
                return self.error(400, "INVALID_ARGUMENT", "this fake only streams with alt=sse")
            evs = [response(t) for t in STREAM_TEXT[:-1]]
            evs.append(response(STREAM_TEXT[-1], "STOP", usage))
            # Google separates events with CRLF CRLF.
            return sse_reply([sse(e, sep=b"\r\n\r\n") for e in evs])
        return self.error(404, "NOT_FOUND", f"method {method} not found")


class Weather:
    """A weatherstack-like API: GET /current?access_key=...&query=..."""

    def __init__(self, keys: list[str]) -> None:
        self.keys = keys

    def __call__(self, req: Recorded) -> Reply:
        keys = req.param_all("access_key")
        if len(keys) != 1 or keys[0] not in self.keys:
            # weatherstack answers 200 with success:false
            return json_reply(200, {"success": False, "error": {
                "code": 101, "type": "invalid_access_key",
                "info": "You have not supplied a valid API Access Key."}})
        if (req.method, req.path) != ("GET", "/current"):
            return json_reply(200, {"success": False, "error": {
                "code": 103, "type": "invalid_api_function",
                "info": "This API Function does not exist."}})
        query = (req.param_all("query") or [""])[0]
        return json_reply(200, {
            "request": {"type": "City", "query": f"{query}, United Kingdom",
                        "language": "en", "unit": "m"},
            "location": {"name": query, "country": "United Kingdom",
                         "region": "City of London, Greater London"},
            "current": {"observation_time": "12:14 PM", "temperature": 13,
                        "weather_descriptions": ["Sunny"], "wind_speed": 0, "humidity": 90},
        })
